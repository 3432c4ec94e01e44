"""Losses shared by methods, one concept per file (``contrastive.py``: CLIP's InfoNCE and the DDP gather;
``ntxent.py``: SimCLR's NT-Xent; ``supcon.py``: supervised contrastive)."""

from framework.losses.contrastive import ClipLoss, gather_with_grad
from framework.losses.ntxent import NTXentLoss
from framework.losses.supcon import SupConLoss

__all__ = ["ClipLoss", "NTXentLoss", "SupConLoss", "gather_with_grad"]
