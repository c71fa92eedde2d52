"""Merge base-ablation runs (benchmarks/base_ablation.py --name ...) into base_ablation.json and .md.

    python benchmarks/merge_base_ablation.py base_ablation_full base_ablation_one base_ablation_combo
"""

from __future__ import annotations

import json
import sys

from bench_utils import RESULTS, write


def main(names: list[str]) -> None:
    rows, commands, seconds = {}, [], 0.0
    for name in names:
        d = json.loads((RESULTS / f"{name}.json").read_text())
        rows.update(d["rows"])
        commands.append(d["command"])
        seconds += d["seconds"]
    cols = list(next(iter(rows.values()))["val_R1"])
    lines = ["Val R1 (seed 0) of each base variant: `reference` is the simple reference recipe (256x128, mean+max pooling,",
             "no LayerNorm, identity-aware InfoNCE at tau 0.05, 30 epochs, last kept); the others change it in the named",
             "place; `old_default` is the project's former base. `naive` is pair fine-tuning from the flat teacher on the",
             "target's unlabelled train split. No test split is read.",
             "", "| variant | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {n} | " + " | ".join(f"{r['val_R1'][c]:.1f}" for c in cols) + " |" for n, r in rows.items()]
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands) + f", then `python benchmarks/merge_base_ablation.py "
              f"{' '.join(names)}`; {seconds:.0f} s in all on 2 busy cores."]
    write("base_ablation", {"rows": rows, "split": "val", "seed": 0, "commands": commands, "seconds": round(seconds, 1)},
          "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
