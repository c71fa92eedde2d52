"""Many sites, few sampled: only sampled sites do work or keep state, and per-node Flower state stays small."""

from __future__ import annotations

import json

from fed_support import shared_bench

from common.federation.config import FedConfig
from simulations.inprocess import run_inprocess


def test_only_sampled_sites_keep_state_and_flower_state_stays_small(tmp_path):
    bench = shared_bench()
    cfg = FedConfig.from_run_config(bench.run_config(tmp_path, **{
        "sites": 12, "sites-per-round": 2, "rounds": 4, "privacy": "site", "mode": "full", "partition": "by-identity",
        "site-wait": 0.2})).validate()
    _, grid = run_inprocess(cfg)
    rounds = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"][1:]
    sampled = {s for r in rounds for s in r["sampled"]}
    assert sampled  # Poisson sampling at rate 2/12 (OS randomness): no site at all in 4 rounds has p = 1.6e-4
    on_disk = {d.name for d in (tmp_path / "sites").iterdir() if d.is_dir()}
    assert on_disk == sampled  # a site that was never asked keeps nothing
    for name in on_disk:  # what must survive is on the site's disk: teacher cache and ledger
        files = {f.name for f in (tmp_path / "sites" / name).iterdir()}
        assert "teacher.safetensors" in files and any(f.startswith("ledger-") for f in files)
    for ctx in grid.contexts.values():  # Flower's per-node state: one small config record at most, no arrays
        assert not ctx.state.array_records
        assert len(ctx.state.config_records) <= 1
        assert all(len(rec) <= 4 for rec in ctx.state.config_records.values())
