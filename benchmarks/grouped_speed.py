"""Seconds per step of grouped mode, full GCKD and pair fine-tuning, and the extrapolated seconds per run.

    python benchmarks/grouped_speed.py [--root DIR] [--steps 10] [--sites-steps 100] [--out NAME] [--skip-sites]

One thread (``torch.set_num_threads(1)``), seed 0, flat -> outline, the cached
features; ``--root`` runs another checkout's code (e.g. a worktree of an older
commit) for a before/after comparison. A run's seconds = setup + steps x
seconds per step (grouped: 2 rounds x 80 steps; full GCKD: 2 rounds x 20
epochs of records / 64 steps; pair fine-tuning: 8 epochs of captions / 128).
Writes benchmarks/results/NAME.json and .md (NAME defaults to grouped_speed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(HERE.parent))
    ap.add_argument("--steps", type=int, default=10, help="grouped steps timed per variant (after one warm-up step)")
    ap.add_argument("--sites-steps", type=int, default=100, help="full-GCKD steps timed on the sites profile")
    ap.add_argument("--teacher", default="", help="a torch.save'd DualHeads teacher (else pretrained here)")
    ap.add_argument("--out", default="grouped_speed")
    ap.add_argument("--skip-sites", action="store_true")
    args = ap.parse_args()
    sys.path[:0] = [args.root, str(Path(args.root) / "benchmarks")]
    import torch

    torch.set_num_threads(1)
    from bench_utils import features
    from common.models.backbones import build_backbone
    from common.models.heads import HeadConfig
    from common.train.adapt import AdaptConfig, adapt
    from common.train.grouped_config import GroupedConfig
    from common.train.pair_finetune import PairFinetuneConfig, pair_finetune
    from common.train.pretrain import PretrainConfig, pretrain
    from common.train.site_context import PublicBank

    data, cache = HERE.parent / "data", Path.home() / ".cache/fedgckd/features"
    bb = build_backbone("minilm-effnet")
    s_train = features(bb, data / "embedded", "flat", "train", cache)
    if args.teacher:
        teacher = torch.load(args.teacher, weights_only=False)
    else:
        teacher = pretrain(s_train, features(bb, data / "embedded", "flat", "val", cache), HeadConfig(),
                           PretrainConfig(seed=0))[0]
    bank = PublicBank.from_source(s_train, 2048, seed=0)
    rows = {}

    def grouped(profile: str, target, noise: float) -> None:
        base = AdaptConfig(mode="grouped", seed=0)
        g = replace(GroupedConfig(), noise_multiplier=noise)
        one = _timed(lambda: adapt(teacher, target, bank, replace(base, teacher_rounds=1, grouped=replace(g, steps=1))))
        more = _timed(lambda: adapt(teacher, target, bank, replace(base, teacher_rounds=1,
                                                                     grouped=replace(g, steps=1 + args.steps))))
        per_step = (more - one) / args.steps
        setup = max(one - per_step, 0.0)
        rounds, steps = 2, g.steps
        rows[f"{profile} grouped z={noise:g}"] = {"records": target.n_images, "s_per_step": per_step,
                                                  "setup_s_per_round": setup, "steps": rounds * steps,
                                                  "run_s": rounds * (setup + steps * per_step)}
        print(rows, flush=True)

    tgt = features(bb, data / "embedded", "outline", "train", cache, labels=False)
    grouped("default", tgt, 0.0)
    grouped("default", tgt, 1.0)
    if not args.skip_sites:
        big = features(bb, data / "sites", "outline", "train", cache, labels=False)
        grouped("sites", big, 0.0)
        cfg = AdaptConfig(seed=0)
        t_short = _timed(lambda: adapt(teacher, big, bank, cfg, steps=args.sites_steps // 2))
        t_long = _timed(lambda: adapt(teacher, big, bank, cfg, steps=args.sites_steps))
        per_step = (t_long - t_short) / (args.sites_steps - args.sites_steps // 2)
        steps = 2 * cfg.epochs * math.ceil(big.n_images / cfg.batch_size)
        rows["sites full GCKD"] = {"records": big.n_images, "s_per_step": per_step, "setup_s_per_round": t_short - per_step * (args.sites_steps // 2),
                                   "steps": steps, "run_s": steps * per_step + 2 * max(t_short - per_step * (args.sites_steps // 2), 0.0)}
        print(rows, flush=True)
        pcfg = PairFinetuneConfig(seed=0, epochs=1)
        t_epoch = _timed(lambda: pair_finetune(teacher, big, pcfg))
        rows["sites pair fine-tuning"] = {"records": big.n_images, "s_per_epoch": t_epoch, "epochs": 8,
                                          "run_s": 8 * t_epoch}
    payload = {"command": " ".join(sys.argv), "root": args.root, "threads": 1, "rows": rows}
    out = HERE / "results"
    (out / f"{args.out}.json").write_text(json.dumps(payload, indent=1))
    lines = ["| run | records | s/step | run s (extrapolated) |", "|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['records']} | {r.get('s_per_step', float('nan')):.3f} | {r['run_s']:.0f} |")
    (out / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
