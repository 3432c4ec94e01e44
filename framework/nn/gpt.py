"""GPT: a decoder-only transformer language model in GPT-2's layout (Radford et al., "Language Models are
Unsupervised Multitask Learners", 2019), shared by the methods that train or condition a causal LM: the text
quality-based pruning study's LM (``modules/gpt.py``) and Altogether's captioner (``modules/altogether.py``),
which feeds it image prefix embeddings in front of the text tokens (ClipCap-style).

GPT-2's layout: token embedding plus learned position embedding, a stack of pre-norm causal transformer blocks
(``litzoo.framework.nn.vit.Block`` with ``causal=True``), a final LayerNorm, and an output head tied to the token
embedding. The defaults are GPT-2 small (124M: width 768, 12 layers, 12 heads, context 1024); configs use tiny
sizes. Differences from GPT-2: no dropout, and the shared timm-style initialisation (``init_vit_weights``) plus
GPT-2's N(0, 0.02) for the embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litzoo.framework.nn.vit import Block, init_vit_weights


class GPT(nn.Module):
    """Decoder-only transformer: ``(B, T)`` token ids → ``(B, T, vocab_size)`` next-token logits.

    :meth:`forward_embeddings` takes input embeddings instead of ids, so that a caller can put other vectors
    (an image prefix) in front of the token embeddings (:meth:`embed`); ``forward(tokens)`` is
    ``forward_embeddings(embed(tokens))``.

    Args:
        vocab_size: tokens in the vocabulary.
        context_length: longest sequence (learned positions).
        dim: width.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, vocab_size: int, context_length: int = 1024, dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("dim", dim), ("depth", depth)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        init_vit_weights(self)
        self.head.weight = self.token_embedding.weight  # tied input and output embeddings (GPT-2)

    @property
    def dim(self) -> int:
        return self.token_embedding.embedding_dim

    def embed(self, tokens: Tensor) -> Tensor:
        """``(B, T)`` ids → ``(B, T, dim)`` token embeddings (no positions: :meth:`forward_embeddings` adds them)."""
        return self.token_embedding(tokens)

    def forward_embeddings(self, x: Tensor) -> Tensor:
        """``(B, T, dim)`` input embeddings → ``(B, T, vocab_size)`` logits; position ``t`` sees inputs ``≤ t`` only."""
        if x.shape[1] > self.context_length:
            raise ValueError(f"sequence of {x.shape[1]} tokens exceeds context_length {self.context_length}")
        x = x + self.pos_embed[:, : x.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True)
        return self.head(self.norm(x))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.forward_embeddings(self.embed(tokens))
