"""Uniform affine quantization of any ``nn.Module`` through torchao's PT2E flow: PTQ, QAT, int8 files.

Gholami et al., "A Survey of Quantization Methods for Efficient Neural Network Inference" (2021):
a real value ``r`` is stored as ``q = clamp(round(r / S) + Z, q_min, q_max)`` and read back as
``S (q - Z)``. Weights use a symmetric grid (``Z = 0``) per output channel (one ``S`` per row of
the kernel: a wide range in one channel does not coarsen the others) or per tensor; activations an
affine (asymmetric) per-tensor grid whose range comes from calibration. Post-training quantization
(PTQ) calibrates the ranges on a few batches; quantization-aware training (QAT) trains through fake
quantization with the straight-through estimator (the rounding's gradient is taken as 1 inside the
range and 0 outside).

The machinery is torchao's (``torchao.quantization.pt2e``): ``torch.export`` captures the graph,
``prepare_pt2e`` / ``prepare_qat_pt2e`` insert observers / fake-quantizers where the x86 quantizer
annotates the graph (conv, linear, their fused BN / ReLU, pooling, adds), ``convert_pt2e`` writes the
quantize / dequantize reference graph, which ``lower_pt2e_quantized_to_x86`` turns into oneDNN int8
kernels for CPU latency (:func:`lower_to_x86`, which also removes per-call costs that lowering leaves).
The configurations here are the x86 default (int8 per-channel symmetric weights, uint8 affine
activations with a histogram observer for PTQ) with the survey's options: per-tensor weights, fewer
bits (a 4-bit grid stored in int8 for stress tests), min-max or percentile calibration.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.verification import check_finite

WEIGHT_GRANULARITIES = ("per_channel", "per_tensor")
ACTIVATION_OBSERVERS = ("histogram", "minmax", "percentile")
#: the percentile calibration's upper percentile (the lower is 100 minus it); the survey's 99.9-99.99
PERCENTILE = 99.99


@functools.cache
def _torchao():
    """Import torchao's PT2E pieces once (quietly: it reports GPU kernels it cannot load on a CPU machine)."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from torchao.quantization import pt2e
            from torchao.quantization.pt2e import quantize_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
        except ImportError as error:  # pragma: no cover - torchao is a core dependency
            raise LitzooError(f"quantization needs torchao (pip install torchao): {error}") from None
    return pt2e, quantize_pt2e, x86_inductor_quantizer


@functools.cache
def _percentile_observer():
    """A histogram observer whose range is the (100 - p, p) percentiles of everything it saw.

    Percentile calibration (the survey, and TensorRT-style calibrators): a few extreme activations
    set a min-max range, so the grid's levels are spent on values that almost never occur. torch's
    histogram search minimises the L2 quantization error over bin ranges but keeps a single extreme
    value (its 2048 bins leave the bulk in a handful of them); the percentiles of the same histogram
    drop it. The bounds are bin edges, so within one bin width of the exact percentiles.
    """
    pt2e, _, _ = _torchao()

    class PercentileObserver(pt2e.HistogramObserver):
        def __init__(self, percentile: float = PERCENTILE, **kwargs) -> None:
            super().__init__(**kwargs)
            if not 50 < percentile <= 100:
                raise ValueError(f"percentile must be in (50, 100], got {percentile}")
            self.percentile = percentile

        def _non_linear_param_search(self) -> tuple[Tensor, Tensor]:
            total = self.histogram.sum()
            if total <= 0:
                return self.min_val, self.max_val
            cdf = self.histogram.cumsum(0) / total
            width = (self.max_val - self.min_val) / self.bins
            low = torch.searchsorted(cdf, torch.tensor(1 - self.percentile / 100, dtype=cdf.dtype), right=True)
            high = torch.searchsorted(cdf, torch.tensor(self.percentile / 100, dtype=cdf.dtype)).clamp(max=self.bins - 1)
            return self.min_val + width * low, self.min_val + width * (high + 1)

    return PercentileObserver


def check_options(weight_granularity: str, weight_bits: int, activation_bits: int, activation_observer: str) -> None:
    """``ValueError`` for options outside what the configuration supports."""
    if weight_granularity not in WEIGHT_GRANULARITIES:
        raise ValueError(f"weight_granularity must be one of {WEIGHT_GRANULARITIES}, got {weight_granularity!r}")
    if activation_observer not in ACTIVATION_OBSERVERS:
        raise ValueError(f"activation_observer must be one of {ACTIVATION_OBSERVERS}, got {activation_observer!r}")
    for name, bits in (("weight_bits", weight_bits), ("activation_bits", activation_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"{name} must be an integer in [2, 8] (values are stored in 8-bit integers), got {bits!r}")


def quantization_config(
    qat: bool = False,
    weight_granularity: str = "per_channel",
    weight_bits: int = 8,
    activation_bits: int = 8,
    activation_observer: str = "histogram",
):
    """The torchao ``QuantizationConfig``: symmetric int weights, affine uint activations.

    ``qat=True`` swaps observers for fake-quantizers with moving-average min-max ranges (the x86
    default for QAT). The grids are ``[-2^(b-1), 2^(b-1) - 1]`` for weights and ``[0, 2^b - 1]`` for
    activations, stored in int8 / uint8; only 8-bit grids map onto int8 kernels when lowered.
    """
    check_options(weight_granularity, weight_bits, activation_bits, activation_observer)
    pt2e, _, x86 = _torchao()
    eps = {"eps": 2**-12}  # the x86 default: no zero scale for a constant tensor
    if qat:
        activation_ctr = pt2e.FusedMovingAvgObsFakeQuantize.with_args(**eps)
    else:
        observers = {"histogram": pt2e.HistogramObserver, "minmax": pt2e.MinMaxObserver, "percentile": _percentile_observer()}
        activation_ctr = observers[activation_observer].with_args(**eps)
    activation = x86.QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=2**activation_bits - 1,
        qscheme=torch.per_tensor_affine,
        is_dynamic=False,
        observer_or_fake_quant_ctr=activation_ctr,
    )
    per_channel = weight_granularity == "per_channel"
    if qat:
        observer = pt2e.MovingAveragePerChannelMinMaxObserver if per_channel else pt2e.MovingAverageMinMaxObserver
        weight_ctr = pt2e.FusedMovingAvgObsFakeQuantize.with_args(observer=observer, **eps)
    else:
        weight_ctr = (pt2e.PerChannelMinMaxObserver if per_channel else pt2e.MinMaxObserver).with_args(**eps)
    weight = x86.QuantizationSpec(
        dtype=torch.int8,
        quant_min=-(2 ** (weight_bits - 1)),
        quant_max=2 ** (weight_bits - 1) - 1,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0,  # the output channel of conv (out, in, kh, kw) and linear (out, in) weights
        is_dynamic=False,
        observer_or_fake_quant_ctr=weight_ctr,
    )
    return x86.QuantizationConfig(activation, activation, weight, None, qat)


def _quantizer(config):
    _, _, x86 = _torchao()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(config)
    return quantizer


def export_graph(module: nn.Module, example: Tensor) -> torch.fx.GraphModule:
    """``torch.export`` of ``module`` on ``example`` with a dynamic batch dimension, as a GraphModule.

    The module is exported in its current mode (eval for PTQ, train for QAT). ``example`` needs a
    batch of at least 2 (a batch of 1 would be specialised).
    """
    if example.shape[0] < 2:
        raise ValueError(f"the example batch must hold at least 2 samples (a batch of 1 is specialised), got {tuple(example.shape)}")
    try:
        program = _export_dynamic_batch(module, example)
    except Exception as error:  # torch.export raises many types; the user needs the one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LitzooError(
            f"quantization: torch.export cannot capture {type(module).__name__} on inputs {tuple(example.shape)} "
            f"(the PT2E flow needs an exportable forward): {first}"
        ) from None
    graph = program.module()
    _separate_reused_modules(graph)
    return graph


def _export_dynamic_batch(module: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module(example)`` with the batch dimension left dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))


def _separate_reused_modules(graph: torch.fx.GraphModule) -> None:
    """Give each call of a module used at several places (``self.relu`` twice in a ResNet block) its own name.

    The quantizer groups nodes into patterns by the module they came from (``nn_module_stack``);
    two calls of one ReLU become one "partition" with two outputs, which it rejects ("Input
    partition has more than one output node"). Calls are told apart as the connected groups of
    nodes of that module, and every group after the first gets the module name plus ``@<call>``.
    """
    by_module: dict[str, list[torch.fx.Node]] = {}
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if stack:
            by_module.setdefault(list(stack.values())[-1][0], []).append(node)
    for fqn, nodes in by_module.items():
        if len({node.target for node in nodes}) == len(nodes):
            continue  # one call (a module's ops are distinct, e.g. BatchNorm's batch_norm and counter add_)
        members, call_of = set(nodes), {}
        for node in nodes:  # graph order: a node's producers in the same call are already numbered
            producers = [call_of[arg] for arg in node.all_input_nodes if arg in members and arg in call_of]
            call_of[node] = min(producers) if producers else len(set(call_of.values()))
        if len(set(call_of.values())) < 2:
            continue
        for node, call in call_of.items():
            if call:
                stack = node.meta["nn_module_stack"].copy()
                key = next(reversed(stack))
                stack[key] = (f"{fqn}@{call}", stack[key][1])
                node.meta["nn_module_stack"] = stack


@torch.no_grad()
def quantize_ptq(module: nn.Module, calibration: Iterable[Tensor], config) -> torch.fx.GraphModule:
    """Post-training quantization of a copy of ``module`` (eval mode): calibrate, convert.

    Returns the int8 reference graph (quantize / dequantize around float ops; numerically the int8
    model). ``module`` itself is not changed.

    Raises:
        LitzooError: no calibration batch, or the model's outputs on the first one are not finite.
    """
    _, quantize_pt2e, _ = _torchao()
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise LitzooError("quantization: no calibration batch")
    model = copy.deepcopy(module).eval()
    # NaN activations give NaN ranges (or the histogram observer's own error): refuse a diverged model first
    check_finite(model(first), "quantization: the float model's outputs on the first calibration batch", "cannot calibrate")
    prepared = quantize_pt2e.prepare_pt2e(export_graph(model, first), _quantizer(config))
    prepared(first)
    for x in batches:
        prepared(x)
    return quantize_pt2e.convert_pt2e(prepared)


class FakeQuantizedNetwork(nn.Module):
    """A QAT graph that follows ``train()`` / ``eval()`` however they are set.

    An exported graph has BatchNorm and dropout baked in one mode; torchao rewrites them between
    their training and inference forms. Lightning (and ``litzoo.framework.profiling.eval_mode``) restore
    modes by assigning ``module.training`` directly, which no method hook sees, so the graph's form
    is matched to ``self.training`` at every forward too (a no-op unless the mode changed). Observers
    (the fake-quantizers' range estimates) run in training form only.
    """

    def __init__(self, graph: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph = graph
        self._form = True  # exported and prepared in train mode

    def train(self, mode: bool = True) -> FakeQuantizedNetwork:
        # an exported graph refuses train()/eval(): switch its form here (the rewrite traces small
        # patterns, better done outside any forward, e.g. not under a FLOP counter) ...
        self.training = mode
        self._sync()
        return self

    def _sync(self) -> None:
        if self._form == self.training:
            return
        pt2e, _, _ = _torchao()
        (pt2e.move_exported_model_to_train if self.training else pt2e.move_exported_model_to_eval)(self.graph)
        # ranges are learnt from training batches only: evaluation (and a FLOP count on one sample)
        # must not move them
        self.graph.apply(pt2e.enable_observer if self.training else pt2e.disable_observer)
        self._form = self.training

    def forward(self, x: Tensor) -> Tensor:
        self._sync()  # ... and here, for flags assigned directly (idempotent: a no-op unless they changed)
        return self.graph(x)


def prepare_qat(module: nn.Module, example: Tensor, config) -> FakeQuantizedNetwork:
    """The fake-quantized training graph of ``module`` (exported in train mode), ready to train.

    BatchNorm after a conv is simulated folded (torchao rewrites conv + BN), its statistics still
    train; the straight-through estimator passes gradients through the rounding.
    """
    _, quantize_pt2e, _ = _torchao()
    graph = export_graph(module.train(), example)
    return FakeQuantizedNetwork(quantize_pt2e.prepare_qat_pt2e(graph, _quantizer(config)))


@torch.no_grad()
def convert_qat(network: FakeQuantizedNetwork) -> torch.fx.GraphModule:
    """The int8 reference graph of a QAT network (a converted copy; the training graph is unchanged)."""
    pt2e, quantize_pt2e, _ = _torchao()
    graph = copy.deepcopy(network.graph)
    pt2e.move_exported_model_to_eval(graph)
    return quantize_pt2e.convert_pt2e(graph)


# ---------------------------------------------------------------------------- oneDNN int8 kernels
def _data_movement_ops() -> frozenset:
    """Ops that only reshape, reorder or copy elements: an elementwise (per-tensor) quantize commutes with them."""
    aten = torch.ops.aten
    return frozenset({
        aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints, aten.squeeze.dim,
        aten.squeeze.dims, aten.unsqueeze.default, aten.permute.default, aten.clone.default,
    })  # fmt: skip


def _recompiled(graph: torch.fx.GraphModule, edits: int) -> int:
    """Check ``graph`` and regenerate its code after ``edits`` in-place edits (none: nothing to do); returns ``edits``."""
    if edits:
        graph.graph.lint()
        graph.recompile()
    return edits


def _decomposed_activation(graph: torch.fx.Graph, node: torch.fx.Node, x: torch.fx.Node) -> torch.fx.Node | None:
    """The nodes of inductor's decomposed form of activation ``node`` applied to ``x`` (inserted before ``node``), or ``None``."""
    aten = torch.ops.aten
    target = node.target
    with graph.inserting_before(node):
        if target in (aten.hardtanh.default, aten.hardtanh_.default):
            low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
            high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
            if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low <= high):
                return None
            return graph.call_function(aten.clamp_max.default, (graph.call_function(aten.clamp_min.default, (x, low)), high))
        if target in (aten.silu.default, aten.silu_.default):  # x / (exp(-x) + 1)
            denominator = graph.call_function(
                aten.add.Tensor, (graph.call_function(aten.exp.default, (graph.call_function(aten.neg.default, (x,)),)), 1)
            )
            return graph.call_function(aten.div.Tensor, (x, denominator))
        if target in (aten.hardswish.default, aten.hardswish_.default):  # x * clamp(x + 3, 0, 6) / 6
            gate = graph.call_function(aten.clamp_min.default, (graph.call_function(aten.add.Tensor, (x, 3)), 0))
            gate = graph.call_function(aten.clamp_max.default, (gate, 6))
            return graph.call_function(aten.div.Tensor, (graph.call_function(aten.mul.Tensor, (x, gate)), 6))
    return None


def decompose_conv_activations(graph: torch.fx.GraphModule) -> int:
    """Write ReLU6 / hardtanh, SiLU and hardswish after a ``conv2d`` in inductor's decomposed form, in place.

    The x86 lowering's conv + activation fusion patterns (inductor's, which decomposes activations before
    matching) only match ``clamp_max(clamp_min(x))``, ``x / (exp(-x) + 1)`` and ``x * clamp(x + 3, 0, 6) / 6``,
    while ``torch.export`` keeps ``hardtanh`` / ``silu`` / ``hardswish``. Unrewritten, such a conv writes
    float32, the activation runs in float and a separate quantize follows (several elementwise passes over
    the feature map); rewritten, the activation becomes the int8 conv's oneDNN post-op and the conv writes
    uint8, as conv + ReLU already does. The clamp form of hardtanh gives the same values; SiLU and
    hardswish compute the same function in float32 in another order, so an output can move by one step
    of the 8-bit grid where a value sits within rounding of a grid boundary. An activation is rewritten
    only where it is the conv output's one reader (an in-place one then writes nothing anyone else sees).
    Returns the number of activations rewritten.
    """
    aten = torch.ops.aten
    rewritten = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function":
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, torch.fx.Node) and source.target == aten.conv2d.default and len(source.users) == 1):
            continue
        replacement = _decomposed_activation(graph.graph, node, source)
        if replacement is None:
            continue
        node.replace_all_uses_with(replacement)
        graph.graph.erase_node(node)
        rewritten += 1
    return _recompiled(graph, rewritten)


def drop_requantization(graph: torch.fx.GraphModule) -> int:
    """Remove ``dequantize -> [view / reshape / ...] -> quantize`` on one grid, in place: the reshapes act on the integers.

    The x86 quantizer gives reshapes (a flatten before the classifier) the grid of their input, so the
    lowered graph dequantizes, reshapes in float and quantizes again onto the same grid, two Python-level
    ops per call. ``quantize(dequantize(k)) = k`` exactly for every integer ``k`` of a full 8-bit grid
    (``round(S (k - Z) / S)`` is within ``255 * 3 * 2^-24`` of ``k - Z``; the clamp to the dtype's range is
    then the identity), and an elementwise map commutes with a reshape, so the chain is the reshape of
    ``k``. Only per-tensor pairs with equal (scale, zero point, range, dtype), scalar parameters and a
    range that is the dtype's full range are removed. Returns the number of quantize nodes removed.
    """
    _torchao()  # registers the quantized_decomposed operators
    decomposed = torch.ops.quantized_decomposed
    movement = _data_movement_ops()
    removed = 0
    for quantize in list(graph.graph.nodes):
        if quantize.op != "call_function" or quantize.target != decomposed.quantize_per_tensor.default:
            continue
        chain, node = [], quantize.args[0]
        while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in movement and len(node.users) == 1:
            chain.append(node)
            node = node.args[0]
        if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == decomposed.dequantize_per_tensor.default):
            continue
        dequantize, params = node, tuple(quantize.args[1:6])
        if (
            quantize.kwargs
            or dequantize.kwargs
            or tuple(dequantize.args[1:6]) != params
            or any(isinstance(p, torch.fx.Node) for p in params)
        ):
            continue
        _, _, low, high, dtype = params
        if dtype not in (torch.uint8, torch.int8) or (low, high) != (torch.iinfo(dtype).min, torch.iinfo(dtype).max):
            continue
        integers = dequantize.args[0]
        if chain:
            chain[-1].replace_input_with(dequantize, integers)
            quantize.replace_all_uses_with(chain[0])
        else:
            quantize.replace_all_uses_with(integers)
        graph.graph.erase_node(quantize)
        if not dequantize.users:
            graph.graph.erase_node(dequantize)
        removed += 1
    return _recompiled(graph, removed)


def reshape_views(graph: torch.fx.GraphModule) -> int:
    """Turn every ``aten.view`` of the lowered graph into ``aten.reshape``, in place; returns how many.

    oneDNN's int8 convs write channels-last tensors, on which a flatten exported as ``view`` (a VGG or
    LeNet head flattening a conv feature map) raises "view size is not compatible with input tensor's
    size and stride" at every call of torchao's lowered graph. ``reshape`` gives the same elements: the
    same view where one exists, a copy in the logical order otherwise.
    """
    reshaped = 0
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
            reshaped += 1
    return _recompiled(graph, reshaped)


class LoweredInt8(nn.Module):
    """The int8 graph of :func:`lower_to_x86`, called directly, for inputs of one shape and dtype.

    ``torch.export``'s modules run Python forward hooks at every call (the input checked against the
    exported signature, graph inputs of module type switched on and off): on the 16x16 digits RepVGG
    about 0.1 ms of a 0.5 ms int8 forward. The graph is a plain ``torch.fx.GraphModule`` instead, and
    since it is specialised to the example's shape (a flatten to ``[batch, C]`` is a constant in it), a
    comparison of shape and dtype keeps the protection against other inputs at a fraction of a microsecond.
    """

    def __init__(self, graph: torch.fx.GraphModule, input_shape: tuple[int, ...], input_dtype: torch.dtype) -> None:
        super().__init__()
        self.graph = graph
        self.input_shape = torch.Size(input_shape)
        self.input_dtype = input_dtype

    def forward(self, x: Tensor) -> Tensor:
        if x.shape != self.input_shape or x.dtype != self.input_dtype:
            raise ValueError(
                f"this int8 model was lowered for {self.input_dtype} inputs of shape {tuple(self.input_shape)}, "
                f"got {x.dtype} {tuple(x.shape)}: lower it again (lower_to_x86) with an example of that shape"
            )
        return self.graph(x)


def lower_to_x86(model: torch.fx.GraphModule, example: Tensor) -> LoweredInt8:
    """The int8 reference graph lowered to oneDNN int8 kernels (for CPU latency), for ``example``'s shape.

    torchao's ``lower_pt2e_quantized_to_x86`` re-exports the graph and runs inductor's freezing passes:
    weights are prepacked once (constants of the graph, no prepack per call), and quantize -> conv ->
    (ReLU | add + ReLU) -> quantize patterns become single ``onednn.qconv_pointwise`` /
    ``qconv2d_pointwise.binary`` calls that read and write uint8. Three changes cut the per-call cost
    it leaves without changing the outputs (beyond the rounding noted in :func:`decompose_conv_activations`):
    that function before lowering (ReLU6, SiLU and hardswish fused into the int8 conv, as ReLU is),
    :func:`drop_requantization` after it (no dequantize / quantize around a reshape), and the graph
    called without ``torch.export``'s per-call hooks (:class:`LoweredInt8`). :func:`reshape_views`
    makes a flatten of an int8 conv's (channels-last) output run at all. ``model`` is not changed.
    """
    _torchao()
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aten = torch.ops.aten
        activations = {aten.hardtanh.default, aten.hardtanh_.default, aten.silu.default, aten.silu_.default, aten.hardswish.default,
                       aten.hardswish_.default}  # fmt: skip
        if any(n.target in activations for n in model.graph.nodes):
            model = copy.deepcopy(model)  # the rewrite is in place; the caller's reference graph stays as it was
            decompose_conv_activations(model)
        lowered = lower_pt2e_quantized_to_x86(model, (example,))
    graph = torch.fx.GraphModule(lowered, lowered.graph)  # the same graph and constants, without the exported module's hooks
    drop_requantization(graph)
    reshape_views(graph)
    return LoweredInt8(graph, tuple(example.shape), example.dtype)


# ---------------------------------------------------------------------------- files
def save_int8(model: torch.fx.GraphModule, example: Tensor, path: str | Path) -> Path:
    """Write the int8 reference graph as a ``torch.export`` program (``.pt2``, dynamic batch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(_export_dynamic_batch(model, example), str(path))
    return path


def load_int8(path: str | Path) -> nn.Module:
    """Read an int8 program written by :func:`save_int8`; a bad file is a one-line ``LitzooError``.

    .. warning::
        Load only ``.pt2`` files you wrote yourself (``litzoo export --format int8``, the
        ``Quantization`` callback) or got from someone you trust: **a .pt2 file can run code when
        loaded or called.** Unlike checkpoints, which litzoo reads with ``weights_only=True``,
        ``torch.export.load`` has no safe mode: payloads marked as pickled, custom objects and the
        example inputs (when they do not load with ``weights_only=True``) are unpickled with
        ``weights_only=False``, the graph's call targets are resolved by name under ``torch.*``
        (which reaches ``torch.os.system``), and symbolic shapes are parsed by ``sympy.sympify``
        (``eval``). Checking the archive's members for pickles would therefore not make a foreign
        file safe, so litzoo does not pretend to: treat a ``.pt2`` like a Python script.
    """
    path = Path(path)
    if not path.is_file():
        raise LitzooError(f"int8 model '{path}' does not exist")
    _torchao()  # registers the quantize / dequantize operators the program calls
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise LitzooError(f"int8 model '{path}' is not a torch.export program ({type(error).__name__}: {str(error)[:120]})") from None
    return program.module()


# ---------------------------------------------------------------------------- diagnostics
def weight_statistics(module: nn.Module) -> dict[str, dict[str, float]]:
    """Per conv / linear layer: ``max|w|``, ``std(w)`` and ``range_ratio = max|w| / std(w)``.

    A per-tensor grid spends its 2^b levels on ``[-max|w|, max|w|]``: the larger ``range_ratio``,
    the fewer levels the bulk of the weights gets. ``channel_range_ratio`` is the same ratio of the
    widest output channel to the median channel's ``max|w_c|`` (what per-channel scales absorb).
    """
    stats = {}
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            w = layer.weight.detach().double()
            per_channel = w.flatten(1).abs().amax(1)
            std = w.std().item() if w.numel() > 1 else 0.0
            stats[name] = {
                "max_abs": w.abs().max().item(),
                "std": std,
                "range_ratio": w.abs().max().item() / std if std > 0 else float("inf"),
                "channel_range_ratio": (per_channel.max() / per_channel.median().clamp_min(1e-12)).item(),
            }
    return stats
