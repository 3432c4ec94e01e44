"""Sampled evaluation negatives: uniform over unseen items, distinct, seeded per key."""

from __future__ import annotations

import numpy as np
import pytest

from litzoo.framework.recsys import sample_negatives


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
