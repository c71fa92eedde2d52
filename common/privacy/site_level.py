"""Site-level DP accounting (docs/privacy.md, section 6): the unit is a site's whole dataset.

Privacy unit: one site. Neighbouring relation: add/remove one site (all of
its records at once) from the federation.

Mechanism, per round: the server clips each participating site's update to
L2 norm ``S`` and adds Gaussian noise of std ``noise_multiplier * S`` to the
SUM of the clipped updates (dividing afterwards by a fixed, data-independent
denominator is post-processing). One site changes that sum by at most ``S``,
so a round is a Gaussian mechanism with noise multiplier ``noise_multiplier``.
Sites must enter the sum with weight at most 1: num-examples-weighted FedAvg
breaks the sensitivity bound.

Which sampling the bound assumes:
- ``sampling="poisson"``: the accountant is Opacus' Poisson-subsampled
  Gaussian with ``q = sites_per_round / total_sites``. This holds exactly only
  if the server samples each site independently with probability ``q`` every
  round (the number of sites per round then varies, ``sites_per_round`` is
  its expectation). Flower's default fixed-size sampling without replacement
  is NOT Poisson; using the Poisson bound for it is an approximation that
  this project does not claim. Every round the server runs counts (a site
  that was not sampled still spends, at rate ``q``).
- ``sampling="none"``: no amplification, ``q = 1``. Valid for any way of
  choosing sites, including fixed-size sampling. ``rounds`` is then the
  number of rounds in which the site took part (all rounds is a safe upper
  bound).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from common.privacy.accounting import Entry, as_entry, merge_history, noise_multiplier_for

SAMPLINGS = ("poisson", "none")


def site_sample_rate(sites_per_round: int, total_sites: int, sampling: str = "poisson") -> float:
    """The ``q`` the accountant uses for one site in one round."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not 0 < sites_per_round <= total_sites:
        raise ValueError(f"need 0 < sites_per_round <= total_sites, got {sites_per_round} / {total_sites}")
    return sites_per_round / total_sites if sampling == "poisson" else 1.0


def site_level_history(noise_multiplier: float, sites_per_round: int, total_sites: int, rounds: int,
                       sampling: str = "poisson", prior_history: Iterable[Sequence] = ()) -> list[Entry]:
    """Accountant history of one site after ``rounds`` more rounds (see module docstring for ``rounds``)."""
    q = site_sample_rate(sites_per_round, total_sites, sampling)
    return merge_history(prior_history, [as_entry((noise_multiplier, q, rounds))])


def noise_for_site_level(target_eps: float, delta: float, sites_per_round: int, total_sites: int,
                         rounds: int, sampling: str = "poisson", accountant: str = "rdp",
                         prior_history: Iterable[Sequence] = ()) -> float:
    """Smallest server noise multiplier so that ``rounds`` rounds fit ``(target_eps, delta)`` per site."""
    q = site_sample_rate(sites_per_round, total_sites, sampling)
    return noise_multiplier_for(target_eps, delta, q, rounds, accountant=accountant, prior_history=prior_history)


def aggregate_noise_to_clip(noise_multiplier: float, trainable_parameters: int, sites_per_round: int) -> float:
    """Expected norm of the noise added to the averaged update, in units of the clip norm.

    Flower's DP wrapper adds N(0, (sigma * C / k)^2) to each of the d coordinates of the mean of k clipped
    updates; its norm is about sigma * sqrt(d) / k times C, while the mean update itself is at most C.
    Well above 1, the aggregate mostly follows noise: more sites per round or fewer trained parameters help.
    The same holds for a record-level DP-SGD step with k = its expected batch of records
    (`simulations.runner.record_level_noise`).
    """
    if sites_per_round < 1 or trainable_parameters < 1:
        raise ValueError("sites_per_round and trainable_parameters must be >= 1")
    return noise_multiplier * trainable_parameters ** 0.5 / sites_per_round
