"""Small text encoders of the language wing: a packed BiLSTM for sequence labelling and a bidirectional Transformer.

``BiLSTMTextEncoder`` — token embedding, dropout, a bidirectional LSTM.

The BiLSTM tagger encoder of Lample et al., "Neural Architectures for Named Entity Recognition", NAACL 2016 (there over
word + character embeddings; here over one token level, characters for Chinese or words for English). Shared by the
nested-NER taggers of issue 24: Mulco's scope heads (Yang et al., CIKM 2023, arXiv 2211.10854, which names BERT or a
BiLSTM as its character encoder; BERT weights are not available offline, so the BiLSTM) and the flat BIO-CRF baseline,
so that the two differ only in their output layers.

Choices (tested in ``tests/framework/test_text_encoder.py``):
- Sequences are packed (``pack_padded_sequence``) by their real lengths, so the backward LSTM of a sentence starts at
  its own last token: the output at a real position does not depend on the padding, nor on how long the batch's longest
  sentence is (padding invariance). Padded positions of the output are exactly 0.
- Token id ``padding_idx`` (0, ``[PAD]`` of :class:`~litzoo.framework.text.nested_ner.NerVocabulary`) has a zero,
  never-updated embedding (``nn.Embedding(padding_idx=...)``).
- Dropout on the embeddings and on the LSTM output (Lample et al. apply it before the BiLSTM; once more after it is the
  usual NCRF++ / flair setting), and between stacked LSTM layers when ``num_layers > 1`` (``nn.LSTM``'s own).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from litzoo.framework.nn.vit import Block, init_vit_weights

__all__ = ["BiLSTMTextEncoder", "TransformerTextEncoder", "masked_mean"]


class BiLSTMTextEncoder(nn.Module):
    """Token ids ``(B, L)`` and a left-aligned mask ``(B, L)`` -> features ``(B, L, 2 * hidden_dim)``, 0 at padding.

    Args:
        vocab_size: number of token ids (embedding rows), >= 2.
        embed_dim: token embedding width.
        hidden_dim: LSTM width per direction (the output is twice this).
        num_layers: stacked BiLSTM layers.
        dropout: dropout probability on the embeddings, between LSTM layers and on the output, in [0, 1).
        padding_idx: the padding token id, whose embedding is fixed at 0.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        hidden_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.1,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 ([PAD] and at least one token), got {vocab_size}")
        if min(embed_dim, hidden_dim, num_layers) < 1:
            raise ValueError(f"embed_dim, hidden_dim and num_layers must be >= 1, got {embed_dim}, {hidden_dim}, {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0 <= padding_idx < vocab_size:
            raise ValueError(f"padding_idx must be in [0, {vocab_size}), got {padding_idx}")
        self.vocab_size, self.hidden_dim, self.padding_idx = vocab_size, hidden_dim, padding_idx
        self.out_dim = 2 * hidden_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)  # fmt: skip

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, L), got {tuple(tokens.shape)}")
        if mask is None:
            mask = tokens != self.padding_idx
        if tuple(mask.shape) != tuple(tokens.shape):
            raise ValueError(f"mask must be {tuple(tokens.shape)}, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        lengths = mask.long().sum(1)
        if (lengths < 1).any():
            raise ValueError("every sequence needs at least one real token")
        if (mask.long().cumsum(1) != torch.arange(1, tokens.shape[1] + 1, device=tokens.device).clamp_max(lengths[:, None])).any():
            raise ValueError("masks must be left-aligned: padding only at the end of a sequence")
        embedded = self.dropout(self.embedding(tokens))
        # packing makes each direction run over the real tokens only (padding invariance, see the module docstring)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=tokens.shape[1])
        return self.dropout(output) * mask[:, :, None].to(output.dtype)


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``states`` ``(B, L, D)`` over the positions where ``mask`` ``(B, L)`` is true → ``(B, D)``.

    An all-padding row (never produced by litzoo's readers) gives zeros instead of NaN.
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TransformerTextEncoder(nn.Module):
    """Token embeddings (+ learned positions) → bidirectional pre-norm blocks → LayerNorm → token states ``(B, L, dim)``.

    The small stand-in for the BERT / RoBERTa encoders the language papers fine-tune (no weights are available
    offline): the same pre-norm blocks as litzoo's ViT (:class:`~litzoo.framework.nn.vit.Block`), attending over the
    real tokens only (``key_padding_mask``). Split in two so that attributions can be taken on the token embeddings:
    :meth:`embed` and :meth:`encode_embeds`; :meth:`pooled` is the masked mean of the token states.

    Args:
        vocab_size: token ids ``0..vocab_size-1``.
        max_length: the longest sequence (learned positions).
        dim: token width.
        depth: blocks.
        num_heads: attention heads (``dim`` must divide by it).
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, vocab_size: int, max_length: int, dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if vocab_size < 2 or max_length < 1:
            raise ValueError(f"vocab_size must be >= 2 and max_length >= 1, got {vocab_size} and {max_length}")
        if dim < 1 or depth < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim, depth and num_heads must be positive with dim divisible by num_heads, got {dim}, {depth}, {num_heads}")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.vocab_size, self.max_length, self.dim = vocab_size, max_length, dim
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.positional_embedding = nn.Parameter(torch.zeros(1, max_length, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        init_vit_weights(self)  # truncated-normal embeddings / positions (std 0.02), Xavier linears

    def embed(self, tokens: Tensor) -> Tensor:
        """Token ids ``(B, L)`` → token embeddings ``(B, L, dim)`` (before positions)."""
        return self.token_embedding(tokens)

    def encode_embeds(self, embeds: Tensor, mask: Tensor) -> Tensor:
        """Token embeddings ``(B, L, dim)`` and the real-token mask ``(B, L)`` → token states ``(B, L, dim)``."""
        if embeds.dim() != 3 or embeds.shape[1] > self.max_length:
            raise ValueError(f"expected embeddings of shape (B, L ≤ {self.max_length}, D), got {tuple(embeds.shape)}")
        if tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ValueError(f"mask must be {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.bool()
        x = embeds + self.positional_embedding[:, : embeds.shape[1]]
        for block in self.blocks:
            x = block(x, key_padding_mask=~mask)
        return self.norm(x)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Token ids and mask ``(B, L)`` → token states ``(B, L, dim)``."""
        return self.encode_embeds(self.embed(tokens), mask)

    def pooled(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The masked mean of the token states, ``(B, dim)``."""
        return masked_mean(self(tokens, mask), mask.bool())
