"""AdaptConfig's mode-dependent defaults: what a run uses is what it logs, and explicit values win."""

import pytest
import torch

from common.federation.config import FedConfig
from common.federation.local_round import adapt_config
from common.losses.cmkd import CMKDConfig
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads, HeadConfig
from common.train.adapt import AdaptConfig, adapt, resolved
from common.train.site_context import PublicBank


def test_per_record_defaults_are_four_rounds_half_soft_target_and_a_frozen_teacher():
    cfg = resolved(AdaptConfig(mode="per_record"))
    assert (cfg.teacher_rounds, cfg.cmkd.kd_weight, cfg.momentum, cfg.whiten) == (4, 0.5, 1.0, 1.0)
    # the rest of the CMKD settings are the shared defaults
    assert (cfg.cmkd.tau_student, cfg.cmkd.hard_negatives) == (CMKDConfig().tau_student, CMKDConfig().hard_negatives)


def test_full_defaults_are_two_rounds_full_soft_target_and_a_momentum_teacher():
    cfg = resolved(AdaptConfig(mode="full"))
    assert (cfg.teacher_rounds, cfg.cmkd.kd_weight, cfg.momentum, cfg.whiten) == (2, 1.0, 0.99, 0.0)


def test_explicit_values_are_kept_and_resolving_twice_changes_nothing():
    cfg = AdaptConfig(mode="per_record", teacher_rounds=2, cmkd=CMKDConfig(kd_weight=0.8), momentum=0.9)
    once = resolved(cfg)
    assert (once.teacher_rounds, once.cmkd.kd_weight, once.momentum) == (2, 0.8, 0.9)
    assert resolved(once) == once


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be"):
        resolved(AdaptConfig(mode="per-record"))


def test_the_federation_keeps_the_soft_target_it_was_tuned_with():
    """Sites run kd_weight 1.0 (tuned under DP), not one-machine per-record's 0.5."""
    acfg = adapt_config(FedConfig(privacy="record"), seed=0)
    assert acfg.mode == "per_record" and acfg.cmkd.kd_weight == 1.0 and resolved(acfg).cmkd.kd_weight == 1.0
    assert resolved(acfg).whiten == 0.0  # a site sends a student update, never a whitening release


def test_the_logged_config_is_the_resolved_one():
    g = torch.Generator().manual_seed(0)
    n, dt, di, d = 12, 6, 5, 4
    fs = FeatureSet(torch.randn(n, di, generator=g), torch.randn(2 * n, dt, generator=g),
                    torch.arange(n).repeat_interleave(2), torch.full((n,), -1), torch.full((2 * n,), -1),
                    [f"img{i}" for i in range(n)], [f"caption {t}" for t in range(2 * n)])
    bank = PublicBank(torch.randn(10, di, generator=g), torch.randn(10, dt, generator=g))
    heads = DualHeads(dt, di, HeadConfig(out_dim=d, hidden=8))
    _, log = adapt(heads, fs, bank, AdaptConfig(mode="per_record", epochs=1, batch_size=4, prototypes=0))
    assert log["config"]["teacher_rounds"] == 4 and log["config"]["cmkd"]["kd_weight"] == 0.5
    assert sorted({e["round"] for e in log["epochs"]}) == [1, 2, 3, 4]


def test_the_refresh_cadence_is_about_once_a_pass_and_needs_the_record_count():
    from common.train.adapt_config import refresh_every

    # max(25, round(25 N / 1800)), worked by hand
    assert [refresh_every(n) for n in (12, 180, 1_800, 1_900, 5_451, 18_000)] == [25, 25, 25, 26, 76, 250]
    assert resolved(AdaptConfig(), 18_000).refresh_steps == 250
    assert resolved(AdaptConfig(mode="per_record"), 3_600).refresh_steps == 50
    assert resolved(AdaptConfig()).refresh_steps is None  # no record count: left for adapt() to fill in
    assert resolved(AdaptConfig(refresh_steps=7), 18_000).refresh_steps == 7  # an explicit cadence wins
    assert resolved(AdaptConfig(mode="grouped"), 18_000).refresh_steps == 25  # grouped mode: unchanged
    once = resolved(AdaptConfig(), 18_000)
    assert resolved(once, 180) == once


def test_a_run_refreshes_at_the_cadence_it_logs(monkeypatch):
    """Full mode on 12 records in batches of 4 (3 steps an epoch, 4 epochs): with an explicit cadence of 5 the teacher
    is refined at steps 0, 5 and 10 of each round; with the default (25 at this size) once a round."""
    import common.train.adapt as adapt_module

    g = torch.Generator().manual_seed(0)
    n, dt, di, d = 12, 6, 5, 4
    fs = FeatureSet(torch.randn(n, di, generator=g), torch.randn(2 * n, dt, generator=g),
                    torch.arange(n).repeat_interleave(2), torch.full((n,), -1), torch.full((2 * n,), -1),
                    [f"img{i}" for i in range(n)], [f"caption {t}" for t in range(2 * n)])
    bank = PublicBank(torch.randn(10, di, generator=g), torch.randn(10, dt, generator=g))
    heads = DualHeads(dt, di, HeadConfig(out_dim=d, hidden=8))
    calls = []
    real = adapt_module.refine
    monkeypatch.setattr(adapt_module, "refine", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = dict(mode="full", epochs=4, batch_size=4, prototypes=0, teacher_rounds=1)
    _, log = adapt(heads, fs, bank, AdaptConfig(refresh_steps=5, **base))
    assert log["config"]["refresh_steps"] == 5 and len(calls) == 3
    calls.clear()
    _, log = adapt(heads, fs, bank, AdaptConfig(**base))
    assert log["config"]["refresh_steps"] == 25 and len(calls) == 1
