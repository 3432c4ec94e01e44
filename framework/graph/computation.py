"""Computation graphs (CGs) of any ``nn.Module``: primitive operators as nodes, dataflow as edges.

The representation of the NAS performance predictors of Di Niu's group, which write every network
of every search space in one vocabulary so that one GNN can be trained across families:

- GENNAPE: Mills et al., "GENNAPE: Towards Generalized Neural Architecture Performance
  Estimators", AAAI 2023 (arXiv:2211.17226);
- Han et al., "A General-Purpose Transferable Predictor for Neural Architecture Search",
  SDM 2023 (arXiv:2302.10835);
- AIO-P: Mills et al., "AIO-P: Expanding Neural Performance Predictors Beyond Image
  Classification", AAAI 2023 (arXiv:2211.17228).

Their CGs come from TensorFlow graphs; here the network's own PyTorch code is the source:

1. ``torch.fx.symbolic_trace`` (with :class:`CGTracer`: torch's leaf rule, plus
   ``nn.MultiheadAttention`` explicitly a leaf) gives the graph of leaf-module calls, functions and
   tensor methods; containers and user modules are traced through.
2. The graph is executed once on the example input by :class:`_FlopShapeProp`, a
   ``torch.fx.passes.shape_prop.ShapeProp`` that wraps every node in its own
   ``torch.utils.flop_counter.FlopCounterMode``: each node gets its output shape and the FLOPs of
   its actual inputs, so the node FLOPs sum to the whole model's count (2 FLOPs per multiply-add).
   Two CPU attention kernels are invisible to FlopCounterMode and are counted here the way it counts
   the GPU kernels, so a CG's total can exceed ``FlopCounterMode`` on the whole model by exactly
   their FLOPs: ``F.scaled_dot_product_attention`` (CPU flash kernel; 2·B·H·Lq·Lk·(Dk + Dv)) and
   ``nn.MultiheadAttention``'s eval fast path (its node runs on the regular path with grad enabled).
   For conv / linear / matmul networks the totals are equal.
3. When symbolic tracing fails (data-dependent control flow on tensor values, ...), the model is
   captured with ``torch.export.export(strict=False)`` instead and its unlifted graph
   (``ExportedProgram.module()``) goes through the same steps. Nodes are then ATen operators
   (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm`` / ``aten._native_batch_norm_legit_no_training``,
   ``aten.layer_norm``, ``aten.relu``, ``aten.add.Tensor``, ``aten.cat``, ``aten.view``,
   ``aten.matmul`` / ``aten.bmm``, ``aten.scaled_dot_product_attention``, ``aten.max_pool2d``,
   ``aten.adaptive_avg_pool2d``, ``aten.mean.dim``, ...) and are mapped to the same vocabulary by
   their operator name (:data:`_FUNCTION_OPS`). Parameters are ``get_attr`` nodes there; their
   sizes go to the operator that consumes them. An ``nn.MultiheadAttention`` is not a leaf in this
   path: it appears as its linear / matmul / softmax operators.
4. Bookkeeping nodes are folded away: nodes whose value holds no tensor (``x.shape``, ``x.size(0)``,
   ``getattr``, ints), ``getitem`` on the tuple output of an operator (its edges are bridged to that
   operator), ``get_attr`` (parameters / buffers, attributed to their first consumer), and constant
   tensors built from shapes alone (``torch.arange``, masks) that carry no FLOPs and no parameters.

A node's ``params`` are the parameters of its leaf module (or the ``get_attr`` parameters it
consumes), each parameter counted once in the whole graph (shared weights are not double counted).
"""

from __future__ import annotations

import inspect
import json
import math
import operator
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from litzoo.framework.errors import LitzooError

#: The operator vocabulary; a node's one-hot index is its position here.
OP_TYPES: tuple[str, ...] = (
    "input", "output",
    "conv", "depthwise_conv", "linear",
    "batch_norm", "layer_norm", "group_norm",
    "relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "softmax",
    "add", "mul", "concat",
    "max_pool", "avg_pool", "adaptive_avg_pool",
    "flatten", "reshape", "matmul", "attention", "embedding", "dropout", "identity",
    # beyond the required set: frequent in the litzoo / NAS families, else they would all be "other"
    "conv_transpose", "instance_norm", "rms_norm", "leaky_relu", "sub", "div", "mean", "pad",
    "upsample", "permute", "slice",
    "other",
)  # fmt: skip
_OP_INDEX = {op: i for i, op in enumerate(OP_TYPES)}

#: The numeric node features that follow the one-hot op columns, in order (see ``node_features``).
NUMERIC_FEATURES: tuple[str, ...] = (
    "log1p_out_c",  # log(1 + output dim 1): channels of (N, C, H, W), tokens of (N, L, D), features of (N, D)
    "log1p_out_h",  # log(1 + output dim 2): height of (N, C, H, W), width of (N, L, D); 0 when absent
    "log1p_out_w",  # log(1 + product of output dims 3...): width of (N, C, H, W); 0 when absent
    "kernel_h",  # first kernel size (conv / pool), 0 when the op has no kernel
    "kernel_w",  # last kernel size, 0 when the op has no kernel
    "stride_h",  # first stride, 0 when the op has no stride
    "stride_w",  # last stride, 0 when the op has no stride
    "grouped",  # 1 when groups > 1 (depthwise / grouped conv)
    "bias",  # 1 when the op adds a learned bias
    "log1p_flops",  # log(1 + FLOPs of the node)
    "log1p_params",  # log(1 + parameters owned by the node)
)
NUM_NODE_FEATURES: int = len(OP_TYPES) + len(NUMERIC_FEATURES)

_NODE_KEYS = ("index", "name", "op", "input_shapes", "output_shape", "kernel", "stride", "groups", "bias", "flops", "params")
_REQUIRED_NODE_KEYS = ("index", "name", "op", "input_shapes", "output_shape")
_GRAPH_KEYS = ("nodes", "edges", "label", "family")


@dataclass
class CGNode:
    """One primitive operator: its op type, tensor shapes (batch dim included) and cost."""

    index: int
    name: str
    op: str
    input_shapes: list[list[int]]
    output_shape: list[int]
    kernel: list[int] | None = None
    stride: list[int] | None = None
    groups: int = 1
    bias: bool = False
    flops: int = 0
    params: int = 0

    def to_dict(self) -> dict:
        return {
            "index": self.index, "name": self.name, "op": self.op,
            "input_shapes": [list(s) for s in self.input_shapes], "output_shape": list(self.output_shape),
            "kernel": None if self.kernel is None else list(self.kernel), "stride": None if self.stride is None else list(self.stride),
            "groups": self.groups, "bias": self.bias, "flops": self.flops, "params": self.params,
        }  # fmt: skip


@dataclass
class ComputationGraph:
    """Nodes in topological order, edges ``(source, destination)`` by node index, optional labels
    (``{"acc": 0.93, ...}``) and the architecture family the network comes from."""

    nodes: list[CGNode]
    edges: list[tuple[int, int]]
    label: dict[str, float] | None = None
    family: str | None = None

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """``{"nodes": [...], "edges": [[s, d], ...], "label": ..., "family": ...}``, JSON-safe, fixed key order."""
        return {
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [[int(s), int(d)] for s, d in self.edges],
            "label": None if self.label is None else {k: float(v) for k, v in self.label.items()},
            "family": self.family,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> ComputationGraph:
        """The graph of ``data`` (as written by :meth:`to_dict`), validated; a bad value raises a
        one-line :class:`LitzooError` naming ``source`` and the problem."""

        def fail(problem: str) -> LitzooError:
            return LitzooError(f"computation graph {source}: {problem}")

        if not isinstance(data, dict):
            raise fail(f"expected a JSON object, got {type(data).__name__}")
        for key in ("nodes", "edges"):
            if key not in data:
                raise fail(f"missing key '{key}'")
        unknown = sorted(set(data) - set(_GRAPH_KEYS))
        if unknown:
            raise fail(f"unknown key '{unknown[0]}' (expected {', '.join(_GRAPH_KEYS)})")
        if not isinstance(data["nodes"], list) or not data["nodes"]:
            raise fail("'nodes' must be a non-empty list")
        nodes = [_node_from_dict(raw, i, fail) for i, raw in enumerate(data["nodes"])]
        if not isinstance(data["edges"], list):
            raise fail("'edges' must be a list of [source, destination] pairs")
        edges: list[tuple[int, int]] = []
        for j, edge in enumerate(data["edges"]):
            if not (isinstance(edge, (list, tuple)) and len(edge) == 2 and all(_is_int(v) for v in edge)):
                raise fail(f"edge {j} must be a [source, destination] pair of node indices, got {edge!r}")
            s, d = edge
            for end in (s, d):
                if not 0 <= end < len(nodes):
                    raise fail(f"edge {j} [{s}, {d}] refers to node {end}, which does not exist ({len(nodes)} nodes)")
            if s == d:
                raise fail(f"edge {j} [{s}, {d}] is a self-loop")
            edges.append((s, d))
        label = data.get("label")
        if label is not None:
            if not isinstance(label, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in label.items()):
                raise fail(f"'label' must be an object of name -> number, got {label!r}")
            label = {k: float(v) for k, v in label.items()}
        family = data.get("family")
        if family is not None and not isinstance(family, str):
            raise fail(f"'family' must be a string or null, got {family!r}")
        return cls(nodes, edges, label, family)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> ComputationGraph:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise LitzooError(
                f"computation graph {source}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
            ) from None
        return cls.from_dict(data, source)

    # ---- tensors for GNNs ------------------------------------------------------------------
    def node_features(self) -> Tensor:
        """``(N, NUM_NODE_FEATURES)`` float32: one-hot op over :data:`OP_TYPES`, then the columns of
        :data:`NUMERIC_FEATURES` (log-scaled output dims, kernel, stride, grouped flag, bias flag,
        log FLOPs, log params)."""
        x = torch.zeros(len(self.nodes), NUM_NODE_FEATURES, dtype=torch.float32)
        base = len(OP_TYPES)
        for i, node in enumerate(self.nodes):
            x[i, _OP_INDEX[node.op]] = 1.0
            dims = node.output_shape[1:]
            c = dims[0] if len(dims) >= 1 else 0
            h = dims[1] if len(dims) >= 2 else 0
            w = math.prod(dims[2:]) if len(dims) >= 3 else 0
            kernel, stride = node.kernel or [0], node.stride or [0]
            x[i, base:] = torch.tensor([
                math.log1p(c), math.log1p(h), math.log1p(w),
                float(kernel[0]), float(kernel[-1]), float(stride[0]), float(stride[-1]),
                float(node.groups > 1), float(node.bias), math.log1p(node.flops), math.log1p(node.params),
            ])  # fmt: skip
        return x

    def edge_index(self) -> Tensor:
        """``(2, E)`` long: row 0 sources, row 1 destinations (PyTorch Geometric's convention)."""
        if not self.edges:
            return torch.zeros(2, 0, dtype=torch.long)
        return torch.tensor(self.edges, dtype=torch.long).t().contiguous()

    def to_pyg(self, target: str | None = None):
        """A ``torch_geometric.data.Data(x, edge_index, y)``; ``y = [label[target]]`` when ``target`` is given."""
        from torch_geometric.data import Data

        data = Data(x=self.node_features(), edge_index=self.edge_index(), num_nodes=len(self.nodes))
        if target is not None:
            if not self.label or target not in self.label:
                raise LitzooError(f"computation graph has no label '{target}' (labels: {sorted(self.label or {})})")
            data.y = torch.tensor([self.label[target]], dtype=torch.float32)
        return data

    # ---- summaries -------------------------------------------------------------------------
    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    @property
    def total_params(self) -> int:
        return sum(n.params for n in self.nodes)

    def op_counts(self) -> dict[str, int]:
        """Nodes per op type, in :data:`OP_TYPES` order (types that do not occur left out)."""
        counts = {op: 0 for op in OP_TYPES}
        for n in self.nodes:
            counts[n.op] += 1
        return {op: c for op, c in counts.items() if c}

    def predecessors(self, index: int) -> list[int]:
        return [s for s, d in self.edges if d == index]

    def successors(self, index: int) -> list[int]:
        return [d for s, d in self.edges if s == index]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def _node_from_dict(raw: Any, position: int, fail) -> CGNode:
    if not isinstance(raw, dict):
        raise fail(f"node {position} must be an object, got {type(raw).__name__}")
    for key in _REQUIRED_NODE_KEYS:
        if key not in raw:
            raise fail(f"node {position} is missing key '{key}'")
    unknown = sorted(set(raw) - set(_NODE_KEYS))
    if unknown:
        raise fail(f"node {position} has unknown key '{unknown[0]}'")
    if raw["index"] != position or not _is_int(raw["index"]):
        raise fail(f"node {position} has index {raw['index']!r}; nodes must be listed in index order 0, 1, 2, ...")
    if not isinstance(raw["name"], str):
        raise fail(f"node {position} 'name' must be a string")
    if raw["op"] not in _OP_INDEX:
        raise fail(f"node {position} has unknown op {raw['op']!r} (see litzoo.framework.graph.OP_TYPES)")
    if not (isinstance(raw["input_shapes"], list) and all(_int_list(s) for s in raw["input_shapes"])):
        raise fail(f"node {position} 'input_shapes' must be a list of lists of ints")
    if not _int_list(raw["output_shape"]):
        raise fail(f"node {position} 'output_shape' must be a list of ints")
    for key in ("kernel", "stride"):
        if raw.get(key) is not None and not _int_list(raw[key]):
            raise fail(f"node {position} '{key}' must be a list of ints or null")
    groups, bias, flops, params = raw.get("groups", 1), raw.get("bias", False), raw.get("flops", 0), raw.get("params", 0)
    if not _is_int(groups) or groups < 1:
        raise fail(f"node {position} 'groups' must be an int >= 1, got {groups!r}")
    if not isinstance(bias, bool):
        raise fail(f"node {position} 'bias' must be true or false, got {bias!r}")
    for key, value in (("flops", flops), ("params", params)):
        if not _is_int(value) or value < 0:
            raise fail(f"node {position} '{key}' must be an int >= 0, got {value!r}")
    return CGNode(
        position, raw["name"], raw["op"], [list(s) for s in raw["input_shapes"]], list(raw["output_shape"]),
        None if raw.get("kernel") is None else list(raw["kernel"]), None if raw.get("stride") is None else list(raw["stride"]),
        groups, bias, flops, params,
    )  # fmt: skip


# ---- files -----------------------------------------------------------------------------------
def save_graphs_jsonl(path: str | os.PathLike, graphs: Iterable[ComputationGraph]) -> None:
    """One graph per line (:meth:`ComputationGraph.to_json`); written to a temporary file next to
    ``path`` and moved into place, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for graph in graphs:
                f.write(graph.to_json() + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_graphs_jsonl(path: str | os.PathLike) -> list[ComputationGraph]:
    """The graphs of a file written by :func:`save_graphs_jsonl` (blank lines skipped); a bad line
    raises a one-line :class:`LitzooError` naming the file and the line number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise LitzooError(f"computation graphs '{path}' cannot be read: {error.strerror or error}") from None
    return [ComputationGraph.from_json(line, f"'{path}' line {number}") for number, line in enumerate(lines, 1) if line.strip()]


# ---- building a CG from a module -------------------------------------------------------------
#: leaf module type -> op (first match wins; subclasses match their base)
_MODULE_OPS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.MultiheadAttention, "attention"),
    (nn.modules.conv._ConvTransposeNd, "conv_transpose"),
    (nn.modules.conv._ConvNd, "conv"),
    (nn.Linear, "linear"), (nn.Bilinear, "linear"),
    (nn.modules.batchnorm._BatchNorm, "batch_norm"),
    (nn.LayerNorm, "layer_norm"), (nn.GroupNorm, "group_norm"),
    (nn.modules.instancenorm._InstanceNorm, "instance_norm"),
    (nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.GELU, "gelu"), (nn.SiLU, "silu"),
    (nn.Hardswish, "hardswish"), (nn.Hardsigmoid, "hardsigmoid"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"),
    (nn.Softmax, "softmax"), (nn.LogSoftmax, "softmax"), (nn.LeakyReLU, "leaky_relu"),
    (nn.modules.pooling._MaxPoolNd, "max_pool"), (nn.modules.pooling._AdaptiveMaxPoolNd, "max_pool"),
    (nn.modules.pooling._AvgPoolNd, "avg_pool"), (nn.modules.pooling._AdaptiveAvgPoolNd, "adaptive_avg_pool"),
    (nn.Flatten, "flatten"), (nn.Unflatten, "reshape"),
    (nn.modules.dropout._DropoutNd, "dropout"), (nn.Identity, "identity"),
    (nn.Embedding, "embedding"), (nn.EmbeddingBag, "embedding"),
    (nn.Upsample, "upsample"), (nn.modules.padding._ReflectionPadNd, "pad"), (nn.modules.padding._ConstantPadNd, "pad"),
    (nn.modules.padding._ReplicationPadNd, "pad"), (nn.ZeroPad2d, "pad"),
)  # fmt: skip
if hasattr(nn, "RMSNorm"):
    _MODULE_OPS = ((nn.RMSNorm, "rms_norm"), *_MODULE_OPS)

#: function / method / ATen operator name -> op (names without the ``aten::`` prefix and trailing ``_``)
_FUNCTION_OPS: dict[str, str] = {
    **dict.fromkeys(["add", "iadd", "__add__", "__radd__"], "add"),
    **dict.fromkeys(["sub", "rsub", "isub", "__sub__", "__rsub__"], "sub"),
    **dict.fromkeys(["mul", "imul", "__mul__", "__rmul__"], "mul"),
    **dict.fromkeys(["truediv", "div", "floordiv", "__truediv__", "itruediv"], "div"),
    **dict.fromkeys(["cat", "concat", "concatenate", "stack", "hstack", "vstack"], "concat"),
    **dict.fromkeys(["conv1d", "conv2d", "conv3d", "convolution", "_convolution"], "conv"),
    **dict.fromkeys(["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"], "conv_transpose"),
    **dict.fromkeys(["linear", "addmm", "bilinear"], "linear"),
    **dict.fromkeys(["batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
                     "_native_batch_norm_legit_functional", "cudnn_batch_norm"], "batch_norm"),
    **dict.fromkeys(["layer_norm", "native_layer_norm"], "layer_norm"),
    **dict.fromkeys(["group_norm", "native_group_norm"], "group_norm"),
    **dict.fromkeys(["instance_norm"], "instance_norm"),
    **dict.fromkeys(["rms_norm", "_fused_rms_norm"], "rms_norm"),
    **dict.fromkeys(["relu"], "relu"),
    **dict.fromkeys(["relu6", "hardtanh"], "relu6"),
    **dict.fromkeys(["gelu"], "gelu"),
    **dict.fromkeys(["silu"], "silu"),
    **dict.fromkeys(["hardswish"], "hardswish"),
    **dict.fromkeys(["hardsigmoid"], "hardsigmoid"),
    **dict.fromkeys(["sigmoid"], "sigmoid"),
    **dict.fromkeys(["tanh"], "tanh"),
    **dict.fromkeys(["softmax", "log_softmax", "_softmax", "_log_softmax"], "softmax"),
    **dict.fromkeys(["leaky_relu"], "leaky_relu"),
    **dict.fromkeys(["max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "adaptive_max_pool1d",
                     "adaptive_max_pool2d"], "max_pool"),
    **dict.fromkeys(["avg_pool1d", "avg_pool2d", "avg_pool3d"], "avg_pool"),
    **dict.fromkeys(["adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d"], "adaptive_avg_pool"),
    **dict.fromkeys(["flatten"], "flatten"),
    **dict.fromkeys(["view", "reshape", "_unsafe_view", "unflatten", "view_as", "reshape_as", "squeeze", "unsqueeze"], "reshape"),
    **dict.fromkeys(["matmul", "bmm", "mm", "baddbmm", "einsum"], "matmul"),
    **dict.fromkeys(["scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                     "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention"], "attention"),
    **dict.fromkeys(["embedding"], "embedding"),
    **dict.fromkeys(["dropout", "dropout1d", "dropout2d", "alpha_dropout", "native_dropout"], "dropout"),
    **dict.fromkeys(["clone", "contiguous", "detach", "alias", "to", "type_as", "float"], "identity"),
    **dict.fromkeys(["mean"], "mean"),
    **dict.fromkeys(["pad", "constant_pad_nd"], "pad"),
    **dict.fromkeys(["interpolate", "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d"], "upsample"),
    **dict.fromkeys(["permute", "transpose", "t", "movedim", "swapaxes"], "permute"),
    **dict.fromkeys(["getitem", "chunk", "split", "split_with_sizes", "narrow", "slice", "select", "unbind", "index_select",
                     "gather", "tensor_split"], "slice"),
}  # fmt: skip


class CGTracer(torch.fx.Tracer):
    """torch.fx's default leaf rule (modules of ``torch.nn`` are leaves, containers are not), with
    ``nn.MultiheadAttention`` made a leaf explicitly: one "attention" node, its parameters included."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, nn.MultiheadAttention):
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _FlopShapeProp(ShapeProp):
    """``ShapeProp`` that also records each node's value and its FLOPs (its own FlopCounterMode)."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[torch.fx.Node, Any] = {}
        self.flops: dict[torch.fx.Node, int] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        # nn.MultiheadAttention in eval mode without grad takes its fused fast path
        # (torch._native_multi_head_attention), which FlopCounterMode does not see: its node is run
        # on the regular path (projections, bmm, softmax) so that its FLOPs are counted.
        mha = n.op == "call_module" and isinstance(self.module.get_submodule(n.target), nn.MultiheadAttention)
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(mha or torch.is_grad_enabled()):
            result = super().run_node(n)
        self.values[n] = result
        self.flops[n] = int(counter.get_total_flops())
        if not self.flops[n] and n.op == "call_function" and _FUNCTION_OPS.get(_function_name(n.target)) == "attention":
            # SDPA on CPU runs a flash kernel that FlopCounterMode has no formula for: count it as the
            # GPU kernels are counted, 2·B·H·Lq·Lk·(Dk + Dv)
            q, k, v = (self.values.get(a) if isinstance(a, torch.fx.Node) else a for a in n.args[:3])
            if all(isinstance(t, Tensor) for t in (q, k, v)):
                self.flops[n] = int(sdpa_flop_count(q.shape, k.shape, v.shape))
        return result


def _function_name(target: Any) -> str:
    """``operator.add -> 'add'``, ``torch.ops.aten.conv2d.default -> 'conv2d'``, ``'relu_' -> 'relu'``."""
    if isinstance(target, str):
        name = target
    elif isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
    elif isinstance(target, torch._ops.OpOverloadPacket):
        name = target._qualified_op_name.split("::")[-1]
    else:
        name = getattr(target, "__name__", str(target))
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


def _has_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    return False


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _as_list(value: Any, dims: int = 2) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value] * dims
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _arg(node: torch.fx.Node, position: int, name: str, default: Any = None) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


class _Builder:
    """Turns a propagated fx graph into CG nodes and edges (see the module docstring, steps 3-4)."""

    def __init__(self, gm: torch.fx.GraphModule, prop: _FlopShapeProp) -> None:
        self.gm, self.prop = gm, prop
        self.seen_params: set[int] = set()

    def owned_params(self, tensors: Iterable[Tensor]) -> int:
        total = 0
        for p in tensors:
            if isinstance(p, Tensor) and id(p) not in self.seen_params:
                self.seen_params.add(id(p))
                total += p.numel()
        return total

    def classify(self, node: torch.fx.Node) -> tuple[str, dict[str, Any]]:
        """(op, extra fields) of a kept node."""
        if node.op == "placeholder":
            return "input", {}
        if node.op == "output":
            return "output", {}
        if node.op == "call_module":
            return self.classify_module(node, self.gm.get_submodule(node.target))
        return self.classify_function(node)

    def classify_module(self, node: torch.fx.Node, m: nn.Module) -> tuple[str, dict[str, Any]]:
        op = next((name for cls, name in _MODULE_OPS if isinstance(m, cls)), "other")
        extra: dict[str, Any] = {"params": self.owned_params(m.parameters())}
        if isinstance(m, nn.modules.conv._ConvNd):
            dims = len(m.kernel_size)
            extra.update(kernel=list(m.kernel_size), stride=_as_list(m.stride, dims), groups=m.groups, bias=m.bias is not None)
            if op == "conv" and m.groups == m.in_channels > 1:
                op = "depthwise_conv"
        elif isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
            kernel = _as_list(m.kernel_size)
            extra.update(kernel=kernel, stride=_as_list(m.stride if m.stride is not None else m.kernel_size, len(kernel or [0, 0])))
        elif isinstance(m, (nn.Linear, nn.Bilinear, nn.MultiheadAttention)):
            extra["bias"] = getattr(m, "bias", None) is not None or getattr(m, "in_proj_bias", None) is not None
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            extra["bias"] = getattr(m, "bias", None) is not None
        return op, extra

    def classify_function(self, node: torch.fx.Node) -> tuple[str, dict[str, Any]]:
        name = _function_name(node.target)
        op = _FUNCTION_OPS.get(name, "other")
        extra: dict[str, Any] = {}
        values = self.prop.values
        if op in ("conv", "conv_transpose"):
            weight = values.get(_arg(node, 1, "weight")) if isinstance(_arg(node, 1, "weight"), torch.fx.Node) else None
            x = values.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
            groups_pos = 8 if name in ("convolution", "_convolution") else 6
            groups = _arg(node, groups_pos, "groups", 1)
            groups = groups if isinstance(groups, int) else 1
            if isinstance(weight, Tensor):
                dims = weight.dim() - 2
                extra.update(kernel=list(weight.shape[2:]), stride=_as_list(_arg(node, 3, "stride", 1), dims) or [1] * dims)
            extra.update(groups=groups, bias=_arg(node, 2, "bias") is not None)
            if op == "conv" and isinstance(x, Tensor) and x.dim() >= 2 and groups == x.shape[1] > 1:
                op = "depthwise_conv"
        elif op in ("max_pool", "avg_pool") and not name.startswith("adaptive"):
            kernel = _as_list(_arg(node, 1, "kernel_size"))
            stride = _as_list(_arg(node, 2, "stride"))
            extra.update(kernel=kernel, stride=stride or kernel)
        elif op in ("batch_norm", "layer_norm", "group_norm", "instance_norm"):
            # aten.batch_norm / _native_batch_norm_legit*: (input, weight, bias, ...); F.batch_norm:
            # (input, running_mean, running_var, weight, bias); layer / group norm: (input, shape|groups, weight, bias)
            functional_bn = op == "batch_norm" and not isinstance(node.target, torch._ops.OpOverload)
            position = 4 if functional_bn else 2 if op == "batch_norm" else 3
            extra["bias"] = _arg(node, position, "bias") is not None
        elif op == "linear":
            bias_pos = 0 if name == "addmm" else 2
            extra["bias"] = _arg(node, bias_pos, "bias") is not None if name != "addmm" else True
        return op, extra

    def build(self, label: dict[str, float] | None, family: str | None) -> ComputationGraph:
        values, flops = self.prop.values, self.prop.flops
        get_attr_params: dict[torch.fx.Node, Tensor] = {}
        # effective sources: the kept nodes whose data reaches a node (folded nodes pass theirs on)
        sources: dict[torch.fx.Node, list[torch.fx.Node]] = {}
        kept: list[torch.fx.Node] = []
        for node in self.gm.graph.nodes:
            inputs = node.all_input_nodes
            upstream: list[torch.fx.Node] = []
            for i in inputs:
                for s in sources.get(i, []):
                    if s not in upstream:
                        upstream.append(s)
            value = values.get(node)
            if node.op == "output":
                kept.append(node)
                sources[node] = [node]
                continue
            if node.op == "get_attr":
                if isinstance(value, nn.Parameter):  # buffers (masks, running statistics) are not parameters
                    get_attr_params[node] = value
                sources[node] = []
                continue
            if node.op == "placeholder":
                sources[node] = [node] if _has_tensor(value) else []
                if sources[node]:
                    kept.append(node)
                continue
            if not _has_tensor(value):  # shapes, sizes, ints, None: metadata, not dataflow
                sources[node] = []
                continue
            is_tuple_getitem = node.target is operator.getitem and inputs and isinstance(values.get(inputs[0]), (tuple, list))
            if is_tuple_getitem:  # one output of a multi-output op: bridge to that op
                sources[node] = upstream
                continue
            has_params = node.op == "call_module" and any(True for _ in self.gm.get_submodule(node.target).parameters())
            has_params = has_params or any(i in get_attr_params for i in inputs)
            if not upstream and not has_params and flops.get(node, 0) == 0:  # a constant built from shapes
                sources[node] = []
                continue
            kept.append(node)
            sources[node] = [node]

        index = {node: i for i, node in enumerate(kept)}
        cg_nodes: list[CGNode] = []
        edges: list[tuple[int, int]] = []
        for node in kept:
            op, extra = self.classify(node)
            extra["params"] = extra.get("params", 0) + self.owned_params(
                get_attr_params[i] for i in node.all_input_nodes if i in get_attr_params
            )
            data_inputs = [i for i in node.all_input_nodes if i.op != "get_attr" and _has_tensor(values.get(i))]
            input_shapes = [list(_first_tensor(values[i]).shape) for i in data_inputs]
            out = _first_tensor(values.get(node)) if node.op != "output" else None
            output_shape = list(out.shape) if out is not None else (input_shapes[0] if input_shapes else [])
            name = self.node_name(node)
            cg_nodes.append(CGNode(index[node], name, op, input_shapes, output_shape, flops=flops.get(node, 0), **extra))
            seen: list[torch.fx.Node] = []
            for i in node.all_input_nodes:
                for s in sources.get(i, []):
                    if s not in seen:
                        seen.append(s)
            edges.extend((index[s], index[node]) for s in seen)
        # FLOPs of folded nodes (none in practice: folded nodes are views and bookkeeping) are not lost
        folded = sum(f for n, f in flops.items() if n not in index)
        if folded:
            cg_nodes[-1].flops += folded
        return ComputationGraph(cg_nodes, edges, label=dict(label) if label is not None else None, family=family)

    def node_name(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack")
        if stack:  # torch.export: the module that called the operator
            path = list(stack.values())[-1][0]
            if path:
                return f"{path}.{node.name}"
        return node.name


def _defaulted_args(model: nn.Module, given: int) -> dict[str, Any] | None:
    """Forward arguments after the ``given`` example inputs keep their defaults as constants
    (``mask_ratio=0.75``, ``noise=None``), so that Python code branching on them traces."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    rest = [p for p in parameters[given:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty]
    return {p.name: p.default for p in rest} or None


def _trace(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[torch.fx.GraphModule, _FlopShapeProp]:
    """fx symbolic trace + propagation; on failure, torch.export's unlifted graph + propagation."""
    try:
        graph = CGTracer().trace(model, concrete_args=_defaulted_args(model, len(inputs)))
        gm = torch.fx.GraphModule(model, graph, type(model).__name__)
        prop = _FlopShapeProp(gm)
        prop.propagate(*inputs)
        return gm, prop
    except Exception as fx_error:  # noqa: BLE001 - any tracing failure falls back to torch.export
        try:
            exported = torch.export.export(model, inputs, strict=False)
            gm = exported.module()
            prop = _FlopShapeProp(gm)
            prop.propagate(*inputs)
            return gm, prop
        except Exception as export_error:  # noqa: BLE001
            first = lambda e: (str(e).strip().splitlines() or [type(e).__name__])[0]  # noqa: E731
            raise LitzooError(
                f"cannot build the computation graph of {type(model).__name__}: torch.fx failed ({type(fx_error).__name__}: {first(fx_error)}) "
                f"and torch.export failed ({type(export_error).__name__}: {first(export_error)})"
            ) from None


class FeatureExtractor(nn.Module):
    """``model.forward_features`` as a module's forward: the encoder path of a pretraining model.

    A masked autoencoder's ``forward`` draws a random mask and selects tokens by it, so its size
    depends on the data and the graph cannot be traced; its encoder (what a downstream task and a
    performance predictor care about) can."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(model, "forward_features", None)):
            raise LitzooError(f"{type(model).__name__} has no forward_features method")
        self.model = model

    def forward(self, *inputs: Any) -> Any:
        return self.model.forward_features(*inputs)


def computation_graph(
    model: nn.Module,
    example_input: Tensor | tuple[Tensor, ...],
    *,
    label: dict[str, float] | None = None,
    family: str | None = None,
) -> ComputationGraph:
    """The CG of ``model`` run on ``example_input`` (a tuple = several forward arguments), in eval
    mode without gradients; ``label`` / ``family`` are stored with it for predictor training."""
    from litzoo.framework.profiling import eval_mode

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    with eval_mode(model), torch.no_grad():
        gm, prop = _trace(model, inputs)
        return _Builder(gm, prop).build(label, family)


__all__ = [
    "CGNode", "CGTracer", "ComputationGraph", "FeatureExtractor", "NUMERIC_FEATURES", "NUM_NODE_FEATURES", "OP_TYPES",
    "computation_graph", "load_graphs_jsonl", "save_graphs_jsonl",
]  # fmt: skip
