"""Record-level DP-SGD: both clipping paths against clipped batch-of-one gradients (the ground truth)."""

from __future__ import annotations

import copy

import pytest
import torch

from common.federation.trainable import set_trainable, trainable_names
from common.losses.cmkd import CMKDConfig
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads, HeadConfig
from common.train.bookkeeping_clip import BookkeepingClipper, clippable_layers
from common.train.record_level_dp import RecordLevelConfig, train_record_level
from common.train.record_pack import PackedStudent, RecordLoss, RecordPack, pack_texts, teacher_targets

DT, DI = 10, 12


def _setup(n: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    caps = torch.tensor([1 + (i % 2) for i in range(n)])  # records with one and with two captions (padding)
    t2i = torch.repeat_interleave(torch.arange(n), caps)
    fs = FeatureSet(image_feats=torch.randn(n, DI, generator=g, dtype=torch.float64),
                    text_feats=torch.randn(len(t2i), DT, generator=g, dtype=torch.float64), text_to_image=t2i,
                    image_pids=torch.full((n,), -1), text_pids=torch.full((len(t2i),), -1),
                    image_paths=[""] * n, captions=[""] * len(t2i))
    torch.manual_seed(seed)
    heads = DualHeads(DT, DI, HeadConfig(hidden=16, out_dim=8, input_norm=True, hidden_norm=True)).double()
    pack = RecordPack.from_features(fs)
    with torch.no_grad():
        t, v = heads.text(fs.text_feats), heads.image(fs.image_feats)
        t = t + 0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64)  # a teacher that is not the student
        v = v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64)
    targets = teacher_targets(v, pack_texts(t, t2i, pack))
    crit = RecordLoss(torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1),
                      torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1),
                      CMKDConfig(hard_negatives=4), 8)
    return heads, pack, targets, crit


def _clipped_batch_of_one(heads, pack, targets, crit, clip: float | None) -> tuple[dict, list[float], float]:
    """(Sum over records of each record's own gradient (a batch of one), clipped to `clip` over all trained
    params, and the records' norms); clip None = the median norm, so some records are clipped and some not."""
    model = PackedStudent(heads, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    x = pack.inputs()
    names = [n for n, p in heads.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in heads.named_parameters() if p.requires_grad}
    crit.reduction = "sum"
    per_record = []
    for r in range(len(pack)):
        heads.zero_grad(set_to_none=True)
        crit(model(x[r : r + 1]), targets[r : r + 1]).backward()
        per_record.append({n: p.grad.clone() for n, p in heads.named_parameters() if n in names})
    norms = [float(torch.sqrt(sum((g ** 2).sum() for g in grads.values()))) for grads in per_record]
    clip = sorted(norms)[len(norms) // 2] if clip is None else clip
    for grads, norm in zip(per_record, norms):
        for n in names:
            total[n] += min(1.0, clip / (norm + 1e-6)) * grads[n]
    return total, norms, clip


@pytest.mark.parametrize("spec,path,clipping", [
    ("last", "bookkeeping", "auto"), ("text_head.net.1,image_head.net.4", "bookkeeping", "auto"),
    ("all", "bookkeeping", "auto"), ("norms+biases", "bookkeeping", "auto"), ("image_head.net.0", "bookkeeping", "auto"),
    ("all", "opacus-ghost", "opacus"), ("last", "opacus-ghost", "opacus")])
def test_one_step_equals_clipped_batch_of_one_sum(spec, path, clipping):
    heads, pack, targets, crit = _setup()
    set_trainable(heads, trainable_names(heads, spec))
    expected, norms, clip = _clipped_batch_of_one(copy.deepcopy(heads), pack, targets, crit, None)
    assert min(norms) < clip < max(norms)  # some records are clipped, others are not
    before = {n: p.detach().clone() for n, p in heads.named_parameters()}
    cfg = RecordLevelConfig(noise_multiplier=0.0, clip_norm=clip, sample_rate=1.0, steps=1, lr=1.0, momentum=0.0,
                            clipping=clipping)
    history, stats = train_record_level(heads, pack, targets, crit, cfg, torch.Generator().manual_seed(0))
    assert stats["clipping"] == path and history == [(0.0, 1.0, 1)]
    for n, p in heads.named_parameters():
        if n in expected:  # SGD lr 1: the step is minus the released gradient, sum / expected batch (= all 9)
            torch.testing.assert_close(before[n] - p.detach(), expected[n] / len(pack), rtol=1e-7, atol=1e-10)
        else:
            assert torch.equal(before[n], p.detach())


@pytest.mark.parametrize("spec", ["last", "all"])
def test_norms_match_batch_of_one_and_some_records_are_clipped(spec):
    heads, pack, targets, crit = _setup(seed=1)
    set_trainable(heads, trainable_names(heads, spec))
    model = PackedStudent(heads, pack.image.shape[1], pack.captions.shape[2], pack.captions.shape[1])
    layers = clippable_layers(model, [p for p in heads.parameters() if p.requires_grad])
    clipper = BookkeepingClipper(layers)
    crit.reduction = "none"
    _, norms = clipper.clipped_sum(crit(model(pack.inputs()), targets), clip=1.0)
    clipper.close()
    crit.reduction = "sum"
    for r in range(len(pack)):
        heads.zero_grad(set_to_none=True)
        crit(model(pack.inputs()[r : r + 1]), targets[r : r + 1]).backward()
        ref = torch.sqrt(sum((p.grad ** 2).sum() for p in heads.parameters() if p.requires_grad))
        assert float(norms[r]) == pytest.approx(float(ref), rel=1e-9)


def test_noise_has_the_calibrated_scale():
    """With a zero loss gradient the released update is the noise alone: std sigma*C/E[B] per coordinate."""
    heads, pack, targets, crit = _setup(n=40)
    set_trainable(heads, trainable_names(heads, "last"))
    crit.cfg = CMKDConfig(hard_negatives=4)
    before = {n: p.detach().clone() for n, p in heads.named_parameters() if p.requires_grad}
    cfg = RecordLevelConfig(noise_multiplier=3.0, clip_norm=1e-9, sample_rate=0.5, steps=1, lr=1.0, momentum=0.0)
    train_record_level(heads, pack, targets, crit, cfg, torch.Generator().manual_seed(0))
    delta = torch.cat([(before[n] - p.detach()).flatten() for n, p in heads.named_parameters() if n in before])
    assert float(delta.std()) == pytest.approx(3.0 * 1e-9 / 20, rel=0.15)  # clip ~0: the clipped sum vanishes


def test_parameters_outside_linear_and_layernorm_layers_are_not_claimed():
    heads, *_ = _setup()
    model = PackedStudent(heads, DI, DT, 2)
    assert clippable_layers(model, [heads.text_head.net[0].weight]) == [heads.text_head.net[0]]  # a LayerNorm
    assert clippable_layers(model, [heads.text_head.net[4].weight]) == [heads.text_head.net[4]]
    stray = torch.nn.Parameter(torch.zeros(3))  # in no layer of the model: Opacus' path must take over
    assert clippable_layers(model, [heads.text_head.net[4].weight, stray]) is None
    conv = torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1), torch.nn.LayerNorm(4))
    assert clippable_layers(conv, list(conv.parameters())) is None
    assert clippable_layers(conv, list(conv[1].parameters())) == [conv[1]]


def test_unknown_clipping_is_refused():
    heads, pack, targets, crit = _setup()
    set_trainable(heads, trainable_names(heads, "last"))
    with pytest.raises(ValueError, match="clipping"):
        train_record_level(heads, pack, targets, crit, RecordLevelConfig(noise_multiplier=0.0, clipping="ghost"),
                           torch.Generator().manual_seed(0))
