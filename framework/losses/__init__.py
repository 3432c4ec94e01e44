"""Losses shared by methods, one concept per file (``contrastive.py``: CLIP's InfoNCE and the DDP gather)."""

from framework.losses.contrastive import ClipLoss, gather_with_grad

__all__ = ["ClipLoss", "gather_with_grad"]
