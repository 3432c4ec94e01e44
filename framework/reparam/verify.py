"""Checking a fusion: BatchNorm states that expose scale and bias bugs, and an fp64 verifier."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from litzoo.framework.verification import check_finite, max_abs_difference, output_scale, output_tensors


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


def detached_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that leaves out a LightningModule's trainer (and its process groups,
    loggers, locks), which cannot and must not be copied."""
    memo: dict[int, object] = {}
    for attribute in ("_trainer", "_fabric"):
        value = module.__dict__.get(attribute)
        if value is not None:
            memo[id(value)] = None
    return copy.deepcopy(module, memo)


def fusion_error(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    randomize_bn: bool = True,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    relative: bool = False,
    fuse: Callable[[nn.Module], nn.Module] | None = None,
) -> float:
    """Max ``|fused(x) - model(x)|`` measured the way that exposes real fusion bugs.

    "The fused output differs" is the most reported problem of the official repositories
    (RepVGG#9, #19, #35, #100); the cause is almost always a train-mode comparison or float32
    round-off. This verifier works on a copy of ``model``: it gives every BatchNorm random
    statistics (defaults hide scale and bias bugs), casts to ``dtype`` (float64: round-off drops to
    ~1e-12, so anything larger is a real error), puts it in eval mode, and compares the outputs
    before and after the fusion (``fuse``: :func:`fuse_model` by default; any function that
    returns the fused model, in place or not). ``model`` itself is not changed.

    Returns:
        The largest absolute difference over all output tensors; with ``relative=True`` divided
        by ``max(1, max|y|)`` (random BN statistics can grow activations in deep nets).

    Raises:
        LitzooError: the outputs before or after the fusion hold a NaN or an infinity (a diverged
            model, or a fusion that divides by zero): no difference can vouch for them.
    """
    from litzoo.framework.reparam.fuse_model import fuse_model

    reference = detached_copy(model).to(dtype).eval()
    if randomize_bn:
        randomize_batchnorm(reference, seed)
    x = inputs.to(dtype)
    with torch.no_grad():
        before = output_tensors(reference(x))
        fused = (fuse or (lambda copy_: fuse_model(copy_, inplace=True)))(reference).eval()  # reference is already a copy
        after = output_tensors(fused(x))
    if len(before) != len(after):
        raise ValueError(f"the fused model returns {len(after)} tensors, the original {len(before)}")
    # NaN would compare as "no difference" below any tolerance: non-finite outputs fail the check
    where = f"fusion check ({str(dtype).removeprefix('torch.')}, {'random' if randomize_bn else 'its own'} BatchNorm statistics)"
    check_finite(before, f"{where}: the outputs of the model before fusion")
    check_finite(after, f"{where}: the outputs of the fused model")
    error = max_abs_difference(before, after)
    if relative:
        error /= output_scale(before)
    return error
