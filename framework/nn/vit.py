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
from litzoo.framework.nn.pos_embed import interpolate_pos_embed
from litzoo.framework.nn.rope import Rope2D, apply_rope


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

    def forward(
        self, x: Tensor, causal: bool = False, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None, rope: Tensor | None = None
    ) -> Tensor:
        """``(B, N, D)`` → ``(B, N, D)``.

        Args:
            causal: token ``i`` attends to tokens ``≤ i`` only.
            key_padding_mask: ``(B, N)``, True where a token must not be attended to.
            attn_mask: broadcastable to ``(B, heads, N, N)``: boolean (True = may attend) or additive
                float (added to the attention logits, ``-inf`` = never), e.g. Swin's shifted-window mask.
            rope: ``(N, Dh)`` rotary angles applied to the per-head queries and keys
                (:func:`litzoo.framework.nn.rope.apply_rope`; the Perception Encoder's RoPE-2D).
        """
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, Dh)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
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
        norm_eps: epsilon of ``norm1`` / ``norm2`` (timm / DINOv2: 1e-6; OpenAI CLIP / PE: 1e-5).
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
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
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

    def _attn_branch(self, x: Tensor, causal: bool, key_padding_mask: Tensor | None, rope: Tensor | None = None) -> Tensor:
        out = self.attn(self.norm1(x), causal=causal, key_padding_mask=key_padding_mask, rope=rope)
        return out if self.ls1 is None else self.ls1(out)

    def _mlp_branch(self, x: Tensor) -> Tensor:
        out = self.mlp(self.norm2(x))
        return out if self.ls2 is None else self.ls2(out)

    def forward(self, x: Tensor, causal: bool = False, key_padding_mask: Tensor | None = None, rope: Tensor | None = None) -> Tensor:
        """``rope``: ``(N, Dh)`` rotary angles for the attention's queries and keys (see :class:`Attention`)."""
        if self.training and self.subset_drop_path and self.drop_path_rate > 0.1:
            x = add_residual_on_subset(
                x, lambda rows, idx: self._attn_branch(rows, causal, None if key_padding_mask is None else key_padding_mask[idx], rope), self.drop_path_rate
            )
            return add_residual_on_subset(x, lambda rows, idx: self._mlp_branch(rows), self.drop_path_rate)
        branch = self._attn_branch(x, causal, key_padding_mask, rope)
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
    then the size the positions are stored for. ``bias=False``: a projection without bias (OpenAI CLIP's
    and the Perception Encoder's ``conv1``).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        in_chans: int,
        dim: int,
        dynamic_size: bool = False,
        bias: bool = True,
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
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch, bias=bias)

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

    The Perception Encoder's vision options (facebookresearch/perception_models ``core/vision_encoder/pe.py``
    ``VisionTransformer``) are off by default, and with the defaults the network is the plain ViT above,
    parameter for parameter and output for output:

    * ``use_rope2d``: PE's RoPE-2D (:mod:`litzoo.framework.nn.rope`) on every block's queries and keys;
    * ``class_token=False``: no class token (PE-G); ``abs_pos_embed=False``: no learned positions;
    * ``norm_pre``: PE's ``ln_pre`` after the positions are added; ``layer_scale_init``: LayerScale on every
      branch; ``norm_eps``: every LayerNorm's epsilon (PE: 1e-5); ``patch_bias=False``: PE's bias-free ``conv1``;
    * ``dynamic_size``: any input whose sides are multiples of the patch; the learned positions are then
      resampled to the input's grid (PE: bilinear, ``align_corners=False``; ``pos_embed_mode``), RoPE needs nothing.

    Args:
        image_size: side of the square input images (with ``dynamic_size``: the size positions are stored for).
        patch_size: side of a patch.
        in_chans: image channels.
        dim: token width (ViT-S: 384, ViT-B: 768).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        class_token: prepend a learned class token.
        abs_pos_embed: add learned absolute position embeddings.
        use_rope2d: rotary 2-D positions in attention (head width a multiple of 4).
        rope_theta: RoPE frequency base (PE: 10000).
        norm_pre: LayerNorm on the tokens before the blocks (PE's ``ln_pre``).
        layer_scale_init: initial LayerScale ``gamma``; ``None`` = no LayerScale.
        norm_eps: epsilon of every LayerNorm (timm: 1e-6; PE / OpenAI CLIP: 1e-5).
        patch_bias: bias on the patch projection.
        dynamic_size: accept any multiple of the patch size (position embeddings resampled).
        pos_embed_mode: how the positions are resampled, ``"bilinear"`` (PE) or ``"bicubic"`` (DINOv2).
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
        class_token: bool = True,
        abs_pos_embed: bool = True,
        use_rope2d: bool = False,
        rope_theta: float = 10000.0,
        norm_pre: bool = False,
        layer_scale_init: float | None = None,
        norm_eps: float = 1e-6,
        patch_bias: bool = True,
        dynamic_size: bool = False,
        pos_embed_mode: str = "bilinear",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if pos_embed_mode not in ("bilinear", "bicubic"):
            raise ValueError(f"pos_embed_mode must be 'bilinear' or 'bicubic', got {pos_embed_mode!r}")
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        self.dim = dim
        self.num_prefix_tokens = int(class_token)
        self.pos_embed_mode = pos_embed_mode
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, dim, dynamic_size=dynamic_size, bias=patch_bias)
        # Optional parts exist only when used: the default model has exactly the plain ViT's parameters.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches, dim)) if abs_pos_embed else None
        self.norm_pre = nn.LayerNorm(dim, eps=norm_eps) if norm_pre else None
        self.rope = Rope2D(dim // num_heads, rope_theta, class_token) if use_rope2d else None
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, layer_scale_init=layer_scale_init, norm_eps=norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        init_vit_weights(self)

    def position_embedding(self, grid_hw: tuple[int, int]) -> Tensor:
        """The learned positions for an ``h × w`` patch grid, resampled when it is not the stored one."""
        assert self.pos_embed is not None
        return interpolate_pos_embed(self.pos_embed, grid_hw, self.num_prefix_tokens, offset=0.0, source_hw=self.patch_embed.grid_hw, mode=self.pos_embed_mode)

    def forward(self, images: Tensor) -> Tensor:
        grid = self.patch_embed.grid_for(images)
        x = self.patch_embed(images)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        if self.pos_embed is not None:
            x = x + (self.pos_embed if grid == self.patch_embed.grid_hw else self.position_embedding(grid))
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        rope = None if self.rope is None else self.rope(grid, x.device)
        for block in self.blocks:
            x = block(x) if rope is None else block(x, rope=rope)
        return self.norm(x)

    def pool(self, tokens: Tensor, mode: str = "token") -> Tensor:
        """``(B, P + N, D)`` → ``(B, D)``: the class token, or the mean of the ``N`` patch tokens (``P`` = 1 with a
        class token, 0 without)."""
        if mode == "token":
            if self.cls_token is None:
                raise ValueError("pool 'token' needs a class token; this ViT has none (class_token=False): pool with 'avg' or an attention pool")
            return tokens[:, 0]
        if mode == "avg":
            return tokens[:, self.num_prefix_tokens :].mean(dim=1)
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
            if sub.proj.bias is not None:
                nn.init.zeros_(sub.proj.bias)
