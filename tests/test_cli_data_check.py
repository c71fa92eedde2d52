"""`fedgckd data check` on each real format: counts, a bad record stops it, --skip-bad counts it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedgckd.cli import app
from fixtures_formats import EXPECTED, FORMATS, write_annotation, write_format

runner = CliRunner()


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_prints_counts_per_split(fmt, tmp_path):
    write_format(fmt, tmp_path)
    r = runner.invoke(app, ["data", "check", "--dataset", fmt, "--root", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    for split, counts in EXPECTED[fmt].items():
        assert summary["splits"][split] == counts


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_bad_record_error_then_skip_bad_counts_it(fmt, tmp_path):
    raw = write_format(fmt, tmp_path)
    raw[1]["captions"] = ["   "]
    write_annotation(tmp_path, fmt, raw)
    r = runner.invoke(app, ["data", "check", "--dataset", fmt, "--root", str(tmp_path)])
    assert r.exit_code == 2
    assert "record 1" in r.output and "caption" in r.output
    r = runner.invoke(app, ["data", "check", "--dataset", fmt, "--root", str(tmp_path), "--skip-bad", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert summary["skipped"] == {"empty_caption": 1}
    kept = sum(c["images"] for c in summary["splits"].values())
    assert kept == sum(c["images"] for c in EXPECTED[fmt].values()) - 1
