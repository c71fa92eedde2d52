"""Low-rank adapters on the federation's wire: ``train-params=lowrank:R`` (``lowrank:R+biases``), record-level grouped.

Per round:

1. The SERVER computes the bases ``A`` (`round_bases`): `public_bases` of the
   round's broadcast student on the public source anchor bank (trunk features
   only the server holds; a site holds the bank only as the teacher's output
   embeddings, so a site could not compute ``A`` itself). The broadcast
   student rather than the teacher: the adapters wrap the student's Linears,
   and a hidden Linear's inputs are the student's own hidden units. ``A``
   reads only public features and a released student, so it is public.
2. The train message carries the plain student (every head parameter) and,
   in a second array record ``bases``, ``A`` (``A.<Linear path>``, R x in,
   orthonormal rows; counted in the bytes sent). The site attaches
   ``W + B A`` (B = 0) with exactly these bases (`attach`), trains the B's
   (and biases) under group clipping, and replies with ONLY what trained
   (`common.federation.trainable.update_shapes`).
3. The server averages the replies and folds ``W += mean(B) A`` with its own
   copy of ``A`` (`fold`): exact, because ``A`` is the same for everyone
   (FFA-LoRA). The next round broadcasts plain heads again.

One source of ``A`` and no copy coming back: the server never has to check that
sites agree on ``A``. A site that trained against another ``A`` only sends B's
whose fold is some other bounded update; the usual checks bound it
(`common.federation.validation`). Because ``A``'s rows are orthonormal,
``|B A|_F = |B|_F``: the norm of an update measured on the reply (`reference`:
zero B's, the broadcast biases) is its norm in plain-weight space, so the
server's bound and the site's `scale_to_bound` mean what they mean for plain
updates.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch

from common.federation.trainable import get_arrays, load_arrays, set_trainable, trainable_names, with_zero_adapters
from common.models.heads import DualHeads
from common.models.low_rank import attach_low_rank, layer_inputs, parse_spec, public_bases

BASES = "bases"  # the train message's array record holding A
PREFIX = "A."
B_SUFFIX = ".B.weight"
ORTHONORMAL_TOL = 1e-3  # |A A^T - I|_max a site accepts (float32 bases from a float64 SVD are within ~1e-6)


def rank_of(spec: str) -> int | None:
    parsed = parse_spec(spec)
    return None if parsed is None else parsed[0]


@torch.no_grad()
def round_bases(student: DualHeads, bank_image_feats: torch.Tensor, bank_text_feats: torch.Tensor,
                rank: int) -> dict[str, np.ndarray]:
    """{``A.<path>``: [rank, in] float32}: `public_bases` of ``student`` (plain) on the public bank, packed."""
    bases = public_bases(student, bank_image_feats, bank_text_feats, rank)
    return {PREFIX + p: b.detach().cpu().numpy().astype(np.float32) for p, b in bases.items()}


def unpack_bases(arrays: Mapping[str, np.ndarray], heads: DualHeads, rank: int) -> dict[str, torch.Tensor]:
    """{Linear path: A} from a train message's ``bases`` record; raises unless it names exactly the heads' Linears
    with [rank, in] finite orthonormal rows."""
    feats = (torch.zeros(1, heads.image_dim), torch.zeros(1, heads.text_dim))
    widths = {p: rows.shape[1] for p, rows in layer_inputs(heads, *feats).items()}
    want = sorted(PREFIX + p for p in widths)
    if sorted(arrays) != want:
        raise ValueError(f"the bases record names {sorted(arrays)[:4]}, expected {want[:4]} (one A per Linear)")
    out = {}
    for p, width in widths.items():
        a = np.asarray(arrays[PREFIX + p])
        if a.shape != (rank, width) or not np.isfinite(a).all():
            raise ValueError(f"basis {p}: shape {a.shape} (expected {(rank, width)}) or non-finite values")
        gap = np.abs(a.astype(np.float64) @ a.T.astype(np.float64) - np.eye(rank)).max()
        if gap > ORTHONORMAL_TOL:
            raise ValueError(f"basis {p}: rows are not orthonormal (|A A^T - I| = {gap:.3g})")
        out[p] = torch.from_numpy(a.astype(np.float32))
    return out


def attach(heads: DualHeads, bases: Mapping[str, torch.Tensor], spec: str) -> list[str]:
    """Attach the adapters (B = 0) in place and make only ``spec``'s numbers train; returns their names."""
    attach_low_rank(heads, dict(bases))
    names = trainable_names(heads, spec)
    set_trainable(heads, names)
    return names


def reference(plain: DualHeads, broadcast: Mapping[str, np.ndarray], spec: str) -> dict[str, np.ndarray]:
    """The reply a site that trained nothing would send: zero B's and the broadcast's biases, in wire order.

    Updates are checked and scaled against it (its difference from a reply is the update in plain-weight space,
    up to the orthonormal ``A``). Built on a copy with zero bases; ``plain`` is left alone.
    """
    heads = copy.deepcopy(plain)
    load_arrays(heads, dict(broadcast))
    heads = with_zero_adapters(heads, rank_of(spec))
    return get_arrays(heads, trainable_names(heads, spec))


def plain_name(reply_name: str) -> str:
    """The broadcast parameter a reply's bias lands in (``X.base.bias`` -> ``X.bias``; LayerNorm biases as they are)."""
    return reply_name.replace(".base.", ".")


def fold(broadcast: Mapping[str, np.ndarray], bases: Mapping[str, np.ndarray],
         mean_reply: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The new plain student: ``W + mean(B) A`` for every adapted Linear, the mean bias for every trained bias,
    every other parameter as broadcast (float64 arithmetic, float32 out, the broadcast's keys and order)."""
    out = {k: np.asarray(v, dtype=np.float64).copy() for k, v in broadcast.items()}
    for name, value in mean_reply.items():
        v = np.asarray(value, dtype=np.float64)
        if name.endswith(B_SUFFIX):
            path = name[: -len(B_SUFFIX)]
            out[path + ".weight"] += v @ np.asarray(bases[PREFIX + path], dtype=np.float64)
        else:
            target = plain_name(name)
            if target not in out or out[target].shape != v.shape:
                raise KeyError(f"reply array {name!r} matches no broadcast parameter")
            out[target] = v
    return {k: v.astype(np.float32) for k, v in out.items()}
