"""The one-run lower bound (Steinke, Nasr & Jagielski 2023) against hand-worked and published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from common.report.one_run import best_bound, default_ks, epsilon_lower_bound, guess, p_value


def test_all_guesses_correct_matches_the_binomial_tail_by_hand():
    # delta = 0 and v = r: P[Binomial(r, p) >= r] = p^r. The bound is the eps with p^r = beta,
    # i.e. p = beta^(1/r) and eps = log(p / (1 - p)).
    for r in (10, 20, 100):
        p = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    # r = 20 worked through: 0.05^(1/20) = 0.86089, log(0.86089 / 0.13911) = 1.8227
    assert epsilon_lower_bound(20, 20, 20, 0.0) == pytest.approx(1.8227, abs=1e-4)


def test_half_correct_gives_zero_and_the_threshold_is_the_95_percent_quantile():
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    # at eps = 0 the guesses are fair coins: P[Bin(100, 1/2) >= 59] = 0.044 < 0.05 but P[>= 58] = 0.067
    assert stats.binom.sf(58, 100, 0.5) < 0.05 < stats.binom.sf(57, 100, 0.5)
    assert epsilon_lower_bound(100, 100, 58, 0.0) == 0.0
    assert 0.0 < epsilon_lower_bound(100, 100, 59, 0.0) < 0.05


def test_reproduces_the_papers_printed_examples():
    # arXiv:2305.08846v1: Appendix D's example (m=1000, r=100, v=75, delta=1e-4) prints 0.673, and Section 7
    # (m=1e5, r=1510, v=1439, delta=1e-5) prints 2.675 (truncated); as quoted by independent implementations.
    assert epsilon_lower_bound(1000, 100, 75, 1e-4, 0.05) == pytest.approx(0.673, abs=1e-3)
    assert 2.675 <= epsilon_lower_bound(100000, 1510, 1439, 1e-5, 0.05) < 2.676


def test_delta_term_is_the_theorems():
    # p(v) = f(v) + 2 m delta max_i (f(v-i) - f(v)) / i, f(v) = P[Bin(r, e^eps/(1+e^eps)) >= v]
    m, r, v, eps, delta = 50, 20, 15, 0.7, 1e-3
    q = math.exp(eps) / (1 + math.exp(eps))
    f = lambda x: stats.binom.sf(x - 1, r, q)  # noqa: E731
    by_hand = f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, v + 1))
    assert p_value(m, r, v, eps, delta) == pytest.approx(by_hand, rel=1e-12)
    assert p_value(m, r, v, eps, delta) > p_value(m, r, v, eps, 0.0)
    assert epsilon_lower_bound(m, r, v, delta) <= epsilon_lower_bound(m, r, v, 0.0)


def test_bound_grows_with_correct_guesses_and_the_returned_eps_is_rejected():
    bounds = [epsilon_lower_bound(200, 100, v, 1e-5) for v in range(50, 101, 5)]
    assert bounds == sorted(bounds) and bounds[-1] > 2.5
    for v in (70, 85, 100):
        eps = epsilon_lower_bound(200, 100, v, 1e-5)
        assert p_value(200, 100, v, eps, 1e-5) < 0.05 <= p_value(200, 100, v, eps + 1e-6, 1e-5)


def test_guess_counts_top_in_and_bottom_out():
    scores = [0.9, 0.8, 0.1, 0.2, 0.5, 0.4]
    included = [True, False, False, True, True, False]
    assert guess(scores, included, 2, 2) == (2, 4)  # top {0.9 in, 0.8 out}: 1; bottom {0.1 out, 0.2 in}: 1
    assert guess(scores, included, 1, 0) == (1, 1)
    with pytest.raises(ValueError):
        guess(scores, included, 4, 3)
    with pytest.raises(ValueError):
        guess([float("nan"), 1.0], [True, False], 1, 1)


def test_best_bound_is_bonferroni_corrected_over_a_fixed_list_of_k():
    m = 200
    included = np.arange(m) % 2 == 0
    scores = included.astype(float) + np.linspace(0, 0.01, m)  # perfectly separated
    lower, outcomes = best_bound(scores, included, 1e-5)
    assert [o.k_plus for o in outcomes] == default_ks(m) == [10, 20, 50, 100]
    assert all(o.correct == o.guesses and o.beta_each == pytest.approx(0.05 / 4) for o in outcomes)
    assert lower == max(o.epsilon_lower for o in outcomes)
    single = epsilon_lower_bound(m, 200, 200, 1e-5, 0.05)
    assert lower < single  # the price of trying four k


def test_valid_for_randomised_response_at_its_true_epsilon():
    """A mechanism that is exactly eps-DP per canary (randomised response) rarely beats eps (<= 5%)."""
    rng = np.random.default_rng(7)
    eps, m, k = 1.0, 200, 50
    truthful = math.exp(eps) / (1 + math.exp(eps))
    exceed = 0
    for _ in range(40):
        coins = rng.random(m) < 0.5
        reported = np.where(rng.random(m) < truthful, coins, ~coins)  # eps-DP release of each coin
        scores = reported + rng.random(m) * 1e-3
        lower, _ = best_bound(scores, coins, 0.0, [k])
        exceed += lower > eps
    assert exceed <= 4  # expected at most 2 of 40 at 95% confidence
