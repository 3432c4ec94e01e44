"""User-written models and LightningModules for the callback tests: a residual CNN, a MobileNetV2-style
network, RepVGG blocks, and a plain LightningModule around any net."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


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


NETS = {"resnet": UserResNet, "mobilenetv2": UserMobileNetV2, "repvgg": UserRepVGG}


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
