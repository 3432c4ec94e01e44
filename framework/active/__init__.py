"""Active learning (issue 26): pool-based deep active learning for any classifier and any map-style DataModule.

* ``strategies``: the query strategies as pure tensor functions (uncertainty, BALD, core-set, BADGE);
* ``pool``: the labelled / unlabelled pool persisted as JSON (:class:`ActivePool`) and the DataModule wrapper
  (:class:`ActiveLearningDataModule`);
* ``query``: batched scoring of the pool by a model and one round's acquisition, identical on every DDP rank;
* ``loop``: the rounds of fit / test / query, resumable, with the learning curve and its area (:class:`ActiveLearningLoop`);
* ``networks``: the MC-dropout CNN of Gal et al. (2017) for BALD on small images.

``litzoo active-learn -c configs/active_learning/digits.yaml`` runs the loop from a config.
"""

from litzoo.framework.active.loop import REINIT, ActiveLearningLoop, curve_table, learning_curve_auc
from litzoo.framework.active.networks import MCDropoutCNN
from litzoo.framework.active.pool import STRATEGIES, ActiveLearningDataModule, ActivePool
from litzoo.framework.active.query import NEEDS, dropout_layers, find_head, query, score_pool, select
from litzoo.framework.active.strategies import (
    badge_embedding,
    badge_query,
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
    "NEEDS",
    "REINIT",
    "STRATEGIES",
    "ActiveLearningDataModule",
    "ActiveLearningLoop",
    "ActivePool",
    "MCDropoutCNN",
    "badge_embedding",
    "badge_query",
    "bald",
    "curve_table",
    "dropout_layers",
    "entropy",
    "find_head",
    "kcenter_greedy",
    "kmeans_pp_seeding",
    "learning_curve_auc",
    "least_confidence",
    "margin",
    "query",
    "random_query",
    "score_pool",
    "select",
    "top_k_query",
]
