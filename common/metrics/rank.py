"""Text-to-image retrieval metrics as IRRA reports them: the pure reference.

`rank` takes a full similarity matrix and sorts every row. It is the
definition the fast evaluator (`fast_eval.evaluate_embeddings`) is tested
against, so it favours being obviously right over being fast.

Protocol (IRRA `utils/metrics.py`; notes/BENCHMARKS_AND_FORMATS.md section 3).
Every query is ranked against the whole gallery; a gallery item is a positive
of a query when it has the query's person id. With the 1-based ranks
r_1 < r_2 < ... < r_m of a query's m positives in its sorted row:

    hit@k = 1 if r_1 <= k else 0              R@k  = 100 * mean(hit@k)
    AP    = (1/m) * sum_i  i / r_i            mAP  = 100 * mean(AP)
    INP   = m / r_m                           mINP = 100 * mean(INP)

(i / r_i is the precision at the i-th positive.)

Tie rule (IRRA leaves it to an unstable argsort; we fix it): among equal
scores the gallery item with the LOWER index ranks first, i.e. rows are
ordered by a stable ascending sort of -similarity. -0.0 and +0.0 are equal.
Equivalently, the rank of gallery item g in row q is

    1 + #{h : s[q,h] > s[q,g]} + #{h < g : s[q,h] == s[q,g]}.

The helpers below (`check_*`, `per_query_scores`, `summarize`) are shared with
the fast evaluator so both produce bit-identical numbers from identical ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEFAULT_KS = (1, 5, 10)


def rank(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """Text-to-image retrieval metrics from a full similarity matrix.

    similarity:   [n_queries, n_gallery], larger = more similar. Floating or
                  integer dtype (integers are ranked exactly, via float64).
                  NaN is rejected.
    query_pids:   [n_queries] integer person ids of the queries (captions).
    gallery_pids: [n_gallery] integer person ids of the gallery (images).
    ks:           the cut-offs k of R@k (positive integers).

    Returns {"R<k>" for k in ks, "mAP", "mINP"} as floats in percent, plus
    "n_queries" and "n_gallery" as ints. See the module docstring for the
    formulas and the tie rule. Raises ValueError if a query has no positive
    in the gallery, and on malformed input. Pure: no state, inputs unchanged.
    """
    sim = check_similarity(similarity)
    qp, gp = check_pids(query_pids, gallery_pids, n_queries=sim.shape[0], n_gallery=sim.shape[1])
    ks = check_ks(ks)
    relevant = qp[:, None] == gp[None, :]  # [n_q, n_g], gallery order
    check_every_query_has_positive(relevant.any(dim=1))

    # Stable ascending sort of -s: larger score first, lower index first among
    # equals. "+ 0.0" turns -0.0 into +0.0 so the two zeros tie.
    key = sim.neg() + 0.0
    order = torch.sort(key, dim=1, stable=True).indices
    matches = torch.gather(relevant, 1, order)  # [n_q, n_g], ranked order

    n_pos = matches.sum(dim=1)
    rows, cols = matches.nonzero(as_tuple=True)  # row-major: cols ascend per row
    first = torch.cumsum(n_pos, 0) - n_pos  # offset of each row's first hit
    slot = torch.arange(rows.numel()) - first[rows]
    ranks = torch.zeros(sim.shape[0], int(n_pos.max()), dtype=torch.long)
    ranks[rows, slot] = cols + 1  # 1-based ranks of the positives, ascending

    best, ap, inp = per_query_scores(ranks, n_pos)
    return summarize(best, ap, inp, n_gallery=sim.shape[1], ks=ks)


# --------------------------------------------------------------------------
# Shared arithmetic: positive ranks -> per-query scores -> summary.
# --------------------------------------------------------------------------


def per_query_scores(ranks: torch.Tensor, n_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query best rank, AP and INP from the ranks of the positives.

    ranks: [n, m] int, row q holds the 1-based ranks of its n_pos[q] positives
           in ascending order in its first n_pos[q] columns; later columns are
           ignored (padding).
    n_pos: [n] int, >= 1.

    Returns (best [n] long, ap [n] float64, inp [n] float64). AP is summed
    column by column, so a row's value does not depend on the padding width
    or on which other rows share the call: equal ranks give equal bits.
    """
    n_pos = n_pos.to(torch.long)
    r = ranks.to(torch.float64).clamp(min=1.0)  # padding may be 0
    ap = torch.zeros(ranks.shape[0], dtype=torch.float64)
    for i in range(ranks.shape[1]):
        ap = ap + torch.where(n_pos > i, (i + 1) / r[:, i], 0.0)
    ap = ap / n_pos
    last = r.gather(1, (n_pos - 1)[:, None]).squeeze(1)
    inp = n_pos.to(torch.float64) / last
    best = ranks[:, 0].to(torch.long)
    return best, ap, inp


def summarize(best: torch.Tensor, ap: torch.Tensor, inp: torch.Tensor, *, n_gallery: int, ks: Sequence[int]) -> dict:
    """Means over queries, in percent. Sums use math.fsum (exactly rounded),
    so the result does not depend on the order queries were processed in."""
    n = int(best.numel())
    out: dict = {f"R{k}": 100.0 * int((best <= k).sum()) / n for k in ks}
    out["mAP"] = 100.0 * math.fsum(ap.tolist()) / n
    out["mINP"] = 100.0 * math.fsum(inp.tolist()) / n
    out["n_queries"] = n
    out["n_gallery"] = int(n_gallery)
    return out


# --------------------------------------------------------------------------
# Input checks (shared with fast_eval).
# --------------------------------------------------------------------------


def check_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """2-D, non-empty, floating (or integer, promoted to float64), no NaN;
    returned detached, on the CPU."""
    sim = torch.as_tensor(similarity).detach().cpu()
    if sim.ndim != 2 or sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"similarity must be a non-empty [n_queries, n_gallery] matrix, got shape {tuple(sim.shape)}")
    if sim.dtype == torch.bool or sim.is_complex():
        raise ValueError(f"similarity must be real-valued, got dtype {sim.dtype}")
    if not sim.is_floating_point():
        sim = sim.to(torch.float64)
    if torch.isnan(sim).any():
        raise ValueError("similarity contains NaN")
    return sim


def check_pids(query_pids, gallery_pids, *, n_queries: int, n_gallery: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D integer id vectors of the right lengths, as int64 tensors."""
    out = []
    for name, pids, n in (("query_pids", query_pids, n_queries), ("gallery_pids", gallery_pids, n_gallery)):
        p = torch.as_tensor(pids)
        if p.ndim != 1 or p.numel() != n:
            raise ValueError(f"{name} must have shape [{n}], got {tuple(p.shape)}")
        if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
            raise ValueError(f"{name} must be integer ids, got dtype {p.dtype}")
        out.append(p.detach().cpu().to(torch.long))
    return out[0], out[1]


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Non-empty cut-offs, each a positive int."""
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return ks


def check_every_query_has_positive(has_positive: torch.Tensor) -> None:
    """Raise ValueError naming how many queries lack a positive and the first."""
    missing = (~has_positive).nonzero().flatten()
    if missing.numel():
        raise ValueError(
            f"{missing.numel()} of {has_positive.numel()} queries have no positive in the gallery "
            f"(first: query {int(missing[0])}); IRRA's protocol needs at least one per query"
        )
