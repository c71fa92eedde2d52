"""Which code produced a run (or a report): package version, git commit, library versions.

Nothing is imported to learn a version (``importlib.metadata`` reads the
installed metadata), and git is asked only about the folder this package
lives in. Every field that cannot be known is ``None`` with the reason in
``notes``, never a guess.

`record_run_provenance` writes ``RUN_DIR/provenance.json`` at the end of a
run, from the process that ran it; `fedgckd audit` reads it later so the
report names the code that produced the run, not the code that audits it.
"""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from common.atomic import atomic_write_json, read_json

PROVENANCE_FILE = "provenance.json"
LIBRARIES = ("torch", "opacus", "flwr", "numpy", "scipy", "matplotlib")
GIT_TIMEOUT_S = 10  # git answers in milliseconds; a hung git must not hang a run's end
_SOURCE = Path(__file__).resolve().parents[2]  # the folder holding common/, fedgckd/, ...


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def code_version() -> dict:
    """This process's code: package version, git commit and dirty flag, library versions."""
    notes = []
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    if commit is None:
        notes.append(f"git commit unknown: {_SOURCE} is not a git checkout or git is not installed")
    package = _version("fedgckd")
    if package is None:
        notes.append("package fedgckd is not installed (running from a source tree)")
    return {"package": "fedgckd", "package_version": package, "git_commit": commit or None,
            "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "libraries": {name: _version(name) for name in LIBRARIES},
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "notes": notes}


def record_run_provenance(run_dir: str | Path) -> dict:
    """Write ``RUN_DIR/provenance.json`` (call it from the process that ran the run)."""
    info = {"recorded_by": "the process that ran the federation, at its end", **code_version()}
    atomic_write_json(Path(run_dir) / PROVENANCE_FILE, info)
    return info


def run_provenance(run_dir: str | Path) -> dict | None:
    """The run's recorded provenance, or None if the run did not record one."""
    path = Path(run_dir) / PROVENANCE_FILE
    return read_json(path) if path.exists() else None
