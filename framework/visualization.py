"""Images for TensorBoard: grids of reconstructions, inpaintings, retrieval results."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor


def image_grid(rows: list[Tensor]) -> Tensor:
    """Rows of ``(K, C, H, W)`` images → one ``(3, R·H, K·W)`` image in [0, 1]; every column scaled
    by the min / max of its first row (the originals), so the rows stay comparable."""
    low = rows[0].flatten(1).min(dim=1).values[:, None, None, None]
    high = rows[0].flatten(1).max(dim=1).values[:, None, None, None]
    strips = []
    for images in rows:
        images = ((images - low) / (high - low).clamp(min=1e-8)).clamp(0, 1)
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
        strips.append(torch.cat(list(images), dim=2))  # (3, H, K·W)
    return torch.cat(strips, dim=1)


def log_image(pl_module: L.LightningModule, tag: str, image: Tensor) -> None:
    """``image`` (``(3, H, W)`` in [0, 1]) to every TensorBoard logger of the module, at its global step;
    other loggers are left alone."""
    for logger in pl_module.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, pl_module.global_step)
