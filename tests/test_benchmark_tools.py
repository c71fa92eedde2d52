"""The measuring tools of the benchmarks: process-tree memory, the DP-step twin, the summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_utils  # noqa: E402
import dp_step  # noqa: E402
import grouped_dp  # noqa: E402
import merge_ablation  # noqa: E402
import run_all  # noqa: E402
import scale  # noqa: E402

from common.models.feature_cache import FeatureSet  # noqa: E402
from common.models.heads import DualHeads, HeadConfig  # noqa: E402


def test_peak_rss_counts_a_grandchild(tmp_path):
    """A child that starts a grandchild holding ~300 MiB: the tree's peak must include it."""
    grandchild = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    wall, peak, rc = scale.run_measured([sys.executable, "-c", child], tmp_path / "log.txt", poll_s=0.05)
    assert rc == 0
    assert wall >= 1.5
    assert peak >= 300 * 2**20
    assert peak < 2 * 2**30


def test_run_measured_reports_failure(tmp_path):
    _, _, rc = scale.run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log.txt")
    assert rc == 3


def _site(n: int, seed: int = 0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    t2i = torch.arange(n).repeat_interleave(2)
    return FeatureSet(image_feats=torch.randn(n, 12, generator=g), text_feats=torch.randn(2 * n, 10, generator=g),
                      text_to_image=t2i, image_pids=torch.full((n,), -1), text_pids=torch.full((2 * n,), -1),
                      image_paths=[f"{i}.jpg" for i in range(n)], captions=[f"c{i}" for i in range(2 * n)],
                      backbone="tiny", fingerprint="x")


def test_dp_step_measure_times_both_twins():
    heads = DualHeads(10, 12, HeadConfig(hidden=16, out_dim=8))
    row = dp_step.measure(heads, _site(40), "last", sample_rate=0.5, steps=3, repeats=1)
    assert row["records"] == 40 and row["expected_batch"] == 20.0
    assert row["dp_step_s"] > 0 and row["plain_step_s"] > 0
    assert row["ratio"] == pytest.approx(row["dp_step_s"] / row["plain_step_s"], abs=0.01 + 0.01 * row["ratio"])


def test_plain_twin_trains_only_the_chosen_parameters():
    from common.federation.trainable import set_trainable, trainable_names
    from common.losses.cmkd import CMKDConfig
    from common.train.embed import embed_featureset
    from common.train.record_level_dp import RecordLevelConfig
    from common.train.record_pack import RecordLoss, RecordPack, pack_texts, teacher_targets

    heads = DualHeads(10, 12, HeadConfig(hidden=16, out_dim=8))
    site = _site(30)
    pack = RecordPack.from_features(site)
    t, v = embed_featureset(heads, site)
    targets = teacher_targets(v, pack_texts(t, site.text_to_image, pack))
    names = trainable_names(heads, "last")
    set_trainable(heads, names)
    before = {n: p.detach().clone() for n, p in heads.named_parameters()}
    dp_step._plain_steps(heads, pack, targets, RecordLoss(v[:8], t[:8], CMKDConfig(), 8),
                         RecordLevelConfig(noise_multiplier=1.0, sample_rate=0.5, steps=3), torch.Generator().manual_seed(0))
    changed = {n for n, p in heads.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(names)


def test_summary_stitches_each_result_with_its_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    (tmp_path / "scale.md").write_text("| sites | wall |\n|---|---|\n| 10 | 5 |\n")
    (tmp_path / "scale.json").write_text('{"machine": {"cores": 2, "cpu": "x86_64", "torch": "2.13.0", "commit": "abc123"}}')
    text = run_all.summary()
    assert "## Scale: sites, DP step, evaluation (issue 7)" in text
    assert "| 10 | 5 |" in text
    assert "2 cores, x86_64, torch 2.13.0, commit abc123" in text
    assert "Not run yet: `python benchmarks/ablation.py`" in text  # missing results are named, not invented


def test_ablation_jobs_cover_every_pair_and_seed():
    names = run_all.ablation_names()
    assert len(names) == len(set(names)) == len(run_all.PAIRS) * len(run_all.SEEDS)
    assert "ablation_outline" in names and "ablation_shaded_s2" in names


def _part(seed: int, rows: dict[str, float]) -> dict:
    runs = {name: {k: r1 if k == "R1" else 1.0 for k in bench_utils.METRICS} for name, r1 in rows.items()}
    return {"backbone": "b", "seeds": [seed], "epochs": 1, "command": f"part {seed}",
            "pairs": [{"source": "flat", "target": "outline", "runs": runs}]}


def test_merge_ablation_means_over_seeds_and_a_later_rerun_replaces_its_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(merge_ablation, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_utils, "RESULTS", tmp_path)
    parts = {"a0": _part(0, {"direct": 10.0, "pair_finetune": 50.0}), "a1": _part(1, {"direct": 12.0, "pair_finetune": 54.0}),
             "rerun0": _part(0, {"pair_finetune": 58.0})}  # seed 0's pair_finetune rerun after its defaults changed
    for name, part in parts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
    merge_ablation.main(["a0", "a1", "rerun0"])
    runs = json.loads((tmp_path / "ablation.json").read_text())["pairs"][0]["runs"]
    assert runs["direct"]["R1"] == 11.0 and runs["direct"]["n_seeds"] == 2
    assert runs["pair_finetune"]["R1"] == 56.0 and runs["pair_finetune"]["R1_std"] == 2.0  # (58 + 54) / 2, not 3 seeds
    assert runs["pair_finetune"]["n_seeds"] == 2
    (tmp_path / "two.json").write_text(json.dumps({**parts["a0"], "seeds": [0, 1]}))
    with pytest.raises(SystemExit, match="one seed"):
        merge_ablation.main(["two"])


def test_grouped_dp_merge_has_the_issue_shape_means_and_epsilons(tmp_path, monkeypatch):
    parts = tmp_path / "parts"
    parts.mkdir()
    monkeypatch.setattr(grouped_dp, "PARTS", parts)
    monkeypatch.setattr(grouped_dp, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_utils, "RESULTS", tmp_path)

    def part(profile, seed, split, rows):
        return {"profile": profile, "pair": "flat->outline", "seed": seed, "split": split, "command": f"c{seed}", "rows": rows}
    files = {"default_outline_s0": part("default", 0, "test", {"direct": {"R1": 10.0, "mAP": 8.0},
                                                               "gckd_grouped_dp_eps8": {"R1": 20.0, "mAP": 15.0, "epsilon": 7.9}}),
             "default_outline_s1": part("default", 1, "test", {"direct": {"R1": 12.0, "mAP": 9.0},
                                                               "gckd_grouped_dp_eps8": {"R1": 30.0, "mAP": 25.0, "epsilon": 7.95}}),
             "default_outline_s1_val": part("default", 1, "val", {"direct": {"R1": 99.0, "mAP": 99.0}}),  # never merged
             "sites_outline_s0": part("sites", 0, "test", {"gckd_full": {"R1": 80.0, "mAP": 70.0}})}
    for name, body in files.items():
        (parts / f"{name}.json").write_text(json.dumps(body))
    out = grouped_dp.merge()
    d = out["runs"]["default"]["flat->outline"]
    assert d["direct"] == {"R1": 11.0, "mAP": 8.5, "epsilon": None, "seeds": [0, 1]}
    assert d["gckd_grouped_dp_eps8"] == {"R1": 25.0, "mAP": 20.0, "epsilon": 7.95, "seeds": [0, 1],
                                         "grouped_steps_per_round": 80}  # parts that do not say ran the fixed 80
    assert out["runs"]["sites"]["flat->outline"]["gckd_full"]["R1"] == 80.0
    # a row whose seeds ran different grouped schedules is not averaged
    body = files["default_outline_s1"]
    body["rows"]["gckd_grouped_dp_eps8"]["grouped_steps_per_round"] = 704
    (parts / "default_outline_s1.json").write_text(json.dumps(body))
    with pytest.raises(SystemExit, match=r"gckd_grouped_dp_eps8 ran with \[80, 704\] grouped steps"):
        grouped_dp.merge()
    assert list(out["runs"]) == ["default", "sites"] and out["delta"] == 1e-5 and out["unit"] == "record"
    assert json.loads((tmp_path / "grouped_dp.json").read_text())["runs"] == out["runs"]
    assert (tmp_path / "grouped_dp.svg").read_text().lstrip().startswith("<?xml")
