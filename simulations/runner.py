"""Run a federation as a Flower simulation on this machine (Flower's `run_simulation`, Ray backend).

`prepare` computes every frozen-trunk feature the run needs once, before the
engine starts (source train for the anchor bank, target train for the sites,
target val for the server's report), so the simulated sites only read the
feature cache instead of each running the big towers. It also writes the
simulation's partition summary (records and identities per site: the
simulation device knows them; the server never receives them).

`simulate` starts and stops its own engine: `run_simulation` returns when the
ServerApp finishes; Ray is shut down with it. It passes an empty run config
to the apps, so the apps are built with the run's settings as overrides.
Flower turns a failed ServerApp into a log line, so success is judged from
the files the run must leave (metrics.json with every round, the model).

Why `run_simulation`, which Flower 1.42 logs as deprecated in favour of `flwr
run`: it runs the ServerApp in this process, so the CLI's per-round progress
callback and the run's settings reach it as Python objects, and it needs no
SuperLink process (2-3 s and ~350 MiB less per run). The supported way runs
the same apps too: deployment submits them with `flwr run` (`fedgckd server
run`, tests/test_deploy_e2e.py), and the README shows `flwr run` against a
simulation SuperLink. The deprecation notice is therefore dropped here,
knowingly and only that one record (`_DropRunSimulationNotice`); if a later
Flower removes `run_simulation`, the pin `flwr<1.43` in pyproject.toml keeps
this working until the runner moves. Flower's console log is uncoloured when
stderr is not a terminal, so logs hold no raw ANSI codes.

`resume_config` reads a run folder's server checkpoint back into the run's
config with ``resume=true``: `simulate` then continues after the last
completed round (`fedgckd simulate --resume RUN_DIR`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

from common.atomic import atomic_write_json, read_json
from common.federation.config import FedConfig
from common.federation.partition import summary
from common.federation.site_data import partition_featureset

ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
       "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}  # CPU only; silences Ray's FutureWarning about GPU env vars
Progress = Callable[[int, int, dict], None]
for _k, _v in ENV.items():  # before anything imports flwr (it reads the telemetry switch at import)
    os.environ.setdefault(_k, _v)


class SimulationFailed(RuntimeError):
    pass


class _DropRunSimulationNotice(logging.Filter):
    """Drops Flower's "`run_simulation` function is deprecated" record (see the module docstring), nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def quiet_flower_log(verbose: bool) -> None:
    """Flower's console log: INFO or WARNING, coloured only on a terminal, without the notice above."""
    from flwr.common.logger import update_console_handler

    flwr_log = logging.getLogger("flwr")
    flwr_log.propagate = False  # one copy of each line (Ray adds a root handler)
    if not any(isinstance(f, _DropRunSimulationNotice) for f in flwr_log.filters):
        flwr_log.addFilter(_DropRunSimulationNotice())
    update_console_handler(level="INFO" if verbose else "WARNING", colored=sys.stderr.isatty())


def resume_config(run_dir: Path | str, **changes) -> FedConfig:
    """The config of the run in `run_dir` (from its server checkpoint), set to resume; `changes` may set the
    operational keys (e.g. site-wait)."""
    from server.checkpoint import OPERATIONAL_KEYS, load_checkpoint

    ck = load_checkpoint(run_dir)
    bad = [k for k in changes if FedConfig.key(k) not in OPERATIONAL_KEYS]
    if bad:
        raise ValueError(f"a resumed run keeps its config; cannot change {', '.join(bad)}")
    cfg = FedConfig.from_run_config(ck.config, **changes)
    if Path(cfg.out_dir).resolve() != Path(run_dir).resolve():
        raise ValueError(f"{run_dir}: its checkpoint belongs to out-dir {cfg.out_dir!r} (relative paths are relative "
                         "to where the run was started); resume from there")
    return cfg.replace(resume=True).validate()


def prepare(cfg: FedConfig, progress: Callable[[str], Callable] | None = None) -> dict:
    """Fill the feature cache and write `<out-dir>/sites.json`; returns that summary."""
    from common.checkpoint import load_checkpoint, source_data_dir
    from common.models.backbones import build_backbone
    from common.pipeline import domain_features

    cfg.require("data_dir", "target", "teacher")
    ckpt = load_checkpoint(cfg.teacher)
    bb = build_backbone(cfg.backbone or ckpt.backbone)
    load_checkpoint(cfg.teacher, expect_fingerprint=bb.fingerprint())
    source = cfg.source or ckpt.meta.get("source", {}).get("domain")
    src_data = cfg.data_dir if cfg.source or (Path(cfg.data_dir) / str(source)).is_dir() else \
        source_data_dir(cfg.teacher, ckpt.meta.get("source", {}))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    jobs = [(src_data, source, "train"), (cfg.data_dir, cfg.target, "train")]
    if cfg.server_eval:
        jobs.append((cfg.data_dir, cfg.target, "val"))
    feats = {}
    for data, domain, split in jobs:
        with progress(f"features {domain}/{split}") if progress else _null() as update:
            feats[(domain, split)] = domain_features(bb, data, domain, split, cache_dir=cache, progress=update)
    target = feats[(cfg.target, "train")]
    parts = partition_featureset(target, cfg)
    info = {"partition": cfg.partition, "alpha": cfg.alpha, "seed": cfg.seed, "backbone": bb.name,
            "note": "identity labels were used only to split the data between simulated sites",
            "sites": summary(parts, target.image_pids.numpy())}
    if cfg.privacy == "record":
        info["record_level_noise"] = record_level_noise(cfg, ckpt.heads, [s["records"] for s in info["sites"]])
    atomic_write_json(Path(cfg.out_dir) / "sites.json", info)
    return info


def record_level_noise(cfg: FedConfig, heads, site_records: list[int]) -> dict:
    """How loud a fresh site's first-round DP-SGD noise is against its signal, site by site.

    The noise added to each step's mean clipped gradient has norm about sigma * C * sqrt(d) / B (d trained
    numbers, B = the expected batch), while that mean is at most C long: ``noise_to_clip`` is the ratio
    (`aggregate_noise_to_clip`, the same formula as site-level DP's with records per step in place of sites).
    """
    from common.federation.site_budget import record_spends
    from common.federation.trainable import update_shapes
    from common.privacy.site_level import aggregate_noise_to_clip
    from common.train.record_level_dp import expected_batch

    d = sum(math.prod(s) for s in update_shapes(heads, cfg.train_params, cfg.loss_mode).values())  # what DP-SGD noises
    _, sigma = record_spends(cfg, cfg.epsilon, cfg.delta, cfg.accountant, [], 1)
    batches = [expected_batch(cfg.sample_rate, n) for n in site_records]
    return {"dp_sgd_noise_multiplier": sigma, "trained_numbers": int(d), "records_per_step": batches,
            "noise_to_clip": [aggregate_noise_to_clip(sigma, d, b) for b in batches]}


def _run_ray(cfg: FedConfig, on_round: Progress | None, num_cpus: int | None, verbose: bool) -> None:
    from flwr.simulation import run_simulation

    from client.app import build_app as build_client
    from server.app import build_app as build_server

    overrides = cfg.to_run_config()
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": int(num_cpus or min(os.cpu_count() or 1, cfg.sites)), "log_to_driver": verbose}}
    run_simulation(server_app=build_server(overrides, on_round), client_app=build_client(overrides),
                   num_supernodes=cfg.sites, backend_config=backend)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


ENGINES = ("ray", "inprocess")


def simulate(cfg: FedConfig, on_round: Progress | None = None, num_cpus: int | None = None,
             verbose: bool = True, engine: str = "ray") -> dict:
    """Run the federation; returns metrics.json's content. Raises SimulationFailed if the run left no result.

    verbose=False: Flower's console log at WARNING, and the sites' (Ray actors') output not forwarded.
    engine: "ray" (Flower's simulation engine: sites run side by side in Ray actors, up to ``num_cpus`` at once) or
    "inprocess" (`simulations.inprocess`: the same ServerApp and ClientApp, sites one after another in this process;
    no actor start-up, so on a machine with few cores it finishes a run sooner; ``num_cpus`` is not used).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    quiet_flower_log(verbose)
    cfg.validate()
    out = Path(cfg.out_dir)
    for stale in ("metrics.json", "ledger.json") if not cfg.resume else ():  # a resumed run continues them
        (out / stale).unlink(missing_ok=True)
    t0, started = time.perf_counter(), time.time()
    if engine == "inprocess":
        from simulations.inprocess import run_inprocess

        run_inprocess(cfg, on_round=on_round)
    else:
        _run_ray(cfg, on_round, num_cpus, verbose)
    wall = time.perf_counter() - t0
    metrics_file = out / "metrics.json"
    model = out / "model" / "config.json"
    if not metrics_file.exists() or not model.exists() or model.stat().st_mtime < started:
        raise SimulationFailed(f"the simulation left no result in {out} (see the Flower log above)")
    result = read_json(metrics_file)
    done = [r["round"] for r in result["rounds"]]
    if done[-1:] != [cfg.rounds]:
        raise SimulationFailed(f"the simulation stopped after rounds {done} of {cfg.rounds}")
    result["wall_s"] = round(wall, 2)
    atomic_write_json(metrics_file, result)
    return result
