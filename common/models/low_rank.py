"""Low-rank adapters in a public subspace: the `train-params` spec ``lowrank:R`` (``lowrank:R+biases``).

Under record-level DP-SGD the noise norm grows with the square root of the
trained numbers, so training every head parameter (about 1.1M numbers with
minilm-effnet) drowns the signal at small sites. Here each `nn.Linear` of both
heads, ``y = W x + b``, becomes ``y = W x + b + B (A x)``:

* ``A`` (R x in) is FROZEN: its rows are an orthonormal basis of the top-R
  principal directions of that layer's input when the heads run on PUBLIC
  data (the source anchor bank, `common.train.site_context.PublicBank`), under
  a teacher that is itself public or released. ``A`` never reads a private
  target record, so it is post-processing of released data and costs no
  privacy; the trained ``B`` sees records only through the existing clipped,
  noised gradients.
* ``B`` (out x R) trains and starts at zero, so attached heads compute exactly
  what the plain heads did.

With ``A`` fixed and shared, the update ``B A`` is linear in ``B``: averaging
``B``'s (a weight average, a momentum teacher, a federation's mean) averages the
updates exactly. That is FFA-LoRA (Sun, Li, Ding, Li: "Improving LoRA in
Privacy-preserving Federated Learning", ICLR 2024), which freezes LoRA's
randomly initialised ``A`` for the same reason; here ``A`` is chosen from public
data, so that the rank-R update acts on the directions the layer's inputs
actually occupy.

Why the UNCENTRED principal directions (top right singular vectors of the raw
input rows, i.e. eigenvectors of ``E[x x^T]``): an update ``Delta W`` changes the
output by ``Delta W x``, mean included, and ``W``'s gradient ``sum_n g_n x_n^T``
has its rows in the span of the raw inputs. The uncentred top-R subspace keeps
the most of ``E |x|^2`` (of the inputs' energy) that any R-dimensional subspace
can; centring would drop the mean direction, which carries much of the energy of
post-GELU hidden units and of trunk features, unless the biases train.

The ``+biases`` variant also trains every bias of the heads (the base Linears'
and, where heads have LayerNorms, their shifts): a few hundred numbers per
layer, BitFit-style, which moves outputs along directions ``B A x`` cannot
(a constant shift). The bias lives in the wrapped Linear, so merging keeps it.

`merge_low_rank` folds ``W' = W + B A`` back into plain `nn.Linear` layers with
the original state-dict keys and shapes, so checkpoints, evaluation and the
federation see ordinary heads.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from common.models.heads import DualHeads

HEADS = ("image_head", "text_head")
_SPEC = re.compile(r"lowrank:(\d+)(\+biases)?")


class LowRankLinear(nn.Module):
    """``base(x) + B(A(x))``: a frozen Linear plus a rank-R update in the frozen row space ``A``."""

    def __init__(self, base: nn.Linear, basis: torch.Tensor):
        super().__init__()
        rank, width = basis.shape
        if width != base.in_features:
            raise ValueError(f"basis has {width} columns, the Linear takes {base.in_features} inputs")
        self.base = base
        w = base.weight
        # built on the meta device and then given their weights: no random initialisation, so attaching leaves
        # torch's global random stream alone
        self.A = nn.Linear(base.in_features, rank, bias=False, device="meta")
        self.B = nn.Linear(rank, base.out_features, bias=False, device="meta")
        self.A.weight = nn.Parameter(basis.detach().to(w.device, w.dtype).clone(), requires_grad=False)
        self.B.weight = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        w.requires_grad_(False)
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.B(self.A(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base Linear with ``W + B A`` folded into its weight (in place) and its bias as it is."""
        self.base.weight.add_(self.B.weight @ self.A.weight)
        return self.base


def parse_spec(spec: str) -> tuple[int, bool] | None:
    """(R, biases train) for ``lowrank:R`` / ``lowrank:R+biases``; None for any other spec."""
    spec = spec.strip()
    if not spec.startswith("lowrank"):
        return None
    m = _SPEC.fullmatch(spec)
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"train-params {spec!r}: expected lowrank:R or lowrank:R+biases with R a positive integer")
    return int(m.group(1)), m.group(2) is not None


def _linears(heads: DualHeads) -> list[tuple[str, nn.Linear]]:
    """(path, layer) of every Linear of both heads, image head first."""
    return [(f"{h}.{n}", m) for h in HEADS for n, m in getattr(heads, h).named_modules() if isinstance(m, nn.Linear)]


def adapters(heads: nn.Module) -> dict[str, LowRankLinear]:
    """{path: adapter} of every attached adapter, in module order."""
    return {n: m for n, m in heads.named_modules() if isinstance(m, LowRankLinear)}


@torch.no_grad()
def layer_inputs(heads: DualHeads, image_feats: torch.Tensor, text_feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """{Linear path: [N, in] rows that Linear receives} when the plain heads embed these features."""
    if adapters(heads):
        raise ValueError("layer inputs are read from plain heads: merge the attached adapters first")
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, path=path: seen.__setitem__(path, inp[0].detach()))
             for path, m in _linears(heads)]
    try:
        heads.image_head(image_feats)
        heads.text_head(text_feats)
    finally:
        for h in hooks:
            h.remove()
    return {path: seen[path].reshape(-1, seen[path].shape[-1]) for path, _ in _linears(heads)}


@torch.no_grad()
def top_directions(rows: torch.Tensor, rank: int) -> torch.Tensor:
    """[rank, d]: orthonormal top right singular vectors of ``rows`` (uncentred PCA), computed in float64.

    The SVD is deterministic (no random start); each vector's sign is fixed so that its largest entry is positive,
    so the same public rows always give the same basis.
    """
    n, d = rows.shape
    if rank > min(n, d):
        raise ValueError(f"rank {rank} exceeds min(public rows {n}, input width {d})")
    _, _, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    v = vh[:rank]
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    return v * sign


def public_bases(heads: DualHeads, public_image_feats: torch.Tensor, public_text_feats: torch.Tensor,
                 rank: int) -> dict[str, torch.Tensor]:
    """{Linear path: [rank, in] A rows} for every Linear of both heads: the top-``rank`` uncentred principal
    directions of that layer's input when ``heads`` embed PUBLIC features only (module docstring)."""
    if rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    dtype = next(heads.parameters()).dtype
    bases = {}
    for path, rows in layer_inputs(heads, public_image_feats.to(dtype), public_text_feats.to(dtype)).items():
        try:
            bases[path] = top_directions(rows, rank).to(dtype)
        except ValueError as e:
            raise ValueError(f"public bases for {path}: {e}") from None
    return bases


def _parent(heads: nn.Module, path: str) -> tuple[nn.Module, str]:
    *up, name = path.split(".")
    module = heads
    for part in up:
        module = getattr(module, part)
    return module, name


def attach_low_rank(heads: DualHeads, bases: dict[str, torch.Tensor]) -> DualHeads:
    """Wraps every Linear of both heads in a `LowRankLinear` with its basis (B = 0), IN PLACE; returns ``heads``.

    ``bases`` must name exactly the heads' Linears (`public_bases` does). Every base weight is frozen; what else
    trains is set by `common.federation.trainable` (``lowrank:R``: the B weights).
    """
    if adapters(heads):
        raise ValueError("the heads already carry low-rank adapters: merge them first")
    paths = [p for p, _ in _linears(heads)]
    if sorted(bases) != sorted(paths):
        raise ValueError(f"bases name {sorted(bases)}, the heads' Linears are {sorted(paths)}")
    for path, layer in _linears(heads):
        parent, name = _parent(heads, path)
        setattr(parent, name, LowRankLinear(layer, bases[path].to(layer.weight.dtype)))
    return heads


def merge_low_rank(heads: DualHeads) -> DualHeads:
    """Folds every adapter into its Linear (``W' = W + B A``, the base bias kept), IN PLACE; returns ``heads``,
    now plain, with the original state-dict keys and shapes. Heads without adapters come back unchanged."""
    for path, ad in adapters(heads).items():
        parent, name = _parent(heads, path)
        setattr(parent, name, ad.merged())  # the same Linear object: its parameters keep their state-dict keys
    return heads


def trained_numbers(heads: nn.Module) -> int:
    """How many numbers of ``heads`` train (requires_grad): what DP-SGD noises."""
    return int(sum(p.numel() for p in heads.parameters() if p.requires_grad))
