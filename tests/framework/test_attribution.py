"""Integrated Gradients (framework/attribution.py): quadrature, hand-computed cases, exactness on linear models,
completeness on a nonlinear model, ignored features, target selection, token reduction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from litzoo.framework.attribution import integrated_gradients, integration_points, token_attributions
from litzoo.framework.errors import LitzooError

METHODS = ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]


def power(p: int):
    """f(x) = sum(x ** p) as a one-class 'logit'."""
    return lambda embeds, mask: (embeds**p).reshape(len(embeds), -1).sum(1, keepdim=True)


@pytest.mark.parametrize("method", METHODS)
def test_quadrature_weights_sum_to_one_and_nodes_in_unit_interval(method):
    alphas, weights = integration_points(7, method)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert alphas.min() >= 0 and alphas.max() <= 1
    # the rules on 3 a^2 (integral 1), by hand with n = 7: left 3 * 91 / 343, right 3 * 140 / 343,
    # middle 1 - 1 / (4 * 49), trapezoid (h = 1/6) 1 + h^2 / 2, Gauss-Legendre exact
    expected = {"gausslegendre": 1.0, "riemann_left": 273 / 343, "riemann_right": 420 / 343, "riemann_middle": 1 - 1 / 196,
                "riemann_trapezoid": 1 + 1 / 72}[method]  # fmt: skip
    assert (weights * 3 * alphas**2).sum().item() == pytest.approx(expected, abs=1e-12)


def test_hand_computed_cubic_trapezoid_and_gauss_legendre():
    """f(x) = x^3, x = 2, baseline 0. Gradient along the path: 3 (2a)^2 = 12 a^2.
    Trapezoid, 3 points a = 0, 1/2, 1 with weights 1/4, 1/2, 1/4: 0 + 1/2 * 3 + 1/4 * 12 = 4.5, IG = 2 * 4.5 = 9
    (captum's weights 1/6, 1/3, 1/6 would give 6). Two Gauss-Legendre nodes integrate the quadratic exactly:
    12 / 3 = 4, IG = 8 = f(2) - f(0)."""
    x = torch.tensor([[2.0]], dtype=torch.float64)
    trapezoid = integrated_gradients(power(3), x, steps=3, method="riemann_trapezoid")
    assert trapezoid.attributions.item() == pytest.approx(9.0, abs=1e-12)
    assert trapezoid.scores.item() == 8.0 and trapezoid.baseline_scores.item() == 0.0
    assert trapezoid.delta.item() == pytest.approx(1.0, abs=1e-12)
    gauss = integrated_gradients(power(3), x, steps=2, method="gausslegendre")
    assert gauss.attributions.item() == pytest.approx(8.0, abs=1e-12)
    assert gauss.delta.item() == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_quadratic_with_baseline():
    """f(x) = x^2 from baseline 1 to x = 3: gradient 2 (1 + 2a), integral 4, IG = (3 - 1) * 4 = 8 = 9 - 1."""
    result = integrated_gradients(power(2), torch.tensor([[3.0]], dtype=torch.float64), baseline=1.0, steps=2, method="riemann_trapezoid")
    assert result.attributions.item() == pytest.approx(8.0, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_exact_on_a_linear_model(method):
    """logits_c = <x, W_c> + b_c: IG = (x - x') * W_target exactly, for any rule whose weights sum to 1."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    bias = torch.randn(3, generator=generator, dtype=torch.float64)

    def linear(embeds, mask):
        return torch.einsum("bld,cld->bc", embeds, weight) + bias

    x = torch.randn(2, 4, 5, generator=generator, dtype=torch.float64)
    x0 = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    target = torch.tensor([2, 0])
    result = integrated_gradients(linear, x, baseline=x0, target=target, steps=4, method=method)
    torch.testing.assert_close(result.attributions, (x - x0) * weight[target], rtol=0, atol=1e-12)
    assert result.delta.abs().max() < 1e-12


class MaskedMLP(nn.Module):
    """A nonlinear text classifier on embeddings: masked mean pooling, tanh MLP; ignores embedding dimension 0."""

    def __init__(self, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim - 1, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, embeds, mask):
        weights = mask.to(embeds.dtype).unsqueeze(-1)
        pooled = (torch.tanh(embeds[..., 1:]) * weights).sum(1) / weights.sum(1)
        return self.out(torch.tanh(self.hidden(pooled)) ** 2)


@pytest.fixture
def nonlinear():
    torch.manual_seed(0)
    model = MaskedMLP().double()
    x = 2 * torch.randn(3, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    return model, x, mask


def test_completeness_on_a_nonlinear_model_and_shrinking_delta(nonlinear):
    model, x, mask = nonlinear
    deltas = []
    for steps in (4, 16, 64):
        result = integrated_gradients(model, x, target=1, mask=mask, steps=steps, method="riemann_trapezoid")
        deltas.append(result.delta.abs().max().item())
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[0] > 1e-4  # the model is nonlinear enough for the test to mean something
    assert deltas[2] < 0.02 * deltas[0]  # trapezoid error ~ 1/n^2: 16x fewer points -> ~256x larger
    gauss = integrated_gradients(model, x, target=1, mask=mask, steps=50)
    assert gauss.delta.abs().max() < 1e-8
    # the scores are the model's own
    logits = model(x, mask)
    torch.testing.assert_close(gauss.scores, logits[:, 1])
    torch.testing.assert_close(gauss.baseline_scores, model(torch.zeros_like(x), mask)[:, 1])


def test_batched_over_steps_equals_one_sample_at_a_time(nonlinear):
    model, x, mask = nonlinear
    whole = integrated_gradients(model, x, target=torch.tensor([0, 1, 2]), mask=mask, steps=10)
    chunked = integrated_gradients(model, x, target=torch.tensor([0, 1, 2]), mask=mask, steps=10, steps_per_batch=3)
    torch.testing.assert_close(chunked.attributions, whole.attributions, rtol=0, atol=1e-12)
    for b in range(3):
        alone = integrated_gradients(model, x[b : b + 1], target=b, mask=mask[b : b + 1], steps=10)
        torch.testing.assert_close(alone.attributions[0], whole.attributions[b], rtol=0, atol=1e-12)


def test_ignored_features_and_padding_get_zero_attribution(nonlinear):
    model, x, mask = nonlinear
    result = integrated_gradients(model, x, target=0, mask=mask, steps=20)
    assert (x[..., 0] != 0).all()  # the input differs from the baseline there, yet the model ignores it
    assert result.attributions[..., 0].abs().max() == 0
    assert result.attributions[1, 3:].abs().max() == 0 and result.attributions[2, 2:].abs().max() == 0
    assert result.attributions[..., 1:][mask].abs().min() > 0


def test_target_selection(nonlinear):
    model, x, mask = nonlinear
    per_class = [integrated_gradients(model, x, target=c, mask=mask, steps=20).attributions for c in range(3)]
    assert not torch.allclose(per_class[0], per_class[1])
    mixed = integrated_gradients(model, x, target=torch.tensor([2, 0, 1]), mask=mask, steps=20).attributions
    for b, c in enumerate([2, 0, 1]):
        torch.testing.assert_close(mixed[b], per_class[c][b], rtol=0, atol=1e-12)
    # completeness ties each attribution to its own class's logit difference
    difference = model(x, mask) - model(torch.zeros_like(x), mask)
    for c in range(3):
        torch.testing.assert_close(per_class[c].sum((1, 2)), difference[:, c], rtol=0, atol=1e-6)


def test_token_attributions_sum_and_l2():
    attributions = torch.tensor([[[1.0, -3.0], [3.0, 4.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    assert token_attributions(attributions, mask).tolist() == [[-2.0, 7.0, 0.0]]
    assert token_attributions(attributions, mask, reduction="l2")[0].tolist() == pytest.approx([math.sqrt(10), 5.0, 0.0])
    assert token_attributions(attributions).tolist() == [[-2.0, 7.0, 10.0]]


def test_runs_inside_inference_mode_without_touching_parameter_gradients(nonlinear):
    model, x, mask = nonlinear
    reference = integrated_gradients(model, x, target=1, mask=mask, steps=8)
    with torch.inference_mode():
        inside = integrated_gradients(model, x.clone(), target=1, mask=mask.clone(), steps=8)
    torch.testing.assert_close(inside.attributions, reference.attributions, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_and_non_finite_outputs():
    x = torch.ones(1, 2)
    with pytest.raises(ValueError, match="method must be one of"):
        integrated_gradients(power(2), x, method="simpson")
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        integrated_gradients(power(2), x, steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 1\)"):
        integrated_gradients(power(2), x, target=1)
    with pytest.raises(ValueError, match="logits of shape"):
        integrated_gradients(lambda e, m: e.sum(1), x)
    with pytest.raises(LitzooError, match="not finite"):
        integrated_gradients(lambda e, m: (e.sqrt() * 0 + 1 / e).sum(1, keepdim=True), x, steps=4)
