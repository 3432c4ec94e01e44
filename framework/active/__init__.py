"""Active learning (issue 26): query strategies as pure tensor functions (``strategies``).

The pool DataModule wrapper, the per-round loop and batched model scoring are later slices; they call these functions.
"""

from litzoo.framework.active.strategies import (
    badge_embedding,
    bald,
    entropy,
    kcenter_greedy,
    kmeans_pp_seeding,
    least_confidence,
    margin,
    random_query,
    top_k_query,
)

__all__ = [
    "badge_embedding",
    "bald",
    "entropy",
    "kcenter_greedy",
    "kmeans_pp_seeding",
    "least_confidence",
    "margin",
    "random_query",
    "top_k_query",
]
