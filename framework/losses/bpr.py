"""BPR: the pairwise ranking loss of Rendle, Freudenthaler, Gantner, Schmidt-Thieme, "BPR: Bayesian Personalized Ranking
from Implicit Feedback", UAI 2009, and the L2 regularisation CAT-ART applies with it.

BPR-Opt maximises ``sum ln sigma(x_ui - x_uj) - lambda ||Theta||^2`` over triples (user u, item i it interacted with,
item j it did not). Minimised here as ``-mean ln sigma(s+ - s-)``, written with ``F.logsigmoid`` (``log(sigmoid(x))``
underflows to ``-inf`` for ``x`` below about -100 in float32, ``logsigmoid`` does not). It equals CAT-ART's
``mean softplus(s- - s+)`` (Chain123/CAT-ART ``models.py`` ``PureMF.forward``, ``utils/loss_func.py`` ``BPRLoss``).

Several negatives per positive: ``negative_scores`` ``(B, n)`` against ``positive_scores`` ``(B,)``, every pair
weighted equally (the mean over ``B * n`` pairs). CAT-ART's ``BPRLoss`` subtracts a ``(B,)`` positive from a ``(B, n)``
negative without adding the axis, which broadcasts the wrong way (or fails) unless ``n == 1``, the only case it runs.

Regularisation, checked in CAT-ART (``main_cross_pre.py`` / ``main_single_mf.py``: ``Adam(weight_decay=0)``;
``run_functions.train_single_step``: ``loss + decay * reg_loss``): not optimizer weight decay but an L2 penalty on the
embeddings *looked up in the batch*, ``reg = ||U_b||^2 / 2 + ||P_b||^2 / 2 + ||N_b||^2 / 2`` divided by the batch size,
times ``decay`` (1e-4): :func:`embedding_l2`. A user (or item) appearing twice in a batch is penalised twice, and rows
absent from the batch are not shrunk at all, unlike weight decay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(positive_scores: Tensor, negative_scores: Tensor) -> Tensor:
    """``-mean log sigmoid(s+ - s-)`` over every (positive, negative) pair.

    Args:
        positive_scores: ``(B,)`` scores of the observed items.
        negative_scores: ``(B,)`` or ``(B, n)``: one or ``n`` negatives per positive.

    Raises:
        ValueError: mismatched shapes, or a non-finite score.
    """
    if positive_scores.dim() != 1 or negative_scores.shape[:1] != positive_scores.shape or negative_scores.dim() not in (1, 2):
        raise ValueError(f"positive_scores must be (B,) and negative_scores (B,) or (B, n); got {tuple(positive_scores.shape)} and {tuple(negative_scores.shape)}")
    if not (torch.isfinite(positive_scores).all() and torch.isfinite(negative_scores).all()):
        raise ValueError("bpr_loss got a non-finite score")
    positive = positive_scores if negative_scores.dim() == 1 else positive_scores[:, None]
    return -F.logsigmoid(positive - negative_scores).mean()


def embedding_l2(*embeddings: Tensor, batch_size: int) -> Tensor:
    """CAT-ART's ``reg_loss``: ``sum_k ||E_k||^2 / 2 / batch_size`` of the embeddings looked up for a batch.

    Args:
        embeddings: the batch's user, positive-item and negative-item embeddings (any shapes).
        batch_size: the number of (user, positive) rows the sum is divided by.
    """
    if batch_size < 1 or not embeddings:
        raise ValueError(f"need at least one embedding tensor and batch_size >= 1, got {len(embeddings)} and {batch_size}")
    return sum(e.pow(2).sum() for e in embeddings) / (2.0 * batch_size)


__all__ = ["bpr_loss", "embedding_l2"]
