"""Perception Encoder (PE core) — the vision tower of a CLIP with RoPE-2D, attention pooling and progressive resolution.

Bolya et al., "Perception Encoder: The best visual embeddings are not at the output of the network", 2025
(arXiv 2504.13181). Official code: facebookresearch/perception_models ``core/vision_encoder/pe.py``
(``VisionTransformer``, ``AttentionPooling``, ``SelfAttention``), ``config.py`` (``PE_VISION_CONFIG`` /
``PE_TEXT_CONFIG``) and ``rope.py`` (``Rope2D``). The release has no training code.

PE core is a CLIP; its image recipe changes the vision tower and the schedule, and litzoo builds it from shared pieces:

* the model is the core's :class:`~litzoo.framework.nn.clip.CLIP` with its PE options (``use_rope2d``,
  ``pool_type="attn"``, ``vision_ln_pre``, bias-free patch projection, LayerNorm eps 1e-5, ``dynamic_size``):
  RoPE-2D is :mod:`litzoo.framework.nn.rope`, the attention-pooling head
  :class:`~litzoo.framework.nn.attention_pool.AttentionPool`;
* the progressive-resolution schedule is the callback :class:`litzoo.callbacks.progressive_resolution.ProgressiveResolution`
  (the paper: training split into stages of increasing resolution, 98 → 154 → 224, then 336 at the end);
* this file holds the PE-Core configurations (:data:`PE_CORE_CONFIGS`, :func:`pe_core_clip`) and the official key
  map (registered as ``"perception_encoder"``) with :func:`load_pe_vision_weights`.
  ``configs/perception_encoder/digits_captions.yaml`` trains a tiny PE-style CLIP with ``CLIPModule``.

Verified against the official code: the configurations (widths, depths, heads, MLP ratio of G = 8960/1536,
output dims, class token in T/S/B/L but not G, attention pooling with 8 heads in all five, ``ln_pre`` and
``ln_post``, absolute positions kept next to RoPE, no LayerScale in PE-Core), the forward (``conv1`` without bias →
class token → positions, resampled bilinearly to other grids → ``ln_pre`` → blocks with RoPE on q/k →
``ln_post`` on all tokens → attention pool → ``@ proj``), and the key names; the test builds a small model with the
official names and checks the output against a transcription of the official forward.

Chosen where the release is silent or differs: only the vision tower's keys are mapped. PE's text tower pools at
the argmax token id (OpenAI BPE's ``<end_of_text>`` is the largest id, so this is the first end token, as litzoo's
tower pools) but uses LayerNorm eps 1e-5 where litzoo's text tower uses 1e-6, so its keys are not converted and a full
PE checkpoint's text weights are left out with a warning. PE's text context is 32 (72 for G), the configurations
below carry it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, register_official_key_map, rename_segments
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.clip import CLIP

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
    "vocab_size": 49408,
    "end_token_id": 49407,
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


def pe_core_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The :class:`CLIP` arguments of a PE-Core configuration (``"PE-Core-L14-336"`` …), ``overrides`` applied last.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in PE_CORE_CONFIGS:
        raise ValueError(f"unknown PE-Core configuration {name!r}; known: {', '.join(PE_CORE_CONFIGS)}")
    return {**PE_CORE_VISION, **PE_CORE_CONFIGS[name], **overrides}


def pe_core_clip(name: str, **overrides: Any) -> CLIP:
    """A :class:`CLIP` laid out as the PE-Core configuration ``name`` (weights freshly initialised)."""
    return CLIP(**pe_core_kwargs(name, **overrides))


# ------------------------------------------------------------------------------ official weights

# Official segment names -> litzoo's (pe.py ResidualAttentionBlock / AttentionPooling -> framework.nn.vit.Block / AttentionPool).
_BLOCK_SEGMENTS = {"ln_1": "norm1", "ln_2": "norm2", "c_fc": "fc1", "c_proj": "fc2", "out_proj": "proj", "ls_1": "ls1", "ls_2": "ls2"}
_POOL_SEGMENTS = {"layernorm": "norm", "c_fc": "fc1", "c_proj": "fc2"}
_TOP_LEVEL = {"conv1.weight": "visual.patch_embed.proj.weight", "ln_pre.weight": "visual.norm_pre.weight", "ln_pre.bias": "visual.norm_pre.bias",
              "ln_post.weight": "visual.norm.weight", "ln_post.bias": "visual.norm.bias"}  # fmt: skip


def _vision_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The vision encoder's keys: PE's ``load_ckpt`` unwrapping (``state_dict`` / ``weights``, ``module.``, ``visual.``)."""
    for wrapper in ("state_dict", "weights"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    state = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):  # a whole PE CLIP: keep the vision tower
        text = sorted(k for k in state if not k.startswith("visual."))
        if text:
            rank_zero_warn(
                f"PE checkpoint: {len(text)} text-tower keys ({', '.join(text[:3])} ...) are not converted (litzoo maps PE's vision "
                "tower only; see litzoo.modules.perception_encoder)"
            )
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    return dict(state)


@register_official_key_map("perception_encoder")
def official_pe_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/perception_models PE-Core vision-encoder weights → a :class:`CLIP` built with :func:`pe_core_clip`.

    ``conv1`` → ``visual.patch_embed.proj``; ``class_embedding`` ``(D,)`` → ``visual.cls_token`` ``(1, 1, D)``;
    ``positional_embedding`` ``(T, D)`` → ``visual.pos_embed`` ``(1, T, D)``; ``ln_pre`` / ``ln_post`` →
    ``visual.norm_pre`` / ``visual.norm``; ``transformer.resblocks.{i}`` → ``visual.blocks.{i}`` with ``ln_1/ln_2`` →
    ``norm1/norm2``, ``attn.in_proj_weight/bias`` → ``attn.qkv.weight/bias`` (same ``[q; k; v]`` row order),
    ``attn.out_proj`` → ``attn.proj``, ``mlp.c_fc/c_proj`` → ``mlp.fc1/fc2``, ``ls_1/ls_2`` → ``ls1/ls2``;
    ``attn_pool.{probe, attn.*}`` unchanged, ``attn_pool.layernorm`` → ``attn_pool.norm``, ``attn_pool.mlp.c_fc/c_proj`` →
    ``attn_pool.mlp.fc1/fc2``; ``proj`` ``(D, E)`` → ``visual_projection.weight`` ``(E, D)`` (transposed).

    Raises:
        LitzooError: not a PE vision encoder (no ``conv1.weight``), or a key this map does not know.
    """
    vision = _vision_state(state)
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
            rest = key[len("transformer.resblocks.") :].replace("attn.in_proj_weight", "attn.qkv.weight").replace("attn.in_proj_bias", "attn.qkv.bias")
            new_key = "visual.blocks." + rename_segments(rest, _BLOCK_SEGMENTS)
        elif key.startswith("attn_pool."):
            new_key = "attn_pool." + rename_segments(key[len("attn_pool.") :], _POOL_SEGMENTS)
        else:
            raise LitzooError(f"official perception_encoder state dict: unknown key '{key}'")
        out[new_key] = value
    return out


def load_pe_vision_weights(model: CLIP, path: str | Path) -> CLIP:
    """Load an official PE-Core checkpoint (vision encoder, or a whole PE CLIP) into ``model``'s vision side.

    The file is read with ``weights_only=True``; the text tower and ``logit_scale`` keep their values.

    Raises:
        LitzooError: the file is unreadable or not a PE vision encoder, or it does not fit ``model`` (one line naming the
            file and the first missing / unexpected / mis-shaped keys — e.g. a G checkpoint, which has no class token, into an
            L layout).
    """
    checkpoint = load_checkpoint(path)
    try:
        state = official_pe_key_map(checkpoint)
    except LitzooError as error:
        raise LitzooError(f"checkpoint '{path}': {error}") from None
    load_state_dict_checked(model, state, path, what="Perception Encoder vision tower", may_miss=("text.*", "text_projection.*", "logit_scale"))
    return model


__all__ = ["PE_CORE_CONFIGS", "PE_CORE_VISION", "load_pe_vision_weights", "official_pe_key_map", "pe_core_clip", "pe_core_kwargs"]
