"""CLIP's text tower: token + learned position embeddings → causal pre-norm blocks → ``ln_final`` → pool at ``<end_of_text>``.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
(reference: openai/CLIP ``clip/model.py`` ``encode_text``; open_clip ``TextTransformer``). The feature of a
caption is the final-norm output at its end-of-text token, which under the causal mask has seen the
whole caption.

Options for the Perception Encoder's text tower (Bolya et al. 2025; facebookresearch/perception_models
``core/vision_encoder/pe.py`` ``TextTransformer``), off by default so that every existing tower is unchanged:
``norm_eps`` (the blocks' LayerNorms: PE / OpenAI ``nn.LayerNorm`` eps 1e-5, litzoo's default 1e-6; ``ln_final`` has
``final_norm_eps``, 1e-5 in both) and
``pool="argmax"`` (PE's ``text_global_pool``: the position of each row's largest token id, ``text.argmax(-1)`` —
with OpenAI's BPE ``<end_of_text>`` is the largest id, so this is the first end token whenever one is present;
they can differ only on a row without one, where ``"end_token"`` pools at position 0 and ``"argmax"`` at the largest
id — position 0 too when the row starts with ``<start_of_text>``, the second-largest id). The rest of PE's tower is the same
as litzoo's: token + learned absolute positions, pre-norm blocks with exact GELU and a ``4×`` MLP under the
additive causal mask (``-inf`` above the diagonal, i.e. ``is_causal``), ``ln_final``, no padding mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litzoo.framework.nn.vit import Block, init_vit_weights


class TextTransformer(nn.Module):
    """Causal transformer over token ids ``(B, L)``; ``forward`` returns ``(B, dim)`` features.

    Args:
        vocab_size: size of the token vocabulary.
        context_length: maximum tokens per caption (CLIP: 77).
        dim: token width (CLIP ViT-B/32 text: 512).
        depth: number of blocks (CLIP: 12).
        num_heads: attention heads (CLIP: 8).
        mlp_ratio: MLP hidden width over ``dim``.
        end_token_id: id of ``<end_of_text>``; with ``pool="end_token"`` each row is pooled at its first occurrence.
        norm_eps: epsilon of the blocks' LayerNorms (litzoo: 1e-6, PE / OpenAI CLIP: 1e-5).
        final_norm_eps: epsilon of ``ln_final`` (1e-5 in litzoo, PE and OpenAI CLIP).
        pool: ``"end_token"`` (the first ``end_token_id``, 0 when absent) or ``"argmax"`` (the largest token id, PE /
            OpenAI CLIP).
    """

    POOLS = ("end_token", "argmax")

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 77,
        dim: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        end_token_id: int = 3,
        norm_eps: float = 1e-6,
        final_norm_eps: float = 1e-5,
        pool: str = "end_token",
    ) -> None:
        super().__init__()
        if vocab_size <= 0 or context_length <= 0:
            raise ValueError(f"vocab_size and context_length must be positive, got {vocab_size} and {context_length}")
        if not 0 <= end_token_id < vocab_size:
            raise ValueError(f"end_token_id {end_token_id} is outside the vocabulary of {vocab_size}")
        if pool not in self.POOLS:
            raise ValueError(f"pool must be one of {self.POOLS}, got {pool!r}")
        if not (norm_eps > 0 and final_norm_eps > 0):
            raise ValueError(f"norm_eps and final_norm_eps must be positive, got {norm_eps} and {final_norm_eps}")
        self.context_length, self.dim, self.end_token_id, self.pool = context_length, dim, end_token_id, pool
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.positional_embedding = nn.Parameter(torch.zeros(1, context_length, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, norm_eps=norm_eps) for _ in range(depth))
        self.ln_final = nn.LayerNorm(dim, eps=final_norm_eps)
        init_vit_weights(self)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"expected token ids of shape (B, L ≤ {self.context_length}), got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding[:, : tokens.shape[1]]  # (B, L, D)
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x)
        if self.pool == "argmax":  # PE / OpenAI: the largest id (torch.argmax returns the first of equal maxima)
            end = tokens.argmax(dim=1)
        else:
            end = (tokens == self.end_token_id).int().argmax(dim=1)  # (B,) first end-of-text (0 when absent)
        return x[torch.arange(x.shape[0], device=x.device), end]  # (B, D)
