"""Structural re-parameterization as pure tensor functions.

Every training-time block in litzoo reduces to a single convolution through a handful of linear
transforms (numbered as in Ding et al., "Diverse Branch Block", CVPR 2021, Sec. 3):

* I    conv followed by eval-mode BatchNorm  -> one conv with bias        (:func:`fuse_conv_bn`)
* II   parallel branches with aligned supports -> sum of kernels/biases    (:func:`add_branches`)
* III  a 1x1 conv followed by a kxk conv      -> one kxk conv (groups aware) (:func:`merge_1x1_kxk`)
* IV   branches concatenated along channels   -> concatenated kernels/biases (:func:`concat_branches`)
* V    average pooling                        -> a fixed conv kernel         (:func:`avgpool_kernel`)
* VI   a smaller kernel inside a larger one   -> centred zero padding      (:func:`pad_kernel`)
* an identity shortcut as a conv kernel (groups aware), RepVGG Sec. 3.3   (:func:`identity_kernel`)

The functions are differentiable (they only use torch ops on the parameters), so a block's
``get_equivalent_kernel_bias()`` can be used inside training, e.g. for penalties or QAT.
Reference implementation: DingXiaoH/RepVGG ``repvgg.py`` (``_fuse_bn_tensor``) and
DingXiaoH/DiverseBranchBlock ``dbb_transforms.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "add_branches",
    "avgpool_kernel",
    "concat_branches",
    "conv_with_kernel",
    "fuse_conv_bn",
    "identity_kernel",
    "merge_1x1_kxk",
    "pad_kernel",
]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def fuse_conv_bn(kernel: Tensor, bn: nn.BatchNorm2d, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the conv kernel that precedes it (transform I).

    ``BN(W * x + b) = (W t) * x + beta + (b - mu) t`` with ``t = gamma / sqrt(var + eps)``, using the
    BN's own ``eps``. Only the running statistics are used: the result equals the block in
    ``eval()`` mode, whatever mode the module is in when this is called.

    Args:
        kernel: conv weight, ``(out_channels, in_channels / groups, kh, kw)``.
        bn: the BatchNorm2d over the conv's ``out_channels``; must track running statistics.
        bias: the conv's bias (``None`` for ``bias=False``).

    Returns:
        ``(kernel, bias)`` of the single equivalent conv.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fuse a BatchNorm2d with track_running_stats=False: it has no running statistics")
    if bn.num_features != kernel.shape[0]:
        raise ValueError(f"BatchNorm2d has {bn.num_features} features but the kernel has {kernel.shape[0]} output channels")
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    t = gamma / std
    conv_bias = bias if bias is not None else torch.zeros_like(std)
    return kernel * t.reshape(-1, 1, 1, 1), beta + (conv_bias - bn.running_mean) * t


def pad_kernel(kernel: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """Zero-pad ``kernel`` symmetrically to ``kernel_size`` (transform VI).

    The smaller kernel must sit at the centre of the larger one, which holds when each branch's
    padding equals ``padding_large - (k_large - k_small) // 2``. ``F.pad`` takes the last dimension
    (width) first; padding in ``[H, H, W, W]`` order is a known bug for rectangular kernels
    (DiverseBranchBlock issue #26), so the order here is explicit.
    """
    target_h, target_w = _pair(kernel_size)
    kh, kw = kernel.shape[-2:]
    dh, dw = target_h - kh, target_w - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel inside {target_h}x{target_w}: the size differences must be even and >= 0")
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def identity_kernel(
    channels: int,
    groups: int = 1,
    kernel_size: int | tuple[int, int] = 3,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The conv kernel of ``y = x`` on ``channels`` channels with ``groups`` groups.

    Shape ``(channels, channels // groups, kh, kw)`` with ``K[i, i % (channels // groups), kh//2, kw//2] = 1``:
    output channel ``i`` lives in group ``i // (channels/groups)`` and sees that group's inputs at
    local index ``i % (channels/groups)``.
    """
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    kh, kw = _pair(kernel_size)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"an identity kernel needs odd sizes to have a centre, got {kh}x{kw}")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=dtype, device=device)
    index = torch.arange(channels, device=device)
    kernel[index, index % per_group, kh // 2, kw // 2] = 1
    return kernel


def add_branches(*branches: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Sum parallel ``(kernel, bias)`` branches that sample the same input positions (transform II)."""
    if not branches:
        raise ValueError("add_branches needs at least one branch")
    shape = branches[0][0].shape
    for kernel, _ in branches[1:]:
        if kernel.shape != shape:
            raise ValueError(f"branch kernels must have one shape to be added, got {tuple(shape)} and {tuple(kernel.shape)}; pad them first")
    kernel = torch.stack([k for k, _ in branches]).sum(0)
    bias = torch.stack([b for _, b in branches]).sum(0)
    return kernel, bias


def merge_1x1_kxk(
    kernel_1x1: Tensor,
    bias_1x1: Tensor,
    kernel_kxk: Tensor,
    bias_kxk: Tensor,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """Merge a 1x1 conv followed by a kxk conv into one kxk conv (transform III).

    For ``y = K2 * (K1 * x + b1) + b2`` with ``K1`` 1x1 (``(M, C/g, 1, 1)``) and ``K2`` kxk
    (``(O, M/g, kh, kw)``), both with ``groups = g``, the merged conv is ``K[o, c] = sum_m K2[o, m] K1[m, c]``
    and ``b[o] = b2[o] + sum_{m,u,v} K2[o, m, u, v] b1[m]``, summed within the group of ``o``.

    Exactness at the borders requires the kxk conv to see ``b1`` (not 0) where the merged conv sees
    the zero padding of ``x``: the intermediate map must be padded with the 1x1 branch's output for
    zero input (DBB's ``BNAndPad``), and the kxk conv itself must use padding 0. With plain zero
    padding the merge is wrong on a border band (DiverseBranchBlock issues #9, #16, #29).

    Groups: group ``j`` of the result only involves group ``j`` of both kernels; each group's merge
    is one small matrix product, batched here over groups, and the per-group results are stacked
    along the output channels (transform IV over the ``g`` slices).

    Args:
        kernel_1x1: ``(M, C / groups, 1, 1)``, the first conv (after its BN is folded, transform I).
        bias_1x1: ``(M,)``.
        kernel_kxk: ``(O, M / groups, kh, kw)``, the second conv (BN folded).
        bias_kxk: ``(O,)``.
        groups: groups of both convs.

    Returns:
        ``(kernel, bias)`` with kernel ``(O, C / groups, kh, kw)`` and bias ``(O,)``.
    """
    if kernel_1x1.dim() != 4 or kernel_1x1.shape[-2:] != (1, 1):
        raise ValueError(f"the first kernel must be 1x1, got shape {tuple(kernel_1x1.shape)}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    mid, in_per_group = kernel_1x1.shape[:2]
    out, mid_per_group, kh, kw = kernel_kxk.shape
    if mid % groups or out % groups:
        raise ValueError(f"the channels of both kernels ({mid}, {out}) must be divisible by groups ({groups})")
    if mid_per_group * groups != mid:
        raise ValueError(
            f"the kxk kernel expects {mid_per_group * groups} input channels with groups={groups}, but the 1x1 kernel has {mid} outputs"
        )
    if bias_1x1.shape != (mid,) or bias_kxk.shape != (out,):
        raise ValueError(f"biases must have shapes ({mid},) and ({out},), got {tuple(bias_1x1.shape)} and {tuple(bias_kxk.shape)}")
    # Per-group views: K1 (g, M/g, C/g), K2 (g, O/g, M/g, kh, kw), b1 (g, M/g).
    k1 = kernel_1x1.reshape(groups, mid_per_group, in_per_group)
    k2 = kernel_kxk.reshape(groups, out // groups, mid_per_group, kh, kw)
    b1 = bias_1x1.reshape(groups, mid_per_group)
    kernel = torch.einsum("gomhw,gmc->gochw", k2, k1)  # (g, O/g, C/g, kh, kw)
    # b1 is constant over space (the padding carries it too), so each tap of K2 sees it once.
    bias = torch.einsum("gomhw,gm->go", k2, b1)  # (g, O/g)
    # Stacking the group slices along the output channels is a reshape (group j owns outputs j*O/g ...).
    return kernel.reshape(out, in_per_group, kh, kw), bias.reshape(out) + bias_kxk


def concat_branches(*branches: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Concatenate ``(kernel, bias)`` branches along the output channels (transform IV).

    Convs with the same input, stride, padding and kernel size whose outputs are concatenated in
    depth equal one conv whose kernel and bias are the concatenations, in the same order.
    """
    if not branches:
        raise ValueError("concat_branches needs at least one branch")
    shape = branches[0][0].shape[1:]
    for kernel, bias in branches:
        if kernel.shape[1:] != shape:
            raise ValueError(f"kernels must agree in all but the output dimension, got {tuple(shape)} and {tuple(kernel.shape[1:])}")
        if bias.shape != kernel.shape[:1]:
            raise ValueError(f"a bias of shape {tuple(bias.shape)} does not match a kernel with {kernel.shape[0]} output channels")
    return torch.cat([k for k, _ in branches]), torch.cat([b for _, b in branches])


def avgpool_kernel(
    channels: int,
    kernel_size: int | tuple[int, int],
    groups: int = 1,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The conv kernel of ``AvgPool2d(kernel_size)`` on ``channels`` channels (transform V).

    Shape ``(channels, channels // groups, kh, kw)`` with ``K[i, i % (channels // groups)] = 1 / (kh kw)``
    and zeros elsewhere: output channel ``i`` averages its own input channel, which sits at local
    index ``i % (channels / groups)`` of its group. With the pool's stride and padding, the conv
    equals the pool only for ``count_include_pad=True`` (PyTorch's default): the conv always divides
    by the full window.
    """
    if channels <= 0 or groups < 1 or channels % groups:
        raise ValueError(f"channels ({channels}) must be positive and divisible by groups ({groups})")
    kh, kw = _pair(kernel_size)
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be positive, got {kh}x{kw}")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kh, kw, dtype=dtype, device=device)
    index = torch.arange(channels, device=device)
    kernel[index, index % per_group] = 1.0 / (kh * kw)
    return kernel


def conv_with_kernel(reference: nn.Conv2d, kernel: Tensor, bias: Tensor) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) holding ``kernel`` and ``bias``, with the geometry of ``reference``.

    ``reference`` supplies stride, padding, dilation, groups and padding mode: the conv of the
    branch whose support is the largest.
    """
    out_channels, in_per_group, kh, kw = kernel.shape
    conv = nn.Conv2d(
        in_channels=in_per_group * reference.groups,
        out_channels=out_channels,
        kernel_size=(kh, kw),
        stride=reference.stride,
        padding=reference.padding,
        dilation=reference.dilation,
        groups=reference.groups,
        bias=True,
        padding_mode=reference.padding_mode,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
    return conv
