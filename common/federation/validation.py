"""The server's checks of one site update before it may enter the aggregate.

An update is rejected (with a reason that goes into the run's log and
ledger; the round goes on with the others) if its array names differ from
the broadcast's, a shape or dtype differs, a value is NaN or infinite, or
the L2 norm of its change from the broadcast exceeds the bound. Under
site-level DP the bound is the clip norm: an unclipped update would break
the sensitivity the central noise is calibrated to. Otherwise it is a sanity
bound (twice the broadcast's norm by default) against a diverged or
malicious site. A record-level site scales its own update to that bound
before it sends (`scale_to_bound`; post-processing of the DP-SGD output, so
free in privacy): DP noise alone can carry a well-behaved site's update past
it, and the check then rejects only a site that does not follow the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

CLIP_SLACK = 1e-4  # relative float slack on the clip bound (clipping is done in float32 at the site)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    delta_norm: float = float("nan")


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in arrays.values())))


def max_delta_norm(privacy: str, clip_norm: float, configured: float, broadcast: Mapping[str, np.ndarray]) -> float:
    """The bound `validate_update` uses: configured if > 0, else the mode's default."""
    if privacy == "site":
        bound = clip_norm * (1 + CLIP_SLACK)
        return min(bound, configured) if configured > 0 else bound
    return configured if configured > 0 else max(2.0 * global_norm(broadcast), 1e-3)


def scale_to_bound(update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], bound: float,
                   slack: float = CLIP_SLACK) -> dict[str, np.ndarray]:
    """`update` with its change from `base` scaled down (same direction) to norm at most ``bound / (1 + slack)``.

    The slack keeps the float32 result inside the server's float64 check.
    """
    delta = {k: np.asarray(update[k], dtype=np.float64) - np.asarray(base[k], dtype=np.float64) for k in base}
    scale = min(1.0, bound / (1 + slack) / max(global_norm(delta), 1e-12))
    return {k: (np.asarray(base[k], dtype=np.float64) + scale * delta[k]).astype(np.float32) for k in base}


def validate_update(update: Mapping[str, np.ndarray], broadcast: Mapping[str, np.ndarray], max_norm: float) -> Verdict:
    missing = [k for k in broadcast if k not in update]
    extra = [k for k in update if k not in broadcast]
    if missing or extra:
        return Verdict(False, f"wrong keys: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, ref in broadcast.items():
        a = np.asarray(update[k])
        if a.shape != np.asarray(ref).shape:
            return Verdict(False, f"{k}: shape {a.shape} != {np.asarray(ref).shape}")
        if a.dtype != np.asarray(ref).dtype:
            return Verdict(False, f"{k}: dtype {a.dtype} != {np.asarray(ref).dtype}")
        if not np.isfinite(a).all():
            return Verdict(False, f"{k}: NaN or infinite values")
    norm = global_norm({k: np.asarray(update[k], dtype=np.float64) - np.asarray(broadcast[k], dtype=np.float64)
                        for k in broadcast})
    if not norm <= max_norm:
        return Verdict(False, f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}", norm)
    return Verdict(True, "", norm)
