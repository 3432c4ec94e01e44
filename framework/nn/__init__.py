"""Reusable network blocks: ViT layers (attention, MLP, block, patch embedding), CLIP's text tower, and the
masked-modelling parts (random token masking, sin-cos position embeddings, patchify / normalised-pixel targets), and the
Perception Encoder's RoPE-2D and attention-pooling head."""

from litzoo.framework.nn.attention_pool import AttentionPool
from litzoo.framework.nn.masking import TokenMask, gather_tokens, num_kept, random_token_mask, restore_tokens
from litzoo.framework.nn.patches import denormalize_patches, masked_patch_loss, normalized_pixel_target, patch_stats, patchify, unpatchify
from litzoo.framework.nn.pos_embed import sincos_pos_embed_1d, sincos_pos_embed_2d
from litzoo.framework.nn.rope import Rope2D, apply_rope, rope_2d_angles
from litzoo.framework.nn.text import TextTransformer
from litzoo.framework.nn.vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer, init_vit_weights

__all__ = [
    "Attention",
    "AttentionPool",
    "Block",
    "Mlp",
    "PatchEmbed",
    "Rope2D",
    "TextTransformer",
    "TokenMask",
    "VisionTransformer",
    "apply_rope",
    "denormalize_patches",
    "gather_tokens",
    "init_vit_weights",
    "masked_patch_loss",
    "normalized_pixel_target",
    "num_kept",
    "patch_stats",
    "patchify",
    "random_token_mask",
    "restore_tokens",
    "rope_2d_angles",
    "sincos_pos_embed_1d",
    "sincos_pos_embed_2d",
    "unpatchify",
]
