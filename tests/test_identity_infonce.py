"""identity_infonce against hand-worked cases."""

import math

import pytest
import torch

from common.losses.identity_infonce import identity_infonce


def test_two_by_two_hand_worked():
    # t0 . v = (1, 0), t1 . v = (0, 1); tau 1. Diagonal: each row's loss is log(1 + e^-1).
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    want = 2 * math.log(1 + math.exp(-1))
    assert identity_infonce(t, v, 1.0).item() == pytest.approx(want, rel=1e-6)
    # same identity for both: q = (1/2, 1/2) per row; loss per row = -0.5 (log p0 + log p1)
    p_hi, p_lo = math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)
    row = -0.5 * (math.log(p_hi) + math.log(p_lo))
    pid = torch.tensor([7, 7])
    assert identity_infonce(t, v, 1.0, pid, pid).item() == pytest.approx(2 * row, rel=1e-6)


def test_distinct_identities_equal_diagonal_and_temperature():
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    v = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    pid = torch.arange(5)
    assert torch.allclose(identity_infonce(t, v, 0.05, pid, pid), identity_infonce(t, v, 0.05))
    # by hand for tau 0.5: mean over rows of -log softmax of the diagonal, both directions
    s = t @ v.t() / 0.5
    want = -(torch.log_softmax(s, 1).diagonal().mean() + torch.log_softmax(s.t(), 1).diagonal().mean())
    assert torch.allclose(identity_infonce(t, v, 0.5), want)


def test_missing_positive_is_refused():
    t = v = torch.eye(2)
    with pytest.raises(ValueError, match="positive"):
        identity_infonce(t, v, 1.0, torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="diagonal"):
        identity_infonce(torch.eye(3), torch.eye(3)[:2], 1.0)
