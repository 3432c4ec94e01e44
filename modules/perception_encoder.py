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
* PE's text tower is the core's :class:`~litzoo.framework.nn.text.TextTransformer` with its PE options
  (``text_norm_eps=1e-5``, ``text_pool="argmax"``);
* the PE-Core size presets (:data:`PE_CORE_CONFIGS`, :data:`PE_CORE_VISION`) and the vision-key conversion
  (:func:`~litzoo.framework.nn.pe_core.convert_pe_vision_state`) live in the core's :mod:`litzoo.framework.nn.pe_core`
  (PE-AV's per-frame encoder uses them too) and are re-exported here; this file holds the whole-CLIP layouts
  (:func:`pe_core_clip`), the text-key conversion and the official key map (registered as ``"perception_encoder"``) with
  :func:`load_pe_clip_weights` (a whole PE-Core CLIP: vision, text, ``logit_scale``) and :func:`load_pe_vision_weights`
  (a vision-encoder file, or the vision side of a whole one).
  ``configs/perception_encoder/digits_captions.yaml`` trains a tiny PE-style CLIP with ``CLIPModule``.

Verified against the official code: the configurations (widths, depths, heads, MLP ratio of G = 8960/1536,
output dims, class token in T/S/B/L but not G, attention pooling with 8 heads in all five, ``ln_pre`` and
``ln_post``, absolute positions kept next to RoPE, no LayerScale in PE-Core), the forward (``conv1`` without bias →
class token → positions, resampled bilinearly to other grids → ``ln_pre`` → blocks with RoPE on q/k →
``ln_post`` on all tokens → attention pool → ``@ proj``), and the key names; the test builds a small model with the
official names and checks the output against a transcription of the official forward.

Verified for the text tower (``pe.py`` ``TextTransformer``, which PE's ``CLIP`` subclasses, so its keys sit at the top
level of a whole checkpoint next to ``visual.*``; ``PE_TEXT_CONFIG``): widths / depths / heads / context (32; 72 for G)
/ output dims of the five configurations, MLP ratio 4, vocabulary 49,408, no LayerScale; the forward
``token_embedding`` + ``positional_embedding[:L]`` → pre-norm blocks (``nn.MultiheadAttention``, exact GELU) under the
additive causal mask → ``ln_final`` (eps 1e-5) → pool at ``text.argmax(-1)`` (``pool_type="argmax"``, the default that
``PETextConfig`` keeps) → ``@ text_projection`` (a ``(width, output_dim)`` matrix: ``proj_bias=False``); the logits
``exp(logit_scale) · image · textᵀ`` of the normalised features. The test writes a small whole CLIP with the official
names and checks the text features and the logits against a transcription of the official forward.

Chosen where the release is silent or differs: PE-Core's ``CLIP`` has no ``logit_bias`` (only the audio-visual PE,
``core/audio_visual_encoder``, has one); litzoo's CLIP has none either, so a file with a ``logit_bias`` is refused with
a one-line error rather than loaded with its bias dropped (the logits would change). A ``text_projection`` saved as a
``Linear`` (``proj_bias=True``, not used by PE-Core) is refused as an unknown key for the same reason. The causal mask
``attn_mask`` is a non-persistent buffer and not in released files; if a file has it, it is skipped (litzoo builds the
same mask from ``is_causal``). With OpenAI's BPE (``<end_of_text>`` = 49407, the largest id, and PE's tokenizer
writing it at the last position of a truncated caption) ``argmax`` pooling is the first end token, and on a row without
one that starts with ``<start_of_text>`` (49406) both pool at position 0; the configurations still select ``"argmax"`` so
that any other row (ids from another tokenizer) pools where PE's does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, register_official_key_map
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.clip import CLIP
from litzoo.framework.nn.pe_core import PE_CORE_CONFIGS, PE_CORE_VISION, convert_pe_vision_state, pe_block_key

# ------------------------------------------------------------------------------ configurations

#: What every PE-Core text tower shares (``PETextConfig`` / ``TextTransformer`` defaults: OpenAI BPE, ``nn.LayerNorm``
#: eps 1e-5, ``pool_type="argmax"``, ``mlp_ratio=4``).
PE_CORE_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "end_token_id": 49407,
    "text_norm_eps": 1e-5,
    "text_pool": "argmax",
    "text_mlp_ratio": 4.0,
}

def pe_core_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The :class:`CLIP` arguments of a PE-Core configuration (``"PE-Core-L14-336"`` …), ``overrides`` applied last.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in PE_CORE_CONFIGS:
        raise ValueError(f"unknown PE-Core configuration {name!r}; known: {', '.join(PE_CORE_CONFIGS)}")
    return {**PE_CORE_VISION, **PE_CORE_TEXT, **PE_CORE_CONFIGS[name], **overrides}


def pe_core_clip(name: str, **overrides: Any) -> CLIP:
    """A :class:`CLIP` laid out as the PE-Core configuration ``name`` (weights freshly initialised)."""
    return CLIP(**pe_core_kwargs(name, **overrides))


# ------------------------------------------------------------------------------ official weights

def _unwrap(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """PE's ``load_ckpt`` unwrapping: a ``state_dict`` / ``weights`` entry, then a leading ``module.`` removed."""
    for wrapper in ("state_dict", "weights"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _convert_text(text: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A whole PE CLIP's top-level (text-tower) keys in litzoo's names."""
    out: dict[str, Tensor] = {}
    for key, value in text.items():
        if key == "attn_mask":  # the causal mask, a non-persistent buffer: litzoo's blocks build it themselves
            continue
        if key == "logit_bias":
            raise LitzooError(
                "official perception_encoder state dict: 'logit_bias' (a sigmoid-loss CLIP; PE-Core has none and litzoo's CLIP has no "
                "logit bias, so loading it without would change the logits)"
            )
        if key in ("token_embedding.weight", "ln_final.weight", "ln_final.bias"):
            new_key = "text." + key
        elif key == "positional_embedding":
            new_key, value = "text.positional_embedding", value.unsqueeze(0)  # (L, D) -> (1, L, D)
        elif key == "text_projection" and value.dim() == 2:
            new_key, value = "text_projection.weight", value.t().contiguous()  # pooled @ (D, E) -> Linear weight (E, D)
        elif key == "logit_scale":
            new_key, value = "logit_scale", value.reshape(())
        elif key.startswith("transformer.resblocks."):
            new_key = "text.blocks." + pe_block_key(key)
        else:
            raise LitzooError(f"official perception_encoder state dict: unknown key '{key}'")
        out[new_key] = value
    return out


@register_official_key_map("perception_encoder")
def official_pe_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/perception_models PE-Core weights → a :class:`CLIP` built with :func:`pe_core_clip`.

    A vision-encoder file (``pe.py`` ``VisionTransformer``: ``conv1.weight`` … at the top level) gives the vision keys;
    a whole PE CLIP (``visual.*`` and the text tower at the top level) gives all of them. PE's ``load_ckpt``
    unwrapping first: a ``state_dict`` / ``weights`` entry, a leading ``module.``.

    Vision: ``conv1`` → ``visual.patch_embed.proj``; ``class_embedding`` ``(D,)`` → ``visual.cls_token`` ``(1, 1, D)``;
    ``positional_embedding`` ``(T, D)`` → ``visual.pos_embed`` ``(1, T, D)``; ``ln_pre`` / ``ln_post`` →
    ``visual.norm_pre`` / ``visual.norm``; ``transformer.resblocks.{i}`` → ``visual.blocks.{i}`` with ``ln_1/ln_2`` →
    ``norm1/norm2``, ``attn.in_proj_weight/bias`` → ``attn.qkv.weight/bias`` (same ``[q; k; v]`` row order),
    ``attn.out_proj`` → ``attn.proj``, ``mlp.c_fc/c_proj`` → ``mlp.fc1/fc2``, ``ls_1/ls_2`` → ``ls1/ls2``;
    ``attn_pool.{probe, attn.*}`` unchanged, ``attn_pool.layernorm`` → ``attn_pool.norm``, ``attn_pool.mlp.c_fc/c_proj`` →
    ``attn_pool.mlp.fc1/fc2``; ``proj`` ``(D, E)`` → ``visual_projection.weight`` ``(E, D)`` (transposed).

    Text (a whole CLIP): ``token_embedding`` / ``ln_final`` → ``text.token_embedding`` / ``text.ln_final``;
    ``positional_embedding`` ``(L, D)`` → ``text.positional_embedding`` ``(1, L, D)``; ``transformer.resblocks.{i}`` →
    ``text.blocks.{i}`` with the block names above; ``text_projection`` ``(D, E)`` → ``text_projection.weight`` ``(E, D)``
    (transposed); ``logit_scale`` unchanged; ``attn_mask`` (a non-persistent buffer) skipped.

    Raises:
        LitzooError: not a PE vision encoder (no ``conv1.weight``), a ``logit_bias``, or a key this map does not know.
    """
    state = _unwrap(state)
    if not any(k.startswith("visual.") for k in state):  # a vision-encoder file
        return convert_pe_vision_state(state)
    vision = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    text = {k: v for k, v in state.items() if not k.startswith("visual.")}
    return convert_pe_vision_state(vision) | _convert_text(text)


#: litzoo's keys of the vision side (what :func:`load_pe_vision_weights` loads).
_VISION_PREFIXES = ("visual.", "attn_pool.", "visual_projection.")


def _convert_file(path: str | Path) -> dict[str, Tensor]:
    checkpoint = load_checkpoint(path)  # weights_only=True
    try:
        return official_pe_key_map(checkpoint)
    except LitzooError as error:
        raise LitzooError(f"checkpoint '{path}': {error}") from None


def load_pe_vision_weights(model: CLIP, path: str | Path) -> CLIP:
    """Load an official PE-Core checkpoint (vision encoder, or a whole PE CLIP) into ``model``'s vision side.

    The file is read with ``weights_only=True``; the text tower and ``logit_scale`` keep their values (a whole CLIP's
    text keys are left out with a warning: :func:`load_pe_clip_weights` loads them).

    Raises:
        LitzooError: the file is unreadable or not a PE vision encoder, or it does not fit ``model`` (one line naming the
            file and the first missing / unexpected / mis-shaped keys — e.g. a G checkpoint, which has no class token, into an
            L layout).
    """
    state = _convert_file(path)
    text = sorted(k for k in state if not k.startswith(_VISION_PREFIXES))
    if text:
        rank_zero_warn(
            f"PE checkpoint '{path}': {len(text)} text-tower keys ({', '.join(text[:3])} ...) are left out by load_pe_vision_weights; "
            "load_pe_clip_weights loads the whole CLIP"
        )
    state = {k: v for k, v in state.items() if k.startswith(_VISION_PREFIXES)}
    load_state_dict_checked(model, state, path, what="Perception Encoder vision tower", may_miss=("text.*", "text_projection.*", "logit_scale"))
    return model


def _layout_differences(model: CLIP) -> list[str]:
    """Where ``model``'s towers compute otherwise than PE's with the same weights (settings no state dict holds)."""
    text, visual = model.text, model.visual
    found = []
    if text.pool != PE_CORE_TEXT["text_pool"]:
        found.append(f"text pool {text.pool!r} (PE: 'argmax')")
    eps = {norm.eps for norm in text.modules() if isinstance(norm, nn.LayerNorm)}
    if eps != {PE_CORE_TEXT["text_norm_eps"]}:
        found.append(f"text LayerNorm eps {sorted(eps)} (PE: 1e-05)")
    eps = {norm.eps for norm in visual.modules() if isinstance(norm, nn.LayerNorm)}
    if eps != {PE_CORE_VISION["vision_norm_eps"]}:
        found.append(f"vision LayerNorm eps {sorted(eps)} (PE: 1e-05)")
    if visual.rope is None:
        found.append("no RoPE-2D")
    return found


def load_pe_clip_weights(model: CLIP, path: str | Path) -> CLIP:
    """Load a whole official PE-Core CLIP checkpoint (vision tower, text tower, ``logit_scale``) into ``model``.

    ``model`` should be built by :func:`pe_core_clip` with the file's configuration: a model whose towers compute
    otherwise with the same weights (text pooling, LayerNorm eps, no RoPE) loads with a warning that says so. The file
    is read with ``weights_only=True``; every key of the model must be in it and every key of it in the model.

    Raises:
        LitzooError: the file is unreadable, holds only a vision encoder (no ``visual.`` keys), has a key the map does not
            know, or does not fit ``model`` (one line naming the file and the first missing / unexpected / mis-shaped keys).
    """
    state = _convert_file(path)
    if all(k.startswith(_VISION_PREFIXES) for k in state):
        raise LitzooError(f"checkpoint '{path}' holds a PE vision encoder only (no text tower, no 'visual.' keys); load it with load_pe_vision_weights")
    load_state_dict_checked(model, state, path, what="Perception Encoder CLIP")
    differences = _layout_differences(model)
    if differences:
        rank_zero_warn(f"PE checkpoint '{path}' loaded into a CLIP that is not laid out as PE's ({'; '.join(differences)}): build it with pe_core_clip")
    return model


__all__ = [
    "PE_CORE_CONFIGS",
    "PE_CORE_TEXT",
    "PE_CORE_VISION",
    "load_pe_clip_weights",
    "load_pe_vision_weights",
    "official_pe_key_map",
    "pe_core_clip",
    "pe_core_kwargs",
]
