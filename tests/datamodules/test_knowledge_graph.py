"""KnowledgeGraphDataModule over the official layout (transductive and GraIL-inductive) and the SYNTHETIC planted-rule graph."""

from __future__ import annotations

import pytest
import torch

from litzoo.datamodules.knowledge_graph import KnowledgeGraphDataModule, read_planted_rules, write_planted_rule_kg
from litzoo.framework.errors import LitzooError
from litzoo.framework.graphs import read_triples_folder


def write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def test_transductive_batches(tmp_path):
    folder = write(tmp_path / "kg", train="a\tr\tb\nb\ts\tc\nc\tr\ta\n", valid="a\ts\tc\n", test="b\tr\tc\n")
    dm = KnowledgeGraphDataModule(root=str(folder), batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"head", "relation", "tail"} and batch["head"].shape == (2,)
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert (test["head"].item(), test["relation"].item(), test["tail"].item()) == (1, 0, 2)
    assert dm.num_entities == 3 and dm.num_relations == 2


def test_inductive_reads_the_ind_folder(tmp_path):
    train = write(tmp_path / "toy_v1", train="a\tr\tb\nb\ts\tc\n", valid="a\ts\tc\n")
    write(tmp_path / "toy_v1_ind", train="x\ts\ty\ny\tr\tz\n", test="x\tr\tz\n")
    dm = KnowledgeGraphDataModule(root=str(train), batch_size=4, inductive=True)
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert test["head"].tolist() == [0] and test["tail"].tolist() == [2] and test["relation"].tolist() == [0]
    assert dm.test_graph.entities == ["x", "y", "z"] and dm.test_graph.splits["train"].shape == (2, 3)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="test_root"):
        KnowledgeGraphDataModule(root=str(tmp_path), test_root=str(tmp_path))
    folder = write(tmp_path / "kg", train="a\tr\tb\n", test="a\tr\tq\n")
    dm = KnowledgeGraphDataModule(root=str(folder))
    with pytest.raises(LitzooError, match=r"test.txt:1: entity 'q'"):
        dm.setup("fit")


def test_planted_rule_graph_holds_its_rules(tmp_path):
    train_folder = write_planted_rule_kg(tmp_path, num_entities=60, edges_per_relation=60, noise=0.0, seed=3)
    assert "SYNTHETIC" in str(train_folder)
    rules = read_planted_rules(train_folder.parent / "rules.tsv")
    assert rules[0] == ("derived_0", "base_0", "base_1") and len(rules) == 4
    for folder in (train_folder, train_folder.with_name(train_folder.name + "_ind")):
        graph = read_triples_folder(folder)
        names = graph.relations
        every = torch.cat([graph.splits[s] for s in ("train", "valid", "test")]).tolist()
        facts = {(names[r], h, t) for h, r, t in every}
        # without noise: a derived fact holds exactly when its rule body does (ground truth recovered from the files)
        for derived, body1, body2 in rules:
            implied = {(x, z) for (r1, x, y) in facts if r1 == body1 for (r2, y2, z) in facts if r2 == body2 and y2 == y and x != z}
            assert {(h, t) for (r, h, t) in facts if r == derived} == implied
        held = torch.cat([graph.splits["valid"], graph.splits["test"]])
        assert all(names[r].startswith("derived_") for r in held[:, 1].tolist())
    train_graph = read_triples_folder(train_folder)
    ind_graph = read_triples_folder(train_folder.with_name(train_folder.name + "_ind"))
    assert not set(train_graph.entities) & set(ind_graph.entities)
    dm = KnowledgeGraphDataModule(root=str(train_folder), inductive=True)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == len(train_graph.splits["train"])


def test_planted_noise_breaks_some_implications(tmp_path):
    folder = write_planted_rule_kg(tmp_path, num_entities=60, edges_per_relation=60, noise=0.2, seed=1)
    graph = read_triples_folder(folder)
    derived = sum(1 for r in torch.cat(list(graph.splits.values()))[:, 1].tolist() if graph.relations[r].startswith("derived_"))
    assert derived > 0
    with pytest.raises(ValueError, match="noise"):
        write_planted_rule_kg(tmp_path / "x", noise=0.7)
