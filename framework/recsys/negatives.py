"""Sampled negatives for evaluating a recommender: the held-out item ranked among items the user never touched.

Protocol (SASRec's ``evaluate``; RecBole's ``uni100`` evaluation; RecGURU samples ``n_negs`` the same way): for each
held-out positive, 100 items drawn uniformly from the domain's items that the user never interacted with in *any*
split (RecBole's sampler excludes ``used_ids`` of the whole dataset; SASRec excludes ``rated``, train + valid + test),
so no test or validation item of the user can come back as a negative. SASRec redraws on a collision but allows the
same negative twice; chosen here: 100 *distinct* negatives (a duplicate would count twice in the rank), refused when
the domain has fewer unseen items than that.

Determinism: each draw has its own generator seeded from ``(seed, *key)`` (the DataModule passes the domain, user and
sample), so a user's negatives depend on nothing else in the data: adding a user or a domain changes no other user's.

Training negatives (:func:`sample_negatives_avoiding`): many per step, so drawn in bulk from a torch generator (the global
one by default, which ``seed_everything`` seeds and ``ExactResume`` restores) by rejection against the sorted keys
``user * (num_items + 1) + item`` of every known (user, item) pair (:func:`known_item_keys`): uniform (SASRec's sampler,
RecGURU's ``pickle_loader``) or weighted (RecGURU's popularity^0.75 negatives), with repeats, never a known item.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from litzoo.framework.errors import LitzooError
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


def known_item_keys(known: Mapping[int, Iterable[int]], num_items: int) -> Tensor:
    """Sorted ``(N,)`` long keys ``user * (num_items + 1) + item`` of the known (user, item) pairs.

    Raises:
        LitzooError: a user who knows every item has no negative to draw.
    """
    keys = []
    for user, items in known.items():
        items = sorted({int(i) for i in items})
        if len(items) >= num_items:
            raise LitzooError(f"user {user} interacted with all {num_items} items of the domain: no negative can be drawn for it")
        keys.extend(int(user) * (num_items + 1) + i for i in items)
    return torch.tensor(sorted(keys), dtype=torch.long)


def sample_negatives_avoiding(
    targets: Tensor, users: Tensor, keys: Tensor, num_items: int, generator: torch.Generator | None = None, weights: Tensor | None = None
) -> Tensor:
    """One negative per entry of ``targets``, never one of the row's user's known items; 0 where the target is 0.

    Args:
        targets: ``(B, ...)`` positive item ids, 0 at padding (``(B, L)`` for one negative per slot, ``(B, L, n)`` —
            e.g. ``target[..., None].expand(-1, -1, n)`` — for ``n`` per slot).
        users: ``(B,)`` user ids, one per row.
        keys: :func:`known_item_keys` of the users' known items (sorted).
        num_items: items of the domain (ids ``1..num_items``).
        generator: the draws' generator (default: torch's global one, which a resumed run restores).
        weights: ``(num_items + 1,)`` non-negative draw weights of the ids (column 0 ignored); ``None``: uniform.
            Every user needs an unknown item of positive weight, or the rejection would not end: RecGURU's popularity
            weights are positive for every item with a training interaction, which every k-core item has.

    Raises:
        ValueError: ``weights`` of the wrong shape, negative, or all zero.
    """
    users = users.cpu()
    keys = keys.cpu()
    shape = targets.shape
    if weights is not None:
        weights = weights.detach().cpu().double().clone()
        if weights.shape != (num_items + 1,) or (weights < 0).any() or not torch.isfinite(weights).all():
            raise ValueError(f"weights must be ({num_items + 1},), finite and non-negative, got shape {tuple(weights.shape)}")
        weights[0] = 0.0
        if weights.sum() <= 0:
            raise ValueError("weights put no mass on any item")

    def draw(count: int) -> Tensor:
        if weights is None:
            return torch.randint(1, num_items + 1, (count,), generator=generator)
        return torch.multinomial(weights, count, replacement=True, generator=generator)

    def known(candidates: Tensor, offsets: Tensor) -> Tensor:
        if not len(keys):
            return torch.zeros_like(candidates, dtype=torch.bool)
        query = offsets + candidates
        index = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
        return keys[index] == query

    draws = draw(targets.numel()).reshape(shape)
    user_keys = (users * (num_items + 1)).reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    bad = known(draws, user_keys)
    while bad.any():  # rejection: each user has at least one unknown item (known_item_keys checks), so this ends
        offsets = user_keys[bad]
        redraw = draw(len(offsets))
        draws[bad] = redraw
        bad[bad.clone()] = known(redraw, offsets)
    return draws.masked_fill(targets.cpu() == 0, 0).to(targets.device)


def uniform_negatives(num_items: int, positives: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` item ids drawn uniformly and independently (repeats allowed, as CAT-ART) from ``1..num_items`` minus
    ``positives``, by rejection as ``SingleEmbedRec`` draws them.

    Raises:
        ValueError: every item is a positive.
    """
    positives = np.asarray(positives, dtype=np.int64)
    if np.unique(positives[(positives >= 1) & (positives <= num_items)]).size >= num_items:
        raise ValueError(f"every one of the {num_items} items is a positive: no negative to draw")
    drawn = rng.integers(1, num_items + 1, size=count)
    rejected = np.isin(drawn, positives)
    while rejected.any():
        drawn[rejected] = rng.integers(1, num_items + 1, size=int(rejected.sum()))
        rejected = np.isin(drawn, positives)
    return drawn


__all__ = ["known_item_keys", "sample_negatives", "sample_negatives_avoiding", "uniform_negatives"]
