"""CLIP's text tower: token + learned position embeddings → causal pre-norm blocks → ``ln_final`` → pool at ``<end_of_text>``.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
(reference: openai/CLIP ``clip/model.py`` ``encode_text``; open_clip ``TextTransformer``). The feature of a
caption is the final-norm output at its end-of-text token, which under the causal mask has seen the
whole caption.
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
        end_token_id: id of ``<end_of_text>``; each row is pooled at its first occurrence.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 77,
        dim: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        end_token_id: int = 3,
    ) -> None:
        super().__init__()
        if vocab_size <= 0 or context_length <= 0:
            raise ValueError(f"vocab_size and context_length must be positive, got {vocab_size} and {context_length}")
        if not 0 <= end_token_id < vocab_size:
            raise ValueError(f"end_token_id {end_token_id} is outside the vocabulary of {vocab_size}")
        self.context_length, self.dim, self.end_token_id = context_length, dim, end_token_id
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.positional_embedding = nn.Parameter(torch.zeros(1, context_length, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.ln_final = nn.LayerNorm(dim)
        init_vit_weights(self)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"expected token ids of shape (B, L ≤ {self.context_length}), got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding[:, : tokens.shape[1]]  # (B, L, D)
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x)
        end = (tokens == self.end_token_id).int().argmax(dim=1)  # (B,) first end-of-text (0 when absent)
        return x[torch.arange(x.shape[0], device=x.device), end]  # (B, D)
