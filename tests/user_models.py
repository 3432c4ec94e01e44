"""User-written models and LightningModules for the callback tests: a residual CNN, a MobileNetV2-style
network, RepVGG blocks, a plain LightningModule around any net, an unshuffled loader (:func:`loader`) and
a shuffling DataModule with random augmentations (:class:`ShuffledImages`, for the resume tests)."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.framework.data.splits import SplitsDataModule


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class UserResNet(nn.Module):
    """Stem, two residual stages (the second with a projection shortcut), global pooling, linear."""

    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class UserMobileNetV2(nn.Module):
    """Inverted residuals with depthwise convs, linear bottlenecks and residual additions."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()),
            InvertedResidual(16, 8, 1, 1),
            InvertedResidual(8, 12, 4, 2),
            InvertedResidual(12, 12, 4, 1),
            nn.Sequential(nn.Conv2d(12, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6()),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Linear(48, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class UserRepVGG(nn.Module):
    """RepVGG blocks (3x3 + 1x1 + identity branches, ReLU) as a user would stack them."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        from litzoo.framework.reparam import RepVGGBlock

        self.body = nn.Sequential(RepVGGBlock(1, 8), RepVGGBlock(8, 8), RepVGGBlock(8, 16, stride=2), RepVGGBlock(16, 16))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


NETS = {"resnet": UserResNet, "mobilenetv2": UserMobileNetV2, "repvgg": UserRepVGG, "grouped_se": lambda: UserGroupedSENet(in_channels=1)}


class UserModule(L.LightningModule):
    """A user's LightningModule around any net: tuple batches, its own optimizer recipe.

    ``decay`` goes to the optimizer's weight decay on the matrices / kernels only (biases and
    norms get none), as a typical user would write it.
    """

    def __init__(self, net: nn.Module, lr: float = 0.05, momentum: float = 0.9, decay: float = 0.0, optimizer: str = "sgd") -> None:
        super().__init__()
        self.net, self.lr, self.momentum, self.decay, self.optimizer_name = net, lr, momentum, decay, optimizer

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, _):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        weights = [p for p in self.parameters() if p.dim() in (2, 4)]
        others = [p for p in self.parameters() if p.dim() not in (2, 4)]
        groups = [{"params": weights, "weight_decay": self.decay}, {"params": others, "weight_decay": 0.0}]
        if self.optimizer_name == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)


class UserClassifier(UserModule):
    """One of the user nets above by name, rebuildable from its saved hyper-parameters."""

    def __init__(self, net: str = "resnet", lr: float = 0.05, weight_decay: float = 0.0) -> None:
        super().__init__(NETS[net](), lr=lr, decay=weight_decay)
        self.save_hyperparameters()


def loader(n: int = 48, seed: int = 0, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :6].mean((1, 2, 3)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


# ----------------------------------------------------------------------------------------------------
# CNN patterns of public CIFAR model collections, in small versions written for these tests (issue 18):
# channel shuffle and split, dense concatenation, grouped and depthwise convs, squeeze-excitation, a
# foreign re-parameterizable block, and a forward that computes a width with int(x.size(1) * ratio).
# Inputs are 3 x 8 x 8.


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle by view / permute / reshape."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.size()
        return x.view(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class RatioSplit(nn.Module):
    """Splits the channels at ``int(x.size(1) * ratio)``: Python on a shape, which torch.fx cannot trace."""

    def __init__(self, ratio: float = 0.5) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's basic unit: split, 1x1 - depthwise 3x3 - 1x1 on one half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = RatioSplit(0.5)
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class ShuffleDown(nn.Module):
    """ShuffleNetV2's down-sampling unit: two strided branches, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, half, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(cin, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = nn.Conv2d(half, half, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(half)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class UserShuffleNetV2(nn.Module):
    """ShuffleNetV2 as one public CIFAR collection writes it (split by ratio, shuffle by view/permute)."""

    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layers = nn.Sequential(ShuffleDown(width, 2 * width), ShuffleUnit(2 * width), ShuffleUnit(2 * width))
        self.conv2 = nn.Conv2d(2 * width, 4 * width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * width)
        self.linear = nn.Linear(4 * width, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.layers(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def channel_shuffle(x, groups: int):
    """The other common shuffle: view, transpose, contiguous, view with -1."""
    b, c, h, w = x.size()
    x = torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous()
    return x.view(b, -1, h, w)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ChunkShuffleUnit(nn.Module):
    """The torchvision-style ShuffleNetV2 unit: ``chunk`` for the split, Sequential branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, relu=False), conv_bn(cin, half, 1))
        else:
            self.branch1 = nn.Sequential()
        source = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(source, half, 1), conv_bn(half, half, 3, stride, groups=half, relu=False), conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class UserShuffleNetV2Chunk(nn.Module):
    """ShuffleNetV2 as the torchvision-derived CIFAR collections write it."""

    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, width, 3)
        self.stage2 = nn.Sequential(ChunkShuffleUnit(width, 2 * width, 2), ChunkShuffleUnit(2 * width, 2 * width, 1))
        self.conv5 = conv_bn(2 * width, 4 * width, 1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        return self.fc(self.conv5(self.stage2(self.conv1(x))).mean([2, 3]))


class DenseLayer(nn.Module):
    """DenseNet's bottleneck (pre-activation BN-ReLU-conv 1x1, BN-ReLU-conv 3x3), concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class UserDenseNet(nn.Module):
    """Dense blocks: every layer reads the concatenation of all earlier outputs (several channel groups)."""

    def __init__(self, classes: int = 4, growth: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2 * growth, 3, padding=1, bias=False)
        width = 2 * growth
        self.dense1 = nn.Sequential(DenseLayer(width, growth), DenseLayer(width + growth, growth), DenseLayer(width + 2 * growth, growth))
        width += 3 * growth
        self.trans1 = Transition(width, width // 2)
        width //= 2
        self.dense2 = nn.Sequential(DenseLayer(width, growth), DenseLayer(width + growth, growth))
        width += 2 * growth
        self.bn = nn.BatchNorm2d(width)
        self.linear = nn.Linear(width, classes)

    def forward(self, x):
        out = self.dense2(self.trans1(self.dense1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class GroupedSEBlock(nn.Module):
    """A ResNeXt / RegNetX bottleneck (grouped 3x3) with squeeze-excitation (SENet, EfficientNet) and a residual."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2) -> None:
        super().__init__()
        width = cout
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.se = SqueezeExcitation(width, max(1, width // 4))
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(F.relu(self.bn2(self.conv2(out))))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class DepthwiseSEBlock(nn.Module):
    """MobileNetV2 / EfficientNet's inverted residual with squeeze-excitation on the depthwise output."""

    def __init__(self, cin: int, cout: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = conv_bn(cin, hidden, 1)
        self.depthwise = conv_bn(hidden, hidden, 3, groups=hidden)
        self.se = SqueezeExcitation(hidden, max(1, hidden // 4))
        self.project = conv_bn(hidden, cout, 1, relu=False)

    def forward(self, x):
        return self.project(self.se(self.depthwise(self.expand(x))))


class UserGroupedSENet(nn.Module):
    """Grouped and depthwise convs, squeeze-excitation, residual additions."""

    def __init__(self, classes: int = 4, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, width, 3)
        self.block1 = GroupedSEBlock(width, width, 1)
        self.block2 = GroupedSEBlock(width, 2 * width, 2)
        self.block3 = DepthwiseSEBlock(2 * width, 2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.block3(self.block2(self.block1(self.stem(x)))).mean((2, 3)))


class OfficialStyleRepVGGBlock(nn.Module):
    """A RepVGG block written as the official repository writes it (another repository's class, not
    litzoo's): ``rbr_dense`` / ``rbr_1x1`` conv-BN Sequentials, ``rbr_identity`` BN, its own ReLU,
    ``switch_to_deploy()`` that builds ``rbr_reparam`` and deletes the branches."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.nonlinearity = nn.ReLU()
        self.se = nn.Identity()
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = conv_bn(cin, cout, 3, stride, relu=False)
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.se(self.rbr_reparam(x)))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.nonlinearity(self.se(self.rbr_dense(x) + self.rbr_1x1(x) + identity))

    @staticmethod
    def _fuse_bn_tensor(kernel, bn):
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    def get_equivalent_kernel_bias(self):
        k3, b3 = self._fuse_bn_tensor(self.rbr_dense[0].weight, self.rbr_dense[1])
        k1, b1 = self._fuse_bn_tensor(self.rbr_1x1[0].weight, self.rbr_1x1[1])
        kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.rbr_identity is not None:
            eye = torch.zeros(self.cin, self.cin, 3, 3, dtype=k3.dtype, device=k3.device)
            eye[torch.arange(self.cin), torch.arange(self.cin), 1, 1] = 1.0
            ki, bi = self._fuse_bn_tensor(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias

    def switch_to_deploy(self):
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.rbr_reparam = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, bias=True).to(kernel)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            self.__delattr__(name)


class UserOfficialRepVGG(nn.Module):
    """A plain stack of official-style RepVGG blocks between a conv-BN stem and a linear head."""

    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(3, width, 3)
        self.stage = nn.Sequential(OfficialStyleRepVGGBlock(width, width), OfficialStyleRepVGGBlock(width, 2 * width, 2), OfficialStyleRepVGGBlock(2 * width, 2 * width))
        self.linear = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.linear(self.stage(self.stem(x)).mean((2, 3)))


class SeparableConv(nn.Module):
    """PNASNet's separable conv: a depthwise kxk conv (7x7, 5x5, 3x3) and its BN."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, k, stride, k // 2, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn1(self.conv1(x))


class PNASCell(nn.Module):
    """A PNASNet cell: separable 7x7 / 5x5 / 3x3 branches and a max-pool branch, summed in pairs,
    concatenated and reduced by a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.sep7 = SeparableConv(channels, channels, 7, 1)
        self.sep5 = SeparableConv(channels, channels, 5, 1)
        self.sep3 = SeparableConv(channels, channels, 3, 1)
        self.reduce = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        y1 = F.relu(self.sep7(x) + F.max_pool2d(x, 3, 1, 1))
        y2 = F.relu(self.sep5(x) + self.sep3(x))
        return F.relu(self.bn(self.reduce(torch.cat([y1, y2], 1))))


class UserPNASNet(nn.Module):
    def __init__(self, classes: int = 4, width: int = 8, cells: int = 2) -> None:
        super().__init__()
        self.stem = conv_bn(3, width, 3)
        self.cells = nn.Sequential(*[PNASCell(width) for _ in range(cells)])
        self.linear = nn.Linear(width, classes)

    def forward(self, x):
        return self.linear(self.cells(self.stem(x)).mean((2, 3)))


FOREIGN_NETS = {
    "shufflenetv2": UserShuffleNetV2,
    "shufflenetv2_chunk": UserShuffleNetV2Chunk,
    "densenet": UserDenseNet,
    "grouped_se": UserGroupedSENet,
    "official_repvgg": UserOfficialRepVGG,
    "pnasnet": UserPNASNet,
}

#: the input of the foreign nets (3 x 8 x 8), a batch of two
FOREIGN_INPUT = torch.zeros(2, 3, 8, 8)


class ForeignClassifier(UserModule):
    """One of the foreign nets above by name, with ``example_input_array`` set (callbacks trace in setup)."""

    def __init__(self, net: str = "shufflenetv2", lr: float = 0.05, weight_decay: float = 1e-4) -> None:
        super().__init__(FOREIGN_NETS[net](), lr=lr, decay=weight_decay)
        self.save_hyperparameters()
        self.example_input_array = FOREIGN_INPUT


def foreign_loader(n: int = 24, seed: int = 0, batch_size: int = 8) -> DataLoader:
    """3 x 8 x 8 inputs, four classes from the signs of two means."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean((1, 2, 3)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


# ------------------------------------------------------------------ a shuffling DataModule, for resume tests
class AugmentedImages(torch.utils.data.Dataset):
    """SYNTHETIC 12x12 images with the labels of :func:`loader`, and a random augmentation per read drawn from
    torch, NumPy and Python's ``random`` (in the worker that reads it): what a resumed run must draw again."""

    def __init__(self, n: int, seed: int, dict_items: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 12, 12, generator=g)
        self.y = (self.x.mean((1, 2, 3)) > 0).long() + 2 * (self.x[:, :, :6].mean((1, 2, 3)) > 0).long()
        self.dict_items = dict_items

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i] + 0.1 * torch.randn(1, 12, 12)
        x = x.flip(-1) if random.random() < 0.5 else x
        x = x * float(np.random.uniform(0.9, 1.1))
        return {"image": x, "label": self.y[i]} if self.dict_items else (x, self.y[i])


class ShuffledImages(SplitsDataModule):
    """A user's shuffling DataModule on the core's splits plumbing: :class:`AugmentedImages` train and val
    splits, tuple batches (``dict_items=True``: ``{"image", "label"}``)."""

    def __init__(self, n: int = 40, batch_size: int = 8, num_workers: int = 0, dict_items: bool = False) -> None:
        super().__init__(batch_size, num_workers)
        self.n, self.dict_items = n, dict_items

    def build_dataset(self, split: str) -> AugmentedImages:
        return AugmentedImages(self.n if split == "train" else 16, seed={"train": 0, "val": 1, "test": 2}[split], dict_items=self.dict_items)
