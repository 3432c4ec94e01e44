"""Image transforms with torch ops (no torchvision): resizing and per-channel normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_images(images: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinear resize of ``(N, C, H, W)`` or ``(C, H, W)`` float images to ``size`` (int = square).

    Downsampling uses antialiasing, like PIL's resize, so that small details are averaged rather
    than aliased. The input is returned unchanged when it already has the size.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    if images.shape[-2:] == (height, width):
        return images
    batched = images if images.dim() == 4 else images.unsqueeze(0)
    antialias = height < batched.shape[-2] or width < batched.shape[-1]
    out = F.interpolate(batched.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
    return out if images.dim() == 4 else out.squeeze(0)


class Normalize:
    """``(x - mean) / std`` per channel, for ``(N, C, H, W)`` or ``(C, H, W)`` tensors."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.mean = torch.tensor(list(mean), dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        if images.shape[-3] != self.mean.shape[0]:
            raise ValueError(f"expected {self.mean.shape[0]} channels, got images of shape {tuple(images.shape)}")
        return (images - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
