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
    mode: str = typer.Option("full", "--mode", help="full (graph and negatives across target records), per-record (each record's loss depends on that record and public data only: first the image head learns the teacher's captions, then the text head learns the adapted images) or grouped (full GCKD inside small groups keyed by DP prototypes, trained by group clipping)."),
    privacy: str = typer.Option("none", "--privacy", help="none (no epsilon is claimed) or record: the whole adaptation is a record-level DP release (grouped or per-record mode) with a ledger and an audit in --out."),
    epsilon: float = typer.Option(8.0, "--epsilon", min=0.0, help="With --privacy record: epsilon of the whole run, for one image-caption record (add/remove)."),
    delta: float = typer.Option(1e-5, "--delta", min=0.0, max=1.0, help="With --privacy record: delta of the guarantee."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="DP-SGD steps per teacher round in grouped mode and under --privacy record (default: per-record mode 80; grouped mode 23 passes over the site, at least 80: 80 up to 3,561 records, 405 at 18,000)."),
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
    if mode_key not in ("full", "per_record", "grouped"):
        console.print(f"[red]error:[/] --mode must be full, per-record or grouped, not {mode!r}")
        raise typer.Exit(2)
    if privacy not in ("none", "record"):
        console.print(f"[red]error:[/] --privacy must be none or record, not {privacy!r}")
        raise typer.Exit(2)
    if privacy == "record" and mode_key == "full":
        console.print("[red]error:[/] --privacy record needs --mode grouped or per-record: full mode couples every record "
                      "of the site, which no record-level DP construction admits")
        raise typer.Exit(2)
    if privacy == "record" and not (epsilon > 0 and 0 < delta < 1):
        console.print(f"[red]error:[/] --privacy record needs --epsilon > 0 and 0 < --delta < 1 (got {epsilon}, {delta})")
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
        if steps is not None:
            cfg.grouped.steps = steps
        cfg = resolved(cfg, tgt_fs.n_images)
        bank = PublicBank.from_source(src_fs, anchors, seed=seed)
        led = None
        with progress_bar(f"adapt ({mode}{', record-level DP' if privacy == 'record' else ''})") as bar:
            if privacy == "record":
                student, log, led = dp_release(ckpt.heads, tgt_fs, bank, cfg, epsilon, delta, bar)
            else:
                student, log = run(ckpt.heads, tgt_fs, bank, cfg, progress=bar)
        diagnostics = split_diagnostics(log) if led is not None else None
        meta = {"role": "student", "source": src, "target": {"data": str(data), "domain": target}, "teacher": str(teacher), "adaptation": log}
        save_checkpoint(Checkpoint(student, bb.name, bb.fingerprint(), ckpt.head_config, ckpt.text_dim, ckpt.image_dim, seed, meta), out)
    kept = "last student" if cfg.average is None else f"weight average, momentum {cfg.average}"
    if cfg.whiten > 0:
        kept += f", DP-whitened (noise {cfg.whiten_noise}, shrinkage {cfg.whiten})"
    if led is not None:
        from common.train.adapt_release import release_statement, write_release
        from fedgckd.commands.audit import write_run_audit

        write_release(out, led, log["release"], {"mode": mode, "target": target, "teacher": str(teacher), "seed": seed},
                      diagnostics)
        console.print(f"wrote {out} (mode {mode}, {cfg.teacher_rounds} teacher rounds, fixed schedule, record-level DP)")
        console.print(release_statement(led))
        write_run_audit(out)
        return
    console.print(f"wrote {out} (mode {mode}, {cfg.teacher_rounds} x {epochs} epochs, fixed schedule, {kept})")
    console.print("no epsilon is claimed: this adaptation read the target's records outside any DP mechanism, so the "
                  "checkpoint is not a DP release (for one: --privacy record with --mode grouped or per-record)")


def split_diagnostics(log: dict) -> dict:
    """Take the exact, non-private figures of a DP release (training losses, group sizes) out of the checkpoint's
    metadata, which travels with the released model; they go to their own file in --out, for the operator."""
    out = {"epochs": log.pop("epochs", [])}
    if "grouped" in log:
        out["grouped"] = log["grouped"].pop("diagnostics", {})
    return out


def dp_release(heads, tgt_fs, bank, cfg, epsilon: float, delta: float, bar):
    """The whole adaptation as one record-level DP release (`common.train.adapt_release`)."""
    from common.train.adapt_release import RecordReleaseConfig, adapt_grouped_release, adapt_per_record_release

    if cfg.mode == "grouped":
        return adapt_grouped_release(heads, tgt_fs, bank, cfg, epsilon, delta, progress=bar)
    return adapt_per_record_release(heads, tgt_fs, bank, cfg, epsilon, delta, rc=RecordReleaseConfig() if cfg.grouped.steps is None else RecordReleaseConfig(steps=cfg.grouped.steps),
                                    progress=bar)
