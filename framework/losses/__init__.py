"""Losses shared by methods, one concept per file (``contrastive.py``: CLIP's InfoNCE and the DDP gather;
``ntxent.py``: SimCLR's NT-Xent; ``supcon.py``: supervised contrastive; ``dino.py``: DINOv2's DINO, iBOT,
Sinkhorn-Knopp and KoLeo)."""

from litzoo.framework.losses.contrastive import ClipLoss, gather_with_grad
from litzoo.framework.losses.dino import DINOLoss, IBOTPatchLoss, koleo_loss, sinkhorn_knopp
from litzoo.framework.losses.ntxent import NTXentLoss
from litzoo.framework.losses.supcon import SupConLoss

__all__ = ["ClipLoss", "DINOLoss", "IBOTPatchLoss", "NTXentLoss", "SupConLoss", "gather_with_grad", "koleo_loss", "sinkhorn_knopp"]
