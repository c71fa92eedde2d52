"""DP release of a site's structure: noisy spherical k-means prototypes (docs/privacy.md, section 4).

Privacy unit: one image-caption record at this site.
Neighbouring relation: add/remove one record (its teacher embedding, one row
of ``x``) from the site's dataset.

Why each iteration is one Gaussian mechanism of noise multiplier sigma:
- Rows are normalised to unit L2 norm here (a per-record operation), so each
  record's embedding has norm <= 1.
- Each record is assigned to its nearest centre. The centres are the PUBLIC
  ``init`` or centres released by earlier noisy iterations, so a record's
  assignment depends on that record alone: adding or removing one record
  leaves every other assignment unchanged.
- The iteration releases the per-cluster sums ``S`` [k, D] and counts ``n``
  [k]. The added/removed record changes exactly one row of ``S`` by its
  embedding (norm <= 1) and the same cluster's count by 1, so the joint
  vector ``(S, n)`` moves by at most ``sqrt(1^2 + 1^2) = sqrt(2)`` in L2.
- Gaussian noise of std ``noise_multiplier * sqrt(2)`` is added to every
  coordinate of ``S`` and ``n``: a Gaussian mechanism with L2-sensitivity
  sqrt(2) and noise multiplier ``noise_multiplier``, i.e. the history entry
  ``(noise_multiplier, 1.0, 1)`` (no subsampling: every record takes part).
- Iterations compose adaptively (the next assignment uses released centres);
  RDP composition covers that. ``iterations`` iterations give the merged
  entry ``(noise_multiplier, 1.0, iterations)``.

Everything returned is post-processing of the noisy releases and the public
init; the site's record count N is never released.

Update rule for small clusters (uses only released values and public
parameters): a cluster's centre moves to the direction of its noisy sum only
if its noisy count is at least ``max(min_count, noise_std * sqrt(D))``. The
noise on a sum has expected norm about ``noise_std * sqrt(D)``; below that
many members the direction of the noisy sum is mostly noise, so the previous
centre is kept. With ``noise_multiplier == 0`` this is plain spherical
k-means where empty clusters keep their centre.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from common.privacy.accounting import Entry, merge_history

SENSITIVITY = math.sqrt(2.0)  # joint L2 sensitivity of (per-cluster sums, counts) for a unit-norm record


class PrototypeRelease(NamedTuple):
    prototypes: Tensor  # [k, D], unit norm
    counts_noisy: Tensor  # [k], noisy counts of the last iteration, clamped at 0 (post-processing)
    history: list[Entry]  # entries to add to the site's accountant (merged)


def unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (norm 0 <= 1)."""
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def assign(x: Tensor, centres: Tensor) -> Tensor:
    """Index of the nearest centre (largest cosine) for each row; ties go to the lowest index."""
    return (x @ centres.T).argmax(dim=1)


def exact_sums_and_counts(x: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """The exact (pre-noise) statistics of one iteration: per-cluster sums [k, D] and counts [k]."""
    k, a = centres.shape[0], assign(x, centres)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, a, x)
    return sums, torch.bincount(a, minlength=k).to(x.dtype)


def noisy_sums_and_counts(x_unit: Tensor, centres: Tensor, noise_multiplier: float,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One iteration's release: exact statistics plus N(0, (noise_multiplier * sqrt(2))^2) on every value.

    ``x_unit`` rows must already have norm <= 1 (see ``unit_rows``); ``centres``
    must be public or previously released.
    """
    if (x_unit.norm(dim=1) > 1 + 1e-6).any():
        raise ValueError("a record has norm > 1: the sqrt(2) sensitivity bound would not hold")
    sums, counts = exact_sums_and_counts(x_unit, centres)
    std = noise_multiplier * SENSITIVITY
    if std > 0:
        sums = sums + std * torch.randn(sums.shape, generator=generator, dtype=sums.dtype, device=sums.device)
        counts = counts + std * torch.randn(counts.shape, generator=generator, dtype=counts.dtype, device=counts.device)
    return sums, counts


def update_threshold(noise_multiplier: float, dim: int, min_count: float = 1.0) -> float:
    """Noisy count a cluster needs for its centre to move (see module docstring)."""
    return max(float(min_count), noise_multiplier * SENSITIVITY * math.sqrt(dim))


def dp_kmeans(x: Tensor, k: int, iterations: int, noise_multiplier: float, init: Tensor,
              generator: torch.Generator | None = None, min_count: float = 1.0) -> PrototypeRelease:
    """Noisy spherical k-means of a site's teacher embeddings ``x`` [N, D].

    ``init`` [k, D] must be PUBLIC (e.g. chosen from the server's source anchor
    bank), never derived from ``x``. ``generator`` drives the noise; pass a
    securely seeded one in deployment. Returns unit-norm prototypes, the last
    iteration's noisy counts and the accountant entries
    ``[(noise_multiplier, 1.0, iterations)]``.
    """
    if x.ndim != 2 or init.ndim != 2 or init.shape != (k, x.shape[1]):
        raise ValueError(f"need x [N, D] and init [k={k}, D]; got {tuple(x.shape)} and {tuple(init.shape)}")
    if iterations < 0 or not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
        raise ValueError("iterations must be >= 0 and noise_multiplier finite and >= 0")
    if (init.norm(dim=1) == 0).any():
        raise ValueError("init has a zero row; every public centre needs a direction")
    work = torch.float64
    xs = unit_rows(x.to(work))
    centres = unit_rows(init.to(work))
    threshold = update_threshold(noise_multiplier, x.shape[1], min_count)
    counts_noisy = torch.zeros(k, dtype=work, device=x.device)
    for _ in range(iterations):
        sums, counts = noisy_sums_and_counts(xs, centres, noise_multiplier, generator)
        # From here on only the noisy (released) sums and counts are used.
        move = (counts >= threshold) & (sums.norm(dim=1) > 0)
        centres = torch.where(move[:, None], unit_rows(sums), centres)
        counts_noisy = counts
    history = merge_history([(float(noise_multiplier), 1.0, int(iterations))])
    return PrototypeRelease(centres.to(x.dtype), counts_noisy.clamp_min(0).to(x.dtype), history)
