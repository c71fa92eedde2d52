"""Derive the DP-SGD noise of a record-level run from its privacy target.

Privacy unit: one image-caption record at one site; neighbouring relation:
add/remove that record. A planned run spends, every round, ``steps_per_round``
Poisson-subsampled DP-SGD steps (noise multiplier to be found, rate
``sample_rate``) and ``prototype_iters_per_round`` noisy k-means iterations
(``site_prototypes.dp_kmeans``: Gaussian releases ``(prototype_noise, 1, 1)``).
Composition is commutative, so the whole plan is accounted as
``prior + [(prototype_noise, 1, rounds*iters), (sigma, q, rounds*steps)]``.
The prototype noise is fixed by the caller (it sets the quality of the site
structure); DP-SGD takes the budget that remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from common.privacy.accounting import (
    AccountingError,
    Entry,
    as_entry,
    compute_epsilon,
    merge_history,
    noise_multiplier_for,
)


@dataclass(frozen=True)
class RecordLevelPlan:
    dp_sgd_noise_multiplier: float
    projected_epsilon: float  # epsilon of planned_history; <= target by construction
    prototype_epsilon: float  # what the prototype releases (plus prior) alone cost
    delta: float
    accountant: str
    planned_history: list[Entry]  # prior + the whole planned run


def plan_record_level(target_eps: float, delta: float, rounds: int, steps_per_round: int, sample_rate: float,
                      prototype_iters_per_round: int = 0, prototype_noise: float = 0.0,
                      accountant: str = "rdp", prior_history: Iterable[Sequence] = ()) -> RecordLevelPlan:
    """DP-SGD sigma such that all ``rounds`` rounds (DP-SGD + prototype releases) fit ``target_eps``.

    Raises ``AccountingError`` if the prototype releases alone (with the prior
    spending) already use the whole budget.
    """
    if rounds < 1 or steps_per_round < 1:
        raise ValueError("rounds and steps_per_round must be >= 1")
    proto_iters = rounds * int(prototype_iters_per_round)
    if proto_iters and not prototype_noise > 0:
        raise ValueError("prototype releases need prototype_noise > 0 (noise 0 has infinite epsilon)")
    fixed = merge_history(prior_history, [as_entry((prototype_noise, 1.0, proto_iters))])
    fixed_eps = compute_epsilon(fixed, delta, accountant).epsilon
    if fixed_eps >= target_eps:
        raise AccountingError(accountant, f"prototype releases and prior spending already cost {fixed_eps:.4g} "
                              f">= target {target_eps}; raise prototype_noise or lower iterations", fixed, delta)
    steps = rounds * steps_per_round
    sigma = noise_multiplier_for(target_eps, delta, sample_rate, steps, accountant=accountant, prior_history=fixed)
    planned = merge_history(fixed, [(sigma, sample_rate, steps)])
    return RecordLevelPlan(
        dp_sgd_noise_multiplier=sigma,
        projected_epsilon=compute_epsilon(planned, delta, accountant).epsilon,
        prototype_epsilon=fixed_eps,
        delta=delta,
        accountant=accountant,
        planned_history=planned,
    )


def prototype_noise_for(target_eps: float, delta: float, releases: int, accountant: str = "rdp") -> float:
    """Noise multiplier at which `releases` Gaussian releases (sensitivity-normalised, no sampling) cost
    `target_eps` at `delta` together."""
    if releases < 1:
        raise ValueError("releases must be >= 1")
    return noise_multiplier_for(target_eps, delta, 1.0, releases, accountant=accountant)


def round_spending(dp_sgd_noise: float, sample_rate: float, steps_per_round: int,
                   prototype_iters_per_round: int = 0, prototype_noise: float = 0.0) -> list[Entry]:
    """The history entries one round of the plan adds (prototypes first, as the client runs them)."""
    return merge_history([(prototype_noise, 1.0, prototype_iters_per_round), (dp_sgd_noise, sample_rate, steps_per_round)])
