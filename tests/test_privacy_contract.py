"""The contract lives in the repository, and the audit says what the code does (issue 20, items 4 and 7).

Each wording check is held against the code it describes: the constant or
default the sentence claims, not the sentence alone.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from test_audit_report import SMALL, make_run, site_ledger

from common.federation import outbound
from common.privacy import mechanisms, site_prototypes
from common.report.build import build_audit
from common.report.wording import ASSUMPTIONS, MECHANISM_TEXT, UNIT_STATEMENT
from common.train import record_level_dp

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "docs" / "privacy.md"
CODE_DIRS = ("common", "client", "server", "fedgckd", "simulations", "tests", "benchmarks")


def _sources():
    for d in CODE_DIRS:
        for path in (ROOT / d).rglob("*"):
            if path.suffix in (".py", ".toml") and path.is_file():
                yield path


def _sections() -> dict[int, str]:
    text = CONTRACT.read_text()
    parts = re.split(r"^## (\d+)\. ", text, flags=re.M)
    return {int(n): body for n, body in zip(parts[1::2], parts[2::2])}


def test_the_contract_has_every_part_the_issue_asks_for():
    sections = _sections()
    titles = {n: body.splitlines()[0] for n, body in sections.items()}
    assert list(sections) == list(range(1, 11))
    for n, words in {1: "Units", 2: "sensitivity rule", 4: "constructions", 5: "forbidden", 7: "Accountants",
                     8: "Person-level", 9: "Assumptions"}.items():
        assert words.lower() in titles[n].lower(), (n, titles[n])
    four = sections[4]
    assert "Construction 1" in four and "Construction 2" in four and four.count("*Proof.*") == 2
    assert "`Delta = C`" in four and "`Delta = 2C`" in four and "sqrt(2)" in four


def test_no_code_cites_the_design_document_for_privacy_and_every_citation_resolves():
    sections = _sections()
    for path in _sources():
        text = path.read_text(errors="replace")
        for m in re.finditer(r"DESIGN\.md(?:,? section (\d+)|:)", text):  # a citation, not a mere mention
            # sections 5 (models) and 8 (layout) of the design document are not part of the privacy contract
            assert m.group(1) in ("5", "8"), f"{path.relative_to(ROOT)} cites {m.group(0)!r}: cite docs/privacy.md"
        for m in re.finditer(r"docs/privacy\.md,? section (\d+)(?:, construction (\d))?", text):
            n = int(m.group(1))
            assert n in sections, f"{path.relative_to(ROOT)} cites section {n}, which docs/privacy.md lacks"
            if m.group(2):
                assert f"Construction {m.group(2)}" in sections[n], f"{path.relative_to(ROOT)}: {m.group(0)}"


def test_mechanism_wording_matches_the_code():
    kmeans = MECHANISM_TEXT["dp-kmeans-prototypes"]
    assert site_prototypes.SENSITIVITY == mechanisms.KMEANS_SENSITIVITY == math.sqrt(2)
    assert mechanisms.default_sensitivity("dp-kmeans-prototypes", None) == site_prototypes.SENSITIVITY
    assert "sqrt(2)" in kmeans and "sensitivity 1)" not in kmeans and "never leave" in kmeans
    sgd = MECHANISM_TEXT["dp-sgd"]
    assert record_level_dp.RecordLevelConfig(noise_multiplier=1.0).clipping == "auto"  # book-keeping where it covers
    assert "book-keeping" in sgd and "Opacus' ghost clipping for layers" in sgd and "(Opacus, ghost" not in sgd
    site = MECHANISM_TEXT["site-update-gaussian"]
    assert "each site clips its own update" in site and "the server clips" not in site
    assert mechanisms.default_sensitivity("dp-sgd-grouped", 1.5) == 3.0 and "Delta = 2C" in MECHANISM_TEXT["dp-sgd-grouped"]


def test_the_record_level_statement_claims_no_prototype_leaves_a_site():
    statement = UNIT_STATEMENT["record"]
    assert "noisy prototypes)" not in statement and "never leave the site" in statement
    # the ground truth: a reply carrying prototypes, as an array or as metrics, is blocked before it is sent
    expected = {"head.weight": (4, 4)}
    assert outbound.check_reply({**expected, "prototypes": (8, 4)}, {}, None, expected, "record")
    assert outbound.check_reply(expected, {"prototype.0": 0.5}, None, expected, "record")


def test_the_assumptions_are_stated_and_true_of_the_code():
    record, site = " ".join(ASSUMPTIONS["record"]), " ".join(ASSUMPTIONS["site"])
    assert "round(q x n)" in record and "treated as public" in record
    for q, n in [(0.25, 37), (0.5, 3), (0.01, 10)]:  # what a DP-SGD step divides by: the expected batch
        assert record_level_dp.expected_batch(q, n) == max(1, round(q * n))
    assert "not cryptographically secure" in record and "not cryptographically secure" in site
    assert "The server is trusted" in site and "un-noised" in site
    assert "noise is added at the site" in record


def test_the_audit_states_the_assumptions_of_its_unit(tmp_path):
    record = build_audit(make_run(tmp_path / "r", {"site-0": site_ledger("site-0", [SMALL])}, 1), max_prv=0)
    assert record["privacy"]["assumptions"] == list(ASSUMPTIONS["record"])
    assert "PLD <= claimed <= RDP" in record["privacy"]["bracket"]
    none = build_audit(make_run(tmp_path / "n", {}, 1, privacy="none"), max_prv=0)
    assert none["privacy"]["assumptions"] == []


@pytest.mark.parametrize("mechanism", [m for m in mechanisms.MECHANISMS if m != "none"])
def test_every_mechanism_has_a_unit_a_construction_and_words(mechanism):
    assert mechanism in mechanisms.MECHANISM_UNIT and mechanism in mechanisms.CONSTRUCTION
    assert mechanism in MECHANISM_TEXT and np.isfinite(mechanisms.default_sensitivity(mechanism, 1.0))
