"""Projection heads: unit-norm outputs, no BatchNorm, and exact per-sample gradients under Opacus."""

import copy

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from torch import nn

from common.models import DualHeads, HeadConfig, ProjectionHead



TD, ID, B = 12, 20, 5


def _per_record_loss(t: torch.Tensor, v: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Decoupled: record i's loss depends on its own pair and a public anchor bank only."""
    pos = (t * v).sum(-1)
    return -pos + torch.logsumexp(t @ anchors.T / 0.1, dim=-1)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    anchors = nn.functional.normalize(torch.randn(7, 16, generator=g), dim=-1)
    return torch.randn(B, TD, generator=g), torch.randn(B, ID, generator=g), anchors


def _single_grads(heads, xt, xi, anchors):
    """Per-record gradients from B separate batch-of-one runs."""
    out = []
    for i in range(B):
        heads.zero_grad()
        t, v = heads(xt[i : i + 1], xi[i : i + 1])
        _per_record_loss(t, v, anchors).sum().backward()
        out.append({n: p.grad.clone() for n, p in heads.named_parameters()})
    return out


def test_outputs_are_unit_norm_and_no_batchnorm():
    heads = DualHeads(TD, ID, HeadConfig(out_dim=16, hidden=24))
    t, v = heads(torch.randn(B, TD), torch.randn(B, ID))
    assert t.shape == v.shape == (B, 16)
    assert torch.allclose(t.norm(dim=-1), torch.ones(B)) and torch.allclose(v.norm(dim=-1), torch.ones(B))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in heads.modules())
    assert heads.text(torch.randn(2, TD)).shape == (2, 16)
    lin = ProjectionHead(TD, out_dim=8, layers=1, input_norm=False)
    assert [type(m) for m in lin.net] == [nn.Linear]
    with pytest.raises(ValueError):
        ProjectionHead(TD, layers=0)


def test_opacus_hooks_per_sample_grads_equal_batch_of_one():
    torch.manual_seed(0)
    heads = DualHeads(TD, ID, HeadConfig(out_dim=16, hidden=24, dropout=0.0))
    xt, xi, anchors = _data()
    expected = _single_grads(copy.deepcopy(heads), xt, xi, anchors)
    gsm = GradSampleModule(heads, batch_first=True, loss_reduction="sum")
    t, v = gsm(xt, xi)
    _per_record_loss(t, v, anchors).sum().backward()
    for n, p in heads.named_parameters():
        assert p.grad_sample.shape[0] == B
        for i in range(B):
            assert torch.allclose(p.grad_sample[i], expected[i][n], atol=1e-5), n


def test_opacus_ghost_clipping_norms_equal_batch_of_one():
    torch.manual_seed(1)
    heads = DualHeads(TD, ID, HeadConfig(out_dim=16, hidden=24))
    xt, xi, anchors = _data(1)
    expected = _single_grads(copy.deepcopy(heads), xt, xi, anchors)
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in e.values())) for e in expected])
    gsm = GradSampleModuleFastGradientClipping(heads, batch_first=True, loss_reduction="sum", max_grad_norm=1.0,
                                               use_ghost_clipping=True)
    t, v = gsm(xt, xi)
    _per_record_loss(t, v, anchors).sum().backward()
    assert torch.allclose(gsm.get_norm_sample(), norms, rtol=1e-4, atol=1e-6)
