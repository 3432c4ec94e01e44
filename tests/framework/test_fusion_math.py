"""Tests of the pure fusion transforms in ``litzoo.framework.reparam.fusion``.

Every transform is checked against an independent reference: running the un-fused modules
(conv then eval-mode BN, small conv with adjusted padding, the input itself) or numbers computed
by hand. Float64 is used wherever an equality to ~1e-12 is asserted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litzoo.framework.reparam.fusion import add_branches, conv_with_kernel, fuse_conv_bn, identity_kernel, pad_kernel

DTYPE = torch.float64
ATOL = 1e-12


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize_bn(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
    """Non-trivial running stats and affine params: the defaults (0, 1, 1, 0) hide scale/bias bugs."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen, dtype=DTYPE) * 0.7)
        bn.running_var.copy_(torch.rand(n, generator=gen, dtype=DTYPE) * 1.8 + 0.2)
        if bn.affine:
            sign = torch.where(torch.rand(n, generator=gen) < 0.3, -1.0, 1.0).to(DTYPE)
            bn.weight.copy_(sign * (torch.rand(n, generator=gen, dtype=DTYPE) + 0.5))
            bn.bias.copy_(torch.randn(n, generator=gen, dtype=DTYPE) * 0.5)


# --------------------------------------------------------------------------------------------
# fuse_conv_bn (transform I)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("eps", [1e-5, 0.3], ids=["eps_default", "eps_custom"])
@pytest.mark.parametrize(
    ("in_ch", "out_ch", "k", "stride", "padding", "groups"),
    [
        (3, 5, 3, 1, 1, 1),
        (4, 6, 3, 2, 1, 2),
        (3, 6, 3, 1, 1, 3),  # depthwise with channel multiplier 2: t must follow output channels
        (5, 5, 1, 1, 0, 5),
    ],
)
def test_fuse_conv_bn_matches_conv_then_eval_bn(conv_bias, affine, eps, in_ch, out_ch, k, stride, padding, groups):
    gen = _gen(1)
    conv = nn.Conv2d(in_ch, out_ch, k, stride, padding, groups=groups, bias=conv_bias).to(DTYPE)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=DTYPE))
        if conv_bias:
            conv.bias.copy_(torch.randn(out_ch, generator=gen, dtype=DTYPE))
    bn = nn.BatchNorm2d(out_ch, eps=eps, affine=affine).to(DTYPE)
    _randomize_bn(bn, gen)
    bn.eval()
    x = torch.randn(2, in_ch, 7, 9, generator=gen, dtype=DTYPE)

    kernel, bias = fuse_conv_bn(conv.weight, bn, conv.bias)
    assert kernel.shape == conv.weight.shape
    assert bias.shape == (out_ch,)
    expected = bn(conv(x))
    got = F.conv2d(x, kernel, bias, stride, padding, 1, groups)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_fuse_conv_bn_uses_the_bn_own_eps():
    """With a large eps, a hard-coded 1e-5 would be far off (ResRep's converter trap)."""
    kernel = torch.ones(1, 1, 1, 1, dtype=DTYPE)
    bn = nn.BatchNorm2d(1, eps=3.0).to(DTYPE).eval()
    with torch.no_grad():
        bn.running_var.fill_(1.0)  # std = sqrt(1 + 3) = 2
    fused_kernel, fused_bias = fuse_conv_bn(kernel, bn)
    torch.testing.assert_close(fused_kernel, torch.full((1, 1, 1, 1), 0.5, dtype=DTYPE), atol=0, rtol=0)
    torch.testing.assert_close(fused_bias, torch.zeros(1, dtype=DTYPE), atol=0, rtol=0)


def test_fuse_conv_bn_hand_computed_single_channel():
    # W = [[1, 2], [3, 4]], b = 1; BN: mean 3, var 3, eps 1 -> std 2; gamma 4, beta 5 -> t = 2
    # K' = 2 W = [[2, 4], [6, 8]];  b' = 5 + (1 - 3) * 2 = 1
    kernel = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=DTYPE)
    bias = torch.tensor([1.0], dtype=DTYPE)
    bn = nn.BatchNorm2d(1, eps=1.0).to(DTYPE)
    with torch.no_grad():
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(3.0)
        bn.weight.fill_(4.0)
        bn.bias.fill_(5.0)
    fused_kernel, fused_bias = fuse_conv_bn(kernel, bn, bias)
    torch.testing.assert_close(fused_kernel, torch.tensor([[[[2.0, 4.0], [6.0, 8.0]]]], dtype=DTYPE), atol=0, rtol=0)
    torch.testing.assert_close(fused_bias, torch.tensor([1.0], dtype=DTYPE), atol=0, rtol=0)
    # and without conv bias: b' = 5 - 3 * 2 = -1
    _, fused_bias_nobias = fuse_conv_bn(kernel, bn)
    torch.testing.assert_close(fused_bias_nobias, torch.tensor([-1.0], dtype=DTYPE), atol=0, rtol=0)


def test_fuse_conv_bn_hand_computed_two_channels_per_channel_scale():
    # channel 0: mean 1, var 0 (eps 1 -> std 1), gamma 2, beta 0 -> t = 2, b' = -2
    # channel 1: mean -1, var 8 (std 3), gamma -3, beta 1  -> t = -1, b' = 1 + (0 + 1)(-1) = 0
    kernel = torch.tensor([[[[1.0]]], [[[5.0]]]], dtype=DTYPE)
    bn = nn.BatchNorm2d(2, eps=1.0).to(DTYPE)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.running_var.copy_(torch.tensor([0.0, 8.0]))
        bn.weight.copy_(torch.tensor([2.0, -3.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0]))
    k, b = fuse_conv_bn(kernel, bn)
    torch.testing.assert_close(k.flatten(), torch.tensor([2.0, -5.0], dtype=DTYPE), atol=1e-15, rtol=0)
    torch.testing.assert_close(b, torch.tensor([-2.0, 0.0], dtype=DTYPE), atol=1e-15, rtol=0)


def test_fuse_conv_bn_uses_running_stats_even_in_train_mode_and_does_not_mutate():
    gen = _gen(2)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).to(DTYPE)
    bn = nn.BatchNorm2d(4).to(DTYPE)
    _randomize_bn(bn, gen)
    bn.train()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    kernel, bias = fuse_conv_bn(conv.weight, bn)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert bn.training
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=DTYPE)
    expected = bn.eval()(conv(x))
    torch.testing.assert_close(F.conv2d(x, kernel, bias, padding=1), expected, atol=ATOL, rtol=0)


def test_fuse_conv_bn_is_differentiable():
    kernel = torch.randn(4, 2, 3, 3, dtype=DTYPE, requires_grad=True)
    bn = nn.BatchNorm2d(4).to(DTYPE)
    _randomize_bn(bn, _gen(3))
    k, b = fuse_conv_bn(kernel, bn)
    (k.sum() + b.sum()).backward()
    std = (bn.running_var + bn.eps).sqrt()
    # d(sum K')/dW = t broadcast; d(sum K' + sum b')/dgamma = (sum W - mean) / std; d/dbeta = 1
    t = bn.weight.detach() / std
    torch.testing.assert_close(kernel.grad, t.reshape(-1, 1, 1, 1).expand_as(kernel), atol=1e-14, rtol=0)
    expected_gamma_grad = (kernel.detach().sum(dim=(1, 2, 3)) - bn.running_mean) / std
    torch.testing.assert_close(bn.weight.grad, expected_gamma_grad, atol=1e-13, rtol=0)
    torch.testing.assert_close(bn.bias.grad, torch.ones(4, dtype=DTYPE), atol=0, rtol=0)


def test_fuse_conv_bn_errors():
    kernel = torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match="running"):
        fuse_conv_bn(kernel, nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="5"):
        fuse_conv_bn(kernel, nn.BatchNorm2d(5))


# --------------------------------------------------------------------------------------------
# pad_kernel (transform VI)
# --------------------------------------------------------------------------------------------


def test_pad_kernel_1x1_to_3x3_places_kernel_at_centre():
    kernel = torch.randn(4, 2, 1, 1, dtype=DTYPE)
    padded = pad_kernel(kernel, 3)
    assert padded.shape == (4, 2, 3, 3)
    assert torch.equal(padded[:, :, 1, 1], kernel[:, :, 0, 0])
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1, 1] = False
    assert torch.count_nonzero(padded[:, :, mask]) == 0


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(
    ("small", "target", "small_padding", "target_padding"),
    [
        ((1, 1), 3, (0, 0), (1, 1)),
        ((3, 3), 5, (1, 1), (2, 2)),
        ((1, 1), (5, 5), (0, 0), (2, 2)),
        ((1, 3), 3, (0, 1), (1, 1)),
        ((3, 1), 3, (1, 0), (1, 1)),
        ((1, 3), (3, 5), (0, 1), (1, 2)),
        ((3, 1), (5, 3), (1, 0), (2, 1)),
    ],
)
def test_pad_kernel_conv_equivalence(small, target, small_padding, target_padding, stride):
    """conv(x, pad(K), p) == conv(x, K, p - (k_large - k_small) / 2) for every shape, incl. rectangular."""
    gen = _gen(4)
    kernel = torch.randn(3, 2, *small, generator=gen, dtype=DTYPE)
    x = torch.randn(2, 2, 7, 9, generator=gen, dtype=DTYPE)
    padded = pad_kernel(kernel, target)
    th, tw = (target, target) if isinstance(target, int) else target
    assert padded.shape == (3, 2, th, tw)
    expected = F.conv2d(x, kernel, stride=stride, padding=small_padding)
    got = F.conv2d(x, padded, stride=stride, padding=target_padding)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_pad_kernel_1x3_lands_in_middle_row():
    """F.pad takes W first: a 1x3 kernel must become the middle ROW of the 3x3 (DBB issue #26)."""
    kernel = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    padded = pad_kernel(kernel, 3)
    expected = torch.tensor([[[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]])
    assert torch.equal(padded, expected)
    column = pad_kernel(kernel.transpose(-1, -2), 3)
    assert torch.equal(column, expected.transpose(-1, -2))


def test_pad_kernel_same_size_is_identity_and_keeps_grad():
    kernel = torch.randn(2, 3, 3, 3, requires_grad=True)
    padded = pad_kernel(kernel, 3)
    assert torch.equal(padded, kernel)
    pad_kernel(kernel, 5).sum().backward()
    assert torch.equal(kernel.grad, torch.ones_like(kernel))


@pytest.mark.parametrize(
    ("shape", "target"),
    [((1, 1), 2), ((3, 3), 4), ((1, 2), 3), ((2, 1), 3), ((1, 3), (3, 4)), ((3, 3), 1), ((5, 5), 3), ((1, 3), (3, 1))],
)
def test_pad_kernel_rejects_odd_or_negative_differences(shape, target):
    with pytest.raises(ValueError):
        pad_kernel(torch.zeros(1, 1, *shape), target)


# --------------------------------------------------------------------------------------------
# identity_kernel (RepVGG Sec. 3.3, transform with groups)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3, 5, (3, 5)])
@pytest.mark.parametrize(("channels", "groups"), [(6, 1), (6, 2), (6, 3), (6, 6), (5, 1), (5, 5), (1, 1)])
def test_identity_kernel_conv_is_identity(channels, groups, kernel_size):
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    kernel = identity_kernel(channels, groups, kernel_size, dtype=DTYPE)
    assert kernel.shape == (channels, channels // groups, kh, kw)
    assert kernel.dtype == DTYPE
    # exactly one 1 per output channel, everything else 0
    assert torch.equal(kernel.reshape(channels, -1).sum(1), torch.ones(channels, dtype=DTYPE))
    assert torch.count_nonzero(kernel) == channels
    x = torch.randn(3, channels, 7, 9, generator=_gen(5), dtype=DTYPE)
    y = F.conv2d(x, kernel, padding=(kh // 2, kw // 2), groups=groups)
    assert torch.equal(y, x)


def test_identity_kernel_hand_layout_grouped():
    # 4 channels, 2 groups -> per group 2: K[i, i % 2, 1, 1] = 1
    kernel = identity_kernel(4, 2, 3)
    centre = kernel[:, :, 1, 1]
    assert torch.equal(centre, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    assert kernel.dtype == torch.get_default_dtype()


def test_identity_kernel_errors():
    with pytest.raises(ValueError, match="divisible"):
        identity_kernel(6, 4)
    with pytest.raises(ValueError, match="divisible"):
        identity_kernel(5, 2, 3)
    with pytest.raises(ValueError):
        identity_kernel(4, 1, 2)
    with pytest.raises(ValueError):
        identity_kernel(4, 1, (3, 4))


# --------------------------------------------------------------------------------------------
# add_branches (transform II)
# --------------------------------------------------------------------------------------------


def test_add_branches_sums_kernels_and_biases():
    gen = _gen(6)
    branches = [
        (torch.randn(4, 2, 3, 3, generator=gen, dtype=DTYPE), torch.randn(4, generator=gen, dtype=DTYPE)) for _ in range(3)
    ]
    kernel, bias = add_branches(*branches)
    torch.testing.assert_close(kernel, branches[0][0] + branches[1][0] + branches[2][0], atol=1e-15, rtol=0)
    torch.testing.assert_close(bias, branches[0][1] + branches[1][1] + branches[2][1], atol=1e-15, rtol=0)
    # linearity: one conv with the summed kernel == sum of the branch convs
    x = torch.randn(2, 4, 6, 5, generator=gen, dtype=DTYPE)
    expected = sum(F.conv2d(x, k, b, padding=1, groups=2) for k, b in branches)
    torch.testing.assert_close(F.conv2d(x, kernel, bias, padding=1, groups=2), expected, atol=ATOL, rtol=0)


def test_add_branches_single_branch_and_gradients():
    k1 = torch.randn(2, 1, 3, 3, requires_grad=True)
    b1 = torch.randn(2, requires_grad=True)
    k2 = torch.randn(2, 1, 3, 3, requires_grad=True)
    b2 = torch.randn(2, requires_grad=True)
    kernel, bias = add_branches((k1, b1))
    assert torch.equal(kernel, k1) and torch.equal(bias, b1)
    kernel, bias = add_branches((k1, b1), (k2, b2))
    (2 * kernel.sum() + 3 * bias.sum()).backward()
    for t, value in ((k1, 2.0), (k2, 2.0), (b1, 3.0), (b2, 3.0)):
        assert torch.equal(t.grad, torch.full_like(t, value))


def test_add_branches_errors():
    with pytest.raises(ValueError, match="pad"):
        add_branches((torch.zeros(2, 1, 3, 3), torch.zeros(2)), (torch.zeros(2, 1, 1, 1), torch.zeros(2)))
    with pytest.raises(ValueError):
        add_branches((torch.zeros(2, 1, 3, 3), torch.zeros(2)), (torch.zeros(3, 1, 3, 3), torch.zeros(3)))
    with pytest.raises(ValueError):
        add_branches()


# --------------------------------------------------------------------------------------------
# conv_with_kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_conv_with_kernel_keeps_geometry(padding_mode):
    gen = _gen(7)
    reference = nn.Conv2d(6, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=False, padding_mode=padding_mode)
    kernel = torch.randn(4, 3, 3, 3, generator=gen, dtype=DTYPE)
    bias = torch.randn(4, generator=gen, dtype=DTYPE)
    conv = conv_with_kernel(reference, kernel, bias)

    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels) == (6, 4)
    assert conv.kernel_size == (3, 3)
    assert conv.stride == (2, 1)
    assert conv.padding == (1, 2)
    assert conv.dilation == (1, 2)
    assert conv.groups == 2
    assert conv.padding_mode == padding_mode
    assert conv.bias is not None
    assert conv.weight.dtype == DTYPE and conv.bias.dtype == DTYPE
    assert torch.equal(conv.weight, kernel) and torch.equal(conv.bias, bias)
    assert isinstance(conv.weight, nn.Parameter) and conv.weight.requires_grad

    x = torch.randn(2, 6, 9, 11, generator=gen, dtype=DTYPE)
    if padding_mode == "zeros":
        expected = F.conv2d(x, kernel, bias, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    else:
        expected = F.conv2d(F.pad(x, [2, 2, 1, 1], mode="reflect"), kernel, bias, stride=(2, 1), dilation=(1, 2), groups=2)
    torch.testing.assert_close(conv(x), expected, atol=ATOL, rtol=0)


def test_conv_with_kernel_does_not_alias_its_inputs():
    """Training the deploy conv must not silently change the tensors it was built from."""
    reference = nn.Conv2d(2, 2, 3, padding=1)
    kernel_before = reference.weight.detach().clone()
    bias_before = reference.bias.detach().clone()
    conv = conv_with_kernel(reference, reference.weight.detach(), reference.bias.detach())
    with torch.no_grad():
        conv.weight.add_(1.0)
        conv.bias.add_(1.0)
    assert torch.equal(reference.weight, kernel_before)
    assert torch.equal(reference.bias, bias_before)
