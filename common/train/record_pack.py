"""One row per record: the form record-level DP-SGD clips.

A record is one image with its captions. DP-SGD needs each record to be one
row of the batch, so the record's image features and its (padded) caption
features are packed into one input row, and the teacher side of its loss
(its own refined teacher embeddings and a caption mask) into one target row.
`PackedStudent` maps an input row to the student's embeddings of the record;
`RecordLoss` maps (student row, target row) to that record's CMKD loss, with
the public candidates (source anchors, DP prototypes) held as constants.
Nothing in a row refers to another record, so the loss of a batch is the sum
of independent per-record terms (tests check this against batch-of-one runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.losses.cmkd import CMKDConfig, Side, per_record_losses
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads


@dataclass
class RecordPack:
    image: torch.Tensor  # [N, Di]
    captions: torch.Tensor  # [N, C, Dt], zero rows where mask is 0
    mask: torch.Tensor  # [N, C] float, 1 for a real caption

    @classmethod
    def from_features(cls, fs: FeatureSet) -> "RecordPack":
        n, c = len(fs.image_feats), int(torch.bincount(fs.text_to_image, minlength=len(fs.image_feats)).max())
        caps = fs.text_feats.new_zeros(n, c, fs.text_feats.shape[1])
        mask = torch.zeros(n, c)
        slot = torch.zeros(n, dtype=torch.long)
        for t, r in enumerate(fs.text_to_image.tolist()):
            caps[r, slot[r]] = fs.text_feats[t]
            mask[r, slot[r]] = 1.0
            slot[r] += 1
        return cls(fs.image_feats, caps, mask)

    def inputs(self) -> torch.Tensor:
        return torch.cat([self.image, self.captions.flatten(1), self.mask], 1)

    def __len__(self) -> int:
        return len(self.image)


class PackedStudent(nn.Module):
    """Student heads applied to packed record rows: [B, Di + C*Dt + C] -> [B, (1+C)*D + C]."""

    def __init__(self, heads: DualHeads, image_dim: int, text_dim: int, n_captions: int):
        super().__init__()
        self.heads = heads
        self.di, self.dt, self.c = image_dim, text_dim, n_captions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = x[:, : self.di]
        caps = x[:, self.di : self.di + self.c * self.dt].reshape(len(x), self.c, self.dt)
        mask = x[:, self.di + self.c * self.dt :]
        v = self.heads.image(img)
        t = self.heads.text(caps)  # heads act on the last dim; captions are a "sequence" to Opacus
        return torch.cat([v, t.flatten(1), mask], 1)


def teacher_targets(r_img: torch.Tensor, r_txt_packed: torch.Tensor) -> torch.Tensor:
    """Target rows: [B, D + C*D] (refined teacher image, refined teacher captions)."""
    return torch.cat([r_img, r_txt_packed.flatten(1)], 1)


def pack_texts(r_txt: torch.Tensor, text_to_image: torch.Tensor, pack: RecordPack) -> torch.Tensor:
    """Scatter per-caption rows [N_txt, D] into the record layout [N, C, D]."""
    out = r_txt.new_zeros(len(pack), pack.mask.shape[1], r_txt.shape[1])
    slot = torch.zeros(len(pack), dtype=torch.long)
    for t, r in enumerate(text_to_image.tolist()):
        out[r, slot[r]] = r_txt[t]
        slot[r] += 1
    return out


class RecordLoss(nn.Module):
    """CMKD loss per record from packed rows; Opacus' criterion contract (`.reduction`)."""

    def __init__(self, public_images: torch.Tensor, public_texts: torch.Tensor, cfg: CMKDConfig, dim: int, reduction: str = "mean"):
        super().__init__()
        self.public_images, self.public_texts = public_images.detach(), public_texts.detach()
        self.cfg, self.d, self.reduction = cfg, dim, reduction

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d, b = self.d, len(out)
        c = (out.shape[1] - d) // (d + 1)
        s_img, s_txt = out[:, :d], out[:, d : d + c * d].reshape(b, c, d)
        mask = out[:, d + c * d :] > 0.5
        r_img, r_txt = target[:, :d], target[:, d:].reshape(b, c, d)
        rec = torch.arange(b).unsqueeze(1).expand(b, c)[mask]
        st, rt = s_txt[mask], r_txt[mask]
        empty_img, empty_owner = r_img[:0], rec[:0]
        s_pair = F.normalize((s_txt * mask.unsqueeze(-1)).sum(1), dim=-1)
        r_pair = F.normalize((r_txt * mask.unsqueeze(-1)).sum(1), dim=-1)
        # the teacher's view of a record is its captions (see `common.train.adapt`): r_img is not read
        text_side = Side(st, s_img[rec], rt, r_pair[rec], empty_img, empty_img, empty_owner, empty_img, empty_owner, self.public_images, rec)
        image_side = Side(s_img, s_pair, r_pair, r_pair, empty_img, empty_img, empty_owner, empty_img, empty_owner, self.public_texts, torch.arange(b))
        losses = per_record_losses(text_side, image_side, rec, b, self.cfg)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()
