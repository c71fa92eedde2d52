"""Submitting a run to a deployed SuperLink and judging it by its status, not by `flwr run`'s exit code.

`flwr run --stream` exits 0 even when the run failed (STACK.md section 5), so
`submit_and_wait`:
1. stages the Flower app: ``pyproject.toml`` plus the ``*.py`` files of
   ``server/``, ``client/`` and ``common/`` copied into ``STATE/app`` (the
   bundle then holds the code and nothing else: no data, no run folders, and
   it builds in seconds instead of walking the whole checkout);
2. writes the run config (the ``-c`` pairs and ``--config`` files merged) to
   one TOML file and calls ``flwr run STATE/app fedgckd --format json -c FILE``
   with ``FLWR_HOME=STATE/cli`` (see `server.superlink`), which returns the run id;
3. follows the run's log (``flwr log ID fedgckd --stream`` into
   ``STATE/runs/run-ID.log``) until it ends, then reads the status with
   ``flwr ls fedgckd --run-id ID --format json`` (polling until it is
   ``finished:*``); success is exactly ``finished:completed``. On a timeout
   the run is stopped (``flwr stop``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from common.atomic import atomic_write_bytes
from common.deploy.procs import bin_path, flwr_env
from server.superlink import FEDERATION

APP_PACKAGES = ("server", "client", "common")
_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")  # flwr's own -c syntax (flwr.common.config.parse_config_args)


class RunFailed(RuntimeError):
    pass


@dataclass
class RunStatus:
    run_id: int
    status: str  # pending | starting | running | finished:completed | finished:failed | finished:stopped
    details: str = ""

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def project_root() -> Path:
    """The checkout these packages were installed from (editable install): where pyproject.toml is."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise FileNotFoundError(f"no pyproject.toml next to {root / 'server'}: pass --app with the fedgckd checkout")
    return root


def stage_app(dst: Path | str, src: Path | str | None = None) -> Path:
    """Copy pyproject.toml and the apps' Python files to `dst` (replacing what was there)."""
    src, dst = Path(src) if src else project_root(), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy2(src / "pyproject.toml", dst / "pyproject.toml")
    for pkg in APP_PACKAGES:
        for f in (src / pkg).rglob("*.py"):
            if "__pycache__" in f.parts:
                continue
            out = dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)
    return dst


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))  # JSON string escapes are valid TOML basic-string escapes


def merge_run_config(pairs: Iterable[str] = (), files: Iterable[Path | str] = (), extra: Mapping[str, Any] | None = None) -> dict:
    """TOML files, then `-c "k=v k2=v2"` strings (flwr's syntax), then `extra`; later wins."""
    out: dict[str, Any] = {}
    for f in files:
        with open(f, "rb") as fh:
            data = tomllib.load(fh)
        out.update(data.get("run-config", data))
    for line in pairs:
        matches = _PAIR.findall(line)
        if not matches and line.strip():
            raise ValueError(f"cannot read {line!r} as KEY=VALUE pairs")
        out.update(tomllib.loads("\n".join(f"{json.dumps(k)} = {v}" for k, v in matches)))
    out.update(dict(extra or {}))
    return out


def write_run_config(config: Mapping[str, Any], path: Path | str) -> Path:
    text = "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in config.items())
    return atomic_write_bytes(path, text.encode())


def flwr(args: list[str], cli_home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path("flwr"), *args], env=flwr_env(cli_home), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _json_out(proc: subprocess.CompletedProcess, what: str) -> dict:
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        data = {}
    if proc.returncode != 0 or not data.get("success", False):
        raise RunFailed(f"{what} failed (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-2000:]}")
    return data


def register_node(cli_home: Path, public_key: Path | str) -> int:
    """`flwr supernode register KEY.pub fedgckd`; returns the node id."""
    data = _json_out(flwr(["supernode", "register", str(Path(public_key).resolve()), FEDERATION, "--format", "json"],
                          cli_home), f"registering {public_key}")
    return int(data["node-id"])


def submit(cli_home: Path, app: Path, run_config: Path) -> int:
    data = _json_out(flwr(["run", str(app), FEDERATION, "--format", "json", "-c", str(run_config)], cli_home, 600),
                     "flwr run")
    return int(data["run-id"])


def run_status(cli_home: Path, run_id: int) -> RunStatus:
    data = _json_out(flwr(["ls", FEDERATION, "--run-id", str(run_id), "--format", "json"], cli_home), "flwr ls")
    row = next(r for r in data["runs"] if int(r["run-id"]) == int(run_id))
    return RunStatus(int(run_id), str(row["status"]), str(row.get("status-details", "") or ""))


def fetch_log(cli_home: Path, run_id: int) -> str:
    proc = flwr(["log", str(run_id), FEDERATION, "--show"], cli_home)
    return proc.stdout + proc.stderr


def stop_run(cli_home: Path, run_id: int) -> None:
    flwr(["stop", str(run_id), FEDERATION], cli_home)


def wait(cli_home: Path, run_id: int, timeout: float, poll: float = 3.0,
         on_status: Callable[[RunStatus], None] | None = None, log_file: Path | None = None) -> RunStatus:
    """Wait for the run to finish; on timeout stop it and return its last status.

    One ``flwr log --stream`` process follows the run's log (into `log_file`)
    until the SuperLink ends the stream, which it does when the run finishes;
    then ``flwr ls`` gives the status, polled (every `poll` seconds) in case the
    stream ended early. Each ``flwr`` call costs a second or two of CPU, so
    polling alone would keep a small machine busy.
    """
    end = time.monotonic() + timeout
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as out:
            try:
                subprocess.run([bin_path("flwr"), "log", str(run_id), FEDERATION, "--stream"], env=flwr_env(cli_home),
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
    last = None
    while True:
        st = run_status(cli_home, run_id)
        if on_status and (last is None or st.status != last.status):
            on_status(st)
        last = st
        if st.finished:
            return st
        if time.monotonic() > end:
            stop_run(cli_home, run_id)
            return RunStatus(run_id, st.status, f"timed out after {timeout:.0f}s; stop requested")
        time.sleep(poll)


def submit_and_wait(state: Path, config: Mapping[str, Any], timeout: float = 3600, app_src: Path | None = None,
                    on_status: Callable[[RunStatus], None] | None = None) -> RunStatus:
    state = Path(state).resolve()
    app = stage_app(state / "app", app_src)
    rc_file = write_run_config(config, state / "runs" / f"run-config-{time.strftime('%Y%m%d-%H%M%S')}.toml")
    run_id = submit(state / "cli", app, rc_file)
    if on_status:
        on_status(RunStatus(run_id, "submitted", str(rc_file)))
    return wait(state / "cli", run_id, timeout, on_status=on_status, log_file=state / "runs" / f"run-{run_id}.log")
