"""Group keys of `grouped` mode: a function of the record alone and of released data (docs/privacy.md, section 4).

Group clipping keeps its sensitivity ``Delta = 2C`` only if adding or removing
one record can change one group and no other. So a record's group must never
depend on another private record: no chunking of a shuffled batch (where one
record shifts every later record into another chunk), no comparison of
private records with each other. Here a record's key is

    key = nearest prototype * bins + sub-bin

* **nearest prototype**: the largest cosine between the record's own teacher
  view (its mean caption embedding by the current teacher: a function of the
  record and of the teacher, which is public or post-processing of DP
  releases) and the site's DP-released prototypes (or public anchors, which
  stand in when no prototype has been released);
* **sub-bin**: a keyed hash of the record's own content (its image features'
  bytes) mixed with the step number, modulo a public number of bins. It
  splits a prototype's cell into groups of about the target size and, since
  it changes with the step, gives a record other group-mates at every step.

The hash key needs no secrecy for the DP argument (the grouping is a function
of the record alone whatever the key); it only has to be fixed for the run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_MASK63 = (1 << 63) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def record_uids(image_feats: torch.Tensor, key: bytes) -> torch.Tensor:
    """[N] int64: a keyed BLAKE2b digest of each record's own image features (63 bits)."""
    rows = image_feats.detach().to(torch.float32).contiguous().numpy()
    out = [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8, key=key).digest(), "little") & _MASK63 for r in rows]
    return torch.tensor(out, dtype=torch.long)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea, Flood 2014): a bijective mixer of 64-bit words."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sub_bins(uids: torch.Tensor, step: int, bins: int | torch.Tensor) -> torch.Tensor:
    """[B] the sub-bin of each record at this step: hash(uid, step) mod bins (a function of the record alone);
    ``bins`` one public number, or one per record (its prototype cell's, see `bins_per_prototype`)."""
    b = torch.as_tensor(bins, dtype=torch.long).expand(len(uids))
    if len(b) and int(b.min()) < 1:
        raise ValueError(f"bins must be at least 1, got {int(b.min())}")
    u = uids.numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(u ^ (np.uint64(step) * _GOLDEN))
    return torch.from_numpy((mixed % b.numpy().astype(np.uint64)).astype(np.int64))


def nearest_prototype(views: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """[B] index of the prototype with the largest cosine to each record's view (ties: the lower index)."""
    if len(prototypes) == 0:
        return torch.zeros(len(views), dtype=torch.long)
    v = torch.nn.functional.normalize(views.double(), dim=-1)
    p = torch.nn.functional.normalize(prototypes.double(), dim=-1)
    return (v @ p.T).argmax(dim=1)


def group_keys(views: torch.Tensor, prototypes: torch.Tensor, uids: torch.Tensor, step: int,
               bins: int | torch.Tensor, sub_bin: str = "hash") -> torch.Tensor:
    """[B] each record's group key; records with equal keys form one group. ``bins``: one public number for every
    prototype cell, or a public number per prototype ([P], e.g. from the release's noisy counts). ``sub_bin``:
    "hash" (keyed hash of the record: random group-mates) or "lsh" (random hyperplanes through the prototype:
    group-mates with similar views; a cell's bins are rounded to a power of two)."""
    cell = nearest_prototype(views, prototypes)
    per_cell = torch.as_tensor(bins, dtype=torch.long)
    if sub_bin == "lsh":
        bits = torch.log2(per_cell.clamp_min(1).double()).round().long().reshape(-1)
        bits = bits.expand(max(len(prototypes), 1)) if len(bits) == 1 else bits
        return cell * (2 ** int(bits.max())) + lsh_bins(views, prototypes, cell if len(prototypes) else cell * 0, step, bits)
    if sub_bin != "hash":
        raise ValueError(f"sub_bin must be 'hash' or 'lsh', got {sub_bin!r}")
    if per_cell.ndim == 0:
        return cell * per_cell + sub_bins(uids, step, per_cell)
    if len(per_cell) != max(len(prototypes), 1):
        raise ValueError(f"need one bin count per prototype ({len(prototypes)}), got {len(per_cell)}")
    offset = torch.cumsum(per_cell, 0) - per_cell
    return offset[cell] + sub_bins(uids, step, per_cell[cell])


def lsh_bins(views: torch.Tensor, prototypes: torch.Tensor, cell: torch.Tensor, step: int, bits: torch.Tensor,
             key: int = 0) -> torch.Tensor:
    """[B] sub-bins by random hyperplanes through each record's prototype: bit j is the side of hyperplane j
    (public, drawn from (key, step)) that the record's view lies on, for the cell's first ``bits[cell]``
    hyperplanes. Records with nearly the same view (the same person's other photos, whose captions agree) mostly
    share a bin, and each hyperplane through the centre splits a cell roughly in half. A function of the record's
    view, the released prototypes and public randomness only."""
    nbits = int(bits.max()) if len(bits) else 0
    if nbits == 0 or len(views) == 0:
        return torch.zeros(len(views), dtype=torch.long)
    g = torch.Generator().manual_seed((key * 1_000_003 + step) % (2**63))
    planes = torch.randn(nbits, views.shape[1], generator=g, dtype=torch.float64)
    centre = prototypes.double()[cell] if len(prototypes) else torch.zeros_like(views, dtype=torch.float64)
    side = ((F.normalize(views.double(), dim=-1) - centre) @ planes.T > 0).long()  # [B, nbits]
    used = torch.arange(nbits)[None, :] < bits[cell][:, None]
    return (side * used * (2 ** torch.arange(nbits))[None, :]).sum(1)


def bins_per_prototype(noisy_counts: torch.Tensor, rate: float, group_size: int, cap: int = 64) -> torch.Tensor:
    """[P] sub-bins per prototype cell from the release's noisy counts (public): the expected sampled records of the
    cell over ``group_size``, at least 1 and at most ``cap``. Large cells get more bins, so groups stay near the
    target size whatever the cell (every group's clipped gradient carries at most C: balanced groups spend the
    step's signal evenly, and padding to the largest group costs less)."""
    expected = noisy_counts.double().clamp_min(0) * rate / max(group_size, 1)
    return expected.round().long().clamp(1, cap)


def cap_groups(group_ids: torch.Tensor, uids: torch.Tensor, step: int, cap: int) -> torch.Tensor:
    """[B] bool: which records of each group stay when a group holds more than ``cap``: the ``cap`` with the
    smallest keyed hash of (record, step). Which members a group keeps is a function of that group's members
    alone, so adding or removing a record still changes one group only (Delta = 2C holds; the adjacency test
    sweeps the cap); a capped group just trains on part of its members this step."""
    if cap <= 0 or len(group_ids) == 0:
        return torch.ones(len(group_ids), dtype=torch.bool)
    order = torch.from_numpy((_splitmix64(uids.numpy().astype(np.uint64) ^ np.uint64(0x5DEECE66D + step)) >> np.uint64(1))
                             .astype(np.int64))
    by = torch.argsort(order)
    by = by[torch.argsort(group_ids[by], stable=True)]  # grouped, each group in hash order
    g_sorted = group_ids[by]
    starts = torch.ones_like(g_sorted, dtype=torch.bool)
    starts[1:] = g_sorted[1:] != g_sorted[:-1]
    idx = torch.arange(len(by))
    first = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), 0).values
    keep = torch.zeros(len(group_ids), dtype=torch.bool)
    keep[by] = (idx - first) < cap
    return keep


def groups_of(keys: torch.Tensor) -> torch.Tensor:
    """[B] contiguous group ids 0..G-1 in the order of the sorted keys (the ids carry no record order)."""
    return torch.unique(keys, return_inverse=True)[1]


def default_bins(expected_batch: float, prototypes: int, group_size: int) -> int:
    """A public number of bins: the expected batch spread over every prototype cell in groups of ``group_size``."""
    return max(1, round(expected_batch / (max(prototypes, 1) * max(group_size, 1))))


@dataclass
class GroupStats:
    """Group sizes seen over a run (diagnostics for the operator: exact counts, not a DP release)."""

    sizes: list[int]
    groups_per_step: list[int]
    dropped: int = 0  # sampled records left out of a step because their group was over the cap

    @classmethod
    def empty(cls) -> "GroupStats":
        return cls([], [])

    def add(self, group_ids: torch.Tensor) -> None:
        counts = torch.bincount(group_ids) if len(group_ids) else torch.zeros(0, dtype=torch.long)
        self.sizes.extend(int(c) for c in counts if c > 0)
        self.groups_per_step.append(int((counts > 0).sum()))

    def summary(self) -> dict:
        s = np.asarray(self.sizes or [0])
        g = np.asarray(self.groups_per_step or [0])
        hist = np.bincount(s, minlength=1)
        return {"group_size": {"mean": float(s.mean()), "min": int(s.min()), "p10": float(np.percentile(s, 10)),
                               "median": float(np.median(s)), "p90": float(np.percentile(s, 90)), "max": int(s.max()),
                               "share_singletons": float((s == 1).mean()),
                               "histogram": {str(i): int(c) for i, c in enumerate(hist) if c}},
                "groups_per_step": {"mean": float(g.mean()), "min": int(g.min()), "max": int(g.max())},
                "records_over_cap": self.dropped,
                "steps": len(self.groups_per_step)}
