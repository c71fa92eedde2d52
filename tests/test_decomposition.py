"""Per-record mode decomposes over records; full mode does not.

Ground truth, as Opacus tests its grad samplers: the per-sample gradients of a
batch (Opacus GradSampleModule, hooks mode, sum reduction) must equal the
gradients of batch-of-one runs. For per-record CMKD they do; for full-mode
CMKD (in-batch keys) they do not, which is why record-level DP refuses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from common.graph.gmp import GMPConfig, propagate
from common.losses.cmkd import CMKDConfig, Side, per_record_losses
from common.models.heads import DualHeads, HeadConfig
from common.train.record_pack import PackedStudent, RecordLoss, RecordPack, pack_texts, teacher_targets

DI, DT, D = 12, 10, 8


def _setup(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    heads = DualHeads(DT, DI, HeadConfig(out_dim=D, hidden=16, input_norm=True, hidden_norm=True)).double()  # float64: exact comparisons
    image = torch.randn(n, DI, generator=g, dtype=torch.float64)
    caps = torch.randn(n, 2, DT, generator=g, dtype=torch.float64)
    mask = torch.ones(n, 2, dtype=torch.float64)
    mask[1, 1] = 0.0  # a record with one caption
    caps[1, 1] = 0.0
    pack = RecordPack(image, caps, mask)
    r_img = F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=-1)
    r_txt = F.normalize(torch.randn(n, 2, D, generator=g, dtype=torch.float64), dim=-1)
    pub_i = F.normalize(torch.randn(20, D, generator=g, dtype=torch.float64), dim=-1)
    pub_t = F.normalize(torch.randn(20, D, generator=g, dtype=torch.float64), dim=-1)
    return heads, pack, teacher_targets(r_img, r_txt), pub_i, pub_t


def _per_sample_grads(model, crit, x, y):
    gsm = GradSampleModule(model, loss_reduction="sum")
    gsm.zero_grad()
    crit.reduction = "sum"
    crit(gsm(x), y).backward()
    out = {n: p.grad_sample.clone() for n, p in gsm.named_parameters() if p.requires_grad}
    gsm._close()
    return out


def _single_grads(model, crit, x, y):
    model.zero_grad()
    crit.reduction = "sum"
    crit(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_per_record_loss_gradients_equal_batch_of_one():
    heads, pack, targets, pub_i, pub_t = _setup()
    model = PackedStudent(heads, DI, DT, 2)
    crit = RecordLoss(pub_i, pub_t, CMKDConfig(hard_negatives=5), D)
    x = pack.inputs()
    batch = _per_sample_grads(model, crit, x, targets)
    for i in range(len(x)):
        single = _single_grads(model, crit, x[i : i + 1], targets[i : i + 1])
        for name, g in single.items():
            torch.testing.assert_close(batch["_module." + name][i], g, rtol=1e-9, atol=1e-12)


def test_per_record_loss_values_independent_of_batch():
    heads, pack, targets, pub_i, pub_t = _setup()
    crit = RecordLoss(pub_i, pub_t, CMKDConfig(hard_negatives=5), D, reduction="none")
    model = PackedStudent(heads, DI, DT, 2)
    x = pack.inputs()
    full = crit(model(x), targets)
    alone = torch.cat([crit(model(x[i : i + 1]), targets[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(full, alone)


def _full_mode_loss(heads, pack, r_img, r_txt, pub_i, pub_t):
    """Full-mode CMKD: the batch's refined features are candidates (keys) for every record."""
    n = len(pack)
    rec = torch.arange(n).repeat_interleave(2)
    s_img = heads.image(pack.image)
    s_txt = heads.text(pack.captions.reshape(-1, DT))
    rt = r_txt.reshape(-1, D)
    s_pair = F.normalize(s_txt.reshape(n, 2, D).sum(1), dim=-1)
    r_pair = F.normalize(r_txt.sum(1), dim=-1)
    cfg = CMKDConfig(hard_negatives=5)
    none = torch.arange(n)[:0]
    ts = Side(s_txt, s_img[rec], rt, r_img[rec], s_img, r_img, torch.arange(n), r_img[:0], none, pub_i, rec)
    is_ = Side(s_img, s_pair, r_img, r_pair, s_txt, rt, rec, rt[:0], none, pub_t, torch.arange(n))
    return per_record_losses(ts, is_, rec, n, cfg)


def test_full_mode_does_not_decompose():
    heads, pack, _, pub_i, pub_t = _setup()
    pack.mask[:] = 1.0
    g = torch.Generator().manual_seed(1)
    r_img = F.normalize(torch.randn(len(pack), D, generator=g, dtype=torch.float64), dim=-1)
    r_txt = F.normalize(torch.randn(len(pack), 2, D, generator=g, dtype=torch.float64), dim=-1)
    heads.zero_grad()
    _full_mode_loss(heads, pack, r_img, r_txt, pub_i, pub_t)[0].backward()
    with_others = [p.grad.clone() for p in heads.parameters()]
    heads.zero_grad()
    one = RecordPack(pack.image[:1], pack.captions[:1], pack.mask[:1])
    _full_mode_loss(heads, one, r_img[:1], r_txt[:1], pub_i, pub_t)[0].backward()
    alone = [p.grad.clone() for p in heads.parameters()]
    diff = max(float((a - b).abs().max()) for a, b in zip(with_others, alone))
    assert diff > 1e-3, "record 0's full-mode gradient should depend on the other records"


def test_gmp_per_record_refinement_depends_on_own_record_only():
    g = torch.Generator().manual_seed(2)
    n = 10
    image = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    text = F.normalize(torch.randn(2 * n, D, generator=g), dim=-1)
    t2i = torch.arange(n).repeat_interleave(2)
    public = F.normalize(torch.randn(30, D, generator=g), dim=-1)
    cfg = GMPConfig()
    ri, rt = propagate(image, text, t2i, public, cfg, "per_record")
    for i in (0, 3, 9):
        ri1, rt1 = propagate(image[i : i + 1], text[2 * i : 2 * i + 2], torch.zeros(2, dtype=torch.long), public, cfg, "per_record")
        torch.testing.assert_close(ri1[0], ri[i])
        torch.testing.assert_close(rt1, rt[2 * i : 2 * i + 2])
    fi, _ = propagate(image, text, t2i, public, cfg, "full")
    fi1, _ = propagate(image[:1], text[:2], torch.zeros(2, dtype=torch.long), public, cfg, "full")
    assert (fi[0] - fi1[0]).abs().max() > 1e-3, "full-mode refinement should depend on other records"


def test_pack_texts_round_trip():
    t2i = torch.tensor([0, 0, 1, 2, 2])
    r = torch.arange(5.0).unsqueeze(1).repeat(1, D)
    pack = RecordPack(torch.zeros(3, DI), torch.zeros(3, 2, DT), torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    out = pack_texts(r, t2i, pack)
    assert out[0, 1, 0] == 1 and out[1, 0, 0] == 2 and out[1, 1].abs().sum() == 0 and out[2, 1, 0] == 4


def test_record_view_for_neighbour_groups():
    """Records are grouped by their mean refined caption, their refined image, or both (hand-worked)."""
    import math

    import pytest

    from common.train.graph_batches import neighbour_groups, record_view

    r_img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    r_txt = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # record 0 has two captions
    t2i = torch.tensor([0, 0, 1, 2])
    assert torch.equal(record_view(r_img, r_txt, t2i, "image"), r_img)
    text = record_view(r_img, r_txt, t2i, "text")
    assert torch.allclose(text, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    both = record_view(r_img, r_txt, t2i, "image+text")
    s = 1 / math.sqrt(2)
    assert torch.allclose(both, torch.tensor([[s, 0, 0, s], [0, s, s, 0], [s, 0, 0, s]]))
    # by text, record 0's nearest is record 2 (same caption direction), not record 1
    groups = neighbour_groups(text, 2)
    assert groups[0].tolist() == [2] and groups[2].tolist() == [0]
    with pytest.raises(ValueError, match="group_by"):
        record_view(r_img, r_txt, t2i, "pixels")


def test_per_record_loss_reads_captions_not_the_teachers_image_view():
    # the teacher's view of a record in per-record mode is its captions: changing the refined teacher image
    # embeddings must not change any loss, changing a refined caption must
    heads, pack, targets, pub_i, pub_t = _setup()
    model = PackedStudent(heads, DI, DT, 2)
    crit = RecordLoss(pub_i, pub_t, CMKDConfig(hard_negatives=5), D, reduction="none")
    base = crit(model(pack.inputs()), targets)
    other_img = targets.clone()
    other_img[:, :D] = F.normalize(torch.randn(len(pack), D, dtype=torch.float64), dim=-1)
    assert torch.allclose(crit(model(pack.inputs()), other_img), base)
    other_cap = targets.clone()
    other_cap[0, D : 2 * D] = F.normalize(torch.randn(D, dtype=torch.float64), dim=-1)
    assert not torch.allclose(crit(model(pack.inputs()), other_cap)[0], base[0])


def _tiny_site(n=24, seed=3):
    from common.models.feature_cache import FeatureSet
    from common.train.site_context import PublicBank

    g = torch.Generator().manual_seed(seed)
    fs = FeatureSet(image_feats=torch.randn(n, DI, generator=g), text_feats=torch.randn(2 * n, DT, generator=g),
                    text_to_image=torch.arange(n).repeat_interleave(2), image_pids=torch.full((n,), -1),
                    text_pids=torch.full((2 * n,), -1), image_paths=[""] * n, captions=[""] * (2 * n))
    return fs, PublicBank(torch.randn(16, DI, generator=g), torch.randn(16, DT, generator=g))


def _changed(a, b, prefix):
    return [n for (n, p), q in zip(a.named_parameters(), b.parameters()) if n.startswith(prefix) and not torch.equal(p, q)]


def test_per_record_image_phase_keeps_the_teachers_text_head():
    from common.train.adapt import AdaptConfig, adapt

    fs, bank = _tiny_site()
    teacher = DualHeads(DT, DI, HeadConfig(out_dim=D, hidden=16, input_norm=True, hidden_norm=True))
    cfg = AdaptConfig(mode="per_record", epochs=2, batch_size=8, prototypes=2, prototype_noise=1.0, text_phase=0.0,
                      whiten=0.0)  # whitening (tested in test_site_whitening.py) would change both last layers
    student, _ = adapt(teacher, fs, bank, cfg)
    assert _changed(student, teacher, "text_head.") == []
    assert _changed(student, teacher, "image_head.")


def test_per_record_text_phase_trains_the_text_head_only():
    from common.train.adapt import AdaptConfig, adapt

    fs, bank = _tiny_site()
    teacher = DualHeads(DT, DI, HeadConfig(out_dim=D, hidden=16, input_norm=True, hidden_norm=True))
    cfg = AdaptConfig(mode="per_record", epochs=2, batch_size=8, prototypes=0, text_phase=1.0, whiten=0.0)
    student, _ = adapt(teacher, fs, bank, cfg)
    assert _changed(student, teacher, "image_head.") == []
    assert _changed(student, teacher, "text_head.")


def test_caption_to_image_loss_hand_worked_and_per_record():
    from common.losses.caption_to_image import caption_to_image_losses

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], requires_grad=True)  # record 0: exact and orthogonal
    rec = torch.tensor([0, 0, 1])
    losses = caption_to_image_losses(txt, img, rec, 2)
    assert torch.allclose(losses, torch.tensor([0.5, 0.2]))  # (0 + 1) / 2 and 1 - 0.8
    losses.sum().backward()
    # record 1's loss reads only its own caption and image
    assert torch.equal(txt.grad[2], -img[1]) and torch.equal(txt.grad[0], -img[0] / 2)


def test_caption_to_image_public_negatives_hand_worked():
    import math

    from common.losses.caption_to_image import caption_to_image_losses

    img = torch.tensor([[1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # the own image's nearest public image is keys[0] (cos 0 vs -1)
    rec = torch.tensor([0])
    one = caption_to_image_losses(txt, img, rec, 1, keys, hard_negatives=1, weight=0.5, tau=1.0)
    assert torch.allclose(one, torch.tensor([0.5 * math.log(1 + math.exp(-1))]))  # cos term 0; CE over (1, 0)
    both = caption_to_image_losses(txt, img, rec, 1, keys, hard_negatives=2, weight=1.0, tau=1.0)
    assert torch.allclose(both, torch.tensor([math.log(1 + math.exp(-1) + math.exp(-2))]))
    assert torch.equal(caption_to_image_losses(txt, img, rec, 1, keys, weight=0.0), caption_to_image_losses(txt, img, rec, 1))


def test_caption_to_image_with_public_negatives_decomposes():
    """Per-record gradients of a batch equal batch-of-one gradients (the text head's parameters)."""
    from common.losses.caption_to_image import caption_to_image_losses

    g = torch.Generator().manual_seed(0)
    heads = DualHeads(DT, DI, HeadConfig(out_dim=D, hidden=16, input_norm=True, hidden_norm=True)).double()
    caps = torch.randn(10, DT, generator=g, dtype=torch.float64)
    rec = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5, 5])
    img = F.normalize(torch.randn(6, D, generator=g, dtype=torch.float64), dim=-1)
    keys = F.normalize(torch.randn(30, D, generator=g, dtype=torch.float64), dim=-1)
    params = list(heads.text_head.parameters())

    def grads(loss):
        return torch.autograd.grad(loss, params, retain_graph=True)

    batch = caption_to_image_losses(heads.text(caps), img, rec, 6, keys, hard_negatives=5)
    for r in range(6):
        mine = rec == r
        alone = caption_to_image_losses(heads.text(caps[mine]), img[r : r + 1], torch.zeros(int(mine.sum()), dtype=torch.long), 1,
                                        keys, hard_negatives=5)
        torch.testing.assert_close(batch[r : r + 1], alone)
        for a, b in zip(grads(batch[r]), grads(alone[0])):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_teacher_rounds_continue_from_the_previous_rounds_student_as_teacher():
    """Two rounds equal one round, then a second one-round run whose teacher is the first run's student."""
    import copy

    from common.train.adapt import AdaptConfig, adapt

    fs, bank = _tiny_site()
    teacher = DualHeads(DT, DI, HeadConfig(out_dim=D, hidden=16, input_norm=True, hidden_norm=True))
    cfg = AdaptConfig(mode="per_record", epochs=2, batch_size=8, prototypes=2, prototype_noise=1.0, text_phase=0.5,
                      teacher_rounds=2, whiten=0.0)
    seen = []
    two, log = adapt(teacher, fs, bank, cfg, progress=lambda done, total, info: seen.append((done, total, info["round"])))
    one_cfg = AdaptConfig(**{**cfg.__dict__, "teacher_rounds": 1})
    first, first_log = adapt(teacher, fs, bank, one_cfg)
    second_teacher = copy.deepcopy(first)
    for p in second_teacher.parameters():
        p.requires_grad_(True)
    second, _ = adapt(second_teacher, fs, bank, one_cfg)
    assert all(torch.equal(a, b) for a, b in zip(two.state_dict().values(), second.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(two.state_dict().values(), first.state_dict().values()))
    # both rounds' prototype releases are in the history the accountant reads
    assert len(log["privacy_history"]) == 2 * len(first_log["privacy_history"]) > 0
    assert seen[-1][0] == seen[-1][1] and {r for *_, r in seen} == {1, 2}
    assert [e["round"] for e in log["epochs"]] == [1, 1, 2, 2]
