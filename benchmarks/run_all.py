"""Run every benchmark of the project and write one summary: benchmarks/results/SUMMARY.md.

    python benchmarks/run_all.py                 # everything (hours on 2 cores: the ablation is 6 x ~7 min)
    python benchmarks/run_all.py --only scale    # some of them
    python benchmarks/run_all.py --summary-only  # rebuild SUMMARY.md from the JSON already in results/

Order matters: ``direct_transfer`` generates the embedded benchmark and
pretrains the per-domain teachers that the others start from. The ablation
runs one process per (pair, seed) with one torch thread each, two at a time
(the machine has two cores), then merges them (benchmarks/merge_ablation.py).
Every benchmark writes ``results/<name>.json`` and ``results/<name>.md``; the
summary stitches the markdown together under one heading each, with the
command and the machine each figure came from.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_utils import RESULTS

from common.atomic import atomic_write_bytes, read_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAIRS, SEEDS = ("flat:outline", "flat:shaded"), (0, 1, 2)
ORDER = ("direct_transfer", "ablation", "per_record_limits", "federated", "dp_emulation", "site_size", "scale", "dp_step", "eval_speed")
TITLES = {"direct_transfer": "Direct transfer (teacher of each domain on every domain)",
          "ablation": "GCKD ablation",
          "per_record_limits": "What limits per-record GCKD: neighbour purity, exact statistics (issue 3, val split)",
          "federated": "Federated GCKD under each privacy mode (issue 4)",
          "dp_emulation": "Emulated record-level DP federations: what limits them (issue 4)",
          "site_size": "Record-level DP against records per site (issue 4)",
          "scale": "Scale: sites, DP step, evaluation (issue 7)", "dp_step": "Record-level DP step vs non-DP step",
          "eval_speed": "Evaluation speed (20,000 queries x 10,000 images)"}


def _run(cmd: list[str], threads: int | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, env=env)


def _check(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(map(str, p.args))}")


# the rows of the committed ablation table (the grouped and DP rows, `--runs gckd_grouped_nonoise ...`, are run apart)
ABLATION_RUNS = ("direct", "pair_finetune", "pair_finetune_ema", "gckd_full", "gckd_per_record")


def ablation_names() -> list[str]:
    return [f"ablation_{pair.split(':')[1]}{'' if seed == 0 else f'_s{seed}'}" for pair in PAIRS for seed in SEEDS]


def run_ablation() -> None:
    jobs = [(pair, seed) for pair in PAIRS for seed in SEEDS]
    for i in range(0, len(jobs), 2):  # two single-threaded processes at a time
        procs = [_run([sys.executable, str(HERE / "ablation.py"), "--seeds", str(seed), "--pairs", pair, "--name", name,
                       "--runs", *ABLATION_RUNS],
                      threads=1)
                 for (pair, seed), name in zip(jobs[i:i + 2], ablation_names()[i:i + 2])]
        _check(procs)
    _check([_run([sys.executable, str(HERE / "merge_ablation.py"), *ablation_names()])])


def run_one(name: str) -> None:
    if name == "ablation":
        run_ablation()
    else:
        _check([_run([sys.executable, str(HERE / f"{name}.py")])])


def _machine_line(payload: dict) -> str:
    m = payload.get("machine") or {}
    if not m:
        return ""
    cpu = m.get("cpu", "")
    cores = m.get("cores") or m.get("cpu_count")
    bits = [f"{cores} cores" if cores else "", cpu, f"torch {m['torch']}" if m.get("torch") else "",
            f"commit {m['commit']}" if m.get("commit") else "", m.get("date", "")]
    return "Machine: " + ", ".join(b for b in bits if b) + "."


def summary() -> str:
    out = ["# Benchmark summary", "",
           "Every figure below was computed by the script named in its section, on the machine named there; "
           "`python benchmarks/run_all.py` reruns them all. JSON next to each section's markdown in this folder.", ""]
    for name in ORDER:
        md, js = RESULTS / f"{name}.md", RESULTS / f"{name}.json"
        out.append(f"## {TITLES[name]}")
        out.append("")
        if not md.exists():
            out += [f"Not run yet: `python benchmarks/{name}.py`.", ""]
            continue
        out.append(md.read_text().strip())
        payload = read_json(js) if js.exists() else {}
        line = _machine_line(payload)
        out += ["", f"Script: `benchmarks/{name}.py`; JSON: [`{name}.json`]({name}.json). {line}".strip(), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=ORDER, help="run only these (in the fixed order)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if not args.summary_only:
        for name in ORDER:
            if args.only is None or name in args.only:
                run_one(name)
    atomic_write_bytes(RESULTS / "SUMMARY.md", summary().encode())
    print(f"wrote {RESULTS / 'SUMMARY.md'} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
