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


class WidthFromShape(nn.Module):
    """Direct children of a module whose forward computes a width with ``int(x.size(1) * ratio)`` (torch.fx
    cannot trace it): conv1 -> bn1 alone, conv2 -> bn2 and an addition (not exclusive), conv3 into nothing."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.conv2, self.bn2 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
        self.conv3 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        c = int(x.size(1) * 0.5)
        a, b = x[:, :c], x[:, c:]
        y = self.conv2(b)
        return self.conv3(torch.cat([self.bn1(self.conv1(a)), self.bn2(y) + y], 1))


def test_convs_inside_an_untraceable_module_are_paired_on_a_forward():
    from litzoo.framework.graph import find_conv_bn_pairs

    found = find_conv_bn_pairs(WidthFromShape())
    assert found.pairs == {} and "torch.fx cannot trace" in found.unresolved["conv1"]  # no input: said why, not guessed
    assert conv_bn_pairs(WidthFromShape(), torch.randn(2, 4, 6, 6)) == {"conv1": "bn1", "conv2": None, "conv3": None}
    nested = nn.Sequential(nn.Conv2d(4, 4, 1), WidthFromShape())
    assert conv_bn_pairs(nested, torch.randn(2, 4, 6, 6)) == {"0": None, "1.conv1": "1.bn1", "1.conv2": None, "1.conv3": None}


def test_the_run_time_pairing_leaves_modes_and_statistics_alone():
    model = WidthFromShape().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conv_bn_pairs(model, torch.randn(2, 4, 6, 6))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
