"""The expected-outcome warning before a record-level federation: its table is the measured one, its sentences
name the right measured figures and caveats, and `fedgckd simulate` prints it before the federation starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import common.federation.expected_outcome as eo
from common.federation.expected_outcome import MEASURED, estimate, expected_outcome

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "site_size.json"
TEN = 10  # sites


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s", text) if s]


# ---- the table is the measurement ------------------------------------------------------------------------------

def test_table_equals_the_benchmark_file_today():
    """A rerun of benchmarks/site_size.py changes this file; the warning's table must follow it."""
    d = json.loads(RESULTS.read_text())
    measured = {(s["records_per_site"], t): (d["epsilon"], v["share_of_central_gain"]["fed_record_eps8"],
                                             v["share_of_central_gain"]["fed_no_noise"])
                for s in d["sizes"] for t, v in s["train_sets"].items()}
    table = {(r.records_per_site, r.train_params): (r.epsilon, r.share, r.no_noise_share) for r in MEASURED}
    assert table == measured
    assert len(MEASURED) == len(table)  # no duplicate rows
    assert {r.loss_mode for r in MEASURED} == {"per_record"}
    assert d["delta"] == eo.MEASURED_DELTA and d["accountant"].upper() == eo.MEASURED_ACCOUNTANT
    # the setting the sentences name is the file's
    setting = f"{d['sites']} IID sites, {d['rounds']} rounds x {d['local_steps']} steps at sample rate {d['sample_rate']:g}"
    assert setting in eo.MEASURED_SETTING
    assert f"{d['source']}->{d['target']}" in eo.MEASURED_SETTING
    assert d["machine"]["commit"] in eo.__doc__  # provenance: the commit it was measured at


def test_the_files_shares_are_shares_of_the_central_gain():
    """Second computation: share = (fed R1 - direct R1) / (central R1 - direct R1), from the file's R1 figures."""
    d = json.loads(RESULTS.read_text())
    direct = d["direct"]["R1"]
    for size in d["sizes"]:
        gain = size["central"]["R1"] - direct
        for t, v in size["train_sets"].items():
            for kind in ("fed_record_eps8", "fed_no_noise"):
                assert v["share_of_central_gain"][kind] == pytest.approx((v[kind]["R1"] - direct) / gain, abs=6e-4)


# ---- hand-worked sentences -------------------------------------------------------------------------------------

def test_180_records_last_epsilon_8():
    est = estimate([180] * TEN, 8.0, "per_record", "last")
    # 180 / last: (9.92 - 6.58) / (56.08 - 6.58) = 0.067 -> 7%; no noise (28.92 - 6.58) / 49.50 = 0.451 -> 45%
    assert ("at about 180 records per site, record-level epsilon 8 (delta 1e-5, RDP) kept, in our measurements, 7% "
            "of central GCKD's gain over direct transfer with train-params last (no noise: 45%)") in est.text
    assert "at 1,800 records per site 21%" in est.text  # (24.33 - 6.58) / (91.92 - 6.58) = 0.208
    assert "below anything" not in est.text and "expect" not in est.text
    assert "benchmarks/results/site_size.md" in est.text and "per-record mode" in est.text
    assert len(sentences(est.text)) == 2
    assert est.low  # 7% < 25%, and a smaller site or epsilon could only keep less
    assert expected_outcome([180] * TEN, 8.0, "per-record", "last") == est.text  # both spellings of the mode


def test_1800_records_all_and_last():
    est = estimate([1800] * TEN, 8.0, "per_record", "all")
    assert "at about 1,800 records per site" in est.text
    # (30.42 - 6.58) / 85.34 = 0.279 -> 28%; no noise (55.50 - 6.58) / 85.34 = 0.573 -> 57%
    assert "28% of central GCKD's gain over direct transfer with train-params all (no noise: 57%)" in est.text
    assert "records per site 21%" not in est.text and "at 180" not in est.text  # the largest: no other size named
    # the emulated table's 28% is not below 25%, but the real federations with median sites up to 1,884 kept 23%
    assert est.low and eo.PER_RECORD.median_records >= 1800 and eo.PER_RECORD.share < eo.LOW_SHARE
    last = estimate([1700, 1800, 1900], 8.0, "per_record", "last")
    assert "at about 1,800 records per site" in last.text and "21% of central GCKD's gain" in last.text
    assert last.low  # 21% < 25%


def test_50_records_is_below_anything_measured():
    est = estimate([40, 50, 60], 8.0, "per_record", "last")
    assert est.text.startswith("Expected outcome: per-record mode, measured in three federations of ten sites")
    assert "(image head only), fewer than 180 records per site (median 50): below anything we measured; at 180 " \
           "records per site, " in est.text
    assert "measurements, 7% of central GCKD's gain" in est.text
    assert "the share grew with site size (21% at 1,800), so expect less here" in est.text
    assert est.low


def test_20000_records_is_above_anything_measured():
    est = estimate([20_000] * TEN, 8.0, "per_record", "all")
    assert est.text.startswith("Expected outcome: per-record mode, measured in three federations of ten sites")
    assert "(image head only), more than 1,800 records per site (median 20,000): above anything we measured; at " \
           "1,800 records per site, " in est.text
    assert "28% of central GCKD's gain over direct transfer with train-params all" in est.text
    assert "the share grew with site size (-7% at 180), so expect more here, by an amount we have not measured" in est.text
    assert not est.low  # the measured figure is no ceiling for larger sites


def test_between_measured_sizes_names_both_and_does_not_interpolate():
    est = estimate([1000] * TEN, 8.0, "per_record", "last")  # log-nearest: |ln(1000/600)| 0.51 < |ln(1800/1000)| 0.59
    assert "median 1,000 records per site, between the measured 600 and 1,800; at 600 records per site" in est.text
    assert "16% of central GCKD's gain" in est.text and "at 1,800 records per site 21%" in est.text
    near = estimate([400] * TEN, 8.0, "per_record", "last").text  # |ln(400/180)| 0.80 > |ln(600/400)| 0.41
    assert "between the measured 180 and 600; at 600 records per site" in near and "at 180 records per site 7%" in near


def test_negative_share_is_called_worse_than_direct():
    est = estimate([180] * TEN, 8.0, "per_record", "all")
    # 180 / all: (3.33 - 6.58) / 49.50 = -0.066
    assert "-7% (worse than direct transfer) of central GCKD's gain over direct transfer with train-params all" in est.text
    assert est.low


@pytest.mark.parametrize("records", [[180] * TEN, [1800] * TEN])
def test_epsilon_2_says_the_measurement_is_at_8_and_expects_less(records):
    est = estimate(records, 2.0, "per_record", "last")
    assert "record-level epsilon 8 (delta 1e-5, RDP) kept" in est.text  # the figure stays the measured one
    assert "This run's record-level epsilon 2 (delta 1e-5, RDP) is below the measured 8, so expect less" in est.text
    assert est.low  # an upper figure, and small


def test_larger_epsilon_expects_more_and_is_not_yellow():
    est = estimate([180] * TEN, 16.0, "per_record", "last", delta=1e-6, accountant="prv")
    assert "This run's record-level epsilon 16 (delta 1e-6, PRV) is above the measured 8, so expect more" in est.text
    assert not est.low


def test_same_epsilon_other_delta_is_named():
    est = estimate([180] * TEN, 8.0, "per_record", "last", delta=1e-6)
    assert "record-level epsilon 8 (delta 1e-6, RDP) differs from the measured budget" in est.text


@pytest.mark.parametrize("records,size,low", [([180] * TEN, "about 180", True), ([1800] * TEN, "about 1,800", True),
                                              ([50] * TEN, "fewer than 180", True),
                                              ([20_000] * TEN, "more than 1,800", False)])
@pytest.mark.parametrize("train_params", ["last", "all"])
def test_grouped_mode_shows_its_federated_measurement_then_per_record_modes(records, size, low, train_params):
    est = estimate(records, 8.0, "grouped", train_params)
    assert size in est.text
    g = eo.GROUPED
    assert (f"grouped mode, measured in three federations of ten sites (seeds 0, 1, 2; median site 1,494-1,884 "
            f"records, flat->outline, record-level epsilon 8, the run config's defaults), ended at a mean test R1 of "
            f"{g.r1:.1f} against direct transfer's {g.direct_r1:.1f}") in est.text
    assert f"{eo.FEDERATED_SOURCE}); for per-record mode (image head only), " in est.text
    # grouped trains both heads, so neither per-record row is its own: both are shown
    assert "with train-params last" in est.text and "with train-params all" in est.text
    # yellow where the measured grouped federations had sites this size or larger (medians up to 1,884) and kept little
    assert est.low == (low and g.share < eo.LOW_SHARE)
    assert not estimate(records, 16.0, "grouped", train_params).low, "more budget than measured: no warning colour"


@pytest.mark.parametrize("run", ["GROUPED", "PER_RECORD"])
def test_the_federated_measurements_equal_the_benchmark_file(run):
    data = json.loads((RESULTS.parents[2] / eo.FEDERATED_SOURCE).read_text())
    profile, pair = eo.FEDERATED_PAIR
    rows, g = data["runs"][profile][pair], getattr(eo, run)
    row = rows[g.row]
    assert tuple(row["seeds"]) == g.seeds and tuple(rows["direct"]["seeds"]) == (0, 1, 2)
    assert g.r1 == row["R1"] and g.share == data["share_of_central_gain"][profile][pair][g.row]
    # direct transfer over the row's own seeds, from the parts (the merged direct row may hold more seeds)
    parts = [json.loads((RESULTS.parent / "federated_parts" / f"sites_flat_outline_s{s}.json").read_text()) for s in g.seeds]
    assert g.direct_r1 == round(sum(p["rows"]["direct"]["R1"] for p in parts) / len(parts), 2)
    assert g.r1 == pytest.approx(sum(p["rows"][g.row]["R1"] for p in parts) / len(parts), abs=0.006)
    for p in parts:
        m = p["rows"][g.row]
        assert 7.9 < m["epsilon"] <= 8.0 and m["within_budget"] and m["delta"] == eo.MEASURED_DELTA
        assert m["epsilon_unit"] == "record" and m["accountant"].upper() == eo.MEASURED_ACCOUNTANT
        assert m["settings"]["sites"] == 10 and not m["settings"]["set"], "no --set: the defaults or the row's preset"
    assert g.epsilon == 8.0 and len(g.medians) == 3
    assert (g.row == "fed_per_record_record_eps8") == ("preset" in g.setting), "the per-record row runs record-dp.toml"


@pytest.mark.parametrize("records,low", [([180] * TEN, True), ([1494] * TEN, True), ([1800] * TEN, True),
                                         ([2500] * TEN, False)])
def test_per_record_mode_shows_its_federated_measurement_then_the_emulated_table(records, low):
    est = estimate(records, 8.0, "per_record", "all")
    p = eo.PER_RECORD
    assert (f"per-record mode, measured in three federations of ten sites (seeds 0, 1, 2; median site 1,494-1,884 "
            f"records, flat->outline, record-level epsilon 8, the record-dp preset: the whole image head), ended at a "
            f"mean test R1 of {p.r1:.1f} against direct transfer's {p.direct_r1:.1f}, {round(100 * p.share)}% of "
            f"central GCKD's gain") in est.text
    assert f"{eo.FEDERATED_SOURCE}); in an emulated federation of IID sites (image head only), " in est.text
    # yellow where a measurement at this size or larger kept under a quarter: the federations' 23% with median sites
    # up to 1,884 records (so 1,800 too, although the emulated `all` row kept 28% there), the emulated `all` row at
    # 180 (-7%); at 2,500 records per site neither measurement is as large
    assert p.share < eo.LOW_SHARE and est.low == low


def test_an_unmeasured_train_params_shows_both_measured_sets():
    est = estimate([180] * TEN, 8.0, "per_record", "norms+biases")
    assert "7% of central GCKD's gain over direct transfer with train-params last (no noise: 45%) and -7% (worse " \
           "than direct transfer) with train-params all (no noise: 42%)" in est.text
    assert "Train-params norms+biases was not measured" in est.text
    assert "at 1,800 records per site 21% (last), 28% (all)" in est.text
    assert est.low  # the better of the two measured sets is still below 25%


def test_no_growth_claim_when_the_measurement_does_not_show_it(monkeypatch):
    """The 'share grew with site size' clause is read off the table: a table where it fell must not claim it."""
    fell = tuple(eo.MeasuredRow(r.records_per_site, r.epsilon, r.loss_mode, r.train_params,
                                0.3 - r.records_per_site / 10_000, r.no_noise_share) for r in MEASURED)
    monkeypatch.setattr(eo, "MEASURED", fell)
    below = estimate([50] * TEN, 8.0, "per_record", "last").text
    assert "at 180 records per site" in below and "28% of central GCKD's gain" in below  # 0.3 - 0.018
    assert "grew" not in below and "expect less" not in below
    assert "grew" not in estimate([20_000] * TEN, 8.0, "per_record", "last").text


def test_the_median_site_decides():
    assert "at about 180 records per site" in expected_outcome([50, 180, 20_000], 8.0, "per_record", "last")
    assert "(median 50)" in expected_outcome([10, 50, 90, 20_000, 30], 8.0, "per_record", "last")


def test_bad_input():
    assert expected_outcome([], 8.0, "per_record", "last") is None
    with pytest.raises(ValueError, match="loss mode 'full' is not a record-level mode"):
        expected_outcome([180], 8.0, "full", "last")
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        expected_outcome([180], 0.0, "per_record", "last")
    with pytest.raises(ValueError, match="cannot hold -1 records"):
        expected_outcome([180, -1], 8.0, "per_record", "last")


# ---- the CLI prints it before training ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_simulate_prints_the_expected_outcome_before_the_federation(tmp_path, monkeypatch):
    import gc
    import platform

    from typer.testing import CliRunner

    from fed_support import TARGET, shared_bench
    from fedgckd.cli import app

    # as in test_fed_simulation: Flower's telemetry thread would otherwise leave an unreaped `file` child
    monkeypatch.setattr(platform, "architecture", lambda *a, **k: ("64bit", "ELF"))
    bench, out = shared_bench(), tmp_path / "run"
    res = CliRunner().invoke(app, [
        "simulate", "--data", str(bench.data), "--teacher", str(bench.teacher), "--target", TARGET, "--sites", "3",
        "--rounds", "1", "--out", str(out), "--cache", str(bench.cache), "--cpus", "1", "--local-steps", "2",
        "--sample-rate", "0.5", "--set", "anchors=64", "--set", "prototypes=4", "--set", "batch-size=8",
        "--privacy", "record", "--epsilon", "8", "--delta", "1e-5"])
    gc.collect()
    assert res.exit_code == 0, res.output
    records = [s["records"] for s in json.loads((out / "sites.json").read_text())["sites"]]
    assert max(records) < 180  # the tiny profile: below anything measured
    line = expected_outcome(records, 8.0, "per_record", "last")
    assert "below anything we measured" in line
    out_text = res.output
    assert line in out_text
    assert out_text.index("record-level DP-SGD: noise multiplier") < out_text.index(line)
    assert out_text.index(line) < out_text.index("federation (record, per-record)")
