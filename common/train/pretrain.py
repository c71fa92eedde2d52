"""Source pretraining of the teacher: SDM + identity classification on frozen-trunk features.

The trunks are frozen (DESIGN.md section 5), so their features are computed
once (`common.models.feature_cache`) and only the projection heads train here.
The epoch kept is the one with the best Rank-1 on the *source validation*
split; the test split is never read.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from common.losses.identity import IdentityClassifier
from common.losses.sdm import sdm_loss
from common.metrics.fast_eval import evaluate_embeddings
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads, HeadConfig
from common.train.embed import embed_featureset


@dataclass
class PretrainConfig:
    epochs: int = 40  # heads on cached features converge in tens of epochs; val R1 picks the best
    batch_size: int = 128  # enough same-identity collisions for SDM's soft targets to matter
    lr: float = 1e-3  # AdamW on small MLP heads; 1e-3 is stable and fast
    weight_decay: float = 1e-4
    tau: float = 0.05  # SDM temperature; IRRA uses 0.02 on CLIP, heads on frozen towers prefer softer
    id_weight: float = 1.0  # IRRA weights its id loss 1.0
    seed: int = 0
    patience: int = 10  # stop after this many epochs without a val R1 gain


def _dense_pids(pids: torch.Tensor) -> tuple[torch.Tensor, int]:
    uniq, inv = torch.unique(pids, return_inverse=True)
    return inv, len(uniq)


def pretrain(
    train: FeatureSet,
    val: FeatureSet,
    head_cfg: HeadConfig,
    cfg: PretrainConfig,
    progress: Callable[[int, int, dict], None] | None = None,
    init: DualHeads | None = None,
) -> tuple[DualHeads, dict]:
    """Train heads on `train`, select on `val`; returns (best heads, history).

    init: start from a copy of these heads (fine-tuning, e.g. the target-supervised oracle that starts from
        the source teacher) instead of fresh ones; `head_cfg` must then match them.
    """
    if (train.text_pids < 0).any():
        raise ValueError("source pretraining needs identity labels on every training record")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    heads = DualHeads(train.text_feats.shape[1], train.image_feats.shape[1], head_cfg) if init is None else copy.deepcopy(init).train()
    text_pids, n_ids = _dense_pids(train.text_pids)
    image_pids = text_pids.new_empty(len(train.image_feats))
    image_pids[train.text_to_image] = text_pids
    clf = IdentityClassifier(head_cfg.out_dim, n_ids)
    opt = torch.optim.AdamW(list(heads.parameters()) + list(clf.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    n = len(train.text_feats)
    best = {"R1": -1.0}
    best_state = copy.deepcopy(heads.state_dict())
    history: list[dict] = []
    stale = 0
    for epoch in range(cfg.epochs):
        heads.train()
        perm = torch.randperm(n, generator=gen)
        total, batches = 0.0, 0
        for start in range(0, n - 1, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            if len(idx) < 2:
                continue
            img_idx = train.text_to_image[idx]
            t = heads.text(train.text_feats[idx])
            v = heads.image(train.image_feats[img_idx])
            loss = sdm_loss(t, v, text_pids[idx], image_pids[img_idx], cfg.tau)
            if cfg.id_weight:
                loss = loss + cfg.id_weight * clf.loss(t, v, text_pids[idx], image_pids[img_idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        sched.step()
        metrics = evaluate_heads(heads, val)
        row = {"epoch": epoch + 1, "loss": total / max(batches, 1), **{f"val_{k}": v for k, v in metrics.items()}}
        history.append(row)
        if metrics["R1"] > best["R1"]:
            best, best_state, stale = {**metrics, "epoch": epoch + 1}, copy.deepcopy(heads.state_dict()), 0
        else:
            stale += 1
        if progress:
            progress(epoch + 1, cfg.epochs, {"loss": row["loss"], "val_R1": metrics["R1"]})
        if stale >= cfg.patience:
            break
    heads.load_state_dict(best_state)
    heads.eval()
    return heads, {"config": asdict(cfg), "epochs": history, "selected": best, "selected_on": "source val R1"}


@torch.no_grad()
def evaluate_heads(heads: DualHeads, fs: FeatureSet) -> dict:
    text, image = embed_featureset(heads, fs)
    return evaluate_embeddings(text, image, fs.text_pids, fs.image_pids)
