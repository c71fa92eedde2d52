"""Embed a FeatureSet with a model's heads (inference only)."""

from __future__ import annotations

import torch

from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads


@torch.no_grad()
def embed_featureset(heads: DualHeads, fs: FeatureSet, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = heads.training
    heads.eval()
    text = torch.cat([heads.text(fs.text_feats[i : i + batch_size]) for i in range(0, len(fs.text_feats), batch_size)])
    image = torch.cat([heads.image(fs.image_feats[i : i + batch_size]) for i in range(0, len(fs.image_feats), batch_size)])
    heads.train(was_training)
    return text, image
