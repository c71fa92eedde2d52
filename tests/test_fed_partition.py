"""Splitting the target train split between simulated sites."""

import numpy as np
import pytest
import torch

from common.federation.config import FedConfig
from common.federation.partition import PartitionError, partition_records, style_keys, visual_groups
from common.federation.site_data import site_share
from common.models.feature_cache import FeatureSet

PIDS = np.repeat(np.arange(30), 3)  # 30 identities, 3 images each


def _check_cover(parts, n):
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(n)), "sites must be disjoint and cover every record"


@pytest.mark.parametrize("scheme", ["by-identity", "dirichlet"])
def test_identities_stay_at_one_site_and_split_is_deterministic(scheme):
    groups = {p: p % 4 for p in range(30)}
    parts = partition_records(PIDS, 3, scheme, seed=1, alpha=0.5, groups=groups)
    _check_cover(parts, len(PIDS))
    owners = [set(PIDS[idx].tolist()) for idx in parts]
    assert all(len(o) >= 1 for o in owners)
    assert not (owners[0] & owners[1]) and not (owners[1] & owners[2]) and not (owners[0] & owners[2])
    again = partition_records(PIDS, 3, scheme, seed=1, alpha=0.5, groups=groups)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_records(PIDS, 3, scheme, seed=2, alpha=0.5, groups=groups)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def _top_share(scheme, seed, groups):
    site_of = np.empty(len(PIDS), int)
    for s, idx in enumerate(partition_records(PIDS, 3, scheme, seed=seed, alpha=0.1, groups=groups)):
        site_of[idx] = s
    g = np.array([groups[p] for p in PIDS])
    return np.mean([np.bincount(site_of[g == k], minlength=3).max() / (g == k).sum() for k in range(3)])


def test_dirichlet_is_non_iid():
    """Each group of identities sits mostly at one site; by-identity spreads it (~1/3 + chance)."""
    groups = {p: p % 3 for p in range(30)}
    dirichlet = np.mean([_top_share("dirichlet", seed, groups) for seed in range(10)])
    iid = np.mean([_top_share("by-identity", seed, groups) for seed in range(10)])
    assert dirichlet > iid + 0.25, (dirichlet, iid)


def test_too_few_identities_or_styles_fail_clearly():
    with pytest.raises(PartitionError, match="identities"):
        partition_records([0, 0, 1], 3, "by-identity")
    with pytest.raises(PartitionError, match="style keys"):
        partition_records([0, 1, 2], 3, "by-style", styles=["a", "a", "b"])


def test_by_style_uses_the_image_folder_when_there_is_one(tmp_path):
    paths = [str(tmp_path / cam / f"{i}.jpg") for cam in ("CUHK01", "Market", "CUHK03") for i in range(4)]
    keys = style_keys(paths)
    assert keys[:4] == ["CUHK01"] * 4
    parts = partition_records(np.zeros(len(paths)), 3, "by-style", styles=keys)
    _check_cover(parts, len(paths))
    assert all(len({keys[i] for i in idx}) == 1 for idx in parts)
    assert style_keys([str(tmp_path / "train" / f"{i}.jpg") for i in range(3)]) is None


def test_visual_groups_are_deterministic():
    feats = np.random.default_rng(0).normal(size=(len(PIDS), 8))
    assert visual_groups(feats, PIDS, 4, seed=3) == visual_groups(feats.copy(), PIDS, 4, seed=3)


def test_site_share_strips_identity_labels():
    n = len(PIDS)
    fs = FeatureSet(image_feats=torch.randn(n, 8), text_feats=torch.randn(2 * n, 4),
                    text_to_image=torch.arange(n).repeat_interleave(2), image_pids=torch.as_tensor(PIDS),
                    text_pids=torch.as_tensor(PIDS).repeat_interleave(2), image_paths=[f"/d/train/{i}.jpg" for i in range(n)],
                    captions=[f"c{i}" for i in range(2 * n)])
    cfg = FedConfig(sites=3)
    shares = [site_share(fs, cfg, k) for k in range(3)]
    assert sum(s.n_images for s in shares) == n
    assert all((s.image_pids == -1).all() and (s.text_pids == -1).all() for s in shares)
    with pytest.raises(PartitionError):
        site_share(fs, cfg.replace(partition="by-style"), 0)


def test_visual_groups_match_the_per_identity_mean_reference():
    """Identity means by one sort equal the plain per-identity masks (the former quadratic code), rows unsorted."""
    rng = np.random.default_rng(7)
    pids = rng.permutation(np.repeat(np.arange(40), rng.integers(1, 5, 40)))
    feats = rng.normal(size=(len(pids), 6)).astype(np.float32)
    ids = np.unique(pids)
    means = np.stack([feats.astype(np.float64)[pids == p].mean(0) for p in ids])
    x = means - means.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centres = x[np.random.default_rng(1).choice(len(ids), 5, replace=False)]
    for _ in range(10):
        a = (x @ centres.T).argmax(1)
        for c in range(5):
            if (a == c).any():
                m = x[a == c].sum(0)
                centres[c] = m / np.linalg.norm(m)
    expected = {int(p): int(g) for p, g in zip(ids, (x @ centres.T).argmax(1))}
    assert visual_groups(feats, pids, 5, seed=1) == expected
    assert len(set(expected.values())) > 1
