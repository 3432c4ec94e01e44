"""ResNet: the paper's architectures (parameter counts, shapes), options, the LightningModule."""

from __future__ import annotations

import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch import nn

from litzoo.framework.profiling import count_parameters
from litzoo.modules.resnet import DEPTHS, BasicBlock, Bottleneck, ResNet, ResNetClassifier

# torchvision's ResNet parameter counts (ImageNet stem, 1000 classes): the paper's architectures.
PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


@pytest.mark.parametrize("depth", sorted(PARAMS))
def test_parameter_count_matches_reference(depth):
    with torch.device("meta"):  # no memory, no init cost: only shapes matter here
        model = ResNet(depth)
    assert count_parameters(model) == PARAMS[depth]


def test_resnext_parameter_count():
    # ResNeXt-50 32x4d (Xie et al. 2017, Table 1: 25.0M), torchvision's count
    with torch.device("meta"):
        model = ResNet(50, groups=32, width_per_group=4)
    assert count_parameters(model) == 25_028_904


def blocks(model: ResNet) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_structure_follows_table(depth):
    with torch.device("meta"):
        model = ResNet(depth)
    block, num_blocks = DEPTHS[depth]
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)] == list(num_blocks)
    assert all(type(b) is block for b in blocks(model))
    assert model.fc.in_features == 512 * block.expansion
    # projection shortcuts exactly where the shape changes: first block of each stage (but the
    # first stage of basic-block nets, whose shape does not change)
    for i, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        assert (layer[0].downsample is not None) == (i > 0 or block is Bottleneck)
        assert all(b.downsample is None for b in layer[1:])
    # a plain conv-BN model: every conv is bias-free
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize(
    ("depth", "stem", "size", "feature_size"),
    [(18, "imagenet", 64, 2), (18, "cifar", 16, 2), (34, "cifar", 8, 1), (50, "imagenet", 32, 1), (50, "cifar", 16, 2)],
)
def test_output_and_feature_shapes(depth, stem, size, feature_size):
    model = ResNet(depth, num_classes=7, in_channels=2, stem=stem, width=4).eval()
    x = torch.randn(2, 2, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features, feature_size, feature_size)
    assert logits.shape == (2, 7)


def test_stems():
    imagenet, cifar = ResNet(18, stem="imagenet", width=8), ResNet(18, stem="cifar", width=8)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    # the bottleneck strides in its 3x3 conv (torchvision's "v1.5")
    bottleneck = ResNet(50, width=8).layer2[0]
    assert bottleneck.conv1.stride == (1, 1) and bottleneck.conv2.stride == (2, 2)


def test_grouped_convs():
    bottleneck_net = ResNet(50, width=8, groups=4, width_per_group=16)
    for b in blocks(bottleneck_net):
        assert b.conv2.groups == 4 and b.conv1.groups == 1 and b.conv3.groups == 1
    assert bottleneck_net.layer1[0].conv2.in_channels == 8  # int(8 planes * 16 / 64) = 2 per group, 4 groups

    basic_net = ResNet(18, width=8, groups=2, width_per_group=32)
    for b in blocks(basic_net):
        assert b.conv1.groups == 2 and b.conv2.groups == 2
    assert basic_net.layer1[0].conv1.out_channels == 8  # 32 per group x 2 keeps the width
    assert basic_net(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    # the default is the plain ResNet
    assert all(m.groups == 1 for m in ResNet(18, width=8).modules() if isinstance(m, nn.Conv2d))


def test_zero_init_residual():
    model = ResNet(18, width=8, zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) and torch.all(b.bn1.weight == 1) for b in blocks(model))
    model = ResNet(50, width=8, zero_init_residual=True)
    assert all(torch.all(b.bn3.weight == 0) and torch.all(b.bn2.weight == 1) for b in blocks(model))
    # then every block starts as relu(shortcut(x)): on a non-negative input, the identity
    block = ResNet(18, width=8, stem="cifar", zero_init_residual=True).layer1[0].eval()
    x = torch.rand(2, 8, 6, 6)
    assert torch.equal(block(x), x)
    assert all(torch.all(b.bn2.weight == 1) for b in blocks(ResNet(18, width=8)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(depth=20), "depth must be one of"),
        (dict(stem="tiny"), "stem must be one of"),
        (dict(width=0), "width must be a positive"),
        (dict(num_classes=0), "num_classes must be a positive"),
        (dict(in_channels=0), "in_channels must be a positive"),
        (dict(groups=0), "groups must be a positive"),
        (dict(width=6, groups=4), "multiple of groups"),
        (dict(depth=50, width=8, width_per_group=4), "empty 3x3 convs"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


def test_classifier_hyperparameters_and_weight_decay_groups():
    model = ResNetClassifier(depth=18, num_classes=10, in_channels=1, stem="cifar", width=8)
    assert model.hparams.depth == 18 and model.hparams.stem == "cifar" and model.hparams.width == 8
    assert "optimizer" not in model.hparams and "lr_scheduler" not in model.hparams
    names = model.no_weight_decay()
    assert {"net.fc.bias", "net.bn1.weight", "net.layer2.0.downsample.1.weight"} <= names
    assert "net.layer1.0.conv1.weight" not in names and "net.fc.weight" not in names
    optimizer = model.optimizer(model.parameters())
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 1e-4


def test_optimization_step_changes_weights_and_learns():
    model = ResNetClassifier(depth=18, num_classes=10, in_channels=1, stem="cifar", width=8)
    batch = {"image": torch.randn(16, 1, 16, 16), "label": torch.arange(16) % 10}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = model.net.layer3[0].conv1.weight.detach().clone()
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert not torch.equal(before, model.net.layer3[0].conv1.weight)
    assert losses[-1] < 0.5 * losses[0]


def test_predict_step_returns_probabilities():
    model = ResNetClassifier(num_classes=10, in_channels=1, stem="cifar", width=4).eval()
    out = model.predict_step({"image": torch.randn(3, 1, 16, 16), "label": torch.tensor([1, 2, 3])}, 0)
    assert out["probs"].shape == (3, 10)
    assert torch.allclose(out["probs"].sum(-1), torch.ones(3))


# ---------------------------------------------------------------- network arguments: ResNet's signature is the source
def test_network_arguments_are_forwarded_flat_and_rebuild_the_module():
    # all eight network arguments given, as every checkpoint written before the forwarding stored them
    model = rebuilds_from_flat_hparams(ResNetClassifier, num_classes=10, depth=50, in_channels=2, stem="cifar", width=8, groups=2,
                                       width_per_group=32, zero_init_residual=True, label_smoothing=0.1)  # fmt: skip
    net = model.net
    assert net.depth == 50 and net.stem == "cifar" and net.conv1.in_channels == 2 and net.fc.out_features == 10
    assert isinstance(net.maxpool, nn.Identity) and net.layer1[0].conv2.groups == 2 and net.layer1[0].conv2.out_channels == 8
    assert not net.layer1[0].bn3.weight.any()  # zero_init_residual reached the network
    assert model.label_smoothing == 0.1  # and the training arguments stay the module's


def test_a_misspelt_network_argument_is_named():
    refuses_misspelt_argument(ResNetClassifier, "ResNet", "widht", "width", num_classes=10)


def test_cli_help_lists_the_network_arguments_with_types(capsys):
    help_lists("litzoo.modules.resnet.ResNetClassifier", capsys, {
        "num_classes": "int, default: 1000", "depth": "int, default: 18", "stem": "Literal['imagenet', 'cifar'], default: imagenet",
        "width": "int, default: 64", "groups": "int", "width_per_group": "int", "zero_init_residual": "bool", "in_channels": "int",
    })  # fmt: skip
