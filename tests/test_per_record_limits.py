"""benchmarks/per_record_limits.py end to end on the tiny profile: every model scored, the no-privacy row labelled."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_utils  # noqa: E402
import per_record_limits as prl  # noqa: E402

from common.data.synth import synthesize  # noqa: E402
from common.models.backbones import build_backbone  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("prl") / "data"
    synthesize(data, seed=3, profile="tiny")
    return prl.run_pair(build_backbone("tiny"), data, "flat", "outline", 0, None, epochs=1)


def test_every_model_is_scored_on_val(tiny_run):
    assert tuple(tiny_run) == prl.MODELS
    for name, scores in tiny_run.items():
        assert set(scores) == set(prl.SCORES)
        assert all(0.0 <= v <= 100.0 for v in scores.values()), (name, scores)


def test_report_names_the_split_and_the_no_privacy_row(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_utils, "RESULTS", tmp_path)
    args = argparse.Namespace(backbone="tiny", seeds=[0], epochs=1, name="prl_test")
    pair = {"source": "flat", "target": "outline", "split": "val",
            "models": {n: prl.summarise([tiny_run[n]]) for n in prl.MODELS}}
    prl.report(args, [pair], 0.0)
    payload = json.loads((tmp_path / "prl_test.json").read_text())
    assert payload["no_noise_multiplier"] == prl.NO_NOISE and payload["pairs"][0]["split"] == "val"
    assert payload["pairs"][0]["models"]["gckd_full"]["R1"] == pytest.approx(tiny_run["gckd_full"]["R1"], abs=0.01)
    md = (tmp_path / "prl_test.md").read_text()
    assert "**val** split" in md and "no privacy, a diagnostic" in md and md.count("| flat→outline |") == len(prl.MODELS)
