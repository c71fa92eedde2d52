"""Per-record clipped gradient sums in one backward pass, for parameters of `nn.Linear` and `nn.LayerNorm` layers.

Book-keeping ghost clipping (Bu, Wang, Zha, Karypis 2023). A record passes
rows ``a_n`` through each layer (its image: one row; its captions: one row
each), and ``g_n = dL_record / dy_n`` is the gradient at the layer's output.

* Linear, ``y_n = W a_n + b``: the record's gradient is ``G_W = sum_n g_n a_n^T``
  and ``G_b = sum_n g_n``; its squared norm is
  ``sum_{n,m} (a_n . a_m)(g_n . g_m) + |sum_n g_n|^2``, computed without forming
  ``G_W`` (the "ghost" norm), and the clipped sum over the batch,
  ``sum_r c_r G_W(r)``, is one matmul of the scaled ``g`` with ``a``.
* LayerNorm, ``y_n = gamma * xhat_n + beta`` with ``xhat_n`` the normalised
  input: ``G_gamma = sum_n g_n * xhat_n`` and ``G_beta = sum_n g_n``, vectors of
  the layer's width, formed per record directly (a few hundred numbers each).

So a single backward pass to the layers' outputs (``torch.autograd.grad``, no
parameter gradients) replaces the two passes of Opacus' ghost clipping, for
every parameter of the projection heads (`train-params` ``last``, ``all``,
``norms+biases``). Clipping follows Opacus exactly: factor
``min(1, C / (norm + 1e-6))`` on each record's gradient over all trained
parameters together. `train_record_level` falls back to Opacus' ghost
clipping when some trained parameter is in another kind of layer; tests check
both paths against batch-of-one gradients.

Packed layouts: by default row ``b`` of every layer input is record ``b``
(``[B, n, in]``, padded rows having a zero output gradient). With ``rows``, a
layer's input holds only real rows (``[M, in]``), and ``rows[layer]`` names
each one's (record, slot): the ghost norm scatters them into ``[B, n, in]``
(the same sums, without running the layer on padding) and the clipped sum is
one matmul over the real rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # as Opacus: clip factor = C / (norm + 1e-6), at most 1


def _supported(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1)


def clippable_layers(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Module] | None:
    """The Linear and LayerNorm layers holding every parameter in `params`, or None if some parameter is elsewhere."""
    wanted = {id(p) for p in params}
    layers = [m for m in model.modules() if _supported(m) and any(id(p) in wanted for p in m.parameters(recurse=False))]
    covered = {id(p) for m in layers for p in m.parameters(recurse=False) if id(p) in wanted}
    return layers if covered == wanted and layers else None


def _trained(p: nn.Parameter | None) -> bool:
    return p is not None and p.requires_grad


class BookkeepingClipper:
    """Records each trained layer's input and output during a forward pass; then clips and sums."""

    def __init__(self, layers: list[nn.Module]):
        self.layers = layers
        self._seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks = [m.register_forward_hook(self._keep) for m in layers]

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._seen[module] = (inputs[0].detach(), output)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def clipped_sum(self, losses: torch.Tensor, clip: float, rows: dict[nn.Module, tuple] | None = None
                    ) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
        """({param: sum over records of the record's clipped gradient}, per-record norms before clipping).

        losses: [B] per-record losses of the forward pass just run (row b of every layer input is record b).
        rows: optional {layer: (record [M], slot [M], slots n)} for layers whose input holds real rows only.
        """
        grads_out = torch.autograd.grad(losses.sum(), [self._seen[m][1] for m in self.layers])
        b = len(losses)
        sq = losses.new_zeros(b)
        pieces = []  # (param, (a, g, record of each row) of a Linear weight, or the [B, d] per-record gradients of a vector)
        for m, g in zip(self.layers, grads_out):
            a = self._seen[m][0]
            if rows is not None and m in rows:
                rec, slot, n = rows[m]
                a, g = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])  # [M, in], [M, out]

                def per_record(x: torch.Tensor) -> torch.Tensor:
                    return x.new_zeros(b, x.shape[-1]).index_add_(0, rec, x)

                def padded(x: torch.Tensor) -> torch.Tensor:
                    return x.new_zeros(b, n, x.shape[-1]).index_put_((rec, slot), x)
            else:
                a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # [B, n, in], [B, n, out]
                rec = None

                def per_record(x: torch.Tensor) -> torch.Tensor:
                    return x.sum(1)

                def padded(x: torch.Tensor) -> torch.Tensor:
                    return x
            if isinstance(m, nn.Linear):
                if _trained(m.weight):
                    pa, pg = padded(a), padded(g)
                    sq = sq + ((pa @ pa.transpose(1, 2)) * (pg @ pg.transpose(1, 2))).sum((1, 2))
                    pieces.append((m.weight, (a, g, rec)))
            elif _trained(m.weight):
                xhat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
                pieces.append((m.weight, per_record(g * xhat)))
            if _trained(m.bias):
                pieces.append((m.bias, per_record(g)))
        for _, piece in pieces:
            if not isinstance(piece, tuple):
                sq = sq + piece.pow(2).sum(1)
        norms = sq.clamp_min(0).sqrt()
        factor = (clip / (norms + EPS)).clamp(max=1.0)
        out: dict[nn.Parameter, torch.Tensor] = {}
        for p, piece in pieces:
            if isinstance(piece, tuple):
                a, g, rec = piece
                gc = g * (factor[:, None, None] if rec is None else factor[rec][:, None])
                out[p] = gc.reshape(-1, gc.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
            else:
                out[p] = (piece * factor[:, None]).sum(0)
        self._seen.clear()
        return out, norms.detach()
