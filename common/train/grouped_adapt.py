"""The `grouped` adaptation schedule: full GCKD inside small groups, under group clipping.

Per teacher round:

1. **Prototypes.** The round's teacher embeds every record's captions; each
   record's mean caption embedding (unit norm: one record moves one cluster's
   sum by at most 1) goes into DP k-means (`common.privacy.site_prototypes`),
   started from public anchors. The release is accounted. No prototypes
   (``prototypes=0``) leaves the sub-bin alone as the key.
2. **Steps.** Each step samples every record independently with rate q
   (Poisson); each sampled record's key is its nearest prototype (by the
   round's teacher view of the record alone) and its keyed-hash sub-bin
   (`common.train.grouped_keys`). The momentum teacher embeds each group's
   members, GMP refines them inside the group with the public anchors and
   prototypes (`common.graph.grouped_gmp`), and the student learns the
   group-restricted GCKD loss (`common.losses.grouped_loss`) by group
   clipping (`common.train.grouped_dp`). The momentum teacher and the
   weight average follow the student: post-processing of released steps.
3. The round's result (the weight average) is the next round's teacher.

With ``train_params="lowrank:R"`` (`common.models.low_rank`) each round
first computes, from the round's teacher on the public anchor bank alone, a
basis A of every Linear's input subspace, and attaches adapters ``W + B A``
(B = 0) to the student, its weight average and the momentum teacher; only
the B's (and, with ``+biases``, the biases) train. With A fixed, the moving
averages of the B's are the moving averages of the merged weights, so all
three follow the usual rule. At the round's end the result is merged back
into plain heads (``W' = W + B A``), the next round's teacher. A reads no
target record: it is computed from public features and a released teacher.

Everything the run reads besides the sampled records is public (the source
anchor bank, the starting teacher) or released under DP and accounted (the
prototypes, every step's noisy gradient and what is computed from them).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from common.federation.trainable import set_trainable, trainable_names
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.models.low_rank import attach_low_rank, merge_low_rank, parse_spec, public_bases, trained_numbers
from common.privacy.accounting import merge_history
from common.train.grouped_config import GroupedConfig, normaliser, sample_rate, with_steps
from common.train.grouped_dp import GroupClippedSGD
from common.train.grouped_keys import bins_per_prototype, default_bins
from common.train.grouped_site import GroupedSite, record_views, release_prototypes  # noqa: F401 (record_views re-exported)
from common.train.site_context import PublicBank

NO_TARGET_PROTOTYPE_NOISE = 4.0  # GroupedConfig.prototype_noise when no target epsilon set it


def _ema(average: DualHeads, student: DualHeads, m: float) -> None:
    with torch.no_grad():
        for a, s in zip(average.parameters(), student.parameters()):
            a.lerp_(s.detach(), 1.0 - m)


def cell_bins(g: GroupedConfig, rate: float, records: int, counts: torch.Tensor) -> int | torch.Tensor:
    """Public sub-bins per prototype cell: ``g.bins`` for every cell when set; else from each cell's noisy released
    count (`bins_per_prototype`), or from the expected batch when no prototype was released."""
    if g.bins is not None:
        return g.bins
    if len(counts) == 0:
        return default_bins(rate * records, 1, g.group_size)
    return bins_per_prototype(counts, rate, g.group_size)


def _optimizer(g: GroupedConfig, params: list) -> torch.optim.Optimizer:
    if g.optimizer == "adam":
        return torch.optim.Adam(params, lr=g.lr)
    if g.optimizer == "sgd":
        return torch.optim.SGD(params, lr=g.lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {g.optimizer!r}")


def adapt_grouped(teacher_heads: DualHeads, target: FeatureSet, bank: PublicBank, cfg, generator: torch.Generator,
                  progress: Callable[[int, int, dict], None] | None = None) -> tuple[DualHeads, dict]:
    """Returns (adapted heads, log); ``cfg`` is a resolved `AdaptConfig` with ``mode="grouped"``."""
    n = target.n_images
    g: GroupedConfig = with_steps(cfg.grouped, n)
    q, norm = sample_rate(g, n), normaliser(g, n)
    site = GroupedSite.build(target, q, 1, f"fedgckd-grouped-{cfg.seed}".encode(), g.max_group, g.sub_bin)
    bins_used = []
    proto_noise = NO_TARGET_PROTOTYPE_NOISE if g.prototype_noise is None else g.prototype_noise
    history, epochs = [], []
    low_rank, trained = parse_spec(g.train_params), 0
    total = cfg.teacher_rounds * g.steps
    teacher = teacher_heads
    step_no = 0
    for rnd in range(cfg.teacher_rounds):
        teacher = copy.deepcopy(teacher).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        a_img, a_txt = bank.embed(teacher)
        views = record_views(teacher, target)
        protos, counts, entries = release_prototypes(views, a_txt, g.prototypes, g.prototype_iters, proto_noise, generator)
        history = merge_history(history, entries)
        site.bins = cell_bins(g, q, n, counts)
        bins_used.append(site.bins.tolist() if torch.is_tensor(site.bins) else site.bins)
        student = copy.deepcopy(teacher).train()
        momentum_teacher = copy.deepcopy(teacher)
        if low_rank is not None:  # public bases from this round's teacher; B = 0, so nothing changes yet
            bases = public_bases(teacher, bank.image_feats, bank.text_feats, low_rank[0])
            attach_low_rank(student, bases)
            attach_low_rank(momentum_teacher, bases).requires_grad_(False)
        set_trainable(student, trainable_names(student, g.train_params))
        average = copy.deepcopy(student).eval() if cfg.average is not None else None
        opt = _optimizer(g, [p for p in student.parameters() if p.requires_grad])
        sgd = GroupClippedSGD(student, opt, g.clip_norm, g.noise_multiplier, norm, generator, g.clipping)
        trained = trained_numbers(student)
        losses = []
        for s in range(g.steps):
            if s % cfg.refresh_steps == 0 and s:
                a_img, a_txt = bank.embed(momentum_teacher)  # public anchors follow the momentum teacher
            loss = site.step(sgd, site.sample(generator), momentum_teacher, views, protos, a_img, a_txt, step_no,
                             cfg.gmp if cfg.use_gmp else None, cfg.cmkd, g.neighbours, g.pseudo_positives,
                             g.positive_min_sim)
            if loss == loss:
                losses.append(loss)
            if cfg.momentum < 1.0:
                _ema(momentum_teacher, student, cfg.momentum)
            if average is not None:
                _ema(average, student, cfg.average)
            step_no += 1
            if progress and (step_no % 10 == 0 or step_no == total):
                progress(step_no, total, {"round": rnd + 1, "loss": losses[-1] if losses else float("nan")})
        sgd.close()
        history = merge_history(history, [(g.noise_multiplier, q, g.steps)])
        epochs.append({"round": rnd + 1, "loss": sum(losses) / max(len(losses), 1)})
        teacher = merge_low_rank(student if average is None else average)
        for p in teacher.parameters():
            p.requires_grad_(True)
    what = "the last student" if cfg.average is None else f"the moving average (momentum {cfg.average}) of the student's weights"
    log = {"epochs": epochs, "selection": f"fixed schedule, {what}; no target labels read", "privacy_history": history,
           "grouped": {"sample_rate": q, "steps_per_round": g.steps, "normaliser": norm, "bins": bins_used, "prototypes": int(len(protos)),
                       "clip_norm": g.clip_norm, "sensitivity": 2 * g.clip_norm, "noise_multiplier": g.noise_multiplier,
                       "clipping": sgd.path, "train_params": g.train_params, "trained_numbers": trained,
                       "low_rank": None if low_rank is None else low_rank[0], "diagnostics": site.stats.summary()}}
    return teacher.eval(), log
