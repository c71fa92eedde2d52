"""One-machine adaptation as a record-level DP release: the whole run under one accountant and one ledger.

Unit of privacy: one image-caption record of the target site; neighbouring
relation: add/remove that record (the record count is treated as public).
Every mechanism that reads the records is a Gaussian mechanism in one RDP
history: every DP-SGD step, every prototype release of every teacher round.
Everything else is public (the source teacher, the source anchor bank) or
post-processing of those releases (momentum teachers, weight averages, the
next round's teacher), so the checkpoint is a DP release of the records at
the epsilon the ledger states. The noise is planned from the target epsilon
before training (`plan_grouped`, `plan_record_level`), and the ledger holds
what really ran; a run whose spending differs from the plan fails.

* ``grouped``: group clipping (`common.train.grouped_adapt`), Delta = 2C.
* ``per_record``: per-record DP-SGD end to end (`train_record_level`, Delta =
  C) on the per-record GCKD loss, one teacher round after another, each with
  its own DP prototypes. The one-machine extras that read the records outside
  DP-SGD are dropped: the text phase (trained without clipping) and the DP
  whitening (a release this plan does not budget for).
"""

from __future__ import annotations

import copy
import secrets
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from common.federation.trainable import set_trainable, trainable_for_mode
from common.losses.cmkd import CMKDConfig
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.privacy.accounting import compute_epsilon, merge_history
from common.privacy.ledger import SiteLedger, Spend
from common.privacy.noise_calibration import plan_record_level, prototype_noise_for
from common.train.adapt import adapt, refine
from common.train.adapt_config import AdaptConfig, resolved
from common.train.grouped_config import plan_grouped, with_steps
from common.train.record_level_dp import RecordLevelConfig, expected_batch, train_record_level
from common.train.record_pack import RecordLoss, RecordPack, pack_texts, teacher_targets
from common.train.site_context import PublicBank, build_site_context

SITE = "adapt"  # the ledger's site name for a one-machine run


@dataclass
class RecordReleaseConfig:
    """Per-record DP-SGD of one-machine adaptation under ``--privacy record`` (the federation's tuned settings)."""

    steps: int = 80  # DP-SGD steps per teacher round, as grouped mode
    sample_rate: float = 0.25  # Poisson rate; the federation's default (larger batches, better signal-to-noise)
    lr: float = 0.1  # SGD (momentum 0.9) on noisy averaged gradients, as the federation (common.federation.local_round)
    clip_norm: float = 1.0  # per-record bound C; Delta = C
    train_params: str = "auto"  # which image-head parameters train (per-record mode keeps the teacher's text head).
    # "auto" (`release_params`): the whole image head when a step's noise norm on the mean, z sqrt(d) / (q N) for its
    # d numbers, is at most the largest mean clipped gradient (C / C = 1), else its last Linear. It reads only the
    # planned z, the rate and the record count, all public. Val R1 at epsilon 8 (seed 0 unless said): 18,000 records
    # flat->outline last 33.4 -> all 45.9 (ratio 0.25 / 0.61), flat->shaded 11.4 -> 15.7; 1,800 records
    # flat->outline seeds 0 / 1 / 2 last 18.2 / 17.8 / 18.5, all 16.2 / 13.8 / 15.2 (ratio 2.5 / 6.0)
    prototype_budget_share: float = 0.2  # share of epsilon the DP prototype releases may cost


def release_params(rc: RecordReleaseConfig, heads: DualHeads, noise_multiplier: float, records: int) -> str:
    """The image-head parameters a per-record release trains: ``rc.train_params``, or for "auto" "all" when the
    whole image head's step noise ratio ``z sqrt(d) / (q N)`` is at most 1, else "last" (public inputs only)."""
    if rc.train_params != "auto":
        return rc.train_params
    return "all" if step_noise_ratio(heads, "all", noise_multiplier, rc.sample_rate, records) <= 1.0 else "last"


def step_noise_ratio(heads: DualHeads, spec: str, noise_multiplier: float, sample_rate: float, records: int) -> float:
    """Norm of one step's noise on the mean gradient, ``z C sqrt(d) / (q N)``, over the largest mean clipped
    gradient ``C``: d is the number of image-head numbers that ``spec`` trains in per-record mode."""
    named = dict(heads.named_parameters())
    d = sum(named[n].numel() for n in trainable_for_mode(heads, spec, "per_record"))
    return noise_multiplier * d ** 0.5 / expected_batch(sample_rate, records)  # what each step's noisy sum is divided by


def _ledger(epsilon: float, delta: float, accountant: str) -> SiteLedger:
    return SiteLedger(site=SITE, unit="record", delta=delta, budget=epsilon, accountant=accountant)


def adapt_grouped_release(teacher: DualHeads, target: FeatureSet, bank: PublicBank, cfg: AdaptConfig, epsilon: float,
                          delta: float, accountant: str = "rdp", progress: Callable | None = None) -> tuple[DualHeads, dict, SiteLedger]:
    cfg = resolved(cfg)
    cfg = replace(cfg, grouped=with_steps(cfg.grouped, target.n_images))
    plan = plan_grouped(cfg.grouped, target.n_images, cfg.teacher_rounds, epsilon, delta, accountant)
    cfg = replace(cfg, whiten=0.0, grouped=replace(cfg.grouped, noise_multiplier=plan.noise_multiplier,
                                                   prototype_noise=plan.prototype_noise))
    student, log = adapt(teacher, target, bank, cfg, progress=progress)
    g = cfg.grouped
    led = _ledger(epsilon, delta, accountant)
    for r in range(cfg.teacher_rounds):
        spends = [Spend("dp-kmeans-prototypes", plan.prototype_noise, 1.0, g.prototype_iters)] if plan.releases else []
        spends.append(Spend("dp-sgd-grouped", plan.noise_multiplier, plan.sample_rate, g.steps, g.clip_norm, 2 * g.clip_norm))
        led.record(r + 1, spends, "trained")
    _check(led, log["privacy_history"], plan.history)
    log["release"] = {"mode": "grouped", "noise_multiplier": plan.noise_multiplier, "prototype_noise": plan.prototype_noise,
                      "sample_rate": plan.sample_rate, "steps": plan.steps, "prototype_releases": plan.releases,
                      "clip_norm": g.clip_norm, "sensitivity": 2 * g.clip_norm}
    return student, log, led


def adapt_per_record_release(teacher: DualHeads, target: FeatureSet, bank: PublicBank, cfg: AdaptConfig, epsilon: float,
                             delta: float, accountant: str = "rdp", rc: RecordReleaseConfig | None = None,
                             progress: Callable | None = None) -> tuple[DualHeads, dict, SiteLedger]:
    """Per-record GCKD's image phase as DP-SGD, ``cfg.teacher_rounds`` rounds, each with fresh DP prototypes."""
    rc = rc or RecordReleaseConfig()
    cfg = resolved(cfg)
    if (target.text_pids >= 0).any() or (target.image_pids >= 0).any():
        raise ValueError("adaptation must not see target identity labels: pass FeatureSet.without_labels()")
    rounds = cfg.teacher_rounds
    per_round = 2 * cfg.prototype_iters if cfg.prototypes > 0 else 0  # one k-means per modality (site_context)
    z_p = prototype_noise_for(rc.prototype_budget_share * epsilon, delta, rounds * per_round, accountant) if per_round else 0.0
    plan = plan_record_level(epsilon, delta, rounds, rc.steps, rc.sample_rate, per_round, z_p, accountant)
    acfg = replace(cfg, prototype_noise=z_p, cmkd=CMKDConfig())  # the full soft target, as tuned under DP-SGD
    params = release_params(rc, teacher, plan.dp_sgd_noise_multiplier, target.n_images)
    ratio = step_noise_ratio(teacher, params, plan.dp_sgd_noise_multiplier, rc.sample_rate, target.n_images)
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    led, history, losses = _ledger(epsilon, delta, accountant), [], []
    current = teacher
    for r in range(rounds):
        frozen = copy.deepcopy(current).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        ctx = build_site_context(frozen, target, bank, acfg, gen)
        r_img, r_txt = refine(frozen, target, ctx, acfg)
        pack = RecordPack.from_features(target)
        targets = teacher_targets(r_img, pack_texts(r_txt, target.text_to_image, pack))
        crit = RecordLoss(ctx.public_images(), ctx.public_texts(), acfg.cmkd, frozen.cfg.out_dim)
        student = copy.deepcopy(current)
        set_trainable(student, trainable_for_mode(student, params, "per_record"))
        student.train()
        steps_cfg = RecordLevelConfig(noise_multiplier=plan.dp_sgd_noise_multiplier, clip_norm=rc.clip_norm,
                                      sample_rate=rc.sample_rate, steps=rc.steps, lr=rc.lr)
        ran, stats = train_record_level(student, pack, targets, crit, steps_cfg, gen)
        losses.append(stats["loss"])
        spends = [Spend("dp-kmeans-prototypes", s, q, n) for s, q, n in merge_history(ctx.privacy_history)]
        spends += [Spend("dp-sgd", s, q, n, rc.clip_norm) for s, q, n in ran]
        led.record(r + 1, spends, "trained")
        history = merge_history(history, ctx.privacy_history, ran)
        current = student.eval()
        if progress:
            progress(r + 1, rounds, {"round": r + 1, "loss": stats["loss"]})
    _check(led, history, plan.planned_history)
    log = {"config": asdict(acfg),
           "epochs": [{"round": r + 1, "loss": l} for r, l in enumerate(losses)],
           "selection": "fixed schedule, the last student; no target labels read", "privacy_history": history,
           "release": {"mode": "per_record", "noise_multiplier": plan.dp_sgd_noise_multiplier, "prototype_noise": z_p,
                       "sample_rate": rc.sample_rate, "steps": rounds * rc.steps, "clip_norm": rc.clip_norm,
                       "sensitivity": rc.clip_norm, "train_params": params, "step_noise_ratio": round(ratio, 4),
                       "dropped": "text phase and DP whitening (outside DP-SGD)"}}
    return current, log, led


def _totals(history: list) -> Counter:
    """Steps per (noise multiplier, sample rate): composition does not depend on the order."""
    out: Counter = Counter()
    for s, q, n in merge_history(history):
        out[(s, q)] += n
    return out


def _check(led: SiteLedger, ran: list, planned: list) -> None:
    """The ledger, the run's own history and the plan must be the same spending."""
    if not _totals(led.history) == _totals(ran) == _totals(planned):
        raise RuntimeError(f"the run spent {merge_history(ran)}, the ledger holds {led.history}, the plan was "
                           f"{merge_history(planned)}: refusing to claim an epsilon")


def release_statement(led: SiteLedger) -> str:
    """The one line a release prints: epsilon with its unit, neighbouring relation, delta and accountant."""
    eps = compute_epsilon(led.history, led.delta, led.accountant).epsilon
    return (f"record-level DP release: epsilon {eps:.3f} for one image-caption record of the target site "
            f"({led.neighbouring}), delta {led.delta:g}, Opacus {led.accountant.upper()} accountant, over the whole "
            f"adaptation ({sum(e.steps for e in led.entries if e.mechanism.startswith('dp-sgd'))} DP-SGD steps and "
            f"{sum(e.steps for e in led.entries if e.mechanism == 'dp-kmeans-prototypes')} prototype releases)")


def write_release(out, led: SiteLedger, release: dict, config: dict, diagnostics: dict | None = None) -> None:
    """ledger.json and metrics.json in a run folder's format, so that `fedgckd audit` reads a one-machine release
    as it reads a federation (one site, ``adapt``, with its rounds = teacher rounds); ``diagnostics`` (exact
    training figures, not DP) go to diagnostics.json beside them, never into the released checkpoint."""
    from pathlib import Path

    from common.atomic import atomic_write_json

    out = Path(out)
    privacy = {"mode": "record", "unit": "record", "loss_mode": release["mode"], "epsilon_budget": led.budget,
               "delta": led.delta, "accountant": led.accountant, "clip_norm": release["clip_norm"],
               "sensitivity": release["sensitivity"], "dp_sgd_sample_rate": release["sample_rate"],
               "mechanism": "dp-sgd-grouped" if release["mode"] == "grouped" else "dp-sgd", "one_machine": True}
    entries = [asdict(e) for e in led.entries]
    atomic_write_json(out / "ledger.json", {"privacy": privacy, "sites": {led.site: entries}, "events": [],
                                           "server_site_level": {}, "final_epsilon": {led.site: led.epsilon()},
                                           "final_server_epsilon": {}})
    if diagnostics is not None:
        atomic_write_json(out / "diagnostics.json", {"note": "exact figures of the training run, for the operator: "
                                                     "not DP-protected, not part of the release", **diagnostics})
    atomic_write_json(out / "metrics.json", {"config": {**config, "privacy": "record"}, "privacy": privacy,
                                             "rounds": [{"round": e.round} for e in led.entries if e.mechanism.startswith("dp-sgd")]})
