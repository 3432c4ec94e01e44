"""k-core filtering, time order and the leave-one-out / time splits, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from litzoo.framework.recsys import k_core, leave_one_out, time_cutoffs, time_parts, user_time_order


def test_k_core_needs_two_rounds():
    # k = 2. Round 1 drops (3, c): item c has one row. Only then user 3 is left with one row, (3, a): round 2 drops it.
    users = np.array([1, 1, 2, 2, 3, 3])
    items = np.array(["a", "b", "a", "b", "a", "c"], dtype=object)
    _, codes = np.unique(items, return_inverse=True)
    assert k_core(users, codes, 2).tolist() == [True, True, True, True, False, False]
    assert k_core(users, codes, 1).all()
    # a single round of the same rule (the negative control) would keep (3, a)
    counts_user = {u: (users == u).sum() for u in users}
    counts_item = {i: (codes == i).sum() for i in codes}
    one_round = [counts_user[u] >= 2 and counts_item[i] >= 2 for u, i in zip(users, codes)]
    assert one_round[4]


def test_k_core_is_a_fixed_point_on_random_data():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 400), rng.zipf(1.5, 400) % 60
    keep = k_core(users, items, 5)
    assert keep.any() and not keep.all()
    for column in (users[keep], items[keep]):
        assert np.bincount(column).max() >= 5 and (np.bincount(column)[np.unique(column)] >= 5).all()
    # every dropped row had, at its removal, a user or an item below 5 in some round: re-adding any one dropped row
    # leaves its user or item under 5 among the kept rows plus itself
    for row in np.flatnonzero(~keep)[:50]:
        with_row = keep.copy()
        with_row[row] = True
        assert (users[with_row] == users[row]).sum() < 5 or (items[with_row] == items[row]).sum() < 5


def test_time_order_is_stable_for_equal_timestamps():
    users = np.array([2, 1, 1, 1, 2, 1])
    times = np.array([5.0, 3.0, 1.0, 3.0, 5.0, 2.0])
    order = user_time_order(users, times)
    assert sorted(order) == [1, 2]
    assert order[1].tolist() == [2, 5, 1, 3]  # times 1, 2, then the two 3s in file order (rows 1 before 3)
    assert order[2].tolist() == [0, 4]


def test_leave_one_out_by_hand():
    assert leave_one_out(np.arange(5)).tolist() == [0, 0, 0, 1, 2]
    assert leave_one_out(np.arange(3)).tolist() == [0, 1, 2]
    assert leave_one_out(np.arange(2)).tolist() == [0, 2]  # RecBole / SASRec: no validation item for two interactions
    assert leave_one_out(np.arange(1)).tolist() == [0]


def test_time_split_by_hand():
    times = np.array([7, 1, 10, 3, 2, 9, 4, 5, 8, 6], dtype=float)
    cuts = time_cutoffs(times, (0.8, 0.9))
    assert cuts == (9.0, 10.0)
    assert time_parts(times, cuts).tolist() == [0, 0, 2, 0, 0, 1, 0, 0, 0, 0]
    tied = np.array([1, 1, 2, 2, 2, 3, 3, 3, 3, 3], dtype=float)
    cuts = time_cutoffs(tied, (0.3, 0.6))  # sorted[3] = 2, sorted[6] = 3: a cut timestamp goes wholly to the later part
    assert cuts == (2.0, 3.0) and time_parts(tied, cuts).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="time quantiles"):
        time_cutoffs(times, (0.9, 0.8))
