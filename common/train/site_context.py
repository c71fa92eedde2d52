"""What a site's loss may read besides its own records: the public side of GCKD.

* the **source anchor bank**: source-domain features (public to the server),
  embedded by the current teacher; a subset of the source training split;
* under ``per_record`` mode, the site's **prototypes**: DP k-means of the
  site's teacher embeddings, one set per modality, released through the
  Gaussian mechanism; every release is appended to ``privacy_history`` in the
  accountant's (noise multiplier, sample rate, steps) form so the caller can
  account it with the DP-SGD steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads
from common.privacy.site_prototypes import dp_kmeans
from common.train.embed import embed_featureset


@dataclass
class PublicBank:
    """Source features the anchors are computed from (public: labelled source data)."""

    image_feats: torch.Tensor
    text_feats: torch.Tensor

    @classmethod
    def from_source(cls, source: FeatureSet, size: int, seed: int = 0) -> "PublicBank":
        g = torch.Generator().manual_seed(seed)
        img = torch.randperm(len(source.image_feats), generator=g)[:size]
        txt = torch.randperm(len(source.text_feats), generator=g)[:size]
        return cls(source.image_feats[img].clone(), source.text_feats[txt].clone())

    @torch.no_grad()
    def embed(self, heads: DualHeads) -> tuple[torch.Tensor, torch.Tensor]:
        return heads.image(self.image_feats), heads.text(self.text_feats)


@dataclass
class SiteContext:
    bank: PublicBank
    anchor_images: torch.Tensor
    anchor_texts: torch.Tensor
    proto_images: torch.Tensor
    proto_texts: torch.Tensor
    privacy_history: list = field(default_factory=list)

    def refresh_anchors(self, teacher: DualHeads) -> None:
        self.anchor_images, self.anchor_texts = self.bank.embed(teacher)

    def public_images(self) -> torch.Tensor:
        return torch.cat([self.anchor_images, self.proto_images])

    def public_texts(self) -> torch.Tensor:
        return torch.cat([self.anchor_texts, self.proto_texts])

    def public_nodes(self) -> torch.Tensor:
        return torch.cat([self.public_images(), self.public_texts()])


@torch.no_grad()
def build_site_context(teacher: DualHeads, target: FeatureSet, bank: PublicBank, cfg, gen: torch.Generator) -> SiteContext:
    a_img, a_txt = bank.embed(teacher)
    empty = a_img[:0]
    ctx = SiteContext(bank, a_img, a_txt, empty, empty)
    if cfg.mode != "per_record" or cfg.prototypes <= 0:
        return ctx
    text, image = embed_featureset(teacher, target)
    # one unit vector per record and modality, so that one record moves one
    # cluster's sum by at most 1 and one count by 1 (the sensitivity dp_kmeans assumes)
    record_text = torch.nn.functional.normalize(torch.zeros_like(image).index_add(0, target.text_to_image, text), dim=-1)
    protos = []
    for x, anchors in ((image, a_img), (record_text, a_txt)):
        k = min(cfg.prototypes, len(anchors))
        init = anchors[torch.randperm(len(anchors), generator=gen)[:k]]
        p, _counts, history = dp_kmeans(x, k, cfg.prototype_iters, cfg.prototype_noise, init, gen)
        protos.append(p)
        ctx.privacy_history.extend(history)
    ctx.proto_images, ctx.proto_texts = protos
    return ctx
