"""`fedgckd audit` on hand-built run folders: verdicts, the two recomputations, consistency flags, the schema.

The run folders are written from real `SiteLedger`s (the same code the sites
run), so no federation has to run here; `test_audit_simulate.py` checks the
real thing end to end.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from html_rows import site_rows

from common.federation.config import FedConfig
from common.privacy.ledger import SiteLedger, Spend
from common.report import schema
from common.report.build import build_audit
from common.report.recompute import PRV_SLACK, Recomputer
from common.report.write import write_audit

DELTA = 1e-5
PROTO = Spend("dp-kmeans-prototypes", 10.0, 1.0, 2)
SMALL = [PROTO, Spend("dp-sgd", 3.0, 0.1, 3, 1.0)]  # a cheap round
BIG = [PROTO, Spend("dp-sgd", 1.2, 0.5, 3, 1.0)]  # an expensive one: two cost ~7.0, three ~8.5


def site_ledger(site: str, rounds: list, budget: float = 8.0, unit: str = "record", start: int = 1) -> SiteLedger:
    led = SiteLedger(site=site, unit=unit, delta=DELTA, budget=budget)
    for i, spends in enumerate(rounds, start):
        led.record(i, [] if spends == "refused" else spends, "refused" if spends == "refused" else "trained",
                   timestamp=1.8e9 + i)
    return led


def make_run(root: Path, ledgers: dict, n_sites: int, privacy: str = "record", events=(), server=None,
             prior_entries: dict | None = None, site_files: bool = True) -> Path:
    """A run folder like the server writes; `prior_entries[site]` entries of a ledger predate this run."""
    run, state = root / "run", root / "sites"
    run.mkdir(parents=True)
    prior_entries = prior_entries or {}
    unit = None if privacy == "none" else privacy
    header = {"mode": privacy, "delta": DELTA, "epsilon_budget": 8.0, "accountant": "rdp", "clip_norm": 1.0,
              **({"unit": unit} if unit else {})}
    entries = {s: [asdict(e) for e in led.entries[prior_entries.get(s, 0):]] for s, led in ledgers.items()}
    rounds = max([e["round"] for es in entries.values() for e in es], default=1)
    ledger = {"privacy": header, "sites": entries, "events": list(events),
              "server_site_level": {s: led.to_dict() for s, led in (server or {}).items()},
              "final_epsilon": {s: es[-1]["epsilon_so_far"] for s, es in entries.items() if es}}
    cfg = FedConfig(sites=n_sites, privacy=privacy, rounds=rounds, state_dir=str(state), out_dir=str(run),
                    mode="full" if privacy == "site" else "per-record")
    metrics = {"config": cfg.to_run_config(), "privacy": header, "backbone": {"name": "tiny", "fingerprint": "x"},
               "rounds": [{"round": r, "sampled": sorted(ledgers)} for r in range(rounds + 1)]}
    (run / "ledger.json").write_text(json.dumps(ledger))
    (run / "metrics.json").write_text(json.dumps(metrics))
    if site_files:
        for s, led in ledgers.items():
            led.save(state / s / f"ledger-{led.unit}.json")
    return run


def four_site_run(root: Path) -> Path:
    ledgers = {"site-0": site_ledger("site-0", [SMALL, SMALL]),  # within budget
               "site-1": site_ledger("site-1", [BIG, BIG]),  # ~7.0 of 8: one more round would not fit
               "site-2": site_ledger("site-2", ["refused", "refused"], budget=0.5)}
    events = [{"round": r, "site": "site-2", "kind": "refused", "reason": "budget exhausted: epsilon would reach 5.3 > 0.5"}
              for r in (1, 2)] + [{"round": 1, "site": "site-3", "kind": "error", "reason": "connection lost"}]
    return make_run(root, ledgers, 4, events=events)


def no_special_floats(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"audit.json contains {name}")
    return json.loads(text, parse_constant=refuse)


def test_verdicts_recomputations_and_schema(tmp_path):
    run = four_site_run(tmp_path)
    audit, json_path, html_path = write_audit(run)
    assert schema.check(audit) == [] and audit["schema"] == "fedgckd-audit/1"
    assert no_special_floats(json_path.read_text())["schema"] == schema.SCHEMA
    verdict = {s["site"]: s["verdict"] for s in audit["sites"]}
    assert verdict == {"site-0": "within-budget", "site-1": "exhausted", "site-2": "refused", "site-3": "no-record"}
    assert audit["checks"]["ok"] and audit["checks"]["flags"] == []
    by_site = {a["site"]: a for a in audit["accounts"]}
    led1 = SiteLedger.load(tmp_path / "sites" / "site-1" / "ledger-record.json")
    assert by_site["site-1"]["epsilon"] == pytest.approx(led1.epsilon(), rel=1e-12)
    for acc in audit["accounts"]:
        for r in acc["rounds"]:
            assert r["epsilon_prv"] is not None and r["prv_error"] is None
            assert r["epsilon_prv"] <= r["epsilon_rdp"] + PRV_SLACK
    site1 = next(s for s in audit["sites"] if s["site"] == "site-1")
    assert "record-level" in site1["reason"] and "delta = 1e-05" in site1["reason"] and "Opacus RDP" in site1["reason"]
    assert "connection lost" in next(s for s in audit["sites"] if s["site"] == "site-3")["reason"]
    assert audit["privacy"]["unit"] == "record" and "adding or removing one such record" in audit["privacy"]["statement"]
    assert {m["name"] for m in audit["privacy"]["mechanisms"]} == {"dp-sgd", "dp-kmeans-prototypes"}
    assert audit["code"]["report"]["package"] == "fedgckd" and audit["code"]["run"] is None
    assert audit["run"]["config"]["sites"] == 4 and audit["empirical"] is None
    rows = site_rows(html_path.read_text())
    assert rows == ["site-0", "site-1", "site-2", "site-3"]




def test_a_tampered_ledger_is_flagged_and_strict_mode_fails(tmp_path):
    run = four_site_run(tmp_path)
    ledger = json.loads((run / "ledger.json").read_text())
    ledger["sites"]["site-0"][-1]["epsilon_so_far"] *= 1 - 1e-4  # claims a little less than was spent
    (run / "ledger.json").write_text(json.dumps(ledger))
    audit = build_audit(run, max_prv=0)  # PRV is not what this test is about (and costs seconds per history)
    kinds = {(f["site"], f["kind"]) for f in audit["checks"]["flags"]}
    assert kinds == {("site-0", "ledger-inconsistent")} and not audit["checks"]["ok"]
    from fedgckd.cli import app

    res = CliRunner().invoke(app, ["audit", str(run), "--out", str(tmp_path / "report"), "--strict", "--max-prv", "0"])
    assert res.exit_code == 1 and "ledger-inconsistent" in res.output
    assert (tmp_path / "report" / "audit.json").exists() and (tmp_path / "report" / "audit.html").exists()
    ok = CliRunner().invoke(app, ["audit", str(run), "--out", str(tmp_path / "report"), "--max-prv", "0"])
    assert ok.exit_code == 0  # without --strict the report is written and the flag shown, not an error


def test_prior_spending_comes_from_the_sites_ledger_file(tmp_path):
    led = site_ledger("site-0", [SMALL, SMALL, SMALL])  # round 1 belongs to an earlier run
    run = make_run(tmp_path / "a", {"site-0": led}, 1, prior_entries={"site-0": 2})
    audit = build_audit(run, max_prv=0)
    acc = audit["accounts"][0]
    assert audit["checks"]["ok"] and "2 earlier entries" in acc["prior_source"]
    assert acc["epsilon"] == pytest.approx(led.epsilon(), rel=1e-12) and acc["epsilon_prior_rdp"] > 0
    # without the site's file the recomputation starts from zero and says the ledger does not add up
    run_b = make_run(tmp_path / "b", {"site-0": led}, 1, prior_entries={"site-0": 2}, site_files=False)
    flags = build_audit(run_b, max_prv=0)["checks"]["flags"]
    # ... and the second library agrees: the stored epsilons are above dp-accounting's RDP of the known history
    assert {f["kind"] for f in flags} == {"ledger-inconsistent", "above-rdp"} and "not found" in flags[0]["message"]


def test_spending_missing_from_the_run_record_is_composed_in(tmp_path):
    led = site_ledger("site-0", [SMALL, SMALL])
    led.record(2, SMALL, "trained", timestamp=1.8e9 + 3)  # round 2 ran again after a server restart
    run = make_run(tmp_path, {"site-0": led}, 1)
    ledger = json.loads((run / "ledger.json").read_text())
    del ledger["sites"]["site-0"][2:4]  # the server's record lost the first attempt's entries
    (run / "ledger.json").write_text(json.dumps(ledger))
    acc = build_audit(run, max_prv=0)["accounts"][0]
    assert acc["epsilon"] == pytest.approx(led.epsilon(), rel=1e-12) and "limit" in acc["prv_error"]
    assert any("not in ledger.json" in n for n in acc["notes"])


def test_prv_failure_is_reported_with_its_reason(tmp_path):
    led = site_ledger("site-0", [[Spend("dp-sgd", 0.3, 0.5, 1000, 1.0)]], budget=1e6)  # PRV cannot: a huge grid
    audit = build_audit(make_run(tmp_path, {"site-0": led}, 1))
    acc = audit["accounts"][0]
    assert acc["epsilon_rdp"] > 0 and acc["epsilon_prv"] is None and "points" in acc["prv_error"]
    assert audit["checks"]["ok"] and audit["sites"][0]["prv_error"] == acc["prv_error"]


def test_accountant_disagreement_beyond_the_slack_is_flagged(tmp_path, monkeypatch):
    run = make_run(tmp_path, {"site-0": site_ledger("site-0", [SMALL])}, 1)
    rdp = Recomputer.rdp
    monkeypatch.setattr(Recomputer, "prv", lambda self, h, d, allow_new=True: (rdp(self, h, d)[0] + 2 * PRV_SLACK, None))
    flags = build_audit(run)["checks"]["flags"]
    assert [f["kind"] for f in flags] == ["accountants-disagree"]


def test_over_budget_and_no_noise(tmp_path):
    led = SiteLedger(site="site-0", unit="record", delta=DELTA, budget=1.0)
    led.record(1, [Spend("dp-sgd", 0.0, 0.5, 3, 1.0)], "trained")  # noise 0: epsilon is infinite
    audit, json_path, _ = write_audit(make_run(tmp_path, {"site-0": led}, 1))
    site = audit["sites"][0]
    assert site["verdict"] == "over-budget" and site["epsilon"] is None and site["epsilon_infinite"]
    assert "noise multiplier of 0" in site["prv_error"]
    assert {f["kind"] for f in audit["checks"]["flags"]} == {"over-budget"}
    no_special_floats(json_path.read_text())


def test_site_level_run_has_both_ledgers(tmp_path):
    central = [Spend("site-update-gaussian", 0.95, 1.0, 1, 1.0)]
    ledgers = {s: site_ledger(s, [central, central], unit="site") for s in ("site-0", "site-1")}
    server = {s: site_ledger(s, [central, central], unit="site") for s in ("site-0", "site-1")}
    audit = build_audit(make_run(tmp_path, ledgers, 2, privacy="site", server=server), max_prv=0)
    assert sorted((a["site"], a["keeper"]) for a in audit["accounts"]) == [
        ("site-0", "server"), ("site-0", "site"), ("site-1", "server"), ("site-1", "site")]
    assert all(s["keeper"] == "site" and s["server_epsilon"] == pytest.approx(s["epsilon"]) for s in audit["sites"])
    assert audit["privacy"]["neighbouring"] == "add/remove one site's whole dataset" and audit["checks"]["ok"]


def test_no_privacy_run(tmp_path):
    audit = build_audit(make_run(tmp_path, {}, 2, privacy="none"))
    assert [s["verdict"] for s in audit["sites"]] == ["not-private", "not-private"]
    assert audit["privacy"]["unit"] is None and "claims no epsilon" in audit["privacy"]["statement"]


def test_not_a_run_folder(tmp_path):
    from fedgckd.cli import app

    res = CliRunner().invoke(app, ["audit", str(tmp_path)])
    assert res.exit_code == 2 and "ledger.json" in res.output


def test_a_prv_enforced_ledger_is_checked_against_prv(tmp_path):
    led = SiteLedger(site="site-0", unit="record", delta=DELTA, budget=8.0, accountant="prv")
    led.record(1, [Spend("dp-sgd", 3.0, 0.1, 3, 1.0)], "trained", timestamp=1.8e9)
    audit = build_audit(make_run(tmp_path, {"site-0": led}, 1))
    acc = audit["accounts"][0]
    assert audit["checks"]["ok"] and acc["accountant"] == "prv"
    assert acc["epsilon"] == acc["epsilon_prv"] == pytest.approx(led.epsilon(), rel=1e-9)
    assert "Opacus PRV" in audit["sites"][0]["reason"]
