"""DiverseBranchBlock: the fused deploy conv equals the eval-mode four-branch block; structure and contracts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from litzoo.framework.reparam.dbb import BNAndPad, DiverseBranchBlock, IdentityBasedConv1x1
from litzoo.framework.reparam.fuse_model import fuse_model

TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}


def _randomize(block: nn.Module, randomize_bn, seed: int) -> nn.Module:
    """Random conv weights (the zero-initialised IdentityBasedConv1x1 residual too) and random BN states."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.15)
    return randomize_bn(block, seed)


def _pre_activation(block: DiverseBranchBlock, x: torch.Tensor) -> torch.Tensor:
    out = block.branch_kxk(x) + block.branch_avg(x) + block.branch_1x1_kxk(x)
    return out if block.branch_1x1 is None else out + block.branch_1x1(x)


# (in, out, k, stride, groups, internal, H, W): dense, grouped, depthwise, channel multiplier (out = 2 in,
# groups = in), custom internal widths (plain conv1), stride 1 and 2, k 3 and 5, odd sizes.
CASES = [
    (4, 6, 3, 1, 1, None, 7, 9),
    (4, 6, 3, 2, 1, None, 7, 9),
    (3, 5, 5, 1, 1, 6, 11, 13),
    (4, 8, 5, 2, 2, None, 11, 13),
    (4, 4, 3, 1, 2, 2, 7, 9),
    (6, 6, 3, 1, 6, None, 7, 9),  # depthwise: pool-only average branch, internal 2 * in
    (6, 6, 5, 2, 6, None, 11, 13),
    (4, 4, 3, 2, 4, 4, 11, 13),  # depthwise with internal == in: IdentityBasedConv1x1 with groups = C
    (3, 6, 3, 1, 3, None, 7, 9),  # channel multiplier: groups < out, general path
    (4, 8, 5, 2, 4, 12, 11, 13),
    (2, 3, 1, 1, 1, None, 5, 5),  # degenerate kernel_size 1
]
IDS = [f"{i}to{o}_k{k}_s{s}_g{g}_int{m}_{h}x{w}" for i, o, k, s, g, m, h, w in CASES]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("in_ch", "out_ch", "k", "stride", "groups", "internal", "h", "w"), CASES, ids=IDS)
def test_fused_equals_unfused_eval(in_ch, out_ch, k, stride, groups, internal, h, w, dtype, randomize_bn):
    block = DiverseBranchBlock(in_ch, out_ch, k, stride, groups=groups, internal_channels_1x1_3x3=internal)
    block = _randomize(block, randomize_bn, seed=in_ch + 10 * out_ch + 100 * k).to(dtype).eval()
    fused = block.fuse().eval()
    assert type(fused) is nn.Conv2d
    x = torch.randn(2, in_ch, h, w, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        expected, got = block(x), fused(x)
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    assert got.shape == expected.shape == (2, out_ch, out_h, out_w)
    assert got.dtype == dtype
    assert (got - expected).abs().max().item() <= TOLERANCES[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_fused_with_nonlinearity(dtype, randomize_bn):
    block = _randomize(DiverseBranchBlock(4, 4, 3, groups=2, nonlinear=nn.ReLU()), randomize_bn, seed=2).to(dtype).eval()
    fused = block.fuse().eval()
    assert isinstance(fused, nn.Sequential) and list(dict(fused.named_children())) == ["conv", "nonlinear"]
    assert isinstance(fused.nonlinear, nn.ReLU) and fused.nonlinear is not block.nonlinear
    x = torch.randn(2, 4, 7, 9, dtype=dtype)
    with torch.no_grad():
        # before the ReLU too: the ReLU would hide errors on negative pre-activations
        assert (fused.conv(x) - _pre_activation(block, x)).abs().max().item() <= TOLERANCES[dtype]
        assert (fused(x) - block(x)).abs().max().item() <= TOLERANCES[dtype]


def test_train_mode_comparison_does_not_match(randomize_bn):
    block = _randomize(DiverseBranchBlock(4, 4, 3), randomize_bn, seed=3).double().eval()
    fused = block.fuse()
    x = torch.randn(4, 4, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        assert (fused(x) - block(x)).abs().max().item() <= 1e-10
        assert (fused(x) - copy.deepcopy(block).train()(x)).abs().max().item() > 1e-2


def test_fuse_model_on_a_sequential_of_blocks(randomize_bn):
    model = nn.Sequential(
        DiverseBranchBlock(3, 8, 3, nonlinear=nn.ReLU()),
        DiverseBranchBlock(8, 8, 3, stride=2, groups=8, nonlinear=nn.ReLU()),
        DiverseBranchBlock(8, 6, 5, groups=2),
    )
    model = _randomize(model, randomize_bn, seed=4).double().eval()
    deploy = fuse_model(model)
    assert [type(m) for m in deploy] == [nn.Sequential, nn.Sequential, nn.Conv2d]
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.AvgPool2d, BNAndPad)) for m in deploy.modules())
    assert isinstance(model[0], DiverseBranchBlock)
    x = torch.randn(2, 3, 11, 13, dtype=torch.float64)
    with torch.no_grad():
        assert (deploy(x) - model(x)).abs().max().item() <= 1e-10


def test_fuse_leaves_block_untouched_and_gives_a_fresh_leaf(randomize_bn):
    block = _randomize(DiverseBranchBlock(4, 6, 3, stride=2, groups=2), randomize_bn, seed=5).train()
    state = {key: value.clone() for key, value in block.state_dict().items()}
    conv = block.fuse()
    assert block.training
    for key, value in block.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) == ((3, 3), (2, 2), (1, 1), (1, 1), 2)
    assert (conv.in_channels, conv.out_channels) == (4, 6)
    assert conv.bias is not None
    assert conv.weight.grad_fn is None and conv.weight.requires_grad


def test_sync_batchnorm_conversion_keeps_the_padding(randomize_bn):
    """DBB issue #8: BNAndPad wraps its BN, so convert_sync_batchnorm swaps the BN but keeps the padding."""
    block = _randomize(DiverseBranchBlock(4, 4, 3), randomize_bn, seed=6).double().eval()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(block)).eval()
    assert isinstance(converted.branch_avg.bn, BNAndPad) and isinstance(converted.branch_1x1_kxk.bn1, BNAndPad)
    assert isinstance(converted.branch_1x1_kxk.bn1.bn, nn.SyncBatchNorm)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        assert (converted(x) - block(x)).abs().max().item() <= 1e-12
        assert (converted.fuse()(x) - block(x)).abs().max().item() <= 1e-10


# --------------------------------------------------------------------------------------------
# Structure and state-dict contract
# --------------------------------------------------------------------------------------------

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn_keys(prefix: str) -> set[str]:
    return {f"{prefix}.{leaf}" for leaf in _BN}


def test_state_dict_keys_dense_with_identity_based_conv():
    keys = set(DiverseBranchBlock(4, 6, 3).state_dict())
    expected = (
        {"branch_kxk.conv.weight", "branch_1x1.conv.weight", "branch_avg.conv.weight", "branch_1x1_kxk.idconv1.weight", "branch_1x1_kxk.conv2.weight"}
        | _bn_keys("branch_kxk.bn")
        | _bn_keys("branch_1x1.bn")
        | _bn_keys("branch_avg.bn.bn")
        | _bn_keys("branch_avg.avgbn")
        | _bn_keys("branch_1x1_kxk.bn1.bn")
        | _bn_keys("branch_1x1_kxk.bn2")
    )
    assert keys == expected  # in particular no idconv1.id_tensor: the identity is not persistent


def test_state_dict_keys_depthwise():
    block = DiverseBranchBlock(4, 4, 3, groups=4)
    assert block.branch_1x1 is None
    assert list(dict(block.branch_avg.named_children())) == ["avg", "avgbn"]
    assert block.branch_avg.avg.padding == 1 and block.branch_avg.avg.count_include_pad
    keys = set(block.state_dict())
    expected = (
        {"branch_kxk.conv.weight", "branch_1x1_kxk.conv1.weight", "branch_1x1_kxk.conv2.weight"}
        | _bn_keys("branch_kxk.bn")
        | _bn_keys("branch_avg.avgbn")
        | _bn_keys("branch_1x1_kxk.bn1.bn")
        | _bn_keys("branch_1x1_kxk.bn2")
    )
    assert keys == expected


def test_branch_structure_dense():
    block = DiverseBranchBlock(4, 6, 5, stride=2, groups=2, internal_channels_1x1_3x3=8, nonlinear=nn.ReLU())
    assert list(dict(block.named_children())) == ["branch_kxk", "branch_1x1", "branch_avg", "branch_1x1_kxk", "nonlinear"]
    assert list(dict(block.branch_avg.named_children())) == ["conv", "bn", "avg", "avgbn"]
    assert list(dict(block.branch_1x1_kxk.named_children())) == ["conv1", "bn1", "conv2", "bn2"]
    assert block.branch_1x1.conv.stride == (2, 2) and block.branch_1x1.conv.padding == (0, 0)
    assert block.branch_avg.conv.stride == (1, 1) and block.branch_avg.bn.pad_pixels == 2
    assert (block.branch_avg.avg.kernel_size, block.branch_avg.avg.stride, block.branch_avg.avg.padding) == (5, 2, 0)
    conv1, conv2 = block.branch_1x1_kxk.conv1, block.branch_1x1_kxk.conv2
    assert (conv1.out_channels, conv1.groups) == (8, 2)
    assert (conv2.kernel_size, conv2.stride, conv2.padding, conv2.groups) == ((5, 5), (2, 2), (0, 0), 2)
    assert block.branch_1x1_kxk.bn1.pad_pixels == 2


@pytest.mark.parametrize(("in_ch", "out_ch", "groups", "internal", "first"), [(4, 6, 1, 4, "idconv1"), (4, 4, 4, 8, "conv1"), (3, 6, 3, 3, "idconv1")])
def test_default_internal_channels(in_ch, out_ch, groups, internal, first):
    block = DiverseBranchBlock(in_ch, out_ch, 3, groups=groups)
    assert block.internal_channels == internal
    assert list(dict(block.branch_1x1_kxk.named_children()))[0] == first
    assert block.branch_1x1_kxk.bn1.bn.num_features == internal


# --------------------------------------------------------------------------------------------
# IdentityBasedConv1x1
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_identity_based_conv_starts_as_identity(groups):
    conv = IdentityBasedConv1x1(6, groups)
    assert torch.all(conv.weight == 0)
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(conv(x), x, atol=0, rtol=0)
    conv.reset_parameters()  # any re-initialisation keeps the residual at zero
    assert torch.all(conv.weight == 0)
    with torch.no_grad():
        conv.weight.normal_()
    expected = torch.nn.functional.conv2d(x, conv.weight, groups=groups) + x
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=0)


def test_identity_based_conv_buffer_is_not_persistent_and_follows_to():
    conv = IdentityBasedConv1x1(4, 2)
    assert set(conv.state_dict()) == {"weight"}
    assert "id_tensor" in dict(conv.named_buffers())
    conv = conv.double()
    assert conv.id_tensor.dtype == torch.float64
    assert conv.get_actual_kernel().dtype == torch.float64
    # loading a state dict without the buffer is strict-clean
    IdentityBasedConv1x1(4, 2).load_state_dict(conv.float().state_dict(), strict=True)
    with pytest.raises(ValueError):
        IdentityBasedConv1x1(4, 3)


# --------------------------------------------------------------------------------------------
# Initialisation, gradients, validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_single_init_equals_the_main_branch(groups, mode):
    block = DiverseBranchBlock(4, 4, 3, groups=groups, single_init=True)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):  # random statistics, betas left at their initial 0
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    block.train(mode == "train")
    x = torch.randn(2, 4, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.branch_kxk(x), atol=0, rtol=0)


def test_init_gamma_sets_the_final_bns():
    block = DiverseBranchBlock(4, 6, 3)
    block.init_gamma(0.5)
    for bn in (block.branch_kxk.bn, block.branch_1x1.bn, block.branch_avg.avgbn, block.branch_1x1_kxk.bn2):
        assert torch.all(bn.weight == 0.5)
    # the BNs inside BNAndPad are not the end of a branch and keep their gamma
    assert torch.all(block.branch_avg.bn.bn.weight == 1) and torch.all(block.branch_1x1_kxk.bn1.bn.weight == 1)


def test_equivalent_kernel_bias_is_differentiable(randomize_bn):
    block = _randomize(DiverseBranchBlock(4, 6, 3, groups=2), randomize_bn, seed=7).double()
    versions = {name: p._version for name, p in block.named_parameters()}
    kernel, bias = block.get_equivalent_kernel_bias()
    assert kernel.shape == (6, 2, 3, 3) and bias.shape == (6,)
    (kernel.square().sum() + bias.sum()).backward()
    for name, p in block.named_parameters():
        assert p._version == versions[name], name
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_equivalent_kernel_bias_gradcheck_through_the_merges(randomize_bn):
    """Gradients of the fused kernel w.r.t. the 1x1-kxk branch's convs match finite differences."""
    block = _randomize(DiverseBranchBlock(2, 2, 3, groups=2, internal_channels_1x1_3x3=4), randomize_bn, seed=8).double()
    seq = block.branch_1x1_kxk
    w1, w2 = seq.conv1.weight.detach().clone(), seq.conv2.weight.detach().clone()

    def fused_kernel(a, b):
        del seq.conv1.weight, seq.conv2.weight  # plain tensors in place of the parameters for this check
        seq.conv1.weight, seq.conv2.weight = a, b
        return block.get_equivalent_kernel_bias()

    assert torch.autograd.gradcheck(fused_kernel, (w1.requires_grad_(), w2.requires_grad_()))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"out_channels": -2},
        {"groups": 0},
        {"in_channels": 3, "groups": 2},
        {"out_channels": 6, "groups": 4},
        {"kernel_size": 4, "padding": None},
        {"kernel_size": 0},
        {"stride": 0},
        {"padding": 0},
        {"padding": 2},
        {"dilation": 2},
        {"in_channels": 8, "out_channels": 4, "groups": 4},  # depthwise with in != out
        {"internal_channels_1x1_3x3": 3, "groups": 2},
        {"internal_channels_1x1_3x3": 0},
        {"kernel_size": (3, 3)},
        {"nonlinear": torch.relu},
    ],
    ids=lambda kw: "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in kw.items()),
)
def test_invalid_arguments_raise_value_error(kwargs):
    args = {"in_channels": 4, "out_channels": 4, "kernel_size": 3} | kwargs
    with pytest.raises(ValueError):
        DiverseBranchBlock(**args)
