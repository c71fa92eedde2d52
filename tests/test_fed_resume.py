"""Checkpoint and resume of the server, in one process (`simulations.inprocess`).

The server is "killed" at the worst moment: in round 2, after every site
trained (and, under DP, spent privacy) but before the server aggregated. The
resumed server re-runs round 2 from its round-1 checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fed_support import shared_bench

from common.federation.config import ConfigError, FedConfig  # noqa: E402
from common.privacy.ledger import SiteLedger  # noqa: E402
from server.checkpoint import load_checkpoint  # noqa: E402
from simulations.inprocess import run_inprocess  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")


class ServerKilled(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way out handles it."""


@pytest.fixture(scope="module")
def bench():
    return shared_bench()


def config(bench, out, **kw) -> FedConfig:
    return FedConfig.from_run_config(bench.run_config(out, **{"rounds": 3, **kw})).validate()


def kill_after_sites_trained(round_to_kill: int):
    def hook(grid):
        deliver = grid.send_and_receive

        def send_and_receive(messages, *, timeout=None):
            messages = list(messages)
            replies = deliver(messages, timeout=timeout)
            if any(m.metadata.message_type == "train" and m.content["config"]["server-round"] == round_to_kill
                   for m in messages):
                raise ServerKilled(f"killed in round {round_to_kill}, the sites' replies in flight")
            return replies

        grid.send_and_receive = send_and_receive

    return hook


def interrupted_then_resumed(cfg: FedConfig):
    with pytest.raises(ServerKilled):
        run_inprocess(cfg, grid_hook=kill_after_sites_trained(2))
    ck = load_checkpoint(cfg.out_dir)
    assert ck.round == 1 and [r["round"] for r in ck.run_log["rounds"]] == [0, 1]
    run_inprocess(cfg.replace(resume=True))
    return ck


def heads(out) -> dict:
    return {role: load_file(str(out / "run" / role / "heads.safetensors")) for role in ("model", "teacher")}


def test_a_resumed_run_equals_an_uninterrupted_one(bench, tmp_path):
    """privacy none: no DP noise, and every other random choice is seeded (see docs/reliability.md)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_inprocess(config(bench, straight, privacy="none", mode="full"))
    interrupted_then_resumed(config(bench, resumed, privacy="none", mode="full"))
    a, b = heads(straight), heads(resumed)
    for role in a:
        assert a[role].keys() == b[role].keys()
        assert all(np.array_equal(a[role][k], b[role][k]) for k in a[role]), f"{role} differs after resume"
    ra = json.loads((straight / "run" / "metrics.json").read_text())["rounds"]
    rb = json.loads((resumed / "run" / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rb] == [0, 1, 2, 3], "each round once in the resumed run's record"
    assert [(r["R1"], r["mAP"], r["teacher_version"]) for r in ra] == [(r["R1"], r["mAP"], r["teacher_version"]) for r in rb]


def test_a_resumed_run_accounts_exactly_what_ran(bench, tmp_path):
    cfg = config(bench, tmp_path, privacy="record")
    ck = interrupted_then_resumed(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ledger = json.loads((tmp_path / "run" / "ledger.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3]
    for k in range(3):
        led = SiteLedger.load(tmp_path / "sites" / f"site-{k}" / "ledger-record.json")
        per_round = {r: [e.status for e in led.entries if e.round == r] for r in (1, 2, 3)}
        # round 1 finished before the checkpoint: never re-run. Round 2 really ran twice (the first attempt's
        # update was lost with the server): both runs are counted. Round 3 once.
        assert per_round == {1: ["trained"] * 2, 2: ["trained"] * 4, 3: ["trained"] * 2}, per_round
        assert ledger["final_epsilon"][f"site-{k}"] == pytest.approx(led.epsilon())
        run_entries = ledger["sites"][f"site-{k}"]  # what the sites reported to the server, across both processes
        assert [(e["round"], e["mechanism"]) for e in run_entries] == [(e.round, e.mechanism) for e in led.entries]
        progress = json.loads((tmp_path / "sites" / f"site-{k}" / "progress.json").read_text())
        assert progress["runs"] == {ck.run_key: 3}, "the resumed run kept its run key"


def test_resume_refuses_another_config_and_a_missing_checkpoint(bench, tmp_path):
    cfg = config(bench, tmp_path, privacy="none", mode="full", rounds=1)
    with pytest.raises(FileNotFoundError, match="no server checkpoint"):
        run_inprocess(cfg.replace(resume=True))
    run_inprocess(cfg)
    with pytest.raises(ConfigError, match="local-steps"):
        run_inprocess(cfg.replace(resume=True, local_steps=7))
    from simulations.runner import resume_config

    assert resume_config(tmp_path / "run").to_run_config() == cfg.replace(resume=True).to_run_config()
    with pytest.raises(ValueError, match="keeps its config"):
        resume_config(tmp_path / "run", rounds=5)
