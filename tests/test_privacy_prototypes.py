"""DP k-means prototypes: sensitivity, the noise-free limit, utility, noise scale and accounting."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.privacy.accounting import epsilon, gaussian_release
from common.privacy.site_prototypes import (
    SENSITIVITY,
    dp_kmeans,
    exact_sums_and_counts,
    noisy_sums_and_counts,
    unit_rows,
)


def _site(seed, n=60, d=8, k=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    centres = unit_rows(torch.randn(k, d, generator=g, dtype=torch.float64))
    return x, centres, g


def _joint(sums, counts):
    return torch.cat([sums.flatten(), counts])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3), which=st.integers(0, 3))
def test_one_record_moves_sums_and_counts_by_at_most_sqrt2(seed, scale, which):
    x, centres, g = _site(seed)
    xs = unit_rows(x)
    # the new record: random, a copy of an existing record, or exactly a centre; any norm before normalising
    new = [torch.randn(1, x.shape[1], generator=g, dtype=x.dtype), x[:1], centres[:1], -centres[1:2]][which] * scale
    with_new = unit_rows(torch.cat([x, new]))
    s0, c0 = exact_sums_and_counts(xs, centres)
    s1, c1 = exact_sums_and_counts(with_new, centres)
    change = (_joint(s1, c1) - _joint(s0, c0)).norm().item()
    assert change <= SENSITIVITY + 1e-9
    assert change == pytest.approx(math.sqrt(2), abs=1e-9)  # unit-norm record: the bound is attained
    assert int((c1 - c0).abs().sum()) == 1  # exactly one count moved: other assignments unchanged


def _spherical_kmeans(x, init, iterations):
    """Plain spherical k-means (numpy); an empty cluster keeps its centre."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = init / np.linalg.norm(init, axis=1, keepdims=True)
    for _ in range(iterations):
        a = np.argmax(x @ c.T, axis=1)
        for j in range(len(c)):
            members = x[a == j]
            if len(members):
                s = members.sum(axis=0)
                c[j] = s / np.linalg.norm(s)
    return c


def test_noise_free_equals_spherical_kmeans():
    x, centres, _ = _site(3, n=200, d=6, k=5)
    rel = dp_kmeans(x, 5, 7, 0.0, centres)
    ref = _spherical_kmeans(x.numpy(), centres.numpy().copy(), 7)
    np.testing.assert_allclose(rel.prototypes.numpy(), ref, atol=1e-12)
    assert rel.history == [(0.0, 1.0, 7)] and epsilon(rel.history, 1e-5) == math.inf


def _clusters(seed, k=4, d=16, per=300, spread=0.15):
    g = torch.Generator().manual_seed(seed)
    truth = torch.eye(d, dtype=torch.float64)[:k]
    x = torch.cat([truth[j] + spread * torch.randn(per, d, generator=g, dtype=torch.float64) for j in range(k)])
    # a public init: each true centre pulled well away (cosine ~0.6) and shuffled
    init = unit_rows(truth + 1.3 * unit_rows(torch.randn(k, d, generator=g, dtype=torch.float64)))[torch.randperm(k, generator=g)]
    return x, truth, init, g


def test_noisy_kmeans_finds_separated_clusters():
    x, truth, init, g = _clusters(0)
    rel = dp_kmeans(x, 4, 5, 1.0, init, generator=g)
    cos = truth @ rel.prototypes.T  # [true, found]
    assert cos.max(dim=1).values.min() > 0.95  # every true cluster has a prototype
    assert torch.allclose(rel.prototypes.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert rel.counts_noisy.sum().item() == pytest.approx(x.shape[0], rel=0.05)
    assert rel.history == [(1.0, 1.0, 5)]


def test_history_entries_compose_as_gaussian_releases():
    x, _, init, g = _clusters(1, per=50)
    rel = dp_kmeans(x, 4, 3, 2.5, init, generator=g)
    assert rel.history == [(2.5, 1.0, 3)]
    assert epsilon(rel.history, 1e-5) == pytest.approx(epsilon([gaussian_release(2.5)] * 3, 1e-5), rel=1e-12)
    none = dp_kmeans(x, 4, 0, 2.5, init, generator=g)
    assert none.history == [] and torch.allclose(none.prototypes, unit_rows(init))


def test_noise_std_matches_the_accounted_multiplier():
    sigma, n, d = 3.0, 1000, 4000
    x = torch.zeros(n, d, dtype=torch.float64)
    x[:, 0] = 1.0
    init = torch.eye(d, dtype=torch.float64)[:1]
    g = torch.Generator().manual_seed(7)
    sums, _ = noisy_sums_and_counts(x, init, sigma, generator=g)
    assert sums[0, 0].item() == pytest.approx(n, abs=5 * sigma * SENSITIVITY)
    assert sums[0, 1:].std().item() == pytest.approx(sigma * SENSITIVITY, rel=0.05)  # 3999 pure-noise coords
    counts = torch.cat([noisy_sums_and_counts(x[:, :2], init[:, :2], sigma, generator=g)[1] for _ in range(2000)])
    assert counts.mean().item() == pytest.approx(n, abs=0.5)
    assert counts.std().item() == pytest.approx(sigma * SENSITIVITY, rel=0.05)


def test_small_noisy_clusters_keep_their_centre():
    x = torch.tensor([[1.0, 0.1], [1.0, -0.1], [1.0, 0.05], [0.0, 1.0]], dtype=torch.float64)
    init = torch.tensor([[1.0, 0.0], [0.3, 1.0]], dtype=torch.float64)
    rel = dp_kmeans(x, 2, 1, 0.0, init, min_count=2)
    assert torch.allclose(rel.prototypes[1], unit_rows(init)[1])  # one member < 2: kept
    assert not torch.allclose(rel.prototypes[0], unit_rows(init)[0])  # three members: moved


def test_rejects_bad_input():
    x, centres, _ = _site(0)
    with pytest.raises(ValueError):
        dp_kmeans(x, 3, 1, 1.0, centres)  # k does not match init
    with pytest.raises(ValueError):
        dp_kmeans(x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill(0, torch.tensor([0]), True), math.nan),
                  4, 1, 1.0, centres)
    with pytest.raises(ValueError):
        dp_kmeans(x, 4, 1, -1.0, centres)
    with pytest.raises(ValueError, match="norm > 1"):
        noisy_sums_and_counts(2 * unit_rows(x), centres, 1.0)
