"""Assemble ``audit.json`` (schema ``fedgckd-audit/1``, documented in ``schema.py``) from a run folder."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

from common.atomic import read_json
from common.privacy.accounting import PRV_EPS_ERROR, merge_history
from common.privacy.ledger import NEIGHBOURING
from common.report.one_run import best_bound
from common.report.provenance import code_version, run_provenance
from common.report.recompute import LEDGER_REL_TOL, MAX_PRV, PRV_SLACK, Recomputer, recompute_account
from common.report.second_opinion import second_opinion
from common.report.run_reader import Account, RunRecord, read_run
from common.report.schema import SCHEMA
from common.report.wording import ASSUMPTIONS, MECHANISM_TEXT, UNIT_STATEMENT, verdict_reason

EMPIRICAL_FILE = "empirical_audit.json"


def _num(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _privacy(run: RunRecord) -> dict:
    p = run.privacy
    mode = p.get("mode") or run.config.get("privacy") or "none"
    unit = p.get("unit") or (mode if mode in NEIGHBOURING else None)
    mechanisms = sorted({e.mechanism for a in run.accounts for e in a.entries} - {"none"})
    return {"mode": mode, "unit": unit, "neighbouring": NEIGHBOURING.get(unit), "statement": UNIT_STATEMENT[unit or "none"],
            "delta": p.get("delta") if unit else None, "budget": p.get("epsilon_budget") if unit else None,
            "accountant": p.get("accountant", "rdp"), "second_accountant": "prv",
            "bracket": "dp-accounting: PLD <= claimed <= RDP, every ledger row",
            "assumptions": list(ASSUMPTIONS[unit or "none"]),
            "mechanisms": [{"name": m, "description": MECHANISM_TEXT.get(m, m)} for m in mechanisms],
            "header": p}


def _next_round(acc: Account, history: list, rc: Recomputer) -> float | None:
    """Epsilon if the last round that spent anything ran once more (by the keeper's accountant)."""
    spending = [e for e in acc.entries if e.steps > 0 and e.sample_rate > 0]
    if not spending:
        return None
    last = [e.spend().entry() for e in spending if e.round == spending[-1].round]
    h = merge_history(history, last)
    if acc.accountant == "rdp":
        return rc.rdp(h, acc.delta)[0]
    eps, _ = rc.prv(h, acc.delta, allow_new=False)
    return eps


def _account_summary(acc: Account, detail: dict, rc: Recomputer) -> dict:
    """One ledger's final state. Its epsilon is the whole history (earlier runs, this run, later runs over the
    same state folder), the site's own ledger total; ``epsilon_prior_rdp`` / ``epsilon_this_run_rdp`` split it."""
    rounds = detail["rounds"]
    total = [tuple(e) for e in detail["history"]]
    eps_rdp, _ = rc.rdp(total, acc.delta)
    eps_prv, prv_error = rc.prv(total, acc.delta, allow_new=bool(rounds))
    if acc.accountant == "rdp":
        eps, infinite = (None if math.isinf(eps_rdp) else eps_rdp), math.isinf(eps_rdp)
    else:
        eps, infinite = eps_prv, False
    nxt = _next_round(acc, total, rc)
    return {"site": acc.site, "keeper": acc.keeper, "unit": acc.unit, "neighbouring": acc.neighbouring,
            "delta": acc.delta, "budget": acc.budget, "accountant": acc.accountant, "run_key": acc.run_key,
            "epsilon": eps, "epsilon_infinite": infinite,
            "epsilon_rdp": _num(eps_rdp), "epsilon_prv": _num(eps_prv) if eps_prv is not None else None,
            "prv_error": prv_error if rounds else None,
            "epsilon_ledger": rounds[-1]["spends"][-1]["epsilon_ledger"] if rounds else None,
            "epsilon_prior_rdp": _num(rc.rdp(acc.prior_history, acc.delta)[0]), "prior_runs": acc.prior_runs,
            "epsilon_this_run_rdp": _num(rc.rdp([tuple(e) for e in detail["history_this_run"]], acc.delta)[0]),
            "epsilon_later_rdp": _num(rc.rdp(acc.later_history, acc.delta)[0]) if acc.later_history else None,
            **second_opinion(acc, total, rc),
            "next_round_epsilon": _num(nxt), "next_round_exceeds_budget": nxt is not None and nxt > acc.budget,
            "prior_source": acc.prior_source,
            "prior_history": [list(e) for e in acc.prior_history], "history": detail["history"],
            "later_history": [list(e) for e in acc.later_history],
            "notes": acc.notes, "rounds": rounds}


def _verdict(site: str, accounts: list[dict], run: RunRecord, privacy: dict) -> dict:
    events = [e for e in run.ledger.get("events", []) if e.get("site") == site]
    mine = [a for a in accounts if a["site"] == site]
    acc = next((a for a in mine if a["keeper"] == "site"), mine[0] if mine else None)
    server = next((a for a in mine if a["keeper"] == "server"), None)
    refused = sorted({e["round"] for e in events if e["kind"] == "refused"} |
                     {r["round"] for a in mine if a["keeper"] == "site" for r in a["rounds"]
                      if any(s["status"] == "refused" for s in _this_run(a, r))})
    errors = [f"round {e['round']}: {e['reason']}" for e in events if e["kind"] == "error"]
    base = {"site": site, "keeper": acc["keeper"] if acc else None,
            "server_epsilon": server["epsilon"] if server else None,
            "rounds_trained": sorted({r["round"] for r in (acc or {}).get("rounds", [])
                                      if any(s["status"] == "trained" for s in _this_run(acc, r))}),
            "rounds_refused": refused, "events": events}
    if acc is None:
        kind = "not-private" if privacy["unit"] is None else "no-record"
        return {**base, "verdict": kind, "reason": verdict_reason(kind, eps=None, budget=0, unit="record", delta=0,
                                                                  accountant="rdp", errors=errors),
                "unit": privacy["unit"], "delta": privacy["delta"], "budget": privacy["budget"], "epsilon": None,
                "accountant": privacy["accountant"]}
    eps = math.inf if acc["epsilon_infinite"] else (acc["epsilon"] if acc["epsilon"] is not None else math.inf)
    if eps > acc["budget"]:
        kind = "over-budget"
    elif refused:
        kind = "refused"
    elif acc["next_round_exceeds_budget"]:
        kind = "exhausted"
    else:
        kind = "within-budget"
    reasons = [e["reason"] for e in events if e["kind"] == "refused"]
    text = verdict_reason(kind, eps=eps, budget=acc["budget"], unit=acc["unit"], delta=acc["delta"],
                          accountant=acc["accountant"], next_eps=acc["next_round_epsilon"], refused_rounds=refused,
                          reasons=reasons, errors=errors, prior_eps=acc["epsilon_prior_rdp"],
                          prior_runs=acc["prior_runs"], this_run_eps=acc["epsilon_this_run_rdp"])
    return {**base, "verdict": kind, "reason": text, "unit": acc["unit"], "delta": acc["delta"],
            "budget": acc["budget"], "epsilon": acc["epsilon"], "epsilon_infinite": acc["epsilon_infinite"],
            "epsilon_prv": acc["epsilon_prv"], "prv_error": acc["prv_error"], "accountant": acc["accountant"],
            "epsilon_prior": acc["epsilon_prior_rdp"], "prior_runs": acc["prior_runs"],
            "epsilon_this_run": acc["epsilon_this_run_rdp"], "epsilon_pld": acc["epsilon_pld"],
            "person_level": acc["person_level"]}


def _this_run(acc: dict, r: dict) -> list[dict]:
    """The spends of round ``r`` that this run made (a round's row may hold another run's, see run_reader)."""
    return [s for s in r["spends"] if not acc["run_key"] or s.get("run_key", "") == acc["run_key"]]


def _empirical(run: RunRecord, empirical: dict | None, accounts: list[dict], rc: Recomputer, flags: list) -> dict | None:
    """The empirical audit (given, or RUN_DIR/empirical_audit.json), with its two numbers recomputed from raw data."""
    if empirical is None:
        path = run.run_dir / EMPIRICAL_FILE
        if not path.exists():
            return None
        empirical = read_json(path)
    out = dict(empirical)
    accounted = rc.rdp([tuple(e) for e in out["history"]], out["delta"])[0]
    lower, _ = best_bound(out["scores"], out["coins"], out["delta"], [g["k_plus"] for g in out["guesses"]],
                          out.get("beta", 1 - out["confidence"]))
    stored_acc = math.inf if out.get("accounted_infinite") else out["accounted_epsilon"]
    if not (math.isclose(lower, out["epsilon_lower_bound"], rel_tol=1e-9, abs_tol=1e-9) and
            (stored_acc == accounted or math.isclose(stored_acc, accounted, rel_tol=LEDGER_REL_TOL))):
        flags.append({"site": None, "keeper": None, "round": None, "kind": "empirical-inconsistent", "severity": "error",
                      "message": f"the empirical audit file says lower bound {out['epsilon_lower_bound']} and accounted "
                      f"{stored_acc}; recomputed from its scores, coins and history: {lower} and {accounted}"})
    out.update(epsilon_lower_bound=lower, accounted_epsilon=_num(accounted), accounted_infinite=math.isinf(accounted),
               within_accounting=lower <= accounted)
    if not out["within_accounting"]:
        flags.append({"site": None, "keeper": None, "round": None, "kind": "empirical-exceeds-accounted",
                      "severity": "error", "message": f"the empirical lower bound {lower:.4g} exceeds the accounted "
                      f"epsilon {accounted:.4g} (record-level, delta {out['delta']:g}, Opacus RDP) of the audited training"})
    record = [a["epsilon"] for a in accounts if a["unit"] == "record" and a["keeper"] == "site" and a["epsilon"] is not None]
    out["run_record_epsilon_max"] = max(record) if record else None
    return out


def build_audit(run_dir: str | Path, empirical: dict | None = None, max_prv: int = MAX_PRV,
                progress: Callable[[int, int, dict | None], None] | None = None) -> dict:
    """The audit of RUN_DIR as a JSON-ready dict (see ``schema.py`` for every field); ``progress(done, total,
    None)`` after each ledger account is recomputed (the slow part: PRV takes 1-3 s per history)."""
    run = read_run(run_dir)
    rc = Recomputer(max_prv)
    flags: list = []
    accounts = []
    for i, a in enumerate(run.accounts):
        if progress:
            progress(i, len(run.accounts), None)
        accounts.append(_account_summary(a, recompute_account(a, rc, flags), rc))
    if progress:
        progress(len(run.accounts), len(run.accounts), None)
    privacy = _privacy(run)
    sites = [_verdict(s, accounts, run, privacy) for s in run.sites]
    metrics = run.metrics or {}
    produced = run_provenance(run.run_dir)
    flag_dicts = [vars(f) for f in flags]
    emp = _empirical(run, empirical, accounts, rc, flag_dicts)
    return {
        "schema": SCHEMA,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": str(Path(run_dir).resolve()),
        "code": {"run": produced, "run_note": None if produced else
                 "the run did not record its code version (no provenance.json); see 'report' for the auditing code",
                 "report": code_version()},
        "run": {"config": metrics.get("config", {}), "backbone": metrics.get("backbone"),
                "source": metrics.get("source"), "rounds_completed": max([r["round"] for r in metrics.get("rounds", [])],
                                                                          default=None),
                "wall_s": metrics.get("wall_s"), "events": run.ledger.get("events", [])},
        "privacy": privacy,
        "sites": sites,
        "accounts": accounts,
        "checks": {"ledger_rel_tol": LEDGER_REL_TOL, "prv_slack": PRV_SLACK, "prv_eps_error": PRV_EPS_ERROR,
                   "max_prv_evaluations": max_prv, "flags": flag_dicts,
                   "ok": not any(f["severity"] == "error" for f in flag_dicts)},
        "empirical": emp,
    }
