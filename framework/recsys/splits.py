"""k-core filtering, per-user time order, and the leave-one-out and global time splits of interaction data.

Checked against the references:

* **k-core** — RecBole (``recbole/data/dataset/dataset.py::_filter_by_inter_num``) repeats "drop users and items with
  fewer than k interactions" until nothing changes (``user_inter_num_interval: "[k,inf)"``); SASRec's and RecGURU's
  preprocessing filter once (RecGURU ``data_process/amazon_csv.py``: items >= 5, then users >= 5, no second round, so
  an item can end below 5). Chosen: RecBole's fixed point, so every kept user *and* item has >= k interactions; it is
  applied per domain (an item's and a user's count in that domain; a user dropped from one domain stays in another).
* **Time order** — rows of a user sorted by timestamp; equal timestamps keep their file order (a stable sort: RecBole
  sorts with pandas, whose default quicksort is not stable, and RecGURU with ``sort_values`` likewise; chosen stable so
  the split does not depend on the sort algorithm).
* **Leave-one-out** — RecBole's ``valid_and_test`` (``_split_index_by_leave_one_out``) and SASRec's ``data_partition``:
  last interaction test, second-to-last validation, the rest training. For a user with 2 interactions RecBole keeps
  one for training and one for test (no validation), with 1 only training; SASRec does the same for fewer than 3.
  Followed.
* **Global time split** — RecBole's ``order: TO`` with ``split: RS`` sorts all interactions by time and cuts them by
  ratio. Chosen: cut by timestamp quantiles taken over the interactions of *all* domains together (one clock), so that
  no domain's training part holds interactions later than another domain's test part (a cross-domain model would
  otherwise train on the future of the domain it is tested in); interactions on a cut timestamp go to the later part,
  so equal timestamps never straddle two parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

SPLIT_NAMES = ("train", "val", "test")


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the rows kept by iterated k-core filtering: every kept user and item has >= ``k`` kept rows.

    Each round drops, at once, the rows of every user and every item with fewer than ``k`` rows among those kept,
    until a round drops nothing (``k <= 1`` keeps every row)."""
    users, items = np.asarray(users), np.asarray(items)
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        _, user_index, user_count = np.unique(users[keep], return_inverse=True, return_counts=True)
        _, item_index, item_count = np.unique(items[keep], return_inverse=True, return_counts=True)
        ok = (user_count[user_index] >= k) & (item_count[item_index] >= k)
        if ok.all():
            return keep
        keep[np.flatnonzero(keep)[~ok]] = False


def user_time_order(users: np.ndarray, timestamps: np.ndarray) -> dict[int, np.ndarray]:
    """User id -> the positions of its rows, sorted by timestamp, equal timestamps in row (file) order."""
    users = np.asarray(users)
    order = np.lexsort((np.arange(len(users)), np.asarray(timestamps), users))  # last key first: user, time, row
    ordered_users = users[order]
    starts = np.flatnonzero(np.r_[True, ordered_users[1:] != ordered_users[:-1]]) if len(order) else np.array([], dtype=np.int64)
    ends = np.r_[starts[1:], len(order)]
    return {int(ordered_users[s]): order[s:e] for s, e in zip(starts, ends, strict=True)}


def leave_one_out(ordered_rows: np.ndarray) -> np.ndarray:
    """The part of each of one user's time-ordered rows: ``0`` train, ``1`` validation, ``2`` test.

    ``n >= 3`` rows: the last is test, the one before validation, the rest training; ``n == 2``: training, test;
    ``n == 1``: training (RecBole's and SASRec's rule)."""
    n = len(ordered_rows)
    parts = np.zeros(n, dtype=np.int64)
    if n >= 2:
        parts[-1] = 2
    if n >= 3:
        parts[-2] = 1
    return parts


def time_cutoffs(timestamps: np.ndarray, quantiles: tuple[float, float] = (0.8, 0.9)) -> tuple[float, float]:
    """The two timestamps that start the validation and the test part: the values at ranks ``floor(q * N)`` of the
    sorted timestamps (so about ``q`` of the rows lie before each cut)."""
    low, high = quantiles
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"time quantiles must satisfy 0 < val <= test < 1, got {quantiles}")
    stamps = np.sort(np.asarray(timestamps, dtype=np.float64), kind="stable")
    if len(stamps) == 0:
        raise ValueError("no timestamps to split")
    return float(stamps[int(low * len(stamps))]), float(stamps[int(high * len(stamps))])


def time_parts(timestamps: np.ndarray, cutoffs: tuple[float, float]) -> np.ndarray:
    """``0`` train (before the first cut), ``1`` validation, ``2`` test (at or after the second cut)."""
    stamps = np.asarray(timestamps, dtype=np.float64)
    return (stamps >= cutoffs[0]).astype(np.int64) + (stamps >= cutoffs[1]).astype(np.int64)


def left_pad(sequences: Sequence[Sequence[int]], length: int) -> Tensor:
    """``(N, length)`` long: the last ``length`` ids of each sequence, right-aligned, 0 before them."""
    out = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tail = list(sequence)[-length:] if length else []
        if tail:
            out[row, length - len(tail) :] = torch.as_tensor(tail, dtype=torch.long)
    return out


__all__ = ["SPLIT_NAMES", "k_core", "leave_one_out", "left_pad", "time_cutoffs", "time_parts", "user_time_order"]
