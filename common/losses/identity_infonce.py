"""Identity-aware symmetric InfoNCE: the cross-modal loss of source pretraining and of naive pair fine-tuning.

For unit-norm text rows ``t_i`` and image rows ``v_j`` of a batch, ``s_ij = t_i . v_j / tau``. The target of
text ``i`` puts equal mass on every image of the same identity, ``q_ij = y_ij / sum_j y_ij``, and the loss is
the cross-entropy ``-sum_j q_ij log softmax_j(s_ij)`` averaged over rows, plus the same for images over texts.
With ``pids=None`` every row's only positive is its own column (diagonal targets: plain CLIP-style InfoNCE).

Against SDM (``KL(p || q)``, common/losses/sdm.py) this is ``KL(q || p)`` plus a constant: the gradient pulls on
every positive in proportion to its target mass rather than to the model's own belief, which trained stronger
heads on frozen towers (benchmarks/results/base_ablation.md). It couples the records of a batch, so it is for
labelled source data and for non-private fine-tuning, never a per-record DP loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def identity_infonce(text: torch.Tensor, image: torch.Tensor, tau: float, text_pids: torch.Tensor | None = None,
                     image_pids: torch.Tensor | None = None) -> torch.Tensor:
    """text [Bt, D], image [Bi, D] unit-norm rows; pids None means diagonal targets (needs Bt == Bi)."""
    sim = text @ image.t() / tau
    if text_pids is None or image_pids is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"diagonal targets need as many texts as images, got {tuple(sim.shape)}")
        labels = torch.arange(sim.shape[0], device=sim.device)
        return F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)
    y = (text_pids[:, None] == image_pids[None, :]).to(sim.dtype)
    if (y.sum(1) == 0).any() or (y.sum(0) == 0).any():
        raise ValueError("every text and every image needs a positive of the same identity in the batch")
    t2i = -(y / y.sum(1, keepdim=True) * F.log_softmax(sim, 1)).sum(1).mean()
    i2t = -(y.t() / y.t().sum(1, keepdim=True) * F.log_softmax(sim.t(), 1)).sum(1).mean()
    return t2i + i2t
