"""Faults at run level: the real ServerApp and ClientApp, in one process (`simulations.inprocess`).

Each test runs a whole federation (3 sites, tiny backbone) with faults
injected at the sites (`client.faults`, through ``FEDGCKD_FAULTS``, the same
switch that works under Ray and in deployment) or by the engine (a node that
is not connected), and checks what the run recorded: metrics.json,
ledger.json and each site's own ledger on its disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fed_support import TARGET, shared_bench

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.federation.config import FedConfig  # noqa: E402
from common.privacy.ledger import SiteLedger  # noqa: E402
from simulations.inprocess import run_inprocess  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


@pytest.fixture(scope="module")
def bench():
    return shared_bench()


def config(bench, tmp_path, **kw) -> FedConfig:
    return FedConfig.from_run_config(bench.run_config(tmp_path, **{"site-wait": 0.2, **kw})).validate()


def faults(monkeypatch, plan: dict) -> None:
    monkeypatch.setenv("FEDGCKD_FAULTS", json.dumps(plan))


def read(tmp_path) -> tuple[list[dict], dict]:
    run = tmp_path / "run"
    return json.loads((run / "metrics.json").read_text())["rounds"], json.loads((run / "ledger.json").read_text())


def site_ledger(tmp_path, k: int) -> SiteLedger:
    return SiteLedger.load(tmp_path / "sites" / f"site-{k}" / "ledger-record.json")


def test_a_site_crashing_mid_round_leaves_the_round_to_the_others(bench, tmp_path, monkeypatch):
    faults(monkeypatch, {"site-0": {"1": "crash"}, "site-1": {"1": "crash-late"}})
    run_inprocess(config(bench, tmp_path, privacy="record"))
    rounds, ledger = read(tmp_path)
    r1, r2 = rounds[1], rounds[2]
    assert r1["trained"] == ["site-2"] and set(r1["errors"]) == {"site-0", "site-1"}
    assert "crashed before training" in r1["errors"]["site-0"] and "crashed after training" in r1["errors"]["site-1"]
    assert sorted(r2["trained"]) == ["site-0", "site-1", "site-2"] and not r2["errors"]
    l0, l1, l2 = (site_ledger(tmp_path, k) for k in range(3))
    # write-ahead: a crash before any DP step still counts the planned spending (an upper bound: nothing ran) ...
    assert [e.status for e in l0.entries if e.round == 1] == ["crashed", "crashed"]
    # ... and a crash after the steps counts exactly what ran: the same mechanisms as a site that finished round 1
    ran = lambda led, r: [(e.mechanism, e.noise_multiplier, e.sample_rate, e.steps) for e in led.entries if e.round == r]  # noqa: E731
    assert ran(l1, 1) == ran(l2, 1) == ran(l0, 1)
    assert [e.status for e in l1.entries if e.round == 1] == ["crashed", "crashed"]
    assert all(e.status == "trained" for led in (l0, l1, l2) for e in led.entries if e.round == 2)
    assert l0.epsilon() == pytest.approx(l2.epsilon()), "the crashed round is on the ledger, not lost"
    for k, led in enumerate((l0, l1, l2)):  # the run's ledger agrees with each site's own
        assert ledger["final_epsilon"][f"site-{k}"] == pytest.approx(led.epsilon())
    kinds = {(e["round"], e["site"], e["kind"]) for e in ledger["events"]}
    assert {(1, "site-0", "error"), (1, "site-1", "error")} <= kinds


def test_bad_updates_are_rejected_with_a_reason_and_the_run_goes_on(bench, tmp_path, monkeypatch):
    faults(monkeypatch, {"site-0": {"1": "nan"}, "site-1": {"1": "wrong-shape"}, "site-2": {"2": "oversized"}})
    result, _ = run_inprocess(config(bench, tmp_path, privacy="none", mode="full"))
    rounds, ledger = read(tmp_path)
    r1, r2 = rounds[1], rounds[2]
    assert r1["trained"] == ["site-2"] and "NaN" in r1["rejected"]["site-0"] and "shape" in r1["rejected"]["site-1"]
    assert sorted(r2["trained"]) == ["site-0", "site-1"] and "exceeds the bound" in r2["rejected"]["site-2"]
    assert [(e["round"], e["site"]) for e in ledger["events"] if e["kind"] == "rejected"] == [
        (1, "site-0"), (1, "site-1"), (2, "site-2")]
    from safetensors.numpy import load_file

    weights = load_file(str(tmp_path / "run" / "model" / "heads.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values()), "no rejected value reached the model"
    assert len(result["rounds"]) == 3


def test_sites_drop_out_restart_and_come_back(bench, tmp_path, monkeypatch):
    """site-1 is not connected in round 1 (engine), site-0 is unreachable in round 2 (its messages fail),
    site-2 restarts before round 2 (Flower state lost, disk kept); everyone trains in round 3."""
    faults(monkeypatch, {"site-0": {"2": "drop"}, "site-2": {"2": "restart"}})
    cfg = config(bench, tmp_path, privacy="record", rounds=3)
    grid_ref = {}

    def hook(grid):
        grid_ref["grid"] = grid
        grid.set_offline(1)

    def back(server_round, *_):
        if server_round == 1:
            grid_ref["grid"].set_offline(1, False)

    run_inprocess(cfg, on_round=back, grid_hook=hook)
    rounds, ledger = read(tmp_path)
    assert rounds[1]["trained"] == ["site-0", "site-2"]
    assert any("2 of 3 sites connected" in n for n in rounds[1]["notes"])
    assert sorted(rounds[2]["trained"]) == ["site-1", "site-2"] and "unreachable" in rounds[2]["errors"]["site-0"]
    assert sorted(rounds[3]["trained"]) == ["site-0", "site-1", "site-2"]
    l0, l1, l2 = (site_ledger(tmp_path, k) for k in range(3))
    assert sorted({e.round for e in l1.entries}) == [2, 3], "a site that was away spent nothing that round"
    assert sorted({e.round for e in l0.entries}) == [1, 3], "an unreachable site spent nothing that round"
    assert sorted({e.round for e in l2.entries}) == [1, 2, 3] and all(e.status == "trained" for e in l2.entries)
    eps2 = [e.epsilon_so_far for e in l2.entries]
    assert eps2 == sorted(eps2) and eps2[0] > 0, "the restarted site's ledger continued, it did not start over"
    for k, led in enumerate((l0, l1, l2)):
        assert ledger["final_epsilon"][f"site-{k}"] == pytest.approx(led.epsilon())


def test_an_exhausted_site_refuses_whatever_the_server_asks(bench, tmp_path):
    spent = SiteLedger(site="site-1", unit="record", delta=1e-5, budget=0.5)
    spent.save(tmp_path / "sites" / "site-1" / "ledger-record.json")
    # the server's run config claims a budget of 1000 per site and a small noise multiplier
    run_inprocess(config(bench, tmp_path, privacy="record", epsilon=1000.0, **{"noise-multiplier": 0.5}))
    rounds, ledger = read(tmp_path)
    for r in rounds[1:]:
        assert list(r["refused"]) == ["site-1"] and "budget exhausted" in r["refused"]["site-1"]
        assert sorted(r["trained"]) == ["site-0", "site-2"]
    led = site_ledger(tmp_path, 1)
    assert [e.status for e in led.entries] == ["refused", "refused"] and led.epsilon() == 0.0 and led.budget == 0.5
    assert ledger["final_epsilon"]["site-1"] == 0.0


def test_corrupt_data_at_one_site_fails_there_with_a_clear_error(bench, tmp_path):
    bad = tmp_path / "bad-data"
    shutil.copytree(bench.data, bad)
    image = sorted((bad / TARGET / "imgs" / "train").iterdir())[0]
    image.write_bytes(image.read_bytes()[:40])  # a truncated JPEG
    cfg = config(bench, tmp_path, privacy="record")
    run_inprocess(cfg, extra_node_config={2: {"data-dir": str(bad), "cache-dir": str(tmp_path / "bad-cache")}})
    rounds, _ = read(tmp_path)
    for r in rounds[1:]:
        assert sorted(r["trained"]) == ["site-0", "site-1"]
        reason = r["errors"]["site-2"]
        assert "DataError" in reason and image.name in reason and "unreadable image" in reason
    assert not (tmp_path / "sites" / "site-2" / "ledger-record.json").exists(), "reading data spends nothing"


def test_fault_plan_is_checked():
    from client import faults as f

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDGCKD_FAULTS", json.dumps({"site-0": {"1": "explode"}}))
        with pytest.raises(ValueError, match="unknown fault kinds"):
            f.plan()
        mp.delenv("FEDGCKD_FAULTS")
        assert f.plan() == {}
    assert Path(f.__file__).name == "faults.py"


def test_a_restarted_site_charges_each_site_level_round_once(bench, tmp_path):
    """Site-level DP with Poisson sampling: a site charges the rounds since the last one it charged. After a
    restart (Flower state gone) it reads that round from its disk (per run key), so it neither charges a round
    twice nor forgets one."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from client.app import app as client_app
    from server.task import ServerTask

    rc = bench.run_config(tmp_path, privacy="site", mode="full", rounds=4)
    task = ServerTask(FedConfig.from_run_config(rc).validate())
    arrays, tcfg = task.teacher_payload()

    def context():  # a fresh Context: what a restarted SuperNode has
        return Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(),
                       run_config=rc)

    def train(ctx, server_round, run_key="run-a"):
        conf = {"server-round": server_round, "teacher-version": task.teacher_version, "run-key": run_key,
                "site-noise-multiplier": 4.0, "site-sample-rate": 0.5, "clipping_norm": 1.0}
        msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in task.student_arrays().items()}),
                                  "config": ConfigRecord(conf)}), message_type="train", dst_node_id=1)
        return client_app(msg, ctx)

    ctx = context()
    client_app(Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                   "config": ConfigRecord(dict(tcfg))}), message_type="query.teacher", dst_node_id=1), ctx)
    train(ctx, 1)
    train(context(), 3)  # restarted; rounds 2 and 3 are due (the site was not sampled in round 2)
    train(context(), 4, run_key="run-b")  # another run: its rounds are counted from its own start
    led = SiteLedger.load(tmp_path / "sites" / "site-0" / "ledger-site.json")
    assert [(e.round, e.steps) for e in led.entries] == [(1, 1), (3, 2), (4, 4)]
