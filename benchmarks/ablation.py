"""Ablation of GCKD on cross-domain pairs of the embedded benchmark.

    python benchmarks/ablation.py [--data DIR] [--pairs flat:outline flat:shaded] [--seeds 0 1 2]

Per pair and seed: a teacher is pretrained on the source (a fixed schedule),
then every variant adapts it to the target's *unlabelled* train split with
its fixed schedule, and each result is evaluated once on the target test
split (`--split val` evaluates on the target val split instead, for choosing
settings; the test split is then not read):

  direct           the source teacher, no adaptation
  pair_finetune    InfoNCE on target image-caption pairs, in-batch negatives
  pair_finetune_ema  the same, returning an EMA (0.99 per step) of its weights: the weight averaging
                   GCKD gets from keeping its momentum teacher, given to the baseline too
  cmkd_only        momentum teacher + CMKD, no graph
  gmp_only         GMP-refined targets from the frozen source teacher
  gckd_full        momentum teacher + GMP + CMKD, graph across target records
  gckd_per_record  each record's loss sees only itself + public data (+ DP prototypes); one machine, no DP claim
  gckd_grouped_nonoise  grouped mode (group clipping, both heads), no noise: the construction's ceiling
  gckd_grouped_dp_eps1/4/8  grouped mode as a record-level DP release (delta 1e-5, RDP), the whole run accounted
  gckd_per_record_dp_eps8   per-record DP-SGD end to end at record-level epsilon 8 (delta 1e-5)
  oracle           SDM + identity loss with the target's identity labels, fine-tuned from the
                   source teacher and chosen on the target's labelled val split (the ceiling)
  oracle_scratch   the same from fresh heads (the weaker ceiling of earlier tables)

Writes benchmarks/results/ablation.json and ablation.md (mean and std over seeds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bench_utils import METRICS, REFRESH_RECORDS, command_line, ensure_data, features, fmt, machine, refresh_for, write

from common.models.backbones import build_backbone
from common.models.heads import HeadConfig
from common.train.adapt import AdaptConfig, adapt
from common.train.adapt_release import adapt_grouped_release, adapt_per_record_release
from common.train.pair_finetune import PairFinetuneConfig, pair_finetune
from common.train.pretrain import PretrainConfig, evaluate_heads, pretrain
from common.train.site_context import PublicBank

RUNS = ("direct", "pair_finetune", "pair_finetune_ema", "cmkd_only", "gmp_only", "gckd_full", "gckd_per_record",
        "gckd_grouped_nonoise", "gckd_grouped_dp_eps1", "gckd_grouped_dp_eps4", "gckd_grouped_dp_eps8",
        "gckd_per_record_dp_eps8", "oracle", "oracle_scratch")
DEFAULT_RUNS = tuple(r for r in RUNS if r not in ("oracle_scratch",))
DELTA = 1e-5


def variant_configs(seed: int, epochs: int, records: int = REFRESH_RECORDS) -> dict[str, AdaptConfig]:
    base = AdaptConfig(seed=seed, epochs=epochs, refresh_steps=refresh_for(records))  # 25 at 1,800 records
    return {
        "cmkd_only": replace(base, use_gmp=False),
        "gmp_only": replace(base, momentum=1.0, teacher_rounds=1),  # the source teacher stays the teacher
        "gckd_full": base,
        "gckd_per_record": replace(base, mode="per_record"),
    }


def run_pair(bb, data: Path, src: str, tgt: str, seed: int, cache, epochs: int, only: set[str],
             split: str = "test", target_data: Path | None = None) -> dict[str, dict]:
    """One seed of every variant in ``only``; the target comes from ``target_data`` (default: ``data``), e.g. the
    `sites` profile's 18,000-record targets with the default profile's source (benchmarks/grouped_dp.py)."""
    t_data = data if target_data is None else target_data
    s_train, s_val = features(bb, data, src, "train", cache), features(bb, data, src, "val", cache)
    t_train = features(bb, t_data, tgt, "train", cache, labels=False)
    t_test = features(bb, t_data, tgt, split, cache)
    teacher, _ = pretrain(s_train, s_val, HeadConfig(), PretrainConfig(seed=seed))
    bank = PublicBank.from_source(s_train, 2048, seed=seed)
    out: dict[str, dict] = {}

    def record(name, heads, epsilon=None, log=None):
        out[name] = evaluate_heads(heads, t_test)
        if epsilon is not None:
            out[name]["epsilon"] = epsilon
        if log is not None and "grouped" in log:  # size-aware (GroupedConfig.steps None): say what ran
            out[name]["grouped_steps_per_round"] = log["grouped"]["steps_per_round"]
        print(f"  {src}->{tgt} seed {seed} {name:16s} R1 {out[name]['R1']:6.2f} mAP {out[name]['mAP']:6.2f}", flush=True)

    record("direct", teacher)
    if "pair_finetune" in only:
        record("pair_finetune", pair_finetune(teacher, t_train, PairFinetuneConfig(seed=seed))[0])
    if "pair_finetune_ema" in only:
        record("pair_finetune_ema", pair_finetune(teacher, t_train, PairFinetuneConfig(seed=seed, ema=0.99))[0])
    for name, cfg in variant_configs(seed, epochs, t_train.n_images).items():
        if name in only:
            record(name, adapt(teacher, t_train, bank, cfg)[0])
    if "gckd_grouped_nonoise" in only:
        heads, log = adapt(teacher, t_train, bank, AdaptConfig(seed=seed, mode="grouped"))
        record("gckd_grouped_nonoise", heads, log=log)
    for eps in (1, 4, 8):
        if f"gckd_grouped_dp_eps{eps}" in only:
            heads, log, led = adapt_grouped_release(teacher, t_train, bank, AdaptConfig(seed=seed, mode="grouped"), eps, DELTA)
            record(f"gckd_grouped_dp_eps{eps}", heads, led.epsilon(), log)
    if "gckd_per_record_dp_eps8" in only:
        heads, log, led = adapt_per_record_release(teacher, t_train, bank, AdaptConfig(seed=seed, mode="per_record"), 8, DELTA)
        record("gckd_per_record_dp_eps8", heads, led.epsilon())
        out["gckd_per_record_dp_eps8"]["train_params"] = log["release"]["train_params"]  # "auto" resolved by size
    if only & {"oracle", "oracle_scratch"}:
        # the ceiling: target identity labels, chosen on target val (labels too); "oracle" starts from the source
        # teacher (the stronger of the two), "oracle_scratch" from fresh heads
        t_train_labels, t_val = features(bb, t_data, tgt, "train", cache), features(bb, t_data, tgt, "val", cache)
        if "oracle" in only:
            record("oracle", pretrain(t_train_labels, t_val, HeadConfig(), PretrainConfig(seed=seed, select="val"), init=teacher)[0])
        if "oracle_scratch" in only:
            record("oracle_scratch", pretrain(t_train_labels, t_val, HeadConfig(), PretrainConfig(seed=seed, select="val"))[0])
    return out


def summarise(per_seed: list[dict]) -> dict:
    out = {}
    for key in METRICS:
        vals = [m[key] for m in per_seed]
        out[key] = round(statistics.fmean(vals), 2)
        out[f"{key}_std"] = round(statistics.pstdev(vals), 2) if len(vals) > 1 else 0.0
    if "epsilon" in per_seed[0]:
        out["epsilon"] = round(max(m["epsilon"] for m in per_seed), 3)  # record-level, delta 1e-5, RDP; the largest seed's
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--backbone", default="minilm-effnet")
    ap.add_argument("--pairs", nargs="+", default=["flat:outline", "flat:shaded"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=AdaptConfig.epochs)
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help=f"subset of variants, from {', '.join(RUNS)}")
    ap.add_argument("--split", choices=("val", "test"), default="test", help="target split evaluated (val to choose settings)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--name", default="ablation", help="results file stem")
    args = ap.parse_args()
    data = ensure_data(args.data)
    bb = build_backbone(args.backbone)
    t0 = time.perf_counter()
    pairs = []
    for pair in args.pairs:
        src, tgt = pair.split(":")
        seeds = [run_pair(bb, data, src, tgt, s, args.cache, args.epochs, set(args.runs), args.split) for s in args.seeds]
        runs = {name: summarise([s[name] for s in seeds]) for name in RUNS if name in seeds[0]}
        pairs.append({"source": src, "target": tgt, "runs": runs})
        report(args, pairs, t0)


def report(args, pairs: list[dict], t0: float) -> None:
    """Write the JSON and table for the pairs finished so far (so a long run is never lost)."""
    payload = {"backbone": args.backbone, "seeds": args.seeds, "epochs": args.epochs, "split": args.split, "pairs": pairs, "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1)}
    names = [n for n in RUNS if n in pairs[0]["runs"]]
    lines = [
        f"Target {args.split} R1 (mean ± std over seeds {args.seeds}) and mAP; backbone `{args.backbone}`, {args.epochs} adaptation epochs, fixed schedule.",
        "",
        "| variant | " + " | ".join(f"{p['source']}→{p['target']} R1 | mAP" for p in pairs) + " |",
        "|---|" + "---|---|" * len(pairs),
    ]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{fmt(p['runs'][n])} | {fmt(p['runs'][n], 'mAP')}" for p in pairs) + " |")
    lines += ["", f"Command: `{payload['command']}`; {payload['machine']['cores']} cores, {payload['seconds']} s."]
    write(args.name, payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
