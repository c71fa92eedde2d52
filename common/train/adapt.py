"""GCKD adaptation of a source-pretrained model to an unlabelled target domain.

Reads only target *features and pairings*: the FeatureSet passed in must come
without identity labels (`FeatureSet.without_labels()`), and this module
refuses one that has them. No model selection happens here: the schedule is
fixed (``epochs``, run ``teacher_rounds`` times, each round's result the
next round's teacher) and its end is returned (the moving average of the
student's weights, ``average``), so neither the target test split nor
target labels can leak into the result. Per-record mode then whitens both
heads with the site's DP-released moments (``whiten``;
`common.privacy.site_whitening`), a fixed step, not a selection.

Variants (the ablation of benchmarks/ablation.py):
  gckd      momentum teacher + GMP refinement + CMKD (``use_gmp``, ``momentum`` < 1; per-record mode
            keeps the text head and the teacher fixed); the result is the student's weight average (``average``)
  cmkd_only momentum teacher, no GMP (``use_gmp=False``)
  gmp_only  GMP-refined targets from the frozen source teacher (``momentum=1``, one round)

``grouped`` mode (`common.train.grouped_adapt`) is full GCKD restricted to small groups of a Poisson-sampled batch,
trained by group clipping: with ``cfg.grouped.noise_multiplier`` > 0 the whole run is a record-level DP release.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F

from common.graph.gmp import propagate
from common.losses.caption_to_image import caption_to_image_losses
from common.losses.cmkd import Side, per_record_losses
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.privacy.site_whitening import whiten_heads
from common.train.adapt_config import AdaptConfig, resolved  # noqa: F401 (re-exported: callers import them from here)
from common.train.embed import embed_featureset
from common.train.grouped_adapt import adapt_grouped
from common.train.graph_batches import graph_batch, mutual_neighbours, neighbour_groups, record_view
from common.train.site_context import PublicBank, SiteContext, build_site_context


def _ema(average: DualHeads, student: DualHeads, m: float) -> None:
    """average <- m * average + (1 - m) * student; exact where they are equal (a frozen parameter stays put)."""
    with torch.no_grad():
        for a, s in zip(average.parameters(), student.parameters()):
            a.lerp_(s.detach(), 1.0 - m)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _text_phase(student: DualHeads, cfg: AdaptConfig) -> torch.optim.Optimizer:
    """Per-record text phase: the image head is fixed, the text head trains (a fresh optimiser for it)."""
    for p in student.image_head.parameters():
        p.requires_grad_(False)
    for p in student.text_head.parameters():
        p.requires_grad_(True)
    return torch.optim.AdamW(student.text_head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _record_of_text(fs: FeatureSet) -> torch.Tensor:
    return fs.text_to_image


@torch.no_grad()
def refine(teacher: DualHeads, target: FeatureSet, ctx: SiteContext, cfg: AdaptConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher embeddings of every target image and caption, refined by GMP if enabled."""
    ctx.refresh_anchors(teacher)
    text, image = embed_featureset(teacher, target)
    if not cfg.use_gmp:
        return image, text
    return propagate(image, text, target.text_to_image, ctx.public_nodes(), cfg.gmp, cfg.mode)


def adapt(
    teacher_heads: DualHeads,
    target: FeatureSet,
    bank: PublicBank,
    cfg: AdaptConfig,
    progress: Callable[[int, int, dict], None] | None = None,
    student: DualHeads | None = None,
    steps: int | None = None,
) -> tuple[DualHeads, dict]:
    """Returns (adapted heads after the fixed schedule, log).

    The schedule runs ``cfg.teacher_rounds`` times; each round after the
    first starts from the previous round's result and takes it as its
    teacher (anchors, prototypes, soft targets all recomputed from it). A
    round's result is the moving average of its student's weights
    (``cfg.average``), or its last student when that is None.

    student: start from these heads instead of the teacher's (a federated
        round starts from the global student); parameters with
        requires_grad=False stay fixed.
    steps: run exactly this many steps instead of ``cfg.epochs`` epochs, in
        one round (a federated site's local round; the federation's own
        rounds refresh the teacher there).
    """
    if (target.text_pids >= 0).any() or (target.image_pids >= 0).any():
        raise ValueError("adaptation must not see target identity labels: pass FeatureSet.without_labels()")
    cfg = resolved(cfg, target.n_images)
    rounds = 1 if steps is not None else cfg.teacher_rounds
    if cfg.average is not None and not 0.0 <= cfg.average < 1.0:
        raise ValueError(f"average must be in [0, 1) or None, got {cfg.average}")
    if rounds < 1:
        raise ValueError(f"teacher_rounds must be at least 1, got {rounds}")
    if cfg.whiten > 0 and steps is not None:
        raise ValueError("whitening ends a whole schedule: a federated local round (steps=...) must run with whiten=0")
    if cfg.mode == "grouped":
        if student is not None or steps is not None:
            raise ValueError("grouped mode runs whole schedules on one machine (no student= or steps=)")
        # under DP the sampling and the noise must be unpredictable; without noise the run is reproducible
        gen = torch.Generator().manual_seed(secrets.randbits(63) if cfg.grouped.noise_multiplier > 0 else cfg.seed)
        torch.manual_seed(cfg.seed)
        student, log = adapt_grouped(teacher_heads, target, bank, cfg, gen, progress)
        log = {"config": asdict(cfg), **log}
        return _whitened(student, target, bank, cfg, log)
    logs: list[dict] = []
    teacher = teacher_heads
    for r in range(rounds):
        shown = None
        if progress is not None:
            def shown(done, total, info, r=r):
                progress(r * total + done, rounds * total, {"round": r + 1, **info})
        student, log = _adapt_one_round(teacher, target, bank, cfg, shown, student, steps)
        logs.append(log)
        if r + 1 < rounds:
            teacher = copy.deepcopy(student)
            for p in teacher.parameters():
                p.requires_grad_(True)
            student = None
    log = logs[0] if rounds == 1 else {
        "config": logs[0]["config"],
        "epochs": [{"round": r + 1, **e} for r, log in enumerate(logs) for e in log["epochs"]],
        "selection": logs[0]["selection"],
        "privacy_history": [h for log in logs for h in log["privacy_history"]],
    }
    return _whitened(student, target, bank, cfg, log)


def _whitened(student: DualHeads, target: FeatureSet, bank: PublicBank, cfg: AdaptConfig, log: dict) -> tuple[DualHeads, dict]:
    """The schedule's end: the DP whitening folded into both heads when ``cfg.whiten`` > 0 (accounted)."""
    if cfg.whiten > 0:
        student, history = whiten_heads(student, target, bank.image_feats, bank.text_feats, cfg.whiten_noise, cfg.whiten,
                                        torch.Generator().manual_seed(cfg.seed))
        log["privacy_history"] = log["privacy_history"] + history
        log["selection"] += f"; then whitened on the site's DP moments (noise {cfg.whiten_noise}, shrinkage {cfg.whiten})"
    return student.eval(), log


def _adapt_one_round(
    teacher_heads: DualHeads,
    target: FeatureSet,
    bank: PublicBank,
    cfg: AdaptConfig,
    progress: Callable[[int, int, dict], None] | None,
    student: DualHeads | None,
    steps: int | None,
) -> tuple[DualHeads, dict]:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    momentum = cfg.momentum
    student = copy.deepcopy(teacher_heads if student is None else student).train()
    teacher = copy.deepcopy(teacher_heads).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    average = copy.deepcopy(student).eval() if cfg.average is not None else None
    if cfg.mode == "per_record":
        # Per-record mode keeps the teacher's text head until the text phase. Its only candidates are public (source) keys, and the
        # source differs from the target in both modalities (style, caption wording): a trainable text head
        # learns to tell target captions from source ones and wins the contrast by domain, not by person (on
        # the dev pair's val split R1 fell to 9). With frozen captions the image head must meet its own
        # captions among the source captions most like them, which it can only do by person (val 16.6 -> 29.9).
        for p in student.text_head.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    ctx = build_site_context(teacher, target, bank, cfg, gen)
    n_rec = len(target.image_feats)
    text_record = _record_of_text(target)
    caps_of = [[] for _ in range(n_rec)]
    for t, r in enumerate(text_record.tolist()):
        caps_of[r].append(t)
    steps_per_epoch = max(1, n_rec // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if steps is None else steps
    n_epochs = cfg.epochs if steps is None else -(-steps // steps_per_epoch)
    text_from = total - round(cfg.text_phase * total) if cfg.mode == "per_record" else total
    queue_img = torch.empty(0, teacher.cfg.out_dim)
    queue_txt = torch.empty(0, teacher.cfg.out_dim)
    queue_img_owner = torch.empty(0, dtype=torch.long)
    queue_txt_owner = torch.empty(0, dtype=torch.long)
    log: list[dict] = []
    step = 0
    r_img = r_txt = None
    for epoch in range(n_epochs):
        perm = torch.randperm(n_rec, generator=gen)
        for b in range(min(steps_per_epoch, total - step)):
            if step % cfg.refresh_steps == 0:
                r_img, r_txt = refine(teacher, target, ctx, cfg)
                groups = neighbour_groups(record_view(r_img, r_txt, text_record, cfg.group_by), cfg.group_size) if cfg.mode == "full" else None
            recs = graph_batch(perm, b, groups, cfg.batch_size, cfg.group_size)
            txt = torch.tensor([t for r in recs.tolist() for t in caps_of[r]])
            local = torch.full((n_rec,), -1, dtype=torch.long)
            local[recs] = torch.arange(len(recs))
            t_rec = local[text_record[txt]]
            if step >= text_from:
                if step == text_from:
                    opt = _text_phase(student, cfg)
                    with torch.no_grad():  # the image head is fixed from here on: its public keys are too
                        public_keys = student.image(ctx.bank.image_feats) if cfg.text_negatives else None
                losses = caption_to_image_losses(student.text(target.text_feats[txt]),
                                                 student.image(target.image_feats[recs]), t_rec, len(recs),
                                                 public_keys, cfg.text_negatives, cfg.text_negative_weight)
                loss = _step(opt, losses.mean())
                if average is not None:
                    _ema(average, student, cfg.average)
                step += 1
                if progress and (step % 10 == 0 or step == total):
                    progress(step, total, {"epoch": epoch + 1, "loss": float(loss), "phase": "text"})
                continue
            s_img = student.image(target.image_feats[recs])
            s_txt = student.text(target.text_feats[txt])
            s_img_pair = F.normalize(torch.zeros_like(s_img).index_add(0, t_rec, s_txt), dim=-1)
            r_img_b, r_txt_b = r_img[recs], r_txt[txt]
            r_img_pair = F.normalize(torch.zeros_like(r_img_b).index_add(0, t_rec, r_txt_b), dim=-1)
            full = cfg.mode == "full"
            rec_global = recs[t_rec]
            txt_owner = text_record[txt]
            none_ = recs[:0]
            empty = r_img_b[:0]
            pos_t = mutual_neighbours(groups, rec_global, recs) if full else None
            pos_i = mutual_neighbours(groups, recs, txt_owner) if full else None
            # per-record: the teacher sees a record through its captions (on a new domain its image tower is the
            # weak one: a record's nearest record by teacher image is the same person 9% of the time, by caption 95%)
            view_b = r_img_b if full else r_img_pair
            text_side = Side(
                s_txt, s_img[t_rec], r_txt_b, view_b[t_rec],
                s_img if full else empty, r_img_b if full else empty, recs if full else none_,
                queue_img if full else empty, queue_img_owner if full else none_,
                ctx.public_images(), rec_global, pos_t,
            )
            image_side = Side(
                s_img, s_img_pair, view_b, r_img_pair,
                s_txt if full else empty, r_txt_b if full else empty, txt_owner if full else none_,
                queue_txt if full else empty, queue_txt_owner if full else none_,
                ctx.public_texts(), recs, pos_i,
            )
            losses = per_record_losses(text_side, image_side, t_rec, len(recs), cfg.cmkd)
            loss = _step(opt, losses.mean())
            if momentum < 1.0:
                _ema(teacher, student, momentum)
            if average is not None:
                _ema(average, student, cfg.average)
            if full and cfg.queue_size:
                queue_img = torch.cat([r_img_b, queue_img])[: cfg.queue_size]
                queue_img_owner = torch.cat([recs, queue_img_owner])[: cfg.queue_size]
                queue_txt = torch.cat([r_txt_b, queue_txt])[: cfg.queue_size]
                queue_txt_owner = torch.cat([text_record[txt], queue_txt_owner])[: cfg.queue_size]
            step += 1
            if progress and (step % 10 == 0 or step == total):
                progress(step, total, {"epoch": epoch + 1, "loss": float(loss)})
        log.append({"epoch": epoch + 1, "loss": float(loss)})
    kept = student if average is None else average
    what = "the last student" if average is None else f"the moving average (momentum {cfg.average}) of the student's weights"
    selection = f"fixed schedule, {what}; no target labels read"
    return kept.eval(), {"config": asdict(cfg), "epochs": log, "selection": selection, "privacy_history": ctx.privacy_history}
