"""Read what a federated run left in RUN_DIR into per-site accounts the audit can recompute.

Inputs (written by the server's run log, see ``server/run_log.py``):
- ``ledger.json`` (required): every ledger entry each site reported, the
  refusal/rejection/error events and, under site-level DP, the server's own
  per-site ledger of its central Gaussian mechanism;
- ``metrics.json`` (optional): the run's configuration, privacy header and
  per-round rows;
- each site's own ledger file ``<state-dir>/<site>/ledger-<unit>.json`` when
  it is readable (simulations keep it under the run folder). A site's ledger
  outlives runs; the run's ledger.json holds only this run's entries. Entries
  carry the run's key (``run_key``), so this run's entries are found in the
  site's file by key: what comes before them (earlier runs) is the prior
  history, what comes after (later runs over the same state folder) the later
  history, and both are composed in, so the account's epsilon is the site's
  whole history, equal to its own ledger's. Entries of this run that the
  site recorded but ledger.json lacks (a round a restarted server ran again)
  are composed in too. Ledgers written before run keys existed are matched
  as an ordered subsequence instead. When the file is not readable, nothing
  is assumed (the recomputation then starts from zero and the consistency
  check says so if the stored epsilons disagree).

An account is one ledger kept by one keeper: ``"site"`` (the site's own
ledger, the one that makes it refuse) or ``"server"`` (site-level DP only:
the server's ledger of the same site under its central mechanism).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from common.atomic import read_json
from common.privacy.accounting import Entry, merge_history
from common.privacy.ledger import NEIGHBOURING, LedgerEntry, LedgerError, SiteLedger

KEEPERS = ("site", "server")


class RunDirError(ValueError):
    """RUN_DIR does not hold a run's ledger (or it is unreadable)."""


@dataclass
class Account:
    site: str
    keeper: str  # "site" | "server"
    unit: str  # "record" | "site"
    delta: float
    budget: float
    accountant: str  # the accountant the keeper enforced with
    entries: list[LedgerEntry]  # this run's entries, in order
    prior_history: list[Entry] = field(default_factory=list)  # spending before this run, composed in
    prior_source: str = "none found"  # where the prior history came from, in words
    notes: list[str] = field(default_factory=list)
    run_key: str = ""  # this run's key ("" for ledgers written before run keys)
    prior_runs: int = 0  # earlier runs (distinct keys) in the prior history
    later_history: list[Entry] = field(default_factory=list)  # spending of later runs in the site's file

    @property
    def neighbouring(self) -> str:
        return NEIGHBOURING[self.unit]


@dataclass
class RunRecord:
    run_dir: Path
    ledger: dict
    metrics: dict | None
    accounts: list[Account]
    sites: list[str]  # every site the run knew of (config, ledger, events, round rows), sorted

    @property
    def config(self) -> dict:
        return (self.metrics or {}).get("config", {})

    @property
    def privacy(self) -> dict:
        return self.ledger.get("privacy") or (self.metrics or {}).get("privacy", {})


def _entry(d: dict) -> LedgerEntry:
    try:
        return LedgerEntry(**d)
    except TypeError as ex:
        raise RunDirError(f"malformed ledger entry {d!r}: {ex}") from ex


def _same(a: LedgerEntry, b: LedgerEntry) -> bool:
    keys = ("round", "mechanism", "steps", "status", "unit")
    if any(getattr(a, k) != getattr(b, k) for k in keys):
        return False
    nums = ("noise_multiplier", "sample_rate", "epsilon_so_far")
    return all(math.isclose(getattr(a, k), getattr(b, k), rel_tol=1e-12, abs_tol=1e-15) or
               getattr(a, k) == getattr(b, k) for k in nums)


def _align_with_site_file(acc: Account, state_dir: Path | None) -> None:
    """Compose in what the site's own ledger file adds: spending before this run, and spending the site
    recorded during this run that is missing from ledger.json (e.g. a round a restarted server ran again)."""
    if state_dir is None or not acc.entries:
        return
    path = state_dir / acc.site / f"ledger-{acc.unit}.json"
    if not path.exists():
        acc.prior_source = f"site ledger file not found ({path})"
        return
    try:
        full = SiteLedger.load(path)
    except LedgerError as ex:
        acc.notes.append(f"the site's ledger file {path} is unreadable: {ex}")
        acc.prior_source = "site ledger file unreadable"
        return
    if acc.run_key:
        _align_by_key(acc, full, path)
        return
    matched, j = [], 0  # this run's entries as an ordered subsequence of the file's
    for i, e in enumerate(full.entries):
        if j < len(acc.entries) and _same(e, acc.entries[j]):
            matched.append(i)
            j += 1
    if j < len(acc.entries):
        acc.notes.append(f"the site's ledger file {path} does not contain this run's entries; prior spending unknown")
        acc.prior_source = "site ledger file does not match this run"
        return
    first, last = matched[0], matched[-1]
    acc.prior_history = merge_history([e.spend().entry() for e in full.entries[:first]])
    acc.prior_source = f"{path} ({first} earlier entries)"
    seen = set(matched)
    extra = [e for i, e in enumerate(full.entries[first:last + 1], first) if i not in seen]
    if extra:
        acc.entries = list(full.entries[first:last + 1])
        acc.notes.append(f"{len(extra)} entries of this run are in the site's ledger but not in ledger.json "
                         f"(rounds {sorted({e.round for e in extra})}); they are composed in")


def _align_by_key(acc: Account, full: SiteLedger, path: Path) -> None:
    """This run's entries are those of its key in the site's file; before them: earlier runs; after: later ones."""
    mine = [i for i, e in enumerate(full.entries) if e.run_key == acc.run_key]
    if not mine:
        acc.notes.append(f"the site's ledger file {path} holds no entry of this run (key {acc.run_key}); "
                         "prior spending unknown")
        acc.prior_source = "site ledger file does not match this run"
        return
    first, last = mine[0], mine[-1]
    span = full.entries[first:last + 1]
    missing = [e for e in acc.entries if not any(_same(e, f) for f in span)]
    if missing:  # the server recorded spending the site's file does not hold: rolled back or replaced
        acc.notes.append(f"{len(missing)} entries of ledger.json (rounds {sorted({e.round for e in missing})}) are "
                         f"not in the site's ledger file {path}; prior spending unknown")
        acc.prior_source = "site ledger file does not match this run"
        return
    before, later = full.entries[:first], full.entries[last + 1:]
    acc.prior_history = merge_history([e.spend().entry() for e in before])
    acc.prior_runs = len({e.run_key for e in before})
    acc.prior_source = f"{path} ({len(before)} earlier entries of {acc.prior_runs} earlier run(s))"
    acc.later_history = merge_history([e.spend().entry() for e in later])
    if later:
        acc.notes.append(f"the site's ledger holds {len(later)} entries of {len({e.run_key for e in later})} later "
                         "run(s); they are composed into its epsilon (the site's whole history)")
    others = [e for e in span if e.run_key != acc.run_key]
    if others:
        acc.notes.append(f"{len(others)} entries of other runs were recorded while this run ran (a shared state "
                         "folder); they are composed in where they happened")
    extra = [full.entries[i] for i in mine if not any(_same(full.entries[i], e) for e in acc.entries)]
    if extra:
        acc.notes.append(f"{len(extra)} entries of this run are in the site's ledger but not in ledger.json "
                         f"(rounds {sorted({e.round for e in extra})}); they are composed in")
    acc.entries = list(span)


def _site_accounts(ledger: dict, state_dir: Path | None) -> list[Account]:
    out = []
    for site, raw in sorted((ledger.get("sites") or {}).items()):
        entries = [_entry(d) for d in raw]
        if not entries:
            continue
        last = entries[-1]
        keys = {e.run_key for e in entries}
        acc = Account(site, "site", last.unit, last.delta, last.budget, last.accountant, entries,
                      run_key=last.run_key if len(keys) == 1 else "")
        if len(keys) > 1:
            acc.notes.append(f"ledger.json holds entries of {len(keys)} run keys for this site; matched by content")
        _align_with_site_file(acc, state_dir)
        out.append(acc)
    return out


def _server_accounts(ledger: dict) -> list[Account]:
    out = []
    for site, d in sorted((ledger.get("server_site_level") or {}).items()):
        notes = []
        try:
            led = SiteLedger.from_dict(d)
        except LedgerError as ex:  # e.g. history does not match entries: keep the entries, say so
            notes.append(f"server ledger failed its own check: {ex}")
            led = None
        entries = led.entries if led else [_entry(e) for e in d.get("entries", [])]
        out.append(Account(site, "server", d.get("unit", "site"), float(d["delta"]), float(d["budget"]),
                           d.get("accountant", "rdp"), entries, prior_source="none (the server's ledger is per run)",
                           notes=notes))
    return out


def read_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    ledger_path = run_dir / "ledger.json"
    if not ledger_path.exists():
        raise RunDirError(f"{run_dir} holds no ledger.json: not a fedgckd run folder (or the run never finished a round)")
    try:
        ledger = read_json(ledger_path)
        metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else None
    except ValueError as ex:
        raise RunDirError(f"{run_dir}: unreadable run record: {ex}") from ex
    config = (metrics or {}).get("config", {})
    state = config.get("state-dir")
    state_dir = Path(state) if state else None
    if state_dir is not None and not state_dir.is_absolute():
        state_dir = run_dir / state_dir if (run_dir / state_dir).exists() else state_dir
    accounts = _site_accounts(ledger, state_dir) + _server_accounts(ledger)
    sites = {a.site for a in accounts} | {e["site"] for e in ledger.get("events", [])}
    sites |= {f"site-{i}" for i in range(int(config.get("sites", 0) or 0))}
    for row in (metrics or {}).get("rounds", []):
        sites |= set(row.get("sampled", []))
    return RunRecord(run_dir, ledger, metrics, accounts, sorted(sites, key=_site_order))


def _site_order(name: str) -> tuple:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, -1)
