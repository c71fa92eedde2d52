"""fedgckd ServerApp: teacher, global student, anchor bank; rounds; outputs in out-dir.

Writes to ``out-dir``: ``model/`` (the final global student, a full
checkpoint `fedgckd evaluate` loads), ``teacher/`` (the final EMA teacher),
``metrics.json`` (per round) and ``ledger.json`` (the run's privacy ledger),
and after every completed round ``checkpoint.safetensors`` (`server.checkpoint`).

With ``resume=true`` the server continues from that checkpoint: the student,
the teacher, the run log and the run key come back, and the rounds after the
last completed one run (a round that was under way when the server stopped
runs again, from the start). The server optimiser's state (moments, step count)
comes back too.
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any, Callable, Mapping

for _k, _v in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(_k, _v)

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from common.federation.config import ConfigError, FedConfig  # noqa: E402
from common.privacy.site_level import aggregate_noise_to_clip, noise_for_site_level, site_sample_rate  # noqa: E402
from server.checkpoint import (ServerCheckpoint, capture_rng, check_same_run, load_checkpoint,  # noqa: E402
                               restore_rng, save_checkpoint)
from server.run_log import RunLog  # noqa: E402
from server.strategy import FedGCKD, SiteLevelDP  # noqa: E402
from server.task import ServerTask  # noqa: E402

log = logging.getLogger("fedgckd.server")
OnRound = Callable[[int, int, dict], None]


def site_level_noise(cfg: FedConfig) -> tuple[float, float]:
    """(noise multiplier, per-site sample rate) of the central Gaussian mechanism."""
    q = site_sample_rate(cfg.sampled_per_round, cfg.sites, cfg.site_sampling)
    if cfg.noise_multiplier > 0:
        return cfg.noise_multiplier, q
    return noise_for_site_level(cfg.epsilon, cfg.delta, cfg.sampled_per_round, cfg.sites, cfg.rounds,
                                cfg.site_sampling, cfg.accountant), q


def run(grid: Grid, run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
        on_round: OnRound | None = None) -> dict:
    cfg = FedConfig.from_run_config(run_config, **dict(overrides or {})).validate()
    task = ServerTask(cfg)
    sigma, q = site_level_noise(cfg) if cfg.privacy == "site" else (0.0, 1.0)
    privacy = {"mode": cfg.privacy, "loss_mode": cfg.mode, "epsilon_budget": cfg.epsilon, "delta": cfg.delta,
               "accountant": cfg.accountant, "clip_norm": cfg.clip_norm}
    if cfg.privacy == "site":
        ratio = aggregate_noise_to_clip(sigma, int(task.sizes["trainable_parameters"]), cfg.sampled_per_round)
        privacy.update(unit="site", central_noise_multiplier=sigma, site_sample_rate=q, sampling=cfg.site_sampling,
                       aggregate_noise_to_clip=round(ratio, 3))
        if ratio > 1.0:
            log.warning("site-level DP: the noise on each round's mean update has about %.3g times the norm of the "
                        "largest possible mean update (sigma %.3g, %d trained parameters, %d sites per round); the model "
                        "will mostly follow noise. Sample more sites per round, train fewer parameters "
                        "(train-params) or allow a larger epsilon.", ratio, sigma,
                        int(task.sizes["trainable_parameters"]), cfg.sampled_per_round)
    elif cfg.privacy == "record":
        privacy.update(unit="record", dp_sgd_sample_rate=cfg.sample_rate, local_steps=cfg.local_steps)
    header = {"config": cfg.to_run_config(), "model_bytes": task.sizes, "privacy": privacy, "source": task.source,
              "backbone": {"name": task.backbone.name, "fingerprint": task.fingerprint}}
    run_log = RunLog(cfg.out_dir, header)
    inner = FedGCKD(task, run_log, cfg, site_noise=sigma, site_rate=q)
    strategy = SiteLevelDP(inner, sigma, cfg.clip_norm, cfg.sampled_per_round) if cfg.privacy == "site" else inner
    inner.run_key = secrets.token_hex(8)  # a fresh run's key; a resumed run keeps its checkpoint's
    done = _resume(cfg, task, run_log, inner) if cfg.resume else 0

    def checkpoint(server_round: int) -> None:
        student, teacher = task.heads_state()
        py_rng, torch_rng = capture_rng()
        opt_meta, opt_arrays = inner.server_opt.state()
        save_checkpoint(cfg.out_dir, ServerCheckpoint(
            round=server_round, config=cfg.to_run_config(), run_key=inner.run_key, student=student, teacher=teacher,
            run_log=run_log.state(), strategy={"run_key": inner.run_key, "round_offset": inner.round_offset},
            python_rng=py_rng, torch_rng=torch_rng, ledger_summary=run_log.summary(), optimizer=opt_meta,
            optimizer_arrays=opt_arrays))

    def round_end(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if cfg.resume and flower_round == 0:  # the checkpointed round is already on the record
            return None
        server_round = inner.real_round(flower_round)
        if run_log.row.get("round") != server_round:
            run_log.start_round(server_round)
        if server_round > 0:
            task.end_round({k: v.numpy() for k, v in arrays.items()})
        metrics = task.evaluate()
        run_log.end_round(metrics, teacher_version=task.teacher_version)
        checkpoint(server_round)
        if on_round:
            on_round(server_round, cfg.rounds, {k: metrics[k] for k in ("R1", "mAP") if k in metrics})
        return MetricRecord({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

    initial = ArrayRecord({k: Array(v) for k, v in task.student_arrays().items()})
    if cfg.rounds > done:
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds - done, train_config=ConfigRecord({}),
                       evaluate_fn=round_end)
    paths = task.save_models(cfg.out_dir, {"config": cfg.to_run_config(), "privacy": privacy,
                                           "rounds": len(run_log.rounds) - 1})
    run_log.write()
    log.info("fedgckd: wrote %s", ", ".join(str(p) for p in paths.values()))
    return {"out_dir": cfg.out_dir, "rounds": run_log.rounds}


def _resume(cfg: FedConfig, task: ServerTask, run_log: RunLog, strategy: FedGCKD) -> int:
    """Load out-dir's checkpoint into the task, the run log and the strategy; returns its round."""
    ck = load_checkpoint(cfg.out_dir)
    check_same_run(ck.config, cfg.to_run_config())
    if ck.round > cfg.rounds:
        raise ConfigError(f"the checkpoint is after round {ck.round}, past the run's {cfg.rounds} rounds")
    task.restore(ck.student, ck.teacher)
    run_log.restore(ck.run_log)
    strategy.round_offset, strategy.run_key = ck.round, ck.run_key
    strategy.server_opt.load_state(ck.optimizer, ck.optimizer_arrays)
    restore_rng(ck)
    log.info("fedgckd: resuming after round %d of %d from %s", ck.round, cfg.rounds, cfg.out_dir)
    return ck.round


def build_app(overrides: Mapping[str, Any] | None = None, on_round: OnRound | None = None) -> ServerApp:
    """A ServerApp; `overrides` stand in for the run config `run_simulation` leaves empty."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run(grid, context.run_config, overrides, on_round)

    return app


app = build_app()
