"""Filtered ranks against a brute-force count, tie policies by hand, PathCon's -1 filter and argsort, MRR / Hits@k."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.graphs import filter_mask, filtered_ranks, ranking_metrics, true_answers


def test_ties_by_hand():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
    target = torch.tensor([0])
    # one strictly higher (0.9), two tied with the target
    assert filtered_ranks(scores, target, ties="optimistic").item() == 2
    assert filtered_ranks(scores, target, ties="pessimistic").item() == 4
    assert filtered_ranks(scores, target, ties="realistic").item() == 3
    # a constant scorer ranks last under the default
    assert filtered_ranks(torch.zeros(1, 7), target).item() == 7


def test_filter_removes_other_true_answers_not_the_target():
    scores = torch.tensor([[0.2, 0.9, 0.8, 0.1]])
    target = torch.tensor([3])
    filt = torch.tensor([[False, True, False, True]])  # the target's own flag is ignored
    assert filtered_ranks(scores, target).item() == 4
    assert filtered_ranks(scores, target, filt).item() == 3


def test_pathcon_relation_filter_equivalence():
    """PathCon subtracts 1 from the probabilities of other true relations and ranks with argsort; without ties the
    ranks agree with ours."""
    torch.manual_seed(0)
    triples = torch.tensor([[0, 1, 2], [0, 3, 2], [0, 4, 2], [1, 0, 3], [1, 2, 3], [2, 5, 0]])
    answers = true_answers([triples], "relation")
    probs = torch.softmax(torch.randn(len(triples), 6), dim=1)
    ours = filtered_ranks(probs, triples[:, 1], filter_mask(triples, "relation", answers, 6))
    official = probs.clone().numpy()
    for i, (h, r, t) in enumerate(triples.tolist()):
        for j in answers[(h, t)] - {r}:
            official[i, j] -= 1.0
    import numpy as np

    order = np.argsort(-official, axis=1)
    expected = np.argwhere(order == triples[:, 1].numpy()[:, None])[:, 1] + 1
    assert ours.tolist() == expected.tolist()


def test_against_brute_force():
    torch.manual_seed(1)
    triples = torch.randint(0, 12, (40, 3))
    triples[:, 1] %= 3
    answers = true_answers([triples[:30], triples[30:]], "tail")
    queries = triples[30:]
    scores = torch.randn(len(queries), 12)
    mask = filter_mask(queries, "tail", answers, 12)
    ranks = filtered_ranks(scores, queries[:, 2], mask)
    for i, (h, r, t) in enumerate(queries.tolist()):
        others = [c for c in range(12) if c != t and c not in answers[(h, r)]]
        assert ranks[i].item() == 1 + sum(scores[i, c] > scores[i, t] for c in others)
    metrics = ranking_metrics(ranks, ks=(1, 3))
    expected = [1.0 / r for r in ranks.tolist()]
    assert metrics["mrr"] == pytest.approx(sum(expected) / len(expected))
    assert metrics["hits@3"] == pytest.approx(sum(r <= 3 for r in ranks.tolist()) / len(ranks))
    assert metrics["hits@1"] == pytest.approx(sum(r == 1 for r in ranks.tolist()) / len(ranks))
    assert metrics["mr"] == pytest.approx(ranks.mean().item())


def test_true_answers_by_query():
    triples = torch.tensor([[0, 1, 2], [0, 1, 3], [4, 1, 3]])
    assert true_answers([triples], "tail")[(0, 1)] == {2, 3}
    assert true_answers([triples], "head")[(1, 3)] == {0, 4}
    assert true_answers([triples], "relation")[(0, 2)] == {1}


def test_bad_inputs():
    with pytest.raises(ValueError, match="finite"):
        filtered_ranks(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="ties"):
        filtered_ranks(torch.zeros(1, 2), torch.tensor([0]), ties="random")
    with pytest.raises(ValueError, match="query"):
        true_answers([], "entity")


def test_relation_ranking_by_hand():
    """PathCon's evaluation of a batch (the function PathCon and DistMult both call): filtered rank, accuracy, CE."""
    from litzoo.framework.graphs.ranking import relation_ranking, relation_ranking_metrics

    # two queries over 4 relations; (0, ?, 1) has the true relations {1, 2}, (2, ?, 3) only {0}
    answers = true_answers([torch.tensor([[0, 1, 1], [0, 2, 1], [2, 0, 3]])], "relation")
    logits = torch.tensor([[0.3, 0.1, 0.9, 0.5], [0.2, 0.7, 0.2, 0.1]])
    triples = torch.tensor([[0, 1, 1], [2, 0, 3]])
    ranks, correct, loss = relation_ranking(logits, triples, answers)
    # row 0: relation 1 (0.1) is below 0.3 and 0.5; relation 2 (0.9), the other true one, is filtered out -> rank 3
    # row 1: relation 0 (0.2) is below 0.7 and ties with relation 2 -> pessimistic rank 3
    assert ranks.tolist() == [3.0, 3.0] and correct.tolist() == [0.0, 0.0]
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, triples[:, 1], reduction="none"))
    metrics = relation_ranking_metrics([(ranks, correct, loss), (torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([0.5]))], ks=(1, 3))
    assert metrics["mrr"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3) and metrics["hits@1"] == pytest.approx(1 / 3)
    assert metrics["hits@3"] == 1.0 and metrics["mr"] == pytest.approx(7 / 3) and metrics["acc"] == pytest.approx(1 / 3)
    assert metrics["loss"] == pytest.approx((loss.sum().item() + 0.5) / 3)
