"""Record-level DP-SGD on a site's packed records (Opacus ghost clipping).

Unit of privacy: one image-caption record at one site (add/remove relation).
Each step samples every record independently with probability ``sample_rate``
(Poisson), computes each record's loss from that record alone (`RecordLoss`),
clips each record's gradient to ``clip_norm`` (Opacus' ghost clipping: norms
without materialising per-sample gradients, then a reweighted backward pass),
and adds Gaussian noise of std ``noise_multiplier * clip_norm`` to the sum.

No PrivacyEngine is created: the accountant state is the site's persisted
history of ``(noise_multiplier, sample_rate, steps)`` tuples, which this
function extends with the steps it really ran (an empty Poisson batch is a
step too: it releases pure noise and is accounted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

from common.models.heads import DualHeads
from common.train.record_pack import PackedStudent, RecordLoss, RecordPack


@dataclass
class RecordLevelConfig:
    noise_multiplier: float  # derived from the site's budget by the caller (or given directly)
    clip_norm: float = 1.0  # per-record gradient bound; CMKD losses of unit-norm embeddings have O(1) gradients
    sample_rate: float = 0.05  # Poisson rate; ~64 records per step at a 1,300-record site
    steps: int = 20  # local steps per round
    lr: float = 0.05  # plain SGD on noisy averaged gradients; Adam's moment estimates amplify the noise
    momentum: float = 0.9


def train_record_level(
    heads: DualHeads,
    pack: RecordPack,
    targets: torch.Tensor,
    criterion: RecordLoss,
    cfg: RecordLevelConfig,
    generator: torch.Generator,
) -> tuple[list[tuple[float, float, int]], dict]:
    """Trains `heads` in place; returns (history entries of the steps run, stats)."""
    if len(pack) == 0:
        raise ValueError("a site with no records cannot train")
    n = len(pack)
    expected = max(1, round(cfg.sample_rate * n))
    model = PackedStudent(heads, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    gsm = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean", max_grad_norm=cfg.clip_norm, use_ghost_clipping=True)
    base = torch.optim.SGD(heads.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    opt = DPOptimizerFastGradientClipping(
        base, noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.clip_norm, expected_batch_size=expected, loss_reduction="mean", generator=generator
    )
    dp_loss = DPLossFastGradientClipping(gsm, opt, criterion, loss_reduction="mean")
    inputs = pack.inputs()
    gsm.train()
    losses, sizes = [], []
    for _ in range(cfg.steps):
        take = torch.rand(n, generator=generator) < cfg.sample_rate
        idx = take.nonzero().squeeze(1)
        sizes.append(len(idx))
        opt.zero_grad(set_to_none=True)
        if len(idx) == 0:
            _noise_only_step(heads, base, cfg, expected, generator)
            continue
        out = gsm(inputs[idx])
        loss = dp_loss(out, targets[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    gsm._close()
    history = [(cfg.noise_multiplier, cfg.sample_rate, cfg.steps)]
    stats = {"steps": cfg.steps, "mean_batch": sum(sizes) / len(sizes), "empty_batches": sizes.count(0), "loss": sum(losses) / max(len(losses), 1)}
    return history, stats


def _noise_only_step(heads: DualHeads, base: torch.optim.Optimizer, cfg: RecordLevelConfig, expected: int, generator: torch.Generator) -> None:
    """An empty Poisson batch: the clipped sum is zero, so the released gradient is the noise alone."""
    for p in heads.parameters():
        if p.requires_grad:
            p.grad = torch.normal(0.0, cfg.noise_multiplier * cfg.clip_norm, p.shape, generator=generator) / expected
    base.step()
