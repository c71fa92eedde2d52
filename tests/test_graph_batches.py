"""Full-mode graph batches and pseudo-positives, against hand-worked cases."""

from __future__ import annotations

import torch

from common.train.graph_batches import graph_batch, mutual_neighbours

GROUPS = torch.tensor([[1, 2], [0, 3], [0, 1], [5, 1], [5, 0], [4, 3]])  # each record's 2 nearest records
PERM = torch.tensor([3, 0, 5, 1, 2, 4])


def test_graph_batch_is_seeds_then_their_neighbours_without_repeats():
    # batch_size 6, group_size 3: 2 seeds (3, 0), then 3's neighbours (5, 1) and 0's (1, 2); the second 1 dropped
    assert graph_batch(PERM, 0, GROUPS, 6, 3).tolist() == [3, 0, 5, 1, 2]
    # batch_size 4: one seed per batch; batch 1's seed is PERM[1] = 0 -> 0, 1, 2
    assert graph_batch(PERM, 1, GROUPS, 4, 3).tolist() == [0, 1, 2]
    # batch 7 wraps around the permutation: seed PERM[7 % 6] = 0
    assert graph_batch(PERM, 7, GROUPS, 4, 3).tolist() == [0, 1, 2]
    # cut to batch_size: seeds 3, 0 and neighbours 5, 1, 1, 2 -> first 4 distinct
    assert graph_batch(PERM, 0, GROUPS, 4, 2).tolist() == [3, 0, 5, 1]


def test_graph_batch_without_groups_is_a_plain_slice():
    assert graph_batch(PERM, 1, None, 4, 3).tolist() == [2, 4]


def test_mutual_neighbours_needs_both_directions():
    a, b = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 3])
    # 0-1 and 0-2 list each other; 1-3 list each other; 1 does not list 2; 3 does not list 2; nobody lists itself
    expected = torch.tensor([[True, True, False], [False, False, True], [True, False, False]])
    assert torch.equal(mutual_neighbours(GROUPS, a, b), expected)
    assert mutual_neighbours(None, a, b) is None
