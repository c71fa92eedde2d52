"""Ledger entries as flat Flower metrics, and back.

A client sends its round's ledger entries to the server inside its reply's
metrics. Flower's ``MetricRecord`` accepts only ints and floats (and lists of
them), so categorical fields travel as integer codes into the public tables of
``ledger.py`` (``UNITS``, ``MECHANISMS``, ``STATUSES``, ``ACCOUNTANTS``); the
neighbouring relation follows from the unit, and the site id from the sender.
A missing clip norm or sensitivity travels as ``-1.0`` (never a valid norm).

Which entries a round sends: those of that round *of this run* (``run_key``,
the key the server sent with the round). A site's ledger outlives runs, so
round 1 of a second run over the same state folder must not send the first
run's round-1 entries again. The key itself does not travel (the server
knows its own and stamps it on the entries it rebuilds).

Nothing here is per-record: only mechanism parameters and epsilon values,
which are themselves public parameters of the DP analysis.
"""

from __future__ import annotations

from typing import Mapping

from common.privacy.accounting import ACCOUNTANTS
from common.privacy.ledger import MECHANISMS, NEIGHBOURING, STATUSES, UNITS, LedgerEntry, LedgerError, SiteLedger

PREFIX = "ledger"
NO_CLIP = -1.0
_FLOATS = ("noise_multiplier", "sample_rate", "epsilon_so_far", "timestamp")
_OPTIONAL = ("clip_norm", "sensitivity")  # None travels as NO_CLIP


def to_metrics(ledger: SiteLedger, round: int | None = None, run_key: str | None = None) -> dict[str, int | float]:
    """The entries of ``round`` of run ``run_key`` (defaults: the latest entry's) plus a summary, all int/float."""
    last = ledger.entries[-1] if ledger.entries else None
    if round is None:
        round = last.round if last else -1
    if run_key is None:
        run_key = last.run_key if last else ""
    entries = [e for e in ledger.entries if e.round == round and e.run_key == run_key]
    out: dict[str, int | float] = {
        f"{PREFIX}.round": int(round),
        f"{PREFIX}.n": len(entries),
        f"{PREFIX}.unit": UNITS.index(ledger.unit),
        f"{PREFIX}.accountant": ACCOUNTANTS.index(ledger.accountant),
        f"{PREFIX}.delta": float(ledger.delta),
        f"{PREFIX}.budget": float(ledger.budget),
        f"{PREFIX}.epsilon": float(entries[-1].epsilon_so_far if entries else ledger.epsilon()),
    }
    for i, e in enumerate(entries):
        p = f"{PREFIX}.{i}"
        out[f"{p}.mechanism"] = MECHANISMS.index(e.mechanism)
        out[f"{p}.status"] = STATUSES.index(e.status)
        out[f"{p}.steps"] = int(e.steps)
        for name in _OPTIONAL:
            value = getattr(e, name)
            out[f"{p}.{name}"] = NO_CLIP if value is None else float(value)
        for name in _FLOATS:
            out[f"{p}.{name}"] = float(getattr(e, name))
    return out


def _code(table: tuple[str, ...], value, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(table):
        raise LedgerError(f"metric {key!r}={value!r} is not a code into {table}")
    return table[value]


def _optional(metrics: Mapping[str, int | float], key: str) -> float | None:
    """A norm that may be None; the clip norm is required, the sensitivity may be absent (older sites)."""
    value = float(metrics[key] if key.endswith("clip_norm") else metrics.get(key, NO_CLIP))
    return None if value == NO_CLIP else value


def from_metrics(metrics: Mapping[str, int | float], site: str, run_key: str = "") -> list[LedgerEntry]:
    """Rebuild the round's ``LedgerEntry`` list on the server (``site``: who sent them; ``run_key``: this run's)."""
    try:
        n = int(metrics[f"{PREFIX}.n"])
        unit = _code(UNITS, metrics[f"{PREFIX}.unit"], "unit")
        accountant = _code(ACCOUNTANTS, metrics[f"{PREFIX}.accountant"], "accountant")
        common = dict(site=site, round=int(metrics[f"{PREFIX}.round"]), unit=unit, neighbouring=NEIGHBOURING[unit],
                      delta=float(metrics[f"{PREFIX}.delta"]), accountant=accountant,
                      budget=float(metrics[f"{PREFIX}.budget"]))
        out = []
        for i in range(n):
            p = f"{PREFIX}.{i}"
            out.append(LedgerEntry(
                **common,
                mechanism=_code(MECHANISMS, metrics[f"{p}.mechanism"], f"{p}.mechanism"),
                status=_code(STATUSES, metrics[f"{p}.status"], f"{p}.status"),
                steps=int(metrics[f"{p}.steps"]),
                **{name: _optional(metrics, f"{p}.{name}") for name in _OPTIONAL},
                **{name: float(metrics[f"{p}.{name}"]) for name in _FLOATS},
                run_key=str(run_key),
            ))
    except KeyError as ex:
        raise LedgerError(f"ledger metrics incomplete: missing {ex}") from ex
    return out
