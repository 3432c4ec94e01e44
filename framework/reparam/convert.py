"""Put re-parameterizable branches into any model, and fuse them back into its own layers.

ACNet and DBB are meant as "a drop-in replacement for regular conv layers of any architecture"
(DBB, CVPR 2021): every conv followed by a BatchNorm becomes a multi-branch block for training, and
after training each block collapses to one conv again. :func:`convert_to_branches` does the first
half on a user's model (found through its traced graph, :func:`litzoo.framework.graph.conv_bn_pairs`),
:func:`fuse_branches` the second half, restoring the *original* layers: a ``Conv2d`` with the
original geometry and bias setting and a ``BatchNorm2d`` in its original place, so the deploy model
has the user's architecture, parameter count and state-dict keys.

Eligibility is explicit. A conv is converted only if the fusion is exact for it:
``nn.Conv2d`` itself (not a subclass), zero padding mode, dilation 1, a square kernel, a
``BatchNorm2d`` with running statistics that alone consumes its output, and the block's own
constraints (ACB: odd k >= 3; DBB: odd k >= 3 with padding k//2, the paper skips 1x1 convs;
RepVGG: the paper's 3x3 with padding 1). A conv inside a block that has its own ``fuse()`` is left
alone (that ``fuse()`` reads it as a conv). Everything else is reported as skipped, with the reason.

The converted blocks fuse back to the user's layers wherever they are fused: the block's ``fuse()``
returns the original conv (its geometry and bias setting) and the :class:`BatchNormSlot` left in the
BatchNorm's place returns the BatchNorm, so :func:`litzoo.framework.reparam.fuse_model` (``ReparamFusion``,
export, quantization, ResRep's planning) gives the same deploy model as :func:`fuse_branches`, also
inside another repository's block whose ``switch_to_deploy()`` reads its conv and BatchNorm.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from litzoo.framework.graph import conv_bn_pairs, find_conv_bn_pairs
from litzoo.framework.reparam.acb import ACBlock
from litzoo.framework.reparam.dbb import DiverseBranchBlock
from litzoo.framework.reparam.repvgg_block import RepVGGBlock

BLOCKS = ("acb", "dbb", "repvgg")
INITS = ("paper", "preserve")

#: The branch initialised from the original conv and BN (the "main" branch) and the BatchNorms
#: that end the other branches (zeroed by ``init="preserve"``).
_MAIN_BRANCH = {"acb": "branch_square", "dbb": "branch_kxk", "repvgg": "branch_3x3"}
_EXTRA_OUTPUT_BNS = {
    "acb": ("branch_vertical.bn", "branch_horizontal.bn"),
    "dbb": ("branch_1x1.bn", "branch_avg.avgbn", "branch_1x1_kxk.bn2"),
    "repvgg": ("branch_1x1.bn", "branch_identity"),
}


@dataclass
class ConvertedLayer:
    """What was replaced, enough to redo the conversion (loading a checkpoint) and to undo it."""

    conv: str
    bn: str
    block: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: int
    groups: int
    conv_bias: bool
    bn_eps: float
    bn_momentum: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ConvertedLayer:
        return cls(**values)


@dataclass
class ConversionReport:
    converted: list[ConvertedLayer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.converted)} conv layers converted, {len(self.skipped)} skipped"]
        lines += [f"  converted {layer.conv} ({layer.kernel_size}x{layer.kernel_size}, stride {layer.stride}, groups {layer.groups})" for layer in self.converted]
        lines += [f"  skipped   {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def _square(value: tuple[int, ...] | str) -> int | None:
    if isinstance(value, str) or len(set(value)) != 1:
        return None
    return int(value[0])


def skip_reason(conv: nn.Module, bn: nn.Module | None, block: str) -> str | None:
    """Why ``conv`` (followed by ``bn``) cannot be converted to ``block`` exactly; ``None`` if it can."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    if bn is None:
        return "no BatchNorm2d alone consumes its output (or the layer is called more than once)"
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or not bn.affine:
        return "its BatchNorm2d has no running statistics or no affine parameters"
    if conv.padding_mode != "zeros":
        return f"padding_mode '{conv.padding_mode}' (the branches' padding would not fuse exactly)"
    if _square(conv.dilation) != 1:
        return f"dilation {conv.dilation}"
    k, stride, padding = _square(conv.kernel_size), _square(conv.stride), _square(conv.padding)
    if k is None or stride is None or padding is None:
        return f"non-square kernel, stride or padding ({conv.kernel_size}, {conv.stride}, {conv.padding})"
    if block == "acb" and (k < 3 or k % 2 == 0):
        return f"{k}x{k} kernel (ACB needs an odd k >= 3: its 1xk and kx1 branches sit on the centre row and column)"
    if block == "dbb" and (k < 3 or k % 2 == 0 or padding != k // 2):
        return f"{k}x{k} kernel with padding {padding} (DBB needs an odd k >= 3 and padding k//2; the paper leaves 1x1 convs as they are)"
    if block == "repvgg" and (k != 3 or padding != 1):
        return f"{k}x{k} kernel with padding {padding} (the RepVGG block is a 3x3 conv with padding 1)"
    return None


def _user_conv(layer: ConvertedLayer, kernel: torch.Tensor) -> nn.Conv2d:
    """The user's conv with ``kernel`` (and a zero bias if it had one)."""
    conv = nn.Conv2d(
        layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
        groups=layer.groups, bias=layer.conv_bias, device=kernel.device, dtype=kernel.dtype,
    )  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(kernel)
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


def _user_batchnorm(layer: ConvertedLayer, bias: torch.Tensor) -> nn.BatchNorm2d:
    """A BatchNorm2d in the user's place whose eval output is ``x + bias`` (mean 0, var ``1 - eps``, weight 1)."""
    bn = nn.BatchNorm2d(layer.out_channels, eps=layer.bn_eps, momentum=layer.bn_momentum, device=bias.device, dtype=bias.dtype)
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - layer.bn_eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias)
    return bn


class _FusesToUserConv:
    """For the blocks put in place of a user's conv: ``fuse()`` gives back that conv, with the fused
    kernel; the fused bias goes to the :class:`BatchNormSlot` in the BatchNorm's place."""

    layer: ConvertedLayer

    def fuse(self) -> nn.Conv2d:
        with torch.no_grad():
            kernel, _ = self.get_equivalent_kernel_bias()
        conv = _user_conv(self.layer, kernel)
        conv.train(self.training)
        return conv


class ConvertedACBlock(_FusesToUserConv, ACBlock):
    """An :class:`ACBlock` in place of a user's conv (:class:`_FusesToUserConv`)."""


class ConvertedDiverseBranchBlock(_FusesToUserConv, DiverseBranchBlock):
    """A :class:`DiverseBranchBlock` in place of a user's conv (:class:`_FusesToUserConv`)."""


class ConvertedRepVGGBlock(_FusesToUserConv, RepVGGBlock):
    """A linear :class:`RepVGGBlock` in place of a user's conv (:class:`_FusesToUserConv`)."""


class BatchNormSlot(nn.Identity):
    """What stands in a user's BatchNorm2d place while its statistics and affine parameters train in
    the main branch of the block that replaced the conv before it; ``fuse()`` gives the BatchNorm back,
    holding the block's fused bias.

    The block is referenced, not registered (it is a submodule of the model at the conv's place);
    a deep copy of the model keeps the reference pointing at the copied block.
    """

    def __init__(self, block: nn.Module, layer: ConvertedLayer) -> None:
        super().__init__()
        object.__setattr__(self, "_block", block)
        self.layer = layer

    def fuse(self) -> nn.BatchNorm2d:
        with torch.no_grad():
            _, bias = self._block.get_equivalent_kernel_bias()
        bn = _user_batchnorm(self.layer, bias)
        bn.train(self.training)
        return bn

    def extra_repr(self) -> str:
        return f"BatchNorm2d({self.layer.out_channels}) of {self.layer.conv}, fused back from its block"


def build_block(layer: ConvertedLayer) -> nn.Module:
    """The training-time block for ``layer`` (fresh parameters, the paper's initialisation)."""
    if layer.block == "acb":
        block: nn.Module = ConvertedACBlock(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, groups=layer.groups)
    elif layer.block == "dbb":
        block = ConvertedDiverseBranchBlock(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, groups=layer.groups)
    elif layer.block == "repvgg":
        block = ConvertedRepVGGBlock(layer.in_channels, layer.out_channels, layer.stride, layer.groups, use_nonlinearity=False)
    else:
        raise ValueError(f"unknown block '{layer.block}'; choose from {', '.join(BLOCKS)}")
    block.layer = layer
    return block


def _initialise(block: nn.Module, layer: ConvertedLayer, conv: nn.Conv2d, bn: nn.BatchNorm2d, init: str) -> None:
    main = block.get_submodule(_MAIN_BRANCH[layer.block])
    with torch.no_grad():
        main.conv.weight.copy_(conv.weight)
        main.bn.load_state_dict(bn.state_dict())
        if conv.bias is not None:
            # BN(Wx + b) in eval mode is BN'(Wx) with the running mean shifted by b; in training
            # BN subtracts the batch mean, which removes b anyway.
            main.bn.running_mean.sub_(conv.bias)
        main.bn.eps, main.bn.momentum = bn.eps, bn.momentum
        if init == "preserve":
            for name in _EXTRA_OUTPUT_BNS[layer.block]:
                try:
                    extra = block.get_submodule(name)
                except AttributeError:  # branch absent (no identity / depthwise DBB without 1x1)
                    continue
                if extra is not None:
                    extra.weight.zero_()
                    extra.bias.zero_()


def _convert_one(model: nn.Module, layer: ConvertedLayer, init: str) -> None:
    conv, bn = model.get_submodule(layer.conv), model.get_submodule(layer.bn)
    block = build_block(layer).to(device=conv.weight.device, dtype=conv.weight.dtype)
    _initialise(block, layer, conv, bn, init)
    block.train(conv.training)
    slot = BatchNormSlot(block, layer)
    slot.train(bn.training)
    model.set_submodule(layer.conv, block)
    model.set_submodule(layer.bn, slot)


def convert_to_branches(
    model: nn.Module,
    block: str,
    init: str = "paper",
    exclude: list[str] | tuple[str, ...] = (),
    example_inputs: torch.Tensor | Callable[[], torch.Tensor | None] | None = None,
) -> ConversionReport:
    """Replace, in place, every eligible conv-BN pair of ``model`` by a ``block`` (``acb``/``dbb``/``repvgg``).

    The block takes the conv's place; the BN becomes ``nn.Identity`` (its statistics and affine
    parameters move into the block's main branch, which also takes the conv's weights).

    Args:
        model: any model whose forward can be traced by torch.fx (or whose untraceable parts are
            ``nn.Sequential`` / have traceable children).
        block: branch structure to train with.
        init: ``"paper"`` keeps the papers' initialisation of the added branches (BN weight 1):
            the model trains from scratch as in the papers. ``"preserve"`` zeroes the added branches'
            final BN, so the converted model computes exactly what it computed before (fine-tuning a
            trained model).
        exclude: ``fnmatch`` patterns of conv names to leave alone (e.g. ``["net.conv1"]`` for a stem).
        example_inputs: an input of ``model``'s forward (or a function returning it, called only when
            needed): convs directly inside modules that torch.fx cannot trace (``int(x.size(1) * ratio)``)
            are paired with their BatchNorm by watching one forward
            (:func:`litzoo.framework.graph.conv_bn_pairs`); without it they are skipped.

    Returns:
        The report: converted layers (in model order) and skipped convs with the reason.
    """
    if block not in BLOCKS:
        raise ValueError(f"unknown block '{block}'; choose from {', '.join(BLOCKS)}")
    if init not in INITS:
        raise ValueError(f"unknown init '{init}'; choose from {', '.join(INITS)}")
    found = find_conv_bn_pairs(model, example_inputs)
    pairs = found.pairs
    owners = {name: m for name, m in model.named_modules() if name and callable(getattr(m, "fuse", None))}
    report = ConversionReport()
    for name, conv in list(model.named_modules()):
        if not isinstance(conv, nn.Conv2d):
            continue
        owner = next((o for o in owners if name.startswith(o + ".")), None)
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
            report.skipped[name] = "excluded by a pattern"
            continue
        if owner is not None:
            report.skipped[name] = f"inside {owner} ({type(owners[owner]).__name__}), a re-parameterizable block whose own fuse() reads it as a conv"
            continue
        if name not in pairs:
            report.skipped[name] = found.unresolved.get(name, "not called by the model's forward")
            continue
        bn_name = pairs[name]
        bn = model.get_submodule(bn_name) if bn_name is not None else None
        reason = skip_reason(conv, bn, block)
        if reason is not None:
            report.skipped[name] = reason
            continue
        layer = _record(name, conv, bn_name, bn, block)
        _convert_one(model, layer, init)
        report.converted.append(layer)
    return report


def _record(name: str, conv: nn.Conv2d, bn_name: str, bn: nn.BatchNorm2d, block: str) -> ConvertedLayer:
    return ConvertedLayer(
        conv=name,
        bn=bn_name,
        block=block,
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size[0],
        stride=conv.stride[0],
        padding=conv.padding[0],
        groups=conv.groups,
        conv_bias=conv.bias is not None,
        bn_eps=bn.eps,
        bn_momentum=bn.momentum,
    )


def converted_layers_in(
    model: nn.Module, state_dict: dict[str, torch.Tensor], example_inputs: torch.Tensor | Callable[[], torch.Tensor | None] | None = None
) -> list[ConvertedLayer]:
    """The conversion that ``state_dict`` was saved with, read off its keys, for the unconverted ``model``.

    A conv-BN pair of ``model`` whose conv name carries a block's main branch in the state dict
    (``<conv>.branch_square.conv.weight`` ...) was converted to that block. Loading a converted
    checkpoint into a fresh model is then: :func:`reconvert`, ``load_state_dict``,
    :func:`fuse_branches`.
    """
    pairs = conv_bn_pairs(model, example_inputs)  # the fresh model, before any conversion (inputs: see convert_to_branches)
    layers = []
    for name, conv in model.named_modules():
        bn_name = pairs.get(name)
        if type(conv) is not nn.Conv2d or bn_name is None:
            continue
        for block, main in _MAIN_BRANCH.items():
            if f"{name}.{main}.conv.weight" in state_dict:
                layers.append(_record(name, conv, bn_name, model.get_submodule(bn_name), block))
                break
    return layers


def reconvert(model: nn.Module, layers: list[ConvertedLayer]) -> None:
    """Redo a recorded conversion on a freshly built model (before loading converted weights)."""
    for layer in layers:
        conv = model.get_submodule(layer.conv)
        if type(conv) is not nn.Conv2d or (conv.in_channels, conv.out_channels, conv.groups) != (layer.in_channels, layer.out_channels, layer.groups):
            raise ValueError(f"cannot redo the conversion of '{layer.conv}': the model has {conv} there")
        _convert_one(model, layer, init="paper")


def still_converted(model: nn.Module, layers: list[ConvertedLayer]) -> list[ConvertedLayer]:
    """The ``layers`` whose block is still in ``model`` (not yet fused back, by :func:`fuse_branches` or ``fuse_model``)."""
    pending = []
    for layer in layers:
        try:
            block = model.get_submodule(layer.conv)
        except AttributeError:  # gone: fused away with an enclosing block (switch_to_deploy deletes its branches)
            continue
        if type(block) is not nn.Conv2d:
            pending.append(layer)
    return pending


def fuse_branches(model: nn.Module, layers: list[ConvertedLayer]) -> nn.Module:
    """Collapse converted blocks into the original ``Conv2d`` + ``BatchNorm2d`` pairs, in place.

    The fused kernel goes into a conv with the original geometry (its bias, if it had one, is
    zero); the fused bias goes into a BatchNorm2d with unit statistics (mean 0, var ``1 - eps``,
    weight 1, bias = fused bias), so eval outputs equal the block's to float round-off. Training
    the deploy model further is ordinary training of the user's architecture. Layers already fused
    back (by :func:`litzoo.framework.reparam.fuse_model`, which does the same) are left as they are.
    """
    for layer in still_converted(model, layers):
        block = model.get_submodule(layer.conv)
        with torch.no_grad():
            kernel, bias = block.get_equivalent_kernel_bias()
        conv, bn = _user_conv(layer, kernel.detach()), _user_batchnorm(layer, bias.detach())
        conv.train(block.training)
        bn.train(block.training)
        model.set_submodule(layer.conv, conv)
        model.set_submodule(layer.bn, bn)
    return model
