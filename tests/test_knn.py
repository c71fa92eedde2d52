"""Chunked kNN graph: equals a dense brute force, ties and layout as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.graph.knn import knn_edge_index, topk_chunked


def brute_force(x, k, y=None, *, cosine=True, exclude_self=True):
    """Dense reference: full score matrix, stable sort of -score per row
    (descending, lower index first among ties), first k columns."""
    keys = x if y is None else y
    q, kk = (F.normalize(x.float(), dim=1), F.normalize(keys.float(), dim=1)) if cosine else (x.float(), keys.float())
    scores = q @ kk.T + 0.0
    if y is None and exclude_self:
        scores.fill_diagonal_(-torch.inf)
    order = torch.sort(scores.neg(), dim=1, stable=True).indices[:, :k]
    edge_index = torch.stack([order.reshape(-1), torch.arange(x.shape[0]).repeat_interleave(k)])
    return edge_index, scores.gather(1, order).reshape(-1)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [1, 3, 16, None])
def test_equals_brute_force_random(seed, chunk_size):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 8, generator=gen)
    for k in (1, 5, 59):
        ei, w = knn_edge_index(x, k, chunk_size=chunk_size)
        ei_ref, w_ref = brute_force(x, k)
        assert torch.equal(ei, ei_ref)
        assert torch.allclose(w, w_ref, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_ties_lower_index_first(seed, chunk_size):
    # Integer vectors and the plain dot product: exact scores, many ties,
    # including ties across the k-th place.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (40, 3), generator=gen)
    y = torch.randint(-1, 2, (25, 3), generator=gen)
    for k in (1, 3, 10):
        ei, w = knn_edge_index(x, k, cosine=False, chunk_size=chunk_size)
        ei_ref, w_ref = brute_force(x, k, cosine=False)
        assert torch.equal(ei, ei_ref) and torch.equal(w, w_ref)
        ei, w = knn_edge_index(x, k, y=y, cosine=False, chunk_size=chunk_size)
        ei_ref, w_ref = brute_force(x, k, y, cosine=False)
        assert torch.equal(ei, ei_ref) and torch.equal(w, w_ref)


def test_tie_rule_by_hand():
    # Query [1, 0]; keys 0..3 score 0, 1, 1, 1 -> order 1, 2, 3 (lower index
    # first among the tied 1s), and with k=2 the set is {1, 2}, not {2, 3}.
    values, indices = topk_chunked(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 5.0]]), 2)
    assert indices.tolist() == [[1, 2]] and values.tolist() == [[1.0, 1.0]]
    # -0.0 and +0.0 tie as well: key 0 (score -0.0) before key 1 (score +0.0).
    values, indices = topk_chunked(torch.tensor([[1.0]]), torch.tensor([[-0.0], [0.0], [-1.0]]), 2)
    assert indices.tolist() == [[0, 1]]


def test_layout_and_exclude_self():
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    ei, w = knn_edge_index(x, 4)
    assert ei.dtype == torch.long and ei.shape == (2, 120) and w.shape == (120,)
    assert torch.equal(ei[1], torch.arange(30).repeat_interleave(4))  # targets, grouped
    assert not (ei[0] == ei[1]).any()  # no self loops
    assert (w.view(30, 4).diff(dim=1) <= 0).all()  # each node's neighbours by similarity
    # Without exclusion each node's best neighbour is itself (distinct random vectors).
    ei, w = knn_edge_index(x, 4, exclude_self=False)
    assert torch.equal(ei[0].view(30, 4)[:, 0], torch.arange(30))
    assert torch.allclose(w.view(30, 4)[:, 0], torch.ones(30))


def test_bipartite():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 6, generator=gen), torch.randn(35, 6, generator=gen)
    for k in (1, 7, 35):  # k == M: every y node, ordered
        ei, w = knn_edge_index(x, k, y=y, chunk_size=6)
        ei_ref, w_ref = brute_force(x, k, y)
        assert ei[0].max() < 35 and ei[1].max() < 20
        assert torch.equal(ei, ei_ref) and torch.allclose(w, w_ref, atol=1e-6)
    # exclude_self only concerns a graph over one node set
    assert torch.equal(knn_edge_index(x, 3, y=y)[0], knn_edge_index(x, 3, y=y, exclude_self=False)[0])


def test_dtype_and_input_untouched():
    x = torch.randn(10, 3, dtype=torch.float64)
    before = x.clone()
    ei, w = knn_edge_index(x, 2)
    assert w.dtype == torch.float64 and torch.equal(x, before)


@pytest.mark.parametrize(
    "call",
    [
        lambda: knn_edge_index(torch.randn(5, 2), 5),  # k > N - 1 with exclude_self
        lambda: knn_edge_index(torch.randn(5, 2), 0),
        lambda: knn_edge_index(torch.randn(5, 2), 2, y=torch.randn(1, 2)),
        lambda: knn_edge_index(torch.randn(5, 2), 1, y=torch.randn(4, 3)),
        lambda: knn_edge_index(torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), 1),
        lambda: knn_edge_index(torch.full((3, 2), 1e30), 1, cosine=False),
        lambda: knn_edge_index(torch.randn(5, 2), 1, chunk_size=0),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()


def test_large_input_is_chunked():
    # 20,000 x 64 under a 64 MiB budget: 279 rows per chunk, 72 chunks,
    # never a 20,000 x 20,000 matrix. Spot-check rows against brute force.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20_000, 64, generator=gen)
    ei, w = knn_edge_index(x, 10, memory_budget=64 * 2**20)
    assert ei.shape == (2, 200_000) and torch.isfinite(w).all()
    rows = torch.randint(0, 20_000, (40,), generator=gen)
    xn = F.normalize(x, dim=1)
    scores = xn[rows] @ xn.T
    scores[torch.arange(40), rows] = -torch.inf
    expected = torch.sort(scores.neg(), dim=1, stable=True).indices[:, :10]
    assert torch.equal(ei[0].view(20_000, 10)[rows], expected)
