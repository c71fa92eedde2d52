"""A teacher used from anywhere, and checkpoints that cannot be read: clear errors naming the file, exit 2.

The teacher is pretrained in one working directory and adapted from another,
as a user who ran the demo and then cd'd elsewhere would do; old checkpoints
(which stored only the data path as typed) are covered by rewriting the
config the way such a checkpoint looked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.checkpoint import CheckpointError, source_data_dir
from fedgckd.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """`fedgckd data synth` + `pretrain` run from inside ROOT with relative paths, as the demo does."""
    root = tmp_path_factory.mktemp("front")
    old = Path.cwd()
    os.chdir(root)
    try:
        assert run("data", "synth", "--out", "demo/data", "--profile", "tiny", "--seed", "1").exit_code == 0
        r = run("pretrain", "--data", "demo/data", "--source", "flat", "--backbone", "tiny", "--out", "demo/teacher",
                "--epochs", "2", "--cache", "demo/cache")
        assert r.exit_code == 0, r.output
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def elsewhere(tmp_path):
    old = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def test_pretrain_records_the_source_folder_relative_to_the_checkpoint(made):
    src = json.loads((made / "demo/teacher/config.json").read_text())["meta"]["source"]
    assert src["data"] == "demo/data" and src["domain"] == "flat"  # as typed, for provenance
    assert src["data_from_checkpoint"] == "../data"
    assert Path(src["data_absolute"]) == (made / "demo/data").resolve()


def test_adapt_runs_from_another_working_directory(made, elsewhere):
    r = run("adapt", "--teacher", made / "demo/teacher", "--data", made / "demo/data", "--target", "outline",
            "--out", "student", "--epochs", "1", "--teacher-rounds", "1", "--anchors", "16", "--cache", made / "demo/cache")
    assert r.exit_code == 0, r.output
    assert (elsewhere / "student" / "heads.safetensors").exists()


def test_a_moved_teacher_and_data_still_find_each_other(made, elsewhere):
    """Only the path relative to the checkpoint survives a move of the whole folder."""
    shutil.copytree(made / "demo", elsewhere / "moved", ignore=shutil.ignore_patterns("cache"))
    meta = json.loads((elsewhere / "moved/teacher/config.json").read_text())["meta"]["source"]
    assert source_data_dir(elsewhere / "moved/teacher", meta) == elsewhere / "moved/teacher/../data"


def test_an_old_checkpoint_resolves_its_typed_path_above_the_checkpoint(made, elsewhere):
    """Checkpoints written before `source_meta` stored only "demo/data", relative to where pretraining ran."""
    meta = {"data": "demo/data", "domain": "flat"}
    found = source_data_dir(made / "demo/teacher", meta)
    assert (found / "flat").is_dir() and found.resolve() == (made / "demo/data").resolve()


def test_source_data_option_and_an_error_that_names_both(made, elsewhere):
    teacher = elsewhere / "teacher"
    shutil.copytree(made / "demo/teacher", teacher)
    cfg = json.loads((teacher / "config.json").read_text())
    cfg["meta"]["source"] = {"data": "gone/data", "domain": "flat"}  # nothing anywhere holds it
    (teacher / "config.json").write_text(json.dumps(cfg))
    common = ("--data", elsewhere, "--target", "outline", "--out", "s", "--epochs", "1", "--teacher-rounds", "1",
              "--anchors", "16", "--cache", made / "demo/cache")
    r = run("adapt", "--teacher", teacher, *common)
    assert r.exit_code == 2
    text = " ".join(r.output.split())
    assert str(teacher / "config.json") in text and "gone/data" in text and "--source-data" in text
    assert "0/?" not in r.output  # no empty progress bar before the error
    r = run("adapt", "--teacher", teacher, "--source-data", elsewhere / "nowhere", *common)
    assert r.exit_code == 2 and "nowhere" in r.output
    r = run("adapt", "--teacher", teacher, "--source-data", made / "demo/data", "--data", made / "demo/data",
            *common[2:])
    assert r.exit_code == 0, r.output


def test_source_data_dir_error_lists_the_places_tried(tmp_path):
    with pytest.raises(CheckpointError) as ex:
        source_data_dir(tmp_path / "ck", {"data": "/abs/none", "domain": "flat"}, data=tmp_path / "d")
    assert "/abs/none" in str(ex.value) and str(tmp_path / "d") in str(ex.value)


@pytest.mark.parametrize("junk", [b"", b"{not json", b"[1, 2]", b'{"format": "fedgckd-checkpoint/1"}', b"\xff\xfe\x00"])
def test_junk_config_json_names_the_file_and_exits_2(made, tmp_path, junk):
    bad = tmp_path / "bad"
    shutil.copytree(made / "demo/teacher", bad)
    (bad / "config.json").write_bytes(junk)
    r = run("evaluate", "--model", bad, "--data", made / "demo/data", "--target", "flat", "--cache", made / "demo/cache")
    assert r.exit_code == 2
    assert str(bad / "config.json") in " ".join(r.output.split())
    assert "Traceback" not in r.output


@pytest.mark.parametrize("junk", [b"junk", b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"])
def test_junk_heads_safetensors_names_the_file_and_exits_2(made, tmp_path, junk):
    bad = tmp_path / "bad"
    shutil.copytree(made / "demo/teacher", bad)
    (bad / "heads.safetensors").write_bytes(junk)
    for cmd in (["evaluate", "--model", bad, "--data", made / "demo/data", "--target", "flat"],
                ["adapt", "--teacher", bad, "--data", made / "demo/data", "--target", "outline", "--out", tmp_path / "s"]):
        r = run(*cmd, "--cache", made / "demo/cache")
        assert r.exit_code == 2, r.output
        assert str(bad / "heads.safetensors") in " ".join(r.output.split())
        assert "Traceback" not in r.output


def test_heads_of_another_shape_name_the_file(made, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(made / "demo/teacher", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["head_config"]["hidden"] = cfg["head_config"].get("hidden", 512) * 2
    (bad / "config.json").write_text(json.dumps(cfg))
    r = run("evaluate", "--model", bad, "--data", made / "demo/data", "--target", "flat", "--cache", made / "demo/cache")
    assert r.exit_code == 2 and str(bad / "heads.safetensors") in " ".join(r.output.split())


def test_a_junk_server_checkpoint_stops_resume_with_its_name(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    import numpy as np
    from safetensors.numpy import save

    valid_file_junk_state = save({"x": np.zeros(2, np.float32)}, metadata={"state-json": "{oops"})
    for junk in (b"junk", valid_file_junk_state):
        (run_dir / "checkpoint.safetensors").write_bytes(junk)
        r = run("simulate", "--resume", run_dir)
        assert r.exit_code == 2, r.output
        assert str(run_dir / "checkpoint.safetensors") in " ".join(r.output.split())
        assert "Traceback" not in r.output
