"""Cluster-level contrastive losses on soft-assignment matrices: Contrastive Clustering's cluster loss with its
entropy term, and an orthogonality ("category-disentangling") term on the assignment columns.

**Cluster-level contrast** — Li, Hu, Liu, Peng, Zhou, Peng, "Contrastive Clustering", AAAI 2021; official code
Yunfan-Li/Contrastive-Clustering ``modules/contrastive_loss.py`` (``ClusterLoss``), read line by line. For the two
views' soft assignments ``Y⁰, Y¹`` ``(B, K)`` (softmax rows), the ``K`` columns ``y⁰_k, y¹_k`` ``(B,)`` are the
"cluster representations": column ``k`` of one view is the positive of column ``k`` of the other view and the other
``2K − 2`` columns are its negatives,

    ℓ(k) = −log  exp(cos(y⁰_k, y¹_k)/τ) / Σ_{j ≠ k} exp(cos(y⁰_k, ỹ_j)/τ)     (ỹ over the 2K columns of both views),

averaged over the ``2K`` columns (the official code: ``CrossEntropyLoss(reduction="sum") / 2K``) — exactly SimCLR's
NT-Xent on the transposed matrices, so :class:`~litzoo.framework.losses.ntxent.NTXentLoss` computes it. The official
code adds, unweighted, for each view the **negative entropy of the cluster-size distribution**
``log K − H(P)``, ``P_k = Σ_i Y_ik / Σ_ik Y_ik`` (:func:`cluster_entropy_term`), which is 0 for equal cluster sizes and
``log K`` when one cluster takes everything: it rules out the trivial solution. Defaults follow the official config:
cluster temperature ``τ = 1.0``, entropy weight 1.

Under DDP (``gather_distributed``) the rows of every rank are gathered with their gradient
(:func:`~litzoo.framework.losses.contrastive.gather_with_grad`) before the columns are taken, so a column is a cluster
over the *global* batch, as on one device; every rank then computes the same loss value.

**Category disentangling** (:func:`category_disentangle_loss`) — CDCC of CEIL (Zhao et al., WWW 2023, arXiv
2304.11061) adds a term that disentangles the categories; the exact form of the paper's term could not be read in the
session that wrote this (only the abstract was reachable), so this term is **ours**: the mean squared cosine between
different assignment columns of one view, averaged over the two views,

    D = 1/2 Σ_views  1/(K(K−1)) Σ_{j ≠ k} cos(y_j, y_k)²,

which is 0 exactly when no sample is shared between two clusters (columns with disjoint supports are orthogonal) and 1
when all columns are parallel (every sample assigned alike). A zero column (an empty cluster) counts as orthogonal
to everything (``F.normalize``'s ``eps``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.losses.contrastive import gather_with_grad
from litzoo.framework.losses.ntxent import NTXentLoss

__all__ = ["ClusterContrastiveLoss", "category_disentangle_loss", "cluster_entropy_term"]


def _check_assignments(*assignments: Tensor) -> None:
    for y in assignments:
        if y.dim() != 2 or y.shape[1] < 2:
            raise ValueError(f"soft assignments must be (B, K) with K >= 2, got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("soft assignments hold non-finite values")
    if len({tuple(y.shape) for y in assignments}) != 1:
        raise ValueError(f"the views' assignments must have one shape, got {[tuple(y.shape) for y in assignments]}")


def cluster_entropy_term(assignments: Tensor) -> Tensor:
    """``log K − H(P)`` of the cluster-size distribution ``P = column sums / total`` of ``(B, K)`` soft assignments.

    0 when the clusters have equal mass, ``log K`` when one cluster holds all of it (``0 · log 0 = 0``).
    """
    _check_assignments(assignments)
    mass = assignments.sum(0)
    p = mass / mass.sum()
    return math.log(p.numel()) + torch.special.xlogy(p, p).sum()


def category_disentangle_loss(*views: Tensor) -> Tensor:
    """Mean over the views of the mean squared cosine between different columns of a ``(B, K)`` assignment matrix.

    Args:
        views: one or more ``(B, K)`` soft assignments (the two augmented views in CDCC).

    Returns:
        A scalar in ``[0, 1]`` (for non-negative assignments): 0 when the columns have disjoint supports.
    """
    if not views:
        raise ValueError("category_disentangle_loss needs at least one view")
    _check_assignments(*views)
    terms = []
    for y in views:
        columns = F.normalize(y.T, dim=1)  # (K, B) unit cluster representations
        gram = columns @ columns.T
        k = gram.shape[0]
        off_diagonal = gram.masked_select(~torch.eye(k, dtype=torch.bool, device=gram.device))
        terms.append(off_diagonal.pow(2).mean())
    return torch.stack(terms).mean()


class ClusterContrastiveLoss(nn.Module):
    """Contrastive Clustering's cluster-level loss: NT-Xent over the ``2K`` assignment columns + the entropy terms.

    Args:
        temperature: ``τ`` of the column contrast (the official config: 1.0).
        entropy_weight: the weight of ``Σ_views (log K − H(P))`` (the official code: 1, unweighted).
        gather_distributed: under DDP, build the columns from every rank's rows (see the module docstring).
    """

    def __init__(self, temperature: float = 1.0, entropy_weight: float = 1.0, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if entropy_weight < 0:
            raise ValueError(f"entropy_weight must be non-negative, got {entropy_weight}")
        self.temperature, self.entropy_weight, self.gather_distributed = temperature, entropy_weight, gather_distributed
        self.column_contrast = NTXentLoss(temperature)  # the rows are gathered here, not inside NT-Xent

    def terms(self, y0: Tensor, y1: Tensor) -> tuple[Tensor, Tensor]:
        """``(contrast, entropy)``: the column NT-Xent and ``Σ_views (log K − H(P))`` (unweighted)."""
        _check_assignments(y0, y1)
        if self.gather_distributed and dist.is_available() and dist.is_initialized():
            y0, y1 = gather_with_grad(y0), gather_with_grad(y1)
        contrast = self.column_contrast(y0.T, y1.T)
        entropy = cluster_entropy_term(y0) + cluster_entropy_term(y1)
        return contrast, entropy

    def forward(self, y0: Tensor, y1: Tensor) -> Tensor:
        """``y0``, ``y1``: ``(B, K)`` soft assignments of the two views (rows sum to 1)."""
        contrast, entropy = self.terms(y0, y1)
        return contrast + self.entropy_weight * entropy
