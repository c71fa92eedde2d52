"""What every table renderer shares: where the results live, row order, number formats, the "not run" line."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FILES = ("README.md", "docs/results.md", "docs/limits.md")
BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)
# the README's headline rows of the ablation (docs/results.md shows every variant)
HEADLINE = ("direct", "pair_finetune", "pair_finetune_ema", "gckd_full", "gckd_per_record", "oracle")
# row order (the JSON's keys are sorted alphabetically): baselines, then GCKD, then ceilings; names not listed follow
ORDER = ("direct", "teacher", "pair_finetune", "pair_finetune_ema", "cmkd_only", "gmp_only", "gckd_full", "central",
         "central_full", "central_grouped_dp_eps8", "gckd_grouped_nonoise", "gckd_grouped_dp_eps1", "gckd_grouped_dp_eps4",
         "gckd_grouped_dp_eps8", "gckd_per_record_dp_eps8", "gckd_per_record", "central_per_record", "gckd_per_record_exact_stats",
         "oracle", "oracle_scratch", "fed_none", "fed_full_none", "fed_grouped_none", "fed_grouped_record_eps1",
         "fed_grouped_record_eps4", "fed_grouped_record_eps8", "fed_per_record_record_eps1", "fed_per_record_record_eps4",
         "fed_per_record_record_eps8", "fed_full_site_eps8", "fed_site_eps8", "fed_record_eps1", "fed_record_eps4",
         "fed_record_eps8",
         "last_lr0.1", "last_lr0.01", "last_no_noise", "norms+biases", "norms+biases_no_noise", "rank16",
         "rank16_no_noise", "fedsgd", "distributed")


def ordered(names) -> list[str]:
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def pm(m: dict, key: str) -> str:
    """``mean ± std`` when the run has a spread, else the mean, else a dash (one decimal, as every table)."""
    if key not in m:
        return "–"
    return f"{m[key]:.1f} ± {m[key + '_std']:.1f}" if f"{key}_std" in m else f"{m[key]:.1f}"


def machine(d: dict) -> str:
    m = d.get("machine", {})
    return f"{m.get('cores', '?')} cores, torch {m.get('torch', '?')}, commit {m.get('commit', '?')}, {m.get('date', '?')}"


def not_run(command: str) -> str:
    return f"Not run yet: `{command}`.\n"
