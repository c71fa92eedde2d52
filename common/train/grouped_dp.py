"""Group clipping: one DP-SGD step of `grouped` mode (docs/privacy.md, section 4, construction 2).

Unit of privacy: one image-caption record at one site (add/remove; the site's
record count is public, as in Opacus). A step takes the Poisson-sampled
records, split into disjoint groups by keys that are functions of each record
alone and of released data (`common.train.grouped_keys`), packed one group per
row (`common.losses.grouped_loss.GroupPack`). Each group's loss couples its
members only; each group's gradient (over every trained parameter together) is
clipped to ``C``; the clipped sum gets Gaussian noise of std ``z * Delta`` with
``Delta = 2C`` and is divided by a public constant (``normaliser``; never the
realised batch size or group count).

Why ``Delta = 2C``: adding a record changes exactly one group (its own key's):
that group's clipped gradient moves from a vector of norm <= C to another (or
from nothing, when the group was empty), and every other row of the batch is
unchanged, so the pre-noise sum moves by at most 2C. The accountant then sees
an ordinary Poisson-subsampled Gaussian mechanism with noise multiplier ``z``
and rate ``q`` (`tests/test_grouped_adjacency.py` checks the bound on real
features, and that the same harness catches plain in-batch InfoNCE).

Clipping paths, as in `common.train.record_level_dp`: book-keeping ghost
clipping (one backward pass; every trained parameter in a Linear or
LayerNorm) or Opacus' ghost clipping (``clipping="opacus"``, or for other
layer types). Either way only the clipped sum comes from there; the noise is
drawn here, the same for both paths.
"""

from __future__ import annotations

import torch
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

from common.losses.grouped_loss import GroupedStudent, GroupLoss, GroupPack
from common.models.heads import DualHeads
from common.train.bookkeeping_clip import BookkeepingClipper, clippable_layers

SENSITIVITY_FACTOR = 2.0  # Delta = 2C under add/remove of one record (module docstring)


class GroupClippedSGD:
    """Clips per group, adds N(0, (z * 2C)^2), divides by ``normaliser``, steps ``optimizer``."""

    def __init__(self, heads: DualHeads, optimizer: torch.optim.Optimizer, clip_norm: float, noise_multiplier: float,
                 normaliser: float, generator: torch.Generator, clipping: str = "auto"):
        if clipping not in ("auto", "opacus"):
            raise ValueError(f"clipping must be 'auto' or 'opacus', got {clipping!r}")
        if not (clip_norm > 0 and noise_multiplier >= 0 and normaliser > 0):
            raise ValueError("need clip_norm > 0, noise_multiplier >= 0 and normaliser > 0")
        self.heads, self.base, self.generator = heads, optimizer, generator
        self.clip, self.z, self.normaliser = float(clip_norm), float(noise_multiplier), float(normaliser)
        self.model = GroupedStudent(heads)
        self.trained = [p for p in heads.parameters() if p.requires_grad]
        layers = clippable_layers(self.model, self.trained) if clipping == "auto" else None
        self.path = "bookkeeping" if layers else "opacus-ghost"
        if layers:
            self.clipper = BookkeepingClipper(layers)
        else:
            self.gsm = GradSampleModuleFastGradientClipping(self.model, batch_first=True, loss_reduction="mean",
                                                            max_grad_norm=self.clip, use_ghost_clipping=True)
            self.opt = DPOptimizerFastGradientClipping(optimizer, noise_multiplier=0.0,  # clipping only: noise is added in step()
                                                       max_grad_norm=self.clip, expected_batch_size=1,
                                                       loss_reduction="mean", generator=generator)
            self.gsm.train()

    @property
    def noise_std(self) -> float:
        return self.z * SENSITIVITY_FACTOR * self.clip

    def clipped_sum(self, pack: GroupPack, targets: torch.Tensor, criterion: GroupLoss) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """({param: sum over groups of the group's clipped gradient}, per-group norms, per-group losses): pre-noise."""
        self.model.shape = (pack.img.shape[1], pack.txt.shape[1])
        if self.path == "bookkeeping":
            criterion.reduction = "none"
            out, rows = self._real_rows_forward(pack)
            losses = criterion(out, targets)
            sums, norms = self.clipper.clipped_sum(losses, self.clip, rows)
            return sums, norms, losses.detach()
        x = pack.inputs()
        criterion.reduction = "mean"
        self.opt.zero_grad(set_to_none=True)
        loss = DPLossFastGradientClipping(self.gsm, self.opt, criterion, loss_reduction="mean")(self.gsm(x), targets)
        loss.backward()
        norms = self.gsm.get_norm_sample() if hasattr(self.gsm, "get_norm_sample") else torch.empty(0)
        sums = {p: p.grad.detach().clone() for p in self.trained}
        return sums, norms.detach(), loss.loss_per_sample.detach()

    def _real_rows_forward(self, pack: GroupPack) -> tuple[torch.Tensor, dict]:
        """`GroupedStudent`'s output rows, with the heads run on the real slots only (padded slots come out as zeros,
        which the loss masks exactly as it masks the padded slots of the padded forward), and the clipper's layout
        of each head layer's input rows: {layer: (group, slot, slots)}."""
        (gi, si), (gt, st) = pack.mi.nonzero(as_tuple=True), pack.mt.nonzero(as_tuple=True)
        g, ri, rt = len(pack), pack.img.shape[1], pack.txt.shape[1]
        e_img, e_txt = self.heads.image(pack.img[gi, si]), self.heads.text(pack.txt[gt, st])
        s_img = e_img.new_zeros(g, ri, e_img.shape[1]).index_put((gi, si), e_img)
        s_txt = e_txt.new_zeros(g, rt, e_txt.shape[1]).index_put((gt, st), e_txt)
        out = torch.cat([s_img.reshape(g, -1), s_txt.reshape(g, -1), pack.mi.to(s_img.dtype), pack.mt.to(s_img.dtype)], 1)
        rows = {m: (gi, si, ri) for m in self.heads.image_head.modules()}
        rows.update({m: (gt, st, rt) for m in self.heads.text_head.modules()})
        return out, rows

    def step(self, pack: GroupPack | None, targets: torch.Tensor | None, criterion: GroupLoss | None) -> float:
        """One released step; ``pack`` None (an empty Poisson batch) releases the noise alone. Returns the mean group loss."""
        sums, losses = ({}, None) if pack is None or len(pack) == 0 else self.clipped_sum(pack, targets, criterion)[::2]
        for p in self.trained:
            g = sums.get(p, torch.zeros_like(p))
            noise = torch.normal(0.0, self.noise_std, p.shape, generator=self.generator, dtype=p.dtype) if self.z > 0 else 0.0
            p.grad = (g + noise) / self.normaliser
        self.base.step()
        self.base.zero_grad(set_to_none=True)
        return float(losses.mean()) if losses is not None and len(losses) else float("nan")

    def close(self) -> None:
        if self.path == "bookkeeping":
            self.clipper.close()
        else:
            self.gsm._close()
