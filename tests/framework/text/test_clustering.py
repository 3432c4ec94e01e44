"""Clustering ACC (Hungarian), NMI and ARI: hand-checked tables, scikit-learn references, and the accumulating Metric."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from litzoo.framework.text.clustering import (
    ClusteringMetrics,
    adjusted_rand_index,
    clustering_accuracy,
    clustering_scores,
    contingency_table,
    hungarian_mapping,
    normalized_mutual_info,
)


def labels_from_table(table: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ids and class ids whose contingency table (clusters x classes) is ``table``."""
    preds, target = [], []
    for k, row in enumerate(table):
        for c, count in enumerate(row):
            preds += [k] * count
            target += [c] * count
    return torch.tensor(preds), torch.tensor(target)


def brute_force_accuracy(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Best one-to-one mapping by enumerating every injection of the smaller side into the larger."""
    table = contingency_table(preds, target).numpy()
    k, c = table.shape
    best = 0
    if k <= c:
        for cols in itertools.permutations(range(c), k):
            best = max(best, sum(table[i, j] for i, j in enumerate(cols)))
    else:
        for rows in itertools.permutations(range(k), c):
            best = max(best, sum(table[i, j] for j, i in enumerate(rows)))
    return best / table.sum()


def sccl_cluster_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """SCCL's ``utils/metric.py::cluster_acc`` (square zero-padded table, Hungarian on ``max - w``), re-stated."""
    from scipy.optimize import linear_sum_assignment

    size = max(y_pred.max(), y_true.max()) + 1
    w = np.zeros((size, size), dtype=np.int64)
    for p, t in zip(y_pred, y_true, strict=True):
        w[p, t] += 1
    rows, cols = linear_sum_assignment(w.max() - w)
    return w[rows, cols].sum() / y_pred.size


def test_contingency_table_by_hand():
    preds, target = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([1, 1, 0, 0, 1, 1])
    assert contingency_table(preds, target).tolist() == [[0, 2], [1, 0], [1, 2]]


def test_accuracy_of_a_permuted_perfect_clustering_is_one():
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    preds = torch.tensor([2, 2, 0, 0, 1, 1, 1])  # clusters renamed by the permutation 0->2, 1->0, 2->1
    assert clustering_accuracy(preds, target) == 1.0
    assert hungarian_mapping(preds, target) == {2: 0, 0: 1, 1: 2}
    assert (preds == target).float().mean() < 0.5  # negative control: without the matching it is not 1


def test_hungarian_beats_greedy_on_a_hand_table():
    # clusters x classes; greedy takes the largest cell (5 at [0, 0]) and is left with [1, 1] = 0: 5 / 13.
    # The optimum is [0, 1] + [1, 0] = 4 + 4 = 8: 8 / 13.
    table = [[5, 4], [4, 0]]
    preds, target = labels_from_table(table)
    assert clustering_accuracy(preds, target) == pytest.approx(8 / 13, abs=1e-12)
    assert hungarian_mapping(preds, target) == {0: 1, 1: 0}


def test_accuracy_by_hand_with_more_clusters_than_classes():
    # 3 clusters, 2 classes: only two clusters are matched; cluster 2's samples count as wrong.
    table = [[3, 1], [0, 4], [2, 2]]
    preds, target = labels_from_table(table)
    assert clustering_accuracy(preds, target) == pytest.approx((3 + 4) / 12, abs=1e-12)
    # over-segmenting a perfect clustering (each class split in two clusters) cannot reach 1
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert clustering_accuracy(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), target) == 0.5


def test_accuracy_by_hand_with_fewer_clusters_than_classes():
    # 2 clusters, 3 classes: the best injection maps cluster 0 -> class 2 (5) and cluster 1 -> class 0 (4): 9 / 15
    table = [[1, 2, 5], [4, 3, 0]]
    preds, target = labels_from_table(table)
    assert clustering_accuracy(preds, target) == pytest.approx(9 / 15, abs=1e-12)


def test_accuracy_equals_brute_force_and_sccl_on_random_labellings():
    generator = torch.Generator().manual_seed(0)
    for num_clusters, num_classes in [(3, 3), (4, 2), (2, 5), (5, 5), (1, 3)]:
        for _ in range(4):
            preds = torch.randint(0, num_clusters, (40,), generator=generator)
            target = torch.randint(0, num_classes, (40,), generator=generator)
            expected = brute_force_accuracy(preds, target)
            assert clustering_accuracy(preds, target) == pytest.approx(expected, abs=1e-12)
            assert clustering_accuracy(preds, target) == pytest.approx(sccl_cluster_acc(target.numpy(), preds.numpy()), abs=1e-12)


def test_nmi_and_ari_by_hand():
    # a perfect but renamed clustering
    assert normalized_mutual_info(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0, abs=1e-6)
    assert adjusted_rand_index(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0, abs=1e-6)
    # independent partitions of 4 points: [0,0,1,1] vs [0,1,0,1]: mutual information 0 -> NMI 0;
    # ARI = (sum C(n_ij,2) - E) / (mean - E) with sum C(n_ij,2)=0, a = b = 2, E = 2*2/6 = 2/3: (0 - 2/3) / (2 - 2/3) = -0.5
    preds, target = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    assert normalized_mutual_info(preds, target) == pytest.approx(0.0, abs=1e-6)
    assert adjusted_rand_index(preds, target) == pytest.approx(-0.5, abs=1e-6)
    # one group on both sides: identical partitions, scikit-learn's 1.0 (torchmetrics alone says 0)
    assert normalized_mutual_info(torch.tensor([3, 3, 3]), torch.tensor([0, 0, 0])) == 1.0
    assert normalized_mutual_info_score([0, 0, 0], [3, 3, 3]) == 1.0


def test_nmi_and_ari_equal_scikit_learn():
    generator = torch.Generator().manual_seed(1)
    for num_clusters, num_classes in [(2, 2), (5, 3), (3, 6), (1, 4)]:
        for _ in range(3):
            preds = torch.randint(0, num_clusters, (60,), generator=generator)
            target = torch.randint(0, num_classes, (60,), generator=generator)
            # a half-correct labelling, so that the values are not all near 0
            preds[:30] = target[:30] % num_clusters
            assert normalized_mutual_info(preds, target) == pytest.approx(normalized_mutual_info_score(target, preds), abs=1e-6)
            assert adjusted_rand_index(preds, target) == pytest.approx(adjusted_rand_score(target, preds), abs=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="same length"):
        clustering_accuracy(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        clustering_accuracy(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        normalized_mutual_info(torch.tensor([-1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one"):
        adjusted_rand_index(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        ClusteringMetrics().update(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))


def test_metric_fed_in_batches_equals_the_functional_result():
    generator = torch.Generator().manual_seed(2)
    target = torch.randint(0, 4, (103,), generator=generator)
    scores = torch.randn(103, 5, generator=generator)
    scores[torch.arange(60), target[:60]] += 3.0  # partly right, so every number is far from 0
    preds = scores.argmax(dim=1)
    metric = ClusteringMetrics()
    for start in range(0, 103, 16):  # uneven last batch; scores (argmax taken) in even batches, ids in odd ones
        batch = slice(start, start + 16)
        metric.update(scores[batch] if start // 16 % 2 == 0 else preds[batch], target[batch])
    result = metric.compute()
    expected = clustering_scores(preds, target)
    assert set(result) == {"acc", "nmi", "ari"}
    for name in expected:
        assert float(result[name]) == pytest.approx(expected[name], abs=1e-6)
    assert expected["acc"] > 0.5 and expected["nmi"] > 0.2 and expected["ari"] > 0.2
    # a batch-mean of per-batch ACC is not the set's ACC: the states must really be concatenated
    per_batch = np.mean([clustering_accuracy(preds[s : s + 16], target[s : s + 16]) for s in range(0, 103, 16)])
    assert abs(per_batch - expected["acc"]) > 1e-3
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="before any update"):
        metric.compute()
