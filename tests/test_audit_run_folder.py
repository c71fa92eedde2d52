"""A second run over one state folder: refused without --force, honest with it (issue 20, items 1 and 2).

The federation runs through `fedgckd simulate --engine inprocess`
(`simulations.inprocess`: the real ServerApp and ClientApp, no Ray), so the
command's own checks, exit status and audit are what is tested.
The ground truth is each site's own ledger file on its disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fed_support import TARGET, shared_bench

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.privacy.ledger import SiteLedger  # noqa: E402
from fedgckd.commands.run_folder import run_failure  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def simulate(bench, out: Path, *extra: str):
    from fedgckd.cli import app

    args = ["simulate", "--data", str(bench.data), "--teacher", str(bench.teacher), "--target", TARGET,
            "--sites", "2", "--rounds", "2", "--out", str(out), "--cache", str(bench.cache), "--local-steps", "2",
            "--sample-rate", "0.5", "--privacy", "record", "--epsilon", "8", "--set", "anchors=64",
            "--set", "prototypes=4", "--set", "batch-size=8", "--set", "site-wait=0.2", "--engine", "inprocess",
            *extra]
    return CliRunner().invoke(app, args)


def test_a_second_run_over_the_same_state_folder(tmp_path):
    bench, out = shared_bench(), tmp_path / "run"
    first = simulate(bench, out)
    assert first.exit_code == 0, first.output
    spent = {k: SiteLedger.load(out / "sites" / f"site-{k}" / "ledger-record.json").epsilon() for k in range(2)}
    assert all(7.5 < e <= 8.0 for e in spent.values())

    again = simulate(bench, out)  # the same folder: refused before anything runs
    assert again.exit_code == 2 and "already holds a run" in again.output and "--force" in again.output
    assert json.loads((out / "audit.json").read_text())["checks"]["ok"], "the first run's report is untouched"

    forced = simulate(bench, out, "--force")  # every site's budget went to the first run: nobody trains
    assert forced.exit_code == 1 and "no site trained in any round" in forced.output
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert all(r["trained"] == [] for r in rounds[1:])
    audit = json.loads((out / "audit.json").read_text())
    assert audit["checks"]["ok"], audit["checks"]["flags"]
    for k in range(2):
        led = SiteLedger.load(out / "sites" / f"site-{k}" / "ledger-record.json")
        assert led.epsilon() == pytest.approx(spent[k], rel=1e-12), "refusing spent nothing"
        site = next(s for s in audit["sites"] if s["site"] == f"site-{k}")
        # the audit's epsilon is the site's whole history: its own ledger's total, not this run's alone
        assert site["epsilon"] == pytest.approx(led.epsilon(), rel=1e-9)
        assert site["verdict"] == "refused" and site["rounds_trained"] == [] and site["rounds_refused"] == [1, 2]
        assert site["prior_runs"] == 1 and site["epsilon_prior"] == pytest.approx(led.epsilon(), rel=1e-9)
        assert site["epsilon_this_run"] == 0.0
        assert "already holds epsilon" in site["reason"] and "1 earlier run" in site["reason"]
        keys = {e.run_key for e in led.entries}
        assert len(keys) == 2 and "" not in keys, "every entry carries the key of the run that spent it"
    html = (out / "audit.html").read_text()
    assert "earlier runs alone" in html and "1 run(s)" in html


def test_simulate_refuses_an_existing_run_folder_without_running(tmp_path):
    from fedgckd.cli import app

    out = tmp_path / "run"
    out.mkdir()
    (out / "ledger.json").write_text("{}")
    args = ["simulate", "--data", str(tmp_path / "no-data"), "--teacher", str(tmp_path / "no-teacher"), "--target",
            "x", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "already holds a run (ledger.json)" in res.output
    assert f"--resume {out}" in " ".join(res.output.split())
    unknown = CliRunner().invoke(app, args + ["--state-dir", str(tmp_path / "fresh"), "--engine", "threads"])
    assert unknown.exit_code == 2 and "--engine 'threads'" in unknown.output and "inprocess" in unknown.output
    # a new state folder means fresh site ledgers: allowed past this check (then the missing data stops it)
    fresh = CliRunner().invoke(app, args + ["--state-dir", str(tmp_path / "fresh")])
    assert fresh.exit_code == 2 and "already holds a run" not in fresh.output
    # the earlier run's own state folder is not a new one
    same = CliRunner().invoke(app, args + ["--state-dir", str(out / "sites")])
    assert same.exit_code == 2 and "already holds a run" in same.output


def test_demo_refuses_an_existing_demo_run(tmp_path):
    from fedgckd.cli import app

    run = tmp_path / "demo" / "federated"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 2 and "already holds a demo run" in res.output and "--force" in res.output
    assert not (tmp_path / "demo" / "data").exists(), "refused before generating anything"


def test_a_run_fails_when_no_site_trained_or_its_audit_fails():
    ok_audit = {"checks": {"ok": True, "flags": []}}
    trained = {"rounds": [{"round": 0, "trained": []}, {"round": 1, "trained": ["site-0"], "refused": {}}]}
    assert run_failure(trained, ok_audit) is None
    nobody = {"rounds": [{"round": 0, "trained": []}, {"round": 1, "trained": [], "refused": {"site-1": "budget"}}]}
    assert "no site trained" in run_failure(nobody, ok_audit) and "site-1" in run_failure(nobody, ok_audit)
    bad = {"checks": {"ok": False, "flags": [{"kind": "below-pld", "severity": "error"},
                                             {"kind": "within-discretisation", "severity": "warning"}]}}
    assert run_failure(trained, bad) == "the privacy audit failed its checks (below-pld); see audit.html"
    assert run_failure(trained, None) == "the privacy audit was not written"
