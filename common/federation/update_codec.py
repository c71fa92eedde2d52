"""How a site's reply travels: the run-config key ``update-codec``.

* ``float32`` (the default): the trained numbers as they are, 4 bytes each.
* ``int8``: the UPDATE (reply minus what it is measured from: the broadcast,
  or under ``lowrank:R`` zero B's and the broadcast biases) in 8-bit integers
  with one float32 scale per row (per output unit of a Linear; one per bias
  or other vector). Each row's scale is its largest absolute change / 127, and
  every number is rounded stochastically to the grid (up with probability
  equal to its fractional part), so the decoded update is unbiased: the
  server's mean over sites is the mean of the sites' updates plus a zero-mean
  rounding error of at most one grid step per number. That is QSGD-style
  stochastic quantisation (Alistarh et al., NeurIPS 2017) with per-row scales.
  About a quarter of the float32 bytes: with minilm-effnet heads, training
  ``all`` sends 1.12 MB instead of 4.46 MB.

Privacy: the codec reads only what the site would otherwise send (its
post-DP update under ``record``), so it is post-processing and changes no
guarantee; the rounding draws come from a generator seeded by run seed, site
and round, never from the private data. Site-level DP (``site``) is refused:
there the server's clipping wrapper needs the float update itself.

A reply under ``int8`` holds, for every trained name ``n`` in order, ``n``
(int8, the parameter's shape) and then ``n#scale`` (float32, one per row).
`decode` checks names, shapes, dtypes and finiteness, and raises ValueError
with the reason (the server rejects such a reply, it never guesses).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CODECS = ("float32", "int8")
SCALE = "#scale"
LEVELS = 127  # int8 grid: -127..127 (symmetric, so 0 is exact)


def _rows(shape: tuple) -> int:
    return int(shape[0]) if len(shape) > 1 else 1


def reply_shapes(expected: Mapping[str, tuple], codec: str) -> dict[str, tuple]:
    """name -> shape of every array a reply carries under ``codec`` (the outbound schema's ``expected``)."""
    if codec == "float32":
        return {n: tuple(s) for n, s in expected.items()}
    if codec != "int8":
        raise ValueError(f"update-codec {codec!r}: expected one of {', '.join(CODECS)}")
    out: dict[str, tuple] = {}
    for n, s in expected.items():
        out[n] = tuple(s)
        out[n + SCALE] = (_rows(tuple(s)),)
    return out


def reply_bytes(expected: Mapping[str, tuple], codec: str) -> int:
    """Bytes of a reply's arrays on the wire under ``codec``."""
    per = {"float32": 4, "int8": 1}
    total = 0
    for n, s in reply_shapes(expected, codec).items():
        total += int(np.prod(s)) * (4 if n.endswith(SCALE) else per[codec])
    return total


def encode(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], codec: str,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The reply's arrays: float32 as they are, or (``int8``) the update from ``reference`` quantised."""
    if codec == "float32":
        return {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in arrays.items()}
    reply_shapes({n: np.shape(v) for n, v in arrays.items()}, codec)  # names the codec
    out: dict[str, np.ndarray] = {}
    for n, v in arrays.items():
        v = np.asarray(v, dtype=np.float64)
        rows = (v - np.asarray(reference[n], dtype=np.float64)).reshape(_rows(v.shape), -1)
        top = np.abs(rows).max(axis=1)
        scale = (top / LEVELS).astype(np.float32)
        safe = np.where(scale > 0, scale.astype(np.float64), 1.0)[:, None]
        x = rows / safe
        q = np.floor(x + rng.random(x.shape))  # stochastic rounding: E[q] = x
        out[n] = np.clip(q, -LEVELS, LEVELS).astype(np.int8).reshape(v.shape)
        out[n + SCALE] = scale
    return out


def decode(reply: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], codec: str) -> dict[str, np.ndarray]:
    """The float32 arrays a reply stands for (``reference`` + the decoded update); ValueError with the reason if the
    reply is not a well-formed ``codec`` reply for these names and shapes."""
    if codec == "float32":
        return {n: np.asarray(v) for n, v in reply.items()}
    want = reply_shapes({n: np.shape(v) for n, v in reference.items()}, codec)
    if list(reply) != list(want):
        raise ValueError(f"an int8 reply must hold {list(want)[:4]}..., got {list(reply)[:4]}...")
    out: dict[str, np.ndarray] = {}
    for n, ref in reference.items():
        q, scale = np.asarray(reply[n]), np.asarray(reply[n + SCALE])
        if q.dtype != np.int8 or q.shape != np.shape(ref):
            raise ValueError(f"{n}: expected int8 of shape {np.shape(ref)}, got {q.dtype} {q.shape}")
        if scale.dtype != np.float32 or scale.shape != want[n + SCALE]:
            raise ValueError(f"{n}{SCALE}: expected float32 of shape {want[n + SCALE]}, got {scale.dtype} {scale.shape}")
        if not np.all(np.isfinite(scale)) or np.any(scale < 0):
            raise ValueError(f"{n}{SCALE}: scales must be finite and non-negative")
        delta = q.reshape(scale.shape[0], -1).astype(np.float64) * scale.astype(np.float64)[:, None]
        out[n] = (np.asarray(ref, dtype=np.float64) + delta.reshape(np.shape(ref))).astype(np.float32)
    return out
