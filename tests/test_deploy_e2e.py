"""A deployed federation on 127.0.0.1: SuperLink with TLS and node authentication, two registered SuperNodes.

Everything goes through the `fedgckd` commands a user types: `certs make`,
`server start`, `server register`, `site start`, `server run`. Two rounds of
federated GCKD with record-level DP on the tiny backbone. The run is judged
by its status as the SuperLink reports it (``flwr ls --format json``), then
by what it left: the model, metrics and ledgers. A third SuperNode with an
unregistered key is refused. Every process is started in its own session on
free ports and stopped by its PID (with its children).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fed_support import shared_bench

from common.deploy.procs import free_port, kill_tree, start, wait_for_port  # noqa: E402
from common.privacy.ledger import SiteLedger  # noqa: E402

pytestmark = pytest.mark.slow
FEDGCKD = [sys.executable, "-m", "fedgckd"]


def fedgckd(*args, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDGCKD, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def site(k: int, n: int, link_port: int, pki, bench, tmp_path, key: str, env):
    argv = [*FEDGCKD, "site", "start", "--superlink", f"127.0.0.1:{link_port}", "--data", bench.data,
            "--state", tmp_path / f"site-{k}", "--partition-id", k, "--num-partitions", n,
            "--root-cert", pki / "ca.crt", "--key", pki / "keys" / key, "--port", free_port(),
            "--cache", bench.cache]
    return start([str(a) for a in argv], tmp_path / f"site-{k}.log", env=env, cwd=tmp_path)


def test_tls_node_auth_two_sites_two_rounds(tmp_path):
    bench = shared_bench()
    # a fresh FLWR_HOME (the fedgckd commands give each Flower process its own under --state)
    env = {**os.environ, "FLWR_LOG_LEVEL": "INFO", "FLWR_HOME": str(tmp_path / "flwr-home")}
    pki, op = tmp_path / "pki", tmp_path / "operator"
    assert fedgckd("certs", "make", "--out", pki, "--sites", 3).returncode == 0
    port = free_port()
    procs = []
    try:
        link = start([*FEDGCKD, "server", "start", "--state", str(op), "--certs", str(pki), "--port", str(port)],
                     tmp_path / "superlink.log", env=env, cwd=tmp_path)
        procs.append(link)
        wait_for_port("127.0.0.1", port, 60, link)
        reg = fedgckd("server", "register", pki / "keys" / "site-0.pub", pki / "keys" / "site-1.pub", "--state", op)
        assert reg.returncode == 0 and (reg.stdout + reg.stderr).count("node id") == 2, reg.stdout + reg.stderr
        procs += [site(k, 2, port, pki, bench, tmp_path, f"site-{k}", env) for k in range(2)]

        intruder = site(2, 3, port, pki, bench, tmp_path, "site-2", env)  # its key was never registered
        procs.append(intruder)

        out = tmp_path / "run"
        rc = bench.run_config(tmp_path, sites=2, rounds=2, privacy="record")
        # teacher-momentum 1: the teacher stays the source one, so round 2 needs no new teacher query (in deployment
        # every message starts a ClientApp process that imports torch, PyG and Opacus: ~10 s each on 2 cores);
        # round 1 still sends it, round 2 shows that a site holding the version is not sent it again
        rc.update({"out-dir": str(out), "site-wait": 120.0, "teacher-momentum": 1.0})
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in rc.items() if k != "state-dir")
        t0 = time.monotonic()
        res = fedgckd("server", "run", "--state", op, "-c", pairs, "--timeout", 240, "--json", tmp_path / "status.json",
                      timeout=300, env=env)
        wall = time.monotonic() - t0
        status = json.loads((tmp_path / "status.json").read_text())
        assert res.returncode == 0 and status["status"] == "finished:completed", res.stdout[-4000:] + res.stderr[-2000:]
        # the intruder was refused (it tried while the run went on)
        code = intruder.wait(timeout=60)
        intruder_log = (tmp_path / "site-2.log").read_text()
        assert code != 0 and "Exit Code: 305" in intruder_log and "Failed to activate SuperNode" in intruder_log
        assert "No SuperNode found with the given public key" in (tmp_path / "superlink.log").read_text()
        # the status as the SuperLink reports it, read independently of `server run`
        ls = fedgckd("server", "status", status["run-id"], "--state", op)
        assert ls.returncode == 0 and "finished:completed" in ls.stdout + ls.stderr

        metrics = json.loads((out / "metrics.json").read_text())
        assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
        for r in metrics["rounds"][1:]:
            assert sorted(r["trained"]) == ["site-0", "site-1"] and not r["errors"] and not r["rejected"]
        assert (out / "model" / "heads.safetensors").exists() and (out / "checkpoint.safetensors").exists()
        ledger = json.loads((out / "ledger.json").read_text())
        for k in range(2):  # each site's ledger on its own disk, in its --state folder
            led = SiteLedger.load(tmp_path / f"site-{k}" / "ledger-record.json")
            assert sorted({e.round for e in led.entries}) == [1, 2] and all(e.status == "trained" for e in led.entries)
            assert 0 < led.epsilon() <= 8.0
            assert ledger["final_epsilon"][f"site-{k}"] == pytest.approx(led.epsilon())
        assert (op / "runs" / f"run-{status['run-id']}.log").read_text().count("Aggregated MetricRecord") >= 2
        site_log = (tmp_path / "site-0.log").read_text()
        assert site_log.count("Sending: query.teacher") == 1 and site_log.count("Sending: train") == 2
        print(f"deployed run: {wall:.0f}s from submission to finished:completed; intruder exit code {code}")
    finally:
        for p in reversed(procs):
            kill_tree(p.pid, grace=10, reap=p)
    assert all(p.poll() is not None for p in procs)
