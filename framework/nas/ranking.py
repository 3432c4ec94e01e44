"""Ranking metrics of performance predictors that torchmetrics does not have.

NAS predictor papers (GENNAPE, Mills et al. AAAI 2023; the transferable predictor, Han et al. SDM 2023;
AIO-P) report Spearman's ρ and Kendall's τ (torchmetrics ``SpearmanCorrCoef`` / ``KendallRankCorrCoef``)
and how well the predicted best architectures are the truly best ones: **top-k precision**, the share
of the true top ``fraction`` of architectures found among the predicted top ``fraction`` (GENNAPE's
"Precision@Top-k%"-style figures).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


def top_k_precision(preds: Tensor, target: Tensor, fraction: float) -> Tensor:
    """``|top_k(preds) ∩ top_k(target)| / k`` with ``k = ceil(fraction · N)``, higher = better.

    Ties are broken by position (the first of equal values wins), the same for both rankings."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if preds.shape != target.shape or preds.ndim != 1 or preds.numel() == 0:
        raise ValueError(f"preds and target must be non-empty 1-D tensors of one shape, got {tuple(preds.shape)} and {tuple(target.shape)}")
    k = max(1, math.ceil(fraction * preds.numel()))
    predicted = set(torch.sort(preds, descending=True, stable=True).indices[:k].tolist())
    actual = set(torch.sort(target, descending=True, stable=True).indices[:k].tolist())
    return torch.tensor(len(predicted & actual) / k)


class TopKPrecision(Metric):
    """:func:`top_k_precision` over everything seen since the last reset (DDP-synchronised)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.preds.append(preds.detach().flatten().float())
        self.target.append(target.detach().flatten().float())

    def compute(self) -> Tensor:
        preds = torch.cat(self.preds) if isinstance(self.preds, list) else self.preds
        target = torch.cat(self.target) if isinstance(self.target, list) else self.target
        return top_k_precision(preds, target, self.fraction)
