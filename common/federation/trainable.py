"""Which student parameters train at a site and travel back, and what they weigh.

Spec (run-config ``train-params``):
- ``last`` (default): the last Linear layer (weight and bias) of each head.
  The update stays small (with minilm-effnet about 1% of the full model's
  bytes including the frozen trunks), DP noise is spread over fewer
  coordinates, and the rest of each head keeps the teacher's source solution.
- ``all``: every head parameter (LayerNorms included).
- ``norms+biases``: every LayerNorm's scale and shift and every Linear's bias
  (about 7,000 numbers with minilm-effnet): the per-dimension affine maps of
  the trunk features and hidden units. Under record-level DP-SGD the noise
  grows with the square root of the trained coordinates, so this is the
  setting that keeps a useful signal at small sites (BitFit-style DP fine-tuning).
- ``lowrank:R`` / ``lowrank:R+biases``: the B weights of the low-rank
  adapters in a public subspace (`common.models.low_rank`), R numbers per
  output of every Linear of both heads (with minilm-effnet and R = 8: 12,288
  numbers; ``+biases`` adds every bias of the heads, 1,536 more). The heads
  must carry adapters of rank R (`attach_low_rank`, from `public_bases`);
  plain heads raise. One-machine `grouped` runs and record-level `grouped`
  federations attach them; in a federation the server broadcasts the plain
  heads (`broadcast_names`: every head parameter, since ``W + B A`` moves
  every weight) and a site sends back only the B's (+ biases)
  (`update_shapes`; `common.federation.adapters`).
- a comma-separated list of parameter-name prefixes, e.g.
  ``text_head.net.4,image_head.net.4``; a prefix that matches nothing raises.

In per-record mode the text head stays the teacher's whatever the spec
(`trainable_for_mode`): see `common.train.adapt` for why.

Names come back in the heads' state-dict order, which is also the order of
the arrays on the wire (Flower's clipping mod requires the reply's keys in
the request's order).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from common.models.heads import DualHeads
from common.models.low_rank import adapters, attach_low_rank, layer_inputs, parse_spec


def trainable_names(heads: DualHeads, spec: str = "last") -> list[str]:
    spec = spec.strip()
    names = [n for n, _ in heads.named_parameters()]
    if spec == "all":
        return names
    low_rank = parse_spec(spec)
    if low_rank is not None:
        return _low_rank_names(heads, spec, *low_rank)
    if spec == "norms+biases":
        chosen = {n for n, _ in heads.named_parameters() if n.endswith(".bias")}
        for head_name in ("text_head", "image_head"):
            for mod_name, m in getattr(heads, head_name).named_modules():
                if isinstance(m, nn.LayerNorm):
                    chosen |= {f"{head_name}.{mod_name}.{p}" for p, _ in m.named_parameters()}
        return [n for n in names if n in chosen]
    if spec == "last":
        chosen = set()
        for head_name in ("text_head", "image_head"):
            head = getattr(heads, head_name)
            last = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
            chosen |= {f"{head_name}.{last}.{p}" for p, _ in getattr_path(head, last).named_parameters()}
        return [n for n in names if n in chosen]
    prefixes = [p.strip() for p in spec.split(",") if p.strip()]
    unmatched = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
    if unmatched:
        raise ValueError(f"train-params {unmatched} match no head parameter (names look like {names[:4]})")
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


def _low_rank_names(heads: DualHeads, spec: str, rank: int, biases: bool) -> list[str]:
    attached = adapters(heads)
    if not attached:
        raise ValueError(f"train-params={spec!r} needs low-rank adapters on the heads (common.models.low_rank."
                         f"attach_low_rank with public_bases); these heads have none")
    ranks = sorted({a.rank for a in attached.values()})
    if ranks != [rank]:
        raise ValueError(f"train-params={spec!r} asks for rank {rank}, the attached adapters have rank {ranks}")
    chosen = {f"{path}.B.weight" for path in attached}
    if biases:
        chosen |= {n for n, _ in heads.named_parameters() if n.endswith(".bias")}
    return [n for n, _ in heads.named_parameters() if n in chosen]


def trainable_for_mode(heads: DualHeads, spec: str, loss_mode: str) -> list[str]:
    """`trainable_names`, less the text head in ``per_record`` mode (its captions anchor the image head there)."""
    names = trainable_names(heads, spec)
    if loss_mode == "per_record":
        names = [n for n in names if not n.startswith("text_head.")]
        if not names:
            raise ValueError(f"train-params={spec!r} trains only the text head, which per-record mode keeps frozen")
    return names


def broadcast_names(heads: DualHeads, spec: str, loss_mode: str) -> list[str]:
    """What the server holds and sends as the global student: `trainable_for_mode`, or with ``lowrank:R`` every
    head parameter of the plain heads (the fold ``W += B A`` moves every weight)."""
    if parse_spec(spec) is not None:
        return [n for n, _ in heads.named_parameters()]
    return trainable_for_mode(heads, spec, loss_mode)


def with_zero_adapters(heads: DualHeads, rank: int) -> DualHeads:
    """A copy of plain ``heads`` with rank-``rank`` adapters on zero bases: the names and shapes a site trains."""
    out = copy.deepcopy(heads)
    feats = (torch.zeros(1, heads.image_dim), torch.zeros(1, heads.text_dim))
    return attach_low_rank(out, {p: torch.zeros(rank, rows.shape[1]) for p, rows in layer_inputs(out, *feats).items()})


def update_shapes(heads: DualHeads, spec: str, loss_mode: str) -> dict[str, tuple]:
    """name -> shape of what a site trains and sends back, in wire order (plain ``heads``). Equal to the
    broadcast's except with ``lowrank:R``: the adapters' B's (+ biases, under their attached names)."""
    low_rank = parse_spec(spec)
    if low_rank is None:
        params = dict(heads.named_parameters())
        return {n: tuple(params[n].shape) for n in trainable_for_mode(heads, spec, loss_mode)}
    attached = with_zero_adapters(heads, low_rank[0])
    params = dict(attached.named_parameters())
    return {n: tuple(params[n].shape) for n in trainable_names(attached, spec)}


def getattr_path(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def set_trainable(heads: DualHeads, names: list[str]) -> None:
    """requires_grad only on `names` (the optimiser and Opacus then touch nothing else)."""
    keep = set(names)
    for n, p in heads.named_parameters():
        p.requires_grad_(n in keep)


def get_arrays(heads: DualHeads, names: list[str]) -> dict[str, np.ndarray]:
    sd = heads.state_dict()
    return {n: sd[n].detach().cpu().numpy().astype(np.float32, copy=True) for n in names}


@torch.no_grad()
def load_arrays(heads: DualHeads, arrays: dict[str, np.ndarray]) -> None:
    """Copy `arrays` into the named parameters (shapes must match)."""
    params = dict(heads.named_parameters())
    for n, a in arrays.items():
        if n not in params:
            raise KeyError(f"{n!r} is not a parameter of the heads")
        t = torch.as_tensor(np.asarray(a), dtype=params[n].dtype)
        if t.shape != params[n].shape:
            raise ValueError(f"{n}: shape {tuple(t.shape)} != {tuple(params[n].shape)}")
        params[n].copy_(t)


def array_bytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def trunk_bytes(backbone) -> int:
    """Bytes of the frozen trunks' weights and buffers (they never travel)."""
    total = 0
    for mod in (backbone.text_module, backbone.image_module):
        total += sum(t.numel() * t.element_size() for t in mod.state_dict().values())
    return int(total)


def size_report(backbone, heads: DualHeads, names: list[str], update: dict[str, tuple] | None = None,
                extra_broadcast_bytes: int = 0, codec: str = "float32") -> dict:
    """Bytes of the model and of what travels. ``names``: the broadcast student's parameters; ``update``: name ->
    shape of a site's trained numbers when it differs from ``names`` (``lowrank:R``); ``extra_broadcast_bytes``:
    what else a train message carries (the low-rank bases); ``codec``: how a reply travels (`update_codec`)."""
    from common.federation.update_codec import reply_bytes

    heads_b = int(sum(t.numel() * t.element_size() for t in heads.state_dict().values()))
    down = array_bytes(get_arrays(heads, names)) + int(extra_broadcast_bytes)
    if update is None:
        update = {n: tuple(a.shape) for n, a in get_arrays(heads, names).items()}
    numbers = int(sum(int(np.prod(s)) for s in update.values()))
    update_b = reply_bytes(update, codec)  # on the wire: 4 bytes a number, or int8 plus a float32 scale per row
    full = trunk_bytes(backbone) + heads_b
    return {"trunk_bytes": full - heads_b, "heads_bytes": heads_b, "full_model_bytes": full,
            "update_bytes": update_b, "update_fraction_of_full_model": update_b / full, "update_codec": codec,
            "broadcast_bytes": down, "trainable_parameters": numbers, "trainable_names": list(update)}


# Record-level federations: which preset suits which site size. Emulated 10-site federations at epsilon 8
# (benchmarks/site_size.py, flat->outline, val R1; one run each, about +-1.5): 45 records per step `last` 13.3 /
# `all` 4.0; 150 per step 19.3 / 19.7 (level); 450 per step 25.7 / 34.3. Below ~100 records per step the noise on the
# whole image head's 787,200 numbers drowns its extra capacity; at 450 the capacity wins clearly. Between the level
# 150 and 450 nothing was measured: the advice starts at 300, about halfway on a log scale.
SMALL_STEP, LARGE_STEP = 100, 300


def train_params_advice(train_params: str, records_per_step: list[int]) -> str | None:
    """A suggestion for `train-params` under record-level DP from the sites' expected records per step, or None."""
    if not records_per_step:
        return None
    typical = sorted(records_per_step)[len(records_per_step) // 2]  # the median site
    spec = train_params.strip()
    if spec == "last" and typical >= LARGE_STEP:
        return (f"sites take about {typical} records per step: training the whole image head (--set train-params=all) "
                f"did better than 'last' at large sites (val R1 34.3 vs 25.7 at 450 records per step, level at 150, "
                f"epsilon 8; benchmarks/results/site_size.md)")
    if spec == "all" and typical < SMALL_STEP:
        return (f"sites take about {typical} records per step: at that size the noise on every head parameter drowns "
                f"their extra capacity; 'last' (--set train-params=last) did better (val R1 13.3 vs 4.0 at 45 "
                f"records per step, epsilon 8; benchmarks/results/site_size.md)")
    return None
