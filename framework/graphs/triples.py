"""Knowledge-graph triples in the official repositories' on-disk format, read into id tensors and vocabularies.

Format (PathCon, hwwang55/PathCon ``src/data_loader.py``; GraIL, kkteru/grail ``utils/data_utils.py:process_files``):
a folder holds ``train.txt``, ``valid.txt``, ``test.txt`` with one ``head<TAB>relation<TAB>tail`` triple per line, and
optionally ``entities.dict`` / ``relations.dict`` with ``id<TAB>name`` per line (PathCon ships them; GraIL does not).
GraIL's inductive layout pairs a training folder ``<name>_v1`` with ``<name>_v1_ind``, whose entities are disjoint from the
training ones and whose ``train.txt`` is the graph seen at test time (its ``test.txt`` holds the queries).

Verified against the official readers: with dicts, names map through them (PathCon's ``read_triplets``); without, ids are
given in order of first appearance, train file first, head before tail (GraIL's ``process_files``); relations of the
``_ind`` folder use the training folder's relation ids (GraIL's ``saved_relation2id``). Chosen where the code is silent or
lax: a malformed row (not three non-empty tab-separated fields, a name missing from a given dict, a relation or, in the
transductive setting, an entity that the training graph lacks) raises a one-line :class:`LitzooError` naming file and line,
where PathCon raises a bare ``KeyError`` and GraIL silently drops rows of unknown relations. Empty lines are skipped.
Tensors are ``(N, 3)`` long in file order ``(head, relation, tail)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from litzoo.framework.errors import LitzooError

SPLIT_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}


@dataclass
class KnowledgeGraph:
    """One folder's triples: ``splits[name]`` is ``(N, 3)`` long ``(head, relation, tail)``; ids index the vocabularies."""

    entities: list[str]
    relations: list[str]
    splits: dict[str, Tensor] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)


def read_dict(path: str | Path) -> list[str]:
    """The names of an ``id<TAB>name`` dict file, indexed by id; ids must be exactly ``0 .. n-1`` and names unique.

    Raises:
        LitzooError: naming the file and line of a malformed row, a repeated id or name, or the missing ids.
    """
    path = Path(path)
    by_id: dict[int, str] = {}
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[1]:
                raise LitzooError(f"{path}:{number}: expected 'id<TAB>name', got {len(fields)} tab-separated field(s): {line[:80]!r}")
            try:
                index = int(fields[0])
            except ValueError:
                raise LitzooError(f"{path}:{number}: the id {fields[0]!r} is not an integer") from None
            if index in by_id or fields[1] in seen:
                raise LitzooError(f"{path}:{number}: repeated id {index} or name {fields[1]!r}")
            by_id[index] = fields[1]
            seen[fields[1]] = number
    if sorted(by_id) != list(range(len(by_id))):
        raise LitzooError(f"{path}: ids must be 0..{len(by_id) - 1} without gaps")
    return [by_id[i] for i in range(len(by_id))]


def read_triple_rows(path: str | Path) -> list[tuple[int, str, str, str]]:
    """``(line number, head, relation, tail)`` of each non-empty line of a triples file.

    Raises:
        LitzooError: naming the file and line of a row that is not three non-empty tab-separated fields.
    """
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not all(fields):
                raise LitzooError(f"{path}:{number}: expected 'head<TAB>relation<TAB>tail', got {len(fields)} tab-separated field(s): {line[:80]!r}")
            rows.append((number, fields[0], fields[1], fields[2]))
    return rows


def read_triples_folder(
    folder: str | Path,
    relations: list[str] | None = None,
    require_seen_entities: bool = True,
    splits: tuple[str, ...] = ("train", "valid", "test"),
) -> KnowledgeGraph:
    """Read ``folder``'s split files (and its dicts when present) into a :class:`KnowledgeGraph`.

    Args:
        folder: a folder in the official layout; ``train.txt`` is required, ``valid.txt`` / ``test.txt`` are read when present.
        relations: a fixed relation vocabulary (the training folder's, when reading a GraIL ``_ind`` folder); a relation
            outside it is an error. Ignored when the folder has ``relations.dict``.
        require_seen_entities: every entity of the other splits must occur in ``train.txt`` (the transductive setting,
            and GraIL's inductive test graph, where queries are answered over the ``_ind`` training graph). Real WN18RR
            has a few test entities absent from training; pass False to read it.
        splits: the split names to read (files ``SPLIT_FILES[name]``).

    Raises:
        LitzooError: a missing folder or ``train.txt``; a malformed row, unknown name or unseen entity (file and line).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LitzooError(f"{folder}: not a folder of knowledge-graph triples (expected train.txt, valid.txt, test.txt)")
    if not (folder / "train.txt").is_file():
        raise LitzooError(f"{folder}: has no train.txt (expected 'head<TAB>relation<TAB>tail' per line)")
    entity_dict = folder / "entities.dict"
    relation_dict = folder / "relations.dict"
    fixed_entities = entity_dict.is_file()
    entity_names = read_dict(entity_dict) if fixed_entities else []
    fixed_relations = relation_dict.is_file() or relations is not None
    relation_names = read_dict(relation_dict) if relation_dict.is_file() else list(relations or [])
    entity_ids = {name: i for i, name in enumerate(entity_names)}
    relation_ids = {name: i for i, name in enumerate(relation_names)}
    graph = KnowledgeGraph(entity_names, relation_names, folder=folder)
    train_entities: set[int] = set()
    for split in splits:
        path = folder / SPLIT_FILES[split]
        if split != "train" and not path.is_file():
            continue
        ids = []
        for number, head, relation, tail in read_triple_rows(path):
            row = []
            for name, kind in ((head, "entity"), (relation, "relation"), (tail, "entity")):
                table, names, fixed = (entity_ids, entity_names, fixed_entities) if kind == "entity" else (relation_ids, relation_names, fixed_relations)
                if name not in table:
                    if fixed:
                        source = entity_dict if kind == "entity" else (relation_dict if relation_dict.is_file() else "the training graph's relations")
                        raise LitzooError(f"{path}:{number}: unknown {kind} {name!r} (not in {source})")
                    if split != "train" and kind == "relation":
                        raise LitzooError(f"{path}:{number}: relation {name!r} does not occur in {folder / 'train.txt'}")
                    table[name] = len(names)
                    names.append(name)
                row.append(table[name])
            if split == "train":
                train_entities.update((row[0], row[2]))
            elif require_seen_entities:
                for entity, name in ((row[0], head), (row[2], tail)):
                    if entity not in train_entities:
                        raise LitzooError(
                            f"{path}:{number}: entity {name!r} does not occur in {folder / 'train.txt'} "
                            "(the transductive setting needs every entity in the training graph)"
                        )
            ids.append(row)
        graph.splits[split] = torch.tensor(ids, dtype=torch.long).reshape(-1, 3)
    return graph


def inductive_folder(folder: str | Path) -> Path:
    """GraIL's disjoint-entity test folder of a training folder: ``<name>_v1`` -> ``<name>_v1_ind``."""
    folder = Path(folder)
    return folder.with_name(folder.name + "_ind")


def read_inductive(folder: str | Path, test_folder: str | Path | None = None) -> tuple[KnowledgeGraph, KnowledgeGraph]:
    """GraIL's inductive pair: the training graph of ``folder`` (train/valid) and the test graph of its ``_ind`` sibling
    (train = the graph available at test time, valid/test = queries), whose relations take the training ids.

    Raises:
        LitzooError: as :func:`read_triples_folder`; the ``_ind`` folder missing; an ``_ind`` relation unknown to training.
    """
    train = read_triples_folder(folder, splits=("train", "valid"))
    test_folder = Path(test_folder) if test_folder is not None else inductive_folder(folder)
    if not test_folder.is_dir():
        raise LitzooError(f"{test_folder}: the inductive test folder of {folder} does not exist")
    test = read_triples_folder(test_folder, relations=train.relations)
    return train, test
