"""Site-level accounting and record-level noise planning."""

import pytest

from common.privacy.accounting import AccountingError, epsilon, merge_history
from common.privacy.noise_calibration import plan_record_level, round_spending
from common.privacy.site_level import noise_for_site_level, site_level_history, site_sample_rate

DELTA = 1e-5


def test_site_level_history_sampling_modes():
    assert site_level_history(1.0, 10, 100, 30) == [(1.0, 0.1, 30)]
    assert site_level_history(1.0, 10, 100, 30, sampling="none") == [(1.0, 1.0, 30)]
    assert site_level_history(1.0, 10, 100, 5, prior_history=[(1.0, 0.1, 30)]) == [(1.0, 0.1, 35)]
    with pytest.raises(ValueError):
        site_sample_rate(10, 100, sampling="fixed")
    with pytest.raises(ValueError):
        site_sample_rate(0, 100)


def test_noise_for_site_level_meets_target_and_amplification_helps():
    target, rounds = 5.0, 30
    poisson = noise_for_site_level(target, DELTA, 5, 100, rounds)
    none = noise_for_site_level(target, DELTA, 5, 100, rounds, sampling="none")
    assert none > poisson
    for sigma, mode in ((poisson, "poisson"), (none, "none")):
        assert epsilon(site_level_history(sigma, 5, 100, rounds, mode), DELTA) <= target
        assert epsilon(site_level_history(0.99 * sigma, 5, 100, rounds, mode), DELTA) > target


def test_plan_record_level_fits_whole_run_including_prototypes():
    target, rounds, steps, q = 6.0, 5, 40, 0.01
    plain = plan_record_level(target, DELTA, rounds, steps, q)
    plan = plan_record_level(target, DELTA, rounds, steps, q, prototype_iters_per_round=2, prototype_noise=20.0)
    sigma = plan.dp_sgd_noise_multiplier
    assert sigma > plain.dp_sgd_noise_multiplier
    assert 0 < plan.prototype_epsilon < plan.projected_epsilon <= target
    # what the rounds actually record, in run order, composes to the same epsilon
    run = merge_history(*[round_spending(sigma, q, steps, 2, 20.0) for _ in range(rounds)])
    assert epsilon(run, DELTA) == pytest.approx(plan.projected_epsilon, rel=1e-9)
    assert epsilon(merge_history(*[round_spending(0.99 * sigma, q, steps, 2, 20.0) for _ in range(rounds)]), DELTA) > target


def test_plan_refuses_when_prototypes_eat_the_budget():
    with pytest.raises(AccountingError, match="prototype releases"):
        plan_record_level(1.0, DELTA, 10, 40, 0.01, prototype_iters_per_round=5, prototype_noise=1.0)
    with pytest.raises(ValueError):
        plan_record_level(1.0, DELTA, 10, 40, 0.01, prototype_iters_per_round=5, prototype_noise=0.0)
