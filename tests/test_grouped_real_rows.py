"""Grouped mode computes on the real slots of a packed batch only: the same numbers as the padded computation.

Each test keeps the padded computation the fast code replaced (copied from the
code before the change) as the reference, and checks the new code against it
on random inputs with padding; the last one runs a short seeded grouped
adaptation without noise both ways and compares the heads.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import common.losses.grouped_loss as grouped_loss
import common.train.grouped_site as grouped_site
from common.graph.gmp import GMPConfig
from common.graph.grouped_gmp import _knn_block, propagate_groups
from common.losses.cmkd import CMKDConfig
from common.losses.grouped_loss import GroupLoss, GroupPack, group_targets
from common.models.feature_cache import FeatureSet
from common.models.heads import DualHeads, HeadConfig
from common.train.adapt_config import AdaptConfig, resolved
from common.train.bookkeeping_clip import BookkeepingClipper, clippable_layers
from common.train.grouped_adapt import adapt_grouped
from common.train.grouped_config import GroupedConfig
from common.train.grouped_dp import GroupClippedSGD
from common.train.site_context import PublicBank

DT, DI, D = 10, 12, 8


# ---- the padded computations before the change (references) ----

@torch.no_grad()
def ref_propagate_groups(img, mi, txt, mt, slot, public, cfg):
    img = F.normalize(img, dim=-1) * mi[..., None]
    txt = F.normalize(txt, dim=-1) * mt[..., None]
    g, ri, rt = img.shape[0], img.shape[1], txt.shape[1]
    n = ri + rt
    x0 = torch.cat([img, txt], 1)
    mask = torch.cat([mi, mt], 1)
    w = torch.diag_embed(x0.new_ones(g, n))
    pair = x0.new_zeros(g, rt, ri).scatter_(2, slot[..., None], cfg.pair_weight) * mt[..., None]
    w[:, ri:, :ri] += pair
    w[:, :ri, ri:] += pair.transpose(1, 2)
    blocks = [(img, mi, img, mi, cfg.k_intra, True, 0, 0), (txt, mt, txt, mt, cfg.k_intra, True, ri, ri),
              (txt, mt, img, mi, cfg.k_cross, False, ri, 0), (img, mi, txt, mt, cfg.k_cross, False, 0, ri)]
    for x, mx, y, my, k, same, ox, oy in blocks:
        e = _knn_block(x, mx, y, my, k, cfg.min_sim, same)
        w[:, ox : ox + x.shape[1], oy : oy + y.shape[1]] += e
        w[:, oy : oy + y.shape[1], ox : ox + x.shape[1]] += e.transpose(1, 2)
    pub_sum = x0.new_zeros(g, n, x0.shape[2])
    pub_deg = x0.new_zeros(g, n)
    kp = min(cfg.k_public, len(public))
    if kp > 0:
        pub = F.normalize(public.to(x0.dtype), dim=-1)
        val, idx = (x0 @ pub.T).topk(kp, dim=2)
        wp = torch.where(val > cfg.min_sim, val, torch.zeros_like(val)) * cfg.public_weight * mask[..., None]
        pub_sum = (wp[..., None] * pub[idx]).sum(2)
        pub_deg = wp.sum(2)
    deg = w.sum(2) + pub_deg
    x = x0
    for _ in range(cfg.steps):
        x = (1 - cfg.alpha) * (w @ x + pub_sum) / deg[..., None] + cfg.alpha * x0
    x = F.normalize(x, dim=-1) * mask[..., None]
    return x[:, :ri], x[:, ri:]


def ref_side(q_s, own_s, cand_s, q_t, own_t, cand_t, cand_valid, positive, public, qmask, cfg, use_positives):
    g, nq = q_s.shape[:2]
    h = min(cfg.hard_negatives, len(public))
    parts_s = [(q_s * own_s).sum(-1, keepdim=True), q_s @ cand_s.transpose(1, 2)]
    parts_t = [(q_t * own_t).sum(-1, keepdim=True), q_t @ cand_t.transpose(1, 2)]
    masks = [torch.zeros(g, nq, 1, dtype=torch.bool), ~cand_valid]
    if h:
        t_pub = q_t @ public.T
        hard = t_pub.topk(h, dim=2).indices
        parts_s.append((q_s @ public.T).gather(2, hard))
        parts_t.append(t_pub.gather(2, hard))
        masks.append(torch.zeros(g, nq, h, dtype=torch.bool))
    mask = torch.cat(masks, 2)
    logit_s = (torch.cat(parts_s, 2) / cfg.tau_student).masked_fill(mask, float("-inf"))
    if use_positives:
        allowed = torch.cat([torch.ones(g, nq, 1, dtype=torch.bool), positive & cand_valid,
                             torch.zeros(g, nq, mask.shape[2] - 1 - cand_s.shape[1], dtype=torch.bool)], 2)
        logit_t = torch.zeros_like(logit_s).masked_fill(~allowed, float("-inf"))
    else:
        logit_t = (torch.cat(parts_t, 2) / cfg.tau_teacher).masked_fill(mask, float("-inf"))
    target = cfg.kd_weight * F.softmax(logit_t.detach(), 2)
    target[..., 0] += 1.0 - cfg.kd_weight
    log_p = F.log_softmax(logit_s, 2).masked_fill(mask, 0.0)
    return -(target * log_p).sum(2) * qmask


def padded_forward(self, pack):
    """`GroupClippedSGD`'s forward before the change: `GroupedStudent` on every slot, the clipper's padded layout."""
    return self.model(pack.inputs()), None


def use_padded(monkeypatch) -> None:
    monkeypatch.setattr(grouped_site, "propagate_groups", ref_propagate_groups)
    monkeypatch.setattr(grouped_site, "_real_slots", lambda head, x, mask: head(x))
    monkeypatch.setattr(grouped_loss, "_side", ref_side)
    monkeypatch.setattr(GroupClippedSGD, "_real_rows_forward", padded_forward)


# ---- random packed batches ----

def _pack(seed: int, groups: int = 5, dtype=torch.float64):
    """Records with 1-3 captions in groups of 1..6 (so most groups are padded), random features."""
    g = torch.Generator().manual_seed(seed)
    n = 24
    caps = torch.randint(1, 4, (n,), generator=g)
    t2i = torch.repeat_interleave(torch.arange(n), caps)
    img = torch.randn(n, DI, generator=g, dtype=dtype)
    txt = torch.randn(len(t2i), DT, generator=g, dtype=dtype)
    caps_of = [[] for _ in range(n)]
    for t, r in enumerate(t2i.tolist()):
        caps_of[r].append(t)
    sizes = torch.randint(1, 7, (groups,), generator=g)
    recs = torch.randperm(n, generator=g)[: int(sizes.sum())]
    gid = torch.repeat_interleave(torch.arange(groups), sizes)
    return GroupPack.build(img, txt, caps_of, recs, gid), g


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k_intra,k_cross,k_public,min_sim", [(4, 0, 4, 0.0), (2, 1, 3, -1.0), (1, 2, 0, 0.2)])
def test_group_gmp_equals_the_padded_computation(seed, k_intra, k_cross, k_public, min_sim):
    pack, g = _pack(seed)
    t_img = torch.randn(*pack.img.shape[:2], D, generator=g, dtype=torch.float64)
    t_txt = torch.randn(*pack.txt.shape[:2], D, generator=g, dtype=torch.float64)
    public = torch.randn(11, D, generator=g, dtype=torch.float64)
    cfg = GMPConfig(k_intra=k_intra, k_cross=k_cross, k_public=k_public, min_sim=min_sim)
    new = propagate_groups(t_img, pack.mi, t_txt, pack.mt, pack.slot, public, cfg)
    ref = ref_propagate_groups(t_img, pack.mi, t_txt, pack.mt, pack.slot, public, cfg)
    for a, b in zip(new, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("hard,positives,kd", [(5, True, 1.0), (5, False, 0.6), (0, True, 1.0), (40, False, 1.0)])
def test_group_loss_and_its_gradient_equal_the_padded_computation(monkeypatch, seed, hard, positives, kd):
    pack, g = _pack(seed)
    heads = DualHeads(DT, DI, HeadConfig(hidden=16, out_dim=D)).double()
    model = grouped_loss.GroupedStudent(heads)
    model.shape = (pack.img.shape[1], pack.txt.shape[1])
    out = model(pack.inputs()).detach().requires_grad_(True)
    r_img = F.normalize(torch.randn(*pack.img.shape[:2], D, generator=g, dtype=torch.float64), dim=-1)
    r_txt = F.normalize(torch.randn(*pack.txt.shape[:2], D, generator=g, dtype=torch.float64), dim=-1)
    targets = group_targets(r_img * pack.mi[..., None], r_txt * pack.mt[..., None], pack.slot)
    pub_i = F.normalize(torch.randn(9, D, generator=g, dtype=torch.float64), dim=1)
    pub_t = F.normalize(torch.randn(7, D, generator=g, dtype=torch.float64), dim=1)
    crit = GroupLoss(pub_i, pub_t, CMKDConfig(hard_negatives=hard, kd_weight=kd), D, neighbours=1,
                     pseudo_positives=positives)
    new = crit(out, targets)
    (new_grad,) = torch.autograd.grad(new.sum(), out)
    monkeypatch.setattr(grouped_loss, "_side", ref_side)
    ref = crit(out, targets)
    (ref_grad,) = torch.autograd.grad(ref.sum(), out)
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new_grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spec", ["all", "last", "norms+biases"])
def test_real_rows_clipped_sum_equals_the_padded_one(monkeypatch, seed, spec):
    """The student on real slots with the clipper's real-rows layout = `GroupedStudent` on every slot with the
    padded layout: same per-group norms, clipped sums and losses (LayerNorms included)."""
    from common.federation.trainable import set_trainable, trainable_names

    pack, g = _pack(seed)
    torch.manual_seed(seed)
    heads = DualHeads(DT, DI, HeadConfig(hidden=16, out_dim=D, input_norm=True, hidden_norm=True)).double()
    set_trainable(heads, trainable_names(heads, spec))
    r_img = F.normalize(torch.randn(*pack.img.shape[:2], D, generator=g, dtype=torch.float64), dim=-1)
    r_txt = F.normalize(torch.randn(*pack.txt.shape[:2], D, generator=g, dtype=torch.float64), dim=-1)
    targets = group_targets(r_img * pack.mi[..., None], r_txt * pack.mt[..., None], pack.slot)
    crit = GroupLoss(r_img[0, :2].detach(), r_txt[0, :2].detach(), CMKDConfig(hard_negatives=2), D, neighbours=1)
    sgd = GroupClippedSGD(heads, torch.optim.SGD(heads.parameters(), lr=0.0), 0.3, 0.0, 1.0, torch.Generator())
    assert sgd.path == "bookkeeping"
    sums, norms, losses = sgd.clipped_sum(pack, targets, crit)
    monkeypatch.setattr(GroupClippedSGD, "_real_rows_forward", padded_forward)
    ref_sums, ref_norms, ref_losses = sgd.clipped_sum(pack, targets, crit)
    sgd.close()
    assert 0.3 < float(norms.max())  # the clip binds for some group
    torch.testing.assert_close(norms, ref_norms, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-12, atol=1e-12)
    assert sums.keys() == ref_sums.keys()
    for p in sums:
        torch.testing.assert_close(sums[p], ref_sums[p], rtol=1e-10, atol=1e-12)


def test_clipper_rows_layout_on_a_hand_sized_case():
    """Two records, rows given in a compact layout ([M, in] + (record, slot)): the clipped sum and norms equal those
    from the same rows laid out padded [B, n, in] (padding rows with zero gradient), and the float64 per-record
    gradients formed by hand."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    x = torch.randn(3, 3, dtype=torch.float64)  # rows 0, 1 -> record 0 (slots 0, 1); row 2 -> record 1 (slot 0)
    rec, slot = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    w = torch.randn(3, 2, dtype=torch.float64)  # loss of a row: w_row . y_row
    clipper = BookkeepingClipper(clippable_layers(lin, list(lin.parameters())))
    y = lin(x)
    losses = torch.zeros(2, dtype=torch.float64).index_add(0, rec, (w * y).sum(1))
    sums, norms = clipper.clipped_sum(losses, 1.0, {lin: (rec, slot, 2)})
    clipper.close()
    grads = []
    for r in range(2):
        gw = sum(torch.outer(w[i], x[i]) for i in range(3) if rec[i] == r)
        gb = sum(w[i] for i in range(3) if rec[i] == r)
        grads.append((gw, gb))
    ref_norms = torch.stack([(gw.pow(2).sum() + gb.pow(2).sum()).sqrt() for gw, gb in grads])
    torch.testing.assert_close(norms, ref_norms)
    f = (1.0 / (ref_norms + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(sums[lin.weight], f[0] * grads[0][0] + f[1] * grads[1][0])
    torch.testing.assert_close(sums[lin.bias], f[0] * grads[0][1] + f[1] * grads[1][1])


def _site(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps = torch.randint(1, 3, (n,), generator=g)
    t2i = torch.repeat_interleave(torch.arange(n), caps)
    m = len(t2i)
    fs = FeatureSet(torch.randn(n, DI, generator=g), torch.randn(m, DT, generator=g), t2i, torch.full((n,), -1),
                    torch.full((m,), -1), [f"img{i}" for i in range(n)], [f"caption {t}" for t in range(m)])
    bank = PublicBank(torch.randn(20, DI, generator=g), torch.randn(20, DT, generator=g))
    return fs, bank


@pytest.mark.parametrize("spec", ["all", "lowrank:2"])
def test_short_grouped_run_gives_the_same_heads_as_the_padded_computation(monkeypatch, spec):
    fs, bank = _site()
    torch.manual_seed(0)
    teacher = DualHeads(DT, DI, HeadConfig(hidden=16, out_dim=D))
    grouped = GroupedConfig(expected_batch=40, group_size=4, max_group=9, prototypes=3, steps=6, train_params=spec)
    cfg = resolved(AdaptConfig(mode="grouped", seed=0, teacher_rounds=2, refresh_steps=4, average=None,
                               cmkd=CMKDConfig(hard_negatives=8), grouped=grouped))  # the last student: moves more
    heads, log = adapt_grouped(copy.deepcopy(teacher), fs, bank, cfg, torch.Generator().manual_seed(0))
    with monkeypatch.context() as m:
        use_padded(m)
        ref_heads, ref_log = adapt_grouped(copy.deepcopy(teacher), fs, bank, cfg, torch.Generator().manual_seed(0))
    assert log["grouped"]["diagnostics"] == ref_log["grouped"]["diagnostics"]
    assert log["grouped"]["diagnostics"]["group_size"]["max"] > 1  # real groups, with padding
    moved = 0.0
    for (k, a), (_, b), (_, t) in zip(heads.state_dict().items(), ref_heads.state_dict().items(),
                                      teacher.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
        moved = max(moved, float((a - t).abs().max()))
    assert moved > 1e-2  # the run trained: float tolerance is far below how far the heads moved
