"""Similarity distribution matching (SDM), the identity-aware cross-modal loss of IRRA.

For a batch of L2-normalised image and text embeddings with identity labels,
the predicted distribution of text i over the batch's images is
``p_ij = softmax_j(t_i . v_j / tau)``; the target puts equal mass on every image
of the same identity, ``q_ij = y_ij / sum_j y_ij``. SDM is
``KL(p || q) = sum_j p_ij (log p_ij - log(q_ij + eps))`` averaged over i, in
both directions (text-to-image and image-to-text). Unlike pair-level InfoNCE it
does not push apart two captions or images of the same person.

This loss couples the records of a batch, so it is for source pretraining
(labelled, public to the server) only, never under record-level DP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def sdm_loss(text: torch.Tensor, image: torch.Tensor, text_pids: torch.Tensor, image_pids: torch.Tensor, tau: float) -> torch.Tensor:
    """Bidirectional SDM; `text` [B, D] and `image` [B, D] are unit-norm rows."""
    sim = text @ image.t() / tau  # [B_t, B_i]
    labels = (text_pids[:, None] == image_pids[None, :]).float()
    t2i_target = labels / labels.sum(1, keepdim=True).clamp_min(1.0)
    i2t_target = labels.t() / labels.t().sum(1, keepdim=True).clamp_min(1.0)
    t2i = F.softmax(sim, dim=1) * (F.log_softmax(sim, dim=1) - torch.log(t2i_target + EPS))
    i2t = F.softmax(sim.t(), dim=1) * (F.log_softmax(sim.t(), dim=1) - torch.log(i2t_target + EPS))
    return t2i.sum(1).mean() + i2t.sum(1).mean()
