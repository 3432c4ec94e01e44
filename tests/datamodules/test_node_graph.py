"""Node graphs (datamodules/node_graph.py): Planetoid pickles written in their exact format, karate, the SYNTHETIC SBM, the split."""

import collections
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from litzoo.datamodules.node_graph import KarateClubDataModule, load_planetoid, split_edges, stochastic_block_model
from litzoo.framework.errors import LitzooError


def write_planetoid(root, name="toy", protocol=2):
    # 6 nodes: allx rows 0..3 (x = rows 0..1 labelled for training), test nodes at ids 5, 4 (shuffled order, like the real files)
    feats = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    labels = np.eye(2)[[0, 0, 1, 1, 0, 1]]
    test_ids = [5, 4]
    objs = {"x": sp.csr_matrix(feats[:2]), "y": labels[:2], "allx": sp.csr_matrix(feats[:4]), "ally": labels[:4],
            "tx": sp.csr_matrix(feats[test_ids]), "ty": labels[test_ids],
            "graph": collections.defaultdict(list, {0: [1, 2], 1: [0], 2: [0, 3], 3: [2, 4], 4: [3, 5], 5: [4]})}
    for key, obj in objs.items():
        with open(root / f"ind.{name}.{key}", "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    (root / f"ind.{name}.test.index").write_text("\n".join(map(str, test_ids)) + "\n")
    return feats, np.array([0, 0, 1, 1, 0, 1])


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_planetoid_read_back(tmp_path, protocol):
    feats, labels = write_planetoid(tmp_path, protocol=protocol)
    g = load_planetoid(tmp_path, "toy")
    assert torch.equal(g["x"], torch.from_numpy(feats)) and g["y"].tolist() == labels.tolist()
    assert sorted(map(tuple, g["edge_index"].t().tolist())) == sorted(
        [(0, 1), (1, 0), (0, 2), (2, 0), (2, 3), (3, 2), (3, 4), (4, 3), (4, 5), (5, 4)])


def test_planetoid_bad_files(tmp_path):
    write_planetoid(tmp_path)
    (tmp_path / "ind.toy.test.index").write_text("5\nfour\n")
    with pytest.raises(LitzooError, match=r"ind\.toy\.test\.index' line 2"):
        load_planetoid(tmp_path, "toy")
    write_planetoid(tmp_path)
    with open(tmp_path / "ind.toy.graph", "wb") as f:
        pickle.dump(collections.OrderedDict(a=1), f)
    with pytest.raises(LitzooError, match=r"ind\.toy\.graph.*collections\.OrderedDict"):
        load_planetoid(tmp_path, "toy")
    write_planetoid(tmp_path)
    with open(tmp_path / "ind.toy.graph", "wb") as f:
        pickle.dump({0: [9]}, f)
    with pytest.raises(LitzooError, match=r"ind\.toy\.graph.*9"):
        load_planetoid(tmp_path, "toy")


def test_karate_is_the_real_graph():
    dm = KarateClubDataModule()
    dm.setup()
    g = dm.graph
    total = g["edge_index"].shape[1] // 2 + g["val_pos"].shape[1] + g["test_pos"].shape[1]
    assert dm.num_nodes == 34 and total == 78 and int(g["y"].sum()) == 17


def test_sbm_plants_its_blocks():
    g = stochastic_block_model(blocks=3, block_size=30, p_in=0.5, p_out=0.02, seed=1)
    src, dst = g["edge_index"]
    same = (g["y"][src] == g["y"][dst]).float().mean()
    assert same > 0.9  # inside-block edges dominate: 3*C(30,2)*0.5 vs 3*900*0.02
    negative_control = stochastic_block_model(blocks=3, block_size=30, p_in=0.05, p_out=0.04, seed=1)
    s2, d2 = negative_control["edge_index"]
    assert (negative_control["y"][s2] == negative_control["y"][d2]).float().mean() < 0.5


def test_split_is_85_5_10_and_disjoint():
    g = stochastic_block_model(blocks=2, block_size=20, p_in=0.5, p_out=0.05, seed=0)
    e = g["edge_index"].shape[1] // 2
    s = split_edges(g["edge_index"], 40, seed=3)
    assert s["val_pos"].shape[1] == e // 20 and s["test_pos"].shape[1] == e // 10
    assert s["edge_index"].shape[1] // 2 == e - e // 20 - e // 10
    undirected = lambda t: {tuple(sorted(p)) for p in t.t().tolist()}  # noqa: E731
    train, val, test = undirected(s["edge_index"]), undirected(s["val_pos"]), undirected(s["test_pos"])
    negs = undirected(s["val_neg"]) | undirected(s["test_neg"])
    everything = undirected(g["edge_index"])
    assert not (train & val) and not (train & test) and not (val & test) and not (negs & everything)
    assert len(negs) == len(val) + len(test) and all(a != b for a, b in negs)
