"""What limits per-record GCKD: neighbour purity of each model, and per-record mode with noiseless statistics.

    python benchmarks/per_record_limits.py [--pairs flat:outline flat:shaded] [--seeds 0 1 2]

Per pair and seed a teacher is pretrained on the source exactly as in
`ablation.py`, then adapted to the target's unlabelled train split by

  pair_finetune_ema            the naive baseline with weight averaging
  gckd_full                    full GCKD (graph across the site's records)
  gckd_per_record              per-record GCKD as shipped (DP prototypes, DP whitening)
  gckd_per_record_exact_stats  the same with the site statistics released at noise
                               multiplier 1e-6: NO privacy, a diagnostic of what the
                               statistics could carry if their DP noise cost nothing

and every model, the teacher too, is scored on the target's **val** split
(never its test split): text-to-image R1 and mAP, and the neighbour purity
(`common.metrics.neighbours`) of its image embeddings (an image's nearest
other image is the same person) and of its caption embeddings (a caption's
nearest caption of another record is the same person). Labels are read for
scoring only. Writes benchmarks/results/per_record_limits.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bench_utils import RESULTS, command_line, ensure_data, features, machine, write

from common.atomic import read_json
from common.metrics.neighbours import neighbour_purity
from common.models.backbones import build_backbone
from common.models.heads import HeadConfig
from common.train.adapt import AdaptConfig, adapt
from common.train.embed import embed_featureset
from common.train.pair_finetune import PairFinetuneConfig, pair_finetune
from common.train.pretrain import PretrainConfig, evaluate_heads, pretrain
from common.train.site_context import PublicBank

MODELS = ("teacher", "pair_finetune_ema", "gckd_full", "gckd_per_record", "gckd_per_record_exact_stats")
SCORES = ("R1", "mAP", "image_purity", "caption_purity")
NO_NOISE = 1e-6  # the releases refuse a zero noise multiplier; at 1e-6 the noise is nil and so is the privacy


def score(heads, val) -> dict:
    text, image = embed_featureset(heads, val)
    m = evaluate_heads(heads, val)
    return {"R1": m["R1"], "mAP": m["mAP"], "image_purity": neighbour_purity(image, val.image_pids),
            "caption_purity": neighbour_purity(text, val.text_pids, val.text_to_image)}


def run_pair(bb, data: Path, src: str, tgt: str, seed: int, cache, epochs: int,
             only: tuple[str, ...] = MODELS) -> dict[str, dict]:
    s_train, s_val = features(bb, data, src, "train", cache), features(bb, data, src, "val", cache)
    t_train = features(bb, data, tgt, "train", cache, labels=False)
    t_val = features(bb, data, tgt, "val", cache)
    teacher, _ = pretrain(s_train, s_val, HeadConfig(), PretrainConfig(seed=seed))
    bank = PublicBank.from_source(s_train, 2048, seed=seed)
    per_record = AdaptConfig(seed=seed, epochs=epochs, mode="per_record")
    models = {
        "teacher": lambda: teacher,
        "pair_finetune_ema": lambda: pair_finetune(teacher, t_train, PairFinetuneConfig(seed=seed, ema=0.99))[0],
        "gckd_full": lambda: adapt(teacher, t_train, bank, AdaptConfig(seed=seed, epochs=epochs))[0],
        "gckd_per_record": lambda: adapt(teacher, t_train, bank, per_record)[0],
        "gckd_per_record_exact_stats": lambda: adapt(teacher, t_train, bank, replace(
            per_record, whiten_noise=NO_NOISE, prototype_noise=NO_NOISE))[0],
    }
    out = {}
    for name, build in models.items():
        if name not in only:
            continue
        out[name] = score(build(), t_val)
        print(f"  {src}->{tgt} seed {seed} {name:28s} " + " ".join(f"{k} {v:5.1f}" for k, v in out[name].items()), flush=True)
    return out


def summarise(per_seed: list[dict]) -> dict:
    out = {}
    for key in SCORES:
        vals = [m[key] for m in per_seed]
        out[key] = round(statistics.fmean(vals), 2)
        out[f"{key}_std"] = round(statistics.pstdev(vals), 2) if len(vals) > 1 else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--backbone", default="minilm-effnet")
    ap.add_argument("--pairs", nargs="+", default=["flat:outline", "flat:shaded"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=AdaptConfig.epochs)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--name", default="per_record_limits", help="results file stem")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                    help="rerun only these rows and replace them in the existing results file (same pairs and seeds), "
                         "say after their defaults changed; the others stay as they were measured")
    args = ap.parse_args()
    previous = None
    if set(args.models) != set(MODELS):
        previous = read_json(RESULTS / f"{args.name}.json")
        if previous["seeds"] != args.seeds or [f"{p['source']}:{p['target']}" for p in previous["pairs"]] != args.pairs:
            raise SystemExit(f"{args.name}.json holds other pairs or seeds than --pairs/--seeds; rerun every model")
    data = ensure_data(args.data)
    bb = build_backbone(args.backbone)
    t0 = time.perf_counter()
    pairs = []
    for pair in args.pairs:
        src, tgt = pair.split(":")
        seeds = [run_pair(bb, data, src, tgt, s, args.cache, args.epochs, tuple(args.models)) for s in args.seeds]
        models = {n: summarise([s[n] for s in seeds]) for n in args.models}
        if previous is not None:
            models = {n: models.get(n, previous["pairs"][len(pairs)]["models"][n]) for n in MODELS}
        pairs.append({"source": src, "target": tgt, "split": "val", "models": models})
        report(args, pairs, t0, previous)


def report(args, pairs: list[dict], t0: float, previous: dict | None = None) -> None:
    commands = [*previous.get("commands", [previous["command"]]), command_line()] if previous else [command_line()]
    if previous is not None:  # the rows not rerun keep their figures; the pairs not yet rerun, theirs
        pairs = pairs + previous["pairs"][len(pairs):]
    payload = {"backbone": args.backbone, "seeds": args.seeds, "epochs": args.epochs, "no_noise_multiplier": NO_NOISE,
               "pairs": pairs, "command": commands[-1], "commands": commands, "machine": machine(),
               "seconds": round(time.perf_counter() - t0, 1)}
    lines = [
        f"Target **val** split, mean over seeds {args.seeds}; backbone `{args.backbone}`. Purity: share of images whose "
        "nearest other image, and of captions whose nearest caption of another record, is the same person.",
        "",
        "| model | pair | R1 | mAP | image purity | caption purity |",
        "|---|---|---|---|---|---|",
    ]
    for p in pairs:
        for n in MODELS:
            m = p["models"][n]
            lines.append(f"| {n} | {p['source']}→{p['target']} | " + " | ".join(f"{m[k]:.1f} ± {m[k + '_std']:.1f}" for k in SCORES) + " |")
    lines += ["", f"`gckd_per_record_exact_stats` releases its statistics at noise multiplier {NO_NOISE}: no privacy, a diagnostic.",
              "Commands: " + "; then ".join(f"`{c}`" for c in commands) + f"; {payload['machine']['cores']} cores, "
              f"{payload['seconds']} s (the last)."]
    write(args.name, payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
