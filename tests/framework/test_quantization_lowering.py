"""framework/quantization.py's lowering to oneDNN int8 kernels (``lower_to_x86``): the same outputs as the
PT2E reference int8 model and as torchao's own lowering, without the per-call costs that lowering leaves
(a dequantize / quantize pair around a reshape, ReLU6 / SiLU / hardswish outside the int8 conv,
``torch.export``'s per-call hooks)."""

from __future__ import annotations

import collections
import warnings

import pytest
import torch
from torch import nn
from user_models import UserMobileNetV2

from litzoo.framework.quantization import (
    LoweredInt8,
    drop_requantization,
    lower_to_x86,
    quantization_config,
    quantize_ptq,
)
from litzoo.framework.reparam import fuse_model, randomize_batchnorm
from litzoo.modules.repvgg import RepVGG

aten = torch.ops.aten


def _ops(graph: torch.fx.GraphModule) -> collections.Counter:
    return collections.Counter(str(n.target) for n in graph.graph.nodes if n.op == "call_function")


def _reference(net: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    generator = torch.Generator().manual_seed(1)
    return quantize_ptq(net.eval(), [torch.randn(8, *shape, generator=generator) for _ in range(2)], quantization_config())


@pytest.fixture(scope="module")
def digits_repvgg() -> torch.fx.GraphModule:
    """The int8 reference graph of the fused digits RepVGG of ``benchmarks/quantization.py`` (random weights)."""
    torch.manual_seed(0)
    net = RepVGG(
        in_channels=1, num_classes=10, num_blocks=[1, 2, 2, 1], width_multiplier=[0.25, 0.25, 0.25, 0.125], stage_strides=[1, 1, 2, 2, 2]
    )
    randomize_batchnorm(net, 0)
    return _reference(fuse_model(net.eval()), (1, 16, 16))


def test_the_lowered_digits_repvgg_equals_torchaos_lowering_without_the_requantization_around_the_flatten(digits_repvgg):
    """Every conv + ReLU is one uint8-in, uint8-out oneDNN call; the input is quantized once and the pooled
    features once. torchao's lowering also dequantizes and re-quantizes them around the flatten (3 quantize,
    2 dequantize); litzoo's reshapes the integers, which gives bit-identical outputs."""
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    lowered = lower_to_x86(digits_repvgg, x)
    assert isinstance(lowered, LoweredInt8)
    ops = _ops(lowered.graph)
    assert ops["onednn.qconv_pointwise.default"] == 7 and ops["onednn.qlinear_pointwise.default"] == 1, ops
    assert ops["quantized_decomposed.quantize_per_tensor.default"] == 2, ops  # the input, the pooled features
    assert ops["quantized_decomposed.dequantize_per_tensor.default"] == 1, ops  # before the (float) mean
    convs = [n for n in lowered.graph.graph.nodes if n.target == torch.ops.onednn.qconv_pointwise.default]
    assert all(n.args[13] == torch.uint8 and n.args[14] == "relu" for n in convs)  # ReLU fused, uint8 out
    with torch.no_grad():
        got, reference = lowered(x), digits_repvgg(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = lower_pt2e_quantized_to_x86(digits_repvgg, (x,))(x)
    assert torch.equal(got, plain)
    torch.testing.assert_close(got, reference)
    assert (got - reference).abs().max() < 1e-5 * reference.abs().max()


def test_relu6_is_fused_into_the_int8_convs_and_the_outputs_stay_those_of_the_reference():
    """MobileNetV2's conv + BN + ReLU6: torchao's lowering leaves each as a float32-output int8 conv, a float
    hardtanh and a quantize; in clamp form the lowering's own pattern makes it one uint8 conv with a clip."""
    torch.manual_seed(0)
    net = UserMobileNetV2()
    randomize_batchnorm(net, 0)
    reference = _reference(net, (1, 12, 12))
    before = _ops(reference)
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    lowered = lower_to_x86(reference, x)
    assert _ops(reference) == before and before["aten.hardtanh.default"] == 7  # the caller's graph is not rewritten
    ops = _ops(lowered.graph)
    assert not any("hardtanh" in op or "clamp" in op for op in ops), ops
    clips = [n for n in lowered.graph.graph.nodes if n.target == torch.ops.onednn.qconv_pointwise.default and n.args[14] == "hardtanh"]
    assert len(clips) == 7 and all(n.args[15] == [0.0, 6.0] for n in clips)
    assert ops["quantized_decomposed.quantize_per_tensor.default"] == 2, ops  # the input and the pooled features only
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), reference(x))


def test_hardtanh_silu_and_hardswish_in_place_or_not_are_fused_too():
    """Also a conv feature map flattened into a linear: the int8 conv writes channels-last, on which the
    ``view`` that torchao's lowering emits for the flatten raises at every call (``reshape`` gives the same elements)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU6(inplace=True),
        nn.Conv2d(8, 8, 3),
        nn.Hardtanh(-0.5, 2.0, inplace=True),
        nn.Conv2d(8, 8, 1),
        nn.SiLU(inplace=True),
        nn.Conv2d(8, 8, 1),
        nn.Hardswish(),
        nn.Flatten(),
        nn.Linear(128, 4),
    )
    reference = _reference(net, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    lowered = lower_to_x86(reference, x)
    convs = [n for n in lowered.graph.graph.nodes if n.target == torch.ops.onednn.qconv_pointwise.default]
    assert [(n.args[13], n.args[14], n.args[15]) for n in convs] == [
        (torch.uint8, "hardtanh", [0.0, 6.0]),
        (torch.uint8, "hardtanh", [-0.5, 2.0]),
        (torch.uint8, "swish", []),
        (torch.uint8, "hardswish", []),
    ]
    ops = _ops(lowered.graph)
    assert ops["quantized_decomposed.quantize_per_tensor.default"] == 1, ops  # the input only
    assert "aten.view.default" not in ops and ops["aten.reshape.default"] == 1, ops
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), reference(x))


def test_the_lowered_model_runs_without_hooks_and_refuses_another_shape_in_one_line(digits_repvgg):
    x = torch.randn(2, 1, 16, 16)
    lowered = lower_to_x86(digits_repvgg, x).eval()  # a plain module: eval() works
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in lowered.modules())
    for bad in (torch.randn(3, 1, 16, 16), torch.randn(2, 1, 32, 32), torch.randn(2, 1, 16, 16, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"lowered for torch.float32 inputs of shape \(2, 1, 16, 16\), got"):
            lowered(bad)


# ---------------------------------------------------------------- drop_requantization on hand-built graphs
@pytest.fixture(autouse=True, scope="module")
def _decomposed_operators() -> None:
    quantization_config()  # imports torchao, which registers the quantized_decomposed operators the hand-built graphs call


class _Requantize(nn.Module):
    """uint8 integers -> dequantize -> flatten -> view -> quantize (the tail of a lowered classifier)."""

    def __init__(self, dq: tuple, q: tuple) -> None:
        super().__init__()
        self.dq, self.q = dq, q

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        x = qd.dequantize_per_tensor.default(k, *self.dq)
        x = aten.view.default(aten.flatten.using_ints(x, 1), [-1, 8, 8])
        return qd.quantize_per_tensor.default(x, *self.q)


def _integers(dtype: torch.dtype) -> torch.Tensor:
    """Every value of the dtype once, as 4 x 64."""
    info = torch.iinfo(dtype)
    return torch.arange(info.min, info.max + 1).to(dtype).view(4, 8, 8)


@pytest.mark.parametrize(
    ("scale", "zero_point", "dtype"),
    [
        (0.1, 0, torch.uint8),
        (1 / 3, 128, torch.uint8),
        (0.0123456789, 255, torch.uint8),
        (7.5, 17, torch.uint8),
        (1e-3, 0, torch.int8),
        (0.37, -5, torch.int8),
    ],
)
def test_a_requantization_on_one_full_grid_is_removed_and_every_integer_comes_out_unchanged(scale, zero_point, dtype):
    """Brute force over every integer of the grid: the graph without the pair gives the same tensor."""
    info = torch.iinfo(dtype)
    params = (scale, zero_point, info.min, info.max, dtype)
    graph = torch.fx.symbolic_trace(_Requantize(params, params))
    k = _integers(dtype)
    expected = graph(k)
    assert drop_requantization(graph) == 1
    assert set(_ops(graph)) == {"aten.flatten.using_ints", "aten.view.default"}
    got = graph(k)
    assert got.dtype == dtype and torch.equal(got, expected) and torch.equal(got, k.flatten(1).view(-1, 8, 8))


@pytest.mark.parametrize(
    ("dq", "q"),
    [
        ((0.1, 0, 0, 255, torch.uint8), (0.2, 0, 0, 255, torch.uint8)),  # another scale: a real requantization
        ((0.1, 0, 0, 255, torch.uint8), (0.1, 3, 0, 255, torch.uint8)),  # another zero point
        ((0.1, 0, 0, 15, torch.uint8), (0.1, 0, 0, 15, torch.uint8)),  # a 4-bit grid: the quantize clamps to [0, 15]
    ],
)
def test_a_requantization_that_changes_the_integers_is_kept(dq, q):
    graph = torch.fx.symbolic_trace(_Requantize(dq, q))
    k = _integers(torch.uint8)
    expected = graph(k)
    assert drop_requantization(graph) == 0
    assert torch.equal(graph(k), expected)
    if q[3] == 15:
        assert not torch.equal(expected, k.flatten(1).view(-1, 8, 8))  # removing it would have changed the outputs


def test_a_reshape_read_elsewhere_in_float_keeps_its_dequantize():
    class TwoReaders(nn.Module):
        def forward(self, k):
            qd = torch.ops.quantized_decomposed
            x = aten.view.default(qd.dequantize_per_tensor.default(k, 0.1, 0, 0, 255, torch.uint8), [-1, 64])
            return qd.quantize_per_tensor.default(x, 0.1, 0, 0, 255, torch.uint8), x * 2

    graph = torch.fx.symbolic_trace(TwoReaders())
    k = _integers(torch.uint8)
    expected = graph(k)
    assert drop_requantization(graph) == 0
    assert all(torch.equal(a, b) for a, b in zip(graph(k), expected))
