"""Whole federations through Flower's simulation engine (Ray): 3 sites, 2 rounds, tiny backbone.

Two runs only (each is tens of seconds on two cores): record-level DP through
the `fedgckd simulate` command, then site-level DP with one site whose own
ledger says its budget is spent.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fed_support import TARGET, shared_bench

from common.privacy.ledger import SiteLedger  # noqa: E402

# Ray leaves /dev/null handles open when it starts its processes; that is Ray's, not ours.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture(autouse=True)
def no_file_subprocess(monkeypatch):
    """Flower builds a telemetry event (even with telemetry off) on a daemon thread that runs `file` via
    platform.architecture(); a run ending while it runs leaves an unreaped child that pytest reports at exit."""
    import platform

    monkeypatch.setattr(platform, "architecture", lambda *a, **k: ("64bit", "ELF"))
    yield
    import gc

    gc.collect()  # Ray's leaked /dev/null handles are collected here, under this module's filters


def simulate(bench, out, *extra):
    from fedgckd.cli import app

    args = ["simulate", "--data", str(bench.data), "--teacher", str(bench.teacher), "--target", TARGET,
            "--sites", "3", "--rounds", "2", "--out", str(out), "--cache", str(bench.cache), "--cpus", "1",
            "--local-steps", "3", "--sample-rate", "0.5", "--set", "anchors=64", "--set", "prototypes=4",
            "--set", "batch-size=8", *extra]
    return CliRunner().invoke(app, args)


def test_record_level_simulation_writes_model_metrics_and_ledger(tmp_path):
    bench = shared_bench()
    out = tmp_path / "run"
    res = simulate(bench, out, "--privacy", "record", "--epsilon", "8", "--delta", "1e-5")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and all("R1" in r and "mAP" in r for r in rounds)
    update = metrics["model_bytes"]["update_bytes"]
    for r in rounds[1:]:
        assert sorted(r["trained"]) == ["site-0", "site-1", "site-2"] and not r["rejected"] and not r["errors"]
        assert all(update <= b <= update + 1024 for b in r["bytes_from_site"].values())
    ledger = json.loads((out / "ledger.json").read_text())
    assert set(ledger["final_epsilon"]) == {"site-0", "site-1", "site-2"}
    assert all(0 < e <= 8.0 for e in ledger["final_epsilon"].values())
    for k in range(3):  # each site's own ledger on its disk agrees with what the server recorded
        led = SiteLedger.load(out / "sites" / f"site-{k}" / "ledger-record.json")
        assert led.epsilon() == pytest.approx(ledger["final_epsilon"][f"site-{k}"])
        assert {e.mechanism for e in led.entries} == {"dp-sgd", "dp-kmeans-prototypes"}
    # the noise summary printed before the run agrees with what each site then ran (its own ledger)
    sites = json.loads((out / "sites.json").read_text())
    noise = sites["record_level_noise"]
    assert "record-level DP-SGD: noise multiplier" in res.output
    d = metrics["model_bytes"]["trainable_parameters"]
    assert noise["trained_numbers"] == d
    for k, site in enumerate(sites["sites"]):
        led = SiteLedger.load(out / "sites" / f"site-{k}" / "ledger-record.json")
        first = next(e for e in led.entries if e.mechanism == "dp-sgd" and e.round == 1)
        assert noise["dp_sgd_noise_multiplier"] == pytest.approx(first.noise_multiplier, rel=1e-9)
        assert noise["records_per_step"][k] == max(1, round(0.5 * site["records"]))
        assert noise["noise_to_clip"][k] == pytest.approx(first.noise_multiplier * d ** 0.5 / noise["records_per_step"][k])
    from fedgckd.cli import app

    ev = CliRunner().invoke(app, ["evaluate", "--model", str(out / "model"), "--data", str(bench.data), "--target",
                                  TARGET, "--cache", str(bench.cache), "--json", str(tmp_path / "eval.json")])
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "eval.json").read_text())["R1"] == pytest.approx(rounds[-1]["R1"])


def test_site_level_simulation_records_a_refusing_site(tmp_path):
    bench = shared_bench()
    out = tmp_path / "run"
    spent = SiteLedger(site="site-1", unit="site", delta=1e-5, budget=0.5)
    spent.save(out / "sites" / "site-1" / "ledger-site.json")
    res = simulate(bench, out, "--privacy", "site", "--mode", "full", "--epsilon", "8")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["privacy"]["unit"] == "site" and metrics["privacy"]["central_noise_multiplier"] > 0
    for r in metrics["rounds"][1:]:
        assert list(r["refused"]) == ["site-1"] and "budget" in r["refused"]["site-1"]
        assert sorted(r["trained"]) == ["site-0", "site-2"]
        assert "update_norm" not in r, "a clipped, un-noised update norm is not a DP release"
    ledger = json.loads((out / "ledger.json").read_text())
    assert [e["kind"] for e in ledger["events"]] == ["refused", "refused"]
    server_eps = ledger["final_server_epsilon"]
    assert server_eps["site-1"] == 0.0 and server_eps["site-0"] == pytest.approx(ledger["final_epsilon"]["site-0"])
