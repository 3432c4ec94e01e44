"""Story graphs with a relation query, reduced to the relation paths between the query's nodes: R5's GraphLog and CLUTRR data.

R5 (Lu, Liu, Mills, Jui, Niu, "R5: Rule Discovery with Reinforced and Recurrent Relational Reasoning", ICLR 2022; official
code sluxsr/r5_graph_reasoning: ``graphlog/dataloader.py``, ``graphlog/train.py`` (``preprocess``, the curriculum),
``clutrr/base.py`` and ``clutrr/train.py``) reads each story as the relation sequences of the simple paths between the
query's two nodes (:func:`litzoo.framework.graphs.query_paths.query_relation_paths`) and the query relation to predict.
Every loader here yields lists of :class:`~litzoo.framework.graphs.query_paths.PathQuery` (batch size 1 by default: the
official code runs one query per episode). Relation id 0 is ``UNK_REL`` (as GraphLog's ``label2id.json``).

**GraphLog** (:class:`GraphLogDataModule`): a world folder ``<world>/{train,valid,test}.jsonl``, one story per line
(``edges`` ``[[u, v, "R_8_+"], ...]``, ``query`` ``[u, v, "R_2_+"]``, and where present ``target``, ``descriptor``
``"R_a,R_b,..."``, ``rules_used``, ``rules_used_pos``, ``resolution_path`` ``[nodes]``), the world's ``config.json``
(its ``rules``: ``{"body": [a, b] or a, "head": c}``) and ``label2id.json`` in the world folder or its parent (the official
layout). Verified against the official loader and the bundled worlds: a story's repeated edges are dropped (it sorts and
dedups them); train lines are deduplicated (it reads them into a set), valid lines equal to a train line or to an earlier
valid line are dropped (``set(valid) - set(train)``), test lines are kept as they are; on every bundled ``re_*`` line the
descriptor has ``len(resolution_path) - 1`` relations and replaying ``rules_used`` at ``rules_used_pos`` in reverse with the
config's rules reduces the descriptor to the target. Chosen where the code is odd: lines are compared as parsed JSON
(the official compares raw text) and kept in file order (the official iterates a set, so its order changes from run to
run); a story's ``length`` is its descriptor's number of relations, or ``len(resolution_path) - 1`` where a world has no
descriptor (``world_*`` lines have only ``edges``, ``query``, ``rules``, ``resolution_path``); without ``label2id.json``
the vocabulary is ``UNK_REL`` then the sorted relation names of the splits and the config's rules. (On about a third of
the bundled ``re_*`` lines, the descriptor's relations are not those of the story's edges along the resolution path; the
reader does not check that.)

**CLUTRR** (:class:`CLUTRRDataModule`): CSV files with the columns ``story_edges`` ``"[(0, 1), (1, 2)]"``, ``edge_types``
``"['grandson', 'brother']"``, ``query_edge`` ``"(0, 2)"``, ``target`` and ``task_name`` ``"task_1.2"``, parsed with
``ast.literal_eval``; one or several files per split (the official k.x_test files). Nodes are the story's edge ids (the
official maps them to names first, the same graph). The vocabulary is the official ``rel_dict`` (``{1: 'aunt', ...}``)
when given, else ``UNK_REL`` then the sorted relation names (the official ``relation_to_idx``: sorted names, from 1).
``length`` is the k of ``task_<t>.<k>`` (on every bundled ``1.k_test`` file it equals the number of story edges, which is
checked for the clean task 1; the noisy tasks add edges beyond the k of the resolution path), else the number of edges.

**Curriculum** (official ``preprocess``/``run``): the training loader yields, in epoch 0, the queries sorted by the length
of their longest path (ascending; stable, where the official sorts a shuffled list), and from epoch 1 on a permutation
drawn from (seed, epoch) (:class:`CurriculumSampler`), so a resumed run reads the same order.

**SYNTHETIC planted worlds** (:func:`write_planted_graphlog_world`, :class:`PlantedGraphLogDataModule`): GraphLog-format
worlds whose ground truth is known. The world has ``num_relations`` base relations ``R_i_+`` and ``num_rules`` 2-body
composition rules ``(a, b) -> c``, a function of the body, with every relation the head of at least one rule. A story of
length k starts from its query relation and expands it backwards k - 1 times (a relation on the sequence is replaced by
the body of a rule producing it), which gives its resolution path, ``descriptor``, ``rules_used`` and ``rules_used_pos``
exactly as GraphLog records them. Stories are kept only when *every* way of reducing the descriptor with the planted rules
ends in the target (so the answer does not depend on the merge order). Distractors: dead-end branches (chains of one or two
new nodes leaving or entering a node of the path: they never lie on a path between the query nodes), a longer detour
between two path nodes (another source -> target path, one or two edges longer than the resolution path: beyond R5's
minimal cutoff, so the extracted paths are the resolution path's alone), a self loop, and the resolution path's edges
repeated at the end of the edge list (as GraphLog's files do). Node ids are shuffled. Train and valid stories have lengths
``train_lengths`` (2-3), test stories ``test_lengths`` (4-8); each split draws from its own random stream.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from litzoo.framework.data import SplitsDataModule
from litzoo.framework.data.jsonl import iter_jsonl
from litzoo.framework.data.loaders import EpochShuffleSampler, ResumableLoader, make_loader
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.graphs.query_paths import PathQuery, query_relation_paths
from litzoo.framework.random_state import derive_seed

UNK_REL = "UNK_REL"
Rule = tuple[int, int, int]  # (body_left, body_right, head) relation ids


@dataclass(frozen=True)
class RelationPathData:
    """The queries of every split present (``train``, ``val``, ``test``), the vocabulary, and the planted rules when known."""

    splits: dict[str, list[PathQuery]]
    relation_names: list[str]
    planted_rules: list[Rule] | None


# ---- vocabularies ------------------------------------------------------------------------------------------------
def _names_by_id(mapping: dict[int, str], path: Path, what: str) -> list[str]:
    """``mapping`` id -> name as a list indexed by id: ids 0..n-1 without gaps, 0 being UNK_REL, names unique."""
    if not mapping:
        raise LitzooError(f"{what} '{path}' holds no relations")
    ids = sorted(mapping)
    if ids != list(range(len(ids))):
        raise LitzooError(f"{what} '{path}' must number its relations 0..{len(ids) - 1} without gaps (got ids {ids[:5]}...)")
    names = [mapping[i] for i in ids]
    if names[0] != UNK_REL:
        raise LitzooError(f"{what} '{path}' must give id 0 to {UNK_REL}, not to {names[0]!r}")
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise LitzooError(f"{what} '{path}' names the relation {duplicate!r} twice")
    return names


def read_label2id(path: str | Path) -> list[str]:
    """GraphLog's ``label2id.json`` (``{"UNK_REL": 0, "R_2_+": 1, ...}``) as relation names indexed by id.

    Raises:
        LitzooError: the file is missing, not a JSON object of name -> integer id, or its ids are not 0..n-1 with 0 UNK_REL.
    """
    path = Path(path).expanduser()
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LitzooError(f"label2id file '{path}' cannot be read: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise LitzooError(f"label2id file '{path}' is not JSON: {error}") from None
    if not isinstance(mapping, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in mapping.values()):
        raise LitzooError(f"label2id file '{path}' must be a JSON object of relation name -> integer id")
    by_id: dict[int, str] = {}
    for name, index in mapping.items():
        if index in by_id:
            raise LitzooError(f"label2id file '{path}' gives id {index} to both {by_id[index]!r} and {name!r}")
        by_id[index] = name
    return _names_by_id(by_id, path, "label2id file")


def read_rel_dict(path: str | Path) -> list[str]:
    """The official CLUTRR ``rel_dict`` (a Python dict literal ``{1: 'aunt', 2: 'brother', ...}``, read with
    ``ast.literal_eval``) as relation names indexed by id, with ``UNK_REL`` at 0.

    Raises:
        LitzooError: the file is missing, not a dict literal of positive integer -> name, or its ids are not 1..n.
    """
    path = Path(path).expanduser()
    try:
        mapping = ast.literal_eval(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LitzooError(f"rel_dict file '{path}' cannot be read: {error.strerror or error}") from None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as error:
        raise LitzooError(f"rel_dict file '{path}' is not a Python dict literal: {error}") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i > 0 and isinstance(n, str) for i, n in mapping.items()
    ):
        raise LitzooError(f"rel_dict file '{path}' must be a dict literal of positive integer id -> relation name, e.g. {{1: 'aunt'}}")
    return _names_by_id({0: UNK_REL, **mapping}, path, "rel_dict file")


def vocabulary_from_names(names: Iterable[str]) -> list[str]:
    """``UNK_REL`` then the sorted distinct ``names``: the vocabulary when no id file is given."""
    return [UNK_REL] + sorted(set(names) - {UNK_REL})


# ---- stories ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Story:
    """A checked story (a GraphLog line, a CLUTRR row) still in relation names: edges and query over local node ids.
    ``where`` names the file and line (row) for the errors found later (unknown relation, no path)."""

    where: str
    edges: tuple[tuple[int, int, str], ...]
    source: int
    target: int
    relation: str
    length: int


def _path_queries(stories: Sequence[_Story], ids: dict[str, int], vocabulary: str | Path | None, min_cutoff: int) -> list[PathQuery]:
    """The stories' :class:`PathQuery` under the vocabulary ``ids`` (read from the file ``vocabulary``, if any)."""
    queries = []
    for story in stories:
        unknown = next((name for name in [story.relation, *(edge[2] for edge in story.edges)] if name not in ids), None)
        if unknown is not None:
            raise LitzooError(f"{story.where}: relation {unknown!r} is not in the vocabulary '{vocabulary}'")
        try:
            paths = query_relation_paths([(u, v, ids[relation]) for u, v, relation in story.edges], story.source, story.target, min_cutoff)
        except ValueError as error:
            raise LitzooError(f"{story.where}: {error} (the query's nodes)") from None
        queries.append(PathQuery(paths=paths, target=ids[story.relation], length=story.length))
    return queries


# ---- GraphLog ------------------------------------------------------------------------------------------------------
GRAPHLOG_FILES = {"train": "train.jsonl", "val": "valid.jsonl", "test": "test.jsonl"}


def _is_node(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _graphlog_story(record: dict, where: str) -> _Story:
    """One JSON line checked into a :class:`_Story`; ``where`` is the error prefix naming file and line."""
    edges = record.get("edges")
    if not isinstance(edges, list) or not edges:
        raise LitzooError(f"{where} has no non-empty 'edges' list of [source, target, relation]")
    nodes: dict[Any, int] = {}
    local: set[tuple[int, int, str]] = set()
    for index, edge in enumerate(edges):
        if not (isinstance(edge, list) and len(edge) == 3 and _is_node(edge[0]) and _is_node(edge[1]) and isinstance(edge[2], str)):
            raise LitzooError(f"{where}: edge {index} is {edge!r}, not [source node, target node, relation name]")
        u, v = (nodes.setdefault(node, len(nodes)) for node in edge[:2])
        local.add((u, v, edge[2]))  # a repeated edge counts once (the official loader sorts and dedups)
    query = record.get("query")
    if not (isinstance(query, list) and len(query) == 3 and _is_node(query[0]) and _is_node(query[1]) and isinstance(query[2], str)):
        raise LitzooError(f"{where} has no 'query' [source node, target node, relation name] (got {query!r})")
    for node in query[:2]:
        if node not in nodes:
            raise LitzooError(f"{where}: query node {node!r} is not in the story's edges")
    if "target" in record and record["target"] != query[2]:
        raise LitzooError(f"{where}: 'target' {record['target']!r} differs from the query relation {query[2]!r}")
    descriptor, path = record.get("descriptor"), record.get("resolution_path")
    if descriptor is not None and (not isinstance(descriptor, str) or not descriptor):
        raise LitzooError(f"{where}: 'descriptor' must be a comma-separated string of relations, got {descriptor!r}")
    if path is not None and (not isinstance(path, list) or len(path) < 2 or not all(_is_node(node) for node in path)):
        raise LitzooError(f"{where}: 'resolution_path' must be a list of at least two nodes, got {path!r}")
    if descriptor is None and path is None:
        raise LitzooError(f"{where} has neither 'descriptor' nor 'resolution_path': the story's length is unknown")
    length = len(descriptor.split(",")) if descriptor is not None else len(path) - 1
    if descriptor is not None and path is not None and len(path) - 1 != length:
        raise LitzooError(f"{where}: the descriptor has {length} relations but the resolution path {len(path) - 1} edges")
    ordered = tuple(sorted(local))
    return _Story(where, ordered, nodes[query[0]], nodes[query[1]], query[2], length)


def _read_graphlog_split(path: Path, split: str) -> list[_Story]:
    what = "GraphLog split"
    stories, seen = [], set()
    for line, record in iter_jsonl(path, what=what):
        key = json.dumps(record, sort_keys=True)
        if split != "test":  # train: a set of lines; valid: also without the train lines (official load_graphs)
            if key in seen:
                continue
            seen.add(key)
        stories.append((key, _graphlog_story(record, f"{what} '{path}' line {line}")))
    return stories


def _config_rules(path: Path) -> list[tuple[str, str, str]]:
    """The 2-body rules ``(left, right, head)`` of a GraphLog ``config.json`` (1-body rules, inverses, are skipped)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LitzooError(f"GraphLog config '{path}' cannot be read: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise LitzooError(f"GraphLog config '{path}' is not JSON: {error}") from None
    rules = config.get("rules") if isinstance(config, dict) else None
    if not isinstance(rules, list):
        raise LitzooError(f"GraphLog config '{path}' has no 'rules' list")
    out = []
    for index, rule in enumerate(rules):
        body = rule.get("body") if isinstance(rule, dict) else None
        head = rule.get("head") if isinstance(rule, dict) else None
        if not isinstance(head, str) or not (isinstance(body, str) or (isinstance(body, list) and all(isinstance(b, str) for b in body))):
            raise LitzooError(
                f"GraphLog config '{path}' rule {index} is {rule!r}, not {{'body': [relation, ...] or relation, 'head': relation}}"
            )
        if isinstance(body, list) and len(body) == 2:
            out.append((body[0], body[1], head))
    return out


def read_graphlog_world(world: str | Path, label2id: str | Path | None = None, min_cutoff: int = 2) -> RelationPathData:
    """The queries of a GraphLog world folder (see the module docstring for the layout and the split handling).

    Args:
        world: the folder with ``train.jsonl``, ``test.jsonl``, optionally ``valid.jsonl`` and ``config.json``.
        label2id: the vocabulary file; default ``<world>/label2id.json``, else ``<world>/../label2id.json``, else
            the vocabulary is built from the data.
        min_cutoff: the first path cutoff tried (2 in the official code).

    Raises:
        LitzooError: a missing split file or folder, or a malformed line, naming the file and line: bad JSON, a missing
            or ill-typed key, an unknown relation (with a vocabulary file), a query node not in the edges, no path
            between the query nodes; a malformed ``config.json`` or ``label2id.json``.
    """
    world = Path(world).expanduser()
    if not world.is_dir():
        raise LitzooError(f"GraphLog world '{world}' is not a folder (expected {sorted(GRAPHLOG_FILES.values())} and config.json)")
    stories: dict[str, list[_Story]] = {}
    train_keys: set[str] = set()
    for split, name in GRAPHLOG_FILES.items():
        path = world / name
        if split == "val" and not path.exists():
            continue
        keyed = _read_graphlog_split(path, split)
        if split == "train":
            train_keys = {key for key, _ in keyed}
        elif split == "val":
            keyed = [(key, story) for key, story in keyed if key not in train_keys]
            if not keyed:
                continue  # every valid line is a train line: no validation, as without valid.jsonl
        if not keyed:
            raise LitzooError(f"GraphLog split '{path}' holds no story")
        stories[split] = [story for _, story in keyed]
    config = world / "config.json"
    named_rules = _config_rules(config) if config.exists() else None
    if label2id is None:
        label2id = next((p for p in (world / "label2id.json", world.parent / "label2id.json") if p.is_file()), None)
    if label2id is not None:
        names = read_label2id(label2id)
    else:
        used = {relation for split in stories.values() for story in split for relation in [story.relation, *(e[2] for e in story.edges)]}
        names = vocabulary_from_names(used | {name for rule in named_rules or () for name in rule})
    ids = {name: index for index, name in enumerate(names)}
    planted = None
    if named_rules is not None:
        for rule in named_rules:
            unknown = next((name for name in rule if name not in ids), None)
            if unknown is not None:
                raise LitzooError(f"GraphLog config '{config}': rule relation {unknown!r} is not in the vocabulary '{label2id}'")
        planted = [(ids[left], ids[right], ids[head]) for left, right, head in named_rules]
    splits = {split: _path_queries(split_stories, ids, label2id, min_cutoff) for split, split_stories in stories.items()}
    return RelationPathData(splits=splits, relation_names=names, planted_rules=planted)


# ---- CLUTRR --------------------------------------------------------------------------------------------------------
CLUTRR_COLUMNS = ("story_edges", "edge_types", "query_edge", "target")
_TASK = re.compile(r"task_(\d+)\.(\d+)")


def _literal(text: str, column: str, where: str) -> Any:
    try:
        return ast.literal_eval(text)  # never eval: a CSV cell is data
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise LitzooError(f"{where}: column '{column}' is not a Python literal ({type(error).__name__}): {text[:60]!r}") from None


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _read_clutrr_file(path: Path) -> list[_Story]:
    what = f"CLUTRR file '{path}'"
    if not path.is_file():
        raise LitzooError(f"{what} cannot be read: {'it is not a file' if path.exists() else 'it does not exist'}")
    rows = []
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in CLUTRR_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise LitzooError(
                    f"{what} has no column {missing[0]!r} (expected the CLUTRR columns {', '.join(CLUTRR_COLUMNS)}, task_name)"
                )
            for number, row in enumerate(reader, start=1):
                where = f"{what} row {number} (line {reader.line_num})"
                if None in row or any(row.get(column) is None for column in CLUTRR_COLUMNS):
                    raise LitzooError(f"{where} has {'more' if None in row else 'fewer'} fields than the header")
                story = _literal(row["story_edges"], "story_edges", where)
                types = _literal(row["edge_types"], "edge_types", where)
                query = _literal(row["query_edge"], "query_edge", where)
                if not isinstance(story, list) or not story or not all(_is_pair(edge) for edge in story):
                    raise LitzooError(f"{where}: 'story_edges' must be a non-empty list of (source, target) integer pairs")
                if not isinstance(types, list) or len(types) != len(story) or not all(isinstance(t, str) and t for t in types):
                    raise LitzooError(f"{where}: 'edge_types' must list one relation name per story edge ({len(story)})")
                if not _is_pair(query):
                    raise LitzooError(f"{where}: 'query_edge' must be a (source, target) integer pair, got {row['query_edge']!r}")
                relation = row["target"].strip()
                if not relation:
                    raise LitzooError(f"{where}: 'target' is empty")
                nodes = {node for edge in story for node in edge}
                if query[0] not in nodes or query[1] not in nodes:
                    raise LitzooError(f"{where}: query node {query[0] if query[0] not in nodes else query[1]} is not in the story's edges")
                length = len(story)
                task = _TASK.fullmatch((row.get("task_name") or "").strip())
                if task is not None:
                    length = int(task.group(2))
                    if task.group(1) == "1" and length != len(story):
                        raise LitzooError(f"{where}: task {row['task_name']} has k = {length} but {len(story)} story edges")
                edges = tuple(sorted({(u, v, t) for (u, v), t in zip(story, types, strict=True)}))
                rows.append(_Story(where, edges, query[0], query[1], relation, length))
    except csv.Error as error:
        raise LitzooError(f"{what} is not a CSV file: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LitzooError(f"{what} cannot be read: {getattr(error, 'strerror', None) or error}") from None
    return rows


def read_clutrr(
    train: Sequence[str | Path],
    test: Sequence[str | Path],
    val: Sequence[str | Path] = (),
    rel_dict: str | Path | None = None,
    min_cutoff: int = 2,
) -> RelationPathData:
    """The queries of CLUTRR CSV files, split by split (the files of a split concatenated in the order given).

    Raises:
        LitzooError: a missing file, a missing column, or a malformed row, naming the file and row: a cell that is not a
            Python literal, edges and relations of different counts, a query node not in the story, an unknown relation
            (with ``rel_dict``), no path between the query nodes; a malformed ``rel_dict``.
    """
    rows = {
        split: [row for file in files for row in _read_clutrr_file(Path(file).expanduser())]
        for split, files in (("train", train), ("val", val), ("test", test))
        if files
    }
    for split, files in (("train", train), ("val", val), ("test", test)):
        if files and not rows[split]:
            raise LitzooError(f"CLUTRR {split} file(s) {', '.join(map(str, files))} hold no row")
    if rel_dict is not None:
        names = read_rel_dict(rel_dict)
    else:
        names = vocabulary_from_names(
            name for split in rows.values() for row in split for name in [row.relation, *(e[2] for e in row.edges)]
        )
    ids = {name: index for index, name in enumerate(names)}
    splits = {split: _path_queries(split_rows, ids, rel_dict, min_cutoff) for split, split_rows in rows.items()}
    return RelationPathData(splits=splits, relation_names=names, planted_rules=None)


# ---- datasets, the curriculum, the DataModules ---------------------------------------------------------------------
class QueryDataset(Dataset):
    """A split's :class:`PathQuery` list as a map-style dataset."""

    def __init__(self, queries: Sequence[PathQuery]) -> None:
        self.queries = list(queries)

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> PathQuery:
        return self.queries[index]


class CurriculumSampler(EpochShuffleSampler):
    """R5's curriculum: in epoch 0 the indices sorted by ``keys`` (ascending, stable); from epoch 1 on, the permutation of
    :class:`EpochShuffleSampler`, drawn from (seed, epoch). Sharded over DDP ranks as its base (padded to equal shards).

    Args:
        dataset: a sized dataset.
        keys: one sort key per item (the number of relations on a query's longest path).
        seed: the seed of the later epochs' orders.
        num_replicas, rank: as :class:`EpochShuffleSampler`.

    Raises:
        ValueError: ``keys`` and ``dataset`` differ in length.
    """

    def __init__(self, dataset: Sized, keys: Sequence[int], seed: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, seed, num_replicas, rank)
        if len(keys) != len(dataset):
            raise ValueError(f"CurriculumSampler needs one key per item: {len(keys)} keys for {len(dataset)} items")
        self.keys = list(keys)

    @override
    def __iter__(self) -> Iterator[int]:
        if self.epoch > 0:
            return super().__iter__()
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)  # sorted() is stable
        total = self.total_size
        order += (order * (total // max(len(order), 1) + 1))[: total - len(order)]
        return iter(order[self.rank : total : self.num_replicas])


class RelationPathDataModule(SplitsDataModule):
    """The splits of a :class:`RelationPathData`, served as lists of :class:`PathQuery` (``collate_fn=list``); the training
    split through the curriculum. Subclasses implement :meth:`read`.

    After the first use: ``num_relations`` (the UNK slot included), ``relation_names`` (index = id) and ``planted_rules``
    (``(body_left, body_right, head)`` ids of the world's 2-body rules, or ``None``).
    """

    splits = ("train", "val", "test")

    def __init__(self, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.data: RelationPathData | None = None

    def read(self) -> RelationPathData:
        """The queries of every split (read once)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement read()")  # abstract

    def load(self) -> RelationPathData:
        if self.data is None:
            self.data = self.read()
        return self.data

    @property
    def num_relations(self) -> int:
        return len(self.load().relation_names)

    @property
    def relation_names(self) -> list[str]:
        return self.load().relation_names

    @property
    def planted_rules(self) -> list[Rule] | None:
        return self.load().planted_rules

    @override
    def has_split(self, split: str) -> bool:
        return split in self.load().splits

    @override
    def build_datasets(self, split: str) -> dict[str, Dataset]:
        data = self.load()
        if split not in data.splits:
            raise LitzooError(f"{type(self).__name__}: the data has no {split!r} split (it has {sorted(data.splits)})")
        return {name: QueryDataset(queries) for name, queries in data.splits.items()}

    @override
    def make_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        if not shuffle:
            return make_loader(dataset, batch_size, False, self.num_workers, seed=self.shuffle_seed, collate_fn=list)
        sampler = CurriculumSampler(dataset, [query.longest for query in dataset.queries], self.shuffle_seed)
        return ResumableLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers, collate_fn=list, seed=self.shuffle_seed
        )


class GraphLogDataModule(RelationPathDataModule):
    """A GraphLog world folder (see the module docstring), as lists of :class:`PathQuery`.

    Args:
        root: the world folder (``train.jsonl``, ``valid.jsonl``, ``test.jsonl``, ``config.json``).
        label2id: the vocabulary file (default: ``label2id.json`` in the world folder or its parent, else from the data).
        min_cutoff: the first path cutoff tried (2 in the official code).
        batch_size: queries per batch (1 in the official code).
        num_workers: DataLoader workers (the queries are in memory: 0 is fastest).

    Raises:
        ValueError: ``min_cutoff < 1``, ``batch_size < 1`` or ``num_workers < 0``.
    """

    def __init__(self, root: str, label2id: str | None = None, min_cutoff: int = 2, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        if min_cutoff < 1:
            raise ValueError(f"min_cutoff must be >= 1, got {min_cutoff}")
        self.save_hyperparameters()

    def world(self) -> Path:
        """The world folder read."""
        return Path(self.hparams.root).expanduser()

    @override
    def read(self) -> RelationPathData:
        return read_graphlog_world(self.world(), self.hparams.label2id, self.hparams.min_cutoff)


class CLUTRRDataModule(RelationPathDataModule):
    """CLUTRR CSV files (see the module docstring), as lists of :class:`PathQuery`.

    Args:
        train: the training CSV files (the official ``1.2,1.3_train.csv``).
        test: the test CSV files (the official ``1.k_test.csv``; each query keeps its k in ``length``).
        val: validation CSV files (none by default).
        rel_dict: the official ``rel_dict`` vocabulary file (default: built from the data).
        min_cutoff: the first path cutoff tried (2 in the official code).
        batch_size: queries per batch (1 in the official code).
        num_workers: DataLoader workers.

    Raises:
        ValueError: no train or no test file, ``min_cutoff < 1``, ``batch_size < 1`` or ``num_workers < 0``.
    """

    def __init__(
        self,
        train: list[str],
        test: list[str],
        val: list[str] | None = None,
        rel_dict: str | None = None,
        min_cutoff: int = 2,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not train or not test:
            raise ValueError("CLUTRRDataModule needs at least one train and one test CSV file")
        if min_cutoff < 1:
            raise ValueError(f"min_cutoff must be >= 1, got {min_cutoff}")
        self.save_hyperparameters()

    @override
    def read(self) -> RelationPathData:
        hp = self.hparams
        return read_clutrr(hp.train, hp.test, hp.val or (), hp.rel_dict, hp.min_cutoff)


# ---- SYNTHETIC planted GraphLog worlds -----------------------------------------------------------------------------
def relation_name(index: int) -> str:
    """GraphLog's name of base relation ``index``: ``R_<index>_+``."""
    return f"R_{index}_+"


def planted_composition_rules(num_relations: int, num_rules: int, rng: random.Random) -> dict[tuple[int, int], int]:
    """SYNTHETIC rules ``(a, b) -> c`` over relations ``0..num_relations-1``: distinct random bodies (a function of the
    body), the first ``num_relations`` heads a permutation of all relations (each is the head of a rule), the rest random."""
    bodies = list(itertools.product(range(num_relations), repeat=2))
    rng.shuffle(bodies)
    heads = list(range(num_relations))
    rng.shuffle(heads)
    heads += [rng.randrange(num_relations) for _ in range(num_rules - num_relations)]
    return dict(zip(bodies[:num_rules], heads, strict=True))


def derivable_relations(sequence: Sequence[int], rules: dict[tuple[int, int], int]) -> set[int]:
    """Every relation the whole ``sequence`` reduces to by merging adjacent pairs with ``rules``, in any order (CYK)."""
    n = len(sequence)
    table = {(i, i): {relation} for i, relation in enumerate(sequence)}
    for width in range(2, n + 1):
        for i in range(n - width + 1):
            j = i + width - 1
            table[(i, j)] = {rules[(a, b)] for m in range(i, j) for a in table[(i, m)] for b in table[(m + 1, j)] if (a, b) in rules}
    return table[(0, n - 1)]


def _expand(
    target: int, length: int, bodies_of: dict[int, list[tuple[int, int]]], rng: random.Random
) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """The query relation expanded backwards ``length - 1`` times: (descriptor, rule bodies used, their positions)."""
    sequence, used, positions = [target], [], []
    for _ in range(length - 1):
        position = rng.randrange(len(sequence))
        body = rng.choice(bodies_of[sequence[position]])
        sequence[position : position + 1] = list(body)
        used.append(body)
        positions.append(position)
    return sequence, used, positions


def planted_story(
    length: int,
    rules: dict[tuple[int, int], int],
    num_relations: int,
    rng: random.Random,
    dead_ends: int = 4,
    detours: int = 1,
    max_tries: int = 1000,
) -> dict[str, Any]:
    """One SYNTHETIC GraphLog story line (a dict in the exact format) whose resolution path has ``length`` relations and
    reduces to its target under ``rules`` whichever adjacent pairs are merged first (see the module docstring)."""
    bodies_of: dict[int, list[tuple[int, int]]] = {}
    for body, head in sorted(rules.items()):
        bodies_of.setdefault(head, []).append(body)
    for _ in range(max_tries):
        target = rng.randrange(num_relations)
        sequence, used, positions = _expand(target, length, bodies_of, rng)
        if derivable_relations(sequence, rules) == {target}:
            break
    else:
        raise ValueError(f"no story of length {length} in {max_tries} tries reduces to one relation only: too many rules for this length")
    edges = [(i, i + 1, relation) for i, relation in enumerate(sequence)]
    path_edges = list(edges)
    count = length + 1
    for _ in range(detours):  # a longer second route between two path nodes: beyond the minimal cutoff
        start = rng.randrange(length)
        end = rng.randrange(start + 1, length + 1)
        hops = end - start + 1 + rng.randrange(2)
        route = [start] + list(range(count, count + hops - 1)) + [end]
        count += hops - 1
        edges += [(u, v, rng.randrange(num_relations)) for u, v in itertools.pairwise(route)]
    anchors = list(range(count))
    for _ in range(dead_ends):  # a chain leaving or entering a node: its far end is a sink or a source, on no query path
        chain = [rng.choice(anchors)] + list(range(count, count + 1 + rng.randrange(2)))
        count = chain[-1] + 1
        pairs = list(itertools.pairwise(chain))
        if rng.random() < 0.5:
            pairs = [(v, u) for u, v in pairs]
        edges += [(u, v, rng.randrange(num_relations)) for u, v in pairs]
    if rng.random() < 0.5:
        node = rng.randrange(count)
        edges.append((node, node, rng.randrange(num_relations)))
    rng.shuffle(edges)
    edges += path_edges  # GraphLog's files repeat the resolution path's edges at the end
    ids = list(range(count))
    rng.shuffle(ids)
    return {
        "edges": [[ids[u], ids[v], relation_name(r)] for u, v, r in edges],
        "query": [ids[0], ids[length], relation_name(target)],
        "target": relation_name(target),
        "descriptor": ",".join(relation_name(r) for r in sequence),
        "rules_used": [f"{relation_name(a)},{relation_name(b)}" for a, b in used],
        "rules_used_pos": positions,
        "resolution_path": [ids[i] for i in range(length + 1)],
    }


def check_world_arguments(
    num_relations: int,
    num_rules: int,
    train_lengths: Sequence[int],
    test_lengths: Sequence[int],
    num_train: int,
    num_valid: int,
    num_test_per_length: int,
    dead_ends: int,
    detours: int,
) -> None:
    """Raises ``ValueError`` naming the argument of :func:`write_planted_graphlog_world` that is out of range."""
    if num_relations < 2 or not num_relations <= num_rules <= num_relations**2:
        raise ValueError(f"need 2 <= num_relations <= num_rules <= num_relations**2, got {num_relations} relations and {num_rules} rules")
    if not train_lengths or not test_lengths or min(*train_lengths, *test_lengths) < 2:
        raise ValueError(f"story lengths must be >= 2 (a 1-relation story is the query itself), got {train_lengths} and {test_lengths}")
    if min(num_train, num_valid, num_test_per_length) < 1 or min(dead_ends, detours) < 0:
        raise ValueError("num_train, num_valid and num_test_per_length must be >= 1, dead_ends and detours >= 0")


def write_planted_graphlog_world(
    root: str | Path,
    num_relations: int = 10,
    num_rules: int = 20,
    train_lengths: Sequence[int] = (2, 3),
    test_lengths: Sequence[int] = (4, 5, 6, 7, 8),
    num_train: int = 400,
    num_valid: int = 100,
    num_test_per_length: int = 40,
    dead_ends: int = 4,
    detours: int = 1,
    seed: int = 0,
) -> Path:
    """Write a SYNTHETIC GraphLog world folder ``root``: ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``, ``config.json``
    (its ``rules``, the ground truth, and the generator's arguments) and ``label2id.json``; see the module docstring.

    Train and valid stories cycle through ``train_lengths``, test stories hold ``num_test_per_length`` of each of
    ``test_lengths``. Written atomically; an existing folder written with the same arguments is reused.

    Raises:
        ValueError: sizes out of range (``num_relations <= num_rules <= num_relations**2``, lengths >= 2, counts >= 1,
            distractor counts >= 0).
        LitzooError: ``root`` exists but was written with other arguments (or is not such a world).
    """
    check_world_arguments(
        num_relations, num_rules, train_lengths, test_lengths, num_train, num_valid, num_test_per_length, dead_ends, detours
    )
    arguments = {
        "num_relations": num_relations, "num_rules": num_rules, "train_lengths": list(train_lengths), "test_lengths": list(test_lengths),
        "num_train": num_train, "num_valid": num_valid, "num_test_per_length": num_test_per_length, "dead_ends": dead_ends,
        "detours": detours, "seed": seed,
    }  # fmt: skip
    root = Path(root).expanduser()
    if root.exists():
        try:
            written = json.loads((root / "config.json").read_text(encoding="utf-8")).get("generator")
        except (OSError, ValueError, AttributeError):
            written = None
        if written != arguments:
            raise LitzooError(
                f"'{root}' exists but is not the SYNTHETIC GraphLog world of these arguments ({arguments}); remove it or use another folder"
            )
        return root

    def write(staging: Path) -> None:
        rules = planted_composition_rules(num_relations, num_rules, random.Random(derive_seed(seed, 0)))
        plan = {
            "train": [train_lengths[i % len(train_lengths)] for i in range(num_train)],
            "valid": [train_lengths[i % len(train_lengths)] for i in range(num_valid)],
            "test": [length for length in test_lengths for _ in range(num_test_per_length)],
        }
        for stream, (split, lengths) in enumerate(plan.items(), start=1):
            rng = random.Random(derive_seed(seed, stream))  # each split its own node sampling
            lines = [json.dumps(planted_story(k, rules, num_relations, rng, dead_ends, detours)) for k in lengths]
            (staging / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        config = {
            "SYNTHETIC": "a planted GraphLog-format world written by litzoo (datamodules/relation_paths.py); its rules are the ground truth",
            "num_rel": num_relations,
            "train_descriptor_lengths": ",".join(map(str, train_lengths)),
            "test_descriptor_lengths": ",".join(map(str, test_lengths)),
            "generator": arguments,
            "rules": [
                {"body": [relation_name(a), relation_name(b)], "head": relation_name(c), "p": 1.0} for (a, b), c in sorted(rules.items())
            ],
        }
        (staging / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        label2id = {UNK_REL: 0, **{relation_name(i): i + 1 for i in range(num_relations)}}
        (staging / "label2id.json").write_text(json.dumps(label2id) + "\n", encoding="utf-8")

    generate_folder_atomically(root, write)
    return root


class PlantedGraphLogDataModule(GraphLogDataModule):
    """A SYNTHETIC planted GraphLog world (:func:`write_planted_graphlog_world`), written on first use under
    ``root/SYNTHETIC_graphlog_s<seed>_r<num_relations>_n<num_rules>_<hash of the other arguments>`` and read with the
    GraphLog reader (so the reader runs on every use). ``planted_rules`` are the world's rules as ids.

    Args:
        root: the folder the worlds are written under.
        seed, num_relations, num_rules, train_lengths, test_lengths, num_train, num_valid, num_test_per_length, dead_ends,
            detours: passed to :func:`write_planted_graphlog_world`.
        batch_size, num_workers: as :class:`GraphLogDataModule`.

    Raises:
        ValueError: arguments :func:`write_planted_graphlog_world` refuses (checked here, before anything is written).
    """

    def __init__(
        self,
        root: str = "data/graphlog",
        seed: int = 0,
        num_relations: int = 10,
        num_rules: int = 20,
        train_lengths: tuple[int, ...] = (2, 3),
        test_lengths: tuple[int, ...] = (4, 5, 6, 7, 8),
        num_train: int = 400,
        num_valid: int = 100,
        num_test_per_length: int = 40,
        dead_ends: int = 4,
        detours: int = 1,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        RelationPathDataModule.__init__(self, batch_size, num_workers)  # GraphLogDataModule's arguments are not this class's
        self.save_hyperparameters()
        self.generator_arguments = {
            "num_relations": num_relations, "num_rules": num_rules, "train_lengths": tuple(train_lengths), "test_lengths": tuple(test_lengths),
            "num_train": num_train, "num_valid": num_valid, "num_test_per_length": num_test_per_length, "dead_ends": dead_ends,
            "detours": detours, "seed": seed,
        }  # fmt: skip
        check_world_arguments(**{k: v for k, v in self.generator_arguments.items() if k != "seed"})  # now, not at the first loader
        digest = hashlib.sha1(json.dumps(self.generator_arguments, sort_keys=True, default=list).encode()).hexdigest()[:8]
        self.world_folder = Path(root).expanduser() / f"SYNTHETIC_graphlog_s{seed}_r{num_relations}_n{num_rules}_{digest}"

    @override
    def world(self) -> Path:
        return write_planted_graphlog_world(self.world_folder, **self.generator_arguments)

    @override
    def read(self) -> RelationPathData:
        return read_graphlog_world(self.world(), None, 2)


__all__ = [
    "CLUTRRDataModule",
    "CurriculumSampler",
    "GraphLogDataModule",
    "PlantedGraphLogDataModule",
    "QueryDataset",
    "RelationPathData",
    "RelationPathDataModule",
    "UNK_REL",
    "check_world_arguments",
    "derivable_relations",
    "planted_composition_rules",
    "planted_story",
    "read_clutrr",
    "read_graphlog_world",
    "read_label2id",
    "read_rel_dict",
    "relation_name",
    "vocabulary_from_names",
    "write_planted_graphlog_world",
]
