"""Chunked top-k nearest-neighbour graphs in pure torch (no pyg-lib).

PyG 2.8's `knn_graph` needs pyg-lib, which is not installable here
(notes/STACK.md section 8). `knn_edge_index` builds the same kind of graph by
scoring row chunks against all keys, so 50,000 nodes never need an N x N
matrix: chunks follow a memory budget (default 256 MiB of scores).

Ordering is deterministic: a node's neighbours are sorted by similarity,
descending, and among equal similarities the LOWER key index comes first
(also when deciding which of several tied items makes the top k).
torch.topk alone does not promise that, so `topk_chunked` checks each row:
when the k-th and (k+1)-th best scores differ, the top-k set is unique and
only its k entries are re-ordered; rows with a tie across the cut are
re-ranked by a stable sort of the whole row (rare for float embeddings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of scores per chunk


def knn_edge_index(
    x: torch.Tensor,
    k: int,
    *,
    y: torch.Tensor | None = None,
    cosine: bool = True,
    chunk_size: int | None = None,
    exclude_self: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-nearest-neighbour edges in PyG's source-to-target layout.

    x:      [N, D] the nodes whose neighbours are wanted (targets).
    k:      neighbours per node.
    y:      [M, D] where to search (sources); default x itself. With y the
            graph is bipartite: edge_index[0] indexes y, edge_index[1] x.
    cosine: similarity = dot product of L2-normalised rows (F.normalize);
            False uses the plain dot product (not PyG's Euclidean distance).
    chunk_size: rows of x scored at once; default from `memory_budget`.
    exclude_self: when y is None, node i is not its own neighbour (k <= N-1);
            ignored when y is given.

    Returns (edge_index LongTensor [2, N*k], weight [N*k]): edge e goes from
    neighbour edge_index[0, e] to node edge_index[1, e] with weight = its
    similarity (detached; floating inputs keep their dtype, integers become
    float32). Edges are grouped by target (0..N-1), each group ordered by
    descending similarity, ties by lower source index.
    """
    query, keys = _prepare(x, y, cosine)
    values, indices = topk_chunked(
        query,
        keys,
        k,
        chunk_size=chunk_size,
        exclude_diagonal=exclude_self and y is None,
        memory_budget=memory_budget,
    )
    n = query.shape[0]
    target = torch.arange(n).repeat_interleave(k)
    return torch.stack([indices.reshape(-1), target]), values.reshape(-1)


def topk_chunked(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    chunk_size: int | None = None,
    exclude_diagonal: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k keys by dot product for each query row, computed in row chunks.

    query: [N, D], keys: [M, D] (same floating dtype, finite); scores =
    query @ keys.T, one chunk of query rows at a time.
    exclude_diagonal: key i is never a result for query i (needs N <= M and
    k <= M - 1); used for a graph over one node set.

    Returns (values [N, k], indices [N, k] long), each row in descending score
    order with ties broken by lower key index; the set of k returned keys
    follows the same rule.
    """
    if query.ndim != 2 or keys.ndim != 2 or query.shape[1] != keys.shape[1]:
        raise ValueError(f"need [N, D] and [M, D] with the same D, got {tuple(query.shape)} and {tuple(keys.shape)}")
    n, m = query.shape[0], keys.shape[0]
    available = m - 1 if exclude_diagonal else m
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
        raise ValueError(f"k must be an int in [1, {available}] here, got {k!r}")
    if exclude_diagonal and n > m:
        raise ValueError(f"exclude_diagonal needs N <= M, got N={n}, M={m}")
    rows = _chunk_rows(chunk_size, memory_budget, m, query.element_size())

    values = torch.empty(n, k, dtype=query.dtype)
    indices = torch.empty(n, k, dtype=torch.long)
    keys_t = keys.T
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        scores = query[start:stop] @ keys_t
        if exclude_diagonal:
            scores.diagonal(offset=start).fill_(-torch.inf)
        values[start:stop], indices[start:stop] = _topk_rows(scores, k)
    return values, indices


def _topk_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic top-k of each row of a [c, M] score block (see module
    docstring): (values [c, k], indices [c, k])."""
    c, m = scores.shape
    if k == m:  # everything is selected; only the order matters
        return _stable_desc(scores + 0.0, torch.arange(m).expand(c, m))
    vals, idx = torch.topk(scores, k + 1, dim=1, sorted=True)
    vals = vals + 0.0  # -0.0 -> +0.0, so the two zeros tie
    ambiguous = vals[:, k - 1] == vals[:, k]  # a tie straddles the cut
    vals, idx = _stable_desc(vals[:, :k], idx[:, :k])
    if ambiguous.any():
        rows = ambiguous.nonzero().flatten()
        tied = scores[rows] + 0.0
        order = torch.sort(tied.neg(), dim=1, stable=True).indices[:, :k]
        vals[rows], idx[rows] = tied.gather(1, order), order
    return vals, idx


def _stable_desc(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row's (value, index) pairs: value descending, index ascending."""
    by_index = torch.sort(indices, dim=1, stable=True)
    values = values.gather(1, by_index.indices)
    by_value = torch.sort(values.neg(), dim=1, stable=True).indices
    return values.gather(1, by_value), by_index.values.gather(1, by_value)


def _prepare(x: torch.Tensor, y: torch.Tensor | None, cosine: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, keys), keys = query when y is None. Validated: 2-D, floating
    (integers become float32), finite, same dtype, dot products that cannot
    overflow; rows L2-normalised when `cosine`; detached, so no gradient."""
    out = []
    for name, t in (("x", x), ("y", y)):
        if t is None:
            break
        t = torch.as_tensor(t).detach()
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty [n, d] matrix, got shape {tuple(t.shape)}")
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
        t = t if t.is_floating_point() else t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        out.append((F.normalize(t, dim=1) if cosine else t).contiguous())
    query, keys = out[0], out[-1]
    if query.shape[1] != keys.shape[1]:
        raise ValueError(f"x and y differ in width: {query.shape[1]} and {keys.shape[1]}")
    dtype = torch.promote_types(query.dtype, keys.dtype)
    bound = query.shape[1] * float(query.abs().max()) * float(keys.abs().max())
    if bound > torch.finfo(dtype).max / 2:
        raise ValueError("values too large: dot products could overflow; use cosine=True or rescale")
    return query.to(dtype), keys.to(dtype)


def _chunk_rows(chunk_size: int | None, memory_budget: int, n_keys: int, itemsize: int) -> int:
    """Rows per chunk: `chunk_size`, or what fits the budget (scores plus
    topk/sort workspace, counted as 3 copies of the score block)."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        return chunk_size
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return max(1, memory_budget // (3 * n_keys * itemsize))
