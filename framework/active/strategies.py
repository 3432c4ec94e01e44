"""Active-learning query strategies as pure functions on tensors (issue 26, first slice).

The deep active learning survey (Ren, Xiao, Chang, Huang, Li, Gupta, Chen, Wang, "A Survey of Deep Active Learning",
ACM Computing Surveys 2021, arXiv:2009.00236) sorts query strategies into uncertainty, diversity / representativeness
and hybrids. This file holds the scores and the batch selections; the pool DataModule, the outer loop and the batched
scoring of a model come in later slices and call these functions.

Uncertainty scores (higher = more uncertain, so the query takes the *largest*, except :func:`margin`):

* :func:`least_confidence` ``1 - max_c p_c``; :func:`margin` ``p_(1) - p_(2)`` (top-1 minus top-2 probability: the
  query takes the **smallest** margins, ``top_k_query(margin(p), k, largest=False)``); :func:`entropy`
  ``-sum_c p_c log p_c`` (natural log, ``0 log 0 = 0``). Reference: JordanAsh/badge ``query_strategies/
  least_confidence.py`` (sorts ``max p`` ascending), ``margin_sampling.py`` (sorts ``p_(1) - p_(2)`` ascending),
  ``entropy_sampling.py``; baal ``Margin`` / ``Certainty`` / ``Entropy``.
* :func:`bald` the mutual information between the prediction and the weights under MC dropout,
  ``H[mean_t p_t] - mean_t H[p_t]`` (Houlsby, Huszar, Ghahramani, Lengyel, "Bayesian Active Learning for
  Classification and Preference Learning", arXiv:1112.5745, 2011; Gal, Islam, Ghahramani, "Deep Bayesian Active
  Learning with Image Data", ICML 2017). Checked line by line against baal-org/baal
  ``baal/active/heuristics/heuristics.py`` ``BALD.compute_score`` (``xlogy``, natural log, mean over the last axis of
  ``[N, C, T]``); ours takes ``(T, N, C)``, the order in which MC passes are stacked, and clamps the rounding
  negatives (the score is >= 0 by Jensen's inequality) to 0.

Diversity / hybrid selections:

* :func:`kcenter_greedy`: the greedy 2-approximation of the k-center (core-set) problem (Sener, Savarese, "Active
  Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018; ozansener/active_learning_coreset and
  JordanAsh/badge ``query_strategies/kcenter_greedy.py``, read for this file): every pool point keeps its distance to
  the nearest labelled (or already picked) point, the farthest is picked, and the distances are updated with the
  new centre. Euclidean distance; the picks do not change under squaring (the official ``compute_distance_mat.py``
  works with squared distances, the badge copy with their square roots). Chosen where the references are silent or
  differ: with nothing labelled the first pick is pool index 0 (the official Gurobi solver seeds its greedy start with
  ``subset = [0]``); ties go to the lowest index (``argmax``); an already picked point is never picked again, even
  when every remaining distance is 0 (duplicates), in which case the lowest unpicked index is taken. The initial
  pool-to-labelled distances are computed in ``chunk_size x chunk_size`` blocks (never the whole ``N x M`` matrix,
  which the badge copy builds in full, together with the pool's own ``N x N``); each update is one ``N``-vector.
* :func:`badge_embedding` and :func:`kmeans_pp_seeding`: BADGE (Ash, Zhang, Krishnamurthy, Langford, Agarwal, "Deep
  Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds", ICLR 2020; JordanAsh/badge
  ``query_strategies/strategy.py`` ``get_grad_embedding`` and ``badge_sampling.py`` ``init_centers``, read line by
  line). The embedding is the gradient of the cross-entropy at the *predicted* label ``y_hat = argmax p`` with
  respect to the last linear layer's weight ``W (C, D)``, flattened row-major: block ``c`` is ``(p_c - 1[c = y_hat])
  h``. **Sign**: the reference stores ``(1[c = y_hat] - p_c) h``, the negative gradient; every norm and distance,
  hence every BADGE selection, is the same, and ours equals autograd's gradient (a test checks it). Layout is the
  reference's (class ``c`` at ``[c D, (c + 1) D)``). k-means++ seeding as the reference's ``init_centers``: the first
  centre is the point of **largest norm** (``argmax |g|^2``, deterministic, not a uniform draw as in Arthur &
  Vassilvitskii 2007), then each next centre is drawn with probability ``D(x)^2 / sum D^2``, ``D`` the Euclidean
  distance to the nearest chosen centre, chosen points having ``D = 0``. Where the reference would loop forever (all
  remaining points duplicate chosen ones, ``sum D^2 = 0``) ours draws uniformly among the unchosen points.

Selections: :func:`top_k_query` (ties to the lowest index first, in either direction) and :func:`random_query`
(``randperm`` under a ``torch.Generator``). Every random choice takes an explicit generator, so a query is a
function of the inputs and the generator's state (identical on every rank when the generator is seeded alike).
Bad arguments (shapes, ``k`` larger than the pool, non-finite or non-probability inputs) raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Rows of a probability matrix may sum to 1 up to this (float32 softmax outputs are off by ~1e-7 per class).
_PROB_SUM_TOLERANCE = 1e-3


def _check_finite(tensor: Tensor, name: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or infinity)")


def _check_probabilities(probs: Tensor, name: str, min_classes: int = 1) -> None:
    """``probs (..., C)``: floating, finite, in [0, 1], rows summing to 1."""
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of probabilities, got dtype {probs.dtype}")
    if probs.shape[-1] < min_classes:
        raise ValueError(f"{name} needs at least {min_classes} classes, got shape {tuple(probs.shape)}")
    _check_finite(probs, name)
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError(f"{name} holds values outside [0, 1]: pass softmax probabilities, not logits")
    sums = probs.sum(-1)
    if sums.numel() and (sums - 1).abs().max() > _PROB_SUM_TOLERANCE:
        raise ValueError(f"{name} rows must sum to 1 (worst row sums to {sums[(sums - 1).abs().argmax()].item():.6g})")


def _check_matrix(tensor: Tensor, name: str) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {tensor.dtype}")
    _check_finite(tensor, name)


def _check_k(k: int, num_pool: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {k!r}")
    if k < 0 or k > num_pool:
        raise ValueError(f"k must be in [0, {num_pool}] (the pool holds {num_pool} samples), got {k}")


def _check_pool_probs(probs: Tensor, min_classes: int = 1) -> None:
    if probs.dim() != 2:
        raise ValueError(f"probs must be 2-D (N, C), got shape {tuple(probs.shape)}")
    _check_probabilities(probs, "probs", min_classes)


def least_confidence(probs: Tensor) -> Tensor:
    """``1 - max_c p_c`` per sample, from softmax probabilities ``probs (N, C)``; the query takes the largest."""
    _check_pool_probs(probs)
    return 1 - probs.max(dim=1).values


def margin(probs: Tensor) -> Tensor:
    """Top-1 minus top-2 probability per sample, ``probs (N, C)`` with ``C >= 2``, in ``[0, 1]``.

    Sign convention: a *small* margin means an uncertain sample, so the query takes the **smallest** scores:
    ``top_k_query(margin(probs), k, largest=False)`` (as the badge reference sorts ascending).
    """
    _check_pool_probs(probs, min_classes=2)
    top2 = probs.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def entropy(probs: Tensor) -> Tensor:
    """Predictive entropy ``-sum_c p_c log p_c`` (nats, ``0 log 0 = 0``) per sample; the query takes the largest."""
    _check_pool_probs(probs)
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def bald(mc_probs: Tensor) -> Tensor:
    """BALD mutual information per sample from ``mc_probs (T, N, C)``, ``T`` MC-dropout passes.

    ``I = H[mean_t p_t] - mean_t H[p_t]`` in nats: 0 when all passes agree, larger when confident passes disagree.
    Clamped at 0 (rounding can make it ``-1e-8``). The query takes the largest.
    """
    if mc_probs.dim() != 3:
        raise ValueError(f"mc_probs must be 3-D (T passes, N samples, C classes), got shape {tuple(mc_probs.shape)}")
    if mc_probs.shape[0] < 1:
        raise ValueError("mc_probs needs at least one MC pass (T >= 1)")
    _check_probabilities(mc_probs, "mc_probs")
    mean_probs = mc_probs.mean(dim=0)
    entropy_of_mean = -torch.special.xlogy(mean_probs, mean_probs).sum(dim=1)
    mean_of_entropies = -torch.special.xlogy(mc_probs, mc_probs).sum(dim=2).mean(dim=0)
    return (entropy_of_mean - mean_of_entropies).clamp_min(0)


def top_k_query(scores: Tensor, k: int, largest: bool = True) -> Tensor:
    """Indices of the ``k`` largest (``largest=False``: smallest) ``scores (N,)``, best first.

    Tie rule: among equal scores the lowest index comes first (a stable sort), in both directions, so a query is a
    deterministic function of the scores.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.double()
    _check_finite(scores, "scores")
    _check_k(k, scores.numel())
    # A stable ascending sort of the negated scores keeps equal scores in index order for the descending case too
    # (negation is exact for floats).
    order = torch.sort(-scores if largest else scores, stable=True).indices
    return order[:k]


def random_query(num_pool: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct pool indices drawn uniformly without replacement (``randperm`` under ``generator``)."""
    if isinstance(num_pool, bool) or not isinstance(num_pool, int) or num_pool < 0:
        raise ValueError(f"num_pool must be a non-negative int, got {num_pool!r}")
    _check_k(k, num_pool)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return torch.randperm(num_pool, generator=generator)[:k]


def _min_distances(pool: Tensor, labelled: Tensor, chunk_size: int) -> Tensor:
    """``min_j |pool_i - labelled_j|`` for every pool row, in ``chunk_size x chunk_size`` blocks."""
    result = torch.full((len(pool),), float("inf"), dtype=pool.dtype)
    for start in range(0, len(pool), chunk_size):
        block = pool[start : start + chunk_size]
        best = result[start : start + chunk_size]
        for other in range(0, len(labelled), chunk_size):
            # Direct differences (not the |a|^2 + |b|^2 - 2ab expansion) so equal points are at exactly 0.
            dist = torch.cdist(block, labelled[other : other + chunk_size], compute_mode="donot_use_mm_for_euclid_dist")
            torch.minimum(best, dist.min(dim=1).values, out=best)
    return result


def _distances_to(points: Tensor, centre: Tensor, chunk_size: int) -> Tensor:
    """``|points_i - centre|`` for every row, computed ``chunk_size`` rows at a time."""
    return torch.cat([(points[s : s + chunk_size] - centre).norm(dim=1) for s in range(0, len(points), chunk_size)])


def kcenter_greedy(pool_features: Tensor, labelled_features: Tensor | None, k: int, chunk_size: int = 1024) -> Tensor:
    """Greedy k-center (core-set) selection of ``k`` pool indices, in pick order.

    Args:
        pool_features: ``(N, D)`` features of the unlabelled pool (e.g. penultimate activations).
        labelled_features: ``(M, D)`` features of the labelled set, or ``None`` / ``M = 0`` when nothing is
            labelled (then the first pick is pool index 0).
        k: how many to pick, ``0 <= k <= N``.
        chunk_size: rows per block of the distance computation (memory ``chunk_size^2`` for the initial
            distances, ``chunk_size x D`` for each update).

    Returns:
        ``(k,)`` long tensor of pool indices; each pick is the pool point farthest from the labelled set and the
        earlier picks (ties: lowest index).
    """
    _check_matrix(pool_features, "pool_features")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    _check_k(k, len(pool_features))
    num_pool = len(pool_features)
    if labelled_features is not None and len(labelled_features):
        _check_matrix(labelled_features, "labelled_features")
        if labelled_features.shape[1] != pool_features.shape[1]:
            raise ValueError(
                f"labelled_features have {labelled_features.shape[1]} dimensions, pool_features {pool_features.shape[1]}"
            )
        nearest = _min_distances(pool_features, labelled_features.to(pool_features.dtype), chunk_size)
    else:
        nearest = torch.full((num_pool,), float("inf"), dtype=pool_features.dtype)
    picked = torch.zeros(num_pool, dtype=torch.bool)
    picks: list[int] = []
    for step in range(k):
        if step == 0 and torch.isinf(nearest).all():
            index = 0
        else:
            # Picked points are excluded outright: with duplicates every remaining distance may be 0.
            index = int(torch.where(picked, torch.tensor(-1.0, dtype=nearest.dtype), nearest).argmax())
        picks.append(index)
        picked[index] = True
        torch.minimum(nearest, _distances_to(pool_features, pool_features[index], chunk_size), out=nearest)
    return torch.tensor(picks, dtype=torch.long)


def badge_embedding(penultimate: Tensor, probs: Tensor) -> Tensor:
    """BADGE gradient embedding ``(p - onehot(y_hat)) ⊗ h``, ``(N, C * D)``, block ``c`` at columns ``[c D, (c+1) D)``.

    Args:
        penultimate: ``(N, D)`` inputs ``h`` of the last linear layer.
        probs: ``(N, C)`` softmax probabilities of that layer's logits; ``y_hat = argmax p`` (first on ties).

    Returns:
        The gradient of ``cross_entropy(W h + b, y_hat)`` with respect to ``W (C, D)``, flattened row-major; the
        negative of the reference's stored vector (same norms and distances).
    """
    _check_matrix(penultimate, "penultimate")
    _check_pool_probs(probs)
    if len(probs) != len(penultimate):
        raise ValueError(f"probs has {len(probs)} rows, penultimate {len(penultimate)}")
    residual = probs.to(penultimate.dtype).clone()
    residual[torch.arange(len(probs)), probs.argmax(dim=1)] -= 1
    return (residual.unsqueeze(2) * penultimate.unsqueeze(1)).reshape(len(probs), -1)


def _kmeans_pp(num_rows: int, rows: Callable[[int, int], Tensor], k: int, generator: torch.Generator, chunk_size: int) -> Tensor:
    """k-means++ seeding over ``num_rows`` float64 rows that ``rows(start, stop)`` returns ``chunk_size`` at a time."""
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    chunks = range(0, num_rows, chunk_size)
    first = int(torch.cat([rows(s, s + chunk_size).pow(2).sum(dim=1) for s in chunks]).argmax())
    chosen = torch.zeros(num_rows, dtype=torch.bool)
    chosen[first] = True
    picks = [first]
    centre = rows(first, first + 1)[0]
    nearest = torch.cat([(rows(s, s + chunk_size) - centre).norm(dim=1) for s in chunks])
    for _ in range(1, k):
        weights = nearest.pow(2).masked_fill(chosen, 0.0)
        if weights.sum() <= 0:
            weights = (~chosen).double()
        index = int(torch.multinomial(weights, 1, generator=generator))
        picks.append(index)
        chosen[index] = True
        centre = rows(index, index + 1)[0]
        torch.minimum(nearest, torch.cat([(rows(s, s + chunk_size) - centre).norm(dim=1) for s in chunks]), out=nearest)
    return torch.tensor(picks, dtype=torch.long)


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def kmeans_pp_seeding(embeddings: Tensor, k: int, generator: torch.Generator, chunk_size: int = 4096) -> Tensor:
    """k-means++ seeding as BADGE's ``init_centers``: ``k`` distinct row indices of ``embeddings (N, E)``, in order.

    The first centre is the row of largest Euclidean norm (lowest index on ties); each next one is drawn with
    probability ``D^2 / sum D^2``, ``D`` the distance to the nearest chosen centre (chosen rows and their duplicates
    have ``D = 0`` and are never drawn while a distinct row remains; when none remains the draw is uniform over the
    unchosen rows). Distances are computed ``chunk_size`` rows at a time, in float64 (float32 squares of large norms
    lose the small distances' share of the D^2 weights).
    """
    _check_matrix(embeddings, "embeddings")
    _check_k(k, len(embeddings))
    _check_generator(generator)
    _check_chunk_size(chunk_size)
    points = embeddings.double()
    return _kmeans_pp(len(points), lambda start, stop: points[start:stop], k, generator, chunk_size)


def badge_query(penultimate: Tensor, probs: Tensor, k: int, generator: torch.Generator, chunk_size: int = 1024) -> Tensor:
    """BADGE's selection, ``kmeans_pp_seeding(badge_embedding(penultimate, probs), k, generator)``, without holding the
    ``(N, C * D)`` gradient embeddings: each distance pass rebuilds them ``chunk_size`` rows at a time from the
    ``(N, D)`` features and ``(N, C)`` probabilities (memory ``N (C + D)`` instead of ``N C D``; the same arithmetic,
    hence the same picks, as the materialised embedding)."""
    _check_matrix(penultimate, "penultimate")
    _check_pool_probs(probs)
    if len(probs) != len(penultimate):
        raise ValueError(f"probs has {len(probs)} rows, penultimate {len(penultimate)}")
    _check_k(k, len(probs))
    _check_generator(generator)
    _check_chunk_size(chunk_size)
    return _kmeans_pp(len(probs), lambda start, stop: badge_embedding(penultimate[start:stop], probs[start:stop]).double(), k, generator, chunk_size)


__all__ = [
    "badge_embedding",
    "badge_query",
    "bald",
    "entropy",
    "kcenter_greedy",
    "kmeans_pp_seeding",
    "least_confidence",
    "margin",
    "random_query",
    "top_k_query",
]
