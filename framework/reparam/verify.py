"""Helpers to check a fusion: BatchNorm states that expose scale and bias bugs."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters, in place.

    Fresh BNs (mean 0, var 1, weight 1, bias 0) are almost the identity and hide fusion bugs in
    scales, biases and eps; the official ``tools/verify.py`` of RepVGG randomises them before
    comparing. Some weights are negative, as trained BN weights can be.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
                continue
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.7)
            bn.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.3)
            if bn.affine:
                sign = torch.where(torch.rand(n, generator=generator) < 0.3, -1.0, 1.0)
                bn.weight.copy_(sign * (torch.rand(n, generator=generator) + 0.5))
                bn.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return module
