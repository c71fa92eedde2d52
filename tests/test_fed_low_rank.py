"""train-params=lowrank:R in the federation (record-level, grouped): the server sends public bases A with the plain
student, a site replies with its B's (+ biases) only, the server folds W + mean(B) A; checked against hand-worked
numbers, an independent torch merge, the subspace the update must lie in, and the bytes on the wire."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from fed_support import shared_bench  # first: sets Flower's environment (telemetry off) before flwr is imported

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.federation import adapters  # noqa: E402
from common.federation.config import ConfigError, FedConfig  # noqa: E402
from common.federation.validation import validate_update  # noqa: E402
from common.models.heads import DualHeads, HeadConfig  # noqa: E402
from common.models.low_rank import attach_low_rank, merge_low_rank, trained_numbers  # noqa: E402
from common.privacy.ledger import SiteLedger  # noqa: E402
from server.strategy import FedGCKD  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")]
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
RANK = 4


@pytest.mark.parametrize("spec", ["lowrank:0", "lowrank:x", "lowrank:", "lowrank4", "lowrank:2+bias", "lowrank:-1"])
def test_a_malformed_low_rank_spec_is_a_config_error_naming_the_key(spec):
    with pytest.raises(ConfigError, match="train-params"):
        FedConfig(privacy="record", mode="grouped", train_params=spec).validate()


def test_low_rank_runs_only_in_record_level_grouped_mode_and_below_the_anchor_count():
    assert FedConfig(privacy="record", mode="grouped", train_params="lowrank:8+biases").validate()
    for privacy, mode in (("none", "grouped"), ("site", "full"), ("record", "per-record")):
        with pytest.raises(ConfigError, match="train-params='lowrank:8'.*privacy=record and mode=grouped"):
            FedConfig(privacy=privacy, mode=mode, train_params="lowrank:8").validate()
    with pytest.raises(ConfigError, match="rank 64 exceeds anchors=32"):
        FedConfig(privacy="record", mode="grouped", train_params="lowrank:64", anchors=32).validate()


def _combine(broadcast, bases, replies):
    """`FedGCKD._combine` as the server runs it under record-level DP (equal weights)."""
    strategy = types.SimpleNamespace(cfg=FedConfig(privacy="record"), broadcast=broadcast, bases=bases,
                                     reference=dict(replies[0]))  # only its keys matter (FedGCKD.reference)
    return FedGCKD._combine(strategy, [(r, 1.0) for r in replies])


def test_the_servers_fold_is_w_plus_the_mean_b_times_a_by_hand():
    f = np.float32
    broadcast = {"image_head.net.0.weight": np.array([[1, 0, 0], [0, 1, 0]], f), "image_head.net.0.bias": np.array([.5, -.5], f),
                 "image_head.net.2.weight": np.array([[7.0, 8.0]], f)}
    bases = {"A.image_head.net.0": np.array([[1, 0, 0], [0, 0, 1]], f)}
    r1 = {"image_head.net.0.B.weight": np.array([[1, 2], [3, 4]], f), "image_head.net.0.base.bias": np.array([1, 1], f)}
    r2 = {"image_head.net.0.B.weight": np.array([[3, 0], [1, 0]], f), "image_head.net.0.base.bias": np.array([0, 2], f)}
    new = _combine(broadcast, bases, [r1, r2])
    # mean B = [[2, 1], [2, 2]]; mean(B) A = [[2, 0, 1], [2, 0, 2]]
    assert list(new) == list(broadcast)
    np.testing.assert_array_equal(new["image_head.net.0.weight"], [[3, 0, 1], [2, 1, 2]])
    np.testing.assert_array_equal(new["image_head.net.0.bias"], [0.5, 1.5])
    np.testing.assert_array_equal(new["image_head.net.2.weight"], [[7, 8]])  # no adapter reply: as broadcast


def test_the_fold_equals_merging_the_mean_adapters_into_real_heads():
    """A second computation: attach the mean B's to real heads with torch and merge (`merge_low_rank`)."""
    torch.manual_seed(0)
    heads = DualHeads(12, 20, HeadConfig(out_dim=6, hidden=10, input_norm=True, hidden_norm=True))
    bases = adapters.round_bases(heads, torch.randn(40, 20), torch.randn(40, 12), 3)
    plain = {k: v.detach().numpy().copy() for k, v in heads.named_parameters()}
    ref = adapters.reference(heads, plain, "lowrank:3+biases")
    replies = [{k: (v + np.random.default_rng(i).normal(size=v.shape)).astype(np.float32) for k, v in ref.items()}
               for i in range(3)]
    new = _combine(plain, bases, replies)
    twin = attach_low_rank(heads, {k[len(adapters.PREFIX):]: torch.from_numpy(v) for k, v in bases.items()})
    with torch.no_grad():
        params = dict(twin.named_parameters())
        for k in ref:
            params[k].copy_(torch.from_numpy(np.mean([r[k] for r in replies], axis=0)))
    merged = {k: v.detach().numpy() for k, v in merge_low_rank(twin).named_parameters()}
    assert list(merged) == list(new)
    for k in new:
        np.testing.assert_allclose(new[k], merged[k], atol=1e-5, err_msg=k)


def test_bases_a_site_cannot_use_are_refused():
    heads = DualHeads(12, 20, HeadConfig(out_dim=6, hidden=10))
    bases = adapters.round_bases(heads, torch.randn(40, 20), torch.randn(40, 12), 3)
    assert set(adapters.unpack_bases(bases, heads, 3)) == {k[2:] for k in bases}
    with pytest.raises(ValueError, match="shape"):
        adapters.unpack_bases(bases, heads, 2)
    with pytest.raises(ValueError, match="one A per Linear"):
        adapters.unpack_bases({k: v for k, v in list(bases.items())[1:]}, heads, 3)
    with pytest.raises(ValueError, match="not orthonormal"):
        adapters.unpack_bases({k: 2 * v for k, v in bases.items()}, heads, 3)
    ref = adapters.reference(heads, {k: v.detach().numpy() for k, v in heads.named_parameters()}, "lowrank:3")
    plain = {k: v.detach().numpy() for k, v in heads.named_parameters()}
    assert "wrong keys" in validate_update(plain, ref, 1e9).reason  # a plain-weight reply is not a low-rank reply


def wire(arrays) -> int:
    """Bytes of these arrays in a Flower message, as the server's run log counts them."""
    from flwr.app import Array

    return sum(len(Array(np.ascontiguousarray(a)).data) for a in arrays.values())


def _run(bench, tmp_path, spec, **kw):
    from simulations.inprocess import run_inprocess

    rc = bench.run_config(tmp_path, privacy="record", mode="grouped", **{"train-params": spec, "group-size": 3,
                          "rounds": 1, "local-steps": 2, "server-eval": False, "site-wait": 0.2, **kw})
    cfg = FedConfig.from_run_config(rc).validate()
    replies = []

    def hook(grid):
        app = grid.app

        def recording(message, context):
            reply = app(message=message, context=context)
            if message.metadata.message_type == "train" and not reply.has_error():
                replies.append({k: v.numpy() for k, v in reply.content["arrays"].items()})
            return reply
        grid.app = recording

    run_inprocess(cfg, grid_hook=hook)
    run = tmp_path / "run"
    return cfg, replies, json.loads((run / "metrics.json").read_text()), json.loads((run / "ledger.json").read_text())


@pytest.mark.parametrize("spec", [f"lowrank:{RANK}", f"lowrank:{RANK}+biases"])
def test_a_low_rank_federation_sends_back_only_the_bs_and_moves_each_linear_in_the_public_subspace(tmp_path, spec):
    from common.checkpoint import load_checkpoint
    from server.task import ServerTask

    bench = shared_bench()
    cfg, replies, metrics, ledger = _run(bench, tmp_path, spec)
    task = ServerTask(cfg)  # deterministic: the same anchor bank, the same starting student, hence the same A
    start = task.student_arrays()
    bases = task.round_bases(start)
    heads = load_checkpoint(cfg.teacher).heads
    linears = {n: m for n, m in heads.named_modules() if isinstance(m, torch.nn.Linear)}
    # what trained_numbers predicts, on heads carrying this round's adapters
    twin = load_checkpoint(cfg.teacher).heads
    adapters.attach(twin, {k[2:]: torch.from_numpy(v) for k, v in bases.items()}, spec)
    n_trained = trained_numbers(twin)
    b_numbers = RANK * sum(m.out_features for m in linears.values())  # by hand: R numbers per output of every Linear
    biases = sum(p.numel() for n, p in heads.named_parameters() if n.endswith(".bias"))
    assert n_trained == b_numbers + (biases if spec.endswith("+biases") else 0)

    assert len(replies) == cfg.sites
    for reply in replies:
        bs = [k for k in reply if k.endswith(".B.weight")]
        assert sorted(bs) == sorted(f"{p}.B.weight" for p in linears)
        assert all(reply[f"{p}.B.weight"].shape == (m.out_features, RANK) for p, m in linears.items())
        assert set(reply) - set(bs) == ({k for k in task.update if k.endswith("bias")} if spec.endswith("+biases") else set())
        assert sum(a.nbytes for a in reply.values()) == 4 * n_trained
    row = metrics["rounds"][1]
    assert sorted(row["trained"]) == [f"site-{k}" for k in range(cfg.sites)]
    # on the wire each array also carries its .npy header (about 128 bytes)
    assert set(row["bytes_from_site"].values()) == {wire(replies[0])}
    assert 4 * n_trained < wire(replies[0]) <= 4 * n_trained + 200 * len(replies[0])
    assert metrics["model_bytes"]["update_bytes"] == 4 * n_trained
    assert set(row["bytes_to_site"].values()) == {wire(start) + wire(bases)}
    for k in range(cfg.sites):
        led = SiteLedger.load(tmp_path / "sites" / f"site-{k}" / "ledger-record.json")
        grouped = [e for e in led.entries if e.mechanism == "dp-sgd-grouped"]
        assert len(grouped) == 1 and grouped[0].status == "trained" and 0 < led.epsilon() <= cfg.epsilon
        assert [e for e in ledger["sites"][f"site-{k}"] if e["mechanism"] == "dp-sgd-grouped"]

    # one round, FedAvg, equal weights: the change of every Linear is mean(B) A, rank <= R, rows in span(A)
    end = {k: v.detach().numpy() for k, v in load_checkpoint(str(tmp_path / "run" / "model")).heads.named_parameters()}
    for p in linears:
        delta = end[f"{p}.weight"].astype(np.float64) - start[f"{p}.weight"]
        a = bases[f"A.{p}"].astype(np.float64)
        mean_b = np.mean([r[f"{p}.B.weight"] for r in replies], axis=0)
        np.testing.assert_allclose(delta, mean_b @ a, atol=1e-5)
        assert np.abs(delta).max() > 0, "the round moved nothing"
        assert np.linalg.matrix_rank(delta, tol=1e-5) <= RANK
        assert np.abs(delta - delta @ a.T @ a).max() < 1e-5  # no component outside the public subspace
    others = [k for k in start if not k.endswith(".weight") or k[: -len(".weight")] not in linears]
    for k in others:  # LayerNorm scales always, and biases unless they train, stay as broadcast
        if spec.endswith("+biases") and k.endswith(".bias"):
            continue
        np.testing.assert_array_equal(end[k], start[k], err_msg=k)


def test_a_low_rank_reply_of_the_wrong_shape_or_size_is_rejected_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGCKD_FAULTS", json.dumps({"site-0": {"1": "wrong-shape"}, "site-1": {"1": "oversized"}}))
    _, _, metrics, ledger = _run(shared_bench(), tmp_path, f"lowrank:{RANK}")
    row = metrics["rounds"][1]
    assert row["trained"] == ["site-2"]
    assert "shape" in row["rejected"]["site-0"] and "exceeds the bound" in row["rejected"]["site-1"]
    assert [(e["site"], e["kind"]) for e in ledger["events"] if e["kind"] == "rejected"] == [("site-0", "rejected"),
                                                                                           ("site-1", "rejected")]
