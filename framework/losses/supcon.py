"""SupCon, the supervised contrastive loss (the "L_out" form).

Khosla et al., "Supervised Contrastive Learning" (NeurIPS 2020), eq. (2). Reference implementations:
HobbitLong/SupContrast ``losses.py`` (``SupConLoss``) and lightly ``lightly/loss/supcon_loss.py``.
The transferable CG predictor of Han et al. (SDM 2023, arXiv 2302.10835) pretrains its encoder with a
semi-supervised contrastive objective; :mod:`litzoo.modules.transferable_predictor` expresses it as SupCon over
group labels (see there for how the groups are formed).

For ``N`` embeddings ``z`` with integer ``labels``, every embedding ``i`` is a query; its positives
``P(i)`` are the other embeddings with its label, and its denominator runs over all others ``A(i)``:

    ℓ_i = −1/|P(i)| Σ_{p ∈ P(i)} log  exp(z_i·z_p/τ) / Σ_{a ∈ A(i)} exp(z_i·z_a/τ),   z normalised,

and the loss is the mean of ℓ_i over the queries with at least one positive (a query alone in its group
has no term, as in lightly). When every label occurs exactly twice (two views of each item), SupCon is
SimCLR's NT-Xent (:class:`litzoo.framework.losses.NTXentLoss`). With ``gather_distributed`` the keys (and their
labels) come from every rank (all-gather with gradient, :func:`litzoo.framework.losses.contrastive.gather_with_grad`);
each rank's loss is over its own queries.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.losses.contrastive import gather_with_grad


class SupConLoss(nn.Module):
    """Supervised contrastive loss over one set of embeddings with integer group labels.

    Args:
        temperature: τ > 0 (Khosla et al. use 0.1 in most experiments; SupContrast's default 0.07).
        gather_distributed: take keys (positives and negatives) from all ranks under DDP.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """``z``: ``(N, D)`` embeddings (views of one item are separate rows sharing a label);
        ``labels``: ``(N,)`` integers, equal labels = positives."""
        if z.ndim != 2 or labels.shape != (z.shape[0],):
            raise ValueError(f"z must be (N, D) and labels (N,), got {tuple(z.shape)} and {tuple(labels.shape)}")
        z = F.normalize(z, dim=1)
        n, rank = z.shape[0], 0
        if self.gather_distributed and dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            keys = gather_with_grad(z)
            key_labels = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
            dist.all_gather(key_labels, labels.contiguous())
            key_labels = torch.cat(key_labels)
        else:
            keys, key_labels = z, labels
        logits = z @ keys.T / self.temperature  # (N, W·N)
        own = F.one_hot(torch.arange(n, device=z.device) + rank * n, keys.shape[0]).bool()
        logits = logits.masked_fill(own, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (labels[:, None] == key_labels[None, :]) & ~own
        count = positives.sum(dim=1)
        has = count > 0
        if not bool(has.any()):
            return z.sum() * 0.0  # no query has a positive: nothing to pull together
        mean_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)[has] / count[has]
        return -mean_log_prob.mean()
