"""The audit's bracket from a second library (dp-accounting): PLD <= claimed <= RDP on every ledger row.

Ground truths: the analytic Gaussian mechanism (Balle and Wang 2018) for a
release without sampling, whose exact epsilon the PLD must match from above,
and the RDP of the Gaussian mechanism, alpha / (2 sigma^2) per release, with
the RDP-to-(epsilon, delta) conversion written out here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize
from scipy.stats import norm

from test_audit_report import BIG, DELTA, SMALL, make_run, site_ledger

from common.privacy.accounting import ALPHAS, compute_epsilon
from common.privacy.second_library import PldBracket, check_row, rdp_epsilon
from common.report.build import build_audit
from common.report.write import write_audit


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of one Gaussian release of sensitivity 1 and noise std sigma (Balle and Wang 2018, Thm. 8)."""
    def profile(e):
        return norm.cdf(1 / (2 * sigma) - e * sigma) - math.exp(e) * norm.cdf(-1 / (2 * sigma) - e * sigma)
    return optimize.brentq(lambda e: profile(e) - delta, 1e-9, 50.0, xtol=1e-12)


def test_pld_of_an_unsampled_release_is_the_exact_epsilon_from_above():
    for sigma, steps in [(2.0, 1), (6.0, 4)]:  # steps releases compose into one with sigma / sqrt(steps)
        exact = analytic_gaussian_epsilon(sigma / math.sqrt(steps), DELTA)
        pld = PldBracket().epsilon([(sigma, 1.0, steps)], DELTA)
        assert exact - 1e-9 <= pld <= exact + 2e-3, (pld, exact)


def test_dp_accounting_rdp_of_gaussian_releases_is_the_textbook_value():
    sigma, steps = 5.0, 6
    rdp = np.array([a / (2 * sigma ** 2) * steps for a in ALPHAS])
    a = np.array(ALPHAS)  # conversion of Balle et al. 2020, Thm. 21 (what both libraries implement)
    by_hand = float(np.min(rdp + np.log1p(-1 / a) - np.log(DELTA * a) / (a - 1)))
    assert rdp_epsilon([(sigma, 1.0, steps)], DELTA)[0] == pytest.approx(by_hand, rel=1e-12)
    assert compute_epsilon([(sigma, 1.0, steps)], DELTA).epsilon == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("history", [[(1.2, 0.5, 3)], [(10.0, 1.0, 2), (3.0, 0.1, 3)], [(0.9, 0.02, 400)]])
def test_every_opacus_rdp_claim_sits_inside_the_bracket(history):
    claimed = compute_epsilon(history, DELTA).epsilon
    row = check_row(claimed, history, DELTA, PldBracket())
    assert row["bracket"] == "ok", row
    assert row["epsilon_pld"] < claimed <= row["epsilon_rdp_dpa"] * (1 + 1e-9)


def test_rows_of_a_hand_built_run_all_inside_and_shown(tmp_path):
    ledgers = {"site-0": site_ledger("site-0", [SMALL, SMALL]), "site-1": site_ledger("site-1", [BIG, BIG])}
    audit, _, html_path = write_audit(make_run(tmp_path, ledgers, 2), max_prv=0)
    assert audit["checks"]["ok"] and audit["checks"]["flags"] == []
    rows = [s for acc in audit["accounts"] for r in acc["rounds"] for s in r["spends"]]
    assert len(rows) == 8
    for s in rows:
        assert s["bracket"] == "ok" and s["epsilon_pld"] <= s["epsilon_ledger"] <= s["epsilon_rdp_dpa"] * (1 + 1e-9)
    for site in audit["sites"]:  # the tightest number is shown per site, below the enforced one
        assert 0 < site["epsilon_pld"] < site["epsilon"]
    html = html_path.read_text()
    assert "PLD (dp-accounting)" in html and "dp-accounting: PLD &lt;= claimed &lt;= RDP" in html


def test_a_row_below_the_pld_or_above_the_rdp_is_flagged(tmp_path):
    run = make_run(tmp_path, {"site-0": site_ledger("site-0", [BIG, BIG])}, 1)
    ledger = json.loads((run / "ledger.json").read_text())
    rows = ledger["sites"]["site-0"]
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in rows]
    pld_low = PldBracket().epsilon(history, DELTA, pessimistic=False)
    rows[-1]["epsilon_so_far"] = 0.97 * pld_low  # under-reported: below what the mechanism certainly spends
    rows[1]["epsilon_so_far"] *= 1.2  # over-reported: more than its own history gives
    (run / "ledger.json").write_text(json.dumps(ledger))
    audit = build_audit(run, max_prv=0)
    kinds = {(f["round"], f["kind"]) for f in audit["checks"]["flags"]}
    assert (2, "below-pld") in kinds and (1, "above-rdp") in kinds and not audit["checks"]["ok"]
    spends = [s for r in audit["accounts"][0]["rounds"] for s in r["spends"]]
    assert spends[-1]["bracket"] == "below-pld" and spends[1]["bracket"] == "above-rdp"
    assert "optimistic" in spends[-1]["bracket_reason"]


def test_a_claim_inside_the_discretisation_error_is_only_a_warning():
    history = [(1.2, 0.5, 3)]
    b = PldBracket()
    upper, lower = b.epsilon(history, DELTA), b.epsilon(history, DELTA, pessimistic=False)
    assert lower < upper
    row = check_row((upper + lower) / 2, history, DELTA, b)
    assert row["bracket"] == "within-discretisation"
    assert check_row(math.inf, [(0.0, 0.5, 3)], DELTA, b)["bracket"] == "ok"  # an infinite claim hides nothing
    assert check_row(3.0, [(0.0, 0.5, 3)], DELTA, b)["bracket"] == "below-pld"  # no noise, finite claim
