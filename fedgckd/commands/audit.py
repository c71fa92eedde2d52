"""`fedgckd audit` (the run's privacy report) and `fedgckd audit-empirical` (a one-run canary audit)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedgckd.commands.common_options import CACHE_HELP, user_errors
from fedgckd.progress import console, progress_bar

AUDIT_BAR = "privacy audit (RDP + PRV + dp-accounting)"


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
    app.command("audit-empirical")(audit_empirical)


def print_summary(audit: dict, json_path: Path, html_path: Path) -> None:
    from common.report.wording import VERDICTS, eps_label, fmt

    table = Table("site", "verdict", "epsilon spent", "Opacus PRV (same unit, delta)",
                  "dp-accounting PLD (same unit, delta)", "budget")
    for s in audit["sites"]:
        eps = "-" if s["unit"] is None else eps_label(float("inf") if s.get("epsilon_infinite") else s["epsilon"],
                                                    s["unit"], s["delta"], s["accountant"])
        if s.get("prior_runs"):
            eps += f"; earlier runs alone {fmt(s.get('epsilon_prior'))}, this run alone {fmt(s.get('epsilon_this_run'))}"
        prv = f"{s['epsilon_prv']:.4g}" if s.get("epsilon_prv") is not None else (s.get("prv_error") or "-")
        table.add_row(s["site"], VERDICTS[s["verdict"]], eps, prv, fmt(s.get("epsilon_pld")) if s["unit"] else "-",
                      "-" if s["budget"] is None else f"{s['budget']:g}")
    console.print(table)
    for s in audit["sites"]:
        person = s.get("person_level") or {}
        sizes = [x for x in person.get("sizes", []) if x["epsilon"] is not None]
        if sizes:
            console.print(f"{s['site']}, epsilon for a person with k records at this site (delta = {person['delta']:g}, "
                          "dp-accounting PLD): " + ", ".join(f"k={x['k']} {fmt(x['epsilon'])}" for x in sizes))
    for f in audit["checks"]["flags"]:
        console.print(f"[bold red]{f['kind']}[/]: {f['message']}")
    emp = audit.get("empirical")
    if emp:
        acc = "inf" if emp["accounted_infinite"] else f"{emp['accounted_epsilon']:.4g}"
        console.print(f"empirical lower bound {emp['epsilon_lower_bound']:.4g} ({100 * emp['confidence']:.0f}% "
                      f"confidence) vs accounted {acc} (record-level, delta {emp['delta']:g}, Opacus RDP)")
    console.print(f"checks: {'ok' if audit['checks']['ok'] else 'FAILED'}; wrote {json_path} and {html_path}")


def write_run_audit(run_dir: Path) -> dict | None:
    """`fedgckd simulate` calls this at the end of every run (a failed one too): the run's code version
    (provenance.json), audit.json and audit.html in the run folder. Returns the audit (None: no ledger)."""
    from common.report.provenance import record_run_provenance
    from common.report.write import write_audit

    if not (Path(run_dir) / "ledger.json").exists():
        console.print(f"[bold red]no privacy audit:[/] {run_dir} holds no ledger.json")
        return None
    try:
        record_run_provenance(run_dir)
        with progress_bar(AUDIT_BAR) as bar:
            report, json_path, html_path = write_audit(run_dir, progress=bar)
    except Exception as ex:  # the run's own files are written; say loudly that its report is not
        console.print(f"[bold red]privacy audit failed:[/] {type(ex).__name__}: {ex}")
        raise typer.Exit(1) from None
    print_summary(report, json_path, html_path)
    return report


def audit(
    run_dir: Path = typer.Argument(..., help="A run folder (holds ledger.json and metrics.json)."),
    out: Path = typer.Option(None, "--out", help="Where to write audit.json and audit.html (default: RUN_DIR)."),
    empirical: Path = typer.Option(None, "--empirical", help="An empirical_audit.json to include (default: RUN_DIR/empirical_audit.json if present)."),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 if a check fails (inconsistent ledger, accountants disagree, over budget)."),
    max_prv: int = typer.Option(40, "--max-prv", help="Most distinct histories given to the PRV accountant (1-3 s each); final states first, the rest say 'not computed'."),
) -> None:
    """Privacy report of a run: verdict per site, epsilon recomputed by two accountants, the run's config and code."""
    from common.atomic import read_json
    from common.report.run_reader import RunDirError
    from common.report.write import write_audit

    try:
        with user_errors():
            emp = read_json(empirical) if empirical else None
            with progress_bar(AUDIT_BAR) as bar:
                report, json_path, html_path = write_audit(run_dir, out, emp, max_prv, progress=bar)
    except RunDirError as ex:
        console.print(f"[bold red]error:[/] {ex}")
        raise typer.Exit(2) from None
    print_summary(report, json_path, html_path)
    if strict and not report["checks"]["ok"]:
        raise typer.Exit(1)


def _from_run(run: Path, site: int) -> tuple[dict, list[float] | None, dict]:
    from common.atomic import read_json
    from common.report.audit_inputs import run_mechanism, run_prototype_noise

    metrics, ledger = read_json(run / "metrics.json"), read_json(run / "ledger.json")
    cfg = dict(metrics["config"])
    if cfg.get("privacy") == "site":
        raise ValueError("this run is site-level: its unit is a whole site, and a canary audit of it would need "
                         "canary sites; audit-empirical audits record-level DP-SGD only")
    if cfg.get("privacy") != "record":
        return cfg, None, {}
    noise, q, steps, clip = run_mechanism(ledger, f"site-{site}",
                                          "dp-sgd-grouped" if cfg.get("mode") == "grouped" else "dp-sgd")
    mech = {"sample-rate": q, "local-steps": steps, "clip-norm": clip}
    proto = run_prototype_noise(ledger, f"site-{site}")
    if proto is not None:  # the noise the run really used (its config may say "automatic")
        mech["prototype-noise"] = proto
    return cfg, noise, mech


def audit_empirical(
    run: Path = typer.Option(None, "--run", help="Audit this run's mechanism: data, teacher, target, partition and each round's DP-SGD noise, rate and steps come from it; the result goes into RUN/empirical_audit.json and RUN/audit.html."),
    data: Path = typer.Option(None, "--data", help="Data folder (not needed with --run)."),
    teacher: Path = typer.Option(None, "--teacher", help="Source-pretrained checkpoint (not needed with --run)."),
    target: str = typer.Option(None, "--target", help="Target domain whose train split holds the audited site (not needed with --run)."),
    out: Path = typer.Option(None, "--out", help="Folder for empirical_audit.json (default: the --run folder)."),
    privacy: str = typer.Option(None, "--privacy", help="record (DP-SGD) or none (the same code path with noise 0: the control that shows the attack works). Default: the run's, else record."),
    noise_multiplier: float = typer.Option(None, "--noise-multiplier", help="DP-SGD noise multiplier for every round (default: the run's per-round values)."),
    epsilon: float = typer.Option(None, "--epsilon", help="Derive the noise multiplier so the audited DP-SGD alone spends this epsilon (record-level, at --delta, Opacus RDP)."),
    rounds: int = typer.Option(None, "--rounds", help="Local rounds to run (default: the run's, or 1)."),
    local_steps: int = typer.Option(None, "--local-steps", help="DP-SGD steps per round."),
    sample_rate: float = typer.Option(None, "--sample-rate", help="Poisson sampling rate."),
    clip_norm: float = typer.Option(None, "--clip-norm"),
    delta: float = typer.Option(None, "--delta", help="Delta of the bound and of the accounted epsilon (default: the run's, or 1e-5)."),
    sites: int = typer.Option(None, "--sites", help="Partition the target train split into this many sites (default: the run's, or 1 = the whole split)."),
    site: int = typer.Option(0, "--site", help="Which partition is the audited site."),
    canaries: int = typer.Option(256, "--canaries", help="Number of canaries m (each trained on with probability 1/2)."),
    k: list[int] = typer.Option([], "--k", help="Guesses 'in' (and 'out') per side; repeatable, fixed in advance (default: 5/10/25/50 percent of m)."),
    score: str = typer.Option("update", "--score", help="update (white-box: the site's update, what the server sees) or pair (black-box matching score)."),
    setting: list[str] = typer.Option([], "--set", help="Any other run-config key, as KEY=VALUE (e.g. train-params=all, lr=0.1)."),
    cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
    seed: int = typer.Option(0, "--seed", help="Canary features only; the coins, the DP noise and the sampling are never seeded."),
) -> None:
    """One-run canary audit (Steinke, Nasr & Jagielski 2023): an empirical lower bound on record-level epsilon."""
    from common.atomic import atomic_write_json
    from common.federation.config import FedConfig
    from common.privacy.accounting import noise_multiplier_for
    from common.report.audit_inputs import load_inputs
    from common.report.empirical import CanaryAuditConfig, run_canary_audit

    with user_errors():
        base, run_noise, mech = _from_run(run, site) if run else ({}, None, {})
        for item in setting:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
            base[key.strip()] = value.strip()
        given = {"data-dir": str(data) if data else None, "teacher": str(teacher) if teacher else None,
                 "target": target, "cache-dir": str(cache) if cache else None, "local-steps": local_steps,
                 "sample-rate": sample_rate, "clip-norm": clip_norm, "delta": delta, "sites": sites}
        base.update(mech)
        if not run:
            base.setdefault("sites", 1)
        cfg = FedConfig.from_run_config(base, **{k_: v for k_, v in given.items() if v is not None})
        mode = privacy or ("none" if run and base.get("privacy") == "none" else "record")
        if mode not in ("record", "none"):
            raise ValueError("--privacy must be record or none (site-level DP needs canary sites, not records)")
        n_rounds = rounds or (len(run_noise) if run_noise else 1)
        if mode == "none":
            noise = [0.0] * n_rounds
        elif noise_multiplier is not None:
            noise = [noise_multiplier] * n_rounds
        elif epsilon is not None:
            noise = [noise_multiplier_for(epsilon, cfg.delta, cfg.sample_rate, n_rounds * cfg.local_steps)] * n_rounds
        elif run_noise:
            noise = run_noise[:n_rounds] + [run_noise[-1]] * max(0, n_rounds - len(run_noise))
        else:
            raise ValueError("give --noise-multiplier or --epsilon (or --run with a record-level run, or --privacy none)")
        dest = out or run
        if dest is None:
            raise ValueError("give --out (or --run)")
        with console.status("loading features and the teacher"):
            inputs = load_inputs(cfg, site)
        with console.status(f"training with {canaries} canaries ({n_rounds} round(s), noise {noise[0]:.4g})"):
            result = run_canary_audit(inputs.teacher, inputs.site, inputs.anchor_images, inputs.anchor_texts,
                                      inputs.names, cfg, noise, CanaryAuditConfig(canaries=canaries, ks=tuple(k),
                                                                                  score=score, seed=seed),
                                      bank=inputs.bank)
    result.source = {**inputs.source, "run": str(run) if run else None}
    path = atomic_write_json(Path(dest) / "empirical_audit.json", result.to_dict())
    acc = "inf (no noise)" if result.accounted_epsilon == float("inf") else f"{result.accounted_epsilon:.4g}"
    console.print(f"empirical lower bound {result.epsilon_lower_bound:.4g} ({100 * result.confidence:.0f}% confidence, "
                  f"{result.canaries} canaries) vs accounted {acc} (record-level, delta {result.delta:g}, Opacus RDP); "
                  f"wrote {path}")
    if run:
        from common.report.write import write_audit

        report, json_path, html_path = write_audit(run)
        print_summary(report, json_path, html_path)
    if not result.within_accounting:
        console.print("[bold red]the empirical lower bound exceeds the accounted epsilon[/]")
        raise typer.Exit(1)
