"""Trainable projection heads from frozen trunk features into the shared embedding space.

These are the small parts that train (and, under DP, the only parts whose
clipped, noised update leaves a site). They use LayerNorm, never BatchNorm:
BatchNorm mixes the records of a batch, so one record's gradient would depend
on the others and per-record DP-SGD would not hold (STACK.md section 3).
Every layer here has an Opacus per-sample gradient (hooks, ghost clipping).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """Shape of both projection heads. Defaults and why:

    out_dim=256: the shared space's size. IRRA-style models use 256-512; 256
        is plenty for thousands of identities and keeps the per-round DP update
        small (both heads about 1.1M parameters with minilm-effnet).
    hidden=512: one hidden layer of 2x out_dim. Trunk features are not aligned
        across modalities, so a non-linear map helps; wider layers cost Opacus
        time and memory linearly (hooks mode stores batch x parameters).
    layers=2: Linear-GELU-Linear (with a LayerNorm before the GELU if
        hidden_norm); layers=1 gives a plain linear map.
    dropout=0.0: DP noise already regularises, and dropout only adds variance
        to each record's clipped gradient.
    input_norm=False: no LayerNorm on the trunk features. On the chosen
        mean-pooled 256x128 features it cost val R1 in the base ablation
        (benchmarks/results/base_ablation.md: in-domain flat/outline/shaded
        -4.3/-1.3/+0.6, naive fine-tuning -2.2/-4.1). True is still DP-safe
        (it sees one record at a time).
    hidden_norm=False: Linear-GELU-Linear, as the reference recipe. The hidden
        LayerNorm was a wash on the chosen features (in-domain -3.5/-1.2/-0.3,
        naive +0.6/+0.8), so the simpler head stays. Configs written before
        this field existed load with it (`from_dict`).
    """

    out_dim: int = 256
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.0
    input_norm: bool = False
    hidden_norm: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        """From `to_dict()` output. Configs written before `hidden_norm` existed always had the hidden LayerNorm."""
        return cls(**{"hidden_norm": True, **d})


class ProjectionHead(nn.Module):
    """MLP: [LayerNorm] -> (Linear -> [LayerNorm] -> GELU -> Dropout) x (layers-1) -> Linear.

    The output is not normalised; callers (e.g. `DualHeads`) normalise.
    """

    def __init__(self, in_dim: int, out_dim: int = 256, hidden: int = 512, dropout: float = 0.0, layers: int = 2,
                 input_norm: bool = True, hidden_norm: bool = True):
        super().__init__()
        if layers < 1:
            raise ValueError(f"ProjectionHead needs layers >= 1, got {layers}")
        mods: list[nn.Module] = [nn.LayerNorm(in_dim)] if input_norm else []
        d = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden), *([nn.LayerNorm(hidden)] if hidden_norm else []), nn.GELU()]
            if dropout > 0:
                mods.append(nn.Dropout(dropout))
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*mods)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DualHeads(nn.Module):
    """A text head and an image head; `.text(x)` / `.image(x)` return unit-norm embeddings."""

    def __init__(self, text_dim: int, image_dim: int, cfg: HeadConfig | None = None):
        super().__init__()
        self.cfg = cfg or HeadConfig()
        kw = dict(out_dim=self.cfg.out_dim, hidden=self.cfg.hidden, dropout=self.cfg.dropout, layers=self.cfg.layers,
                  input_norm=self.cfg.input_norm, hidden_norm=self.cfg.hidden_norm)
        self.text_head = ProjectionHead(text_dim, **kw)
        self.image_head = ProjectionHead(image_dim, **kw)
        self.text_dim, self.image_dim = text_dim, image_dim

    def text(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(x), dim=-1)

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(x), dim=-1)

    def forward(self, text_feats: torch.Tensor | None = None, image_feats: torch.Tensor | None = None):
        """(text embeddings or None, image embeddings or None); batch-first, so Opacus can wrap it."""
        t = self.text(text_feats) if text_feats is not None else None
        i = self.image(image_feats) if image_feats is not None else None
        return t, i
