"""The self-attentive sequence encoder of SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018),
shared by the sequential recommenders of issue 23: the SASRec baseline (``modules/sasrec.py``) and RecGURU's shared
Transformer encoder, which feeds it per-domain item embeddings.

Follows the official TensorFlow code (github.com/kang205/SASRec ``model.py`` and ``modules.py``), read line by line:

* input: the item embeddings times ``sqrt(d)`` (``embedding(..., scale=True)``) plus a learned position embedding
  indexed by the *slot* ``0..L-1`` (``dec_pos``; not scaled), dropout, then zeroed at the padding slots (``seq *= mask``).
  The sequences are left-padded, so the last real item always sits at slot ``L-1``: positions count back from the end.
* each block: ``Q = W_q LN(x)``, ``K = W_k x``, ``V = W_v x`` (the keys and values come from the *un-normalised*
  input; dense layers with biases, Glorot-uniform kernels, no output projection after the heads are concatenated),
  scaled dot products, padded keys and future keys masked, softmax, rows of padded queries zeroed (query masking),
  dropout on the attention weights, then the residual ``LN(x) + attention``. The point-wise feed-forward net is
  ``ReLU(W_1 y + b_1)`` then ``W_2 . + b_2`` (two width-``d`` kernel-1 convolutions), each followed by dropout, with the
  residual ``y + FFN(y)`` where ``y = LN(attention output)``; the block's output is zeroed at the padding slots.
* a final layer norm (epsilon 1e-8 everywhere, the official ``normalize``). It is applied after the last padding
  mask, as the official does, so the padding slots of the output hold the norm's bias, not zeros: callers use only
  the real slots (the training loss ignores padding targets; evaluation reads slot ``L-1``).

Where the official code is implicit and this module is explicit: the official masks keys whose vector is all zeros
(``sign(sum |keys|)``) and queries whose normalised vector is all zeros; here both masks come from the item ids
(``padding_mask``), which is the same for keys (the padding slots are zeroed before every block) and stricter for
queries (the official query mask misses padded queries once the norm's bias is non-zero; those rows are zeroed at
the end of the block either way). Masked scores are ``-2**32 + 1`` as the official, not ``-inf``: a padded query
whose every key is masked then gets uniform weights (later zeroed) instead of NaN, and a masked key's weight is
exactly 0 in float32 for every real query, which always sees itself.

Where the PyTorch port (github.com/pmixer/SASRec.pytorch ``python/model.py``) differs and this module follows the
official: it uses ``nn.MultiheadAttention`` (an extra output projection) with queries, keys and values all equal;
its current default is a post-norm Transformer block (``norm_first`` gives a pre-norm one), where the official
normalises only the queries and adds the residual to the normalised input; positions are ``1..L`` with 0 for padding
(``padding_idx``) and no key-padding mask; Xavier-normal initialisation.

``causal=False`` drops the future mask (a bidirectional encoder, e.g. an auto-encoder's), everything else unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the official ``normalize`` epsilon
LAYER_NORM_EPS = 1e-8
#: the official masked score (``-2**32 + 1``): finite, so a query with no allowed key gives uniform weights, not NaN
MASKED_SCORE = -(2.0**32) + 1.0


def _glorot_linear(dim_in: int, dim_out: int) -> nn.Linear:
    """A dense layer initialised as TensorFlow's (Glorot-uniform kernel, zero bias)."""
    layer = nn.Linear(dim_in, dim_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class SelfAttention(nn.Module):
    """SASRec's multi-head self-attention: queries from ``LN(x)``, keys and values from ``x``, residual on ``LN(x)``.

    Args:
        dim: width ``d`` (divisible by ``num_heads``).
        num_heads: heads (each of width ``d / num_heads``).
        dropout: dropout on the attention weights.
        causal: mask the keys after each query.
    """

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.2, causal: bool = True) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim must be a positive multiple of num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads, self.causal = num_heads, causal
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.query, self.key, self.value = (_glorot_linear(dim, dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        B, L, d = x.shape
        return x.reshape(B, L, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, h, L, d/h)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """``(B, L, d)`` input (zero at padding), ``(B, L)`` bool (True at real items) -> ``(B, L, d)``."""
        queries = self.norm(x)
        q, k, v = self._heads(self.query(queries)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, L, L)
        allowed = padding_mask[:, None, None, :]  # key masking
        if self.causal:
            L = x.shape[1]
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        weights = torch.softmax(scores.masked_fill(~allowed, MASKED_SCORE), dim=-1)
        weights = weights * padding_mask[:, None, :, None].to(weights.dtype)  # query masking
        out = (self.dropout(weights) @ v).transpose(1, 2).reshape(x.shape)
        return queries + out  # the official residual adds the normalised queries


class PointWiseFeedForward(nn.Module):
    """``y + Dropout(W_2 Dropout(ReLU(W_1 y + b_1)) + b_2)``, both layers width ``d`` (the official kernel-1 convolutions)."""

    def __init__(self, dim: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.inner, self.outer = _glorot_linear(dim, dim), _glorot_linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: Tensor) -> Tensor:
        return y + self.dropout(self.outer(self.dropout(F.relu(self.inner(y)))))


class SASRecBlock(nn.Module):
    """One SASRec block: self-attention, ``LN``, point-wise feed-forward, padding slots zeroed."""

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.2, causal: bool = True) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, num_heads, dropout, causal)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.feed_forward = PointWiseFeedForward(dim, dropout)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        x = self.feed_forward(self.norm(self.attention(x, padding_mask)))
        return x * padding_mask[..., None].to(x.dtype)


class SelfAttentiveSequenceEncoder(nn.Module):
    """SASRec's encoder: ``(B, L, d)`` item embeddings of left-padded sequences -> ``(B, L, d)`` sequence states.

    The item embeddings come from the caller (SASRec's own table, shared with its scoring; RecGURU's per-domain
    tables), unscaled: the encoder multiplies them by ``sqrt(d)`` as the official ``embedding(scale=True)``.
    Output slot ``t`` depends only on the real items at slots ``<= t`` (with ``causal=True``) and never on the
    padding slots.

    Args:
        dim: width ``d`` (the official ``hidden_units``, 50).
        max_len: sequence length ``L`` (learned positions ``0..L-1``; the official ``maxlen``: 50 Amazon, 200 ML-1M).
        num_blocks: self-attention blocks (2).
        num_heads: attention heads (1).
        dropout: dropout rate of the embeddings, the attention weights and the feed-forward net (0.5 Amazon, 0.2 ML-1M).
        causal: mask future slots (SASRec); ``False`` for a bidirectional encoder.
    """

    def __init__(self, dim: int = 50, max_len: int = 50, num_blocks: int = 2, num_heads: int = 1, dropout: float = 0.5, causal: bool = True) -> None:
        super().__init__()
        if dim < 1 or max_len < 1 or num_blocks < 0:
            raise ValueError(f"need dim >= 1, max_len >= 1, num_blocks >= 0; got {dim}, {max_len}, {num_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim, self.max_len = dim, max_len
        self.position = nn.Embedding(max_len, dim)
        nn.init.xavier_uniform_(self.position.weight)  # TF's default initializer of tf.get_variable
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(dim, num_heads, dropout, causal) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, item_vectors: Tensor, padding_mask: Tensor) -> Tensor:
        """Args: ``item_vectors`` ``(B, L, d)`` unscaled item embeddings; ``padding_mask`` ``(B, L)`` bool, True at real items."""
        if item_vectors.dim() != 3 or item_vectors.shape[-1] != self.dim or padding_mask.shape != item_vectors.shape[:2]:
            raise ValueError(f"expected item_vectors (B, L, {self.dim}) and padding_mask (B, L), got {tuple(item_vectors.shape)}, {tuple(padding_mask.shape)}")
        L = item_vectors.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequences of length {L} exceed max_len {self.max_len}")
        mask = padding_mask.to(torch.bool)
        positions = self.position.weight[self.max_len - L :] if L < self.max_len else self.position.weight
        # a shorter (already left-padded) input keeps its last slot at position max_len - 1, as the full-length input would
        x = item_vectors * math.sqrt(self.dim) + positions
        x = self.dropout(x) * mask[..., None].to(x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


__all__ = ["LAYER_NORM_EPS", "MASKED_SCORE", "PointWiseFeedForward", "SASRecBlock", "SelfAttention", "SelfAttentiveSequenceEncoder"]
