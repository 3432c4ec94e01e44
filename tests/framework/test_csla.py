"""The CSLA core (framework/reparam/csla.py): RepOptimizer's rule of iteration as one object, usable in a
plain PyTorch loop, refusing what breaks the equivalence; RepVGG's stage layout shared by RepOpt-VGG."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.reparam import GradientMultipliers, csla_grad_multiplier, stage_widths


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 6, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _multipliers(model: TwoConvs, power: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": csla_grad_multiplier(model.a.weight.shape, torch.rand(4, generator=g) + 0.5, torch.rand(4, generator=g) + 0.3, identity=True, power=power),
        "b.weight": csla_grad_multiplier(model.b.weight.shape, torch.rand(6, generator=g) + 0.5, torch.rand(6, generator=g) + 0.3, identity=False, power=power),
    }


def _raw_gradients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(x).square().mean().backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_sgd_rule_in_a_plain_pytorch_loop_matches_the_update_by_hand():
    """bind / multiply_gradients / step: W1 = W0 - lr * M * g for the bound weights, the rest untouched by M."""
    torch.manual_seed(0)
    model, x = TwoConvs(), torch.randn(2, 4, 5, 5)
    mults = _multipliers(model)
    rule = GradientMultipliers({"a.weight": mults["a.weight"]})  # only `a` follows a CSLA block
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    raw = _raw_gradients(model, x)
    rule.bind(model, [optimizer])
    model.zero_grad()
    model(x).square().mean().backward()
    rule.multiply_gradients()
    optimizer.step()
    assert torch.allclose(model.a.weight, before["a.weight"] - 0.1 * mults["a.weight"] * raw["a.weight"], atol=1e-7)
    assert torch.allclose(model.b.weight, before["b.weight"] - 0.1 * raw["b.weight"], atol=1e-7)
    assert (mults["a.weight"] - 1).abs().max() > 0.1  # the multiplier is not a no-op


def test_adamw_rule_multiplies_the_update_too():
    """One AdamW step with the official RepOptimizerAdamW rule: W1 = W0 (1 - lr wd) - lr M g' / (|g'| + eps), g' = M g."""
    torch.manual_seed(0)
    model, x = TwoConvs().double(), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    m = _multipliers(model, power=1)["a.weight"].double()
    rule = GradientMultipliers({"a.weight": m}, rule="adamw")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
    before = model.a.weight.detach().clone()
    raw = _raw_gradients(model, x)["a.weight"]
    rule.bind(model, [optimizer])
    model.zero_grad()
    model(x).square().mean().backward()
    rule.multiply_gradients()
    optimizer.step()
    g = m * raw
    expected = before * (1 - 0.01 * 0.05) - 0.01 * m * g / (g.abs() + 1e-8)
    assert (model.a.weight.detach() - expected).abs().max() < 1e-12
    rule.release()  # detached: gradients and updates are left alone
    model.a.weight.grad = torch.ones_like(model.a.weight)
    rule.multiply_gradients()
    assert torch.equal(model.a.weight.grad, torch.ones_like(model.a.weight))


def test_bind_refuses_what_breaks_the_equivalence():
    model = TwoConvs()
    mults = _multipliers(model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(LitzooError, match="^MyModel: gradient_clip_val=1.0"):
        GradientMultipliers(mults).bind(model, [sgd], gradient_clip_val=1.0, who="MyModel")
    with pytest.raises(LitzooError, match="RMSprop is not supported"):
        GradientMultipliers(mults).bind(model, [torch.optim.RMSprop(model.parameters())])
    with pytest.raises(LitzooError, match="rule='adamw' but the optimizer is SGD"):
        GradientMultipliers(mults, rule="adamw").bind(model, [sgd])
    with pytest.raises(LitzooError, match="no parameter named"):
        GradientMultipliers({"c.weight": torch.ones(1)}).bind(model, [sgd])
    with pytest.raises(LitzooError, match=r"has shape \(4, 4, 3, 3\), the parameter \(6, 4, 3, 3\)"):
        GradientMultipliers({"b.weight": mults["a.weight"]}).bind(model, [sgd])
    with pytest.raises(ValueError, match="finite"):
        GradientMultipliers({"a.weight": torch.full((4, 4, 3, 3), float("nan"))})
    with pytest.raises(ValueError, match="rule"):
        GradientMultipliers(mults, rule="adam")


def test_two_rules_on_one_weight_are_refused_until_the_first_is_released():
    """A weight multiplied by two bound rules (a model that applies its own plus a RepOptimizer callback) would get M^2."""
    model = TwoConvs()
    mults = _multipliers(model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    first, second = GradientMultipliers(mults), GradientMultipliers({"a.weight": mults["a.weight"]})
    first.bind(model, [sgd])
    first.bind(model, [sgd])  # binding again (a second fit) is fine
    with pytest.raises(LitzooError, match="'a.weight' already has its gradient multiplied.*apply twice"):
        second.bind(model, [sgd], who="Second")
    GradientMultipliers({"a.weight": mults["a.weight"]}).bind(TwoConvs(), [sgd])  # another model's weights are free
    first.release()
    second.bind(model, [sgd])
    assert list(second._params) == ["a.weight"] and second._params["a.weight"] is model.a.weight


def test_stage_widths_is_repvggs_layout():
    assert stage_widths([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], [2, 2, 2, 2, 2]) == [48, 96, 192, 1280]
    with pytest.raises(ValueError, match="empty stage"):
        stage_widths([1, 1, 1, 1], [0.001, 1, 1, 1], [2, 2, 2, 2, 2])
    with pytest.raises(ValueError, match="stage_strides"):
        stage_widths([1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2])
