"""From a model with masked compactors to a physically smaller plain model, and back from a file.

The removal happens in three exact steps: (1) masked compactor rows are set to zero, so those
channels are zero at the pruned conv's output; (2) each compactor folds into its conv (with the
BatchNorm folded first): the model is plain again, with zero kernels and biases for those channels;
(3) the channels are cut out of every layer of their group (Torch-Pruning does the tensor surgery),
after the constant that a removed channel still delivers to a 1x1 conv or linear consumer (through a
depthwise conv's BatchNorm) has been added to that consumer's bias. Steps (2) and (3) do not change
the model's function; step (1) is the only approximation, and it is measured by the caller.

The pruned architecture differs from the one the model's constructor builds, so a pruned
checkpoint carries its layer shapes (:func:`layer_shapes`); :func:`apply_layer_shapes` rebuilds
them on a freshly constructed model before its ``load_state_dict`` (the checkpoint format is
:mod:`litzoo.framework.deploy`'s).
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.dependency import index_mapping as tp_index_mapping

from litzoo.framework.graph import conv_bn_pairs
from litzoo.framework.pruning.channel_groups import capture_inputs, coupled_channels, dependency_graph
from litzoo.framework.pruning.compactor import Compacted, Compactor, fold_compactor
from litzoo.framework.reparam.fuse_model import FOREIGN_CONVERSIONS, fuse_model
from litzoo.framework.reparam.fusion import fuse_conv_bn


def compacted_layers(model: nn.Module) -> dict[str, Compacted]:
    return {name: module for name, module in model.named_modules() if isinstance(module, Compacted)}


def zero_masked_rows(model: nn.Module) -> None:
    """Set the compactor rows selected for removal exactly to zero (in place)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Compactor):
                module.weight[module.mask == 0] = 0.0



def fold_compactors(model: nn.Module, example_inputs: Tensor | None = None) -> dict[str, list[int]]:
    """Fold every compactor into the layer before it, then fuse what is left, in place.

    A conv with a compacted BatchNorm (or a compacted conv) becomes an ``nn.Conv2d`` with a bias
    and the same geometry, the BatchNorm ``nn.Identity``; a re-parameterizable block with a
    compactor before its nonlinearity becomes its deploy form with the compactor folded in. Any
    other re-parameterizable block is then fused too (:func:`litzoo.framework.reparam.fuse_model`), so the
    channel removal sees the plain deploy model. Returns ``{conv name: output channels whose
    compactor row is masked}``. ``example_inputs`` pairs the convs of modules torch.fx cannot trace
    with their BatchNorm (:func:`litzoo.framework.graph.conv_bn_pairs`).
    """
    wrapped = compacted_layers(model)
    for name, layer in wrapped.items():
        model.set_submodule(name, layer.layer)  # unwrap, so that the conv-BN pairs can be traced again
    pairs = {bn: conv for conv, bn in conv_bn_pairs(model, example_inputs).items() if bn is not None}
    removed: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, layer in wrapped.items():
            inner = layer.layer
            if layer.before:  # the nonlinearity of a block: fold into the block's equivalent conv
                block_name = name.rpartition(".")[0]
                kernel, bias = model.get_submodule(block_name).get_equivalent_kernel_bias()
                conv_name, conv = _deploy_block(model, block_name, inner)
            elif isinstance(inner, nn.Conv2d):
                conv_name, conv = name, inner
                kernel = conv.weight
                bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, dtype=kernel.dtype, device=kernel.device)
            else:
                conv_name = pairs.get(name)
                if conv_name is None:
                    raise ValueError(f"cannot find the conv that feeds the compacted {type(inner).__name__} '{name}'")
                conv = model.get_submodule(conv_name)
                kernel, bias = fuse_conv_bn(conv.weight, inner, conv.bias)
                model.set_submodule(name, nn.Identity())
            kernel, bias = fold_compactor(kernel, bias, layer.compactor.weight, layer.compactor.groups)
            folded = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
            ).to(device=kernel.device, dtype=kernel.dtype)
            folded.weight.copy_(kernel)
            folded.bias.copy_(bias)
            model.set_submodule(conv_name, folded)
            removed[conv_name] = (layer.compactor.mask == 0).nonzero().flatten().tolist()
    fuse_model(model, inplace=True)
    return removed


def _deploy_block(model: nn.Module, block_name: str, nonlinearity: nn.Module) -> tuple[str, nn.Conv2d]:
    """Put the deploy form of the block ``block_name`` in place, ending in ``nonlinearity``; returns its conv.

    litzoo's blocks return it from ``fuse()`` (a bare conv, or ``Sequential(conv, nonlinearity)``);
    another repository's convert themselves in place (``switch_to_deploy()``: the official RepVGG
    block's ``rbr_reparam``), keeping their ``nonlinearity``.
    """
    block = model.get_submodule(block_name)
    if callable(getattr(block, "fuse", None)):
        deploy = block.fuse()
        if isinstance(deploy, nn.Conv2d):
            model.set_submodule(block_name, deploy)
            return block_name, deploy
        deploy.nonlinearity = nonlinearity
        model.set_submodule(block_name, deploy)
        return f"{block_name}.conv", deploy.conv
    convert = next(getattr(block, n) for n in FOREIGN_CONVERSIONS if callable(getattr(block, n, None)))
    convert()
    block.nonlinearity = nonlinearity
    convs = [(f"{block_name}.{n}", m) for n, m in block.named_modules() if n and isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        raise ValueError(f"the deploy form of {block_name} ({type(block).__name__}) has {len(convs)} convs, not the one equivalent conv")
    return convs[0]


def _consumer_idxs(group: Any, names: dict[nn.Module, str], graph: tp.DependencyGraph) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for dep, idxs in group:
        module = dep.target.module
        if type(module) in (nn.Conv2d, nn.Linear) and graph.is_in_channel_pruning_fn(dep.handler) and not (
            isinstance(module, nn.Conv2d) and module.groups != 1
        ):
            found.setdefault(names[module], []).extend(int(i) for i in idxs)
    return found


def remove_channels(model: nn.Module, removed: dict[str, list[int]], example_inputs: Tensor) -> None:
    """Cut the listed output channels out of each conv and of every layer coupled to them, in place.

    ``model`` must be plain (compactors folded) and the channels must already be zero at each
    conv's output. A constant that a removed channel still delivers to a 1x1 conv or linear
    consumer is added to that consumer's bias first.
    """
    removed = {name: sorted(set(idxs)) for name, idxs in removed.items() if idxs}
    if not removed:
        return
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        graph = dependency_graph(model, example_inputs)
        names = {module: name for name, module in model.named_modules()}
        groups = _one_group_per_tied_set(graph, model, names, removed)
        consumers = {name: _consumer_idxs(group, names, graph) for name, group in groups.items()}
        _absorb_constants(model, consumers, example_inputs)
        for name in groups:
            idxs = removed[name]
            conv = model.get_submodule(name)
            if len(idxs) >= conv.out_channels:
                raise ValueError(f"cannot remove all {conv.out_channels} output channels of {name}")
            # a fresh group: earlier removals changed the shapes (and concatenation offsets) the first ones were computed for
            tp_index_mapping.update_index_mapping(graph)
            coupled_channels(graph, conv, idxs).prune()
    finally:
        for module, training in modes.items():
            module.training = training


def _one_group_per_tied_set(graph: tp.DependencyGraph, model: nn.Module, names: dict[nn.Module, str], removed: dict[str, list[int]]) -> dict[str, Any]:
    """The Torch-Pruning group of each conv of ``removed``, once per set of tied convs (a residual stream,
    a squeeze-excitation product): the first conv's group removes the channels of the others too, which
    must list exactly the channels it maps to theirs."""
    groups: dict[str, Any] = {}
    covered: dict[str, str] = {}
    for name, idxs in removed.items():
        if name in covered:
            continue
        group = coupled_channels(graph, model.get_submodule(name), idxs)
        for dep, dep_idxs in group:
            other = names.get(dep.target.module)
            if other != name and other in removed and graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Conv2d):
                if sorted(set(dep_idxs)) != removed[other]:
                    raise ValueError(
                        f"{other} is tied to {name} (their channels meet in an elementwise operation), but its removed channels "
                        f"{removed[other][:8]} are not those of {name} mapped to it ({sorted(set(dep_idxs))[:8]})"
                    )
                covered[other] = name
        groups[name] = group
    return groups


def _absorb_constants(model: nn.Module, consumers: dict[str, dict[str, list[int]]], example_inputs: Tensor) -> None:
    wanted = sorted({name for per_group in consumers.values() for name in per_group})
    captured = capture_inputs(model, wanted, example_inputs)
    with torch.no_grad():
        for per_group in consumers.values():
            for name, idxs in per_group.items():
                consumer = model.get_submodule(name)
                inputs = captured[name]
                index = torch.as_tensor(idxs, device=inputs.device)
                if isinstance(consumer, nn.Conv2d):
                    value = inputs.index_select(1, index).mean(dim=(0, 2, 3))
                    if consumer.groups != 1:
                        if value.abs().max() == 0:
                            continue
                        raise ValueError(f"removed channels reach the grouped conv {name} as a non-zero constant, which its bias cannot take in here")
                    weight = consumer.weight[:, idxs].sum(dim=(2, 3))  # 1x1 (checked when the group was accepted)
                else:
                    value = inputs.index_select(inputs.dim() - 1, index).reshape(-1, len(idxs)).mean(dim=0)
                    weight = consumer.weight[:, idxs]
                if value.abs().max() == 0:
                    continue
                if consumer.bias is None:
                    consumer.bias = nn.Parameter(torch.zeros(consumer.weight.shape[0], dtype=weight.dtype, device=weight.device))
                consumer.bias += weight @ value


# ----------------------------------------------------------------------------- pruned layer shapes
# (recorded in and read from deploy checkpoints by litzoo.framework.deploy)


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The constructor arguments of every conv, linear, BatchNorm and Identity of ``model``."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if type(m) is nn.Conv2d:
            shapes[name] = {
                "type": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
                "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode,
            }
        elif type(m) is nn.Linear:
            shapes[name] = {"type": "linear", "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
        elif type(m) is nn.BatchNorm2d:
            shapes[name] = {
                "type": "batchnorm2d", "num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track_running_stats": m.track_running_stats,
            }
        elif type(m) is nn.Identity and name:
            shapes[name] = {"type": "identity"}
    return shapes


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> None:
    """Rebuild ``model``'s layers with the recorded shapes (fresh parameters), in place."""
    known = dict(model.named_modules())
    for name, spec in shapes.items():
        if name not in known:
            raise ValueError(f"the pruned layer '{name}' does not exist in {type(model).__name__}")
        args = {k: v for k, v in spec.items() if k != "type"}
        kind = spec.get("type")
        if kind == "conv2d":
            args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
            layer: nn.Module = nn.Conv2d(**args)
        elif kind == "linear":
            layer = nn.Linear(**args)
        elif kind == "batchnorm2d":
            layer = nn.BatchNorm2d(**args)
        elif kind == "identity":
            layer = nn.Identity()
        else:
            raise ValueError(f"unknown layer type '{kind}' recorded for '{name}'")
        old = known[name]
        reference = next(iter(old.state_dict().values()), None)
        if reference is not None:
            layer = layer.to(device=reference.device, dtype=reference.dtype)
        model.set_submodule(name, layer)


def compactors_in(state_dict: dict[str, Tensor]) -> dict[str, int | tuple[int, int]]:
    """``{module name: channels}`` of every compactor whose weights ``state_dict`` holds
    (``(channels, groups)`` for a block-diagonal one), as :func:`insert_compactors` takes them."""
    suffix = ".compactor.weight"
    found: dict[str, int | tuple[int, int]] = {}
    for key, value in state_dict.items():
        if key.endswith(suffix) and value.dim() == 4 and value.shape[0] % value.shape[1] == 0:
            channels, groups = int(value.shape[0]), int(value.shape[0] // value.shape[1])
            found[key[: -len(suffix)]] = channels if groups == 1 else (channels, groups)
    return found


def prune_compacted(model: nn.Module, example_inputs: Tensor) -> dict[str, list[int]]:
    """Zero the masked compactor rows, fold the compactors, remove the channels (in place).

    Returns ``{conv name: removed output channels}``.
    """
    zero_masked_rows(model)
    removed = fold_compactors(model, example_inputs)
    remove_channels(model, removed, example_inputs)
    return removed
