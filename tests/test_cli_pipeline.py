"""End to end through the CLI: synth (tiny) -> pretrain (tiny) -> evaluate -> adapt, plus error paths."""

from __future__ import annotations

import json
import math
import re

import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from common.privacy.accounting import compute_epsilon
from fedgckd.cli import app

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    data, cache, ckpt = root / "data", root / "cache", root / "teacher"
    assert run("data", "synth", "--out", data, "--profile", "tiny", "--seed", "3").exit_code == 0
    r = run("pretrain", "--data", data, "--source", "flat", "--backbone", "tiny", "--out", ckpt, "--epochs", "3", "--cache", cache)
    assert r.exit_code == 0, r.output
    return root, data, cache, ckpt


def test_pretrain_writes_checkpoint_of_its_last_epoch(pipeline):
    _, _, _, ckpt = pipeline
    cfg = json.loads((ckpt / "config.json").read_text())
    assert (ckpt / "heads.safetensors").exists()
    assert cfg["backbone"] == "tiny" and cfg["seed"] == 0 and len(cfg["backbone_fingerprint"]) == 64
    training = cfg["meta"]["training"]
    assert training["selected_on"] == "last epoch of a fixed schedule"
    assert training["selected"]["epoch"] == len(training["epochs"]) == 3
    assert training["selected"]["R1"] == training["epochs"][-1]["val_R1"]


def test_pretrain_select_val_keeps_the_best_source_val_epoch(pipeline):
    root, data, cache, _ = pipeline
    ckpt = root / "teacher_val"
    r = run("pretrain", "--data", data, "--source", "flat", "--backbone", "tiny", "--out", ckpt, "--epochs", "4",
            "--cache", cache, "--select", "val")
    assert r.exit_code == 0, r.output
    training = json.loads((ckpt / "config.json").read_text())["meta"]["training"]
    assert training["selected_on"] == "source val R1"
    assert training["selected"]["R1"] == max(e["val_R1"] for e in training["epochs"])


def test_evaluate_writes_metrics_json(pipeline):
    root, data, cache, ckpt = pipeline
    out = root / "eval.json"
    r = run("evaluate", "--model", ckpt, "--data", data, "--target", "outline", "--split", "test", "--json", out, "--cache", cache)
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert 0.0 <= m[k] <= 100.0
    assert m["n_gallery"] == 8 and m["n_queries"] == 16  # tiny profile: 4 test ids x 2 images x 2 captions


def exact_gaussian_epsilon(history, delta: float) -> float:
    """Exact epsilon of composed unsubsampled Gaussian mechanisms (Dong, Roth and Su's mu-GDP; Balle and Wang's
    analytic Gaussian): delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), solved by bisection."""
    assert all(q == 1.0 for _, q, _ in history)
    mu = math.sqrt(sum(steps / sigma**2 for sigma, _, steps in history))
    def d(eps):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


def test_exact_gaussian_epsilon_matches_a_known_value():
    # one Gaussian release at sigma 1: epsilon 4.38 at delta 1e-5, as the PRV accountant (numerical) finds too
    assert exact_gaussian_epsilon([(1.0, 1.0, 1)], 1e-5) == pytest.approx(
        compute_epsilon([(1.0, 1.0, 1)], 1e-5, "prv").epsilon, rel=0.02)


def test_adapt_per_record_runs_without_target_labels(pipeline):
    root, data, cache, ckpt = pipeline
    out = root / "student"
    r = run("adapt", "--teacher", ckpt, "--data", data, "--target", "outline", "--out", out, "--mode", "per-record", "--epochs", "1", "--anchors", "32", "--cache", cache)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["role"] == "student" and "fixed schedule, the moving average (momentum 0.99)" in meta["adaptation"]["selection"]
    assert meta["adaptation"]["privacy_history"], "per-record mode releases DP prototypes and must account them"
    # per-record's own defaults (four teacher rounds, half soft target), as run and as logged
    assert meta["adaptation"]["config"]["teacher_rounds"] == 4 and meta["adaptation"]["config"]["cmkd"]["kd_weight"] == 0.5
    assert sorted({e["round"] for e in meta["adaptation"]["epochs"]}) == [1, 2, 3, 4] and "4 x 1 epochs" in " ".join(r.output.split())
    assert "DP-whitened" in " ".join(r.output.split()) and meta["adaptation"]["privacy_history"][-1] == [5.0, 1.0, 3]
    # without --privacy record no epsilon is claimed: the statistics' epsilon alone would not cover the checkpoint
    said = " ".join(r.output.split())
    assert "no epsilon is claimed" in said and "not a DP release" in said and not re.search(r"epsilon [0-9]", said)


def test_adapt_average_one_keeps_the_last_student(pipeline, tmp_path):
    root, data, cache, ckpt = pipeline
    out = tmp_path / "last"
    r = run("adapt", "--teacher", ckpt, "--data", data, "--target", "outline", "--out", out, "--epochs", "1",
            "--teacher-rounds", "1", "--average", "1", "--anchors", "32", "--cache", cache)
    assert r.exit_code == 0, r.output
    assert "last student" in json.loads((out / "config.json").read_text())["meta"]["adaptation"]["selection"]
    r = run("adapt", "--teacher", ckpt, "--data", data, "--target", "outline", "--out", tmp_path / "pr", "--mode", "per-record",
            "--epochs", "1", "--teacher-rounds", "1", "--whiten", "0", "--anchors", "32", "--cache", cache)
    assert r.exit_code == 0 and "DP-whitened" not in r.output
    assert "whitened" not in json.loads((tmp_path / "pr" / "config.json").read_text())["meta"]["adaptation"]["selection"]
    r = run("adapt", "--teacher", ckpt, "--data", data, "--target", "outline", "--out", tmp_path / "x", "--average", "1.5")
    assert r.exit_code == 2


def test_bad_inputs_give_clear_errors(pipeline, tmp_path):
    root, data, cache, ckpt = pipeline
    r = run("evaluate", "--model", ckpt, "--data", data, "--target", "nowhere", "--split", "val", "--cache", cache)
    assert r.exit_code == 2 and "nowhere" in r.output
    r = run("evaluate", "--model", tmp_path, "--data", data, "--target", "flat", "--split", "val")
    assert r.exit_code == 2 and "config.json" in r.output
    r = run("evaluate", "--model", ckpt, "--data", data, "--target", "flat", "--split", "train")
    assert r.exit_code == 2
    r = run("adapt", "--teacher", ckpt, "--data", data, "--target", "outline", "--out", tmp_path / "x", "--mode", "weird")
    assert r.exit_code == 2
