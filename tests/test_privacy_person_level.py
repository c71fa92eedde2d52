"""Person-level reading (group privacy for k records of one site) against an independent computation.

The independent computation works from the definition: the privacy profile
delta(eps) = max over both directions of the hockey-stick divergence
E_Q[(P/Q - e^eps)_+] of the dominating pair P = sum_j Binom(j; k, q) N(j, sigma^2),
Q = N(0, sigma^2). The pair has a monotone likelihood ratio, so one step's
divergence is a closed form in the normal CDF at the point where the
log-likelihood ratio crosses eps (found by root finding); two steps are one
numerical integral over the first step's output of the one-step closed form.
Nothing of dp-accounting is used there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy.stats import binom, norm

from common.privacy.person_level import GROUP_SIZES, GroupAccountant
from common.privacy.second_library import PldBracket


def _pair(sigma: float, q: float, k: int):
    """Weights and the log-densities of the dominating pair (P: the group's records present, Q: absent)."""
    j = np.arange(k + 1)
    w = binom.pmf(j, k, q)

    def log_p(x):
        return np.logaddexp.reduce(np.log(w)[:, None] + norm.logpdf(np.asarray(x)[None, :], j[:, None], sigma), 0)

    def log_q(x):
        return norm.logpdf(np.asarray(x), 0.0, sigma)
    return j, w, log_p, log_q


def exact_epsilon(sigma, q, k, delta, steps):
    """Epsilon at ``delta`` of ``steps`` (1 or 2) compositions of the pair, from the definition."""
    j, w, log_p, log_q = _pair(sigma, q, k)
    lim = 14 * sigma + k  # the densities beyond carry less than e^-90
    xs = np.linspace(-lim, lim, 400_001)
    loss = log_p(xs) - log_q(xs)  # log P/Q: increasing in x (a mixture of non-negative shifts)
    assert np.all(np.diff(loss) > 0)

    def crossing(level):
        # where the log-likelihood ratio equals `level`; the hockey-stick value is stationary in this point
        # (its derivative there is p - e^e q = 0), so interpolating it costs nothing to first order
        x = np.interp(level, loss, xs)
        return np.where(level < loss[0], -np.inf, np.where(level > loss[-1], np.inf, x))

    def h_remove(e):  # E_Q[(P/Q - e^e)_+] = P(X > x) - e^e Q(X > x) at loss(x) = e
        x = crossing(e)
        return np.sum(w[:, None] * norm.sf((x[None, :] - j[:, None]) / sigma), 0) - np.exp(e) * norm.sf(x / sigma)

    def h_add(e):  # E_P[(Q/P - e^e)_+] = Q(X < x) - e^e P(X < x) at -loss(x) = e
        x = crossing(-e)
        return norm.cdf(x / sigma) - np.exp(e) * np.sum(w[:, None] * norm.cdf((x[None, :] - j[:, None]) / sigma), 0)

    grid = np.linspace(-lim, lim, 40_001)  # first step's output, Simpson's rule
    p1, q1, l1 = np.exp(log_p(grid)), np.exp(log_q(grid)), log_p(grid) - log_q(grid)

    def profile(e):
        if steps == 1:
            return max(h_remove(np.array([e]))[0], h_add(np.array([e]))[0])
        assert steps == 2  # E[(L1 + L2 - e)] split over the first step: the second in closed form
        rem = integrate.simpson(p1 * h_remove(e - l1), x=grid)
        add = integrate.simpson(q1 * h_add(e + l1), x=grid)
        return max(rem, add)
    return optimize.brentq(lambda e: profile(e) - delta, 1e-6, 60.0, xtol=1e-7)


@pytest.mark.parametrize("k", [2, 3])
def test_one_step_matches_the_definition(k):
    sigma, q, delta = 1.0, 0.3, 1e-4
    exact = exact_epsilon(sigma, q, k, delta, steps=1)
    ours = GroupAccountant().epsilon([(sigma, q, 1)], delta, k)
    # dp-accounting's pessimistic PLD: an upper bound, within its discretisation (1e-2) of the truth
    assert exact - 1e-6 <= ours <= exact + 5e-3, (ours, exact)


def test_two_composed_steps_match_the_definition():
    sigma, q, delta, k = 1.2, 0.25, 1e-4, 2
    exact = exact_epsilon(sigma, q, k, delta, steps=2)
    ours = GroupAccountant().epsilon([(sigma, q, 2)], delta, k)
    assert exact - 1e-6 <= ours <= exact + 5e-3, (ours, exact)
    one = exact_epsilon(sigma, q, k, delta, steps=1)
    assert exact > one  # the composition really spent more


def test_unsampled_release_is_the_gaussian_of_sensitivity_k():
    """q = 1 (the DP prototypes): the analytic Gaussian mechanism (Balle and Wang 2018) with sensitivity k."""
    sigma, steps, k, delta = 4.0, 3, 3, 1e-5
    s = sigma / math.sqrt(steps)  # three releases compose into one Gaussian of std sigma / sqrt(3)

    def profile(e):
        return norm.cdf(k / (2 * s) - e * s / k) - math.exp(e) * norm.cdf(-k / (2 * s) - e * s / k)
    exact = optimize.brentq(lambda e: profile(e) - delta, 1e-6, 60.0, xtol=1e-9)
    ours = GroupAccountant().epsilon([(sigma, 1.0, steps)], delta, k)
    assert exact - 1e-6 <= ours <= exact + 5e-3


def test_k_equal_one_is_the_record_level_pld_and_epsilon_grows_with_k():
    history = [(6.0, 1.0, 2), (1.4, 0.25, 10)]
    acc = GroupAccountant()
    record = PldBracket(value_interval=acc.value_interval).epsilon(history, 1e-5)
    assert acc.epsilon(history, 1e-5, 1) == pytest.approx(record, abs=1e-6)
    reading = acc.reading(history, 1e-5)
    assert [r["k"] for r in reading] == list(GROUP_SIZES)
    eps = [r["epsilon"] for r in reading]
    assert record < eps[0] < eps[1] < eps[2]


def test_no_noise_is_infinite_and_bad_k_refused():
    acc = GroupAccountant()
    assert acc.epsilon([(0.0, 0.5, 3)], 1e-5, 2) == math.inf
    assert acc.reading([(0.0, 0.5, 3)], 1e-5, sizes=(2,))[0]["epsilon_infinite"]
    assert acc.epsilon([], 1e-5, 3) == 0.0
    with pytest.raises(ValueError):
        acc.epsilon([(1.0, 0.5, 3)], 1e-5, 0)
