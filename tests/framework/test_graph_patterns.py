"""conv -> BN pairs come from the traced dataflow, not from attribute order."""

from __future__ import annotations

import torch
from torch import nn

from litzoo.framework.graph import conv_bn_pairs


class Misleading(nn.Module):
    """bn1 is declared after conv1 but normalises conv2's output; conv1 feeds a ReLU first."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.bn1(self.conv2(torch.relu(self.conv1(x))))
        y = self.conv3(x)
        return self.bn2(y) + y  # conv3's output has two consumers


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace this forward, but its children can be."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.tail = Misleading()

    def forward(self, x):
        if x.sum() > 0:
            return self.body(x)
        return self.body(-x)


def test_pairs_follow_the_dataflow():
    assert conv_bn_pairs(Misleading()) == {"conv1": None, "conv2": "bn1", "conv3": None}


def test_untraceable_modules_are_searched_through_their_children():
    assert conv_bn_pairs(Untraceable()) == {"body.0": "body.1", "tail.conv1": None, "tail.conv2": "tail.bn1", "tail.conv3": None}


def test_layers_called_twice_are_never_paired():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(self.bn(self.conv(x))))

    assert conv_bn_pairs(Twice()) == {"conv": None}
