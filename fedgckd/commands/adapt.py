"""`fedgckd adapt`: GCKD adaptation of a teacher to an unlabelled target domain (one machine)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedgckd.commands.common_options import CACHE_HELP, user_errors
from fedgckd.commands.train import features
from fedgckd.progress import console, progress_bar


def register(app: typer.Typer) -> None:
    app.command()(adapt)


def adapt(
    teacher: Path = typer.Option(..., "--teacher", help="Source-pretrained checkpoint (from `fedgckd pretrain`)."),
    data: Path = typer.Option(..., "--data", help="Data folder holding one subfolder per domain/dataset."),
    source_data: Path = typer.Option(None, "--source-data", help="Folder holding the teacher's source domain (its public anchor bank). Default: the folder recorded in the teacher checkpoint (found relative to the checkpoint), else --data if it holds that domain."),
    target: str = typer.Option(..., "--target", help="Target domain; only its train split's images and captions are read, never its identities."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    mode: str = typer.Option("full", "--mode", help="full (graph and negatives across target records) or per-record (each record's loss depends on that record and public data only: first the image head learns the teacher's captions, then the text head learns the adapted images)."),
    epochs: int = typer.Option(20, "--epochs", help="Fixed schedule, no selection on target data."),
    teacher_rounds: int | None = typer.Option(None, "--teacher-rounds", min=1, help="Run the schedule this many times, each round's result the next round's teacher. Default: 2 in full mode, 4 in per-record mode."),
    average: float = typer.Option(0.99, "--average", min=0.0, max=1.0, help="Keep a moving average of the student's weights with this momentum per step as the result (1 keeps the last student instead)."),
    whiten: float | None = typer.Option(None, "--whiten", min=0.0, help="Shrinkage of the DP whitening that ends the schedule, folded into both heads (0: off). Default: 1 in per-record mode, off in full mode."),
    anchors: int = typer.Option(2048, "--anchors", help="Source anchors per modality in the public bank."),
    seed: int = typer.Option(0, "--seed"),
    cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
) -> None:
    """Adapt with GMP graph propagation and CMKD momentum distillation."""
    from common.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, source_data_dir
    from common.models.backbones import build_backbone
    from common.train.adapt import AdaptConfig, adapt as run, resolved
    from common.train.site_context import PublicBank

    mode_key = mode.replace("-", "_")
    if mode_key not in ("full", "per_record"):
        console.print(f"[red]error:[/] --mode must be full or per-record, not {mode!r}")
        raise typer.Exit(2)
    with user_errors():
        ckpt = load_checkpoint(teacher)
        bb = build_backbone(ckpt.backbone)
        ckpt = load_checkpoint(teacher, expect_fingerprint=bb.fingerprint())
        src = ckpt.meta.get("source", {})
        if not src.get("domain"):
            raise ValueError(f"{teacher}: checkpoint does not record its source domain (needed for the public anchor bank)")
        src_dir = source_data_dir(teacher, src, data=data, override=source_data)
        src_fs = features(bb, src_dir, src["domain"], "train", cache)
        tgt_fs = features(bb, data, target, "train", cache, labels=False)
        cfg = AdaptConfig(mode=mode_key, epochs=epochs, teacher_rounds=teacher_rounds, seed=seed,
                          average=None if average >= 1.0 else average, whiten=whiten)
        cfg = resolved(cfg)
        bank = PublicBank.from_source(src_fs, anchors, seed=seed)
        with progress_bar(f"adapt ({mode})") as bar:
            student, log = run(ckpt.heads, tgt_fs, bank, cfg, progress=bar)
        meta = {"role": "student", "source": src, "target": {"data": str(data), "domain": target}, "teacher": str(teacher), "adaptation": log}
        save_checkpoint(Checkpoint(student, bb.name, bb.fingerprint(), ckpt.head_config, ckpt.text_dim, ckpt.image_dim, seed, meta), out)
    kept = "last student" if cfg.average is None else f"weight average, momentum {cfg.average}"
    if cfg.whiten > 0:
        kept += f", DP-whitened (noise {cfg.whiten_noise}, shrinkage {cfg.whiten})"
    console.print(f"wrote {out} (mode {mode}, {cfg.teacher_rounds} x {epochs} epochs, fixed schedule, {kept})")
    if log["privacy_history"]:
        console.print(statistics_privacy_line(log["privacy_history"]))


STATISTICS_DELTA = 1e-5  # as the federation's default: below 1 / records of a typical site


def statistics_privacy_line(history: list) -> str:
    """What the site statistics of a one-machine per-record run cost, and what they do not cover."""
    from common.privacy.accounting import compute_epsilon

    eps = compute_epsilon(history, STATISTICS_DELTA, "rdp").epsilon
    return (f"site statistics (DP prototypes and whitening moments) released at epsilon {eps:.2f}, record-level, "
            f"delta {STATISTICS_DELTA:g}, RDP accountant. This covers those releases only: one-machine adaptation reads "
            "the target's records directly, so the checkpoint itself is not a DP release (for that, run the records "
            "at their site: fedgckd simulate / fedgckd site with record-level DP).")
