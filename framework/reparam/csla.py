"""CSLA blocks and RepOptimizer's gradient rule: train a plain conv as if it were a multi-branch block.

Ding et al., "Re-parameterizing Your Optimizers rather than Architectures", ICLR 2023. Reference
implementation: DingXiaoH/RepOptimizers (``repoptimizer/repoptvgg_impl.py``: ``reinitialize`` and
``generate_grad_mults``; ``repoptimizer/repoptimizer_sgd.py`` and ``repoptimizer_adamw.py``: the update).

A CSLA block (constant-scale linear addition) computes
``s_conv * conv3x3(x; K) + s_1x1 * conv1x1(x; P) + d * x`` with constant per-output-channel
scales ``s_conv``, ``s_1x1`` and a trainable per-channel identity scale ``d``. It is linear in its
parameters, so it equals one 3x3 conv with ``W = s_conv K + s_1x1 pad(P) + diag(d)`` at the centre.
Training ``K``, ``P`` and ``d`` with momentum SGD moves ``W`` exactly as momentum SGD on ``W`` with
its gradient multiplied element-wise by

    M = s_conv^2 (every position) + s_1x1^2 (centre) + 1 (centre of the diagonal, with identity),

because every step of SGD and its momentum is linear in the gradient. So the plain conv, initialised
as the CSLA block's equivalent kernel (the paper's "rule of initialization",
:func:`csla_initialization`) and trained with ``grad *= M`` (the "rule of iteration",
:func:`csla_grad_multiplier` applied by :class:`GradientMultipliers`), follows the multi-branch model
step for step while never computing its branches.

What breaks the equivalence: anything non-linear between the multiply and the update (gradient
clipping: refused here), and SGD's L2 weight decay, which the official optimizer adds after the
multiply (``d_p = M * grad + wd * p``, so the plain model's decay is not the CSLA model's; the paper
accepts this).

Adam-type optimizers normalise every element by its own gradient scale, so a branch's scale no
longer enters squared: a branch ``s * V`` trained with Adam moves ``W`` by about ``s`` times Adam's
normalised step. The official ``RepOptimizerAdamW`` therefore uses ``M = sum of the scales``
(power 1) and multiplies both the gradient and the final update ``exp_avg * M / denom``; with
decoupled weight decay (AdamW), which shrinks every branch and so ``W`` by the same factor, the plain
model then follows the CSLA model up to Adam's ``eps`` (which enters as ``eps / M``).

:class:`GradientMultipliers` is the rule of iteration as one object, used by the ``RepOptimizer``
callback (any user's model) and by RepOpt-VGG (which applies it from its own hooks).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from litzoo.framework.errors import LitzooError


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


#: the optimizer each update rule reproduces the multi-branch model under
RULE_OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], ...]] = {
    "sgd": (torch.optim.SGD,),
    "adamw": (torch.optim.Adam,),  # torch.optim.AdamW is an Adam with decoupled weight decay
}


def optimizer_rule(optimizer: torch.optim.Optimizer) -> str | None:
    """The RepOptimizer update rule for ``optimizer`` (``"sgd"`` or ``"adamw"``), or None if it has none."""
    for rule, types in RULE_OPTIMIZERS.items():
        if isinstance(optimizer, types):
            return rule
    return None


def _check_rule(rule: str) -> None:
    if rule not in RULE_OPTIMIZERS:
        raise ValueError(f"rule must be one of {sorted(RULE_OPTIMIZERS)}, got {rule!r}")


#: id(parameter) -> the GradientMultipliers bound to it; two rules on one weight would multiply twice
_BOUND: dict[int, weakref.ref[GradientMultipliers]] = {}


class GradientMultipliers:
    """The rule of iteration (official ``RepOptimizerSGD`` / ``RepOptimizerAdamW``) for named parameters.

    Used as: :meth:`bind` once the optimizers exist (Lightning: ``on_fit_start``), then
    :meth:`multiply_gradients` after the gradients are final and before each optimizer step
    (Lightning: ``on_before_optimizer_step``, where gradients are synchronised across DDP ranks,
    unscaled under AMP and accumulated), and :meth:`release` when training ends. In a plain
    PyTorch loop: ``rule.bind(model, [optimizer])``; ``loss.backward()``;
    ``rule.multiply_gradients()``; ``optimizer.step()``.

    With ``rule="adamw"`` a step post-hook on the optimizer also multiplies the step's Adam update
    by ``M`` (the decoupled weight-decay shrink is left alone), which is the official
    ``RepOptimizerAdamW`` without replacing the user's ``torch.optim.Adam`` / ``AdamW``.

    Args:
        multipliers: ``{parameter name: multiplier}`` (names as in ``module.named_parameters()``;
            each multiplier has the parameter's shape), e.g. from :func:`csla_grad_multiplier`
            with ``power=2`` for ``rule="sgd"`` and ``power=1`` for ``rule="adamw"``.
        rule: ``"sgd"`` (``torch.optim.SGD``: multiply the gradient) or ``"adamw"``
            (``torch.optim.Adam`` / ``AdamW``: multiply the gradient and the update).
    """

    def __init__(self, multipliers: dict[str, Tensor], rule: Literal["sgd", "adamw"] = "sgd") -> None:
        _check_rule(rule)
        self.rule = rule
        self.set_multipliers(multipliers)
        self._params: dict[str, nn.Parameter] = {}
        self._before: dict[str, Tensor] = {}  # rule "adamw": parameters before the step
        self._groups: dict[str, tuple[torch.optim.Optimizer, dict[str, Any]]] = {}  # name -> (its optimizer, its group)
        self._step_hooks: list[Any] = []

    def set_multipliers(self, multipliers: dict[str, Tensor], rule: Literal["sgd", "adamw"] | None = None) -> None:
        """Replace the multipliers (and the rule); takes effect at the next :meth:`bind`."""
        if rule is not None:
            _check_rule(rule)
            self.rule = rule
        if not multipliers:
            raise ValueError("multipliers is empty: give {parameter name: multiplier tensor}")
        for name, multiplier in multipliers.items():
            if not isinstance(multiplier, Tensor) or not torch.isfinite(multiplier).all():
                raise ValueError(f"the multiplier of '{name}' must be a finite tensor")
        self.multipliers = {name: m.detach().clone() for name, m in multipliers.items()}

    # ---------------------------------------------------------------- binding to a model and its optimizers
    def bind(
        self,
        module: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        gradient_clip_val: float | None = None,
        who: str = "RepOptimizer",
    ) -> None:
        """Check the setting and attach to ``module``'s parameters and ``optimizers``.

        Raises a :class:`LitzooError` (prefixed by ``who``) for gradient clipping, an optimizer
        without a rule or of the other rule, a missing parameter or a multiplier of the wrong shape,
        and a parameter another bound :class:`GradientMultipliers` already multiplies.
        """
        if gradient_clip_val:
            raise LitzooError(
                f"{who}: gradient_clip_val={gradient_clip_val} would clip the multiplied gradients and break the "
                "equivalence with the multi-branch model (the official README says the same); remove it"
            )
        for optimizer in optimizers:
            rule = optimizer_rule(optimizer)
            if rule is None:
                raise LitzooError(
                    f"{who}: {type(optimizer).__name__} is not supported; the gradient multipliers reproduce the multi-branch "
                    "model under torch.optim.SGD (rule='sgd') or torch.optim.Adam/AdamW (rule='adamw')"
                )
            if rule != self.rule:
                raise LitzooError(
                    f"{who}: the multipliers are for rule='{self.rule}' but the optimizer is {type(optimizer).__name__}; "
                    f"build them for rule='{rule}' (csla_grad_multiplier power={2 if rule == 'sgd' else 1})"
                )
        params = dict(module.named_parameters())
        missing = [name for name in self.multipliers if name not in params]
        if missing:
            raise LitzooError(f"{who}: no parameter named {missing[:3]} in {type(module).__name__}")
        for name, multiplier in self.multipliers.items():
            if multiplier.shape != params[name].shape:
                raise LitzooError(f"{who}: the multiplier of '{name}' has shape {tuple(multiplier.shape)}, the parameter {tuple(params[name].shape)}")
        for name in self.multipliers:
            holder = _holder(params[name])
            if holder is not None and holder is not self:
                raise LitzooError(
                    f"{who}: '{name}' already has its gradient multiplied by another rule of iteration (a RepOptimizer callback "
                    "on a model that applies its own, such as RepOpt-VGG?); the multipliers would apply twice: keep one"
                )
        self.release()
        # looked up by name once per fit: parameters are the same objects for the whole fit (DDP too)
        self._params = {name: params[name] for name in self.multipliers}
        for param in self._params.values():
            _BOUND[id(param)] = weakref.ref(self)
        self.multipliers = {name: m.to(device=params[name].device, dtype=params[name].dtype) for name, m in self.multipliers.items()}
        if self.rule == "adamw":
            # looked up once: the post-hook reads the lr / decay of the parameter's group at each step
            owners = {id(p): (optimizer, group) for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]}
            self._groups = {name: owners[id(param)] for name, param in self._params.items() if id(param) in owners}
            self._step_hooks = [optimizer.register_step_post_hook(self._scale_update) for optimizer in optimizers]
        rank_zero_info(f"{who} ({self.rule}): gradient multipliers on {len(self.multipliers)} parameters")

    def release(self) -> None:
        """Detach from the parameters and optimizers (the multipliers stay)."""
        for hook in self._step_hooks:
            hook.remove()
        self._step_hooks = []
        for param in self._params.values():
            if _holder(param) is self:
                del _BOUND[id(param)]
        self._params, self._groups, self._before = {}, {}, {}

    # ---------------------------------------------------------------- each step
    def multiply_gradients(self) -> None:
        """``grad *= M`` for every bound parameter; call before the optimizer step, on the old weights."""
        self._before = {}
        for name, param in self._params.items():
            if param.grad is not None:
                param.grad.mul_(self.multipliers[name])
                if self.rule == "adamw":
                    self._before[name] = param.detach().clone()

    @torch.no_grad()
    def _scale_update(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """After an Adam step: ``p = shrunk + M * (p - shrunk)``, ``shrunk`` = the old weight after decoupled decay."""
        if not self._before:
            return
        for name, before in self._before.items():
            owner, group = self._groups.get(name, (None, None))
            if owner is not optimizer:  # another optimizer's parameter (or one no optimizer trains)
                continue
            param = self._params[name]
            shrunk = before
            if group.get("decoupled_weight_decay", False) and group["weight_decay"]:
                shrunk = before * (1 - float(group["lr"]) * group["weight_decay"])
            param.copy_(torch.addcmul(shrunk, self.multipliers[name], param - shrunk))
        self._before = {}

    # ---------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "multipliers": {name: m.cpu() for name, m in self.multipliers.items()}}

    def load_state_dict(self, state_dict: dict[str, Any], who: str = "RepOptimizer") -> None:
        saved = state_dict.get("multipliers", {})
        if saved.keys() != self.multipliers.keys():
            raise LitzooError(f"{who}: the checkpoint has multipliers for {sorted(saved)[:3]} ..., this run for {sorted(self.multipliers)[:3]} ...")
        self.rule = state_dict.get("rule", "sgd")
        self.multipliers = {name: m.clone() for name, m in saved.items()}


def _holder(param: Tensor) -> GradientMultipliers | None:
    """The :class:`GradientMultipliers` bound to ``param`` now, if any (ids of freed tensors are reused: checked)."""
    ref = _BOUND.get(id(param))
    holder = ref() if ref is not None else None
    if holder is None or not any(p is param for p in holder._params.values()):
        return None
    return holder
