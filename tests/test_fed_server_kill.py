"""The server process is killed mid-run and resumed from its checkpoint (Ray simulation, real processes).

`fedgckd simulate` runs in its own session; as soon as its round-1
checkpoint is on disk the whole process tree (driver, Ray, simulated sites)
is killed by PID. `fedgckd simulate --resume RUN_DIR` then finishes the run.
A fault plan (``FEDGCKD_FAULTS``) also makes site-2 send a NaN update in round
3, to show that fault injection reaches Ray's workers and that the resumed
run still rejects it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fed_support import TARGET, shared_bench

from common.deploy.procs import alive, descendants, kill_tree, start  # noqa: E402
from common.privacy.ledger import SiteLedger  # noqa: E402
from server.checkpoint import load_checkpoint, path_of  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_killed_server_resumes_from_its_checkpoint(tmp_path):
    bench = shared_bench()
    out = tmp_path / "run"
    env = {**os.environ, "FEDGCKD_FAULTS": json.dumps({"site-2": {"3": "nan"}}), "RAY_DEDUP_LOGS": "0",
           "FLWR_HOME": str(tmp_path / "flwr-home")}
    args = ["simulate", "--data", str(bench.data), "--teacher", str(bench.teacher), "--target", TARGET,
            "--sites", "3", "--rounds", "3", "--out", str(out), "--cache", str(bench.cache), "--cpus", "1",
            "--privacy", "record", "--local-steps", "3", "--sample-rate", "0.5", "--set", "anchors=64",
            "--set", "prototypes=4", "--set", "batch-size=8"]
    first = start([sys.executable, "-m", "fedgckd", *args], tmp_path / "first.log", env=env, cwd=tmp_path)
    tree: list[int] = []
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and first.poll() is None:
            if path_of(out).exists() and load_checkpoint(out).round >= 1:
                break
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        tree = [first.pid, *descendants(first.pid)]
    finally:
        kill_tree(first.pid, grace=5, reap=first)
    assert first.returncode is not None and first.returncode != 0
    assert not [p for p in tree if alive(p)], "every process of the killed run is gone"
    ck = load_checkpoint(out)
    assert 1 <= ck.round < 3, "killed before the run finished"
    killed_at = ck.round

    resumed = subprocess.run([sys.executable, "-m", "fedgckd", "simulate", "--resume", str(out), "--cpus", "1"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    ledger = json.loads((out / "ledger.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3]
    assert "NaN" in metrics["rounds"][3]["rejected"]["site-2"]
    assert load_checkpoint(out).round == 3 and (out / "model" / "config.json").exists()
    for k in range(3):
        led = SiteLedger.load(out / "sites" / f"site-{k}" / "ledger-record.json")
        statuses = {r: [e.status for e in led.entries if e.round == r] for r in (1, 2, 3)}
        for r in range(1, killed_at + 1):  # finished before the checkpoint: counted once, never re-run
            assert statuses[r] == ["trained"] * 2, statuses
        # the round the server was in when it died ran again: a first attempt may be on the ledger too
        # (crashed: planned spending; trained: it finished but its update was lost), then the re-run
        assert statuses[killed_at + 1][-2:] == ["trained"] * 2 and len(statuses[killed_at + 1]) in (2, 4), statuses
        assert ledger["final_epsilon"][f"site-{k}"] == pytest.approx(led.epsilon())
    print(f"killed after round {killed_at}; resumed run completed rounds {[r['round'] for r in metrics['rounds']]}")
