"""RepOptimizer: train a plain conv as if it were a multi-branch CSLA block, by scaling its gradient.

Ding et al., "Re-parameterizing Your Optimizers rather than Architectures", ICLR 2023. Reference
implementation: DingXiaoH/RepOptimizers (``repoptimizer/repoptvgg_impl.py``: ``reinitialize`` and
``generate_grad_mults``; ``repoptimizer/repoptimizer_sgd.py``: the update).

The rule itself (why ``grad *= M`` with ``M = s_conv^2 + s_1x1^2 (centre) + 1 (identity diagonal)``
makes a plain conv follow the CSLA block under SGD, and the scales-not-squared rule of
RepOpt-AdamW) lives in the core, :mod:`litzoo.framework.reparam.csla`, as
:class:`~litzoo.framework.reparam.csla.GradientMultipliers`; RepOpt-VGG applies the same object
from its own hooks. This callback applies it to any user's LightningModule.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from litzoo.framework.reparam.csla import GradientMultipliers


class RepOptimizer(Callback):
    """Gradient multipliers for plain layers (RepOpt-SGD / RepOpt-AdamW), applied around the optimizer step.

    In ``on_before_optimizer_step`` gradients are synchronised across DDP ranks, unscaled under AMP
    and accumulated once per optimizer step, so the multiply acts on exactly what the optimizer
    would use. With ``rule="adamw"`` a step post-hook on the optimizer also multiplies the step's
    Adam update by ``M`` (the weight-decay shrink is left alone), which is the official
    ``RepOptimizerAdamW`` without replacing the user's ``torch.optim.Adam`` / ``AdamW``. Gradient
    clipping, other optimizers, and a model that already applies its own multipliers are refused
    when fit starts.

    Args:
        multipliers: ``{parameter name: multiplier}`` (names as in ``pl_module.named_parameters()``;
            each multiplier has the parameter's shape), e.g. from :func:`litzoo.framework.reparam.csla.csla_grad_multiplier`
            with ``power=2`` for ``rule="sgd"`` and ``power=1`` for ``rule="adamw"``.
        rule: ``"sgd"`` (``torch.optim.SGD``: multiply the gradient) or ``"adamw"``
            (``torch.optim.Adam`` / ``AdamW``: multiply the gradient and the update).
    """

    def __init__(self, multipliers: dict[str, Tensor], rule: Literal["sgd", "adamw"] = "sgd") -> None:
        self.gradients = GradientMultipliers(multipliers, rule)

    @property
    def rule(self) -> str:
        return self.gradients.rule

    @property
    def multipliers(self) -> dict[str, Tensor]:
        return self.gradients.multipliers

    def set_multipliers(self, multipliers: dict[str, Tensor], rule: Literal["sgd", "adamw"] | None = None) -> None:
        """Replace the multipliers (and the rule) before fit starts."""
        self.gradients.set_multipliers(multipliers, rule)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.gradients.bind(pl_module, trainer.optimizers, trainer.gradient_clip_val, who="RepOptimizer")

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this inside optimizer.step(closure), before the update: the weights are the old ones
        self.gradients.multiply_gradients()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.gradients.release()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.gradients.release()

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.gradients.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # restored before configure_optimizers and on_fit_start, which check the rule against the optimizer
        self.gradients.load_state_dict(state_dict, who="RepOptimizer")
