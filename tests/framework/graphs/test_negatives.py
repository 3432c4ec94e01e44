"""Corrupted negatives drawn once per split in CoMPILE's order: never a known triple, one generator across the splits,
the test split over the test graph, reproducible from the seed."""

from __future__ import annotations

import random

import pytest
import torch

from litzoo.framework.graphs import KnowledgeGraph
from litzoo.framework.graphs.negatives import corrupt, known_triples, margin_loss, split_negatives

TRAIN = torch.tensor([[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 1, 4], [4, 0, 5]])
GRAPH = KnowledgeGraph([f"e{i}" for i in range(6)], ["a", "b"], {"train": TRAIN, "valid": torch.tensor([[0, 1, 2]])})
TEST_GRAPH = KnowledgeGraph([f"x{i}" for i in range(5)], ["a", "b"], {"train": TRAIN[:3], "test": torch.tensor([[0, 1, 4], [4, 0, 3]])})


def test_split_negatives_follow_one_generator_in_train_valid_test_order():
    negatives, known = split_negatives(GRAPH, TEST_GRAPH, per_triple=3, seed=7)
    rng = random.Random(7)  # the same draws by hand, split after split
    expected = {
        "train": corrupt(TRAIN, 6, known_triples(GRAPH), rng, 3),
        "val": corrupt(GRAPH.splits["valid"], 6, known_triples(GRAPH), rng, 3),
        "test": corrupt(TEST_GRAPH.splits["test"], 5, known_triples(TEST_GRAPH), rng, 3),
    }
    sources = {"train": GRAPH.splits["train"], "val": GRAPH.splits["valid"], "test": TEST_GRAPH.splits["test"]}
    for split, triples in sources.items():
        got = torch.cat([negatives[split][tuple(row)] for row in triples.tolist()])
        assert torch.equal(got, expected[split]), split
    assert known["train_graph"] == known_triples(GRAPH) and known["test_graph"] == known_triples(TEST_GRAPH)
    for split, graph in (("train", GRAPH), ("val", GRAPH), ("test", TEST_GRAPH)):
        for triple, drawn in negatives[split].items():
            for h, r, t in drawn.tolist():
                assert (h, r, t) not in known_triples(graph) and h != t and r == triple[1]
                assert (h == triple[0]) != (t == triple[2]) and max(h, t) < graph.num_entities  # one side replaced
    again, _ = split_negatives(GRAPH, TEST_GRAPH, per_triple=3, seed=7)
    other, _ = split_negatives(GRAPH, TEST_GRAPH, per_triple=3, seed=8)
    assert all(torch.equal(again["train"][k], v) for k, v in negatives["train"].items())
    assert any(not torch.equal(other["train"][k], v) for k, v in negatives["train"].items())


def test_transductive_shares_the_known_set_and_skips_missing_splits():
    negatives, known = split_negatives(GRAPH, GRAPH, per_triple=1, seed=0)
    assert known["test_graph"] is known["train_graph"] and set(negatives) == {"train", "val"}  # GRAPH has no test split


def test_margin_loss_against_the_mean_of_the_negatives():
    positive = torch.tensor([2.0, 0.0])
    negative = torch.tensor([[1.0, 3.0], [-4.0, 0.0]])  # means 2 and -2
    assert margin_loss(positive, negative, 1.0).item() == pytest.approx(1.0 + 0.0)


def test_link_ranks_and_metrics_by_hand():
    from litzoo.framework.graphs.negatives import link_metrics, link_ranks, ranking_candidates

    known = known_triples(GRAPH)
    positives = torch.tensor([[0, 0, 1], [2, 0, 3]])

    seen = []

    def score(triples):  # the higher the entity ids, the lower the score
        seen.append(triples.tolist())
        return -(triples[:, 0] + triples[:, 2]).float()

    ranks = link_ranks(score, positives, 6, known, 3, seed=5)
    rng = random.Random(5)  # the candidates the function draws: head then tail of each triple, one generator
    expected, drawn = [], []
    for row in positives.tolist():
        for side in ("head", "tail"):
            candidates = ranking_candidates(tuple(row), 6, known, 3, rng, side)
            drawn.append([list(c) for c in candidates])
            s = [-(h + t) for h, _, t in candidates]
            expected.append(1 + sum(v >= s[0] for v in s[1:]))  # pessimistic: ties count ahead
    assert seen == drawn and ranks.tolist() == expected and len(ranks) == 4
    assert torch.equal(link_ranks(score, positives, 6, known, 3, seed=5), ranks)  # a fresh generator per call
    # AUC by hand: positives 0.9, 0.4 against negatives 0.5, 0.1 -> 3 of 4 pairs ordered: ROC-AUC 0.75
    outputs = [(torch.tensor([0.9, 0.5]), torch.tensor([1.0, 0.0]), torch.tensor(2.0), torch.tensor([1.0, 4.0])),
               (torch.tensor([0.4, 0.1]), torch.tensor([1.0, 0.0]), torch.tensor(4.0), torch.empty(0))]  # fmt: skip
    metrics = link_metrics(outputs)
    assert metrics["auc"] == pytest.approx(0.75) and metrics["loss"] == pytest.approx(3.0)
    assert metrics["auc_pr"] == pytest.approx((1.0 + 2 / 3) / 2)  # precision at each positive: 1/1, then 2/3
    assert metrics["mrr"] == pytest.approx((1 + 1 / 4) / 2) and metrics["hits@1"] == 0.5 and metrics["hits@10"] == 1.0
    with pytest.raises(FloatingPointError):
        link_metrics([(torch.tensor([float("nan"), 0.0]), torch.tensor([1.0, 0.0]), torch.tensor(0.0), torch.empty(0))])
