"""LA3 against hand computations (mRMR's greedy choice, the UCB value, the per-label score, the predictor's
embedding), and a tiny search on the real digits that finds a planted harmful operation per label."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.data.augment_ops import load_policy
from litzoo.modules.la3 import (
    LA3Search,
    NeuralPredictor,
    PolicyEvaluator,
    collect_split,
    mrmr_select,
    op_count_features,
    train_predictor_ensemble,
    ucb_weights,
    write_policy,
)


def test_mrmr_selection_by_hand():
    relevance = np.array([5.0, 4.0, 4.0, 1.0])
    # op-count vectors: b duplicates a; c and d use other operations
    features = np.array([[3.0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]])
    # alpha 1, mean relevance 3.5. Start: a (most relevant). Step 2: b 4 + 3.5*0 = 4, c 4 + 3.5*6 = 25, d 1 + 3.5*6 = 22 -> c.
    # Step 3 (mean distance to {a, c}): b 4 + 3.5*3 = 14.5, d 1 + 3.5*6 = 22 -> d.
    assert mrmr_select(relevance, features, 3, alpha=1.0) == [0, 2, 3]
    assert mrmr_select(relevance, features, 3, alpha=0.0) == [0, 1, 2]  # relevance alone: b before c (first of the tie)
    # alpha 0.1 (bonus 0.35 per unit of distance): step 2 b 4, c 4 + 2.1, d 1 + 2.1 -> c; step 3 b 4 + 1.05, d 1 + 2.1 -> b
    assert mrmr_select(relevance, features, 4, alpha=0.1) == [0, 2, 1, 3]
    assert mrmr_select(relevance, features, 2, alpha=1.0, first=3) == [3, 0]  # from d: a 5 + 21, b 4 + 21, c 4 + 21
    assert mrmr_select(relevance, features, 9, alpha=1.0) == [0, 2, 3, 1]  # never more than there are, never twice


def test_op_count_features():
    assert op_count_features(np.array([[0, 0, 2], [1, 2, 3]]), 4).tolist() == [[2, 0, 1, 0], [0, 1, 1, 1]]


def test_ucb_by_hand():
    weights = ucb_weights(np.array([10.0, 0.0, 30.0]), np.array([1.0, 0.0, 3.0]), 4.0)
    expected = [90 + math.sqrt(2 * math.log(4)), 0.0, 90 + math.sqrt(2 * math.log(4) / 3)]  # a triple never played: NaN -> 0
    assert np.allclose(weights, expected)


def test_ucb_drives_the_candidate_draws():
    """Only played triples can be drawn by UCB, in proportion to their value: with every unplayed and local
    candidate switched off, the draws come from the two played triples only."""
    search = LA3Search(2, ops=("Identity", "FlipX", "FlipY"), candidates=40, top_evaluated=1, unplayed=0, seed=0)
    history = search.new_history()
    search.record(history, [5, 7], 20.0, np.array([1.0, 2.0]))
    search.record(history, [9, 7], 0.0, np.array([3.0, 4.0]))
    drawn = set(search.generate_candidates(history, 0))
    local = {i for i in range(27) if search.triples[i][0] == search.triples[5][0]}  # the official moves (a, b, *), (a, *, *)
    assert drawn - local <= {9}  # besides the local moves around triple 5, only the other played triple (9) is drawn
    assert 9 in drawn


def test_predictor_sums_op_embeddings_identity_is_zero():
    torch.manual_seed(0)
    predictor = NeuralPredictor(num_ops=4, num_classes=3, identity_index=3)
    assert [m.in_features for m in predictor.mlp if isinstance(m, nn.Linear)] == [200, 100, 100, 100]
    assert torch.equal(predictor.op_embedding.weight[3], torch.zeros(100))
    encoding = torch.tensor([[0, 1, 3, 2], [1, 3, 0, 2]])
    table, classes = predictor.op_embedding.weight, predictor.class_embedding.weight
    assert torch.allclose(predictor.embedding(encoding)[0], torch.cat([table[0] + table[1], classes[2]]))
    out = predictor(encoding)
    assert out.shape == (2,) and torch.allclose(out[0], out[1])  # a sum: the order of the operations does not matter


def test_predictor_ensemble_learns_a_planted_score():
    triples = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    rows = np.concatenate([np.concatenate([triples, np.full((64, 1), label)], 1) for label in range(3)])
    scores = 10.0 * (rows[:, :3] == 0).sum(1) + 5.0 * rows[:, 3]  # op 0 costs 10 per use, label adds 5
    encodings, target = torch.from_numpy(rows).long(), torch.tensor(scores, dtype=torch.float32)
    predictors, held_loss = train_predictor_ensemble(encodings, target, 4, 3, identity_index=3, ensemble=2, epochs=150, seed=0)
    spread = float((target - target.mean()).abs().mean())
    assert held_loss < 0.3 * spread, (held_loss, spread)  # predicting the mean would be off by the spread


def test_per_label_score_by_hand():
    """A classifier that reads the top-left pixel: label 1 images light it, label 0 images light the bottom-right one.
    A half turn for label 0 moves its pixel to the top-left: label 0 drops from 100 % to 0 % (score 100), label 1
    (Identity) keeps 100 % (score 0); overall 100 (mean_c 1.0 - 0.5 accuracy after) = 50."""
    images = torch.zeros(6, 1, 4, 4)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    images[labels == 1, 0, 0, 0] = 1.0
    images[labels == 0, 0, 3, 3] = 1.0

    def classifier(x):
        return torch.stack([0.5 - x[:, 0, 0, 0], x[:, 0, 0, 0] - 0.5], 1)

    ops = ("Identity", "Rotate180")
    evaluator = PolicyEvaluator(classifier, images, labels, 2, ops)
    assert evaluator.pre_class.tolist() == [1.0, 1.0]
    overall, per_label = evaluator.evaluate([(1, 0, 0), (0, 0, 0)], torch.Generator().manual_seed(0))
    assert overall == pytest.approx(50.0) and per_label.tolist() == pytest.approx([100.0, 0.0])
    overall, per_label = evaluator.evaluate([(1, 1, 0), (1, 0, 0)], torch.Generator().manual_seed(0))  # two half turns: none
    assert overall == pytest.approx(50.0) and per_label.tolist() == pytest.approx([0.0, 100.0])


class Centroids(nn.Module):
    """Nearest class mean on the pixels: a trained classifier in one line, deterministic."""

    def __init__(self, images, labels):
        super().__init__()
        self.register_buffer("centres", torch.stack([images[labels == k].mean(0) for k in range(10)]).flatten(1))

    def forward(self, x):
        return -torch.cdist(x.flatten(1), self.centres)


def test_tiny_search_on_digits_avoids_the_half_turn_only_where_it_harms(tmp_path):
    """Planted: a half turn makes a 6 a 9 and a 9 a 6 (the classifier drops to 0 % on both) but leaves 0 and 8 as they
    are. A sub-policy turns the image when it holds an odd number of half turns (two cancel out)."""
    data = DigitsDataModule(normalize=False)
    data.setup("fit")
    images, labels = collect_split(data.train_dataloader())
    val_images, val_labels = collect_split(data.val_dataloader())
    classifier = Centroids(images, labels)
    search = LA3Search(10, ops=("Identity", "Rotate180", "TranslateX", "Brightness"), evaluations=20, init_evaluations=20,
                       predictor_epochs=100, ensemble=3, topk=6, alpha=0.0, seed=0)  # fmt: skip
    policy = search.run(classifier, val_images, val_labels)
    turned = {label: sum(sub.count("Rotate180") % 2 for sub in policy.sets[label]) for label in range(10)}
    assert turned[6] == 0 and turned[9] == 0, turned
    assert turned[0] >= 1 and turned[8] >= 1, turned
    assert len(search.history.evaluated) == 40 and all(len(e) == 10 for e in search.history.evaluated)
    path = write_policy(policy, tmp_path / "policy.json")
    assert load_policy(path).sets == policy.sets


def test_label_agnostic_search_gives_one_shared_set():
    images = torch.rand(20, 1, 4, 4)
    labels = torch.arange(20) % 2

    def classifier(x):
        return torch.stack([x.mean((1, 2, 3)), 1 - x.mean((1, 2, 3))], 1)

    search = LA3Search(2, ops=("Identity", "FlipX", "Invert"), label_aware=False, evaluations=4, init_evaluations=4,
                       predictor_epochs=5, ensemble=2, topk=3, seed=0)  # fmt: skip
    policy = search.run(classifier, images, labels)
    assert not policy.sets and len(policy.shared) == 3
    assert all(len(e) == 1 for e in search.history.evaluated)  # one triple for all images per evaluation


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown augmentation operation"):
        LA3Search(10, ops=("Identity", "Spin"))
    with pytest.raises(ValueError, match="alpha"):
        LA3Search(10, alpha=-1.0)
    with pytest.raises(ValueError, match="topk"):
        LA3Search(10, topk=0)
