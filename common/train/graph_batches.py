"""Full-mode batches built from the refined teacher graph, and their pseudo-positives.

A batch is seeds plus each seed's nearest records, where records are compared
by `record_view` (by default their mean refined caption); two records of a
batch that are *mutual* neighbours count as positives of each other in the
CMKD soft target (`mutual_neighbours`). Only `full` mode uses these: they
couple records, so record-level DP never sees them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.graph.knn import topk_chunked


def record_view(r_img: torch.Tensor, r_txt: torch.Tensor, text_to_image: torch.Tensor, group_by: str) -> torch.Tensor:
    """The embedding records are compared by: the refined image ("image"), the mean refined caption
    ("text"), or both side by side ("image+text")."""
    if group_by == "image":
        return r_img
    if group_by not in ("text", "image+text"):
        raise ValueError(f"group_by must be 'image', 'text' or 'image+text', got {group_by!r}")
    txt = F.normalize(torch.zeros_like(r_img).index_add(0, text_to_image, r_txt), dim=-1)
    return txt if group_by == "text" else F.normalize(torch.cat([r_img, txt], dim=1), dim=-1)


def neighbour_groups(view: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """[N, group_size - 1]: each record's nearest other records by `view` (None when groups are off)."""
    if group_size <= 1 or len(view) <= group_size:
        return None
    _, idx = topk_chunked(view, view, group_size - 1, exclude_diagonal=True)
    return idx


def mutual_neighbours(groups: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """[len(a), len(b)] bool: records a[i] and b[j] are in each other's neighbour lists."""
    if groups is None:
        return None
    ga, gb = groups[a], groups[b]  # [A, k], [B, k]
    a_has_b = (ga[:, None, :] == b[None, :, None]).any(-1)
    b_has_a = (gb[None, :, :] == a[:, None, None]).any(-1)
    return a_has_b & b_has_a


def graph_batch(perm: torch.Tensor, b: int, groups: torch.Tensor | None, batch_size: int, group_size: int) -> torch.Tensor:
    """The b-th batch of an epoch: plain slices of `perm` without groups, else seeds from `perm`
    followed by their neighbours, first occurrence kept, cut to `batch_size`."""
    if groups is None:
        return perm[b * batch_size : (b + 1) * batch_size]
    n_seeds = max(1, batch_size // group_size)
    seeds = perm[(b * n_seeds) % len(perm) :][:n_seeds]
    return _first_unique(torch.cat([seeds, groups[seeds].reshape(-1)]))[:batch_size]


def _first_unique(x: torch.Tensor) -> torch.Tensor:
    seen: set[int] = set()
    keep = [v for v in x.tolist() if not (v in seen or seen.add(v))]
    return torch.tensor(keep, dtype=torch.long)
