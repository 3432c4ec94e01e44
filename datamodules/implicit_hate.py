"""Implicit vs explicit hate classification data: the Implicit Hate Corpus stage-1 TSV, and a SYNTHETIC planted corpus.

The Implicit Hate Corpus (ElSherief et al., "Latent Hatred: A Benchmark for Understanding Implicit Hate Speech", EMNLP
2021; data SALT-NLP/implicit-hate) is the data of ToxVis (Gunturi, Ding, Rho, arXiv:2303.09402): its stage-1 file
``implicit_hate_v1_stg1_posts.tsv`` labels every post ``implicit_hate``, ``explicit_hate`` or ``not_hate`` (13,291
not_hate, 7,100 implicit_hate, 1,089 explicit_hate, as the corpus' users report). Its layout, as the code that reads it
does (``pd.read_csv(path, delimiter='\\t')`` then ``data['post']``, ``data['class']``; checked in several public readers,
the file itself is not stored here):

* a **header line** ``post<TAB>class``, tab-separated, the columns found by name (other columns are ignored);
* pandas' default quoting: a field may be quoted with ``"`` (``""`` inside); Python's ``csv`` module with
  ``delimiter='\\t'`` reads the same dialect, and :func:`write_implicit_hate_tsv` writes it.

Refused with one ``LitzooError`` naming the file and the line: a missing ``post`` / ``class`` column, a class other
than the three, an empty post, a row with another number of fields than the header, a file that is not UTF-8.

Classes are ``0 = not_hate``, ``1 = implicit_hate``, ``2 = explicit_hate`` (:data:`CLASSES`; the order is ours, the
paper does not give one). The corpus ships no split, and ToxVis does not say how it split it: here a seeded
**stratified** split (:func:`stratified_split`, per class ``round(n * test_fraction)`` test rows, ``round(n *
val_fraction)`` validation rows, the rest training, drawn by ``split_seed``) — our choice, which keeps the rare
explicit class in every split. The word vocabulary (:class:`~litzoo.framework.text.vocabulary.WordVocabulary`: NFKC +
lower case, words and punctuation runs, ``[PAD]`` = 0, ``[UNK]`` = 1) is built on the **training split only** (our
choice: a test word never seen in training is ``[UNK]``, as it would be for a deployed model).

Batches: ``{"tokens": (B, L) long, "mask": (B, L) bool, "label": (B,) long, "index": (B,) long}``, ``L = max_length``
words (cut after), padded with ``[PAD]``; ``index`` is the row of the post in the file (0-based, header excluded).

SYNTHETIC data (:func:`write_synthetic_implicit_hate`), the CPU stand-in of the ToxVis notes: pseudo-words made of
random syllables in four disjoint pools — shared **filler** words, explicit **trigger** words, the words of the
**coded phrases**, and nothing else. Every post has ``min_filler..max_filler`` filler words; an *explicit* post gets
``1..max_triggers`` trigger words at random positions; an *implicit* post gets one coded phrase (2 or 3 words, in
order, contiguous) and no trigger; a *neutral* post gets no trigger and, with probability ``decoy_rate``, one single
word of a coded phrase (a decoy: a coded word alone is not hate, only the whole phrase is; so the implicit class is
carried by a combination of tokens, none of which decides alone — the "implicit" part of the stand-in). The planted
truth is written next to the TSV as ``<stem>.planted.json``: the word pools and, per row, the word positions of the
planted trigger / phrase tokens (empty for neutral posts; decoys are not planted tokens). Choices of ours (the paper
has no such generator): uniform lengths and positions, balanced classes, 8 triggers, 6 phrases over 12 coded words.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from litzoo.framework.data import DictTensorDataset, SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically, write_files_atomically
from litzoo.framework.data.tables import read_named_columns
from litzoo.framework.errors import LitzooError
from litzoo.framework.text.synthetic_words import pseudo_words
from litzoo.framework.text.vocabulary import SPECIAL_TOKENS, WordVocabulary

#: the classes of the stage-1 file, in the order of their ids
CLASSES: tuple[str, ...] = ("not_hate", "implicit_hate", "explicit_hate")
NOT_HATE, IMPLICIT, EXPLICIT = 0, 1, 2
POST_COLUMN, CLASS_COLUMN = "post", "class"


# ---- the TSV reader / writer -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImplicitHateCorpus:
    """The rows of a stage-1 TSV file.

    Attributes:
        path: the file read.
        posts: each row's post, as written.
        labels: each row's class id (index into :data:`CLASSES`).
        lines: the line each row starts on (1-based; line 1 is the header).
    """

    path: Path
    posts: list[str]
    labels: list[int]
    lines: list[int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.posts)


def read_implicit_hate_tsv(path: str | Path) -> ImplicitHateCorpus:
    """Read an Implicit Hate Corpus stage-1 TSV (``post<TAB>class`` header; columns found by name).

    Raises:
        LitzooError: one line naming the file (and the line) for a missing file, non-UTF-8 bytes, a header without
            ``post`` / ``class``, a row with another number of fields than the header, an empty post, a class not in
            :data:`CLASSES`, bad quoting, or no row at all.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LitzooError(f"implicit-hate TSV '{path}' does not exist (expected a 'post<TAB>class' file such as implicit_hate_v1_stg1_posts.tsv)")
    posts: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for line, row in read_named_columns(path, (POST_COLUMN, CLASS_COLUMN), "\t", "implicit-hate TSV", value_name="post"):
        post, label = row[POST_COLUMN], row[CLASS_COLUMN].strip()
        if not post.strip():
            raise LitzooError(f"implicit-hate TSV '{path}' line {line}: empty post")
        if label not in CLASSES:
            raise LitzooError(f"implicit-hate TSV '{path}' line {line}: unknown class {label!r} (expected one of {', '.join(CLASSES)})")
        posts.append(post)
        labels.append(CLASSES.index(label))
        lines.append(line)
    if not posts:
        raise LitzooError(f"implicit-hate TSV '{path}' holds a header but no row")
    return ImplicitHateCorpus(path, posts, labels, lines)


def _tsv_rows(posts: Sequence[str], labels: Sequence[int]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")  # quotes a post holding a tab, a quote or a newline
    writer.writerow([POST_COLUMN, CLASS_COLUMN])
    writer.writerows([post, CLASSES[int(label)]] for post, label in zip(posts, labels, strict=True))
    return buffer.getvalue()


def write_implicit_hate_tsv(path: str | Path, posts: Sequence[str], labels: Sequence[int]) -> Path:
    """Write ``post<TAB>class`` rows (class names from :data:`CLASSES`) with a header into ``path``, atomically."""
    if len(posts) != len(labels):
        raise ValueError(f"posts and labels must have the same length, got {len(posts)} and {len(labels)}")
    if any(not 0 <= int(label) < len(CLASSES) for label in labels):
        raise ValueError(f"labels must be class ids in [0, {len(CLASSES)})")
    path = Path(path).expanduser()
    with write_files_atomically(path) as (staged,):
        staged.write_text(_tsv_rows(posts, labels), encoding="utf-8")
    return path


def stratified_split(labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices of ``train`` / ``val`` / ``test``: per class, a seeded permutation cut into ``round(n * test_fraction)``
    test rows, ``round(n * val_fraction)`` validation rows and the rest; each split's indices in increasing order."""
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got {val_fraction} and {test_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):  # increasing class order: the draw does not depend on the file's row order of classes
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test, n_val = round(len(rows) * test_fraction), round(len(rows) * val_fraction)
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


# ---- the SYNTHETIC planted corpus ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticImplicitHate:
    """What :func:`write_synthetic_implicit_hate` wrote and planted.

    Attributes:
        path: the TSV file.
        planted_path: ``<stem>.planted.json`` next to it.
        trigger_words: the explicit trigger words.
        coded_phrases: the coded phrases (each a list of 2-3 words).
        filler_words: the shared filler words.
        planted: per row, the word positions of its planted trigger / phrase tokens (empty for neutral posts).
    """

    path: Path
    planted_path: Path
    trigger_words: list[str]
    coded_phrases: list[list[str]]
    filler_words: list[str]
    planted: list[list[int]]


def check_synthetic_arguments(posts_per_class: int, num_filler: int, min_filler: int, max_filler: int, max_triggers: int, decoy_rate: float) -> None:
    """Raises a ``ValueError`` naming the first bad argument of the SYNTHETIC generator."""
    for name, value in (("posts_per_class", posts_per_class), ("num_filler", num_filler), ("min_filler", min_filler), ("max_triggers", max_triggers)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_filler < min_filler:
        raise ValueError(f"max_filler ({max_filler}) must be at least min_filler ({min_filler})")
    if not 0.0 <= decoy_rate <= 1.0:
        raise ValueError(f"decoy_rate must be in [0, 1], got {decoy_rate}")


def synthetic_implicit_hate(
    posts_per_class: int = 300,
    num_filler: int = 60,
    min_filler: int = 5,
    max_filler: int = 12,
    max_triggers: int = 1,
    decoy_rate: float = 0.5,
    num_triggers: int = 8,
    num_phrases: int = 6,
    seed: int = 0,
) -> tuple[list[str], list[int], list[list[int]], dict[str, list]]:
    """SYNTHETIC ``(posts, labels, planted positions, pools)`` in a seeded random row order; see :func:`write_synthetic_implicit_hate`."""
    check_synthetic_arguments(posts_per_class, num_filler, min_filler, max_filler, max_triggers, decoy_rate)
    if num_triggers < 1 or num_phrases < 1:
        raise ValueError(f"num_triggers and num_phrases must be positive, got {num_triggers} and {num_phrases}")
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    filler = pseudo_words(rng, num_filler, seen)
    triggers = pseudo_words(rng, num_triggers, seen)
    coded = pseudo_words(rng, 2 * num_phrases, seen)
    # phrases of 2 or 3 words over the coded pool; every coded word is in some phrase, so it can be a decoy
    phrases: list[list[str]] = []
    order = list(rng.permutation(len(coded)))
    for p in range(num_phrases):
        size = 2 + int(rng.integers(0, 2))
        head = [coded[order[(2 * p) % len(coded)]], coded[order[(2 * p + 1) % len(coded)]]]
        if size == 3:
            extra = [w for w in coded if w not in head]
            head.append(extra[int(rng.integers(0, len(extra)))])
        phrases.append(head)
    posts, labels, planted = [], [], []
    for label in (NOT_HATE, IMPLICIT, EXPLICIT):
        for _ in range(posts_per_class):
            words = [filler[i] for i in rng.integers(0, num_filler, size=int(rng.integers(min_filler, max_filler + 1)))]
            marks = [False] * len(words)
            if label == EXPLICIT:
                for _ in range(int(rng.integers(1, max_triggers + 1))):
                    at = int(rng.integers(0, len(words) + 1))
                    words.insert(at, triggers[int(rng.integers(0, num_triggers))])
                    marks.insert(at, True)
            elif label == IMPLICIT:
                phrase = phrases[int(rng.integers(0, num_phrases))]
                at = int(rng.integers(0, len(words) + 1))
                words[at:at] = phrase
                marks[at:at] = [True] * len(phrase)
            elif rng.random() < decoy_rate:  # one coded word alone: not a phrase, not hate
                at = int(rng.integers(0, len(words) + 1))
                words.insert(at, coded[int(rng.integers(0, len(coded)))])
                marks.insert(at, False)
            posts.append(" ".join(words))
            labels.append(label)
            planted.append([i for i, m in enumerate(marks) if m])
    permutation = rng.permutation(len(posts))
    pools = {"trigger_words": triggers, "coded_phrases": phrases, "filler_words": filler}
    return [posts[i] for i in permutation], [labels[i] for i in permutation], [planted[i] for i in permutation], pools


def write_synthetic_implicit_hate(
    path: str | Path,
    posts_per_class: int = 300,
    num_filler: int = 60,
    min_filler: int = 5,
    max_filler: int = 12,
    max_triggers: int = 1,
    decoy_rate: float = 0.5,
    seed: int = 0,
) -> SyntheticImplicitHate:
    """Write a SYNTHETIC implicit / explicit / neutral corpus as a stage-1 TSV, and its planted truth as
    ``<stem>.planted.json`` (``{"synthetic": true, "trigger_words", "coded_phrases", "filler_words", "planted"}``), atomically.

    Args:
        path: the TSV file to write.
        posts_per_class: rows of each of the three classes.
        num_filler: shared filler words (uniform).
        min_filler, max_filler: filler words per post, uniform in ``[min_filler, max_filler]``.
        max_triggers: an explicit post has ``1..max_triggers`` trigger words.
        decoy_rate: probability that a neutral post holds one lone coded-phrase word.
        seed: the seed of everything drawn; the same arguments write the same bytes.
    """
    posts, labels, planted, pools = synthetic_implicit_hate(posts_per_class, num_filler, min_filler, max_filler, max_triggers, decoy_rate, seed=seed)
    path = Path(path).expanduser()
    planted_path = path.with_name(f"{path.stem}.planted.json")
    with write_files_atomically(path, planted_path) as (staged_tsv, staged_planted):
        staged_tsv.write_text(_tsv_rows(posts, labels), encoding="utf-8")
        staged_planted.write_text(json.dumps({"synthetic": True, **pools, "planted": planted}) + "\n", encoding="utf-8")
    return SyntheticImplicitHate(path, planted_path, pools["trigger_words"], pools["coded_phrases"], pools["filler_words"], planted)


# ---- the DataModules -------------------------------------------------------------------------------------------------
class ImplicitHateDataModule(SplitsDataModule):
    """The Implicit Hate Corpus stage-1 TSV, split stratified and seeded into train / val / test.

    After :meth:`setup`: ``corpus``, ``vocabulary`` (built on the training split), ``split_rows`` (split → file rows),
    ``num_classes`` (3), ``class_names``, ``vocab_size``. Batches: see the module docstring.

    Args:
        path: the TSV file (``implicit_hate_v1_stg1_posts.tsv``).
        val_fraction: share of each class held out for validation.
        test_fraction: share of each class held out for testing.
        split_seed: the seed of the stratified split.
        max_length: words per post; longer posts are cut.
        min_frequency: training words seen fewer times become ``[UNK]``.
        max_vocab_size: keep at most this many ids (specials included); ``None``: all.
        batch_size: posts per batch.
        num_workers: DataLoader workers (the tensors are in memory: 0 is fastest).

    Raises:
        ValueError: bad fractions, ``max_length < 1``, ``min_frequency < 1``, bad loader options.
        LitzooError: (in :meth:`setup`) a missing or malformed file, naming it and the line.
    """

    splits = ("train", "val", "test")
    class_names = CLASSES
    num_classes = len(CLASSES)

    def __init__(
        self,
        path: str,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        max_length: int = 64,
        min_frequency: int = 1,
        max_vocab_size: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
            raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got {val_fraction} and {test_fraction}")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
        if max_vocab_size is not None and max_vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"max_vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {max_vocab_size}")
        self.save_hyperparameters()
        # kept as attributes too: a subclass's hparams hold its own arguments (the CLI records those of the class it builds)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.max_length, self.min_frequency, self.max_vocab_size = max_length, min_frequency, max_vocab_size
        self.corpus: ImplicitHateCorpus | None = None
        self.vocabulary: WordVocabulary | None = None
        self.split_rows: dict[str, np.ndarray] = {}

    def tsv_path(self) -> Path:
        """The TSV file read."""
        return Path(self.hparams.path).expanduser()

    @property
    def vocab_size(self) -> int:
        if self.vocabulary is None:
            raise RuntimeError(f"{type(self).__name__}: the vocabulary is known after setup()")
        return self.vocabulary.vocab_size

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        """The three splits at once (one stratified draw; the vocabulary of the training split)."""
        corpus = read_implicit_hate_tsv(self.tsv_path())
        rows = stratified_split(corpus.labels, self.val_fraction, self.test_fraction, self.split_seed)
        if len(rows["train"]) == 0:
            raise LitzooError(f"implicit-hate TSV '{corpus.path}': no training row left after the split ({len(corpus)} rows)")
        vocabulary = WordVocabulary.build([corpus.posts[i] for i in rows["train"]], min_frequency=self.min_frequency, max_size=self.max_vocab_size)
        self.corpus, self.vocabulary, self.split_rows = corpus, vocabulary, rows
        tokens, mask = vocabulary.encode(corpus.posts, self.max_length)
        labels = torch.tensor(corpus.labels, dtype=torch.long)
        datasets = {}
        for name, indices in rows.items():
            index = torch.from_numpy(indices).long()
            datasets[name] = DictTensorDataset(tokens=tokens[index], mask=mask[index], label=labels[index], index=index)
        return datasets


class SyntheticImplicitHateDataModule(ImplicitHateDataModule):
    """The SYNTHETIC planted corpus of :func:`write_synthetic_implicit_hate`, generated once under ``root`` and read as
    :class:`ImplicitHateDataModule`. After :meth:`setup`, ``planted`` holds the pools and per-row planted positions
    (the ``<stem>.planted.json`` content).

    Args:
        root: the folder the generated sets are written under (one sub-folder per set of generator arguments).
        posts_per_class, num_filler, min_filler, max_filler, max_triggers, decoy_rate, seed: the generator's.
        val_fraction, test_fraction, split_seed, max_length, batch_size, num_workers: as :class:`ImplicitHateDataModule`.
    """

    def __init__(
        self,
        root: str = "data/implicit_hate",
        posts_per_class: int = 300,
        num_filler: int = 60,
        min_filler: int = 5,
        max_filler: int = 12,
        max_triggers: int = 1,
        decoy_rate: float = 0.5,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        max_length: int = 32,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        check_synthetic_arguments(posts_per_class, num_filler, min_filler, max_filler, max_triggers, decoy_rate)
        self.generator_args = {
            "posts_per_class": posts_per_class, "num_filler": num_filler, "min_filler": min_filler, "max_filler": max_filler,
            "max_triggers": max_triggers, "decoy_rate": decoy_rate, "seed": seed,
        }  # fmt: skip
        name = f"SYNTHETIC-n{posts_per_class}-f{num_filler}-len{min_filler}-{max_filler}-t{max_triggers}-decoy{decoy_rate:g}-seed{seed}"
        self.folder = Path(root).expanduser() / name
        super().__init__(str(self.folder / "posts.tsv"), val_fraction, test_fraction, split_seed, max_length, batch_size=batch_size,
                         num_workers=num_workers)  # fmt: skip
        self.planted: dict | None = None

    def tsv_path(self) -> Path:
        # hparams hold this class's arguments (root is the parent folder), so name the generated file directly
        return self.folder / "posts.tsv"

    def generate(self) -> Path:
        """Write the set into :attr:`folder` unless it is there (a whole folder appears at once: safe across ranks)."""
        if not self.tsv_path().is_file():
            generate_folder_atomically(self.folder, lambda staging: write_synthetic_implicit_hate(staging / "posts.tsv", **self.generator_args))
        return self.tsv_path()

    def prepare_data(self) -> None:
        self.generate()

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        path = self.generate()  # also when setup runs without prepare_data (tests, plain scripts)
        self.planted = json.loads(path.with_name("posts.planted.json").read_text(encoding="utf-8"))
        return super().build_datasets(split)
