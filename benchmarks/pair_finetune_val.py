"""How the naive baseline's schedule was chosen: pair fine-tuning on the target val splits.

    python benchmarks/pair_finetune_val.py [--data DIR] [--seeds 0 1 2]

Per pair and seed, the source teacher is pretrained (its default recipe), then
pair fine-tuning (`common/train/pair_finetune.py`) runs with each (lr,
schedule) of the grid below; the target *val* split is evaluated after chosen
epochs of one run, so that a row reads as a learning curve. The test split is
never read. Writes benchmarks/results/pair_finetune_val.json and .md (val R1,
mean over seeds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bench_utils import command_line, ensure_data, features, machine, write

from common.models.backbones import build_backbone
from common.models.heads import HeadConfig
from common.train.pair_finetune import PairFinetuneConfig, pair_finetune
from common.train.pretrain import PretrainConfig, evaluate_heads, pretrain

# name: (config changes, epochs at which val is read); the reference recipe is lr 3e-4 for 15 epochs
GRID = {
    "lr 1e-4": ({"lr": 1e-4, "epochs": 30}, (5, 8, 10, 15, 20, 30)),
    "lr 3e-4 (reference)": ({"lr": 3e-4, "epochs": 30}, (5, 8, 10, 15, 20, 30)),
    "lr 1e-3": ({"lr": 1e-3, "epochs": 15}, (5, 6, 8, 10, 12, 15)),
    "lr 2e-3": ({"lr": 2e-3, "epochs": 10}, (4, 6, 8, 10)),
    "lr 1e-3, batch 64": ({"lr": 1e-3, "epochs": 12, "batch_size": 64}, (6, 8, 10, 12)),
    "lr 1e-3, batch 256": ({"lr": 1e-3, "epochs": 12, "batch_size": 256}, (6, 8, 10, 12)),
    "lr 1e-3, EMA 0.99": ({"lr": 1e-3, "epochs": 15, "ema": 0.99}, (6, 8, 10, 12, 15)),
}


def curve(teacher, train, val, cfg: PairFinetuneConfig, reads: tuple[int, ...]) -> dict[int, float]:
    out = {}

    def on_epoch(epoch: int, heads) -> None:
        if epoch in reads:
            out[epoch] = evaluate_heads(heads, val)["R1"]

    pair_finetune(teacher, train, cfg, on_epoch=on_epoch)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--backbone", default="minilm-effnet")
    ap.add_argument("--pairs", nargs="+", default=["flat:outline", "flat:shaded"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    data = ensure_data(args.data)
    bb = build_backbone(args.backbone)
    t0 = time.perf_counter()
    per: dict[str, dict[str, dict[int, list[float]]]] = {}
    for seed in args.seeds:
        src = args.pairs[0].split(":")[0]
        s_train, s_val = features(bb, data, src, "train", args.cache), features(bb, data, src, "val", args.cache)
        teacher, _ = pretrain(s_train, s_val, HeadConfig(), PretrainConfig(seed=seed))
        for pair in args.pairs:
            tgt = pair.split(":")[1]
            train = features(bb, data, tgt, "train", args.cache, labels=False)
            val = features(bb, data, tgt, "val", args.cache)
            for name, (changes, reads) in GRID.items():
                cfg = replace(PairFinetuneConfig(seed=seed), **changes)
                for epoch, r1 in curve(teacher, train, val, cfg, reads).items():
                    per.setdefault(pair, {}).setdefault(name, {}).setdefault(epoch, []).append(r1)
                print(f"  seed {seed} {pair} {name}: done", flush=True)
    runs = {pair: {name: {str(e): round(statistics.fmean(v), 2) for e, v in sorted(curves.items())}
                   for name, curves in rows.items()} for pair, rows in per.items()}
    payload = {"split": "val", "seeds": args.seeds, "default": {"lr": PairFinetuneConfig.lr, "epochs": PairFinetuneConfig.epochs},
               "runs": runs, "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1)}
    lines = [f"Pair fine-tuning, target **val** R1 after each listed epoch (mean of seeds {args.seeds}); the default is "
             f"lr {PairFinetuneConfig.lr:g} for {PairFinetuneConfig.epochs} epochs. The test split is not read.", ""]
    for pair, rows in runs.items():
        lines += [f"**{pair.replace(':', '→')}**", "", "| schedule | val R1 by epoch |", "|---|---|"]
        lines += [f"| {name} | " + ", ".join(f"{e}: {r:.1f}" for e, r in curves.items()) + " |" for name, curves in rows.items()]
        lines.append("")
    lines.append(f"Command: `{payload['command']}`; {payload['machine']['cores']} cores, {payload['seconds']} s.")
    write("pair_finetune_val", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
