"""Losses shared by methods, one concept per file (``contrastive.py``: CLIP's InfoNCE and the DDP gather;
``ntxent.py``: SimCLR's NT-Xent; ``supcon.py``: supervised contrastive)."""

from litzoo.framework.losses.contrastive import ClipLoss, gather_with_grad
from litzoo.framework.losses.ntxent import NTXentLoss
from litzoo.framework.losses.supcon import SupConLoss

__all__ = ["ClipLoss", "NTXentLoss", "SupConLoss", "gather_with_grad"]
