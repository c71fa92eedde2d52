"""`fedgckd demo`: the whole pipeline on a small generated benchmark, in a few minutes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from fedgckd.progress import console


def _preset(name: str) -> Path:
    return Path(__file__).resolve().parents[2] / "simulations" / "configs" / name


def _cli(*args) -> None:
    """Run a fedgckd command in a fresh process (the simulation engine owns its process tree)."""
    cmd = [sys.executable, "-m", "fedgckd", *map(str, args)]
    if subprocess.run(cmd).returncode != 0:
        raise typer.Exit(1)


def tiny_caveat() -> str:
    """One line: on the tiny profile every figure above is noise; where the real ones are."""
    from common.data.synth import PROFILES

    tiny = PROFILES["tiny"]
    val_ids = tiny.identities[1]
    queries = val_ids * tiny.images_per_identity * 2  # two captions per image, each a query
    return (f"[yellow]caveat:[/] the tiny profile has {val_ids} val identities ({queries} queries: one query moves R1 "
            f"by {100 / queries:.2f}), so these metrics are noise, not results; the benchmark tables are in README.md "
            "(Results) and benchmarks/results/")


def register(app: typer.Typer) -> None:
    app.command()(demo)


def _clear_earlier_run(run_dir: Path, force: bool) -> None:
    """Refuse (exit 2) a --out whose federated run exists, or with --force delete that run (sites' ledgers too)."""
    import shutil

    from fedgckd.commands.run_folder import RUN_FILES

    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return
    if not force:
        console.print(f"[bold red]error:[/] {run_dir} already holds a demo run ({', '.join(found)}), and its simulated "
                      "sites' ledgers already hold what it spent: a second run into it would be refused by every site "
                      "whose budget is spent. Choose a new --out, or pass --force to delete the earlier demo run "
                      "(its simulated sites' ledgers included) and run again.", soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"--force: deleting the earlier demo run {run_dir} (its simulated sites' ledgers included)")
    shutil.rmtree(run_dir)


def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the demo's data, checkpoints and reports."),
    backbone: str = typer.Option("tiny", "--backbone", help="tiny (fast, random towers) or minilm-effnet (real towers, slower)."),
    profile: str = typer.Option("tiny", "--profile", help="Benchmark size: tiny or default."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace a demo already in --out: its federated run, with the simulated sites' ledgers, is deleted first (the data is regenerated anyway)."),
) -> None:
    """Synthesise a benchmark, pretrain a teacher on one domain, evaluate it everywhere, adapt it to another domain."""
    from common.data.registry import available_domains
    from fedgckd.commands.adapt import adapt
    from fedgckd.commands.data import synth
    from fedgckd.commands.train import evaluate, pretrain

    data, cache = out / "data", out / "cache"
    _clear_earlier_run(out / "federated", force)
    console.rule("1. generate the embedded benchmark")
    synth(out=data, seed=seed, profile=profile, workers=None)
    domains = available_domains(data)
    source, target = domains[0], domains[1]
    console.rule(f"2. pretrain the teacher on {source} (selected on {source} val)")
    teacher = out / "teacher"
    pretrain(data=data, source=source, out=teacher, backbone=backbone, epochs=20, batch_size=128, lr=1e-3, seed=seed, cache=cache,
             select="last")
    console.rule("3. direct transfer: evaluate the teacher on every domain's val split")
    for d in domains:
        evaluate(model=teacher, data=data, target=d, split="val", json_out=out / "eval" / f"teacher_{d}.json", cache=cache)
    console.rule(f"4. adapt to {target} with GCKD (no target labels read)")
    student = out / "student_full"
    adapt(teacher=teacher, data=data, source_data=None, target=target, out=student, mode="full", privacy="none",
          epsilon=8.0, delta=1e-5, steps=None, epochs=4, teacher_rounds=2, average=0.99, whiten=None, anchors=512,
          seed=seed, cache=cache)
    evaluate(model=student, data=data, target=target, split="val", json_out=out / "eval" / f"student_{target}.json", cache=cache)
    if profile == "tiny":
        console.print(tiny_caveat())
    console.rule(f"5. federated GCKD: 3 sites of {target}, record-level DP-SGD (epsilon 8 per site)")
    run_dir = out / "federated"
    _cli("simulate", "--data", data, "--teacher", teacher, "--target", target, "--sites", "3", "--rounds", "2",
         "--privacy", "record", "--mode", "per-record", "--epsilon", "8", "--delta", "1e-5", "--out", run_dir,
         "--config", _preset("tiny-smoke.toml") if profile == "tiny" else _preset("record-dp.toml"), "--cache", cache)
    console.rule("done")
    console.print(f"everything is under {out}/")
