"""Losses shared by methods, one concept per file (``contrastive.py``: CLIP's InfoNCE and the DDP gather;
``ntxent.py``: SimCLR's NT-Xent)."""

from framework.losses.contrastive import ClipLoss, gather_with_grad
from framework.losses.ntxent import NTXentLoss

__all__ = ["ClipLoss", "NTXentLoss", "gather_with_grad"]
