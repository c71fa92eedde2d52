"""The one-run canary audit through the real record-level code path (`run_local_round`, Opacus DP-SGD).

One small site of the tiny benchmark plus 200 canaries, full-batch Poisson
rate (q = 1) and 10 steps, all head parameters training: a few seconds per
run. Without noise the white-box attack finds the canaries (a lower bound
well above zero, and above the accounted epsilon of the DP run below); with
noise calibrated to epsilon = 1 the bound stays below the accounted value.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fed_support import TARGET, shared_bench

from common.federation.config import FedConfig
from common.privacy.accounting import compute_epsilon, noise_multiplier_for
from common.report.audit_inputs import load_inputs
from common.report.empirical import CanaryAuditConfig, run_canary_audit

M = 200  # canaries: k = 10, 20, 50, 100 per side are tried
STEPS, Q = 10, 1.0
DELTA = 1e-5


@pytest.fixture(scope="module")
def inputs():
    bench = shared_bench()
    cfg = FedConfig(data_dir=str(bench.data), teacher=str(bench.teacher), target=TARGET, cache_dir=str(bench.cache),
                    sites=1, anchors=64, train_params="all")
    return load_inputs(cfg), cfg


def _audit(inputs, noise: float, prototypes: int):
    data, cfg = inputs
    fed = cfg.replace(sample_rate=Q, local_steps=STEPS, lr=0.1, prototypes=prototypes, delta=DELTA)
    return run_canary_audit(data.teacher, data.site, data.anchor_images, data.anchor_texts, data.names, fed, [noise],
                            CanaryAuditConfig(canaries=M))


def test_without_noise_the_canaries_are_found(inputs):
    res = _audit(inputs, 0.0, prototypes=4)
    assert res.accounted_epsilon == float("inf") and res.within_accounting
    assert res.epsilon_lower_bound > 1.0, res.guesses  # measured 2.1-2.7 on the tiny benchmark
    assert res.training["mechanisms"] == ["dp-kmeans-prototypes", "dp-sgd"] and res.canaries == M
    assert 0 < res.included < M and res.site_records == inputs[0].site.n_images
    d = res.to_dict()
    assert d["accounted_epsilon"] is None and d["accounted_infinite"]
    json.dumps(d, allow_nan=False)


def test_with_dp_the_bound_stays_below_the_accounted_epsilon(inputs):
    sigma = noise_multiplier_for(1.0, DELTA, Q, STEPS)
    res = _audit(inputs, sigma, prototypes=0)  # DP-SGD only: the accounted epsilon is its own, ~1
    assert res.accounted_epsilon == pytest.approx(compute_epsilon([(sigma, Q, STEPS)], DELTA).epsilon)
    assert res.accounted_epsilon <= 1.0
    assert res.epsilon_lower_bound <= res.accounted_epsilon and res.within_accounting
    assert res.history == [[sigma, Q, STEPS]]


def test_cli_audits_a_runs_mechanism_and_the_report_shows_it(tmp_path):
    """`audit-empirical --run`: the run's data, partition and per-round DP-SGD noise; then the run's report."""
    from test_audit_report import make_run, site_ledger

    from common.privacy.ledger import Spend
    from fedgckd.cli import app

    bench = shared_bench()
    rounds = [[Spend("dp-kmeans-prototypes", 10.0, 1.0, 2), Spend("dp-sgd", 2.0, 0.5, 2, 1.0)]] * 2
    run = make_run(tmp_path, {"site-0": site_ledger("site-0", rounds)}, 1)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["config"].update({"data-dir": str(bench.data), "teacher": str(bench.teacher), "target": TARGET,
                              "cache-dir": str(bench.cache), "anchors": 64, "prototypes": 4})
    (run / "metrics.json").write_text(json.dumps(metrics))
    res = CliRunner().invoke(app, ["audit-empirical", "--run", str(run), "--canaries", "40"])
    assert res.exit_code == 0, res.output
    emp = json.loads((run / "empirical_audit.json").read_text())
    assert emp["training"]["noise_multiplier"] == [2.0, 2.0] and emp["training"]["steps_per_round"] == 2
    # the audited training spent exactly what site-0 spent in the run
    led = json.loads((run / "ledger.json").read_text())["sites"]["site-0"]
    assert emp["accounted_epsilon"] == pytest.approx(led[-1]["epsilon_so_far"], rel=1e-9)
    audit = json.loads((run / "audit.json").read_text())
    assert audit["empirical"]["canaries"] == 40 and audit["checks"]["ok"]
    assert audit["empirical"]["run_record_epsilon_max"] == pytest.approx(led[-1]["epsilon_so_far"])
    assert 'id="empirical-plot"' in (run / "audit.html").read_text()
    bad = CliRunner().invoke(app, ["audit-empirical", "--data", str(bench.data)])
    assert bad.exit_code == 2
