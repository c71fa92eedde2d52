"""What adaptation returns: a moving average of the student's weights, computed here a second way.

Ground truth: the trainable weights after every optimiser step are recorded
(in the optimiser's parameter order), and the exponential moving average
``a_k = m * a_(k-1) + (1 - m) * w_k`` from the starting weights is
recomputed by the test; the heads `adapt` and `pair_finetune` return must
equal it, and with averaging off they must equal the last step's weights.
"""

from __future__ import annotations

import pytest
import torch

from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads, HeadConfig
from common.train.adapt import AdaptConfig, adapt
from common.train.pair_finetune import PairFinetuneConfig, pair_finetune
from common.train.site_context import PublicBank

DI, DT, D = 12, 10, 8


def _site(n=24, seed=3):
    g = torch.Generator().manual_seed(seed)
    fs = FeatureSet(image_feats=torch.randn(n, DI, generator=g), text_feats=torch.randn(2 * n, DT, generator=g),
                    text_to_image=torch.arange(n).repeat_interleave(2), image_pids=torch.full((n,), -1),
                    text_pids=torch.full((2 * n,), -1), image_paths=[""] * n, captions=[""] * (2 * n))
    return fs, PublicBank(torch.randn(16, DI, generator=g), torch.randn(16, DT, generator=g))


def _heads(seed=0):
    torch.manual_seed(seed)
    return DualHeads(DT, DI, HeadConfig(out_dim=D, hidden=16))


@pytest.fixture
def steps(monkeypatch):
    """The trainable weights after every AdamW step, as lists of tensors in the optimiser's order."""
    seen: list[list[torch.Tensor]] = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        out = real_step(self, *a, **k)
        seen.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return seen


def _moving_average(start: list[torch.Tensor], seen: list[list[torch.Tensor]], m: float) -> list[torch.Tensor]:
    avg = [t.detach().clone() for t in start]
    for w in seen:
        avg = [m * a + (1 - m) * x for a, x in zip(avg, w)]
    return avg


def _close(a, b) -> bool:
    return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_full_mode_returns_the_moving_average_of_the_students_steps(steps):
    fs, bank = _site()
    teacher = _heads()
    cfg = AdaptConfig(mode="full", epochs=3, batch_size=8, teacher_rounds=1, momentum=0.6, average=0.9)
    kept, log = adapt(teacher, fs, bank, cfg)
    assert len(steps) == 9  # 3 epochs x 24 // 8 records
    assert _close(list(kept.parameters()), _moving_average(list(teacher.parameters()), steps, 0.9))
    assert not _close(list(kept.parameters()), steps[-1])
    assert "moving average (momentum 0.9)" in log["selection"]
    steps.clear()
    last, log = adapt(teacher, fs, bank, AdaptConfig(**{**cfg.__dict__, "average": None}))
    assert _close(list(last.parameters()), steps[-1]) and "last student" in log["selection"]


def test_per_record_mode_averages_the_trained_head_and_keeps_the_frozen_one(steps):
    fs, bank = _site()
    teacher = _heads()
    cfg = AdaptConfig(mode="per_record", epochs=2, batch_size=8, prototypes=0, text_phase=0.0, teacher_rounds=1, average=0.8,
                      whiten=0.0)
    kept, _ = adapt(teacher, fs, bank, cfg)
    assert len(steps) == 6
    assert _close(list(kept.image_head.parameters()), _moving_average(list(teacher.image_head.parameters()), steps, 0.8))
    assert _close(list(kept.text_head.parameters()), list(teacher.text_head.parameters()))


def test_out_of_range_average_is_refused():
    fs, bank = _site()
    with pytest.raises(ValueError, match="average"):
        adapt(_heads(), fs, bank, AdaptConfig(average=1.0))


def test_pair_finetune_ema_is_the_moving_average_of_its_steps(steps):
    fs, _ = _site()
    teacher = _heads()
    plain, _ = pair_finetune(teacher, fs, PairFinetuneConfig(epochs=2, batch_size=8))
    last = steps[-1]
    steps.clear()
    averaged, _ = pair_finetune(teacher, fs, PairFinetuneConfig(epochs=2, batch_size=8, ema=0.7))
    assert len(steps) == 2 * len(range(0, len(fs.text_feats) - 1, 8))  # every caption once per epoch, 8 per step
    assert _close(last, steps[-1]) and _close(list(plain.parameters()), last)  # same trajectory; plain = last step
    assert _close(list(averaged.parameters()), _moving_average(list(teacher.parameters()), steps, 0.7))
    assert not _close(list(averaged.parameters()), last)


def test_pair_finetune_ema_out_of_range_is_refused():
    fs, _ = _site()
    with pytest.raises(ValueError, match="ema"):
        pair_finetune(_heads(), fs, PairFinetuneConfig(ema=1.0))
