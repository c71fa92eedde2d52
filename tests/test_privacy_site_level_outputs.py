"""Under site-level DP nothing outside the DP release reaches an output file (issue 20, item 3).

The server sees each site's clipped update before the central noise. Every
norm it measures on one (accepted or rejected) is captured here, then every
file the run and its audit wrote is searched for it: as a number anywhere in
the JSON (compared to 1e-6), and as text in every format the code prints
numbers with. The clip norm is set far above the updates, so each norm is a
data-dependent number rather than the clip norm itself; one site sends an
oversized update in round 2, so a rejection reason is among the outputs.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from fed_support import shared_bench

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from common.federation.config import FedConfig  # noqa: E402
from common.report.write import write_audit  # noqa: E402
from simulations.inprocess import run_inprocess  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
SHORT = ("{:.4g}", "{:.5g}")  # how reasons and tables print numbers; searched only in text meant for people
LONG = ("{!r}", "{:.6g}", "{:.8g}")  # full precision


def output_texts(root: Path) -> dict[str, str]:
    """Every text output under ``root``: JSON and HTML files, and each safetensors file's JSON header."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix in (".json", ".html", ".md", ".txt"):
            out[str(path)] = path.read_text()
        elif path.suffix == ".safetensors":
            raw = path.read_bytes()
            (n,) = struct.unpack("<Q", raw[:8])
            out[str(path)] = raw[8:8 + n].decode()
    return out


def _walk(obj, numbers: list, strings: list) -> None:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        numbers.append(float(obj))
    elif isinstance(obj, str):
        strings.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            strings.append(str(k))
            _walk(v, numbers, strings)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, numbers, strings)


def _printed(text: str, value: float, formats) -> list[str]:
    """Formats of ``value`` that appear in ``text`` as a whole number (not a piece of a longer one)."""
    return [f.format(value) for f in formats
            if re.search(r"(?<![\d.])" + re.escape(f.format(value)) + r"(?![\d])", text)]


def leaks(texts: dict[str, str], values: list[float]) -> list[str]:
    """Where any of ``values`` appears: as a JSON number (to 1e-6 relative), printed inside a JSON string or an
    HTML page (figures left out: their path coordinates are numbers of no meaning), or quoted as an update norm."""
    found = []
    for name, text in texts.items():
        numbers, strings = [], []
        try:
            _walk(json.loads(text), numbers, strings)
            prose = "\n".join(strings)
        except ValueError:  # HTML
            prose = re.sub(r"<svg.*?</svg>", "", text, flags=re.S)
        found += [f"{name}: quotes {m.group(0)!r}" for m in re.finditer(r"update norm [-+]?\d[\w.+-]*", prose)]
        for v in values:
            found += [f"{name}: the number {x!r}" for x in numbers if abs(x - v) <= 1e-6 * abs(v)]
            found += [f"{name}: the text {t!r}" for t in _printed(prose, v, SHORT + LONG)]
    return found


def test_the_scan_finds_a_planted_value(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"rounds": [{"update_norm": {"site-0": 0.0347712345}}]}))
    (tmp_path / "audit.html").write_text("<p>rejected: update norm 1.235e+04 exceeds the bound 1</p>")
    found = leaks(output_texts(tmp_path), [0.0347712345, 12345.678])
    assert any("metrics.json: the number" in f for f in found)
    assert any("audit.html: quotes 'update norm 1.235e+04'" in f for f in found)
    assert any("audit.html: the text '1.235e+04'" in f for f in found)
    # a shorter number, a longer one that merely starts alike, or figures' path coordinates are not the value
    assert leaks({"x.html": "<p>0.0348, 0.03477123499</p><svg><path d='M 0.034771 0.0347712'/></svg>"},
                 [0.0347712345]) == []


def test_no_unnoised_per_site_value_reaches_any_output_file(tmp_path, monkeypatch):
    import server.strategy

    seen: list[float] = []
    real = server.strategy.validate_update

    def spy(update, broadcast, max_norm):
        verdict = real(update, broadcast, max_norm)
        seen.append(float(verdict.delta_norm))
        return verdict

    monkeypatch.setattr(server.strategy, "validate_update", spy)
    monkeypatch.setenv("FEDGCKD_FAULTS", json.dumps({"site-2": {"2": "oversized"}}))
    bench = shared_bench()
    cfg = FedConfig.from_run_config(bench.run_config(tmp_path, **{
        "privacy": "site", "mode": "full", "site-wait": 0.2, "clip-norm": 1e4, "epsilon": 50.0})).validate()
    run_inprocess(cfg)
    run = tmp_path / "run"
    write_audit(run, max_prv=0)
    norms = [n for n in seen if n == n]
    assert len(norms) == 6 and len({round(n, 6) for n in norms}) == 6, norms  # data-dependent, all different
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    assert sorted(rounds[1]["trained"]) == ["site-0", "site-1", "site-2"]
    assert all("update_norm" not in r for r in rounds)
    assert "withheld" in rounds[2]["rejected"]["site-2"], "the rejection is reported, its norm is not"
    texts = output_texts(run)
    assert any(name.endswith("checkpoint.safetensors") for name in texts)
    assert leaks(texts, norms) == []
