"""Image transforms with torch ops (no torchvision): resizing and per-channel normalisation, and the one check
of the image options (size, channels, mean, std) that the image DataModules take."""

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


def check_image_options(
    image_size: int, channels: int = 1, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> tuple[list[float], list[float]]:
    """Checks the image options of a DataModule; returns ``(mean, std)`` with their defaults filled in.

    ``channels`` is 1 (grey levels) or 3 (RGB); ``mean`` and ``std`` default to 0.5 for each channel
    (pixels in [0, 1] are mapped to [-1, 1]); ``Normalize(mean, std)`` then normalises the images. A
    DataModule that normalises otherwise (with statistics of its training split) checks its size here.

    Raises:
        ValueError: naming the option: ``image_size < 1``, ``channels`` not 1 or 3, ``mean`` / ``std`` without
            one value per channel, or a ``std`` that is not positive.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey levels) or 3 (RGB), got {channels}")
    mean = [0.5] * channels if mean is None else list(mean)
    std = [0.5] * channels if std is None else list(std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels}), got {mean} and {std}")
    Normalize(mean, std)  # its own check: std > 0
    return mean, std
