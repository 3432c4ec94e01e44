"""Active-learning query strategies (framework/active/strategies.py): scores against hand computations on tiny pools,
BALD's mutual information, greedy k-center on a hand-made 1-D set (chunked = unchunked = brute force), the BADGE
embedding against autograd, k-means++ seeding (first centre, no duplicates, D^2 frequencies), determinism, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from litzoo.framework.active import (
    badge_embedding,
    bald,
    entropy,
    kcenter_greedy,
    kmeans_pp_seeding,
    least_confidence,
    margin,
    random_query,
    top_k_query,
)

POOL = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]], dtype=torch.float64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uncertainty_scores_by_hand():
    assert least_confidence(POOL).tolist() == pytest.approx([0.3, 0.6, 2 / 3, 0.0])
    assert margin(POOL).tolist() == pytest.approx([0.5, 0.0, 0.0, 1.0])
    # -sum p ln p written out per row; the last row is one-hot, 0 ln 0 = 0
    row0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    row1 = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))
    assert entropy(POOL).tolist() == pytest.approx([row0, row1, math.log(3), 0.0])
    assert row0 == pytest.approx(0.80182, abs=1e-5) and row1 == pytest.approx(1.05492, abs=1e-5)


def test_queries_take_largest_uncertainty_and_smallest_margin():
    assert top_k_query(least_confidence(POOL), 2).tolist() == [2, 1]
    assert top_k_query(entropy(POOL), 2).tolist() == [2, 1]
    # margins 0.5, 0, 0, 1: the two zero margins, lowest index first
    assert top_k_query(margin(POOL), 2, largest=False).tolist() == [1, 2]


def test_bald_hand_values():
    # T = 2 passes, 4 samples: disagreeing one-hots, agreeing uniforms, disagreeing confident, agreeing confident
    passes = torch.tensor(
        [
            [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.8, 0.2]],
            [[0.0, 1.0], [0.5, 0.5], [0.1, 0.9], [0.8, 0.2]],
        ],
        dtype=torch.float64,
    )
    h_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    expected = [math.log(2), 0.0, math.log(2) - h_09, 0.0]
    assert bald(passes).tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[2] == pytest.approx(0.368064, abs=1e-6)
    # BALD is not the entropy of the mean: the agreeing uniform sample has entropy ln 2 but zero BALD
    assert entropy(passes.mean(0))[1].item() == pytest.approx(math.log(2))


def test_bald_zero_when_all_passes_agree():
    probs = torch.softmax(torch.randn(5, 4, generator=gen(0), dtype=torch.float64), dim=1)
    assert bald(probs.expand(7, 5, 4)).abs().max().item() < 1e-12
    noisy = torch.softmax(torch.randn(7, 5, 4, generator=gen(1), dtype=torch.float64) * 3, dim=2)
    assert (bald(noisy) > 1e-3).all()


def test_top_k_ties_lowest_index_first_both_directions():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_k_query(scores, 3).tolist() == [1, 2, 4]
    assert top_k_query(scores, 4).tolist() == [1, 2, 4, 3]
    assert top_k_query(torch.tensor([2.0, 1.0, 1.0, 0.0, 1.0]), 3, largest=False).tolist() == [3, 1, 2]
    assert top_k_query(scores, 0).tolist() == []


def test_random_query_distinct_deterministic():
    first = random_query(50, 10, gen(3))
    assert first.tolist() == random_query(50, 10, gen(3)).tolist()
    assert len(set(first.tolist())) == 10 and 0 <= first.min() and first.max() < 50
    assert first.tolist() != random_query(50, 10, gen(4)).tolist()
    assert sorted(random_query(6, 6, gen(0)).tolist()) == list(range(6))


def points(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64).unsqueeze(1)


def test_kcenter_hand_example_without_labelled():
    pool = points(0, 1, 3, 7, 10)
    # first pick index 0 (nothing labelled); then 10 (distance 10); then min distances [0,1,3,3,0]: 3 and 7 tie, lowest
    # index (3) wins; then 7 (distance 3); then 1
    assert kcenter_greedy(pool, None, 5).tolist() == [0, 4, 2, 3, 1]
    assert kcenter_greedy(pool, torch.zeros(0, 1, dtype=torch.float64), 3).tolist() == [0, 4, 2]


def test_kcenter_hand_example_with_labelled():
    pool = points(0, 1, 3, 7, 10)
    # distances to the labelled point 4: [4,3,1,3,6] -> 10; updated [4,3,1,3,0] -> 0; updated [0,1,1,3,0] -> 7;
    # then [0,1,1,0,0] -> 1 (tie with 3, lowest index). Without the update the order would be 10, 0, 1, 7.
    assert kcenter_greedy(pool, points(4), 4).tolist() == [4, 0, 3, 1]
    # labelled 4 and 9: distances [4,3,1,2,1] -> 0; updated [0,1,1,2,1] -> 7
    assert kcenter_greedy(pool, points(4, 9), 2).tolist() == [0, 3]


def test_kcenter_never_repicks_duplicates():
    pool = points(2, 2, 2, 5)
    assert kcenter_greedy(pool, points(2), 4).tolist() == [3, 0, 1, 2]


def brute_force_kcenter(pool: torch.Tensor, labelled: torch.Tensor, k: int) -> list[int]:
    dist = torch.cdist(pool, pool)
    nearest = torch.cdist(pool, labelled).min(1).values
    picks = []
    for _ in range(k):
        index = int(nearest.argmax())
        picks.append(index)
        nearest = torch.minimum(nearest, dist[:, index])
    return picks


def test_kcenter_chunked_equals_unchunked_and_brute_force():
    pool = torch.randn(53, 4, generator=gen(5), dtype=torch.float64)
    labelled = torch.randn(19, 4, generator=gen(6), dtype=torch.float64)
    full = kcenter_greedy(pool, labelled, 12, chunk_size=10_000).tolist()
    assert kcenter_greedy(pool, labelled, 12, chunk_size=7).tolist() == full
    assert kcenter_greedy(pool, labelled, 12, chunk_size=1).tolist() == full
    assert full == brute_force_kcenter(pool, labelled, 12)


def test_badge_embedding_equals_autograd_gradient():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    hidden = torch.randn(4, 5, dtype=torch.float64)
    probs = torch.softmax(layer(hidden), dim=1).detach()
    embedding = badge_embedding(hidden, probs)
    assert embedding.shape == (4, 15)
    for row in range(4):
        layer.zero_grad()
        logits = layer(hidden[row : row + 1])
        F.cross_entropy(logits, logits.argmax(1)).backward()
        torch.testing.assert_close(embedding[row], layer.weight.grad.reshape(-1), rtol=1e-12, atol=1e-12)
    # the reference's factorised squared norm |onehot - p|^2 |h|^2 (badge_sampling.py) holds too
    residual = F.one_hot(probs.argmax(1), 3).double() - probs
    torch.testing.assert_close(embedding.pow(2).sum(1), residual.pow(2).sum(1) * hidden.pow(2).sum(1))


def test_kmeans_pp_first_centre_is_largest_norm():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 2.0], [0.5, 0.5]])
    for seed in range(20):
        assert kmeans_pp_seeding(embeddings, 1, gen(seed)).tolist() == [1]
        assert kmeans_pp_seeding(embeddings, 4, gen(seed))[0].item() == 1


def test_kmeans_pp_never_picks_duplicate_while_distinct_points_remain():
    # largest norm: index 3 (first of the two (5, 0)); its duplicate 4 has D = 0 while 0..2 remain
    embeddings = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    for seed in range(200):
        picks = kmeans_pp_seeding(embeddings, 4, gen(seed)).tolist()
        assert picks[0] == 3 and 4 not in picks and sorted(picks) == [0, 1, 2, 3]
        # with every distinct point chosen, the last pick is the remaining duplicate (uniform over unchosen)
        assert sorted(kmeans_pp_seeding(embeddings, 5, gen(seed)).tolist()) == [0, 1, 2, 3, 4]


def test_kmeans_pp_updates_distances_with_each_centre():
    # first 10; then D^2 = [0, 400, 400, 1]: one of the two -10s (or, rarely, 9); once a -10 is chosen its duplicate has
    # D = 0, so the third pick is 9 (without the update the duplicate would keep D^2 = 400)
    embeddings = points(10, -10, -10, 9)
    for seed in range(100):
        picks = kmeans_pp_seeding(embeddings, 3, gen(seed)).tolist()
        assert picks[0] == 0 and 3 in picks and len({1, 2} & set(picks)) == 1


def test_kmeans_pp_d2_sampling_frequencies():
    # first centre 10 (largest norm); D = [0, 10, 4, 2] -> P = [0, 100, 16, 4] / 120 (D-proportional would be .625)
    embeddings = points(10, 0, 6, 8)
    draws = 3000
    counts = torch.zeros(4)
    for seed in range(draws):
        counts[kmeans_pp_seeding(embeddings, 2, gen(seed))[1]] += 1
    assert counts[0] == 0
    assert (counts / draws).tolist() == pytest.approx([0.0, 100 / 120, 16 / 120, 4 / 120], abs=0.025)


def test_kmeans_pp_deterministic_under_seed():
    embeddings = torch.randn(40, 6, generator=gen(9))
    first = kmeans_pp_seeding(embeddings, 10, gen(11)).tolist()
    assert first == kmeans_pp_seeding(embeddings, 10, gen(11)).tolist()
    assert len(set(first)) == 10
    assert any(kmeans_pp_seeding(embeddings, 10, gen(s)).tolist() != first for s in range(12, 16))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: entropy(torch.tensor([0.5, 0.5])), "2-D"),
        (lambda: entropy(torch.tensor([[0.5, 0.6]])), "sum to 1"),
        (lambda: least_confidence(torch.tensor([[2.0, -1.0]])), "outside"),
        (lambda: margin(torch.tensor([[1.0]])), "at least 2"),
        (lambda: entropy(torch.tensor([[float("nan"), 1.0]])), "non-finite"),
        (lambda: entropy(torch.tensor([[1, 0]])), "floating"),
        (lambda: bald(torch.tensor([[0.5, 0.5]])), "3-D"),
        (lambda: top_k_query(torch.tensor([1.0, float("inf")]), 1), "non-finite"),
        (lambda: top_k_query(torch.tensor([1.0, 2.0]), 3), "k must be"),
        (lambda: top_k_query(torch.tensor([1.0, 2.0]), -1), "k must be"),
        (lambda: top_k_query(torch.ones(2, 2), 1), "1-D"),
        (lambda: random_query(5, 6, gen(0)), "k must be"),
        (lambda: random_query(5, 2, 0), "Generator"),
        (lambda: kcenter_greedy(points(0, 1), None, 3), "k must be"),
        (lambda: kcenter_greedy(points(0, 1), None, 1, chunk_size=0), "chunk_size"),
        (lambda: kcenter_greedy(points(0, 1), torch.zeros(1, 2, dtype=torch.float64), 1), "dimensions"),
        (lambda: kcenter_greedy(torch.zeros(3), None, 1), "2-D"),
        (lambda: badge_embedding(torch.zeros(3, 2), torch.full((2, 2), 0.5)), "rows"),
        (lambda: kmeans_pp_seeding(torch.zeros(3, 2), 4, gen(0)), "k must be"),
        (lambda: kmeans_pp_seeding(torch.tensor([[float("inf"), 0.0]]), 1, gen(0)), "non-finite"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
