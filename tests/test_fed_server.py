"""The server's strategy in-process: update checks, refusals, errors, aggregation weights, site-level DP."""

from __future__ import annotations

import numpy as np
import pytest

import fed_support  # noqa: F401  first: sets Flower's environment (telemetry off) before flwr is imported
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.federation.config import FedConfig  # noqa: E402
from common.privacy.ledger import SiteLedger, Spend  # noqa: E402
from server.run_log import RunLog  # noqa: E402
from server.strategy import FedGCKD, SiteLevelDP  # noqa: E402

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
BASE = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def reply(node: int, arrays=None, status=0, metrics=None, reason=""):
    req = Message(RecordDict(), message_type="train", dst_node_id=node)
    arrays = arrays if arrays is not None else BASE
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"site": node, "status": status, "num-examples": 1, **(metrics or {})}),
                          "status": ConfigRecord({"status": ["trained", "refused"][status], "reason": reason})})
    return Message(content, reply_to=req)


def error_reply(node: int):
    return Message(Error(code=1, reason="ClientApp raised: out of memory"), reply_to=Message(RecordDict(), message_type="train", dst_node_id=node))


def strategy(tmp_path, **cfg):
    c = FedConfig(sites=8, **cfg).validate()
    log = RunLog(tmp_path, {"privacy": {"mode": c.privacy}})
    s = FedGCKD(task=None, run_log=log, cfg=c, site_noise=1.0, site_rate=1.0)
    s.node_site = {n: f"site-{n}" for n in range(8)}
    s.broadcast = {k: v.copy() for k, v in BASE.items()}
    log.start_round(1)
    return s, log


def shifted(d: float, **replace):
    out = {"w": BASE["w"] + d, "b": BASE["b"] + d}
    out.update(replace)
    return out


def test_bad_updates_are_rejected_logged_and_the_round_goes_on(tmp_path):
    s, log = strategy(tmp_path, privacy="record")
    good = shifted(0.01)
    replies = [reply(0, good), reply(1, shifted(0.0, w=np.full((4, 3), np.nan, np.float32))),
               reply(2, shifted(0.0, w=np.ones((3, 4), np.float32))), reply(3, {"w": BASE["w"], "x": BASE["b"]}),
               reply(4, shifted(100.0)), reply(5, shifted(0.02), status=1, reason="budget exhausted"), error_reply(6)]
    arrays, metrics = s.aggregate_train(1, replies)
    assert dict(metrics) == {"accepted": 1, "refused": 1, "rejected": 4, "errors": 1}
    assert all(np.allclose(arrays[k].numpy(), good[k]) for k in BASE), "only the good update is aggregated"
    row = log.row
    assert set(row["rejected"]) == {"site-1", "site-2", "site-3", "site-4"}
    assert "NaN" in row["rejected"]["site-1"] and "shape" in row["rejected"]["site-2"]
    assert "wrong keys" in row["rejected"]["site-3"] and "exceeds" in row["rejected"]["site-4"]
    assert row["refused"] == {"site-5": "budget exhausted"} and "out of memory" in row["errors"]["site-6"]
    assert row["trained"] == ["site-0"]
    log.end_round({"R1": 1.0})
    kinds = {(e["site"], e["kind"]) for e in log.ledger()["events"]}
    assert ("site-4", "rejected") in kinds and ("site-5", "refused") in kinds and ("site-6", "error") in kinds
    assert (tmp_path / "ledger.json").exists() and (tmp_path / "metrics.json").exists()


def test_nothing_accepted_keeps_the_model(tmp_path):
    s, _ = strategy(tmp_path, privacy="record")
    arrays, metrics = s.aggregate_train(1, [reply(0, status=1, reason="no"), error_reply(1)])
    assert arrays is None and metrics["accepted"] == 0


def test_weights_per_privacy_mode(tmp_path):
    s, _ = strategy(tmp_path, privacy="none")
    a, _ = s.aggregate_train(1, [reply(0, shifted(0.1), metrics={"num-examples": 3}), reply(1, shifted(0.5), metrics={"num-examples": 1})])
    assert np.allclose(a["b"].numpy(), 0.2), "none: weighted by record counts"
    s, _ = strategy(tmp_path, privacy="record")
    a, _ = s.aggregate_train(1, [reply(0, shifted(0.1), metrics={"num-examples": 3}), reply(1, shifted(0.5))])
    assert np.allclose(a["b"].numpy(), 0.3), "record: equal weights"


def test_site_level_sum_has_a_fixed_denominator_and_errors_do_not_void_the_round(tmp_path):
    s, log = strategy(tmp_path, privacy="site", mode="full", clip_norm=1.0)
    wrapped = SiteLevelDP(s, noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=8)
    ok1, ok2 = shifted(0.01), shifted(0.02)
    arrays, _ = wrapped.aggregate_train(1, [reply(0, ok1), reply(1, ok2), reply(2, shifted(1.0)), error_reply(3)])
    assert arrays is not None, "one failed site must not skip the aggregation"
    assert np.allclose(arrays["b"].numpy(), (0.01 + 0.02) / 8, atol=1e-6)
    assert "exceeds" in log.row["rejected"]["site-2"], "an unclipped update breaks the sensitivity bound"
    led = log.site_level
    assert led["site-0"].epsilon() > 0 and led["site-2"].epsilon() == 0.0, "q=1: only sites that took part spend"


def test_site_ledger_metrics_reach_the_run_ledger(tmp_path):
    s, log = strategy(tmp_path, privacy="record")
    led = SiteLedger(site="site-0", unit="record", delta=1e-5, budget=8.0)
    led.record(1, [Spend("dp-kmeans-prototypes", 10.0, 1.0, 2), Spend("dp-sgd", 1.1, 0.5, 3, 1.0)], "trained")
    s.aggregate_train(1, [reply(0, shifted(0.01), metrics=led.to_metrics(1))])
    entries = log.site_entries["site-0"]
    assert [e["mechanism"] for e in entries] == ["dp-kmeans-prototypes", "dp-sgd"]
    assert log.row["epsilon"]["site-0"] == pytest.approx(led.epsilon())


class FakeTask:
    teacher_version = "v1"

    def teacher_payload(self):
        return {"teacher.x": np.zeros(2, np.float32)}, {"teacher-version": "v1"}


class FakeGrid:
    """Answers teacher queries: node 3 fails (e.g. other trunks), the others acknowledge."""

    def __init__(self, nodes):
        self.nodes, self.queries = nodes, []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for m in messages:
            self.queries.append((m.metadata.dst_node_id, m.metadata.message_type))
            if m.metadata.dst_node_id == 3:
                out.append(Message(Error(code=1, reason="trunks hash to 0000"), reply_to=m))
            else:
                out.append(Message(RecordDict({"metrics": MetricRecord({"site": m.metadata.dst_node_id, "teacher-received": 1})}), reply_to=m))
        return out


def test_configure_train_sends_the_teacher_once_and_drops_failing_sites(tmp_path):
    c = FedConfig(sites=4, privacy="site", mode="full").validate()
    log = RunLog(tmp_path, {})
    s = FedGCKD(task=FakeTask(), run_log=log, cfg=c, site_noise=1.2, site_rate=1.0)
    grid = FakeGrid([1, 2, 3, 4])
    arrays = ArrayRecord({k: Array(v) for k, v in BASE.items()})
    msgs = list(s.configure_train(1, arrays, ConfigRecord({}), grid))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [1, 2, 4]
    assert all(m.metadata.message_type == "train" for m in msgs)
    conf = msgs[0].content["config"]
    assert conf["teacher-version"] == "v1" and conf["site-noise-multiplier"] == 1.2 and conf["server-round"] == 1
    assert "trunks" in log.row["errors"]["node-3"] and set(log.row["teacher_bytes_to_site"]) == {"site-1", "site-2", "site-4"}
    grid.queries.clear()
    list(s.configure_train(2, arrays, ConfigRecord({}), grid))
    assert grid.queries == [(3, "query.teacher")], "a site that holds the version is not sent it again"


def test_poisson_sampling_of_sites(tmp_path):
    c = FedConfig(sites=4, sites_per_round=2, privacy="site", mode="full").validate()
    assert c.site_sampling == "poisson"
    s = FedGCKD(task=FakeTask(), run_log=RunLog(tmp_path, {}), cfg=c, site_noise=1.0, site_rate=0.5)
    grid = FakeGrid([1, 2, 4, 5])
    sizes = [len(list(s.configure_train(r, ArrayRecord({k: Array(v) for k, v in BASE.items()}), ConfigRecord({}), grid)))
             for r in range(1, 41)]
    assert len(set(sizes)) > 1 and 1.5 < np.mean(sizes) < 2.5, "each site independently with q = 2/4"
