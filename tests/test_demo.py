"""The README's front-door command, end to end: `fedgckd demo` (tiny towers, tiny benchmark)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys


def test_demo_runs_every_stage_and_ends_with_an_audited_record_level_run(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    r = subprocess.run([sys.executable, "-m", "fedgckd", "demo", "--out", str(out)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    student = json.loads((out / "student_full" / "config.json").read_text())
    assert student["meta"]["adaptation"]["config"]["teacher_rounds"] == 2
    assert {e["round"] for e in student["meta"]["adaptation"]["epochs"]} == {1, 2}
    ledger = json.loads((out / "federated" / "ledger.json").read_text())
    finals = ledger["final_epsilon"]
    assert sorted(finals) == ["site-0", "site-1", "site-2"] and all(0 < v <= 8.0 for v in finals.values())
    assert ledger["privacy"]["unit"] == "record" and ledger["privacy"]["delta"] == 1e-5
    audit = json.loads((out / "federated" / "audit.json").read_text())
    assert audit["checks"]["ok"] is True and audit["checks"]["flags"] == []
    # every ledger row sits inside the second library's bracket: dp-accounting PLD <= claimed <= its RDP
    rows = [s for a in audit["accounts"] for r in a["rounds"] for s in r["spends"] if s["mechanism"] != "none"]
    assert rows and all(s["bracket"] == "ok" and s["epsilon_pld"] <= s["epsilon_ledger"] <= s["epsilon_rdp_dpa"] * (1 + 1e-9)
                        for s in rows)
    said = " ".join((r.stdout + r.stderr).split())
    # a newcomer's output: no engine noise, no raw colour codes in a log, the tiny profile's caveat, one byte count
    assert "DEPRECATED" not in said and "fraction_evaluate" not in said and "\x1b[" not in r.stderr
    assert "caveat: the tiny profile has 4 val identities" in said
    assert len(set(re.findall(r"update: ([\d,]+) B sent per site per round", said))) == 1
    assert "0/?" not in said
