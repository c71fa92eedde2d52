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


def test_aggregate_noise_ratio_matches_sampled_noise():
    """The closed form against the norm of noise drawn as Flower's DP wrapper draws it (std sigma*C/k)."""
    import torch

    from common.privacy.site_level import aggregate_noise_to_clip

    sigma, d, k, clip = 1.3, 40_000, 10, 0.7
    g = torch.Generator().manual_seed(0)
    drawn = torch.normal(0.0, sigma * clip / k, (20, d), generator=g).norm(dim=1).mean().item() / clip
    assert aggregate_noise_to_clip(sigma, d, k) == pytest.approx(drawn, rel=0.01)
    with pytest.raises(ValueError):
        aggregate_noise_to_clip(1.0, 10, 0)


def test_automatic_prototype_noise_spends_its_share():
    """The automatic prototype noise: the run's releases cost the configured share of epsilon, recomputed."""
    from common.federation.config import FedConfig

    for eps in (1.0, 8.0):
        cfg = FedConfig(epsilon=eps, rounds=10, prototype_iters=1, prototypes=8, prototype_budget_share=0.25)
        sigma = cfg.prototype_noise_multiplier()
        assert epsilon([(sigma, 1.0, 20)], DELTA) == pytest.approx(0.25 * eps, rel=0.02)
        # and the record-level plan then fits the whole budget with room left for DP-SGD
        plan = plan_record_level(eps, DELTA, 10, 20, 0.25, prototype_iters_per_round=2, prototype_noise=sigma)
        assert plan.prototype_epsilon == pytest.approx(0.25 * eps, rel=0.02)
        assert plan.projected_epsilon == pytest.approx(eps, rel=0.01)
    assert FedConfig(prototype_noise=7.0).prototype_noise_multiplier() == 7.0
    from common.federation.config import ConfigError

    with pytest.raises(ConfigError, match="prototype-budget-share"):  # too small to certify with RDP
        FedConfig(epsilon=0.2, rounds=10, prototype_budget_share=0.1).prototype_noise_multiplier()
