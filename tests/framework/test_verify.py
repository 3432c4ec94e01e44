"""The fusion verifier: float64, eval mode, random BatchNorm statistics, on a copy."""

from __future__ import annotations

import torch
from torch import nn

from litzoo.framework.reparam import ConvBN, RepVGGBlock
from litzoo.framework.reparam.verify import fusion_error


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
