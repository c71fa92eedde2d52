"""Shared plumbing for the benchmark scripts: features, machine facts, JSON + markdown output."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from common.atomic import atomic_write_bytes, atomic_write_json, read_json  # noqa: E402
from common.data.synth import synthesize  # noqa: E402
from common.data.synth.generate import GENERATOR  # noqa: E402
from common.pipeline import domain_features  # noqa: E402
from common.train.adapt_config import REFRESH_RECORDS, refresh_every  # noqa: E402,F401 (REFRESH_RECORDS: ablation)

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def refresh_for(records: int) -> int:
    """Full GCKD's graph refresh cadence in a benchmark at a site of ``records`` records: `AdaptConfig`'s own default
    (`common.train.adapt_config.refresh_every`: 25 steps at 1,800 records, about once a pass at larger sites), written
    out so that each part records the number it ran with."""
    return refresh_every(records)


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }


class BenchmarkDataError(ValueError):
    """A --data folder a benchmark must not use (or write into); the message names it."""


def data_plan(data: Path, profile: str = "default") -> str:
    """"use" (a generated benchmark of this profile is there) or "generate" (the folder is new or empty).

    A benchmark never writes into a folder that already holds anything else (a user's dataset, a half-written
    download): that raises `BenchmarkDataError`, as does a generated benchmark of another profile.
    """
    data = Path(data)
    manifest = data / "manifest.json"
    if manifest.is_file():
        try:
            info = read_json(manifest)
        except (ValueError, UnicodeDecodeError) as ex:
            raise BenchmarkDataError(f"{manifest}: not readable JSON ({ex})") from None
        if not isinstance(info, dict) or info.get("generator") != GENERATOR:
            raise BenchmarkDataError(f"{manifest}: not written by `fedgckd data synth` (generator "
                                     f"{info.get('generator') if isinstance(info, dict) else None!r}); the benchmarks "
                                     "run on the embedded benchmark only")
        if info.get("profile") != profile:
            raise BenchmarkDataError(f"{data}: holds the {info.get('profile')!r} profile of the embedded benchmark, "
                                     f"this benchmark needs {profile!r}; pass another --data folder")
        return "use"
    if data.exists() and (not data.is_dir() or any(data.iterdir())):
        raise BenchmarkDataError(f"{data}: exists and holds other files but no manifest.json of the embedded "
                                 "benchmark; a benchmark generates its data only into a new or empty folder and never "
                                 f"writes into one that holds anything else. Pass a new folder (or leave --data out: "
                                 f"data/embedded); if {data} is an interrupted generation, delete it and rerun")
    return "generate"


def ensure_data(data: Path, profile: str = "default", seed: int = 0) -> Path:
    """The benchmark's data folder, generated there first if it is new or empty; exits 2 on a folder it must not
    use (see `data_plan`)."""
    try:
        plan = data_plan(data, profile)
    except BenchmarkDataError as ex:
        print(f"error: {ex}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if plan == "generate":
        print(f"generating the {profile} benchmark into {data} ...", flush=True)
        synthesize(data, seed=seed, profile=profile)
    return data


def features(backbone, data: Path, domain: str, split: str, cache: Path | None, labels: bool = True):
    return domain_features(backbone, data, domain, split, labels=labels, cache_dir=cache)


def command_line() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix().split("/work/main/")[-1], *sys.argv[1:]])


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", payload)
    atomic_write_bytes(RESULTS / f"{name}.md", markdown.encode())
    print(markdown)


def fmt(m: dict, key: str = "R1") -> str:
    if f"{key}_std" in m:
        return f"{m[key]:.1f} ± {m[key + '_std']:.1f}"
    return f"{m[key]:.1f}"
