"""Grouped mode's pieces against second computations: group-restricted GMP against `gmp.propagate` on each group
alone, the packed group loss against a hand-worked case and against each group computed alone, both clipping paths
against clipped group-alone gradients, and the keys' stability."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from common.federation.trainable import set_trainable, trainable_names
from common.graph.gmp import GMPConfig, propagate
from common.graph.grouped_gmp import propagate_groups
from common.losses.cmkd import CMKDConfig
from common.losses.grouped_loss import GroupLoss, GroupPack, group_targets, mutual_in_group
from common.models.heads import DualHeads, HeadConfig
from common.train.grouped_dp import GroupClippedSGD
from common.train.grouped_keys import (GroupStats, bins_per_prototype, cap_groups, default_bins, group_keys, groups_of,
                                       record_uids, sub_bins)

DT, DI, D = 10, 12, 8


def _site(n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps = [1 + (i % 3 == 0) for i in range(n)]  # one or two captions per record
    t2i = torch.repeat_interleave(torch.arange(n), torch.tensor(caps))
    img = torch.randn(n, DI, generator=g, dtype=torch.float64)
    txt = torch.randn(len(t2i), DT, generator=g, dtype=torch.float64)
    caps_of = [[] for _ in range(n)]
    for t, r in enumerate(t2i.tolist()):
        caps_of[r].append(t)
    return img, txt, t2i, caps_of, g


def _teacher_view(pack: GroupPack, g: torch.Generator):
    r_img = F.normalize(torch.randn(*pack.img.shape[:2], D, generator=g, dtype=torch.float64), dim=-1) * pack.mi[..., None]
    r_txt = F.normalize(torch.randn(*pack.txt.shape[:2], D, generator=g, dtype=torch.float64), dim=-1) * pack.mt[..., None]
    return r_img, r_txt


def _single(pack: GroupPack, k: int) -> GroupPack:
    ri, rt = int(pack.mi[k].sum()), int(pack.mt[k].sum())
    return GroupPack(pack.img[k : k + 1, :ri], pack.txt[k : k + 1, :rt], pack.mi[k : k + 1, :ri],
                     pack.mt[k : k + 1, :rt], pack.slot[k : k + 1, :rt], pack.records[k : k + 1, :ri])


def test_group_gmp_equals_full_mode_gmp_on_each_group_alone():
    img, txt, t2i, caps_of, g = _site(n=13)
    recs, gid = torch.arange(13), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 0, 0, 2, 1, 0])
    pack = GroupPack.build(img[:, :D].float(), txt[:, :D].float(), caps_of, recs, gid)  # features as "embeddings"
    public = torch.randn(9, D, generator=g)
    cfg = GMPConfig(k_intra=2, k_cross=1, k_public=3)
    out_i, out_t = propagate_groups(pack.img, pack.mi, pack.txt, pack.mt, pack.slot, public, cfg)
    for k in range(3):
        one = _single(pack, k)
        ref_i, ref_t = propagate(one.img[0], one.txt[0], one.slot[0], public, cfg, "full")
        torch.testing.assert_close(out_i[k, : len(ref_i)], ref_i, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out_t[k, : len(ref_t)], ref_t, rtol=1e-5, atol=1e-6)
        assert out_i[k, len(ref_i) :].abs().sum() == 0 and out_t[k, len(ref_t) :].abs().sum() == 0


def test_mutual_neighbours_hand_worked():
    # 4 records on a line at 0, 1, 2, 10 (as 2-d unit-ish vectors): with k=1 only (0,1) are mutual, 2's nearest is 1
    angles = torch.tensor([0.0, 0.1, 0.25, 1.5])
    view = torch.stack([angles.cos(), angles.sin()], 1)[None]
    m = mutual_in_group(view, torch.ones(1, 4, dtype=torch.bool), 1)[0]
    assert m.nonzero().tolist() == [[0, 1], [1, 0]]
    m2 = mutual_in_group(view, torch.tensor([[True, False, True, True]]), 1)[0]  # slot 1 padded
    assert m2.nonzero().tolist() == [[0, 2], [2, 0]]
    # a floor on the cosine: cos(0.1) = 0.995 keeps (0, 1); cos(0.25) = 0.969 drops (0, 2) when slot 1 is padded
    assert mutual_in_group(view, torch.ones(1, 4, dtype=torch.bool), 1, min_sim=0.99)[0].nonzero().tolist() == [[0, 1], [1, 0]]
    assert not mutual_in_group(view, torch.tensor([[True, False, True, True]]), 1, min_sim=0.99).any()
    assert not mutual_in_group(view, torch.ones(1, 4, dtype=torch.bool), 1, min_sim=0.999).any()


def test_group_loss_hand_worked_pair_of_records():
    """Two records of one caption each, no public keys, kd 1, no pseudo-positives (k=0): plain two-way InfoNCE."""
    s_img = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0]], dtype=torch.float64), dim=1)
    s_txt = F.normalize(torch.tensor([[0.9, 0.1], [0.1, 0.8]], dtype=torch.float64), dim=1)
    out = torch.cat([s_img.reshape(1, -1), s_txt.reshape(1, -1), torch.ones(1, 4, dtype=torch.float64)], 1)
    tgt = group_targets(s_img[None], s_txt[None], torch.tensor([[0, 1]]))
    crit = GroupLoss(torch.empty(0, 2, dtype=torch.float64), torch.empty(0, 2, dtype=torch.float64),
                     CMKDConfig(tau_student=0.5, hard_negatives=0), 2, neighbours=0)
    sim = s_txt @ s_img.T / 0.5
    lt = -torch.log_softmax(sim, 1).diagonal()  # caption t against both images
    li = -torch.log_softmax(sim.T, 1).diagonal()  # image i against both captions (own pair = its caption)
    expected = 0.5 * (lt + li).sum()
    torch.testing.assert_close(crit(out, tgt), expected[None])


def _setup(spec="last", seed=0):
    img, txt, t2i, caps_of, g = _site(seed=seed)
    torch.manual_seed(seed)
    heads = DualHeads(DT, DI, HeadConfig(hidden=16, out_dim=D, input_norm=True, hidden_norm=True)).double()
    set_trainable(heads, trainable_names(heads, spec))
    recs = torch.tensor([0, 2, 3, 5, 6, 7, 8, 10])
    gid = torch.tensor([0, 1, 0, 2, 1, 0, 3, 1])  # sizes 3, 3, 1, 1
    pack = GroupPack.build(img, txt, caps_of, recs, gid)
    r_img, r_txt = _teacher_view(pack, g)
    targets = group_targets(r_img, r_txt, pack.slot)
    pub_i = F.normalize(torch.randn(6, D, generator=g, dtype=torch.float64), dim=1)
    pub_t = F.normalize(torch.randn(6, D, generator=g, dtype=torch.float64), dim=1)
    crit = GroupLoss(pub_i, pub_t, CMKDConfig(hard_negatives=3), D, neighbours=1)
    return heads, pack, targets, crit


def test_group_losses_equal_each_group_computed_alone():
    heads, pack, targets, crit = _setup()
    step = GroupClippedSGD(heads, torch.optim.SGD(heads.parameters(), lr=0.0), 1.0, 0.0, 1.0, torch.Generator())
    _, _, losses = step.clipped_sum(pack, targets, crit)
    d = D
    ri, rt = pack.img.shape[1], pack.txt.shape[1]
    for k in range(len(pack)):
        one = _single(pack, k)
        r_img = targets[k, : ri * d].reshape(ri, d)[: one.img.shape[1]][None]
        r_txt = targets[k, ri * d : (ri + rt) * d].reshape(rt, d)[: one.txt.shape[1]][None]
        _, _, alone = step.clipped_sum(one, group_targets(r_img, r_txt, one.slot), crit)
        torch.testing.assert_close(losses[k : k + 1], alone, rtol=1e-10, atol=1e-12)
    step.close()


@pytest.mark.parametrize("spec,clipping,path", [("last", "auto", "bookkeeping"), ("all", "auto", "bookkeeping"),
                                                ("all", "opacus", "opacus-ghost")])
def test_clipped_sum_equals_clipped_group_alone_gradients(spec, clipping, path):
    heads, pack, targets, crit = _setup(spec)
    trained = [p for p in heads.parameters() if p.requires_grad]
    ref_heads = copy.deepcopy(heads)
    ref = GroupClippedSGD(ref_heads, torch.optim.SGD(ref_heads.parameters(), lr=0.0), 1.0, 0.0, 1.0, torch.Generator())
    per_group = []
    for k in range(len(pack)):  # ground truth: each group's own gradient, by autograd on the group alone
        crit.reduction = "sum"
        one = _single(pack, k)
        ri, rt, d = pack.img.shape[1], pack.txt.shape[1], D
        r_img = targets[k, : ri * d].reshape(ri, d)[: one.img.shape[1]][None]
        r_txt = targets[k, ri * d : (ri + rt) * d].reshape(rt, d)[: one.txt.shape[1]][None]
        ref.model.shape = (one.img.shape[1], one.txt.shape[1])
        loss = crit(ref.model(one.inputs()), group_targets(r_img, r_txt, one.slot))
        per_group.append(torch.autograd.grad(loss, [p for p in ref_heads.parameters() if p.requires_grad]))
    norms = [math.sqrt(sum(float((t ** 2).sum()) for t in gr)) for gr in per_group]
    clip = sorted(norms)[len(norms) // 2]
    assert min(norms) < clip < max(norms)
    expected = [sum(min(1.0, clip / (n + 1e-6)) * gr[i] for gr, n in zip(per_group, norms)) for i in range(len(trained))]
    step = GroupClippedSGD(heads, torch.optim.SGD(heads.parameters(), lr=0.0), clip, 0.0, 1.0, torch.Generator(), clipping)
    assert step.path == path
    sums, got_norms, _ = step.clipped_sum(pack, targets, crit)
    for p, e in zip(trained, expected):
        torch.testing.assert_close(sums[p], e, rtol=1e-7, atol=1e-10)
    if len(got_norms):
        torch.testing.assert_close(got_norms, torch.tensor(norms, dtype=got_norms.dtype), rtol=1e-6, atol=1e-9)
    step.close()


def test_noise_has_std_z_times_two_c_over_the_normaliser():
    heads = DualHeads(DT, DI, HeadConfig(hidden=64, out_dim=D, input_norm=True, hidden_norm=True)).double()  # a few thousand noised numbers
    trained = [p for p in heads.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    step = GroupClippedSGD(heads, torch.optim.SGD(heads.parameters(), lr=1.0), 0.5, 3.0, 4.0, torch.Generator().manual_seed(1))
    step.step(None, None, None)  # an empty batch: the noise alone
    moved = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, trained)])
    assert len(moved) > 2000
    assert abs(float(moved.std()) / (3.0 * 2 * 0.5 / 4.0) - 1) < 0.05  # (about 3 standard errors) std z * 2C / normaliser = 0.75
    step.close()


def test_keys_are_functions_of_the_record_alone():
    img, txt, t2i, caps_of, g = _site(n=30)
    uids = record_uids(img, b"k")
    assert torch.equal(record_uids(img[[5, 3]], b"k"), uids[[5, 3]])  # a record's uid does not see the others
    assert not torch.equal(record_uids(img, b"other key"), uids)
    views, protos = torch.randn(30, 4, generator=g), torch.randn(5, 4, generator=g)
    keys = group_keys(views, protos, uids, step=7, bins=3)
    sub = group_keys(views[10:20], protos, uids[10:20], step=7, bins=3)
    assert torch.equal(sub, keys[10:20])
    assert keys.min() >= 0 and keys.max() < 15
    spread = torch.bincount(sub_bins(uids, 3, 4), minlength=4)
    assert (spread > 0).all()  # 30 records over 4 bins: every bin used
    assert not torch.equal(sub_bins(uids, 3, 4), sub_bins(uids, 4, 4))  # the bins change with the step
    ids = groups_of(torch.tensor([7, 3, 7, 9]))
    assert ids.tolist() == [1, 0, 1, 2]
    assert default_bins(512, 16, 8) == 4 and default_bins(10, 16, 8) == 1
    per_cell = bins_per_prototype(torch.tensor([400.0, -3.0, 8.0, 1e6]), 0.25, 8)  # noisy counts: public
    assert per_cell.tolist() == [12, 1, 1, 64]
    keys = group_keys(views, protos, uids, 7, torch.tensor([1, 2, 1, 3, 2]))  # cells own key ranges 0, 1-2, 3, 4-6, 7-8
    cell = (F.normalize(views.double(), dim=1) @ F.normalize(protos.double(), dim=1).T).argmax(1)
    lo, hi = torch.tensor([0, 1, 3, 4, 7])[cell], torch.tensor([0, 2, 3, 6, 8])[cell]
    assert ((keys >= lo) & (keys <= hi)).all()


def test_group_stats_summary():
    st = GroupStats.empty()
    st.add(torch.tensor([0, 0, 1, 2, 2, 2]))
    st.add(torch.tensor([], dtype=torch.long))
    s = st.summary()
    assert s["group_size"]["histogram"] == {"1": 1, "2": 1, "3": 1}
    assert s["groups_per_step"] == {"mean": 1.5, "min": 0, "max": 3} and s["steps"] == 2


def test_cap_keeps_the_smallest_hashes_of_each_group_and_reads_that_group_alone():
    img, *_ = _site(n=12)
    uids = record_uids(img, b"cap")
    gid = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 1, 2, 2, 2])
    keep = cap_groups(gid, uids, 3, cap=2)
    assert [int(keep[gid == g].sum()) for g in range(3)] == [2, 2, 2]
    assert cap_groups(gid, uids, 3, cap=0).all() and cap_groups(gid, uids, 3, cap=5).all()
    # brute force: the kept members of a group are its 2 smallest by the (record, step) hash, and removing another
    # group's members (or adding one) changes nothing in this group
    for g in range(3):
        members = (gid == g).nonzero().squeeze(1)
        alone = cap_groups(torch.zeros(len(members), dtype=torch.long), uids[members], 3, cap=2)
        assert torch.equal(alone, keep[members])
    assert not torch.equal(cap_groups(gid, uids, 4, cap=2), keep)  # the kept members change with the step


def test_lsh_sub_bins_keep_near_views_together_and_read_each_record_alone():
    g = torch.Generator().manual_seed(5)
    protos = F.normalize(torch.randn(3, 16, generator=g), dim=1)
    base = F.normalize(torch.randn(40, 16, generator=g), dim=1)
    twins = F.normalize(base + 1e-4 * torch.randn(40, 16, generator=g), dim=1)  # a person's other photo: nearly the same view
    uids = torch.arange(80)
    views = torch.cat([base, twins])
    keys = group_keys(views, protos, uids, step=3, bins=torch.tensor([4, 2, 1]), sub_bin="lsh")
    assert (keys[:40] == keys[40:]).float().mean() > 0.95  # near views share their group
    assert torch.equal(group_keys(views[5:9], protos, uids[5:9], 3, torch.tensor([4, 2, 1]), "lsh"), keys[5:9])
    cell = (views @ protos.T).argmax(1)
    sub = keys - cell * 4  # cells own 4 key slots (the largest cell's 2 bits)
    assert ((sub >= 0) & (sub < torch.tensor([4, 2, 1])[cell])).all()
    assert len(torch.unique(keys[cell == 0])) > 1  # a 4-bin cell is split
    assert not torch.equal(group_keys(views, protos, uids, 4, torch.tensor([4, 2, 1]), "lsh"), keys)  # new planes per step
