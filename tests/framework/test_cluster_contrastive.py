"""Contrastive Clustering's cluster-level loss and entropy term, and the category-disentangling term, against loops
written from the formulas (and from the official ``ClusterLoss`` of Yunfan-Li/Contrastive-Clustering)."""

from __future__ import annotations

import math

import pytest
import torch

from litzoo.framework.losses.cluster_contrastive import ClusterContrastiveLoss, category_disentangle_loss, cluster_entropy_term


def soft_assignments(seed: int, batch: int = 6, k: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, k, generator=generator, dtype=torch.float64).mul(2).softmax(1)


def column_contrast_by_loops(y0: torch.Tensor, y1: torch.Tensor, temperature: float) -> float:
    """ℓ(k) over the 2K columns, one at a time: cosine to the partner column against every other column."""
    columns = [y0[:, k] for k in range(y0.shape[1])] + [y1[:, k] for k in range(y1.shape[1])]
    k_clusters, total = y0.shape[1], 0.0
    for i, column in enumerate(columns):
        partner = (i + k_clusters) % (2 * k_clusters)
        sims = {j: float(torch.dot(column, other) / (column.norm() * other.norm())) / temperature for j, other in enumerate(columns) if j != i}
        total += -math.log(math.exp(sims[partner]) / sum(math.exp(s) for s in sims.values()))
    return total / (2 * k_clusters)


def entropy_by_hand(y: torch.Tensor) -> float:
    p = (y.sum(0) / y.sum()).tolist()
    return math.log(len(p)) + sum(q * math.log(q) for q in p if q > 0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_cluster_loss_equals_a_loop_over_clusters_plus_the_entropy_terms(temperature):
    y0, y1 = soft_assignments(0), soft_assignments(1)
    loss = ClusterContrastiveLoss(temperature=temperature, entropy_weight=0.7)
    contrast, entropy = loss.terms(y0, y1)
    assert float(contrast) == pytest.approx(column_contrast_by_loops(y0, y1, temperature), abs=1e-10)
    assert float(entropy) == pytest.approx(entropy_by_hand(y0) + entropy_by_hand(y1), abs=1e-12)
    assert float(loss(y0, y1)) == pytest.approx(float(contrast) + 0.7 * float(entropy), abs=1e-12)
    # negative control: the partner is the same cluster of the other view; pairing with a shifted column differs
    assert float(contrast) != pytest.approx(column_contrast_by_loops(y0, y1.roll(1, dims=1), temperature), abs=1e-6)


def test_the_entropy_term_by_hand():
    balanced = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    assert float(cluster_entropy_term(balanced)) == pytest.approx(0.0, abs=1e-7)
    collapsed = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(cluster_entropy_term(collapsed)) == pytest.approx(math.log(3), abs=1e-6)  # 0·log 0 = 0, not NaN
    skewed = torch.tensor([[0.75, 0.25]])
    assert float(cluster_entropy_term(skewed)) == pytest.approx(math.log(2) + 0.75 * math.log(0.75) + 0.25 * math.log(0.25), abs=1e-7)


def test_the_disentangling_term_by_hand():
    disjoint = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert float(category_disentangle_loss(disjoint, disjoint)) == pytest.approx(0.0, abs=1e-7)
    same = torch.full((3, 2), 0.5)
    assert float(category_disentangle_loss(same)) == pytest.approx(1.0, abs=1e-6)
    # two samples, 2 clusters: columns (0.8, 0.2) and (0.2, 0.8): cos = 0.32 / 0.68
    y = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    assert float(category_disentangle_loss(y, same[:2])) == pytest.approx(((0.32 / 0.68) ** 2 + 1.0) / 2, abs=1e-6)
    assert float(category_disentangle_loss(y, disjoint[:2])) == pytest.approx((0.32 / 0.68) ** 2 / 2, abs=1e-6)  # an empty cluster: orthogonal


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        ClusterContrastiveLoss(temperature=0.0)
    with pytest.raises(ValueError):
        ClusterContrastiveLoss(entropy_weight=-1.0)
    with pytest.raises(ValueError, match="one shape"):
        ClusterContrastiveLoss()(soft_assignments(0, k=3), soft_assignments(1, k=4))
    with pytest.raises(ValueError, match="non-finite"):
        cluster_entropy_term(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="K >= 2"):
        category_disentangle_loss(torch.ones(3, 1))
