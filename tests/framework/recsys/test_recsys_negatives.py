"""Sampled evaluation negatives: uniform over unseen items, distinct, seeded per key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litzoo.framework.recsys import known_item_keys, sample_negatives, sample_negatives_avoiding


@pytest.mark.parametrize("num_items", [150, 5000])  # the complement path and the rejection path
def test_negatives_avoid_positives_and_are_deterministic(num_items):
    positives = set(range(1, 40))
    drawn = sample_negatives(num_items, positives, 100, 7, 0, 3)
    assert len(drawn) == 100 and len(set(drawn.tolist())) == 100
    assert not positives & set(drawn.tolist()) and drawn.min() >= 1 and drawn.max() <= num_items
    assert np.array_equal(drawn, sample_negatives(num_items, positives, 100, 7, 0, 3))
    assert not np.array_equal(drawn, sample_negatives(num_items, positives, 100, 7, 0, 4))  # another key, another draw
    assert not np.array_equal(drawn, sample_negatives(num_items, positives, 100, 8, 0, 3))


def test_negatives_are_uniform():
    counts = np.zeros(31)
    for key in range(3000):
        counts[sample_negatives(30, {1, 2, 3, 4, 5}, 5, 0, key)] += 1
    assert counts[:6].sum() == 0
    expected = 3000 * 5 / 25
    assert np.abs(counts[6:] - expected).max() < 5 * np.sqrt(expected)  # within 5 sigma for each of the 25 items


def test_too_few_items_is_refused():
    with pytest.raises(ValueError, match="only 2 item"):
        sample_negatives(5, {1, 2, 3}, 3, 0)


def test_training_negatives_per_slot_and_weighted():
    """(B, L, n) targets draw n negatives per slot for the row's user; weights shift the draw's distribution and an
    item of weight 0 is never drawn; none is ever a known item of the row's user."""
    known = {1: {1, 2}, 2: {3}}
    keys = known_item_keys(known, num_items=6)
    targets = torch.tensor([[0, 4, 5], [6, 6, 0]])[..., None].expand(-1, -1, 2000)
    users = torch.tensor([1, 2])
    weights = torch.tensor([0.0, 1.0, 1.0, 1.0, 8.0, 1.0, 0.0])  # item 4 eight times item 3 or 5, item 6 never
    drawn = sample_negatives_avoiding(targets, users, keys, 6, torch.Generator().manual_seed(0), weights=weights)
    assert drawn.shape == targets.shape
    assert (drawn[0, 0] == 0).all() and (drawn[1, 2] == 0).all()
    assert set(drawn[0, 1:].unique().tolist()) == {3, 4, 5}  # user 1 knows 1 and 2; 6 has weight 0
    assert set(drawn[1, :2].unique().tolist()) == {1, 2, 4, 5}  # user 2 knows 3
    share = (drawn[0, 1:] == 4).double().mean().item()  # 8 / (1 + 8 + 1)
    assert abs(share - 0.8) < 0.02
    uniform = sample_negatives_avoiding(targets, users, keys, 6, torch.Generator().manual_seed(0))
    assert abs((uniform[0, 1:] == 4).double().mean().item() - 0.25) < 0.02  # items 3..6 equally likely
    with pytest.raises(ValueError, match="no mass"):
        sample_negatives_avoiding(targets, users, keys, 6, weights=torch.zeros(7))
