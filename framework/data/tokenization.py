"""Text tokenization with the `tokenizers` library: a BPE trained on the corpus, or a saved ``tokenizer.json``.

CLIP's conventions (OpenAI CLIP ``simple_tokenizer.py``, open_clip ``tokenizer.py``): text is lower-cased,
each caption becomes ``<start_of_text> tokens <end_of_text>`` padded with 0 to a fixed context length,
and a caption longer than the context is cut so that its last token is still ``<end_of_text>`` (the text
tower pools the feature at that position).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

from litzoo.framework.errors import LitzooError

PAD, UNK, START, END = "<pad>", "<unk>", "<start_of_text>", "<end_of_text>"
SPECIAL_TOKENS = (PAD, UNK, START, END)  # ids 0, 1, 2, 3 in a trained tokenizer


def read_tokenizer_file(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json`` in the `tokenizers` format.

    Raises:
        LitzooError: one line naming the file: missing, or not a valid tokenizers JSON file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LitzooError(f"tokenizer file '{path}' does not exist (expected a tokenizers 'tokenizer.json')")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a plain Exception with a long message
        raise LitzooError(f"tokenizer file '{path}' is not a valid tokenizers JSON file: {str(error).splitlines()[0]}") from None


class TextTokenizer:
    """Captions → ``(N, context_length)`` int64 token ids with start/end tokens and zero padding.

    Args:
        tokenizer: a `tokenizers.Tokenizer` whose vocabulary holds ``<pad>``, ``<start_of_text>`` and
            ``<end_of_text>``.
        context_length: tokens per caption including the start and end tokens (CLIP: 77).

    Example:
        >>> tok = TextTokenizer.train(["a photo of a cat", "a photo of a dog"], vocab_size=64, context_length=8)
        >>> tok(["a cat"]).shape
        torch.Size([1, 8])
    """

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be at least 3 (start, one token, end), got {context_length}")
        ids = {token: tokenizer.token_to_id(token) for token in (PAD, START, END)}
        missing = [token for token, index in ids.items() if index is None]
        if missing:
            raise ValueError(f"the tokenizer's vocabulary lacks the special tokens {missing}")
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id, self.start_id, self.end_id = ids[PAD], ids[START], ids[END]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, context_length: int = 77, min_frequency: int = 1) -> TextTokenizer:
        """A lower-cased BPE over whitespace/punctuation-split words, trained on ``texts`` (seedless, deterministic)."""
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer, context_length)

    @classmethod
    def load(cls, path: str | Path, context_length: int = 77) -> TextTokenizer:
        """Reads a ``tokenizer.json`` (the `tokenizers` format); a bad file raises one line naming it."""
        tokenizer = read_tokenizer_file(path)
        try:
            return cls(tokenizer, context_length)
        except ValueError as err:
            raise LitzooError(f"tokenizer file '{path}': {err}") from err

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        body = self.context_length - 2
        tokens = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, encoding in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self.start_id, *encoding.ids[:body], self.end_id]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens

    def end_positions(self, tokens: Tensor) -> Tensor:
        """``(N,)`` index of each row's ``<end_of_text>`` token (where CLIP's text tower pools)."""
        return (tokens == self.end_id).int().argmax(dim=-1)

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"

