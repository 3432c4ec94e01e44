"""Structural re-parameterization as pure tensor functions.

Every training-time block in litzoo reduces to a single convolution through a handful of linear
transforms (numbered as in Ding et al., "Diverse Branch Block", CVPR 2021, Sec. 3):

* I    conv followed by eval-mode BatchNorm  -> one conv with bias        (:func:`fuse_conv_bn`)
* II   parallel branches with aligned supports -> sum of kernels/biases    (:func:`add_branches`)
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
    "conv_with_kernel",
    "fuse_conv_bn",
    "identity_kernel",
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
