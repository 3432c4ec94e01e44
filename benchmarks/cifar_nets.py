"""Public CIFAR networks (32x32 input, 10 classes) in plain PyTorch, for the pruning benchmarks.

The layouts follow kuangliu/pytorch-cifar (``models/efficientnet.py``, ``regnet.py``, ``dpn.py``,
``mobilenetv2.py``), the CIFAR versions most pruning papers and issue reports use; the code is written
here (widths, depths, groups, squeeze-excitation and the dual-path split are the reference's):

* :func:`efficientnet_b0`: Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
  Networks" (ICML 2019). Stride-1 3x3 stem of 32 channels; seven stages of MBConv blocks (1x1
  expansion unless the ratio is 1, depthwise kxk, squeeze-excitation with ``int(in * 0.25)``
  channels, 1x1 projection, identity shortcut when the shape is kept), swish activations; no 1280-wide
  head conv (the reference has none); dropout 0.2 before the classifier. The reference's drop-connect
  rate is always 0 (its block counter is never incremented), so there is none here.
* :func:`regnetx_200mf`: Radosavovic et al., "Designing Network Design Spaces" (CVPR 2020). Stride-1
  3x3 stem of 64 channels; stages of widths 24, 56, 152, 368, depths 1, 1, 4, 7, strides 1, 1, 2, 2;
  X blocks (1x1, 3x3 grouped with 8 channels per group, 1x1; bottleneck ratio 1; a 1x1 conv-BN
  shortcut where the shape changes).
* :func:`dpn26`: Chen et al., "Dual Path Networks" (NeurIPS 2017). Stride-1 3x3 stem of 64 channels;
  four stages of two bottlenecks (1x1, 3x3 with 32 groups, 1x1 to ``d + k`` channels); the first ``d``
  channels are added to the shortcut's (the residual path), the last ``k`` are concatenated after the
  shortcut's other channels (the densely connected path).
* :func:`mobilenet_v2`: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR
  2018), with the reference's CIFAR strides (stem and second stage at stride 1); a 1x1 conv-BN shortcut
  where a stride-1 block changes width.

ResNet-18 comes from :class:`litzoo.modules.resnet.ResNet` (``stem="cifar"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.modules.resnet import ResNet


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """A bias-free conv with "same" padding followed by its BatchNorm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class SqueezeExcitation(nn.Module):
    """``x * sigmoid(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs (with biases) as the two layers."""

    def __init__(self, channels: int, squeezed: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.act = activation()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))).sigmoid()


# ----------------------------------------------------------------------------- EfficientNet-B0
class MBConv(nn.Module):
    """EfficientNet's block: expansion (skipped at ratio 1), depthwise, squeeze-excitation, projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expansion: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = expansion * in_channels
        self.expand = nn.Sequential(*conv_bn(in_channels, hidden, 1), nn.SiLU()) if expansion != 1 else nn.Identity()
        self.depthwise = nn.Sequential(*conv_bn(hidden, hidden, kernel_size, stride, groups=hidden), nn.SiLU())
        self.se = SqueezeExcitation(hidden, int(in_channels * se_ratio), nn.SiLU)  # squeezed from the block's input width
        self.project = conv_bn(hidden, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.residual else out


class EfficientNet(nn.Module):
    """EfficientNet for 32x32 inputs; ``stages``: (expansion, out channels, blocks, kernel size, stride) per stage."""

    def __init__(self, stages: list[tuple[int, int, int, int, int]], num_classes: int = 10, stem: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, stem, 3), nn.SiLU())
        blocks, width = [], stem
        for expansion, out_channels, count, kernel_size, stride in stages:
            for index in range(count):
                blocks.append(MBConv(width, out_channels, kernel_size, stride if index == 0 else 1, expansion))
                width = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)
        return self.linear(self.dropout(out))


def efficientnet_b0(num_classes: int = 10) -> EfficientNet:
    return EfficientNet(
        [(1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2), (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1)],
        num_classes,
    )


# ----------------------------------------------------------------------------- RegNetX-200MF
class XBlock(nn.Module):
    """RegNet's X block: 1x1, grouped 3x3, 1x1 (conv-BN each), plus an identity or 1x1 conv-BN shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, group_width: int, bottleneck_ratio: float = 1.0) -> None:
        super().__init__()
        inner = int(round(out_channels * bottleneck_ratio))
        self.conv1 = nn.Sequential(*conv_bn(in_channels, inner, 1), nn.ReLU())
        self.conv2 = nn.Sequential(*conv_bn(inner, inner, 3, stride, groups=inner // group_width), nn.ReLU())
        self.conv3 = conv_bn(inner, out_channels, 1)
        self.shortcut = conv_bn(in_channels, out_channels, 1, stride) if stride != 1 or in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class RegNet(nn.Module):
    def __init__(self, depths: list[int], widths: list[int], strides: list[int], group_width: int, num_classes: int = 10, stem: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, stem, 3), nn.ReLU())
        stages, width = [], stem
        for depth, out_channels, stride in zip(depths, widths, strides, strict=True):
            blocks = []
            for index in range(depth):
                blocks.append(XBlock(width, out_channels, stride if index == 0 else 1, group_width))
                width = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1))


def regnetx_200mf(num_classes: int = 10) -> RegNet:
    return RegNet([1, 1, 4, 7], [24, 56, 152, 368], [1, 1, 2, 2], group_width=8, num_classes=num_classes)


# ----------------------------------------------------------------------------- DPN26
class DualPathBlock(nn.Module):
    """DPN's bottleneck: its ``out + dense`` output channels are split, the first ``out`` added to the
    shortcut's first ``out`` (residual path), the last ``dense`` appended after the shortcut's others (dense path)."""

    def __init__(self, in_channels: int, inner: int, out: int, dense: int, stride: int, first: bool, groups: int = 32) -> None:
        super().__init__()
        self.out = out
        self.conv1 = nn.Sequential(*conv_bn(in_channels, inner, 1), nn.ReLU())
        self.conv2 = nn.Sequential(*conv_bn(inner, inner, 3, stride, groups=groups), nn.ReLU())
        self.conv3 = conv_bn(inner, out + dense, 1)
        self.shortcut = conv_bn(in_channels, out + dense, 1, stride) if first else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        new, old = self.conv3(self.conv2(self.conv1(x))), self.shortcut(x)
        d = self.out
        return F.relu(torch.cat([old[:, :d] + new[:, :d], old[:, d:], new[:, d:]], dim=1))


class DPN(nn.Module):
    def __init__(self, inner: list[int], out: list[int], blocks: list[int], dense: list[int], num_classes: int = 10, stem: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, stem, 3), nn.ReLU())
        stages, width = [], stem
        for stage, (w, o, n, d) in enumerate(zip(inner, out, blocks, dense, strict=True)):
            layers = []
            for index in range(n):
                layers.append(DualPathBlock(width, w, o, d, (1 if stage == 0 else 2) if index == 0 else 1, first=index == 0))
                width = o + (index + 2) * d  # the dense path grows by d channels per block
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.avg_pool2d(self.stages(self.stem(x)), 4).flatten(1))


def dpn26(num_classes: int = 10) -> DPN:
    return DPN([96, 192, 384, 768], [256, 512, 1024, 2048], [2, 2, 2, 2], [16, 32, 24, 128], num_classes)


# ----------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, depthwise 3x3 (ReLU after both), linear 1x1 projection; a shortcut at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * in_channels
        self.expand = nn.Sequential(*conv_bn(in_channels, hidden, 1), nn.ReLU())
        self.depthwise = nn.Sequential(*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU())
        self.project = conv_bn(hidden, out_channels, 1)
        self.stride = stride
        self.shortcut = conv_bn(in_channels, out_channels, 1) if stride == 1 and in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    #: (expansion, out channels, blocks, stride); the reference's CIFAR strides
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 32, 3), nn.ReLU())
        blocks, width = [], 32
        for expansion, out_channels, count, stride in self.STAGES:
            for index in range(count):
                blocks.append(InvertedResidual(width, out_channels, expansion, stride if index == 0 else 1))
                width = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*conv_bn(width, 1280, 1), nn.ReLU())
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.avg_pool2d(self.head(self.blocks(self.stem(x))), 4).flatten(1))


def mobilenet_v2(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes)


def resnet18(num_classes: int = 10) -> ResNet:
    return ResNet(depth=18, stem="cifar", num_classes=num_classes)


#: name -> constructor, in table order
NETS = {
    "ResNet-18": resnet18,
    "MobileNetV2": mobilenet_v2,
    "EfficientNet-B0": efficientnet_b0,
    "RegNetX-200MF": regnetx_200mf,
    "DPN26": dpn26,
}
