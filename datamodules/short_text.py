"""Short-text clustering data: SCCL-style ``label,text`` CSV files, a word-level vocabulary, and a SYNTHETIC topic corpus.

The short-text clustering benchmarks (SearchSnippets, StackOverflow, Biomedical, AgNews, Tweet, GoogleNews) are used
as CSV files by SCCL (Zhang et al., NAACL 2021; official code amazon-science/sccl) and by the methods that follow its
protocol, CEIL with CDCC (Zhao et al., WWW 2023, arXiv 2304.11061; no official code found). What SCCL's reader
(``dataloader/dataloader.py``) fixes, and this reader follows:

* ``pandas.read_csv`` with its defaults: a **header line**, comma-separated, fields quoted with ``"`` where needed and
  ``""`` inside quotes (Python's ``csv`` module reads the same dialect); blank lines are skipped;
* the columns are found **by name** (``--label label --text text`` by default); other columns may be present (SCCL's
  augmented files add ``text1``, ``text2``) and are ignored here;
* labels are integers (``astype(int)``); they are used only to score the clustering.

Where SCCL is lenient and this reader refuses, with one ``LitzooError`` naming the file and line: an empty text
(SCCL's ``fillna('.')`` silently clusters a "."), a label that is not an integer literal (``1.0`` included), a row
with another number of fields than the header, a missing column. Labels are remapped to ``0..K-1`` in increasing
order of their values; ``ShortTextCorpus.label_values[k]`` is the file's label of class ``k``.

Protocol (SCCL, CEIL): clustering is unsupervised and every row is used both to train and to evaluate — there is no
held-out split. :class:`ShortTextDataModule` therefore serves the same rows as ``train`` (shuffled by a seeded,
resumable loader: :func:`litzoo.framework.data.loaders.make_loader`), ``val`` and ``test`` (in file order). Batches
are ``{"tokens": (B, L) long, "mask": (B, L) bool, "label": (B,) long, "index": (B,) long}``: ``L = max_length``
(SCCL's default 32), ``tokens`` padded with ``[PAD]`` = 0 after the text and cut at ``max_length`` words; ``index``
is the row of the sample in the file (0-based, header excluded), which a method keeps per-sample state by (CEIL's
pseudo-labels and filtering).

Vocabulary (:class:`~litzoo.framework.text.vocabulary.WordVocabulary`, in the core so a method can read it): a `tokenizers` ``WordLevel`` model — NFKC + lower-case normaliser, the
``Whitespace`` pre-tokenizer (``\\w+|[^\\w\\s]+``: words and runs of punctuation), ids ``[PAD]`` = 0, ``[UNK]`` = 1,
``[MASK]`` = 2 (for masked-language-model pre-training and prompt-based classification), then the words seen at
least ``min_frequency`` times by decreasing count (ties by the `tokenizers` trainer's order, alphabetical), saved and
loaded as ``tokenizer.json``. It is built on the whole file, as the clustering uses every row.

SYNTHETIC data (:func:`write_synthetic_short_texts`): ``K`` topics, each a Zipf distribution over its own generated
pseudo-words; every word of a text is a shared function word (``function_share``) or a content word, taken from
another topic with probability ``noise_share`` (cross-topic noise) and from the text's own topic otherwise; texts have
``min_words..max_words`` words (5-15 by default, the length of search snippets and titles). The ground truth is the
``label`` column (the topic); the topics' words are written next to the CSV (``<name>.topics.json``) so a verbalizer
can be checked against them. Choices of ours (the CEIL paper describes no such generator): pseudo-words made of random
syllables, Zipf weights ``1 / rank``, uniform text lengths, uniform choice of the noise topic.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict

from litzoo.framework.data import DictTensorDataset, SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically, write_files_atomically
from litzoo.framework.data.tables import read_named_columns
from litzoo.framework.errors import LitzooError
from litzoo.framework.text.synthetic_words import pseudo_words
from litzoo.framework.text.vocabulary import SPECIAL_TOKENS, WordVocabulary


# ---- the CSV reader ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShortTextCorpus:
    """The rows of a short-text CSV file.

    Attributes:
        path: the file read.
        texts: the text of each row, as written.
        labels: each row's class, remapped to ``0..K-1``.
        label_values: the file's label of each class (``label_values[k]`` for class ``k``), in increasing order.
        lines: the line of the file each row starts on (1-based; line 1 is the header).
    """

    path: Path
    texts: list[str]
    labels: list[int]
    label_values: list[int]
    lines: list[int] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    def __len__(self) -> int:
        return len(self.texts)


def read_short_text_csv(path: str | Path, label_column: str = "label", text_column: str = "text") -> ShortTextCorpus:
    """Read an SCCL-style CSV file (header line; columns found by name; other columns ignored).

    Raises:
        LitzooError: one line naming the file (and the line) for a missing file, a file that is not UTF-8 CSV, a
            header without ``label_column`` / ``text_column``, a row with another number of fields than the header,
            an empty text, a label that is not an integer, or no row at all.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LitzooError(f"short-text CSV '{path}' does not exist (expected a '{label_column},{text_column}' CSV file with a header line)")
    texts: list[str] = []
    raw_labels: list[int] = []
    lines: list[int] = []
    for line, row in read_named_columns(path, (label_column, text_column), ",", "short-text CSV", value_name="text"):
        text, label = row[text_column], row[label_column].strip()
        if not text.strip():
            raise LitzooError(f"short-text CSV '{path}' line {line}: empty text")
        try:
            value = int(label)
        except ValueError:
            raise LitzooError(f"short-text CSV '{path}' line {line}: label {label!r} is not an integer") from None
        texts.append(text)
        raw_labels.append(value)
        lines.append(line)
    if not texts:
        raise LitzooError(f"short-text CSV '{path}' holds a header but no row")
    label_values = sorted(set(raw_labels))
    remap = {value: k for k, value in enumerate(label_values)}
    return ShortTextCorpus(path, texts, [remap[value] for value in raw_labels], label_values, lines)


def write_short_text_csv(path: str | Path, labels: Sequence[int], texts: Sequence[str]) -> Path:
    """Write ``label,text`` rows with a header, quoted as ``csv`` (and pandas) do, into ``path`` atomically."""
    if len(labels) != len(texts):
        raise ValueError(f"labels and texts must have the same length, got {len(labels)} and {len(texts)}")
    path = Path(path).expanduser()
    with write_files_atomically(path) as (staged,), staged.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["label", "text"])
        writer.writerows([int(label), text] for label, text in zip(labels, texts, strict=True))
    return path


# ---- the SYNTHETIC topic corpus --------------------------------------------------------------------------------------
FUNCTION_WORDS = ("the", "a", "of", "and", "to", "in", "is", "for", "on", "with", "at", "by", "from", "this", "that", "it")


@dataclass(frozen=True)
class SyntheticShortTexts:
    """What :func:`write_synthetic_short_texts` wrote: the CSV, the topics' words (the planted truth besides the labels)."""

    path: Path
    topics_path: Path
    topic_words: list[list[str]]


def synthetic_topic_words(num_topics: int, words_per_topic: int, seed: int = 0) -> list[list[str]]:
    """``num_topics`` disjoint lists of ``words_per_topic`` pseudo-words (2-3 random syllables), none a function word."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set(FUNCTION_WORDS)
    topics: list[list[str]] = []
    for _ in range(num_topics):
        topics.append(pseudo_words(rng, words_per_topic, seen))  # disjoint topics: a planted word has one topic
    return topics


def check_synthetic_arguments(
    num_topics: int, texts_per_topic: int, words_per_topic: int, function_share: float, noise_share: float, min_words: int, max_words: int
) -> None:
    """Raises a ``ValueError`` naming the first bad argument of the SYNTHETIC generator."""
    if num_topics < 2:
        raise ValueError(f"num_topics must be at least 2 (noise words come from another topic), got {num_topics}")
    for name, value in (("texts_per_topic", texts_per_topic), ("words_per_topic", words_per_topic), ("min_words", min_words)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if max_words < min_words:
        raise ValueError(f"max_words ({max_words}) must be at least min_words ({min_words})")
    for name, value in (("function_share", function_share), ("noise_share", noise_share)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def synthetic_short_texts(
    num_topics: int = 8,
    texts_per_topic: int = 100,
    words_per_topic: int = 40,
    function_share: float = 0.3,
    noise_share: float = 0.15,
    min_words: int = 5,
    max_words: int = 15,
    seed: int = 0,
) -> tuple[list[int], list[str], list[list[str]]]:
    """SYNTHETIC ``(labels, texts, topic_words)``, rows in a seeded random order; arguments as :func:`write_synthetic_short_texts`."""
    check_synthetic_arguments(num_topics, texts_per_topic, words_per_topic, function_share, noise_share, min_words, max_words)
    topic_words = synthetic_topic_words(num_topics, words_per_topic, seed)
    rng = np.random.default_rng([seed, 1])  # another stream than the words'
    zipf = 1.0 / np.arange(1, words_per_topic + 1)
    zipf /= zipf.sum()
    function_weights = 1.0 / np.arange(1, len(FUNCTION_WORDS) + 1)
    function_weights /= function_weights.sum()
    labels, texts = [], []
    for topic in range(num_topics):
        for _ in range(texts_per_topic):
            words = []
            for _ in range(int(rng.integers(min_words, max_words + 1))):
                if rng.random() < function_share:
                    words.append(FUNCTION_WORDS[rng.choice(len(FUNCTION_WORDS), p=function_weights)])
                    continue
                source = topic
                if rng.random() < noise_share:  # a cross-topic noise word: another topic, uniformly
                    source = int(rng.integers(0, num_topics - 1))
                    source += source >= topic
                words.append(topic_words[source][rng.choice(words_per_topic, p=zipf)])
            labels.append(topic)
            texts.append(" ".join(words))
    order = rng.permutation(len(texts))
    return [labels[i] for i in order], [texts[i] for i in order], topic_words


def write_synthetic_short_texts(
    path: str | Path,
    num_topics: int = 8,
    texts_per_topic: int = 100,
    words_per_topic: int = 40,
    function_share: float = 0.3,
    noise_share: float = 0.15,
    min_words: int = 5,
    max_words: int = 15,
    seed: int = 0,
) -> SyntheticShortTexts:
    """Write a SYNTHETIC short-text clustering set as an SCCL-style ``label,text`` CSV (labels ``0..K-1`` = topics),
    and the topics' words as ``<stem>.topics.json`` (``{"topic_words": [[...], ...]}``) next to it, atomically.

    Args:
        path: the CSV file to write.
        num_topics: ``K``, the planted clusters.
        texts_per_topic: rows per topic (balanced classes).
        words_per_topic: the pseudo-words of each topic (disjoint across topics), drawn with Zipf weights ``1 / rank``.
        function_share: probability that a word is one of the shared :data:`FUNCTION_WORDS` (Zipf weights too).
        noise_share: probability that a content word comes from another topic (uniformly chosen).
        min_words, max_words: the text length, uniform in ``[min_words, max_words]``.
        seed: the seed of everything drawn; the same arguments write the same bytes.
    """
    labels, texts, topic_words = synthetic_short_texts(
        num_topics, texts_per_topic, words_per_topic, function_share, noise_share, min_words, max_words, seed
    )
    path = Path(path).expanduser()
    topics_path = path.with_name(f"{path.stem}.topics.json")
    with write_files_atomically(path, topics_path) as (staged_csv, staged_topics):
        with staged_csv.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["label", "text"])
            writer.writerows(zip(labels, texts, strict=True))
        staged_topics.write_text(json.dumps({"synthetic": True, "topic_words": topic_words}, indent=1) + "\n", encoding="utf-8")
    return SyntheticShortTexts(path, topics_path, topic_words)


# ---- the DataModules ---------------------------------------------------------------------------------------------------
class ShortTextDataModule(SplitsDataModule):
    """An SCCL-style ``label,text`` CSV for short-text clustering: every row for training (shuffled) and for evaluation.

    ``train``, ``val`` and ``test`` are the same rows (the clustering protocol of SCCL and CEIL: train on all, score on
    all); ``train`` is read in a seeded order that resumes exactly (:func:`litzoo.framework.data.loaders.make_loader`),
    the others in file order. Batches: ``{"tokens": (B, L), "mask": (B, L), "label": (B,), "index": (B,)}`` (see the
    module docstring). After :meth:`setup`: ``corpus`` (texts, labels, label mapping), ``vocabulary``,
    ``num_classes``, ``vocab_size``.

    Args:
        path: the CSV file.
        label_column: the header name of the label column (SCCL: ``--label label``).
        text_column: the header name of the text column (SCCL: ``--text text``).
        max_length: words per sample; longer texts are cut (SCCL: 32).
        min_frequency: words seen fewer times in the file become ``[UNK]``.
        max_vocab_size: keep at most this many ids (specials included), the most frequent words; ``None``: all.
        tokenizer_path: a ``tokenizer.json`` to use instead of building one on the file.
        save_tokenizer_to: where to write the built (or loaded) vocabulary as ``tokenizer.json``; ``None``: not written.
        batch_size: samples per batch.
        num_workers: DataLoader workers (the tensors are in memory: 0 is fastest).

    Raises:
        ValueError: ``max_length < 1``, ``min_frequency < 1``, bad loader options.
        LitzooError: (in :meth:`setup`) a missing or malformed file, naming it and the line.
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        path: str,
        label_column: str = "label",
        text_column: str = "text",
        max_length: int = 32,
        min_frequency: int = 1,
        max_vocab_size: int | None = None,
        tokenizer_path: str | None = None,
        save_tokenizer_to: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
        if max_vocab_size is not None and max_vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"max_vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {max_vocab_size}")
        self.save_hyperparameters()
        self.corpus: ShortTextCorpus | None = None
        self.vocabulary: WordVocabulary | None = None

    def csv_path(self) -> Path:
        """The CSV file read."""
        return Path(self.hparams.path).expanduser()

    def _ready(self) -> tuple[ShortTextCorpus, WordVocabulary]:
        if self.corpus is None or self.vocabulary is None:
            raise RuntimeError(f"{type(self).__name__}: corpus and vocabulary are known after setup()")
        return self.corpus, self.vocabulary

    @property
    def num_classes(self) -> int:
        """``K``, the classes of the label column (the number of clusters the protocol asks for)."""
        return self._ready()[0].num_classes

    @property
    def vocab_size(self) -> int:
        return self._ready()[1].vocab_size

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        """The three splits at once: one dataset of every row."""
        # under LightningCLI a subclass's hparams hold only the subclass's arguments: the reader's defaults fill the rest
        hp = AttributeDict({"label_column": "label", "text_column": "text", "max_vocab_size": None, "tokenizer_path": None,
                            "save_tokenizer_to": None, **self.hparams})  # fmt: skip
        corpus = read_short_text_csv(self.csv_path(), hp.label_column, hp.text_column)
        if hp.tokenizer_path is not None:
            vocabulary = WordVocabulary.load(hp.tokenizer_path)
        else:
            vocabulary = WordVocabulary.build(corpus.texts, min_frequency=hp.min_frequency, max_size=hp.max_vocab_size)
        if hp.save_tokenizer_to is not None:
            vocabulary.save(hp.save_tokenizer_to)  # every rank writes the same bytes; the rename is atomic
        self.corpus, self.vocabulary = corpus, vocabulary
        tokens, mask = vocabulary.encode(corpus.texts, hp.max_length)
        dataset = DictTensorDataset(
            tokens=tokens, mask=mask, label=torch.tensor(corpus.labels, dtype=torch.long), index=torch.arange(len(corpus), dtype=torch.long)
        )
        return dict.fromkeys(self.splits, dataset)


class SyntheticShortTextDataModule(ShortTextDataModule):
    """The SYNTHETIC topic corpus of :func:`write_synthetic_short_texts`, generated once under ``root`` and read as
    :class:`ShortTextDataModule`. Its ground truth is the label column (the topic); ``topic_words`` holds the planted
    words of each topic.

    Args:
        root: the folder the generated sets are written under (one sub-folder per set of generator arguments).
        num_topics, texts_per_topic, words_per_topic, function_share, noise_share, min_words, max_words, seed: the
            generator's (:func:`write_synthetic_short_texts`); the defaults follow the issue's stand-in (K = 8 topics,
            15% cross-topic noise, 5-15 words).
        max_length, min_frequency, batch_size, num_workers: as :class:`ShortTextDataModule`.
    """

    def __init__(
        self,
        root: str = "data/short_text",
        num_topics: int = 8,
        texts_per_topic: int = 100,
        words_per_topic: int = 40,
        function_share: float = 0.3,
        noise_share: float = 0.15,
        min_words: int = 5,
        max_words: int = 15,
        seed: int = 0,
        max_length: int = 32,
        min_frequency: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        self.generator_args = {
            "num_topics": num_topics, "texts_per_topic": texts_per_topic, "words_per_topic": words_per_topic,
            "function_share": function_share, "noise_share": noise_share, "min_words": min_words, "max_words": max_words, "seed": seed,
        }  # fmt: skip
        check_synthetic_arguments(num_topics, texts_per_topic, words_per_topic, function_share, noise_share, min_words, max_words)
        name = (f"SYNTHETIC-k{num_topics}-n{texts_per_topic}-w{words_per_topic}-f{function_share:g}-noise{noise_share:g}"
                f"-len{min_words}-{max_words}-seed{seed}")  # fmt: skip
        self.folder = Path(root).expanduser() / name
        super().__init__(str(self.folder / "short_text.csv"), max_length=max_length, min_frequency=min_frequency, batch_size=batch_size,
                         num_workers=num_workers)  # fmt: skip
        self.topic_words: list[list[str]] | None = None

    def csv_path(self) -> Path:
        # hparams hold this class's arguments (root is the parent folder), so name the generated file directly
        return self.folder / "short_text.csv"

    def generate(self) -> Path:
        """Write the set into :attr:`folder` unless it is there (a whole folder appears at once: safe across ranks)."""
        if not (self.folder / "short_text.csv").is_file():
            generate_folder_atomically(self.folder, lambda staging: write_synthetic_short_texts(staging / "short_text.csv", **self.generator_args))
        return self.folder / "short_text.csv"

    def prepare_data(self) -> None:
        self.generate()

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        path = self.generate()  # also when setup runs without prepare_data (tests, plain scripts)
        self.topic_words = json.loads(path.with_name("short_text.topics.json").read_text(encoding="utf-8"))["topic_words"]
        return super().build_datasets(split)
