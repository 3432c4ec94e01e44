"""fuse_model: the deploy walker over nested user models and foreign conversion conventions."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from litzoo.framework.reparam import ConvBN, randomize_batchnorm
from litzoo.framework.reparam.fuse_model import fuse_model, is_fusable
from litzoo.framework.reparam.repvgg_block import RepVGGBlock

REPO_ROOT = Path(__file__).resolve().parents[2]

F64 = torch.float64


class Net(nn.Module):
    """A user model: a ConvBN stem, nested Sequentials of RepVGGBlocks, a plain BN, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            RepVGGBlock(8, 8),
            RepVGGBlock(8, 12, stride=2, groups=4),
            nn.Sequential(RepVGGBlock(12, 12, groups=3), RepVGGBlock(12, 12, groups=12)),
        )
        self.post_bn = nn.BatchNorm2d(12)  # not part of any block: must survive fusion
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.post_bn(self.body(x))
        return self.head(self.pool(x).flatten(1))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return randomize_batchnorm(Net(), seed).double()


def _x(channels: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(4, channels, 9, 7, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_nested_model_all_blocks_replaced_and_outputs_equal():
    model = _net().eval()
    fused = fuse_model(model)
    assert not any(isinstance(m, (RepVGGBlock, ConvBN)) for m in fused.modules())
    assert type(fused) is Net
    assert type(fused.stem) is nn.Conv2d and fused.stem.bias is not None
    for block in (fused.body[0], fused.body[1], fused.body[2][0], fused.body[2][1]):
        assert isinstance(block, nn.Sequential) and type(block[0]) is nn.Conv2d and isinstance(block[1], nn.ReLU)
    assert fused.body[1][0].stride == (2, 2) and fused.body[1][0].groups == 4
    assert fused.body[2][1][0].groups == 12
    # the only BatchNorm2d left is the stand-alone one, with its parameters and statistics intact
    bn_names = [name for name, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_names == ["post_bn"]
    for key, value in model.post_bn.state_dict().items():
        assert torch.equal(fused.post_bn.state_dict()[key], value)
    assert torch.equal(fused.head.weight, model.head.weight)
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())
    x = _x()
    with torch.no_grad():
        assert _max_diff(fused.eval()(x), model.eval()(x)) <= 1e-10


def test_model_in_train_mode_fuses_to_the_eval_equivalent():
    model = _net(1).train()
    fused = fuse_model(model)
    x = _x()
    with torch.no_grad():
        assert _max_diff(fused.eval()(x), model.eval()(x)) <= 1e-10


def test_inplace_false_leaves_original_untouched_and_trainable():
    model = _net(2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_model(model, inplace=False)
    assert fused is not model
    assert isinstance(model.stem, ConvBN)
    assert isinstance(model.body[0], RepVGGBlock) and model.body[0].branch_identity is not None
    assert isinstance(model.body[2][1], RepVGGBlock)
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the copies share no storage with the original
    original_ptrs = {p.data_ptr() for p in model.parameters()}
    assert not original_ptrs & {p.data_ptr() for p in fused.parameters()}
    # the original still trains through its branches
    model.train()
    running_mean = model.body[0].branch_identity.running_mean.clone()
    model(_x()).square().mean().backward()
    assert model.body[0].branch_1x1.conv.weight.grad is not None
    assert model.body[0].branch_identity.weight.grad is not None
    assert model.body[0].branch_1x1.conv.weight.grad.abs().sum() > 0
    # BN statistics of the original still update in train mode
    assert not torch.equal(model.body[0].branch_identity.running_mean, running_mean)


def test_inplace_true_modifies_the_model():
    model = _net(3).eval()
    x = _x()
    with torch.no_grad():
        expected = model(x)
    fused = fuse_model(model, inplace=True)
    assert fused is model
    assert not any(isinstance(m, (RepVGGBlock, ConvBN)) for m in model.modules())
    with torch.no_grad():
        assert _max_diff(model(x), expected) <= 1e-10


# --------------------------------------------------------------------------------------------
# foreign conventions
# --------------------------------------------------------------------------------------------


class SwitchToDeployBlock(nn.Module):
    """Official-repo style: two parallel 3x3 convs; switch_to_deploy() merges them in place."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch_a = nn.Conv2d(channels, channels, 3, padding=1)
        self.branch_b = nn.Conv2d(channels, channels, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "merged"):
            return self.merged(x)
        return self.branch_a(x) + self.branch_b(x)

    def switch_to_deploy(self) -> None:
        self.calls += 1
        merged = copy.deepcopy(self.branch_a)
        with torch.no_grad():
            merged.weight.add_(self.branch_b.weight)
            merged.bias.add_(self.branch_b.bias)
        del self.branch_a, self.branch_b
        self.merged = merged


class ReparameterizeBlock(nn.Module):
    """timm / MobileOne style: a residual Linear; reparameterize() folds the identity into the weight."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)
        self.deployed = False
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if self.deployed else self.linear(x) + x

    def reparameterize(self) -> None:
        self.calls += 1
        with torch.no_grad():
            self.linear.weight.add_(torch.eye(self.linear.in_features, dtype=self.linear.weight.dtype))
        self.deployed = True


class ForeignContainer(nn.Module):
    """A foreign block whose children include litzoo blocks: those must be fused too."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = RepVGGBlock(4, 4)
        self.deploy_flag = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def switch_to_deploy(self) -> None:
        self.deploy_flag = True


class ForeignNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(SwitchToDeployBlock(4), nn.ReLU(), ForeignContainer())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(ReparameterizeBlock(4), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def test_foreign_conventions_are_converted():
    torch.manual_seed(0)
    model = randomize_batchnorm(ForeignNet(), 5).double().eval()
    x = _x(channels=4)
    with torch.no_grad():
        expected = model(x)
    fused = fuse_model(model)

    switch = fused.features[0]
    assert switch.calls == 1
    assert hasattr(switch, "merged") and not hasattr(switch, "branch_a") and not hasattr(switch, "branch_b")
    rep = fused.head[0]
    assert rep.calls == 1 and rep.deployed
    assert fused.features[2].deploy_flag
    assert isinstance(fused.features[2].inner, nn.Sequential)  # the RepVGGBlock inside was fused
    # the original (inplace=False) was not converted
    assert model.features[0].calls == 0 and hasattr(model.features[0], "branch_a")
    assert model.head[0].calls == 0 and not model.head[0].deployed
    assert not model.features[2].deploy_flag
    with torch.no_grad():
        assert _max_diff(fused(x), expected) <= 1e-10


def test_foreign_root_module_is_converted():
    block = ReparameterizeBlock(3).double()
    x = torch.randn(2, 3, dtype=F64)
    with torch.no_grad():
        expected = block(x)
    fused = fuse_model(block, inplace=True)
    assert fused is block and block.calls == 1 and block.deployed
    with torch.no_grad():
        assert _max_diff(fused(x), expected) <= 1e-12


# --------------------------------------------------------------------------------------------
# errors, root with fuse(), train/eval flags
# --------------------------------------------------------------------------------------------


class BadFuse(nn.Module):
    def __init__(self, result: object) -> None:
        super().__init__()
        self.result = result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def fuse(self) -> object:
        return self.result


@pytest.mark.parametrize(
    "result", [None, (torch.zeros(1), torch.zeros(1)), torch.zeros(1, 1, 3, 3)], ids=["none", "tuple", "tensor"]
)
@pytest.mark.parametrize("as_root", [False, True], ids=["child", "root"])
def test_fuse_returning_non_module_raises_type_error(result, as_root):
    model = BadFuse(result) if as_root else nn.Sequential(nn.Identity(), nn.Sequential(BadFuse(result)))
    with pytest.raises(TypeError, match="BadFuse"):
        fuse_model(model)


def test_non_callable_fuse_attribute_is_ignored():
    class Flagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fuse = False
            self.conv = ConvBN(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    model = Flagged()
    fused = fuse_model(model)
    assert isinstance(fused, Flagged) and type(fused.conv) is nn.Conv2d


@pytest.mark.parametrize("inplace", [False, True])
def test_root_module_with_fuse(inplace):
    block = randomize_batchnorm(RepVGGBlock(5, 5, groups=5), 6).double().eval()
    x = torch.randn(2, 5, 7, 9, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = block(x)
    fused = fuse_model(block, inplace=inplace)
    assert isinstance(fused, nn.Sequential) and type(fused[0]) is nn.Conv2d
    assert not fused.training
    with torch.no_grad():
        assert _max_diff(fused(x), expected) <= 1e-10

    convbn = randomize_batchnorm(ConvBN(3, 4, 3, stride=2, padding=1), 7).double().eval()
    fused_conv = fuse_model(convbn, inplace=inplace)
    assert type(fused_conv) is nn.Conv2d and fused_conv.stride == (2, 2)
    xc = torch.randn(2, 3, 7, 9, dtype=F64)
    with torch.no_grad():
        assert _max_diff(fused_conv(xc), convbn(xc)) <= 1e-10


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_train_eval_flags_preserved_on_replacements(mode):
    model = _net(4)
    model.train(mode == "train")
    if mode == "mixed":
        model.train()
        model.body[1].eval()
        model.stem.eval()
    flags = {name: model.get_submodule(name).training for name in ("stem", "body.0", "body.1", "body.2.0", "body.2.1")}
    root_flag = model.training
    fused = fuse_model(model)
    assert fused.training == root_flag
    for name, flag in flags.items():
        replacement = fused.get_submodule(name)
        assert not isinstance(replacement, (RepVGGBlock, ConvBN))
        assert all(m.training == flag for m in replacement.modules()), name
    if mode == "mixed":
        assert not fused.stem.training and fused.body[0].training and not fused.body[1].training


def test_is_fusable():
    assert is_fusable(RepVGGBlock(2, 2))
    assert is_fusable(ConvBN(2, 2, 1))
    assert is_fusable(SwitchToDeployBlock(2))
    assert is_fusable(ReparameterizeBlock(2))
    assert not is_fusable(nn.Sequential(RepVGGBlock(2, 2)))  # only children are fusable
    assert not is_fusable(nn.Conv2d(2, 2, 3))
    assert not is_fusable(nn.BatchNorm2d(2))


_IMPORT_CHECK = """
import importlib, sys, traceback
import torch  # loaded once; only litzoo's own modules are dropped between attempts
failed = []
for name in {names!r}:
    for key in [k for k in sys.modules if k.split(".")[0] == "litzoo"]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=2).strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_public_packages_import_first_in_a_fresh_interpreter():
    """Each package must import on its own as the first litzoo import (no import cycle).

    ``from litzoo.framework.reparam import ConvBN`` as a user's first import is the common case.
    """
    names = ["litzoo.framework.reparam.conv_bn", "litzoo.framework.reparam.repvgg_block", "litzoo.framework.reparam", "litzoo.framework.reparam.fusion",
             "litzoo.cli", "litzoo.modules", "litzoo.callbacks", "litzoo.datamodules"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK.format(names=names)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_blocks_converted_inside_a_foreign_block_fuse_before_it():
    """StructuralReparam put ACB blocks in place of the convs inside another repository's RepVGG blocks
    (``rbr_dense``): their switch_to_deploy() reads ``rbr_dense[0].weight`` and ``rbr_dense[1]``'s statistics,
    so the ACB blocks must be back to a conv and a BatchNorm first (before: 'ACBlock' object has no attribute 'weight')."""
    from user_models import UserOfficialRepVGG

    from litzoo.framework.reparam.acb import ACBlock
    from litzoo.framework.reparam.convert import convert_to_branches

    torch.manual_seed(0)
    model = UserOfficialRepVGG()
    report = convert_to_branches(model, "acb")
    assert {"stage.0.rbr_dense.0", "stage.1.rbr_dense.0", "stage.2.rbr_dense.0"} <= {layer.conv for layer in report.converted}
    model = randomize_batchnorm(model, 4).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
    fused = fuse_model(model)
    assert not any(isinstance(m, ACBlock) for m in fused.modules())
    assert all(hasattr(block, "rbr_reparam") and not hasattr(block, "rbr_dense") for block in fused.stage)
    assert type(fused.stem[0]) is nn.Conv2d and type(fused.stem[1]) is nn.BatchNorm2d  # the user's own layers, back in place
    with torch.no_grad():
        assert _max_diff(fused(x), expected) <= 1e-10
