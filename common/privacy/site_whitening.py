"""DP whitening of a site's embedding space, folded into each head's last Linear.

A per-record loss never contrasts a site's records with each other, so
nothing spreads the adapted embeddings apart: a few directions shared by
all of the site's records dominate every similarity. Whitening with the
site's own second moments removes them. Per modality, each record gives one
vector, the head's output before normalisation (``z``; for captions the mean
of the record's captions' outputs), clipped to norm ``clip``; the site
releases, by three Gaussian mechanisms with noise multiplier ``sigma``,

* the count n            (sensitivity 1,       noise std sigma),
* the sum of z           (sensitivity clip,    noise std sigma * clip),
* the upper triangle of the sum of z z^T (sensitivity clip^2: the Frobenius
  norm of z z^T is |z|^2; noise std sigma * clip^2, mirrored below the diagonal),

under add/remove of one record. The three compose to the accountant history
entry ``(sigma, 1.0, 3)`` per modality. From the noisy moments come the mean
mu and covariance S; with S = V diag(e) V^T (negative noisy eigenvalues set
to 0), the map ``M = V diag(e + shrink * mean(e))^-1/2 V^T`` applied to
``z - mu`` is exact to fold into the last Linear (W, b): ``W' = M W``,
``b' = M (b - mu)``. So the model keeps its shape, its checkpoint format and
its federation payload. ``clip`` comes from public data (the median output
norm on the public source anchors), so choosing it costs nothing.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads


@torch.no_grad()
def record_outputs(heads: DualHeads, target: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-normalisation outputs, one row per record: (image z [N, D], mean caption z [N, D])."""
    z_img = heads.image_head(target.image_feats.float())
    z_cap = heads.text_head(target.text_feats.float())
    n = len(z_img)
    count = torch.bincount(target.text_to_image, minlength=n).clamp_min(1).to(z_cap.dtype)
    z_txt = torch.zeros_like(z_img).index_add(0, target.text_to_image, z_cap) / count[:, None]
    return z_img, z_txt


def clip_rows(z: torch.Tensor, clip: float) -> torch.Tensor:
    return z * (clip / z.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)


def noisy_moments(z: torch.Tensor, clip: float, sigma: float, gen: torch.Generator | None) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(n, sum z, sum z z^T) of the clipped rows, each with its Gaussian noise (none when sigma is 0)."""
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    z = clip_rows(z.double(), clip)
    n, s, ss = float(len(z)), z.sum(0), z.T @ z
    if sigma > 0:
        d = z.shape[1]
        n += sigma * float(torch.randn((), generator=gen, dtype=torch.float64))
        s = s + sigma * clip * torch.randn(d, generator=gen, dtype=torch.float64)
        upper = torch.triu(sigma * clip**2 * torch.randn(d, d, generator=gen, dtype=torch.float64))
        ss = ss + upper + torch.triu(upper, diagonal=1).T
    return n, s, ss


def whitening_map(n: float, s: torch.Tensor, ss: torch.Tensor, shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, M) from the moments: M = V diag(e + shrink * mean(e))^-1/2 V^T for the covariance V diag(e) V^T."""
    if shrink <= 0:
        raise ValueError(f"shrink must be positive, got {shrink}")
    n = max(n, 1.0)
    mu = s / n
    cov = ss / n - torch.outer(mu, mu)
    e, v = torch.linalg.eigh((cov + cov.T) / 2)
    e = e.clamp_min(0.0)
    floor = shrink * float(e.mean()) if float(e.mean()) > 0 else shrink
    return mu, v @ torch.diag((e + floor).rsqrt()) @ v.T


@torch.no_grad()
def fold(linear: nn.Linear, mu: torch.Tensor, m: torch.Tensor) -> None:
    """linear(x) becomes M (linear(x) - mu)."""
    w, b = linear.weight.double(), linear.bias.double()
    linear.weight.copy_((m @ w).to(linear.weight.dtype))
    linear.bias.copy_((m @ (b - mu)).to(linear.bias.dtype))


def whiten_heads(heads: DualHeads, target: FeatureSet, public_images: torch.Tensor, public_texts: torch.Tensor,
                 sigma: float, shrink: float, gen: torch.Generator | None) -> tuple[DualHeads, list[tuple[float, float, int]]]:
    """A copy of `heads` whitened on the site's records; returns it and the accountant history of the release."""
    if sigma <= 0:
        raise ValueError(f"the whitening statistics are released under DP: noise multiplier must be positive, got {sigma}")
    out = copy.deepcopy(heads)
    z_img, z_txt = record_outputs(heads, target)
    with torch.no_grad():
        clips = (float(heads.image_head(public_images.float()).norm(dim=1).median()),
                 float(heads.text_head(public_texts.float()).norm(dim=1).median()))
    history = []
    for z, clip, head in ((z_img, clips[0], out.image_head), (z_txt, clips[1], out.text_head)):
        mu, m = whitening_map(*noisy_moments(z, clip, sigma, gen), shrink)
        fold(head.net[-1], mu, m)
        history.append((float(sigma), 1.0, 3))
    return out, history
