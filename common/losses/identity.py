"""Identity classification on the shared embedding space (as in IRRA's `id` loss).

A linear classifier over the source training identities, shared by the two
modalities, so that images and captions of one person fall into one class
region. Used in source pretraining only; the target has no identities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IdentityClassifier(nn.Module):
    def __init__(self, dim: int, num_ids: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_ids)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def loss(self, text: torch.Tensor, image: torch.Tensor, text_pids: torch.Tensor, image_pids: torch.Tensor) -> torch.Tensor:
        return 0.5 * (F.cross_entropy(self.fc(text), text_pids) + F.cross_entropy(self.fc(image), image_pids))
