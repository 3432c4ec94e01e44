"""DistMult: the score and the relation-task loss by hand, a symmetric relation learnt, the link task's unseen entities
kept at their initialisation, and the link task drawing exactly CoMPILE's negatives and ranking candidates."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import litzoo.framework.graphs.negatives as negatives_module
from litzoo.datamodules.knowledge_graph import KnowledgeGraphDataModule, PlantedRuleKGDataModule
from litzoo.framework.graphs import KnowledgeGraph
from litzoo.modules.compile import CoMPILEModule
from litzoo.modules.distmult import DistMult, DistMultModule

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", "devices": 1}


def batch_of(triples: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"head": triples[:, 0], "relation": triples[:, 1], "tail": triples[:, 2]}


def test_score_matches_a_hand_computation():
    torch.manual_seed(0)
    net = DistMult(4, 3, dim=5, num_unseen=2)
    with torch.no_grad():
        net.entity.copy_(torch.tensor([[1.0, 2, 0, 0, 2], [0, 3, 4, 0, 0], [1, 1, 1, 1, 1], [2, 0, 0, 0, 0]]))
        net.relation.copy_(torch.tensor([[1.0, -1, 2, 0, 3], [0.5, 0.5, 0.5, 0.5, 0.5], [2, 0, 0, 1, 0]]))
    # (0, 0, 1): x_0 / 3 = (1, 2, 0, 0, 2) / 3, x_1 / 5 = (0, 3, 4, 0, 0) / 5; sum x_h w_r x_t = 2 * -1 * 3 / 15
    assert net(torch.tensor([0]), torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(-6 / 15)
    # (2, 2, 3): (1, 1, 1, 1, 1) / sqrt 5 and (1, 0, 0, 0, 0): 1 * 2 * 1 / sqrt 5
    assert net(torch.tensor([2]), torch.tensor([2]), torch.tensor([3])).item() == pytest.approx(2 / 5**0.5)
    raw = DistMult(4, 3, dim=5, normalize_entities=False)
    raw.load_state_dict({**net.state_dict(), "unseen": raw.unseen})
    assert raw(torch.tensor([0]), torch.tensor([0]), torch.tensor([1])).item() == pytest.approx(-6.0)
    # every relation at once equals the one-triple score; the score is symmetric in head and tail
    heads, tails = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 0, 5, 0])
    all_relations = net.relation_scores(heads, tails)
    for r in range(3):
        relations = torch.full_like(heads, r)
        torch.testing.assert_close(all_relations[:, r], net(heads, relations, tails))
        torch.testing.assert_close(net(tails, relations, heads), net(heads, relations, tails))


TRAIN = torch.tensor([[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 1, 0], [0, 2, 2], [1, 2, 3]])
GRAPH = KnowledgeGraph([f"e{i}" for i in range(4)], ["a", "b", "c"], {"train": TRAIN, "valid": torch.tensor([[0, 1, 3]]), "test": torch.tensor([[2, 1, 1]])})


@pytest.mark.filterwarnings("ignore:You are trying to .self.log")
def test_relation_loss_is_cross_entropy_of_hand_scores_plus_the_relation_l2():
    torch.manual_seed(1)
    module = DistMultModule(task="relation", dim=6, l2=0.01)
    module.build(GRAPH)
    net = module.net
    x = F.normalize(net.entity.detach(), dim=-1)
    w = net.relation.detach()
    hand = torch.stack([torch.stack([(x[h] * w[r] * x[t]).sum() for r in range(3)]) for h, _, t in TRAIN.tolist()])
    expected = F.cross_entropy(hand, TRAIN[:, 1]) + 0.01 * w.pow(2).sum() / 2
    assert module.training_step(batch_of(TRAIN), 0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_learns_a_symmetric_relation_and_answers_its_reverse(tmp_path):
    # spouse (symmetric) between 2i and 2i + 1, parent from pair i to pair i + 1; train holds one direction of each
    # marriage, test asks the relation of the reversed pairs, which DistMult scores as the trained ones
    folder = tmp_path / "family"
    folder.mkdir()
    pairs = 8
    train = [f"p{2 * i}\tspouse\tp{2 * i + 1}" for i in range(pairs)]
    train += [f"p{2 * i}\tparent\tp{2 * i + 2}" for i in range(pairs - 1)] + [f"p{2 * i + 1}\tparent\tp{2 * i + 3}" for i in range(pairs - 1)]
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "valid.txt").write_text("p1\tspouse\tp0\n")
    (folder / "test.txt").write_text("".join(f"p{2 * i + 1}\tspouse\tp{2 * i}\n" for i in range(1, pairs)))
    L.seed_everything(0, verbose=False)
    dm = KnowledgeGraphDataModule(str(folder), batch_size=8)
    model = DistMultModule(task="relation", dim=16, normalize_entities=False, lr=0.05, l2=0.0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=0, limit_val_batches=0, **QUIET)
    trainer.fit(model, dm)
    before = trainer.test(model, dm, verbose=False)[0]
    trainer = L.Trainer(max_epochs=60, limit_val_batches=0, **QUIET)
    trainer.fit(model, dm)
    after = trainer.test(model, dm, verbose=False)[0]
    assert after["test/hits@1"] == 1.0 and after["test/acc"] == 1.0
    assert before["test/hits@1"] < 0.9  # the untrained control does not answer them


def test_relation_task_refuses_an_inductive_graph():
    with pytest.raises(ValueError, match="task='relation' is transductive"):
        DistMultModule(task="relation").build(GRAPH, KnowledgeGraph(["x", "y", "z"], ["a", "b", "c"], {"train": TRAIN[:1] % 3}))
    with pytest.raises(ValueError, match="task must be one of"):
        DistMultModule(task="tail")


def write_inductive(tmp_path):
    train = tmp_path / "toy_v1"
    train.mkdir()
    (train / "train.txt").write_text("a\tr\tb\nb\ts\tc\nc\tr\td\nd\ts\ta\na\ts\tc\n")
    (train / "valid.txt").write_text("b\tr\tc\n")
    ind = tmp_path / "toy_v1_ind"
    ind.mkdir()
    # "a" is shared with the training graph; x, y, z are unseen
    (ind / "train.txt").write_text("x\tr\ty\ny\ts\tz\nz\tr\ta\na\ts\tx\n")
    (ind / "test.txt").write_text("x\tr\tz\ny\tr\ta\n")
    return train


def test_link_task_maps_test_entities_by_name_and_keeps_unseen_rows_at_init(tmp_path):
    L.seed_everything(0, verbose=False)
    dm = KnowledgeGraphDataModule(str(write_inductive(tmp_path)), batch_size=2, inductive=True)
    model = DistMultModule(task="link", dim=8, ranking_negatives=2)
    trainer = L.Trainer(max_epochs=20, limit_val_batches=0, **QUIET)
    dm.load()
    model.build(dm.graph, dm.test_graph)  # what setup does; fit then keeps this model
    test_graph = dm.test_graph
    assert test_graph.entities == ["x", "y", "z", "a"]
    assert model.test_rows.tolist() == [4, 5, 6, 0]  # a -> its training row; x, y, z -> rows 4, 5, 6 of their own
    assert model.unseen_entities == 3 and model.unseen_triples == 2
    unseen0, entity0 = model.net.unseen.clone(), model.net.entity.detach().clone()
    assert "unseen" not in dict(model.net.named_parameters()) and "unseen" in model.net.state_dict()
    trainer.fit(model, dm)
    result = trainer.test(model, dm, verbose=False)[0]
    assert torch.equal(model.net.unseen, unseen0)  # never trained: still the drawn initialisation
    assert not torch.allclose(model.net.entity, entity0)  # while the training rows moved
    assert result["test/unseen_entities"] == 3 and result["test/unseen_triples"] == 2
    # the score of a test triple reads the mapped rows
    x, r, z = 0, 0, 2
    expected = model.net(torch.tensor([4]), torch.tensor([r]), torch.tensor([6]))
    torch.testing.assert_close(model.score(torch.tensor([[x, r, z]]), "test"), expected)


def test_link_task_draws_compile_s_negatives_and_ranking_candidates(tmp_path, monkeypatch):
    """The same graph, seed and batch: DistMult trains and is evaluated against exactly the triples CoMPILE is."""
    dm = PlantedRuleKGDataModule(root=str(tmp_path), num_entities=24, edges_per_relation=20, inductive=True, batch_size=4)
    dm.load()
    distmult = DistMultModule(task="link", dim=4, num_negatives=2, ranking_negatives=5, negative_seed=3)
    compile_ = CoMPILEModule(hops=1, dim=4, depth=2, num_negatives=2, ranking_negatives=5, negative_seed=3)
    distmult.build(dm.graph, dm.test_graph)
    compile_.build(dm.graph, dm.test_graph)
    assert set(distmult.negatives) == set(compile_.negatives) == {"train", "val", "test"}
    for split in distmult.negatives:
        assert distmult.negatives[split].keys() == compile_.negatives[split].keys()
        for triple, drawn in distmult.negatives[split].items():
            assert torch.equal(drawn, compile_.negatives[split][triple]), (split, triple)
    # both draw their ranking candidates through framework/graphs/negatives.py: record every draw of each test run
    drawn: dict[str, list] = {"distmult": [], "compile": []}
    original = negatives_module.ranking_candidates
    current = {"name": ""}

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn[current["name"]].append(out)
        return out

    monkeypatch.setattr(negatives_module, "ranking_candidates", record)
    for name, model in (("distmult", distmult), ("compile", compile_)):
        current["name"] = name
        L.Trainer(**QUIET).test(model, dm, verbose=False)
    assert drawn["distmult"] == drawn["compile"] and len(drawn["distmult"]) == 2 * len(dm.test_graph.splits["test"])
