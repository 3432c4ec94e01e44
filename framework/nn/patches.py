"""Images ↔ flattened patches, and MAE's normalised-pixel reconstruction target.

``patchify``: ``(B, C, H, W)`` → ``(B, L, p²·C)`` with ``L = (H/p)·(W/p)`` in row-major patch order
and, inside a patch, pixel-row, pixel-column, channel order (MAE's ``einsum('nchpwq->nhwpqc')``),
so the layout matches MAE's ``decoder_pred`` outputs and released checkpoints.

``patchify_video``: ``(B, T, C, H, W)`` clips (the audio-visual DataModule's ``"video"`` layout) → ``(B, L, t·p·p·C)``
tubelets with ``L = (T/t)·(H/p)·(W/p)`` in (time, row, column) order — the order of a ``Conv3d`` tubelet embedding's
``flatten(2)`` output (MAViL's ``PatchEmbed3D_new``, MBT / ViViT) — and, inside a tubelet, frame, pixel-row,
pixel-column, channel order (MAE-ST's ``einsum('nctuhpwq->nthwupqc')``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` → ``(B, (H/p)·(W/p), p·p·C)``; H and W must be multiples of ``patch_size``."""
    batch, channels, height, width = images.shape
    p = patch_size
    if p <= 0 or height % p or width % p:
        raise ValueError(f"image size {height}x{width} must be a multiple of patch_size {p}")
    h, w = height // p, width // p
    x = images.reshape(batch, channels, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(batch, h * w, p * p * channels)


def unpatchify(patches: Tensor, patch_size: int, channels: int, grid_size: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, L, p·p·C)`` → ``(B, C, h·p, w·p)``.

    ``grid_size = (h, w)``; default a square grid (``L`` must then be a perfect square).
    """
    batch, length, width_ = patches.shape
    p = patch_size
    if width_ != p * p * channels:
        raise ValueError(f"patches of width {width_} are not {p}x{p} patches of {channels} channels")
    if grid_size is None:
        side = round(length**0.5)
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid_size=(h, w)")
        grid_size = (side, side)
    h, w = grid_size
    if h * w != length:
        raise ValueError(f"grid {h}x{w} does not hold {length} patches")
    x = patches.reshape(batch, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(batch, channels, h * p, w * p)


def patchify_video(video: Tensor, tubelet: tuple[int, int, int]) -> Tensor:
    """``(B, T, C, H, W)`` → ``(B, (T/t)·(H/p)·(W/p), t·p·p·C)`` for ``tubelet = (t, p, p)``; T, H, W must be multiples."""
    batch, frames, channels, height, width = video.shape
    t, ph, pw = tubelet
    if min(t, ph, pw) <= 0 or frames % t or height % ph or width % pw:
        raise ValueError(f"clip size {frames}x{height}x{width} (frames x height x width) must be a multiple of the tubelet {tuple(tubelet)}")
    n, h, w = frames // t, height // ph, width // pw
    x = video.reshape(batch, n, t, channels, h, ph, w, pw).permute(0, 1, 4, 6, 2, 5, 7, 3)  # (B, n, h, w, t, p, p, C)
    return x.reshape(batch, n * h * w, t * ph * pw * channels)


def unpatchify_video(patches: Tensor, tubelet: tuple[int, int, int], channels: int, grid_size: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`patchify_video`: ``(B, L, t·p·p·C)`` → ``(B, n·t, C, h·p, w·p)`` for ``grid_size = (n, h, w)``."""
    batch, length, width_ = patches.shape
    t, ph, pw = tubelet
    n, h, w = grid_size
    if width_ != t * ph * pw * channels:
        raise ValueError(f"patches of width {width_} are not {t}x{ph}x{pw} tubelets of {channels} channels")
    if n * h * w != length:
        raise ValueError(f"grid {n}x{h}x{w} does not hold {length} tubelets")
    x = patches.reshape(batch, n, h, w, t, ph, pw, channels).permute(0, 1, 4, 7, 2, 5, 3, 6)  # (B, n, t, C, h, p, w, p)
    return x.reshape(batch, n * t, channels, h * ph, w * pw)


def patch_stats(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-patch mean and ``sqrt(var + eps)`` over the last dim, each ``(…, 1)``; unbiased variance
    (torch's default), as MAE's ``forward_loss``."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps) ** 0.5
    return mean, std


def normalized_pixel_target(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's ``norm_pix_loss`` target: each patch standardised by its own mean and ``sqrt(var + eps)``."""
    mean, std = patch_stats(patches, eps)
    return (patches - mean) / std


def denormalize_patches(predicted: Tensor, reference: Tensor, eps: float = 1e-6) -> Tensor:
    """Map predictions of normalised-pixel targets back to pixels with the statistics of the
    ground-truth ``reference`` patches (how MAE's norm-pix models are visualised)."""
    mean, std = patch_stats(reference, eps)
    return predicted * std + mean


def masked_patch_loss(pred: Tensor, target: Tensor, removed: Tensor) -> Tensor:
    """MAE's loss: per-token mean squared error over the last dim, averaged over the removed tokens only.

    Args:
        pred, target: ``(B, L, D)``.
        removed: ``(B, L)`` bool / {0, 1}, True = removed (hidden from the encoder).
    """
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = removed.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


def blank_removed_patches(patches: Tensor, mask: Tensor) -> Tensor:
    """What the encoder sees, for display: ``(B, L, D)`` patches with the removed ones (``mask`` 1 or True,
    ``(B, L)``) set to each example's minimum value."""
    low = patches.flatten(1).min(dim=1).values[:, None, None]
    return torch.where(mask.bool()[..., None], low, patches)


__all__ = ["blank_removed_patches", "denormalize_patches", "masked_patch_loss", "normalized_pixel_target", "patch_stats", "patchify", "patchify_video",
           "unpatchify", "unpatchify_video"]

