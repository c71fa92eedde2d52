"""Federated GCKD on one pair of the embedded benchmark: privacy modes against the floor and the central run.

    python benchmarks/federated.py [--data DIR] [--source flat] [--target outline] [--sites 10] [--rounds 10]
                                   [--repeats 3] [--jobs 2]

Runs `fedgckd simulate` per setting (10 sites, delta 1e-5), evaluates each
final model once on the target test split, and measures the record-level DP
step against the same step without DP in one process. Record-level runs are
repeated (`--repeats`, fresh DP noise and Poisson sampling each time: the
spread of one DP run is several R1 points) and reported as mean and standard
deviation; `--jobs` federations run side by side (one torch thread each).
Besides test R1 the table shows the server's val R1 after the last round,
the split every private-training choice was made on. Writes
benchmarks/results/federated.json and federated.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from bench_utils import command_line, ensure_data, features, machine, write

from common.atomic import read_json
from common.checkpoint import load_checkpoint
from common.losses.cmkd import CMKDConfig
from common.models.backbones import build_backbone
from common.train.adapt import AdaptConfig, adapt
from common.train.pretrain import evaluate_heads
from common.train.site_context import PublicBank
from dp_step import measure as measure_dp_step

RUNS = {
    "fed_none": ["--privacy", "none", "--mode", "full"],
    "fed_site_eps8": ["--privacy", "site", "--mode", "full", "--epsilon", "8"],
    "fed_record_eps1": ["--privacy", "record", "--mode", "per-record", "--epsilon", "1"],
    "fed_record_eps4": ["--privacy", "record", "--mode", "per-record", "--epsilon", "4"],
    "fed_record_eps8": ["--privacy", "record", "--mode", "per-record", "--epsilon", "8"],
}


def simulate(args, teacher: Path, name: str, extra: list[str]) -> Path:
    out = args.runs / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh federation: sites keep their ledgers across runs otherwise
    cmd = [sys.executable, "-m", "fedgckd", "simulate", "--data", str(args.data), "--teacher", str(teacher), "--target", args.target,
           "--sites", str(args.sites), "--rounds", str(args.rounds), "--delta", "1e-5", "--out", str(out), "--state-dir", str(out / "sites"), *extra]
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1") if args.jobs > 1 else None
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return out


def final_epsilon(run: Path) -> float | None:
    audit = run / "audit.json"
    if not audit.exists():
        return None
    sites = read_json(audit).get("sites", [])
    eps = [s.get("epsilon") or s.get("epsilon_rdp") for s in (sites.values() if isinstance(sites, dict) else sites)]
    eps = [e for e in eps if isinstance(e, (int, float))]
    return round(max(eps), 3) if eps else None


def one_run(run: Path, test, name: str) -> dict:
    """Test metrics of a finished federation, its server-side val R1 after the last round, epsilon and time."""
    m = read_json(run / "metrics.json")
    res = dict(evaluate_heads(load_checkpoint(run / "model").heads, test), val_R1=m["rounds"][-1]["R1"], wall_s=m.get("wall_s"))
    eps = final_epsilon(run)
    if eps is not None and name != "fed_none":
        res["epsilon"] = eps
        res["epsilon_unit"] = "site" if "site" in name else "record"  # per site, delta 1e-5, Opacus RDP
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--source", default="flat")
    ap.add_argument("--target", default="outline")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--teacher", type=Path, default=Path("runs/teachers/flat"), help="from benchmarks/direct_transfer.py")
    ap.add_argument("--runs", type=Path, default=Path("runs/federated"))
    ap.add_argument("--repeats", type=int, default=3, help="runs of each record-level setting (fresh DP noise)")
    ap.add_argument("--jobs", type=int, default=2, help="federations run side by side")
    args = ap.parse_args()
    data = ensure_data(args.data)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.teacher)
    bb = build_backbone(ckpt.backbone)
    test = features(bb, data, args.target, "test", None)
    out: dict[str, dict] = {}
    src = features(bb, data, args.source, "train", None)
    tgt = features(bb, data, args.target, "train", None, labels=False)
    bank = PublicBank.from_source(src, 2048)
    val = features(bb, data, args.target, "val", None)
    both = lambda heads: evaluate_heads(heads, test) | {"val_R1": evaluate_heads(heads, val)["R1"]}  # noqa: E731
    out["direct"] = both(ckpt.heads)
    out["central"] = both(adapt(ckpt.heads, tgt, bank, AdaptConfig())[0])
    # not in the shape: the one-machine per-record run, the ceiling of the record-level runs, with the
    # federation's per-record settings (no text phase, which the federated path does not run; kd_weight 1.0)
    out["central_per_record"] = both(adapt(ckpt.heads, tgt, bank, AdaptConfig(mode="per_record", text_phase=0.0, teacher_rounds=2, cmkd=CMKDConfig(),
                                                                             whiten=0.0))[0])
    print(f"central: R1 {out['central']['R1']:.2f}; central per-record: R1 {out['central_per_record']['R1']:.2f}", flush=True)
    jobs = [(name, rep, extra) for name, extra in RUNS.items()
            for rep in range(args.repeats if name.startswith("fed_record") else 1)]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: (j[0], simulate(args, args.teacher, j[0] + (f"_{j[1]}" if j[1] else ""), j[2])), jobs))
    for name in RUNS:
        reps = [one_run(run, test, name) for n, run in done if n == name]
        out[name] = {k: statistics.fmean(r[k] for r in reps) for k in ("R1", "mAP", "val_R1")} | \
            {k: v for k, v in reps[0].items() if k in ("epsilon", "epsilon_unit")}
        out[name]["wall_s"] = statistics.fmean(r["wall_s"] for r in reps)
        if len(reps) > 1:
            out[name] |= {"R1_std": statistics.stdev(r["R1"] for r in reps), "val_R1_std": statistics.stdev(r["val_R1"] for r in reps),
                          "repeats": [{k: round(r[k], 2) for k in ("R1", "mAP", "val_R1")} for r in reps]}
        print(f"{name}: R1 {out[name]['R1']:.2f} mAP {out[name]['mAP']:.2f} eps {out[name].get('epsilon')}", flush=True)
    metrics = read_json(done[-1][1] / "metrics.json")
    mb = metrics["model_bytes"]
    site = tgt.select_images(torch.arange(len(tgt.image_feats) // args.sites))  # a site-sized pack
    dp_step = measure_dp_step(ckpt.heads, site, "last", 0.25)
    runs = {k: {m: round(v[m], 2) for m in ("R1", "R1_std", "mAP", "val_R1", "val_R1_std") if m in v}
            | {m: v[m] for m in ("epsilon", "epsilon_unit", "wall_s", "repeats") if m in v} for k, v in out.items()}
    gain = runs["central"]["R1"] - runs["direct"]["R1"]
    share = {k: round((runs[k]["R1"] - runs["direct"]["R1"]) / gain, 3) for k in RUNS} if gain > 0 else {}
    payload = {
        "source": args.source, "target": args.target, "sites": args.sites, "rounds": args.rounds, "delta": 1e-5,
        "repeats_of_record_level_runs": args.repeats, "runs": runs,
        "bytes_per_site_round": mb["update_bytes"], "full_model_bytes": mb["full_model_bytes"],
        "dp_step_ratio": dp_step["ratio"], "dp_step": dp_step, "share_of_central_gain": share,
        "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1),
    }
    lines = [f"{args.source}→{args.target}, {args.sites} sites, {args.rounds} rounds, delta 1e-5; R1 and mAP on the target "
             f"test split, record-level runs mean ± std of {args.repeats}; val R1: the server's last-round figure.", "",
             "| run | R1 | mAP | val R1 | share of central R1 gain | epsilon per site (delta 1e-5, RDP) |", "|---|---|---|---|---|---|"]
    pm = lambda v, k: f"{v[k]:.1f} ± {v[k + '_std']:.1f}" if k + "_std" in v else (f"{v[k]:.1f}" if k in v else "–")  # noqa: E731
    for k, v in runs.items():
        eps = f"{v['epsilon']} ({v['epsilon_unit']}-level)" if "epsilon" in v else "–"
        lines.append(f"| {k} | {pm(v, 'R1')} | {v['mAP']:.1f} | {pm(v, 'val_R1')} | {f'{share[k]:.0%}' if k in share else '–'} | {eps} |")
    frac = 100 * mb["update_bytes"] / mb["full_model_bytes"]
    lines += ["", f"Bytes per site per round: {mb['update_bytes']:,} ({frac:.2f}% of the full model's {mb['full_model_bytes']:,} B). "
              f"DP step / non-DP step: {payload['dp_step_ratio']}x.", "", f"Command: `{payload['command']}`; {payload['seconds']} s."]
    write("federated", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
