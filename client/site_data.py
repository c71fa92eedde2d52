"""What a site loads from its own machine: trunks, features of its records, the cached teacher.

Per-process memos (in simulation one Ray actor serves many sites, in
deployment each message starts a new process): the frozen backbone and its
fingerprint are built once per process, target features come from the disk
cache that `fedgckd simulate` fills before the engine starts.

The teacher of the current version lives in a file in the site's state dir
(atomic write), never in Flower's context.state: in simulation every node's
state lives in one process and is copied on every message. So does
``progress.json``: the last round the site charged in each run (run-key), which
a restarted site (whose Flower state is gone) needs under site-level DP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from common.atomic import atomic_write_bytes, atomic_write_json, read_json
from common.federation.config import FedConfig
from common.federation.site_settings import SiteSettings
from common.federation.site_data import partition_featureset, site_share
from common.models.feature_cache import FeatureSet

TEACHER_FILE = "teacher.safetensors"
PROGRESS_FILE = "progress.json"  # the last round this site charged, per run (run-key)
_BACKBONES: dict[str, tuple[object, str]] = {}
_FEATURES: dict[tuple, FeatureSet] = {}
_PARTITIONS: dict[tuple, list[np.ndarray]] = {}  # per process: see site_features


def backbone(name: str):
    """(Backbone, fingerprint) built from installed packages; once per process."""
    if name not in _BACKBONES:
        from common.models.backbones import build_backbone

        bb = build_backbone(name)
        _BACKBONES[name] = (bb, bb.fingerprint())
    return _BACKBONES[name]


def check_fingerprint(name: str, expected: str, site: str) -> None:
    _, fp = backbone(name)
    if fp != expected:
        raise RuntimeError(f"{site}: the installed trunks of backbone {name!r} hash to {fp[:16]}, the server's to "
                           f"{expected[:16]}; refusing to pair the server's heads with other trunks "
                           "(install the same backbone packages/weights as the server)")


def _target_train(settings: SiteSettings, cfg: FedConfig, backbone_name: str) -> FeatureSet:
    key = (settings.data_dir, cfg.target, backbone_name, settings.cache_dir)
    if key not in _FEATURES:
        from common.pipeline import domain_features

        bb, _ = backbone(backbone_name)
        # labels=True only for the simulation's partitioner; `site_share` strips them (see common.federation.partition)
        _FEATURES[key] = domain_features(bb, settings.data_dir, cfg.target, "train", labels=True,
                                         cache_dir=Path(settings.cache_dir) if settings.cache_dir else None)
    return _FEATURES[key]


def site_features(settings: SiteSettings, cfg: FedConfig, backbone_name: str) -> FeatureSet:
    """This site's records (its partition of the target train split), without identity labels. The partition is
    computed once per process and split setting (in simulation one actor serves many sites, every round)."""
    fs = _target_train(settings, cfg, backbone_name)
    key = (settings.data_dir, cfg.target, backbone_name, settings.cache_dir, cfg.partition, cfg.seed, cfg.alpha,
           settings.n_sites)
    if key not in _PARTITIONS:
        _PARTITIONS[key] = partition_featureset(fs, cfg, settings.n_sites)
    return site_share(fs, cfg, settings.partition_id, settings.n_sites, parts=_PARTITIONS[key])


def save_teacher(state_dir: Path, arrays: dict[str, np.ndarray], config: dict) -> Path:
    meta = {k: str(v) for k, v in config.items()}
    meta["config-json"] = json.dumps(config, sort_keys=True)
    blob = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)
    return atomic_write_bytes(Path(state_dir) / TEACHER_FILE, blob)


def load_teacher(state_dir: Path, version: str) -> tuple[dict[str, np.ndarray], dict]:
    path = Path(state_dir) / TEACHER_FILE
    if not path.exists():
        raise RuntimeError(f"{path}: no teacher received yet (expected version {version})")
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        config = json.loads((f.metadata() or {}).get("config-json", "{}"))
    if config.get("teacher-version") != version:
        raise RuntimeError(f"{path}: holds teacher version {config.get('teacher-version')}, the round needs {version}")
    return load_file(str(path)), config


def last_charged_round(state_dir: Path, run_key: str) -> int:
    """The last round of run `run_key` this site charged to its ledger (0: none, or no run key)."""
    path = Path(state_dir) / PROGRESS_FILE
    if not run_key or not path.exists():
        return 0
    runs = read_json(path).get("runs", {})
    return int(runs.get(run_key, 0))


def remember_charged_round(state_dir: Path, run_key: str, server_round: int) -> None:
    if not run_key:
        return
    path = Path(state_dir) / PROGRESS_FILE
    data = read_json(path) if path.exists() else {"runs": {}}
    data.setdefault("runs", {})[run_key] = max(int(server_round), int(data["runs"].get(run_key, 0)))
    atomic_write_json(path, data)
