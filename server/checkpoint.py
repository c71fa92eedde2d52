"""The server's per-round checkpoint, and what `--resume` reads back.

``OUT/checkpoint.safetensors`` is rewritten atomically (`common.atomic`)
after every completed round (round 0 = before training), so a killed server
leaves either the previous round's checkpoint or this one, never half a file.
It holds:
- arrays: the global student's and the EMA teacher's head weights
  (``student.*``, ``teacher.*``; all of them, not only the trainable ones)
  and torch's CPU RNG state (``rng.torch``), and the server optimiser's
  moments (``opt.m.*``, ``opt.v.*``, float64; `common.federation.server_optimizer`);
- metadata (JSON): format, the last completed round, the run config, the run
  key (sites key their per-run progress by it), Python's ``random`` state,
  the strategy's state, the server optimiser's kind and step count, the run
  log (every round's row, every site's ledger entries, every
  refusal/rejection/error event, the server's own site-level ledgers) and a
  ledger summary (epsilon per site so far).

Not saved, on purpose: the generators of DP randomness. The sampling of
sites (the strategy's generator, seeded from ``secrets``) and the central
Gaussian noise under site-level DP (Flower's wrapper draws it from numpy's
global generator) must be unpredictable; a resumed server draws them afresh
from OS entropy, as a new process does. Record-level DP noise is drawn at
the sites, never on the server.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from common.atomic import atomic_write_bytes
from common.federation.config import ConfigError, FedConfig

FILE = "checkpoint.safetensors"
FORMAT = "fedgckd-server-checkpoint/1"
# run-config keys a resumed run may change: how to resume, how long to wait for sites
OPERATIONAL_KEYS = frozenset({"resume", "site-wait"})


@dataclass
class ServerCheckpoint:
    round: int  # the last completed round (0: none yet)
    config: dict  # the run config (kebab-case)
    run_key: str
    student: dict[str, np.ndarray]  # heads state dict of the global student
    teacher: dict[str, np.ndarray]  # heads state dict of the EMA teacher
    run_log: dict  # RunLog.state()
    strategy: dict = field(default_factory=dict)
    python_rng: list | None = None
    torch_rng: np.ndarray | None = None
    ledger_summary: dict = field(default_factory=dict)
    saved_at: float = 0.0
    optimizer: dict = field(default_factory=dict)  # ServerOptimizer.state()[0]: kind, steps ({} = fresh)
    optimizer_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # ServerOptimizer.state()[1]


def path_of(out_dir: Path | str) -> Path:
    return Path(out_dir) / FILE


def _jsonable_random_state(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def capture_rng() -> tuple[list, np.ndarray]:
    return _jsonable_random_state(random.getstate()), torch.get_rng_state().numpy().copy()


def restore_rng(ck: ServerCheckpoint) -> None:
    if ck.python_rng is not None:
        version, internal, gauss = ck.python_rng
        random.setstate((version, tuple(internal), gauss))
    if ck.torch_rng is not None:
        torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(ck.torch_rng, dtype=np.uint8)))


def save_checkpoint(out_dir: Path | str, ck: ServerCheckpoint) -> Path:
    tensors = {f"student.{k}": np.ascontiguousarray(v) for k, v in ck.student.items()}
    tensors.update({f"teacher.{k}": np.ascontiguousarray(v) for k, v in ck.teacher.items()})
    if ck.torch_rng is not None:
        tensors["rng.torch"] = np.ascontiguousarray(ck.torch_rng, dtype=np.uint8)
    tensors.update({f"opt.{k}": np.ascontiguousarray(v) for k, v in ck.optimizer_arrays.items()})
    meta = {"format": FORMAT, "round": int(ck.round), "config": ck.config, "run_key": ck.run_key,
            "run_log": ck.run_log, "strategy": ck.strategy, "python_rng": ck.python_rng,
            "ledger_summary": ck.ledger_summary, "optimizer": ck.optimizer, "saved_at": time.time()}
    blob = save(tensors, metadata={"format": FORMAT, "state-json": json.dumps(meta, sort_keys=True)})
    return atomic_write_bytes(path_of(out_dir), blob)


def load_checkpoint(out_dir: Path | str) -> ServerCheckpoint:
    """Read ``OUT/checkpoint.safetensors``; a file that is not one raises a ValueError naming it."""
    path = path_of(out_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no server checkpoint to resume from (a run writes one after every round)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("state-json", "{}"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
                raise ValueError(f"{path}: unsupported checkpoint format {got!r} (expected {FORMAT})")
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, json.JSONDecodeError, OSError) as ex:  # junk bytes, a torn copy, junk metadata
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise ValueError(f"{path}: not a readable server checkpoint ({first})") from None
    missing = [k for k in ("round", "config", "run_key", "run_log") if k not in meta]
    if missing:
        raise ValueError(f"{path}: server checkpoint metadata lacks {', '.join(missing)}")
    part = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}  # noqa: E731
    return ServerCheckpoint(round=int(meta["round"]), config=meta["config"], run_key=str(meta["run_key"]),
                            student=part("student."), teacher=part("teacher."), run_log=meta["run_log"],
                            strategy=meta.get("strategy", {}), python_rng=meta.get("python_rng"),
                            torch_rng=arrays.get("rng.torch"), ledger_summary=meta.get("ledger_summary", {}),
                            saved_at=float(meta.get("saved_at", 0.0)), optimizer=meta.get("optimizer", {}),
                            optimizer_arrays=part("opt."))


def check_same_run(saved: dict, now: dict) -> None:
    """A resumed run must be the same run: every run-config key but the operational ones must match.

    A key the checkpoint lacks (it was written before the key existed) matches its default, which is how that
    run ran."""
    defaults = FedConfig().to_run_config()
    keys = (set(saved) | set(now)) - OPERATIONAL_KEYS
    diff = sorted(k for k in keys if saved.get(k, defaults.get(k)) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"cannot resume: the run config differs from the checkpoint's ({shown}); "
                          "resume with the checkpoint's config (fedgckd simulate --resume RUN_DIR reads it)")
