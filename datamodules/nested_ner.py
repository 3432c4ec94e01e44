"""Nested named-entity recognition: a folder of JSONL span files, and a SYNTHETIC nested-gazetteer corpus with its ground truth.

:class:`NestedNERDataModule` reads ``train.jsonl`` / ``dev.jsonl`` / ``test.jsonl`` in the format of
:mod:`litzoo.framework.text.nested_ner` (``{"text", "entities": [{"start", "end", "type"}]}``, character offsets,
``end`` exclusive; the layout of the ACE / GENIA / ChiNesE converters of Mulco, Yang et al., CIKM 2023,
arXiv 2211.10854), tokenised per character (``level="char"``, Chinese) or per word (``"word"``, English). The vocabulary
and the entity types are built on the training split (or the vocabulary read from a ``tokenizer.json``). Batches::

    tokens  (B, L) long   token ids, padded with 0 ([PAD]); unknown tokens are 1 ([UNK])
    mask    (B, L) bool   True on real tokens
    length  (B,)   long   tokens per sentence
    spans   (B, S, 3) long  gold (start, end, type id) in token offsets, end exclusive, S = most entities in the batch;
                          rows past a sentence's entities are -1 in all three columns
    index   (B,)   long   the sentence's position in its split (``datamodule.sentences(split)[i]`` has text and offsets)

Sentences are not truncated (a model takes the batch's L). A type of dev / test missing from the training split is an
error naming the file and line (a model has no output for it).

:func:`write_synthetic_nested_ner` writes a SYNTHETIC corpus in that format: template sentences of random context words
around 1-3 entities, each drawn flat (a city, province, place, person or organisation name) or composite from nested
gazetteer patterns (ORG 北京大学医学部 ⊃ ORG 北京大学 ⊃ GPE 北京; ORG "Peking University Health Science Center" ⊃ ORG
"Peking University" ⊃ GPE "Peking"; PER 北京市长张伟 ⊃ GPE 北京, PER 张伟; ...), with the composite probability solved so
that the expected share of nested entities is ``nested_share`` (ChiNesE: 43.8%). The files are the ground truth.
:class:`SyntheticNestedNERDataModule` generates the corpus when missing and reads it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from litzoo.framework.data import SplitsDataModule, make_loader
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import derive_seed
from litzoo.framework.text.nested_ner import (
    NerSentence,
    NerVocabulary,
    NestingStatistics,
    Span,
    check_level,
    nested_ner_line,
    nesting_statistics,
    read_nested_ner,
)

#: split name -> file name in the folder (dev, as the ACE / GENIA / ChiNesE releases name it)
SPLIT_FILES = {"train": "train.jsonl", "val": "dev.jsonl", "test": "test.jsonl"}


class NestedNERDataset(Dataset):
    """Encoded sentences of one split: items ``{"tokens": (L,), "spans": (S, 3), "index": ()}`` long."""

    def __init__(self, sentences: Sequence[NerSentence], vocabulary: NerVocabulary, type_ids: dict[str, int], path: Path) -> None:
        self.sentences = list(sentences)
        self.items = []
        for index, sentence in enumerate(self.sentences):
            unknown = [kind for _, _, kind in sentence.token_spans if kind not in type_ids]
            if unknown:
                raise LitzooError(f"nested NER file '{path}' line {sentence.line}: entity type {unknown[0]!r} does not occur in the training split")
            spans = torch.tensor([(start, end, type_ids[kind]) for start, end, kind in sentence.token_spans], dtype=torch.long).reshape(-1, 3)
            tokens = torch.tensor(vocabulary.encode_tokens(sentence.tokens), dtype=torch.long)
            self.items.append({"tokens": tokens, "spans": spans, "index": torch.tensor(index)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.items[index]


def collate_nested_ner(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Pad a list of :class:`NestedNERDataset` items into the batch of the module docstring (tokens 0, spans -1)."""
    lengths = torch.tensor([len(item["tokens"]) for item in items], dtype=torch.long)
    most_spans = max(len(item["spans"]) for item in items)
    tokens = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)
    spans = torch.full((len(items), most_spans, 3), -1, dtype=torch.long)
    for row, item in enumerate(items):
        tokens[row, : len(item["tokens"])] = item["tokens"]
        spans[row, : len(item["spans"])] = item["spans"]
    mask = torch.arange(tokens.shape[1]) < lengths[:, None]
    return {"tokens": tokens, "mask": mask, "length": lengths, "spans": spans, "index": torch.stack([item["index"] for item in items])}


class NestedNERDataModule(SplitsDataModule):
    """A nested-NER folder (``train.jsonl``, ``dev.jsonl``, ``test.jsonl``) as padded batches (see the module docstring).

    After ``setup`` (or on first use of the properties): ``vocabulary`` (:class:`NerVocabulary`), ``type_names`` (the
    training split's entity types, sorted: type id = position), ``sentences(split)`` (the read
    :class:`~litzoo.framework.text.nested_ner.NerSentence` list, for decoding predictions back to text).

    Args:
        root: the folder holding the three files.
        level: ``"char"`` (every non-space character a token; Chinese) or ``"word"`` (words and punctuation; English).
        batch_size: sentences per batch.
        min_frequency: training-split count a token needs to enter the vocabulary (rarer ones read as ``[UNK]``).
        tokenizer_path: a ``tokenizer.json`` of :meth:`NerVocabulary.save` to use instead of building one.
        num_workers: DataLoader workers (the data are in memory; 0 is fastest).

    Raises:
        ValueError: a bad ``level`` or ``min_frequency``, or bad loader options.
        LitzooError (on setup): a missing or malformed file, naming the file and line.
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str,
        level: Literal["char", "word"] = "char",
        batch_size: int = 32,
        min_frequency: int = 1,
        tokenizer_path: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_level(level)
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        self.save_hyperparameters()
        # kept as attributes, not read from hparams: a subclass's hparams hold its own arguments (root differs)
        self.root, self.level, self.min_frequency, self.tokenizer_path = Path(root).expanduser(), level, min_frequency, tokenizer_path
        self._vocabulary: NerVocabulary | None = None
        self._type_names: tuple[str, ...] | None = None
        self._sentences: dict[str, list[NerSentence]] = {}

    def split_path(self, split: str) -> Path:
        return self.root / SPLIT_FILES[split]

    def has_split(self, split: str) -> bool:
        return split in SPLIT_FILES and (split == "train" or self.split_path(split).is_file())

    def sentences(self, split: str) -> list[NerSentence]:
        """The read sentences of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in self._sentences:
            self._sentences[split] = read_nested_ner(self.split_path(split), self.level)
        return self._sentences[split]

    def _fit_vocabulary(self) -> None:
        if self._vocabulary is not None:
            return
        train = self.sentences("train")
        if self.tokenizer_path:
            self._vocabulary = NerVocabulary.load(self.tokenizer_path, self.level)
        else:
            self._vocabulary = NerVocabulary.build((s.tokens for s in train), self.level, self.min_frequency)
        self._type_names = tuple(sorted({kind for s in train for _, _, kind in s.entities}))
        if not self._type_names:
            raise LitzooError(f"nested NER file '{self.split_path('train')}' holds no entity")

    @property
    def vocabulary(self) -> NerVocabulary:
        self._fit_vocabulary()
        return self._vocabulary

    @property
    def type_names(self) -> tuple[str, ...]:
        self._fit_vocabulary()
        return self._type_names

    @property
    def num_tokens(self) -> int:
        """Vocabulary size (the embedding rows a model needs)."""
        return len(self.vocabulary)

    @property
    def num_types(self) -> int:
        return len(self.type_names)

    def statistics(self, split: str) -> NestingStatistics:
        """Nesting statistics of a split's gold spans (share of nested entities, crossing spans, depth)."""
        return nesting_statistics(s.entities for s in self.sentences(split))

    def build_dataset(self, split: str) -> Dataset:
        self._fit_vocabulary()
        path = self.split_path(split)
        if split != "train" and not path.is_file():
            raise LitzooError(f"nested NER split '{path}' does not exist (expected {', '.join(SPLIT_FILES.values())} in '{self.root}')")
        type_ids = {kind: index for index, kind in enumerate(self._type_names)}
        return NestedNERDataset(self.sentences(split), self._vocabulary, type_ids, path)

    def make_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return make_loader(dataset, batch_size, shuffle, self.num_workers, seed=self.shuffle_seed, collate_fn=collate_nested_ner)


# ---- SYNTHETIC nested-gazetteer corpus -----------------------------------------------------------------------------
# Atoms: class -> (entity type, names). Composite patterns: name -> (entity type, parts), a part being a literal, "@class"
# (an atom entity) or "#pattern" (a nested composite entity). No run of context words spells a gazetteer name, so an
# unannotated mention never appears (a test checks it on generated text).
GAZETTEERS: dict[str, dict] = {
    "char": {
        "atoms": {
            "GPE": ("GPE", ["北京", "上海", "南京", "广州", "杭州", "成都", "武汉", "西安"]),
            "PROV": ("GPE", ["湖北", "云南", "四川", "山东"]),
            "LOC": ("LOC", ["长江", "泰山", "西湖", "黄河", "洞庭湖"]),
            "PER": ("PER", ["张伟", "李娜", "王芳", "刘洋", "陈静", "赵磊"]),
            "ORG": ("ORG", ["腾讯", "华为", "红十字会", "新华社"]),
        },
        "composites": {
            "UNIV": ("ORG", ["@GPE", "大学"]),
            "MED": ("ORG", ["#UNIV", "医学部"]),
            "GOV": ("ORG", ["@GPE", "市政府"]),
            "BANK": ("ORG", ["@GPE", "银行"]),
            "MAYOR": ("PER", ["@GPE", "市长", "@PER"]),
            "PORT": ("LOC", ["@GPE", "港"]),
            "PROVINCE": ("GPE", ["@PROV", "省"]),
        },
        "context": ["昨天", "今天", "记者", "报道", "表示", "宣布", "访问", "会见", "代表", "与", "和", "在", "举行", "会议",
                    "合作", "计划", "项目", "参加", "活动", "了", "的", "发布", "消息", "称", "双方", "签署", "协议", "前往", "考察"],
        "join": "",
        "end": "。",
    },
    "word": {
        "atoms": {
            "GPE": ("GPE", ["Peking", "Shanghai", "Nanjing", "Boston", "Paris", "Toronto", "Berlin", "Madrid"]),
            "PROV": ("GPE", ["Hubei", "Yunnan", "Sichuan", "Ontario"]),
            "LOC": ("LOC", ["Yangtze River", "Mount Tai", "West Lake", "Lake Geneva", "Rocky Mountains"]),
            "PER": ("PER", ["Zhang Wei", "Li Na", "Maria Garcia", "John Smith", "Wang Fang", "Anna Muller"]),
            "ORG": ("ORG", ["Tencent", "Huawei", "Red Cross", "Reuters"]),
        },
        "composites": {
            "UNIV": ("ORG", ["@GPE", "University"]),
            "MED": ("ORG", ["#UNIV", "Health Science Center"]),
            "GOV": ("ORG", ["@GPE", "City Council"]),
            "BANK": ("ORG", ["Bank of", "@GPE"]),
            "MAYOR": ("PER", ["@GPE", "Mayor", "@PER"]),
            "PORT": ("LOC", ["Port of", "@GPE"]),
            "PROVINCE": ("GPE", ["@PROV", "Province"]),
        },
        "context": ["yesterday", "today", "officials", "from", "met", "with", "said", "the", "a", "visited", "announced", "new",
                    "plan", "on", "reporters", "in", "at", "delegation", "signed", "agreement", "project", "joined", "talks",
                    "according", "to", "spokesman", "last", "week", "and", "held"],
        "join": " ",
        "end": ".",
    },
}  # fmt: skip


def _entity_count(gazetteer: dict, pattern: str) -> int:
    """Entities a composite pattern yields (itself, its atoms, its nested composites)."""
    _, parts = gazetteer["composites"][pattern]
    return 1 + sum(1 if part.startswith("@") else _entity_count(gazetteer, part[1:]) if part.startswith("#") else 0 for part in parts)


def composite_probability(level: str, nested_share: float) -> float:
    """The chance that an entity slot is composite so that the expected nested share is ``nested_share``.

    A composite of ``n >= 2`` entities makes all ``n`` nested, a flat slot one non-nested entity; with mean composite
    size ``S`` (patterns drawn uniformly) a ratio of expectations gives ``share = p S / (p S + 1 - p)``, so
    ``p = share / (S (1 - share) + share)``."""
    gazetteer = GAZETTEERS[check_level(level)]
    sizes = [_entity_count(gazetteer, name) for name in gazetteer["composites"]]
    mean = sum(sizes) / len(sizes)
    return nested_share / (mean * (1 - nested_share) + nested_share)


def _render(gazetteer: dict, part: str, rng: random.Random, offset: int, spans: list[Span]) -> str:
    """The text of an atom (``@class``) or composite (``#pattern``) entity starting at ``offset``; appends its spans."""
    join = gazetteer["join"]
    if part.startswith("@"):
        kind, names = gazetteer["atoms"][part[1:]]
        text = rng.choice(names)
        spans.append((offset, offset + len(text), kind))
        return text
    kind, parts = gazetteer["composites"][part[1:]]
    pieces: list[str] = []
    position = offset
    for piece in parts:
        if pieces:
            position += len(join)
        text = _render(gazetteer, piece, rng, position, spans) if piece[0] in "@#" else piece
        pieces.append(text)
        position += len(text)
    spans.append((offset, position, kind))
    return join.join(pieces)


def synthetic_nested_sentence(level: str, rng: random.Random, composite_p: float, max_entities: int = 3) -> tuple[str, list[Span]]:
    """One SYNTHETIC sentence and its gold character spans: context words, then 1..``max_entities`` entities each
    followed by 1-3 context words (so entities of different slots never touch), then the full stop."""
    gazetteer = GAZETTEERS[level]
    join, context = gazetteer["join"], gazetteer["context"]
    flat_classes = sorted(gazetteer["atoms"])
    composites = sorted(gazetteer["composites"])
    pieces: list[str] = []
    spans: list[Span] = []
    position = 0

    def add(text: str) -> None:
        nonlocal position
        if pieces:
            position += len(join)
        pieces.append(text)
        position += len(text)

    for word in rng.sample(context, rng.randint(0, 2)):
        add(word)
    for _ in range(rng.randint(1, max_entities)):
        part = "#" + rng.choice(composites) if rng.random() < composite_p else "@" + rng.choice(flat_classes)
        add(_render(gazetteer, part, rng, position + (len(join) if pieces else 0), spans))
        for word in rng.sample(context, rng.randint(1, 3)):
            add(word)
    text = join.join(pieces) + gazetteer["end"]
    return text, spans


def write_synthetic_nested_ner(
    folder: str | Path,
    level: str = "char",
    num_train: int = 2000,
    num_dev: int = 300,
    num_test: int = 300,
    nested_share: float = 0.4,
    max_entities: int = 3,
    seed: int = 0,
) -> Path:
    """Write a SYNTHETIC nested-NER corpus as ``folder/{train,dev,test}.jsonl`` (the ground truth) and return ``folder``.

    Written atomically (a private sibling renamed into place); an existing complete folder is reused. Each split draws
    from its own stream ``derive_seed(seed, split number)``, so the same arguments give the same bytes.

    Raises:
        ValueError: a bad level, split sizes < 1, ``nested_share`` outside [0, 1], ``max_entities < 1``.
    """
    check_level(level)
    if min(num_train, num_dev, num_test) < 1 or max_entities < 1:
        raise ValueError(f"split sizes and max_entities must be >= 1, got {num_train}, {num_dev}, {num_test}, {max_entities}")
    if not 0.0 <= nested_share <= 1.0:
        raise ValueError(f"nested_share must be in [0, 1], got {nested_share}")
    folder = Path(folder).expanduser()
    if all((folder / name).is_file() for name in SPLIT_FILES.values()):
        return folder
    p = composite_probability(level, nested_share)

    def write(staging: Path) -> None:
        for number, (name, size) in enumerate(((SPLIT_FILES["train"], num_train), (SPLIT_FILES["val"], num_dev), (SPLIT_FILES["test"], num_test))):
            rng = random.Random(derive_seed(seed, number))
            with open(staging / name, "w", encoding="utf-8") as handle:
                handle.writelines(nested_ner_line(*synthetic_nested_sentence(level, rng, p, max_entities)) + "\n" for _ in range(size))

    generate_folder_atomically(folder, write)
    return folder


class SyntheticNestedNERDataModule(NestedNERDataModule):
    """The SYNTHETIC corpus of :func:`write_synthetic_nested_ner`, generated into
    ``root/SYNTHETIC-<level>-seed<seed>-n<train>-<dev>-<test>-nested<share>-e<max_entities>`` when missing, then read
    as :class:`NestedNERDataModule`.

    Args:
        root: folder the generated corpora are written under.
        level: ``"char"`` (Chinese gazetteers) or ``"word"`` (English gazetteers).
        num_train, num_dev, num_test: sentences per split.
        nested_share: expected share of nested entities (ChiNesE: 0.438).
        max_entities: most entity slots in a sentence.
        seed: the generation seed.
        batch_size, min_frequency, num_workers: as :class:`NestedNERDataModule`.
    """

    def __init__(
        self,
        root: str = "data/nested_ner",
        level: Literal["char", "word"] = "char",
        num_train: int = 2000,
        num_dev: int = 300,
        num_test: int = 300,
        nested_share: float = 0.4,
        max_entities: int = 3,
        seed: int = 0,
        batch_size: int = 32,
        min_frequency: int = 1,
        num_workers: int = 0,
    ) -> None:
        check_level(level)
        name = f"SYNTHETIC-{level}-seed{seed}-n{num_train}-{num_dev}-{num_test}-nested{nested_share:g}-e{max_entities}"
        folder = write_synthetic_nested_ner(Path(root).expanduser() / name, level, num_train, num_dev, num_test, nested_share, max_entities, seed)
        super().__init__(str(folder), level=level, batch_size=batch_size, min_frequency=min_frequency, num_workers=num_workers)
