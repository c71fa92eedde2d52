"""Per-record clipped gradient sums in one backward pass, for parameters that all belong to `nn.Linear` layers.

Book-keeping ghost clipping (Bu, Wang, Zha, Karypis 2023). A Linear layer
maps a record's rows ``a_n`` (its image: one row; its captions: one row each)
to ``y_n = W a_n + b``. With ``g_n = dL_record / dy_n`` the record's gradient
is ``G_W = sum_n g_n a_n^T`` and ``G_b = sum_n g_n``, so

* its squared norm is ``sum_{n,m} (a_n . a_m)(g_n . g_m) + |sum_n g_n|^2``,
  computed without forming ``G_W`` (the "ghost" norm), and
* the clipped sum over the batch, ``sum_r c_r G_W(r)``, is one matmul of the
  scaled ``g`` with ``a``.

So a single backward pass to the layers' outputs (``torch.autograd.grad``, no
parameter gradients) replaces the two passes of Opacus' ghost clipping.
Clipping follows Opacus exactly: factor ``min(1, C / (norm + 1e-6))`` on each
record's gradient over all trained parameters together.

`train_record_level` uses this when every trained parameter is a Linear
weight or bias (the federation's default ``train-params=last``) and Opacus'
ghost clipping otherwise; tests check both against batch-of-one gradients.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6  # as Opacus: clip factor = C / (norm + 1e-6), at most 1


def linear_layers(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Linear] | None:
    """The Linear layers holding every parameter in `params`, or None if some parameter is not in one."""
    wanted = {id(p) for p in params}
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)
              and any(id(p) in wanted for p in m.parameters(recurse=False))]
    covered = {id(p) for m in layers for p in m.parameters(recurse=False) if id(p) in wanted}
    return layers if covered == wanted and layers else None


class LinearGhostClipper:
    """Records each trained Linear's input and output during a forward pass; then clips and sums."""

    def __init__(self, layers: list[nn.Linear]):
        self.layers = layers
        self._seen: dict[nn.Linear, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks = [m.register_forward_hook(self._keep) for m in layers]

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._seen[module] = (inputs[0].detach(), output)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def clipped_sum(self, losses: torch.Tensor, clip: float) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
        """({param: sum over records of the record's clipped gradient}, per-record norms before clipping).

        losses: [B] per-record losses of the forward pass just run (row b of every layer input is record b).
        """
        outs = [self._seen[m][1] for m in self.layers]
        grads_out = torch.autograd.grad(losses.sum(), outs)
        b = len(losses)
        acts, gs = [], []
        for m, g in zip(self.layers, grads_out):
            a = self._seen[m][0]
            acts.append(a.reshape(b, -1, a.shape[-1]))  # [B, n, in]
            gs.append(g.reshape(b, -1, g.shape[-1]))  # [B, n, out]
        sq = losses.new_zeros(b)
        for m, a, g in zip(self.layers, acts, gs):
            if m.weight.requires_grad:
                sq = sq + ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2))
            if m.bias is not None and m.bias.requires_grad:
                sq = sq + g.sum(1).pow(2).sum(1)
        norms = sq.clamp_min(0).sqrt()
        factor = (clip / (norms + EPS)).clamp(max=1.0)
        out: dict[nn.Parameter, torch.Tensor] = {}
        for m, a, g in zip(self.layers, acts, gs):
            gc = g * factor[:, None, None]
            if m.weight.requires_grad:
                out[m.weight] = gc.reshape(-1, gc.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
            if m.bias is not None and m.bias.requires_grad:
                out[m.bias] = gc.sum((0, 1))
        self._seen.clear()
        return out, norms.detach()
