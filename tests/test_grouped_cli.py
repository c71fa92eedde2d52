"""`fedgckd adapt --privacy record`: the whole one-machine adaptation is one DP release with a ledger and an audit,
and its printed epsilon is the one its ledger's history gives; without --privacy record nothing is claimed."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from common.privacy.accounting import compute_epsilon
from common.train.adapt_release import _check
from fed_support import TARGET, shared_bench
from fedgckd.cli import app

runner = CliRunner()


def _adapt(out, *extra: str):
    b = shared_bench()
    args = ["adapt", "--teacher", b.teacher, "--data", b.data, "--target", TARGET, "--out", out, "--cache", b.cache,
            "--anchors", "32", "--teacher-rounds", "1", "--steps", "3", *extra]
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _said(r) -> str:
    return " ".join(r.output.split())


@pytest.mark.parametrize("mode,mechanism,factor", [("grouped", "dp-sgd-grouped", 2.0), ("per-record", "dp-sgd", 1.0)])
def test_record_release_writes_ledger_and_audit_and_prints_its_true_epsilon(tmp_path, mode, mechanism, factor):
    out = tmp_path / mode
    r = _adapt(out, "--mode", mode, "--privacy", "record", "--epsilon", "4", "--delta", "1e-5")
    assert r.exit_code == 0, r.output
    ledger = json.loads((out / "ledger.json").read_text())
    rows = ledger["sites"]["adapt"]
    assert [e["mechanism"] for e in rows] == ["dp-kmeans-prototypes", mechanism]
    sgd = rows[1]
    assert sgd["unit"] == "record" and sgd["sensitivity"] == pytest.approx(factor * sgd["clip_norm"]) and sgd["steps"] == 3
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in rows]
    eps = compute_epsilon(history, 1e-5, "rdp").epsilon
    assert eps <= 4.0 and eps > 3.9  # the plan spends the budget, within the calibration's tolerance
    shown = re.search(r"epsilon ([0-9.]+) for one image-caption record .* delta 1e-05, Opacus RDP accountant", _said(r))
    assert shown and float(shown.group(1)) == pytest.approx(eps, abs=6e-4)
    assert ledger["privacy"]["mechanism"] == mechanism and ledger["privacy"]["sensitivity"] == pytest.approx(factor)
    audit = json.loads((out / "audit.json").read_text())
    assert audit["checks"]["ok"] and (out / "audit.html").exists()
    site = next(s for s in audit["sites"] if s["site"] == "adapt")
    assert site["epsilon"] == pytest.approx(eps, rel=1e-9) and site["unit"] == "record"
    meta = json.loads((out / "config.json").read_text())["meta"]["adaptation"]
    assert meta["release"]["sensitivity"] == pytest.approx(factor * meta["release"]["clip_norm"])
    if mode == "per-record":  # the one-machine extras that read records outside DP-SGD are not run
        assert "dropped" in meta["release"] and not any(e[0] == 5.0 for e in meta["privacy_history"])
        # a tiny site: one step's noise on the mean is far above the signal, so only the last Linear trains
        assert meta["release"]["train_params"] == "last" and meta["release"]["step_noise_ratio"] > 1
    else:
        diag = json.loads((out / "diagnostics.json").read_text())["grouped"]
        assert diag["steps"] == 3 and meta["grouped"]["prototypes"] > 0 and diag["group_size"]["max"] >= 1
    # the released checkpoint carries no exact training figures (losses, group sizes): they are in diagnostics.json
    assert "epochs" not in meta and "diagnostics" not in meta.get("grouped", {})
    assert "not DP-protected" in (out / "diagnostics.json").read_text()


def test_without_privacy_no_epsilon_is_claimed(tmp_path):
    r = _adapt(tmp_path / "g", "--mode", "grouped")
    assert r.exit_code == 0, r.output
    assert "no epsilon is claimed" in _said(r) and not re.search(r"epsilon [0-9]", _said(r))
    assert not (tmp_path / "g" / "ledger.json").exists()


def test_full_mode_under_record_privacy_is_refused(tmp_path):
    r = _adapt(tmp_path / "f", "--mode", "full", "--privacy", "record")
    assert r.exit_code == 2 and "grouped or per-record" in _said(r)
    r = _adapt(tmp_path / "f", "--mode", "grouped", "--privacy", "site")
    assert r.exit_code == 2


def test_a_run_that_spent_other_than_planned_claims_nothing():
    class Led:
        history = [(1.0, 0.5, 3), (2.0, 1.0, 2)]
    _check(Led, [(2.0, 1.0, 2), (1.0, 0.5, 3)], [(1.0, 0.5, 3), (2.0, 1.0, 2)])  # the order does not matter
    with pytest.raises(RuntimeError, match="refusing to claim an epsilon"):
        _check(Led, [(1.0, 0.5, 4), (2.0, 1.0, 2)], [(1.0, 0.5, 3), (2.0, 1.0, 2)])
