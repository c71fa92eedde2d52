"""One site's records in `grouped` mode, and one group-clipped step on a Poisson sample of them.

Shared by one-machine adaptation (`common.train.grouped_adapt`) and a
federated site's local round (`common.federation.local_round`): the same
sampling, keys, in-group GMP targets and group clipping, so the adjacency test
(`tests/test_grouped_adjacency.py`) covers both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.graph.gmp import GMPConfig
from common.graph.grouped_gmp import propagate_groups
from common.losses.cmkd import CMKDConfig
from common.losses.grouped_loss import GroupLoss, GroupPack, group_targets
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.privacy.site_prototypes import dp_kmeans
from common.train.embed import embed_featureset
from common.train.grouped_dp import GroupClippedSGD
from common.train.grouped_keys import GroupStats, cap_groups, group_keys, groups_of, record_uids


@torch.no_grad()
def record_views(teacher: DualHeads, target: FeatureSet) -> torch.Tensor:
    """[N, D] each record's mean caption embedding by ``teacher``, unit norm: a function of the record alone."""
    text, image = embed_featureset(teacher, target)
    return F.normalize(torch.zeros_like(image).index_add(0, target.text_to_image, text), dim=-1)


def release_prototypes(views: torch.Tensor, anchors: torch.Tensor, k: int, iterations: int, noise: float,
                       gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list]:
    """DP k-means prototypes of the record views, started from public anchors; (prototypes, their noisy counts,
    accountant entries). With no prototype the site is one cell whose count is unknown (empty counts)."""
    k = min(k, len(anchors))
    if k <= 0:
        return views[:0], views.new_zeros(0), []
    init = anchors[torch.randperm(len(anchors), generator=gen)[:k]]
    release = dp_kmeans(views, k, iterations, noise, init, gen)
    return release.prototypes, release.counts_noisy, release.history


def _real_slots(head, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``head`` on the real slots of packed features [G, R, F] only; padded slots come back as zeros (they were
    masked to zeros after the head anyway), so most of the batch's padding costs nothing."""
    real = mask.nonzero(as_tuple=True)
    e = head(x[real])
    return e.new_zeros(*mask.shape, e.shape[1]).index_put(real, e)


@dataclass
class GroupedSite:
    target: FeatureSet  # without identity labels
    uids: torch.Tensor  # [N] keyed hashes of the records (`record_uids`)
    caps_of: list[list[int]]  # caption rows of each record
    rate: float  # Poisson rate q
    bins: int | torch.Tensor  # public number of sub-bins: one for every prototype cell, or one per cell [P]
    stats: GroupStats
    cap: int = 0  # most members a group trains on in a step (0: no cap); see `cap_groups`
    sub_bin: str = "hash"  # "hash" or "lsh" (`group_keys`)

    @classmethod
    def build(cls, target: FeatureSet, rate: float, bins: int | torch.Tensor, key: bytes, cap: int = 0,
              sub_bin: str = "hash") -> "GroupedSite":
        if (target.text_pids >= 0).any() or (target.image_pids >= 0).any():
            raise ValueError("grouped training must not see identity labels: pass FeatureSet.without_labels()")
        caps_of: list[list[int]] = [[] for _ in range(target.n_images)]
        for t, r in enumerate(target.text_to_image.tolist()):
            caps_of[r].append(t)
        return cls(target, record_uids(target.image_feats, key), caps_of, rate, bins, GroupStats.empty(), cap, sub_bin)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        """Every record independently with probability q (Poisson sampling); may be empty."""
        return (torch.rand(self.target.n_images, generator=gen) < self.rate).nonzero().squeeze(1)

    def prepare(self, recs: torch.Tensor, teacher: DualHeads, views: torch.Tensor, protos: torch.Tensor,
                anchor_images: torch.Tensor, anchor_texts: torch.Tensor, step_no: int, gmp: GMPConfig | None,
                cmkd: CMKDConfig, neighbours: int, pseudo_positives: bool,
                positive_min_sim: float | None = None) -> tuple[GroupPack, torch.Tensor, GroupLoss]:
        """(the sampled records ``recs`` packed by group, the teacher's in-group targets, the group loss)."""
        gid = groups_of(group_keys(views[recs], protos, self.uids[recs], step_no, self.bins, self.sub_bin))
        keep = cap_groups(gid, self.uids[recs], step_no, self.cap)
        self.stats.dropped += int((~keep).sum())
        recs, gid = recs[keep], gid[keep]
        self.stats.add(gid)
        pack = GroupPack.build(self.target.image_feats, self.target.text_feats, self.caps_of, recs, gid)
        with torch.no_grad():
            t_img, t_txt = _real_slots(teacher.image, pack.img, pack.mi), _real_slots(teacher.text, pack.txt, pack.mt)
            if gmp is not None:
                public = torch.cat([anchor_images, anchor_texts, protos])
                t_img, t_txt = propagate_groups(t_img, pack.mi, t_txt, pack.mt, pack.slot, public, gmp)
        crit = GroupLoss(anchor_images, anchor_texts, cmkd, teacher.cfg.out_dim, neighbours, pseudo_positives,
                         positive_min_sim=positive_min_sim)
        return pack, group_targets(t_img * pack.mi[..., None], t_txt * pack.mt[..., None], pack.slot), crit

    def step(self, sgd: GroupClippedSGD, recs: torch.Tensor, *args) -> float:
        """One released step on the sampled records ``recs`` (`prepare`'s other arguments follow); returns the mean
        group loss (nan for an empty batch, which releases the noise alone)."""
        if len(recs) == 0:
            self.stats.add(recs)
            return sgd.step(None, None, None)
        return sgd.step(*self.prepare(recs, *args))
