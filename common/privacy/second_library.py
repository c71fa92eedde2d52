"""The audit's bracket from a second library: Google's ``dp-accounting`` (PLD and RDP), add/remove.

A ledger's epsilon comes from Opacus' RDP accountant (`accounting`). An audit
that re-checks it with Opacus' own PRV accountant is one library checking
itself, so every ledger row is also put between two bounds computed by
``dp-accounting``, a library written for exactly this job (Google, the PLD
accountant of Doroshenko, Ghazi, Kamath, Kumar and Manurangsi 2022 and
Koskela et al.'s FFT composition; Mironov et al. 2019 for the RDP of the
subsampled Gaussian):

- **PLD** (``PLDAccountant``'s construction, pessimistic estimate, connect
  the dots): a near-tight upper bound on epsilon. The true epsilon lies
  between the optimistic and the pessimistic estimate; a claim below the
  optimistic one is certainly an under-report.
- **RDP** (``RdpAccountant`` on the claim's own order grid, Opacus'
  ``DEFAULT_ALPHAS``): an independent implementation of the same bound the
  ledger enforces. At fractional orders it sums the series of Mironov et
  al. 2019 in absolute value, so it is never below Opacus' value at any order:
  a claim above it does not follow from its own history.

So every row must satisfy ``PLD <= claimed <= RDP``.

Each history entry ``(sigma, q, steps)`` is one ``PoissonSampledDpEvent`` of
a ``GaussianDpEvent`` (q < 1) or a ``GaussianDpEvent`` (q = 1), self-composed
``steps`` times. Runs of PLD composition are cached by history prefix and by
component, so the rows of sites that spent alike cost one computation.
``dp-accounting`` reports numerical trouble (an order whose series did not
converge, which it then leaves out) through absl logging; those messages
are collected and returned, not printed.
"""

from __future__ import annotations

import logging
import math
import re
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant

from common.privacy.accounting import ALPHAS, Entry

# PLD value discretisation. On the demo's and the tests' histories the pessimistic estimate at 1e-3 equals the
# one at 1e-4 to four decimals (7.2979 both for 3 rounds of record-level DP) at a tenth of the time.
VALUE_INTERVAL = 1e-3
MAX_COMPONENTS = 400  # distinct (sigma, q, steps) PLDs built in one audit (0.05-0.5 s each on two cores)
MAX_PREFIXES = 500  # composed history prefixes kept; sites that spent alike share theirs (about 10 ms to rebuild one)
LIBRARY = "dp-accounting"


class BracketUnavailable(RuntimeError):
    """This audit's limit on PLD components was reached; the row is not checked (said so, never guessed)."""


@contextmanager
def absl_messages() -> Iterator[list[str]]:
    """Collect dp-accounting's absl log records (warnings about left-out orders) instead of printing them."""
    logger = logging.getLogger("absl")
    caught: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            caught.append(record.getMessage())

    handler, propagate = _Keep(level=logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield caught
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def clean_history(history: Sequence[Sequence]) -> list[Entry]:
    return [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0 and float(q) > 0]


_LEFT_OUT = re.compile(r"_compute_log_a_frac failed to converge .*alpha=([0-9]+(?:\.[0-9]+)?)")


def summarise(messages: Sequence[str]) -> tuple[str, ...]:
    """dp-accounting's messages, with its per-order convergence warnings folded into one line."""
    orders = sorted({float(m.group(1)) for m in map(_LEFT_OUT.search, messages) if m})
    rest = [m for m in messages if not _LEFT_OUT.search(m)]
    if orders:
        rest.insert(0, f"dp-accounting left out RDP orders {', '.join(f'{a:g}' for a in orders)} (its series did not "
                    "converge there); its RDP bound is the minimum over the other orders")
    return tuple(dict.fromkeys(rest))


@lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """dp-accounting's RDP vector of one step on Opacus' orders, and its messages."""
    gauss = dp_event.GaussianDpEvent(sigma)
    with absl_messages() as caught:
        acc = rdp_privacy_accountant.RdpAccountant(orders=list(ALPHAS))
        acc.compose(gauss if q >= 1.0 else dp_event.PoissonSampledDpEvent(q, gauss))
    return tuple(float(r) for r in acc.rdp), tuple(caught)


def rdp_epsilon(history: Sequence[Sequence], delta: float) -> tuple[float, tuple[str, ...]]:
    """(dp-accounting's RDP epsilon on Opacus' order grid, its numerical warnings).

    The sum of per-step RDP vectors times steps is what ``RdpAccountant.compose`` does for a
    ``SelfComposedDpEvent``; the conversion is dp-accounting's ``compute_epsilon``."""
    hist = clean_history(history)
    if not hist:
        return 0.0, ()
    if any(s == 0 for s, _, _ in hist):
        return math.inf, ()
    total, caught = np.zeros(len(ALPHAS)), []
    for sigma, q, n in hist:
        vec, msgs = _rdp_per_step(sigma, q)
        total = total + np.asarray(vec) * n
        caught += msgs
    with absl_messages() as more:
        eps, _order = rdp_privacy_accountant.compute_epsilon(list(ALPHAS), list(total), delta)
    return float(eps), summarise(caught + more)


@lru_cache(maxsize=512)
def gaussian_step(sigma: float, q: float, value_interval: float, pessimistic: bool = True) -> tuple[object, tuple]:
    """(PLD of one Gaussian step of noise multiplier ``sigma``, Poisson-subsampled at ``q`` (1: not), its messages).

    Cached for the process: audits of runs that share mechanisms (and the tests) build each one once."""
    # connect-the-dots has no optimistic variant; privacy buckets gives the optimistic (lower) estimate
    opts = dict(pessimistic_estimate=pessimistic, value_discretization_interval=value_interval,
                use_connect_dots=pessimistic)
    with absl_messages() as caught:
        if q >= 1.0:
            pld = pld_lib.from_gaussian_mechanism(sigma, **opts)
        else:
            pld = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q, **opts)
    return pld, tuple(caught)


class PldBracket:
    """PLD epsilons of histories, composed incrementally with caches (one instance per audit)."""

    def __init__(self, value_interval: float = VALUE_INTERVAL, max_components: int = MAX_COMPONENTS):
        self.value_interval = value_interval
        self.max_components = max_components
        self._components: dict[tuple, object] = {}
        self._prefix: dict[tuple, object] = {}
        self.messages: list[str] = []

    def _component(self, sigma: float, q: float, n: int, pessimistic: bool = True):
        key = (sigma, q, n, pessimistic)
        if key not in self._components:
            if len(self._components) >= self.max_components:
                raise BracketUnavailable(f"not computed: this audit's limit of {self.max_components} PLD components "
                                         "was reached")
            if q >= 1.0:  # n Gaussian releases compose exactly into one with sigma / sqrt(n)
                pld, caught = gaussian_step(sigma / math.sqrt(n), 1.0, self.value_interval, pessimistic)
            else:
                step, caught = gaussian_step(sigma, q, self.value_interval, pessimistic)
                pld = step.self_compose(n)
            self.messages += caught
            self._components[key] = pld
        return self._components[key]

    def _pld(self, hist: list[Entry], pessimistic: bool):
        """The composed PLD of ``hist``, from the longest prefix already composed (no recursion: long runs)."""
        start = len(hist)
        while start > 0 and (tuple(hist[:start]), pessimistic) not in self._prefix:
            start -= 1
        pld = self._prefix[(tuple(hist[:start]), pessimistic)] if start else None
        if len(self._prefix) > MAX_PREFIXES:  # memory bound (each composed PLD holds up to a few MB); recomputable
            self._prefix.clear()
        for i in range(start, len(hist)):
            part = self._component(*hist[i], pessimistic=pessimistic)
            pld = part if pld is None else pld.compose(part)
            self._prefix[(tuple(hist[:i + 1]), pessimistic)] = pld
        return pld

    def epsilon(self, history: Sequence[Sequence], delta: float, pessimistic: bool = True) -> float:
        """PLD epsilon of ``history`` at ``delta`` (pessimistic: an upper bound; optimistic: a lower bound)."""
        hist = clean_history(history)
        if not hist:
            return 0.0
        if any(s == 0 for s, _, _ in hist):
            return math.inf
        return float(self._pld(hist, pessimistic).get_epsilon_for_delta(delta))


def check_row(claimed: float, history: Sequence[Sequence], delta: float, pld: PldBracket,
              rel_tol: float = 1e-6) -> dict:
    """The bracket for one ledger row: {epsilon_pld, epsilon_rdp_dpa, bracket: "ok" | "below-pld" |
    "within-discretisation" | "above-rdp" | "not-checked", reason}.

    ``within-discretisation``: the claim is below the pessimistic PLD but not below the optimistic one, so
    it may still hold; only "below-pld" (below the optimistic PLD: certainly under-reported) and "above-rdp"
    are outside the bracket.
    """
    rdp, warns = rdp_epsilon(history, delta)
    out = {"epsilon_pld": None, "epsilon_rdp_dpa": None if math.isinf(rdp) else rdp, "bracket": "ok",
           "bracket_reason": None, "dpa_warnings": list(warns)}
    if math.isinf(claimed):  # an infinite claim under-reports nothing
        return out
    if any(float(s) == 0 and int(n) > 0 and float(q) > 0 for s, q, n in history):
        out.update(bracket="below-pld", bracket_reason=f"claimed {claimed:.6g}, but the history has a step "
                   "without noise: epsilon is infinite")
        return out
    try:
        upper = pld.epsilon(history, delta)
    except BracketUnavailable as ex:
        out.update(bracket="not-checked", bracket_reason=str(ex))
        return out
    out["epsilon_pld"] = upper
    if claimed > rdp * (1 + rel_tol) + 1e-12:  # rdp is finite here unless every order failed (then: no upper check)
        out.update(bracket="above-rdp", bracket_reason=f"claimed {claimed:.6g} > dp-accounting RDP {rdp:.6g}")
    elif claimed < upper * (1 - rel_tol):
        lower = pld.epsilon(history, delta, pessimistic=False)
        if claimed < lower * (1 - rel_tol):
            out.update(bracket="below-pld", bracket_reason=f"claimed {claimed:.6g} < dp-accounting PLD "
                       f"{lower:.6g} (optimistic estimate: the true epsilon is at least this)")
        else:
            out.update(bracket="within-discretisation", bracket_reason=f"claimed {claimed:.6g} is below the "
                       f"pessimistic PLD {upper:.6g} but above the optimistic {lower:.6g}")
    return out
