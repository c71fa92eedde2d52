"""Glue from a data folder and a domain name to cached frozen-trunk features.

`--data DIR --source DOMAIN` means: the dataset in `DIR/DOMAIN`, in whichever
of the supported annotation formats it holds (the generated benchmark writes
one such folder per domain; real datasets are placed as e.g. `DIR/CUHK-PEDES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from common.data.records import Dataset
from common.data.registry import resolve_domain
from common.models.feature_cache import FeatureSet, extract_features

Progress = Callable[[int, int], None] | None


def load_domain(data_dir: Path | str, domain: str, *, skip_bad: bool = False, check_images: bool = True) -> Dataset:
    return resolve_domain(Path(data_dir), domain, skip_bad=skip_bad, check_images=check_images)


def domain_features(
    backbone,
    data_dir: Path | str,
    domain: str,
    split: str,
    *,
    labels: bool = True,
    cache_dir: Path | None = None,
    skip_bad: bool = False,
    progress: Progress = None,
) -> FeatureSet:
    """Frozen-trunk features of one split of one domain.

    With `labels=False` the identities are removed before the features leave
    this function: the adaptation path never sees target identity labels.
    """
    ds = load_domain(data_dir, domain, skip_bad=skip_bad)
    fs = extract_features(backbone, ds.split(split), cache_dir=cache_dir, progress=progress)
    return fs if labels else fs.without_labels()
