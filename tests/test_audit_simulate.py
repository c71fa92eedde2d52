"""`fedgckd simulate` ends every run with its privacy report (one small record-level federation)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fed_support import TARGET, shared_bench

from common.privacy.ledger import SiteLedger
from common.report import schema

# The same allowances as test_fed_simulation.py: Ray's, not ours.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


@pytest.fixture(autouse=True)
def no_file_subprocess(monkeypatch):
    """Flower's telemetry thread runs `file` via platform.architecture(); see test_fed_simulation.py."""
    import platform

    monkeypatch.setattr(platform, "architecture", lambda *a, **k: ("64bit", "ELF"))
    yield
    import gc

    gc.collect()


def test_simulate_writes_the_audit_report(tmp_path):
    from fedgckd.cli import app

    bench = shared_bench()
    out = tmp_path / "run"
    args = ["simulate", "--data", str(bench.data), "--teacher", str(bench.teacher), "--target", TARGET,
            "--sites", "2", "--rounds", "2", "--out", str(out), "--cache", str(bench.cache), "--cpus", "1",
            "--local-steps", "2", "--sample-rate", "0.5", "--privacy", "record", "--epsilon", "8",
            "--set", "anchors=64", "--set", "prototypes=4", "--set", "batch-size=8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    audit = json.loads((out / "audit.json").read_text())
    assert schema.check(audit) == [] and audit["checks"]["ok"], audit["checks"]["flags"]
    assert [s["site"] for s in audit["sites"]] == ["site-0", "site-1"]
    assert all(s["verdict"] in ("within-budget", "exhausted") for s in audit["sites"])
    for s in audit["sites"]:  # the report agrees with the site's own ledger on its disk
        led = SiteLedger.load(out / "sites" / s["site"] / "ledger-record.json")
        assert s["epsilon"] == pytest.approx(led.epsilon(), rel=1e-9) and s["epsilon_prv"] is not None
    assert audit["code"]["run"]["package"] == "fedgckd" and (out / "provenance.json").exists()
    assert audit["run"]["config"]["privacy"] == "record" and audit["run"]["rounds_completed"] == 2
    html = (out / "audit.html").read_text()
    assert 'id="epsilon-plot"' in html and "<svg" in html and html.count('class="site-row"') == 2
    assert "checks: ok" in res.output
