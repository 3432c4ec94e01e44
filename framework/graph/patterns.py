"""Layer patterns found in a model's traced graph rather than guessed from attribute order.

``self.conv1`` and ``self.bn1`` being neighbours in ``__init__`` says nothing about the forward:
a callback that fuses or replaces a conv-BN pair must know that the BN consumes the conv's output
and nothing else does. ``torch.fx`` gives that dataflow for any traceable module; sub-modules
whose forward cannot be traced (data-dependent control flow) are traced one level down, and an
``nn.Sequential`` that still cannot be traced falls back to its order, which *is* its dataflow.
"""

from __future__ import annotations

from collections import Counter

import torch.fx
from torch import nn


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _pairs_in_graph(module: nn.Module, prefix: str) -> tuple[dict[str, str | None], Counter]:
    graph = torch.fx.symbolic_trace(module).graph
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    found: dict[str, str | None] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        bn = None
        if len(users) == 1 and users[0].op == "call_module":
            candidate = module.get_submodule(users[0].target)
            if isinstance(candidate, nn.BatchNorm2d) and users[0].args[:1] == (node,) and len(users[0].args) == 1:
                bn = _qualify(prefix, users[0].target)
        found[_qualify(prefix, node.target)] = bn
    return found, Counter({_qualify(prefix, k): v for k, v in calls.items()})


def _sequential_pairs(module: nn.Sequential, prefix: str) -> tuple[dict[str, str | None], Counter]:
    children = list(module.named_children())
    found: dict[str, str | None] = {}
    calls: Counter = Counter()
    for i, (name, child) in enumerate(children):
        if isinstance(child, nn.Conv2d):
            nxt = children[i + 1] if i + 1 < len(children) else None
            found[_qualify(prefix, name)] = _qualify(prefix, nxt[0]) if nxt is not None and isinstance(nxt[1], nn.BatchNorm2d) else None
            calls[_qualify(prefix, name)] += 1
        elif isinstance(child, nn.BatchNorm2d):
            calls[_qualify(prefix, name)] += 1
        else:
            sub_found, sub_calls = _find(child, _qualify(prefix, name))
            found.update(sub_found)
            calls.update(sub_calls)
    return found, calls


def _find(module: nn.Module, prefix: str) -> tuple[dict[str, str | None], Counter]:
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
        return {}, Counter()
    try:
        return _pairs_in_graph(module, prefix)
    except Exception:  # fx raises many error types on untraceable Python (TraceError, TypeError, ...)
        if isinstance(module, nn.Sequential):
            return _sequential_pairs(module, prefix)
        found: dict[str, str | None] = {}
        calls: Counter = Counter()
        for name, child in module.named_children():
            sub_found, sub_calls = _find(child, _qualify(prefix, name))
            found.update(sub_found)
            calls.update(sub_calls)
        return found, calls


def conv_bn_pairs(model: nn.Module) -> dict[str, str | None]:
    """Every ``nn.Conv2d`` reached by ``model``'s forward, mapped to the BatchNorm2d that alone consumes it.

    Returns:
        ``{conv_name: bn_name or None}`` with names as in ``model.named_modules()``. ``None`` means
        no BatchNorm2d directly and exclusively follows that conv. A conv or BN that the forward
        calls more than once (shared weights) is reported with ``None``; such a BN is never paired.
        Convs inside modules that cannot be traced at all (and are not ``nn.Sequential``) are
        searched in their children, whose own forwards are traced.
    """
    found, calls = _find(model, "")
    pairs = {}
    for conv, bn in found.items():
        shared = calls[conv] > 1 or (bn is not None and calls[bn] > 1)
        pairs[conv] = None if shared else bn
    return pairs
