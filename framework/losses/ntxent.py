"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations" (ICML 2020),
eq. (1). Reference implementations: google-research/simclr ``objective.py`` (``add_contrastive_loss``)
and lightly ``lightly/loss/ntx_ent_loss.py``. GENNAPE (Mills et al., AAAI 2023) pretrains its
computation-graph encoder with it.

For a batch of ``B`` pairs of views ``(z0_i, z1_i)``, every one of the ``2B`` embeddings is a query
whose positive is its partner view and whose negatives are the other ``2B − 2`` embeddings:

    ℓ(i, j) = −log  exp(sim(z_i, z_j)/τ) / Σ_{k ≠ i} exp(sim(z_i, z_k)/τ),   sim = cosine,

and the loss is the mean of ℓ over all ``2B`` queries. With ``gather_distributed`` the negatives come
from every rank's batch (all-gather with gradient, :func:`litzoo.framework.losses.contrastive.gather_with_grad`);
each rank's loss is over its own queries, so DDP's gradient mean equals the full-batch gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.losses.contrastive import gather_with_grad


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent over two views.

    Args:
        temperature: τ > 0 (SimCLR's default 0.5; lightly's 0.5).
        gather_distributed: take negatives from all ranks under DDP.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """``z0``, ``z1``: ``(B, D)`` embeddings of the two views (row ``i`` of each is the same item)."""
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(f"z0 and z1 must both be (B, D) with the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
        batch = z0.shape[0]
        z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
        rank = 0
        if self.gather_distributed and dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            all0, all1 = gather_with_grad(z0), gather_with_grad(z1)
        else:
            all0, all1 = z0, z1
        total = all0.shape[0]
        queries = torch.cat([z0, z1])  # (2B, D): this rank's queries
        keys = torch.cat([all0, all1])  # (2·W·B, D): every rank's embeddings
        logits = queries @ keys.T / self.temperature  # (2B, 2WB)
        local = torch.arange(batch, device=z0.device) + rank * batch  # this rank's rows among the keys
        own = torch.cat([local, local + total])  # each query's own column: excluded
        logits = logits.masked_fill(F.one_hot(own, keys.shape[0]).bool(), float("-inf"))
        partner = torch.cat([local + total, local])  # the other view of the same item
        return F.cross_entropy(logits, partner)
