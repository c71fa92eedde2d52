"""`fedgckd simulate`: a Flower simulation of the federation on this machine."""

from __future__ import annotations

import logging

from pathlib import Path

import typer
from rich.table import Table

from fedgckd.commands.common_options import CACHE_HELP, user_errors
from fedgckd.progress import console, progress_bar


def register(app: typer.Typer) -> None:
    app.command()(simulate)


def _read_preset(path: Path) -> dict:
    import tomllib

    with open(path, "rb") as f:
        data = tomllib.load(f)
    return data.get("run-config", data)


def simulate(
    data: Path = typer.Option(None, "--data", help="Data folder holding one subfolder per domain/dataset (required unless --resume)."),
    teacher: Path = typer.Option(None, "--teacher", help="Source-pretrained checkpoint (from `fedgckd pretrain`; required unless --resume)."),
    target: str = typer.Option(None, "--target", help="Target domain; its train split is dealt out to the sites (labels only to split; required unless --resume)."),
    out: Path = typer.Option(None, "--out", help="Run folder: model/, teacher/, metrics.json, ledger.json, sites.json, checkpoint.safetensors (required unless --resume)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this folder from its checkpoint (after its last completed round), with its own config."),
    sites: int = typer.Option(None, "--sites", help="Number of simulated sites (default 3)."),
    rounds: int = typer.Option(None, "--rounds", help="Server rounds (default 3)."),
    privacy: str = typer.Option(None, "--privacy", help="record (default: DP-SGD at each site), site (clipped updates + central noise) or none."),
    epsilon: float = typer.Option(None, "--epsilon", help="Privacy budget per site for the whole run (default 8)."),
    delta: float = typer.Option(None, "--delta", help="Default 1e-5."),
    mode: str = typer.Option(None, "--mode", help="full, per-record or grouped (default: per-record; record-level DP allows per-record and grouped)."),
    backbone: str = typer.Option(None, "--backbone", help="Backbone (default: the one recorded in the teacher checkpoint)."),
    sites_per_round: int = typer.Option(None, "--sites-per-round", help="0 (default) = all sites every round; k < sites = each site sampled with probability k/sites (Poisson)."),
    local_steps: int = typer.Option(None, "--local-steps", help="Local steps per site per round."),
    noise_multiplier: float = typer.Option(None, "--noise-multiplier", help="> 0 overrides the noise derived from --epsilon."),
    clip_norm: float = typer.Option(None, "--clip-norm"),
    sample_rate: float = typer.Option(None, "--sample-rate", help="DP-SGD Poisson sampling rate at each site."),
    partition: str = typer.Option(None, "--partition", help="dirichlet (default, non-IID), by-identity or by-style."),
    seed: int = typer.Option(None, "--seed", help="Partition, anchor bank and data order (default 0); DP noise is never seeded."),
    state_dir: Path = typer.Option(None, "--state-dir", help="Site state (ledgers, teacher cache); default OUT/sites. A site continues its ledger there."),
    preset: Path = typer.Option(None, "--config", help="A TOML file of run-config keys (e.g. simulations/configs/*.toml); options given on the command line win."),
    setting: list[str] = typer.Option([], "--set", help="Any other run-config key, as KEY=VALUE (repeatable)."),
    cpus: int = typer.Option(None, "--cpus", help="CPUs for the simulation engine (default: min(cores, sites))."),
    engine: str = typer.Option("ray", "--engine", help="ray (Flower's simulation engine, sites side by side) or inprocess (the same apps, sites one after another in this process: no actor start-up, sooner on a few cores)."),
    cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
    verbose: bool = typer.Option(False, "--verbose", help="Show Flower's INFO log."),
    force: bool = typer.Option(False, "--force", help="Overwrite the run already in --out (its model, metrics, ledger and audit). The sites' ledgers continue: what the earlier run spent still counts."),
) -> None:
    """Federated GCKD adaptation: a server, SITES simulated sites, ROUNDS rounds, under the chosen privacy."""
    from common.federation.config import FedConfig
    from fedgckd.commands.audit import write_run_audit
    from fedgckd.commands.run_folder import existing_run_refusal, run_failure
    from simulations.runner import ENGINES, SimulationFailed, prepare, resume_config, simulate as run

    if resume is None and None in (data, teacher, target, out):
        console.print("[bold red]error:[/] --data, --teacher, --target and --out are required (or --resume RUN_DIR)")
        raise typer.Exit(2)
    if engine not in ENGINES:
        console.print(f"[bold red]error:[/] --engine {engine!r}: expected one of {', '.join(ENGINES)}")
        raise typer.Exit(2)
    if resume is None:
        refusal = existing_run_refusal(out, state_dir, force)
        if refusal:
            console.print(f"[bold red]error:[/] {refusal}", soft_wrap=True)
            raise typer.Exit(2)
    given = {"data-dir": str(data), "teacher": str(teacher), "target": target, "out-dir": str(out), "sites": sites,
             "rounds": rounds, "privacy": privacy, "epsilon": epsilon, "delta": delta, "mode": mode,
             "backbone": backbone, "sites-per-round": sites_per_round, "local-steps": local_steps,
             "noise-multiplier": noise_multiplier, "clip-norm": clip_norm, "sample-rate": sample_rate,
             "partition": partition, "seed": seed, "cache-dir": str(cache) if cache else None,
             "state-dir": str(state_dir or out / "sites") if out else None}
    with user_errors():
        base = _read_preset(preset) if preset else {}
        for item in setting:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
            base[key.strip()] = value.strip()
        done = 0
        if resume is not None:  # the run's own config; only operational keys may be --set
            cfg = resume_config(resume, **base)
            out = Path(cfg.out_dir)
            done = _resume_note(resume, cfg.rounds)
        else:
            cfg = FedConfig.from_run_config(base, **{k: v for k, v in given.items() if v is not None}).validate()
        console.print("preparing features and sites")  # each feature extraction shows its own bar
        info = prepare(cfg, progress=progress_bar)
        console.print("sites: " + ", ".join(f"{s['site']}: {s['records']} records" for s in info["sites"]))
        if "record_level_noise" in info:
            _noise_note(info["record_level_noise"], cfg.train_params, cfg.rounds * cfg.local_steps)
            _outcome_note(cfg, [s["records"] for s in info["sites"]])
            logging.getLogger("fedgckd.site").setLevel(logging.ERROR)  # the same note, per site: said once above
        try:
            with progress_bar(f"federation ({cfg.privacy}, {cfg.mode})") as bar:
                bar(done, cfg.rounds)
                result = run(cfg, on_round=lambda r, n, i: bar(r, n, i), num_cpus=cpus, verbose=verbose,
                             engine=engine)
        except SimulationFailed as ex:
            console.print(f"[bold red]simulation failed:[/] {ex}")
            write_run_audit(out)  # the privacy spent by the rounds that did run
            raise typer.Exit(1) from None
    _report(result, out)
    failure = run_failure(result, write_run_audit(out))
    if failure:
        console.print(f"[bold red]run failed:[/] {failure}", soft_wrap=True)
        raise typer.Exit(1)



def _resume_note(run_dir: Path, rounds: int) -> int:
    """Say which round a resumed run continues from; returns the last completed round."""
    from server.checkpoint import load_checkpoint, path_of

    done = load_checkpoint(run_dir).round
    console.print(f"resuming {run_dir}: rounds 1-{done} of {rounds} are done (checkpoint {path_of(run_dir)}); "
                  f"continuing with round {done + 1}" if done < rounds else
                  f"resuming {run_dir}: all {rounds} rounds are done (checkpoint {path_of(run_dir)}); "
                  "rewriting the model, metrics and audit")
    return done


def _noise_note(noise: dict, train_params: str, steps: int) -> None:
    """Before training: how loud each site's DP-SGD noise is against its largest possible signal.

    Per step the ratio is ``noise_to_clip``. Over a run the clipped signal adds up linearly in the steps and the
    independent noise as their square root, so a site that takes every one of ``steps`` steps ends with noise
    ``noise_to_clip / sqrt(steps)`` times its largest possible summed signal. Only when even that exceeds 1
    (at the site with the most records per step) is "training will mostly follow noise" certain, and said.
    """
    import math

    lo, hi = min(noise["noise_to_clip"]), max(noise["noise_to_clip"])
    b_lo, b_hi = min(noise["records_per_step"]), max(noise["records_per_step"])
    run_lo = lo / math.sqrt(max(steps, 1))
    line = (f"record-level DP-SGD: noise multiplier {noise['dp_sgd_noise_multiplier']:.3g} on "
            f"{noise['trained_numbers']:,} trained numbers at {b_lo}-{b_hi} records per step: the noise on a step's "
            f"mean gradient is {lo:.3g}-{hi:.3g} times the largest possible mean clipped gradient, "
            f"{run_lo:.3g}-{hi / math.sqrt(max(steps, 1)):.3g} times over the run's {steps} steps")
    if run_lo > 1:
        console.print(f"[yellow]{line}; even summed over the run the noise outweighs the largest possible signal, so "
                      "training will mostly follow noise. More records per site, fewer trained numbers "
                      "(train-params) or a larger epsilon help.[/]")
    else:
        console.print(line)
    from common.federation.trainable import train_params_advice

    advice = train_params_advice(train_params, noise["records_per_step"])
    if advice:
        console.print(f"[cyan]hint:[/] {advice}")


def _outcome_note(cfg, records_per_site: list[int]) -> None:
    """Before training: the share of the central gain the measured table expects (yellow when it is small)."""
    from common.federation.expected_outcome import estimate, hand_set_epsilon

    hand_set = cfg.noise_multiplier > 0  # --noise-multiplier overrides the noise derived from --epsilon
    est = estimate(records_per_site, hand_set_epsilon(cfg) if hand_set else cfg.epsilon, cfg.loss_mode,
                   cfg.train_params, delta=cfg.delta, accountant=cfg.accountant, noise_multiplier=cfg.noise_multiplier,
                   budget=cfg.epsilon if hand_set else None)
    if est:
        console.print(est.text, style="yellow" if est.low else None, soft_wrap=True, markup=False, highlight=False)


def update_size_line(result: dict) -> str:
    """One figure per update: the bytes a site sent, as measured on the wire by the server (the array payloads
    Flower carries: the numbers plus a small header per array), and what part of that is numbers."""
    sizes = result["model_bytes"]
    numbers, full = sizes["update_bytes"], sizes["full_model_bytes"]
    sent = sorted({b for r in result["rounds"] for b in r.get("bytes_from_site", {}).values()})
    if not sent:
        return (f"update: {numbers:,} B of numbers = {100 * numbers / full:.2f}% of the full model "
                f"({full:,} B incl. frozen trunks); no site sent one")
    shown = f"{sent[0]:,} B" if len(sent) == 1 else f"{sent[0]:,}-{sent[-1]:,} B"
    return (f"update: {shown} sent per site per round = {100 * sent[-1] / full:.2f}% of the full model "
            f"({full:,} B incl. frozen trunks); of it {numbers:,} B are the trained numbers, the rest array headers")


def _report(result: dict, out: Path) -> None:
    table = Table("round", "R1", "mAP", "trained", "refused", "rejected", "errors", "bytes from each site")
    for r in result["rounds"]:
        up = sorted(set(r.get("bytes_from_site", {}).values()))
        table.add_row(str(r["round"]), f"{r.get('R1', float('nan')):.2f}", f"{r.get('mAP', float('nan')):.2f}",
                      str(len(r["trained"])), ", ".join(r["refused"]) or "-", ", ".join(r["rejected"]) or "-",
                      ", ".join(r["errors"]) or "-", ", ".join(map(str, up)) or "-")
    console.print(table)
    console.print(update_size_line(result))
    from common.atomic import read_json

    eps = read_json(out / "ledger.json").get("final_epsilon", {})
    if eps:
        priv = read_json(out / "metrics.json").get("privacy", {})
        unit = {"record": "record-level", "site": "site-level"}.get(priv.get("mode"), str(priv.get("mode")))
        what = f"({unit}, delta = {priv.get('delta')}, Opacus {str(priv.get('accountant', 'rdp')).upper()})"
        console.print(f"epsilon per site {what}: " + ", ".join(f"{s} {e:.3f}" for s, e in sorted(eps.items())))
    console.print(f"wrote {out}/model, metrics.json, ledger.json ({result.get('wall_s', 0):.1f}s)")
