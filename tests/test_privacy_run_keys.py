"""Ledger entries carry the run that spent them (issue 20, item 1) and the sensitivity they relied on."""

from __future__ import annotations

import json
import math

import pytest

from common.privacy.accounting import compute_epsilon
from common.privacy.ledger import LedgerError, SiteLedger, Spend

DELTA = 1e-5
SGD = Spend("dp-sgd", noise_multiplier=1.2, sample_rate=0.5, steps=3, clip_norm=1.0)
PROTO = Spend("dp-kmeans-prototypes", noise_multiplier=6.0, sample_rate=1.0, steps=2)


def two_runs() -> SiteLedger:
    led = SiteLedger(site="site-0", unit="record", delta=DELTA, budget=8.0)
    for r in (1, 2):
        led.record(r, [PROTO, SGD], "trained", timestamp=float(r), run_key="run-a")
    led.record(1, [], "refused", timestamp=3.0, run_key="run-b")
    return led


def test_a_round_sends_only_its_own_runs_entries():
    led = two_runs()
    metrics = led.to_metrics(1, "run-b")
    back = SiteLedger.from_metrics(metrics, site="site-0", run_key="run-b")
    # round 1 of run b is one refusal: run a's round-1 entries (same round number) stay at the site
    assert [(e.round, e.status, e.mechanism, e.run_key) for e in back] == [(1, "refused", "none", "run-b")]
    assert metrics["ledger.epsilon"] == led.epsilon()
    first = SiteLedger.from_metrics(led.to_metrics(1, "run-a"), site="site-0", run_key="run-a")
    assert first == led.entries[:2]
    assert SiteLedger.from_metrics(led.to_metrics(), site="site-0", run_key="run-b") == led.entries[-1:]


def test_sensitivity_is_the_mechanisms_delta_and_travels():
    assert SGD.sensitivity == 1.0 and PROTO.sensitivity == math.sqrt(2)
    assert Spend("dp-sgd-grouped", 1.0, 0.1, 2, clip_norm=0.5).sensitivity == 1.0  # 2C
    assert Spend("dp-sgd-grouped", 1.0, 0.1, 2, clip_norm=0.5, sensitivity=1.25).sensitivity == 1.25  # 2C + C'
    assert Spend("site-update-gaussian", 1.0, 0.3, 1, clip_norm=2.0).sensitivity == 2.0
    led = two_runs()
    back = SiteLedger.from_metrics(led.to_metrics(2, "run-a"), site="site-0", run_key="run-a")
    assert [e.sensitivity for e in back] == [math.sqrt(2), 1.0]
    metrics = led.to_metrics(2, "run-a")
    del metrics["ledger.0.sensitivity"]  # a site of an older version: its entry has no sensitivity
    assert SiteLedger.from_metrics(metrics, site="site-0")[0].sensitivity is None


def test_version_one_ledgers_are_read_and_keep_their_history(tmp_path):
    led = two_runs()
    d = led.to_dict()
    d["format_version"] = 1
    for e in d["entries"]:
        del e["run_key"], e["sensitivity"]
    path = tmp_path / "ledger-record.json"
    path.write_text(json.dumps(d))
    old = SiteLedger.load(path)
    assert old.history == led.history and old.epsilon() == led.epsilon()
    assert {e.run_key for e in old.entries} == {""}
    d["format_version"] = 99
    path.write_text(json.dumps(d))
    with pytest.raises(LedgerError, match="format_version"):
        SiteLedger.load(path)


def test_a_refusal_names_the_spending_of_earlier_runs():
    led = two_runs()
    before, eps = led.earlier_runs("run-b")
    assert len(before) == 4 and eps == pytest.approx(compute_epsilon(led.history, DELTA).epsilon, rel=1e-12)
    why = led.refusal_reason(9.5, "run-b")
    assert why.startswith(f"this site's ledger already holds epsilon {eps:.4g} (record-level, delta 1e-05, Opacus RDP)")
    assert "from 1 earlier run(s)" in why and "9.5 > budget 8" in why
    no_plan = led.refusal_reason(None, "run-c", "prior spending reaches the target")
    assert "from 2 earlier run(s)" in no_plan and "no noise level fits another round" in no_plan
    # a budget this run itself used up is not blamed on earlier runs
    assert led.refusal_reason(9.5, "run-a").startswith("budget exhausted")
    assert led.earlier_runs("run-a") == ([], 0.0)
