"""2-D rotary position embeddings (RoPE-2D) for ViT attention, as the Perception Encoder uses them.

Bolya et al., "Perception Encoder: The best visual embeddings are not at the output of the network", 2025
(arXiv 2504.13181); official code facebookresearch/perception_models ``core/vision_encoder/rope.py``
(``Rope2D`` over lucidrains' ``RotaryEmbedding``) and ``pe.py`` (``SelfAttention`` applies it to the
per-head queries and keys). Rotary embeddings: Su et al., "RoFormer", 2021.

The layout, checked line by line against the official code:

* a head of width ``D`` (a multiple of 4) is split in two halves; the **first half is rotated by the
  token's column** (x) and the **second half by its row** (y) — ``torch.cat([freqs_x, freqs_y])``;
* inside each half, channels ``(2i, 2i+1)`` form a rotated pair (lucidrains' interleaved ``rotate_half``:
  ``(a, b) -> (a·cos − b·sin, b·cos + a·sin)``) with frequency ``ω_i = θ^(−4i/D)``, ``i = 0 … D/4 − 1``
  (``RotaryEmbedding(dim=D/2)``: ``1 / θ^(arange(0, D/2, 2) / (D/2))``), ``θ = 10000`` ("lang" frequencies);
* positions are integer patch indices; with a class token the patches sit at ``1 … h`` / ``1 … w`` and the
  class token, prepended, gets angle 0 (it is not rotated) — "leave space for the cls token to be (0, 0)";
  without one the patches sit at ``0 … h − 1``;
* the tables are computed in float32 and the rotation is applied in the input's dtype after the product
  (official: ``autocast`` disabled, ``out.type(dtype)``).

Because each pair is rotated by ``pos·ω``, ``q_m · k_n`` depends on the positions only through
``m − n`` (per axis): RoPE needs no interpolation when the patch grid changes (progressive resolution).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rope_2d_angles(head_dim: int, grid_hw: tuple[int, int], theta: float = 10000.0, class_token: bool = False, device: torch.device | None = None) -> Tensor:
    """Rotation angles ``(T, head_dim)`` of the tokens of an ``h × w`` patch grid (row-major), PE's layout.

    Entry ``[t, 2i] = [t, 2i + 1]`` is the angle of pair ``i``: ``col(t)·ω_i`` for ``i < D/4`` and
    ``row(t)·ω_{i − D/4}`` after. With ``class_token`` a zero row is prepended (``T = 1 + h·w``) and the
    patch positions start at 1.

    Args:
        head_dim: width of one attention head; a positive multiple of 4.
        grid_hw: the patch grid ``(h, w)``.
        theta: the frequency base (PE: 10000).
        class_token: the sequence starts with a class token.
        device: where the table is built.
    """
    if head_dim <= 0 or head_dim % 4:
        raise ValueError(f"head_dim must be a positive multiple of 4 for RoPE-2D, got {head_dim}")
    if theta <= 0:
        raise ValueError(f"theta must be positive, got {theta}")
    height, width = int(grid_hw[0]), int(grid_hw[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"grid_hw must be positive, got {tuple(grid_hw)}")
    quarter = head_dim // 4
    omega = 1.0 / theta ** (torch.arange(0, head_dim // 2, 2, device=device, dtype=torch.float32) / (head_dim // 2))  # (D/4,)
    start = 1 if class_token else 0  # the class token keeps position 0
    rows = torch.arange(height, device=device, dtype=torch.float32) + start
    cols = torch.arange(width, device=device, dtype=torch.float32) + start
    ang_x = (cols[:, None] * omega).repeat_interleave(2, dim=-1)[None, :, :].expand(height, width, 2 * quarter)  # (h, w, D/2)
    ang_y = (rows[:, None] * omega).repeat_interleave(2, dim=-1)[:, None, :].expand(height, width, 2 * quarter)
    angles = torch.cat([ang_x, ang_y], dim=-1).reshape(height * width, head_dim)
    if class_token:
        angles = torch.cat([angles.new_zeros(1, head_dim), angles], dim=0)
    return angles


def rotate_pairs(x: Tensor) -> Tensor:
    """``(…, a0, b0, a1, b1, …)`` → ``(…, −b0, a0, −b1, a1, …)``: the interleaved ``rotate_half``."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate each channel pair of ``x`` (``(…, T, D)``, e.g. ``(B, heads, T, D)``) by its angle ``(T, D)``.

    The last ``T`` rows of ``angles`` are used (as the official ``apply_rotary_emb``) only when the sizes
    agree; a table for another number of tokens is refused.
    """
    if angles.shape != x.shape[-2:]:
        raise ValueError(f"RoPE table of shape {tuple(angles.shape)} does not match tokens × head_dim {tuple(x.shape[-2:])}")
    angles = angles.float()  # the product in float32, then back to the input's dtype (official autocast(enabled=False))
    out = x.float() * angles.cos() + rotate_pairs(x.float()) * angles.sin()
    return out.to(x.dtype)


class Rope2D(nn.Module):
    """PE's RoPE-2D table maker: ``rope(grid_hw, device)`` → the ``(T, head_dim)`` angle table, cached per grid.

    No parameters and no persistent buffers (the official ``Rope2D`` is not a module and adds nothing to a
    state dict); the table follows the input's grid, so any resolution works without interpolation.

    Args:
        head_dim: attention head width (a multiple of 4).
        theta: frequency base (10000).
        class_token: the sequence starts with a class token at angle 0.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, class_token: bool = False) -> None:
        super().__init__()
        rope_2d_angles(head_dim, (1, 1), theta, class_token)  # validates the arguments
        self.head_dim, self.theta, self.class_token = head_dim, float(theta), class_token
        self._cache: tuple[tuple[int, int], torch.device, Tensor] | None = None

    def forward(self, grid_hw: tuple[int, int], device: torch.device | None = None) -> Tensor:
        grid = (int(grid_hw[0]), int(grid_hw[1]))
        device = torch.device("cpu") if device is None else torch.device(device)
        if self._cache is None or self._cache[0] != grid or self._cache[1] != device:
            self._cache = (grid, device, rope_2d_angles(self.head_dim, grid, self.theta, self.class_token, device))
        return self._cache[2]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta:g}, class_token={self.class_token}"
