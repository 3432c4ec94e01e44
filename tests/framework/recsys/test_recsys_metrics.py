"""HR@K / NDCG@K / MRR by hand with ties (pessimistic), sampled vs full ranking, against torchmetrics, and per user group."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from litzoo.framework.recsys import RankingMetrics, full_ranks, history_mask, rank_metrics, sampled_ranks
from litzoo.framework.recsys.metrics import SplitRankingMetrics

SAMPLED = torch.tensor([
    [0.9, 0.1, 0.5, 0.9, 0.2],  # the positive ties with a negative: pessimistic rank 2
    [0.3, 0.4, 0.5, 0.6, 0.7],  # last: rank 5
    [1.0, 0.0, 0.0, 0.0, 0.0],  # first: rank 1
])  # fmt: skip


def test_sampled_ranks_and_metrics_by_hand():
    ranks = sampled_ranks(SAMPLED)
    assert ranks.tolist() == [2.0, 5.0, 1.0]
    metrics = rank_metrics(ranks, ks=(1, 2))
    assert metrics["hr@1"] == pytest.approx(1 / 3) and metrics["hr@2"] == pytest.approx(2 / 3)
    assert metrics["ndcg@2"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)
    assert metrics["ndcg@1"] == pytest.approx(1 / 3)
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1 / 5 + 1) / 3) and metrics["count"] == 3
    # a constant scorer ranks last, never first
    assert sampled_ranks(torch.zeros(4, 101)).tolist() == [101.0] * 4
    with pytest.raises(ValueError, match="finite"):
        sampled_ranks(torch.tensor([[float("nan"), 0.0]]))


def test_full_ranks_mask_padding_and_the_users_other_items():
    scores = torch.tensor([[9.0, 8.0, 1.0, 5.0, 5.0, 2.0], [0.0, 1.0, float("-inf"), 3.0, 4.0, 7.0]])
    targets = torch.tensor([3, 5])
    exclude = history_mask([[1, 3], [2]], num_items=5)  # row 0's own target 3 in its history is never left out
    assert exclude.tolist() == [[False, True, False, True, False, False], [False, False, True, False, False, False]]
    assert full_ranks(scores, targets, exclude).tolist() == [2.0, 1.0]
    # negative control: without the history mask, item 1 (8.0) counts ahead of the target; padding column 0 never counts
    assert full_ranks(scores[:1], targets[:1]).tolist() == [3.0]
    with pytest.raises(ValueError, match="finite"):
        full_ranks(scores[1:], targets[1:])  # the -inf item is not left out here
    with pytest.raises(ValueError, match="1..num_items"):
        full_ranks(scores, torch.tensor([0, 5]))


def test_sampled_vs_full_on_the_same_scores():
    # full ranking over all items ranks at least as low as the sampled rank among a subset of the same items
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 301, generator=generator)
    targets = torch.randint(1, 301, (50,), generator=generator)
    full = full_ranks(scores, targets)
    negatives = torch.stack([torch.randperm(300, generator=generator)[:100] + 1 for _ in range(50)])
    negatives = torch.where(negatives == targets[:, None], (negatives % 300) + 1, negatives)
    candidates = torch.cat([targets[:, None], negatives], 1)
    sampled = sampled_ranks(scores.gather(1, candidates))
    brute = torch.tensor([1 + sum(scores[b, j] >= scores[b, targets[b]] for j in range(1, 301) if j != targets[b]) for b in range(50)])
    assert torch.equal(full, brute.float())
    assert (sampled <= full).all() and (sampled < full).any()


def test_metrics_equal_torchmetrics_without_ties():
    generator = torch.Generator().manual_seed(1)
    # column 0 the positive; continuous scores: no ties; positive scores, since torchmetrics' MRR (unlike ours and the
    # papers') counts a positive whose score is <= 0 as not retrieved
    scores = torch.rand(40, 101, generator=generator) + 0.01
    ranks = sampled_ranks(scores)
    ours = rank_metrics(ranks, ks=(10,))
    indexes = torch.arange(40)[:, None].expand(40, 101).reshape(-1)
    target = torch.zeros(40, 101, dtype=torch.bool)
    target[:, 0] = True
    preds, target = scores.reshape(-1), target.reshape(-1)
    assert ours["hr@10"] == pytest.approx(RetrievalHitRate(top_k=10)(preds, target, indexes=indexes).item(), abs=1e-6)
    assert ours["ndcg@10"] == pytest.approx(RetrievalNormalizedDCG(top_k=10)(preds, target, indexes=indexes).item(), abs=1e-6)
    assert ours["mrr"] == pytest.approx(RetrievalMRR()(preds, target, indexes=indexes).item(), abs=1e-6)


def test_ranking_metric_accumulates_overall_and_for_a_group():
    metric = RankingMetrics(ks=(1, 2), group_name="sparse")
    ranks = sampled_ranks(SAMPLED)
    metric.update(ranks[:2], group=torch.tensor([True, False]))
    metric.update(ranks[2:], group=torch.tensor([True]))
    out = metric.compute()
    overall = rank_metrics(ranks, ks=(1, 2))
    group = rank_metrics(ranks, ks=(1, 2), group=torch.tensor([True, False, True]))
    for name in ("hr@1", "hr@2", "ndcg@2", "mrr"):
        assert out[name].item() == pytest.approx(overall[name]) and out[f"sparse/{name}"].item() == pytest.approx(group[name])
    assert out["sparse/mrr"].item() == pytest.approx((1 / 2 + 1) / 2)
    metric.reset()
    metric.update(ranks)
    assert math.isnan(metric.compute()["sparse/hr@1"].item())
    with pytest.raises(ValueError, match="ranks must be"):
        metric.update(torch.tensor([0.0]))


def test_split_ranking_metrics_names_groups_and_leaves_out_empty_ones():
    metrics = SplitRankingMetrics((1,), groups=("d.0", "d1"))
    metrics.update("val", "sampled", torch.tensor([1.0, 3.0]), torch.tensor([True, False]), group=1)
    metrics.update("val", "full", torch.tensor([2.0, 2.0]), torch.tensor([False, False]), group=1)
    assert metrics.count("val") == 2 and metrics.count("test") == 0
    values = {k: float(v) for k, v in metrics.compute("val").items()}
    assert values["val/sampled/hr@1"] == 0.5 and values["val/sampled/sparse/mrr"] == 1.0 and values["val/d1/sampled/mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert values["val/full/ndcg@1"] == 0.0 and "val/full/sparse/mrr" not in values  # no sparse row in full: NaN, left out
    assert not any(k.startswith("val/d.0/") for k in values)  # a group without rows is left out
    assert metrics.count("val") == 0  # reset
