"""Server optimisers (FedAvg / FedAvgM / FedAdam) on the aggregated update: formulas, strategy, DP order, resume.

Ground truths: hand-worked scalars, Flower's own FedAvgM and FedAdam strategies (flwr 1.42) driven with the same
updates, the strategy's plain FedAvg combination, and an uninterrupted run against a resumed one.
"""

from __future__ import annotations

import copy
import importlib
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

import fed_support  # noqa: F401  first: sets Flower's environment (telemetry off) before flwr is imported
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAdam, FedAvgM  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.federation.config import ConfigError, FedConfig  # noqa: E402
from common.federation.server_optimizer import ServerOptimizer, ServerOptSettings  # noqa: E402
from server.checkpoint import ServerCheckpoint, check_same_run, load_checkpoint, save_checkpoint  # noqa: E402
from server.run_log import RunLog  # noqa: E402
from server.strategy import FedGCKD, SiteLevelDP  # noqa: E402

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
BASE = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "b": np.zeros(3, np.float32)}
RNG = np.random.default_rng(7)
DELTAS = [{k: RNG.normal(0, 0.05, v.shape) for k, v in BASE.items()} for _ in range(3)]  # 3 rounds of known updates


def reply(node: int, arrays: dict, examples: int = 1) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"site": node, "status": 0, "num-examples": examples})})
    return Message(content, reply_to=Message(RecordDict(), message_type="train", dst_node_id=node))


def strategy(tmp_path, **cfg) -> FedGCKD:
    c = FedConfig(sites=8, **cfg).validate()
    log = RunLog(tmp_path, {"privacy": {"mode": c.privacy}})
    s = FedGCKD(task=None, run_log=log, cfg=c, site_noise=1.0, site_rate=1.0)
    s.node_site = {n: f"site-{n}" for n in range(8)}
    s.broadcast = {k: v.copy() for k, v in BASE.items()}
    log.start_round(1)
    return s


def numpy_arrays(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


# ---- the formulas ----------------------------------------------------------------------------
def run_steps(opt: ServerOptimizer, x0: dict, deltas: list[dict]) -> list[dict]:
    xs, x = [], x0
    for d in deltas:
        x = opt.step(x, {k: x[k] + d[k] for k in x})
        xs.append(x)
    return xs


def test_fedavgm_hand_worked():
    """momentum 0.5, lr 1, deltas 1, 2, 3 from 0: m = 1, 2.5, 4.25; x = 1, 3.5, 7.75. lr 0.5 halves each step."""
    deltas = [{"x": np.array([v])} for v in (1.0, 2.0, 3.0)]
    xs = run_steps(ServerOptimizer(ServerOptSettings("fedavgm", lr=1.0, momentum=0.5)), {"x": np.zeros(1)}, deltas)
    assert [float(x["x"][0]) for x in xs] == [1.0, 3.5, 7.75]
    xs = run_steps(ServerOptimizer(ServerOptSettings("fedavgm", lr=0.5, momentum=0.5)), {"x": np.zeros(1)}, deltas)
    assert [float(x["x"][0]) for x in xs] == [0.5, 1.75, 3.875]


def test_fedadam_hand_worked():
    """b1 0.5, b2 0.75, tau 0.5, lr 1, deltas 1 then -2 from 0 (Flower's step size: exponent t + 1)."""
    opt = ServerOptimizer(ServerOptSettings("fedadam", lr=1.0, beta1=0.5, beta2=0.75, tau=0.5))
    x1, x2 = run_steps(opt, {"x": np.zeros(1)}, [{"x": np.array([1.0])}, {"x": np.array([-2.0])}])
    # t=1: m = 0.5, v = 0.25, eta = sqrt(1 - 0.75^2) / (1 - 0.5^2); x1 = eta * 0.5 / (0.5 + 0.5)
    eta1 = math.sqrt(1 - 0.5625) / 0.75
    assert x1["x"][0] == pytest.approx(eta1 * 0.5, rel=1e-14)
    # t=2: m = 0.25 - 1 = -0.75, v = 0.1875 + 1 = 1.1875, eta = sqrt(1 - 0.75^3) / (1 - 0.5^3)
    eta2 = math.sqrt(1 - 0.421875) / 0.875
    assert x2["x"][0] == pytest.approx(eta1 * 0.5 + eta2 * -0.75 / (math.sqrt(1.1875) + 0.5), rel=1e-14)
    assert opt.steps == 2 and opt.v["x"][0] == pytest.approx(1.1875)


def flower_rounds(flower, x0: dict, deltas: list[dict], set_current: bool) -> list[dict]:
    xs, x = [], x0
    for rnd, d in enumerate(deltas, start=1):
        if set_current:  # FedAdam takes the broadcast in configure_train
            flower.current_arrays = {k: v.copy() for k, v in x.items()}
        out, _ = flower.aggregate_train(rnd, [reply(0, {k: x[k] + d[k] for k in x})])
        x = numpy_arrays(out)
        xs.append(x)
    return xs


@pytest.mark.parametrize("lr,momentum", [(1.0, 0.9), (0.3, 0.5)])
def test_fedavgm_matches_flowers_fedavgm(lr, momentum):
    x0 = {k: v.astype(np.float64) for k, v in BASE.items()}
    ours = run_steps(ServerOptimizer(ServerOptSettings("fedavgm", lr=lr, momentum=momentum)), x0, DELTAS)
    flower = FedAvgM(server_learning_rate=lr, server_momentum=momentum)
    flower.current_arrays = ArrayRecord({k: Array(v.copy()) for k, v in x0.items()})
    theirs = flower_rounds(flower, x0, DELTAS, set_current=False)
    for a, b in zip(ours, theirs):
        assert all(np.allclose(a[k], b[k], rtol=1e-12, atol=1e-15) for k in x0)
    assert not np.allclose(ours[-1]["w"], x0["w"] + sum(d["w"] for d in DELTAS)), "momentum must change the path"


@pytest.mark.parametrize("lr,b1,b2,tau", [(1e-2, 0.9, 0.99, 1e-3), (0.1, 0.5, 0.9, 1e-2)])
def test_fedadam_matches_flowers_fedadam(lr, b1, b2, tau):
    x0 = {k: v.astype(np.float64) for k, v in BASE.items()}
    ours = run_steps(ServerOptimizer(ServerOptSettings("fedadam", lr=lr, beta1=b1, beta2=b2, tau=tau)), x0, DELTAS)
    theirs = flower_rounds(FedAdam(eta=lr, beta_1=b1, beta_2=b2, tau=tau), x0, DELTAS, set_current=True)
    for a, b in zip(ours, theirs):
        assert all(np.allclose(a[k], b[k], rtol=1e-12, atol=1e-15) for k in x0)


# ---- the strategy ----------------------------------------------------------------------------
def test_fedavg_at_lr_1_is_todays_aggregate_bit_for_bit(tmp_path):
    ups = [({k: BASE[k] + DELTAS[0][k].astype(np.float32) for k in BASE}, 3),
           ({k: BASE[k] - DELTAS[1][k].astype(np.float32) for k in BASE}, 1)]
    s = strategy(tmp_path, privacy="none", mode="full")
    out, _ = s.aggregate_train(1, [reply(n, u, e) for n, (u, e) in enumerate(ups)])
    today = s._combine([(u, float(e)) for u, e in ups])  # the existing weighted FedAvg combination
    for k in BASE:
        assert out[k].numpy().dtype == np.float32 and np.array_equal(out[k].numpy(), today[k])
        hand = ((3 * ups[0][0][k].astype(np.float64) + ups[1][0][k]) / 4).astype(np.float32)
        assert np.array_equal(today[k], hand)
    # fedavg at lr 0.5 steps half way from the broadcast to that aggregate
    s = strategy(tmp_path, privacy="none", mode="full", server_lr=0.5)
    half, _ = s.aggregate_train(1, [reply(n, u, e) for n, (u, e) in enumerate(ups)])
    for k in BASE:
        want = BASE[k] + 0.5 * (today[k].astype(np.float64) - BASE[k])
        assert np.allclose(half[k].numpy(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam"])
def test_strategy_steps_the_optimiser_on_the_aggregate_over_three_rounds(tmp_path, kind):
    s = strategy(tmp_path, privacy="record", server_optimizer=kind)
    ref = ServerOptimizer(FedConfig(server_optimizer=kind).server_opt_settings())
    x = {k: v.copy() for k, v in BASE.items()}
    for rnd, d in enumerate(DELTAS, start=1):
        s.broadcast = {k: v.copy() for k, v in x.items()}
        a, b = ({k: (x[k] + sign * d[k]).astype(np.float32) for k in x} for sign in (1.0, 0.5))
        out, _ = s.aggregate_train(rnd, [reply(0, a), reply(1, b)])
        want = ref.step(x, s._combine([(a, 1.0), (b, 1.0)]))
        got = numpy_arrays(out)
        assert all(np.array_equal(got[k], want[k]) for k in x), f"round {rnd}"
        x = got
    assert s.server_opt.steps == 3


def test_a_round_with_nothing_accepted_leaves_the_state_untouched(tmp_path):
    s = strategy(tmp_path, privacy="record", server_optimizer="fedadam")
    s.aggregate_train(1, [reply(0, {k: BASE[k] + DELTAS[0][k].astype(np.float32) for k in BASE})])
    before = copy.deepcopy((s.server_opt.steps, s.server_opt.m, s.server_opt.v))
    too_big = {k: BASE[k] + 100.0 for k in BASE}  # rejected by the update check
    out, metrics = s.aggregate_train(2, [reply(0, too_big)])
    assert out is None and metrics["accepted"] == 0
    after = (s.server_opt.steps, s.server_opt.m, s.server_opt.v)
    assert before[0] == after[0] == 1
    assert all(np.array_equal(before[i][k], after[i][k]) for i in (1, 2) for k in BASE)


def test_under_site_level_dp_the_optimiser_reads_the_noised_aggregate(tmp_path, monkeypatch):
    dp = importlib.import_module("flwr.serverapp.strategy.dp_fixed_clipping")
    calls = []

    def known_noise(arrays, std):  # stands in for the Gaussian draw: +0.25 everywhere
        calls.append(std)
        for a in arrays:
            a += np.asarray(0.25, a.dtype)

    monkeypatch.setattr(dp, "add_gaussian_noise_inplace", known_noise)
    s = strategy(tmp_path, privacy="site", mode="full", server_lr=0.5)
    wrapped = SiteLevelDP(s, noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=8)
    ups = [{k: BASE[k] + np.float32(0.01) for k in BASE}, {k: BASE[k] + np.float32(0.03) for k in BASE}]
    out, _ = wrapped.aggregate_train(1, [reply(0, ups[0]), reply(1, ups[1])])
    assert calls == [1.0 * 1.0 / 8], "the wrapper's noise std sigma * S / k"
    for k in BASE:
        noised = BASE[k] + np.float32(0.04 / 8) + np.float32(0.25)
        # post-processing of the release: half way to the noised aggregate (the raw one would give 0.125 less)
        assert np.allclose(out[k].numpy(), BASE[k] + 0.5 * (noised - BASE[k]), atol=1e-6)
    assert s.server_opt.steps == 1


# ---- state and resume ------------------------------------------------------------------------
def test_state_round_trips_through_the_checkpoint(tmp_path):
    opt = ServerOptimizer(ServerOptSettings("fedadam", lr=1e-2))
    x0 = {k: v.copy() for k, v in BASE.items()}
    x2 = run_steps(opt, x0, DELTAS[:2])[-1]
    meta, arrays = opt.state()
    save_checkpoint(tmp_path, ServerCheckpoint(round=2, config={}, run_key="k", student=dict(x2), teacher={},
                                               run_log={}, optimizer=meta, optimizer_arrays=arrays))
    assert load_file(str(tmp_path / "checkpoint.safetensors"))["opt.v.w"].dtype == np.float64
    ck = load_checkpoint(tmp_path)
    back = ServerOptimizer(ServerOptSettings("fedadam", lr=1e-2))
    back.load_state(ck.optimizer, ck.optimizer_arrays)
    assert back.steps == 2
    a, b = opt.step(x2, {k: x2[k] + DELTAS[2][k] for k in x2}), back.step(x2, {k: x2[k] + DELTAS[2][k] for k in x2})
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="fedadam.*fedavgm"):
        ServerOptimizer(ServerOptSettings("fedavgm")).load_state(ck.optimizer, ck.optimizer_arrays)


def test_a_checkpoint_from_before_server_optimisers_resumes_as_fedavg():
    now = FedConfig().to_run_config()
    old = {k: v for k, v in now.items() if not k.startswith("server-") or k == "server-eval"}
    check_same_run(old, now)
    with pytest.raises(ConfigError, match="server-optimizer"):
        check_same_run(old, {**now, "server-optimizer": "fedadam"})


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
def test_a_run_resumed_after_round_2_of_4_ends_as_an_uninterrupted_one(tmp_path):
    from test_fed_resume import ServerKilled, heads, kill_after_sites_trained
    from simulations.inprocess import run_inprocess

    bench = fed_support.shared_bench()

    def cfg(out):
        return FedConfig.from_run_config(bench.run_config(out, rounds=4, privacy="none", mode="full",
                                                          **{"server-optimizer": "fedadam"})).validate()

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_inprocess(cfg(straight))
    with pytest.raises(ServerKilled):
        run_inprocess(cfg(resumed), grid_hook=kill_after_sites_trained(3))
    ck = load_checkpoint(resumed / "run")
    assert ck.round == 2 and ck.optimizer == {"kind": "fedadam", "steps": 2}
    assert ck.optimizer_arrays and all(v.dtype == np.float64 for v in ck.optimizer_arrays.values())
    run_inprocess(cfg(resumed).replace(resume=True))
    a, b = heads(straight), heads(resumed)
    for role in a:
        assert a[role].keys() == b[role].keys()
        assert all(np.array_equal(a[role][k], b[role][k]) for k in a[role]), f"{role} differs after resume"
    assert load_checkpoint(resumed / "run").optimizer["steps"] == 4


# ---- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("server-optimizer", "sgd"), ("server-lr", -1.0), ("server-lr", float("nan")),
                                       ("server-momentum", 1.0), ("server-beta1", -0.1), ("server-beta2", 1.5),
                                       ("server-tau", 0.0)])
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        FedConfig.from_run_config({key: value}).validate()


def test_config_reads_and_resolves_the_server_learning_rate():
    with pytest.raises(ConfigError, match="server-lr"):
        FedConfig.from_run_config({"server-lr": "fast"})
    assert FedConfig().server_opt_settings() == ServerOptSettings("fedavg", 1.0, 0.9, 0.9, 0.99, 1e-3)
    assert FedConfig(server_optimizer="fedavgm").server_opt_settings().lr == 1.0
    assert FedConfig(server_optimizer="fedadam").server_opt_settings().lr == 1e-2
    assert FedConfig(server_optimizer="fedadam", server_lr=0.3).server_opt_settings().lr == 0.3
    assert ServerOptimizer(FedConfig().server_opt_settings()).is_identity
