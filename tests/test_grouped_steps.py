"""Grouped mode's size-aware step count: ``steps=None`` gives ``max(min_steps, ceil(passes / q))`` steps per teacher
round, and the run, its privacy plan and its ledger all use that one number."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.losses.cmkd import CMKDConfig
from common.models.heads import DualHeads, HeadConfig
from common.privacy.accounting import compute_epsilon
from common.train.adapt_config import AdaptConfig
from common.train.adapt_release import adapt_grouped_release
from common.train.grouped_config import GroupedConfig, plan_grouped, sample_rate, steps_per_round
from test_grouped_real_rows import DI, DT, D, _site  # the same tiny site as the real-rows checks


@pytest.mark.parametrize("records,expected", [
    (1_800, 80),      # q = min(0.5, 1024 / 1800) = 0.5: 40 passes = 80 steps, the old fixed count
    (18_000, 704),    # q = 1024 / 18000: 40 / q = 703.125 -> 704
    (100_000, 3907),  # 40 * 100000 / 1024 = 3906.25 -> 3907
    (300, 80),        # q = 0.5: 80 steps (40 passes), also the floor
    (50, 80),         # the floor: q = 0.5 would need only 80
])
def test_steps_per_round_by_hand(records, expected):
    assert steps_per_round(GroupedConfig(steps=None, passes=40.0, min_steps=80), records) == expected


def test_the_floor_and_an_explicit_count():
    assert steps_per_round(GroupedConfig(), 1_800) == 80  # the default keeps the 80 steps measured at 1,800 records
    assert steps_per_round(GroupedConfig(), 3_561) == 80 and steps_per_round(GroupedConfig(), 3_562) == 81
    assert steps_per_round(GroupedConfig(steps=None, passes=10.0, min_steps=80), 1_800) == 80  # 20 < 80
    assert steps_per_round(GroupedConfig(steps=None, passes=10.0, min_steps=5), 1_800) == 20
    assert steps_per_round(GroupedConfig(steps=33, passes=40.0), 18_000) == 33  # a set count is kept as it is


@settings(max_examples=60, deadline=None)
@given(records=st.integers(1, 500_000), passes=st.floats(0.5, 100.0), batch=st.integers(1, 8192))
def test_the_rule_covers_the_passes(records, passes, batch):
    cfg = GroupedConfig(steps=None, passes=passes, min_steps=1, expected_batch=batch)
    steps, q = steps_per_round(cfg, records), sample_rate(cfg, records)
    assert steps * q >= passes - 1e-6 and (steps - 1) * q < passes + 1e-6  # the fewest steps reaching `passes`


def test_the_plan_of_a_size_aware_run_is_the_plan_of_its_count():
    auto = plan_grouped(GroupedConfig(), 18_000, 2, 8.0, 1e-5)  # the default: 23 passes, 23 * 18000 / 1024 = 404.3
    fixed = plan_grouped(GroupedConfig(steps=405), 18_000, 2, 8.0, 1e-5)
    assert auto.steps == fixed.steps == 2 * 405
    assert auto.noise_multiplier == fixed.noise_multiplier and auto.history == fixed.history


def test_a_release_runs_logs_and_accounts_the_size_aware_count():
    fs, bank = _site()
    grouped = GroupedConfig(expected_batch=20, group_size=4, max_group=9, prototypes=3, steps=None, passes=2.0,
                            min_steps=1)  # q = 20 / 60: ceil(2 / (1/3)) = 6 steps per round
    cfg = AdaptConfig(mode="grouped", seed=0, teacher_rounds=2, average=None, cmkd=CMKDConfig(hard_negatives=8),
                      grouped=grouped)
    torch.manual_seed(0)
    teacher = DualHeads(DT, DI, HeadConfig(hidden=16, out_dim=D))
    seen = []
    _, log, led = adapt_grouped_release(copy.deepcopy(teacher), fs, bank, cfg, 8.0, 1e-5,
                                        progress=lambda s, total, info: seen.append(total))
    assert log["grouped"]["steps_per_round"] == 6 and set(seen) == {12}
    sgd = [e for e in led.entries if e.mechanism == "dp-sgd-grouped"]
    assert [e.steps for e in sgd] == [6, 6] and log["release"]["steps"] == 12
    assert math.isclose(led.epsilon(), compute_epsilon(led.history, 1e-5, "rdp").epsilon, rel_tol=1e-9)
    assert led.epsilon() <= 8.0
