"""The RepMLP block (Ding et al., "RepMLPNet: Hierarchical Vision MLP with Re-parameterized Locality", CVPR 2022).

The feature map is cut into non-overlapping ``h x w`` partitions. Three perceptrons process it:

* Global Perceptron: an SE-like gate, ``sigmoid(fc2(relu(fc1(avgpool(x)))))``, one scalar per
  channel, multiplies the block's output;
* Channel / Partition Perceptron ``fc3``: one fully-connected layer over the ``h*w`` pixels of a
  partition, followed by BN. Channels are split into ``S`` "sharesets" (channel ``c`` uses shareset
  ``c mod S``); a shareset's FC is shared by its channels and by all partitions, so ``fc3`` is a
  grouped 1x1 conv of ``S*h*w`` features with ``S`` groups;
* Local Perceptron: conv-BN branches with kernels ``reparam_conv_k`` (e.g. 1 and 3), one kernel
  per shareset (``groups=S``), run inside each partition with zero padding ``k // 2``.

Locality Injection: a conv inside a zero-padded ``h x w`` partition is a linear map of
the flattened partition, i.e. an FC (:func:`conv_to_fc`). After training the BN-fused conv
branches are added into the BN-fused ``fc3``, and the deploy block (:class:`RepMLPBlockDeploy`)
is FC-only.

Reference implementation: DingXiaoH/RepMLP ``repmlpnet.py`` (``RepMLPBlock``, ``GlobalPerceptron``,
``get_equivalent_fc3``, ``_convert_conv_to_fc``). Sub-module names (``gp.fc1``, ``gp.fc2``,
``fc3``, ``fc3_bn``, ``repconv{k}.conv``, ``repconv{k}.bn``) are the official ones, so the
authors' state dicts load unchanged, training-time and deploy-time.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.reparam.conv_bn import ConvBN
from litzoo.framework.reparam.fusion import add_branches, fuse_conv_bn, pad_kernel

__all__ = ["GlobalPerceptron", "RepMLPBlock", "RepMLPBlockDeploy", "conv_to_fc"]


def conv_to_fc(kernel: Tensor, bias: Tensor | None, h: int, w: int, groups: int = 1) -> tuple[Tensor, Tensor]:
    """The FC equal to a stride-1 conv applied inside an ``h x w`` partition with zero padding ``k // 2``.

    Features are flattened channel-major, ``index = c * h * w + y * w + x``. The FC of group ``g``
    maps that group's ``c_in = in_channels / groups`` input channels to its ``c_out`` output
    channels; like a grouped 1x1 conv, the rows of all groups are stacked. Computed through the
    identity basis, as in the paper's Locality Injection: convolving the ``c_in*h*w`` unit partitions gives, one
    column each, the FC matrix. Differentiable w.r.t. ``kernel`` and ``bias``.

    Args:
        kernel: conv weight ``(out_channels, in_channels / groups, kh, kw)``, odd ``kh``, ``kw``.
        bias: conv bias ``(out_channels,)`` or ``None``.
        h: partition height.
        w: partition width.
        groups: conv groups (RepMLP: the number of sharesets, one channel per group).

    Returns:
        ``(weight, bias)``: weight ``(out_channels * h * w, in_channels / groups * h * w)`` (reshape
        to ``(..., 1, 1)`` for a grouped 1x1 conv), bias ``(out_channels * h * w,)``.
    """
    if kernel.dim() != 4:
        raise ValueError(f"kernel must be 4-D (out, in/groups, kh, kw), got shape {tuple(kernel.shape)}")
    out_channels, in_per_group, kh, kw = kernel.shape
    if h < 1 or w < 1:
        raise ValueError(f"partition size must be positive, got h={h}, w={w}")
    if groups < 1 or out_channels % groups:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv_to_fc needs odd kernel sizes (padding k // 2 keeps the partition size), got {kh}x{kw}")
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},), got {tuple(bias.shape)}")
    features = in_per_group * h * w
    # basis[b] is the b-th unit partition of one group, repeated in every group: (features, groups * c_in, h, w)
    basis = torch.eye(features, dtype=kernel.dtype, device=kernel.device).reshape(features, in_per_group, h, w).repeat(1, groups, 1, 1)
    responses = F.conv2d(basis, kernel, padding=(kh // 2, kw // 2), groups=groups)  # (features, out_channels, h, w)
    weight = responses.reshape(features, out_channels * h * w).t()  # row (channel, y, x), column b
    if bias is None:
        bias = torch.zeros(out_channels, dtype=kernel.dtype, device=kernel.device)
    return weight, bias.repeat_interleave(h * w)


def _partition_fc(rows: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Apply ``S`` FCs to rows ``(M, S, F)``: ``weight`` is a grouped 1x1 conv weight ``(S*F, F[, 1, 1])``.

    Equals ``F.conv2d(rows.reshape(M, S*F, 1, 1), weight, bias, groups=S)``, as a batched GEMM.
    """
    s, features = rows.shape[1], rows.shape[2]
    out = torch.einsum("sij,msj->msi", weight.reshape(s, features, features), rows)  # (M, S, F)
    return out if bias is None else out + bias.reshape(s, features)


class GlobalPerceptron(nn.Module):
    """Channel gate of RepMLP: ``sigmoid(fc2(relu(fc1(avgpool(x)))))`` of shape ``(N, C, 1, 1)``.

    ``fc1``/``fc2`` are 1x1 convs with bias, as in the official code (an SE block, Hu et al. 2018).
    """

    def __init__(self, input_channels: int, internal_neurons: int) -> None:
        super().__init__()
        if input_channels < 1 or internal_neurons < 1:
            raise ValueError(f"GlobalPerceptron needs positive sizes, got input_channels={input_channels}, internal_neurons={internal_neurons}")
        self.input_channels = input_channels
        self.fc1 = nn.Conv2d(input_channels, internal_neurons, kernel_size=1, bias=True)
        self.fc2 = nn.Conv2d(internal_neurons, input_channels, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x))))


class _PartitionMLP(nn.Module, abc.ABC):
    """What the training-time and deploy-time RepMLP blocks share: arguments, Global Perceptron, partitioning.

    ``forward`` cuts ``(N, C, H, W)`` into rows ``(M, S, h, w)``, ``M = N * H/h * W/w * C/S``: the
    ``S`` consecutive channels of one partition (channel ``c`` meets shareset ``c mod S``), the
    layout of the official ``partition()`` + ``reshape``. Subclasses map rows to rows (:meth:`mix`).
    """

    def __init__(self, in_channels: int, out_channels: int, h: int, w: int, globalperceptron_reduce: int, num_sharesets: int) -> None:
        super().__init__()
        if in_channels < 1 or in_channels != out_channels:
            raise ValueError(f"RepMLPBlock needs in_channels == out_channels > 0 (its output is channel-wise gated), got {in_channels} and {out_channels}")
        if h < 1 or w < 1:
            raise ValueError(f"partition size must be positive, got h={h}, w={w}")
        if num_sharesets < 1 or in_channels % num_sharesets:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by num_sharesets ({num_sharesets})")
        if globalperceptron_reduce < 1 or in_channels // globalperceptron_reduce < 1:
            raise ValueError(f"globalperceptron_reduce ({globalperceptron_reduce}) must be in [1, in_channels={in_channels}]: the hidden layer needs a neuron")
        self.in_channels, self.out_channels, self.h, self.w = in_channels, out_channels, h, w
        self.num_sharesets, self.globalperceptron_reduce = num_sharesets, globalperceptron_reduce
        self.gp = GlobalPerceptron(in_channels, in_channels // globalperceptron_reduce)

    @abc.abstractmethod
    def mix(self, partitions: Tensor, rows: Tensor) -> Tensor:
        """``(M, S, h, w)`` partitions (and the same as ``(M, S, h*w)`` rows) -> ``(M, S, h, w)``."""

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        if c != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} channels, got {c}")
        if height % self.h or width % self.w:
            raise ValueError(
                f"{type(self).__name__}: input size {height}x{width} is not divisible by the partition size h x w = {self.h}x{self.w}; "
                "RepMLP fixes the resolution (choose image_size / hs / ws accordingly)"
            )
        h_parts, w_parts = height // self.h, width // self.w
        gate = self.gp(x)  # (N, C, 1, 1)
        # (N, C, H, W) -> (N, h_parts, w_parts, C, h, w) -> (M, S, h, w)
        partitions = x.reshape(n, c, h_parts, self.h, w_parts, self.w).permute(0, 2, 4, 1, 3, 5).reshape(-1, self.num_sharesets, self.h, self.w)
        out = self.mix(partitions, partitions.reshape(-1, self.num_sharesets, self.h * self.w))  # (M, S, h, w)
        out = out.reshape(n, h_parts, w_parts, c, self.h, self.w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)
        return out * gate

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, h={self.h}, w={self.w}, num_sharesets={self.num_sharesets}"


class RepMLPBlock(_PartitionMLP):
    """RepMLP block: Global Perceptron x (partition FC + BN + local conv-BN branches); ``fuse()`` injects locality.

    Training time: ``out = gp(x) * (BN_S(fc3(p)) + sum_k BN_S(conv_k(p)))`` on the partitions ``p``
    of ``x``. ``fuse()`` returns a :class:`RepMLPBlockDeploy`, ``out = gp(x) * fc3'(p)`` with one FC
    with bias, equal to this block in eval mode (BN uses running statistics).

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels; must equal ``in_channels`` (as in the official block).
        h: partition height; the input height must be a multiple of it.
        w: partition width; the input width must be a multiple of it.
        reparam_conv_k: odd kernel sizes of the Local Perceptron branches (RepMLPNet: ``(1, 3)``);
            ``None`` or empty = no branch.
        globalperceptron_reduce: channel reduction of the Global Perceptron's hidden layer.
        num_sharesets: ``S``, the number of distinct partition FCs; ``C`` must be divisible by it.
    """

    #: Partitions of at most this many pixels run the Local Perceptron's convs as their equivalent FCs
    #: (:func:`conv_to_fc`, exact): a conv over millions of tiny partitions is slow, a GEMM is not
    #: (4-7x faster on CPU up to 28x28 partitions; the conv wins at 56x56). Set to 0 to always convolve.
    local_fc_max_pixels: int = 1024

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        h: int,
        w: int,
        reparam_conv_k: Sequence[int] | None = None,
        globalperceptron_reduce: int = 4,
        num_sharesets: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, h, w, globalperceptron_reduce, num_sharesets)
        kernels = tuple(int(k) for k in (reparam_conv_k or ()))
        if any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"reparam_conv_k must hold odd positive kernel sizes (padding k // 2 keeps the partition size), got {list(kernels)}")
        if len(set(kernels)) != len(kernels):
            raise ValueError(f"reparam_conv_k has repeated kernel sizes: {list(kernels)}")
        self.reparam_conv_k = kernels
        features = num_sharesets * h * w
        # fc3 holds S FCs of (h*w) x (h*w) as a grouped 1x1 conv: weight (S*h*w, h*w, 1, 1)
        self.fc3 = nn.Conv2d(features, features, kernel_size=1, bias=False, groups=num_sharesets)
        self.fc3_bn = nn.BatchNorm2d(num_sharesets)
        for k in kernels:
            self.add_module(f"repconv{k}", ConvBN(num_sharesets, num_sharesets, k, padding=k // 2, groups=num_sharesets))

    def mix(self, partitions: Tensor, rows: Tensor) -> Tensor:
        s, h, w = self.num_sharesets, self.h, self.w
        # Channel / Partition Perceptron: one FC per shareset over the h*w pixels, then BN over S
        out = self.fc3_bn(_partition_fc(rows, self.fc3.weight).reshape(-1, s, h, w))  # (M, S, h, w)
        # Local Perceptron: conv-BN branches inside each zero-padded partition
        for k in self.reparam_conv_k:
            branch = getattr(self, f"repconv{k}")
            if h * w <= self.local_fc_max_pixels:
                # the same conv as an FC (exact): one GEMM instead of a conv over M tiny images
                conv_out = _partition_fc(rows, conv_to_fc(branch.conv.weight, None, h, w, groups=s)[0]).reshape(-1, s, h, w)
            else:
                conv_out = branch.conv(partitions)
            out = out + branch.bn(conv_out)
        return out

    def get_equivalent_fc3(self) -> tuple[Tensor, Tensor]:
        """Weight ``(S*h*w, h*w, 1, 1)`` and bias ``(S*h*w,)`` of the deploy ``fc3``; differentiable.

        ``fc3`` + BN (BN channel ``s`` scales the ``h*w`` rows of shareset ``s``), plus every
        BN-fused conv branch padded to the largest kernel and turned into an FC (:func:`conv_to_fc`).
        """
        s, hw = self.num_sharesets, self.h * self.w
        # Viewed as (S, h*w*h*w, 1, 1), fc3's rows of shareset s form "output channel" s of BN_S.
        weight, bias = fuse_conv_bn(self.fc3.weight.reshape(s, hw * hw, 1, 1), self.fc3_bn)
        weight, bias = weight.reshape(s * hw, hw), bias.repeat_interleave(hw)
        if self.reparam_conv_k:
            largest = max(self.reparam_conv_k)
            branches = []
            for k in self.reparam_conv_k:
                kernel, branch_bias = getattr(self, f"repconv{k}").get_equivalent_kernel_bias()
                branches.append((pad_kernel(kernel, largest), branch_bias))
            kernel, conv_bias = add_branches(*branches)
            local_weight, local_bias = conv_to_fc(kernel, conv_bias, self.h, self.w, groups=s)
            weight, bias = weight + local_weight, bias + local_bias
        return weight.reshape(s * hw, hw, 1, 1), bias

    def fuse(self) -> RepMLPBlockDeploy:
        """The deploy block (locality injection), whose state-dict keys equal the official block's
        after ``local_inject()``: ``gp.*``, ``fc3.weight``, ``fc3.bias``."""
        weight, bias = self.get_equivalent_fc3()
        fc3 = self.fc3.weight
        deploy = RepMLPBlockDeploy(self.in_channels, self.out_channels, self.h, self.w, self.globalperceptron_reduce, self.num_sharesets)
        deploy = deploy.to(device=fc3.device, dtype=fc3.dtype)
        deploy.gp.load_state_dict(self.gp.state_dict())
        with torch.no_grad():
            deploy.fc3.weight.copy_(weight)
            deploy.fc3.bias.copy_(bias)
        return deploy

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", reparam_conv_k={list(self.reparam_conv_k)}" if self.reparam_conv_k else "")


class RepMLPBlockDeploy(_PartitionMLP):
    """The inference-time RepMLP block: ``gp(x) * fc3(p)``, one FC with bias per shareset, no BN, no conv.

    What :meth:`RepMLPBlock.fuse` returns; build it directly to load deploy weights (the official
    ``RepMLPBlock(..., deploy=True)``). Arguments as :class:`RepMLPBlock`, without the kernels.
    """

    def __init__(self, in_channels: int, out_channels: int, h: int, w: int, globalperceptron_reduce: int = 4, num_sharesets: int = 1) -> None:
        super().__init__(in_channels, out_channels, h, w, globalperceptron_reduce, num_sharesets)
        features = num_sharesets * h * w
        self.fc3 = nn.Conv2d(features, features, kernel_size=1, bias=True, groups=num_sharesets)

    def mix(self, partitions: Tensor, rows: Tensor) -> Tensor:
        return _partition_fc(rows, self.fc3.weight, self.fc3.bias).reshape(-1, self.num_sharesets, self.h, self.w)
