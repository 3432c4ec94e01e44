"""Reusable network blocks: ViT layers (attention, MLP, block, patch embedding), CLIP's text tower, and the
masked-modelling parts (random token masking, sin-cos position embeddings, patchify / normalised-pixel targets)."""

from litzoo.framework.nn.masking import TokenMask, gather_tokens, num_kept, random_token_mask, restore_tokens
from litzoo.framework.nn.patches import denormalize_patches, normalized_pixel_target, patch_stats, patchify, unpatchify
from litzoo.framework.nn.pos_embed import sincos_pos_embed_1d, sincos_pos_embed_2d
from litzoo.framework.nn.text import TextTransformer
from litzoo.framework.nn.vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer, init_vit_weights

__all__ = [
    "Attention",
    "Block",
    "Mlp",
    "PatchEmbed",
    "TextTransformer",
    "TokenMask",
    "VisionTransformer",
    "denormalize_patches",
    "gather_tokens",
    "init_vit_weights",
    "normalized_pixel_target",
    "num_kept",
    "patch_stats",
    "patchify",
    "random_token_mask",
    "restore_tokens",
    "sincos_pos_embed_1d",
    "sincos_pos_embed_2d",
    "unpatchify",
]
