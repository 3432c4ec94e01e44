"""ResNet: Deep Residual Learning for Image Recognition (He et al., CVPR 2016, arXiv:1512.03385).

A plain, torchvision-style ResNet: every convolution is ``Conv2d(bias=False)`` followed by
``BatchNorm2d``, blocks add their input (or a 1x1 conv-BN projection of it, the paper's option B)
to their output. Nothing here is written for structural re-parameterization; it is the kind of
model the ``StructuralReparam`` callback grafts ACNet / DBB / RepVGG branches onto.

Architecture (paper Table 1): a stem, four stages of residual blocks with widths
``w, 2w, 4w, 8w`` (``w = 64`` in the paper), the first block of stages 2-4 having stride 2,
global average pooling and a linear classifier. ResNet-18/34 use ``BasicBlock`` (two 3x3 convs),
ResNet-50/101/152 ``Bottleneck`` (1x1, 3x3, 1x1, expansion 4). As in torchvision (ResNet "v1.5"),
a bottleneck strides in its 3x3 conv, not in its first 1x1 conv as in the paper.

Two stems: ``"imagenet"`` (7x7 stride-2 conv-BN-ReLU, 3x3 stride-2 max pool: the paper's) and
``"cifar"`` (3x3 stride-1 conv-BN-ReLU, no pooling: the CIFAR ResNet-18 of the ACNet/DBB CIFAR
experiments, which keeps the resolution of small images).

``groups`` / ``width_per_group`` give ResNeXt-style grouped 3x3 convs (Xie et al., CVPR 2017):
a block's inner width is ``int(planes * width_per_group / 64) * groups``, torchvision's rule
(ResNeXt-50 32x4d is ``depth=50, groups=32, width_per_group=4``). Unlike torchvision, basic
blocks accept ``groups > 1`` too (both 3x3 convs grouped), so a cheap ResNet-18 can carry grouped
convs; the defaults (1, 64) give the paper's ResNet exactly.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from litzoo.framework.classification import ImageClassifier
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.optim import sgd_momentum

Stem = Literal["imagenet", "cifar"]
STEMS: tuple[str, ...] = get_args(Stem)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def inner_width(planes: int, groups: int, width_per_group: int) -> int:
    """Width of a block's grouped 3x3 conv(s): ``planes`` for the defaults (groups 1, 64 per group)."""
    return int(planes * (width_per_group / 64.0)) * groups


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Args:
        in_planes: input channels.
        planes: output channels (``expansion`` is 1).
        stride: stride of ``conv1`` (and of the projection shortcut).
        downsample: shortcut projection (1x1 conv + BN) when the shape changes, else ``None``
            (identity shortcut).
        groups: groups of both 3x3 convs.
        width_per_group: channels per group of the inner width (64 keeps it at ``planes``).
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = inner_width(planes, groups, width_per_group)
        if width < 1 or in_planes % groups or width % groups:
            raise ValueError(f"BasicBlock: in_planes {in_planes} and inner width {width} must be positive multiples of groups {groups}")
        self.conv1 = conv3x3(in_planes, width, stride, groups)
        self.bn1 = nn.BatchNorm2d(width)
        # Not in-place: forward hooks (e.g. a callback comparing activations) must see unmodified
        # outputs; the memory saving is negligible at the sizes litzoo trains.
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(width, planes * self.expansion, groups=groups)
        self.bn2 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, optionally grouped), 1x1 expand (x4), each conv-BN, plus a shortcut.

    Args:
        in_planes: input channels.
        planes: bottleneck channels before ``groups``/``width_per_group`` scaling; the block
            outputs ``planes * 4``.
        stride: stride of ``conv2`` (the 3x3, torchvision's "v1.5") and of the projection shortcut.
        downsample: shortcut projection (1x1 conv + BN) when the shape changes, else ``None``.
        groups: groups of the 3x3 conv (ResNeXt cardinality).
        width_per_group: channels per group of the 3x3 conv, relative to 64 (ResNeXt ``d``).
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = inner_width(planes, groups, width_per_group)
        if width < 1:
            raise ValueError(f"Bottleneck: planes {planes} with width_per_group {width_per_group} gives an empty 3x3 conv")
        self.conv1 = conv1x1(in_planes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()  # not in-place, see BasicBlock
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


#: depth -> (block type, blocks in stages 1-4), paper Table 1
DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """The ResNet network, torchvision's layout and attribute names (``conv1 ... layer4, fc``).

    Args:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        num_classes: classifier outputs.
        in_channels: image channels.
        stem: ``"imagenet"`` (7x7/2 conv, 3x3/2 max pool) or ``"cifar"`` (3x3/1 conv, no pool).
        width: channels of the stem and of stage 1 (stage ``i`` has ``width * 2**(i-1)`` planes).
        groups: groups of the 3x3 convs in every block (ResNeXt cardinality).
        width_per_group: channels per group of the blocks' 3x3 convs, relative to 64.
        zero_init_residual: start the last BN weight of every block at 0, so each residual branch
            starts as zero and each block as the identity (Goyal et al., 2017).
    """

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: Stem = "imagenet",
        width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got '{stem}'")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width), ("groups", groups), ("width_per_group", width_per_group)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        block, num_blocks = DEPTHS[depth]
        if block is BasicBlock and width % groups:
            # a basic block groups the conv reading its input: the stem's width must split evenly
            raise ValueError(f"width {width} must be a multiple of groups {groups} for basic blocks (depth {depth})")
        if inner_width(width, groups, width_per_group) < 1:
            raise ValueError(f"width {width} with width_per_group {width_per_group} gives empty 3x3 convs in stage 1")
        self.depth = depth
        self.stem = stem
        self.groups = groups
        self.width_per_group = width_per_group

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_channels, width)
            self.maxpool = nn.Identity()  # kept so that both stems share attribute names
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()

        self.in_planes = width
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width * 8 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            # projection shortcut (paper option B): only where the shape changes
            downsample = nn.Sequential(conv1x1(self.in_planes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.in_planes, planes, stride, downsample, self.groups, self.width_per_group)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes, groups=self.groups, width_per_group=self.width_per_group) for _ in range(1, num_blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He initialisation for convs (fan_out, as in the paper's reference and torchvision); BN
        # starts as the identity; the classifier keeps PyTorch's default Linear init.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)
                elif isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, ``(B, num_features, H', W')``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.forward_features(x)).flatten(1))


class ResNetClassifier(ImageClassifier):
    """ResNet image classifier (He et al., CVPR 2016): the plain conv-BN model for re-parameterization.

    The default optimizer is the paper's: SGD momentum 0.9, weight decay 1e-4, lr 0.1 (here with
    cosine decay to 0 instead of the paper's step schedule). Biases and BN parameters are not
    decayed (``ImageClassifier.no_weight_decay``), a common modern choice; the paper decays all.

    Args:
        num_classes: classes.
        optimizer: optimizer factory, called with parameter groups.
        lr_scheduler: scheduler factory; ``None`` = per-step cosine to 0 over the run.
        label_smoothing: cross-entropy label smoothing (0 in the paper).
        **net_kwargs: the :class:`ResNet`'s other arguments, ``depth`` … ``zero_init_residual`` (default
            ResNet-18 with the ImageNet stem; ``stem="cifar"`` for small images).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        optimizer: OptimizerCallable = sgd_momentum,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        **net_kwargs: Any,
    ) -> None:
        check_network_kwargs(ResNet, net_kwargs, type(self).__name__)
        net = ResNet(num_classes=num_classes, **net_kwargs)
        super().__init__(net, num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler, label_smoothing=label_smoothing)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
