"""Privacy accounting over a plain-data history, on top of Opacus' accountants.

The accountant state is what Opacus keeps: a list of
``(noise_multiplier, sample_rate, steps)`` tuples, one per run of identical
Poisson-subsampled Gaussian mechanisms (sensitivity 1, noise std =
noise_multiplier). A non-subsampled Gaussian release is ``(sigma, 1.0, 1)``.
Because the state is plain data it can be persisted per site, sent as metrics
and recomputed by anyone; nothing here ever resets it.

Privacy unit and neighbouring relation: whatever the caller's history was
produced under (one record at a site for DP-SGD and DP k-means, one site's
whole dataset for site-level DP). This module only composes; it cannot check
that the mechanisms really had sensitivity 1 under that relation.

Accountants:
- ``"rdp"`` (primary): Opacus' RDP analysis (Mironov et al. 2019 for the
  subsampled Gaussian; RDP-to-(eps, delta) conversion of Balle et al. 2020,
  Thm. 21, as in Opacus 1.6) over ``RDPAccountant.DEFAULT_ALPHAS``. The
  per-step RDP vector of each ``(sigma, q)`` is cached; the sum and the
  conversion are the same arithmetic as ``RDPAccountant.get_epsilon``.
  When the optimal order sits at the edge of the order grid, Opacus warns;
  the bound is still valid (just possibly loose) and the warning is kept in
  ``EpsilonResult.warnings`` instead of being printed or filtered.
- ``"prv"``: ``PRVAccountant`` (Gopi et al. 2021), upper bound. It can fail
  (exceptions, numerical overflow, an infinite result, or a discretisation
  grid too large to compute). Every failure raises ``AccountingError``; there
  is no silent fallback to RDP.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

Entry = tuple[float, float, int]
History = list[Entry]
ACCOUNTANTS = ("rdp", "prv")
ALPHAS: tuple[float, ...] = tuple(RDPAccountant.DEFAULT_ALPHAS)
MAX_SIGMA = 1e6  # as in opacus.accountants.utils: beyond this the budget is unreachable
PRV_EPS_ERROR = 0.01  # Opacus' default eps_error for PRVAccountant.get_epsilon
PRV_MAX_GRID = 10_000_000  # ~20 s on 2 cores; larger grids took minutes and returned inf
# numpy's log(1 - q) at q == 1 inside Opacus' PRV; masked there by np.where, harmless.
_BENIGN_PRV_WARNING = "divide by zero encountered in log"


class AccountingError(RuntimeError):
    """Epsilon could not be computed (or a target cannot be met). Report it; never fall back silently."""

    def __init__(self, accountant: str, reason: str, history: Sequence[Entry] = (), delta: float | None = None):
        self.accountant = accountant
        self.reason = reason
        self.history = [tuple(e) for e in history]
        self.delta = delta
        super().__init__(f"[{accountant}] {reason} (delta={delta}, history={self.history})")


@dataclass(frozen=True)
class EpsilonResult:
    epsilon: float
    delta: float
    accountant: str
    # RDP order that gave the bound; None for PRV, which has no order.
    best_alpha: float | None = None
    # Empty unless Opacus warned (e.g. optimal order at the edge of the grid): kept, not hidden.
    warnings: tuple[str, ...] = ()


def as_entry(e: Sequence) -> Entry:
    """Validate one ``(noise_multiplier, sample_rate, steps)`` entry (e.g. read back from JSON)."""
    if len(e) != 3:
        raise ValueError(f"history entry must be (noise_multiplier, sample_rate, steps), got {e!r}")
    sigma, q, steps = e
    sigma, q = float(sigma), float(q)
    if isinstance(steps, bool) or not float(steps).is_integer():
        raise ValueError(f"steps must be an integer, got {steps!r}")
    steps = int(steps)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {sigma}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"sample_rate must be in [0, 1], got {q}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return (sigma, q, steps)


def merge_history(*parts: Iterable[Sequence]) -> History:
    """Concatenate histories, merging adjacent entries with equal (sigma, q) as Opacus' ``step`` does.

    Zero-step entries are dropped (they compose to nothing). Order is otherwise
    kept: composition is commutative, but the order is part of the audit trail.
    """
    out: History = []
    for part in parts:
        for raw in part:
            sigma, q, steps = as_entry(raw)
            if steps == 0:
                continue
            if out and out[-1][0] == sigma and out[-1][1] == q:
                out[-1] = (sigma, q, out[-1][2] + steps)
            else:
                out.append((sigma, q, steps))
    return out


def gaussian_release(noise_multiplier: float) -> Entry:
    """History entry for one non-subsampled Gaussian mechanism of L2-sensitivity 1
    (noise std = noise_multiplier x sensitivity): ``(sigma, 1.0, 1)``."""
    return as_entry((noise_multiplier, 1.0, 1))


@lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> tuple[float, ...]:
    return tuple(rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ALPHAS)))


def _rdp_vector(history: Sequence[Entry]) -> np.ndarray:
    # Same arithmetic as RDPAccountant.get_privacy_spent: sum over entries of compute_rdp(...) * steps.
    return sum([np.asarray(_rdp_per_step(s, q)) * n for s, q, n in history])


def _rdp_result(rdp_vec: np.ndarray, delta: float) -> EpsilonResult:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps, alpha = rdp_analysis.get_privacy_spent(orders=list(ALPHAS), rdp=rdp_vec, delta=delta)
    msgs = tuple(dict.fromkeys(str(w.message) for w in caught))
    best = None if np.isnan(alpha) else float(alpha)
    return EpsilonResult(float(eps), delta, "rdp", best, msgs)


def _prv_grid_size(history: Sequence[Entry], delta: float) -> float:
    """Points of the grid PRVAccountant would discretise on (mirrors ``PRVAccountant._get_domain``)."""
    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(q, s) for s, q, _ in history]
    steps = [n for _, _, n in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # only sizes the grid; the real run below records its warnings
        half_width = compute_safe_domain_size(prvs, steps, PRV_EPS_ERROR, delta_error)
    mesh = PRV_EPS_ERROR / math.sqrt(sum(steps) * math.log(12 / delta_error) / 2)
    return 2 * half_width / mesh


def _prv_result(history: Sequence[Entry], delta: float, max_grid: int) -> EpsilonResult:
    if any(s == 0 for s, _, _ in history):
        raise AccountingError("prv", "a noise multiplier of 0 (no noise) has no finite epsilon", history, delta)
    grid = _prv_grid_size(history, delta)
    if not grid <= max_grid:
        raise AccountingError("prv", f"PRV would discretise on {grid:.3g} points (limit {max_grid:.3g}); "
                              "this regime is known to fail or return inf. Use rdp.", history, delta)
    acc = PRVAccountant()
    acc.history = list(history)
    has_q1 = any(q == 1.0 for _, q, _ in history)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            eps = float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        except Exception as ex:  # Opacus raises ValueError/RuntimeError/OverflowError here
            raise AccountingError("prv", f"{type(ex).__name__}: {ex}", history, delta) from ex
    kept: list[str] = []
    for w in caught:
        msg = str(w.message)
        if has_q1 and msg == _BENIGN_PRV_WARNING and issubclass(w.category, RuntimeWarning):
            continue
        if issubclass(w.category, RuntimeWarning):  # overflow / invalid value: result untrustworthy
            raise AccountingError("prv", f"numerical problem: {msg}", history, delta)
        kept.append(msg)
    if not math.isfinite(eps):
        raise AccountingError("prv", f"PRV returned {eps}", history, delta)
    return EpsilonResult(eps, delta, "prv", None, tuple(dict.fromkeys(kept)))


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return delta


def _effective(history: Iterable[Sequence]) -> History:
    # q == 0 never touches the data and steps == 0 never runs: both spend nothing.
    return [e for e in merge_history(history) if e[1] > 0.0]


def compute_epsilon(history: Iterable[Sequence], delta: float, accountant: str = "rdp",
                    prv_max_grid: int = PRV_MAX_GRID) -> EpsilonResult:
    """Epsilon spent by ``history`` at ``delta``, with any accountant warnings attached."""
    delta = _check_delta(delta)
    hist = _effective(history)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not hist:
        return EpsilonResult(0.0, delta, accountant)
    if accountant == "rdp":
        return _rdp_result(_rdp_vector(hist), delta)
    return _prv_result(hist, delta, prv_max_grid)


def epsilon(history: Iterable[Sequence], delta: float, accountant: str = "rdp") -> float:
    """Epsilon only. Raises ``AccountingError`` where the accountant fails (PRV)."""
    return compute_epsilon(history, delta, accountant).epsilon


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         accountant: str = "rdp", prior_history: Iterable[Sequence] = (),
                         rel_tol: float = 1e-3) -> float:
    """Smallest sigma (to ``rel_tol``) with ``epsilon(prior_history + [(sigma, q, steps)]) <= target``.

    Binary search on the accountant (epsilon decreases with sigma). The returned
    value is always one that was checked to meet the target; with ``"prv"`` a
    sigma where PRV fails counts as not meeting it (fail closed). Raises
    ``AccountingError`` if the prior spending alone reaches the target or no
    sigma up to ``MAX_SIGMA`` meets it.
    """
    prior = merge_history(prior_history)
    sample_rate, steps = as_entry((1.0, sample_rate, steps))[1:]
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
    if steps == 0 or sample_rate == 0.0:
        raise ValueError("nothing to calibrate: steps and sample_rate must be > 0")
    if accountant == "rdp":  # prior RDP vector computed once; same result as compute_epsilon
        _check_delta(delta)
        base = _rdp_vector(_effective(prior)) if _effective(prior) else 0.0

        def eps_at(sigma: float) -> float:
            return _rdp_result(base + np.asarray(_rdp_per_step(sigma, sample_rate)) * steps, delta).epsilon
    else:
        def eps_at(sigma: float) -> float:
            # Fail closed: a sigma whose epsilon PRV cannot compute counts as not meeting the target.
            try:
                return compute_epsilon(prior + [(sigma, sample_rate, steps)], delta, accountant).epsilon
            except AccountingError:
                return math.inf

    prior_eps = compute_epsilon(prior, delta, accountant).epsilon
    if prior_eps >= target_epsilon:
        raise AccountingError(accountant, f"prior spending {prior_eps:.4g} already reaches target {target_epsilon}",
                              prior, delta)
    lo, hi = 0.0, 1.0
    while eps_at(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > MAX_SIGMA:
            raise AccountingError(accountant, f"no noise multiplier <= {MAX_SIGMA:g} meets epsilon {target_epsilon}",
                                  prior, delta)
    if lo == 0.0:  # 1.0 already meets the target: shrink until it does not
        while hi > 1e-6 and eps_at(hi / 2) <= target_epsilon:
            hi /= 2
        lo = hi / 2
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if eps_at(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
