"""Canary records for the empirical privacy audit, and how the auditor scores them.

A canary is one image-caption record made to be easy to remember and unlike
any real record: its image features and its caption features are independent
random Gaussian vectors (scaled to the site's mean feature norms), so the
pair is a "mislabelled" record that nothing but training on it explains.

Scores (higher = guess "in"); both are computed from public things only (the
student the site started from, the teacher, the public anchors, the canaries)
and from the mechanism's output (the trained student), never from the coins:

- ``"update"`` (default; white-box: the server sees a site's update). Each
  canary's per-record CMKD gradient at the starting student, unit-normalised,
  projected on the update the training made (start minus end, i.e. the descent
  direction). The top ``PCA_DROP`` principal directions of the canaries'
  centred gradients are removed from both first: they are what all canaries
  share (any training moves them) rather than what one canary leaves. The
  gradient is taken with the public anchors as the only public candidates
  (the site's DP prototypes are not part of the model the auditor sees).
  With ``train-params=lowrank:R`` the site's reply is the adapters' B's (the
  server folds ``W += B A`` with public bases ``A``): the score is taken in
  that space (`low_rank_views`): each canary's gradient with respect to B at
  the starting student carrying the first round's adapters, projected on the
  update ``(W_start - W_end) A^T`` (exactly ``-B`` after one round; later
  rounds' updates counted through their projection on the first round's ``A``).
- ``"pair"`` (black-box): the increase, from the starting student to the
  trained one, of the canary's image-caption cosine similarity minus its mean
  similarity to the other canaries' captions (what all canaries gain alike
  cancels).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from common.federation.payload import FixedAnchors
from common.federation.trainable import set_trainable, trainable_names
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.models.low_rank import attach_low_rank
from common.train.adapt import AdaptConfig, refine
from common.train.record_pack import PackedStudent, RecordLoss, RecordPack, pack_texts, teacher_targets
from common.train.site_context import build_site_context

SCORES = ("update", "pair")
PCA_DROP = 10  # shared directions removed; fixed before any audit ran (10 of a few hundred canaries)


def make_canaries(site: FeatureSet, m: int, generator: torch.Generator) -> FeatureSet:
    """m canary records (one caption each) with random features shaped like the site's."""
    if m < 2:
        raise ValueError(f"need at least 2 canaries, got {m}")
    di, dt = site.image_feats.shape[1], site.text_feats.shape[1]
    img_norm = float(site.image_feats.norm(dim=1).mean()) if site.n_images else 1.0
    txt_norm = float(site.text_feats.norm(dim=1).mean()) if site.n_texts else 1.0
    img = F.normalize(torch.randn(m, di, generator=generator), dim=1) * img_norm
    txt = F.normalize(torch.randn(m, dt, generator=generator), dim=1) * txt_norm
    return FeatureSet(
        image_feats=img.to(site.image_feats.dtype), text_feats=txt.to(site.text_feats.dtype),
        text_to_image=torch.arange(m), image_pids=torch.full((m,), -1, dtype=torch.long),
        text_pids=torch.full((m,), -1, dtype=torch.long),
        image_paths=[f"canary-{i}" for i in range(m)], captions=[f"canary caption {i}" for i in range(m)],
        backbone=site.backbone, fingerprint=site.fingerprint)


def with_records(site: FeatureSet, extra: FeatureSet) -> FeatureSet:
    """The site's records followed by `extra`'s (labels removed: a site never trains on them)."""
    merged = dataclasses.replace(
        site,
        image_feats=torch.cat([site.image_feats, extra.image_feats]),
        text_feats=torch.cat([site.text_feats, extra.text_feats]),
        text_to_image=torch.cat([site.text_to_image, extra.text_to_image + site.n_images]),
        image_pids=torch.cat([site.image_pids, extra.image_pids]),
        text_pids=torch.cat([site.text_pids, extra.text_pids]),
        image_paths=list(site.image_paths) + list(extra.image_paths),
        captions=list(site.captions) + list(extra.captions), cache_key="", from_cache=False)
    return merged.without_labels()


@torch.no_grad()
def _pair_matrix(heads: DualHeads, canaries: FeatureSet) -> torch.Tensor:
    img = heads.image(canaries.image_feats)
    txt = heads.text(canaries.text_feats)
    return img[canaries.text_to_image] @ txt.t()  # [m, m]: row = canary image, column = canary caption


def pair_scores(start: DualHeads, end: DualHeads, canaries: FeatureSet) -> torch.Tensor:
    """Black-box score: gain in own-caption similarity beyond the gain against the other canaries' captions."""
    def relative(sim: torch.Tensor) -> torch.Tensor:
        own = sim.diagonal()
        return own - (sim.sum(1) - own) / (len(sim) - 1)

    return relative(_pair_matrix(end, canaries)) - relative(_pair_matrix(start, canaries))


def _flat(heads: DualHeads, names: list[str]) -> torch.Tensor:
    params = dict(heads.named_parameters())
    return torch.cat([params[n].detach().flatten() for n in names])


def canary_gradients(start: DualHeads, teacher: DualHeads, canaries: FeatureSet, anchor_images: torch.Tensor,
                     anchor_texts: torch.Tensor, names: list[str], acfg: AdaptConfig) -> torch.Tensor:
    """[m, P] unit-normalised per-record CMKD gradients of the canaries at ``start`` (the ``names`` parameters)."""
    acfg = dataclasses.replace(acfg, prototypes=0)  # anchors only: no site release is involved in scoring
    ctx = build_site_context(teacher, canaries, FixedAnchors(anchor_images, anchor_texts), acfg, torch.Generator())
    r_img, r_txt = refine(teacher, canaries, ctx, acfg)
    pack = RecordPack.from_features(canaries)
    targets = teacher_targets(r_img, pack_texts(r_txt, canaries.text_to_image, pack))
    criterion = RecordLoss(ctx.public_images(), ctx.public_texts(), acfg.cmkd, teacher.cfg.out_dim, reduction="sum")
    heads = copy.deepcopy(start)
    set_trainable(heads, names)
    by_name = dict(heads.named_parameters())
    params = [by_name[n] for n in names]
    model = PackedStudent(heads, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    x = pack.inputs()
    rows = []
    for i in range(len(pack)):
        grads = torch.autograd.grad(criterion(model(x[i : i + 1]), targets[i : i + 1]), params)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return F.normalize(torch.stack(rows), dim=1)


def update_scores(start: DualHeads, end: DualHeads, teacher: DualHeads, canaries: FeatureSet,
                  anchor_images: torch.Tensor, anchor_texts: torch.Tensor, names: list[str], acfg: AdaptConfig,
                  drop: int = PCA_DROP) -> torch.Tensor:
    """White-box score: each canary's gradient projected on the update, shared directions removed."""
    grads = canary_gradients(start, teacher, canaries, anchor_images, anchor_texts, names, acfg)
    descent = _flat(start, names) - _flat(end, names)
    drop = min(drop, len(grads) - 1)
    if drop > 0:
        _, _, v = torch.linalg.svd(grads - grads.mean(0, keepdim=True), full_matrices=False)
        shared = v[:drop]
        return grads @ descent - (grads @ shared.t()) @ (shared @ descent)
    return grads @ descent


@torch.no_grad()
def low_rank_views(start: DualHeads, end: DualHeads, bases: dict[str, torch.Tensor],
                   spec: str) -> tuple[DualHeads, DualHeads, list[str]]:
    """(start, end, names) in the adapters' space, for `update_scores` under ``lowrank:R``.

    ``start`` and ``end`` are plain heads; both views carry adapters on ``bases`` (the first round's) over
    ``start``'s weights. The start view has B = 0 and ``start``'s biases; the end view has B = ``(W_end - W_start)
    A^T`` per Linear and ``end``'s biases, so start minus end over ``names`` (the B's, + biases) is the update
    as the site's replies carry it (exact after one round: A's rows are orthonormal).
    """
    start_view = attach_low_rank(copy.deepcopy(start), dict(bases))
    end_view = attach_low_rank(copy.deepcopy(start), dict(bases))
    plain_start, plain_end = dict(start.named_parameters()), dict(end.named_parameters())
    for path, a in bases.items():
        delta = plain_end[f"{path}.weight"] - plain_start[f"{path}.weight"]
        dict(end_view.named_parameters())[f"{path}.B.weight"].copy_(delta @ a.to(delta.dtype).t())
    view_params = dict(end_view.named_parameters())
    for name, p in plain_end.items():
        if name.endswith(".bias"):
            view_params[_view_name(name, bases)].copy_(p)
    return start_view, end_view, trainable_names(start_view, spec)


def _view_name(plain: str, bases: dict) -> str:
    """A plain parameter's name once its Linear carries an adapter (``X.bias`` -> ``X.base.bias``)."""
    module = plain.rsplit(".", 1)[0]
    return plain.replace(module + ".", module + ".base.", 1) if module in bases else plain
