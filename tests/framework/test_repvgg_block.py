"""RepVGGBlock: the fused deploy conv equals the eval-mode training-time block for every branch set."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from litzoo.framework.reparam import randomize_batchnorm
from litzoo.framework.reparam.repvgg_block import RepVGGBlock


def _randomize(block: nn.Module, seed: int) -> nn.Module:
    """Random conv weights, BN running stats and affine params (defaults mu=0, var=1, gamma=1, beta=0 hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.3)
    return randomize_batchnorm(block, seed)


def _pre_activation(block: RepVGGBlock, x: torch.Tensor) -> torch.Tensor:
    out = block.branch_3x3(x) + block.branch_1x1(x)
    if block.branch_identity is not None:
        out = out + block.branch_identity(x)
    return out


# (in, out, stride, groups, H, W): identity / no identity (in != out) / no identity (stride 2),
# groups 1, 2, 4, groups == channels (depthwise), channel multiplier, odd channels and sizes.
CASES = [
    (4, 4, 1, 1, 7, 9),
    (3, 5, 1, 1, 7, 9),
    (4, 4, 2, 1, 7, 9),
    (3, 5, 2, 1, 5, 5),
    (8, 8, 1, 2, 7, 9),
    (4, 8, 2, 2, 7, 9),
    (8, 8, 1, 4, 5, 5),
    (8, 8, 2, 4, 7, 9),
    (6, 6, 1, 3, 7, 9),
    (6, 6, 1, 6, 7, 9),
    (6, 6, 2, 6, 7, 9),
    (5, 5, 1, 5, 5, 5),
    (3, 6, 1, 3, 7, 9),
    (1, 1, 1, 1, 5, 5),
]
IDS = [f"{i}to{o}_s{s}_g{g}_{h}x{w}" for i, o, s, g, h, w in CASES]
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("in_ch", "out_ch", "stride", "groups", "h", "w"), CASES, ids=IDS)
def test_fused_equals_unfused_eval(in_ch, out_ch, stride, groups, h, w, dtype):
    block = _randomize(RepVGGBlock(in_ch, out_ch, stride=stride, groups=groups), seed=in_ch * 100 + out_ch * 10 + groups).to(dtype)
    block.eval()
    fused = block.fuse().eval()
    x = torch.randn(3, in_ch, h, w, generator=torch.Generator().manual_seed(7), dtype=dtype)
    tol = TOLERANCES[dtype]
    with torch.no_grad():
        expected = block(x)
        got = fused(x)
        # Compare before the ReLU too: the ReLU would hide errors on negative pre-activations.
        expected_pre = _pre_activation(block, x)
        got_pre = fused.conv(x)
    assert got.shape == expected.shape == (3, out_ch, (h - 1) // stride + 1, (w - 1) // stride + 1)
    assert got.dtype == dtype
    assert (got_pre - expected_pre).abs().max().item() <= tol
    assert (got - expected).abs().max().item() <= tol


def test_train_mode_comparison_does_not_match():
    """Negative control: a train-mode block uses batch statistics, so it must differ from the fused conv.

    This is what makes the eval-mode equality above meaningful (the most common "fused != unfused"
    report is a train-mode comparison).
    """
    block = _randomize(RepVGGBlock(4, 4), seed=11).double().eval()
    fused = block.fuse()
    x = torch.randn(4, 4, 7, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        assert (fused(x) - block(x)).abs().max().item() <= 1e-10
        train_block = copy.deepcopy(block).train()
        assert (fused(x) - train_block(x)).abs().max().item() > 1e-2


def test_fuse_in_train_mode_still_gives_eval_equivalent_and_leaves_block_untouched():
    block = _randomize(RepVGGBlock(6, 6, groups=3), seed=12).double().train()
    state = {k: v.clone() for k, v in block.state_dict().items()}
    fused = block.fuse()
    assert block.training
    assert block.branch_identity is not None
    for key, value in block.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        assert (fused(x) - block.eval()(x)).abs().max().item() <= 1e-10


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "stride", "has_identity"),
    [(4, 4, 1, True), (4, 4, 2, False), (4, 8, 1, False), (8, 4, 1, False), (3, 5, 2, False), (5, 5, 1, True)],
)
def test_identity_branch_iff_same_channels_and_stride_one(in_ch, out_ch, stride, has_identity):
    block = RepVGGBlock(in_ch, out_ch, stride=stride)
    assert (block.branch_identity is not None) == has_identity
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert n_bn == (3 if has_identity else 2)
    if has_identity:
        assert isinstance(block.branch_identity, nn.BatchNorm2d)
        assert block.branch_identity.num_features == in_ch


@pytest.mark.parametrize(("in_ch", "out_ch", "stride", "groups"), [(4, 4, 1, 1), (6, 9, 2, 3), (8, 8, 2, 8), (4, 8, 1, 4)])
def test_fuse_structure(in_ch, out_ch, stride, groups):
    block = RepVGGBlock(in_ch, out_ch, stride=stride, groups=groups)
    fused = block.fuse()
    assert isinstance(fused, nn.Sequential)
    assert len(fused) == 2
    conv, act = fused[0], fused[1]
    assert fused.conv is conv and fused.nonlinearity is act
    assert type(conv) is nn.Conv2d
    assert isinstance(act, nn.ReLU)
    assert conv.kernel_size == (3, 3)
    assert conv.padding == (1, 1)
    assert conv.stride == (stride, stride)
    assert conv.dilation == (1, 1)
    assert conv.groups == groups
    assert (conv.in_channels, conv.out_channels) == (in_ch, out_ch)
    assert conv.bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # the deploy conv is a fresh, trainable leaf, detached from the training-time graph
    assert conv.weight.grad_fn is None and conv.weight.requires_grad
    assert conv.weight.data_ptr() != block.branch_3x3.conv.weight.data_ptr()
    # parameter count of the deploy conv: out * in / g * 9 + out
    assert sum(p.numel() for p in fused.parameters()) == out_ch * in_ch // groups * 9 + out_ch


def test_equivalent_kernel_bias_is_differentiable():
    block = _randomize(RepVGGBlock(4, 4, groups=2), seed=13).double()
    kernel, bias = block.get_equivalent_kernel_bias()
    assert kernel.requires_grad and bias.requires_grad
    kernel.sum().backward()
    bn_1x1 = block.branch_1x1.bn
    t_1x1 = bn_1x1.weight.detach() / (bn_1x1.running_var + bn_1x1.eps).sqrt()
    grad_1x1 = block.branch_1x1.conv.weight.grad
    assert grad_1x1 is not None
    # d(sum K)/d(W_1x1[o]) = t_1x1[o]
    torch.testing.assert_close(grad_1x1, t_1x1.reshape(-1, 1, 1, 1).expand_as(grad_1x1), atol=1e-14, rtol=0)
    bn_id = block.branch_identity
    assert bn_id.weight.grad is not None
    # the identity kernel has one 1 per output channel: d(sum K)/d(gamma_id[i]) = 1 / std_id[i]
    torch.testing.assert_close(bn_id.weight.grad, 1.0 / (bn_id.running_var + bn_id.eps).sqrt(), atol=1e-14, rtol=0)
    assert block.branch_3x3.conv.weight.grad is not None


def test_equivalent_kernel_bias_gradient_reaches_bias_params():
    block = _randomize(RepVGGBlock(3, 3), seed=14).double()
    _, bias = block.get_equivalent_kernel_bias()
    bias.sum().backward()
    for bn in (block.branch_3x3.bn, block.branch_1x1.bn, block.branch_identity):
        torch.testing.assert_close(bn.bias.grad, torch.ones(3, dtype=torch.float64), atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0, "out_channels": 4},
        {"in_channels": 4, "out_channels": 0},
        {"in_channels": -2, "out_channels": 4},
        {"in_channels": 3, "out_channels": 4, "groups": 2},
        {"in_channels": 4, "out_channels": 6, "groups": 4},
        {"in_channels": 4, "out_channels": 4, "stride": 0},
        {"in_channels": 4, "out_channels": 4, "groups": 0},
        {"in_channels": 4, "out_channels": 4, "groups": -1},
    ],
    ids=["in0", "out0", "in_neg", "in_not_div", "out_not_div", "stride0", "groups0", "groups_neg"],
)
def test_invalid_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        RepVGGBlock(**kwargs)


def test_linear_block_fuses_to_a_bare_conv(randomize_bn):
    block = randomize_bn(RepVGGBlock(6, 6, use_nonlinearity=False)).eval()
    fused = block.fuse()
    assert isinstance(fused, nn.Conv2d)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        out = block(x)
        assert (out < 0).any(), "without the ReLU the block's output keeps its negative values"
        torch.testing.assert_close(fused(x), out, atol=1e-5, rtol=0)
