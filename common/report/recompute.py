"""The audit's second computation: epsilon recomputed from each ledger's raw history, two accountants.

For every account (`run_reader.Account`) and every ledger entry, the history
up to that entry (prior history + this run's ``(noise_multiplier,
sample_rate, steps)``) is handed to
- Opacus' ``RDPAccountant`` directly (primary; not through
  ``common.privacy.accounting``, so the ledger's own code is not checking
  itself), and
- Opacus' ``PRVAccountant`` through ``compute_epsilon(..., "prv")`` (second),
  which refuses, with a reason, the regimes where PRV is known to fail or to
  be unaffordable (no noise, a huge discretisation grid, overflow), and
- Google's ``dp-accounting`` (`common.privacy.second_library`), another
  library: its PLD (tight) and its RDP on the same orders, the bracket every
  ledger row must sit in: PLD <= stored epsilon <= RDP.

Checks (each failure is a flag with severity ``"error"``):
- ``ledger-inconsistent``: an entry's stored ``epsilon_so_far`` differs from
  the recomputation by the accountant that ledger enforced with by more than
  ``LEDGER_REL_TOL`` (relative; both infinite counts as equal). Causes: a
  ledger edited by hand, spending missing from this run's record (e.g. a
  site's earlier runs when its ledger file is not readable), or a bug.
- ``accountants-disagree``: PRV exceeds RDP by more than ``PRV_SLACK``. Both
  are upper bounds on the same mechanism's epsilon, and Opacus' PRV value is
  its upper estimate, at most ``2 * eps_error`` above the true curve (its
  lower estimate is ``eps_error`` below it and the true value is at most the
  RDP bound). PRV below RDP is expected (RDP is looser) and is not a flag.
- ``over-budget``: epsilon after a round exceeds the keeper's budget.
- ``below-pld``: a row's stored epsilon is below dp-accounting's optimistic
  PLD estimate, a lower bound on the true epsilon: under-reported.
- ``above-rdp``: a row's stored epsilon is above dp-accounting's RDP bound of
  the same history: the number does not follow from the history.
- ``within-discretisation`` (severity ``"warning"``): below the pessimistic
  PLD but not below the optimistic one (inside PLD's discretisation error).
- ``unit-mismatch`` / ``delta-mismatch``: an entry disagrees with its ledger.

PRV evaluations are cached per history and capped at ``MAX_PRV`` distinct
histories per audit (about 1-3 s each on two cores): final states first, then
rounds in order; any state left out says so in its ``prv_error``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

from opacus.accountants import RDPAccountant

from common.privacy.accounting import PRV_EPS_ERROR, AccountingError, Entry, compute_epsilon, merge_history
from common.privacy.person_level import GroupAccountant
from common.privacy.second_library import PldBracket, check_row
from common.report.run_reader import Account

LEDGER_REL_TOL = 1e-6  # the ledger stores float64 epsilons of the same arithmetic: agreement is ~1e-15
PRV_SLACK = 2 * PRV_EPS_ERROR  # PRV's upper estimate may sit up to 2 x eps_error above a tight RDP bound
MAX_PRV = 40  # distinct histories given to PRV in one audit


@dataclass(frozen=True)
class Flag:
    site: str
    keeper: str
    round: int | None
    kind: str
    severity: str  # "error" | "warning"
    message: str


def _key(history: Sequence[Entry]) -> tuple:
    return tuple((float(s), float(q), int(n)) for s, q, n in history if n > 0 and q > 0)


class Recomputer:
    """Caches epsilons per (history, delta) and counts PRV evaluations."""

    def __init__(self, max_prv: int = MAX_PRV):
        self.max_prv = max_prv
        self._rdp: dict = {}
        self._prv: dict = {}
        self.pld = PldBracket()  # dp-accounting's PLD, composed incrementally and cached across accounts
        self.group = GroupAccountant()  # person-level reading (k records of one site), cached components

    def rdp(self, history: Sequence[Entry], delta: float) -> tuple[float, tuple[str, ...]]:
        key = (_key(history), delta)
        if key not in self._rdp:
            if not key[0]:
                self._rdp[key] = (0.0, ())
            else:
                acc = RDPAccountant()
                acc.history = list(key[0])
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    eps, _alpha = acc.get_privacy_spent(delta=delta)
                self._rdp[key] = (float(eps), tuple(dict.fromkeys(str(w.message) for w in caught)))
        return self._rdp[key]

    def prv(self, history: Sequence[Entry], delta: float, allow_new: bool = True) -> tuple[float | None, str | None]:
        """(epsilon, None) or (None, reason PRV could not give one)."""
        key = (_key(history), delta)
        if key in self._prv:
            return self._prv[key]
        if not key[0]:
            return 0.0, None
        if not allow_new or len(self._prv) >= self.max_prv:
            return None, f"not computed: this audit's limit of {self.max_prv} PRV evaluations was reached"
        try:
            self._prv[key] = (compute_epsilon(list(key[0]), delta, "prv").epsilon, None)
        except AccountingError as ex:
            self._prv[key] = (None, ex.reason)
        return self._prv[key]


def _rel_close(stored: float, recomputed: float) -> bool:
    if math.isinf(stored) or math.isinf(recomputed):
        return stored == recomputed
    return abs(stored - recomputed) <= LEDGER_REL_TOL * max(abs(recomputed), 1e-12)


def _num(x: float | None) -> float | None:
    """JSON-safe: finite numbers only (an infinite epsilon is reported as null plus a reason)."""
    return x if x is not None and math.isfinite(x) else None


def _spend(e, bracket: dict) -> dict:
    return {"mechanism": e.mechanism, "noise_multiplier": e.noise_multiplier, "clip_norm": e.clip_norm,
            "sensitivity": e.sensitivity, "sample_rate": e.sample_rate, "steps": e.steps, "status": e.status,
            "run_key": e.run_key, "epsilon_ledger": _num(e.epsilon_so_far),
            "epsilon_ledger_infinite": math.isinf(e.epsilon_so_far),
            **{k: bracket[k] for k in ("epsilon_pld", "epsilon_rdp_dpa", "bracket", "bracket_reason")}}


BRACKET_SEVERITY = {"below-pld": "error", "above-rdp": "error", "within-discretisation": "warning"}


def _enforced(own: str, history: Sequence[Entry], delta: float, rc: Recomputer) -> tuple[float, str | None]:
    """(epsilon by the accountant the ledger enforced, reason it could not be re-checked or None).

    A PRV failure counts as infinite (what the ledger itself records then); only the evaluation cap
    leaves an entry unchecked."""
    if own == "rdp":
        return rc.rdp(history, delta)[0], None
    eps, why = rc.prv(history, delta)
    if eps is None and why and why.startswith("not computed"):
        return math.inf, why
    return (math.inf if eps is None else eps), None


def recompute_account(acc: Account, rc: Recomputer, flags: list[Flag]) -> dict:
    """Rounds with both recomputations, the final state, and flags appended to ``flags``."""
    def flag(rnd, kind, msg, severity="error"):
        flags.append(Flag(acc.site, acc.keeper, rnd, kind, severity, msg))

    history = list(acc.prior_history)
    own = "rdp" if acc.accountant == "rdp" else "prv"
    rounds: list[dict] = []
    for e in acc.entries:
        if e.unit != acc.unit:
            flag(e.round, "unit-mismatch", f"entry of round {e.round} is {e.unit}-level in a {acc.unit}-level ledger")
        if e.delta != acc.delta:
            flag(e.round, "delta-mismatch", f"entry of round {e.round} has delta {e.delta}, the ledger {acc.delta}")
        history = merge_history(history, [e.spend().entry()])
        eps_own, why_not = _enforced(own, history, acc.delta, rc)
        if why_not:
            acc.notes.append(f"round {e.round}: the stored epsilon was not re-checked ({why_not})")
        elif not _rel_close(e.epsilon_so_far, eps_own):
            flag(e.round, "ledger-inconsistent",
                 f"round {e.round} {e.mechanism}: the ledger says epsilon {e.epsilon_so_far:.10g}, its history "
                 f"recomputed with {own.upper()} gives {eps_own:.10g} (prior history: {acc.prior_source})")
        bracket = check_row(e.epsilon_so_far, history, acc.delta, rc.pld)
        if bracket["bracket"] in BRACKET_SEVERITY:
            flag(e.round, bracket["bracket"], f"round {e.round} {e.mechanism}: {bracket['bracket_reason']} "
                 f"({acc.unit}-level, delta {acc.delta:g})", BRACKET_SEVERITY[bracket["bracket"]])
        for w in bracket["dpa_warnings"]:
            if w not in acc.notes:
                acc.notes.append(w)
        if not rounds or rounds[-1]["round"] != e.round:
            rounds.append({"round": e.round, "spends": [], "_history": None})
        rounds[-1]["spends"].append(_spend(e, bracket))
        rounds[-1]["_history"] = list(history)
    this_run = merge_history([e.spend().entry() for e in acc.entries if not acc.run_key or e.run_key == acc.run_key])
    total = merge_history(history, acc.later_history)  # later runs over the same state folder: the whole history
    if rounds:  # the final state gets a PRV evaluation before any per-round one
        rc.prv(total, acc.delta)
    for r in rounds:
        h = r.pop("_history")
        eps_rdp, rdp_warn = rc.rdp(h, acc.delta)
        eps_prv, prv_err = rc.prv(h, acc.delta)
        r.update(epsilon_rdp=_num(eps_rdp), epsilon_rdp_infinite=math.isinf(eps_rdp), rdp_warnings=list(rdp_warn),
                 epsilon_prv=_num(eps_prv), prv_error=prv_err,
                 budget_left=_num(acc.budget - (eps_rdp if own == "rdp" else (eps_prv if eps_prv is not None else math.inf))))
        if eps_prv is not None and eps_prv > eps_rdp + PRV_SLACK:
            flag(r["round"], "accountants-disagree",
                 f"round {r['round']}: PRV gives {eps_prv:.4f} > RDP {eps_rdp:.4f} + slack {PRV_SLACK}")
        spent = eps_rdp if own == "rdp" else (eps_prv if eps_prv is not None else math.inf)
        if spent > acc.budget and any(s["steps"] > 0 for s in r["spends"]):
            flag(r["round"], "over-budget", f"round {r['round']}: epsilon {spent:.4g} > budget {acc.budget:.4g}")
    return {"rounds": rounds, "history": [list(e) for e in total], "history_this_run": [list(e) for e in this_run]}
