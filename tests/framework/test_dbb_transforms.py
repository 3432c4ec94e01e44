"""Transforms III (1x1 -> kxk), IV (depth concat) and V (avgpool) of ``litzoo.framework.reparam.fusion``.

Each is checked against an independent computation: the two convs run in sequence on a map padded
with the 1x1 branch's bias, ``torch.cat`` of conv outputs, ``F.avg_pool2d``; plus negative controls
showing what the equalities rule out (zero padding in III, ``count_include_pad=False`` in V).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litzoo.framework.reparam.dbb import BNAndPad
from litzoo.framework.reparam.fusion import avgpool_kernel, concat_branches, fuse_conv_bn, merge_1x1_kxk
from litzoo.framework.reparam.verify import randomize_batchnorm

DTYPE = torch.float64
ATOL = 1e-12


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=DTYPE) * scale


def _pad_with(y: torch.Tensor, values: torch.Tensor, p: int) -> torch.Tensor:
    """Pad ``y`` by ``p`` on each side with one constant per channel (written independently of BNAndPad)."""
    n, c, h, w = y.shape
    out = values.reshape(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
    out[:, :, p : p + h, p : p + w] = y
    return out


# --------------------------------------------------------------------------------------------
# III: merge_1x1_kxk
# --------------------------------------------------------------------------------------------

# (in, mid, out, k, stride, groups): dense, wider/narrower middle, grouped, depthwise, channel multiplier, rectangular-free odd k.
MERGE_CASES = [
    (3, 3, 5, 3, 1, 1),
    (3, 7, 4, 3, 2, 1),
    (6, 4, 8, 5, 1, 2),
    (6, 12, 6, 3, 2, 3),
    (4, 4, 4, 3, 1, 4),
    (4, 8, 4, 5, 2, 4),
    (3, 6, 6, 3, 1, 3),
    (2, 2, 3, 1, 1, 1),
]


@pytest.mark.parametrize(("in_ch", "mid", "out_ch", "k", "stride", "groups"), MERGE_CASES)
def test_merge_1x1_kxk_equals_two_convs_on_a_map_padded_with_the_first_bias(in_ch, mid, out_ch, k, stride, groups):
    gen = _gen(in_ch * 31 + mid * 7 + out_ch)
    k1, b1 = _randn(mid, in_ch // groups, 1, 1, gen=gen), _randn(mid, gen=gen)
    k2, b2 = _randn(out_ch, mid // groups, k, k, gen=gen, scale=0.5), _randn(out_ch, gen=gen)
    x = _randn(2, in_ch, 7, 9, gen=gen)
    p = k // 2

    kernel, bias = merge_1x1_kxk(k1, b1, k2, b2, groups=groups)
    assert kernel.shape == (out_ch, in_ch // groups, k, k)
    assert bias.shape == (out_ch,)
    fused = F.conv2d(x, kernel, bias, stride=stride, padding=p, groups=groups)

    middle = F.conv2d(x, k1, b1, groups=groups)  # the 1x1 conv on x: b1 is its output for zero input
    expected = F.conv2d(_pad_with(middle, b1, p), k2, b2, stride=stride, groups=groups)
    torch.testing.assert_close(fused, expected, atol=ATOL, rtol=0)
    # Without padding the sequential and merged convs also agree (the interior needs no trick).
    unpadded = F.conv2d(x, kernel, bias, stride=stride, groups=groups)
    torch.testing.assert_close(unpadded, F.conv2d(middle, k2, b2, stride=stride, groups=groups), atol=ATOL, rtol=0)


def test_merge_1x1_kxk_hand_computed_single_channel():
    # K1 = [[a]] = 2, b1 = 3; K2 = [[1, 2], [3, 4]] (even size is fine for the pure transform), b2 = -1
    # K = a K2 = [[2, 4], [6, 8]];  b = b2 + b1 * sum(K2) = -1 + 3 * 10 = 29
    k1, b1 = torch.full((1, 1, 1, 1), 2.0, dtype=DTYPE), torch.tensor([3.0], dtype=DTYPE)
    k2, b2 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=DTYPE), torch.tensor([-1.0], dtype=DTYPE)
    kernel, bias = merge_1x1_kxk(k1, b1, k2, b2)
    torch.testing.assert_close(kernel, 2 * k2, atol=0, rtol=0)
    torch.testing.assert_close(bias, torch.tensor([29.0], dtype=DTYPE), atol=0, rtol=0)


def test_merge_1x1_kxk_groups_do_not_mix():
    """Group j of the merged kernel must depend on group j of both kernels only."""
    gen = _gen(5)
    k1, b1 = _randn(4, 2, 1, 1, gen=gen), _randn(4, gen=gen)
    k2, b2 = _randn(6, 2, 3, 3, gen=gen), _randn(6, gen=gen)
    kernel, bias = merge_1x1_kxk(k1, b1, k2, b2, groups=2)
    k1_changed, b1_changed = k1.clone(), b1.clone()
    k1_changed[2:] += 1.0  # group 1 of the first conv
    b1_changed[2:] += 1.0
    kernel2, bias2 = merge_1x1_kxk(k1_changed, b1_changed, k2, b2, groups=2)
    torch.testing.assert_close(kernel2[:3], kernel[:3], atol=0, rtol=0)
    torch.testing.assert_close(bias2[:3], bias[:3], atol=0, rtol=0)
    assert (kernel2[3:] - kernel[3:]).abs().max() > 0.1
    assert (bias2[3:] - bias[3:]).abs().max() > 0.1


def test_merge_1x1_kxk_gradcheck():
    gen = _gen(6)
    args = [
        _randn(4, 1, 1, 1, gen=gen).requires_grad_(),
        _randn(4, gen=gen).requires_grad_(),
        _randn(6, 2, 3, 3, gen=gen).requires_grad_(),
        _randn(6, gen=gen).requires_grad_(),
    ]
    assert torch.autograd.gradcheck(lambda a, b, c, d: merge_1x1_kxk(a, b, c, d, groups=2), args)


@pytest.mark.parametrize(
    ("k1_shape", "b1_len", "k2_shape", "b2_len", "groups", "match"),
    [
        ((4, 3, 3, 3), 4, (5, 4, 3, 3), 5, 1, "1x1"),
        ((4, 3, 1, 1), 4, (5, 3, 3, 3), 5, 1, "input channels"),
        ((4, 3, 1, 1), 4, (5, 2, 3, 3), 5, 2, "divisible"),
        ((4, 3, 1, 1), 3, (5, 4, 3, 3), 5, 1, "biases"),
        ((4, 3, 1, 1), 4, (5, 4, 3, 3), 4, 1, "biases"),
        ((4, 3, 1, 1), 4, (5, 4, 3, 3), 5, 0, "groups"),
    ],
    ids=["not_1x1", "channel_mismatch", "out_not_divisible", "bias1_shape", "bias2_shape", "groups0"],
)
def test_merge_1x1_kxk_errors(k1_shape, b1_len, k2_shape, b2_len, groups, match):
    with pytest.raises(ValueError, match=match):
        merge_1x1_kxk(torch.zeros(k1_shape), torch.zeros(b1_len), torch.zeros(k2_shape), torch.zeros(b2_len), groups=groups)


# --------------------------------------------------------------------------------------------
# The padding trap (negative control) and BNAndPad
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2])
def test_zero_padding_breaks_the_merge_and_bn_padding_fixes_it(groups):
    """Merged 1x1-BN -> kxk-BN: zero-padding the middle map is wrong by O(1) on the border, BNAndPad is exact."""
    gen = _gen(7)
    in_ch, mid, out_ch, k = 4, 4, 6, 3
    conv1 = nn.Conv2d(in_ch, mid, 1, groups=groups, bias=False).to(DTYPE)
    conv2 = nn.Conv2d(mid, out_ch, k, groups=groups, bias=False).to(DTYPE)
    with torch.no_grad():
        conv1.weight.copy_(_randn(*conv1.weight.shape, gen=gen))
        conv2.weight.copy_(_randn(*conv2.weight.shape, gen=gen, scale=0.5))
    bn_pad = BNAndPad(k // 2, mid).to(DTYPE)
    bn2 = nn.BatchNorm2d(out_ch).to(DTYPE)
    randomize_batchnorm(bn_pad, seed=1)
    randomize_batchnorm(bn2, seed=2)
    bn_pad.eval()
    bn2.eval()

    kernel, bias = merge_1x1_kxk(*fuse_conv_bn(conv1.weight, bn_pad.bn), *fuse_conv_bn(conv2.weight, bn2), groups=groups)
    x = _randn(2, in_ch, 7, 9, gen=gen)
    with torch.no_grad():
        fused = F.conv2d(x, kernel, bias, padding=k // 2, groups=groups)
        with_bn_padding = bn2(conv2(bn_pad(conv1(x))))
        with_zero_padding = bn2(F.conv2d(bn_pad.bn(conv1(x)), conv2.weight, padding=k // 2, groups=groups))
    assert (fused - with_bn_padding).abs().max().item() <= ATOL
    zero_error = (fused - with_zero_padding).abs()
    assert zero_error.max().item() > 1e-2
    # the error lives on the border band only: the interior never reads the padding
    assert zero_error[:, :, 1:-1, 1:-1].max().item() <= ATOL


def test_bn_and_pad_border_is_the_bn_output_for_zero_input():
    bn_pad = BNAndPad(2, 3).to(DTYPE)
    randomize_batchnorm(bn_pad, seed=3)
    bn_pad.eval()
    y = _randn(2, 3, 4, 5, gen=_gen(8))
    out = bn_pad(y)
    assert out.shape == (2, 3, 8, 9)
    zero_response = bn_pad.bn(torch.zeros(1, 3, 1, 1, dtype=DTYPE)).reshape(3)
    torch.testing.assert_close(out[:, :, 2:-2, 2:-2], bn_pad.bn(y), atol=0, rtol=0)
    border = torch.ones(8, 9, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    torch.testing.assert_close(out[:, :, border], zero_response.reshape(1, 3, 1).expand(2, 3, int(border.sum())), atol=ATOL, rtol=0)
    # the same thing, stated as "BN of the zero-padded input"
    torch.testing.assert_close(out, bn_pad.bn(F.pad(y, [2, 2, 2, 2])), atol=ATOL, rtol=0)


def test_bn_and_pad_without_affine_and_without_padding():
    bn_pad = BNAndPad(1, 2, affine=False).to(DTYPE)
    randomize_batchnorm(bn_pad, seed=4)
    bn_pad.eval()
    y = _randn(1, 2, 3, 3, gen=_gen(9))
    torch.testing.assert_close(bn_pad(y), bn_pad.bn(F.pad(y, [1, 1, 1, 1])), atol=ATOL, rtol=0)
    no_pad = BNAndPad(0, 2).to(DTYPE).eval()
    torch.testing.assert_close(no_pad(y), no_pad.bn(y), atol=0, rtol=0)
    with pytest.raises(ValueError):
        BNAndPad(-1, 2)


def test_bn_and_pad_survives_sync_batchnorm_conversion():
    """DBB issue #8: a BN subclass was swapped for SyncBatchNorm and lost its padding; the wrapper keeps it."""
    model = nn.Sequential(BNAndPad(1, 3)).to(DTYPE)
    randomize_batchnorm(model, seed=5)
    model.eval()
    y = _randn(2, 3, 4, 4, gen=_gen(10))
    expected = model(y)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
    assert isinstance(converted[0], BNAndPad)
    assert isinstance(converted[0].bn, nn.SyncBatchNorm)
    torch.testing.assert_close(converted(y), expected, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# IV: concat_branches
# --------------------------------------------------------------------------------------------


def test_concat_branches_equals_cat_of_conv_outputs():
    gen = _gen(11)
    branches = [(_randn(o, 3, 3, 3, gen=gen), _randn(o, gen=gen)) for o in (2, 5, 1)]
    x = _randn(2, 3, 7, 9, gen=gen)
    kernel, bias = concat_branches(*branches)
    assert kernel.shape == (8, 3, 3, 3) and bias.shape == (8,)
    expected = torch.cat([F.conv2d(x, k, b, stride=2, padding=1) for k, b in branches], dim=1)
    torch.testing.assert_close(F.conv2d(x, kernel, bias, stride=2, padding=1), expected, atol=ATOL, rtol=0)


def test_concat_branches_of_group_slices_is_a_grouped_conv():
    """The per-group convs of a grouped conv, concatenated, give back its kernel (why III needs IV)."""
    gen = _gen(12)
    kernel, bias = _randn(6, 2, 3, 3, gen=gen), _randn(6, gen=gen)
    x = _randn(1, 4, 5, 7, gen=gen)
    slices = [(kernel[3 * j : 3 * j + 3], bias[3 * j : 3 * j + 3]) for j in range(2)]
    cat_kernel, cat_bias = concat_branches(*slices)
    torch.testing.assert_close(cat_kernel, kernel, atol=0, rtol=0)
    per_group = torch.cat([F.conv2d(x[:, 2 * j : 2 * j + 2], k, b, padding=1) for j, (k, b) in enumerate(slices)], dim=1)
    torch.testing.assert_close(F.conv2d(x, cat_kernel, cat_bias, padding=1, groups=2), per_group, atol=ATOL, rtol=0)


def test_concat_branches_errors():
    with pytest.raises(ValueError):
        concat_branches()
    with pytest.raises(ValueError, match="output dimension"):
        concat_branches((torch.zeros(2, 3, 3, 3), torch.zeros(2)), (torch.zeros(2, 3, 1, 1), torch.zeros(2)))
    with pytest.raises(ValueError, match="bias"):
        concat_branches((torch.zeros(2, 3, 3, 3), torch.zeros(3)))


# --------------------------------------------------------------------------------------------
# V: avgpool_kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize(("k", "stride", "padding"), [(3, 1, 0), (3, 1, 1), (3, 2, 1), (5, 1, 2), (5, 2, 2), (5, 3, 1)])
def test_avgpool_kernel_equals_avg_pool2d_with_count_include_pad(groups, k, stride, padding):
    x = _randn(2, 6, 11, 13, gen=_gen(13))
    kernel = avgpool_kernel(6, k, groups, dtype=DTYPE)
    assert kernel.shape == (6, 6 // groups, k, k)
    got = F.conv2d(x, kernel, stride=stride, padding=padding, groups=groups)
    expected = F.avg_pool2d(x, k, stride, padding, count_include_pad=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_avgpool_kernel_differs_from_count_include_pad_false():
    """Negative control: without counting the padding, border windows divide by fewer elements."""
    x = _randn(1, 2, 7, 9, gen=_gen(14)) + 3.0
    got = F.conv2d(x, avgpool_kernel(2, 3, dtype=DTYPE), padding=1)
    assert (got - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().max().item() > 0.1


def test_avgpool_kernel_values_rectangular_dtype_device():
    kernel = avgpool_kernel(6, (3, 5), 3, dtype=torch.float32, device="cpu")
    assert kernel.shape == (6, 2, 3, 5) and kernel.dtype == torch.float32 and kernel.device.type == "cpu"
    for i in range(6):
        for j in range(2):
            expected = 1.0 / 15 if j == i % 2 else 0.0
            torch.testing.assert_close(kernel[i, j], torch.full((3, 5), expected), atol=0, rtol=0)
    x = torch.randn(1, 6, 7, 9)
    torch.testing.assert_close(F.conv2d(x, kernel, padding=(1, 2), groups=3), F.avg_pool2d(x, (3, 5), 1, (1, 2)), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("channels", "k", "groups"), [(0, 3, 1), (6, 3, 4), (6, 3, 0), (4, 0, 1)])
def test_avgpool_kernel_errors(channels, k, groups):
    with pytest.raises(ValueError):
        avgpool_kernel(channels, k, groups)
