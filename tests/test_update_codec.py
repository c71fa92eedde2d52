"""update-codec=int8 (`common.federation.update_codec`): hand-worked rounding, unbiasedness, refusals, and a
federation whose replies are int8 while the server folds exactly the decoded mean."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fed_support import shared_bench

from common.federation import update_codec
from common.federation.config import ConfigError, FedConfig


class Fixed:
    """Stands in for a numpy Generator: every uniform draw is ``u``."""

    def __init__(self, u: float):
        self.u = u

    def random(self, shape):
        return np.full(shape, self.u)


def test_hand_worked_rows_scales_and_rounding():
    ref = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    new = {"w": np.array([[1.27, -0.503, 0.2049], [0.0, 0.0, 0.0]], np.float32),
           "b": np.array([0.0, -0.5, 0.3], np.float32)}
    # row 0: largest change 1.27, scale 0.01: grid values 127, -50.3, 20.49; row 1 unchanged: scale 0, all zeros;
    # the bias: scale 0.5 / 127, grid values 0, -127, 76.2
    got = update_codec.encode(new, ref, "int8", Fixed(0.5))  # u = 0.5: floor(x + 0.5), to the nearest
    assert list(got) == ["w", "w#scale", "b", "b#scale"]
    assert got["w"].dtype == np.int8 and got["w#scale"].dtype == np.float32
    np.testing.assert_allclose(got["w#scale"], [0.01, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(got["w"], [[127, -50, 20], [0, 0, 0]])
    np.testing.assert_allclose(got["b#scale"], [0.5 / 127], rtol=1e-6)
    np.testing.assert_array_equal(got["b"], [0, -127, 76])
    np.testing.assert_array_equal(update_codec.encode(new, ref, "int8", Fixed(0.0))["w"][0], [127, -51, 20])  # floor
    np.testing.assert_array_equal(update_codec.encode(new, ref, "int8", Fixed(0.9))["w"][0], [127, -50, 21])
    back = update_codec.decode(got, ref, "int8")
    np.testing.assert_allclose(back["w"], [[1.27, -0.50, 0.20], [0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(back["b"], [0.0, -0.5, 76 * 0.5 / 127], atol=1e-7)
    assert update_codec.reply_shapes({"w": (2, 3), "b": (3,)}, "int8") == {"w": (2, 3), "w#scale": (2,),
                                                                           "b": (3,), "b#scale": (1,)}
    assert update_codec.reply_bytes({"w": (2, 3), "b": (3,)}, "int8") == 6 + 8 + 3 + 4
    assert update_codec.reply_bytes({"w": (2, 3), "b": (3,)}, "float32") == 36


def test_decoding_is_unbiased_and_within_one_grid_step():
    rng = np.random.default_rng(0)
    ref = {"w": rng.normal(size=(8, 50)).astype(np.float32)}
    new = {"w": (ref["w"] + rng.normal(scale=0.01, size=(8, 50))).astype(np.float32)}
    delta = new["w"].astype(np.float64) - ref["w"]
    step = np.abs(delta).max(axis=1, keepdims=True) / 127
    draws = np.stack([update_codec.decode(update_codec.encode(new, ref, "int8", np.random.default_rng(s)), ref,
                                          "int8")["w"].astype(np.float64) - ref["w"] for s in range(400)])
    assert np.all(np.abs(draws - delta) <= step * (1 + 1e-4) + 1e-7)
    # the mean of 400 draws: each draw's error is within one step with variance <= step^2 / 4
    err = draws.mean(0) - delta
    assert np.all(np.abs(err) <= 4 * step / 2 / np.sqrt(400) + 1e-7), "stochastic rounding must be unbiased"
    assert np.abs(draws[0] - delta).max() > 0, "a single draw does round"
    same = update_codec.encode(new, ref, "float32", np.random.default_rng(0))
    assert same["w"].dtype == np.float32 and np.array_equal(same["w"], new["w"])


@pytest.mark.parametrize("break_it,reason", [
    (lambda r: r.pop("w#scale"), "must hold"),
    (lambda r: r.__setitem__("w", r["w"].astype(np.float32)), "expected int8"),
    (lambda r: r.__setitem__("w#scale", np.array([1.0, -1.0], np.float32)), "non-negative"),
    (lambda r: r.__setitem__("w#scale", np.array([1.0, np.nan], np.float32)), "finite"),
    (lambda r: r.__setitem__("w#scale", np.ones(3, np.float32)), "of shape (2,)"),
])
def test_a_malformed_int8_reply_is_refused_with_its_reason(break_it, reason):
    ref = {"w": np.zeros((2, 3), np.float32)}
    reply = update_codec.encode({"w": np.ones((2, 3), np.float32)}, ref, "int8", np.random.default_rng(0))
    break_it(reply)
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        update_codec.decode(reply, ref, "int8")


def test_the_codec_is_a_checked_config_key():
    assert FedConfig(privacy="record", mode="grouped", update_codec="int8").validate()
    with pytest.raises(ConfigError, match="update-codec"):
        FedConfig(update_codec="int4").validate()
    with pytest.raises(ConfigError, match="privacy=site"):
        FedConfig(privacy="site", mode="full", update_codec="int8").validate()


def test_an_int8_federation_sends_a_quarter_and_folds_the_decoded_mean(tmp_path):
    from common.checkpoint import load_checkpoint
    from server.task import ServerTask
    from simulations.inprocess import run_inprocess

    bench = shared_bench()
    rc = bench.run_config(tmp_path, privacy="none", mode="full", **{"train-params": "all", "rounds": 1,
                          "local-steps": 2, "server-eval": False, "site-wait": 0.2, "update-codec": "int8"})
    cfg = FedConfig.from_run_config(rc).validate()
    replies = []

    def hook(grid):
        app = grid.app

        def recording(message, context):
            reply = app(message=message, context=context)
            if message.metadata.message_type == "train" and not reply.has_error():
                replies.append(({k: v.numpy() for k, v in reply.content["arrays"].items()},
                                float(reply.content["metrics"]["num-examples"])))
            return reply
        grid.app = recording

    run_inprocess(cfg, grid_hook=hook)
    task = ServerTask(cfg)
    start = task.student_arrays()
    shapes = {k: v.shape for k, v in start.items()}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model_bytes"]["update_bytes"] == update_codec.reply_bytes(shapes, "int8")
    assert metrics["model_bytes"]["update_bytes"] < 0.26 * 4 * sum(int(np.prod(s)) for s in shapes.values())
    assert len(replies) == cfg.sites
    for reply, _ in replies:
        assert all(reply[k].dtype == np.int8 for k in start) and sum(a.nbytes for a in reply.values()) == \
            metrics["model_bytes"]["update_bytes"]
    # a second computation of the server's FedAvg: the record-count-weighted mean of the decoded replies
    total = sum(w for _, w in replies)
    mean = {k: sum(w * update_codec.decode(r, start, "int8")[k].astype(np.float64) for r, w in replies) / total
            for k in start}
    end = {k: v.detach().numpy() for k, v in load_checkpoint(str(tmp_path / "run" / "model")).heads.named_parameters()}
    for k in start:
        np.testing.assert_allclose(end[k], mean[k], atol=1e-6, err_msg=k)
    assert max(np.abs(end[k] - start[k]).max() for k in start) > 0, "the round moved nothing"
