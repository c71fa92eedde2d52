"""Grouped mode in the federation: the run config admits it under record-level DP, a site trains it (both heads) and
its ledger names the mechanism and its Delta = 2C, and a whole `fedgckd simulate --mode grouped --privacy record`
run ends with a ledger and an audit that say the same."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fed_support import TARGET, shared_bench  # first: sets Flower's environment (telemetry off) before flwr is imported

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from client.app import app as client_app  # noqa: E402
from common.federation.config import ConfigError, FedConfig  # noqa: E402
from common.privacy.accounting import compute_epsilon  # noqa: E402
from common.privacy.ledger import SiteLedger  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")]
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def test_run_config_admits_grouped_under_record_privacy_and_counts_its_prototype_releases():
    cfg = FedConfig(privacy="record", mode="grouped", prototypes=8, prototype_iters=2, rounds=5).validate()
    assert cfg.loss_mode == "grouped" and cfg.prototype_releases_per_round == 2  # captions only
    assert FedConfig(mode="per-record", prototypes=8, prototype_iters=2).prototype_releases_per_round == 4
    with pytest.raises(ConfigError, match="mode=grouped"):
        FedConfig(privacy="record", mode="full").validate()
    with pytest.raises(ConfigError, match="group-size"):
        FedConfig(mode="grouped", group_size=0).validate()
    # the automatic prototype noise spends the prototype share of epsilon on grouped mode's releases
    z = cfg.prototype_noise_multiplier()
    eps = compute_epsilon([(z, 1.0, 5 * 2)], cfg.delta).epsilon
    assert eps == pytest.approx(cfg.prototype_budget_share * cfg.epsilon, rel=2e-3)


def test_a_grouped_site_trains_both_heads_and_ledgers_group_clipping(tmp_path):
    from test_fed_client import assert_nothing_else_leaves, ctx, query, server, train

    bench = shared_bench()
    rc = bench.run_config(tmp_path, privacy="record", mode="grouped", **{"group-size": 3})
    task = server(bench, rc)
    expected = {n: tuple(p.shape) for n, p in task.teacher.named_parameters() if n in task.names}
    assert any(n.startswith("text_head.") for n in expected) and any(n.startswith("image_head.") for n in expected)
    context = ctx(rc)
    client_app(query(task), context)
    reply = client_app(train(task), context)
    assert_nothing_else_leaves(reply, expected, [])
    assert dict(reply.content["metrics"])["status"] == 0
    led = SiteLedger.load(tmp_path / "sites" / "site-0" / "ledger-record.json")
    rows = [(e.mechanism, e.steps, e.sensitivity, e.clip_norm, e.status) for e in led.entries]
    c = task.cfg.clip_norm
    assert rows == [("dp-kmeans-prototypes", task.cfg.prototype_iters, pytest.approx(2 ** 0.5), None, "trained"),
                    ("dp-sgd-grouped", task.cfg.local_steps, pytest.approx(2 * c), c, "trained")]
    assert 0 < led.epsilon() <= task.cfg.epsilon


def test_grouped_mode_without_privacy_trains_the_same_construction_noiselessly(tmp_path, monkeypatch):
    """`--mode grouped --privacy none` (the benchmark's fed_grouped_none): every site used to fail with adapt's
    "grouped mode runs whole schedules on one machine". Now each site runs the grouped round with noise 0."""
    from common.federation import local_round
    from test_fed_client import ctx, query, server, train

    seen = []
    real = local_round._grouped_round
    monkeypatch.setattr(local_round, "_grouped_round", lambda *a, **k: seen.append(a[6]) or real(*a, **k))
    bench = shared_bench()
    rc = bench.run_config(tmp_path, privacy="none", mode="grouped", **{"group-size": 3})
    task = server(bench, rc)
    context = ctx(rc)
    client_app(query(task), context)
    reply = client_app(train(task), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert dict(reply.content["metrics"])["status"] == 0 and seen == [0.0], "the grouped round ran, without noise"
    sent = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    start = task.student_arrays()
    assert any(not (sent[k] == start[k]).all() for k in start), "the site trained"
    assert any(k.startswith("text_head.") and not (sent[k] == start[k]).all() for k in start), "both heads train"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_simulate_grouped_record_level_writes_ledger_and_audit(tmp_path, monkeypatch):
    import platform

    from fedgckd.cli import app

    monkeypatch.setattr(platform, "architecture", lambda *a, **k: ("64bit", "ELF"))  # see test_fed_simulation.py
    bench, out = shared_bench(), tmp_path / "run"
    args = ["simulate", "--data", str(bench.data), "--teacher", str(bench.teacher), "--target", TARGET, "--sites", "2",
            "--rounds", "1", "--out", str(out), "--cache", str(bench.cache), "--cpus", "1", "--local-steps", "2",
            "--sample-rate", "0.5", "--mode", "grouped", "--privacy", "record", "--epsilon", "8", "--delta", "1e-5",
            "--set", "anchors=64", "--set", "prototypes=4", "--set", "group-size=3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ledger = json.loads((out / "ledger.json").read_text())
    for site in ("site-0", "site-1"):
        rows = ledger["sites"][site]
        grouped = [e for e in rows if e["mechanism"] == "dp-sgd-grouped"]
        assert len(grouped) == 1 and grouped[0]["sensitivity"] == pytest.approx(2 * grouped[0]["clip_norm"])
        assert 0 < ledger["final_epsilon"][site] <= 8.0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["checks"]["ok"]
    assert "dp-sgd-grouped" in {m["name"] for m in audit["privacy"]["mechanisms"]}
    import gc

    gc.collect()


@pytest.mark.parametrize("noise", [0.0, None])
def test_audit_empirical_runs_grouped_mode_with_canaries_in_groups(noise):
    """Canaries enter groups like any other record; with DP noise (epsilon 1) the bound stays below the accounted."""
    from common.privacy.accounting import noise_multiplier_for
    from common.report.audit_inputs import load_inputs
    from common.report.empirical import CanaryAuditConfig, run_canary_audit

    bench = shared_bench()
    cfg = FedConfig(data_dir=str(bench.data), teacher=str(bench.teacher), target=TARGET, cache_dir=str(bench.cache),
                    sites=1, anchors=64, train_params="all", mode="grouped", privacy="record", prototypes=0,
                    sample_rate=1.0, local_steps=10, lr=0.1, group_size=4, delta=1e-5)
    data = load_inputs(cfg)
    assert any(n.startswith("text_head.") for n in data.names)  # grouped mode trains both heads
    sigma = noise_multiplier_for(1.0, 1e-5, 1.0, 10) if noise is None else noise
    res = run_canary_audit(data.teacher, data.site, data.anchor_images, data.anchor_texts, data.names, cfg, [sigma],
                           CanaryAuditConfig(canaries=200))
    assert res.training["mechanisms"] == ["dp-sgd-grouped"] and res.within_accounting
    if noise is None:
        assert res.accounted_epsilon == pytest.approx(compute_epsilon([(sigma, 1.0, 10)], 1e-5).epsilon)
        assert res.accounted_epsilon <= 1.0
        assert res.epsilon_lower_bound <= res.accounted_epsilon
    else:
        assert res.accounted_epsilon == float("inf")
        assert res.epsilon_lower_bound > 0.5  # the attack finds canaries in groups (measured 1.3), so the DP case can fail
