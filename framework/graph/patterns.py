"""Layer patterns found in a model's traced graph rather than guessed from attribute order.

``self.conv1`` and ``self.bn1`` being neighbours in ``__init__`` says nothing about the forward:
a callback that fuses or replaces a conv-BN pair must know that the BN consumes the conv's output
and nothing else does. ``torch.fx`` gives that dataflow for any traceable module; sub-modules
whose forward cannot be traced (Python on shapes such as ``int(x.size(1) * ratio)``, data-dependent
control flow) are traced one level down, and an ``nn.Sequential`` that still cannot be traced
falls back to its order, which *is* its dataflow. What the traced children cannot show, the
convs that are direct children of an untraceable module and the BN that reads them there, is
read off one run of the model on an example input (:class:`_RunTimeDataflow`): every torch call
that takes a conv's output is seen, so a conv is paired only when its output goes into one
BatchNorm and nowhere else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass
class _Found:
    pairs: dict[str, str | None] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    untraceable: dict[str, str] = field(default_factory=dict)  # module name -> why fx cannot trace it

    def update(self, other: _Found) -> None:
        self.pairs.update(other.pairs)
        self.calls.update(other.calls)
        self.untraceable.update(other.untraceable)


def _pairs_in_graph(module: nn.Module, prefix: str) -> _Found:
    graph = torch.fx.symbolic_trace(module).graph
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    found = _Found(calls=Counter({_qualify(prefix, k): v for k, v in calls.items()}))
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        bn = None
        if len(users) == 1 and users[0].op == "call_module":
            candidate = module.get_submodule(users[0].target)
            if isinstance(candidate, nn.BatchNorm2d) and users[0].args[:1] == (node,) and len(users[0].args) == 1:
                bn = _qualify(prefix, users[0].target)
        found.pairs[_qualify(prefix, node.target)] = bn
    return found


def _sequential_pairs(module: nn.Sequential, prefix: str) -> _Found:
    children = list(module.named_children())
    found = _Found()
    for i, (name, child) in enumerate(children):
        if isinstance(child, nn.Conv2d):
            nxt = children[i + 1] if i + 1 < len(children) else None
            found.pairs[_qualify(prefix, name)] = _qualify(prefix, nxt[0]) if nxt is not None and isinstance(nxt[1], nn.BatchNorm2d) else None
            found.calls[_qualify(prefix, name)] += 1
        elif isinstance(child, nn.BatchNorm2d):
            found.calls[_qualify(prefix, name)] += 1
        else:
            found.update(_find(child, _qualify(prefix, name)))
    return found


def _find(module: nn.Module, prefix: str) -> _Found:
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
        return _Found()
    try:
        return _pairs_in_graph(module, prefix)
    except Exception as error:  # fx raises many error types on untraceable Python (TraceError, TypeError, ...)
        if isinstance(module, nn.Sequential):
            return _sequential_pairs(module, prefix)
        found = _Found(untraceable={prefix: f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:120]}"})
        for name, child in module.named_children():
            found.update(_find(child, _qualify(prefix, name)))
        return found


#: Tensor methods and properties that read metadata, not values: not a use of a conv's output.
_METADATA = frozenset(
    {"size", "dim", "ndim", "ndimension", "numel", "nelement", "shape", "dtype", "device", "layout", "is_contiguous",
     "stride", "storage_offset", "element_size", "is_floating_point", "is_complex", "requires_grad", "is_cuda", "__len__"}
)  # fmt: skip


def _function_name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property getter: Tensor.shape.__get__
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _RunTimeDataflow(TorchFunctionMode):
    """Records, during one forward, which BatchNorm2d (or anything else) consumes each conv output.

    Conv outputs are registered by forward hooks; every torch function then called with one of them
    as an argument is a use: by a BatchNorm2d when it is the call inside that BN's own forward on
    that very tensor, by "something else" otherwise (an activation, a view, an addition, ...).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.produced: dict[int, tuple[str, Tensor]] = {}  # id(output) -> (conv name, output)
        self.uses: dict[str, set[str | None]] = {}
        self.calls: Counter = Counter()
        self._running_bn: list[tuple[str, Tensor]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if _function_name(func) not in _METADATA:
            for value in tree_leaves((args, kwargs)):
                entry = self.produced.get(id(value)) if isinstance(value, Tensor) else None
                if entry is None or entry[1] is not value:
                    continue
                inside = self._running_bn[-1] if self._running_bn else None
                self.uses.setdefault(entry[0], set()).add(inside[0] if inside is not None and inside[1] is value else None)
        return func(*args, **kwargs)

    def run(self, x: Tensor) -> None:
        handles = []
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(self._conv_hook(name)))
            elif isinstance(module, nn.BatchNorm2d):
                handles.append(module.register_forward_pre_hook(self._bn_enter(name)))
                handles.append(module.register_forward_hook(self._bn_exit))
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()  # BatchNorm statistics must not move
        try:
            with torch.no_grad(), self:
                self.model(x)
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes.items():
                module.training = training

    def _conv_hook(self, name: str):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            self.calls[name] += 1
            if isinstance(output, Tensor):
                self.produced[id(output)] = (name, output)

        return hook

    def _bn_enter(self, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            self.calls[name] += 1
            self._running_bn.append((name, args[0] if args and isinstance(args[0], Tensor) else None))

        return hook

    def _bn_exit(self, *_: Any) -> None:
        self._running_bn.pop()

    def pairs(self) -> dict[str, str | None]:
        """``{conv: the BN that alone used its output, or None}`` for every conv that ran."""
        convs = {name for name, _ in self.produced.values()}
        return {conv: next(iter(uses)) if len(uses := self.uses.get(conv, set())) == 1 else None for conv in convs}


@dataclass
class ConvBNPairs:
    """``pairs``: ``{conv name: BN name or None}`` for every conv reached; ``unresolved``: the convs of
    ``model`` that are not in ``pairs``, with the reason."""

    pairs: dict[str, str | None]
    unresolved: dict[str, str]


def _inside(name: str, prefix: str) -> bool:
    return prefix == "" or name.startswith(prefix + ".")


def find_conv_bn_pairs(model: nn.Module, example_inputs: Tensor | Callable[[], Tensor | None] | None = None) -> ConvBNPairs:
    """:func:`conv_bn_pairs`, with the reason for every ``nn.Conv2d`` of ``model`` that is not paired or not reached.

    ``example_inputs`` may be a function returning the input (or ``None``): it is called only when
    a part of the model cannot be traced, so a caller fetches a batch only when one is needed.
    """
    found = _find(model, "")
    pairs = {}
    for conv, bn in found.pairs.items():
        shared = found.calls[conv] > 1 or (bn is not None and found.calls[bn] > 1)
        pairs[conv] = None if shared else bn
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    partial = {conv: prefix for conv in convs for prefix in found.untraceable if _inside(conv, prefix)}
    unresolved: dict[str, str] = {}
    if partial and callable(example_inputs):
        example_inputs = example_inputs()
    if partial and example_inputs is not None:
        run = _RunTimeDataflow(model)
        first = next(iter(model.parameters()), None)
        run.run(example_inputs.to(first.device) if first is not None else example_inputs)
        seen = run.pairs()
        for conv in partial:
            if pairs.get(conv) is not None:
                continue  # fx found the BN inside a traced child: already exact
            if conv not in seen:
                pairs.pop(conv, None)
                unresolved[conv] = "not called by the model's forward on the example input"
                continue
            bn = seen[conv]
            shared = run.calls[conv] > 1 or (bn is not None and run.calls[bn] > 1)
            pairs[conv] = None if shared else bn
    for conv in convs:
        if conv in pairs or conv in unresolved:
            continue
        prefix = partial.get(conv)
        if prefix is not None:
            unresolved[conv] = (
                f"inside {prefix or type(model).__name__}, whose forward torch.fx cannot trace ({found.untraceable[prefix]}), "
                "and no example input was given to follow it at run time"
            )
        else:
            unresolved[conv] = "not called by the model's traced forward"
    return ConvBNPairs(pairs, unresolved)


def conv_bn_pairs(model: nn.Module, example_inputs: Tensor | Callable[[], Tensor | None] | None = None) -> dict[str, str | None]:
    """Every ``nn.Conv2d`` reached by ``model``'s forward, mapped to the BatchNorm2d that alone consumes it.

    Args:
        model: any module.
        example_inputs: an input of ``model``'s forward. Needed only where torch.fx cannot trace a
            module that is not an ``nn.Sequential``: the convs directly inside it are then paired by
            watching one forward (eval mode, no gradients) instead of being left out.

    Returns:
        ``{conv_name: bn_name or None}`` with names as in ``model.named_modules()``. ``None`` means
        no BatchNorm2d directly and exclusively follows that conv. A conv or BN that the forward
        calls more than once (shared weights) is reported with ``None``; such a BN is never paired.
        Convs inside modules that cannot be traced at all (and are not ``nn.Sequential``) are
        searched in their children, whose own forwards are traced, and, with ``example_inputs``,
        at run time; :func:`find_conv_bn_pairs` says why a conv is missing.
    """
    return find_conv_bn_pairs(model, example_inputs).pairs
