"""Render the results tables of README.md and docs/*.md from the JSON under benchmarks/results/.

    python benchmarks/readme_tables.py           # rewrite every <!-- table:NAME --> block
    python benchmarks/readme_tables.py --check   # exit 1 if a block differs from what the JSON gives

A block is the text between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``;
NAME picks a renderer below (the privacy tables: privacy_tables.py). Nothing outside the blocks is touched, so the
prose around a table stays the author's, and after new results land only
this script needs rerunning (tests/test_readme_tables.py fails until it is).
A benchmark that has not been run yet renders as "Not run yet" and its command.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

from privacy_tables import dp_emulation, grouped_dp, per_record_limits, site_size
from table_common import BLOCK, FILES, HEADLINE, RESULTS, ROOT, load, machine, not_run, ordered, pm


def direct() -> str:
    d = load("direct_transfer")
    if d is None:
        return not_run("python benchmarks/direct_transfer.py")
    doms = list(d["matrix"])
    lines = [f"Text-to-image R1 / mAP on each target's test split; rows: the domain the teacher was trained on "
             f"(backbone `{d['backbone']}`).", "", "| source \\ target | " + " | ".join(doms) + " |",
             "|---|" + "---|" * len(doms)]
    for s in doms:
        lines.append(f"| {s} | " + " | ".join(f"{d['matrix'][s][t]['R1']:.1f} / {d['matrix'][s][t]['mAP']:.1f}"
                                             for t in doms) + " |")
    lines += ["", f"Command: `{d['command']}`; {machine(d)}."]
    return "\n".join(lines) + "\n"


def _ablation(names: tuple[str, ...] | None) -> str:
    d = load("ablation")
    if d is None:
        return not_run("python benchmarks/run_all.py --only ablation")
    pairs = d["pairs"]
    rows = [n for n in ordered(pairs[0]["runs"]) if names is None or n in names]
    lines = [f"Target test R1 and mAP, mean ± std over seeds {d['seeds']}; backbone `{d['backbone']}`, "
             f"{d['epochs']} adaptation epochs, fixed schedule.", "",
             "| variant | " + " | ".join(f"{p['source']}→{p['target']} R1 | mAP" for p in pairs) + " |",
             "|---|" + "---|---|" * len(pairs)]
    for n in rows:
        lines.append(f"| {n} | " + " | ".join(f"{pm(p['runs'][n], 'R1')} | {pm(p['runs'][n], 'mAP')}"
                                              if n in p["runs"] else "– | –" for p in pairs) + " |")
    margins = []
    for a, b in (("gckd_full", "pair_finetune"), ("gckd_full", "pair_finetune_ema"), ("gckd_per_record", "pair_finetune"),
                 ("gckd_per_record", "pair_finetune_ema")):
        if all(a in p["runs"] and b in p["runs"] for p in pairs):
            margins.append(f"`{a}` − `{b}`: " + ", ".join(
                f"{p['runs'][a]['R1'] - p['runs'][b]['R1']:+.1f} ({p['source']}→{p['target']})" for p in pairs))
    if margins:
        lines += ["", "Mean R1 margins: " + "; ".join(margins) + "."]
    commands = d.get("commands", [])
    stems = [c.split("--name ")[-1] for c in commands if "--name " in c]
    if names is not None:  # the README: one command; docs/results.md lists the runs it makes
        lines += ["", f"Command: `python benchmarks/run_all.py --only ablation` ({len(commands)} runs of "
                  f"`benchmarks/ablation.py`, one per pair and seed, merged by `benchmarks/merge_ablation.py`); {machine(d)}."]
    else:
        lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands) +
                  (f"; then `python benchmarks/merge_ablation.py {' '.join(stems)}`" if stems else "") + f"; {machine(d)}."]
    return "\n".join(lines) + "\n"


def ablation_headline() -> str:
    return _ablation(HEADLINE)


def ablation() -> str:
    return _ablation(None)


def federated(where: str = "README.md") -> str:
    """The federated benchmark's headline profile (`sites` once run, else `default`), one column group per pair; the
    other profiles are in federated.md, linked from the block (paths relative to the file ``where``)."""
    d = load("federated")
    if d is None:
        return not_run("python benchmarks/federated.py --profile sites && python benchmarks/federated.py --merge")
    profile = "sites" if "sites" in d["runs"] else next(iter(d["runs"]))
    pairs = d["runs"][profile]
    share = d.get("share_of_central_gain", {}).get(profile, {})
    names = ordered({r for rows in pairs.values() for r in rows})
    claims = {(m["delta"], m["accountant"]) for rows in pairs.values() for m in rows.values() if m.get("epsilon") is not None}
    one = len(claims) == 1
    if d.get("converted_from") == "v1":
        head = (f"**{profile}** profile, {d['sites']} sites, {d['rounds']} rounds, one teacher (seed 0): the first "
                f"version of this benchmark, its rows renamed; R1 and mAP on the target test split (record-level rows: "
                f"mean ± std of {d['repeats_of_record_level_runs']} runs with fresh DP noise).")
    else:
        seeds = sorted({s for rows in pairs.values() for m in rows.values() for s in m["seeds"]})
        n = sorted({m["settings"]["sites"] for rows in pairs.values() for m in rows.values() if "settings" in m})
        fewer = sorted({tuple(m["seeds"]) for rows in pairs.values() for m in rows.values()} - {tuple(seeds)})
        over = (f"mean ± std over seeds {', '.join(map(str, seeds))}" if not fewer else
                f"mean ± std over the seeds each row ran ({', '.join(map(str, seeds))} where a row shows ±; the others "
                f"{' or '.join(', '.join(map(str, f)) for f in fewer)}; a share compares a row with `direct` and "
                f"`central_full` of its own seeds)")
        head = (f"**{profile}** profile, {'/'.join(map(str, n)) or '?'} sites (Dirichlet partition); R1 and mAP on the "
                f"target test split, {over}.")
    eps_head = "epsilon per site" + (f" (delta {next(iter(claims))[0]:g}, {next(iter(claims))[1].upper()})" if one else "")
    lines = [head + " Share: of `central_full`'s R1 gain over `direct`.", "",
             "| row | " + " | ".join(f"{p.replace('->', '→')} R1 | mAP | share" for p in pairs) + f" | {eps_head} |",
             "|---|" + "---|---|---|" * len(pairs) + "---|"]
    for n in names:
        cells = []
        for pair, rows in pairs.items():
            m = rows.get(n)
            sh = share.get(pair, {}).get(n)
            cells.append("– | – | –" if m is None else f"{pm(m, 'R1')} | {pm(m, 'mAP')} | {'–' if sh is None else f'{sh:.0%}'}")
        m = next(rows[n] for rows in pairs.values() if n in rows)
        eps = "–" if m.get("epsilon") is None else (f"{m['epsilon']:g} ({m['epsilon_unit']}-level" +
                                                      (")" if one else f", delta {m['delta']:g}, {m['accountant'].upper()})"))
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {eps} |")
    frac = 100 * d["bytes_per_site_round"] / d["full_model_bytes"]
    lines += ["", f"Update per site per round: {d['bytes_per_site_round']:,} B of trained numbers ({frac:.2f}% of the "
              f"full model's {d['full_model_bytes']:,} B; Flower adds a header of about 128 B per array). "
              f"DP step / non-DP step: {d['dp_step_ratio']}x."]
    rel = lambda name: os.path.relpath(RESULTS / name, (ROOT / where).parent)  # noqa: E731
    more = [f"![test R1 against epsilon]({rel('federated.svg')})"] if (RESULTS / "federated.svg").exists() else []
    more += [corner(d, other) for other in d["runs"] if other != profile]
    if len(d["runs"]) > 1:
        more.append(f"Every profile and row: [federated.md]({rel('federated.md')}).")
    cmds = d.get("commands", [])
    cmd = f"`{cmds[0]}`" if len(cmds) == 1 else f"{len(cmds)} runs of `benchmarks/federated.py`, then `--merge`"
    lines += ["", " ".join(more + [f"Command: {cmd}; {machine(d)}" + (f", {d['seconds']} s." if "seconds" in d else ".")])]
    return "\n".join(lines) + "\n"


CORNER_ROWS = ("fed_full_none", "fed_grouped_none", "fed_grouped_record_eps8", "fed_per_record_record_eps8",
               "fed_full_site_eps8")  # the federated rows a reported corner names in one sentence (federated.md has all)


def corner(d: dict, profile: str) -> str:
    """One sentence of a profile other than the headline one: test R1 per pair and share of the central gain for
    `direct`, `central_full` and `CORNER_ROWS`, with the seeds they ran."""
    pairs, share = d["runs"][profile], d.get("share_of_central_gain", {}).get(profile, {})
    names = [p.replace("->", "→") for p in pairs]
    seeds = sorted({s for rows in pairs.values() for m in rows.values() for s in m.get("seeds", [])})

    def r1(row: str) -> str:
        return " / ".join(f"{rows[row]['R1']:.1f}" if row in rows else "–" for rows in pairs.values())

    def pct(row: str) -> str:
        return " / ".join(f"{share[p][row]:.0%}" if row in share.get(p, {}) else "–" for p in pairs)

    parts = [f"`{r}` {r1(r)}" for r in ("direct", "central_full") if any(r in rows for rows in pairs.values())]
    parts += [f"`{r}` {r1(r)} ({pct(r)})" for r in CORNER_ROWS if any(r in rows for rows in pairs.values())]
    return (f"The **{profile}** profile (test R1 {' / '.join(names)}, share of the gain; seed{'s' * (len(seeds) > 1)} "
            f"{', '.join(map(str, seeds))}): " + "; ".join(parts) + ".")


def scale() -> str:
    d = load("scale")
    if d is None:
        return not_run("python benchmarks/scale.py")
    s = d["setup"]
    lines = [f"`fedgckd simulate`, {s['backbone']} backbone, {s['per_round']} sites sampled per round, {s['rounds']} rounds, "
             f"privacy {s['privacy']}, {s['partition']} partition of the `scale` profile's target.", "",
             "| sites | wall (s) | peak RSS, process tree (MiB) | updates trained / rejected | site state on disk | "
             "val R1 after the last round |", "|---|---|---|---|---|---|"]
    for n, r in sorted(d["sites"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {int(n):,} | {r['wall_s']} | {r['peak_rss_mib']:.0f} | {r['trained_updates']} / "
                     f"{r['rejected_updates']} | {r['site_state_dirs']} folders, {r['site_state_bytes'] / 2**20:.1f} MiB | "
                     f"{r['final_val_R1']:.1f} |")
    lines += ["", f"Record-level DP step / non-DP step (`minilm-effnet`, train-params `last`): {d['dp_step_ratio']}x. "
              f"Evaluation of 20,000 queries x 10,000 images: {d['eval_20k_x_10k_s']} s.", "",
              f"Command: `{d['command']}`; {machine(d)}, {d['seconds']} s."]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "direct": direct, "ablation-headline": ablation_headline, "ablation": ablation, "federated": federated,
    "scale": scale, "grouped-dp": grouped_dp, "per-record-limits": per_record_limits, "dp-emulation": dp_emulation, "site-size": site_size,
}


WHERE_AWARE = {"federated"}  # renderers that link files, relative to the file the block is in


def render(text: str, where: str = "README.md") -> str:
    """`text` with every table block rendered afresh; an unknown NAME is an error naming the file."""
    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in RENDERERS:
            raise KeyError(f"{where}: unknown table {name!r}; known: {', '.join(RENDERERS)}")
        body = RENDERERS[name](where) if name in WHERE_AWARE else RENDERERS[name]()
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(one, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = ap.parse_args()
    stale = []
    for rel in FILES:
        path = ROOT / rel
        if not path.exists():
            continue
        old = path.read_text()
        new = render(old, rel)
        if new != old:
            stale.append(rel)
            if not args.check:
                path.write_text(new)
    verb = "out of date" if args.check else "rewritten"
    print(f"{verb}: {', '.join(stale)}" if stale else "every table matches benchmarks/results/*.json")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
