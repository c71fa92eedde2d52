"""`fedgckd pretrain` and `fedgckd evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fedgckd.commands.common_options import BACKBONE_HELP, CACHE_HELP, user_errors
from fedgckd.progress import console, progress_bar

METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def register(app: typer.Typer) -> None:
    app.command()(pretrain)
    app.command()(evaluate)


def features(backbone, data: Path, domain: str, split: str, cache: Path | None, labels: bool = True):
    from common.pipeline import domain_features

    with progress_bar(f"features {domain}/{split}") as bar:
        return domain_features(backbone, data, domain, split, labels=labels, cache_dir=cache, progress=bar)


def pretrain(
    data: Path = typer.Option(..., "--data", help="Data folder holding one subfolder per domain/dataset."),
    source: str = typer.Option(..., "--source", help="Labelled source domain (a subfolder of --data)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    backbone: str = typer.Option("minilm-effnet", "--backbone", help=BACKBONE_HELP),
    epochs: int = typer.Option(30, "--epochs", help="Epochs of the fixed schedule (with --select val: at most)."),
    select: str = typer.Option("last", "--select", help="last: keep the schedule's last epoch; val: keep the best "
                               "epoch on the source val split (early stop after 10 without a gain)."),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
) -> None:
    """Train the teacher on the labelled source domain (identity-aware InfoNCE), a fixed schedule."""
    import torch

    from common.checkpoint import Checkpoint, save_checkpoint, source_meta
    from common.models.backbones import build_backbone
    from common.models.heads import HeadConfig
    from common.train.pretrain import PretrainConfig, pretrain as run

    torch.manual_seed(seed)
    with user_errors():
        bb = build_backbone(backbone)
        train_fs = features(bb, data, source, "train", cache)
        val_fs = features(bb, data, source, "val", cache)
        cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, select=select)
        with progress_bar("pretrain") as bar:
            heads, history = run(train_fs, val_fs, HeadConfig(), cfg, progress=bar)
        meta = {"role": "teacher", "source": source_meta(data, source, out), "training": history}
        save_checkpoint(Checkpoint(heads, bb.name, bb.fingerprint(), heads.cfg, bb.text_dim, bb.image_dim, seed, meta), out)
    stopped = early_stop_line(history, epochs)
    if stopped:
        console.print(stopped)
    sel = history["selected"]
    how = "the last epoch of the schedule" if select == "last" else f"epoch {sel['epoch']}, selected on source val"
    console.print(f"wrote {out}: {how} (source val R1 {sel['R1']:.2f}, mAP {sel['mAP']:.2f})")


def early_stop_line(history: dict, epochs: int) -> str | None:
    """Why pretraining ran fewer epochs than asked (the progress bar stops short), from its returned history."""
    ran = len(history.get("epochs", []))
    if ran >= epochs:
        return None
    patience = history.get("config", {}).get("patience")
    best = history.get("selected", {}).get("epoch")
    if patience and best is not None and ran - best >= patience:
        why = f"no source-val R1 gain for {ran - best} epochs since epoch {best} (patience {patience})"
    else:
        why = "the trainer ended it (see the checkpoint's meta.training)"
    return f"stopped early after epoch {ran} of {epochs}: {why}"


def evaluate(
    model: Path = typer.Option(..., "--model", help="Checkpoint folder."),
    data: Path = typer.Option(..., "--data", help="Data folder holding one subfolder per domain/dataset."),
    target: str = typer.Option(..., "--target", help="Domain to evaluate on."),
    split: str = typer.Option("val", "--split", help="val or test. Read test once, at the end."),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
) -> None:
    """Text-to-image retrieval: every caption queries every image of the split; R1/5/10, mAP, mINP."""
    from common.atomic import atomic_write_json
    from common.checkpoint import load_checkpoint
    from common.models.backbones import build_backbone
    from common.train.pretrain import evaluate_heads

    if split not in ("val", "test"):
        console.print(f"[red]error:[/] --split must be val or test, not {split!r}")
        raise typer.Exit(2)
    with user_errors():
        ckpt = load_checkpoint(model)
        bb = build_backbone(ckpt.backbone)
        ckpt = load_checkpoint(model, expect_fingerprint=bb.fingerprint())
        fs = features(bb, data, target, split, cache)
        metrics = evaluate_heads(ckpt.heads, fs)
    result = {"model": str(model), "data": str(data), "target": target, "split": split, **metrics}
    print_metrics({f"{target}/{split}": metrics})
    if json_out:
        atomic_write_json(json_out, result)
        console.print(f"wrote {json_out}")


def print_metrics(rows: dict[str, dict]) -> None:
    table = Table("run", *METRIC_KEYS, "queries", "gallery")
    for name, m in rows.items():
        table.add_row(name, *(f"{m[k]:.2f}" for k in METRIC_KEYS), str(m["n_queries"]), str(m["n_gallery"]))
    console.print(table)


__all__ = ["register"]
