"""Masked-language-model pieces shared by the language methods: BERT's token corruption and its prediction head.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding", NAACL 2019, §3.1
(reference: google-research/bert ``create_pretraining_data.py`` ``create_masked_lm_predictions`` and ``run_pretraining.py``
``get_masked_lm_output``; Hugging Face ``DataCollatorForLanguageModeling.torch_mask_tokens`` and ``BertLMPredictionHead``).

The language methods of issue 24 fine-tune BERT-family encoders; no weights are available offline, so their small
encoders are first pretrained with this objective on the method's own corpus (the stand-in the notes describe). CEIL's
prompt classifier reads the same head at its ``[MASK]`` position.

Rules (as the references): each real, non-special token is chosen independently with ``probability`` (the Hugging Face
collator's Bernoulli draw; google-research/bert samples exactly ``round(n · 0.15)`` positions per sequence — the
expected count is the same); of the chosen, 80 % become ``[MASK]``, 10 % a uniformly random non-special word, 10 % stay
unchanged; the loss is taken on the chosen positions only (label ``-100`` elsewhere, ``F.cross_entropy``'s
``ignore_index``). The head is BERT's: dense → GELU → LayerNorm → a decoder tied to the input embedding plus a bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IGNORE_INDEX", "MaskedLMHead", "mlm_corrupt"]

IGNORE_INDEX = -100


def mlm_corrupt(
    tokens: Tensor,
    mask: Tensor,
    mask_token_id: int,
    first_word_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's corruption of token ids ``(B, L)``: returns ``(inputs, labels)``.

    Args:
        tokens: token ids ``(B, L)``.
        mask: real-token mask ``(B, L)`` (padding is never chosen).
        mask_token_id: the ``[MASK]`` id.
        first_word_id: ids below it are special tokens (``[PAD]``, ``[UNK]``, ``[MASK]`` …): never chosen, never drawn as the
            random replacement.
        vocab_size: ids ``first_word_id..vocab_size-1`` are the words a random replacement is drawn from.
        probability: the chance that a real word is chosen (BERT: 0.15).
        generator: the random source (on ``tokens``' device); ``None``: torch's global one.

    Returns:
        ``inputs``: ``tokens`` with the chosen positions corrupted; ``labels``: the original id at chosen positions,
        :data:`IGNORE_INDEX` elsewhere.
    """
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"probability must be in (0, 1], got {probability}")
    if not 0 <= mask_token_id < first_word_id < vocab_size:
        raise ValueError(f"need 0 <= mask_token_id < first_word_id < vocab_size, got {mask_token_id}, {first_word_id}, {vocab_size}")
    if tuple(mask.shape) != tuple(tokens.shape):
        raise ValueError(f"mask must be {tuple(tokens.shape)}, got {tuple(mask.shape)}")
    draw = torch.rand(tokens.shape + (2,), generator=generator, device=tokens.device)
    chosen = mask.bool() & (tokens >= first_word_id) & (draw[..., 0] < probability)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE_INDEX))
    random_words = torch.randint(first_word_id, vocab_size, tokens.shape, generator=generator, device=tokens.device)
    # one uniform draw splits the chosen 80 / 10 / 10 into [MASK] / random word / unchanged
    to_mask = chosen & (draw[..., 1] < 0.8)
    to_random = chosen & (draw[..., 1] >= 0.8) & (draw[..., 1] < 0.9)
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_token_id), tokens)
    inputs = torch.where(to_random, random_words, inputs)
    return inputs, labels


class MaskedLMHead(nn.Module):
    """BERT's prediction head: token states ``(..., dim)`` → vocabulary logits ``(..., vocab_size)``.

    Args:
        embedding: the encoder's input embedding ``(vocab_size, dim)``; the decoder's weight is this very parameter
            (tied, as BERT), plus a per-token bias.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        vocab_size, dim = embedding.weight.shape
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.embedding = embedding  # shared, not copied: its weight is the decoder
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, states: Tensor) -> Tensor:
        hidden = self.norm(F.gelu(self.dense(states)))
        return hidden @ self.embedding.weight.T + self.bias
