"""PackagedKGDataModule: the real Nations / Kinships / UMLS graphs of the pykeen wheel, read without importing pykeen, with
their real sizes; a copy given as root=; the one-line errors for pykeen missing, a malformed row and an unseen entity."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import pytest
import torch

import litzoo.datamodules.knowledge_graph as knowledge_graph
from litzoo.datamodules.knowledge_graph import PackagedKGDataModule, pykeen_datasets_folder
from litzoo.framework.errors import LitzooError

needs_pykeen = pytest.mark.skipif(importlib.util.find_spec("pykeen") is None, reason='the "kg" extra (pykeen) is not installed')

#: (entities, relations, train, valid, test), counted by hand on pykeen 1.11's files (wc -l; the sets of names)
SIZES = {"nations": (14, 55, 1592, 199, 201), "kinships": (104, 25, 8544, 1068, 1074), "umls": (135, 46, 5216, 652, 661)}


@needs_pykeen
@pytest.mark.parametrize("dataset", sorted(SIZES))
def test_reads_the_real_graph_with_its_real_sizes(dataset):
    dm = PackagedKGDataModule(dataset, batch_size=32)
    dm.setup("fit")
    graph = dm.graph
    entities, relations, *splits = SIZES[dataset]
    assert (graph.num_entities, graph.num_relations) == (entities, relations)
    assert [len(graph.splits[s]) for s in ("train", "valid", "test")] == splits
    # ids index the vocabularies: every row read back equals the file's line
    folder = pykeen_datasets_folder() / dataset
    first = (folder / "test.txt").read_text().splitlines()[0].split("\t")
    h, r, t = graph.splits["test"][0].tolist()
    assert [graph.entities[h], graph.relations[r], graph.entities[t]] == first
    # no valid / test entity is missing from train (what the transductive reader checks): counted again here
    train_entities = set(graph.splits["train"][:, [0, 2]].flatten().tolist())
    for split in ("valid", "test"):
        assert set(graph.splits[split][:, [0, 2]].flatten().tolist()) <= train_entities
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"head", "relation", "tail"} and batch["head"].shape == (32,) and batch["relation"].max() < relations
    assert dm.cache_folder is None  # nothing is written into the installed package


@needs_pykeen
def test_nations_holds_a_known_fact():
    dm = PackagedKGDataModule("nations")
    dm.load()
    g = dm.graph
    fact = (g.entities.index("netherlands"), g.relations.index("militaryalliance"), g.entities.index("uk"))
    assert fact in {tuple(row) for row in g.splits["train"].tolist()}


@needs_pykeen
def test_pykeen_is_located_without_being_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "pykeen", raising=False)
    PackagedKGDataModule("umls").load()
    assert "pykeen" not in sys.modules


def test_without_pykeen_one_line_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(knowledge_graph.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(LitzooError) as error:
        PackagedKGDataModule("nations")
    message = str(error.value)
    assert "\n" not in message and 'pip install "litzoo[kg]"' in message and "root=" in message


@needs_pykeen
def test_root_reads_a_copy_and_cache_root_names_the_cache(tmp_path):
    shutil.copytree(pykeen_datasets_folder() / "nations", tmp_path / "nations")
    dm = PackagedKGDataModule("nations", root=str(tmp_path), cache_root=str(tmp_path / "cache"))
    dm.load()
    assert dm.graph.folder == tmp_path / "nations" and len(dm.graph.splits["train"]) == 1592
    assert dm.cache_folder == tmp_path / "cache" / "nations"


@needs_pykeen
def test_a_copy_with_a_malformed_row_or_an_unseen_entity_is_refused_naming_file_and_line(tmp_path):
    shutil.copytree(pykeen_datasets_folder() / "umls", tmp_path / "umls")
    test = tmp_path / "umls" / "test.txt"
    lines = test.read_text().splitlines()
    test.write_text("\n".join(lines[:2] + ["a_concept\tisa"] + lines[2:]) + "\n")
    with pytest.raises(LitzooError, match=r"umls/test\.txt:3: expected 'head<TAB>relation<TAB>tail'"):
        PackagedKGDataModule("umls", root=str(tmp_path)).load()
    test.write_text("\n".join(lines[:4] + ["never_seen\tisa\tbacterium"] + lines[4:]) + "\n")
    with pytest.raises(LitzooError, match=r"umls/test\.txt:5: entity 'never_seen' does not occur in .*train\.txt"):
        PackagedKGDataModule("umls", root=str(tmp_path)).load()


@needs_pykeen
def test_missing_copy_and_unknown_dataset(tmp_path):
    with pytest.raises(LitzooError, match="kinships: not a folder of knowledge-graph triples"):
        PackagedKGDataModule("kinships", root=str(tmp_path)).load()
    with pytest.raises(ValueError, match="dataset must be one of"):
        PackagedKGDataModule("fb15k")


@needs_pykeen
def test_triples_are_the_files_rows_in_order():
    dm = PackagedKGDataModule("kinships")
    dm.load()
    g = dm.graph
    rows = [line.split("\t") for line in (pykeen_datasets_folder() / "kinships" / "valid.txt").read_text().splitlines() if line]
    ids = torch.tensor([[g.entities.index(h), g.relations.index(r), g.entities.index(t)] for h, r, t in rows])
    assert torch.equal(ids, g.splits["valid"])
