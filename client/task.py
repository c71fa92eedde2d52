"""The site's side of a round, between Flower messages and `common.federation`.

`handle_query` (message type ``query.teacher``): check the trunk fingerprint,
check the payload against its version hash, cache it in the site's state dir.

`handle_train`: open the site's ledger (continuing its history), decide
whether the round fits the site's own budget (refuse otherwise, whatever the
server asks), write the planned spending to the ledger *before* training
(status "crashed" until the round completes, so a killed round is still
counted), train, mark it "trained", and reply with the trainable arrays and
the allowed scalar metrics only (`common.federation.outbound`).

With ``train-params=lowrank:R`` the train message also carries the round's
public adapter bases (``bases``): the site attaches ``W + B A`` to the
broadcast student with them and replies with the B's (+ biases) only
(`common.federation.adapters`).

Rounds are keyed by the server's round number. A round the server runs
again (it was killed and resumed from its checkpoint) is trained again and
counted again: privacy is spent each time training really runs, so the
ledger then holds two sets of entries for that round (see
docs/reliability.md). Under site-level DP with Poisson sampling the site
charges the rounds since the last one it charged; that round is kept per run
(``run-key``) in the site's state dir, so a restarted site neither charges a
round twice nor forgets one.

Imports are lazy where they are heavy (the accountant, the training loop):
in deployment every message starts a new ClientApp process, and a teacher
query needs neither.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client import faults, site_data
from common.federation import adapters, outbound, update_codec
from common.federation.config import FedConfig
from common.federation.payload import unpack_teacher
from common.federation.site_settings import resolve_settings
from common.federation.trainable import broadcast_names, get_arrays, load_arrays, update_shapes
from common.federation.validation import max_delta_norm, scale_to_bound

STATE = "fedgckd-site"  # the one small ConfigRecord this app keeps in context.state
log = logging.getLogger("fedgckd.site")


def load_config(context: Context, overrides: Mapping[str, Any] | None = None) -> FedConfig:
    """Run config over the defaults; refuses unsafe combinations (e.g. record-level DP in full mode)."""
    return FedConfig.from_run_config(context.run_config, **dict(overrides or {})).validate()


def _state(context: Context) -> ConfigRecord:
    if STATE not in context.state.config_records:
        context.state[STATE] = ConfigRecord({"teacher-version": "", "last-round": 0, "ledger-entries": 0, "epsilon": 0.0})
    return context.state.config_records[STATE]


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def handle_query(msg: Message, context: Context, overrides: Mapping[str, Any] | None = None) -> Message:
    cfg = load_config(context, overrides)
    settings = resolve_settings(context.node_config, cfg)
    config = dict(msg.content["config"])
    name = settings.backbone or str(config["backbone"])
    site_data.check_fingerprint(name, str(config["fingerprint"]), settings.site)
    arrays = _numpy(msg.content["arrays"])
    unpack_teacher(arrays, config)  # raises if the payload does not match its version hash
    site_data.save_teacher(settings.state_dir, arrays, {**config, "backbone": name})
    _state(context)["teacher-version"] = str(config["teacher-version"])
    metrics = {"site": settings.partition_id, "teacher-received": 1}
    outbound.ensure_allowed(None, metrics, None, None, cfg.privacy, kind="query")
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def run_local_round(*args, **kwargs):
    """`common.federation.local_round.run_local_round`, imported when a site trains (tests replace it here)."""
    from common.federation.local_round import run_local_round as run

    return run(*args, **kwargs)


def handle_train(msg: Message, context: Context, overrides: Mapping[str, Any] | None = None) -> Message:
    from common.checkpoint import clone_heads
    from common.federation.site_budget import check_continuity, open_ledger, plan_round
    from common.privacy.ledger import LedgerError

    cfg = load_config(context, overrides)
    settings = resolve_settings(context.node_config, cfg)
    config = dict(msg.content["config"])
    server_round = int(config["server-round"])
    arrays_in = _numpy(msg.content["arrays"])
    t_arrays, t_config = site_data.load_teacher(settings.state_dir, str(config["teacher-version"]))
    teacher, a_img, a_txt = unpack_teacher(t_arrays, t_config)
    names = broadcast_names(teacher, cfg.train_params, cfg.loss_mode)
    shapes = {n: tuple(p.shape) for n, p in teacher.named_parameters() if n in names}
    if list(arrays_in) != names or any(tuple(arrays_in[n].shape) != shapes[n] for n in names):
        raise ValueError(f"{settings.site}: the server's student arrays {list(arrays_in)[:4]} do not match this "
                         f"site's trainable parameters {names[:4]} (train-params={cfg.train_params!r})")
    expected = update_shapes(teacher, cfg.train_params, cfg.loss_mode)  # what may leave: the reply's names and shapes
    student = clone_heads(teacher)
    load_arrays(student, arrays_in)
    base = arrays_in  # what the reply's update is measured from (and what a refusal sends back)
    rank = adapters.rank_of(cfg.train_params)
    if rank is not None:  # lowrank:R: the server's public bases for this round; only the B's (+ biases) train
        if adapters.BASES not in msg.content.array_records:
            raise ValueError(f"{settings.site}: train-params={cfg.train_params!r} but the train message has no bases")
        names = adapters.attach(student, adapters.unpack_bases(_numpy(msg.content[adapters.BASES]), teacher, rank),
                                cfg.train_params)
        base = get_arrays(student, names)  # zero B's and the broadcast biases
    state = _state(context)
    metrics: dict[str, int | float] = {"site": settings.partition_id, "server-round": server_round}
    try:
        led = open_ledger(settings, cfg)
        check_continuity(led, int(state["ledger-entries"]))
    except LedgerError as ex:  # corrupt, rolled back, or a budget raised from outside: fail closed
        return _reply(msg, base, metrics, outbound.REFUSED, str(ex), expected, cfg, base)
    run_key = str(config.get("run-key", ""))
    last_round = max(int(state["last-round"]), site_data.last_charged_round(settings.state_dir, run_key))
    plan = plan_round(led, cfg, server_round, config, last_round)
    if plan.refuse:
        led.record(server_round, [], "refused", run_key=run_key)
        led.save(settings.ledger_path())
        # a refused round spent nothing; the next one charges from the last spend
        _remember(state, led, None, settings, run_key)
        metrics.update(led.to_metrics(server_round, run_key))
        return _reply(msg, base, metrics, outbound.REFUSED, plan.reason, expected, cfg, base)
    site = site_data.site_features(settings, cfg, t_config["backbone"])  # loading data releases nothing
    if cfg.privacy == "record" and last_round == 0:  # the site's first round: say, on the site's own log only, how loud
        _note_noise(settings.site, plan.dp_sgd_noise, sum(int(np.prod(s)) for s in expected.values()), cfg, site.n_images)
    n_planned = len(led.record(server_round, plan.spends, "crashed", run_key=run_key)) if led else 0  # write-ahead
    if led:
        led.save(settings.ledger_path())
        _remember(state, led, server_round, settings, run_key)
    faults.strike(msg, context, "before-training")  # test-only crash points; no-ops unless FEDGCKD_FAULTS is set
    seed = cfg.seed * 1_000_003 + settings.partition_id * 1_009 + server_round
    result = run_local_round(student, teacher, a_img, a_txt, site, names, cfg, plan.dp_sgd_noise, seed)
    faults.strike(msg, context, "after-training")
    if led:
        ran = [(s.mechanism, s.noise_multiplier, s.sample_rate, s.steps) for s in result.spends] if led.unit == "record" else None
        planned = [(s.mechanism, s.noise_multiplier, s.sample_rate, s.steps) for s in plan.spends]
        if ran is not None and ran != planned:
            raise RuntimeError(f"{settings.site}: the round ran {ran}, not the planned {planned}; the ledger keeps the plan")
        led.entries[-n_planned:] = [replace(e, status="trained") for e in led.entries[-n_planned:]]
        led.save(settings.ledger_path())
        metrics.update(led.to_metrics(server_round, run_key))
    update = result.arrays
    if cfg.privacy == "site":  # the site clips its own update too: it does not rely on the server's mod config
        update = scale_to_bound(update, base, cfg.clip_norm, slack=0.0)
    elif cfg.privacy == "record":  # DP noise may carry the update past the server's sanity bound: scale it back
        update = scale_to_bound(update, base, max_delta_norm("record", cfg.clip_norm, cfg.max_update_norm, arrays_in))
    if cfg.privacy == "none":
        metrics.update({"loss": float(result.loss), "records": int(site.n_images)})
    metrics["num-examples"] = int(site.n_images) if cfg.privacy == "none" else 1
    return _reply(msg, update, metrics, outbound.TRAINED, "", expected, cfg, base)


def _note_noise(site: str, sigma: float, trained: int, cfg: FedConfig, records: int) -> None:
    """Log (locally; nothing is sent) how the DP-SGD noise of a step compares with its largest possible signal."""
    from common.privacy.site_level import aggregate_noise_to_clip
    from common.train.record_level_dp import expected_batch

    batch = expected_batch(cfg.sample_rate, records)
    ratio = aggregate_noise_to_clip(sigma, trained, batch)
    (log.warning if ratio > 1 else log.info)(
        "%s: record-level DP-SGD with noise multiplier %.3g on %d trained numbers at about %d records per step: the "
        "noise on a step's mean gradient is %.3g times the largest possible mean clipped gradient%s", site, sigma,
        trained, batch, ratio, "; training will mostly follow noise" if ratio > 1 else "")


def _remember(state: ConfigRecord, led, spent_round: int | None, settings, run_key: str) -> None:
    state["ledger-entries"] = len(led.entries)
    state["epsilon"] = float(led.epsilon())
    if spent_round is not None:
        state["last-round"] = int(spent_round)
        site_data.remember_charged_round(settings.state_dir, run_key, int(spent_round))


def _reply(msg: Message, arrays: dict[str, np.ndarray], metrics: dict, status: int, reason: str,
           expected: dict[str, tuple], cfg: FedConfig, reference: dict[str, np.ndarray]) -> Message:
    """The reply: ``arrays`` (the site's trained numbers) in the run's update codec, measured from ``reference``."""
    seed = [cfg.seed, int(metrics.get("site", 0)), int(metrics.get("server-round", 0))]  # rounding draws, not DP noise
    arrays = update_codec.encode(arrays, reference, cfg.update_codec, np.random.default_rng(seed))
    expected = update_codec.reply_shapes(expected, cfg.update_codec)
    metrics = {**metrics, "status": status}
    metrics.setdefault("num-examples", 1)
    status_rec = {"status": outbound.STATUS_NAMES[status], "reason": reason[: outbound.MAX_REASON]}
    shapes = {k: tuple(np.asarray(v).shape) for k, v in arrays.items()}
    outbound.ensure_allowed(shapes, metrics, status_rec, expected, cfg.privacy)  # fail closed: nothing else leaves
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
        "metrics": MetricRecord(metrics),
        "status": ConfigRecord(status_rec),
    })
    return Message(content, reply_to=msg)
