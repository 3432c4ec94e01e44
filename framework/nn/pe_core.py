"""PE-Core's vision tower on its own: the size presets, the vision-only model and the release→litzoo key conversion.

Bolya et al., "Perception Encoder: The best visual embeddings are not at the output of the network", 2025
(arXiv 2504.13181). Official code: facebookresearch/perception_models ``core/vision_encoder/pe.py``
(``VisionTransformer``: ``conv1`` → class token → positions → ``ln_pre`` → blocks with RoPE-2D → ``ln_post`` →
``AttentionPooling`` → ``@ proj``) and ``config.py`` (``PE_VISION_CONFIG`` / ``PE_TEXT_CONFIG``).

Shared by the methods that use PE-Core's image tower: ``modules/perception_encoder.py`` (a whole PE-Core CLIP, its
``official_pe_key_map`` calls :func:`convert_pe_vision_state` for the vision side) and ``modules/pe_av.py`` (the
audio-visual PE runs ``CLIP.from_config("PE-Core-L14-336").visual`` on every video frame: ``core/audio_visual_encoder/pe.py``
``VisualEncoder.pe_encoder``). A method never imports another method, so both build on this file.

* :data:`PE_CORE_VISION`, :data:`PE_CORE_CONFIGS`: the five PE-Core layouts (T/S/B/L/G), read from ``config.py``;
* :class:`PECoreVision`: the vision side of :class:`~litzoo.framework.nn.clip.CLIP` with PE's options
  (``visual`` / ``attn_pool`` / ``visual_projection``, the same modules, names and forward as ``CLIP.encode_image``
  without the L2 normalisation), i.e. the official ``VisionTransformer`` whose ``forward`` returns the pooled
  projection; :func:`pe_core_vision` builds one from a preset;
* :func:`convert_pe_vision_state`: the official vision key names (no ``visual.`` prefix) → litzoo's, the map that
  ``tests/modules/test_perception_encoder.py`` checks against a transcription of the official forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from litzoo.framework.checkpoints import rename_segments
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.attention_pool import AttentionPool, check_vision_pooling
from litzoo.framework.nn.vit import VisionTransformer

# ------------------------------------------------------------------------------ configurations

#: What every PE-Core vision tower shares (``PEConfig`` defaults as PE-Core uses them).
PE_CORE_VISION: dict[str, Any] = {
    "use_rope2d": True,
    "rope_theta": 10000.0,
    "pool_type": "attn",
    "attn_pooler_heads": 8,
    "vision_abs_pos_embed": True,
    "vision_ln_pre": True,
    "vision_layer_scale_init": None,
    "vision_norm_eps": 1e-5,
    "vision_patch_bias": False,
    "dynamic_size": True,  # "pretrain image size only; you can pass in any image size"
    "in_chans": 3,
}

#: PE-Core configurations, from ``core/vision_encoder/config.py`` (``PE_VISION_CONFIG`` / ``PE_TEXT_CONFIG``).
PE_CORE_CONFIGS: dict[str, dict[str, Any]] = {
    "PE-Core-T16-384": {
        "image_size": 384, "patch_size": 16, "vision_width": 192, "vision_depth": 12, "vision_heads": 3, "vision_mlp_ratio": 4.0,
        "embed_dim": 512, "vision_class_token": True, "context_length": 32, "text_width": 512, "text_depth": 12, "text_heads": 8,
    },
    "PE-Core-S16-384": {
        "image_size": 384, "patch_size": 16, "vision_width": 384, "vision_depth": 12, "vision_heads": 6, "vision_mlp_ratio": 4.0,
        "embed_dim": 512, "vision_class_token": True, "context_length": 32, "text_width": 512, "text_depth": 12, "text_heads": 8,
    },
    "PE-Core-B16-224": {
        "image_size": 224, "patch_size": 16, "vision_width": 768, "vision_depth": 12, "vision_heads": 12, "vision_mlp_ratio": 4.0,
        "embed_dim": 1024, "vision_class_token": True, "context_length": 32, "text_width": 1024, "text_depth": 24, "text_heads": 16,
    },
    "PE-Core-L14-336": {
        "image_size": 336, "patch_size": 14, "vision_width": 1024, "vision_depth": 24, "vision_heads": 16, "vision_mlp_ratio": 4.0,
        "embed_dim": 1024, "vision_class_token": True, "context_length": 32, "text_width": 1024, "text_depth": 24, "text_heads": 16,
    },
    "PE-Core-G14-448": {
        "image_size": 448, "patch_size": 14, "vision_width": 1536, "vision_depth": 50, "vision_heads": 16, "vision_mlp_ratio": 8960 / 1536,
        "embed_dim": 1280, "vision_class_token": False, "context_length": 72, "text_width": 1280, "text_depth": 24, "text_heads": 20,
    },
}  # fmt: skip

#: The keys of a :data:`PE_CORE_CONFIGS` entry that lay out the vision tower (the others are the text tower's).
PE_CORE_VISION_SIZES = ("image_size", "patch_size", "vision_width", "vision_depth", "vision_heads", "vision_mlp_ratio", "embed_dim",
                        "vision_class_token")  # fmt: skip


def pe_core_vision_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The :class:`PECoreVision` arguments of a PE-Core configuration (``"PE-Core-L14-336"`` …), ``overrides`` applied last.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in PE_CORE_CONFIGS:
        raise ValueError(f"unknown PE-Core configuration {name!r}; known: {', '.join(PE_CORE_CONFIGS)}")
    return {**PE_CORE_VISION, **{k: PE_CORE_CONFIGS[name][k] for k in PE_CORE_VISION_SIZES}, **overrides}


# ------------------------------------------------------------------------------ the vision tower


class PECoreVision(nn.Module):
    """PE-Core's image tower: ``visual`` (ViT with RoPE-2D, ``ln_pre``, ``ln_post``) → pool → bias-free ``visual_projection``.

    The same modules and names as the vision side of :class:`~litzoo.framework.nn.clip.CLIP` (so that
    :func:`convert_pe_vision_state`'s output loads into either), and the official ``VisionTransformer.forward``:
    ``forward(images (B, C, H, W))`` → ``(B, embed_dim)`` pooled features, **not** normalised. The defaults are
    :data:`PE_CORE_VISION`'s (PE-Core's); the sizes have no default: take them from :func:`pe_core_vision`.

    Args:
        image_size: side the learned positions are stored for (with ``dynamic_size`` any multiple of the patch runs).
        patch_size: side of a patch.
        vision_width: token width.
        vision_depth: blocks.
        vision_heads: attention heads of the blocks.
        vision_mlp_ratio: MLP width over the token width (PE-G: 8960 / 1536).
        embed_dim: width of the projected output (the official ``output_dim``).
        vision_class_token: prepend a class token (PE-G has none; it then needs ``pool_type="attn"``).
        use_rope2d: RoPE-2D on the queries and keys.
        rope_theta: RoPE frequency base.
        pool_type: ``"attn"`` (PE's attention pooling) or ``"token"`` (the class token).
        attn_pooler_heads: heads of the attention pool (PE: 8).
        vision_abs_pos_embed: learned absolute positions (PE keeps them next to RoPE).
        vision_ln_pre: LayerNorm before the blocks (PE's ``ln_pre``).
        vision_layer_scale_init: LayerScale init; ``None`` = none (PE-Core).
        vision_norm_eps: every LayerNorm's epsilon (PE: 1e-5).
        vision_patch_bias: bias on the patch projection (PE: none).
        dynamic_size: accept any multiple of the patch size (positions resampled bilinearly).
        in_chans: image channels.

    Raises:
        ValueError: an unknown ``pool_type``, a class-token pool without a class token, a non-positive ``embed_dim``, or sizes the
            ViT refuses.
    """

    def __init__(self, image_size: int, patch_size: int, vision_width: int, vision_depth: int, vision_heads: int, vision_mlp_ratio: float,
                 embed_dim: int, vision_class_token: bool = True, use_rope2d: bool = True, rope_theta: float = 10000.0, pool_type: str = "attn",
                 attn_pooler_heads: int = 8, vision_abs_pos_embed: bool = True, vision_ln_pre: bool = True,
                 vision_layer_scale_init: float | None = None, vision_norm_eps: float = 1e-5, vision_patch_bias: bool = False,
                 dynamic_size: bool = True, in_chans: int = 3) -> None:  # fmt: skip
        super().__init__()
        check_vision_pooling(embed_dim, pool_type, vision_class_token)
        self.image_size, self.in_chans, self.embed_dim = image_size, in_chans, embed_dim
        self.visual = VisionTransformer(
            image_size, patch_size, in_chans, vision_width, vision_depth, vision_heads, vision_mlp_ratio, class_token=vision_class_token,
            abs_pos_embed=vision_abs_pos_embed, use_rope2d=use_rope2d, rope_theta=rope_theta, norm_pre=vision_ln_pre,
            layer_scale_init=vision_layer_scale_init, norm_eps=vision_norm_eps, patch_bias=vision_patch_bias, dynamic_size=dynamic_size,
        )  # fmt: skip
        self.visual_projection = nn.Linear(vision_width, embed_dim, bias=False)
        nn.init.normal_(self.visual_projection.weight, std=vision_width**-0.5)  # the official proj: width^-0.5 · randn
        self.attn_pool = AttentionPool(vision_width, attn_pooler_heads, norm_eps=vision_norm_eps) if pool_type == "attn" else None

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.visual(images)  # (B, T, width) after ln_post
        pooled = self.visual.pool(tokens, "token") if self.attn_pool is None else self.attn_pool(tokens)
        return self.visual_projection(pooled)


def pe_core_vision(name: str, **overrides: Any) -> PECoreVision:
    """A :class:`PECoreVision` laid out as the PE-Core configuration ``name`` (weights freshly initialised)."""
    return PECoreVision(**pe_core_vision_kwargs(name, **overrides))


# ------------------------------------------------------------------------------ official weights

# Official segment names -> litzoo's (pe.py ResidualAttentionBlock / AttentionPooling -> framework.nn.vit.Block / AttentionPool).
PE_BLOCK_SEGMENTS = {"ln_1": "norm1", "ln_2": "norm2", "c_fc": "fc1", "c_proj": "fc2", "out_proj": "proj", "ls_1": "ls1", "ls_2": "ls2"}
_POOL_SEGMENTS = {"layernorm": "norm", "c_fc": "fc1", "c_proj": "fc2"}
_TOP_LEVEL = {"conv1.weight": "visual.patch_embed.proj.weight", "ln_pre.weight": "visual.norm_pre.weight", "ln_pre.bias": "visual.norm_pre.bias",
              "ln_post.weight": "visual.norm.weight", "ln_post.bias": "visual.norm.bias"}  # fmt: skip


def pe_block_key(key: str) -> str:
    """``transformer.resblocks.{i}.…`` → ``{i}.…`` in :class:`~litzoo.framework.nn.vit.Block`'s names (PE's vision and text towers)."""
    rest = key[len("transformer.resblocks.") :].replace("attn.in_proj_weight", "attn.qkv.weight").replace("attn.in_proj_bias", "attn.qkv.bias")
    return rename_segments(rest, PE_BLOCK_SEGMENTS)


def convert_pe_vision_state(vision: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The official vision encoder's keys (``pe.py`` ``VisionTransformer``, no ``visual.`` prefix) in litzoo's names.

    ``conv1`` → ``visual.patch_embed.proj``; ``class_embedding`` ``(D,)`` → ``visual.cls_token`` ``(1, 1, D)``;
    ``positional_embedding`` ``(T, D)`` → ``visual.pos_embed`` ``(1, T, D)``; ``ln_pre`` / ``ln_post`` → ``visual.norm_pre`` /
    ``visual.norm``; ``transformer.resblocks.{i}`` → ``visual.blocks.{i}`` with ``ln_1/ln_2`` → ``norm1/norm2``,
    ``attn.in_proj_weight/bias`` → ``attn.qkv.weight/bias`` (same ``[q; k; v]`` row order), ``attn.out_proj`` → ``attn.proj``,
    ``mlp.c_fc/c_proj`` → ``mlp.fc1/fc2``, ``ls_1/ls_2`` → ``ls1/ls2``; ``attn_pool.{probe, attn.*}`` unchanged,
    ``attn_pool.layernorm`` → ``attn_pool.norm``, ``attn_pool.mlp.c_fc/c_proj`` → ``attn_pool.mlp.fc1/fc2``; ``proj`` ``(D, E)``
    → ``visual_projection.weight`` ``(E, D)`` (transposed). The result loads into :class:`PECoreVision` and into the vision side
    of a :class:`~litzoo.framework.nn.clip.CLIP` built as PE-Core.

    Raises:
        LitzooError: no ``conv1.weight`` (not a PE vision encoder), or a key this map does not know.
    """
    if "conv1.weight" not in vision:
        raise LitzooError("official perception_encoder state dict: no 'conv1.weight' (nor 'visual.conv1.weight'), so not a PE vision encoder")
    out: dict[str, Tensor] = {}
    for key, value in vision.items():
        if key in _TOP_LEVEL:
            new_key = _TOP_LEVEL[key]
        elif key == "class_embedding":
            new_key, value = "visual.cls_token", value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            new_key, value = "visual.pos_embed", value.unsqueeze(0)
        elif key == "proj":
            new_key, value = "visual_projection.weight", value.t().contiguous()
        elif key.startswith("transformer.resblocks."):
            new_key = "visual.blocks." + pe_block_key(key)
        elif key.startswith("attn_pool."):
            new_key = "attn_pool." + rename_segments(key[len("attn_pool.") :], _POOL_SEGMENTS)
        else:
            raise LitzooError(f"official perception_encoder state dict: unknown key '{key}'")
        out[new_key] = value
    return out


__all__ = [
    "PE_BLOCK_SEGMENTS",
    "PE_CORE_CONFIGS",
    "PE_CORE_VISION",
    "PE_CORE_VISION_SIZES",
    "PECoreVision",
    "convert_pe_vision_state",
    "pe_block_key",
    "pe_core_vision",
    "pe_core_vision_kwargs",
]
