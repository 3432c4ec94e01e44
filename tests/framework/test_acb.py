"""ACBlock: the fused deploy conv equals the eval-mode three-branch block, for every padding regime."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from litzoo.framework.reparam.acb import ACBlock
from litzoo.framework.reparam.fuse_model import fuse_model

TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}


def _randomize(block: nn.Module, randomize_bn, seed: int) -> nn.Module:
    """Random conv weights (scale keeps outputs O(1)) and random BN statistics / affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.15)
    return randomize_bn(block, seed)


def _max_fusion_error(block: ACBlock, x: torch.Tensor) -> float:
    fused = block.fuse().eval()
    with torch.no_grad():
        expected, got = block.eval()(x), fused(x)
    assert got.shape == expected.shape
    assert got.dtype == x.dtype
    return (got - expected).abs().max().item()


# (in, out, k, stride, padding, groups, H, W): padding == k//2, below (crop), above; groups 1, 2, depthwise,
# channel multiplier; stride 1 and 2; odd sizes.
CASES = [
    (4, 6, 3, 1, 1, 1, 7, 9),
    (4, 6, 3, 2, 1, 2, 7, 9),
    (3, 5, 3, 1, 0, 1, 7, 9),  # crop 1
    (4, 4, 3, 2, 0, 4, 11, 13),  # crop 1, depthwise, stride 2
    (4, 4, 3, 1, 2, 2, 7, 9),  # padding above k//2
    (3, 6, 3, 2, 3, 3, 7, 9),  # channel multiplier, padding 3
    (4, 6, 5, 1, 2, 1, 11, 13),
    (4, 8, 5, 2, 2, 4, 11, 13),
    (4, 6, 5, 1, 1, 2, 11, 13),  # crop 1
    (6, 6, 5, 2, 0, 6, 11, 13),  # crop 2, depthwise
    (4, 4, 5, 1, 4, 1, 7, 9),  # padding above k//2
    (2, 3, 1, 1, 0, 1, 5, 5),  # degenerate 1x1: three 1x1 branches
    (2, 3, 1, 2, 1, 1, 5, 5),
]
IDS = [f"{i}to{o}_k{k}_s{s}_p{p}_g{g}_{h}x{w}" for i, o, k, s, p, g, h, w in CASES]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("in_ch", "out_ch", "k", "stride", "padding", "groups", "h", "w"), CASES, ids=IDS)
def test_fused_equals_unfused_eval(in_ch, out_ch, k, stride, padding, groups, h, w, dtype, randomize_bn):
    block = _randomize(ACBlock(in_ch, out_ch, k, stride, padding, groups=groups), randomize_bn, seed=in_ch + 10 * k + 100 * padding).to(dtype)
    x = torch.randn(2, in_ch, h, w, generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert block.crop == max(0, k // 2 - padding)
    out_h, out_w = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    assert block.eval()(x).shape == (2, out_ch, out_h, out_w)
    assert _max_fusion_error(block, x) <= TOLERANCES[dtype]


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_fused_equals_unfused_for_non_zero_padding_modes(padding_mode, padding, randomize_bn):
    """A non-zero padding is a per-index map of the input, so thinner paddings read a subset of the square branch's."""
    block = _randomize(ACBlock(4, 6, 5, padding=padding, padding_mode=padding_mode), randomize_bn, seed=3).double()
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    assert _max_fusion_error(block, x) <= 1e-10
    assert block.fuse().padding_mode == padding_mode


@pytest.mark.parametrize(("k", "dilation", "padding", "stride"), [(3, 2, 2, 1), (3, 2, 1, 1), (3, 3, 0, 2), (5, 2, 4, 1), (5, 2, 1, 2), (3, 2, 5, 1)])
def test_dilation_is_fused_exactly(k, dilation, padding, stride, randomize_bn):
    """The alignment uses dilation * (k // 2); the official code uses k // 2 and misaligns for dilation > 1."""
    block = _randomize(ACBlock(4, 4, k, stride, padding, dilation, groups=2), randomize_bn, seed=4).double()
    assert block.crop == max(0, dilation * (k // 2) - padding)
    x = torch.randn(2, 4, 11, 13, dtype=torch.float64)
    assert _max_fusion_error(block, x) <= 1e-10
    assert block.fuse().dilation == (dilation, dilation)


def test_without_affine_bn(randomize_bn):
    block = _randomize(ACBlock(3, 4, 3, padding=1, use_affine=False), randomize_bn, seed=5).double()
    assert block.branch_square.bn.weight is None
    assert _max_fusion_error(block, torch.randn(2, 3, 7, 9, dtype=torch.float64)) <= 1e-10


def test_train_mode_comparison_does_not_match(randomize_bn):
    """Negative control: batch statistics in train mode differ from the running ones the fusion uses."""
    block = _randomize(ACBlock(4, 4, 3, padding=1), randomize_bn, seed=6).double()
    fused = block.fuse()
    x = torch.randn(4, 4, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        assert (fused(x) - copy.deepcopy(block).train()(x)).abs().max().item() > 1e-2


@pytest.mark.parametrize(("k", "stride", "padding", "dilation", "groups"), [(3, 1, 1, 1, 1), (5, 2, 0, 1, 2), (3, 2, 3, 2, 4)])
def test_fuse_structure_and_block_untouched(k, stride, padding, dilation, groups, randomize_bn):
    block = _randomize(ACBlock(4, 8, k, stride, padding, dilation, groups), randomize_bn, seed=7).train()
    state = {key: value.clone() for key, value in block.state_dict().items()}
    conv = block.fuse()
    assert block.training
    for key, value in block.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert type(conv) is nn.Conv2d
    assert conv.kernel_size == (k, k)
    assert conv.stride == (stride, stride)
    assert conv.padding == (padding, padding)
    assert conv.dilation == (dilation, dilation)
    assert conv.groups == groups
    assert conv.padding_mode == "zeros"
    assert (conv.in_channels, conv.out_channels) == (4, 8)
    assert conv.bias is not None
    assert conv.weight.grad_fn is None and conv.weight.requires_grad


def test_state_dict_keys():
    """The key names are a contract (checkpoint mapping from the official square/ver/hor names)."""
    keys = set(ACBlock(2, 3, 3, padding=1).state_dict())
    expected = {
        f"branch_{branch}.{leaf}"
        for branch in ("square", "vertical", "horizontal")
        for leaf in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
    }
    assert keys == expected


def test_branch_geometry():
    block = ACBlock(2, 3, 5, padding=3)
    assert block.branch_square.conv.kernel_size == (5, 5) and block.branch_square.conv.padding == (3, 3)
    assert block.branch_vertical.conv.kernel_size == (5, 1) and block.branch_vertical.conv.padding == (3, 1)
    assert block.branch_horizontal.conv.kernel_size == (1, 5) and block.branch_horizontal.conv.padding == (1, 3)
    cropped = ACBlock(2, 3, 5, padding=1)
    assert cropped.crop == 1
    assert cropped.branch_vertical.conv.padding == (1, 0) and cropped.branch_horizontal.conv.padding == (0, 1)


def test_fuse_model_on_a_sequential_of_blocks(randomize_bn):
    model = nn.Sequential(ACBlock(3, 4, 3, padding=1), nn.ReLU(), ACBlock(4, 4, 3, stride=2, padding=0, groups=2), nn.ReLU(), ACBlock(4, 5, 5, padding=3))
    model = _randomize(model, randomize_bn, seed=8).double().eval()
    deploy = fuse_model(model)
    assert [type(m) for m in deploy] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert isinstance(model[0], ACBlock)  # not in place by default
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64)
    with torch.no_grad():
        assert (deploy(x) - model(x)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_single_init_equals_the_square_branch(mode, randomize_bn):
    block = ACBlock(3, 4, 3, padding=1)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):  # random statistics, betas left at their initial 0
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    block.single_init()
    block.train(mode == "train")
    x = torch.randn(2, 3, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.branch_square(x), atol=0, rtol=0)
    assert torch.all(block.branch_square.bn.weight == 1)
    assert torch.all(block.branch_vertical.bn.weight == 0) and torch.all(block.branch_horizontal.bn.weight == 0)


def test_gamma_initialisations():
    block = ACBlock(2, 3, 3, padding=1, reduce_gamma=True)
    for bn in (block.branch_square.bn, block.branch_vertical.bn, block.branch_horizontal.bn):
        torch.testing.assert_close(bn.weight.detach(), torch.full((3,), 1.0 / 3))
    block = ACBlock(2, 3, 3, padding=1, gamma_init=0.25)
    for bn in (block.branch_square.bn, block.branch_vertical.bn, block.branch_horizontal.bn):
        torch.testing.assert_close(bn.weight.detach(), torch.full((3,), 0.25))
    block.init_gamma(2.0)
    assert torch.all(block.branch_horizontal.bn.weight == 2.0)
    with pytest.raises(ValueError, match="use_affine"):
        ACBlock(2, 3, 3, use_affine=False).single_init()


def test_equivalent_kernel_bias_is_differentiable_and_out_of_place(randomize_bn):
    block = _randomize(ACBlock(4, 4, 3, padding=1, groups=2), randomize_bn, seed=9).double()
    versions = {name: p._version for name, p in block.named_parameters()}
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    kernel, bias = block.get_equivalent_kernel_bias()
    (kernel.sum() + bias.sum()).backward()
    for name, p in block.named_parameters():
        assert p._version == versions[name], name
        assert torch.equal(p.detach(), before[name]), name
        assert p.grad is not None, name
    # d(sum K)/d(W_vertical[o]) = t_vertical[o] everywhere
    bn = block.branch_vertical.bn
    t = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()
    grad = block.branch_vertical.conv.weight.grad
    torch.testing.assert_close(grad, t.reshape(-1, 1, 1, 1).expand_as(grad), atol=1e-14, rtol=0)
    # a second call gives the same tensors (nothing accumulated anywhere)
    kernel2, bias2 = block.get_equivalent_kernel_bias()
    torch.testing.assert_close(kernel2, kernel, atol=0, rtol=0)
    torch.testing.assert_close(bias2, bias, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"out_channels": -1},
        {"groups": 0},
        {"in_channels": 3, "groups": 2},
        {"out_channels": 5, "groups": 2},
        {"kernel_size": 4},
        {"kernel_size": 0},
        {"stride": 0},
        {"padding": -1},
        {"dilation": 0},
        {"kernel_size": (3, 3)},
        {"padding": (1, 1)},
        {"reduce_gamma": True, "gamma_init": 0.5},
        {"use_affine": False, "reduce_gamma": True},
        {"padding_mode": "mirror"},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_invalid_arguments_raise_value_error(kwargs):
    args = {"in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": 1} | kwargs
    with pytest.raises(ValueError):
        ACBlock(**args)
