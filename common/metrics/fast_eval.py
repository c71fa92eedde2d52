"""Fast, memory-bounded text-to-image evaluation from embeddings.

`evaluate_embeddings` returns exactly what `rank.rank` returns for the
similarity matrix `similarity_chunks` computes, without ever holding the
[n_queries, n_gallery] matrix: queries are processed in chunks whose size
follows a memory budget (default 256 MiB for one chunk of scores).

No row is sorted. AP, INP and R@k only need the ranks of the positives, and
with the reference tie rule (equal scores: lower gallery index first) the rank
of positive p of query q with score t = s[q,p] is

    1 + #{g : s[q,g] > t} + #{g < p : s[q,g] == t}.

Only items scoring at least a query's lowest positive can count, so each
block of rows first marks those candidates. With a decent model they are few
and the formula is applied to them alone; otherwise (candidates above
`SPARSE_FRACTION` of the block) each positive costs two counting passes over
its row (`> t`, `>= t`), and the index-restricted tie count runs only where
another item scores exactly t. Queries have few positives (the gallery is
grouped by person id), so either way it is a few passes per query, not a
sort. Scores are a float32 matmul (torch, its thread settings as they are);
the counting is NumPy on cache-sized row blocks, which beat torch's threaded
elementwise ops on a small, shared machine.

Exactness. Given the same score values, the result equals `rank` bit for bit
(same ranks; shared `per_query_scores`/`summarize`). The scores are those of
`similarity_chunks`. Against ONE big `text @ image.T`, a BLAS may round a
row's dot products differently for very short chunks (MKL does for fewer than
about 10 rows); that can only reorder items whose scores agree to the last
bit. Automatic chunks are thousands of rows for galleries up to ~10^5 images,
and even splitting keeps every chunk at least half the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common.metrics.rank import (
    DEFAULT_KS,
    check_every_query_has_positive,
    check_ks,
    check_pids,
    per_query_scores,
    summarize,
)

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes for one chunk of float32 scores
BLOCK_BYTES = 2**20  # rows counted together should stay in L2 cache
SPARSE_FRACTION = 1 / 16  # count candidates only when at most this share of a block


def evaluate_embeddings(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    text_pids: torch.Tensor,
    image_pids: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    normalize: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict:
    """Text-to-image R@k, mAP and mINP (IRRA's protocol) from embeddings.

    text_emb:   [n_queries, d] query (caption) embeddings.
    image_emb:  [n_gallery, d] gallery (image) embeddings.
    text_pids, image_pids: integer person ids, [n_queries] and [n_gallery].
    ks:         R@k cut-offs.
    chunk_size: queries per chunk; default from `memory_budget` (bytes of
                float32 scores per chunk).
    normalize:  L2-normalise both sides first (cosine similarity, as IRRA).

    Returns the same dict as `rank.rank(torch.cat([s for _, _, s in
    similarity_chunks(text_emb, image_emb, chunk_size, normalize=normalize,
    memory_budget=memory_budget)]), text_pids, image_pids, ks)`, bit for bit.
    Raises ValueError when a query has no positive, and on malformed input.
    Extra memory: float32 copies of the embeddings, one chunk of scores and
    O(n_queries) results.
    """
    text, image = prepare_embeddings(text_emb, image_emb, normalize)
    n_q, n_g = text.shape[0], image.shape[0]
    qp, gp = check_pids(text_pids, image_pids, n_queries=n_q, n_gallery=n_g)
    ks = check_ks(ks)
    positives = _PositiveIndex(qp, gp)

    best = torch.empty(n_q, dtype=torch.long)
    ap = torch.empty(n_q, dtype=torch.float64)
    inp = torch.empty(n_q, dtype=torch.float64)
    for start, stop, scores in _score_chunks(text, image, chunk_size, memory_budget):
        ranks, n_pos = _positive_ranks(scores.numpy(), positives, start, stop)
        best[start:stop], ap[start:stop], inp[start:stop] = per_query_scores(ranks, n_pos)
    return summarize(best, ap, inp, n_gallery=n_g, ks=ks)


def similarity_chunks(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    chunk_size: int | None = None,
    *,
    normalize: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, stop, text[start:stop] @ image.T) in query order, float32.

    Chunks are contiguous, as even as possible and at most `chunk_size` rows
    (default: as many rows of float32 scores as fit in `memory_budget` bytes;
    6,710 for a 10,000-image gallery and 256 MiB). These are the scores
    `evaluate_embeddings` ranks.
    """
    text, image = prepare_embeddings(text_emb, image_emb, normalize)
    return _score_chunks(text, image, chunk_size, memory_budget)


def _score_chunks(text: torch.Tensor, image: torch.Tensor, chunk_size: int | None, memory_budget: int):
    """`similarity_chunks` for already prepared embeddings (a generator)."""
    n_q, n_g = text.shape[0], image.shape[0]
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if chunk_size is None:
        chunk_size = max(1, memory_budget // (4 * n_g))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    n_chunks = -(-n_q // chunk_size)
    bounds = [n_q * i // n_chunks for i in range(n_chunks + 1)]
    return ((start, stop, text[start:stop] @ image.T) for start, stop in zip(bounds[:-1], bounds[1:]))


def prepare_embeddings(text_emb, image_emb, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and values; return both sides as contiguous float32,
    L2-normalised (`F.normalize`, eps 1e-12) when `normalize`. Rejects NaN,
    infinities, and magnitudes whose dot products could overflow float32."""
    out = []
    for name, emb in (("text_emb", text_emb), ("image_emb", image_emb)):
        e = torch.as_tensor(emb)
        if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty [n, d] matrix, got shape {tuple(e.shape)}")
        if e.dtype == torch.bool or e.is_complex():
            raise ValueError(f"{name} must be real-valued, got dtype {e.dtype}")
        e = e.detach().to(device="cpu", dtype=torch.float32)
        if not np.isfinite(e.numpy()).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        out.append(F.normalize(e, dim=1) if normalize else e)
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"embedding sizes differ: text {out[0].shape[1]}, image {out[1].shape[1]}")
    # |score| <= d * max|text| * max|image|; keep scores finite in float32.
    bound = out[0].shape[1] * float(out[0].abs().max()) * float(out[1].abs().max())
    if bound > 1e38:
        raise ValueError("embeddings too large: float32 scores could overflow; normalise or rescale them")
    return out[0].contiguous(), out[1].contiguous()


class _PositiveIndex:
    """Gallery indices of each query's positives, grouped by person id.

    positives(q) are the gallery items with q's pid, in ascending index order:
    `order[start[q] : start[q] + count[q]]`.
    """

    def __init__(self, query_pids: torch.Tensor, gallery_pids: torch.Tensor):
        order = torch.argsort(gallery_pids, stable=True)
        pids, counts = torch.unique_consecutive(gallery_pids[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        group = torch.searchsorted(pids, query_pids).clamp(max=pids.numel() - 1)
        found = pids[group] == query_pids
        check_every_query_has_positive(found)
        self.order = order.numpy()
        self.start = starts[group].numpy()
        self.count = counts[group].numpy()


def _positive_ranks(scores: np.ndarray, positives: _PositiveIndex, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the positives of queries start..stop-1 (rows of `scores`).

    Returns (ranks [c, m] long, ascending per row, 0-padded; n_pos [c]).
    Rows are handled in blocks small enough to stay in cache.
    """
    c, n_g = scores.shape
    n_pos = positives.count[start:stop]
    ranks = np.zeros((c, int(n_pos.max())), dtype=np.int64)
    block = max(1, BLOCK_BYTES // (4 * n_g))
    mask = np.empty((block, n_g), dtype=bool)
    for b in range(0, c, block):
        r = ranks[b : b + block]
        r[:, : n_pos[b : b + block].max()] = _block_ranks(scores[b : b + block], positives, start + b, mask)
    return torch.from_numpy(ranks), torch.from_numpy(n_pos.astype(np.int64))


def _block_ranks(s: np.ndarray, positives: _PositiveIndex, first: int, mask: np.ndarray) -> np.ndarray:
    """[r, m] ascending 1-based ranks of the positives of queries first.. (the
    rows of `s`), padded with 0 beyond each query's count. `mask` is scratch.

    Only items scoring at least a query's lowest positive can rank before any
    of its positives. When those candidates are few (a decent model), the
    exact rank rule is applied to them alone; otherwise whole rows are
    counted.
    """
    r = s.shape[0]
    q = np.arange(first, first + r)
    count = positives.count[q]
    slot = np.arange(int(count.max()))
    valid = slot[None, :] < count[:, None]
    pos = positives.order[positives.start[q][:, None] + np.minimum(slot[None, :], count[:, None] - 1)]
    t = np.where(valid, np.take_along_axis(s, pos, axis=1), np.inf)  # positives' scores
    mask = np.greater_equal(s, t.min(axis=1)[:, None], out=mask[:r])
    if np.count_nonzero(mask) <= SPARSE_FRACTION * s.size:
        ahead = _ahead_among_candidates(s, mask, t, pos)
    else:
        ahead = _ahead_in_rows(s, mask, t, pos, valid)
    ranks = np.where(valid, ahead + 1, np.iinfo(np.int64).max)
    ranks.sort(axis=1)
    return np.where(valid, ranks, 0)


def _ahead_among_candidates(s, mask, t, pos) -> np.ndarray:
    """#items ranked before each positive, counting only the candidates
    (items with mask set): score greater, or equal with a lower index."""
    flat = np.flatnonzero(mask)  # row-major: each row's candidates are contiguous
    rows, cols = np.divmod(flat, s.shape[1])
    v = s.reshape(-1)[flat][:, None]
    n_cand = np.bincount(rows, minlength=s.shape[0])  # >= 1: the lowest positive
    t_c, pos_c = np.repeat(t, n_cand, axis=0), np.repeat(pos, n_cand, axis=0)
    before = (v > t_c) | ((v == t_c) & (cols[:, None] < pos_c))  # [candidates, m]
    return np.add.reduceat(before.view(np.uint8), np.cumsum(n_cand) - n_cand, axis=0, dtype=np.int64)


def _ahead_in_rows(s, mask, t, pos, valid) -> np.ndarray:
    """#items ranked before each positive, counting whole rows: `> t` and
    `>= t` per positive; the index-restricted count of exact ties (rare for
    float scores) one pair at a time."""
    gt = np.zeros(t.shape, dtype=np.int64)
    ge = np.zeros(t.shape, dtype=np.int64)
    for j in range(t.shape[1]):
        tj = t[:, j : j + 1]
        gt[:, j] = np.greater(s, tj, out=mask).view(np.uint8).sum(axis=1, dtype=np.int32)
        ge[:, j] = np.greater_equal(s, tj, out=mask).view(np.uint8).sum(axis=1, dtype=np.int32)
    ahead = gt
    for i, j in zip(*np.nonzero(valid & (ge - gt > 1))):
        ahead[i, j] += np.count_nonzero(s[i, : pos[i, j]] == t[i, j])
    return ahead
