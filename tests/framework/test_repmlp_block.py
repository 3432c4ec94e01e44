"""RepMLP block: conv -> FC (locality injection) and the fused block against the training-time block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litzoo.framework.reparam import fuse_model, randomize_batchnorm
from litzoo.framework.reparam.fuse_model import is_fusable
from litzoo.framework.reparam.repmlp_block import RepMLPBlock, RepMLPBlockDeploy, conv_to_fc


def _partitions(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(N, C, H, W) -> (N * H/h * W/w, C, h, w)``, partitions in row-major order."""
    n, c, height, width = x.shape
    return x.reshape(n, c, height // h, h, width // w, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, h, w)


# (in_channels, out_channels, groups, kh, kw, h, w): RepMLP's depthwise case (one channel per shareset),
# general grouped convs, k in {1, 3, 5}, non-square partitions and kernels, kernels larger than the partition.
FC_CASES = [
    (1, 1, 1, 3, 3, 4, 4),
    (4, 4, 4, 1, 1, 3, 5),
    (4, 4, 4, 3, 3, 3, 5),
    (4, 4, 4, 5, 5, 5, 2),
    (2, 2, 2, 5, 5, 2, 2),
    (3, 5, 1, 3, 3, 4, 3),
    (4, 6, 2, 5, 5, 3, 4),
    (6, 6, 3, 3, 1, 4, 5),
]


@pytest.mark.parametrize(("cin", "cout", "groups", "kh", "kw", "h", "w"), FC_CASES)
def test_conv_to_fc_equals_the_conv_inside_each_partition(cin, cout, groups, kh, kw, h, w):
    gen = torch.Generator().manual_seed(cin * 7 + kh)
    kernel = torch.randn(cout, cin // groups, kh, kw, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    x = torch.randn(2, cin, 2 * h, 3 * w, generator=gen, dtype=torch.float64)
    parts = _partitions(x, h, w)  # (M, cin, h, w)
    expected = F.conv2d(parts, kernel, bias, padding=(kh // 2, kw // 2), groups=groups)  # zero padding at every partition border

    weight, fc_bias = conv_to_fc(kernel, bias, h, w, groups)
    assert weight.shape == (cout * h * w, cin // groups * h * w) and fc_bias.shape == (cout * h * w,)
    # the FC as a grouped 1x1 conv over the channel-major flattened partition
    flat = parts.reshape(parts.shape[0], cin * h * w, 1, 1)
    got = F.conv2d(flat, weight[..., None, None], fc_bias, groups=groups).reshape(expected.shape)
    assert (got - expected).abs().max().item() < 1e-10


def test_conv_to_fc_without_bias_and_its_gradient():
    kernel = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    weight, bias = conv_to_fc(kernel, None, 3, 2, groups=2)
    assert torch.equal(bias, torch.zeros(12, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda k: conv_to_fc(k, None, 3, 2, groups=2)[0], (kernel,))


def test_conv_to_fc_errors():
    with pytest.raises(ValueError, match="odd kernel"):
        conv_to_fc(torch.randn(1, 1, 2, 2), None, 4, 4)
    with pytest.raises(ValueError, match="divisible by groups"):
        conv_to_fc(torch.randn(3, 1, 3, 3), None, 4, 4, groups=2)
    with pytest.raises(ValueError, match="4-D"):
        conv_to_fc(torch.randn(3, 3, 3), None, 4, 4)
    with pytest.raises(ValueError, match="bias must have shape"):
        conv_to_fc(torch.randn(2, 1, 3, 3), torch.randn(3), 4, 4, groups=2)


def _random_block(seed: int = 0, **kwargs) -> RepMLPBlock:
    args = dict(in_channels=8, out_channels=8, h=3, w=5, reparam_conv_k=(1, 3), num_sharesets=4, globalperceptron_reduce=2)
    block = RepMLPBlock(**{**args, **kwargs})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return randomize_batchnorm(block, seed).eval()


def _reference_forward(block: RepMLPBlock, x: torch.Tensor) -> torch.Tensor:
    """The block, eval mode, written channel by channel: channel c uses shareset c mod S (official layout)."""
    n, c, height, width = x.shape
    s, h, w = block.num_sharesets, block.h, block.w
    out = torch.zeros_like(x)
    for ch in range(c):
        share = ch % s
        parts = _partitions(x[:, ch : ch + 1], h, w)  # (M, 1, h, w)
        fc = block.fc3.weight[share * h * w : (share + 1) * h * w, :, 0, 0]
        y = (parts.reshape(-1, h * w) @ fc.t()).reshape(-1, 1, h, w)
        y = F.batch_norm(y, block.fc3_bn.running_mean[share : share + 1], block.fc3_bn.running_var[share : share + 1],
                         block.fc3_bn.weight[share : share + 1], block.fc3_bn.bias[share : share + 1], eps=block.fc3_bn.eps)
        for k in block.reparam_conv_k:
            branch = getattr(block, f"repconv{k}")
            z = F.conv2d(parts, branch.conv.weight[share : share + 1], padding=k // 2)
            bn = branch.bn
            y = y + F.batch_norm(z, bn.running_mean[share : share + 1], bn.running_var[share : share + 1],
                                 bn.weight[share : share + 1], bn.bias[share : share + 1], eps=bn.eps)
        out[:, ch] = y.reshape(n, height // h, width // w, h, w).permute(0, 1, 3, 2, 4).reshape(n, height, width)
    return out * block.gp(x)


def test_forward_matches_a_per_channel_reference():
    block = _random_block().double()
    x = torch.randn(2, 8, 6, 10, dtype=torch.float64)
    with torch.no_grad():
        assert (block(x) - _reference_forward(block, x)).abs().max().item() < 1e-10


# (channels, h, w, sharesets, kernels, H, W)
BLOCK_CASES = [
    (8, 3, 5, 4, (1, 3), 6, 10),
    (4, 4, 4, 1, (1, 3, 5), 8, 8),
    (6, 2, 3, 3, (3, 5), 4, 9),
    (8, 4, 2, 8, (1,), 4, 4),
    (4, 3, 3, 2, None, 6, 3),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("channels", "h", "w", "sharesets", "kernels", "height", "width"), BLOCK_CASES)
def test_fused_block_equals_training_block_in_eval(channels, h, w, sharesets, kernels, height, width, dtype):
    block = _random_block(seed=channels + h, in_channels=channels, out_channels=channels, h=h, w=w, num_sharesets=sharesets, reparam_conv_k=kernels).to(dtype)
    x = torch.randn(3, channels, height, width, dtype=dtype, generator=torch.Generator().manual_seed(1))
    fused = block.fuse()
    assert isinstance(fused, RepMLPBlockDeploy) and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        error = (block(x) - fused(x)).abs().max().item()
    assert error < (1e-10 if dtype == torch.float64 else 1e-5)


def test_conv_and_fc_paths_of_the_local_perceptron_agree():
    block = _random_block(reparam_conv_k=(1, 3, 5)).double()
    x = torch.randn(2, 8, 6, 10, dtype=torch.float64)
    with torch.no_grad():
        via_fc = block(x)
        block.local_fc_max_pixels = 0
        via_conv = block(x)
    assert (via_fc - via_conv).abs().max().item() < 1e-12


def test_training_mode_uses_batch_statistics_and_eval_then_fuses():
    block = _random_block().train()
    x = torch.randn(4, 8, 6, 10)
    block(x)  # updates running statistics
    block.eval()
    with torch.no_grad():
        assert (block(x) - fuse_model(block)(x)).abs().max().item() < 1e-5


def test_equivalent_fc3_is_differentiable():
    block = _random_block()
    weight, bias = block.get_equivalent_fc3()
    assert weight.shape == (4 * 15, 15, 1, 1) and bias.shape == (60,)
    (weight.square().sum() + bias.sum()).backward()
    for name in ("fc3.weight", "fc3_bn.weight", "fc3_bn.bias", "repconv1.conv.weight", "repconv3.conv.weight", "repconv3.bn.weight"):
        grad = block.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_fuse_gives_the_official_deploy_keys_and_a_final_block():
    block = _random_block()
    assert set(block.state_dict()) == {
        "gp.fc1.weight", "gp.fc1.bias", "gp.fc2.weight", "gp.fc2.bias", "fc3.weight",
        *(f"{m}.{leaf}" for m in ("fc3_bn", "repconv1.bn", "repconv3.bn") for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
        "repconv1.conv.weight", "repconv3.conv.weight",
    }
    fused = block.fuse()
    assert set(fused.state_dict()) == {"gp.fc1.weight", "gp.fc1.bias", "gp.fc2.weight", "gp.fc2.bias", "fc3.weight", "fc3.bias"}
    assert is_fusable(block) and not is_fusable(fused)
    direct = RepMLPBlockDeploy(8, 8, 3, 5, globalperceptron_reduce=2, num_sharesets=4)
    assert {k: v.shape for k, v in direct.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}


def test_argument_errors():
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        RepMLPBlock(8, 16, 4, 4)
    with pytest.raises(ValueError, match="divisible by num_sharesets"):
        RepMLPBlock(6, 6, 4, 4, num_sharesets=4)
    with pytest.raises(ValueError, match="odd positive"):
        RepMLPBlock(4, 4, 4, 4, reparam_conv_k=(1, 2))
    with pytest.raises(ValueError, match="repeated"):
        RepMLPBlock(4, 4, 4, 4, reparam_conv_k=(3, 3))
    with pytest.raises(ValueError, match="globalperceptron_reduce"):
        RepMLPBlock(4, 4, 4, 4, globalperceptron_reduce=8)
    with pytest.raises(ValueError, match="partition size must be positive"):
        RepMLPBlock(4, 4, 0, 4)
    block = RepMLPBlock(4, 4, 3, 2, reparam_conv_k=(3,))
    with pytest.raises(ValueError, match=r"input size 8x8 is not divisible by the partition size h x w = 3x2"):
        block(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="expects 4 channels"):
        block(torch.randn(1, 2, 6, 4))
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        RepMLPBlockDeploy(8, 4, 2, 2)
    with pytest.raises(ValueError, match="RepMLPBlockDeploy: input size 3x4"):
        RepMLPBlockDeploy(4, 4, 2, 2)(torch.randn(1, 4, 3, 4))
