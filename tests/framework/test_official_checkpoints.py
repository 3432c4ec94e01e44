"""Official released checkpoints: key conversion and loading, train-time and deploy-time.

The "official" modules below are written from the reference repositories' naming and forward
(DingXiaoH/RepVGG ``repvgg.py``): a released state dict is produced by them, converted, loaded
into litzoo's model, and the outputs must agree.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from litzoo.framework import checkpoints
from litzoo.framework.checkpoints import (
    convert_official_state_dict,
    load_official_weights,
    official_key_maps,
    register_official_key_map,
    rename_keys,
    unwrap_state_dict,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.reparam import fuse_conv_bn, fuse_model, identity_kernel, pad_kernel, randomize_batchnorm
from litzoo.modules.repvgg import RepVGG, RepVGGClassifier


def official_conv_bn(cin, cout, k, stride, padding, groups):
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class OfficialRepVGGBlock(nn.Module):
    """Names and forward of the official block: rbr_dense + rbr_1x1 + rbr_identity, or rbr_reparam."""

    def __init__(self, cin, cout, stride, groups, deploy=False):
        super().__init__()
        self.nonlinearity = nn.ReLU()
        self.se = nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=True)
        else:
            self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_dense = official_conv_bn(cin, cout, 3, stride, 1, groups)
            self.rbr_1x1 = official_conv_bn(cin, cout, 1, stride, 0, groups)

    def forward(self, x):
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.nonlinearity(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    def deploy_weights(self):
        k3, b3 = fuse_conv_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = fuse_conv_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = k3 + pad_kernel(k1, 3), b3 + b1
        if self.rbr_identity is not None:
            groups = self.rbr_dense.conv.groups
            ki, bi = fuse_conv_bn(identity_kernel(kernel.shape[0], groups, 3), self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias


class OfficialRepVGG(nn.Module):
    """stage0 .. stage4, gap, linear, as the official RepVGG (widths given directly)."""

    def __init__(self, widths, blocks, strides, in_channels, num_classes, groups_map=None, deploy=False):
        super().__init__()
        groups_map = groups_map or {}
        self.stage0 = OfficialRepVGGBlock(in_channels, widths[0], strides[0], 1, deploy)
        cin, layer = widths[0], 1
        for s in range(1, 5):
            stage = []
            for i in range(blocks[s - 1]):
                stage.append(OfficialRepVGGBlock(cin, widths[s], strides[s] if i == 0 else 1, groups_map.get(layer, 1), deploy))
                cin, layer = widths[s], layer + 1
            setattr(self, f"stage{s}", nn.ModuleList(stage))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stage0(x)
        for s in range(1, 5):
            for block in getattr(self, f"stage{s}"):
                x = block(x)
        return self.linear(self.gap(x).flatten(1))


TINY = dict(num_blocks=[1, 2, 1, 1], width_multiplier=[0.125, 0.125, 0.125, 0.0625], override_groups_map={2: 2})
TINY_WIDTHS = [8, 8, 16, 32, 32]  # stage0 = min(64, 64a), then 64a, 128a, 256a, 512b
STRIDES = [1, 1, 2, 2, 2]


def official_pair(num_classes=5):
    official = OfficialRepVGG(TINY_WIDTHS, TINY["num_blocks"], STRIDES, 1, num_classes, groups_map=TINY["override_groups_map"])
    randomize_batchnorm(official, seed=3)
    official.eval()
    deploy = OfficialRepVGG(TINY_WIDTHS, TINY["num_blocks"], STRIDES, 1, num_classes, groups_map=TINY["override_groups_map"], deploy=True)
    trained_blocks = [m for m in official.modules() if isinstance(m, OfficialRepVGGBlock)]
    deploy_blocks = [m for m in deploy.modules() if isinstance(m, OfficialRepVGGBlock)]
    with torch.no_grad():
        for src, dst in zip(trained_blocks, deploy_blocks, strict=True):
            kernel, bias = src.deploy_weights()
            dst.rbr_reparam.weight.copy_(kernel)
            dst.rbr_reparam.bias.copy_(bias)
        deploy.linear.load_state_dict(official.linear.state_dict())
    return official, deploy.eval()


def classifier(path, num_classes=5):
    return RepVGGClassifier(num_classes=num_classes, in_channels=1, stage_strides=STRIDES, official_checkpoint=str(path), **TINY).eval()


def test_official_repvgg_train_time_checkpoint_loads_and_matches(tmp_path):
    official, _ = official_pair()
    torch.save(official.state_dict(), tmp_path / "RepVGG-tiny-train.pth")
    model = classifier(tmp_path / "RepVGG-tiny-train.pth")
    x = torch.randn(3, 1, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official(x), atol=1e-5, rtol=0)
    assert not any(name.endswith("rbr_dense") for name, _ in model.named_modules())


def test_official_repvgg_deploy_checkpoint_gives_the_fused_model(tmp_path):
    official, deploy = official_pair()
    # released deploy files are often wrapped and saved from DataParallel
    torch.save({"state_dict": {f"module.{k}": v for k, v in deploy.state_dict().items()}}, tmp_path / "RepVGG-tiny-deploy.pth")
    model = classifier(tmp_path / "RepVGG-tiny-deploy.pth")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "a deploy checkpoint must give the fused model"
    x = torch.randn(3, 1, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official(x), atol=1e-5, rtol=0)


def test_other_head_is_reinitialised_with_a_warning(tmp_path):
    official, _ = official_pair(num_classes=1000 // 100)
    torch.save(official.state_dict(), tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="head 'linear'"):
        model = classifier(tmp_path / "w.pth", num_classes=3)
    body = dict(official.state_dict())
    assert torch.equal(model.net.stage0.branch_3x3.conv.weight, body["stage0.rbr_dense.conv.weight"])
    assert model.net.linear.out_features == 3


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_file(tmp_path):
    other = OfficialRepVGG([8, 8, 16, 32, 32], [2, 2, 1, 1], STRIDES, 1, 5)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(LitzooError, match=r"checkpoint '.*other\.pth' does not fit this repvgg model .*unexpected \['stage1\.1"):
        classifier(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LitzooError, match="junk.pth"):
        classifier(tmp_path / "junk.pth")


def test_squeeze_excitation_checkpoints_are_refused():
    with pytest.raises(LitzooError, match="squeeze-excitation"):
        convert_official_state_dict("repvgg", {"stage1.0.se.down.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown method"):
        convert_official_state_dict("resnet", {})


def test_unwrap_state_dict_errors_and_prefixes():
    assert list(unwrap_state_dict({"model": {"module.a": torch.zeros(1)}})) == ["a"]
    with pytest.raises(LitzooError, match="no state dict of tensors"):
        unwrap_state_dict({"epoch": 3}, "x.pth")


def test_key_renaming_is_by_segment():
    state = {
        "layer1.0.conv1.square_conv.weight": 0,
        "layer1.0.conv1.ver_bn.running_mean": 0,
        "layer1.0.conv1.fused_conv.bias": 0,
    }
    assert list(convert_official_state_dict("acb", state)) == [
        "layer1.0.conv1.branch_square.conv.weight",
        "layer1.0.conv1.branch_vertical.bn.running_mean",
        "layer1.0.conv1.bias",
    ]
    dbb = {
        "b.dbb_origin.conv.weight": 0,
        "b.dbb_avg.bn.bn.weight": 0,  # BNAndPadLayer wrapping a BatchNorm2d (current official code)
        "b.dbb_1x1_kxk.bn1.running_var": 0,  # BNAndPadLayer that was a BatchNorm2d (before DBB PR#10)
        "b.dbb_reparam.weight": 0,
    }
    assert list(convert_official_state_dict("dbb", dbb)) == [
        "b.branch_kxk.conv.weight",
        "b.branch_avg.bn.bn.weight",
        "b.branch_1x1_kxk.bn1.bn.running_var",
        "b.weight",
    ]


def test_plain_repvgg_net_loads_in_place(tmp_path):
    official, _ = official_pair()
    torch.save(official.state_dict(), tmp_path / "w.pth")
    net = RepVGG(num_classes=5, in_channels=1, stage_strides=STRIDES, **TINY)
    assert load_official_weights(net, "repvgg", tmp_path / "w.pth", head="linear") is net
    fused = fuse_model(net.eval())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), official(x), atol=1e-5, rtol=0)


class OfficialACBlock(nn.Module):
    """DingXiaoH/ACNet ``acb.py`` naming and forward, including its input crop for padding < k//2."""

    def __init__(self, cin, cout, k, padding):
        super().__init__()
        self.square_conv, self.square_bn = nn.Conv2d(cin, cout, k, padding=padding, bias=False), nn.BatchNorm2d(cout)
        if padding >= k // 2:
            self.crop, hor, ver = 0, (padding - k // 2, padding), (padding, padding - k // 2)
        else:
            self.crop, hor, ver = k // 2 - padding, (0, padding), (padding, 0)
        self.ver_conv, self.ver_bn = nn.Conv2d(cin, cout, (k, 1), padding=ver, bias=False), nn.BatchNorm2d(cout)
        self.hor_conv, self.hor_bn = nn.Conv2d(cin, cout, (1, k), padding=hor, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        c = self.crop
        ver_in = x[:, :, :, c:-c] if c else x
        hor_in = x[:, :, c:-c, :] if c else x
        return self.square_bn(self.square_conv(x)) + self.ver_bn(self.ver_conv(ver_in)) + self.hor_bn(self.hor_conv(hor_in))


@pytest.mark.parametrize("k, padding", [(3, 1), (5, 2), (5, 1), (3, 0)])
def test_official_acb_weights_give_the_same_function(k, padding):
    from litzoo.framework.reparam import ACBlock

    official = randomize_batchnorm(OfficialACBlock(4, 6, k, padding), seed=k + padding).eval()
    ours = ACBlock(4, 6, k, padding=padding).eval()
    ours.load_state_dict(convert_official_state_dict("acb", official.state_dict()))
    x = torch.randn(2, 4, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), atol=1e-5, rtol=0)
        deploy = {"fused_conv.weight": ours.fuse().weight, "fused_conv.bias": ours.fuse().bias}
        assert set(convert_official_state_dict("acb", deploy)) == set(ours.fuse().state_dict())


def official_dbb_keys(depthwise: bool, internal_equals_in: bool) -> set[str]:
    """The state-dict keys of the official DiverseBranchBlock, written out from diversebranchblock.py."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = {"dbb_origin.conv.weight"} | {f"dbb_origin.bn.{p}" for p in bn}
    if not depthwise:
        keys |= {"dbb_1x1.conv.weight"} | {f"dbb_1x1.bn.{p}" for p in bn}
        keys |= {"dbb_avg.conv.weight"} | {f"dbb_avg.bn.bn.{p}" for p in bn}
    keys |= {f"dbb_avg.avgbn.{p}" for p in bn}
    keys |= {"dbb_1x1_kxk.idconv1.weight" if internal_equals_in else "dbb_1x1_kxk.conv1.weight"}
    keys |= {f"dbb_1x1_kxk.bn1.bn.{p}" for p in bn} | {"dbb_1x1_kxk.conv2.weight"} | {f"dbb_1x1_kxk.bn2.{p}" for p in bn}
    return keys


@pytest.mark.parametrize("cin, cout, groups, depthwise, internal_equals_in", [(4, 6, 1, False, True), (4, 4, 2, False, True), (4, 4, 4, True, False)])
def test_official_dbb_keys_map_one_to_one_onto_ours(cin, cout, groups, depthwise, internal_equals_in):
    from litzoo.framework.reparam import DiverseBranchBlock

    ours = DiverseBranchBlock(cin, cout, 3, groups=groups)
    mapped = convert_official_state_dict("dbb", {k: torch.zeros(1) for k in official_dbb_keys(depthwise, internal_equals_in)})
    assert set(mapped) == set(ours.state_dict())
    deploy = convert_official_state_dict("dbb", {"dbb_reparam.weight": torch.zeros(1), "dbb_reparam.bias": torch.zeros(1)})
    assert set(deploy) == set(ours.fuse().state_dict())


# ----------------------------------------------------------- the registry of key maps
def test_each_method_registers_its_map_when_its_module_is_imported():
    # the core fills nothing itself: a fresh interpreter knows no map until a method's file is imported
    code = (
        "from litzoo.framework.checkpoints import official_key_maps as names\n"
        "print(*names())\n"
        "import litzoo.modules.hiera\n"
        "print(*names())\n"
        "import litzoo.modules.mae, litzoo.modules.audio_mae, litzoo.modules.repmlp\n"
        "print(*names())\n"
    )
    empty, with_hiera, with_all = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert empty == ""
    # hiera's file (and the reparameterization blocks under the core's classifier base) registered theirs
    assert "hiera" in with_hiera.split() and "mae" not in with_hiera.split()
    assert with_all.split() == ["acb", "audio_mae", "dbb", "hiera", "mae", "repmlp", "repvgg"]


def test_an_unregistered_name_says_which_module_to_import():
    with pytest.raises(ValueError, match=r"unknown method 'audio_mea' .*registered: acb, .*repvgg.*import litzoo\.modules\.audio_mea"):
        convert_official_state_dict("audio_mea", {})


def test_a_users_key_map_is_registered_and_used(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "_OFFICIAL_KEY_MAPS", dict(checkpoints._OFFICIAL_KEY_MAPS))

    @register_official_key_map("my_repvgg")
    def my_map(state):  # a user's own release with another prefix, on litzoo's RepVGG
        return rename_keys(state, lambda key: key.removeprefix("backbone."), "my_repvgg")

    assert "my_repvgg" in official_key_maps()
    official, _ = official_pair()
    ours = RepVGG(num_classes=5, in_channels=1, stage_strides=STRIDES, **TINY)
    torch.save({f"backbone.{k}": v for k, v in convert_official_state_dict("repvgg", official.state_dict()).items()}, tmp_path / "w.pth")
    load_official_weights(ours, "my_repvgg", tmp_path / "w.pth", head="linear")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fuse_model(ours.eval())(x), official(x), atol=1e-5, rtol=0)
    # a second, different function under a taken name is refused; the same function again is not
    assert register_official_key_map("my_repvgg", my_map) is my_map
    with pytest.raises(ValueError, match="already registered as 'repvgg'"):
        register_official_key_map("repvgg", lambda state: dict(state))
    with pytest.raises(Exception, match="both map to"):
        convert_official_state_dict("my_repvgg", {"backbone.a": torch.zeros(1), "a": torch.zeros(1)})
