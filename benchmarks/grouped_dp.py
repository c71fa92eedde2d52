"""Grouped record-level DP against the one-machine rows, at 1,800 and at 18,000 records.

    python benchmarks/grouped_dp.py --profile default --pairs flat:outline --seeds 0 [--runs ...]   # one part
    python benchmarks/grouped_dp.py --merge                                                        # the table

Each call runs the rows of `benchmarks/ablation.py` (its `run_pair`, the same code) for one profile, its pairs and
seeds, on the target **test** split (`--split val` to choose settings; val parts are never merged), and writes a
part `benchmarks/results/grouped_dp_parts/PROFILE_TARGET_sSEED.json`. Profiles:

- ``default``: the embedded benchmark's targets (1,800 train records each), source and target in `--data`;
- ``sites``: the `sites` profile's targets (18,000 train records each, `--sites-data`, generated there if the folder
  is new) at one site, the teacher from the default profile's source domain (`--data`).

`--merge` reads every test part and writes `benchmarks/results/grouped_dp.json`,
``{"runs": {PROFILE: {PAIR: {ROW: {"R1", "mAP", "epsilon", "seeds"}}}}}`` (R1 and mAP the means over the seeds;
epsilon record-level at delta 1e-5 by RDP, the largest seed's; None for rows that claim none), its table and
`grouped_dp.svg`, R1 against epsilon per profile and pair. A part of a (profile, pair, seed) written later replaces
the rows it holds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from ablation import DELTA, RUNS, run_pair
from bench_utils import RESULTS, command_line, ensure_data, machine, write

from common.atomic import atomic_write_bytes, atomic_write_json, read_json
from common.models.backbones import build_backbone

ROWS = ("direct", "pair_finetune", "gckd_full", "gckd_grouped_nonoise", "gckd_grouped_dp_eps1", "gckd_grouped_dp_eps4",
        "gckd_grouped_dp_eps8", "gckd_per_record_dp_eps8")
PARTS = RESULTS / "grouped_dp_parts"
PROFILES = ("default", "sites")
FIXED_STEPS = 80  # grouped steps per round of parts that do not say: the fixed default before the size-aware one


def run_part(args) -> None:
    data = ensure_data(args.data)
    target_data = ensure_data(args.sites_data, profile="sites") if args.profile == "sites" else data
    bb = build_backbone(args.backbone)
    for pair in args.pairs:
        src, tgt = pair.split(":")
        for seed in args.seeds:
            t0 = time.perf_counter()
            rows = run_pair(bb, data, src, tgt, seed, args.cache, 20, set(args.runs), args.split, target_data)
            part = {"profile": args.profile, "pair": f"{src}->{tgt}", "seed": seed, "split": args.split, "rows": rows,
                    "command": command_line(), "machine": machine(), "seconds": round(time.perf_counter() - t0, 1)}
            PARTS.mkdir(parents=True, exist_ok=True)
            stem = f"{args.profile}_{tgt}_s{seed}" + ("" if args.split == "test" else f"_{args.split}")
            name = PARTS / f"{stem}.json"
            if name.exists() and args.split == "test":  # keep the rows this call did not rerun
                old = read_json(name)
                part["rows"] = {**old["rows"], **rows}
                part["commands"] = [*old.get("commands", [old["command"]]), part["command"]]
            atomic_write_json(name, part)
            print(f"wrote {name}", flush=True)


def merge() -> dict:
    parts = [read_json(p) for p in sorted(PARTS.glob("*.json")) if read_json(p)["split"] == "test"]
    if not parts:
        raise SystemExit(f"no test parts under {PARTS}: run some first (see --help)")
    by: dict[str, dict[str, dict[str, dict[int, dict]]]] = {}
    for part in parts:
        rows = by.setdefault(part["profile"], {}).setdefault(part["pair"], {})
        for row, m in part["rows"].items():
            rows.setdefault(row, {})[part["seed"]] = m
    runs = {}
    for profile in (p for p in PROFILES if p in by):
        runs[profile] = {}
        for pair, rows in sorted(by[profile].items()):
            runs[profile][pair] = {}
            for row in (r for r in RUNS if r in rows):
                ms = [rows[row][s] for s in sorted(rows[row])]
                eps = [m["epsilon"] for m in ms if "epsilon" in m]
                steps = {m.get("grouped_steps_per_round", FIXED_STEPS) for m in ms} if row.startswith("gckd_grouped") else set()
                if len(steps) > 1:
                    raise SystemExit(f"{PARTS}: {profile} {pair} {row} ran with {sorted(steps)} grouped steps per round "
                                     "over its seeds; rerun those parts with one setting before merging")
                runs[profile][pair][row] = {"R1": round(statistics.fmean(m["R1"] for m in ms), 2),
                                            "mAP": round(statistics.fmean(m["mAP"] for m in ms), 2),
                                            "epsilon": round(max(eps), 3) if eps else None,
                                            "seeds": sorted(rows[row])} | ({"grouped_steps_per_round": steps.pop()} if steps else {})
    payload = {"runs": runs, "delta": DELTA, "unit": "record", "accountant": "rdp",
               "commands": sorted({c for p in parts for c in p.get("commands", [p["command"]])}), "machine": machine()}
    lines = ["Target test R1 / mAP (mean over the seeds listed); epsilon: record-level, delta 1e-5, RDP, the whole "
             "adaptation (every DP-SGD step, teacher round and prototype release); rows without one claim none.", ""]
    for profile, pairs in runs.items():
        for pair, rows in pairs.items():
            lines += [f"**{profile}** profile, {pair.replace('->', '→')}", "", "| row | R1 | mAP | epsilon | seeds |",
                      "|---|---|---|---|---|"]
            lines += [f"| {row} | {m['R1']:.1f} | {m['mAP']:.1f} | {_eps(m['epsilon'])} | {', '.join(map(str, m['seeds']))} |"
                      for row, m in rows.items()]
            lines.append("")
    lines.append("Commands: " + "; ".join(f"`{c}`" for c in payload["commands"]) + "; then `python benchmarks/grouped_dp.py --merge`.")
    write("grouped_dp", payload, "\n".join(lines) + "\n")
    atomic_write_bytes(RESULTS / "grouped_dp.svg", plot(runs).encode())
    return payload


def _eps(e: float | None) -> str:
    return "–" if e is None else f"{e:.2f}"


def plot(runs: dict) -> str:
    """R1 against epsilon: one panel per profile, a line per pair through the grouped DP rows, the one-machine rows
    (no DP) as dashed levels."""
    import io

    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(runs), 3.4))
    FigureCanvasSVG(fig)
    for i, (profile, pairs) in enumerate(runs.items()):
        ax = fig.add_subplot(1, len(runs), i + 1)
        for j, (pair, rows) in enumerate(pairs.items()):
            colour = f"C{j}"
            pts = sorted((m["epsilon"], m["R1"]) for r, m in rows.items() if r.startswith("gckd_grouped_dp") and m["epsilon"])
            if pts:
                ax.plot(*zip(*pts), "o-", color=colour, label=f"{pair} grouped DP")
            if "gckd_per_record_dp_eps8" in rows and rows["gckd_per_record_dp_eps8"]["epsilon"]:
                m = rows["gckd_per_record_dp_eps8"]
                ax.plot([m["epsilon"]], [m["R1"]], "x", color=colour, label=f"{pair} per-record DP")
            for row, style in (("gckd_full", "--"), ("pair_finetune", "-."), ("direct", ":")):
                if row in rows:
                    ax.axhline(rows[row]["R1"], ls=style, color=colour, lw=0.8)
        ax.set_title(f"{profile} profile (dashed: full GCKD, dash-dot: pair fine-tuning, dotted: direct)", fontsize=7)
        ax.set_xlabel("record-level epsilon (delta 1e-5, RDP)")
        ax.set_ylabel("test R1")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="default")
    ap.add_argument("--data", type=Path, default=Path("data/embedded"), help="the default profile (source, and its targets)")
    ap.add_argument("--sites-data", type=Path, default=Path("data/sites"), help="the sites profile (18,000-record targets)")
    ap.add_argument("--backbone", default="minilm-effnet")
    ap.add_argument("--pairs", nargs="+", default=["flat:outline", "flat:shaded"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", default=list(ROWS), choices=RUNS)
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--merge", action="store_true", help="merge the test parts into grouped_dp.json, .md and .svg")
    args = ap.parse_args()
    if args.merge:
        merge()
    else:
        run_part(args)


if __name__ == "__main__":
    main()
