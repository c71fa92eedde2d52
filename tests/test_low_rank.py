"""Low-rank adapters in a public subspace (`common.models.low_rank`, train-params ``lowrank:R``) against second
computations: attaching with B = 0 changes nothing (bit for bit), merging is exact, the bases are numpy's top
uncentred principal directions of each layer's public inputs, both clipping paths give each group's clipped
batch-of-one gradient, and a grouped adaptation on the tiny profile returns plain heads whose Linears moved by
rank-<=R updates inside the public subspaces, which never read a target record."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import common.train.grouped_adapt as grouped_adapt
from common.federation.trainable import set_trainable, trainable_names
from common.losses.cmkd import CMKDConfig
from common.losses.grouped_loss import GroupedStudent, GroupLoss, GroupPack, group_targets
from common.models.heads import DualHeads, HeadConfig
from common.models.low_rank import (LowRankLinear, adapters, attach_low_rank, merge_low_rank, parse_spec,
                                    public_bases, trained_numbers)
from common.train.bookkeeping_clip import clippable_layers
from common.train.grouped_dp import GroupClippedSGD

DT, DI, D = 10, 12, 8


def _heads(seed=0, **kw) -> DualHeads:
    torch.manual_seed(seed)
    return DualHeads(DT, DI, HeadConfig(hidden=16, out_dim=D, **kw)).double()


def _public(n=40, seed=1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # column scales falling off (a spectrum with gaps) and an offset mean, as trunk features have: the uncentred
    # directions differ from the centred ones
    return (torch.randn(n, DI, generator=g, dtype=torch.float64) * torch.linspace(3, 0.3, DI, dtype=torch.float64) + 0.7,
            torch.randn(n, DT, generator=g, dtype=torch.float64) * torch.linspace(3, 0.3, DT, dtype=torch.float64) - 0.4)


def _randomise_b(heads: nn.Module, seed=2, scale=0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ad in adapters(heads).values():
            ad.B.weight.copy_(scale * torch.randn(ad.B.weight.shape, generator=g, dtype=torch.float64))


LAYOUTS = [dict(input_norm=False, hidden_norm=False), dict(input_norm=True, hidden_norm=True),
           dict(input_norm=True, hidden_norm=False, layers=3)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_attaching_with_zero_b_leaves_every_output_unchanged(layout):
    heads = _heads(**layout)
    img, txt = _public()
    x_img, x_txt = img[:7] * 1.3, txt[:9] - 0.2
    before = (heads.image(x_img), heads.text(x_txt))
    rng = torch.get_rng_state()
    attach_low_rank(heads, public_bases(heads, img, txt, 3))
    assert torch.equal(torch.get_rng_state(), rng)  # no random initialisation of A or B
    assert len(adapters(heads)) == 2 * (layout.get("layers", 2))
    after = (heads.image(x_img), heads.text(x_txt))
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # exact, not close


@pytest.mark.parametrize("layout", LAYOUTS)
def test_merge_is_exact_and_gives_the_original_keys_and_shapes(layout):
    heads = _heads(**layout)
    plain = copy.deepcopy(heads)
    img, txt = _public()
    bases = public_bases(heads, img, txt, 3)
    attach_low_rank(heads, bases)
    _randomise_b(heads)
    x_img, x_txt = img[:7] * 1.3, txt[:9] - 0.2
    attached = (heads.image(x_img), heads.text(x_txt))
    updates = {p: (a.B.weight @ a.A.weight).detach().clone() for p, a in adapters(heads).items()}
    merged = merge_low_rank(heads)
    assert not adapters(merged) and not any(isinstance(m, LowRankLinear) for m in merged.modules())
    torch.testing.assert_close(merged.image(x_img), attached[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(merged.text(x_txt), attached[1], rtol=1e-12, atol=1e-14)
    want = plain.state_dict()
    got = merged.state_dict()
    assert list(got) == list(want) and all(got[k].shape == want[k].shape for k in want)
    fresh = _heads(seed=9, **layout)
    fresh.load_state_dict(got)  # strict: plain heads load it
    for k in want:  # only the Linear weights moved, each by its B A (rank <= 3)
        path = k.rsplit(".", 1)[0]
        if k.endswith(".weight") and path in updates:
            torch.testing.assert_close(got[k] - want[k], updates[path], rtol=1e-12, atol=1e-14)
            assert torch.linalg.matrix_rank(got[k] - want[k]) == 3
        else:
            assert torch.equal(got[k], want[k]), k


def test_bases_are_orthonormal_top_uncentred_principal_directions_of_public_layer_inputs():
    heads = _heads(input_norm=True, hidden_norm=True)
    img, txt = _public(n=50)
    bases = public_bases(heads, img, txt, 4)
    with torch.no_grad():  # each Linear's input, by running the head's layers up to it: [LN, Linear, LN, GELU, Linear]
        inputs = {"image_head.net.1": heads.image_head.net[:1](img), "image_head.net.4": heads.image_head.net[:4](img),
                  "text_head.net.1": heads.text_head.net[:1](txt), "text_head.net.4": heads.text_head.net[:4](txt)}
    assert sorted(bases) == sorted(inputs)
    for path, x in inputs.items():
        a = bases[path].numpy()
        np.testing.assert_allclose(a @ a.T, np.eye(4), atol=1e-12)
        _, s, vt = np.linalg.svd(x.numpy(), full_matrices=False)  # uncentred: the raw rows
        assert s[3] > 1.01 * s[4]  # a gap, so the top-4 subspace is well defined
        np.testing.assert_allclose(a.T @ a, vt[:4].T @ vt[:4], atol=1e-9)  # the same subspace (signs aside)
        centred = np.linalg.svd(x.numpy() - x.numpy().mean(0), full_matrices=False)[2][:4]
        assert np.abs(a.T @ a - centred.T @ centred).max() > 1e-3  # and not the centred one
    with pytest.raises(ValueError, match="image_head.net.1: rank 13 exceeds"):
        public_bases(heads, img, txt, 13)


def test_spec_parsing_and_trainable_names():
    assert parse_spec("all") is None and parse_spec(" lowrank:8 ") == (8, False) and parse_spec("lowrank:3+biases") == (3, True)
    for bad in ("lowrank:0", "lowrank:x", "lowrank", "lowrank:4+norms"):
        with pytest.raises(ValueError, match="positive integer"):
            parse_spec(bad)
    heads = _heads(input_norm=True, hidden_norm=True)
    with pytest.raises(ValueError, match="needs low-rank adapters"):
        trainable_names(heads, "lowrank:3")
    attach_low_rank(heads, public_bases(heads, *_public(), 3))
    with pytest.raises(ValueError, match="asks for rank 4"):
        trainable_names(heads, "lowrank:4")
    names = trainable_names(heads, "lowrank:3")
    assert names == [f"{h}.net.{i}.B.weight" for h in ("text_head", "image_head") for i in (1, 4)]
    set_trainable(heads, names)
    assert trained_numbers(heads) == 2 * (16 * 3 + D * 3)
    with_biases = trainable_names(heads, "lowrank:3+biases")
    assert set(with_biases) - set(names) == {n for n, _ in heads.named_parameters() if n.endswith(".bias")}
    set_trainable(heads, with_biases)
    assert trained_numbers(heads) == 2 * (16 * 3 + D * 3) + (DT + 16 + 16 + D) + (DI + 16 + 16 + D)  # LN shifts too


# minilm-effnet heads (1280-d image and 384-d text trunk features, hidden 512, out 256): the count the docs quote
def test_minilm_effnet_count_for_rank_8():
    heads = DualHeads(384, 1280)
    attach_low_rank(heads, public_bases(heads, torch.randn(64, 1280), torch.randn(64, 384), 8))
    set_trainable(heads, trainable_names(heads, "lowrank:8"))
    assert trained_numbers(heads) == 8 * (512 + 256) * 2 == 12_288
    set_trainable(heads, trainable_names(heads, "lowrank:8+biases"))
    assert trained_numbers(heads) == 12_288 + (512 + 256) * 2


def _site(n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps_of = [[] for _ in range(n)]
    for t, r in enumerate(torch.repeat_interleave(torch.arange(n), torch.tensor([1 + (i % 3 == 0) for i in range(n)])).tolist()):
        caps_of[r].append(t)
    img = torch.randn(n, DI, generator=g, dtype=torch.float64)
    txt = torch.randn(sum(map(len, caps_of)), DT, generator=g, dtype=torch.float64)
    return img, txt, caps_of, g


def _group(pack: GroupPack, k: int) -> GroupPack:
    ri, rt = int(pack.mi[k].sum()), int(pack.mt[k].sum())
    return GroupPack(pack.img[k : k + 1, :ri], pack.txt[k : k + 1, :rt], pack.mi[k : k + 1, :ri],
                     pack.mt[k : k + 1, :rt], pack.slot[k : k + 1, :rt], pack.records[k : k + 1, :ri])


def _rows(targets: torch.Tensor, pack: GroupPack, k: int, one: GroupPack) -> torch.Tensor:
    ri, rt = pack.img.shape[1], pack.txt.shape[1]
    r_img = targets[k, : ri * D].reshape(ri, D)[: one.img.shape[1]][None]
    r_txt = targets[k, ri * D : (ri + rt) * D].reshape(rt, D)[: one.txt.shape[1]][None]
    return group_targets(r_img, r_txt, one.slot)


@pytest.mark.parametrize("spec,clipping,path", [("lowrank:3", "auto", "bookkeeping"),
                                                ("lowrank:3+biases", "auto", "bookkeeping"),
                                                ("lowrank:3", "opacus", "opacus-ghost"),
                                                ("lowrank:3+biases", "opacus", "opacus-ghost")])
def test_group_clipped_sums_through_adapters_equal_batch_of_one_gradients(spec, clipping, path):
    img, txt, caps_of, g = _site()
    heads = _heads(input_norm=True, hidden_norm=True)
    attach_low_rank(heads, public_bases(heads, *_public(), 3))
    _randomise_b(heads, scale=0.1)  # the adapters' path carries signal in the forward pass too
    set_trainable(heads, trainable_names(heads, spec))
    trained = [p for p in heads.parameters() if p.requires_grad]
    layers = clippable_layers(GroupedStudent(heads), trained)
    ads = adapters(heads).values()
    assert all(a.B in layers for a in ads) and not any(a.A in layers for a in ads)  # B hooked, A (frozen) never
    assert all((a.base in layers) == spec.endswith("+biases") for a in ads)  # the base only for its trained bias
    pack = GroupPack.build(img, txt, caps_of, torch.tensor([0, 2, 3, 5, 6, 7, 8, 10]), torch.tensor([0, 1, 0, 2, 1, 0, 3, 1]))
    r_img = F.normalize(torch.randn(*pack.img.shape[:2], D, generator=g, dtype=torch.float64), dim=-1) * pack.mi[..., None]
    r_txt = F.normalize(torch.randn(*pack.txt.shape[:2], D, generator=g, dtype=torch.float64), dim=-1) * pack.mt[..., None]
    targets = group_targets(r_img, r_txt, pack.slot)
    pub = [F.normalize(torch.randn(6, D, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    crit = GroupLoss(*pub, CMKDConfig(hard_negatives=3), D, neighbours=1)
    ref_heads = copy.deepcopy(heads)
    ref_model, ref_trained = GroupedStudent(ref_heads), [p for p in ref_heads.parameters() if p.requires_grad]
    per_group = []
    for k in range(len(pack)):  # ground truth: autograd on each group alone
        crit.reduction = "sum"
        one = _group(pack, k)
        ref_model.shape = (one.img.shape[1], one.txt.shape[1])
        per_group.append(torch.autograd.grad(crit(ref_model(one.inputs()), _rows(targets, pack, k, one)), ref_trained))
    norms = [math.sqrt(sum(float((t ** 2).sum()) for t in gr)) for gr in per_group]
    clip = sorted(norms)[len(norms) // 2]
    assert min(norms) < clip < max(norms)
    expected = [sum(min(1.0, clip / (n + 1e-6)) * gr[i] for gr, n in zip(per_group, norms)) for i in range(len(trained))]
    step = GroupClippedSGD(heads, torch.optim.SGD(trained, lr=0.0), clip, 0.0, 1.0, torch.Generator(), clipping)
    assert step.path == path
    sums, got_norms, _ = step.clipped_sum(pack, targets, crit)
    assert set(map(id, sums)) == set(map(id, trained))
    for p, e in zip(trained, expected):
        torch.testing.assert_close(sums[p], e, rtol=1e-7, atol=1e-10)
    if len(got_norms):
        torch.testing.assert_close(got_norms, torch.tensor(norms, dtype=got_norms.dtype), rtol=1e-6, atol=1e-9)
    step.close()


# --- a grouped adaptation on the tiny profile (the test bench's teacher, real target features) --------------------

@functools.lru_cache(maxsize=1)
def _bench():
    from common.checkpoint import load_checkpoint
    from common.models.backbones import build_backbone
    from common.pipeline import domain_features
    from fed_support import SOURCE, TARGET, shared_bench

    b = shared_bench()
    ckpt = load_checkpoint(b.teacher)
    bb = build_backbone(ckpt.backbone)
    src = domain_features(bb, b.data, SOURCE, "train", cache_dir=b.cache)
    train = domain_features(bb, b.data, TARGET, "train", cache_dir=b.cache, labels=False)
    val = domain_features(bb, b.data, TARGET, "val", cache_dir=b.cache, labels=False)
    return ckpt.heads, src, train, val


def _adapt(spec: str, rounds: int, target: str = "train", steps: int = 4, clipping: str = "auto", monkeypatch=None):
    """(teacher, adapted heads, log, the bases of every attach call) of `common.train.adapt.adapt` in grouped mode."""
    from common.train.adapt import AdaptConfig, adapt
    from common.train.site_context import PublicBank

    teacher, src, train, val = _bench()
    calls = []
    monkeypatch.setattr(grouped_adapt, "attach_low_rank",
                        lambda heads, bases: calls.append({k: v.clone() for k, v in bases.items()}) or attach_low_rank(heads, bases))
    cfg = AdaptConfig(mode="grouped", teacher_rounds=rounds)
    cfg.grouped.steps, cfg.grouped.train_params, cfg.grouped.clipping = steps, spec, clipping
    cfg.grouped.expected_batch, cfg.grouped.prototypes = 64, 2
    out, log = adapt(teacher, train if target == "train" else val, PublicBank.from_source(src, 32), cfg)
    return teacher, out, log, calls


@pytest.mark.parametrize("spec,rounds,clipping", [("lowrank:4", 1, "auto"), ("lowrank:4+biases", 2, "opacus")])
def test_grouped_adapt_returns_plain_heads_moved_by_low_rank_updates_in_the_public_subspaces(spec, rounds, clipping,
                                                                                             monkeypatch):
    teacher, out, log, calls = _adapt(spec, rounds, clipping=clipping, monkeypatch=monkeypatch)
    assert len(calls) == 2 * rounds  # the student and the momentum teacher, every round, with the same bases
    assert all(calls[2 * r].keys() == calls[2 * r + 1].keys() and
               all(torch.equal(calls[2 * r][k], calls[2 * r + 1][k]) for k in calls[2 * r]) for r in range(rounds))
    before, after = teacher.state_dict(), out.state_dict()
    assert list(after) == list(before) and all(after[k].shape == before[k].shape for k in before)
    linears = [k[: -len(".weight")] for k in before if k[: -len(".weight")] in calls[0]]
    assert len(linears) == 4  # two Linears per head
    for path in linears:
        delta = after[path + ".weight"] - before[path + ".weight"]
        rank = int(torch.linalg.matrix_rank(delta.double(), rtol=1e-4))
        assert 1 <= rank <= 4 * rounds, (path, rank)
        span = torch.linalg.qr(torch.cat([c[path] for c in calls[::2]]).double().T).Q  # the rounds' public subspaces
        outside = delta.double() - (delta.double() @ span) @ span.T
        assert float(outside.norm()) <= 1e-4 * float(delta.norm()), path
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    biases = {k for k in before if k.endswith(".bias")}
    assert moved - biases == {p + ".weight" for p in linears}  # LayerNorm scales never train
    assert bool(moved & biases) == spec.endswith("+biases")
    g = log["grouped"]
    outputs = sum(before[p + ".weight"].shape[0] for p in linears)  # B is out x R for each Linear
    bias_numbers = sum(before[k].numel() for k in biases) if spec.endswith("+biases") else 0
    assert g["low_rank"] == 4 and g["trained_numbers"] == 4 * outputs + bias_numbers
    assert g["clipping"] == ("bookkeeping" if clipping == "auto" else "opacus-ghost")


def test_the_bases_never_read_a_target_record(monkeypatch):
    """The first round's bases come from the starting teacher and the public bank alone: the same whatever the
    site's records (here the target's train split against its val split, other records entirely)."""
    _, _, _, on_train = _adapt("lowrank:4", 1, "train", steps=1, monkeypatch=monkeypatch)
    _, _, _, on_val = _adapt("lowrank:4", 1, "val", steps=1, monkeypatch=monkeypatch)
    assert on_train[0].keys() == on_val[0].keys()
    assert all(torch.equal(on_train[0][k], on_val[0][k]) for k in on_train[0])
