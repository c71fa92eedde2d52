"""fedgckd ServerApp: teacher, global student, anchor bank; rounds; outputs in out-dir.

Writes to ``out-dir``: ``model/`` (the final global student, a full
checkpoint `fedgckd evaluate` loads), ``teacher/`` (the final EMA teacher),
``metrics.json`` (per round) and ``ledger.json`` (the run's privacy ledger).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

for _k, _v in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(_k, _v)

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from common.federation.config import FedConfig  # noqa: E402
from common.privacy.site_level import noise_for_site_level, site_sample_rate  # noqa: E402
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
        privacy.update(unit="site", central_noise_multiplier=sigma, site_sample_rate=q, sampling=cfg.site_sampling)
    elif cfg.privacy == "record":
        privacy.update(unit="record", dp_sgd_sample_rate=cfg.sample_rate, local_steps=cfg.local_steps)
    header = {"config": cfg.to_run_config(), "model_bytes": task.sizes, "privacy": privacy, "source": task.source,
              "backbone": {"name": task.backbone.name, "fingerprint": task.fingerprint}}
    run_log = RunLog(cfg.out_dir, header)
    inner = FedGCKD(task, run_log, cfg, site_noise=sigma, site_rate=q)
    strategy = SiteLevelDP(inner, sigma, cfg.clip_norm, cfg.sampled_per_round) if cfg.privacy == "site" else inner

    def round_end(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if run_log.row.get("round") != server_round:
            run_log.start_round(server_round)
        if server_round > 0:
            task.end_round({k: v.numpy() for k, v in arrays.items()})
        metrics = task.evaluate()
        run_log.end_round(metrics, teacher_version=task.teacher_version)
        if on_round:
            on_round(server_round, cfg.rounds, {k: metrics[k] for k in ("R1", "mAP") if k in metrics})
        return MetricRecord({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

    initial = ArrayRecord({k: Array(v) for k, v in task.student_arrays().items()})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds, train_config=ConfigRecord({}),
                   evaluate_fn=round_end)
    paths = task.save_models(cfg.out_dir, {"config": cfg.to_run_config(), "privacy": privacy,
                                           "rounds": len(run_log.rounds) - 1})
    run_log.write()
    log.info("fedgckd: wrote %s", ", ".join(str(p) for p in paths.values()))
    return {"out_dir": cfg.out_dir, "rounds": run_log.rounds}


def build_app(overrides: Mapping[str, Any] | None = None, on_round: OnRound | None = None) -> ServerApp:
    """A ServerApp; `overrides` stand in for the run config `run_simulation` leaves empty."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run(grid, context.run_config, overrides, on_round)

    return app


app = build_app()
