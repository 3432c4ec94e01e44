"""A word-level vocabulary for short texts with the `tokenizers` library: NFKC + lower-case normalisation, whitespace /
punctuation pre-tokenisation, ``[PAD]`` = 0, ``[UNK]`` = 1, ``[MASK]`` = 2 (the mask token of masked-language-model
pretraining and of CEIL's prompt ``[X] Topic: [MASK]``), saved as ``tokenizer.json``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.data.tokenization import read_tokenizer_file
from litzoo.framework.errors import LitzooError

PAD, UNK, MASK = "[PAD]", "[UNK]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, MASK)
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2


class WordVocabulary:
    """A word-level `tokenizers` vocabulary with ``[PAD]`` = 0, ``[UNK]`` = 1, ``[MASK]`` = 2; texts → padded id tensors.

    Args:
        tokenizer: a `tokenizers.Tokenizer` whose vocabulary maps the three special tokens to ids 0, 1, 2.

    Raises:
        ValueError: the special tokens are missing or have other ids.

    Example:
        >>> vocab = WordVocabulary.build(["Cats purr", "cats sleep"], min_frequency=1)
        >>> vocab.encode(["cats bark"], max_length=4)[0].tolist()
        [[3, 1, 0, 0]]
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
        expected = dict(zip(SPECIAL_TOKENS, (PAD_ID, UNK_ID, MASK_ID), strict=True))
        if ids != expected:
            raise ValueError(f"the vocabulary must map {expected}, got {ids}")
        self.tokenizer = tokenizer

    @classmethod
    def build(cls, texts: Iterable[str], min_frequency: int = 1, max_size: int | None = None) -> WordVocabulary:
        """The words of ``texts`` seen at least ``min_frequency`` times (the ``max_size`` most frequent ones, specials included)."""
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
        if max_size is not None and max_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"max_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {max_size}")
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=max_size if max_size is not None else 2**31 - 1, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )  # fmt: skip
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> WordVocabulary:
        """Read a ``tokenizer.json``; a missing or invalid file raises one line naming it."""
        tokenizer = read_tokenizer_file(path)
        try:
            return cls(tokenizer)
        except ValueError as error:
            raise LitzooError(f"tokenizer file '{path}': {error}") from None

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as a ``tokenizer.json`` (atomically)."""
        path = Path(path).expanduser()
        with write_files_atomically(path) as (staged,):
            staged.write_text(self.tokenizer.to_str(), encoding="utf-8")
        return path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def id_to_token(self, index: int) -> str:
        token = self.tokenizer.id_to_token(int(index))
        if token is None:
            raise IndexError(f"token id {index} is outside the vocabulary of {self.vocab_size}")
        return token

    def encode(self, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
        """``(tokens, mask)``: ``(N, max_length)`` long ids padded with ``[PAD]`` after each text (cut at ``max_length``),
        and the bool mask of the real tokens."""
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        tokens = torch.full((len(texts), max_length), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.bool)
        for row, encoding in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            ids = encoding.ids[:max_length]
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = True
        return tokens, mask

    def decode(self, ids: Sequence[int] | Tensor) -> list[str]:
        """The tokens of ``ids``, padding dropped."""
        return [self.id_to_token(int(i)) for i in ids if int(i) != PAD_ID]

    def __repr__(self) -> str:
        return f"WordVocabulary(vocab_size={self.vocab_size})"


__all__ = ["MASK", "MASK_ID", "PAD", "PAD_ID", "SPECIAL_TOKENS", "UNK", "UNK_ID", "WordVocabulary"]
