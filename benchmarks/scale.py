"""How the federation's cost grows with the number of sites; plus the DP step and evaluation speed figures.

    python benchmarks/scale.py [--sites 10 100 1000] [--per-round 10] [--rounds 20] [--privacy site]

For each site count, runs ``fedgckd simulate`` (tiny backbone, on the
``scale`` profile of the generated benchmark: 2,000 train identities so that
1,000 sites hold at least one each) with the same number of sites sampled
per round, and measures its wall time and the peak of the summed resident
memory of the whole process tree (the CLI, Ray's own processes and the
simulated sites' actors; shared pages are counted once per process, so this
over-states the real footprint). Per-site state (ledger, teacher cache,
progress) lives in the run's site folders on disk; their size is reported.

Also measures, in this run: the record-level DP step over the non-DP step
for the ``minilm-effnet`` backbone (benchmarks/dp_step.py; needs the default
benchmark and its flat teacher from benchmarks/direct_transfer.py, skipped
with a note if absent) and the 20,000 x 10,000 evaluation
(benchmarks/eval_speed.py). Writes benchmarks/results/scale.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from bench_utils import command_line, ensure_data, machine, write

from common.atomic import read_json

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], log: Path, poll_s: float = 0.25) -> tuple[float, int, int]:
    """(wall seconds, peak summed RSS in bytes, exit code) of `cmd` and all its descendants."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                peak = max(peak, tree_rss(proc))
            except psutil.NoSuchProcess:
                pass
            time.sleep(poll_s)
        return time.perf_counter() - t0, peak, child.returncode


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def ensure_teacher(data: Path, teacher: Path) -> Path:
    if not (teacher / "config.json").exists():
        subprocess.run([sys.executable, "-m", "fedgckd", "pretrain", "--data", str(data), "--source", "flat",
                        "--out", str(teacher), "--backbone", "tiny", "--epochs", "10"], check=True, cwd=ROOT)
    return teacher


def one_scale(args, n: int, teacher: Path) -> dict:
    out = args.runs / f"sites_{n}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh federation: sites keep their ledgers across runs otherwise
    cmd = [sys.executable, "-m", "fedgckd", "simulate", "--data", str(args.data), "--teacher", str(teacher),
           "--target", "outline", "--sites", str(n), "--sites-per-round", str(min(args.per_round, n)),
           "--rounds", str(args.rounds), "--privacy", args.privacy, "--mode", "full" if args.privacy != "record" else "per-record",
           "--partition", "by-identity", "--out", str(out), "--state-dir", str(out / "sites"), "--cache", str(args.cache)]
    print("+", " ".join(cmd), flush=True)
    wall, peak, rc = run_measured(cmd, args.runs / f"sites_{n}.log")
    if rc != 0:
        raise SystemExit(f"{n} sites: simulate exited {rc}; see {args.runs / f'sites_{n}.log'}")
    m = read_json(out / "metrics.json")
    rounds = m["rounds"][1:]
    site_dirs = [d for d in (out / "sites").iterdir() if d.is_dir()] if (out / "sites").exists() else []
    row = {"wall_s": round(wall, 1), "peak_rss_mib": round(peak / 2**20, 1), "engine_wall_s": m.get("wall_s"),
           "rounds": len(rounds), "trained_updates": sum(len(r["trained"]) for r in rounds),
           "rejected_updates": sum(len(r["rejected"]) for r in rounds), "final_val_R1": round(rounds[-1]["R1"], 2),
           "site_state_dirs": len(site_dirs), "site_state_bytes": du(out / "sites")}
    print(f"{n} sites: {row}", flush=True)
    return row


def dp_ratio(args) -> tuple[float | None, dict | None]:
    from dp_step import measure, site_of

    if not (args.dp_teacher / "config.json").exists():
        print(f"no {args.dp_teacher}: run benchmarks/direct_transfer.py first; DP step ratio skipped", flush=True)
        return None, None
    ckpt, site = site_of(ensure_data(args.dp_data), "outline", args.dp_teacher, 540)
    row = measure(ckpt.heads, site, "last", 0.25)
    return row["ratio"], row


def eval_seconds() -> tuple[float, dict]:
    from eval_speed import best_of_3, make_data

    text, image, tp, ip = make_data(20_000, 10_000, 256, 0)
    secs, metrics = best_of_3(text, image, tp, ip)
    return round(min(secs), 2), metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", nargs="+", type=int, default=[10, 100, 1000])
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--privacy", default="site", help="site (default: clipped updates + central noise), record or none")
    ap.add_argument("--data", type=Path, default=Path("data/scale"))
    ap.add_argument("--runs", type=Path, default=Path("runs/scale"))
    ap.add_argument("--cache", type=Path, default=Path("runs/scale/cache"))
    ap.add_argument("--dp-data", type=Path, default=Path("data/embedded"))
    ap.add_argument("--dp-teacher", type=Path, default=Path("runs/teachers/flat"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    ensure_data(args.data, profile="scale")
    args.runs.mkdir(parents=True, exist_ok=True)
    teacher = ensure_teacher(args.data, args.runs / "teacher")
    # fill the feature cache once, untimed, so every timed run starts from the same warm cache
    warm = [sys.executable, "-m", "fedgckd", "simulate", "--data", str(args.data), "--teacher", str(teacher), "--target",
            "outline", "--sites", "2", "--rounds", "1", "--privacy", "none", "--mode", "full", "--out",
            str(args.runs / "warmup"), "--cache", str(args.cache)]
    subprocess.run(warm, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    sites = {str(n): one_scale(args, n, teacher) for n in args.sites}
    ratio, dp_row = dp_ratio(args)
    eval_s, eval_metrics = eval_seconds()
    payload = {"sites": sites, "dp_step_ratio": ratio, "eval_20k_x_10k_s": eval_s,
               "setup": {"backbone": "tiny", "data": "scale profile, target outline", "per_round": args.per_round,
                         "rounds": args.rounds, "privacy": args.privacy, "partition": "by-identity",
                         "peak_rss": "sum of RSS over the simulate process tree, sampled every 0.25 s"},
               "dp_step": dp_row, "eval_metrics": eval_metrics,
               "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1)}
    lines = [f"`fedgckd simulate`, tiny backbone, {args.per_round} sites sampled per round, {args.rounds} rounds, "
             f"privacy {args.privacy}, by-identity partition of the scale benchmark's target.", "",
             "| sites | wall (s) | peak RSS, process tree (MiB) | updates trained / rejected | site state on disk | val R1 after the last round |",
             "|---|---|---|---|---|---|"]
    for n, r in sites.items():
        lines.append(f"| {n} | {r['wall_s']} | {r['peak_rss_mib']:.0f} | {r['trained_updates']} / {r['rejected_updates']} | "
                     f"{r['site_state_dirs']} folders, {r['site_state_bytes'] / 2**20:.1f} MiB | {r['final_val_R1']} |")
    lines += ["", f"Record-level DP step / non-DP step (minilm-effnet, train-params=last): "
              f"{ratio if ratio is not None else 'not measured'}x. Evaluation of 20,000 x 10,000: {eval_s} s.", "",
              f"Command: `{payload['command']}`; {payload['seconds']} s."]
    write("scale", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
