"""Neighbour purity against hand-worked cases."""

import pytest
import torch

from common.metrics.neighbours import neighbour_purity


def test_hand_worked_purity():
    # a and b are the same person and point the same way; c is another person near b;
    # d is c's person but far from everything except a
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.7, 0.7], [0.2, -1.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # nn: a->b (same), b->a (same), c->b (other), d->a (cos 0.2/1.02 vs b 0.08/.. vs c -0.57/..: other)
    assert neighbour_purity(emb, pids) == pytest.approx(50.0)


def test_exclusion_groups_skip_trivial_neighbours():
    # two captions of one record (group 0) are each other's nearest; excluding the record
    # leaves caption 0 -> caption 2 (same person), caption 1 -> caption 3 (other person)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.9, 0.3], [0.8, 0.6]])
    pids = torch.tensor([5, 5, 5, 7])
    groups = torch.tensor([0, 0, 1, 2])
    assert neighbour_purity(emb, pids) == pytest.approx(75.0)  # 0->1, 1->0, 2->1, 3->2 (other)
    # 0 -> 2 (same), 1 -> 2 (same), 2 -> 1 (same), 3 -> 2 (other)
    assert neighbour_purity(emb, pids, groups) == pytest.approx(75.0)
    pids2 = torch.tensor([5, 6, 5, 7])  # now caption 1 is another person: 0->2 same, 1->2 other, 2->1 other, 3->2 other
    assert neighbour_purity(emb, pids2, groups) == pytest.approx(25.0)


def test_ties_go_to_the_lower_index_and_chunks_agree():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # item 0 is equally far from 1 and 2: the lower index (1) wins
    assert neighbour_purity(emb, torch.tensor([0, 0, 1])) == pytest.approx(100 / 3)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(50, 8, generator=g)
    pids = torch.randint(0, 5, (50,), generator=g)
    assert neighbour_purity(emb, pids, chunk=7) == neighbour_purity(emb, pids)


def test_no_candidate_is_an_error():
    with pytest.raises(ValueError, match="no neighbour"):
        neighbour_purity(torch.ones(2, 3), torch.tensor([0, 0]), torch.tensor([1, 1]))
