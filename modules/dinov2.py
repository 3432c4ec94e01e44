"""DINOv2 — Learning Robust Visual Features without Supervision (Oquab et al., TMLR 2024), with registers
(Darcet et al., "Vision Transformers Need Registers", ICLR 2024).

Reference: facebookresearch/dinov2 — ``dinov2/models/vision_transformer.py`` (``DinoVisionTransformer``),
``dinov2/layers/{block,layer_scale,swiglu_ffn,dino_head}.py``, ``dinov2/hub/backbones.py`` (the released
layouts), ``dinov2/configs/ssl_default_config.yaml`` (the training defaults). Read line by line; this is
litzoo's own code on the core's ViT blocks (:mod:`litzoo.framework.nn.vit`).

The backbone (verified against an independent functional re-implementation of the official forward in
``tests/modules/test_dinov2_backbone.py``):

* tokens: patch embedding; patches selected by a boolean ``masks`` ``(B, N)`` replaced by the learned
  ``mask_token`` (iBOT's masked image modelling input) **before** the positions are added; class token
  prepended; learned positions added, bicubically resampled to the input's patch grid
  (:func:`~litzoo.framework.nn.pos_embed.interpolate_pos_embed`, ``interpolate_offset`` 0.1); then the
  ``register_tokens`` inserted right after the class token, without positions;
* pre-norm blocks with LayerScale (``ls1`` / ``ls2``, ``gamma`` initialised to ``layer_scale_init``,
  1e-5 in training) and stochastic depth (uniform over the blocks in the training config; DINOv2's
  batch-subset variant above rate 0.1, the per-sample mask below);
* ``forward_features`` returns the official dict: ``x_norm_clstoken``, ``x_norm_regtokens``,
  ``x_norm_patchtokens`` (after the final ``norm``), ``x_prenorm`` (all tokens before it) and ``masks``.

Initialisation as the official ``init_weights``: positions ``trunc_normal(0.02)``, class and register
tokens ``normal(1e-6)``, every ``nn.Linear`` ``trunc_normal(0.02)`` with zero bias, ``mask_token`` zero,
the patch convolution and LayerNorms at PyTorch's defaults.

Released weights (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``: the teacher backbone, no head) load with
:func:`load_official_dinov2`, which reads the layout (width, depth, patch, image size, registers, SwiGLU)
from the file; the key map is registered with the core as ``"dinov2"``. Their hub constructors use
``image_size=518, patch_size=14, layer_scale_init=1.0``, and the register variants resample positions with
``interpolate_offset=0, interpolate_antialias=True``. Training checkpoints (``eval/*/teacher_checkpoint.pth``
``{"teacher": {"backbone.*", "dino_head.*"}}``, or ``{"model": {"teacher.backbone.*", ...}}`` with FSDP's
``blocks.{chunk}.{i}`` block chunks) load too. ``vit_giant2`` (SwiGLU feed-forward, ``mlp.w12`` / ``mlp.w3``)
is supported. Not carried over: xFormers' nested-tensor batching of crops of several sizes (a list of
crops is run one size at a time, which gives the same numbers) and FSDP block chunking (a training device,
not part of the model).

The DINO head (:class:`DINOHead`): ``Linear → GELU → Linear → GELU → Linear`` (in → 2048 → 2048 → 256),
L2 normalisation, then a weight-normalised ``Linear(256, K, bias=False)`` whose magnitude ``g`` starts at
1. The official code uses the deprecated ``torch.nn.utils.weight_norm`` (keys ``last_layer.weight_g`` /
``weight_v``); here it is ``torch.nn.utils.parametrizations.weight_norm`` (keys
``last_layer.parametrizations.weight.original0`` / ``original1``), and official names are renamed on load.
DINOv2 leaves ``g`` trainable (only its learning rate is 0 in the first epoch, as for the whole last
layer); ``norm_last_layer=True`` freezes it at 1, as DINO v1's default.

The training (:class:`DINOv2Module`, read line by line from ``dinov2/train/ssl_meta_arch.py``,
``dinov2/train/train.py``, ``dinov2/utils/param_groups.py`` and ``ssl_default_config.yaml``): the student
(backbone, DINO head, optional iBOT head) and its EMA teacher, multi-crop and iBOT masks drawn in the step
(:mod:`litzoo.framework.data.multicrop`, :mod:`litzoo.framework.nn.block_masking`), the DINO / iBOT / KoLeo
losses of :mod:`litzoo.framework.losses.dino` scaled as the official step, the teacher's global-crop swap,
centering or Sinkhorn-Knopp, the per-step schedules written into the optimizer's groups (sqrt batch scaling,
layer-wise decay, last-layer freeze, weight-decay / momentum cosines, teacher-temperature warm-up; epochs are
the trainer's, not the official fixed 1250 iterations), per-part gradient clipping, collapse monitors in
TensorBoard, and the teacher's class token as the features the probes read. Verified against hand
computations of the official step in ``tests/modules/test_dinov2.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.optim import AdamW

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, register_official_key_map, rename_keys
from litzoo.framework.data.batches import batch_inputs
from litzoo.framework.data.multicrop import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation
from litzoo.framework.distributed import all_reduce_max_, world_size
from litzoo.framework.errors import LitzooError
from litzoo.framework.losses.dino import DINOLoss, IBOTPatchLoss, koleo_loss
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.block_masking import BlockMaskGenerator, IBOTMasks, ibot_masks
from litzoo.framework.nn.ema import ema_update_, make_teacher
from litzoo.framework.nn.pos_embed import interpolate_pos_embed
from litzoo.framework.nn.vit import Block, PatchEmbed
from litzoo.framework.optim import cosine_schedule, warmup_epochs_to_steps

# ---------------------------------------------------------------------------------------- the blocks


class SwiGLUFFN(nn.Module):
    """DINOv2-g's feed-forward layer (``SwiGLUFFNFused``): ``w3(silu(a) · b)`` with ``(a, b) = w12(x)``
    split in halves; the hidden width ``4·dim`` is taken to ``2/3`` and rounded up to a multiple of 8.

    Args:
        dim: token width.
        hidden_dim: the nominal hidden width (``dim · mlp_ratio``) before the 2/3 rounding.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        hidden = (int(hidden_dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


#: the released layouts (``dinov2/models/vision_transformer.py``): width, depth, heads, feed-forward
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit_small": {"dim": 384, "depth": 12, "num_heads": 6, "ffn_layer": "mlp"},
    "vit_base": {"dim": 768, "depth": 12, "num_heads": 12, "ffn_layer": "mlp"},
    "vit_large": {"dim": 1024, "depth": 24, "num_heads": 16, "ffn_layer": "mlp"},
    "vit_giant2": {"dim": 1536, "depth": 40, "num_heads": 24, "ffn_layer": "swiglu"},
}

# ---------------------------------------------------------------------------------------- the backbone


class DinoVisionTransformer(nn.Module):
    """DINOv2's ViT backbone with the official parameter names (``cls_token``, ``pos_embed``,
    ``register_tokens``, ``mask_token``, ``patch_embed.proj``, ``blocks.{i}...``, ``norm``).

    Takes any input whose sides are multiples of the patch (positions are resampled to its grid).

    Args:
        arch: a released layout, ``vit_small`` / ``vit_base`` / ``vit_large`` / ``vit_giant2``, which fills
            ``dim``, ``depth``, ``num_heads`` and ``ffn_layer`` where they are not given.
        image_size: the input side the positions are stored for (training: the 224 global crop;
            released hub models: 518).
        patch_size: side of a patch (released models: 14).
        in_chans: image channels.
        dim: token width; ``None`` = the arch's.
        depth: blocks; ``None`` = the arch's.
        num_heads: attention heads; ``None`` = the arch's.
        mlp_ratio: feed-forward hidden width over ``dim``.
        qkv_bias: bias on the q/k/v projection (DINOv2 trains with it).
        ffn_layer: ``"mlp"`` (fc1 → GELU → fc2) or ``"swiglu"`` (ViT-g); ``None`` = the arch's.
        layer_scale_init: LayerScale init (training config: 1e-5; the hub builds with 1.0); ``None`` or 0:
            no LayerScale.
        drop_path_rate: stochastic-depth rate (training config: 0.3 for the student, 0 for the teacher).
        drop_path_uniform: the same rate in every block (training config) instead of ``linspace(0, rate, depth)``.
        num_register_tokens: registers (0 or 4 in the released models).
        interpolate_offset: DINOv2's offset of the position resampling (0.1; 0 = resample to the size).
        interpolate_antialias: antialiased position resampling (the register variants use it).
    """

    def __init__(
        self,
        arch: str = "vit_base",
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_layer: str | None = None,
        layer_scale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        num_register_tokens: int = 0,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        layout = ARCHITECTURES[arch]
        dim = layout["dim"] if dim is None else dim
        depth = layout["depth"] if depth is None else depth
        num_heads = layout["num_heads"] if num_heads is None else num_heads
        ffn_layer = layout["ffn_layer"] if ffn_layer is None else ffn_layer
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if ffn_layer not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be non-negative, got {num_register_tokens}")
        if interpolate_offset < 0:
            raise ValueError(f"interpolate_offset must be non-negative, got {interpolate_offset}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.arch = arch
        self.embed_dim = self.num_features = dim  # the official attribute names
        self.patch_size = patch_size
        self.n_blocks = depth
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias

        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, dim, dynamic_size=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, dim))
        # The official model keeps ``register_tokens = None`` without registers: no key then, as in its files.
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim)) if num_register_tokens else None
        # numpy's linspace(0, rate, depth), in Python so that a build on the meta device works
        rates = [drop_path_rate] * depth if drop_path_uniform else [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        mlp_layer = SwiGLUFFN if ffn_layer == "swiglu" else None
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, layer_scale_init, rate, subset_drop_path=True, mlp_layer=mlp_layer) for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation (see the module docstring)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------------------- tokens
    def pos_embed_for(self, grid_hw: tuple[int, int]) -> Tensor:
        """``(1, 1 + h·w, D)``: the class position and the patch positions resampled to ``grid_hw``."""
        return interpolate_pos_embed(self.pos_embed, grid_hw, 1, self.interpolate_offset, self.interpolate_antialias)

    def prepare_tokens_with_masks(self, images: Tensor, masks: Tensor | None = None) -> Tensor:
        """``(B, 1 + R + N, D)``: class token, registers, patch tokens (masked ones = ``mask_token``), with positions.

        Args:
            images: ``(B, C, H, W)``, H and W multiples of the patch.
            masks: boolean ``(B, N)``, True = this patch is replaced by ``mask_token``.
        """
        grid = self.patch_embed.grid_for(images)
        x = self.patch_embed(images)  # (B, N, D)
        if masks is not None:
            if masks.dtype != torch.bool or tuple(masks.shape) != tuple(x.shape[:2]):
                raise ValueError(f"masks must be a boolean (B, N) = {tuple(x.shape[:2])} tensor, got {masks.dtype} {tuple(masks.shape)}")
            x = torch.where(masks[..., None], self.mask_token.to(x.dtype)[None], x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed_for(grid).to(x.dtype)
        if self.register_tokens is not None:  # after the class token, without positions
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return x

    # ---------------------------------------------------------------------------- forward
    def _features(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features(self, images: Tensor | list[Tensor], masks: Tensor | list[Tensor | None] | None = None) -> Any:
        """The official output dict (see the module docstring); for a list of crop batches (several sizes,
        as the multi-crop student sees them) a list of dicts, one per batch.

        Args:
            images: ``(B, C, H, W)`` or a list of such batches.
            masks: boolean ``(B, N)`` patch masks (or one per batch, ``None`` for none).
        """
        if isinstance(images, list):
            masks_list = [None] * len(images) if masks is None else list(masks)  # type: ignore[arg-type]
            if len(masks_list) != len(images):
                raise ValueError(f"got {len(images)} image batches but {len(masks_list)} masks")
            return [self.forward_features(batch, batch_masks) for batch, batch_masks in zip(images, masks_list, strict=True)]
        return self._features(self.prepare_tokens_with_masks(images, masks), masks)  # type: ignore[arg-type]

    def forward(self, images: Tensor) -> Tensor:
        """``(B, D)``: the normalised class token (the official model with its ``head = Identity``)."""
        return self.forward_features(images)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        images: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """The patch tokens after the last ``n`` blocks (or after the blocks listed in ``n``), as the
        official method, which DINOv2's linear evaluation reads (the class tokens of the last 1 or 4 blocks,
        with ``return_class_token=True``).

        Args:
            images: ``(B, C, H, W)``.
            n: how many last blocks, or a sequence of block indices.
            reshape: patch tokens as ``(B, D, h, w)`` maps instead of ``(B, N, D)``.
            return_class_token: pairs ``(patch tokens, class token)``.
            norm: apply the final ``norm`` to each block's output.
        """
        depth = len(self.blocks)
        take = set(range(depth - n, depth)) if isinstance(n, int) else {int(i) for i in n}
        if not take or min(take) < 0 or max(take) >= depth:
            raise ValueError(f"n must select blocks among the {depth}, got {n!r}")
        grid = self.patch_embed.grid_for(images)
        x = self.prepare_tokens_with_masks(images)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in take:
                outputs.append(self.norm(x) if norm else x)
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            patches = [out.reshape(out.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous() for out in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens, strict=True))
        return tuple(patches)


def vit_small(**kwargs: Any) -> DinoVisionTransformer:
    """ViT-S: 384 wide, 12 blocks, 6 heads (released as ``dinov2_vits14``: add ``image_size=518, patch_size=14,
    layer_scale_init=1.0``)."""
    return DinoVisionTransformer(arch="vit_small", **kwargs)


def vit_base(**kwargs: Any) -> DinoVisionTransformer:
    """ViT-B: 768 wide, 12 blocks, 12 heads (``dinov2_vitb14``)."""
    return DinoVisionTransformer(arch="vit_base", **kwargs)


def vit_large(**kwargs: Any) -> DinoVisionTransformer:
    """ViT-L: 1024 wide, 24 blocks, 16 heads (``dinov2_vitl14``)."""
    return DinoVisionTransformer(arch="vit_large", **kwargs)


def vit_giant2(**kwargs: Any) -> DinoVisionTransformer:
    """ViT-g: 1536 wide, 40 blocks, 24 heads (64 per head), SwiGLU feed-forward (``dinov2_vitg14``)."""
    return DinoVisionTransformer(arch="vit_giant2", **kwargs)


# ---------------------------------------------------------------------------------------- the DINO head

#: the deprecated ``torch.nn.utils.weight_norm`` names of the official files -> the parametrization's
_WEIGHT_NORM_KEYS = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def rename_weight_norm_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``*.last_layer.weight_g`` / ``weight_v`` (official DINO heads) -> ``*.last_layer.parametrizations.weight.original0`` / ``original1``."""

    def rename(key: str) -> str:
        prefix, _, leaf = key.rpartition(".")
        if leaf in _WEIGHT_NORM_KEYS and (prefix == "last_layer" or prefix.endswith(".last_layer")):
            return f"{prefix}.{_WEIGHT_NORM_KEYS[leaf]}"
        return key

    return rename_keys(state, rename, "DINO head")


class DINOHead(nn.Module):
    """The DINO / iBOT projection head: MLP → L2 normalisation → weight-normalised prototypes.

    Args:
        in_dim: backbone width.
        out_dim: prototypes ``K`` (65536 in the default config, 131072 for ViT-g).
        use_bn: BatchNorm after each hidden linear layer (off in DINOv2).
        nlayers: linear layers of the MLP (3).
        hidden_dim: their hidden width (2048).
        bottleneck_dim: output width of the MLP, the prototypes' dimension (256; 384 for ViT-g).
        mlp_bias: biases in the MLP.
        norm_last_layer: freeze the prototypes' magnitude ``g`` at 1 (DINO v1's default); DINOv2 trains it.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
        norm_last_layer: bool = False,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) <= 0:
            raise ValueError(f"widths must be positive, got in {in_dim}, out {out_dim}, hidden {hidden_dim}, bottleneck {bottleneck_dim}")
        nlayers = max(nlayers, 1)  # as the official head
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim, bias=mlp_bias)
        else:  # the official Sequential, so its indices (mlp.0, mlp.2, ...) are the official keys
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=mlp_bias)]
            for _ in range(nlayers - 2):
                layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim, bias=mlp_bias)]
            layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
            layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim, bias=mlp_bias)]
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # The prototypes keep nn.Linear's default initialisation (the official head initialises the MLP
        # before creating them); weight norm splits the weight into direction v and magnitude g = 1.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)
        self.register_load_state_dict_pre_hook(_official_weight_norm_names)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


def _official_weight_norm_names(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: accept the official ``last_layer.weight_g`` / ``weight_v`` names."""
    for old, new in _WEIGHT_NORM_KEYS.items():
        key = f"{prefix}last_layer.{old}"
        if key in state_dict:
            state_dict[f"{prefix}last_layer.{new}"] = state_dict.pop(key)


# ---------------------------------------------------------------------------------------- released weights

_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _backbone_state(checkpoint: Mapping[str, Any], source: str, which: str = "teacher") -> dict[str, Tensor]:
    """The backbone weights of an official DINOv2 file in litzoo's names (see :func:`official_dinov2_key_map`)."""
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    state: Any = checkpoint
    for wrapper in ("teacher", "model", "state_dict"):  # teacher_checkpoint.pth, FSDPCheckpointer, Lightning
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    bad = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if bad is not None or not state:
        raise LitzooError(f"checkpoint '{source}' is not a DINOv2 state dict: " + (f"entry '{bad}' is not a tensor" if bad else "it is empty"))
    state = {k.replace("_fsdp_wrapped_module.", "").removeprefix("module."): v for k, v in state.items()}
    for prefix in (f"{which}.backbone.", "backbone."):  # the whole meta-architecture: keep one backbone, drop the heads
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    else:
        if any(k.startswith(("teacher.", "student.")) for k in state):
            raise LitzooError(f"checkpoint '{source}' has no '{which}.backbone.*' weights")
    # FSDP block chunks: blocks.{chunk}.{i}.* -> blocks.{i}.* (the official chunks keep the global index i)
    folded: dict[str, Tensor] = {}
    for key, value in state.items():
        new_key = _CHUNKED_BLOCK.sub(r"blocks.\1.", key)
        if new_key in folded:
            raise LitzooError(f"checkpoint '{source}': two keys map to '{new_key}' (block chunks with repeated block indices)")
        folded[new_key] = value
    return folded


@register_official_key_map("dinov2")
def official_dinov2_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/dinov2 weights -> :class:`DinoVisionTransformer`: the hub files
    (``dinov2_vits14_pretrain.pth`` ...) have the same names; training files are unwrapped
    (``{"teacher": ...}``, ``{"model": ...}``), the teacher's backbone kept (``teacher.backbone.*`` /
    ``backbone.*``; heads dropped) and FSDP's ``blocks.{chunk}.{i}`` folded to ``blocks.{i}``.

    Raises:
        LitzooError: not a state dict of tensors, or a training file without a teacher backbone.
    """
    return _backbone_state(state, "<state dict>")


def dinov2_layout(state: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Any]:
    """The :class:`DinoVisionTransformer` arguments a backbone state dict (litzoo names) was written with.

    ``num_heads`` is ``dim / 64`` (every released model has 64-wide heads; pass it for other widths);
    LayerScale is built with the hub's 1.0 (its value is loaded anyway); the register variants get the
    hub's resampling (``interpolate_offset=0``, antialiased).

    Raises:
        LitzooError: the patch embedding, positions or blocks are missing or not of a DINOv2 ViT's shapes.
    """
    proj, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if proj is None or pos is None:
        raise LitzooError(f"checkpoint '{source}' is not a DINOv2 backbone: no " + ("'patch_embed.proj.weight'" if proj is None else "'pos_embed'"))
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3] or pos.ndim != 3:
        raise LitzooError(f"checkpoint '{source}': patch_embed.proj.weight {tuple(proj.shape)} / pos_embed {tuple(pos.shape)} are not a square-patch ViT's")
    dim, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    side = math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        raise LitzooError(f"checkpoint '{source}': pos_embed has {pos.shape[1] - 1} patch positions, not a square grid")
    blocks = {int(m.group(1)) for m in map(re.compile(r"^blocks\.(\d+)\.").match, state) if m}
    if not blocks:
        raise LitzooError(f"checkpoint '{source}' is not a DINOv2 backbone: no 'blocks.*' weights")
    swiglu = "blocks.0.mlp.w12.weight" in state
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    registers = state.get("register_tokens")
    num_registers = 0 if registers is None else int(registers.shape[1])
    layout: dict[str, Any] = {
        "image_size": side * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "dim": dim,
        "depth": max(blocks) + 1,
        "num_heads": dim // 64 if dim % 64 == 0 else None,
        "mlp_ratio": 4.0 if swiglu or fc1 is None else fc1.shape[0] / dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "ffn_layer": "swiglu" if swiglu else "mlp",
        "layer_scale_init": 1.0 if "blocks.0.ls1.gamma" in state else None,
        "num_register_tokens": num_registers,
        "interpolate_offset": 0.0 if num_registers else 0.1,
        "interpolate_antialias": bool(num_registers),
    }
    return layout


def load_official_dinov2(path_or_state_dict: str | Path | Mapping[str, Any], which: str = "teacher", **kwargs: Any) -> DinoVisionTransformer:
    """A :class:`DinoVisionTransformer` with the weights of an official DINOv2 file, its layout read from the file.

    Args:
        path_or_state_dict: a released ``dinov2_vit*14[_reg4]_pretrain.pth``, a training
            ``teacher_checkpoint.pth`` / FSDP checkpoint, or such a state dict already loaded.
        which: the backbone of a training checkpoint that holds both: ``"teacher"`` (what DINOv2
            evaluates and releases) or ``"student"``.
        kwargs: :class:`DinoVisionTransformer` arguments overriding what the file says (``num_heads`` for
            widths that are not multiples of 64, ``drop_path_rate``, ``interpolate_offset`` ...).

    Raises:
        LitzooError: the file is unreadable (read with ``weights_only=True``), is not a DINOv2 backbone,
            or does not fit the model: one line naming the file and the missing / unexpected / mis-shaped keys.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, checkpoint = "<state dict>", path_or_state_dict
    else:
        source, checkpoint = str(path_or_state_dict), load_checkpoint(path_or_state_dict)
    state = _backbone_state(checkpoint, source, which)
    layout = dinov2_layout(state, source)
    layout.update(kwargs)
    if layout["num_heads"] is None:
        raise ValueError(f"checkpoint '{source}' is {layout['dim']} wide, not a multiple of 64: pass num_heads")
    model = DinoVisionTransformer(**layout)
    load_state_dict_checked(model, state, source, what="DINOv2 backbone")
    return model



# ---------------------------------------------------------------------------------------- training: optimizer pieces


def adamw_dinov2(params: Any, lr: float = 0.004, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.04) -> AdamW:
    """AdamW with DINOv2's betas (0.9, 0.999) (``dinov2/train/train.py::build_optimizer``). :class:`DINOv2Module`
    rewrites every group's lr and weight decay before each step (its schedules), so ``lr`` and ``weight_decay``
    here only matter with ``base_lr=None`` (``lr`` is then the peak lr)."""
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def vit_lr_decay_rate(name: str, num_layers: int, decay: float) -> float:
    """The layer-wise lr multiplier of parameter ``name`` of a ViT with ``num_layers`` blocks: ``decay ** (L + 1 − layer_id)``.

    As ``dinov2/utils/param_groups.py::get_vit_lr_decay_rate`` for a backbone (names relative to it): the patch
    embedding, positions, class / register / mask tokens are layer 0; ``blocks.{i}.*`` layer ``i + 1``; anything
    else (the final ``norm``) layer ``L + 1``, multiplier 1. A module without blocks (``num_layers = 0``, a head)
    gets 1 everywhere.
    """
    layer_id = num_layers + 1
    if num_layers > 0:
        if any(token in name for token in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")):
            layer_id = 0
        elif name.startswith("blocks.") or ".blocks." in name:
            layer_id = int(name[name.find("blocks.") :].split(".")[1]) + 1
    return decay ** (num_layers + 1 - layer_id)


def dinov2_param_groups(student: Mapping[str, nn.Module], layerwise_decay: float = 0.9, patch_embed_lr_mult: float = 0.2) -> list[dict[str, Any]]:
    """DINOv2's optimizer parameter groups of the student's parts (``backbone``, ``dino_head``, ``ibot_head``).

    Per parameter, as ``get_params_groups_with_decay`` applied to each part separately: ``lr_multiplier`` =
    :func:`vit_lr_decay_rate` (the part's own block count; heads 1), × ``patch_embed_lr_mult`` for the patch
    embedding; ``wd_multiplier`` 0 for names ending in ``.bias`` or containing ``norm`` or ``gamma`` (LayerScale),
    else 1 — the class / register / mask tokens and positions *are* decayed, as in the official code;
    ``is_last_layer`` for the head's prototypes (``last_layer``: their lr is 0 during the freeze). Parameters that
    do not require gradients are left out. Then fused by (lr, wd, last-layer) as ``fuse_params_groups``, in the
    order first met.
    """
    fused: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for part in student.values():
        num_layers = len(part.blocks) if isinstance(getattr(part, "blocks", None), nn.ModuleList) else 0
        for name, parameter in part.named_parameters():
            if not parameter.requires_grad:
                continue
            lr_multiplier = vit_lr_decay_rate(name, num_layers, layerwise_decay)
            if "patch_embed" in name:
                lr_multiplier *= patch_embed_lr_mult
            wd_multiplier = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
            key = (lr_multiplier, wd_multiplier, "last_layer" in name)
            group = fused.setdefault(key, {"params": [], "lr_multiplier": key[0], "wd_multiplier": key[1], "is_last_layer": key[2]})
            group["params"].append(parameter)
    return list(fused.values())


def sqrt_scaled_lr(trainer: Any, base_lr: float, who: str) -> float:
    """DINOv2's scaling rule ``sqrt_wrt_1024``: ``lr = base_lr · sqrt(batch_total / 1024)`` (``dinov2/utils/config.py``).

    ``batch_total = DataModule.batch_size × devices × nodes × accumulate_grad_batches`` (the official: batch per
    GPU × GPUs; it does not accumulate).
    """
    batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if not isinstance(batch_size, int):
        raise LitzooError(f"{who}: base_lr needs the DataModule's integer 'batch_size' to compute lr = base_lr * sqrt(batch / 1024); "
                          "set model.base_lr to null and give the optimizer the lr itself")  # fmt: skip
    return base_lr * math.sqrt(batch_size * trainer.num_devices * trainer.num_nodes * trainer.accumulate_grad_batches / 1024.0)


class DINOv2Schedules(NamedTuple):
    """The values of DINOv2's per-step schedules at one optimizer step (``dinov2/train/train.py::build_schedulers``)."""

    lr: float
    last_layer_lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float


# ---------------------------------------------------------------------------------------- the LightningModule


class DINOv2Module(L.LightningModule):
    """DINOv2 self-supervised pretraining: a student and its EMA teacher, DINO + iBOT + KoLeo losses, multi-crop.

    One training step, as ``SSLMetaArch.forward_backward`` (``dinov2/train/ssl_meta_arch.py``):

    * the batch's images (``{"image": (B, C, H, W)}`` in ``[0, 1]``, read with ``batch_inputs``) are cut into 2
      global and ``local_crops_number`` local crops (:class:`~litzoo.framework.data.multicrop.MultiCropAugmentation`,
      normalised with ``crop_mean`` / ``crop_std``) and ``int(2B · ibot_mask_sample_probability)`` of the 2B global
      crops get iBOT block masks with stratified ratios (:func:`~litzoo.framework.nn.block_masking.ibot_masks`);
      both from a CPU RNG seeded per step and rank (:meth:`view_seed_of_step`): every DDP rank draws its own crops
      and masks (from one global RNG, seeded alike on every rank, all ranks would cut their images the same way), and
      a resumed run draws the same ones (the seed and the step count are in the checkpoint);
    * the teacher (eval mode, no gradient) sees the unmasked global crops; its class tokens are swapped
      (crop B's first) so the student's crop A is matched with the teacher's crop B, then go through the teacher's
      DINO head; the patch tokens at the masked positions through the same head (or the iBOT head with
      ``ibot_separate_head``); targets by centering (``softmax((t − c)/τ_t)``, then the centers move) or
      Sinkhorn-Knopp (``centering="sinkhorn_knopp"``);
    * the student sees the masked global crops (masked also when the iBOT loss is off, as the official collate
      and step do) and the local crops; with ``T = 2 + max(2·n_local, 1)`` terms,
      ``loss = w_dino · (Σ_local Σ_teacher CE / T + 2 · CE(global, swapped teacher) / T)
      + w_koleo · Σ_{global crop} KoLeo(student backbone class tokens) + w_ibot · iBOT`` (iBOT: per masked
      image, the mean cross-entropy over its masked patches, summed and divided by 2B; KoLeo is left out of a step
      with a single image per crop, where the official gives NaN; a step in which some rank has no masked patch
      does not move the patch center, where the official center would turn NaN);
    * after each optimizer step, ``teacher ← m·teacher + (1 − m)·student`` (all parameters of backbone and heads).

    Schedules, per optimizer step and written into the optimizer's groups in ``on_train_batch_start``
    (``apply_optim_scheduler``): ``lr = base_lr · sqrt(batch_total / 1024)`` with a linear warm-up from 0 over
    ``warmup_epochs`` then cosine to ``min_lr``; weight decay cosine ``weight_decay → weight_decay_end``; teacher
    momentum cosine ``momentum_teacher → final_momentum_teacher``; teacher temperature linear
    ``warmup_teacher_temp → teacher_temp`` over ``warmup_teacher_temp_epochs`` then constant; the prototypes'
    (``last_layer``) lr 0 for ``freeze_last_layer_epochs``. Each group gets ``lr × lr_multiplier`` (layer-wise decay,
    patch embedding × 0.2) and ``wd × wd_multiplier`` (:func:`dinov2_param_groups`). An epoch is the trainer's
    epoch (``estimated_stepping_batches / max_epochs`` optimizer steps); the official code instead fixes it at
    ``OFFICIAL_EPOCH_LENGTH = 1250`` iterations whatever the data set. Warm-ups longer than the run are cut to the run.
    Gradients are clipped, when the trainer's ``gradient_clip_val`` is set (the paper: 3.0, in the configs), by
    norm *per student part* (backbone, DINO head, iBOT head), as the official loop.

    Logged to TensorBoard every step: ``train/loss`` and its terms (``train/dino_local_loss``,
    ``train/dino_global_loss``, ``train/koleo_loss``, ``train/ibot_loss``: the weighted contributions, which sum to
    the loss; the official display halves the KoLeo and iBOT ones), ``train/lr``, ``train/last_layer_lr``,
    ``train/wd``, ``train/momentum``, ``train/teacher_temp``, and collapse monitors: ``train/teacher_entropy_of_mean``
    (entropy of the teacher targets averaged over the batch: near 0 when every image goes to one prototype),
    ``train/teacher_entropy_per_sample`` (mean entropy of each target: near ``log K`` when the targets are uniform),
    ``train/teacher_cls_std`` (per-dimension standard deviation over the batch of the L2-normalised teacher class
    token, averaged over dimensions: 0 when collapsed, about ``1/sqrt(D)`` when spread).

    :meth:`forward_features` (what ``KNNProbe`` / ``LinearProbe`` read) is the teacher backbone's class token of
    images in ``[0, 1]`` normalised like the crops, as DINOv2 evaluates its teacher. Validation logs the same
    loss on held-out images with fixed crops and masks (:meth:`validation_step`; the official has none). The
    teacher, the centers and the optimizer's groups are in the checkpoint, so a resumed fit continues exactly.
    (Lightning's "modules in eval mode at the start of training" warning counts the teacher: intended.)

    Args:
        global_crops_size: side of the 2 global crops; ``None`` = the backbone's ``image_size`` (224).
        local_crops_size: side of the local crops (96).
        local_crops_number: number of local crops (8).
        global_crops_scale: area fraction of the global crops (0.32, 1.0).
        local_crops_scale: area fraction of the local crops (0.05, 0.32).
        crop_mean: per-channel normalisation mean of the crops (ImageNet's; one value for grey images).
        crop_std: per-channel normalisation std of the crops (ImageNet's).
        blur_p: blur probabilities of (global 1, global 2, local) crops: the paper's (1.0, 0.1, 0.5).
        blur_kernel_size: taps of the Gaussian blur (9).
        head_n_prototypes: K, the DINO head's prototypes (65536).
        head_hidden_dim: hidden width of the DINO head's MLP (2048).
        head_bottleneck_dim: the prototypes' dimension (256).
        head_nlayers: linear layers of the head's MLP (3).
        ibot_separate_head: a separate iBOT head for the patch tokens (off: the DINO head is shared).
        ibot_head_n_prototypes: K of the separate iBOT head (65536).
        ibot_head_hidden_dim: hidden width of the separate iBOT head (2048).
        ibot_head_bottleneck_dim: bottleneck of the separate iBOT head (256).
        ibot_head_nlayers: linear layers of the separate iBOT head (3).
        dino_loss_weight: weight of the DINO class-token loss (1.0; must be positive, as in the official code).
        koleo_loss_weight: weight of KoLeo on the student's backbone class tokens (0.1; 0 = off).
        ibot_loss_weight: weight of the iBOT masked-patch loss (1.0; 0 = off, no masks drawn).
        ibot_mask_sample_probability: fraction of the global crops that get a mask (0.5).
        ibot_mask_ratio_min_max: range of the masked fraction, stratified over the masked crops (0.1, 0.5).
        centering: ``"centering"`` (EMA centers, momentum 0.9) or ``"sinkhorn_knopp"`` (3 iterations).
        student_temp: the student temperature (0.1).
        momentum_teacher: teacher EMA momentum at the start (0.992).
        final_momentum_teacher: at the end (1.0).
        warmup_teacher_temp: teacher temperature at the start (0.04).
        teacher_temp: teacher temperature after the warm-up (0.07).
        warmup_teacher_temp_epochs: epochs of the teacher temperature warm-up (30).
        base_lr: lr at a total batch of 1024, scaled by ``sqrt(batch / 1024)`` (0.004); ``None`` = the optimizer's
            lr, unscaled, as the peak.
        min_lr: final lr of the cosine (1e-6; not scaled).
        warmup_epochs: linear lr warm-up from 0 (10).
        weight_decay: weight decay at the start (0.04).
        weight_decay_end: at the end (0.4).
        freeze_last_layer_epochs: epochs with the prototypes' lr at 0 (1).
        layerwise_decay: layer-wise lr decay of the backbone (0.9).
        patch_embed_lr_mult: extra lr factor of the patch embedding (0.2).
        val_seed: seed of the fixed validation crops and masks (batch ``i`` draws them from ``val_seed + i``).
        view_seed: seed of the training crops and masks (see :meth:`view_seed_of_step`); None: ``torch.initial_seed()``
            at construction (the run's ``seed_everything``), kept in the checkpoint.
        optimizer: called with the parameter groups; default AdamW(0.9, 0.999).
        **net_kwargs: the :class:`DinoVisionTransformer`'s arguments (``arch``, ``image_size``, ``patch_size``,
            ``in_chans``, ``dim``, ``depth``, ``num_heads``, ``num_register_tokens``, ...). The paper trains the
            student with ``drop_path_rate=0.3`` and ``layer_scale_init=1e-5`` (the default); the teacher is a copy,
            always in eval mode, so it never drops paths.
    """

    def __init__(
        self,
        global_crops_size: int | None = None,
        local_crops_size: int = 96,
        local_crops_number: int = 8,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        crop_mean: tuple[float, ...] = IMAGENET_MEAN,
        crop_std: tuple[float, ...] = IMAGENET_STD,
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        blur_kernel_size: int = 9,
        head_n_prototypes: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_nlayers: int = 3,
        ibot_separate_head: bool = False,
        ibot_head_n_prototypes: int = 65536,
        ibot_head_hidden_dim: int = 2048,
        ibot_head_bottleneck_dim: int = 256,
        ibot_head_nlayers: int = 3,
        dino_loss_weight: float = 1.0,
        koleo_loss_weight: float = 0.1,
        ibot_loss_weight: float = 1.0,
        ibot_mask_sample_probability: float = 0.5,
        ibot_mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
        centering: str = "centering",
        student_temp: float = 0.1,
        momentum_teacher: float = 0.992,
        final_momentum_teacher: float = 1.0,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: float = 30,
        base_lr: float | None = 0.004,
        min_lr: float = 1e-6,
        warmup_epochs: float = 10,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        freeze_last_layer_epochs: float = 1,
        layerwise_decay: float = 0.9,
        patch_embed_lr_mult: float = 0.2,
        val_seed: int = 0,
        view_seed: int | None = None,
        optimizer: OptimizerCallable = adamw_dinov2,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        check_network_kwargs(DinoVisionTransformer, net_kwargs, who)
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"{who}: centering must be 'centering' or 'sinkhorn_knopp', got {centering!r}")
        if not dino_loss_weight > 0:
            raise ValueError(f"{who}: dino_loss_weight must be positive (the official code needs the DINO loss), got {dino_loss_weight}")
        if koleo_loss_weight < 0 or ibot_loss_weight < 0:
            raise ValueError(f"{who}: koleo_loss_weight and ibot_loss_weight must be >= 0, got {koleo_loss_weight} and {ibot_loss_weight}")
        if not 0.0 < ibot_mask_sample_probability <= 1.0:
            raise ValueError(f"{who}: ibot_mask_sample_probability must be in (0, 1], got {ibot_mask_sample_probability}")
        low, high = ibot_mask_ratio_min_max
        if not 0.0 <= low <= high <= 1.0 or high == 0.0:
            raise ValueError(f"{who}: ibot_mask_ratio_min_max must satisfy 0 <= min <= max <= 1 with max > 0, got {tuple(ibot_mask_ratio_min_max)}")
        for name, value in (("student_temp", student_temp), ("warmup_teacher_temp", warmup_teacher_temp), ("teacher_temp", teacher_temp)):
            if not value > 0:
                raise ValueError(f"{who}: {name} must be positive, got {value}")
        for name, value in (("momentum_teacher", momentum_teacher), ("final_momentum_teacher", final_momentum_teacher)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{who}: {name} must be in [0, 1], got {value}")
        for name, value in (("warmup_teacher_temp_epochs", warmup_teacher_temp_epochs), ("warmup_epochs", warmup_epochs),
                            ("freeze_last_layer_epochs", freeze_last_layer_epochs), ("min_lr", min_lr), ("weight_decay", weight_decay),
                            ("weight_decay_end", weight_decay_end), ("patch_embed_lr_mult", patch_embed_lr_mult)):  # fmt: skip
            if value < 0:
                raise ValueError(f"{who}: {name} must be >= 0, got {value}")
        if base_lr is not None and not base_lr > 0:
            raise ValueError(f"{who}: base_lr must be positive (or null to use the optimizer's lr), got {base_lr}")
        if not 0.0 < layerwise_decay <= 1.0:
            raise ValueError(f"{who}: layerwise_decay must be in (0, 1], got {layerwise_decay}")

        backbone = DinoVisionTransformer(**net_kwargs)
        patch = backbone.patch_size
        global_size = backbone.patch_embed.input_hw[0] if global_crops_size is None else global_crops_size
        for name, size in (("global_crops_size", global_size), ("local_crops_size", local_crops_size)):
            if size < patch or size % patch:
                raise ValueError(f"{who}: {name} ({size}) must be a positive multiple of the patch size ({patch})")
        in_chans = backbone.patch_embed.proj.in_channels
        if len(crop_mean) != in_chans or len(crop_std) != in_chans:
            raise ValueError(f"{who}: crop_mean and crop_std need one value per image channel ({in_chans}), got {list(crop_mean)} and {list(crop_std)}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.global_crops_size, self.local_crops_number = global_size, local_crops_number
        self.multicrop = MultiCropAugmentation(
            global_size, local_crops_size, local_crops_number, global_crops_scale, local_crops_scale,
            mean=crop_mean, std=crop_std, blur_p=blur_p, blur_kernel_size=blur_kernel_size,
        )  # fmt: skip

        # the student's parts and their EMA copy, under the official names (student.backbone, teacher.dino_head ...)
        self.do_koleo, self.do_ibot, self.ibot_separate_head = koleo_loss_weight > 0, ibot_loss_weight > 0, ibot_separate_head
        parts: dict[str, nn.Module] = {
            "backbone": backbone,
            "dino_head": DINOHead(backbone.embed_dim, head_n_prototypes, nlayers=head_nlayers, hidden_dim=head_hidden_dim, bottleneck_dim=head_bottleneck_dim),
        }
        if self.do_ibot and ibot_separate_head:
            parts["ibot_head"] = DINOHead(backbone.embed_dim, ibot_head_n_prototypes, nlayers=ibot_head_nlayers,
                                          hidden_dim=ibot_head_hidden_dim, bottleneck_dim=ibot_head_bottleneck_dim)  # fmt: skip
        self.student = nn.ModuleDict(parts)
        self.teacher = make_teacher(self.student).eval()
        self.dino_loss = DINOLoss(head_n_prototypes, student_temp)
        ibot_out_dim = ibot_head_n_prototypes if ibot_separate_head else head_n_prototypes
        self.ibot_patch_loss = IBOTPatchLoss(ibot_out_dim, student_temp) if self.do_ibot else None
        grid = global_size // patch
        # DINOv2's training builds the generator with max_num_patches = 0.5 · N and the other defaults
        self.mask_generator = BlockMaskGenerator(grid, max_num_patches=0.5 * grid * grid)
        # the values of the schedules at the current step: set in on_train_batch_start (step 0's until then)
        self.schedules = DINOv2Schedules(0.0, 0.0, weight_decay, momentum_teacher, warmup_teacher_temp if warmup_teacher_temp_epochs > 0 else teacher_temp)
        self.example_input_array = torch.zeros(2, in_chans, global_size, global_size)
        # checkpointed with the weights, so that a resumed run (started from another seed) draws the same views
        self.register_buffer("view_seed", torch.tensor(int(torch.initial_seed() % 2**31) if view_seed is None else int(view_seed)))
        self.register_buffer("views_drawn", torch.zeros((), dtype=torch.long))  # training steps whose views were drawn

    # ------------------------------------------------------------------------------ modes and features
    def train(self, mode: bool = True) -> DINOv2Module:
        """Lightning switches the module to train mode; the teacher stays in eval mode (``SSLMetaArch.train``)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def normalize(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` normalised with the crops' mean and std."""
        return self.multicrop.normalize(images)

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, D)``: the teacher backbone's normalised class token of ``images`` in ``[0, 1]`` (what probes read)."""
        return self.teacher["backbone"](self.normalize(images))

    def forward(self, images: Tensor) -> Tensor:
        """The teacher's class-token features (:meth:`forward_features`)."""
        return self.forward_features(images)

    # ------------------------------------------------------------------------------ one step
    def draw_masks(self, num_global_images: int) -> IBOTMasks:
        """The iBOT masks of the ``2B`` global crops, drawn from torch's CPU RNG. Drawn and applied to the
        student's global crops also when the iBOT loss is off, as the official collate and step do."""
        hp = self.hparams
        return ibot_masks(num_global_images, self.mask_generator, hp.ibot_mask_sample_probability, tuple(hp.ibot_mask_ratio_min_max))

    @torch.no_grad()
    def teacher_targets(
        self, global_crops: Tensor, masks: IBOTMasks, teacher_temp: float, update_centers: bool = True
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """The teacher side of a step: ``(2, B, K)`` class-token targets (crops swapped), ``(M, K')`` targets of the
        masked patches (None without iBOT), and the collapse monitors. With ``centering``, the targets use the
        current centers, which then move (unless ``update_centers`` is False: evaluation)."""
        output = self.teacher["backbone"].forward_features(global_crops)
        cls = output["x_norm_clstoken"].chunk(2)
        cls = torch.cat((cls[1], cls[0]))  # crop B's tokens first: the student's crop A is matched with B
        n_cls = cls.shape[0]
        patches = None
        if self.do_ibot:
            indices = masks.mask_indices.to(global_crops.device)
            patches = output["x_norm_patchtokens"].flatten(0, 1).index_select(0, indices)
        if patches is not None and not self.ibot_separate_head:  # one pass through the shared head
            after_head = self.teacher["dino_head"](torch.cat((cls, patches)))
            cls_logits, patch_logits = after_head[:n_cls], after_head[n_cls:]
        else:
            cls_logits = self.teacher["dino_head"](cls)
            patch_logits = self.teacher["ibot_head"](patches) if patches is not None else None

        patch_targets = None
        if self.hparams.centering == "centering":
            cls_targets = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
            if update_centers:
                self.dino_loss.update_center(cls_logits)
            if patch_logits is not None:
                assert self.ibot_patch_loss is not None
                patch_targets = self.ibot_patch_loss.softmax_center_teacher(patch_logits, teacher_temp)
                # a rank without masked patches (tiny patch grids) has no patch mean: the official center turns
                # NaN; here no rank moves the patch center in such a step (decided together, it all-reduces)
                empty = all_reduce_max_(torch.tensor([float(patch_logits.shape[0] == 0)], device=patch_logits.device))
                if update_centers and not bool(empty.item()):
                    self.ibot_patch_loss.update_center(patch_logits)
        else:
            cls_targets = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp)
            if patch_logits is not None:
                assert self.ibot_patch_loss is not None
                patch_targets = self.ibot_patch_loss.sinkhorn_knopp_teacher(patch_logits, teacher_temp, masks.n_masked_patches)
        return cls_targets.view(2, -1, cls_targets.shape[-1]), patch_targets, collapse_monitors(cls_targets, output["x_norm_clstoken"])

    def forward_losses(
        self, global_crops: Tensor, local_crops: Tensor | None, masks: IBOTMasks, teacher_temp: float, update_centers: bool = True
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The losses of one step (``forward_backward``'s), before the backward pass, and the collapse monitors.

        Args:
            global_crops: ``(2B, C, G, G)``, crop 1 of every image then crop 2.
            local_crops: ``(n_local · B, C, L, L)``, crop-major, or None.
            masks: the iBOT masks of the ``2B`` global crops (:meth:`draw_masks`).
            teacher_temp: the teacher temperature of this step.
            update_centers: move the centers (training); False in evaluation.

        Returns:
            ``{"loss", "dino_local_loss", "dino_global_loss", "koleo_loss", "ibot_loss"}`` (the weighted terms, which
            sum to ``loss``; absent terms are left out) and the monitors.
        """
        hp = self.hparams
        n_global, n_local = 2, 0 if local_crops is None else local_crops.shape[0] * 2 // global_crops.shape[0]
        n_terms = (n_global - 1) * n_global + max(n_local * n_global, 1)  # official: global + local loss terms
        teacher_cls, teacher_patches, monitors = self.teacher_targets(global_crops, masks, teacher_temp, update_centers)

        student_masks = masks.masks.to(global_crops.device)
        if n_local:
            student_global, student_local = self.student["backbone"].forward_features([global_crops, local_crops], masks=[student_masks, None])
        else:
            student_global, student_local = self.student["backbone"].forward_features(global_crops, masks=student_masks), None
        global_cls = student_global["x_norm_clstoken"]
        head_inputs = [global_cls] if student_local is None else [student_local["x_norm_clstoken"], global_cls]
        masked_patches = None
        if self.do_ibot:
            indices = masks.mask_indices.to(global_crops.device)
            masked_patches = student_global["x_norm_patchtokens"].flatten(0, 1).index_select(0, indices)
            if not self.ibot_separate_head:
                head_inputs.append(masked_patches)
        # the head is applied row by row: one pass over the concatenation (the official's block-diagonal batch)
        outputs = list(self.student["dino_head"](torch.cat(head_inputs)).split([len(x) for x in head_inputs]))
        local_logits = outputs.pop(0) if student_local is not None else None
        global_logits = outputs.pop(0)
        patch_logits = None
        if masked_patches is not None:
            patch_logits = outputs.pop(0) if not self.ibot_separate_head else self.student["ibot_head"](masked_patches)

        losses: dict[str, Tensor] = {}
        if local_logits is not None:
            losses["dino_local_loss"] = hp.dino_loss_weight * self.dino_loss(local_logits.chunk(n_local), teacher_cls) / n_terms
        # the two global crops are one batch, one term each: × 2
        losses["dino_global_loss"] = hp.dino_loss_weight * self.dino_loss([global_logits], [teacher_cls.flatten(0, 1)]) * 2 / n_terms
        # per global crop (no KoLeo between the two crops of one image); a crop batch of one image has no nearest
        # neighbour (the official gives NaN, dinov2#314): the term is left out of such a step
        if self.do_koleo and global_cls.shape[0] >= 4:
            losses["koleo_loss"] = hp.koleo_loss_weight * sum(koleo_loss(tokens) for tokens in global_cls.chunk(2))  # type: ignore[assignment]
        if patch_logits is not None and teacher_patches is not None:
            assert self.ibot_patch_loss is not None
            ibot = self.ibot_patch_loss.forward_masked(patch_logits, teacher_patches, masks.masks.to(global_crops.device), masks_weight=masks.masks_weight.to(global_crops.device))
            losses["ibot_loss"] = hp.ibot_loss_weight * ibot * 2 * (1.0 / n_global)  # the official's loss_scales · ibot_loss_scale
        losses["loss"] = sum(losses.values())  # type: ignore[assignment]
        return losses, monitors

    def views(self, images: Tensor) -> tuple[Tensor, Tensor | None, IBOTMasks]:
        """The crops and masks of a step: ``(2B, C, G, G)`` global crops, ``(n_local · B, C, L, L)`` local crops
        (None without), the iBOT masks of the global crops; all drawn from torch's CPU RNG as it is (the steps seed it)."""
        crops = self.multicrop(images)
        masks = self.draw_masks(2 * images.shape[0])
        local_crops = torch.cat(crops.local_crops) if crops.local_crops else None
        return torch.cat(crops.global_crops), local_crops, masks

    def view_seed_of_step(self, step: int) -> int:
        """The CPU RNG seed of training step ``step``'s crops and masks on this rank:
        ``view_seed + step · world_size + rank`` (distinct for every step and rank)."""
        return int(self.view_seed) + step * world_size() + self.global_rank

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch_inputs(batch)
        batch_size = images.shape[0]
        with torch.random.fork_rng(devices=[]):  # the crops and masks draw on the CPU; the run's own RNG is left as it was
            torch.manual_seed(self.view_seed_of_step(int(self.views_drawn)))
            global_crops, local_crops, masks = self.views(images)
        self.views_drawn += 1
        losses, monitors = self.forward_losses(global_crops, local_crops, masks, self.schedules.teacher_temp)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=batch_size)
        for name, value in monitors.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        for name, value in self.schedules._asdict().items():
            self.log(f"train/{'wd' if name == 'weight_decay' else name}", float(value), batch_size=batch_size)
        return losses["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The loss on held-out images with fixed views: the crops and masks of batch ``i`` come from a CPU RNG
        seeded ``val_seed + i`` (the run's own RNG is left as it was), the teacher temperature is the final one,
        and the centers do not move; logged as ``val/loss``, its terms and the collapse monitors."""
        images = batch_inputs(batch)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.val_seed + batch_idx)
            global_crops, local_crops, masks = self.views(images)
        losses, monitors = self.forward_losses(global_crops, local_crops, masks, self.hparams.teacher_temp, update_centers=False)
        for name, value in {**losses, **monitors}.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", sync_dist=True, batch_size=images.shape[0])

    # ------------------------------------------------------------------------------ schedules, EMA, clipping
    def schedule_values(self, step: int) -> DINOv2Schedules:
        """The schedules' values at optimizer step ``step`` of this fit (see the class docstring)."""
        hp, trainer = self.hparams, self.trainer
        estimated = trainer.estimated_stepping_batches
        if not (math.isfinite(estimated) and estimated > 0):
            raise LitzooError(f"{type(self).__name__}: the schedules need a finite run; set trainer.max_epochs or trainer.max_steps")
        total = int(estimated)

        def steps(epochs: float) -> int:
            return min(warmup_epochs_to_steps(trainer, epochs), total)

        peak = sqrt_scaled_lr(trainer, hp.base_lr, type(self).__name__) if hp.base_lr is not None else self._optimizer_lr
        lr = cosine_schedule(step, total, peak, hp.min_lr, warmup_steps=steps(hp.warmup_epochs), warmup_start=0.0)
        last_layer_lr = 0.0 if step < steps(hp.freeze_last_layer_epochs) else lr
        weight_decay = cosine_schedule(step, total, hp.weight_decay, hp.weight_decay_end)
        momentum = cosine_schedule(step, total, hp.momentum_teacher, hp.final_momentum_teacher)
        temp_steps = steps(hp.warmup_teacher_temp_epochs)
        teacher_temp = cosine_schedule(step, temp_steps, hp.teacher_temp, hp.teacher_temp, warmup_steps=temp_steps, warmup_start=hp.warmup_teacher_temp)
        return DINOv2Schedules(lr, last_layer_lr, weight_decay, momentum, teacher_temp)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(dinov2_param_groups(self.student, self.hparams.layerwise_decay, self.hparams.patch_embed_lr_mult))
        self._optimizer_lr = float(optimizer.defaults["lr"])
        return optimizer

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """``apply_optim_scheduler``: every group's lr and weight decay for this step, from the schedules."""
        self.schedules = values = self.schedule_values(self.trainer.global_step)
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["weight_decay"] = values.weight_decay * group["wd_multiplier"]
                group["lr"] = (values.last_layer_lr if group["is_last_layer"] else values.lr) * group["lr_multiplier"]

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The optimizer step, then the teacher's EMA update with this step's momentum (``update_teacher``)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        ema_update_(self.teacher, self.student, self.schedules.momentum)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None) -> None:
        """Norm clipping per student part (backbone, heads), as the official loop; value clipping as Lightning's."""
        if gradient_clip_val is None or gradient_clip_val <= 0 or gradient_clip_algorithm not in (None, "norm"):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        for part in self.student.values():
            torch.nn.utils.clip_grad_norm_([p for p in part.parameters() if p.grad is not None], gradient_clip_val)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """``(B, D)`` teacher features of the batch's images (:meth:`forward_features`)."""
        return self.forward_features(batch_inputs(batch))


@torch.no_grad()
def collapse_monitors(teacher_targets: Tensor, teacher_cls: Tensor) -> dict[str, Tensor]:
    """DINO's collapse signs from one step's teacher: the entropy of the batch-mean target distribution (0 when
    everything goes to one prototype), the mean per-sample entropy (``log K`` when the targets are uniform), and
    the mean over dimensions of the per-dimension std of the L2-normalised class tokens (0 when they coincide).

    Args:
        teacher_targets: ``(n, K)`` teacher targets (rows sum to 1).
        teacher_cls: ``(n, D)`` teacher backbone class tokens.
    """
    targets = teacher_targets.float()
    mean = targets.mean(dim=0)
    entropy_of_mean = -(mean * mean.clamp_min(1e-30).log()).sum()
    per_sample = -(targets * targets.clamp_min(1e-30).log()).sum(dim=-1).mean()
    std = F.normalize(teacher_cls.float(), dim=-1).std(dim=0).mean() if len(teacher_cls) > 1 else teacher_cls.new_zeros(())
    return {"teacher_entropy_of_mean": entropy_of_mean, "teacher_entropy_per_sample": per_sample, "teacher_cls_std": std}
