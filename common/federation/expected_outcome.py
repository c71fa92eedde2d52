"""What a record-level federation can expect to keep, read off a measured table (never a guess).

Before training, `fedgckd simulate --privacy record` says how loud each site's
DP-SGD noise is. This module adds the expected *outcome*: the share of
one-machine GCKD's gain over direct transfer that record-level epsilon 8
kept at the measured site size nearest the run's median site.

Provenance of ``MEASURED`` (a test checks it against the file, so a rerun of
the benchmark forces an update here):
- file: benchmarks/results/site_size.json (table in site_size.md and
  docs/limits.md, "Record-level DP against records per site"), written by
  ``python benchmarks/site_size.py`` (one run, 4,520 s on 2 cores), measured
  on the current base and written at commit 6b867eb (2026-12-07; the teacher
  runs/teachers/flat of benchmarks/direct_transfer.py, seed 0);
- setting: flat->outline (``sites`` profile), per-record mode, 10 IID sites,
  emulated record-level FedAvg (benchmarks/dp_emulation.py's loop), 10 rounds
  x 20 local steps at sample rate 0.25, epsilon 8 per record, delta 1e-5,
  Opacus RDP accountant (noise multiplier 2.4258); step size chosen on val,
  test R1 reported; ``last`` = the image head's last Linear, ``all`` = the
  whole image head (per-record mode keeps the text head frozen).
- ``share``: (fed R1 - direct R1) / (central R1 - direct R1) at epsilon 8;
  ``no_noise_share``: the same without noise (the federation's ceiling).

A run whose DP-SGD noise is set by hand (``--noise-multiplier``, which
overrides the noise derived from its epsilon) is compared by the epsilon that
noise actually spends over the planned run (`hand_set_epsilon`: the ledger's
accountant on the spends a site plans, `site_budget.record_spends`), not by
its budget.

Two real federations are measured (``GROUPED`` and ``PER_RECORD``, checked
against the merged benchmarks/results/federated.json by a test), each on three
seeds: the `sites` profile's ten Dirichlet sites (a seed's own split; median
site 1,494 / 1,568 / 1,884 records for seeds 0 / 1 / 2, from each run's
``sites:`` line), flat->outline, record-level epsilon 8, delta 1e-5, RDP
(`benchmarks/federated.py --profile sites --runs fed_grouped_record_eps8
fed_per_record_record_eps8`; grouped mode at the run config's defaults,
per-record mode at the record-dp preset). A run is shown its mode's
federation (mean test R1 over the seeds and the merged share of the central
gain), then the emulated per-record table.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

SOURCE = "benchmarks/results/site_size.md"
POINTER = f"{SOURCE} and docs/limits.md"
LOW_SHARE = 0.25  # below a quarter of the central gain the line is shown in yellow (simulate)
ABOUT = 1.1  # a median within 10% of a measured size is "about" that size; otherwise the brackets are named


@dataclass(frozen=True)
class MeasuredRow:
    records_per_site: int
    epsilon: float  # record-level, delta MEASURED_DELTA, RDP
    loss_mode: str  # "per_record": the only mode measured in a federation
    train_params: str  # "last" or "all" (image head only, per-record mode)
    share: float  # share of central GCKD's gain over direct transfer kept at `epsilon`
    no_noise_share: float  # the same federation without noise


MEASURED_DELTA, MEASURED_ACCOUNTANT = 1e-5, "RDP"
MEASURED_SETTING = ("per-record mode, flat->outline, 10 IID sites, 10 rounds x 20 steps at sample rate 0.25, "
                    "emulated")
MEASURED: tuple[MeasuredRow, ...] = (  # copied from benchmarks/results/site_size.json, sizes[*].train_sets
    MeasuredRow(180, 8.0, "per_record", "last", 0.067, 0.451),
    MeasuredRow(180, 8.0, "per_record", "all", -0.066, 0.423),
    MeasuredRow(600, 8.0, "per_record", "last", 0.162, 0.415),
    MeasuredRow(600, 8.0, "per_record", "all", 0.134, 0.481),
    MeasuredRow(1800, 8.0, "per_record", "last", 0.208, 0.391),
    MeasuredRow(1800, 8.0, "per_record", "all", 0.279, 0.573),
)


@dataclass(frozen=True)
class FederatedRun:
    """A measured federation on several seeds (FEDERATED_SOURCE: the sites profile's flat->outline rows)."""
    medians: tuple[int, ...]  # each seed's median site (its own Dirichlet split of the sites profile), seed order
    epsilon: float  # record-level, delta MEASURED_DELTA, RDP
    r1: float  # the row's test R1, mean over the seeds
    direct_r1: float  # direct transfer's, mean over the same seeds
    share: float  # of central_full's gain over direct transfer, as the merged file states it
    seeds: tuple[int, ...]
    row: str  # the benchmark row (benchmarks/federated_rows.py)
    setting: str  # what the row ran, in words

    @property
    def median_records(self) -> int:
        """The largest median site among the measured seeds: a run with sites up to this size is covered."""
        return max(self.medians[s] for s in self.seeds)


FEDERATED_SOURCE = "benchmarks/results/federated.json"
FEDERATED_PAIR = ("sites", "flat->outline")  # runs[profile][pair] in FEDERATED_SOURCE
MEDIANS = (1494, 1568, 1884)  # seeds 0 / 1 / 2: the `sites:` line of each seed's run log (flat->outline split)
GROUPED = FederatedRun(MEDIANS, 8.0, 2.39, 7.47, -0.06, (0, 1, 2), "fed_grouped_record_eps8", "the run config's defaults")
PER_RECORD = FederatedRun(MEDIANS, 8.0, 26.94, 7.47, 0.231, (0, 1, 2), "fed_per_record_record_eps8",
                          "the record-dp preset: the whole image head")


def _federated(name: str, run: FederatedRun) -> str:
    medians = sorted(run.medians[s] for s in run.seeds)
    if len(run.seeds) == 1:
        where, ended = f"one federation of ten sites (median {_n(medians[0])} records", "test R1"
    else:
        count = "three" if len(run.seeds) == 3 else str(len(run.seeds))
        where = (f"{count} federations of ten sites (seeds {', '.join(map(str, run.seeds))}; median site "
                 f"{_n(medians[0])}-{_n(medians[-1])} records")
        ended = "a mean test R1 of"
    return (f"{name}, measured in {where}, flat->outline, record-level epsilon {run.epsilon:g}, {run.setting}), "
            f"ended at {ended} {run.r1:.1f} against direct transfer's {run.direct_r1:.1f}, {_pct(run.share)} of "
            f"central GCKD's gain ({FEDERATED_SOURCE})")


@dataclass(frozen=True)
class Estimate:
    text: str
    low: bool  # the measured share is an honest upper-ish figure for this run and below LOW_SHARE


def _pct(share: float, say_worse: bool = True) -> str:
    p = round(100 * share)
    return f"{p}%" if p >= 0 or not say_worse else f"{p}% (worse than direct transfer)"


def _delta(d: float) -> str:
    mantissa, exp = f"{d:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def _n(records: float) -> str:
    return f"{int(round(records)):,}"


def _rows(size: int, sets: list[str]) -> list[MeasuredRow]:
    return [r for r in MEASURED if r.records_per_site == size and r.train_params in sets]


def _grew(sets: list[str], sizes: list[int]) -> bool:
    """Whether the measured epsilon-8 share rose with site size for every trained set shown."""
    for t in sets:
        shares = [_rows(s, [t])[0].share for s in sizes]
        if any(b <= a for a, b in zip(shares, shares[1:])):
            return False
    return True


def _kept(size: int, sets: list[str]) -> str:
    """'11% of central GCKD's gain over direct transfer with train-params last (no noise: 35%)', per trained set."""
    whose = " of central GCKD's gain over direct transfer"
    parts = [f"{_pct(r.share)}{'' if k else whose} with train-params {r.train_params} (no noise: {_pct(r.no_noise_share)})"
             for k, r in enumerate(_rows(size, sets))]
    return " and ".join(parts)


def _short(size: int, sets: list[str]) -> str:
    return ", ".join(f"{_pct(r.share, False)} ({r.train_params})" if len(sets) > 1 else _pct(r.share, False)
                     for r in _rows(size, sets))


def _mode(loss_mode: str) -> str:
    mode = loss_mode.strip().replace("-", "_")
    if mode not in ("per_record", "grouped"):
        raise ValueError(f"expected_outcome: loss mode {loss_mode!r} is not a record-level mode "
                         "(per_record or grouped); the measured table is record-level DP's")
    return mode


def hand_set_epsilon(cfg) -> float:
    """Record-level epsilon that a run with a hand-set DP-SGD noise (``cfg.noise_multiplier`` > 0) spends at a fresh
    site that trains in every one of its rounds: each round's planned spends (DP prototypes, DP-SGD;
    `site_budget.record_spends`, what the sites record) composed by the run's accountant at its delta.
    ``inf`` when no finite epsilon can be certified."""
    from common.federation.site_budget import record_spends
    from common.privacy.accounting import AccountingError, compute_epsilon, merge_history

    if not cfg.noise_multiplier > 0:
        raise ValueError("hand_set_epsilon: the run's noise is derived from its epsilon (noise-multiplier 0)")
    spends, _ = record_spends(cfg, cfg.epsilon, cfg.delta, cfg.accountant, [], 1)
    history = merge_history(*([s.entry() for s in spends] for _ in range(cfg.rounds)))
    try:
        return compute_epsilon(history, cfg.delta, cfg.accountant).epsilon
    except AccountingError:
        return math.inf


def estimate(records_per_site: list[int], epsilon: float, loss_mode: str, train_params: str, *,
             delta: float = MEASURED_DELTA, accountant: str = "rdp", noise_multiplier: float = 0.0,
             budget: float | None = None) -> Estimate | None:
    """The expected share of the central gain for a record-level federation, from ``MEASURED``; None without sites.

    ``epsilon``, ``delta`` and ``accountant``: the run's record-level budget, compared with the measured one.
    With ``noise_multiplier`` > 0 (set by hand) ``epsilon`` is what that noise spends over the run
    (`hand_set_epsilon`) and ``budget`` the sites' budget, at which they stop."""
    if not records_per_site:
        return None
    if not epsilon > 0:
        raise ValueError(f"expected_outcome: epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"expected_outcome: delta must be in (0, 1), got {delta}")
    if any(n < 0 for n in records_per_site):
        raise ValueError(f"expected_outcome: a site cannot hold {min(records_per_site)} records")
    mode = _mode(loss_mode)
    median = statistics.median(records_per_site)
    sizes = sorted({r.records_per_site for r in MEASURED})
    measured_sets = sorted({r.train_params for r in MEASURED})
    spec = train_params.strip()
    sets = [spec] if mode == "per_record" and spec in measured_sets else measured_sets
    eps = f"record-level epsilon {MEASURED[0].epsilon:g} (delta {_delta(MEASURED_DELTA)}, {MEASURED_ACCOUNTANT})"

    if median * ABOUT < sizes[0]:
        used, about = sizes[0], ""
        where = f"fewer than {_n(used)} records per site (median {_n(median)}): below anything we measured; "
        after = (f"; the share grew with site size ({_short(sizes[-1], sets)} at {_n(sizes[-1])}), so expect less here"
                 if _grew(sets, sizes) else "")
    elif median > sizes[-1] * ABOUT:
        used, about = sizes[-1], ""
        where = f"more than {_n(used)} records per site (median {_n(median)}): above anything we measured; "
        after = (f"; the share grew with site size ({_short(sizes[0], sets)} at {_n(sizes[0])}), so expect more here, "
                 "by an amount we have not measured" if _grew(sets, sizes) else "")
    else:
        used = min(sizes, key=lambda s: abs(math.log(max(median, 1) / s)))  # nearest on a log scale: noise ~ 1/records
        if max(median, 1) / used <= ABOUT and used / max(median, 1) <= ABOUT:
            where, about, other = "", "about ", sizes[-1] if used != sizes[-1] else None
        else:
            lo = max(s for s in sizes if s <= median)  # inside the measured range here: neither is empty
            hi = min(s for s in sizes if s >= median)
            where, about = f"median {_n(median)} records per site, between the measured {_n(lo)} and {_n(hi)}; ", ""
            other = hi if used == lo else lo
        after = f"; at {_n(other)} records per site {_short(other, sets)}" if other is not None else ""

    own = GROUPED if mode == "grouped" else PER_RECORD  # the mode's own federated measurement
    fed = _federated("grouped mode" if mode == "grouped" else "per-record mode", own)
    then = ("for per-record mode (image head only), " if mode == "grouped" else
            "in an emulated federation of IID sites (image head only), ")
    first = (f"Expected outcome: {fed}; {then}{where}at {about}{_n(used)} records per site, {eps} kept, in our "
             f"measurements, {_kept(used, sets)}{after}.")

    notes = []
    if mode == "per_record" and spec not in measured_sets:
        notes.append(f"train-params {spec} was not measured")
    unit = f"(delta {_delta(delta)}, {accountant.upper()})"
    measured = MEASURED[0].epsilon
    if noise_multiplier > 0:  # the budget did not set the noise: compare what the noise spends
        spent = "no finite epsilon" if math.isinf(epsilon) else f"record-level epsilon {epsilon:.3g} {unit}"
        side = ("about" if math.isclose(epsilon, measured, rel_tol=0.01) else
                "below" if epsilon < measured else "above")
        stops = budget is not None and epsilon > budget  # the run ends early, at less noise per step: not measured
        expect = "" if side == "about" or stops else f", so expect {'less' if side == 'below' else 'more'}"
        notes.append(f"this run's DP-SGD noise multiplier {noise_multiplier:g} is set by hand (--noise-multiplier), "
                     f"not derived from its epsilon: over the planned run it spends {spent} at a site that trains "
                     f"every round, {side} the measured {measured:g}{expect}")
        if stops:
            notes.append(f"but the sites refuse rounds past their budget of record-level epsilon {budget:g}, so fewer "
                         "rounds than planned will train (a run we have not measured)")
    elif epsilon != measured:  # more budget, less noise: the direction is certain, the amount is not measured
        side = "below" if epsilon < measured else "above"
        notes.append(f"this run's record-level epsilon {epsilon:g} {unit} is {side} the measured {measured:g}, so "
                     f"expect {'less' if side == 'below' else 'more'}")
    elif delta != MEASURED_DELTA or accountant.upper() != MEASURED_ACCOUNTANT:
        notes.append(f"this run's record-level epsilon {epsilon:g} {unit} differs from the measured budget in delta "
                     "or accountant (a smaller delta means more noise)")
    notes.append(f"measured: {MEASURED_SETTING}; see {POINTER}")
    second = "; ".join(notes)
    best = max(r.share for r in _rows(used, sets))
    not_more = epsilon <= measured or (noise_multiplier > 0 and math.isclose(epsilon, measured, rel_tol=0.01))
    low = (mode == "per_record" and not_more and median <= sizes[-1] * ABOUT
           and best < LOW_SHARE)  # a figure that this run should not beat, and a small one
    low = low or (not_more and median <= own.median_records * ABOUT and own.share < LOW_SHARE)
    return Estimate(f"{first} {second[0].upper()}{second[1:]}.", low)


def expected_outcome(records_per_site: list[int], epsilon: float, loss_mode: str, train_params: str, *,
                     delta: float = MEASURED_DELTA, accountant: str = "rdp", noise_multiplier: float = 0.0,
                     budget: float | None = None) -> str | None:
    """Two plain sentences: what the measured table says a run like this keeps; None without sites."""
    est = estimate(records_per_site, epsilon, loss_mode, train_params, delta=delta, accountant=accountant,
                   noise_multiplier=noise_multiplier, budget=budget)
    return est.text if est else None
