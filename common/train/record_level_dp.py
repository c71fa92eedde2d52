"""Record-level DP-SGD on a site's packed records (ghost clipping).

Unit of privacy: one image-caption record at one site (add/remove relation; the site's record
count is treated as public, as Opacus does: it sets the expected batch size that scales each step).
Each step samples every record independently with probability ``sample_rate``
(Poisson), computes each record's loss from that record alone (`RecordLoss`),
clips each record's gradient to ``clip_norm`` and adds Gaussian noise of std
``noise_multiplier * clip_norm`` to the sum, then divides by the expected
batch size (Opacus' ``loss_reduction="mean"``). Clipping: when every trained
parameter is in a Linear or LayerNorm layer (every head parameter),
book-keeping ghost clipping in one backward pass
(`common.train.bookkeeping_clip`); otherwise, or with ``clipping="opacus"``,
Opacus' ghost clipping (norms without per-sample gradients, then a reweighted
second backward pass). Both give the same clipped sums; tests hold each
against batch-of-one gradients.

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
from common.train.bookkeeping_clip import BookkeepingClipper, clippable_layers
from common.train.record_pack import PackedStudent, RecordLoss, RecordPack


@dataclass
class RecordLevelConfig:
    noise_multiplier: float  # derived from the site's budget by the caller (or given directly)
    clip_norm: float = 1.0  # per-record gradient bound; CMKD losses of unit-norm embeddings have O(1) gradients
    sample_rate: float = 0.05  # Poisson rate; ~64 records per step at a 1,300-record site
    steps: int = 20  # local steps per round
    lr: float = 0.05  # plain SGD on noisy averaged gradients; Adam's moment estimates amplify the noise
    momentum: float = 0.9
    clipping: str = "auto"  # "auto": book-keeping when it covers every trained parameter (one backward pass, 1.3x a
    # non-DP step), else Opacus' ghost clipping; "opacus": always Opacus (a second, independent implementation)


def expected_batch(sample_rate: float, records: int) -> int:
    """The expected Poisson batch that each step's noised sum is divided by (Opacus' ``loss_reduction="mean"``)."""
    return max(1, round(sample_rate * records))


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
    expected = expected_batch(cfg.sample_rate, n)
    model = PackedStudent(heads, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    trained = [p for p in heads.parameters() if p.requires_grad]
    if cfg.clipping not in ("auto", "opacus"):
        raise ValueError(f"clipping must be 'auto' or 'opacus', got {cfg.clipping!r}")
    layers = clippable_layers(model, trained) if cfg.clipping == "auto" else None
    base = torch.optim.SGD(heads.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    step = _bookkeeping_steps(model, layers, base, criterion, cfg, expected) if layers else \
        _opacus_ghost_steps(model, heads, base, criterion, cfg, expected, generator)
    inputs = pack.inputs()
    losses, sizes = [], []
    for _ in range(cfg.steps):
        take = torch.rand(n, generator=generator) < cfg.sample_rate
        idx = take.nonzero().squeeze(1)
        sizes.append(len(idx))
        base.zero_grad(set_to_none=True)
        if len(idx) == 0:
            _noise_only_step(heads, base, cfg, expected, generator)
            continue
        losses.append(step(inputs[idx], targets[idx], generator))
    step.close()
    history = [(cfg.noise_multiplier, cfg.sample_rate, cfg.steps)]
    stats = {"steps": cfg.steps, "mean_batch": sum(sizes) / len(sizes), "empty_batches": sizes.count(0),
             "loss": sum(losses) / max(len(losses), 1), "clipping": "bookkeeping" if layers else "opacus-ghost"}
    return history, stats


class _bookkeeping_steps:
    """One DP-SGD step with `BookkeepingClipper`: clip per record, sum, add N(0, (sigma C)^2), divide by E[B]."""

    def __init__(self, model, layers, base, criterion, cfg: RecordLevelConfig, expected: int):
        self.model, self.base, self.criterion, self.cfg, self.expected = model, base, criterion, cfg, expected
        self.clipper = BookkeepingClipper(layers)

    def __call__(self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> float:
        self.criterion.reduction = "none"
        per_record = self.criterion(self.model(x), target)
        sums, _ = self.clipper.clipped_sum(per_record, self.cfg.clip_norm)
        std = self.cfg.noise_multiplier * self.cfg.clip_norm
        for p, g in sums.items():
            noise = torch.normal(0.0, std, p.shape, generator=generator) if std > 0 else 0.0
            p.grad = (g + noise) / self.expected
        self.base.step()
        return float(per_record.detach().mean())

    def close(self) -> None:
        self.clipper.close()


class _opacus_ghost_steps:
    """One DP-SGD step with Opacus' fast gradient clipping (two backward passes); any trainable layer type."""

    def __init__(self, model, heads, base, criterion, cfg: RecordLevelConfig, expected: int, generator):
        self.gsm = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                        max_grad_norm=cfg.clip_norm, use_ghost_clipping=True)
        self.opt = DPOptimizerFastGradientClipping(base, noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.clip_norm,
                                                   expected_batch_size=expected, loss_reduction="mean", generator=generator)
        criterion.reduction = "mean"
        self.dp_loss = DPLossFastGradientClipping(self.gsm, self.opt, criterion, loss_reduction="mean")
        self.gsm.train()

    def __call__(self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.dp_loss(self.gsm(x), target)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def close(self) -> None:
        self.gsm._close()


def _noise_only_step(heads: DualHeads, base: torch.optim.Optimizer, cfg: RecordLevelConfig, expected: int, generator: torch.Generator) -> None:
    """An empty Poisson batch: the clipped sum is zero, so the released gradient is the noise alone."""
    for p in heads.parameters():
        if p.requires_grad:
            p.grad = torch.normal(0.0, cfg.noise_multiplier * cfg.clip_norm, p.shape, generator=generator) / expected
    base.step()
