"""Fixed sine-cosine position embeddings (Vaswani et al. 2017; 2-D form of MoCo v3 / MAE).

1-D: position ``m`` → ``[sin(m·ω_0) … sin(m·ω_{D/2−1}), cos(m·ω_0) … cos(m·ω_{D/2−1})]`` with
``ω_i = 1 / 10000^(2i/D)``. 2-D on an ``h × w`` grid (tokens in row-major order, token ``n`` at row
``n // w``, column ``n % w``): the first half of the channels encodes the **column** and the second
half the **row**, as MAE's ``util/pos_embed.py`` does (its ``meshgrid(grid_w, grid_h)`` puts the
column coordinate first). With ``cls_token=True`` a row of zeros is prepended for the class token.

Values are computed in float64 and returned as float32 (MAE computes them in float32 with numpy;
the two agree to ~1e-6, and released checkpoints carry their own copies anyway).
"""

from __future__ import annotations

import torch
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
