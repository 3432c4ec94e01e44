"""Sampled negatives for evaluating a recommender: the held-out item ranked among items the user never touched.

Protocol (SASRec's ``evaluate``; RecBole's ``uni100`` evaluation; RecGURU samples ``n_negs`` the same way): for each
held-out positive, 100 items drawn uniformly from the domain's items that the user never interacted with in *any*
split (RecBole's sampler excludes ``used_ids`` of the whole dataset; SASRec excludes ``rated``, train + valid + test),
so no test or validation item of the user can come back as a negative. SASRec redraws on a collision but allows the
same negative twice; chosen here: 100 *distinct* negatives (a duplicate would count twice in the rank), refused when
the domain has fewer unseen items than that.

Determinism: each draw has its own generator seeded from ``(seed, *key)`` (the DataModule passes the domain, user and
sample), so a user's negatives depend on nothing else in the data: adding a user or a domain changes no other user's.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from litzoo.framework.random_state import derive_seed


def sample_negatives(num_items: int, positives: Collection[int], count: int, seed: int, *key: int) -> np.ndarray:
    """``count`` distinct item ids drawn uniformly from ``1..num_items`` minus ``positives``, seeded by ``(seed, *key)``.

    Args:
        num_items: the domain's items (ids ``1..num_items``; 0 is padding and never drawn).
        positives: the items the user interacted with (any split), never drawn.
        count: negatives to draw.
        seed, key: the draw's seed: the same ``(seed, *key)`` gives the same negatives.

    Raises:
        ValueError: fewer than ``count`` items are left to draw from.
    """
    positives = {int(p) for p in positives if 1 <= int(p) <= num_items}
    pool = num_items - len(positives)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if pool < count:
        raise ValueError(f"only {pool} item(s) of {num_items} are not the user's, fewer than the {count} negatives asked for")
    rng = np.random.default_rng(derive_seed(seed, *key))
    if pool <= 4 * count:  # dense: draw from the explicit complement
        complement = np.setdiff1d(np.arange(1, num_items + 1), np.fromiter(positives, dtype=np.int64, count=len(positives)))
        return rng.choice(complement, size=count, replace=False).astype(np.int64)
    chosen: dict[int, None] = {}  # insertion-ordered set: the draw order is part of the result
    while len(chosen) < count:  # sparse: rejection, cheap since most items are unseen
        for item in rng.integers(1, num_items + 1, size=2 * (count - len(chosen))).tolist():
            if item not in positives and item not in chosen:
                chosen[item] = None
                if len(chosen) == count:
                    break
    return np.fromiter(chosen, dtype=np.int64, count=count)


__all__ = ["sample_negatives"]
