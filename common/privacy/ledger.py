"""The per-site privacy ledger: persisted accountant history plus an audit trail.

One ``SiteLedger`` per site and privacy unit. Its ``history`` is the Opacus
accountant state (``(noise_multiplier, sample_rate, steps)`` tuples) and is
the single source of truth for epsilon: it survives restarts (``save`` is
atomic, ``load_or_create`` continues it) and is never reset by a new round,
a new PrivacyEngine or a new run. ``entries`` say, per round and mechanism,
what was spent, under which unit and neighbouring relation, and the epsilon
after it. Loading checks that the entries reproduce the history.

Units and neighbouring relations (docs/privacy.md, section 1):
- ``"record"``: add/remove one image-caption record at this site. Mechanisms
  ``dp-sgd`` (per-record clipping, Poisson sampling), ``dp-sgd-grouped``
  (group clipping) and ``dp-kmeans-prototypes``.
- ``"site"``: add/remove one site's whole dataset. Mechanism
  ``site-update-gaussian`` (clipped site updates, noise on the server's sum).
Each entry names its mechanism and its sensitivity Delta (`mechanisms`).

Runs: every entry carries the ``run_key`` of the federation run that spent
it (the server's key, sent with each round). A site's ledger outlives runs,
so "this run's round 1" is (run_key, round), never the round alone; what a
site spent in earlier runs is the part of its history under other keys.

A site refuses a round (fails closed) when ``would_exceed`` says the planned
spending would take epsilon past the budget, or when epsilon cannot be
computed. Record what actually ran: a crashed round records the steps that
ran before the crash.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from common.privacy.accounting import ACCOUNTANTS, AccountingError, Entry, as_entry, compute_epsilon, merge_history
from common.privacy.mechanisms import MECHANISM_UNIT, MECHANISMS, default_sensitivity  # noqa: F401 (re-exported)

UNITS = ("record", "site")
NEIGHBOURING = {
    "record": "add/remove one image-caption record at this site",
    "site": "add/remove one site's whole dataset",
}
STATUSES = ("trained", "refused", "crashed", "skipped")
FORMAT_VERSION = 2  # 2: entries carry run_key and sensitivity; version 1 files are read (both fields empty)
READABLE_VERSIONS = (1, 2)


class LedgerError(RuntimeError):
    """The ledger file is missing pieces, corrupt, inconsistent or does not match what was asked for."""


@dataclass(frozen=True)
class Spend:
    """One mechanism run in a round, as it enters the accountant."""

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    # None: the mechanism does not clip (dp-kmeans bounds sensitivity by unit-normalising records).
    clip_norm: float | None = None
    # Delta, the L2 sensitivity the noise is scaled to; None: the mechanism's default (`mechanisms`).
    sensitivity: float | None = None

    def __post_init__(self):
        if self.sensitivity is None:
            object.__setattr__(self, "sensitivity", default_sensitivity(self.mechanism, self.clip_norm))

    def entry(self) -> Entry:
        return as_entry((self.noise_multiplier, self.sample_rate, self.steps))


@dataclass(frozen=True)
class LedgerEntry:
    site: str
    round: int
    unit: str
    neighbouring: str
    mechanism: str
    delta: float
    noise_multiplier: float
    clip_norm: float | None
    sample_rate: float
    steps: int
    accountant: str
    epsilon_so_far: float  # whole history up to and including this entry; inf if the accountant failed
    budget: float
    status: str
    timestamp: float  # unix seconds
    run_key: str = ""  # the federation run that spent it; "" in version-1 ledgers and outside a federation
    sensitivity: float | None = None  # Delta of the mechanism (noise std = noise_multiplier x Delta)

    def spend(self) -> Spend:
        return Spend(self.mechanism, self.noise_multiplier, self.sample_rate, self.steps, self.clip_norm,
                     self.sensitivity)


@dataclass
class SiteLedger:
    site: str
    unit: str
    delta: float
    budget: float
    # docs/privacy.md, section 7: Opacus' RDP accountant is primary; its bound is what the site enforces.
    accountant: str = "rdp"
    # A new ledger has spent nothing; a loaded one carries its history in.
    history: list[Entry] = field(default_factory=list)
    entries: list[LedgerEntry] = field(default_factory=list)

    def __post_init__(self):
        if self.unit not in UNITS:
            raise LedgerError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.accountant not in ACCOUNTANTS:
            raise LedgerError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not (0 < self.delta < 1 and self.budget > 0):
            raise LedgerError(f"need 0 < delta < 1 and budget > 0, got delta={self.delta}, budget={self.budget}")
        self.history = merge_history(self.history)

    @property
    def neighbouring(self) -> str:
        return NEIGHBOURING[self.unit]

    def epsilon(self) -> float:
        return compute_epsilon(self.history, self.delta, self.accountant).epsilon

    def _check_spends(self, spends: Sequence[Spend]) -> None:
        for s in spends:
            if MECHANISM_UNIT.get(s.mechanism) != self.unit:
                raise LedgerError(f"mechanism {s.mechanism!r} is not a {self.unit}-level mechanism")
            s.entry()  # validates the numbers

    def would_exceed(self, planned: Sequence[Spend]) -> tuple[bool, float]:
        """(refuse?, projected epsilon) for the planned spending of the next round.

        Fails closed: if the projected epsilon cannot be computed, the answer is
        (True, inf).
        """
        self._check_spends(planned)
        try:
            projected = compute_epsilon(merge_history(self.history, [s.entry() for s in planned]),
                                        self.delta, self.accountant).epsilon
        except AccountingError:
            return True, math.inf
        return (not projected <= self.budget), projected

    def record(self, round: int, spends: Sequence[Spend], status: str, timestamp: float | None = None,
               run_key: str = "") -> list[LedgerEntry]:
        """Append what round ``round`` of run ``run_key`` spent (possibly nothing, e.g. refused); return the new entries."""
        if status not in STATUSES:
            raise LedgerError(f"status must be one of {STATUSES}, got {status!r}")
        self._check_spends(spends)
        ts = time.time() if timestamp is None else float(timestamp)
        if not spends:  # a round that spent nothing is still on the record
            spends = [Spend("none", 0.0, 0.0, 0)]
        history, new = list(self.history), []
        for s in spends:
            history = merge_history(history, [s.entry()])
            try:
                eps = compute_epsilon(history, self.delta, self.accountant).epsilon
            except AccountingError:  # the spending happened and must be recorded; unknown counts as unbounded
                eps = math.inf
            new.append(LedgerEntry(
                site=self.site, round=int(round), unit=self.unit, neighbouring=self.neighbouring,
                mechanism=s.mechanism, delta=self.delta, noise_multiplier=float(s.noise_multiplier),
                clip_norm=None if s.clip_norm is None else float(s.clip_norm), sample_rate=float(s.sample_rate),
                steps=int(s.steps), accountant=self.accountant, epsilon_so_far=eps,
                budget=self.budget, status=status, timestamp=ts, run_key=str(run_key),
                sensitivity=None if s.sensitivity is None else float(s.sensitivity)))
        self.history = history
        self.entries.extend(new)
        return new

    def earlier_runs(self, run_key: str) -> tuple[list[LedgerEntry], float]:
        """(entries of runs other than ``run_key`` that precede its first entry, their epsilon)."""
        first = next((i for i, e in enumerate(self.entries) if e.run_key == run_key), len(self.entries))
        before = [e for e in self.entries[:first] if e.run_key != run_key]
        try:
            eps = compute_epsilon([e.spend().entry() for e in before], self.delta, self.accountant).epsilon
        except AccountingError:
            eps = math.inf
        return before, eps

    def refusal_reason(self, projected: float | None, run_key: str = "", why: str = "") -> str:
        """Why a round is refused: it would reach ``projected`` (None: no noise level fits it, because ``why``).

        Names the spending of earlier runs (entries under other run keys) when there is any: that, not this run,
        is then what exhausted the budget."""
        before, eps_before = self.earlier_runs(run_key) if run_key else ([], 0.0)
        tail = (f"this round would bring it to {projected:.4g} > budget {self.budget:.4g}" if projected is not None
                else f"no noise level fits another round into the budget {self.budget:.4g}")
        if before and eps_before > 0:
            runs = len({e.run_key for e in before})
            return (f"this site's ledger already holds epsilon {eps_before:.4g} ({self.unit}-level, delta "
                    f"{self.delta:g}, Opacus {self.accountant.upper()}) from {runs} earlier run(s); {tail}")
        if projected is None:
            return f"cannot plan this round within the budget {self.budget:g}: {why}"
        return (f"budget exhausted: epsilon would reach {projected:.4g} > budget {self.budget:.4g} "
                f"(delta {self.delta:g}, {self.unit}-level, spent {self.epsilon():.4g})")

    def to_metrics(self, round: int | None = None, run_key: str | None = None) -> dict[str, int | float]:
        """Flat int/float metrics of one round's entries (see ``ledger_metrics``)."""
        from common.privacy.ledger_metrics import to_metrics

        return to_metrics(self, round, run_key)

    @staticmethod
    def from_metrics(metrics, site: str, run_key: str = "") -> list[LedgerEntry]:
        """Server side: rebuild the entries a site sent with ``to_metrics`` (stamped with the server's run key)."""
        from common.privacy.ledger_metrics import from_metrics

        return from_metrics(metrics, site, run_key)

    # ---- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "site": self.site, "unit": self.unit,
                "neighbouring": self.neighbouring, "delta": self.delta, "budget": self.budget,
                "accountant": self.accountant, "history": [list(e) for e in self.history],
                "entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_dict(cls, d: dict) -> "SiteLedger":
        try:
            if d["format_version"] not in READABLE_VERSIONS:
                raise LedgerError(f"unknown ledger format_version {d['format_version']!r}")
            led = cls(site=str(d["site"]), unit=d["unit"], delta=float(d["delta"]), budget=float(d["budget"]),
                      accountant=d["accountant"], history=[as_entry(e) for e in d["history"]],
                      entries=[LedgerEntry(**e) for e in d["entries"]])
        except (KeyError, TypeError, ValueError) as ex:
            raise LedgerError(f"malformed ledger: {type(ex).__name__}: {ex}") from ex
        replay = merge_history([e.spend().entry() for e in led.entries])
        if replay != led.history:
            raise LedgerError(f"ledger history {led.history} does not match its entries {replay}")
        return led

    def save(self, path: str | os.PathLike) -> None:
        """Atomic write: a temporary file in the same folder, fsync, then os.replace."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        try:  # make the rename itself durable where the platform allows it
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SiteLedger":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as ex:
            raise LedgerError(f"{path}: not valid JSON ({ex}); refusing to start a fresh ledger") from ex
        return cls.from_dict(data)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike, site: str, unit: str, delta: float, budget: float,
                       accountant: str = "rdp") -> "SiteLedger":
        """Continue the ledger at ``path`` (never resetting its history) or start a new one.

        Refuses a stored ledger of another site, unit, delta or accountant, and a
        budget higher than the stored one (a lower budget is applied).
        """
        if not Path(path).exists():
            return cls(site=site, unit=unit, delta=float(delta), budget=float(budget), accountant=accountant)
        led = cls.load(path)
        asked = {"site": site, "unit": unit, "delta": float(delta), "accountant": accountant}
        for key, want in asked.items():
            have = getattr(led, key)
            if have != want:
                raise LedgerError(f"{path}: stored ledger has {key}={have!r} but {want!r} was requested; "
                                  "epsilon under one definition cannot continue under another")
        if float(budget) > led.budget:
            raise LedgerError(f"{path}: requested budget {budget} exceeds the stored budget {led.budget}; "
                              "raising a budget is a deliberate act, edit the ledger explicitly")
        led.budget = float(budget)
        return led
