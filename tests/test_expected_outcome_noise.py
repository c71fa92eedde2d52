"""The expected-outcome line of a run whose DP-SGD noise is set by hand (`--noise-multiplier`).

Before: `simulate` passed the run's --epsilon to the line, which then spoke of "this run's record-level epsilon 8"
although the noise, not the budget, fixed what the run spends. Now the line names the epsilon that the hand-set
noise spends over the planned run; the tests compute that epsilon a second way, by calling the accountant on the
run's mechanisms written out by hand.
"""

from __future__ import annotations

import pytest

from common.federation.config import FedConfig
from common.federation.expected_outcome import estimate, hand_set_epsilon
from common.privacy.accounting import compute_epsilon

TEN = 10


def _cfg(**kw) -> FedConfig:
    base = dict(privacy="record", rounds=5, local_steps=20, sample_rate=0.25, delta=1e-5, epsilon=8.0)
    return FedConfig(**{**base, **kw}).validate()


def test_hand_set_epsilon_is_the_accountants_on_the_planned_dp_sgd():
    cfg = _cfg(noise_multiplier=1.5, prototypes=0)
    assert hand_set_epsilon(cfg) == pytest.approx(compute_epsilon([(1.5, 0.25, 5 * 20)], 1e-5, "rdp").epsilon)


@pytest.mark.parametrize("mode,releases", [("per-record", 2), ("grouped", 1)])  # per round: both modalities / captions
def test_hand_set_epsilon_counts_the_prototype_releases_too(mode, releases):
    cfg = _cfg(noise_multiplier=1.5, mode=mode, prototypes=8, prototype_noise=6.0)
    by_hand = [(6.0, 1.0, 5 * releases), (1.5, 0.25, 5 * 20)]  # dp-kmeans releases, then DP-SGD (grouped: same z)
    assert hand_set_epsilon(cfg) == pytest.approx(compute_epsilon(by_hand, 1e-5, "rdp").epsilon)
    assert hand_set_epsilon(cfg) > hand_set_epsilon(_cfg(noise_multiplier=1.5, mode=mode, prototypes=0))


def test_a_derived_noise_has_no_hand_set_epsilon():
    with pytest.raises(ValueError, match="derived from its epsilon"):
        hand_set_epsilon(_cfg())


def test_large_hand_set_noise_names_its_epsilon_not_the_budget():
    cfg = _cfg(noise_multiplier=3.0, prototypes=0)
    implied = compute_epsilon([(3.0, 0.25, 100)], 1e-5, "rdp").epsilon
    assert implied < 8  # (about 1.1)
    est = estimate([180] * TEN, hand_set_epsilon(cfg), "per_record", "last", noise_multiplier=3.0, budget=8.0)
    assert (f"This run's DP-SGD noise multiplier 3 is set by hand (--noise-multiplier), not derived from its epsilon: "
            f"over the planned run it spends record-level epsilon {implied:.3g} (delta 1e-5, RDP) at a site that "
            "trains every round, below the measured 8, so expect less") in est.text
    assert "record-level epsilon 8 (delta 1e-5, RDP) kept" in est.text  # the measured figure stays the measured one
    assert "this run's record-level epsilon 8" not in est.text.lower() and "refuse" not in est.text
    assert est.low


def test_small_hand_set_noise_spends_past_the_budget_and_says_the_sites_stop():
    cfg = _cfg(noise_multiplier=0.7, prototypes=0)
    implied = compute_epsilon([(0.7, 0.25, 100)], 1e-5, "rdp").epsilon
    assert implied > 8
    est = estimate([1800] * TEN, hand_set_epsilon(cfg), "per_record", "all", noise_multiplier=0.7, budget=8.0)
    assert f"spends record-level epsilon {implied:.3g} (delta 1e-5, RDP)" in est.text
    assert ("at a site that trains every round, above the measured 8; but the sites refuse rounds past their budget "
            "of record-level epsilon 8, so fewer rounds than planned will train") in est.text
    assert "expect more" not in est.text  # fewer rounds at less noise each: the direction is not known
    assert not est.low


def test_hand_set_noise_near_the_measured_epsilon_says_about():
    est = estimate([180] * TEN, 7.97, "per_record", "last", noise_multiplier=2.43, budget=8.0)
    assert "spends record-level epsilon 7.97 (delta 1e-5, RDP) at a site that trains every round, about the " \
           "measured 8; measured: per-record mode" in est.text and est.low
    over = estimate([180] * TEN, 8.04, "per_record", "last", noise_multiplier=2.42, budget=8.0)
    assert "about the measured 8; but the sites refuse rounds past their budget of record-level epsilon 8" in over.text


def test_grouped_mode_keeps_its_wording_with_a_hand_set_noise():
    cfg = _cfg(noise_multiplier=2.0, mode="grouped", prototypes=0)
    implied = compute_epsilon([(2.0, 0.25, 100)], 1e-5, "rdp").epsilon
    est = estimate([180] * TEN, hand_set_epsilon(cfg), "grouped", "all", noise_multiplier=2.0, budget=8.0)
    assert "grouped mode, measured in " in est.text and " federation" in est.text
    assert "benchmarks/results/federated.json); for per-record mode (image head only)" in est.text
    assert f"spends record-level epsilon {implied:.3g} (delta 1e-5, RDP)" in est.text


def test_simulates_outcome_note_uses_the_hand_set_noise():
    """`simulate`'s note before training (the function the command calls), with and without --noise-multiplier."""
    from fedgckd.commands.simulate import _outcome_note
    from fedgckd.progress import console

    implied = compute_epsilon([(3.0, 0.25, 100)], 1e-5, "rdp").epsilon
    with console.capture() as cap:
        _outcome_note(_cfg(noise_multiplier=3.0, prototypes=0), [180] * TEN)
    text = " ".join(cap.get().split())
    assert f"set by hand (--noise-multiplier), not derived from its epsilon: over the planned run it spends " \
           f"record-level epsilon {implied:.3g} (delta 1e-5, RDP)" in text
    with console.capture() as cap:
        _outcome_note(_cfg(epsilon=2.0, prototypes=0), [180] * TEN)
    text = " ".join(cap.get().split())
    assert "This run's record-level epsilon 2 (delta 1e-5, RDP) is below the measured 8" in text
    assert "by hand" not in text
