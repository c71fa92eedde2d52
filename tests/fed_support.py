"""Shared setup for the federation tests: a tiny benchmark, a tiny teacher, a run config.

Built once per test session under one temporary folder (tiny backbone, small
heads, 2 pretraining epochs: a few seconds once the towers are imported).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE, TARGET = "flat", "outline"
HEADS = dict(out_dim=32, hidden=64, input_norm=True, hidden_norm=True)  # small heads: tests time the plumbing, not the
# model; with both LayerNorms, so the federation tests also cover the book-keeping clipper's LayerNorm path

for k, v in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(k, v)


@dataclass
class Bench:
    root: Path
    data: Path
    cache: Path
    teacher: Path

    def run_config(self, out: Path, **overrides) -> dict:
        rc = {"data-dir": str(self.data), "target": TARGET, "teacher": str(self.teacher), "cache-dir": str(self.cache),
              "out-dir": str(out / "run"), "state-dir": str(out / "sites"), "sites": 3, "rounds": 2,
              "local-steps": 3, "sample-rate": 0.5, "anchors": 64, "prototypes": 4, "batch-size": 8}
        rc.update(overrides)
        return rc


_SHARED: list[Bench] = []


def shared_bench() -> Bench:
    """One bench per test process (removed at exit)."""
    if not _SHARED:
        root = Path(tempfile.mkdtemp(prefix="fedgckd-bench-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _SHARED.append(build_bench(root))
    return _SHARED[0]


def build_bench(root: Path) -> Bench:
    from common.checkpoint import Checkpoint, save_checkpoint
    from common.data.synth import synthesize
    from common.models.backbones import build_backbone
    from common.models.heads import HeadConfig
    from common.pipeline import domain_features
    from common.train.pretrain import PretrainConfig, pretrain

    data, cache, teacher = root / "data", root / "cache", root / "teacher"
    if not (teacher / "config.json").exists():
        synthesize(data, seed=0, profile="tiny", workers=1)
        bb = build_backbone("tiny")
        tr = domain_features(bb, data, SOURCE, "train", cache_dir=cache)
        va = domain_features(bb, data, SOURCE, "val", cache_dir=cache)
        for split in ("train", "val"):
            domain_features(bb, data, TARGET, split, cache_dir=cache)
        heads, hist = pretrain(tr, va, HeadConfig(**HEADS), PretrainConfig(epochs=2))
        meta = {"role": "teacher", "source": {"data": str(data), "domain": SOURCE}, "training": hist}
        save_checkpoint(Checkpoint(heads, bb.name, bb.fingerprint(), heads.cfg, bb.text_dim, bb.image_dim, 0, meta), teacher)
    return Bench(root, data, cache, teacher)
