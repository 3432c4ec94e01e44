"""Reusable network blocks: ViT layers (attention, MLP, block, patch embedding) and CLIP's text tower."""

from framework.nn.text import TextTransformer
from framework.nn.vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer, init_vit_weights

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "TextTransformer", "VisionTransformer", "init_vit_weights"]
