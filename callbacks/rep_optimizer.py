"""RepOptimizer: train a plain conv as if it were a multi-branch CSLA block, by scaling its gradient.

Ding et al., "Re-parameterizing Your Optimizers rather than Architectures", ICLR 2023. Reference
implementation: DingXiaoH/RepOptimizers (``repoptimizer/repoptvgg_impl.py``: ``reinitialize`` and
``generate_grad_mults``; ``repoptimizer/repoptimizer_sgd.py``: the update).

A CSLA block (constant-scale linear addition) computes
``s_conv * conv3x3(x; K) + s_1x1 * conv1x1(x; P) + d * x`` with constant per-output-channel
scales ``s_conv``, ``s_1x1`` and a trainable per-channel identity scale ``d``. It is linear in its
parameters, so it equals one 3x3 conv with ``W = s_conv K + s_1x1 pad(P) + diag(d)`` at the centre.
Training ``K``, ``P`` and ``d`` with momentum SGD moves ``W`` exactly as momentum SGD on ``W`` with
its gradient multiplied element-wise by

    M = s_conv^2 (every position) + s_1x1^2 (centre) + 1 (centre of the diagonal, with identity),

because every step of SGD and its momentum is linear in the gradient. So the plain conv, initialised
as the CSLA block's equivalent kernel (the paper's "rule of initialization") and trained with
``grad *= M`` (the "rule of iteration"), follows the multi-branch model step for step while never
computing its branches.

What breaks the equivalence: anything non-linear between the multiply and the update (gradient
clipping: refused here), and weight decay, which the official optimizer adds after the multiply
(``d_p = M * grad + wd * p``, so the plain model's decay is not the CSLA model's; the paper accepts
this). Adam-type optimizers need the update multiplied too (the official ``RepOptimizerAdamW``);
that variant is not implemented here yet, so only ``torch.optim.SGD`` is accepted.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from framework.errors import LitzooError


def csla_grad_multiplier(
    weight_shape: torch.Size | tuple[int, ...],
    scale_conv: Tensor,
    scale_1x1: Tensor,
    identity: bool,
    power: int = 2,
) -> Tensor:
    """The rule of iteration for one 3x3 conv: ``M`` with the weight's shape ``(out, in, 3, 3)``.

    Args:
        weight_shape: the conv weight's shape (a 3x3 kernel).
        scale_conv: constant scale of the 3x3 branch, per output channel ``(out,)``.
        scale_1x1: constant scale of the 1x1 branch, per output channel ``(out,)``.
        identity: the CSLA block has an identity branch (needs ``in == out``).
        power: 2 for SGD (each branch contributes its scale squared); the official AdamW rule uses 1.
    """
    out_channels, in_channels, kh, kw = weight_shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"the CSLA rule is defined for 3x3 kernels, got {kh}x{kw}")
    if scale_conv.shape != (out_channels,) or scale_1x1.shape != (out_channels,):
        raise ValueError(f"scales must have shape ({out_channels},), got {tuple(scale_conv.shape)} and {tuple(scale_1x1.shape)}")
    if identity and in_channels != out_channels:
        raise ValueError(f"an identity branch needs in == out channels, got {in_channels} -> {out_channels}")
    multiplier = (scale_conv**power).view(-1, 1, 1, 1).expand(out_channels, in_channels, 3, 3).clone()
    multiplier[:, :, 1, 1] += (scale_1x1**power).view(-1, 1)
    if identity:
        channels = torch.arange(out_channels)
        multiplier[channels, channels, 1, 1] += 1.0
    return multiplier


@torch.no_grad()
def csla_initialization(
    conv: nn.Conv2d,
    scale_conv: Tensor,
    scale_1x1: Tensor,
    kernel_1x1: Tensor,
    identity_scale: Tensor | None = None,
) -> None:
    """The rule of initialization, in place: ``conv.weight`` becomes the equivalent kernel of a CSLA
    block whose 3x3 branch starts at ``conv.weight`` and whose 1x1 branch starts at ``kernel_1x1``.

    ``identity_scale`` (``(out,)``) adds the identity branch at its initial value (the official
    code uses the searched identity scales, or 1).
    """
    weight = conv.weight * scale_conv.view(-1, 1, 1, 1) + F.pad(kernel_1x1, [1, 1, 1, 1]) * scale_1x1.view(-1, 1, 1, 1)
    if identity_scale is not None:
        channels = torch.arange(conv.out_channels)
        weight[channels, channels, 1, 1] += identity_scale
    conv.weight.copy_(weight)


class RepOptimizer(Callback):
    """Gradient multipliers for plain layers (RepOpt-SGD), applied in ``on_before_optimizer_step``.

    There, gradients are synchronised across DDP ranks, unscaled under AMP and accumulated once per
    optimizer step, so the multiply acts on exactly what the optimizer would use.

    Args:
        multipliers: ``{parameter name: multiplier}`` (names as in ``pl_module.named_parameters()``;
            each multiplier has the parameter's shape), e.g. from :func:`csla_grad_multiplier`.
    """

    def __init__(self, multipliers: dict[str, Tensor]) -> None:
        if not multipliers:
            raise ValueError("multipliers is empty: give {parameter name: multiplier tensor}")
        for name, multiplier in multipliers.items():
            if not isinstance(multiplier, Tensor) or not torch.isfinite(multiplier).all():
                raise ValueError(f"the multiplier of '{name}' must be a finite tensor")
        self.multipliers = {name: m.detach().clone() for name, m in multipliers.items()}
        self._params: dict[str, nn.Parameter] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.gradient_clip_val:
            raise LitzooError(
                f"RepOptimizer: gradient_clip_val={trainer.gradient_clip_val} would clip the multiplied gradients and break the "
                "equivalence with the multi-branch model (the official README says the same); remove it"
            )
        for optimizer in trainer.optimizers:
            if type(optimizer) is not torch.optim.SGD:
                raise LitzooError(
                    f"RepOptimizer: {type(optimizer).__name__} is not supported; the gradient multipliers reproduce the multi-branch "
                    "model under torch.optim.SGD (the AdamW variant also scales the update and is not implemented yet)"
                )
        params = dict(pl_module.named_parameters())
        missing = [name for name in self.multipliers if name not in params]
        if missing:
            raise LitzooError(f"RepOptimizer: no parameter named {missing[:3]} in {type(pl_module).__name__}")
        for name, multiplier in self.multipliers.items():
            if multiplier.shape != params[name].shape:
                raise LitzooError(f"RepOptimizer: the multiplier of '{name}' has shape {tuple(multiplier.shape)}, the parameter {tuple(params[name].shape)}")
        # looked up by name once per fit: parameters are the same objects for the whole fit (DDP too)
        self._params = {name: params[name] for name in self.multipliers}
        self.multipliers = {name: m.to(device=params[name].device, dtype=params[name].dtype) for name, m in self.multipliers.items()}
        rank_zero_info(f"RepOptimizer: gradient multipliers on {len(self.multipliers)} parameters")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        for name, param in self._params.items():
            if param.grad is not None:
                param.grad.mul_(self.multipliers[name])

    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": {name: m.cpu() for name, m in self.multipliers.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("multipliers", {})
        if saved.keys() != self.multipliers.keys():
            raise LitzooError(f"RepOptimizer: the checkpoint has multipliers for {sorted(saved)[:3]} ..., this run for {sorted(self.multipliers)[:3]} ...")
        self.multipliers = {name: m.clone() for name, m in saved.items()}
