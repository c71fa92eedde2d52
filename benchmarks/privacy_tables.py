"""Renderers of the privacy tables (docs/limits.md and the README's grouped-DP block): per-record limits, the DP
emulation, site size, grouped record-level DP. `readme_tables.py` puts them in its registry."""

from __future__ import annotations

from table_common import load, machine, not_run, ordered, pm


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


def grouped_dp_share(rows: dict, row: str = "gckd_grouped_dp_eps8") -> str:
    """``row``'s share of `gckd_full`'s R1 gain over `direct`, or what is missing for it."""
    missing = [r for r in ("direct", "gckd_full", row) if r not in rows]
    if missing:
        return "(" + ", ".join(f"`{r}`" for r in missing) + " not run yet)"
    base = rows["direct"]["R1"]
    return f"{round(100 * (rows[row]['R1'] - base) / (rows['gckd_full']['R1'] - base))}%"  # no "-0%"


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
    for row in ("gckd_grouped_dp_eps8", "gckd_per_record_dp_eps8"):
        lines += ["", f"Share of `gckd_full`'s R1 gain over `direct` that `{row}` keeps: "
                  + "; ".join(f"{prof} {pair.replace('->', '→')} {grouped_dp_share(d['runs'][prof][pair], row)}"
                              for prof, pair in cols) + "."]
    lines += ["", "Commands: one `python benchmarks/grouped_dp.py --profile P --pairs ... --seeds ... --runs ...` per part, "
              f"then `--merge` ([grouped_dp.md](benchmarks/results/grouped_dp.md) lists every command; plot: "
              f"[grouped_dp.svg](benchmarks/results/grouped_dp.svg)); {machine(d)}."]
    return "\n".join(lines) + "\n"
