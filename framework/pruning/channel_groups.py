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

Torch-Pruning cannot follow every channel permutation: a channel shuffle (``view`` / ``transpose`` /
``reshape`` between concatenations) can make its index maps grow without end (its search then never
returns: over 300 s on a ShuffleNetV2) or point past a layer's channels. The search is therefore
done here, on Torch-Pruning's graph and index maps, with bounded work (:func:`coupled_channels`):
once per model for the index maps, once per coupled set of convs for the search, and a group whose
indices run out of range or whose search does not end is left alone with that reason. Finally the
whole plan is checked end to end on the float64 copy: the planned channels of every group are
zeroed, physically removed, and the outputs must not change (a group that fails is found by
bisection and left alone).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning import _helpers as tp_helpers
from torch_pruning.dependency import index_mapping as tp_index_mapping

from litzoo.framework.errors import LitzooError
from litzoo.framework.graph import conv_bn_pairs
from litzoo.framework.pruning.compactor import block_producer_problem, is_block_producer
from litzoo.framework.reparam.fuse_model import fuse_model, is_fusable
from litzoo.framework.reparam.verify import detached_copy, randomize_batchnorm
from litzoo.framework.verification import non_finite_summary


@dataclass
class Producer:
    """A conv whose output channels are a group's channels (the leader, or a conv tied to it).

    Attributes:
        conv: the ``nn.Conv2d`` (name in the deploy form).
        norm: the BatchNorm2d that alone consumes its output (``None``: the compactor follows the conv).
        placement: where its compactor attaches in the training-time model.
        rows: ``rows[c]`` is its output channel that carries the leader's channel ``c``.
        groups: the conv's groups: its compactor is block-diagonal with as many blocks, so that it folds.
    """

    conv: str
    norm: str | None
    placement: str
    rows: list[int]
    groups: int = 1


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
        counts: how many of the leader's channels each consumer reads (fewer than its input channels
            when it reads a concatenation of several groups) and each depthwise follower carries:
            what the FLOPs model (:class:`litzoo.framework.pruning.ChannelFlops`) scales.
        tied: other convs whose output channels are these same channels (``prune_residual``: the convs
            whose outputs meet in a residual addition or a squeeze-excitation product); each has its
            own compactor, and a channel is kept or removed in all of them together.
        units: the leader's channels that are kept or removed together (``prune_residual``: a grouped
            conv loses the same channel in each of its groups, so channel ``j`` of one group goes with
            channel ``j`` of the others); empty: every channel on its own.
        groups: the leader's groups (its compactor has as many diagonal blocks).
    """

    leader: str
    norm: str | None
    channels: int
    followers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    placement: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    tied: list[Producer] = field(default_factory=list)
    units: list[list[int]] = field(default_factory=list)
    groups: int = 1

    def __post_init__(self) -> None:
        self.placement = self.placement or self.norm or self.leader
        self.tied = [t if isinstance(t, Producer) else Producer(**t) for t in self.tied]

    @property
    def producers(self) -> list[Producer]:
        """The leader and every conv tied to it, each with its rows for the leader's channels."""
        return [Producer(self.leader, self.norm, self.placement, list(range(self.channels)), self.groups), *self.tied]

    @property
    def num_units(self) -> int:
        return len(self.units) or self.channels

    @property
    def unit_size(self) -> int:
        """Channels per unit (all units are the same size)."""
        return self.channels // self.num_units

    def unit_channels(self, units: list[int]) -> list[int]:
        """The leader's channels of ``units``, sorted."""
        return sorted(c for u in units for c in self.units[u]) if self.units else sorted(units)

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
        tied = sum(len(g.tied) for g in self.groups)
        lines = [f"{len(self.groups)} prunable conv layers" + (f" (and {tied} convs tied to them)" if tied else "") + f", {len(self.skipped)} left alone"]
        for g in self.groups:
            extra = f" (with {', '.join(g.followers)})" if g.followers else ""
            tied = f", tied to {', '.join(t.conv for t in g.tied)}" if g.tied else ""
            units = f" in {g.num_units} units of {g.unit_size}" if g.unit_size > 1 else ""
            lines.append(f"  prunable {g.leader}: {g.channels} channels{units}{tied}{extra}")
        lines += [f"  kept     {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def dependency_graph(model: nn.Module, example_inputs: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's traced dependency graph of ``model`` (which it runs once: pass it in eval mode),
    with its index maps (concatenations, splits, reshapes) computed.

    The graph is read from autograd, so it is built with gradients on, also when called from a
    Lightning evaluation loop (inference mode).

    Raises:
        LitzooError: Torch-Pruning cannot trace the model (it fails on some channel shuffles and
            splits, e.g. with ``integer division or modulo by zero``).
    """
    try:
        with torch.inference_mode(False), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs.clone(), verbose=False)
            tp_index_mapping.update_index_mapping(graph)
    except Exception as error:  # noqa: BLE001 - any failure inside Torch-Pruning's tracing is one refusal
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise LitzooError(
            f"cannot find the coupled channels of {type(model).__name__}: Torch-Pruning's dependency tracing failed "
            f"({type(error).__name__}: {first}), as it does on some channel shuffles and splits; no channel can be pruned exactly"
        ) from None
    return graph


class UntrackedChannels(Exception):
    """The coupled-channel search cannot vouch for its result (the message says why)."""


#: The coupled-channel search of one conv may process this many index sets per node of the graph.
SEARCH_STEPS_PER_NODE = 16


def _channel_bound(module: Any, out_side: bool) -> int | None:
    """How many channels the pruning operation on ``module`` can address (``None``: not a layer)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if out_side or _is_depthwise(module) else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if out_side else module.in_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return None


def coupled_channels(graph: tp.DependencyGraph, conv: nn.Conv2d, idxs: list[int]) -> tp.Group:
    """The Torch-Pruning group of ``conv``'s output channels ``idxs``: every layer that loses channels with them.

    The search of ``DependencyGraph.get_pruning_group`` (follow each dependency the pruning of a node
    triggers, mapping the indices through concatenations, splits and reshapes), with three changes:
    the index maps are those computed once by :func:`dependency_graph` (not recomputed per call),
    the already-seen check is a set look-up instead of a scan of the group (quadratic in the group's
    size), and the work is bounded. The returned group prunes as Torch-Pruning's does (``.prune()``).

    Raises:
        UntrackedChannels: the search does not end (``SEARCH_STEPS_PER_NODE`` index sets per node of
            the graph), or maps the channels to an index a layer does not have: a channel shuffle or
            reshape whose permutation Torch-Pruning cannot represent.
    """
    pruning_fn = tp.prune_depthwise_conv_out_channels if _is_depthwise(conv) else tp.prune_conv_out_channels
    root = graph.module2node[conv]
    start = [tp_helpers._HybridIndex(idx=i, root_idx=i) for i in idxs]
    group = tp.dependency.Group()
    group.add_dep(tp.dependency.Dependency(pruning_fn, pruning_fn, source=root, target=root), start)
    names = graph._module2name
    budget = SEARCH_STEPS_PER_NODE * max(1, len(graph.module2node))
    # no index can exceed the widest layer (a linear's flattened input included): beyond it a map has run away
    widest = max((b for m in graph.module2node for b in (_channel_bound(m, True), _channel_bound(m, False)) if b is not None), default=0)
    seen = {(id(root), pruning_fn, tuple(start))}
    stack = [(group[0].dep, start)]
    while stack:
        dep, current = stack.pop()
        for next_dep in dep.target.dependencies:
            if not next_dep.is_triggered_by(dep.handler):
                continue
            mapped = current
            for mapping in next_dep.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
            if not mapped:
                continue
            key = (id(next_dep.target), next_dep.handler, tuple(mapped))
            if key in seen:
                continue
            seen.add(key)
            module = next_dep.target.module
            bound = _channel_bound(module, graph.is_out_channel_pruning_fn(next_dep.handler))
            where = names.get(module) or f"a {type(module).__name__.strip('_').removesuffix('Op').lower()} (Torch-Pruning's {type(module).__name__})"
            if max(i.idx for i in mapped) >= (widest if bound is None else bound):
                raise UntrackedChannels(
                    f"Torch-Pruning maps its channels to channel {max(i.idx for i in mapped)} of {where}, "
                    f"which has {widest if bound is None else bound}: a channel shuffle or reshape it cannot follow"
                )
            if len(mapped) > widest:
                raise UntrackedChannels(
                    f"Torch-Pruning's index map grows to {len(mapped)} indices at {where}, more than any layer has: "
                    "a channel shuffle or reshape it cannot follow"
                )
            if len(seen) > budget:
                raise UntrackedChannels(
                    f"Torch-Pruning's search for the channels coupled to it does not end ({len(seen)} index sets): "
                    "a channel shuffle or reshape it cannot follow"
                )
            group.add_dep(next_dep, mapped)
            stack.append((next_dep, mapped))
    merged = tp.dependency.Group()  # one entry per (layer, operation), as Torch-Pruning's own groups
    for dep, dep_idxs in group.items:
        merged.add_and_merge(dep, dep_idxs)
    merged._DG = graph
    for i in range(len(merged)):
        hybrid = merged[i].idxs
        merged[i] = tp_helpers.GroupItem(merged[i].dep, tp_helpers.to_plain_idxs(hybrid))
        merged[i].root_idxs = tp_helpers.to_root_idxs(hybrid)
    return merged


def tied_reason(other: str) -> str:
    return (
        f"its output channels are tied to those of {other} (they meet in an elementwise operation: a residual addition, "
        "a squeeze-excitation product, or concatenated channels split again); the paper prunes internal layers only"
    )


@dataclass
class _Members:
    """What :func:`_group_members` reads off a group."""

    followers: list[str] = field(default_factory=list)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)  # other convs whose output channels are coupled to the leader's
    rows: dict[str, list[int]] = field(default_factory=dict)  # prune_residual: each tied conv's row for each leader channel
    units: list[list[int]] = field(default_factory=list)  # prune_residual: leader channels removed together (empty: one by one)
    reason: str | None = None


class _Units:
    """Union-find over the leader's channels: channels that a grouped conv must lose together."""

    def __init__(self, channels: int) -> None:
        self.parent = list(range(channels))

    def find(self, c: int) -> int:
        while self.parent[c] != c:
            self.parent[c] = self.parent[self.parent[c]]
            c = self.parent[c]
        return c

    def same_local_index(self, channels: list[int], indices: list[int], width: int) -> None:
        """Join the leader's ``channels`` whose ``indices`` in a grouped layer fall on the same position of its groups of ``width``."""
        first: dict[int, int] = {}
        for channel, index in zip(channels, indices, strict=True):
            other = first.setdefault(index % width, channel)
            self.parent[self.find(channel)] = self.find(other)

    def classes(self) -> list[list[int]]:
        found: dict[int, list[int]] = {}
        for c in range(len(self.parent)):
            found.setdefault(self.find(c), []).append(c)
        return sorted(found.values())


def _group_members(graph: tp.DependencyGraph, names: dict[nn.Module, str], conv: nn.Conv2d, idxs: list[int], prune_residual: bool = False) -> _Members:
    """Followers, consumers (with the input indices that hold ``idxs``), the convs tied to the leader,
    and the reason the group cannot be pruned (``None`` if it can).

    Without ``prune_residual`` a tie, or a grouped conv reading the channels, is a reason. With it,
    a tied conv joins the group when its output channels are exactly the leader's (a residual
    addition, a squeeze-excitation product; not part of a concatenation), and the channels that
    grouped convs must lose together become units.
    """
    found = _Members()
    try:
        group = coupled_channels(graph, conv, idxs)
    except UntrackedChannels as error:
        found.reason = str(error)
        return found
    channels = len(idxs)
    units = _Units(channels)
    if conv.groups > 1:
        units.same_local_index(list(range(channels)), list(range(channels)), conv.out_channels // conv.groups)
    for item in group.items:
        module = item.dep.target.module
        name = names.get(module)
        if module is conv or name is None:  # the root, or a traced functional op (add, relu, view ...)
            continue
        if type(module) in (nn.Conv2d, nn.Linear) and graph.is_out_channel_pruning_fn(item.dep.handler) and not _is_depthwise(module):
            found.tied.append(name)
            if prune_residual:
                problem = _tied_problem(module, name, item.idxs, item.root_idxs, channels)
                if problem is not None:
                    found.reason = problem
                    return found
                rows = [0] * channels
                for index, root in zip(item.idxs, item.root_idxs, strict=True):
                    rows[root] = int(index)
                found.rows[name] = rows
                if module.groups > 1:
                    units.same_local_index(list(range(channels)), rows, module.out_channels // module.groups)
    if found.tied and not prune_residual:
        found.reason = tied_reason(found.tied[0])
        return found
    for item in group.items:
        module = item.dep.target.module
        name = names.get(module)
        dep_idxs = item.idxs
        if module is conv or name is None or name in found.rows:
            continue
        if _is_depthwise(module) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            if name not in found.followers:
                found.followers.append(name)
            if _is_depthwise(module) and graph.is_out_channel_pruning_fn(item.dep.handler):
                found.counts[name] = len(set(dep_idxs))
        elif type(module) in (nn.Conv2d, nn.Linear):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                if not prune_residual:
                    found.reason = f"{name} is a grouped conv (groups={module.groups}) that reads its channels: its input channels are tied in groups"
                    return found
                if len(set(dep_idxs)) != module.in_channels:
                    found.reason = (
                        f"{name} is a grouped conv (groups={module.groups}) that reads these channels together with others: "
                        "they cannot be removed in equal numbers from each of its groups"
                    )
                    return found
                units.same_local_index([int(r) for r in item.root_idxs], [int(i) for i in dep_idxs], module.in_channels // module.groups)
            found.consumers.setdefault(name, []).extend(int(i) for i in dep_idxs)
        else:
            found.reason = f"{name} ({type(module).__name__}) shares its channels and has no exact channel removal here"
            return found
    if not found.consumers:
        found.reason = "no layer reads its output channels (it is a model output)"
    found.counts.update({name: len(set(consumer_idxs)) for name, consumer_idxs in found.consumers.items()})
    classes = units.classes()
    if len(classes) < channels:
        if len({len(c) for c in classes}) != 1:
            found.reason = "its grouped convs tie its channels into sets of different sizes: they cannot be removed in equal numbers from every group"
        found.units = classes
    return found


def _tied_problem(module: nn.Module, name: str, idxs: list[int], root_idxs: list[int], channels: int) -> str | None:
    """Why a conv tied to the leader cannot share its compactor mask (``None``: it can)."""
    if type(module) is not nn.Conv2d:
        return f"its output channels are tied to those of {name} ({type(module).__name__}), which has no compactor here"
    pairs = {(int(i), int(r)) for i, r in zip(idxs, root_idxs, strict=True)}
    if module.out_channels != channels or len(pairs) != channels or {i for i, _ in pairs} != set(range(channels)) or {r for _, r in pairs} != set(range(channels)):
        return (
            f"its output channels are tied to part of those of {name} ({module.out_channels} channels): the channels meet through a "
            "split or a concatenation, and a compactor of a conv covers all its channels"
        )
    return None


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


def _absorb_reason(model: nn.Module, placements: list[str], consumers: dict[str, list[int]], example_inputs: Tensor) -> str | None:
    """Zero the channels at ``placements`` (float64, random BN statistics) and check at every consumer
    that they arrive as an input-independent value the consumer can absorb (``None``: they do)."""
    handles = [model.get_submodule(placement).register_forward_hook(_zero_output) for placement in placements]
    try:
        generator = torch.Generator().manual_seed(0)
        x1 = torch.randn(example_inputs.shape, generator=generator, dtype=torch.float64)
        x2 = torch.randn(example_inputs.shape, generator=generator, dtype=torch.float64) * 2 + 1
        seen = [capture_inputs(model, list(consumers), x) for x in (x1, x2)]
    finally:
        for handle in handles:
            handle.remove()
    for name, idxs in consumers.items():
        consumer = model.get_submodule(name)
        a, b = (_select(s[name], consumer, idxs) for s in seen)
        if (bad := non_finite_summary((a, b))) is not None:  # NaN passes every comparison below: not provably exact
            return f"the float64 check gives non-finite values at {name} ({bad})"
        tolerance = 1e-9 * max(1.0, a.abs().max().item(), b.abs().max().item())
        if (a - b).abs().max() > tolerance or (a - a[:1]).abs().max() > tolerance:
            return f"zeroing its channels does not make them constant at {name} (something the traced graph does not show mixes them)"
        if a.abs().max() <= tolerance:
            continue  # they arrive as zeros: dropping them is exact
        if isinstance(consumer, nn.Linear):
            continue  # a constant input adds a constant to the output: absorbed by the bias
        uniform = (a - a.mean(dim=(2, 3), keepdim=True)).abs().max() <= tolerance
        if not uniform:
            return (
                f"its channels reach {name} as an input-independent but not spatially uniform map (a padded conv between them "
                "turns a non-zero constant into a border pattern), which no bias can absorb"
            )
        if consumer.groups != 1:
            return f"its channels reach {name} as a non-zero constant, and {name} is a grouped conv, whose bias cannot take it in here"
        if consumer.kernel_size != (1, 1) or consumer.padding not in ((0, 0), 0):
            return (
                f"its channels reach {name} as a non-zero constant (through a depthwise conv's BatchNorm or an activation with f(0) != 0) "
                f"and a {consumer.kernel_size[0]}x{consumer.kernel_size[1]} conv with padding {consumer.padding} cannot absorb it exactly"
            )
    return None


def find_channel_groups(
    model: nn.Module, example_inputs: Tensor, exclude: list[str] | tuple[str, ...] = (), prune_residual: bool = False
) -> GroupReport:
    """The prunable output-channel groups of ``model`` (which is not changed: a copy is analysed).

    The analysis runs on the deploy form of the model (re-parameterizable blocks fused, see
    :func:`litzoo.framework.reparam.fuse_model`): a RepVGG block's identity branch ties its output to its
    input channels only while training; fused, the block is a plain conv whose output channels
    are as free as any. Its compactor then sits before the block's nonlinearity. The same holds for
    another repository's blocks converted by ``switch_to_deploy()`` / ``reparameterize()`` (the
    official RepVGG block: ``rbr_reparam``), when they have ``get_equivalent_kernel_bias()`` and a
    ``nonlinearity`` submodule.

    Args:
        model: any module whose forward takes ``example_inputs``.
        example_inputs: a batch with the model's input shape (its values are not used).
        exclude: ``fnmatch`` patterns of conv names (in the deploy form) to leave alone.
        prune_residual: also prune channels tied across convs, as one group each: the convs whose
            outputs meet in residual additions or squeeze-excitation products (every one of them gets a
            compactor, and a channel is removed from all of them or none), and channels read or
            produced by grouped convs (removed in equal numbers from each of their groups). Off, only
            the paper's internal layers are pruned.

    Returns:
        The groups, and for every other conv with ``groups=1`` the reason it is left alone.
        Names are those of the deploy form (``stage1.0.conv`` for a fused RepVGG block).

    Raises:
        LitzooError: Torch-Pruning cannot trace the model at all.
    """
    copy = fuse_model(detached_copy(model).cpu().eval(), inplace=True).double()
    randomize_batchnorm(copy)
    x = example_inputs[:2].detach().to("cpu", torch.float64)
    graph = dependency_graph(copy, x)
    pairs = conv_bn_pairs(copy, x)  # x: convs inside modules torch.fx cannot trace are paired on a forward
    calls = _call_counts(copy, x)
    original = dict(model.named_modules())
    deploy = dict(copy.named_modules())
    names = {module: name for name, module in deploy.items()}
    tied: dict[str, str] = {}  # convs found coupled to an earlier one: the same coupled set, searched once
    claimed: set[str] = set()  # prune_residual: convs tied into an accepted group

    def own_reason(name: str, conv: nn.Conv2d, placement: str) -> str | None:
        if any(fnmatch.fnmatch(name, pattern) for pattern in exclude):
            return "excluded"
        if type(conv) is not nn.Conv2d:
            return f"{type(conv).__name__} is not a plain nn.Conv2d"
        if calls.get(name, 0) != 1:
            return f"called {calls.get(name, 0)} times in one forward (shared or unused)"
        if conv.out_channels < 2:
            return "a single output channel"
        if isinstance(placement, _NoPlacement):
            return placement.reason
        return None

    report = GroupReport()
    for name, conv in deploy.items():
        if not isinstance(conv, nn.Conv2d) or _is_depthwise(conv) or name in claimed:
            continue  # depthwise convs follow the conv that feeds them
        if conv.groups != 1 and not prune_residual:
            continue  # so do grouped convs, unless their channels are pruned in units
        placement = _placement(original, deploy, name, pairs.get(name))
        reason = tied.get(name) or own_reason(name, conv, placement)
        members = _Members()
        if reason is None:
            members = _group_members(graph, names, conv, list(range(conv.out_channels)), prune_residual)
            reason = members.reason
        if reason is None:
            producers = [Producer(other, pairs.get(other), _placement(original, deploy, other, pairs.get(other)), rows, deploy[other].groups)
                         for other, rows in members.rows.items()]  # fmt: skip
            for producer in producers:
                problem = own_reason(producer.conv, deploy[producer.conv], producer.placement)
                if problem is not None:
                    reason = f"tied to {producer.conv}, which cannot be pruned: {problem}"
                    break
        if reason is None:
            norms = {pairs.get(name)} | {p.norm for p in producers}
            group = ChannelGroup(
                name, pairs.get(name), conv.out_channels, [f for f in members.followers if f not in norms], list(members.consumers),
                placement, members.counts, producers, members.units, conv.groups,
            )  # fmt: skip
            reason = _absorb_reason(copy, [p.norm or p.conv for p in group.producers], members.consumers, x)
        if reason is None:
            report.groups.append(group)
            claimed.update(p.conv for p in group.tied)
        else:
            report.skipped[name] = reason
        for other in members.tied:  # the same coupled set: not searched again
            tied.setdefault(other, f"tied to {name}, whose group is left alone: {reason}" if prune_residual else tied_reason(name))
    for group in _inexact_removals(copy, report.groups, x):
        report.groups.remove(group)
        report.skipped[group.leader] = "removing its channels changes the model's outputs (checked on a float64 copy): a coupling the traced graph does not show"
    if prune_residual:  # a tied conv is reported with the group that holds it, or left alone with its leader's reason
        for group in report.groups:
            for producer in group.tied:
                report.skipped.pop(producer.conv, None)
    return report


class _NoPlacement(str):
    """Why a deploy-form conv has no place for a compactor in the training-time model."""

    @property
    def reason(self) -> str:
        return str(self)


def _placement(original: dict[str, nn.Module], deploy: dict[str, nn.Module], name: str, norm: str | None) -> str:
    """Where the compactor of the deploy-form conv ``name`` goes in the (training-time) model
    (a :class:`_NoPlacement` with the reason when there is no such place)."""
    if type(original.get(name)) is nn.Conv2d:
        return norm or name
    # the conv is the deploy form of a re-parameterizable block: fused to a bare conv (``name``), to
    # Sequential(conv, nonlinearity) (``name`` = block.conv), or converted in place (block.rbr_reparam)
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        block_name = ".".join(parts[:end])
        block = original.get(block_name)
        if block is None or not is_fusable(block):
            continue
        convs = [n for n, m in deploy.items() if isinstance(m, nn.Conv2d) and (n == block_name or n.startswith(block_name + "."))]
        if is_block_producer(block) and convs == [name]:
            return f"{block_name}.nonlinearity"
        problem = block_producer_problem(block) or f"its deploy form has {len(convs)} convs"
        return _NoPlacement(
            f"it is the deploy form of {block_name} ({type(block).__name__}), a re-parameterizable block that {problem}: "
            "no place for a compactor in the training-time model"
        )
    return _NoPlacement("it exists only in the deploy form, and no re-parameterizable block of the training-time model holds it")


def _zero_channels(model: nn.Module, group: ChannelGroup, idxs: list[int]) -> None:
    """Make the leader's channels ``idxs`` zero at every producer's placement in the deploy form (as masked compactor rows do)."""
    for producer in group.producers:
        rows = [producer.rows[c] for c in idxs]
        conv = model.get_submodule(producer.conv)
        with torch.no_grad():
            conv.weight[rows] = 0.0
            if conv.bias is not None:
                conv.bias[rows] = 0.0
            if producer.norm is not None:  # BN(0) = 0 too: no shift (running mean) and no offset (beta)
                norm = model.get_submodule(producer.norm)
                if norm.running_mean is not None:
                    norm.running_mean[rows] = 0.0
                if norm.bias is not None:
                    norm.bias[rows] = 0.0


def _removal_is_exact(model: nn.Module, groups: list[ChannelGroup], x: Tensor) -> bool:
    """Zero the first half of every group's units, remove them, and compare the outputs (float64)."""
    from litzoo.framework.pruning.removal import remove_channels  # removal builds on this module

    copy = detached_copy(model)
    plan = {g.leader: g.unit_channels(list(range(g.num_units // 2))) for g in groups}
    for group in groups:
        _zero_channels(copy, group, plan[group.leader])
    with torch.no_grad():
        masked = copy(x)
    try:
        remove_channels(copy, plan, x)
        with torch.no_grad():
            pruned = copy(x)
    except (RuntimeError, ValueError, IndexError, UntrackedChannels, LitzooError):
        return False
    if pruned.shape != masked.shape or not torch.isfinite(pruned).all():
        return False
    return bool((pruned - masked).abs().max() <= 1e-9 * max(1.0, masked.abs().max().item()))


def _inexact_removals(model: nn.Module, groups: list[ChannelGroup], x: Tensor) -> list[ChannelGroup]:
    """The groups whose removal is not exact, found by bisection (none: one check of the whole plan)."""
    if not groups or _removal_is_exact(model, groups, x):
        return []
    if len(groups) == 1:
        return list(groups)
    half = len(groups) // 2
    found = _inexact_removals(model, groups[:half], x) + _inexact_removals(model, groups[half:], x)
    return found or list(groups)  # exact one by one, not together: leave them all alone


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
