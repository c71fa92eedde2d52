"""Update validation on the server and the outbound schema of a site."""

import numpy as np
import pytest

from common.federation.outbound import OutboundViolation, check_reply, ensure_allowed
from common.federation.validation import global_norm, max_delta_norm, scale_to_bound, validate_update

BASE = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def upd(**changes):
    out = {k: v.copy() for k, v in BASE.items()}
    out.update(changes)
    return out


def test_a_good_update_passes_with_its_norm():
    u = upd(b=np.full(3, 0.1, np.float32))
    v = validate_update(u, BASE, 1.0)
    assert v.ok and v.delta_norm == pytest.approx(np.sqrt(3) * 0.1, rel=1e-5)


@pytest.mark.parametrize("update,reason", [
    (upd(w=np.full((4, 3), np.nan, np.float32)), "NaN"),
    (upd(w=np.ones((3, 4), np.float32)), "shape"),
    ({"w": BASE["w"], "c": BASE["b"]}, "wrong keys"),
    ({"w": BASE["w"]}, "wrong keys"),
    (upd(b=np.full(3, 10.0, np.float32)), "exceeds the bound"),
    (upd(b=np.zeros(3, np.float64)), "dtype"),
])
def test_bad_updates_are_rejected_with_a_reason(update, reason):
    v = validate_update(update, BASE, 1.0)
    assert not v.ok and reason in v.reason


def test_bounds_per_privacy_mode():
    assert max_delta_norm("site", 0.5, 0.0, BASE) == pytest.approx(0.5, rel=1e-3)
    assert max_delta_norm("site", 0.5, 0.1, BASE) == 0.1
    assert max_delta_norm("record", 0.5, 0.0, BASE) == pytest.approx(2 * np.sqrt(12))
    assert max_delta_norm("none", 0.5, 3.0, BASE) == 3.0


def test_scale_to_bound_keeps_the_direction_and_passes_the_server_check():
    bound = max_delta_norm("record", 0.5, 0.0, BASE)  # 2 * sqrt(12) = 6.93
    big = upd(w=BASE["w"] + np.arange(12, dtype=np.float32).reshape(4, 3), b=np.full(3, -5.0, np.float32))
    assert not validate_update(big, BASE, bound).ok
    out = scale_to_bound(big, BASE, bound)
    delta_in = np.concatenate([(big[k] - BASE[k]).ravel() for k in BASE])
    delta_out = np.concatenate([(out[k] - BASE[k]).ravel() for k in BASE])
    # same direction, norm just inside the bound (hand-worked: |delta_in| = sqrt(506 + 75) = 24.1)
    assert np.linalg.norm(delta_in) == pytest.approx(np.sqrt(581), rel=1e-6)
    np.testing.assert_allclose(delta_out, delta_in * (bound / (1 + 1e-4) / np.sqrt(581)), rtol=1e-5, atol=1e-6)
    assert validate_update(out, BASE, bound).ok and all(out[k].dtype == np.float32 for k in BASE)
    small = upd(b=np.full(3, 0.1, np.float32))
    assert all(np.array_equal(scale_to_bound(small, BASE, bound)[k], small[k]) for k in BASE)
    assert global_norm({k: out[k] - BASE[k] for k in BASE}) <= bound


SHAPES = {"w": (4, 3), "b": (3,)}


def test_outbound_schema_allows_only_trainables_and_scalar_metrics():
    ok_metrics = {"site": 0, "status": 0, "num-examples": 1, "ledger.n": 1, "ledger.0.epsilon_so_far": 0.5}
    assert check_reply(SHAPES, ok_metrics, {"status": "trained", "reason": ""}, SHAPES, "record") == []
    assert check_reply(SHAPES, {"loss": 1.0}, None, SHAPES, "record")  # loss is not released under DP
    assert check_reply(SHAPES, {"loss": 1.0, "records": 9}, None, SHAPES, "none") == []
    assert check_reply({"w": (4, 3), "b": (3,), "emb": (9, 3)}, {}, None, SHAPES, "none")
    assert check_reply({"w": (4, 4), "b": (3,)}, {}, None, SHAPES, "none")
    assert check_reply(SHAPES, {"site": [1, 2, 3]}, None, SHAPES, "none")
    assert check_reply(SHAPES, {}, {"status": "trained", "caption": "a man in red"}, SHAPES, "none")
    with pytest.raises(OutboundViolation):
        ensure_allowed(None, {"site": 0, "embedding.0": 0.3}, None, None, "none", kind="query")
