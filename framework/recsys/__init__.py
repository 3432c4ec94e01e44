"""The recommendation wing: interaction files (RecBole ``.inter``, plain CSV) joined over domains, k-core filtering,
leave-one-out and time splits, sampled evaluation negatives, and HR / NDCG / MRR for sampled and full ranking.

Shared by the recommenders of issue 23 (RecGURU, CAT-ART, and their SASRec / BPR-MF baselines);
``litzoo.datamodules.interactions`` builds its batches from these.
"""

from litzoo.framework.recsys.interactions import (
    DomainInteractions,
    JoinedInteractions,
    detect_format,
    join_domains,
    read_csv_interactions,
    read_inter,
    read_interactions,
)
from litzoo.framework.recsys.metrics import (
    SPARSE_MAX_INTERACTIONS,
    RankingMetrics,
    SplitRankingMetrics,
    full_ranks,
    history_mask,
    rank_metrics,
    sampled_ranks,
)
from litzoo.framework.recsys.negatives import known_item_keys, sample_negatives, sample_negatives_avoiding, uniform_negatives
from litzoo.framework.recsys.splits import k_core, leave_one_out, left_pad, time_cutoffs, time_parts, user_time_order

__all__ = [
    "SPARSE_MAX_INTERACTIONS",
    "DomainInteractions",
    "JoinedInteractions",
    "RankingMetrics",
    "SplitRankingMetrics",
    "detect_format",
    "full_ranks",
    "history_mask",
    "join_domains",
    "k_core",
    "leave_one_out",
    "left_pad",
    "rank_metrics",
    "read_csv_interactions",
    "read_inter",
    "read_interactions",
    "known_item_keys",
    "sample_negatives",
    "sample_negatives_avoiding",
    "sampled_ranks",
    "time_cutoffs",
    "time_parts",
    "uniform_negatives",
    "user_time_order",
]
