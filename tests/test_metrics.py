"""IRRA retrieval metrics: hand-worked cases for `rank`, and property tests
tying `evaluate_embeddings` and an IRRA-style NumPy brute force to it."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import common.metrics.fast_eval as fast_eval
from common.metrics import evaluate_embeddings, rank, similarity_chunks

# --------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------


def test_several_positives_per_query():
    # Query 0 (pid 1): scores sorted g0 .9+, g1 .8, g2 .7+, g3 .6, g4 .1+
    #   positive ranks 1, 3, 5: AP = (1/1 + 2/3 + 3/5) / 3 = 34/45, INP = 3/5
    # Query 1 (pid 2): sorted g4 .9, g0 .5, g1 .4+ -> rank 3: AP = INP = 1/3
    # R1 = 1/2, R5 = R10 = 2/2
    # mAP  = (34/45 + 15/45) / 2 = 49/90    mINP = (9/15 + 5/15) / 2 = 14/30
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1], [0.5, 0.4, 0.3, 0.2, 0.9]])
    out = rank(sim, torch.tensor([1, 2]), torch.tensor([1, 2, 1, 3, 1]))
    assert out["R1"] == pytest.approx(50.0)
    assert out["R5"] == pytest.approx(100.0) and out["R10"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(100 * 49 / 90)
    assert out["mINP"] == pytest.approx(100 * 14 / 30)
    assert out["n_queries"] == 2 and out["n_gallery"] == 5
    assert isinstance(out["n_queries"], int) and isinstance(out["R1"], float)


def test_ties_lower_gallery_index_wins():
    # All three scores equal. Rule: lower gallery index first -> g0, g1, g2.
    # Query pid 1, its positive is g1 -> rank 2 (not 1, though it is tied for
    # the top): R1 = 0, AP = 1/2, INP = 1/2.
    sim = torch.tensor([[0.5, 0.5, 0.5]])
    out = rank(sim, torch.tensor([1]), torch.tensor([0, 1, 0]))
    assert out["R1"] == 0.0 and out["R5"] == 100.0
    assert out["mAP"] == pytest.approx(50.0) and out["mINP"] == pytest.approx(50.0)
    # Positives g0 and g2 tied with negative g1: ranks 1 and 3.
    # AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3.
    out = rank(sim, torch.tensor([1]), torch.tensor([1, 0, 1]))
    assert out["R1"] == 100.0
    assert out["mAP"] == pytest.approx(100 * 5 / 6) and out["mINP"] == pytest.approx(100 * 2 / 3)
    # -0.0 and +0.0 are a tie too: g0 (score -0.0) ranks first, positive g1 second.
    out = rank(torch.tensor([[-0.0, 0.0]]), torch.tensor([1]), torch.tensor([0, 1]))
    assert out["R1"] == 0.0 and out["mAP"] == pytest.approx(50.0)


def test_ties_same_rule_in_fast_evaluator():
    # Identical images, so every score is 1: same ranks as the case above.
    text = torch.tensor([[1.0, 0.0]])
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    for sparse in (0.0, 1.0):
        with mock.patch.object(fast_eval, "SPARSE_FRACTION", sparse):
            out = evaluate_embeddings(text, image, torch.tensor([1]), torch.tensor([0, 1, 0]))
            assert out["R1"] == 0.0 and out["mAP"] == pytest.approx(50.0)
            out = evaluate_embeddings(text, image, torch.tensor([1]), torch.tensor([1, 0, 1]))
            assert out["mAP"] == pytest.approx(100 * 5 / 6) and out["mINP"] == pytest.approx(100 * 2 / 3)


def test_positive_ranked_last_gives_small_inp():
    # 10 gallery items in descending score order; positives g0 and g9.
    # Ranks 1 and 10: R1 = 100, AP = (1/1 + 2/10) / 2 = 0.6, INP = 2/10 = 0.2.
    sim = torch.linspace(1.0, 0.1, 10)[None, :]
    pids = torch.tensor([7, 0, 1, 2, 3, 4, 5, 6, 8, 7])
    out = rank(sim, torch.tensor([7]), pids)
    assert out["R1"] == 100.0 and out["R10"] == 100.0
    assert out["mAP"] == pytest.approx(60.0) and out["mINP"] == pytest.approx(20.0)


def test_perfect_ranking_is_100_everywhere():
    # Each query's positives fill the top of its row: AP = INP = 1.
    gallery = torch.tensor([0, 0, 1, 1, 1, 2])
    queries = torch.tensor([0, 1, 2, 1])
    sim = (queries[:, None] == gallery[None, :]).float() + 0.01 * torch.arange(6)  # positives above negatives
    out = rank(sim, queries, gallery)
    assert all(out[key] == pytest.approx(100.0) for key in ("R1", "R5", "R10", "mAP", "mINP"))


def test_query_without_positive_raises():
    sim = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"2 of 3 queries have no positive.*first: query 1"):
        rank(sim, torch.tensor([0, 5, 9]), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"2 of 3 queries have no positive.*first: query 1"):
        evaluate_embeddings(torch.rand(3, 2), torch.rand(4, 2), torch.tensor([0, 5, 9]), torch.tensor([0, 1, 2, 3]))


def test_custom_ks_and_k_beyond_gallery():
    # 3 items, positive at rank 3: R2 = 0, R3 = 100, R50 = 100 (k past the end).
    out = rank(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0]), torch.tensor([1, 1, 0]), ks=(2, 3, 50))
    assert (out["R2"], out["R3"], out["R50"]) == (0.0, 100.0, 100.0)
    assert "R1" not in out


@pytest.mark.parametrize(
    "call",
    [
        lambda: rank(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), torch.tensor([0, 1])),
        lambda: rank(torch.rand(2, 2), torch.tensor([0]), torch.tensor([0, 1])),
        lambda: rank(torch.rand(1, 2), torch.tensor([0.0]), torch.tensor([0, 1])),
        lambda: rank(torch.rand(1, 2), torch.tensor([0]), torch.tensor([0, 1]), ks=(0,)),
        lambda: rank(torch.rand(0, 2), torch.tensor([], dtype=torch.long), torch.tensor([0, 1])),
        lambda: evaluate_embeddings(torch.rand(1, 2), torch.rand(2, 3), torch.tensor([0]), torch.tensor([0, 1])),
        lambda: evaluate_embeddings(torch.tensor([[float("inf"), 0.0]]), torch.rand(2, 2), [0], [0, 1]),
        lambda: evaluate_embeddings(torch.full((1, 2), 1e30), torch.full((2, 2), 1e30), [0], [0, 1], normalize=False),
        lambda: evaluate_embeddings(torch.rand(1, 2), torch.rand(2, 2), [0], [0, 1], chunk_size=0),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()


def test_inputs_not_modified():
    sim = torch.tensor([[0.0, -0.0, 0.5]])
    before = sim.clone()
    rank(sim, torch.tensor([1]), torch.tensor([1, 0, 1]))
    assert torch.equal(sim, before) and torch.equal(torch.signbit(sim), torch.signbit(before))


# --------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------


@st.composite
def retrieval_case(draw, integer: bool):
    """(text [n_q, d], image [n_g, d], text_pids, image_pids), every query with
    a positive. Integer-valued embeddings make exact ties common."""
    n_q, n_g, d = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(1, 4))
    image_pids = draw(st.lists(st.integers(0, 3), min_size=n_g, max_size=n_g))
    text_pids = draw(st.lists(st.sampled_from(image_pids), min_size=n_q, max_size=n_q))
    if integer:
        values = st.integers(-2, 2).map(float)
    else:
        values = st.floats(-1.0, 1.0, allow_nan=False, width=32)
    text = draw(st.lists(values, min_size=n_q * d, max_size=n_q * d))
    image = draw(st.lists(values, min_size=n_g * d, max_size=n_g * d))
    return (
        torch.tensor(text, dtype=torch.float32).view(n_q, d),
        torch.tensor(image, dtype=torch.float32).view(n_g, d),
        torch.tensor(text_pids),
        torch.tensor(image_pids),
    )


@pytest.mark.parametrize("sparse_fraction", [0.0, 1.0, fast_eval.SPARSE_FRACTION])
@settings(max_examples=50, deadline=None)
@given(case=retrieval_case(integer=True), chunk=st.integers(1, 13))
def test_fast_equals_rank_integer_embeddings(sparse_fraction, case, chunk):
    # Integer-valued scores are exact in float32, so one big matmul and any
    # chunking agree bit for bit; ties are everywhere.
    text, image, tp, ip = case
    expected = rank(text @ image.T, tp, ip)
    with mock.patch.object(fast_eval, "SPARSE_FRACTION", sparse_fraction):
        got = evaluate_embeddings(text, image, tp, ip, chunk_size=chunk, normalize=False)
    assert got == expected


@pytest.mark.parametrize("sparse_fraction", [0.0, 1.0])
@settings(max_examples=50, deadline=None)
@given(case=retrieval_case(integer=False), chunk=st.one_of(st.none(), st.integers(1, 13)))
def test_fast_equals_rank_normalized_float_embeddings(sparse_fraction, case, chunk):
    # Same score values (the evaluator's own chunks) -> identical numbers.
    text, image, tp, ip = case
    scores = torch.cat([s for _, _, s in similarity_chunks(text, image, chunk)])
    with mock.patch.object(fast_eval, "SPARSE_FRACTION", sparse_fraction):
        got = evaluate_embeddings(text, image, tp, ip, chunk_size=chunk)
    assert got == rank(scores, tp, ip)
    tn, imn = torch.nn.functional.normalize(text, dim=1), torch.nn.functional.normalize(image, dim=1)
    assert torch.allclose(scores, tn @ imn.T, atol=1e-6)


def test_fast_equals_rank_realistic_size():
    # Larger random case with a memory budget that forces several chunks.
    gen = torch.Generator().manual_seed(3)
    image_pids = torch.randint(0, 60, (300,), generator=gen)
    text_pids = image_pids[torch.randint(0, 300, (500,), generator=gen)]
    ident = torch.randn(60, 16, generator=gen)
    image = ident[image_pids] + torch.randn(300, 16, generator=gen)
    text = ident[text_pids] + torch.randn(500, 16, generator=gen)
    scores = torch.cat([s for _, _, s in similarity_chunks(text, image, memory_budget=100_000)])
    got = evaluate_embeddings(text, image, text_pids, image_pids, memory_budget=100_000)
    assert got == rank(scores, text_pids, image_pids)


def irra_numpy(sim: np.ndarray, qp: np.ndarray, gp: np.ndarray, ks=(1, 5, 10)) -> dict:
    """IRRA's `rank` in NumPy: full argsort per row (stable, on -s), then
    cumulative sums, as in IRRA utils/metrics.py."""
    n_g = sim.shape[1]
    order = np.argsort(-sim + 0.0, axis=1, kind="stable")
    matches = gp[order] == qp[:, None]
    cmc = matches.cumsum(axis=1)
    out = {f"R{k}": 100 * np.mean(cmc[:, min(k, n_g) - 1] >= 1) for k in ks}
    num_rel = matches.sum(axis=1)
    precision = cmc / np.arange(1, n_g + 1)
    out["mAP"] = 100 * np.mean((precision * matches).sum(axis=1) / num_rel)
    last = n_g - 1 - np.argmax(matches[:, ::-1], axis=1)  # 0-based rank of the last positive
    out["mINP"] = 100 * np.mean(num_rel / (last + 1))
    return out


@settings(max_examples=50, deadline=None)
@given(case=retrieval_case(integer=True), floats=st.booleans())
def test_rank_equals_numpy_brute_force(case, floats):
    text, image, tp, ip = case
    sim = text @ image.T
    if floats:  # break most ties with small, reproducible noise
        sim = sim + 1e-3 * torch.randn(sim.shape, generator=torch.Generator().manual_seed(int(sim.numel())))
    got = rank(sim, tp, ip)
    expected = irra_numpy(sim.double().numpy(), tp.numpy(), ip.numpy())
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
