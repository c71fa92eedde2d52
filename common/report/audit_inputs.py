"""What an empirical audit trains on, built the way a federated run builds it.

- the teacher: the source-pretrained checkpoint (a first round's teacher and
  starting student);
- the audited site: one partition of the target train split (the run's
  partitioner and seed), identity labels removed;
- the public anchors: the run's anchor bank (a seeded subset of the source
  train split) embedded by the teacher, as the server broadcasts them;
- the public bank itself (source trunk features): with ``train-params=lowrank:R``
  each round's adapter bases are computed from it, as the server computes them;
- the mechanism: the noise multiplier of each round, from a run's ledger
  (the site's ``dp-sgd`` entries, ``dp-sgd-grouped`` for a grouped run) or given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.federation.config import FedConfig
from common.federation.site_data import partition_featureset
from common.federation.trainable import broadcast_names
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads

if TYPE_CHECKING:
    from common.train.site_context import PublicBank


@dataclass
class AuditInputs:
    teacher: DualHeads
    site: FeatureSet  # without labels
    anchor_images: torch.Tensor
    anchor_texts: torch.Tensor
    names: list[str]  # the student the server holds (`broadcast_names`): what trains, or with lowrank:R every
    # head parameter (the adapters are attached per round, from `bank`)
    source: dict  # provenance: data, target, teacher, site
    bank: PublicBank | None = None  # the public anchor bank's trunk features (lowrank:R bases come from it)


def load_inputs(cfg: FedConfig, site_index: int = 0) -> AuditInputs:
    from common.checkpoint import load_checkpoint
    from common.models.backbones import build_backbone
    from common.pipeline import domain_features
    from common.train.site_context import PublicBank

    cfg.require("data_dir", "target", "teacher")
    ckpt = load_checkpoint(cfg.teacher)
    bb = build_backbone(cfg.backbone or ckpt.backbone)
    ckpt = load_checkpoint(cfg.teacher, expect_fingerprint=bb.fingerprint())
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    source = cfg.source or ckpt.meta.get("source", {}).get("domain")
    if not source:
        raise ValueError(f"{cfg.teacher}: the checkpoint records no source domain; pass one (run-config 'source')")
    src_data = cfg.data_dir if cfg.source or (Path(cfg.data_dir) / source).is_dir() else ckpt.meta["source"]["data"]
    src = domain_features(bb, src_data, source, "train", cache_dir=cache)
    target = domain_features(bb, cfg.data_dir, cfg.target, "train", cache_dir=cache)
    if cfg.sites > 1:
        parts = partition_featureset(target, cfg)
        if not 0 <= site_index < len(parts):
            raise ValueError(f"site {site_index} is outside 0..{len(parts) - 1}")
        site = target.select_images(parts[site_index])
    else:
        site = target
    teacher = ckpt.heads.eval()
    bank = PublicBank.from_source(src, cfg.anchors, seed=cfg.seed)
    a_img, a_txt = bank.embed(teacher)
    info = {"data": cfg.data_dir, "target": cfg.target, "teacher": cfg.teacher, "source": source,
            "backbone": bb.name, "site": f"site-{site_index}" if cfg.sites > 1 else "whole target train split",
            "partition": cfg.partition if cfg.sites > 1 else None}
    names = broadcast_names(teacher, cfg.train_params, cfg.loss_mode)
    return AuditInputs(teacher, site.without_labels(), a_img, a_txt, names, info, bank)


def run_prototype_noise(ledger: dict, site: str) -> float | None:
    """The noise multiplier of a site's DP prototype releases in a run (None if it released none)."""
    noise = {float(e["noise_multiplier"]) for e in (ledger.get("sites") or {}).get(site, [])
             if e["mechanism"] == "dp-kmeans-prototypes" and e["steps"] > 0}
    if len(noise) > 1:
        raise ValueError(f"{site}'s prototype noise changed between rounds ({sorted(noise)}); audit it with explicit options")
    return noise.pop() if noise else None


def run_mechanism(ledger: dict, site: str, mechanism: str = "dp-sgd") -> tuple[list[float], float, int, float]:
    """(noise multiplier per round, sample rate, steps per round, clip norm) of a site's DP-SGD in a run
    (``mechanism``: ``dp-sgd`` for a per-record run, ``dp-sgd-grouped`` for a grouped one)."""
    entries = [e for e in (ledger.get("sites") or {}).get(site, []) if e["mechanism"] == mechanism and e["steps"] > 0]
    if not entries:
        raise ValueError(f"the run's ledger has no {mechanism} entry for {site}: nothing record-level to audit")
    rates = {e["sample_rate"] for e in entries}
    steps = {e["steps"] for e in entries}
    clips = {e["clip_norm"] for e in entries}
    if len(rates) > 1 or len(steps) > 1 or len(clips) > 1:
        raise ValueError(f"{site}'s DP-SGD changed its sample rate, steps or clip norm between rounds; "
                         "audit it with explicit options")
    return [float(e["noise_multiplier"]) for e in entries], rates.pop(), steps.pop(), float(clips.pop())
