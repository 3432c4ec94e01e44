"""Clustering metrics of short-text clustering: accuracy under the Hungarian matching, NMI and ARI, and a Metric for them.

The three numbers every short-text clustering paper reports (SCCL, Zhang et al., NAACL 2021; CEIL with CDCC,
Zhao et al., WWW 2023, arXiv 2304.11061), computed as SCCL's official code does (amazon-science/sccl,
``utils/metric.py``):

* **ACC** (:func:`clustering_accuracy`): the share of samples whose cluster is mapped to their class by the one-to-one
  cluster → class mapping that maximises that share (the Hungarian method, ``scipy.optimize.linear_sum_assignment``,
  on the contingency table). SCCL pads the table to a square ``max(K, C)`` matrix with zeros; the rectangular
  assignment used here has the same optimum (a padded row or column adds 0), which a test checks. So when the number
  of clusters ``K`` differs from the number of classes ``C``, only ``min(K, C)`` clusters are matched: with more
  clusters than classes the samples of unmatched clusters count as wrong (an over-segmentation cannot reach 1); with
  fewer, the samples of unmatched classes do. (The many-to-one "purity" mapping is a different metric, not this one.)
* **NMI** (:func:`normalized_mutual_info`): mutual information normalised by the arithmetic mean of the two entropies,
  scikit-learn's default (``normalized_mutual_info_score``), which SCCL calls. Computed by torchmetrics 1.9's
  ``normalized_mutual_info_score`` (float32; agrees with scikit-learn to 1e-6, checked by the tests), except for one
  degenerate case where torchmetrics returns 0 and scikit-learn 1: both labellings a single group (identical
  partitions, 0/0 entropies), for which this module follows scikit-learn (1.0).
* **ARI** (:func:`adjusted_rand_index`): the Hubert–Arabie adjusted Rand index, torchmetrics'
  ``adjusted_rand_score`` (equal to scikit-learn's ``adjusted_rand_score``, checked by the tests).

:class:`ClusteringMetrics` is a torchmetrics ``Metric`` that keeps every prediction and label of an epoch (``cat``
states, gathered over DDP ranks before :meth:`~ClusteringMetrics.compute`): none of the three is a mean over batches,
so they are computed once on the whole set.

Labels are non-negative integer ids; they need not be contiguous (a cluster id that no sample uses is harmless).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.clustering import adjusted_rand_score, normalized_mutual_info_score
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override


def _check_labels(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(preds, target)`` as 1-D int64 CPU tensors, after checking they are equal-length, non-empty, integer, non-negative."""
    preds, target = torch.as_tensor(preds), torch.as_tensor(target)
    for name, value in (("preds", preds), ("target", target)):
        if value.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor of cluster / class ids, got shape {tuple(value.shape)}")
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer ids, got dtype {value.dtype}")
    if preds.numel() != target.numel():
        raise ValueError(f"preds and target must have the same length, got {preds.numel()} and {target.numel()}")
    if preds.numel() == 0:
        raise ValueError("clustering metrics need at least one sample, got none")
    if int(preds.min()) < 0 or int(target.min()) < 0:
        raise ValueError("cluster and class ids must be non-negative")
    return preds.detach().long().cpu(), target.detach().long().cpu()


def contingency_table(preds: Tensor, target: Tensor) -> Tensor:
    """``(K, C)`` int64 counts: entry ``[k, c]`` = samples put in cluster ``k`` whose class is ``c``.

    ``K = max(preds) + 1`` and ``C = max(target) + 1`` (ids absent from the data give rows / columns of zeros).
    """
    preds, target = _check_labels(preds, target)
    num_clusters, num_classes = int(preds.max()) + 1, int(target.max()) + 1
    flat = preds * num_classes + target
    return torch.bincount(flat, minlength=num_clusters * num_classes).reshape(num_clusters, num_classes)


def hungarian_mapping(preds: Tensor, target: Tensor) -> dict[int, int]:
    """The one-to-one cluster → class mapping that maximises the number of correctly mapped samples.

    Only ``min(K, C)`` clusters are mapped (see the module docstring); ties between optimal mappings are broken by
    ``scipy.optimize.linear_sum_assignment``'s deterministic order.
    """
    table = contingency_table(preds, target).numpy()
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {int(k): int(c) for k, c in zip(rows, cols, strict=True)}


def clustering_accuracy(preds: Tensor, target: Tensor) -> float:
    """ACC: the share of samples whose cluster the best one-to-one cluster → class mapping sends to their class.

    Args:
        preds: ``(N,)`` cluster ids.
        target: ``(N,)`` class ids.

    Returns:
        A float in ``[0, 1]``; invariant to a renaming of the clusters.
    """
    table = contingency_table(preds, target).numpy()
    rows, cols = linear_sum_assignment(table, maximize=True)
    # integer sum first, one division: exact for any N
    return float(table[rows, cols].sum()) / float(table.sum())


def _single_group(labels: Tensor) -> bool:
    return bool((labels == labels[0]).all())


def normalized_mutual_info(preds: Tensor, target: Tensor) -> float:
    """NMI with the arithmetic-mean normalisation (scikit-learn's default, SCCL's), in ``[0, 1]``."""
    preds, target = _check_labels(preds, target)
    if _single_group(preds) and _single_group(target):
        return 1.0  # identical one-group partitions: scikit-learn's convention (torchmetrics returns 0 here)
    with warnings.catch_warnings():
        # torchmetrics builds its contingency table as a sparse COO tensor, which makes torch 2.13 warn once per call
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        value = float(normalized_mutual_info_score(preds, target, average_method="arithmetic"))
    return _finite(value, "NMI")


def adjusted_rand_index(preds: Tensor, target: Tensor) -> float:
    """ARI (Hubert & Arabie 1985): 1 for identical partitions, 0 in expectation for random ones, may be negative."""
    preds, target = _check_labels(preds, target)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        value = float(adjusted_rand_score(preds, target))
    return _finite(value, "ARI")


def _finite(value: float, name: str) -> float:
    if not np.isfinite(value):
        raise FloatingPointError(f"{name} is not finite ({value}): the clustering metrics got degenerate input")
    return value


def clustering_scores(preds: Tensor, target: Tensor) -> dict[str, float]:
    """``{"acc", "nmi", "ari"}`` of cluster ids ``preds`` against class ids ``target``."""
    return {"acc": clustering_accuracy(preds, target), "nmi": normalized_mutual_info(preds, target), "ari": adjusted_rand_index(preds, target)}


class ClusteringMetrics(Metric):
    """ACC (Hungarian), NMI and ARI over every sample seen since the last reset, as ``{"acc", "nmi", "ari"}`` tensors.

    :meth:`update` takes the cluster ids ``(B,)`` — or ``(B, K)`` cluster scores / soft assignments, whose argmax is
    taken — and the class ids ``(B,)``. The predictions and labels are kept (``cat`` states): torchmetrics gathers them
    from every DDP rank before :meth:`compute`, so the numbers are those of the whole set, as the functional
    :func:`clustering_scores`. Memory grows with the number of samples (two int64 per sample).

    Example:
        >>> metric = ClusteringMetrics()
        >>> metric.update(torch.tensor([1, 1, 0]), torch.tensor([0, 0, 1]))
        >>> float(metric.compute()["acc"])
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    @override
    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` ``(B,)`` cluster ids or ``(B, K)`` scores (argmax taken), ``target`` ``(B,)`` class ids."""
        if preds.dim() == 2:
            if not torch.isfinite(preds).all():
                raise ValueError("ClusteringMetrics got non-finite cluster scores")
            preds = preds.argmax(dim=1)
        preds, target = _check_labels(preds, target)
        # kept on the metric's device so that DDP's all_gather works on GPU too
        self.preds.append(preds.to(self.device))
        self.target.append(target.to(self.device))

    @override
    def compute(self) -> dict[str, Tensor]:
        if not self.preds:
            raise ValueError("ClusteringMetrics.compute() called before any update()")
        preds, target = dim_zero_cat(self.preds).cpu(), dim_zero_cat(self.target).cpu()
        return {name: torch.tensor(value, dtype=torch.float32) for name, value in clustering_scores(preds, target).items()}
