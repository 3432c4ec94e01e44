"""A small character / word encoder for sequence labelling: token embedding, dropout, a bidirectional LSTM.

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

__all__ = ["BiLSTMTextEncoder"]


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
