"""Which output channels of a model can be removed, with everything that must go with them.

Removing output channel ``c`` of a conv also removes channel ``c`` of its BatchNorm, of any
depthwise conv (and its BN) it feeds, and input channel ``c`` of every layer that reads it. Where
channels meet in a residual addition they are tied to other convs' channels; ResRep prunes only
layers whose channels are not tied ("internal" layers: the first conv of a basic block, the first
two of a bottleneck, the expansion of an inverted residual). Torch-Pruning's ``DependencyGraph``
(Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023) traces the model and returns
exactly these coupled sets; this module reads them, keeps the groups whose removal is exact, and
does the removal.

Exact means: when the channels are zero at the pruned conv's output (ResRep's masked compactor
rows), the pruned model computes what the unpruned one does. A channel that stays zero until a
consumer reads it is simply dropped. A channel that passes a depthwise conv and its BatchNorm (or
an activation with ``f(0) != 0``) reaches the consumer as a constant; a 1x1 conv or a linear layer
absorbs that constant into its bias (as the official ResRep MobileNet conversion does), a padded
kxk conv cannot, and such a group is skipped. Both facts are checked numerically on a float64 copy
with random BatchNorm statistics, not assumed from layer types.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from litzoo.framework.graph import conv_bn_pairs
from litzoo.framework.pruning.compactor import is_block_producer
from litzoo.framework.reparam.fuse_model import fuse_model
from litzoo.framework.reparam.verify import detached_copy, randomize_batchnorm


@dataclass
class ChannelGroup:
    """The output channels of ``leader`` and the layers that lose channels with them.

    Attributes:
        leader: the ``nn.Conv2d`` whose output channels are pruned (its compactor folds into it).
        norm: the BatchNorm2d that alone consumes the leader's output (``None``: the compactor
            follows the conv itself).
        placement: the module the compactor attaches to in the training-time model (the norm,
            the conv, or a re-parameterizable block's nonlinearity).
        channels: the leader's output channels.
        followers: layers whose output channels go with the leader's (depthwise convs, BatchNorms).
        consumers: layers whose input channels are removed (convs with ``groups=1``, linears).
    """

    leader: str
    norm: str | None
    channels: int
    followers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    placement: str = ""

    def __post_init__(self) -> None:
        self.placement = self.placement or self.norm or self.leader

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ChannelGroup:
        return cls(**values)


@dataclass
class GroupReport:
    groups: list[ChannelGroup] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.groups)} prunable conv layers, {len(self.skipped)} left alone"]
        for g in self.groups:
            extra = f" (with {', '.join(g.followers)})" if g.followers else ""
            lines.append(f"  prunable {g.leader}: {g.channels} channels{extra}")
        lines += [f"  kept     {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def dependency_graph(model: nn.Module, example_inputs: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's traced dependency graph of ``model`` (which it runs once: pass it in eval mode).

    The graph is read from autograd, so it is built with gradients on, also when called from a
    Lightning evaluation loop (inference mode).
    """
    with torch.inference_mode(False), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs.clone(), verbose=False)


def _pruning_group(graph: tp.DependencyGraph, conv: nn.Conv2d, idxs: list[int]):
    return graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)


def _group_members(graph: tp.DependencyGraph, model: nn.Module, conv: nn.Conv2d, idxs: list[int]) -> tuple[list[str], dict[str, list[int]], str | None]:
    """Followers, consumers (with the input indices that hold ``idxs``) and the reason the group
    cannot be pruned alone (``None`` if it can)."""
    names = {module: name for name, module in model.named_modules()}
    followers: list[str] = []
    consumers: dict[str, list[int]] = {}
    for dep, dep_idxs in _pruning_group(graph, conv, idxs):
        module = dep.target.module
        name = names.get(module)
        if module is conv or name is None:  # the root, or a traced functional op (add, relu, view ...)
            continue
        if _is_depthwise(module) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            if name not in followers:
                followers.append(name)
        elif type(module) in (nn.Conv2d, nn.Linear):
            if graph.is_out_channel_pruning_fn(dep.handler) or (isinstance(module, nn.Conv2d) and module.groups != 1):
                return [], {}, f"its output channels are tied to those of {name} (a residual addition or a grouped conv); the paper prunes internal layers only"
            consumers.setdefault(name, []).extend(int(i) for i in dep_idxs)
        else:
            return [], {}, f"{name} ({type(module).__name__}) shares its channels and has no exact channel removal here"
    if not consumers:
        return [], {}, "no layer reads its output channels (it is a model output)"
    return followers, consumers, None


def capture_inputs(model: nn.Module, names: list[str], x: Tensor) -> dict[str, Tensor]:
    """``{name: the first input of that submodule}`` in one no-grad forward of ``model`` on ``x``."""
    captured: dict[str, Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(lambda _m, args, name=name: captured.__setitem__(name, args[0].detach().clone()))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _select(inputs: Tensor, consumer: nn.Module, idxs: list[int]) -> Tensor:
    """The consumer's view of removed channels: ``(B, k, H, W)`` for a conv, ``(..., k)`` for a linear."""
    index = torch.as_tensor(idxs, device=inputs.device)
    return inputs.index_select(1 if isinstance(consumer, nn.Conv2d) else inputs.dim() - 1, index)


def _zero_output(_module: nn.Module, _args: Any, output: Tensor) -> Tensor:
    return torch.zeros_like(output)


def _absorb_reason(model: nn.Module, placement: str, consumers: dict[str, list[int]], example_inputs: Tensor) -> str | None:
    """Zero the channels at ``placement`` (float64, random BN statistics) and check at every consumer
    that they arrive as an input-independent value the consumer can absorb (``None``: they do)."""
    handle = model.get_submodule(placement).register_forward_hook(_zero_output)
    try:
        generator = torch.Generator().manual_seed(0)
        x1 = torch.randn(example_inputs.shape, generator=generator, dtype=torch.float64)
        x2 = torch.randn(example_inputs.shape, generator=generator, dtype=torch.float64) * 2 + 1
        seen = [capture_inputs(model, list(consumers), x) for x in (x1, x2)]
    finally:
        handle.remove()
    for name, idxs in consumers.items():
        consumer = model.get_submodule(name)
        a, b = (_select(s[name], consumer, idxs) for s in seen)
        tolerance = 1e-9 * max(1.0, a.abs().max().item(), b.abs().max().item())
        if (a - b).abs().max() > tolerance or (a - a[:1]).abs().max() > tolerance:
            return f"zeroing its channels does not make them constant at {name} (something the traced graph does not show mixes them)"
        if a.abs().max() <= tolerance:
            continue  # they arrive as zeros: dropping them is exact
        if isinstance(consumer, nn.Linear):
            continue  # a constant input adds a constant to the output: absorbed by the bias
        uniform = (a - a.mean(dim=(2, 3), keepdim=True)).abs().max() <= tolerance
        if consumer.kernel_size != (1, 1) or consumer.padding not in ((0, 0), 0) or not uniform:
            return (
                f"its channels reach {name} as a non-zero constant (through a depthwise conv's BatchNorm or an activation with f(0) != 0) "
                f"and a {consumer.kernel_size[0]}x{consumer.kernel_size[1]} conv with padding {consumer.padding} cannot absorb it exactly"
            )
    return None


def find_channel_groups(model: nn.Module, example_inputs: Tensor, exclude: list[str] | tuple[str, ...] = ()) -> GroupReport:
    """The prunable output-channel groups of ``model`` (which is not changed: a copy is analysed).

    The analysis runs on the deploy form of the model (re-parameterizable blocks fused, see
    :func:`litzoo.framework.reparam.fuse_model`): a RepVGG block's identity branch ties its output to its
    input channels only while training; fused, the block is a plain conv whose output channels
    are as free as any. Its compactor then sits before the block's nonlinearity.

    Args:
        model: any module whose forward takes ``example_inputs``.
        example_inputs: a batch with the model's input shape (its values are not used).
        exclude: ``fnmatch`` patterns of conv names (in the deploy form) to leave alone.

    Returns:
        The groups, and for every other conv with ``groups=1`` the reason it is left alone.
        Names are those of the deploy form (``stage1.0.conv`` for a fused RepVGG block).
    """
    copy = fuse_model(detached_copy(model).cpu().eval(), inplace=True).double()
    randomize_batchnorm(copy)
    x = example_inputs[:2].detach().to("cpu", torch.float64)
    graph = dependency_graph(copy, x)
    pairs = conv_bn_pairs(copy)
    calls = _call_counts(copy, x)
    original = dict(model.named_modules())
    report = GroupReport()
    for name, conv in copy.named_modules():
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            continue  # depthwise and grouped convs follow the conv that feeds them
        reason = None
        placement = _placement(original, name, pairs.get(name))
        if any(fnmatch.fnmatch(name, pattern) for pattern in exclude):
            reason = "excluded"
        elif type(conv) is not nn.Conv2d:
            reason = f"{type(conv).__name__} is not a plain nn.Conv2d"
        elif calls.get(name, 0) != 1:
            reason = f"called {calls.get(name, 0)} times in one forward (shared or unused)"
        elif conv.out_channels < 2:
            reason = "a single output channel"
        elif placement is None:
            reason = "it is the fused form of a re-parameterizable block without its own nonlinearity (e.g. a StructuralReparam branch block): no place for a compactor yet"
        if reason is None:
            followers, consumers, reason = _group_members(graph, copy, conv, list(range(conv.out_channels)))
        if reason is None:
            norm = pairs.get(name)
            group = ChannelGroup(name, norm, conv.out_channels, [f for f in followers if f != norm], list(consumers), placement)
            reason = _absorb_reason(copy, norm or name, consumers, x)
        if reason is None:
            report.groups.append(group)
        else:
            report.skipped[name] = reason
    return report


def _placement(original: dict[str, nn.Module], name: str, norm: str | None) -> str | None:
    """Where the compactor of the deploy-form conv ``name`` goes in the (training-time) model."""
    if type(original.get(name)) is nn.Conv2d:
        return norm or name
    for block in (name, name.removesuffix(".conv")):  # fused to a bare conv, or to Sequential(conv, nonlinearity)
        if is_block_producer(original.get(block)):
            return f"{block}.nonlinearity"
    return None


def _call_counts(model: nn.Module, x: Tensor) -> dict[str, int]:
    counts: dict[str, int] = {}
    handles = [
        module.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return counts
