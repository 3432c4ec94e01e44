"""Hiera — A Hierarchical Vision Transformer without the Bells-and-Whistles (Ryali et al., ICML 2023).

A plain ViT made hierarchical with nothing but pooling: a 7×7 stride-4 convolution embeds the image,
a learned absolute position embedding is added, and four stages of pre-norm transformer blocks follow;
the first block of stages 2 … ``q_pool + 1`` max-pools its *queries* 2×2 (and its projected residual),
halving the resolution while the width and the heads double. Stages 1–2 attend only inside their
**mask unit** (an 8×8-token window at 224 px), stages 3–4 globally.

**Unroll.** The tokens are reordered once, right after the position embedding, so that every 2×2
max-pool becomes ``view(B, 4, N / 4, C).amax(1)`` and every mask unit a set of tokens at the same
position modulo the number of units: after ``k`` unrolls with stride ``s`` the flat token index is
``(s_1y, s_1x, …, s_ky, s_kx, unit_y, unit_x)`` (first unroll most significant). With
``mask_unit_size == q_stride ** (stages − 1)`` (8 = 2³ for the published models) the last two digits
are exactly the mask-unit grid, so dropping masked units is a gather along that axis and mask-unit
attention is attention over tokens ``t ≡ u (mod #units)``. :func:`reroll` undoes the remaining
unrolls to read intermediate features in spatial order.

**MAE pretraining** (:class:`MaskedAutoencoderHiera`): a random 60% of the mask units is removed
(:func:`litzoo.framework.nn.random_token_mask` at the mask-unit level; ``keep`` is True = visible, Hiera's
convention); the patch-embedding input is multiplied by the upsampled keep map (**masked conv**) so the
overlapping 7×7 kernel never sees a removed pixel; the encoder runs on the kept units only; the outputs
of stages 1 … ``q_pool`` are brought to the final mask-unit resolution by strided convolutions and
summed with the last stage (multi-scale fusion), normalised, and a light ViT decoder (mask tokens for
the removed units, learned positions) predicts the normalised pixels of each ``4·2^q_pool``-pixel patch;
the loss is the mean squared error over the removed patches.

Reference: facebookresearch/hiera ``hiera/hiera.py``, ``hiera/hiera_utils.py``, ``hiera/hiera_mae.py``
(PyPI ``hiera-transformer`` 0.1.4). Images (2-D) only; the video models (3-D patch embedding,
separate space/time positions) are not implemented. Parameter names are the official ones, so released
``{'model_state': ...}`` files load key for key (:meth:`Hiera.from_official_checkpoint`).
Differences from the official code: the classifier always returns logits (the official ``Head``
applies a softmax in eval mode); drop path is litzoo's own (:class:`litzoo.framework.nn.drop.DropPath`, same rule as timm's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim import AdamW

from litzoo.framework.checkpoints import (
    convert_official_state_dict,
    load_checkpoint,
    load_state_dict_checked,
    register_official_key_map,
    unwrap_state_dict,
)
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.errors import LitzooError
from litzoo.framework.masked_modelling import MaskedModellingModule
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn import Mlp, random_token_mask
from litzoo.framework.nn.drop import DropPath

# -------------------------------------------------------------------------- unroll / reroll


def unroll(x: Tensor, size: tuple[int, int], schedule: Sequence[tuple[int, int]]) -> Tensor:
    """Reorder spatial tokens so that strided pooling and mask units become reshapes.

    Args:
        x: ``(B, H·W, C)`` tokens in row-major spatial order.
        size: ``(H, W)``.
        schedule: strides ``(sy, sx)``, applied in order; each moves the offset inside an
            ``sy × sx`` cell in front of the remaining (coarser) grid.

    Returns ``(B, H·W, C)``: token ``(y, x)`` sits at flat index ``(o_1y, o_1x, …, o_ky, o_kx, Y, X)``
    with ``o_j`` the offset of unroll ``j`` and ``(Y, X)`` the position on the final coarse grid.
    """
    batch, tokens, channels = x.shape
    height, width = size
    if tokens != height * width:
        raise ValueError(f"unroll: {tokens} tokens do not fill a {height}x{width} grid")
    x = x.reshape(batch, height, width, channels)
    lead = batch  # batch and every offset pair so far, flattened
    for sy, sx in schedule:
        if height % sy or width % sx:
            raise ValueError(f"unroll: a {height}x{width} grid is not divisible by the stride {(sy, sx)}")
        height, width = height // sy, width // sx
        x = x.reshape(lead, height, sy, width, sx, channels).permute(0, 2, 4, 1, 3, 5)  # offsets before the grid
        lead *= sy * sx
        x = x.reshape(lead, height, width, channels)
    return x.reshape(batch, tokens, channels)


def reroll(x: Tensor, size: tuple[int, int], schedule: Sequence[tuple[int, int]], windows: bool = False) -> Tensor:
    """Undo :func:`unroll` (the unrolls in ``schedule`` not yet consumed by pooling).

    Args:
        x: ``(B, N, C)`` unrolled tokens; ``N = prod(strides) · R`` for ``R`` units of the coarse grid
            (all of them, or only the kept mask units of a masked input).
        size: the current spatial size ``(H, W)`` of the full token grid.
        schedule: the remaining unrolls.
        windows: return ``(B, R, Uy, Ux, C)`` units (each in spatial order) instead of ``(B, H, W, C)``;
            required when ``x`` holds only some units.
    """
    batch, tokens, channels = x.shape
    unit_y = math.prod(s[0] for s in schedule)
    unit_x = math.prod(s[1] for s in schedule)
    units = tokens // (unit_y * unit_x)
    # digits (o_1y, o_1x, …, o_ky, o_kx, R); inside a unit y = o_1y + s_1y·(o_2y + s_2y·(…)): o_k most significant
    x = x.reshape(batch, *[s for pair in schedule for s in pair], units, channels)
    depth = len(schedule)
    ys = [1 + 2 * j for j in reversed(range(depth))]
    xs = [2 + 2 * j for j in reversed(range(depth))]
    x = x.permute(0, 1 + 2 * depth, *ys, *xs, 2 + 2 * depth).reshape(batch, units, unit_y, unit_x, channels)
    if windows:
        return x
    grid_y, grid_x = size[0] // unit_y, size[1] // unit_x
    if grid_y * grid_x != units:
        raise ValueError(f"reroll: {units} units do not fill the {grid_y}x{grid_x} grid of a {size} map; pass windows=True")
    return undo_windowing(x, (grid_y, grid_x))


def undo_windowing(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(B, gy·gx, Uy, Ux, C)`` windows in row-major grid order → ``(B, gy·Uy, gx·Ux, C)`` map."""
    batch, _, unit_y, unit_x, channels = x.shape
    x = x.reshape(batch, grid[0], grid[1], unit_y, unit_x, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, grid[0] * unit_y, grid[1] * unit_x, channels)


def q_pool(x: Tensor, stride: int) -> Tensor:
    """Max over the leading unrolled offset: ``(B, stride·M, C)`` → ``(B, M, C)``, a ``stride``-cell
    max-pool on the spatial grid when the first pending unroll has that stride."""
    return x.reshape(x.shape[0], stride, -1, x.shape[-1]).amax(dim=1)


# ---------------------------------------------------------------------------------- blocks


class MaskUnitAttention(nn.Module):
    """Attention inside each mask unit (``use_mask_unit_attn``) or over all tokens, on unrolled tokens,
    optionally max-pooling the queries over the leading unrolled offset (``q_stride`` flattened, e.g. 4).

    Args:
        dim: input width.
        dim_out: output width (``qkv`` projects to it); a multiple of ``heads``.
        heads: attention heads.
        q_stride: flattened query-pooling stride (1 = none).
        window_size: tokens per mask unit *after* pooling.
        use_mask_unit_attn: attend within mask units only.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int = 1, window_size: int = 0, use_mask_unit_attn: bool = False) -> None:
        super().__init__()
        if heads <= 0 or dim_out % heads:
            raise ValueError(f"dim_out ({dim_out}) must be a positive multiple of heads ({heads})")
        self.dim_out, self.heads, self.q_stride = dim_out, heads, q_stride
        self.window_size, self.use_mask_unit_attn = window_size, use_mask_unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        units = tokens // (self.q_stride * self.window_size) if self.use_mask_unit_attn else 1
        head_dim = self.dim_out // self.heads
        # unit u holds the tokens t ≡ u (mod units): (B, T/units, units, 3, H, Dh) → 3 × (B, H, units, T/units, Dh)
        q, k, v = self.qkv(x).reshape(batch, tokens // units, units, 3, self.heads, head_dim).permute(3, 0, 4, 2, 1, 5)
        if self.q_stride > 1:  # the leading unrolled offset of every unit is the pooling cell
            q = q.reshape(batch, self.heads, units, self.q_stride, -1, head_dim).amax(dim=3)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, units, T', Dh)
        out = out.permute(0, 3, 2, 1, 4).reshape(batch, -1, self.dim_out)  # back to (t, unit) token order, (head, Dh) channels
        return self.proj(out)


class HieraBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``. When the width changes, the residual
    is ``proj(norm1(x))``, query-pooled like the attention output.

    Args:
        dim, dim_out: input and output widths.
        heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim_out``.
        drop_path: stochastic-depth rate of both branches.
        q_stride: flattened query-pooling stride (1 = none).
        window_size: tokens per mask unit after pooling.
        use_mask_unit_attn: mask-unit (True) or global attention.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: int = 1,
        window_size: int = 0,
        use_mask_unit_attn: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, window_size, use_mask_unit_attn)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        if self.dim != self.dim_out:
            x = q_pool(self.proj(x_norm), self.attn.q_stride)
        x = x + self.drop_path(self.attn(x_norm))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HieraPatchEmbed(nn.Module):
    """Overlapping convolutional patch embedding; with a keep map, the **masked conv**: input pixels of
    removed mask units are zeroed first, so no kept token's receptive field sees them."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, images: Tensor, keep_map: Tensor | None = None) -> Tensor:
        """``(B, C, H, W)`` → ``(B, h·w, D)``; ``keep_map`` ``(B, 1, gy, gx)`` bool over mask units."""
        if keep_map is not None:
            images = images * F.interpolate(keep_map.to(images.dtype), size=images.shape[-2:], mode="nearest")
        return self.proj(images).flatten(2).transpose(1, 2)


class Head(nn.Module):
    """Dropout → Linear classifier (``head.projection``), returning logits."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.dropout(x))


# ----------------------------------------------------------------------------------- the model


class Hiera(nn.Module):
    """The Hiera image encoder and classifier (official module names). Defaults: Hiera-T/224.

    Args:
        img_size: side of the square input images.
        in_chans: image channels.
        embed_dim: width of stage 1 (96 for T/S/B, 112 B+, 144 L, 256 H).
        num_heads: heads of stage 1 (1 for T/S/B).
        num_classes: classifier outputs.
        stages: blocks per stage (T: (1, 2, 7, 2), S: (1, 2, 11, 2), B: (2, 3, 16, 3), L/H: (2, 6, 36, 4)).
        q_pool: number of stage transitions that pool (3 for classifiers, 2 for MAE pretraining).
        q_stride: side of the query-pooling cell.
        mask_unit_size: side of a mask unit in tokens; must equal ``q_stride ** (len(stages) − 1)``.
        mask_unit_attn: per stage, mask-unit (True) or global attention. As in the official code the
            first block of a stage still uses the previous stage's setting (it pools, then the new
            stage's attention starts at the lower resolution).
        dim_mul: width multiplier at each stage transition.
        head_mul: heads multiplier at each stage transition.
        patch_kernel: kernel of the patch-embedding convolution.
        patch_stride: stride of the patch-embedding convolution (pixels per token side).
        patch_padding: padding of the patch-embedding convolution.
        mlp_ratio: MLP hidden width over the token width.
        drop_path_rate: stochastic depth, linearly increasing to this value over the blocks.
        head_dropout: dropout before the classifier.
        head_init_scale: the classifier's initial weights and biases are multiplied by this.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        num_classes: int = 1000,
        stages: Sequence[int] = (1, 2, 7, 2),
        q_pool: int = 3,
        q_stride: int = 2,
        mask_unit_size: int = 8,
        mask_unit_attn: Sequence[bool] = (True, True, False, False),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: int = 7,
        patch_stride: int = 4,
        patch_padding: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        head_init_scale: float = 0.001,
    ) -> None:
        super().__init__()
        stages = tuple(stages)
        if not stages or min(stages) < 1:
            raise ValueError(f"stages must be positive block counts, got {stages}")
        if len(mask_unit_attn) != len(stages):
            raise ValueError(f"mask_unit_attn needs one flag per stage ({len(stages)}), got {tuple(mask_unit_attn)}")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}] for {len(stages)} stages, got {q_pool}")
        if q_stride < 1 or mask_unit_size != q_stride ** (len(stages) - 1):
            raise ValueError(f"mask_unit_size ({mask_unit_size}) must equal q_stride ** (stages - 1) = {q_stride} ** {len(stages) - 1}: "
                             "the unrolled token order puts mask units on the last axis only then")  # fmt: skip
        if img_size % patch_stride or (img_size // patch_stride) % mask_unit_size:
            raise ValueError(f"img_size ({img_size}) / patch_stride ({patch_stride}) must be a multiple of mask_unit_size ({mask_unit_size})")
        self.img_size, self.in_chans, self.patch_stride, self.mlp_ratio = img_size, in_chans, patch_stride, mlp_ratio
        self.grid = img_size // patch_stride  # tokens per side
        self.q_pool, self.q_stride, self.mask_unit_size = q_pool, q_stride, mask_unit_size
        self.mask_grid = self.grid // mask_unit_size  # mask units per side
        self.mu_tokens = mask_unit_size**2
        self.schedule = [(q_stride, q_stride)] * (len(stages) - 1)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]

        self.patch_embed = HieraPatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2, embed_dim))

        pool_blocks = {end + 1 for end in self.stage_ends[:q_pool]}
        depth = sum(stages)
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        dim, heads, window, stage = embed_dim, num_heads, self.mu_tokens, 0
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out, use_mask_unit_attn = dim, mask_unit_attn[stage]  # the flag lags one block behind the stage
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = int(dim * dim_mul), int(heads * head_mul), stage + 1
                if i in pool_blocks:
                    window //= q_stride**2
            flat_q = q_stride**2 if i in pool_blocks else 1
            self.blocks.append(HieraBlock(dim, dim_out, heads, mlp_ratio, rates[i], flat_q, window, use_mask_unit_attn))
            dim = dim_out
        self.dim = dim
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = Head(dim, num_classes, head_dropout)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)
        with torch.no_grad():
            self.head.projection.weight.mul_(head_init_scale)
            self.head.projection.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(module: nn.Module, bias: float = 0.02) -> None:
        """Official initialisation: truncated-normal (std 0.02) linear and conv weights, linear biases and
        LayerNorm biases 0.02, LayerNorm weights 1 (conv biases keep PyTorch's default)."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.constant_(module.bias, bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.constant_(module.bias, bias)
            nn.init.constant_(module.weight, 1.0)

    # ------------------------------------------------------------------------ masking
    def random_keep(self, batch: int, mask_ratio: float, noise: Tensor | None = None, device: torch.device | str | None = None) -> Tensor:
        """``(B, #mask units)`` bool, True = kept, a random ``mask_ratio`` of each image's units removed
        (``noise`` ``(B, #units)`` makes it reproducible; equal noise gives the official ``get_random_mask``)."""
        return random_token_mask(batch, self.mask_grid**2, mask_ratio, noise=noise, device=device).keep

    def stage_schedule(self, stage: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """The token-grid size and the unrolls still pending at the output of ``stage``."""
        pooled = min(stage, self.q_pool)
        side = self.grid // self.q_stride**pooled
        return (side, side), self.schedule[pooled:]

    # ------------------------------------------------------------------------ forward
    def forward_tokens(self, images: Tensor, keep: Tensor | None = None, return_intermediates: bool = False,
                       windows: bool | None = None) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
        """Run the encoder; returns the last block's unrolled tokens ``(B, N', D)`` and, with
        ``return_intermediates``, every stage's output rerolled: ``(B, H, W, C)`` maps, or, with ``keep``
        (or ``windows=True``), ``(B, #kept units, Uy, Ux, C)`` windows of the kept mask units.

        Args:
            images: ``(B, C, H, W)``.
            keep: ``(B, #mask units)`` bool, True = visible (row-major over the mask-unit grid); every
                image must keep the same number of units. Removed units are zeroed before the patch
                convolution and their tokens dropped.
        """
        batch = images.shape[0]
        keep_map = None
        if keep is not None:
            if keep.shape != (batch, self.mask_grid**2) or keep.dtype != torch.bool:
                raise ValueError(f"keep must be a bool tensor of shape {(batch, self.mask_grid**2)}, got {keep.dtype} {tuple(keep.shape)}")
            keep_map = keep.reshape(batch, 1, self.mask_grid, self.mask_grid)
        x = self.patch_embed(images, keep_map) + self.pos_embed
        x = unroll(x, (self.grid, self.grid), self.schedule)  # (B, N, C) with the mask units on the last axis
        if keep is not None:
            kept = int(keep[0].sum())
            if not bool((keep.sum(dim=1) == kept).all()):
                raise ValueError("keep must keep the same number of mask units in every image")
            units = x.reshape(batch, self.mu_tokens, self.mask_grid**2, -1).transpose(1, 2)  # (B, #units, tokens per unit, C)
            x = units[keep].reshape(batch, kept, self.mu_tokens, -1).transpose(1, 2).reshape(batch, kept * self.mu_tokens, -1)
        intermediates = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if return_intermediates and i in self.stage_ends:
                size, pending = self.stage_schedule(self.stage_ends.index(i))
                intermediates.append(reroll(x, size, pending, windows=keep is not None if windows is None else windows))
        return x, intermediates

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, D)``: the mean of the last stage's tokens after the final norm (the classifier's input)."""
        x, _ = self.forward_tokens(images)
        return self.norm(x.mean(dim=1))

    def forward(self, images: Tensor) -> Tensor:
        """``(B, num_classes)`` logits."""
        return self.head(self.forward_features(images))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    # --------------------------------------------------------------------- released weights
    @classmethod
    def from_official_checkpoint(cls, path: str, **kwargs: Any) -> Hiera:
        """A model built with ``kwargs`` and the weights of a released Hiera ``.pth``
        (``{'model_state': ...}``, e.g. ``hiera_tiny_224.pth`` for the defaults). An MAE checkpoint's
        decoder, and a head of another class count, are refused with the keys named."""
        model = cls(**kwargs)
        load_state_dict_checked(model, convert_official_state_dict("hiera", load_checkpoint(path)), path)
        return model


@register_official_key_map("hiera")
def official_hiera_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/hiera weights -> :class:`Hiera` / :class:`MaskedAutoencoderHiera`: the names are the
    official ones, so only the released files' ``{'model_state': ...}`` wrapper (and ``{'model': ...}``,
    ``module.``) is removed.

    Raises:
        LitzooError: not a Hiera state dict (no ``patch_embed.proj.weight``).
    """
    if isinstance(state.get("model_state"), Mapping):
        state = state["model_state"]
    state = unwrap_state_dict(state)
    if "patch_embed.proj.weight" not in state:
        raise LitzooError("official hiera state dict: no 'patch_embed.proj.weight', so not a Hiera checkpoint")
    return state


# ------------------------------------------------------------------------------ MAE pretraining


class MaskedAutoencoderHiera(Hiera):
    """Hiera MAE: mask-unit masking, masked conv, multi-scale fusion, a light decoder (official names).

    Defaults: MAE-Hiera-T/224 (``q_pool=2``), decoder 512-d × 8 blocks × 16 heads; predictions are
    ``pred_stride = patch_stride · q_stride^q_pool`` (16) pixel patches, channel-major
    (``C, py, px``) like the official ``get_pixel_label_2d``.

    Args:
        q_pool: stage transitions that pool (2 for MAE pretraining; :class:`Hiera`'s default is 3).
        decoder_embed_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        norm_pix_loss: regress per-patch normalised pixels (mean, unbiased variance + 1e-6).
        **kwargs: the encoder's other arguments, ``img_size`` … ``drop_path_rate`` (see :class:`Hiera`;
            no classifier, so none of the head's).
    """

    def __init__(
        self,
        q_pool: int = 2,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        **kwargs: Any,
    ) -> None:
        # Hiera builds a classifier head, deleted below: its arguments are not the MAE model's
        super().__init__(num_classes=2, q_pool=q_pool, head_dropout=0.0, head_init_scale=0.001, **kwargs)
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth must be at least 1, got {decoder_depth}")
        del self.norm, self.head
        self.norm_pix_loss = norm_pix_loss
        q_stride, mask_unit_size = self.q_stride, self.mask_unit_size
        dim_out = self.dim
        self.encoder_norm = nn.LayerNorm(dim_out, eps=1e-6)
        self.unit_final = mask_unit_size // q_stride**q_pool  # a mask unit's side after pooling
        self.grid_final = self.grid // q_stride**q_pool
        self.multi_scale_fusion_heads = nn.ModuleList()
        for stage in range(q_pool):  # bring stage outputs to the final mask-unit resolution
            kernel = (mask_unit_size // q_stride**stage) // self.unit_final
            self.multi_scale_fusion_heads.append(nn.Conv2d(self.blocks[self.stage_ends[stage]].dim_out, dim_out, kernel, stride=kernel))
        self.multi_scale_fusion_heads.append(nn.Identity())
        self.decoder_embed = nn.Linear(dim_out, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.grid_final**2, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(HieraBlock(decoder_embed_dim, decoder_embed_dim, decoder_num_heads, self.mlp_ratio)
                                            for _ in range(decoder_depth))  # fmt: skip
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.pred_stride = self.patch_stride * q_stride**q_pool
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.pred_stride**2 * self.in_chans)
        self._mae_init()

    def _mae_init(self) -> None:
        """Official MAE re-initialisation: Xavier-uniform linear weights with zero bias, LayerNorm at
        identity, the patch convolution Xavier-uniform on its flattened view, mask token and decoder
        positions truncated-normal 0.02 (fusion convolutions keep Hiera's init)."""
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "decoder_pos_embed", "mask_token"}

    def forward_encoder(self, images: Tensor, keep: Tensor | None) -> Tensor:
        """``(B, #kept units, uy, ux, D)``: the fused, normalised encoding of the kept mask units
        (``keep=None``: every unit, without selecting tokens by a mask)."""
        _, intermediates = self.forward_tokens(images, keep, return_intermediates=True, windows=True)
        fused = 0.0
        for head, x in zip(self.multi_scale_fusion_heads, intermediates[: self.q_pool] + intermediates[-1:], strict=True):
            if not isinstance(head, nn.Identity):
                batch, units = x.shape[:2]
                x = head(x.flatten(0, 1).permute(0, 3, 1, 2))  # (B·units, C', uy, ux)
                x = x.permute(0, 2, 3, 1).reshape(batch, units, *x.shape[2:], x.shape[1])
            fused = fused + x
        return self.encoder_norm(fused)

    def forward_decoder(self, latent: Tensor, keep: Tensor) -> Tensor:
        """``(B, h·w, pred_stride²·C)`` predictions for every final-resolution token (row-major)."""
        x = self.decoder_embed(latent)  # (B, kept, uy, ux, Dd)
        batch, units = keep.shape
        full = x.new_zeros(batch, units, *x.shape[2:])
        full[keep] = x.flatten(0, 1)
        full = torch.where(keep[:, :, None, None, None], full, self.mask_token.reshape(1, 1, 1, 1, -1))
        x = undo_windowing(full, (self.mask_grid, self.mask_grid)).flatten(1, 2) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))

    def token_keep(self, keep: Tensor) -> Tensor:
        """Mask-unit keep ``(B, #units)`` → ``(B, h·w)`` at the prediction resolution (row-major)."""
        batch = keep.shape[0]
        grid = keep.reshape(batch, self.mask_grid, self.mask_grid)
        return grid.repeat_interleave(self.unit_final, 1).repeat_interleave(self.unit_final, 2).reshape(batch, -1)

    def patchify(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, h·w, C·p·p)`` (channel-major inside a patch, the official label order)."""
        batch, channels, height, width = images.shape
        p = self.pred_stride
        x = images.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(batch, (height // p) * (width // p), channels * p * p)

    def unpatchify(self, patches: Tensor) -> Tensor:
        batch, tokens, _ = patches.shape
        side, p = int(math.isqrt(tokens)), self.pred_stride
        x = patches.reshape(batch, side, side, self.in_chans, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(batch, self.in_chans, side * p, side * p)

    def target(self, images: Tensor) -> Tensor:
        patches = self.patchify(images)
        if not self.norm_pix_loss:
            return patches
        return (patches - patches.mean(dim=-1, keepdim=True)) / (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5

    def forward(self, images: Tensor, mask_ratio: float = 0.6, keep: Tensor | None = None, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, pred (B, h·w, p²·C), keep (B, #units))``; ``noise`` or ``keep`` fixes the mask."""
        if keep is None:
            keep = self.random_keep(images.shape[0], mask_ratio, noise=noise, device=images.device)
        pred = self.forward_decoder(self.forward_encoder(images, keep), keep)
        removed = ~self.token_keep(keep)
        loss = (pred[removed] - self.target(images)[removed]).pow(2).mean()
        return loss, pred, keep

    def reconstruct(self, images: Tensor, pred: Tensor, keep: Tensor) -> Tensor:
        """Images with removed patches replaced by the predictions (norm-pix mapped back per patch)."""
        patches = self.patchify(images)
        if self.norm_pix_loss:
            pred = pred * (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(dim=-1, keepdim=True)
        kept = self.token_keep(keep)[..., None]
        return self.unpatchify(torch.where(kept, patches, pred))

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, D)``: mean of the fused encoding of the whole (unmasked) image after ``encoder_norm``."""
        return self.forward_encoder(images, None).mean(dim=(1, 2, 3))

    @classmethod
    def from_official_checkpoint(cls, path: str, **kwargs: Any) -> MaskedAutoencoderHiera:
        """A model built with ``kwargs`` and the weights of an official MAE-Hiera checkpoint (all keys)."""
        model = cls(**kwargs)
        load_state_dict_checked(model, convert_official_state_dict("hiera", load_checkpoint(path)), path)
        return model


# ------------------------------------------------------------------------- LightningModules


def adamw_hiera(params: Any, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.05) -> AdamW:
    """AdamW with MAE's fine-tuning settings, the recipe the Hiera authors point to (hiera#12): β
    (0.9, 0.999), wd 0.05, lr = 5e-4 · 1024 / 256."""
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def adamw_hiera_mae(params: Any, lr: float = 8e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.05) -> AdamW:
    """AdamW with MAE's pretraining β (0.9, 0.95) and wd 0.05; lr 8e-4 (an assumption: the Hiera
    repository releases no training recipe)."""
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


class HieraClassifier(ImageClassifier):
    """Supervised Hiera image classifier on ``{"image", "label"}`` batches.

    ``pos_embed``, biases and norms are not weight-decayed. :meth:`forward_features` gives the pooled,
    normalised features (for probes).

    Args:
        num_classes: classifier outputs (1000).
        optimizer: called with parameter groups; default :func:`adamw_hiera`.
        lr_scheduler: called with the optimizer; ``None`` = cosine decay to 0, per step.
        label_smoothing: cross-entropy label smoothing.
        **net_kwargs: the :class:`Hiera`'s other arguments, ``img_size`` … ``head_init_scale`` (default Hiera-T/224).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        optimizer: OptimizerCallable = adamw_hiera,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(Hiera, net_kwargs, type(self).__name__)
        net = Hiera(num_classes=num_classes, **net_kwargs)
        super().__init__(net, num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler, label_smoothing=label_smoothing)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.example_input_array = torch.zeros(2, net.in_chans, net.img_size, net.img_size)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.net.forward_features(images)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"net.pos_embed"}


class HieraMAEModule(MaskedModellingModule):
    """MAE pretraining of :class:`MaskedAutoencoderHiera` on ``{"image": ...}`` batches.

    The Lightning side is :class:`litzoo.framework.masked_modelling.MaskedModellingModule`: logs ``train/loss``,
    ``val/loss`` with fixed masks (noise of batch ``i`` from ``Generator().manual_seed(val_seed + i)``) and
    ``val/mean_baseline_loss``, and every validation epoch a TensorBoard image ``val/reconstruction`` (rows:
    originals, masked inputs, reconstructions; removed mask units at the image's minimum).
    :meth:`forward_features` is the pooled encoder output on unmasked images (for the probes in
    ``callbacks/probe.py``).

    Args:
        mask_ratio: fraction of mask units removed (0.6 for images).
        warmup_epochs: linear warm-up of the default schedule (then cosine to 0), per step.
        val_seed: seed of the fixed validation masks.
        num_images: images in the TensorBoard reconstruction grid (0 = none).
        optimizer: default :func:`adamw_hiera_mae` (its lr is used as is: no ``blr`` scaling, the Hiera
            repository gives no recipe); no weight decay on 1-D parameters, positions, mask token.
        lr_scheduler: ``None`` = warm-up then cosine.
        **net_kwargs: the :class:`MaskedAutoencoderHiera`'s arguments, ``img_size`` … ``norm_pix_loss``
            (defaults MAE-Hiera-T/224).
    """

    def __init__(
        self,
        mask_ratio: float = 0.6,
        warmup_epochs: float = 40.0,
        val_seed: int = 0,
        num_images: int = 8,
        optimizer: OptimizerCallable = adamw_hiera_mae,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(MaskedAutoencoderHiera, net_kwargs, type(self).__name__)
        net = MaskedAutoencoderHiera(**net_kwargs)
        super().__init__(net, mask_ratio, None, warmup_epochs, val_seed, num_images, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    @property
    def num_mask_units(self) -> int:
        """Hiera masks whole mask units, not patches."""
        return self.model.mask_grid**2

    def removed_patches(self, mask: Tensor) -> Tensor:
        """The network's ``keep`` ``(B, #units)`` (True = visible) as ``(B, h·w)`` removed prediction patches."""
        return ~self.model.token_keep(mask)
