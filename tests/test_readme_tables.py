"""README.md and docs/: every results figure is the JSON's, the command table is the CLI's, the guide stays short."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_tables  # noqa: E402

from common.data.synth.profiles import PROFILES  # noqa: E402
from fedgckd.cli import app  # noqa: E402

README = (ROOT / "README.md").read_text()


def prose(text: str) -> str:
    """The text outside rendered tables and code blocks (what a person wrote by hand)."""
    text = readme_tables.BLOCK.sub("", text)
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("rel", readme_tables.FILES)
def test_every_table_block_is_what_the_json_gives(rel):
    text = (ROOT / rel).read_text()
    assert readme_tables.BLOCK.search(text), f"{rel} has no table block"
    assert readme_tables.render(text, rel) == text, (
        f"{rel}: a results table disagrees with benchmarks/results/*.json; run python benchmarks/readme_tables.py")


def test_headline_ablation_rows_match_the_json_by_a_second_reading():
    """Independent of the renderer: parse README's rows and compare each mean and std with the JSON."""
    data = json.loads((ROOT / "benchmarks/results/ablation.json").read_text())
    block = re.search(r"<!-- table:ablation-headline -->(.*?)<!-- /table:ablation-headline -->", README, re.S).group(1)
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| (.*) \|$", block, re.M) if m.group(1) != "variant"}
    assert set(rows) == {n for n in readme_tables.HEADLINE if n in data["pairs"][0]["runs"]}
    for name, cells in rows.items():
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d", cells)]
        expected = []
        for p in data["pairs"]:
            r = p["runs"][name]
            expected += [r["R1"], r["R1_std"], r["mAP"], r["mAP_std"]]
        assert numbers == pytest.approx(expected, abs=0.051), name


def test_federated_bytes_line_matches_the_json():
    data = json.loads((ROOT / "benchmarks/results/federated.json").read_text())
    frac = 100 * data["bytes_per_site_round"] / data["full_model_bytes"]
    assert f"{data['bytes_per_site_round']:,} B of trained numbers ({frac:.2f}% of the full model's" in README


def test_federated_rows_match_the_json_by_a_second_reading():
    """Independent of the renderer: the README's federated rows are the headline profile's (sites once run, else
    default), each pair's R1 (and std), mAP and share, and each epsilon names its unit."""
    data = json.loads((ROOT / "benchmarks/results/federated.json").read_text())
    profile = "sites" if "sites" in data["runs"] else "default"
    pairs = data["runs"][profile]
    block = re.search(r"<!-- table:federated -->(.*?)<!-- /table:federated -->", README, re.S).group(1)
    assert f"**{profile}** profile" in block
    rows = {m.group(1): m.group(2).split(" | ") for m in re.finditer(r"^\| (\w+) \| (.*) \|$", block, re.M) if m.group(1) != "row"}
    assert set(rows) == {r for p in pairs.values() for r in p}
    for name, cells in rows.items():
        for i, (pair, runs) in enumerate(pairs.items()):
            r1, mAP, share = cells[3 * i: 3 * i + 3]
            if name not in runs:
                assert (r1, mAP, share) == ("–", "–", "–")
                continue
            m = runs[name]
            assert [float(x) for x in re.findall(r"-?\d+\.\d", r1)] == pytest.approx(
                [m["R1"]] + ([m["R1_std"]] if "R1_std" in m else []), abs=0.051), name
            assert float(mAP.split(" ")[0]) == pytest.approx(m["mAP"], abs=0.051), name
            got = data["share_of_central_gain"][profile][pair].get(name)
            assert share == ("–" if got is None else f"{got:.0%}"), name
        m = next(p[name] for p in pairs.values() if name in p)
        eps = cells[-1]
        assert eps == "–" if m["epsilon"] is None else eps.startswith(f"{m['epsilon']:g} ({m['epsilon_unit']}-level"), name


def test_grouped_dp_rows_match_the_json_by_a_second_reading():
    """Independent of the renderer: each README cell is its (profile, pair, row)'s mean R1, marked with the seed count
    when fewer than 3, and the epsilon column is the row's largest record-level epsilon (a dash for rows that claim
    none)."""
    block = re.search(r"<!-- table:grouped-dp -->(.*?)<!-- /table:grouped-dp -->", README, re.S).group(1)
    path = ROOT / "benchmarks/results/grouped_dp.json"
    if not path.exists():
        assert "Not run yet" in block
        return
    data = json.loads(path.read_text())
    assert data["unit"] == "record" and data["delta"] == 1e-5
    cols = [(prof, pair) for prof, pairs in data["runs"].items() for pair in pairs]
    rows = {m.group(1): m.group(2).split(" | ") for m in re.finditer(r"^\| (\w+) \| (.*) \|$", block, re.M) if m.group(1) != "row"}
    assert set(rows) == {r for prof, pair in cols for r in data["runs"][prof][pair]}
    for name, cells in rows.items():
        assert len(cells) == len(cols) + 1, name
        eps = []
        for (prof, pair), cell in zip(cols, cells):
            m = data["runs"][prof][pair].get(name)
            if m is None:
                assert cell == "–", (name, prof, pair)
                continue
            value, *count = cell.split(" ")
            assert float(value) == pytest.approx(m["R1"], abs=0.051), (name, prof, pair)
            assert count == ([] if len(m["seeds"]) >= 3 else [f"({len(m['seeds'])})"]), (name, prof, pair)
            if m["epsilon"] is not None:
                eps.append(m["epsilon"])
        assert cells[-1] == (f"{max(eps):.2f}" if eps else "–"), name
        assert bool(eps) == ("_dp_" in name), name  # only the DP rows claim an epsilon
    for row in ("gckd_grouped_dp_eps8", "gckd_per_record_dp_eps8"):
        share_line = next(line for line in block.splitlines() if line.startswith("Share of") and f"`{row}` keeps" in line)
        for prof, pair in cols:
            rows_ = data["runs"][prof][pair]
            label = f"{prof} {pair.replace('->', '→')} "
            if all(r in rows_ for r in ("direct", "gckd_full", row)):
                d, f, e = (rows_[r]["R1"] for r in ("direct", "gckd_full", row))
                assert f"{label}{round(100 * (e - d) / (f - d))}%" in share_line, (prof, pair, row)
            else:
                assert f"{label}(" in share_line and "not run yet)" in share_line, (prof, pair, row)


def test_no_hand_written_result_figures_in_the_readme():
    """Results figures live in rendered blocks only, so a rerun of the benchmarks cannot leave one stale."""
    text = prose(README)
    patterns = [r"\bR1\b\D{0,12}\d+\.\d", r"\d+\.\d+\s*(R1|mAP)\b", r"\d+(\.\d+)?\s?%", r"\bmAP\b\D{0,12}\d+\.\d"]
    found = [m.group(0) for p in patterns for m in re.finditer(p, text)]
    assert not found, f"result figures outside the rendered tables: {found}"


def test_readme_is_a_short_users_guide_without_private_references():
    assert len(README.splitlines()) <= 310
    for rel in ("README.md", "docs/results.md", "docs/limits.md"):
        text = (ROOT / rel).read_text()
        assert "DESIGN.md" not in text and not re.search(r"issue #?\d", text), rel
    for marker in ("<!-- demo-command -->", "<!-- test-command -->", "(docs/privacy.md)", "(docs/results.md)",
                   "(docs/limits.md)", "(docs/dead_ends.md)", "docs/audit_screenshot.png"):
        assert marker in README, marker


def test_the_test_command_is_one_line_that_ci_can_run():
    block = README.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    body = block.strip().removeprefix("```bash").removesuffix("```").strip()
    assert "\n" not in body and body.endswith("python -m pytest")
    ci = (ROOT / ".ci/run").read_text()
    assert "FEDGCKD_REQUIRE_CHROMIUM=1" in ci and "chromium" in README


def commands() -> list[str]:
    """Every command of the CLI, as `fedgckd NAME` or `fedgckd GROUP NAME`."""
    out = [f"fedgckd {c.name or c.callback.__name__}" for c in app.registered_commands]
    for group in app.registered_groups:
        for c in group.typer_instance.registered_commands:
            out.append(f"fedgckd {group.name} {c.name or c.callback.__name__.replace('_', '-')}")
    return out


def test_the_command_table_names_every_command_and_profile_as_help_does():
    table = README.split("## Command line")[1].split("\n## ")[0]
    for cmd in commands():
        group, _, name = cmd.removeprefix("fedgckd ").partition(" ")
        assert cmd in table or (name and re.search(rf"fedgckd {group} [\w|\\-]*\b{name}\b", table)), cmd  # `start\|register`
    from fedgckd.commands.data import PROFILE_HELP

    for name, prof in PROFILES.items():
        total = f"{sum(prof.identities):,}"
        split = "/".join(f"{n:,}" for n in prof.identities)
        assert f"`{name}` {total} ({split}" in table, name
        assert f"{name} ({total} identities per domain: {split}" in PROFILE_HELP, name
    assert "--workers" in table and "--source-data" in table
