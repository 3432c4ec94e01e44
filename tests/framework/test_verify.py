"""The fusion verifier: float64, eval mode, random BatchNorm statistics, on a copy; non-finite values fail every check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.reparam import ConvBN, RepVGGBlock
from litzoo.framework.reparam.verify import fusion_error
from litzoo.framework.verification import compare_outputs, max_abs_difference, non_finite_summary, output_scale


class ForgetsTheBias(ConvBN):
    """A wrong fuse(): folds the BN scale but drops its shift. Fresh BNs (mean 0, beta 0) hide it."""

    def fuse(self) -> nn.Conv2d:
        conv = super().fuse()
        with torch.no_grad():
            conv.bias.zero_()
        return conv


def test_exact_fusions_agree_to_float64_round_off():
    model = nn.Sequential(RepVGGBlock(3, 6, stride=2, groups=3), RepVGGBlock(6, 6), ConvBN(6, 5, 3, padding=1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert fusion_error(model, torch.randn(2, 3, 9, 11)) < 1e-12
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "the verifier must not touch the model"
    assert model[0].branch_3x3.conv.weight.dtype == torch.float32


def test_a_wrong_fusion_is_caught_only_with_random_statistics():
    model = nn.Sequential(ForgetsTheBias(3, 4, 3, padding=1))
    x = torch.randn(2, 3, 7, 7)
    assert fusion_error(model, x, randomize_bn=False) < 1e-12  # the trap: default BN statistics hide it
    assert fusion_error(model, x) > 1e-2
    assert fusion_error(model, x, relative=True) <= fusion_error(model, x)


def test_non_finite_outputs_fail_the_fusion_check():
    """NaN passes `error > allowed`: the verifier refuses it in one line instead of returning nan."""
    model = nn.Sequential(RepVGGBlock(3, 6), ConvBN(6, 5, 3, padding=1))
    with torch.no_grad():
        model[1].conv.weight[2, 0, 1, 1] = float("nan")
    with pytest.raises(LitzooError, match=r"fusion check \(float64, random BatchNorm statistics\): the outputs of the model before fusion are not finite") as excinfo:
        fusion_error(model, torch.randn(2, 3, 7, 7))
    assert "\n" not in str(excinfo.value) and "NaN" in str(excinfo.value)


class DividesByZero(ConvBN):
    """A fuse() that produces infinite weights from finite ones."""

    def fuse(self) -> nn.Conv2d:
        conv = super().fuse()
        with torch.no_grad():
            conv.weight.div_(0.0)
        return conv


def test_a_fusion_that_produces_non_finite_weights_fails():
    with pytest.raises(LitzooError, match="the outputs of the fused model are not finite"):
        fusion_error(nn.Sequential(DividesByZero(3, 4, 3, padding=1)), torch.randn(2, 3, 7, 7))


def test_differences_involving_nan_or_inf_never_pass_a_tolerance():
    a = torch.zeros(3)
    assert max_abs_difference(a, a + 0.5) == 0.5
    for bad in (float("nan"), float("inf")):
        b = a.clone()
        b[1] = bad
        assert max_abs_difference(a, b) == math.inf
        assert max_abs_difference(b, a) == math.inf
        assert output_scale(b) == math.inf
        with pytest.raises(LitzooError, match="not finite"):
            compare_outputs(a, b, 1.0, "the copy")
        with pytest.raises(LitzooError, match="the outputs of the reference are not finite"):
            compare_outputs(b, a, 1.0, "the copy")
    assert non_finite_summary({"x": (a, torch.tensor([float("nan"), float("-inf"), 1.0]))}) == "1 NaN, 1 inf of 6 values"
    with pytest.raises(LitzooError, match=r"the copy differs from the reference by 0.5 \(allowed 0.1\)"):
        compare_outputs(a, a + 0.5, 0.1, "the copy")
    assert compare_outputs(a, a + 0.05, 0.1, "the copy") == (pytest.approx(0.05), 0.1)


def test_the_pruning_exactness_check_does_not_pass_nan():
    """Channel groups (framework/pruning/channel_groups.py): zeroed channels must arrive at their consumer as a
    constant; NaN compares as "no difference" and a Linear consumer was then taken as absorbing them exactly."""
    from litzoo.framework.pruning.channel_groups import _absorb_reason

    class AddNaN(nn.Module):
        def forward(self, x):
            return x + float("nan")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.n, self.c = nn.Conv2d(1, 2, 1), AddNaN(), nn.Linear(2, 3)

        def forward(self, x):
            return self.c(self.n(self.a(x)).mean((2, 3)))

    reason = _absorb_reason(Net().double(), "a", {"c": [0]}, torch.zeros(2, 1, 4, 4))
    assert reason == "the float64 check gives non-finite values at c (4 NaN of 4 values)"
