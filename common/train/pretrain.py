"""Source pretraining of the teacher: identity-aware InfoNCE on frozen-trunk features.

The trunks are frozen (DESIGN.md section 5), so their features are computed
once (`common.models.feature_cache`) and only the projection heads train here.
By default the schedule is fixed and its last epoch is kept (`select="last"`);
`select="val"` keeps the epoch with the best Rank-1 on the *source validation*
split instead. The val split is evaluated after every epoch for the history
either way; the test split is never read.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from common.losses.identity import IdentityClassifier
from common.losses.identity_infonce import identity_infonce
from common.losses.sdm import sdm_loss
from common.metrics.fast_eval import evaluate_embeddings
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads, HeadConfig
from common.train.embed import embed_featureset


LOSSES = ("infonce_id", "sdm_id")
SELECTIONS = ("last", "val")


@dataclass
class PretrainConfig:
    """Defaults chosen on the val splits of the embedded benchmark (benchmarks/results/base_ablation.md)."""

    epochs: int = 30  # heads on cached features converge in tens of epochs; 30 with the last kept matched 40 selected
    batch_size: int = 128  # enough same-identity collisions for the identity-aware targets to matter
    lr: float = 1e-3  # AdamW on small MLP heads; 1e-3 is stable and fast
    weight_decay: float = 1e-4
    tau: float = 0.05  # heads on frozen towers prefer a softer temperature than IRRA's 0.02 on CLIP (val: 0.02 lost)
    loss: str = "infonce_id"  # identity-aware symmetric InfoNCE; "sdm_id" (SDM + identity classifier, IRRA's
    # losses) was the former default and lost val R1 on every domain
    id_weight: float = 1.0  # "sdm_id" only: IRRA weights its id loss 1.0
    cosine: bool = False  # cosine learning-rate decay over the epochs; constant did as well on val
    select: str = "last"  # keep the last epoch (a fixed schedule); "val" keeps the best source-val epoch
    seed: int = 0
    patience: int = 10  # select="val" only: stop after this many epochs without a val R1 gain


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
    if cfg.loss not in LOSSES or cfg.select not in SELECTIONS:
        raise ValueError(f"loss must be one of {LOSSES} and select one of {SELECTIONS}, got {cfg.loss!r}, {cfg.select!r}")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    heads = DualHeads(train.text_feats.shape[1], train.image_feats.shape[1], head_cfg) if init is None else copy.deepcopy(init).train()
    text_pids, n_ids = _dense_pids(train.text_pids)
    image_pids = text_pids.new_empty(len(train.image_feats))
    image_pids[train.text_to_image] = text_pids
    params = list(heads.parameters())
    clf = None
    if cfg.loss == "sdm_id" and cfg.id_weight:
        clf = IdentityClassifier(heads.cfg.out_dim, n_ids)
        params += list(clf.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if cfg.cosine else None
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
            if cfg.loss == "infonce_id":
                loss = identity_infonce(t, v, cfg.tau, text_pids[idx], image_pids[img_idx])
            else:
                loss = sdm_loss(t, v, text_pids[idx], image_pids[img_idx], cfg.tau)
                if clf is not None:
                    loss = loss + cfg.id_weight * clf.loss(t, v, text_pids[idx], image_pids[img_idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        if sched is not None:
            sched.step()
        metrics = evaluate_heads(heads, val)
        row = {"epoch": epoch + 1, "loss": total / max(batches, 1), **{f"val_{k}": v for k, v in metrics.items()}}
        history.append(row)
        if cfg.select == "last" or metrics["R1"] > best["R1"]:
            best, best_state, stale = {**metrics, "epoch": epoch + 1}, copy.deepcopy(heads.state_dict()), 0
        else:
            stale += 1
        if progress:
            progress(epoch + 1, cfg.epochs, {"loss": row["loss"], "val_R1": metrics["R1"]})
        if cfg.select == "val" and stale >= cfg.patience:
            break
    heads.load_state_dict(best_state)
    heads.eval()
    selected_on = "last epoch of a fixed schedule" if cfg.select == "last" else "source val R1"
    return heads, {"config": asdict(cfg), "epochs": history, "selected": best, "selected_on": selected_on}


@torch.no_grad()
def evaluate_heads(heads: DualHeads, fs: FeatureSet) -> dict:
    text, image = embed_featureset(heads, fs)
    return evaluate_embeddings(text, image, fs.text_pids, fs.image_pids)
