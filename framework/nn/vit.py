"""Transformer building blocks shared by every ViT-based method: attention, MLP, pre-norm block, patch embedding.

Parameter names follow timm / MAE / DINOv2 (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.norm1``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.mlp.fc1`` …, ``norm``)
so that released checkpoints map onto them by name (Dosovitskiy et al., "An Image is Worth 16x16 Words",
ICLR 2021; reference: timm ``models/vision_transformer.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (``F.scaled_dot_product_attention``).

    Args:
        dim: token width; must be divisible by ``num_heads``.
        num_heads: attention heads.
        qkv_bias: bias on the fused q/k/v projection (ViT and CLIP: True).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, causal: bool = False, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """``(B, N, D)`` → ``(B, N, D)``.

        Args:
            causal: token ``i`` attends to tokens ``≤ i`` only.
            key_padding_mask: ``(B, N)``, True where a token must not be attended to.
            attn_mask: broadcastable to ``(B, heads, N, N)``: boolean (True = may attend) or additive
                float (added to the attention logits, ``-inf`` = never), e.g. Swin's shifted-window mask.
        """
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, Dh)
        masks = []  # each broadcastable to (B, H, N, N); boolean True = may attend, or additive float
        if key_padding_mask is not None:
            masks.append(~key_padding_mask[:, None, None, :])  # (B, 1, 1, N)
        if attn_mask is not None:
            masks.append(attn_mask)
        if causal and masks:  # one mask: SDPA cannot take is_causal together with attn_mask
            masks.append(torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril())
        mask = None
        for extra in masks:
            if mask is None:
                mask = extra
            elif mask.dtype == torch.bool and extra.dtype == torch.bool:
                mask = mask & extra
            else:  # mixed kinds: add them as logits offsets (False -> -inf)
                mask = _additive(mask, q.dtype) + _additive(extra, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = may attend) as logit offsets 0 / −inf; a float mask unchanged."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


class Mlp(nn.Module):
    """``fc1 → GELU → fc2``, the transformer's feed-forward layer."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP over ``dim`` (ViT: 4).
        qkv_bias: bias on the q/k/v projection.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, causal: bool = False, key_padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), causal=causal, key_padding_mask=key_padding_mask)
        return x + self.mlp(self.norm2(x))


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping ``ph × pw`` patches → tokens, as one strided convolution.

    ``(B, C, H, W)`` → ``(B, N, D)`` with ``N = (H / ph) · (W / pw)`` in row-major order; H and W must be
    multiples of the patch sides. Sizes are an int (square) or ``(h, w)`` — e.g. Audio-MAE's
    ``1024 × 128`` time × frequency spectrograms. ``grid_size`` is an int for square int sizes (as
    before) and ``(h, w)`` otherwise; ``grid_hw`` is always ``(h, w)``.
    """

    def __init__(self, image_size: int | tuple[int, int], patch_size: int | tuple[int, int], in_chans: int, dim: int) -> None:
        super().__init__()
        size, patch = _pair(image_size), _pair(patch_size)
        if min(patch) <= 0 or size[0] % patch[0] or size[1] % patch[1]:
            raise ValueError(f"image_size ({size[0]}x{size[1]}) must be a positive multiple of patch_size ({patch[0]}x{patch[1]})")
        square = isinstance(image_size, int) and isinstance(patch_size, int)
        self.image_size, self.patch_size = image_size, patch_size
        self.input_hw, self.patch_hw = size, patch
        self.grid_hw = (size[0] // patch[0], size[1] // patch[1])
        self.grid_size: int | tuple[int, int] = self.grid_hw[0] if square else self.grid_hw
        self.num_patches = self.grid_hw[0] * self.grid_hw[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) != self.input_hw:
            raise ValueError(f"expected {self.input_hw[0]}x{self.input_hw[1]} inputs, got shape {tuple(images.shape)}")
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)


class VisionTransformer(nn.Module):
    """A plain ViT encoder: patch tokens + class token + learned positions → pre-norm blocks → ``norm``.

    ``forward`` returns all tokens ``(B, 1 + N, D)`` after the final norm; ``pool`` picks the class token
    (``"token"``) or averages the patch tokens (``"avg"``). No classification head: methods add theirs.

    Args:
        image_size: side of the square input images.
        patch_size: side of a patch.
        in_chans: image channels.
        dim: token width (ViT-S: 384, ViT-B: 768).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.dim = dim
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        init_vit_weights(self)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (B, 1 + N, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @staticmethod
    def pool(tokens: Tensor, mode: str = "token") -> Tensor:
        """``(B, 1 + N, D)`` → ``(B, D)``: the class token, or the mean of the patch tokens."""
        if mode == "token":
            return tokens[:, 0]
        if mode == "avg":
            return tokens[:, 1:].mean(dim=1)
        raise ValueError(f"pool must be 'token' or 'avg', got {mode!r}")


def init_vit_weights(module: nn.Module, std: float = 0.02) -> None:
    """timm/MAE initialisation: truncated-normal (std 0.02) position/class tokens, Xavier-uniform
    linear weights with zero bias, LayerNorm at identity, the patch projection like a linear layer."""
    for name, param in module.named_parameters(recurse=True):
        if name.endswith(("cls_token", "pos_embed", "positional_embedding", "token_embedding.weight")):
            nn.init.trunc_normal_(param, std=std)
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, PatchEmbed):
            nn.init.xavier_uniform_(sub.proj.weight.view(sub.proj.weight.shape[0], -1))
            nn.init.zeros_(sub.proj.bias)
