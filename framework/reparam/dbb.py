"""The Diverse Branch Block (Ding et al., "Diverse Branch Block: Building a Convolution as an Inception-like
Unit", CVPR 2021).

Training time, for a kxk conv with ``padding = k // 2``, the sum of four branches (then an optional
nonlinearity)::

    branch_kxk      kxk conv - BN
    branch_1x1      1x1 conv - BN                               (absent for depthwise convs)
    branch_avg      1x1 conv - BNAndPad - avgpool k - BN        (depthwise: avgpool k - BN)
    branch_1x1_kxk  1x1 conv - BNAndPad - kxk conv - BN

Deploy time: one kxk conv with bias, obtained with the six transforms of
:mod:`litzoo.framework.reparam.fusion` (I conv-BN, II branch sum, III 1x1-kxk, IV depth concat inside
the grouped III, V avgpool, VI kernel padding).
Reference implementation: DingXiaoH/DiverseBranchBlock ``diversebranchblock.py`` (``DiverseBranchBlock``,
``BNAndPadLayer``, ``IdentityBasedConv1x1``) and ``dbb_transforms.py``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.checkpoints import register_official_key_map, rename_keys, rename_segments
from litzoo.framework.reparam.conv_bn import ConvBN, check_conv_arguments
from litzoo.framework.reparam.fusion import (
    add_branches,
    avgpool_kernel,
    conv_with_kernel,
    fuse_conv_bn,
    identity_kernel,
    merge_1x1_kxk,
    pad_kernel,
)

__all__ = ["BNAndPad", "DiverseBranchBlock", "GroupwiseConv2d", "IdentityBasedConv1x1", "official_dbb_key_map"]


class BNAndPad(nn.Module):
    """BatchNorm2d, then padding of ``pad_pixels`` on each side filled with the BN's output for a zero input.

    A kxk conv after a 1x1 conv-BN cannot zero-pad its input and still merge into one conv
    (transform III): the merged conv zero-pads ``x``, and a zero input leaves the 1x1 conv-BN as
    ``beta - mu * gamma / sigma``, not 0. Padding with that value per channel makes the two-conv
    branch equal to the merged conv at the borders as well (DBB issues #9, #16, #29, #39). The
    following kxk conv or pool then uses padding 0.

    The BN is wrapped as the attribute ``bn`` instead of subclassed: ``nn.SyncBatchNorm.convert_sync_batchnorm``
    replaces BN modules by type, and a BN subclass would be replaced together with its padding (DBB issue #8).

    As in the reference, the pad value always uses the running statistics (also in training mode,
    where the BN itself normalises with batch statistics) and carries no gradient to gamma and beta.
    In eval mode, the only mode in which the block is fused, it is exactly the BN output for zero input.
    """

    def __init__(self, pad_pixels: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> None:
        super().__init__()
        if pad_pixels < 0:
            raise ValueError(f"pad_pixels must be >= 0, got {pad_pixels}")
        self.pad_pixels = pad_pixels
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=affine)

    def pad_values(self) -> Tensor:
        """``beta - mu * gamma / sqrt(var + eps)``, shape ``(num_features,)``, from the running statistics."""
        bn = self.bn
        with torch.no_grad():
            scale = (bn.running_var + bn.eps).rsqrt()
            if bn.weight is not None:
                return bn.bias - bn.running_mean * bn.weight * scale
            return -bn.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn(x)  # (N, C, H, W)
        p = self.pad_pixels
        if p == 0:
            return out
        padded = F.pad(out, [p, p, p, p])  # (N, C, H + 2p, W + 2p)
        # True on the border band; a select (not an in-place write) keeps autograd simple.
        border = F.pad(out.new_zeros((1, 1, *out.shape[-2:]), dtype=torch.bool), [p, p, p, p], value=True)
        return torch.where(border, self.pad_values().to(out.dtype).reshape(1, -1, 1, 1), padded)

    def extra_repr(self) -> str:
        return f"pad_pixels={self.pad_pixels}"


class IdentityBasedConv1x1(nn.Conv2d):
    """A 1x1 conv (``channels -> channels``, no bias) whose kernel is ``weight + I``, ``weight`` initialised to 0.

    The identity ``I`` (groups aware, :func:`~litzoo.framework.reparam.fusion.identity_kernel`) is a fixed,
    non-persistent buffer ``id_tensor``: it follows ``.to()`` but stays out of the state dict, as in the
    reference, so checkpoints hold only the learned residual ``weight``. The block starts as the
    identity, which lets the 1x1-kxk branch of DBB begin as a plain kxk conv.
    """

    id_tensor: Tensor

    def __init__(self, channels: int, groups: int = 1) -> None:
        if channels <= 0 or groups < 1 or channels % groups:
            raise ValueError(f"channels ({channels}) must be positive and divisible by groups ({groups})")
        super().__init__(channels, channels, kernel_size=1, stride=1, padding=0, groups=groups, bias=False)
        self.register_buffer("id_tensor", identity_kernel(channels, groups, 1, dtype=self.weight.dtype), persistent=False)

    def reset_parameters(self) -> None:
        # nn.Conv2d.__init__ calls this too; a zero residual keeps the conv the identity after any re-initialisation.
        nn.init.zeros_(self.weight)

    def get_actual_kernel(self) -> Tensor:
        """``weight + I``, shape ``(channels, channels / groups, 1, 1)``."""
        return self.weight + self.id_tensor

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.get_actual_kernel(), None, groups=self.groups)


class GroupwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with one output channel per group and a few input channels per group, run on the
    CPU as that many depthwise convs over interleaved input channels (the same sum; same parameters).

    The 1x1-kxk branch of a depthwise DBB ends in such a conv (``2C -> C``, ``groups=C``). PyTorch's CPU
    backend runs it through its generic grouped path, measured 2-3x slower in training than two of its
    depthwise convs (k = 3, 5, 7): that conv made DBB on a PNASNet (7x7 / 5x5 / 3x3 separable convs)
    several times slower to train than ACB.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        per_group = self.in_channels // self.groups
        if input.device.type != "cpu" or self.out_channels != self.groups or per_group == 1 or self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        out = None
        for j in range(per_group):  # input channel c * per_group + j meets weight[c, j]
            part = F.conv2d(input[:, j::per_group], weight[:, j : j + 1], None, self.stride, self.padding, self.dilation, self.groups)
            out = part if out is None else out + part
        return out if bias is None else out + bias.reshape(1, -1, 1, 1)


class DiverseBranchBlock(nn.Module):
    """A kxk conv-BN trained as four diverse branches; ``fuse()`` gives one kxk conv (+ ``nonlinear``).

    Only ``padding == kernel_size // 2`` and ``dilation == 1`` are supported, as in the reference
    (which asserts the padding; DBB issue #32): the 1x1 branch must sample each window's centre.
    ``kernel_size`` must be odd (an even kernel has no centre for the 1x1 kernel, transform VI).
    ``kernel_size=1`` is accepted and fuses exactly, but degenerates (the 1x1 branch duplicates the
    main one, the avgpool is the identity): the paper applies DBB to kxk convs with k > 1 and the
    reference's ``convnet_utils`` leaves 1x1 convs plain.

    Depthwise convs (``groups == out_channels``) have no 1x1 branch and a pool-only average branch,
    which needs ``in_channels == out_channels`` (there is no conv to change the channel count).
    A depthwise conv with a channel multiplier (``groups == in_channels < out_channels``) takes the
    general path.

    Args:
        in_channels, out_channels, kernel_size, stride, groups: those of the kxk conv (and of the deploy conv).
        padding: ``None`` or ``kernel_size // 2``.
        dilation: must be 1.
        internal_channels_1x1_3x3: width of the 1x1-kxk branch's middle map. Default ``in_channels``
            (then the first conv is an :class:`IdentityBasedConv1x1`), ``2 * in_channels`` for depthwise
            convs (reference: 72.88 vs 72.71 top-1 on MobileNet). Must be divisible by ``groups``.
        nonlinear: applied after the sum (reference: ``nonlinear``); ``None`` means identity.
        single_init: call :meth:`single_init` (a contributed option, not the paper's default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        internal_channels_1x1_3x3: int | None = None,
        nonlinear: nn.Module | None = None,
        single_init: bool = False,
    ) -> None:
        super().__init__()
        check_conv_arguments(in_channels, out_channels, stride, groups, kernel_size, "the 1x1 branch must sit at the window centre")
        if padding is None:
            padding = kernel_size // 2
        if padding != kernel_size // 2:
            raise ValueError(f"DiverseBranchBlock supports only padding == kernel_size // 2 = {kernel_size // 2}, got {padding!r}")
        if dilation != 1:
            raise ValueError(f"DiverseBranchBlock supports only dilation=1 (the avgpool and BNAndPad branches are not dilated), got {dilation!r}")
        depthwise = groups >= out_channels
        if depthwise and in_channels != out_channels:
            raise ValueError(
                f"a depthwise DiverseBranchBlock (groups == out_channels == {out_channels}) needs in_channels == out_channels, got {in_channels}: "
                "its average branch is a bare pool"
            )
        if nonlinear is not None and not isinstance(nonlinear, nn.Module):
            raise ValueError(f"nonlinear must be an nn.Module or None (fuse() puts it in an nn.Sequential), got {nonlinear!r}")
        internal = internal_channels_1x1_3x3
        if internal is None:
            internal = 2 * in_channels if depthwise else in_channels
        if not isinstance(internal, int) or isinstance(internal, bool) or internal <= 0 or internal % groups:
            raise ValueError(f"internal_channels_1x1_3x3 must be a positive int divisible by groups ({groups}), got {internal!r}")

        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.groups = stride, padding, groups
        self.internal_channels = internal

        self.branch_kxk = ConvBN(in_channels, out_channels, kernel_size, stride, padding, groups=groups)
        # The 1x1 kernel samples the window centre: padding kernel_size // 2 - kernel_size // 2 = 0.
        self.branch_1x1 = None if depthwise else ConvBN(in_channels, out_channels, 1, stride, 0, groups=groups)

        if depthwise:
            # A zero-padded pool on x itself is transform V directly (count_include_pad divides by k^2 everywhere, like the conv).
            avg = OrderedDict(avg=nn.AvgPool2d(kernel_size, stride, padding, count_include_pad=True))
        else:
            avg = OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=False),
                bn=BNAndPad(padding, out_channels),
                avg=nn.AvgPool2d(kernel_size, stride, 0),  # the padding is already done, with BN values
            )
        avg["avgbn"] = nn.BatchNorm2d(out_channels)
        self.branch_avg = nn.Sequential(avg)

        first: nn.Module
        if internal == in_channels:
            first_name, first = "idconv1", IdentityBasedConv1x1(in_channels, groups)
        else:
            first_name, first = "conv1", nn.Conv2d(in_channels, internal, 1, groups=groups, bias=False)
        self.branch_1x1_kxk = nn.Sequential(
            OrderedDict(
                [
                    (first_name, first),
                    ("bn1", BNAndPad(padding, internal)),
                    ("conv2", GroupwiseConv2d(internal, out_channels, kernel_size, stride, 0, groups=groups, bias=False)),
                    ("bn2", nn.BatchNorm2d(out_channels)),
                ]
            )
        )
        self.nonlinear = nn.Identity() if nonlinear is None else nonlinear

        if single_init:
            self.single_init()

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch_kxk(x) + self.branch_avg(x) + self.branch_1x1_kxk(x)
        if self.branch_1x1 is not None:
            out = out + self.branch_1x1(x)
        return self.nonlinear(out)

    def get_equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The deploy conv's ``(kernel, bias)``: kernel ``(out, in / groups, k, k)``, bias ``(out,)``.

        Differentiable w.r.t. every branch parameter (usable for penalties or QAT on the equivalent kernel).
        """
        k, g = self.kernel_size, self.groups
        branches = [self.branch_kxk.get_equivalent_kernel_bias()]  # I

        if self.branch_1x1 is not None:
            kernel_1x1, bias_1x1 = self.branch_1x1.get_equivalent_kernel_bias()  # I
            branches.append((pad_kernel(kernel_1x1, k), bias_1x1))  # VI

        avgbn = self.branch_avg.avgbn
        pool = avgpool_kernel(self.out_channels, k, g, dtype=avgbn.running_mean.dtype, device=avgbn.running_mean.device)  # V
        avg_kernel, avg_bias = fuse_conv_bn(pool, avgbn)  # I
        if hasattr(self.branch_avg, "conv"):
            first = fuse_conv_bn(self.branch_avg.conv.weight, self.branch_avg.bn.bn)  # I
            avg_kernel, avg_bias = merge_1x1_kxk(*first, avg_kernel, avg_bias, groups=g)  # III (IV over groups)
        branches.append((avg_kernel, avg_bias))

        seq = self.branch_1x1_kxk
        first_kernel = seq.idconv1.get_actual_kernel() if hasattr(seq, "idconv1") else seq.conv1.weight
        first = fuse_conv_bn(first_kernel, seq.bn1.bn)  # I
        second = fuse_conv_bn(seq.conv2.weight, seq.bn2)  # I
        branches.append(merge_1x1_kxk(*first, *second, groups=g))  # III (IV over groups)

        return add_branches(*branches)  # II

    def fuse(self) -> nn.Module:
        """The deploy module: ``Conv2d(kxk, bias=True)``, or ``Sequential(conv=..., nonlinear=...)`` with a nonlinearity.

        The nonlinearity is deep-copied, so the deploy module shares nothing with the block.
        """
        kernel, bias = self.get_equivalent_kernel_bias()
        conv = conv_with_kernel(self.branch_kxk.conv, kernel.detach(), bias.detach())
        if isinstance(self.nonlinear, nn.Identity):
            return conv
        return nn.Sequential(OrderedDict(conv=conv, nonlinear=copy.deepcopy(self.nonlinear)))

    def _final_bns(self) -> list[nn.BatchNorm2d]:
        """The BN closing each branch, main branch first."""
        bns = [self.branch_kxk.bn, self.branch_avg.avgbn, self.branch_1x1_kxk.bn2]
        if self.branch_1x1 is not None:
            bns.append(self.branch_1x1.bn)
        return bns

    def init_gamma(self, value: float) -> None:
        """Set gamma of the BN closing every branch to ``value``."""
        for bn in self._final_bns():
            nn.init.constant_(bn.weight, value)

    def single_init(self) -> None:
        """Main-branch gamma 1, the others 0: at initialisation (betas 0) the block equals its kxk conv-BN."""
        self.init_gamma(0.0)
        nn.init.constant_(self.branch_kxk.bn.weight, 1.0)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, internal_channels={self.internal_channels}"
        )


# ------------------------------------------------------------------ official released weights

#: Diverse Branch Block (DingXiaoH/DiverseBranchBlock ``diversebranchblock.py``); names inside the
#: branches (``conv``, ``bn``, ``avg``, ``avgbn``, ``idconv1``, ``conv1``, ``bn1``, ``conv2``, ``bn2``)
#: are the official ones; the deploy-time ``dbb_reparam`` is the conv that replaces the block after ``fuse()``.
OFFICIAL_SEGMENTS: dict[str, str | None] = {
    "dbb_origin": "branch_kxk",
    "dbb_1x1": "branch_1x1",
    "dbb_avg": "branch_avg",
    "dbb_1x1_kxk": "branch_1x1_kxk",
    "dbb_reparam": None,
}

_BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _official_dbb_key(key: str) -> str:
    key = rename_segments(key, OFFICIAL_SEGMENTS)
    # Before DBB PR#10, BNAndPadLayer subclassed BatchNorm2d, so its statistics sat one level up
    # (``dbb_avg.bn.weight``); ours wraps a BatchNorm2d (``branch_avg.bn.bn.weight``).
    parts = key.split(".")
    if len(parts) >= 3 and parts[-1] in _BN_LEAVES and (parts[-3], parts[-2]) in (("branch_avg", "bn"), ("branch_1x1_kxk", "bn1")):
        parts.insert(len(parts) - 1, "bn")
    return ".".join(parts)


@register_official_key_map("dbb")
def official_dbb_key_map(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official DBB weights (train-time or deploy-time, before and after DBB PR#10) -> :class:`DiverseBranchBlock` names."""
    return rename_keys(state, _official_dbb_key, "dbb")
