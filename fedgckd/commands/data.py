"""`fedgckd data ...`: generate, preview and validate datasets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from fedgckd.commands.common_options import user_errors
from fedgckd.progress import console, progress_bar

app = typer.Typer(help="Generate, preview and check person-retrieval datasets.", no_args_is_help=True)


def profile_help() -> str:
    """--profile's help, from the profiles themselves (so it and the README's command table cannot drift apart)."""
    from common.data.synth.profiles import PROFILES

    use = {"tiny": "tests and the demo, seconds", "default": "the benchmark", "scale": "the scale benchmark",
           "sites": "realistic site sizes: 18,000 train records per target domain"}
    parts = []
    for name, p in PROFILES.items():
        n_train, n_val, n_test = p.identities
        parts.append(f"{name} ({n_train + n_val + n_test:,} identities per domain: {n_train:,}/{n_val:,}/{n_test:,} "
                     f"train/val/test, {len(p.domains)} domain{'s' if len(p.domains) > 1 else ''}; {use.get(name, '')})")
    return "Benchmark size: " + ", ".join(parts) + "."


PROFILE_HELP = profile_help()


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the generated benchmark into (one subfolder per domain)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
    profile: str = typer.Option("default", "--profile", help=PROFILE_HELP),
    workers: int = typer.Option(None, "--workers", help="Processes to render with (default: all cores)."),
) -> None:
    """Write the embedded multi-domain benchmark in the CUHK-PEDES annotation format."""
    from common.data.synth import PROFILES, synthesize

    if profile not in PROFILES:
        console.print(f"[red]error:[/] unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
        raise typer.Exit(2)
    t0 = time.perf_counter()
    with progress_bar(f"synth {profile}") as bar:
        summary = synthesize(out, seed=seed, profile=profile, workers=workers, progress=bar)
    console.print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    _print_summary(summary)


@app.command()
def preview(
    data_dir: Path = typer.Argument(..., help="A folder written by `fedgckd data synth`."),
    out: Path = typer.Option(Path("sheet.png"), "--out", help="PNG contact sheet to write."),
    per_domain: int = typer.Option(6, "--per-domain", help="Images per domain row."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Draw a contact sheet: images with their captions, one row per domain."""
    from common.data.synth import preview as draw

    with user_errors():
        path = draw(data_dir, out, per_domain=per_domain, seed=seed)
    console.print(f"wrote {path}")


@app.command()
def check(
    dataset: str = typer.Option(..., "--dataset", help="cuhk-pedes, icfg-pedes, rstpreid or embedded."),
    root: Path = typer.Option(..., "--root", help="The dataset folder (holding the annotation file and imgs/)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip bad records and count them instead of stopping at the first."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate a dataset; print identities, images and captions per split."""
    from common.data.registry import load_dataset

    with user_errors(), progress_bar(f"check {root}") as bar:
        ds = load_dataset(dataset, root, skip_bad=skip_bad, check_images=True, progress=bar)
    summary = ds.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_summary({ds.name: summary})
    if ds.skipped:
        console.print(f"[yellow]skipped {len(ds.skipped)} bad record(s):[/] " + ", ".join(f"{k}={v}" for k, v in summary["skipped"].items()))
        for s in ds.skipped[:20]:
            console.print(f"  {s.file}, record {s.record}: {s.reason}")


def _print_summary(summary: dict) -> None:
    table = Table("dataset", "split", "identities", "images", "captions")
    for name, info in summary.items():
        splits = info.get("splits", info)
        for split, c in splits.items():
            if isinstance(c, dict) and "images" in c:
                table.add_row(name, split, str(c["identities"]), str(c["images"]), str(c["captions"]))
    console.print(table)
