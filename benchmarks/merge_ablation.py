"""Merge per-pair, per-seed ablation runs into benchmarks/results/ablation.json.

The ablation is embarrassingly parallel; on a 2-core machine we run one
process per (pair, seed), each with one torch thread:

    python benchmarks/ablation.py --seeds 0 --pairs flat:outline --name ablation_outline_s0
    ... (one per pair and seed)
    python benchmarks/merge_ablation.py ablation_outline_s0 ablation_outline_s1 ...

Each input holds one seed; the merged file has the mean and (population) std
over seeds, in the shape `ablation.py` writes. A row of a (pair, seed) that a
later input also holds is replaced by the later one: a rerun of some rows
(`--runs pair_finetune ...`, say after their defaults changed) is merged by
naming it after the full runs.
"""

from __future__ import annotations

import statistics
import sys

from ablation import RUNS
from bench_utils import METRICS, RESULTS, fmt, machine, write

from common.atomic import read_json


def main(names: list[str]) -> None:
    parts = [read_json(RESULTS / f"{n}.json") for n in names]
    seeds = sorted({s for p in parts for s in p["seeds"]})
    pairs: dict[tuple[str, str], dict[str, dict[int, dict]]] = {}
    for name, part in zip(names, parts):
        if len(part["seeds"]) != 1:
            raise SystemExit(f"{name}.json holds seeds {part['seeds']}; each input must hold one seed")
        for pair in part["pairs"]:
            runs = pairs.setdefault((pair["source"], pair["target"]), {})
            for row, m in pair["runs"].items():
                runs.setdefault(row, {})[part["seeds"][0]] = m  # a later input's row replaces an earlier one's
    out_pairs = []
    for (src, tgt), runs in pairs.items():
        merged = {}
        for name, by_seed in runs.items():
            ms = [by_seed[s] for s in sorted(by_seed)]
            merged[name] = {"n_seeds": len(ms)}
            for k in METRICS:
                vals = [m[k] for m in ms]
                merged[name][k] = round(statistics.fmean(vals), 2)
                merged[name][f"{k}_std"] = round(statistics.pstdev(vals), 2) if len(vals) > 1 else 0.0
        out_pairs.append({"source": src, "target": tgt, "runs": merged})
    payload = {"backbone": parts[0]["backbone"], "seeds": seeds, "epochs": parts[0]["epochs"], "pairs": out_pairs,
               "commands": [p["command"] for p in parts], "machine": machine()}
    names_order = [n for n in RUNS if n in out_pairs[0]["runs"]]
    lines = [f"Target test R1 and mAP, mean ± std over seeds {seeds}; backbone `{payload['backbone']}`, {payload['epochs']} adaptation epochs, fixed schedule.", "",
             "| variant | " + " | ".join(f"{p['source']}→{p['target']} R1 | mAP" for p in out_pairs) + " |", "|---|" + "---|---|" * len(out_pairs)]
    for n in names_order:
        lines.append(f"| {n} | " + " | ".join(f"{fmt(p['runs'][n])} | {fmt(p['runs'][n], 'mAP')}" for p in out_pairs) + " |")
    lines += ["", "Commands: one `python benchmarks/ablation.py --seeds S --pairs SRC:TGT --name ...` per pair and seed, then "
              f"`python benchmarks/merge_ablation.py {' '.join(names)}`; {payload['machine']['cores']} cores."]
    write("ablation", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
