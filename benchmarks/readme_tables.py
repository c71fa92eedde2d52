"""Render the results tables of README.md and docs/*.md from the JSON under benchmarks/results/.

    python benchmarks/readme_tables.py           # rewrite every <!-- table:NAME --> block
    python benchmarks/readme_tables.py --check   # exit 1 if a block differs from what the JSON gives

A block is the text between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``;
NAME picks a renderer below. Nothing outside the blocks is touched, so the
prose around a table stays the author's, and after new results land only
this script needs rerunning (tests/test_readme_tables.py fails until it is).
A benchmark that has not been run yet renders as "Not run yet" and its command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

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
        head = (f"**{profile}** profile, {'/'.join(map(str, n)) or '?'} sites (Dirichlet partition); R1 and mAP on the "
                f"target test split, mean ± std over seeds {', '.join(map(str, seeds))}.")
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
    if len(d["runs"]) > 1:
        more.append(f"Every profile and row: [federated.md]({rel('federated.md')}).")
    cmds = d.get("commands", [])
    cmd = f"`{cmds[0]}`" if len(cmds) == 1 else f"{len(cmds)} runs of `benchmarks/federated.py`, then `--merge`"
    lines += ["", " ".join(more + [f"Command: {cmd}; {machine(d)}" + (f", {d['seconds']} s." if "seconds" in d else ".")])]
    return "\n".join(lines) + "\n"


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


def per_record_limits() -> str:
    d = load("per_record_limits")
    if d is None:
        return not_run("python benchmarks/per_record_limits.py --seeds 0 1 2")
    lines = [f"Target **val** split, mean ± std over seeds {d['seeds']}; backbone `{d['backbone']}`. Purity: the share of "
             "images whose nearest other image, and of captions whose nearest caption of another record, is the same "
             "person.", "", "| model | pair | R1 | mAP | image purity | caption purity |", "|---|---|---|---|---|---|"]
    for p in d["pairs"]:
        for n in ordered(p["models"]):
            m = p["models"][n]
            lines.append(f"| {n} | {p['source']}→{p['target']} | " +
                         " | ".join(pm(m, k) for k in ("R1", "mAP", "image_purity", "caption_purity")) + " |")
    lines += ["", f"`gckd_per_record_exact_stats` releases its statistics at noise multiplier {d['no_noise_multiplier']:g}: "
              "no privacy, a diagnostic.", "", f"Command: `{d['command']}`; {machine(d)}, {d['seconds']} s."]
    return "\n".join(lines) + "\n"


def dp_emulation() -> str:
    d = load("dp_emulation")
    if d is None:
        return not_run("python benchmarks/dp_emulation.py")
    runs, g = d["runs"], d["diagnosis"]
    lines = [f"Emulated FedAvg, {d['source']}→{d['target']}, {d['sites']} IID sites, teacher fixed, no prototypes, "
             f"epsilon 8 per record (delta {d['delta']:g}, RDP) where noised; target val split "
             f"(start R1 {next(iter(runs.values()))['val_R1_start']:.1f}).", "",
             "| setting | trained numbers | lr | rounds x steps | noise multiplier per site | val R1 | val mAP |",
             "|---|---|---|---|---|---|---|"]
    for k in ordered(runs):
        r = runs[k]
        lines.append(f"| {k} | {r['trained_numbers']:,} | {r['lr']:g} | {r['rounds']} x {r['local_steps']} | "
                     f"{r['site_noise_multiplier']:g} | {r['val_R1']:.1f} | {r['val_mAP']:.1f} |")
    lo, hi = g["grad_norm_p10_p90"]
    lines += ["", f"At the teacher ({g['records']} target records, `last`): per-record gradient norm median "
              f"{g['grad_norm_median']:g} (10-90%: {lo:g}-{hi:g}); mean clipped gradient norm {g['mean_clipped_grad_norm']:g}; "
              f"share of the mean gradient's energy in the rank-16 public basis {g['rank16_energy_share']:.0%}. "
              "sqrt(steps) x rate / sigma at epsilon 8 over 200 steps, by rate: " +
              ", ".join(f"{q}: {v:g}" for q, v in g["sqrt_steps_rate_over_sigma_eps8_200_steps"].items()) + ".",
              "", f"Command: `{d['command']}`; {machine(d)}, {d['seconds']} s."]
    return "\n".join(lines) + "\n"


def site_size() -> str:
    d = load("site_size")
    if d is None:
        return not_run("python benchmarks/site_size.py")
    base = d["direct"]["R1"]
    lines = [f"{d['source']}→{d['target']} (`sites` profile), {d['sites']} IID sites, emulated record-level FedAvg: "
             f"{d['rounds']} rounds x {d['local_steps']} steps at rate {d['sample_rate']:g}, noise multiplier "
             f"{d['noise_multiplier']:.3f} (epsilon {d['epsilon']:g} per record, delta {d['delta']:g}, "
             f"{d['accountant'].upper()}). Test R1 (val R1 chose the step size); direct transfer {base:.1f}. Shares are "
             "of the gain over direct transfer. `last`: the image head's last Linear; `all`: the whole image head.", "",
             "| records per site | records per step | central R1 | trained | fed, no noise R1 (share of central) | "
             f"fed, epsilon {d['epsilon']:g} R1 (share of central) | its share of the no-noise gain | lr chosen on val |",
             "|---|---|---|---|---|---|---|---|"]
    for s in d["sizes"]:
        for t in sorted(s["train_sets"], key=lambda t: (t != "last", t)):  # the default first
            r = s["train_sets"][t]
            sh, noisy, clean = r["share_of_central_gain"], r["fed_record_eps8"], r["fed_no_noise"]
            kept = (noisy["R1"] - base) / (clean["R1"] - base)
            lines.append(f"| {s['records_per_site']:,} | {s['records_per_step']:g} | {s['central']['R1']:.1f} | `{t}` | "
                         f"{clean['R1']:.1f} ({sh['fed_no_noise']:.0%}) | {noisy['R1']:.1f} ({sh['fed_record_eps8']:.0%}) "
                         f"| {kept:.0%} | {noisy['lr']:g} |")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in d["commands"]) + f"; {machine(d)}, {d['seconds']} s in all."]
    return "\n".join(lines) + "\n"


def grouped_dp_share(rows: dict) -> str:
    """`gckd_grouped_dp_eps8`'s share of `gckd_full`'s R1 gain over `direct`, or what is missing for it."""
    missing = [r for r in ("direct", "gckd_full", "gckd_grouped_dp_eps8") if r not in rows]
    if missing:
        return "(" + ", ".join(f"`{r}`" for r in missing) + " not run yet)"
    base = rows["direct"]["R1"]
    return f"{round(100 * (rows['gckd_grouped_dp_eps8']['R1'] - base) / (rows['gckd_full']['R1'] - base))}%"  # no "-0%"


def grouped_dp() -> str:
    """One column per (profile, pair), test R1 (mean over the seeds; fewer than three are marked), one epsilon column."""
    d = load("grouped_dp")
    if d is None:
        return not_run("python benchmarks/grouped_dp.py --merge")
    cols = [(prof, pair) for prof, pairs in d["runs"].items() for pair in pairs]
    names = ordered({r for prof, pair in cols for r in d["runs"][prof][pair]})
    head = " | ".join(f"{prof} {pair.replace('->', '→')}" for prof, pair in cols)
    lines = [f"Test R1, mean over seeds (fewer than 3: the count in brackets); epsilon record-level, delta "
             f"{d['delta']:g}, {d['accountant'].upper()}, the whole adaptation accounted; rows without one claim none. "
             f"`default`: 1,800 target records, `sites`: 18,000, at one site.", "",
             f"| row | {head} | epsilon |", "|---|" + "---|" * len(cols) + "---|"]
    for name in names:
        cells, eps = [], []
        for prof, pair in cols:
            m = d["runs"][prof][pair].get(name)
            if m is None:
                cells.append("–")
                continue
            n = len(m["seeds"])
            cells.append(f"{m['R1']:.1f}" + (f" ({n})" if n < 3 else ""))
            if m.get("epsilon") is not None:
                eps.append(m["epsilon"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {max(eps):.2f} |" if eps else f"| {name} | " + " | ".join(cells) + " | – |")
    lines += ["", "Share of `gckd_full`'s R1 gain over `direct` that `gckd_grouped_dp_eps8` keeps: "
              + "; ".join(f"{prof} {pair.replace('->', '→')} {grouped_dp_share(d['runs'][prof][pair])}" for prof, pair in cols)
              + "."]
    lines += ["", "Commands: one `python benchmarks/grouped_dp.py --profile P --pairs ... --seeds ... --runs ...` per part, "
              f"then `--merge` ([grouped_dp.md](benchmarks/results/grouped_dp.md) lists every command; plot: "
              f"[grouped_dp.svg](benchmarks/results/grouped_dp.svg)); {machine(d)}."]
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
