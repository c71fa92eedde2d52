"""Child processes on loopback: free ports, readiness, and stopping a process by its PID.

Every process is started in its own session (process group = its PID), so
stopping it by PID also stops what it started (Flower's superexec, a
ServerApp or ClientApp process); descendants that left the group (Ray's
daemons) are found through /proc and stopped by their PIDs too. Nothing is
ever stopped by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

LOOPBACK = "127.0.0.1"
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def flwr_env(home: Path | str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower process: telemetry, update checks and runtime installs off; its own FLWR_HOME."""
    env = dict(os.environ if base is None else base)
    for k, v in FLWR_ENV.items():
        env.setdefault(k, v)
    env["FLWR_HOME"] = str(home)
    env.setdefault("NO_COLOR", "1")
    return env


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Return once something listens on host:port; raise if `proc` exits first or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with code {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def bin_path(name: str) -> str:
    """An executable installed next to this Python (the venv's bin/), else the name for PATH lookup."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def start(argv: Sequence[str], log: Path | str, env: Mapping[str, str] | None = None,
          cwd: Path | str | None = None) -> subprocess.Popen:
    """Start `argv` in a new session, stdout and stderr appended to `log`."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pids: list[int], pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(pid: int, grace: float = 10.0, reap: subprocess.Popen | None = None) -> None:
    """Stop the process `pid`, its process group and every descendant (also those that left the group, as
    Ray's do): SIGTERM, then SIGKILL whatever is left after `grace` seconds. `reap`: the Popen of `pid`, when
    this process started it (so it leaves no zombie)."""
    pids = [pid, *descendants(pid)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = [p for p in pids + descendants(pid) if alive(p)]
        if not pids:
            break
        _signal(pids, pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if reap is not None:
                reap.poll()
            if not any(alive(p) for p in pids):
                break
            time.sleep(0.1)
    if reap is not None:
        try:
            reap.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def stop(proc: subprocess.Popen, grace: float = 10.0) -> int | None:
    """Stop `proc` (started in its own session by `start`) with its group and descendants; returns its exit code."""
    kill_tree(proc.pid, grace, reap=proc)
    return proc.poll()
