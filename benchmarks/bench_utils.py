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

from common.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from common.data.synth import synthesize  # noqa: E402
from common.pipeline import domain_features  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


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


def ensure_data(data: Path, profile: str = "default", seed: int = 0) -> Path:
    if not (data / "manifest.json").exists():
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
