"""Featurizer (AV-SUPERB / S3PRL): the weighted sum by hand, uniform start, per-layer layer norm, mean pooling,
and the planted toy where only one layer carries the label."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from litzoo.framework.featurizer import Featurizer, mean_pool, select_layer, synthetic_planted_layers


def test_weighted_sum_by_hand():
    featurizer = Featurizer(num_layers=3, dim=2)
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    h = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([[0.0, 4.0]])]
    e = torch.exp(torch.tensor([0.0, 1.0, 2.0]))
    w = e / e.sum()  # softmax by hand: 0.0900, 0.2447, 0.6652
    expected = torch.tensor([[w[0] * 1 + w[1] * 3 + w[2] * 0, w[0] * 2 - w[1] * 1 + w[2] * 4]])
    torch.testing.assert_close(featurizer(h), expected)
    torch.testing.assert_close(featurizer(torch.stack(h)), expected)  # a stacked (L, ..., D) tensor is the same
    torch.testing.assert_close(featurizer.layer_weights(), w)


def test_initial_weights_are_zeros_so_the_mixture_is_uniform():
    featurizer = Featurizer(num_layers=4, dim=3)
    assert torch.equal(featurizer.weights.detach(), torch.zeros(4))
    torch.testing.assert_close(featurizer.layer_weights(), torch.full((4,), 0.25))
    h = torch.randn(4, 2, 5, 3)
    torch.testing.assert_close(featurizer(h), h.mean(0))  # uniform weights: the plain mean of the layers


def test_layer_norm_is_per_layer_without_affine_and_before_weighting():
    h = torch.randn(2, 3, 4) * torch.tensor([1.0, 50.0]).view(2, 1, 1) + 7.0  # layer 1 much larger than layer 0
    featurizer = Featurizer(num_layers=2, dim=4, layer_norm=True)
    assert not any("norm" in name for name, _ in featurizer.named_parameters())  # no affine parameters
    each = [(x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5) for x in h]
    torch.testing.assert_close(featurizer(h), (each[0] + each[1]) / 2)
    # negative control: normalising after the weighted sum is another function
    assert not torch.allclose(featurizer(h), F.layer_norm(h.mean(0), (4,)))
    torch.testing.assert_close(select_layer(h, -1, layer_norm=True), each[1])


def test_single_layer_passes_through_and_bad_shapes_are_refused():
    h = torch.randn(1, 2, 3)
    assert torch.equal(Featurizer(1, 3)(h), h[0])
    with pytest.raises(ValueError, match="3 hidden states of width 4"):
        Featurizer(3, 4)(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="width 4"):
        Featurizer(2, 4)(torch.randn(2, 5, 3))
    for bad in (dict(num_layers=0, dim=3), dict(num_layers=2, dim=0), dict(num_layers=1.5, dim=3)):
        with pytest.raises(ValueError):
            Featurizer(**bad)


def test_mean_pool_with_and_without_mask():
    states = torch.arange(12.0).view(1, 4, 3)
    torch.testing.assert_close(mean_pool(states), states[0].mean(0, keepdim=True))
    mask = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(mean_pool(states, mask), torch.tensor([[1.5, 2.5, 3.5]]))
    pooled = torch.randn(2, 3)
    assert mean_pool(pooled) is pooled
    with pytest.raises(ValueError, match="mask"):
        mean_pool(states, torch.ones(1, 3, dtype=torch.bool))


def test_weights_converge_to_the_informative_layer_on_a_planted_toy():
    # SYNTHETIC: 5 layers, only layer 2 carries the class; a Featurizer + linear head trained by plain gradient descent
    states, labels = synthetic_planted_layers(400, num_layers=5, dim=8, num_classes=3, informative_layer=2, strength=0.6, seed=0)
    pooled = states.mean(2).transpose(0, 1)  # (L, N, D)
    torch.manual_seed(0)
    featurizer, head = Featurizer(5, 8), torch.nn.Linear(8, 3)
    optimizer = torch.optim.Adam([*featurizer.parameters(), *head.parameters()], lr=0.05)
    for _ in range(150):
        loss = F.cross_entropy(head(featurizer(pooled)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = featurizer.layer_weights()
    assert int(weights.argmax()) == 2
    assert weights[2] > 0.6, weights  # from 0.2 at the start


def test_planted_toy_carries_the_label_only_at_its_layer():
    states, labels = synthetic_planted_layers(2000, num_layers=4, dim=6, num_classes=2, informative_layer=1, strength=1.0, seed=3)
    assert states.shape == (2000, 4, 4, 6) and labels.shape == (2000,)
    pooled = states.mean(2)
    gaps = [float((pooled[labels == 0, layer].mean(0) - pooled[labels == 1, layer].mean(0)).norm()) for layer in range(4)]
    assert gaps[1] > 1.0 and max(gaps[0], gaps[2], gaps[3]) < 0.25, gaps
    with pytest.raises(ValueError, match="informative_layer"):
        synthetic_planted_layers(10, 3, 2, 2, informative_layer=3)
