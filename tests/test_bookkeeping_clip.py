"""Book-keeping ghost clipping against clipped batch-of-one gradients, over random shapes (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from common.train.bookkeeping_clip import BookkeepingClipper, clippable_layers


def _model(d0: int, d1: int, d2: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.LayerNorm(d0), nn.Linear(d0, d1), nn.LayerNorm(d1), nn.GELU(), nn.Linear(d1, d2)).double()
    with torch.no_grad():  # LayerNorms away from their (1, 0) start, so that scale and shift both matter
        for ln in (m[0], m[2]):
            ln.weight.add_(0.3 * torch.randn_like(ln.weight))
            ln.bias.add_(0.3 * torch.randn_like(ln.bias))
    return m


def _losses(out: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[B]: a non-linear loss of each record's rows (out [B, n, d2]) that reads that record alone."""
    return torch.tanh(out @ w).pow(2).sum((1, 2)) + out.pow(2).mean((1, 2))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), n=st.integers(1, 3), d0=st.integers(2, 7), d1=st.integers(2, 7), d2=st.integers(1, 4),
       mask=st.integers(1, 2 ** 8 - 1), quantile=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_clipped_sums_and_norms_equal_batch_of_one(b, n, d0, d1, d2, mask, quantile, seed):
    model = _model(d0, d1, d2, seed)
    params = [p for m in (model[0], model[1], model[2], model[4]) for p in (m.weight, m.bias)]
    trained = [p for k, p in enumerate(params) if mask >> k & 1]  # any non-empty subset of the 8
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in trained))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d0, generator=g, dtype=torch.float64)
    w = torch.randn(d2, 2, generator=g, dtype=torch.float64)

    per_record, norms = [], []
    for r in range(b):  # ground truth: each record's own gradient
        grads = torch.autograd.grad(_losses(model(x[r : r + 1]), w).sum(), trained)
        per_record.append(grads)
        norms.append(float(torch.sqrt(sum((t ** 2).sum() for t in grads))))
    clip = float(torch.quantile(torch.tensor(norms), quantile)) + 1e-3
    expected = [sum(min(1.0, clip / (norm + 1e-6)) * grads[i] for grads, norm in zip(per_record, norms))
                for i in range(len(trained))]

    layers = clippable_layers(model, trained)
    assert layers is not None
    clipper = BookkeepingClipper(layers)
    sums, got_norms = clipper.clipped_sum(_losses(model(x), w), clip)
    clipper.close()
    torch.testing.assert_close(got_norms, torch.tensor(norms, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert set(map(id, sums)) == set(map(id, trained))
    for p, want in zip(trained, expected):
        torch.testing.assert_close(sums[p], want, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated: the step adds noise, then sets .grad
