"""A benchmark's --data folder: generated only into a new or empty folder, never into a user's files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_utils import BenchmarkDataError, data_plan  # noqa: E402

from common.data.synth import synthesize  # noqa: E402


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def user_dataset(tmp_path: Path) -> Path:
    """What a user's folder of real data looks like: annotations and images, no manifest.json."""
    ds = tmp_path / "mydata"
    (ds / "CUHK-PEDES" / "imgs").mkdir(parents=True)
    (ds / "CUHK-PEDES" / "reid_raw.json").write_text('[{"id": 1, "file_path": "a.jpg", "captions": ["x"]}]')
    (ds / "CUHK-PEDES" / "imgs" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return ds


def test_ablation_refuses_a_users_folder_and_writes_nothing_there(tmp_path):
    ds = user_dataset(tmp_path)
    before = snapshot(ds)
    proc = subprocess.run([sys.executable, "benchmarks/ablation.py", "--data", str(ds), "--backbone", "tiny"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(ds) in proc.stderr and "never" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(ds) == before


def test_plan_for_new_empty_and_foreign_folders(tmp_path):
    assert data_plan(tmp_path / "new") == "generate"
    (tmp_path / "empty").mkdir()
    assert data_plan(tmp_path / "empty") == "generate"
    with pytest.raises(BenchmarkDataError, match="holds other files"):
        data_plan(user_dataset(tmp_path))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BenchmarkDataError, match="afile"):
        data_plan(tmp_path / "afile")


def test_plan_uses_a_generated_benchmark_of_the_same_profile_only(tmp_path):
    gen = tmp_path / "gen"
    synthesize(gen, seed=0, profile="tiny", workers=1)
    assert data_plan(gen, profile="tiny") == "use"
    with pytest.raises(BenchmarkDataError, match="'tiny' profile"):
        data_plan(gen, profile="default")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"generator": "someone.else", "profile": "default"}')
    with pytest.raises(BenchmarkDataError, match="not written by"):
        data_plan(other)
    (other / "manifest.json").write_text("{junk")
    with pytest.raises(BenchmarkDataError, match="manifest.json"):
        data_plan(other)
