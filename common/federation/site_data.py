"""One site's share of the target train split, as the site's training may see it.

`site_share` computes the whole partition (deterministic: every site gets
the same answer by itself, so nothing about other sites is sent to it) and
returns this site's records with identity labels removed. The labels were
used only by the partitioner (see `partition` for why that is a simulation
device and not training).
"""

from __future__ import annotations

import numpy as np

from common.federation.config import FedConfig
from common.federation.partition import PartitionError, partition_records, style_keys, visual_groups
from common.models.feature_cache import FeatureSet

VISUAL_GROUPS = 8  # clusters of identities for the Dirichlet split; a few "kinds of people" per domain


def partition_featureset(fs: FeatureSet, cfg: FedConfig, n_sites: int | None = None) -> list[np.ndarray]:
    """Record (image-row) indices of every site for `cfg.partition`."""
    n = n_sites or cfg.sites
    pids = fs.image_pids.numpy()
    if cfg.partition == "by-style":
        styles = style_keys(fs.image_paths)
        if styles is None:
            raise PartitionError("by-style: the images of this domain sit in one folder, so there is no natural style "
                                 "key (the generated benchmark has none; CUHK-PEDES has its camera networks). "
                                 "Use by-identity or dirichlet.")
        return partition_records(pids, n, "by-style", cfg.seed, styles=styles)
    groups = visual_groups(fs.image_feats.numpy(), pids, VISUAL_GROUPS, cfg.seed) if cfg.partition == "dirichlet" else None
    return partition_records(pids, n, cfg.partition, cfg.seed, alpha=cfg.alpha, groups=groups)


def site_share(fs: FeatureSet, cfg: FedConfig, partition_id: int, n_sites: int | None = None,
               parts: list[np.ndarray] | None = None) -> FeatureSet:
    """This site's records, without identity labels (``parts``: `partition_featureset`'s answer, if already at hand)."""
    n = n_sites or cfg.sites
    if not 0 <= partition_id < n:
        raise PartitionError(f"partition-id {partition_id} is outside 0..{n - 1}")
    if parts is None:
        parts = partition_featureset(fs, cfg, n)
    elif len(parts) != n:
        raise PartitionError(f"a partition into {len(parts)} sites was passed for {n} sites")
    return fs.select_images(parts[partition_id]).without_labels()
