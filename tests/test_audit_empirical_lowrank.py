"""The one-run canary audit of record-level grouped training with low-rank adapters (``train-params=lowrank:R``).

Before: `load_inputs` asked for the lowrank trainable names on plain heads and `audit-empirical` stopped with
"needs low-rank adapters on the heads"; a grouped run's ledger (``dp-sgd-grouped``) was "nothing to audit".
Now each round attaches adapters on the bases the server computes from the public bank, the canaries enter
groups like any other record, the update is folded ``W += B A``, and the bound is compared with the accounted
epsilon of exactly that training. Tiny benchmark, one site, 200 canaries, q = 1, 20 steps.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fed_support import TARGET, shared_bench

from common.checkpoint import load_checkpoint
from common.federation.config import FedConfig
from common.models.low_rank import attach_low_rank, merge_low_rank, public_bases
from common.privacy.accounting import compute_epsilon, noise_multiplier_for
from common.report.audit_inputs import load_inputs
from common.report.canaries import low_rank_views
from common.report.empirical import CanaryAuditConfig, run_canary_audit

M, STEPS, Q, DELTA, RANK = 200, 20, 1.0, 1e-5, 8


def _linears_out(heads) -> int:
    return sum(m.out_features for m in heads.modules() if isinstance(m, nn.Linear))


@pytest.fixture(scope="module")
def inputs():
    bench = shared_bench()
    cfg = FedConfig(data_dir=str(bench.data), teacher=str(bench.teacher), target=TARGET, cache_dir=str(bench.cache),
                    sites=1, anchors=64, mode="grouped", privacy="record", train_params=f"lowrank:{RANK}")
    return load_inputs(cfg), cfg


def _audit(inputs, noise: float):
    data, cfg = inputs
    fed = cfg.replace(sample_rate=Q, local_steps=STEPS, lr=0.1, prototypes=0, delta=DELTA)
    return run_canary_audit(data.teacher, data.site, data.anchor_images, data.anchor_texts, data.names, fed, [noise],
                            CanaryAuditConfig(canaries=M), bank=data.bank)


def test_low_rank_views_recover_the_reply():
    """After one round, start minus end in the adapters' space is exactly the site's reply (-B, old - new biases)."""
    start = load_checkpoint(shared_bench().teacher).heads.eval()
    g = torch.Generator().manual_seed(0)
    bases = public_bases(start, torch.randn(64, start.image_dim, generator=g), torch.randn(64, start.text_dim, generator=g), 3)
    trained = attach_low_rank(copy.deepcopy(start), bases)
    reply = {}
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if n.endswith(".B.weight") or n.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=g))
                reply[n] = p.detach().clone()
    end = merge_low_rank(trained)  # what the server's fold makes of this one reply
    s_view, e_view, names = low_rank_views(start, end, bases, "lowrank:3+biases")
    assert sorted(names) == sorted(reply)
    sp, ep = dict(s_view.named_parameters()), dict(e_view.named_parameters())
    for n in names:
        if n.endswith(".B.weight"):
            assert torch.count_nonzero(sp[n]) == 0
            torch.testing.assert_close(ep[n], reply[n], atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(ep[n], reply[n])
            assert not torch.equal(sp[n], ep[n])


def test_without_noise_the_canaries_are_found_in_the_adapters(inputs):
    res = _audit(inputs, 0.0)
    assert res.accounted_epsilon == float("inf") and res.within_accounting
    assert res.epsilon_lower_bound > 0.3, res.guesses  # measured 1.2-1.7 (0.9 at 10 steps, 2.7 for train-params=all)
    assert res.training["mechanisms"] == ["dp-sgd-grouped"] and res.training["train_params"] == f"lowrank:{RANK}"
    assert res.training["trained_numbers"] == RANK * _linears_out(inputs[0].teacher)  # the B's: R per output
    assert "adapters' space" in res.score_definition


def test_with_dp_the_bound_stays_below_the_accounted_epsilon_of_the_same_training(inputs):
    sigma = noise_multiplier_for(1.0, DELTA, Q, STEPS)
    res = _audit(inputs, sigma)
    assert res.history == [[sigma, Q, STEPS]]
    assert res.accounted_epsilon == pytest.approx(compute_epsilon([(sigma, Q, STEPS)], DELTA).epsilon)
    assert res.accounted_epsilon <= 1.0
    assert res.epsilon_lower_bound <= res.accounted_epsilon and res.within_accounting


def test_cli_audits_a_grouped_lowrank_runs_mechanism(tmp_path):
    """`audit-empirical --run` on a grouped lowrank run: its dp-sgd-grouped noise per round, its train-params."""
    from test_audit_report import make_run, site_ledger

    from common.privacy.ledger import Spend
    from fedgckd.cli import app

    bench = shared_bench()
    rounds = [[Spend("dp-sgd-grouped", 2.0, 0.5, 2, 1.0)], [Spend("dp-sgd-grouped", 3.0, 0.5, 2, 1.0)]]
    run = make_run(tmp_path, {"site-0": site_ledger("site-0", rounds)}, 1)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["config"].update({"data-dir": str(bench.data), "teacher": str(bench.teacher), "target": TARGET,
                              "cache-dir": str(bench.cache), "anchors": 64, "prototypes": 0, "mode": "grouped",
                              "train-params": "lowrank:2"})
    (run / "metrics.json").write_text(json.dumps(metrics))
    res = CliRunner().invoke(app, ["audit-empirical", "--run", str(run), "--canaries", "40"])
    assert res.exit_code == 0, res.output
    emp = json.loads((run / "empirical_audit.json").read_text())
    assert emp["training"]["noise_multiplier"] == [2.0, 3.0] and emp["training"]["train_params"] == "lowrank:2"
    assert emp["training"]["mechanisms"] == ["dp-sgd-grouped"]
    expected = compute_epsilon([(2.0, 0.5, 2), (3.0, 0.5, 2)], DELTA).epsilon  # a second computation
    assert emp["accounted_epsilon"] == pytest.approx(expected, rel=1e-9)
    led = json.loads((run / "ledger.json").read_text())["sites"]["site-0"]
    assert emp["accounted_epsilon"] == pytest.approx(led[-1]["epsilon_so_far"], rel=1e-9)
    # lowrank in per-record mode is refused with the reason (a config error: exit 2)
    bad = CliRunner().invoke(app, ["audit-empirical", "--data", str(bench.data), "--teacher", str(bench.teacher),
                                   "--target", TARGET, "--out", str(tmp_path), "--noise-multiplier", "1",
                                   "--set", "train-params=lowrank:2", "--set", "mode=per-record"])
    assert bad.exit_code == 2 and "mode=grouped" in bad.output
