"""R5's data: GraphLog worlds and CLUTRR CSVs in their exact formats, the curriculum order, the SYNTHETIC planted worlds."""

from __future__ import annotations

import csv
import functools
import json

import lightning as L
import pytest
import torch

from litzoo.datamodules.relation_paths import (
    CLUTRRDataModule,
    CurriculumSampler,
    GraphLogDataModule,
    PlantedGraphLogDataModule,
    read_clutrr,
    read_graphlog_world,
    read_rel_dict,
    write_planted_graphlog_world,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.graphs.query_paths import PathQuery, query_relation_paths

# ---- GraphLog ----------------------------------------------------------------------------------------------------
LABEL2ID = {"UNK_REL": 0, "R_5_+": 1, "R_1_+": 2, "R_2_+": 3, "R_3_+": 4, "R_4_+": 5}
# a re_* style line: repeated edges (the resolution path again at the end), a self loop, a dead end, two paths of 2 edges
LINE_A = {
    "edges": [[0, 1, "R_1_+"], [1, 2, "R_2_+"], [0, 3, "R_3_+"], [3, 2, "R_4_+"], [2, 2, "R_1_+"], [4, 0, "R_2_+"], [0, 1, "R_1_+"], [1, 2, "R_2_+"]],
    "query": [0, 2, "R_5_+"],
    "target": "R_5_+",
    "descriptor": "R_1_+,R_2_+",
    "rules_used": ["R_1_+,R_2_+"],
    "rules_used_pos": [0],
    "resolution_path": [0, 1, 2],
}
# a world_* style line: no target / descriptor, the length from the resolution path
LINE_B = {"edges": [[5, 6, "R_3_+"], [6, 7, "R_4_+"], [7, 8, "R_1_+"]], "query": [5, 8, "R_2_+"], "rules": [], "resolution_path": [5, 6, 7, 8]}
CONFIG = {"num_rel": 5, "rules": [{"body": ["R_1_+", "R_2_+"], "head": "R_5_+", "p": 1.0}, {"body": "R_3_+", "head": "R_4_+", "p": 1.0}]}


def write_world(folder, train, valid, test, config=CONFIG, label2id=LABEL2ID, label2id_in_parent=True):
    folder.mkdir(parents=True)
    for name, lines in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if label2id is not None:
        (folder.parent if label2id_in_parent else folder).joinpath("label2id.json").write_text(json.dumps(label2id))
    return folder


def test_graphlog_world_reads_paths_targets_lengths_and_rules(tmp_path):
    world = write_world(tmp_path / "world_1", train=[LINE_A, LINE_B, LINE_A], valid=[LINE_A, LINE_B | {"query": [6, 8, "R_2_+"], "resolution_path": [6, 7, 8]}] * 2, test=[LINE_B, LINE_B])
    data = read_graphlog_world(world)  # label2id.json found in the parent folder (the official layout)
    a, b = PathQuery(paths=((2, 3), (4, 5)), target=1, length=2), PathQuery(paths=((4, 5, 2),), target=3, length=3)
    assert data.splits["train"] == [a, b]  # the repeated train line once (the official reads a set), file order kept
    # valid: the line equal to a train line dropped, the repeated valid line once; test kept as it is
    assert data.splits["val"] == [PathQuery(paths=((5, 2),), target=3, length=2)]
    assert data.splits["test"] == [b, b]
    assert data.relation_names == ["UNK_REL", "R_5_+", "R_1_+", "R_2_+", "R_3_+", "R_4_+"]
    assert data.planted_rules == [(2, 3, 1)]  # the 1-body rule (an inverse) is not a composition rule


def test_graphlog_vocabulary_from_the_world_folder_or_the_data(tmp_path):
    world = write_world(tmp_path / "w", train=[LINE_A], valid=[], test=[LINE_B], label2id_in_parent=False)
    (tmp_path / "label2id.json").write_text(json.dumps({"UNK_REL": 0, "R_1_+": 1}))  # the world folder's file comes first
    assert read_graphlog_world(world).splits["test"][0].target == 3
    bare = write_world(tmp_path / "bare" / "w", train=[LINE_A], valid=[], test=[LINE_B], label2id=None)
    data = read_graphlog_world(bare)
    assert data.relation_names == ["UNK_REL", "R_1_+", "R_2_+", "R_3_+", "R_4_+", "R_5_+"]  # sorted, UNK_REL = 0
    assert data.splits["train"] == [PathQuery(paths=((1, 2), (3, 4)), target=5, length=2)]
    assert data.planted_rules == [(1, 2, 5)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2 is not JSON"),
        (json.dumps({"edges": LINE_B["edges"]}), r"line 2 has no 'query'"),
        (json.dumps(LINE_B | {"edges": [[5, 6, "R_9_+"], [6, 8, "R_1_+"]]}), r"line 2: relation 'R_9_\+' is not in the vocabulary"),
        (json.dumps(LINE_B | {"query": [5, 99, "R_2_+"]}), r"line 2: query node 99 is not in the story's edges"),
        (json.dumps(LINE_B | {"query": [8, 5, "R_2_+"]}), r"line 2: no directed path from node"),
        (json.dumps(LINE_A | {"resolution_path": [0, 1, 7, 2]}), r"line 2: the descriptor has 2 relations but the resolution path 3"),
        (json.dumps(LINE_A | {"target": "R_1_+"}), r"line 2: 'target' 'R_1_\+' differs"),
        (json.dumps(LINE_B | {"edges": [[5, 6]]}), r"line 2: edge 0 is \[5, 6\]"),
        (json.dumps({k: v for k, v in LINE_B.items() if k != "resolution_path"}), r"line 2 has neither 'descriptor' nor 'resolution_path'"),
    ],
)
def test_graphlog_malformed_line_names_file_and_line(tmp_path, line, message):
    world = write_world(tmp_path / "w", train=[LINE_A], valid=[], test=[LINE_B])
    with open(world / "test.jsonl", "a") as handle:
        handle.write(line + "\n")
    with pytest.raises(LitzooError, match=r"test\.jsonl' " + message):
        read_graphlog_world(world)


def test_graphlog_bad_config_label2id_and_folder(tmp_path):
    world = write_world(tmp_path / "w", train=[LINE_A], valid=[], test=[LINE_B], config={"rules": [{"body": ["R_1_+", "R_7_+"], "head": "R_5_+"}]})
    with pytest.raises(LitzooError, match=r"config.json': rule relation 'R_7_\+' is not in the vocabulary"):
        read_graphlog_world(world)
    (world / "config.json").write_text(json.dumps({"rules": [{"head": "R_5_+"}]}))
    with pytest.raises(LitzooError, match=r"config.json' rule 0 is"):
        read_graphlog_world(world)
    (world / "config.json").unlink()
    assert read_graphlog_world(world).planted_rules is None
    (tmp_path / "label2id.json").write_text(json.dumps({"R_1_+": 0, "UNK_REL": 1}))
    with pytest.raises(LitzooError, match=r"label2id.json' must give id 0 to UNK_REL"):
        read_graphlog_world(world)
    with pytest.raises(LitzooError, match=r"GraphLog world '.*nowhere' is not a folder"):
        read_graphlog_world(tmp_path / "nowhere")
    (world / "train.jsonl").unlink()
    with pytest.raises(LitzooError, match=r"train.jsonl' cannot be read: it does not exist"):
        read_graphlog_world(world)


# ---- CLUTRR --------------------------------------------------------------------------------------------------------
HEADER = ["", "id", "story", "query", "text_query", "target", "text_target", "clean_story", "proof_state", "f_comb", "task_name"]
HEADER += ["story_edges", "edge_types", "query_edge", "genders", "syn_story", "node_mapping", "task_split"]


def write_clutrr(path, rows):
    """The official CSV layout (pandas' to_csv with its unnamed index column), one row per (target, task, edges, types, query)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for index, target, task, edges, types, query in rows:
            story = "[Ann] and her son [Bob] met [Cal], his brother."
            proof = "[{('Ann', '" + target + "', 'Cal'): [('Ann', 'x', 'Bob'), ('Bob', 'y', 'Cal')]}]"
            writer.writerow(
                [index, f"uuid-{index}", story, "('Ann', 'Cal')", "", target, "['[Ann] and [Cal].']", story, proof, "-".join(types), task]
                + [str(edges), str(types), str(query), "Ann:female,Bob:male,Cal:male", "", "{0: 0, 5: 1, 7: 2}", "test"]
            )
    return str(path)


REL_DICT = "{   1:'aunt', \n    2:'brother', \n    3:'daughter', \n    4:'son', \n    5:'grandson'}"


def test_clutrr_csv_files_per_split(tmp_path):
    train = write_clutrr(tmp_path / "1.2,1.3_train.csv", [(0, "grandson", "task_1.2", [(0, 1), (1, 2)], ["son", "son"], (0, 2))])
    test2 = write_clutrr(tmp_path / "1.2_test.csv", [(0, "aunt", "task_1.2", [(0, 1), (1, 2)], ["brother", "daughter"], (0, 2))])
    test3 = write_clutrr(tmp_path / "1.3_test.csv", [(0, "grandson", "task_1.3", [(2, 1), (1, 0), (0, 3)], ["son", "brother", "son"], (2, 3))])
    (tmp_path / "rel_dict").write_text(REL_DICT)
    data = read_clutrr([train], [test2, test3], rel_dict=tmp_path / "rel_dict")
    assert data.relation_names == ["UNK_REL", "aunt", "brother", "daughter", "son", "grandson"]
    assert data.splits["train"] == [PathQuery(paths=((4, 4),), target=5, length=2)]
    assert data.splits["test"] == [PathQuery(paths=((2, 3),), target=1, length=2), PathQuery(paths=((4, 2, 4),), target=5, length=3)]
    assert "val" not in data.splits and data.planted_rules is None
    # without rel_dict: UNK_REL then the sorted names (the official relation_to_idx)
    assert read_clutrr([train], [test2]).relation_names == ["UNK_REL", "aunt", "brother", "daughter", "grandson", "son"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ((1, "son", "task_1.2", "[(0, 1), (1, 2", ["son", "son"], (0, 2)), r"row 2 \(line 3\): column 'story_edges' is not a Python literal"),
        ((1, "son", "task_1.2", [(0, 1), (1, 2)], ["son"], (0, 2)), r"row 2 \(line 3\): 'edge_types' must list one relation name per story edge"),
        ((1, "niece", "task_1.2", [(0, 1), (1, 2)], ["son", "son"], (0, 2)), r"row 2 \(line 3\): relation 'niece' is not in the vocabulary"),
        ((1, "son", "task_1.3", [(0, 1), (1, 2)], ["son", "son"], (0, 2)), r"row 2 \(line 3\): task task_1.3 has k = 3 but 2 story edges"),
        ((1, "son", "task_1.2", [(0, 1), (1, 2)], ["son", "son"], (2, 0)), r"row 2 \(line 3\): no directed path"),
        ((1, "son", "task_1.2", [(0, 1), (1, 2)], ["son", "son"], (0, 9)), r"row 2 \(line 3\): query node 9 is not in the story's edges"),
    ],
)
def test_clutrr_malformed_row_names_file_and_row(tmp_path, row, message):
    good = (0, "grandson", "task_1.2", [(0, 1), (1, 2)], ["son", "son"], (0, 2))
    path = write_clutrr(tmp_path / "bad.csv", [good, row])
    (tmp_path / "rel_dict").write_text(REL_DICT)
    with pytest.raises(LitzooError, match=r"CLUTRR file '.*bad\.csv' " + message):
        read_clutrr([path], [path], rel_dict=tmp_path / "rel_dict")


def test_clutrr_missing_column_and_module_arguments(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(",id,story_edges,edge_types,target\n0,a,\"[(0, 1)]\",\"['son']\",son\n")
    with pytest.raises(LitzooError, match=r"x.csv' has no column 'query_edge'"):
        read_clutrr([path], [path])
    (tmp_path / "rel_dict").write_text("{1: 'aunt', 3: 'son'}")
    with pytest.raises(LitzooError, match=r"rel_dict' must number its relations 0..2 without gaps"):
        read_rel_dict(tmp_path / "rel_dict")
    (tmp_path / "rel_dict").write_text("{1: 'aunt', 2: __import__('os')}")
    with pytest.raises(LitzooError, match=r"rel_dict' is not a Python dict literal"):  # literal_eval: never run
        read_rel_dict(tmp_path / "rel_dict")
    with pytest.raises(ValueError, match="at least one train and one test"):
        CLUTRRDataModule(train=[str(path)], test=[])
    with pytest.raises(ValueError, match="min_cutoff"):
        GraphLogDataModule(root=str(tmp_path), min_cutoff=0)


# ---- the curriculum ------------------------------------------------------------------------------------------------
def test_curriculum_sorts_epoch_zero_then_shuffles_by_seed_and_epoch():
    keys = [3, 2, 3, 2, 1, 4, 2, 1]
    sampler = CurriculumSampler(list(range(8)), keys, seed=5, num_replicas=1, rank=0)
    assert list(sampler) == [4, 7, 1, 3, 6, 0, 2, 5]  # ascending, ties in index order
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(8)) and first != [4, 7, 1, 3, 6, 0, 2, 5]
    again = CurriculumSampler(list(range(8)), keys, seed=5, num_replicas=1, rank=0)
    again.set_epoch(1)
    assert list(again) == first  # from (seed, epoch) only: a resumed run reads the same order
    sampler.set_epoch(2)
    assert list(sampler) != first
    other = CurriculumSampler(list(range(8)), keys, seed=6, num_replicas=1, rank=0)
    other.set_epoch(1)
    assert list(other) != first
    halves = [list(CurriculumSampler(list(range(8)), keys, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert halves == [[4, 1, 6, 2], [7, 3, 0, 5]]  # DDP: every other index of the sorted order
    with pytest.raises(ValueError, match="one key per item"):
        CurriculumSampler(list(range(3)), [1, 2], seed=0)


def test_graphlog_loaders_yield_lists_and_the_curriculum(tmp_path):
    short = LINE_A | {"query": [4, 2, "R_5_+"], "descriptor": "R_2_+,R_1_+,R_2_+", "resolution_path": [4, 0, 1, 2]}  # 3 edges
    world = write_world(tmp_path / "w", train=[short, LINE_B, LINE_A], valid=[LINE_A | {"query": [1, 2, "R_2_+"], "target": "R_2_+", "descriptor": "R_2_+", "resolution_path": [1, 2]}], test=[LINE_A])
    dm = GraphLogDataModule(root=str(world), batch_size=1)
    dm.setup("fit")
    assert dm.num_relations == 6 and dm.planted_rules == [(2, 3, 1)]
    loader = dm.train_dataloader()
    loader.set_epoch(0)
    epoch0 = [batch for batch in loader]
    assert all(isinstance(batch, list) and len(batch) == 1 and isinstance(batch[0], PathQuery) for batch in epoch0)
    assert [batch[0].longest for batch in epoch0] == [2, 3, 3] and epoch0[1][0].length == 3 and epoch0[2][0].length == 3
    assert list(dm.val_dataloader()) == [[PathQuery(paths=((3,),), target=3, length=1)]]
    only_train_lines = write_world(tmp_path / "x" / "w", train=[LINE_A], valid=[LINE_A], test=[LINE_B])
    dm = GraphLogDataModule(root=str(only_train_lines))
    assert dm.val_dataloader() == []  # every valid line was a train line: no validation (as without valid.jsonl)
    (only_train_lines / "test.jsonl").write_text("\n")
    with pytest.raises(LitzooError, match=r"test.jsonl' holds no story"):
        GraphLogDataModule(root=str(only_train_lines)).setup("test")


class _Recorder(L.LightningModule):
    """Records the training batches of each epoch (no parameters are learnt: the point is the order Lightning feeds)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[PathQuery]] = {}

    def training_step(self, batch, batch_index):
        self.seen.setdefault(self.current_epoch, []).extend(batch)
        return self.weight.sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_feeds_the_curriculum_then_seeded_shuffles(tmp_path):
    root = tmp_path / "worlds"
    orders = []
    for _ in range(2):
        dm = PlantedGraphLogDataModule(root=str(root), num_train=12, num_valid=2, num_test_per_length=1, test_lengths=(4,), batch_size=2)
        model = _Recorder()
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.fit(model, datamodule=dm)
        index = {id(query): i for i, query in enumerate(dm.datasets["train"].queries)}  # equal queries may repeat: by identity
        orders.append([[index[id(query)] for query in model.seen[e]] for e in range(3)])
    epoch0 = [dm.datasets["train"][i].longest for i in orders[0][0]]
    assert epoch0 == sorted(epoch0) and orders[0][0] == sorted(orders[0][0], key=lambda i: (dm.datasets["train"][i].longest, i))
    assert sorted(orders[0][1]) == list(range(12)) and orders[0][1] != orders[0][0] and orders[0][2] != orders[0][1]
    assert orders[0] == orders[1]  # the same seed, the same orders


# ---- the SYNTHETIC planted worlds ----------------------------------------------------------------------------------
SMALL = {"num_train": 24, "num_valid": 8, "num_test_per_length": 6, "seed": 3}


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def replay(descriptor, rules_used, positions, rules):
    """Undo GraphLog's recorded expansion: merge rules_used[i] at rules_used_pos[i], last step first."""
    sequence = descriptor.split(",")
    for body, position in reversed(list(zip(rules_used, positions, strict=True))):
        left, right = body.split(",")
        assert sequence[position : position + 2] == [left, right]
        sequence[position : position + 2] = [rules[(left, right)]]
    return sequence


def every_reduction(sequence, rules):
    """All relations a sequence reduces to, trying every order of adjacent merges (brute force)."""

    @functools.cache
    def reduce(seq):
        if len(seq) == 1:
            return {seq[0]}
        out = set()
        for i in range(len(seq) - 1):
            if (seq[i], seq[i + 1]) in rules:
                out |= reduce(seq[:i] + (rules[(seq[i], seq[i + 1])],) + seq[i + 2 :])
        return out

    return reduce(tuple(sequence))


def test_planted_world_is_graphlog_and_every_story_resolves(tmp_path):
    world = write_planted_graphlog_world(tmp_path / "world", **SMALL)
    assert sorted(p.name for p in world.iterdir()) == ["config.json", "label2id.json", "test.jsonl", "train.jsonl", "valid.jsonl"]
    config = json.loads((world / "config.json").read_text())
    assert "SYNTHETIC" in config
    rules = {tuple(rule["body"]): rule["head"] for rule in config["rules"]}
    assert len(rules) == len(config["rules"]) == 20  # a function of the body
    assert {rule["head"] for rule in config["rules"]} == {f"R_{i}_+" for i in range(10)}  # every relation is a head
    label2id = json.loads((world / "label2id.json").read_text())
    assert label2id["UNK_REL"] == 0 and sorted(label2id.values()) == list(range(11))
    lengths = {}
    for split in ("train", "valid", "test"):
        for story in read_lines(world / f"{split}.jsonl"):
            descriptor = story["descriptor"].split(",")
            lengths.setdefault(split, set()).add(len(descriptor))
            assert replay(story["descriptor"], story["rules_used"], story["rules_used_pos"], rules) == [story["target"]]
            assert every_reduction(descriptor, rules) == {story["target"]}  # whatever the merge order
            path = story["resolution_path"]
            assert [path[0], path[-1], story["target"]] == story["query"] and len(path) == len(descriptor) + 1
            assert all([u, v, r] in story["edges"] for u, v, r in zip(path, path[1:], descriptor, strict=False))
            # what R5 reads is the resolution path alone: dead ends are on no query path, the detour is beyond the cutoff
            edges = [(u, v, label2id[r]) for u, v, r in story["edges"]]
            assert query_relation_paths(edges, path[0], path[-1]) == (tuple(label2id[r] for r in descriptor),)
            longer = query_relation_paths(edges, path[0], path[-1], min_cutoff=len(descriptor) + 2)
            assert len(longer) > 1 and all(len(p) > len(descriptor) for p in longer[1:])  # the detour exists
    assert lengths == {"train": {2, 3}, "valid": {2, 3}, "test": {4, 5, 6, 7, 8}}


def test_planted_world_is_deterministic_per_seed_and_reused(tmp_path):
    one = write_planted_graphlog_world(tmp_path / "a", **SMALL)
    two = write_planted_graphlog_world(tmp_path / "b", **SMALL)
    other = write_planted_graphlog_world(tmp_path / "c", **(SMALL | {"seed": 4}))
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "config.json", "label2id.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert (one / "test.jsonl").read_bytes() != (other / "test.jsonl").read_bytes()
    assert (one / "config.json").read_bytes() != (other / "config.json").read_bytes()
    train, valid = read_lines(one / "train.jsonl"), read_lines(one / "valid.jsonl")
    assert not {json.dumps(s) for s in train} & {json.dumps(s) for s in valid}  # valid draws its own stories
    assert write_planted_graphlog_world(tmp_path / "a", **SMALL) == one  # reused
    with pytest.raises(LitzooError, match="not the SYNTHETIC GraphLog world of these arguments"):
        write_planted_graphlog_world(tmp_path / "a", **(SMALL | {"num_train": 25}))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    with pytest.raises(ValueError, match="num_rules"):
        write_planted_graphlog_world(tmp_path / "d", num_relations=10, num_rules=5)
    with pytest.raises(ValueError, match="lengths must be >= 2"):
        write_planted_graphlog_world(tmp_path / "d", train_lengths=(1, 2))
    with pytest.raises(ValueError, match="num_train"):
        PlantedGraphLogDataModule(root=str(tmp_path), num_train=0)


def test_planted_datamodule_reads_its_world_with_the_graphlog_reader(tmp_path):
    dm = PlantedGraphLogDataModule(root=str(tmp_path), **SMALL)
    dm.setup()
    assert dm.world_folder.name.startswith("SYNTHETIC_graphlog_s3_r10_n20_") and dm.world_folder.is_dir()
    config = json.loads((dm.world_folder / "config.json").read_text())
    ids = {name: i for i, name in enumerate(dm.relation_names)}
    assert dm.num_relations == 11 and dm.relation_names[0] == "UNK_REL"
    assert dm.planted_rules == [(ids[r["body"][0]], ids[r["body"][1]], ids[r["head"]]) for r in config["rules"]]
    stories = read_lines(dm.world_folder / "test.jsonl")
    assert [q.length for q in dm.datasets["test"].queries] == [len(s["descriptor"].split(",")) for s in stories]
    assert [q.target for q in dm.datasets["test"].queries] == [ids[s["target"]] for s in stories]
    assert all(q.paths == (tuple(ids[r] for r in s["descriptor"].split(",")),) for q, s in zip(dm.datasets["test"].queries, stories, strict=True))
    assert len(dm.datasets["train"]) == 24 and len(dm.datasets["val"]) == 8 and len(dm.datasets["test"]) == 30
