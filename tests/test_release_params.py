"""Which image-head parameters a one-machine per-record release trains: ``RecordReleaseConfig.train_params="auto"``
picks the whole image head when one step's noise on the mean, ``z sqrt(d) / (q N)``, is at most the largest mean
clipped gradient (ratio <= 1), else its last Linear. Checked against hand-counted parameter numbers."""

from __future__ import annotations

import math

import pytest

from common.models.heads import DualHeads, HeadConfig
from common.train.adapt_release import RecordReleaseConfig, release_params, step_noise_ratio

# image head: Linear(12 -> 6) and Linear(6 -> 4): 12*6 + 6 + 6*4 + 4 = 106 numbers; the last Linear 6*4 + 4 = 28
HEADS = DualHeads(text_dim=8, image_dim=12, cfg=HeadConfig(out_dim=4, hidden=6))
ALL, LAST = 106, 28


@pytest.mark.parametrize("spec,d", [("all", ALL), ("last", LAST)])
def test_ratio_counts_only_the_image_head_numbers_that_train(spec, d):
    assert step_noise_ratio(HEADS, spec, 3.0, 0.25, 400) == pytest.approx(3.0 * math.sqrt(d) / 100.0)


def test_auto_trains_the_whole_image_head_exactly_when_its_ratio_is_at_most_one():
    z, q = 2.0, 0.5
    edge = z * math.sqrt(ALL) / q  # records at which the whole head's ratio is 1
    rc = RecordReleaseConfig(sample_rate=q)
    assert release_params(rc, HEADS, z, math.ceil(edge)) == "all"
    assert release_params(rc, HEADS, z, math.floor(edge)) == "last"
    assert release_params(rc, HEADS, 0.0, 1) == "all"  # no noise: nothing to trade against


def test_an_explicit_choice_is_kept():
    for spec in ("last", "all"):
        assert release_params(RecordReleaseConfig(train_params=spec), HEADS, 100.0, 10) == spec
