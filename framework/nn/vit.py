"""Transformer building blocks shared by every ViT-based method: attention, MLP, pre-norm block, patch embedding.

The block optionally carries DINOv2's LayerScale (``ls1`` / ``ls2`` with a learned per-channel ``gamma``,
Touvron et al., "Going deeper with Image Transformers", ICCV 2021) and stochastic depth, either timm's
per-sample mask (:class:`~litzoo.framework.nn.drop.DropPath`) or DINOv2's batch-subset variant
(facebookresearch/dinov2 ``dinov2/layers/block.py``, ``drop_add_residual_stochastic_depth``); with the
defaults it is the plain pre-norm block, parameter for parameter and output for output.

Parameter names follow timm / MAE / DINOv2 (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.norm1``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.mlp.fc1`` …, ``norm``)
so that released checkpoints map onto them by name (Dosovitskiy et al., "An Image is Worth 16x16 Words",
ICLR 2021; reference: timm ``models/vision_transformer.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.nn.drop import DropPath


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


class LayerScale(nn.Module):
    """``x · gamma``: a learned per-channel scale of a residual branch, ``gamma`` initialised to ``init``
    (CaiT's LayerScale; DINOv2 trains with ``init = 1e-5``, its released hub models are built with 1.0).

    Args:
        dim: channels (the last dimension of the input).
        init: initial value of every entry of ``gamma``.
    """

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.init = float(init)
        self.gamma = nn.Parameter(torch.full((dim,), self.init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma

    def extra_repr(self) -> str:
        return f"dim={self.gamma.numel()}, init={self.init:g}"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    With ``layer_scale_init`` each branch is multiplied by a :class:`LayerScale` (``ls1``, ``ls2``);
    with ``drop_path`` each branch is dropped per sample in training (stochastic depth):

    * default: timm's :class:`~litzoo.framework.nn.drop.DropPath` (``drop_path1`` / ``drop_path2``),
      each sample's branch zeroed with probability ``p``, survivors scaled by ``1 / (1 − p)``;
    * ``subset_drop_path=True`` and ``p > 0.1`` (DINOv2's rule: below 0.1 the saving does not pay for
      the indexing): the branch is computed only on a random subset of ``max(⌊B·(1 − p)⌋, 1)`` samples
      and added to them scaled by ``B / subset`` (the others pass unchanged), which saves the compute
      of the dropped samples; at ``p ≤ 0.1`` it falls back to the per-sample mask.

    Both are the identity in eval mode.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP over ``dim`` (ViT: 4).
        qkv_bias: bias on the q/k/v projection.
        layer_scale_init: initial ``gamma`` of the LayerScales; ``None`` or 0 = no LayerScale (as
            DINOv2's ``init_values``: no ``ls1`` / ``ls2`` parameters at all).
        drop_path: stochastic-depth rate of both branches, in ``[0, 1)``.
        subset_drop_path: use DINOv2's batch-subset stochastic depth above rate 0.1.
        mlp_layer: ``(dim, hidden) -> module`` building the feed-forward layer instead of :class:`Mlp`
            (e.g. DINOv2-g's SwiGLU); it is stored as ``mlp``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float | None = None,
        drop_path: float = 0.0,
        subset_drop_path: bool = False,
        mlp_layer: Callable[[int, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden) if mlp_layer is None else mlp_layer(dim, hidden)
        # Optional parts are registered only when used, so a default block has exactly the plain
        # block's modules and state dict (released ViT checkpoints have no ls / drop-path entries).
        self.ls1: LayerScale | None = LayerScale(dim, layer_scale_init) if layer_scale_init else None
        self.ls2: LayerScale | None = LayerScale(dim, layer_scale_init) if layer_scale_init else None
        self.drop_path1: DropPath | None = DropPath(drop_path) if drop_path > 0 else None
        self.drop_path2: DropPath | None = DropPath(drop_path) if drop_path > 0 else None
        self.drop_path_rate = float(drop_path)
        self.subset_drop_path = subset_drop_path

    def _attn_branch(self, x: Tensor, causal: bool, key_padding_mask: Tensor | None) -> Tensor:
        out = self.attn(self.norm1(x), causal=causal, key_padding_mask=key_padding_mask)
        return out if self.ls1 is None else self.ls1(out)

    def _mlp_branch(self, x: Tensor) -> Tensor:
        out = self.mlp(self.norm2(x))
        return out if self.ls2 is None else self.ls2(out)

    def forward(self, x: Tensor, causal: bool = False, key_padding_mask: Tensor | None = None) -> Tensor:
        if self.training and self.subset_drop_path and self.drop_path_rate > 0.1:
            x = add_residual_on_subset(
                x, lambda rows, idx: self._attn_branch(rows, causal, None if key_padding_mask is None else key_padding_mask[idx]), self.drop_path_rate
            )
            return add_residual_on_subset(x, lambda rows, idx: self._mlp_branch(rows), self.drop_path_rate)
        branch = self._attn_branch(x, causal, key_padding_mask)
        x = x + (branch if self.drop_path1 is None else self.drop_path1(branch))
        branch = self._mlp_branch(x)
        return x + (branch if self.drop_path2 is None else self.drop_path2(branch))


def add_residual_on_subset(x: Tensor, branch: Callable[[Tensor, Tensor], Tensor], rate: float) -> Tensor:
    """DINOv2's batch-subset stochastic depth: ``x`` with ``branch`` added, scaled by ``B / k``, to a
    random subset of ``k = max(⌊B·(1 − rate)⌋, 1)`` samples (drawn with ``torch.randperm``).

    ``branch(rows, idx)`` gets the chosen rows ``x[idx]`` and their indices and returns their residuals.
    """
    batch = x.shape[0]
    kept = max(int(batch * (1 - rate)), 1)
    idx = torch.randperm(batch, device=x.device)[:kept]
    residual = branch(x[idx], idx)
    return torch.index_add(x, 0, idx, residual.to(x.dtype), alpha=batch / kept)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping ``ph × pw`` patches → tokens, as one strided convolution.

    ``(B, C, H, W)`` → ``(B, N, D)`` with ``N = (H / ph) · (W / pw)`` in row-major order; H and W must be
    multiples of the patch sides. Sizes are an int (square) or ``(h, w)`` — e.g. Audio-MAE's
    ``1024 × 128`` time × frequency spectrograms. ``grid_size`` is an int for square int sizes (as
    before) and ``(h, w)`` otherwise; ``grid_hw`` is always ``(h, w)``.

    With ``dynamic_size=True`` any input whose sides are multiples of the patch sides is accepted
    (DINOv2 / timm's ``dynamic_img_size``: the caller then interpolates its position embeddings to
    the input's grid, :func:`litzoo.framework.nn.pos_embed.interpolate_pos_embed`); ``image_size`` is
    then the size the positions are stored for.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        in_chans: int,
        dim: int,
        dynamic_size: bool = False,
    ) -> None:
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
        self.dynamic_size = dynamic_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def grid_for(self, images: Tensor) -> tuple[int, int]:
        """The ``(h, w)`` patch grid of ``images``; ``ValueError`` for a size this embedding does not take."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        if self.dynamic_size:
            if height % self.patch_hw[0] or width % self.patch_hw[1] or height == 0 or width == 0:
                raise ValueError(
                    f"input sides must be positive multiples of the patch ({self.patch_hw[0]}x{self.patch_hw[1]}), got shape {tuple(images.shape)}"
                )
            return height // self.patch_hw[0], width // self.patch_hw[1]
        if (height, width) != self.input_hw:
            raise ValueError(f"expected {self.input_hw[0]}x{self.input_hw[1]} inputs, got shape {tuple(images.shape)}")
        return self.grid_hw

    def forward(self, images: Tensor) -> Tensor:
        self.grid_for(images)  # refuses a size this embedding does not take
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
