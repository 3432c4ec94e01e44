"""A JSONL text corpus for causal language modelling, with optional text quality-based pruning.

Reads the format of RedPajama / OpenWebText / Wikipedia dumps: one JSON object per line with a text
field (``{"text": "..."}``). The training documents can be pruned to the top ``keep_fraction`` by
the model-agnostic quality score of Sharma et al. (arXiv:2405.01582, ``framework/curation/text_quality.py``);
the validation documents never are. Without a ``path``, the synthetic corpus of
``litzoo.datamodules.synthetic.text_quality_corpus`` (clean documents plus documents with web junk) is
generated under ``data_dir``.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from litzoo.framework.curation import prune
from litzoo.framework.data import DictTensorDataset
from litzoo.framework.data.jsonl import read_jsonl
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.errors import LitzooError


def read_jsonl_texts(path: str | Path, text_key: str = "text") -> list[str]:
    """The ``text_key`` field of every non-blank line of a JSONL file.

    A missing file, a line that is not JSON, or a line without a string ``text_key`` raises one
    :class:`LitzooError` naming the file and line.
    """
    texts = [record[text_key] for record in read_jsonl(path, [text_key], what="corpus")]
    if not texts:
        raise LitzooError(f"corpus '{path}' holds no document")
    return texts


class TextCorpusDataModule(SplitsDataModule):
    """JSONL documents → BPE tokens → fixed-length blocks for next-token prediction; quality pruning optional.

    Batches are ``{"tokens": (B, block_size + 1) long}``: the model reads ``tokens[:, :-1]`` and
    predicts ``tokens[:, 1:]``. Each split's documents are tokenized, each wrapped as
    ``<start_of_text> ... <end_of_text>``, concatenated in a seeded order and cut into blocks with
    stride ``block_size`` (consecutive blocks share one token, so every token is a target once).

    Split and pruning: a fixed seeded share ``val_fraction`` of the documents is held out for
    validation (or ``val_path`` gives a separate validation corpus) and never pruned; with
    ``keep_fraction < 1`` the training documents are scored with :func:`litzoo.framework.curation.prune`
    (filter weights from a bigram LM fitted on the training lines) and the top fraction kept.

    Token budget: with ``token_budget`` the training stream is cut to that many target tokens, or
    repeated until it has them when the (pruned) corpus is shorter, so that a full and a pruned run
    train on exactly the same number of tokens per epoch.

    Args:
        path: JSONL corpus; ``None`` = generate the synthetic corpus in ``data_dir``.
        text_key: the text field of each line.
        keep_fraction: share of the training documents kept by quality score (1 = no pruning;
            the paper keeps 0.6-0.8).
        val_fraction: share of the documents held out for validation (ignored with ``val_path``).
        val_path: a separate JSONL validation corpus.
        block_size: tokens the model reads per sequence.
        batch_size: blocks per batch.
        bpe_vocab_size: BPE vocabulary trained on the training documents before pruning (ignored with ``tokenizer_path``).
        tokenizer_path: a ``tokenizer.json`` to use instead of training one.
        token_budget: target tokens of the training stream (``None`` = all of it).
        split_seed: seed of the validation split, document order and pruning tie-break.
        data_dir: where the synthetic corpus is written when ``path`` is ``None``.
        num_documents: synthetic corpus size.
        junk_share: share of synthetic documents with junk lines.
        num_workers: DataLoader worker processes.
    """

    splits = ("train", "val")
    test_split = "val"  # the corpus has no test set: testing reports the held-out documents

    def __init__(
        self,
        path: str | None = None,
        text_key: str = "text",
        keep_fraction: float = 1.0,
        val_fraction: float = 0.1,
        val_path: str | None = None,
        block_size: int = 64,
        batch_size: int = 16,
        bpe_vocab_size: int = 512,
        tokenizer_path: str | None = None,
        token_budget: int | None = None,
        split_seed: int = 0,
        data_dir: str = "data/text_quality",
        num_documents: int = 600,
        junk_share: float = 0.4,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        if val_path is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        for name, value in (("block_size", block_size), ("num_documents", num_documents)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if token_budget is not None and token_budget < block_size:
            raise ValueError(f"token_budget must be at least block_size ({block_size}), got {token_budget}")
        self.save_hyperparameters()
        self.block_size = block_size
        self.tokenizer: TextTokenizer | None = None
        self.stats: dict[str, float] = {}
        self.train_documents: list[str] = []  # after pruning
        self.val_documents: list[str] = []

    @property
    def vocab_size(self) -> int:
        """Size of the tokenizer's vocabulary (after :meth:`setup`)."""
        if self.tokenizer is None:
            raise RuntimeError("TextCorpusDataModule.vocab_size is known after setup()")
        return self.tokenizer.vocab_size

    def corpus_path(self) -> Path:
        if self.hparams.path is not None:
            return Path(self.hparams.path)
        return Path(self.hparams.data_dir) / "corpus.jsonl"

    def prepare_data(self) -> None:
        if self.hparams.path is None and not self.corpus_path().is_file():
            from litzoo.datamodules.synthetic import text_quality_corpus

            text_quality_corpus(self.hparams.data_dir, self.hparams.num_documents, self.hparams.junk_share, seed=self.hparams.split_seed)

    def split(self) -> tuple[list[str], list[str]]:
        """``(train, val)`` documents before pruning."""
        hp = self.hparams
        documents = read_jsonl_texts(self.corpus_path(), hp.text_key)
        if hp.val_path is not None:
            return documents, read_jsonl_texts(hp.val_path, hp.text_key)
        order = np.random.default_rng(hp.split_seed).permutation(len(documents))
        num_val = max(1, int(round(hp.val_fraction * len(documents))))
        if num_val >= len(documents):
            raise LitzooError(f"corpus '{self.corpus_path()}' has {len(documents)} documents: too few to hold out val_fraction {hp.val_fraction}")
        return [documents[i] for i in order[num_val:]], [documents[i] for i in order[:num_val]]

    def _stream(self, documents: list[str]) -> torch.Tensor:
        assert self.tokenizer is not None
        encodings = self.tokenizer.tokenizer.encode_batch(documents, add_special_tokens=False)
        ids = []
        for encoding in encodings:
            ids += [self.tokenizer.start_id, *encoding.ids, self.tokenizer.end_id]
        return torch.tensor(ids, dtype=torch.long)

    def _blocks(self, stream: torch.Tensor, split: str) -> torch.Tensor:
        count = (len(stream) - 1) // self.block_size
        if count < 1:
            raise LitzooError(f"the {split} split has {len(stream)} tokens: fewer than one block of block_size {self.block_size} + 1")
        return stream[: count * self.block_size + 1].unfold(0, self.block_size + 1, self.block_size).contiguous()

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        """Both splits at once: one seeded split, the tokenizer trained on the training documents, then pruning."""
        hp = self.hparams
        train, val = self.split()
        num_train = len(train)
        # the tokenizer is trained before pruning, so that a full and a pruned run of the same corpus share
        # it and their per-token perplexities compare
        if hp.tokenizer_path is not None:
            self.tokenizer = TextTokenizer.load(hp.tokenizer_path)
        else:
            self.tokenizer = TextTokenizer.train(train, vocab_size=hp.bpe_vocab_size)
        if hp.keep_fraction < 1.0:
            kept, _, weights = prune(train, hp.keep_fraction, seed=hp.split_seed)
            train = [train[i] for i in kept]
            rank_zero_info(f"text quality pruning kept {len(train)}/{num_train} training documents; filter weights "
                           + ", ".join(f"{k}={v:.3f}" for k, v in weights.items()))
        self.train_documents, self.val_documents = train, val
        order = np.random.default_rng(hp.split_seed).permutation(len(train))
        stream = self._stream([train[i] for i in order])
        available = len(stream) - 1
        if hp.token_budget is not None:
            # repeat a short (pruned) stream, cut a long one: both runs see token_budget targets
            repeats = math.ceil(hp.token_budget / max(available, 1))
            stream = stream.repeat(repeats)[: hp.token_budget + 1]
        datasets = {
            "train": DictTensorDataset(tokens=self._blocks(stream, "training")),
            "val": DictTensorDataset(tokens=self._blocks(self._stream(val), "validation")),
        }
        self.stats = {
            "train_documents": float(len(train)),
            "kept_fraction": len(train) / num_train,
            "train_tokens_available": float(available),
            "train_tokens": float(len(datasets["train"]) * self.block_size),
        }
        return datasets

    # No predict split: Lightning's own predict_dataloader, which says it is not implemented.
    predict_dataloader = L.LightningDataModule.predict_dataloader
