"""One site's local round: from the broadcast student and the round's teacher to a trained student.

The teacher is fixed within a round (the server keeps its EMA across rounds),
so GMP targets are computed once, over the site's teacher embeddings and the
broadcast anchors (plus DP prototypes in per-record mode).

- privacy ``record``: per-record GMP and per-record CMKD (`RecordLoss`) under
  Opacus DP-SGD (`train_record_level`: Poisson sampling, ghost clipping).
  The DP k-means prototype releases and the DP-SGD steps are both returned
  as ledger spends.
- privacy ``record`` in ``grouped`` mode: the full GCKD objective inside small
  groups keyed by the round's DP prototypes (released and returned as a spend)
  and a keyed hash, under group clipping (`common.train.grouped_site`,
  Delta = 2C): both heads train.
- privacy ``none`` / ``site``: the one-machine GCKD loop (`adapt`) for
  ``local_steps`` steps from the global student, any mode. Under ``site`` the
  caller clips the update (and the server adds the noise).

Only the parameters named in ``names`` train; the rest of the student keeps
the broadcast values. With ``train-params=lowrank:R`` the caller passes a
student that already carries the round's adapters (`common.federation.adapters.
attach`) and ``names`` = its B's (+ biases): the grouped path trains them as
any other parameters (the group clipper hooks B, never the frozen A) and
returns only them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

from common.federation.config import FedConfig
from common.federation.payload import FixedAnchors
from common.federation.trainable import get_arrays, set_trainable
from common.losses.cmkd import CMKDConfig
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.models.low_rank import adapters
from common.privacy.accounting import merge_history
from common.privacy.ledger import Spend
from common.graph.gmp import GMPConfig
from common.train.adapt import AdaptConfig, adapt, refine
from common.train.grouped_adapt import cell_bins
from common.train.grouped_config import GroupedConfig
from common.train.grouped_dp import GroupClippedSGD
from common.train.grouped_site import GroupedSite, record_views, release_prototypes
from common.train.record_level_dp import RecordLevelConfig, train_record_level
from common.train.record_pack import RecordLoss, RecordPack, pack_texts, teacher_targets
from common.train.site_context import build_site_context

SGD_LR = 0.1  # SGD (momentum 0.9) on noisy averaged gradients. Emulated 10-site federations of 180-record sites
# (dev val R1, flat->outline, from 6.0): epsilon 8 gives 8.0 at lr 0.01, 12.0 at 0.1, 11.2 at 0.5, 4.0 at 2; at 0.1 the
# noise carries an update to 2-4x the weights' norm, so the site scales it back to the server's bound (client/task.py;
# 11.6 with that scaling), which also damps the noisier runs (epsilon 1: 5.8 at 0.1 with scaling, 1.8 without)
ADAMW_LR = 1e-3  # AdaptConfig's default (3e-4 left one-machine adaptation under-trained on the dev pair)


@dataclass
class LocalResult:
    arrays: dict  # name -> float32 ndarray, the trained values of `names`
    spends: list[Spend] = field(default_factory=list)  # what actually ran (record-level mechanisms)
    loss: float = float("nan")


def adapt_config(cfg: FedConfig, seed: int) -> AdaptConfig:
    return AdaptConfig(mode=cfg.loss_mode, lr=cfg.lr or ADAMW_LR, batch_size=cfg.batch_size,
                       momentum=1.0,  # teacher fixed within the round; the server's EMA moves it
                       refresh_steps=10**9,  # fixed teacher: its GMP targets are computed once
                       text_phase=0.0,  # not yet in the federated path: per-record sites train the image head only
                       average=None,  # a site sends its last local student; averaging across rounds is the server's
                       whiten=0.0,  # one-machine whitening releases a 256x256 matrix per modality: not a student update
                       cmkd=CMKDConfig(),  # the full soft target (kd_weight 1.0), as tuned under DP; one-machine
                       # per-record's 0.5 (AdaptConfig) was chosen without noise and is untested here
                       seed=seed, prototypes=cfg.prototypes, prototype_iters=cfg.prototype_iters,
                       prototype_noise=cfg.prototype_noise_multiplier())


def run_local_round(student: DualHeads, teacher: DualHeads, anchor_images: torch.Tensor, anchor_texts: torch.Tensor,
                    site: FeatureSet, names: list[str], cfg: FedConfig, dp_sgd_noise: float, seed: int) -> LocalResult:
    """Train `student` (in place for record-level DP) and return its trained arrays."""
    if (site.image_pids >= 0).any() or (site.text_pids >= 0).any():
        raise ValueError("a site's training must not see identity labels: pass FeatureSet.without_labels()")
    if cfg.privacy == "record" and cfg.loss_mode not in ("per_record", "grouped"):
        raise ValueError("record-level DP runs only in per-record or grouped mode")
    if adapters(student) and (cfg.privacy, cfg.loss_mode) != ("record", "grouped"):
        raise ValueError("a student with low-rank adapters trains only in record-level grouped mode")
    torch.manual_seed(seed)
    # Under DP the noise and the Poisson sampling must be unpredictable: a generator seeded from the
    # run's seed would let anyone who knows it subtract the noise. (torch's generator is not a CSPRNG;
    # Opacus' secure mode needs torchcsprng, which is not available: STACK.md section 12.)
    gen = torch.Generator().manual_seed(secrets.randbits(63) if cfg.privacy == "record" else seed)
    set_trainable(student, names)
    bank = FixedAnchors(anchor_images, anchor_texts)
    acfg = adapt_config(cfg, seed)
    if cfg.loss_mode == "grouped":  # without record-level DP: the same groups and clipping, no noise (its ceiling)
        sigma = dp_sgd_noise if cfg.privacy == "record" else 0.0
        return _grouped_round(student, teacher, anchor_images, anchor_texts, site, cfg, sigma, gen, names, seed)
    if cfg.privacy != "record":
        trained, log = adapt(teacher, site, bank, acfg, student=student, steps=cfg.local_steps)
        return LocalResult(get_arrays(trained, names), [], float(log["epochs"][-1]["loss"]) if log["epochs"] else float("nan"))
    ctx = build_site_context(teacher, site, bank, acfg, gen)
    r_img, r_txt = refine(teacher, site, ctx, acfg)
    pack = RecordPack.from_features(site)
    targets = teacher_targets(r_img, pack_texts(r_txt, site.text_to_image, pack))
    criterion = RecordLoss(ctx.public_images(), ctx.public_texts(), acfg.cmkd, teacher.cfg.out_dim)
    rl = RecordLevelConfig(noise_multiplier=dp_sgd_noise, clip_norm=cfg.clip_norm, sample_rate=cfg.sample_rate,
                           steps=cfg.local_steps, lr=cfg.lr or SGD_LR)
    student.train()
    history, stats = train_record_level(student, pack, targets, criterion, rl, gen)
    student.eval()
    spends = [Spend("dp-kmeans-prototypes", s, q, n) for s, q, n in merge_history(ctx.privacy_history)]
    spends += [Spend("dp-sgd", s, q, n, cfg.clip_norm) for s, q, n in history]
    return LocalResult(get_arrays(student, names), spends, float(stats["loss"]))


def _grouped_round(student: DualHeads, teacher: DualHeads, anchor_images: torch.Tensor, anchor_texts: torch.Tensor,
                   site: FeatureSet, cfg: FedConfig, sigma: float, gen: torch.Generator, names: list[str], seed: int) -> LocalResult:
    """Grouped mode: this round's DP prototypes, then ``local-steps`` group-clipped steps (noise ``sigma``: 0 unless
    record-level DP; its spends are then not charged, the ledger being record-level only)."""
    n = site.n_images
    teacher = teacher.eval()
    views = record_views(teacher, site)
    z_p = cfg.prototype_noise_multiplier() if cfg.prototype_releases_per_round else 0.0
    protos, counts, entries = release_prototypes(views, anchor_texts, cfg.prototypes if z_p else 0, cfg.prototype_iters,
                                                 z_p, gen)
    expected = cfg.sample_rate * n
    bins = cell_bins(GroupedConfig(group_size=cfg.group_size), cfg.sample_rate, n, counts)
    gsite = GroupedSite.build(site, cfg.sample_rate, bins, f"fedgckd-grouped-{seed}".encode(), 3 * cfg.group_size,
                              GroupedConfig().sub_bin)
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=cfg.lr or SGD_LR, momentum=0.9)
    # divided by the expected number of groups of the target size: a public constant, as DP-SGD's expected batch
    sgd = GroupClippedSGD(student, opt, cfg.clip_norm, sigma, max(1.0, expected / cfg.group_size), gen)
    student.train()
    losses = [gsite.step(sgd, gsite.sample(gen), teacher, views, protos, anchor_images, anchor_texts, s, GMPConfig(),
                         CMKDConfig(), GroupedConfig().neighbours, True) for s in range(cfg.local_steps)]
    sgd.close()
    student.eval()
    spends = [Spend("dp-kmeans-prototypes", s, q, k) for s, q, k in merge_history(entries)]
    spends.append(Spend("dp-sgd-grouped", sigma, cfg.sample_rate, cfg.local_steps, cfg.clip_norm))
    done = [x for x in losses if x == x]
    return LocalResult(get_arrays(student, names), spends, sum(done) / len(done) if done else float("nan"))
