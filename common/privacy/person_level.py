"""Person-level reading of a record-level ledger: the guarantee for a person with k records at one site.

Record-level DP protects one image-caption record. A person usually appears
in several records of a site (several images, each with its captions), so
the audit also states epsilon for add/remove of a group of ``k`` records of
one site (group privacy), for k = 2, 3 and 5 (docs/privacy.md, section 8).

Method (cited in docs/audit.md): the mixture-of-Gaussians dominating pair of
A. Ganesh, "Tight Group-Level DP Guarantees for DP-SGD with Sampling via
Mixture of Gaussians Mechanisms" (arXiv:2401.10294, 2024), built on the
mixture-of-Gaussians mechanisms of Choquette-Choo, Ganesh, Steinke and
Thakurta (arXiv:2310.15526). In one Poisson-sampled step each of the k
records is in the batch independently with probability q, so J ~ Binomial(k, q)
of them are, and together they move the clipped sum by at most J * Delta.
In units of Delta the step's privacy loss is dominated by the pair

    N(0, sigma^2)   vs   sum_j Binom(j; k, q) N(j, sigma^2),    j = 0..k,

in both directions (add and remove), and the steps compose adaptively by
composing the privacy loss distributions of the pairs. A non-subsampled
release (q = 1, the DP prototypes) is the Gaussian mechanism of sensitivity
k * Delta. The numbers are ``dp-accounting``'s PLD of those pairs
(``from_mixture_gaussian_mechanism``; pessimistic estimate, an upper bound
up to its discretisation). With k = 1 the pair is the subsampled Gaussian
itself, which the tests use as one of their checks.

Under site-level DP the unit is the whole site, so a person's records at
that site (any number) are covered by the site-level epsilon itself; a person
with records at several sites composes the sites' guarantees.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

from scipy.stats import binom

from dp_accounting.pld import privacy_loss_distribution as pld_lib

from common.privacy.second_library import BracketUnavailable, absl_messages, clean_history, gaussian_step

GROUP_SIZES = (2, 3, 5)  # records per person worth stating: an image or two with captions, up to a handful
# PLD discretisation for the mixtures: at 1e-2 the k = 2, 3, 5 values of a 20-step subsampled history agree with
# 1e-3 to 5e-4 (9.0561 / 14.9655 / 29.1359 against 9.0556 / 14.9652 / 29.1356) at a fifth of the time.
GROUP_VALUE_INTERVAL = 1e-2
MAX_GROUP_COMPONENTS = 60  # distinct (sigma, q, steps, k) mixtures built in one audit (0.5-3 s each on two cores)
# Above this record-level epsilon no meaningful guarantee is left for one record, let alone for k of them (whose
# epsilon is larger still), and the mixtures' loss distributions get wide enough to cost tens of seconds.
MAX_RECORD_EPSILON = 50.0
METHOD = ("group privacy of the Poisson-subsampled Gaussian by its mixture-of-Gaussians dominating pair "
          "(Ganesh 2024, arXiv:2401.10294), PLD by dp-accounting")


@lru_cache(maxsize=256)
def mixture_step(sigma: float, q: float, k: int, value_interval: float) -> tuple[object, tuple]:
    """(PLD of one step's dominating pair for k records, Poisson rate q < 1, its messages); cached for the process."""
    j = list(range(k + 1))
    with absl_messages() as caught:
        pld = pld_lib.from_mixture_gaussian_mechanism(sigma, [float(x) for x in j],
                                                       [float(p) for p in binom.pmf(j, k, q)],
                                                       value_discretization_interval=value_interval)
    return pld, tuple(caught)


class GroupAccountant:
    """Epsilon for add/remove of ``k`` records of one site, with cached components (one per audit)."""

    def __init__(self, value_interval: float = GROUP_VALUE_INTERVAL, max_components: int = MAX_GROUP_COMPONENTS):
        self.value_interval = value_interval
        self.max_components = max_components
        self._components: dict[tuple, object] = {}
        self.messages: list[str] = []

    def component(self, sigma: float, q: float, n: int, k: int):
        """The PLD of ``n`` steps of one history entry for a group of ``k`` records."""
        key = (sigma, q, n, k)
        if key not in self._components:
            if len(self._components) >= self.max_components:
                raise BracketUnavailable(f"not computed: this audit's limit of {self.max_components} group-privacy "
                                         "components was reached")
            if q >= 1.0:  # every record takes part: a Gaussian of sensitivity k; n of them compose exactly
                pld, caught = gaussian_step(sigma / math.sqrt(n) / k, 1.0, self.value_interval)
            else:
                step, caught = mixture_step(sigma, q, k, self.value_interval)
                pld = step.self_compose(n)
            self.messages += caught
            self._components[key] = pld
        return self._components[key]

    def epsilon(self, history: Sequence[Sequence], delta: float, k: int) -> float:
        """Epsilon (unit: k records of one site, add/remove; at ``delta``) of the whole ``history``."""
        if k < 1:
            raise ValueError(f"a group has at least one record, got k={k}")
        hist = clean_history(history)
        if not hist:
            return 0.0
        if any(s == 0 for s, _, _ in hist):
            return math.inf
        pld = None
        for sigma, q, n in hist:
            part = self.component(sigma, q, n, k)
            pld = part if pld is None else pld.compose(part)
        return float(pld.get_epsilon_for_delta(delta))

    def reading(self, history: Sequence[Sequence], delta: float, sizes: Sequence[int] = GROUP_SIZES,
                record_epsilon: float | None = None) -> list[dict]:
        """[{k, epsilon (None when infinite or not computed), epsilon_infinite, error}] for each group size.

        ``record_epsilon``: the history's record-level epsilon, when known; above ``MAX_RECORD_EPSILON`` the
        group epsilons are not computed (and say why)."""
        if record_epsilon is not None and math.isfinite(record_epsilon) and record_epsilon > MAX_RECORD_EPSILON:
            why = (f"not computed: the record-level epsilon {record_epsilon:.4g} already exceeds {MAX_RECORD_EPSILON:g}; "
                   "a person's is larger still")
            return [{"k": k, "epsilon": None, "epsilon_infinite": False, "error": why} for k in sizes]
        out = []
        for k in sizes:
            try:
                eps = self.epsilon(history, delta, k)
                out.append({"k": k, "epsilon": None if math.isinf(eps) else eps, "epsilon_infinite": math.isinf(eps),
                            "error": None})
            except BracketUnavailable as ex:
                out.append({"k": k, "epsilon": None, "epsilon_infinite": False, "error": str(ex)})
        return out
