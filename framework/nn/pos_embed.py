"""Position embeddings: fixed sine-cosine tables (Vaswani et al. 2017; 2-D form of MoCo v3 / MAE) and the
resampling of a learned 2-D table to another patch grid (DINO / DINOv2, :func:`interpolate_pos_embed`).

1-D: position ``m`` → ``[sin(m·ω_0) … sin(m·ω_{D/2−1}), cos(m·ω_0) … cos(m·ω_{D/2−1})]`` with
``ω_i = 1 / 10000^(2i/D)``. 2-D on an ``h × w`` grid (tokens in row-major order, token ``n`` at row
``n // w``, column ``n % w``): the first half of the channels encodes the **column** and the second
half the **row**, as MAE's ``util/pos_embed.py`` does (its ``meshgrid(grid_w, grid_h)`` puts the
column coordinate first). With ``cls_token=True`` a row of zeros is prepended for the class token.

Values are computed in float64 and returned as float32 (MAE computes them in float32 with numpy;
the two agree to ~1e-6, and released checkpoints carry their own copies anyway).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_pos_embed_1d(dim: int, positions: Tensor) -> Tensor:
    """``(M,)`` positions → ``(M, dim)`` embeddings: sines in the first half, cosines in the second."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (D/2,)
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # (M, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_pos_embed_2d(dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> Tensor:
    """``(h·w, dim)`` (or ``(1 + h·w, dim)`` with a zero class-token row) for an ``h × w`` patch grid.

    Args:
        dim: embedding width; a multiple of 4 (half for each axis, sin and cos in each half).
        grid_size: ``h = w`` or ``(h, w)``.
        cls_token: prepend a row of zeros (the class token gets no position).
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"dim must be a positive multiple of 4 for a 2-D sin-cos embedding, got {dim}")
    height, width = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows = torch.arange(height).repeat_interleave(width)  # token n -> n // w
    cols = torch.arange(width).repeat(height)  # token n -> n % w
    embed = torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1)
    if cls_token:
        embed = torch.cat([torch.zeros(1, dim), embed], dim=0)
    return embed


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int]) -> Tensor:
    """``(n·h·w, dim)`` fixed positions of a ``(n, h, w)`` tubelet grid in (time, row, column) order, as MAViL's
    ``get_3d_sincos_pos_embed``: ``cat([1-D sin-cos of the time index (dim/4), 2-D sin-cos of (row, column) (3·dim/4)])``."""
    if dim <= 0 or dim % 16:
        raise ValueError(f"dim must be a positive multiple of 16 for a 3-D sin-cos embedding, got {dim}")
    n, h, w = grid
    temporal = sincos_pos_embed_1d(dim // 4, torch.arange(n))  # (n, D/4)
    spatial = sincos_pos_embed_2d(dim // 4 * 3, (h, w))  # (h·w, 3D/4)
    return torch.cat([temporal.repeat_interleave(h * w, dim=0), spatial.repeat(n, 1)], dim=1)


def interpolate_pos_embed(
    pos_embed: Tensor,
    grid_hw: tuple[int, int],
    num_prefix_tokens: int = 1,
    offset: float = 0.1,
    antialias: bool = False,
    source_hw: tuple[int, int] | None = None,
    mode: str = "bicubic",
) -> Tensor:
    """A learned ``(1, P + h₀·w₀, D)`` position table resampled to an ``h × w`` patch grid, as DINOv2's
    ``DinoVisionTransformer.interpolate_pos_encoding`` (facebookresearch/dinov2
    ``dinov2/models/vision_transformer.py``).

    The ``P`` prefix rows (class token) are kept as they are; the patch rows, seen as a ``D``-channel
    ``h₀ × w₀`` image, are resampled bicubically in float32 and cast back to the input's dtype. With
    ``offset > 0`` the resampling is given as ``scale_factor = ((h + offset) / h₀, (w + offset) / w₀)``,
    DINO's historical work-around against ``floor(h₀ · h / h₀)`` rounding to ``h − 1``: the output size
    is still ``h × w``, but PyTorch places the samples with the given scale, so the offset shifts the
    values slightly and the released models were trained with it (their register variants use
    ``offset = 0``, i.e. ``size = (h, w)``, with ``antialias=True``).

    Args:
        pos_embed: ``(1, P + h₀·w₀, D)`` (or ``(P + h₀·w₀, D)``), patch rows in row-major order.
        grid_hw: the target grid ``(h, w)``.
        num_prefix_tokens: ``P``, leading rows that are not patches (1: the class token).
        offset: DINOv2's ``interpolate_offset`` (0.1); 0 resamples to ``size = (h, w)`` instead.
        antialias: DINOv2's ``interpolate_antialias`` (only acts when shrinking).
        source_hw: the stored grid ``(h₀, w₀)``; default: square, ``h₀ = w₀ = sqrt(rows − P)``.
        mode: ``F.interpolate`` mode, ``"bicubic"`` (DINOv2) or ``"bilinear"`` (the Perception Encoder's
            ``_sample_abs_posemb``: bilinear, ``align_corners=False``, ``offset = 0``).

    Returns:
        The resampled table, same rank and dtype; ``pos_embed`` itself when the grid is unchanged.
    """
    squeeze = pos_embed.ndim == 2
    table = pos_embed[None] if squeeze else pos_embed
    if table.ndim != 3 or table.shape[0] != 1:
        raise ValueError(f"pos_embed must be (1, tokens, dim) or (tokens, dim), got shape {tuple(pos_embed.shape)}")
    if num_prefix_tokens < 0 or offset < 0:
        raise ValueError(f"num_prefix_tokens and offset must be non-negative, got {num_prefix_tokens} and {offset}")
    height, width = int(grid_hw[0]), int(grid_hw[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"grid_hw must be positive, got {tuple(grid_hw)}")
    patches = table.shape[1] - num_prefix_tokens
    if source_hw is None:
        side = math.isqrt(max(patches, 0))
        if patches <= 0 or side * side != patches:
            raise ValueError(f"pos_embed has {patches} patch rows, not a square grid; pass source_hw")
        source_hw = (side, side)
    src_h, src_w = int(source_hw[0]), int(source_hw[1])
    if src_h * src_w != patches:
        raise ValueError(f"source_hw {src_h}x{src_w} does not match the {patches} patch rows of pos_embed")
    if (height, width) == (src_h, src_w):
        return pos_embed
    dim = table.shape[-1]
    grid = table[:, num_prefix_tokens:].float().reshape(1, src_h, src_w, dim).permute(0, 3, 1, 2)  # (1, D, h0, w0)
    if offset:
        resized = F.interpolate(grid, scale_factor=((height + offset) / src_h, (width + offset) / src_w), mode=mode, antialias=antialias)
    else:
        resized = F.interpolate(grid, size=(height, width), mode=mode, antialias=antialias)
    if tuple(resized.shape[-2:]) != (height, width):  # an offset too small for this ratio
        raise ValueError(f"resampling {src_h}x{src_w} to {height}x{width} with offset {offset} gave {tuple(resized.shape[-2:])}")
    resized = resized.permute(0, 2, 3, 1).reshape(1, height * width, dim)
    out = torch.cat([table[:, :num_prefix_tokens].float(), resized], dim=1).to(pos_embed.dtype)
    return out[0] if squeeze else out
