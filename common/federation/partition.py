"""Deal a target domain's train split out to N simulated sites.

A simulation device, not training: identity labels are read here ONLY to
decide which simulated site holds which records (real sites hold different
people, so a split that keeps each person at one site mimics them). The
labels never reach a site's training: the site's share is handed on as
`FeatureSet.select_images(...).without_labels()` (see `site_features`), and
the adaptation code refuses a FeatureSet that still has labels.

Schemes (all deterministic for a seed; each returns sorted record indices
per site, disjoint and covering every record):
- ``by-identity``: identities shuffled and dealt round-robin; each identity's
  records go to one site; site sizes vary with images per identity.
- ``dirichlet`` (default, non-IID): identities are grouped (by default into
  visual clusters of their mean frozen image feature, `visual_groups`); for
  every group a Dirichlet(alpha) draw over the sites says which share of the
  group's identities each site gets. Small alpha = each site sees mostly a
  few kinds of people. Every site gets at least one identity (taken from the
  largest site if a draw leaves one empty).
- ``by-style``: records grouped by a natural style key, the first folder of
  the image path under the dataset's image root (for CUHK-PEDES: CUHK01,
  CUHK03, Market, ...: the camera network the image came from); whole style
  groups go to sites, largest first to the smallest site. The generated
  benchmark has no such key (all train images sit in one folder), so
  by-style raises `PartitionError` there instead of inventing one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from common.federation.config import PARTITIONS


class PartitionError(ValueError):
    """The data cannot be split this way (too few identities or style keys, bad arguments)."""


def partition_records(pids: Sequence[int] | np.ndarray, n_sites: int, scheme: str = "dirichlet", seed: int = 0,
                      alpha: float = 0.5, groups: dict[int, int] | None = None,
                      styles: Sequence[str] | None = None) -> list[np.ndarray]:
    """Record indices of each site (a list of ``n_sites`` sorted int64 arrays)."""
    pids = np.asarray(pids, dtype=np.int64)
    if scheme not in PARTITIONS:
        raise PartitionError(f"unknown partition {scheme!r}; choose from {', '.join(PARTITIONS)}")
    if n_sites < 1:
        raise PartitionError(f"need at least one site, got {n_sites}")
    if scheme == "by-style":
        if styles is None:
            raise PartitionError("by-style needs a style key per record")
        return _by_style(list(styles), n_sites)
    if (pids < 0).any():
        raise PartitionError(f"{scheme} needs an identity per record (the simulation device); some are missing")
    ids = np.unique(pids)
    if len(ids) < n_sites:
        raise PartitionError(f"{len(ids)} identities cannot fill {n_sites} sites")
    rng = np.random.default_rng(seed)
    if scheme == "by-identity":
        order = rng.permutation(ids)
        site_of = {int(p): i % n_sites for i, p in enumerate(order)}
    else:
        site_of = _dirichlet(ids, n_sites, alpha, groups or {}, rng)
    site = np.array([site_of[int(p)] for p in pids], dtype=np.int64)
    return [np.flatnonzero(site == s) for s in range(n_sites)]


def _dirichlet(ids: np.ndarray, n_sites: int, alpha: float, groups: dict[int, int],
               rng: np.random.Generator) -> dict[int, int]:
    if not alpha > 0:
        raise PartitionError(f"alpha must be > 0, got {alpha}")
    by_group: dict[int, list[int]] = {}
    for p in ids.tolist():
        by_group.setdefault(int(groups.get(p, 0)), []).append(p)
    site_of: dict[int, int] = {}
    for g in sorted(by_group):
        members = rng.permutation(np.array(by_group[g]))
        share = rng.dirichlet(np.full(n_sites, alpha))
        cuts = np.round(np.cumsum(share) * len(members)).astype(int)
        start = 0
        for s, stop in enumerate(cuts):
            for p in members[start:stop]:
                site_of[int(p)] = s
            start = stop
    sizes = np.bincount(np.array(list(site_of.values())), minlength=n_sites)
    for s in range(n_sites):  # every site holds someone: move one identity from the largest site
        if sizes[s] == 0:
            donor = int(np.argmax(sizes))
            moved = max(p for p, t in site_of.items() if t == donor)
            site_of[moved] = s
            sizes[donor] -= 1
            sizes[s] += 1
    return site_of


def _by_style(styles: list[str], n_sites: int) -> list[np.ndarray]:
    keys = sorted(set(styles))
    if len(keys) < n_sites:
        raise PartitionError(f"by-style needs at least {n_sites} distinct style keys (image sub-folders); this data has "
                             f"{len(keys)} ({', '.join(keys[:5])}). Use by-identity or dirichlet.")
    arr = np.array(styles)
    sizes = {k: int((arr == k).sum()) for k in keys}
    load = np.zeros(n_sites, dtype=np.int64)
    site_of: dict[str, int] = {}
    for k in sorted(keys, key=lambda k: (-sizes[k], k)):
        s = int(np.argmin(load))
        site_of[k] = s
        load[s] += sizes[k]
    site = np.array([site_of[k] for k in styles], dtype=np.int64)
    return [np.flatnonzero(site == s) for s in range(n_sites)]


def style_keys(image_paths: Sequence[str]) -> list[str] | None:
    """First folder of each image path under the paths' common root, or None if there is no such folder."""
    if not image_paths:
        return None
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in image_paths])
    keys = []
    for p in image_paths:
        rel = os.path.relpath(os.path.abspath(p), root).split(os.sep)
        if len(rel) < 2:
            return None
        keys.append(rel[0])
    return keys


def visual_groups(image_feats: np.ndarray, pids: np.ndarray, k: int = 8, seed: int = 0, iters: int = 10) -> dict[int, int]:
    """Identity -> visual cluster: spherical k-means of each identity's mean frozen image feature.

    float64, seeded init, fixed iterations: the same inputs give the same
    groups in every process (each site recomputes the split by itself).
    """
    pids = np.asarray(pids)
    ids = np.unique(pids)
    feats = np.asarray(image_feats, dtype=np.float64)  # converted once: per identity it was quadratic in the records
    order = np.argsort(pids, kind="stable")  # each identity's rows in their original order, as a boolean mask takes them
    rows = np.split(order, np.searchsorted(pids[order], ids[1:]))
    x = np.stack([feats[r].mean(0) for r in rows])
    x = x - x.mean(0)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = max(1, min(k, len(ids)))
    centres = x[np.random.default_rng(seed).choice(len(ids), k, replace=False)]
    for _ in range(iters):
        a = (x @ centres.T).argmax(1)
        for c in range(k):
            if (a == c).any():
                m = x[a == c].sum(0)
                centres[c] = m / max(np.linalg.norm(m), 1e-12)
    a = (x @ centres.T).argmax(1)
    return {int(p): int(g) for p, g in zip(ids, a)}


def summary(parts: list[np.ndarray], pids: np.ndarray | None = None) -> list[dict]:
    """Records (and, where labels are at hand, identities) per site: for the simulation's report."""
    out = []
    for s, idx in enumerate(parts):
        row = {"site": s, "records": int(len(idx))}
        if pids is not None:
            row["identities"] = int(len(np.unique(np.asarray(pids)[idx])))
        out.append(row)
    return out
