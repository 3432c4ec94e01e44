"""Knowledge-graph triples in the official repositories' format, and a SYNTHETIC planted-rule graph with its ground truth.

:class:`KnowledgeGraphDataModule` reads a PathCon / GraIL folder (``{train,valid,test}.txt`` of
``head<TAB>relation<TAB>tail``, optional ``entities.dict`` / ``relations.dict``; see
:mod:`litzoo.framework.graphs.triples`). Transductive: the three splits of ``root``. Inductive (GraIL's layout,
``inductive=True``): train / valid from ``<name>_v1`` and test queries from ``<name>_v1_ind``, answered over that folder's
own ``train.txt`` graph (disjoint entities, training relation ids). Batches are ``{"head", "relation", "tail"}`` long.

:func:`write_planted_rule_kg` writes a SYNTHETIC graph in the same format: random sparse base relations and derived
relations planted by composition rules ``d(x, z) <= b1(x, y) AND b2(y, z)`` with noise (a fraction of the derived facts
dropped and as many false ones added), emitted twice with disjoint entities (``SYNTHETIC_planted_v1`` and
``SYNTHETIC_planted_v1_ind``) and the ground-truth rules in ``rules.tsv`` next to them. Its held-out triples are derived
facts (their rule body is in the training graph), so a rule learner can answer them and recall the rules.

:class:`PackagedKGDataModule` reads the real Nations, Kinships and UMLS graphs that ship as ``{train,valid,test}.txt``
(``head<TAB>relation<TAB>tail``, the same format) inside the ``pykeen`` wheel, located with ``importlib.util.find_spec``
without importing pykeen (slow and heavy). Their sizes, checked by the tests (entities / relations / train / valid / test):
Nations 14 / 55 / 1592 / 199 / 201, Kinships 104 / 25 / 8544 / 1068 / 1074, UMLS 135 / 46 / 5216 / 652 / 661. No valid or
test triple of the three has an entity or a relation absent from ``train.txt`` (0 of each, counted on pykeen 1.11), so
they are read in the transductive setting with that check on: a copy where it fails is refused, naming file and line.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Literal

from torch import Tensor

from litzoo.framework.data import DictTensorDataset, SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.graphs.triples import KnowledgeGraph, inductive_folder, read_inductive, read_triples_folder

#: The default planted rules over base relations 0..5: (derived, body1, body2) means d(x, z) <= b1(x, y) AND b2(y, z).
DEFAULT_RULES = ((0, 0, 1), (1, 2, 3), (2, 4, 5), (3, 1, 2))


class KnowledgeGraphDataModule(SplitsDataModule):
    """Triples of a knowledge graph folder, batched as ``{"head": (B,), "relation": (B,), "tail": (B,)}`` long.

    After ``setup``: ``graph`` holds the training folder (vocabularies, all splits' id tensors); ``test_graph`` the
    ``_ind`` folder in the inductive setting (else ``graph``), whose ``splits["train"]`` is the graph test queries are
    answered over.

    Args:
        root: the folder in the official layout (the training folder ``<name>_v1`` when inductive).
        batch_size: triples per batch.
        inductive: read the test split from ``<root>_ind`` (or ``test_root``) instead of ``root/test.txt``.
        test_root: the inductive test folder when it is not named ``<root>_ind``.
        require_seen_entities: in the transductive setting every valid/test entity must occur in ``train.txt``.
        num_workers: DataLoader workers (the triples are in memory; 0 is fastest).
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        inductive: bool = False,
        test_root: str | None = None,
        require_seen_entities: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if test_root is not None and not inductive:
            raise ValueError("test_root is only read in the inductive setting (inductive=True)")
        self.save_hyperparameters()
        self.graph: KnowledgeGraph | None = None
        self.test_graph: KnowledgeGraph | None = None

    def load(self) -> None:
        """Read the folder(s) once."""
        if self.graph is not None:
            return
        hp = self.hparams
        if hp.inductive:
            self.graph, self.test_graph = read_inductive(hp.root, hp.test_root)
        else:
            self.graph = read_triples_folder(hp.root, require_seen_entities=hp.require_seen_entities)
            self.test_graph = self.graph

    @property
    def cache_folder(self) -> Path | None:
        """Where a method may keep tables it derives from this graph (PathCon's path cache): the training folder;
        ``None`` when nothing may be written next to the data."""
        self.load()
        return self.graph.folder

    @property
    def num_entities(self) -> int:
        self.load()
        return self.graph.num_entities

    @property
    def num_relations(self) -> int:
        self.load()
        return self.graph.num_relations

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        self.load()
        parts = {"train": self.graph.splits["train"], "val": self.graph.splits.get("valid"), "test": self.test_graph.splits.get("test")}
        datasets = {}
        for name, triples in parts.items():
            if triples is None or len(triples) == 0:
                if name == "train" or name == split:
                    folder = self.test_graph.folder if name == "test" else self.graph.folder
                    raise LitzooError(f"{folder}: the {name} split is missing or empty")
                continue
            datasets[name] = triples_dataset(triples)
        return datasets


def triples_dataset(triples: Tensor) -> DictTensorDataset:
    """``(N, 3)`` (head, relation, tail) as a dataset of ``{"head", "relation", "tail"}`` items."""
    return DictTensorDataset(head=triples[:, 0].contiguous(), relation=triples[:, 1].contiguous(), tail=triples[:, 2].contiguous())


# ---- SYNTHETIC planted-rule knowledge graph ----------------------------------------------------------------------
def planted_rule_triples(
    num_entities: int, num_base: int, rules: tuple[tuple[int, int, int], ...], edges_per_relation: int, noise: float, rng: random.Random
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """SYNTHETIC ``(base facts, derived facts)`` as (head, relation, tail) ids; derived relation k has id ``num_base + k``.

    Derived facts are every composition ``b1(x, y), b2(y, z)`` with ``x != z``; then ``noise`` of them are dropped and as
    many random false derived facts added."""
    base = set()
    for relation in range(num_base):
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < edges_per_relation:
            x, y = rng.randrange(num_entities), rng.randrange(num_entities)
            if x != y:
                pairs.add((x, y))
        base.update((x, relation, y) for x, y in pairs)
    by_relation: dict[int, list[tuple[int, int]]] = {}
    for x, relation, y in sorted(base):
        by_relation.setdefault(relation, []).append((x, y))
    derived = set()
    for k, (_, body1, body2) in enumerate(rules):
        starts: dict[int, list[int]] = {}
        for y, z in by_relation.get(body2, []):
            starts.setdefault(y, []).append(z)
        for x, y in by_relation.get(body1, []):
            for z in starts.get(y, []):
                if x != z:
                    derived.add((x, num_base + k, z))
    derived_list = sorted(derived)
    rng.shuffle(derived_list)
    dropped = int(round(noise * len(derived_list)))
    kept = derived_list[dropped:]
    known = base | derived
    false = set()
    while len(false) < dropped:
        x, z, k = rng.randrange(num_entities), rng.randrange(num_entities), rng.randrange(len(rules))
        if x != z and (x, num_base + k, z) not in known:
            false.add((x, num_base + k, z))
    return sorted(base), kept + sorted(false)


def _write_planted_folder(folder: Path, prefix: str, relation_names: list[str], base: list, derived: list, held_out: float, rng: random.Random) -> None:
    derived = list(derived)
    rng.shuffle(derived)
    n_held = int(held_out * len(derived))
    valid, test, train_derived = derived[:n_held], derived[n_held : 2 * n_held], derived[2 * n_held :]
    train = sorted(base) + sorted(train_derived)
    folder.mkdir()
    for name, rows in (("train", train), ("valid", sorted(valid)), ("test", sorted(test))):
        with open(folder / f"{name}.txt", "w", encoding="utf-8") as handle:
            handle.writelines(f"{prefix}{h}\t{relation_names[r]}\t{prefix}{t}\n" for h, r, t in rows)
    with open(folder / "relations.dict", "w", encoding="utf-8") as handle:
        handle.writelines(f"{i}\t{name}\n" for i, name in enumerate(relation_names))


def write_planted_rule_kg(
    root: str | Path,
    num_entities: int = 300,
    num_base: int = 6,
    rules: tuple[tuple[int, int, int], ...] = DEFAULT_RULES,
    edges_per_relation: int = 300,
    noise: float = 0.05,
    held_out: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write the SYNTHETIC planted-rule graph under ``root``: ``SYNTHETIC_planted_v1/``, ``SYNTHETIC_planted_v1_ind/``
    (disjoint entities ``e*`` and ``ind_e*``, the same rules, another draw) and ``rules.tsv``
    (``derived<TAB>body1<TAB>body2``, the ground truth). Valid / test hold ``held_out`` each of the derived facts.
    Returns the training folder. Written atomically; an existing complete folder is reused.

    Raises:
        ValueError: bad sizes, a rule naming a base relation out of range, noise or held_out outside [0, 0.5).
    """
    if num_entities < 3 or num_base < 1 or edges_per_relation < 1:
        raise ValueError("num_entities must be >= 3, num_base and edges_per_relation >= 1")
    if edges_per_relation > num_entities * (num_entities - 1):
        raise ValueError(f"edges_per_relation {edges_per_relation} exceeds the {num_entities * (num_entities - 1)} possible edges")
    if not rules or any(len(rule) != 3 or not all(0 <= b < num_base for b in rule[1:]) for rule in rules):
        raise ValueError(f"rules must be (derived, body1, body2) with bodies in 0..{num_base - 1}, got {rules}")
    if not (0 <= noise < 0.5 and 0 < held_out < 0.5):
        raise ValueError(f"noise must be in [0, 0.5) and held_out in (0, 0.5), got {noise} and {held_out}")
    root = Path(root)
    target = root / "SYNTHETIC_planted"
    train_folder = target / "SYNTHETIC_planted_v1"
    if (target / "rules.tsv").is_file():
        return train_folder
    relation_names = [f"base_{i}" for i in range(num_base)] + [f"derived_{k}" for k in range(len(rules))]

    def write(staging: Path) -> None:
        for offset, (name, prefix) in enumerate((("SYNTHETIC_planted_v1", "e"), ("SYNTHETIC_planted_v1_ind", "ind_e"))):
            rng = random.Random(seed * 2 + offset)
            base, derived = planted_rule_triples(num_entities, num_base, tuple(rules), edges_per_relation, noise, rng)
            _write_planted_folder(staging / name, prefix, relation_names, base, derived, held_out, rng)
        with open(staging / "rules.tsv", "w", encoding="utf-8") as handle:
            handle.write("# SYNTHETIC ground truth: derived(x, z) <= body1(x, y) AND body2(y, z)\n")
            handle.writelines(f"derived_{k}\tbase_{b1}\tbase_{b2}\n" for k, (_, b1, b2) in enumerate(rules))

    generate_folder_atomically(target, write)
    return train_folder


class PlantedRuleKGDataModule(KnowledgeGraphDataModule):
    """The SYNTHETIC planted-rule graph of :func:`write_planted_rule_kg`, generated into
    ``root/seed<seed>-n<num_entities>-e<edges_per_relation>-noise<noise>`` when missing and read as
    :class:`KnowledgeGraphDataModule` (transductive: the ``_v1`` folder; ``inductive=True``: test from ``_v1_ind``).

    Args:
        root: folder the generated graphs are written under.
        seed, num_entities, edges_per_relation, noise: passed to :func:`write_planted_rule_kg` (default rules).
        batch_size, inductive, num_workers: as :class:`KnowledgeGraphDataModule`.
    """

    def __init__(
        self,
        root: str = "data/knowledge_graphs",
        seed: int = 0,
        num_entities: int = 300,
        edges_per_relation: int = 300,
        noise: float = 0.05,
        batch_size: int = 128,
        inductive: bool = False,
        num_workers: int = 0,
    ) -> None:
        folder = Path(root).expanduser() / f"seed{seed}-n{num_entities}-e{edges_per_relation}-noise{noise:g}"
        self.train_folder = write_planted_rule_kg(folder, num_entities=num_entities, edges_per_relation=edges_per_relation, noise=noise, seed=seed)
        super().__init__(str(self.train_folder), batch_size=batch_size, inductive=inductive, num_workers=num_workers)

    def load(self) -> None:
        # hparams hold this class's arguments (root is the parent folder), so read the generated folder directly
        if self.graph is None:
            if self.hparams.inductive:
                self.graph, self.test_graph = read_inductive(self.train_folder)
            else:
                self.graph = self.test_graph = read_triples_folder(self.train_folder)


# ---- the real Nations / Kinships / UMLS graphs of the pykeen wheel ------------------------------------------------------
PACKAGED_DATASETS = ("nations", "kinships", "umls")


def pykeen_datasets_folder() -> Path:
    """The ``datasets`` folder of the installed ``pykeen`` package, found without importing it.

    Raises:
        LitzooError: pykeen is not installed (one line saying how to install it or where to point ``root``).
    """
    spec = importlib.util.find_spec("pykeen")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LitzooError(
            "the Nations / Kinships / UMLS graphs are read from the pykeen wheel, which is not installed: "
            'pip install "litzoo[kg]", or pass root= a folder holding <dataset>/{train,valid,test}.txt'
        )
    return Path(locations[0]) / "datasets"


class PackagedKGDataModule(KnowledgeGraphDataModule):
    """A real knowledge graph shipped inside the pykeen wheel (Nations, Kinships or UMLS), read as
    :class:`KnowledgeGraphDataModule` (transductive; every valid / test entity occurs in ``train.txt``).

    One class with a ``dataset`` option rather than three: the three differ only in a folder name, and the run folder
    of a config still tells them apart (``configs/pathcon/nations.yaml`` -> ``runs/pathcon/packagedkg-nations``).

    Args:
        dataset: ``"nations"`` (14 entities, 55 relations), ``"kinships"`` (104, 25) or ``"umls"`` (135, 46).
        root: a folder holding ``<dataset>/{train,valid,test}.txt`` (a copy of pykeen's ``datasets`` folder); default:
            the installed pykeen's, which needs ``pip install "litzoo[kg]"``.
        cache_root: where methods may write tables derived from the graph (PathCon's path cache), under
            ``<cache_root>/<dataset>``; ``None`` (default) writes nothing: an installed package is not a cache folder.
        batch_size, num_workers: as :class:`KnowledgeGraphDataModule`.

    Raises:
        ValueError: an unknown ``dataset``.
        LitzooError: pykeen missing (and no ``root``); a missing or malformed file (file and line).
    """

    def __init__(
        self,
        dataset: Literal["nations", "kinships", "umls"] = "nations",
        root: str | None = None,
        cache_root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        if dataset not in PACKAGED_DATASETS:
            raise ValueError(f"dataset must be one of {PACKAGED_DATASETS}, got {dataset!r}")
        self.folder = (Path(root).expanduser() if root is not None else pykeen_datasets_folder()) / dataset
        super().__init__(str(self.folder), batch_size=batch_size, num_workers=num_workers)

    def load(self) -> None:
        # hparams hold this class's arguments (root is the parent folder), so read the dataset's folder directly
        if self.graph is None:
            self.graph = self.test_graph = read_triples_folder(self.folder)

    @property
    def cache_folder(self) -> Path | None:
        cache_root = self.hparams.cache_root
        return Path(cache_root).expanduser() / self.hparams.dataset if cache_root is not None else None


def read_planted_rules(path: str | Path) -> list[tuple[str, str, str]]:
    """The ground-truth ``(derived, body1, body2)`` rules of a ``rules.tsv`` written by :func:`write_planted_rule_kg`."""
    rules = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 3:
                raise LitzooError(f"{path}:{number}: expected 'derived<TAB>body1<TAB>body2', got {len(fields)} field(s)")
            rules.append(tuple(fields))
    return rules


__all__ = [
    "PACKAGED_DATASETS",
    "KnowledgeGraphDataModule",
    "PackagedKGDataModule",
    "PlantedRuleKGDataModule",
    "inductive_folder",
    "planted_rule_triples",
    "pykeen_datasets_folder",
    "read_planted_rules",
    "triples_dataset",
    "write_planted_rule_kg",
]
