"""Merge the federated benchmark's parts into federated.json, its table and its plot (benchmarks/federated.py --merge).

A part is one (profile, pair, seed) on one split; only test parts are merged (val parts choose settings). Per
(profile, pair, row): R1 and mAP are the means over the seeds (with their sample standard deviation when there are
two or more), epsilon the largest seed's with the unit, delta and accountant the ledgers state (seeds that disagree on
any of these, or that ran a row with other settings, are an error naming the part files). The top level carries the
issue's "bytes_per_site_round" (the largest over the federated rows: the bar is checked where it is hardest),
"full_model_bytes" and "dp_step_ratio" (the largest over the parts).
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path

from federated_rows import FED_ROWS, ROWS

from common.atomic import read_json

PROFILES = ("sites", "default")
CLAIM = ("epsilon_unit", "delta", "accountant")  # what every epsilon must name, equal across a row's seeds


def load_parts(folder: Path) -> list[tuple[Path, dict]]:
    """The test parts under ``folder`` (val parts are skipped: they are never merged)."""
    parts = [(p, read_json(p)) for p in sorted(folder.glob("*.json"))]
    return [(p, d) for p, d in parts if d["split"] == "test"]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return round(statistics.fmean(values), 2), (round(statistics.stdev(values), 2) if len(values) > 1 else None)


def merge_rows(by_seed: dict[int, dict], where: str) -> dict:
    """One row over its seeds (``by_seed``: seed -> the part's row); ``where`` names the parts in errors."""
    ms = [by_seed[s] for s in sorted(by_seed)]
    settings = {repr(m.get("settings")) for m in ms}
    if len(settings) > 1:
        raise ValueError(f"{where}: the seeds ran this row with different settings {sorted(settings)}; rerun them alike")
    out: dict = {}
    for key in ("R1", "mAP"):
        out[key], std = _mean_std([m[key] for m in ms])
        if std is not None:
            out[f"{key}_std"] = std
    eps = [m["epsilon"] for m in ms if m.get("epsilon") is not None]
    if eps and len(eps) != len(ms):
        raise ValueError(f"{where}: some seeds claim an epsilon and some do not")
    out["epsilon"] = max(eps) if eps else None
    if eps:
        for key in CLAIM:
            vals = {m[key] for m in ms}
            if len(vals) > 1:
                raise ValueError(f"{where}: the seeds disagree on {key}: {sorted(map(str, vals))}")
            out[key] = vals.pop()
        out["within_budget"] = all(m.get("within_budget", False) for m in ms)
    if all("val_R1" in m for m in ms):
        out["val_R1"] = round(statistics.fmean(m["val_R1"] for m in ms), 2)
    for key in ("bytes_per_site_round", "full_model_bytes"):
        if any(key in m for m in ms):
            out[key] = max(m[key] for m in ms if key in m)
    walls = [m["wall_s"] for m in ms if m.get("wall_s") is not None]
    if walls:
        out["wall_s"] = round(statistics.fmean(walls), 1)
    out["seeds"] = sorted(by_seed)
    if ms[0].get("settings"):
        out["settings"] = ms[0]["settings"]
    return out


def _share(rows: dict[str, dict[int, dict]], row: str) -> float | None:
    """The row's share of central_full's R1 gain over direct, all three as means over the row's own seeds (a row run
    on fewer seeds than the reference rows is compared with their same seeds); None where a seed lacks a reference
    row or central_full does not beat direct."""
    seeds = sorted(rows[row])
    if not all(s in rows.get("direct", {}) and s in rows.get("central_full", {}) for s in seeds):
        return None
    mean = lambda r: statistics.fmean(rows[r][s]["R1"] for s in seeds)  # noqa: E731
    gain = mean("central_full") - mean("direct")
    return round((mean(row) - mean("direct")) / gain, 3) if gain > 0 else None


def merge(parts: list[tuple[Path, dict]]) -> dict:
    """The issue's payload from the test parts (see the module docstring)."""
    if not parts:
        raise ValueError("no test parts to merge")
    by: dict[str, dict[str, dict[str, dict[int, dict]]]] = {}
    names: dict[tuple, list[str]] = {}
    for path, part in parts:
        if part["profile"] not in PROFILES:
            raise ValueError(f"{path}: unknown profile {part['profile']!r}; known: {', '.join(PROFILES)}")
        rows = by.setdefault(part["profile"], {}).setdefault(part["pair"], {})
        for row, m in part["rows"].items():
            rows.setdefault(row, {})[part["seed"]] = m
            names.setdefault((part["profile"], part["pair"], row), []).append(path.name)
    runs: dict = {}
    share: dict = {}
    for profile in (p for p in PROFILES if p in by):
        runs[profile], share[profile] = {}, {}
        for pair, rows in sorted(by[profile].items()):
            done = {row: merge_rows(rows[row], ", ".join(names[(profile, pair, row)])) for row in ROWS if row in rows}
            runs[profile][pair] = done
            shares = {r: _share(rows, r) for r in done if r not in ("direct", "central_full")}
            if any(v is not None for v in shares.values()):
                share[profile][pair] = {r: v for r, v in shares.items() if v is not None}
    fed = [m for pairs in runs.values() for rows in pairs.values() for r, m in rows.items() if r in FED_ROWS]
    steps = [p["dp_step"] | {"profile": p["profile"], "pair": p["pair"], "seed": p["seed"]} for _, p in parts if p.get("dp_step")]
    return {
        "runs": runs,
        "bytes_per_site_round": max((m["bytes_per_site_round"] for m in fed if "bytes_per_site_round" in m), default=None),
        "full_model_bytes": max((m["full_model_bytes"] for m in fed if "full_model_bytes" in m), default=None),
        "dp_step_ratio": max((s["ratio"] for s in steps), default=None),
        "dp_step": steps,
        "share_of_central_gain": share,
        "commands": sorted({c for _, p in parts for c in p.get("commands", [p["command"]])}),
    }


def _eps(m: dict) -> str:
    if m.get("epsilon") is None:
        return "–"
    note = "" if m.get("within_budget", True) else ", over budget"
    return f"{m['epsilon']:g} ({m['epsilon_unit']}-level, delta {m['delta']:g}, {m['accountant'].upper()}{note})"


def _pm(m: dict, key: str) -> str:
    return f"{m[key]:.1f} ± {m[key + '_std']:.1f}" if f"{key}_std" in m else f"{m[key]:.1f}"


def markdown(payload: dict) -> str:
    lines = ["Target test R1 / mAP, mean ± sample std over the seeds listed; share: of `central_full`'s R1 gain over "
             "`direct`; epsilon: per site (the largest site's, the largest seed's), as its ledger states it; bytes: "
             "trained numbers one site sends per round, as the server reports them.", ""]
    for profile, pairs in payload["runs"].items():
        for pair, rows in pairs.items():
            share = payload["share_of_central_gain"].get(profile, {}).get(pair, {})
            lines += [f"**{profile}** profile, {pair.replace('->', '→')}", "",
                      "| row | R1 | mAP | share | epsilon per site | bytes per site per round | wall (s) | seeds |",
                      "|---|---|---|---|---|---|---|---|"]
            for row, m in sorted(rows.items(), key=lambda kv: ROWS.index(kv[0]) if kv[0] in ROWS else len(ROWS)):
                sh = f"{share[row]:.0%}" if row in share else "–"
                b = f"{m['bytes_per_site_round']:,}" if "bytes_per_site_round" in m else "–"
                lines.append(f"| {row} | {_pm(m, 'R1')} | {_pm(m, 'mAP')} | {sh} | {_eps(m)} | {b} | " + (
                             f"{m['wall_s']:.0f} | " if m.get("wall_s") is not None else "– | ") + f"{', '.join(map(str, m['seeds']))} |")
            lines.append("")
    if payload["bytes_per_site_round"]:
        frac = 100 * payload["bytes_per_site_round"] / payload["full_model_bytes"]
        lines.append(f"Largest update per site per round: {payload['bytes_per_site_round']:,} B ({frac:.2f}% of the full "
                     f"model's {payload['full_model_bytes']:,} B).")
    if payload["dp_step_ratio"] is not None:
        lines.append(f"Record-level DP step / non-DP step (per-record step, train-params last, a site-sized pack; "
                     f"the largest over the parts): {payload['dp_step_ratio']}x.")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in payload["commands"]) +
              "; then `python benchmarks/federated.py --merge`."]
    return "\n".join(lines) + "\n"


def plot(runs: dict) -> str:
    """R1 against epsilon, one panel per profile: per pair, the federated grouped record-level rows as a line, the
    one-machine DP row (central_grouped_dp_eps8) and the federated per-record row as single markers, the no-privacy
    rows as levels (dashed: central_full, dash-dot: fed_full_none, dotted: direct). Site-level epsilon is another
    unit and is not drawn on this axis."""
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * len(runs), 3.6))
    FigureCanvasSVG(fig)
    for i, (profile, pairs) in enumerate(runs.items()):
        ax = fig.add_subplot(1, len(runs), i + 1)
        for j, (pair, rows) in enumerate(pairs.items()):
            c = f"C{j}"
            pts = sorted((m["epsilon"], m["R1"]) for r, m in rows.items()
                         if r.startswith("fed_grouped_record") and m.get("epsilon") is not None)
            if pts:
                ax.plot(*zip(*pts), "o-", color=c, label=f"{pair} federated grouped")
            for row, marker, what in (("central_grouped_dp_eps8", "s", "central grouped DP"),
                                      ("fed_per_record_record_eps8", "x", "federated per-record")):
                if rows.get(row, {}).get("epsilon") is not None:
                    ax.plot([rows[row]["epsilon"]], [rows[row]["R1"]], marker, color=c, label=f"{pair} {what}")
            for row, style in (("central_full", "--"), ("fed_full_none", "-."), ("direct", ":")):
                if row in rows:
                    ax.axhline(rows[row]["R1"], ls=style, color=c, lw=0.8)
        ax.set_title(f"{profile} profile (dashed: central_full, dash-dot: fed_full_none, dotted: direct)", fontsize=7)
        claims = sorted({f"delta {m['delta']:g}, {m['accountant'].upper()}" for rows in pairs.values() for m in rows.values()
                         if m.get("epsilon") is not None and m.get("epsilon_unit") == "record"})
        ax.set_xlabel(f"record-level epsilon per site ({'; '.join(claims) or 'none claimed'})")
        ax.set_ylabel("test R1")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()
