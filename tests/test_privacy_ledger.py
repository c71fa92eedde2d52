"""The per-site ledger: persistence, continuation, refusal, fail-closed budget checks, metrics."""

import json
import math

import pytest

from common.privacy import ledger as ledger_mod
from common.privacy.accounting import compute_epsilon, epsilon
from common.privacy.ledger import LedgerError, SiteLedger, Spend

DELTA = 1e-5
SGD = Spend("dp-sgd", noise_multiplier=1.2, sample_rate=0.02, steps=50, clip_norm=1.0)
PROTO = Spend("dp-kmeans-prototypes", noise_multiplier=6.0, sample_rate=1.0, steps=3)


def _ledger(**kw):
    args = dict(site="site-3", unit="record", delta=DELTA, budget=8.0)
    args.update(kw)
    return SiteLedger(**args)


def test_record_computes_epsilon_from_whole_history():
    led = _ledger()
    led.record(1, [PROTO, SGD], "trained", timestamp=100.0)
    led.record(2, [PROTO, SGD], "trained", timestamp=200.0)
    assert led.history == [(6.0, 1.0, 3), (1.2, 0.02, 50), (6.0, 1.0, 3), (1.2, 0.02, 50)]
    prefix = []
    for e in led.entries:
        prefix.append(e.spend().entry())
        assert e.epsilon_so_far == pytest.approx(epsilon(prefix, DELTA), rel=1e-12)
        assert e.neighbouring == "add/remove one image-caption record at this site"
    assert led.epsilon() == led.entries[-1].epsilon_so_far


def test_save_load_round_trip_and_no_tmp_left(tmp_path):
    led = _ledger()
    led.record(1, [PROTO, SGD], "trained", timestamp=1.0)
    led.record(2, [], "refused", timestamp=2.0)
    path = tmp_path / "ledgers" / "site-3.json"
    led.save(path)
    led.save(path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["site-3.json"]
    back = SiteLedger.load(path)
    assert back == led and back.to_dict() == json.loads(path.read_text())


def test_failed_save_keeps_old_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "site.json"
    led = _ledger()
    led.record(1, [SGD], "trained", timestamp=1.0)
    led.save(path)
    before = path.read_text()
    led.record(2, [SGD], "trained", timestamp=2.0)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ledger_mod.json, "dump", boom)
    with pytest.raises(OSError):
        led.save(path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["site.json"]


def test_load_or_create_continues_and_never_resets(tmp_path):
    path = tmp_path / "site.json"
    first = SiteLedger.load_or_create(path, "site-3", "record", DELTA, 8.0)
    assert first.history == [] and not path.exists()
    first.record(1, [SGD], "trained")
    first.save(path)
    eps1 = first.epsilon()
    again = SiteLedger.load_or_create(path, "site-3", "record", DELTA, 8.0)
    again.record(2, [SGD], "trained")
    assert again.history == [(1.2, 0.02, 100)] and again.epsilon() > eps1
    assert [e.round for e in again.entries] == [1, 2]


@pytest.mark.parametrize("change,match", [
    ({"unit": "site"}, "unit"), ({"delta": 1e-6}, "delta"), ({"site": "site-4"}, "site"),
    ({"accountant": "prv"}, "accountant"), ({"budget": 9.0}, "exceeds the stored budget"),
])
def test_load_or_create_refuses_mismatch(tmp_path, change, match):
    path = tmp_path / "site.json"
    _ledger().save(path)
    args = dict(site="site-3", unit="record", delta=DELTA, budget=8.0)
    args.update(change)
    with pytest.raises(LedgerError, match=match):
        SiteLedger.load_or_create(path, **args)
    assert SiteLedger.load_or_create(path, "site-3", "record", DELTA, 5.0).budget == 5.0  # lowering is fine


def test_corrupt_or_tampered_ledger_is_refused(tmp_path):
    path = tmp_path / "site.json"
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="not valid JSON"):
        SiteLedger.load_or_create(path, "site-3", "record", DELTA, 8.0)
    led = _ledger()
    led.record(1, [SGD], "trained")
    d = led.to_dict()
    d["history"] = []  # someone "resets" the accountant but the audit trail remains
    with pytest.raises(LedgerError, match="does not match"):
        SiteLedger.from_dict(d)
    del d["entries"]
    with pytest.raises(LedgerError, match="malformed"):
        SiteLedger.from_dict(d)


def test_would_exceed_fails_closed():
    one_round = epsilon([PROTO.entry(), SGD.entry()], DELTA)
    two_rounds = epsilon([PROTO.entry(), SGD.entry()] * 2, DELTA)
    led = _ledger(budget=(one_round + two_rounds) / 2)
    refuse, projected = led.would_exceed([PROTO, SGD])
    assert not refuse and projected == pytest.approx(one_round, rel=1e-12)
    led.record(1, [PROTO, SGD], "trained")
    refuse, projected = led.would_exceed([PROTO, SGD])
    assert refuse and projected == pytest.approx(two_rounds, rel=1e-12)
    led.record(2, [], "refused")
    assert led.history == [PROTO.entry(), SGD.entry()] and led.entries[-1].mechanism == "none"
    # no noise: infinite epsilon, refused
    assert _ledger().would_exceed([Spend("dp-sgd", 0.0, 0.02, 1, 1.0)]) == (True, math.inf)
    # the accountant cannot compute it (PRV grid too large): refused, not waved through
    huge = Spend("dp-sgd", 0.3, 0.5, 1000, 1.0)
    prv = _ledger(accountant="prv", budget=1e9)
    assert prv.would_exceed([huge]) == (True, math.inf)
    # if it ran anyway, it is recorded, with an unbounded epsilon rather than an error or a gap
    assert prv.record(1, [huge], "trained")[0].epsilon_so_far == math.inf and prv.history == [huge.entry()]


def test_mechanism_must_match_unit():
    with pytest.raises(LedgerError, match="not a site-level"):
        _ledger(unit="site").record(1, [SGD], "trained")
    with pytest.raises(LedgerError, match="not a record-level"):
        _ledger().would_exceed([Spend("site-update-gaussian", 1.0, 0.1, 1, 1.0)])
    with pytest.raises(LedgerError, match="status"):
        _ledger().record(1, [SGD], "maybe")


def test_metrics_round_trip_scalars_only():
    led = _ledger()
    led.record(1, [PROTO, SGD], "trained", timestamp=10.0)
    led.record(2, [PROTO, SGD], "crashed", timestamp=20.5)
    metrics = led.to_metrics()
    assert all(type(v) in (int, float) for v in metrics.values())
    assert SiteLedger.from_metrics(metrics, site="site-3") == [e for e in led.entries if e.round == 2]
    assert SiteLedger.from_metrics(led.to_metrics(round=1), site="site-3") == led.entries[:2]
    assert metrics["ledger.epsilon"] == led.epsilon()
    # the real Flower container accepts it (the ledger itself never imports Flower)
    flwr_app = pytest.importorskip("flwr.app")
    assert dict(flwr_app.MetricRecord(metrics)) == metrics
    del metrics["ledger.1.steps"]
    with pytest.raises(LedgerError, match="missing"):
        SiteLedger.from_metrics(metrics, site="site-3")


def test_epsilon_matches_accountant_result():
    led = _ledger()
    led.record(1, [SGD], "trained")
    assert led.epsilon() == compute_epsilon([SGD.entry()], DELTA).epsilon
