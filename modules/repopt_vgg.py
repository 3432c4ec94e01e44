"""RepOpt-VGG: a plain VGG-style net trained as if it had RepVGG's branches (ICLR 2023).

Ding et al., "Re-parameterizing Your Optimizers rather than Architectures", ICLR 2023. Reference
implementation: DingXiaoH/RepOptimizers (``repoptimizer/repoptvgg_model.py``,
``repoptimizer/repoptvgg_impl.py``).

Two stages, two modes of the same network:

* ``mode="hs"`` (Hyper-Search): every block is a linear-add block
  ``BN(s_conv * conv3x3(x) + s_1x1 * conv1x1(x) [+ s_id * x])`` followed by ReLU, with trainable
  per-channel scales, trained on a search set. The scales it learns are what the next stage uses.
* ``mode="target"``: every block is a plain ``conv3x3 -> BN -> ReLU``. With the searched scales
  (``scales=`` an HS checkpoint) its kernels start from the CSLA block's equivalent kernel (rule of
  initialization) and the model multiplies each kernel's gradient before every optimizer step (rule
  of iteration, :class:`litzoo.framework.reparam.csla.GradientMultipliers`, the object the
  ``RepOptimizer`` callback applies to other models), so it trains exactly like the CSLA model with
  those scales frozen, at the cost of a plain VGG. Training and deploy architectures are the same:
  nothing to fuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from typing_extensions import override

from litzoo.framework.checkpoints import load_checkpoint, state_dict_from
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.optim import sgd_momentum
from litzoo.framework.reparam.csla import GradientMultipliers, csla_grad_multiplier, csla_initialization, optimizer_rule
from litzoo.framework.reparam.repvgg_block import stage_widths

MODES = ("target", "hs")


class ChannelScale(nn.Module):
    """A per-channel scale (the official ``ScaleLayer`` without bias)."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class LinearAddBlock(nn.Module):
    """3x3 and 1x1 convs and the identity, each scaled per channel, summed, then BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv_scale_init: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.scale_conv = ChannelScale(out_channels, conv_scale_init)
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
        self.scale_1x1 = ChannelScale(out_channels, conv_scale_init)
        self.scale_identity = ChannelScale(out_channels, 1.0) if in_channels == out_channels and stride == 1 else None
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.scale_identity is not None:
            out = out + self.scale_identity(x)
        return self.relu(self.bn(out))


class PlainVGGBlock(nn.Module):
    """conv3x3 (no bias) -> BN -> ReLU: the target block (official ``RealVGGBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv_scale_init: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv_scale_init = conv_scale_init  # the HS initial scale of this position (used without searched scales)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class RepOptVGG(nn.Module):
    """RepVGG's layout (stages 0-4, widths ``64/128/256/512 x multiplier``) with plain or linear-add blocks.

    The HS scales start at 1 for the first block of each stage and ``sqrt(2 / i)`` for block ``i``
    after it (official ``_make_stage``); identity scales at 1. The defaults are the paper's RepOpt-VGG-B1.

    Args:
        num_blocks: blocks of stages 1-4 (B1: ``[4, 6, 16, 1]``).
        num_classes: classifier outputs.
        width_multiplier: width multipliers of stages 1-4 (B1: ``[2, 2, 2, 4]``).
        in_channels: image channels.
        stage_strides: strides of stages 0-4.
        mode: ``"hs"`` linear-add blocks with trainable scales (Hyper-Search), ``"target"`` plain blocks.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (4, 6, 16, 1),
        num_classes: int = 1000,
        width_multiplier: Sequence[float] = (2.0, 2.0, 2.0, 4.0),
        in_channels: int = 3,
        stage_strides: Sequence[int] = (2, 2, 2, 2, 2),
        mode: Literal["target", "hs"] = "target",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        widths = stage_widths(num_blocks, width_multiplier, stage_strides)
        self.mode = mode
        block = LinearAddBlock if mode == "hs" else PlainVGGBlock
        planes = min(64, widths[0])
        self.stage0 = block(in_channels, planes, stage_strides[0], 1.0)
        stages = []
        for width, count, stride in zip(widths, num_blocks, stage_strides[1:], strict=True):
            blocks = []
            for i in range(count):
                blocks.append(block(planes, width, stride if i == 0 else 1, 1.0 if i == 0 else (2.0 / i) ** 0.5))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(self.gap(x).flatten(1))

    def blocks(self) -> dict[str, nn.Module]:
        """``{name: block}`` in forward order (names as in ``named_modules()``)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, (LinearAddBlock, PlainVGGBlock))}


def searched_scales(path: str, block_names: Sequence[str], prefix: str = "net.") -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
    """``{block: (s_conv, s_1x1, s_identity or None)}`` read from a Hyper-Search checkpoint.

    Raises a one-line :class:`LitzooError` naming the file if a block's scales are missing.
    """
    state = state_dict_from(load_checkpoint(path), path)
    scales = {}
    for name in block_names:
        key = f"{prefix}{name}"
        try:
            conv, one = state[f"{key}.scale_conv.weight"], state[f"{key}.scale_1x1.weight"]
        except KeyError:
            raise LitzooError(f"'{path}' has no Hyper-Search scales for block '{name}' (expected {key}.scale_conv.weight); is it a RepOpt-VGG mode=hs checkpoint of the same architecture?") from None
        scales[name] = (conv, one, state.get(f"{key}.scale_identity.weight"))
    return scales


class RepOptVGGClassifier(ImageClassifier):
    """RepOpt-VGG image classifier: the Hyper-Search model (``mode="hs"``) or the plain target model.

    Args:
        mode: ``"hs"`` trains the linear-add model with trainable scales on a search set;
            ``"target"`` trains the plain VGG with the RepOptimizer's rule of iteration, applied by
            the model itself (no callback needed; a ``RepOptimizer`` callback on it is refused).
        scales: (target) the Hyper-Search checkpoint whose scales define the initialization and
            the gradient multipliers; ``None`` uses the HS initial scales (no search).
        num_classes: classifier outputs.
        optimizer: for the target ``torch.optim.SGD`` (multipliers = squared scales) or
            ``torch.optim.Adam`` / ``AdamW`` (multipliers = scales, applied to gradient and update).
        lr_scheduler, label_smoothing: see :class:`ImageClassifier`.
        **net_kwargs: the :class:`RepOptVGG`'s other arguments, ``num_blocks``, ``width_multiplier``,
            ``in_channels``, ``stage_strides`` (default the paper's RepOpt-VGG-B1).
    """

    def __init__(
        self,
        mode: Literal["target", "hs"] = "target",
        scales: str | None = None,
        num_classes: int = 1000,
        optimizer: OptimizerCallable = sgd_momentum,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        **net_kwargs: Any,
    ) -> None:
        if mode == "hs" and scales is not None:
            raise ValueError("scales are read by the target model; the Hyper-Search model learns them")
        check_network_kwargs(RepOptVGG, net_kwargs, type(self).__name__)
        net = RepOptVGG(num_classes=num_classes, mode=mode, **net_kwargs)
        super().__init__(net, num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler, label_smoothing=label_smoothing)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # per target conv weight: (s_conv, s_1x1, has identity), from which each update rule's multipliers follow
        self.csla_scales: dict[str, tuple[Tensor, Tensor, bool]] = {}
        # the rule of iteration (None for the Hyper-Search model, which trains its branches)
        self.rep_optimizer: GradientMultipliers | None = None
        if mode == "target":
            self._apply_scales(scales)
            self.rep_optimizer = GradientMultipliers(self.grad_multipliers("sgd"), rule="sgd")

    def _apply_scales(self, path: str | None) -> None:
        blocks = self.net.blocks()
        if path is not None:
            scales = searched_scales(path, list(blocks))
        else:  # the HS initial values: what an unsearched CSLA model would use
            scales = {}
            for name, block in blocks.items():
                c = block.conv.out_channels
                identity = torch.ones(c) if block.conv.in_channels == c and block.conv.stride == (1, 1) else None
                scales[name] = (torch.full((c,), block.conv_scale_init), torch.full((c,), block.conv_scale_init), identity)
        generator = torch.Generator().manual_seed(0)
        for name, block in blocks.items():
            s_conv, s_1x1, s_identity = scales[name]
            conv = block.conv
            # the 1x1 branch the CSLA model would have started from (default conv init, kaiming-uniform)
            bound = (1.0 / conv.in_channels) ** 0.5
            kernel_1x1 = (torch.rand(conv.out_channels, conv.in_channels, 1, 1, generator=generator) * 2 - 1) * bound
            csla_initialization(conv, s_conv, s_1x1, kernel_1x1, identity_scale=s_identity)
            self.csla_scales[f"net.{name}.conv.weight"] = (s_conv.double(), s_1x1.double(), s_identity is not None)

    def grad_multipliers(self, rule: str) -> dict[str, Tensor]:
        """The rule of iteration for every conv: squared scales for ``"sgd"``, the scales for ``"adamw"``.

        Computed in float64 and cast to the parameters' dtype when fit starts.
        """
        power = 2 if rule == "sgd" else 1
        return {
            key: csla_grad_multiplier(self.get_parameter(key).shape, s_conv, s_1x1, identity=identity, power=power)
            for key, (s_conv, s_1x1, identity) in self.csla_scales.items()
        }

    @override
    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if self.rep_optimizer is not None:
            # the multipliers follow the optimizer (the official RepOptimizerSGD / RepOptimizerAdamW);
            # any other optimizer is refused when fit starts
            rule = optimizer_rule(config["optimizer"]) or "sgd"
            self.rep_optimizer.set_multipliers(self.grad_multipliers(rule), rule)
        return config

    # The rule of iteration travels with the model (`litzoo fit` needs no callback in the config): the
    # same hooks, at the same points of the step, as the RepOptimizer callback. Lightning calls
    # on_before_optimizer_step after every callback's, once the gradients are synchronised, unscaled
    # and accumulated, and before clipping (refused) and the update. The multipliers are recomputed
    # from the scales in configure_optimizers at every fit, so checkpoints need not hold them.
    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.rep_optimizer is not None:
            self.rep_optimizer.bind(self, self.trainer.optimizers, self.trainer.gradient_clip_val, who=type(self).__name__)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.rep_optimizer is not None:
            self.rep_optimizer.multiply_gradients()

    @override
    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if self.rep_optimizer is not None:
            self.rep_optimizer.release()
