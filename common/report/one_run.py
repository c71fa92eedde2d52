"""Empirical lower bound on epsilon from one training run (Steinke, Nasr & Jagielski 2023).

Reference: T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023, arXiv:2305.08846.

Setting (theirs, unchanged). ``m`` canaries; each is included in the training
data independently with probability 1/2 (a secret coin ``S_i``). The auditor
sees the trained model, scores every canary, and guesses "in" (``T_i = +1``),
"out" (``T_i = -1``) or abstains (``T_i = 0``); ``r`` guesses are made (no
abstention on them) and ``v`` of them are correct. The mechanism audited is the
map from the inclusion vector to the model, and the neighbouring relation is
adding/removing one canary: the record-level relation of DP-SGD.

Statement implemented: the paper's main result for approximate DP, the bound
its Appendix D code ``p_value_DP_audit`` evaluates (cited by other
implementations as Corollary 5.4 of arXiv v1; the numbering was not
re-checked here, so the statement is written out in full):

    If the training is (eps, delta)-DP, then for every v,
        P[W >= v] <= f(v) + 2 m delta * max_{1<=i<=v} (f(v-i) - f(v)) / i,
    where W is the number of correct guesses, f(v) = P[Binomial(r, p) >= v]
    and p = e^eps / (1 + e^eps).

``p_value(m, r, v, eps, delta)`` is that right-hand side (capped at 1). The
empirical lower bound at confidence 1 - beta is the largest eps whose p-value is
still below beta: observing v correct guesses would be implausible (p < beta)
for any (eps', delta)-DP mechanism with eps' <= that eps. It is found as in
Appendix D (grow an upper bracket by 1, then bisect) with 40 bisection steps
and returning the low end of the bracket (conservative: the reported value is
one that was verified to be rejected). With delta = 0 this is the pure-DP form,
P[W >= v] <= f(v). This implementation reproduces the paper's examples as
other implementations quote them (0.673 for m=1000, r=100, v=75,
delta=1e-4; 2.675 for m=1e5, r=1510, v=1439, delta=1e-5; both at beta=0.05).

Guess rule (their "abstention" form): guess "in" for the ``k_plus`` highest
scores and "out" for the ``k_minus`` lowest, abstain on the rest. Choosing the
k that gives the best bound after seeing the outcome would void the
confidence level; ``best_bound`` therefore tries a FIXED list of k values and
tests each at beta / len(list) (Bonferroni), so the maximum over the list is
still a valid (1 - beta) lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

BETA = 0.05  # 95% confidence, as in the paper's experiments
BISECTION_STEPS = 40  # bracket width 2^-40 of at most a few units: far below any printed digit


def _check(m: int, r: int, v: int, delta: float) -> None:
    for name, x in (("m", m), ("r", r), ("v", v)):
        if isinstance(x, bool) or int(x) != x:
            raise ValueError(f"{name} must be an integer, got {x!r}")
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"need 0 <= delta < 1, got {delta}")


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Upper bound on P[>= v correct of r guesses] for an (eps, delta)-DP mechanism with m canaries."""
    _check(m, r, v, delta)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    p = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, p))  # f(v) = P[Binomial(r, p) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # (f(v-i) - f(v)) = P[v-i <= Binomial(r, p) < v], accumulated term by term as in Appendix D
    i = np.arange(1, v + 1)
    between = np.cumsum(stats.binom.pmf(v - i, r, p))
    alpha = float(np.max(between / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float = BETA) -> float:
    """Largest eps rejected at level beta (0.0 when even eps = 0 is not rejected)."""
    _check(m, r, v, delta)
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p_value(lo) < beta <= p_value(hi)
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi + 1.0
        if hi > 1e4:  # cannot happen for r >= 1 (f(v) -> 1 as eps grows unless v > r)
            raise ValueError("no finite upper bracket for the lower bound")
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class GuessOutcome:
    k_plus: int  # guesses "in" (highest scores)
    k_minus: int  # guesses "out" (lowest scores)
    correct: int  # v
    guesses: int  # r = k_plus + k_minus
    epsilon_lower: float  # at level beta_each
    beta_each: float  # the level this k was tested at (beta / number of k tried)


def guess(scores: Sequence[float], included: Sequence[bool], k_plus: int, k_minus: int) -> tuple[int, int]:
    """(correct, guesses) of the top-k_plus "in" / bottom-k_minus "out" rule. Ties broken by index."""
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise ValueError("scores and included must be 1-d and of equal length")
    if np.isnan(s).any():
        raise ValueError("a canary score is NaN")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > len(s):
        raise ValueError(f"need k_plus + k_minus <= m, got {k_plus} + {k_minus} > {len(s)}")
    order = np.argsort(-s, kind="stable")  # highest score first
    top, bottom = order[:k_plus], order[len(s) - k_minus:]
    correct = int(inc[top].sum() + (~inc[bottom]).sum())
    return correct, k_plus + k_minus


def default_ks(m: int) -> list[int]:
    """k (per side) tried by default: 5%, 10%, 25% and 50% of m, at least 1 (fixed before any scores exist)."""
    return sorted({max(1, int(round(f * m))) for f in (0.05, 0.10, 0.25, 0.5)} - {0})


def best_bound(scores: Sequence[float], included: Sequence[bool], delta: float, ks: Sequence[int] | None = None,
               beta: float = BETA) -> tuple[float, list[GuessOutcome]]:
    """Lower bound at confidence 1 - beta over a fixed list of k (k "in" and k "out" each), Bonferroni-corrected."""
    m = len(scores)
    ks = list(ks) if ks is not None else default_ks(m)
    ks = [k for k in ks if 2 * k <= m] or [m // 2]
    beta_each = beta / len(ks)
    outcomes = []
    for k in ks:
        v, r = guess(scores, included, k, k)
        outcomes.append(GuessOutcome(k, k, v, r, epsilon_lower_bound(m, r, v, delta, beta_each), beta_each))
    return max(o.epsilon_lower for o in outcomes), outcomes
