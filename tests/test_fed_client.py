"""The ClientApp in-process (no Ray): what leaves a site, its ledger, refusals, config checks.

Every message a site sends in a query + train round is captured and checked
against the student's trainable set and a scalar-metrics rule, in each
privacy mode. Sites are called directly with Flower Messages and Contexts
(STACK.md section 5: TaskIdentity set first).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fed_support import shared_bench  # first: sets Flower's environment (telemetry off) before flwr is imported

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from client.app import app as client_app  # noqa: E402
from common.federation.config import FedConfig  # noqa: E402
from common.privacy.ledger import SiteLedger  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
_TASKS: dict = {}


@pytest.fixture(scope="module")
def bench():
    return shared_bench()


def server(bench, rc):
    """The server's side (teacher payload, student arrays) for a run config; cached per config."""
    from server.task import ServerTask

    key = tuple(sorted((k, str(v)) for k, v in rc.items() if k not in ("out-dir", "state-dir")))
    if key not in _TASKS:
        _TASKS[key] = ServerTask(FedConfig.from_run_config(rc).validate())
    return _TASKS[key]


def ctx(rc, pid=0, **node):
    return Context(run_id=1, node_id=pid + 1, node_config={"partition-id": pid, "num-partitions": 3, **node},
                   state=RecordDict(), run_config=rc)


def query(task, fingerprint=None):
    arrays, cfg = task.teacher_payload()
    cfg = dict(cfg, fingerprint=fingerprint or cfg["fingerprint"])
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "config": ConfigRecord(cfg)})
    return Message(content, message_type="query.teacher", dst_node_id=1)


def train(task, server_round=1, **extra):
    conf = {"server-round": server_round, "teacher-version": task.teacher_version, **extra}
    if task.cfg.privacy == "site":
        conf.setdefault("site-noise-multiplier", 1.0)
        conf.setdefault("site-sample-rate", 1.0)
        conf.setdefault("clipping_norm", task.cfg.clip_norm)
    arrays = ArrayRecord({k: Array(v) for k, v in task.student_arrays().items()})
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord(conf)}), message_type="train", dst_node_id=1)


def assert_nothing_else_leaves(reply, expected: dict, captions: list[str]):
    """Independent of the site's own schema: arrays = trainable set; metrics = scalars; a short status."""
    assert not reply.has_error(), reply.error
    c = reply.content
    if expected:
        assert list(c.array_records) == ["arrays"]
        got = {k: tuple(v.shape) for k, v in c["arrays"].items()}
        assert list(got) == list(expected) and got == expected
    else:
        assert not c.array_records
    strings = []
    for rec in c.metric_records.values():
        assert len(rec) < 40
        for k, v in rec.items():
            assert isinstance(v, (int, float)) and not isinstance(v, bool), f"metric {k}={v!r} is not a scalar"
    for name, rec in c.config_records.items():
        assert name == "status" and set(rec) <= {"status", "reason"}
        assert all(isinstance(v, str) and len(v) <= 300 for v in rec.values())
        strings += list(rec.values())
    assert not any(cap in s for s in strings for cap in captions if s)


@pytest.mark.parametrize("privacy,mode", [("record", "per-record"), ("site", "full"), ("none", "full")])
def test_only_trainable_arrays_and_scalar_metrics_leave_a_site(bench, tmp_path, privacy, mode):
    rc = bench.run_config(tmp_path, privacy=privacy, mode=mode)
    task = server(bench, rc)
    expected = {n: tuple(p.shape) for n, p in task.teacher.named_parameters() if n in task.names}
    assert 0 < len(expected) < len(dict(task.teacher.named_parameters()))
    from client import site_data
    from client.site_data import site_features
    from common.federation.site_budget import resolve_settings

    context = ctx(rc)
    sent = [client_app(query(task), context)]
    sent.append(client_app(train(task), context))
    site = site_features(resolve_settings(context.node_config, task.cfg), task.cfg, "tiny")
    assert site_data._FEATURES and site.n_images > 0 and (site.image_pids == -1).all()
    assert_nothing_else_leaves(sent[0], {}, site.captions)
    assert_nothing_else_leaves(sent[1], expected, site.captions)
    metrics = dict(sent[1].content["metrics"])
    assert metrics["status"] == 0
    assert ("loss" in metrics) == (privacy == "none") and ("ledger.epsilon" in metrics) == (privacy != "none")
    if privacy == "site":
        delta = np.sqrt(sum(((v.numpy() - task.student_arrays()[k]) ** 2).sum() for k, v in sent[1].content["arrays"].items()))
        assert delta <= task.cfg.clip_norm * (1 + 1e-4)


def test_a_record_level_site_scales_a_noisy_update_to_the_servers_bound(bench, tmp_path):
    from common.federation.validation import max_delta_norm, validate_update

    rc = bench.run_config(tmp_path, privacy="record", lr=50.0, **{"noise-multiplier": 5.0})
    task = server(bench, rc)
    context = ctx(rc)
    client_app(query(task), context)
    reply = client_app(train(task), context)
    assert not reply.has_error(), reply.error
    sent = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    base = task.student_arrays()
    bound = max_delta_norm("record", task.cfg.clip_norm, task.cfg.max_update_norm, base)
    norm = np.sqrt(sum(((sent[k].astype(np.float64) - base[k]) ** 2).sum() for k in base))
    # lr 50 with noise 5 moves the weights far past twice their norm; the site sends the same direction at the bound
    assert bound * 0.999 <= norm <= bound and validate_update(sent, base, bound).ok


def test_a_site_logs_how_loud_its_dp_noise_is_in_its_first_round_only(bench, tmp_path, caplog):
    rc = bench.run_config(tmp_path, privacy="record", rounds=3, **{"noise-multiplier": 4.0})
    task = server(bench, rc)
    context = ctx(rc)
    client_app(query(task), context)
    with caplog.at_level("INFO", logger="fedgckd.site"):
        client_app(train(task, 1), context)
        first = [r.getMessage() for r in caplog.records if "record-level DP-SGD" in r.getMessage()]
        client_app(train(task, 2), context)
        later = [r.getMessage() for r in caplog.records if "record-level DP-SGD" in r.getMessage()]
    d = sum(int(np.prod(v.shape)) for v in task.student_arrays().values())
    assert len(first) == 1 and len(later) == 1  # said once, in the site's first round
    assert f"noise multiplier 4 on {d} trained numbers" in first[0]
    batch = int(first[0].split("at about ")[1].split(" records")[0])
    ratio = float(first[0].split("gradient is ")[1].split(" times")[0])
    assert ratio == pytest.approx(4.0 * d ** 0.5 / batch, rel=1e-2)  # 3 significant digits in the message


def test_ledger_continues_after_a_restarted_site(bench, tmp_path):
    rc = bench.run_config(tmp_path, privacy="record", rounds=3)
    task = server(bench, rc)
    first = ctx(rc)
    client_app(query(task), first)
    r1 = client_app(train(task, 1), first)
    restarted = ctx(rc)  # a fresh Context: Flower state gone, the site's disk kept
    r2 = client_app(train(task, 2), restarted)
    e1, e2 = r1.content["metrics"]["ledger.epsilon"], r2.content["metrics"]["ledger.epsilon"]
    assert 0 < e1 < e2 <= 8.0
    led = SiteLedger.load(tmp_path / "sites" / "site-0" / "ledger-record.json")
    assert [e.round for e in led.entries] == [1, 1, 2, 2] and all(e.status == "trained" for e in led.entries)
    assert sum(n for _, q, n in led.history if q < 1) == 2 * task.cfg.local_steps
    assert led.epsilon() == pytest.approx(e2)


def test_exhausted_budget_refuses_whatever_the_server_asks(bench, tmp_path):
    rc = bench.run_config(tmp_path, privacy="record", epsilon=1.0, **{"noise-multiplier": 0.3})
    task = server(bench, rc)
    context = ctx(rc)
    client_app(query(task), context)
    reply = client_app(train(task, 1), context)
    assert reply.content["metrics"]["status"] == 1 and "budget" in reply.content["status"]["reason"]
    sent = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    assert all(np.array_equal(sent[k], v) for k, v in task.student_arrays().items()), "a refusal sends the arrays back unchanged"
    # the server (run config and message) asks for a far bigger budget: ignored, the site's ledger governs
    bigger = dict(rc, epsilon=1000.0)
    reply = client_app(train(task, 2, epsilon=1000.0, budget=1000.0), ctx(bigger))
    assert reply.content["metrics"]["status"] == 1 and reply.content["metrics"]["ledger.budget"] == 1.0
    # raising the budget through the node config is refused too (it is an act on the ledger file)
    reply = client_app(train(task, 3), ctx(bigger, epsilon=1000.0))
    assert reply.content["metrics"]["status"] == 1 and "exceeds the stored budget" in reply.content["status"]["reason"]
    led = SiteLedger.load(tmp_path / "sites" / "site-0" / "ledger-record.json")
    assert [e.status for e in led.entries] == ["refused", "refused"] and led.epsilon() == 0.0


def test_a_rolled_back_ledger_makes_the_site_refuse(bench, tmp_path):
    rc = bench.run_config(tmp_path, privacy="record", rounds=3)
    task = server(bench, rc)
    context = ctx(rc)
    client_app(query(task), context)
    assert client_app(train(task, 1), context).content["metrics"]["status"] == 0
    (tmp_path / "sites" / "site-0" / "ledger-record.json").unlink()
    reply = client_app(train(task, 2), context)
    assert reply.content["metrics"]["status"] == 1 and "rolled back" in reply.content["status"]["reason"]


def test_a_crashed_round_is_still_on_the_ledger(bench, tmp_path, monkeypatch):
    import client.task

    rc = bench.run_config(tmp_path, privacy="record", rounds=3)
    task = server(bench, rc)
    context = ctx(rc)
    client_app(query(task), context)

    def boom(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(client.task, "run_local_round", boom)
    with pytest.raises(Exception, match="power cut"):
        client_app(train(task, 1), context)
    led = SiteLedger.load(tmp_path / "sites" / "site-0" / "ledger-record.json")
    assert {e.status for e in led.entries} == {"crashed"} and led.epsilon() > 0


def test_site_refuses_record_level_dp_in_full_mode(bench, tmp_path):
    rc = bench.run_config(tmp_path, privacy="none", mode="full")
    task = server(bench, rc)
    unsafe = dict(rc, privacy="record", mode="full")
    with pytest.raises(Exception, match="per-record"):
        client_app(query(task), ctx(unsafe))
    with pytest.raises(Exception, match="per-record"):
        client_app(train(task), ctx(unsafe))


def test_site_refuses_other_trunks(bench, tmp_path):
    rc = bench.run_config(tmp_path, privacy="none", mode="full")
    task = server(bench, rc)
    with pytest.raises(Exception, match="hash to"):
        client_app(query(task, fingerprint="0" * 64), ctx(rc))


def test_a_process_partitions_the_target_once_and_every_site_gets_its_own_share(bench, tmp_path, monkeypatch):
    """In simulation one actor serves many sites every round: the split is computed once per process and setting,
    and each site's records are what the partition computed from scratch gives it."""
    from client import site_data
    from common.federation import site_data as shares
    from common.federation.site_budget import resolve_settings

    rc = bench.run_config(tmp_path, privacy="none", mode="full")
    cfg = FedConfig.from_run_config(rc).validate()
    monkeypatch.setattr(site_data, "_PARTITIONS", {})
    calls = []
    real = shares.partition_featureset
    monkeypatch.setattr(site_data, "partition_featureset", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = [site_data.site_features(resolve_settings(ctx(rc, pid).node_config, cfg), cfg, "tiny") for pid in (0, 1, 2, 0)]
    assert len(calls) == 1
    whole = site_data._target_train(resolve_settings(ctx(rc).node_config, cfg), cfg, "tiny")
    for pid, site in zip((0, 1, 2, 0), got):
        want = shares.site_share(whole, cfg, pid, 3)
        assert torch.equal(site.image_feats, want.image_feats) and (site.image_pids == -1).all()
    assert sum(s.n_images for s in got[:3]) == whole.n_images
