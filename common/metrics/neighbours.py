"""Neighbour purity: how often an embedding's nearest neighbour is the same person.

A diagnostic of an embedding space, not a retrieval metric: it says whether a
model's image (or caption) embeddings group the target's people, which is the
structure full GCKD's graph exploits and a per-record loss cannot see. Labels
are read for scoring only (on a labelled val split, never during adaptation).

    purity = 100 * mean_i [ pid(nn(i)) == pid(i) ]

where nn(i) is the item of highest cosine similarity to item i among the
items outside i's exclusion group (by default only i itself; for captions,
pass each caption's record so that the other caption of the same photo, a
trivial neighbour, is excluded too). Ties go to the lower index. An item with
no candidate left raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbour_purity(emb: torch.Tensor, pids: torch.Tensor, groups: torch.Tensor | None = None, chunk: int = 4096) -> float:
    """Percentage of items whose nearest other item (outside its group) has its person id.

    emb [N, D] embeddings (cosine: normalised here); pids [N] person ids;
    groups [N] optional exclusion group of each item (default: each item its own group).
    """
    if emb.ndim != 2 or pids.shape != (len(emb),):
        raise ValueError(f"need emb [N, D] and pids [N]; got {tuple(emb.shape)} and {tuple(pids.shape)}")
    if groups is None:
        groups = torch.arange(len(emb))
    if groups.shape != pids.shape:
        raise ValueError(f"groups must have shape {tuple(pids.shape)}, got {tuple(groups.shape)}")
    x = F.normalize(emb.double(), dim=-1)
    hits = 0
    for start in range(0, len(x), chunk):
        s = x[start : start + chunk] @ x.T
        same = groups[start : start + chunk, None] == groups[None, :]
        if bool(same.all(1).any()):
            raise ValueError("an item has no neighbour outside its own group")
        s = s.masked_fill(same, float("-inf"))
        nn = s.argmax(1)  # first maximum: the lower index wins a tie
        hits += int((pids[nn] == pids[start : start + chunk]).sum())
    return 100.0 * hits / len(x)
