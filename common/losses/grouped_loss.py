"""The full GCKD objective restricted to groups: one row per group, the form group clipping clips.

A sampled batch is split into disjoint groups (`common.train.grouped_keys`);
group g's images and captions are packed into row g (padded to the largest
group; masks mark the real slots). For every caption of a group (and
symmetrically every image) the student scores, as in full-mode CMKD
(`common.losses.cmkd`):

* its own pair,
* the group's other records (student embeddings: in-site cross-modal
  contrast, the group's members as negatives or pseudo-positives),
* the ``hard_negatives`` public anchors hardest by the momentum teacher's
  GMP-refined embedding (public source negatives; fixed keys).

The soft target is full mode's: equal mass on the own pair and on every group
member that is a *mutual* neighbour of the query's record among the group
(each record's ``neighbours`` nearest group-mates by the refined mean caption
embedding: pseudo-positives), or, with ``pseudo_positives`` off, the refined
teacher's softmax; ``kd_weight`` mixes in the one-hot own pair.

A group's loss is the sum of its records' losses (a record's: the mean over
its captions' terms and its image's term, halved). Row g of the loss reads row
g of the student output and of the targets only, so one record moves one
group's loss and nothing else: what `Delta = 2C` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.losses.cmkd import CMKDConfig
from common.models.heads import DualHeads


@dataclass
class GroupPack:
    """A batch in group layout: G groups, Ri image slots and Rt caption slots each."""

    img: torch.Tensor  # [G, Ri, Di] trunk features, zero where padded
    txt: torch.Tensor  # [G, Rt, Dt]
    mi: torch.Tensor  # [G, Ri] bool, a real image (record)
    mt: torch.Tensor  # [G, Rt] bool, a real caption
    slot: torch.Tensor  # [G, Rt] long, the image slot (record) of each caption; 0 where padded
    records: torch.Tensor  # [G, Ri] long, the record index of each image slot; -1 where padded

    @classmethod
    def build(cls, image_feats: torch.Tensor, text_feats: torch.Tensor, caps_of: list[list[int]], recs: torch.Tensor,
              group_ids: torch.Tensor) -> "GroupPack":
        """Pack records ``recs`` (global indices) into the groups ``group_ids`` (0..G-1, one per record)."""
        g = int(group_ids.max()) + 1 if len(group_ids) else 0
        members = [[] for _ in range(g)]
        for r, gid in zip(recs.tolist(), group_ids.tolist()):
            members[gid].append(r)
        ri = max((len(m) for m in members), default=0)
        rt = max((sum(len(caps_of[r]) for r in m) for m in members), default=0)
        img = image_feats.new_zeros(g, ri, image_feats.shape[1])
        txt = text_feats.new_zeros(g, rt, text_feats.shape[1])
        mi, mt = torch.zeros(g, ri, dtype=torch.bool), torch.zeros(g, rt, dtype=torch.bool)
        slot, records = torch.zeros(g, rt, dtype=torch.long), torch.full((g, ri), -1, dtype=torch.long)
        for k, m in enumerate(members):
            caps = [(i, t) for i, r in enumerate(m) for t in caps_of[r]]
            img[k, : len(m)] = image_feats[m]
            mi[k, : len(m)] = True
            records[k, : len(m)] = torch.tensor(m, dtype=torch.long)
            if caps:
                txt[k, : len(caps)] = text_feats[[t for _, t in caps]]
                mt[k, : len(caps)] = True
                slot[k, : len(caps)] = torch.tensor([i for i, _ in caps])
        return cls(img, txt, mi, mt, slot, records)

    def inputs(self) -> torch.Tensor:
        """[G, Ri*Di + Rt*Dt + Ri + Rt]: one input row per group."""
        g = len(self.img)
        return torch.cat([self.img.reshape(g, -1), self.txt.reshape(g, -1), self.mi.to(self.img.dtype),
                          self.mt.to(self.img.dtype)], 1)

    def __len__(self) -> int:
        return len(self.img)


class GroupedStudent(nn.Module):
    """Student heads on packed group rows: [G, F] -> [G, Ri*D + Rt*D + Ri + Rt] (unit-norm embeddings, masks)."""

    def __init__(self, heads: DualHeads):
        super().__init__()
        self.heads = heads
        self.shape = (0, 0)  # (Ri, Rt) of the batch at hand; set by the caller before each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ri, rt = self.shape
        di, dt, g = self.heads.image_dim, self.heads.text_dim, len(x)
        img = x[:, : ri * di].reshape(g, ri, di)
        txt = x[:, ri * di : ri * di + rt * dt].reshape(g, rt, dt)
        masks = x[:, ri * di + rt * dt :]
        return torch.cat([self.heads.image(img).reshape(g, -1), self.heads.text(txt).reshape(g, -1), masks], 1)


def group_targets(r_img: torch.Tensor, r_txt: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """[G, Ri*D + Rt*D + Rt]: the refined teacher embeddings of each group and its caption slots."""
    g = len(r_img)
    return torch.cat([r_img.reshape(g, -1), r_txt.reshape(g, -1), slot.to(r_img.dtype)], 1)


def mutual_in_group(view: torch.Tensor, mask: torch.Tensor, k: int, min_sim: float | None = None) -> torch.Tensor:
    """[G, R, R] bool: records i and j of a group are among each other's k nearest group-mates by ``view`` (and,
    with ``min_sim``, their views' cosine is at least that)."""
    g, r = mask.shape
    if k <= 0 or r < 2:
        return torch.zeros(g, r, r, dtype=torch.bool)
    sim = (view @ view.transpose(1, 2)).masked_fill(~(mask[:, :, None] & mask[:, None, :]) | torch.eye(r, dtype=torch.bool), float("-inf"))
    val, idx = sim.topk(min(k, r - 1), dim=2)
    ok = torch.isfinite(val) if min_sim is None else torch.isfinite(val) & (val >= min_sim)
    near = torch.zeros(g, r, r, dtype=torch.bool).scatter_(2, idx, ok)
    return near & near.transpose(1, 2)


def _side(q_s, own_s, cand_s, q_t, own_t, cand_t, cand_valid, positive, public, qmask, cfg: CMKDConfig, use_positives: bool):
    """Loss [G, Q] of queries q against: own pair, the group's candidates, the hardest public keys."""
    g, nq = q_s.shape[:2]
    h = min(cfg.hard_negatives, len(public))
    parts_s = [(q_s * own_s).sum(-1, keepdim=True), q_s @ cand_s.transpose(1, 2)]
    parts_t = [(q_t * own_t).sum(-1, keepdim=True), q_t @ cand_t.transpose(1, 2)]
    masks = [torch.zeros(g, nq, 1, dtype=torch.bool), ~cand_valid]
    if h:  # scored for real queries only (most slots are padding); a padded query's row stays 0 and is masked out
        real = qmask.nonzero(as_tuple=True)
        t_pub = q_t[real] @ public.T
        hard = t_pub.topk(h, dim=1).indices
        parts_s.append(q_s.new_zeros(g, nq, h).index_put(real, (q_s[real] @ public.T).gather(1, hard)))
        parts_t.append(q_t.new_zeros(g, nq, h).index_put(real, t_pub.gather(1, hard)))
        masks.append(torch.zeros(g, nq, h, dtype=torch.bool))
    mask = torch.cat(masks, 2)
    logit_s = (torch.cat(parts_s, 2) / cfg.tau_student).masked_fill(mask, float("-inf"))
    if use_positives:
        allowed = torch.cat([torch.ones(g, nq, 1, dtype=torch.bool), positive & cand_valid,
                             torch.zeros(g, nq, mask.shape[2] - 1 - cand_s.shape[1], dtype=torch.bool)], 2)
        logit_t = torch.zeros_like(logit_s).masked_fill(~allowed, float("-inf"))
    else:
        logit_t = (torch.cat(parts_t, 2) / cfg.tau_teacher).masked_fill(mask, float("-inf"))
    target = cfg.kd_weight * F.softmax(logit_t.detach(), 2)
    target[..., 0] += 1.0 - cfg.kd_weight
    log_p = F.log_softmax(logit_s, 2).masked_fill(mask, 0.0)
    return -(target * log_p).sum(2) * qmask


class GroupLoss(nn.Module):
    """Per-group loss [G] from (student rows, target rows); Opacus' criterion contract (``.reduction``)."""

    def __init__(self, public_images: torch.Tensor, public_texts: torch.Tensor, cfg: CMKDConfig, dim: int,
                 neighbours: int = 2, pseudo_positives: bool = True, reduction: str = "none",
                 positive_min_sim: float | None = None):
        super().__init__()
        self.positive_min_sim = positive_min_sim
        self.public_images, self.public_texts = public_images.detach(), public_texts.detach()
        self.cfg, self.d, self.neighbours, self.pseudo_positives = cfg, dim, neighbours, pseudo_positives
        self.reduction = reduction

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d, g = self.d, len(out)
        # out: Ri*D + Rt*D + Ri + Rt columns, target: Ri*D + Rt*D + Rt, so the difference is Ri
        ri = out.shape[1] - target.shape[1]
        rt = (target.shape[1] - ri * d) // (d + 1)
        s_img, s_txt = out[:, : ri * d].reshape(g, ri, d), out[:, ri * d : (ri + rt) * d].reshape(g, rt, d)
        mi, mt = out[:, (ri + rt) * d : (ri + rt) * d + ri] > 0.5, out[:, (ri + rt) * d + ri :] > 0.5
        r_img, r_txt = target[:, : ri * d].reshape(g, ri, d), target[:, ri * d : (ri + rt) * d].reshape(g, rt, d)
        slot = target[:, (ri + rt) * d :].round().long()
        own = F.one_hot(slot, ri).bool() & mt[..., None]  # [G, Rt, Ri]: caption t belongs to image slot i
        own_f = own.to(out.dtype)
        r_pair = F.normalize(own_f.transpose(1, 2) @ r_txt.detach(), dim=-1)  # [G, Ri, D] mean refined caption
        s_pair = F.normalize(own_f.transpose(1, 2) @ s_txt, dim=-1)
        mutual = mutual_in_group(r_pair, mi, self.neighbours, self.positive_min_sim)  # [G, Ri, Ri]
        gather = slot[..., None].expand(g, rt, d)
        # captions -> images of the group
        lt = _side(s_txt, s_img.gather(1, gather), s_img, r_txt.detach(), r_img.detach().gather(1, gather), r_img.detach(),
                   mi[:, None, :] & ~own, mutual.gather(1, slot[..., None].expand(g, rt, ri)), self.public_images.to(out.dtype),
                   mt, self.cfg, self.pseudo_positives)
        # images -> captions of the group
        cap_mutual = mutual.gather(2, slot[:, None, :].expand(g, ri, rt))  # [G, Ri, Rt]: caption's record is mutual
        li = _side(s_img, s_pair, s_txt, r_img.detach(), r_pair, r_txt.detach(), mt[:, None, :] & ~own.transpose(1, 2),
                   cap_mutual, self.public_texts.to(out.dtype), mi, self.cfg, self.pseudo_positives)
        n_caps = own_f.sum(1).clamp_min(1.0)  # [G, Ri]
        per_record = 0.5 * ((own_f * lt[..., None]).sum(1) / n_caps + li) * mi
        losses = per_record.sum(1)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()
