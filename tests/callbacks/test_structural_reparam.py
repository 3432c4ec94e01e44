"""StructuralReparam on models litzoo did not write: convert, train, fuse back to the same model."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from user_models import UserModule

from litzoo.callbacks.structural_reparam import StructuralReparam
from litzoo.framework.errors import LitzooError
from litzoo.framework.export import export_model
from litzoo.framework.reparam import randomize_batchnorm
from litzoo.framework.reparam.convert import convert_to_branches, fuse_branches

BLOCKS = ["acb", "dbb", "repvgg"]


class UserBlock(nn.Module):
    """A user's residual block: 3x3 conv-BN-ReLU, grouped 3x3 conv-BN, 1x1 projection, addition."""

    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class UserResNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=True)  # a conv with a bias before its BN
        self.stem_bn = nn.BatchNorm2d(8)
        self.layer1 = UserBlock(8, 8, 1, groups=2)
        self.layer2 = UserBlock(8, 12, 2, groups=4)
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        return self.head(self.layer2(self.layer1(x)).mean((2, 3)))


class UserClassifier(UserModule):
    def __init__(self):
        super().__init__(UserResNet())


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 9, 11, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean((1, 2, 3)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def trainer(tmp_path, callback, epochs=1, **kwargs):
    return L.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def layer_shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


EXPECTED = {
    # stem, layer1.conv1, layer1.conv2 (groups 2), layer2.conv1 (stride 2), layer2.conv2 (groups 4), layer2 1x1 shortcut
    "acb": {"net.stem", "net.layer1.conv1", "net.layer1.conv2", "net.layer2.conv1", "net.layer2.conv2"},
    "dbb": {"net.stem", "net.layer1.conv1", "net.layer1.conv2", "net.layer2.conv1", "net.layer2.conv2"},
    "repvgg": {"net.stem", "net.layer1.conv1", "net.layer1.conv2", "net.layer2.conv1", "net.layer2.conv2"},
}


@pytest.mark.parametrize("block", BLOCKS)
def test_converts_every_eligible_conv_and_reports_the_rest(block):
    model = UserClassifier()
    report = convert_to_branches(model, block)
    assert {layer.conv for layer in report.converted} == EXPECTED[block]
    assert "1x1" in report.skipped["net.layer2.shortcut.0"] or block == "repvgg"
    assert "net.layer2.shortcut.0" in report.skipped
    assert isinstance(model.net.stem_bn, nn.Identity) and not isinstance(model.net.stem, nn.Conv2d)
    assert "converted" in report.summary()


def test_ineligible_layers_are_skipped_with_the_reason():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.dilated, self.dilated_bn = nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(4)
            self.reflect, self.reflect_bn = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4)
            self.no_bn = nn.Conv2d(4, 4, 3, padding=1)
            self.shared, self.shared_bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.even, self.even_bn = nn.Conv2d(4, 4, 4, padding=2), nn.BatchNorm2d(4)
            self.ok, self.ok_bn = nn.Conv2d(4, 4, 5, padding=2), nn.BatchNorm2d(4)

        def forward(self, x):
            x = self.reflect_bn(self.reflect(self.dilated_bn(self.dilated(x))))
            x = self.shared_bn(self.shared(self.no_bn(x)))
            x = self.shared(x)  # called twice: its weights are shared, so it must stay a conv
            return self.ok_bn(self.ok(self.even_bn(self.even(x))))

    report = convert_to_branches(Odd(), "dbb")
    assert [layer.conv for layer in report.converted] == ["ok"]
    assert "dilation" in report.skipped["dilated"]
    assert "padding_mode 'reflect'" in report.skipped["reflect"]
    assert "no BatchNorm2d" in report.skipped["no_bn"] and "no BatchNorm2d" in report.skipped["shared"]
    assert "odd k" in report.skipped["even"]
    excluded = convert_to_branches(Odd(), "acb", exclude=["ok"])
    assert excluded.skipped["ok"] == "excluded by a pattern"


@pytest.mark.parametrize("block", BLOCKS)
def test_preserve_init_keeps_the_function_and_fusing_back_restores_the_architecture(block):
    original = randomize_batchnorm(UserClassifier(), seed=1).eval()
    model = copy.deepcopy(original)
    report = convert_to_branches(model, block, init="preserve")
    x = torch.randn(5, 1, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=0)
    randomize_batchnorm(model, seed=2)  # as if trained: every branch now contributes
    with torch.no_grad():
        trained = model(x)
        assert (trained - original(x)).abs().max() > 1e-2
    fuse_branches(model, report.converted)
    assert layer_shapes(model) == layer_shapes(original)
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", BLOCKS)
def test_convert_train_one_epoch_fuse_back(tmp_path, block):
    model = UserClassifier()
    params_before = sum(p.numel() for p in model.parameters())
    shapes_before = layer_shapes(model)
    callback = StructuralReparam(block=block)
    trainer(tmp_path, callback).fit(model, loader(), loader())
    assert layer_shapes(model) == shapes_before
    assert sum(p.numel() for p in model.parameters()) == params_before
    report = callback.fusion_report
    assert report["max_abs_error"] < 1e-5 and report["float64_random_bn_error"] < 1e-10
    assert report["params_training"] > report["params_deploy"] == params_before
    # the fused model is the user's architecture: it exports, and onnxruntime agrees
    error = export_model(model.eval(), torch.randn(4, 1, 9, 11), tmp_path / "fused.onnx", "onnx")
    assert error < 1e-4


def test_resuming_a_converted_run_continues_with_the_branches(tmp_path):
    torch.manual_seed(0)
    straight = UserClassifier()
    trainer(tmp_path / "a", StructuralReparam("dbb", fuse_at_end=False), epochs=2).fit(straight, loader())

    torch.manual_seed(0)
    first = UserClassifier()
    t1 = trainer(tmp_path / "b", StructuralReparam("dbb", fuse_at_end=False), epochs=1)
    t1.fit(first, loader())
    ckpt = tmp_path / "b" / "half.ckpt"
    t1.save_checkpoint(ckpt)
    assert any(".branch_1x1_kxk." in k for k in torch.load(ckpt, weights_only=True)["state_dict"])

    torch.manual_seed(123)  # a different fresh init: everything must come from the checkpoint
    resumed = UserClassifier()
    trainer(tmp_path / "b", StructuralReparam("dbb", fuse_at_end=False), epochs=2).fit(resumed, loader(), ckpt_path=ckpt)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_a_converted_checkpoint_is_evaluated_as_the_fused_user_model(tmp_path):
    model = UserClassifier()
    t = trainer(tmp_path, StructuralReparam("acb"), enable_checkpointing=True)
    t.fit(model, loader(), loader())
    fused_loss = t.test(model, loader(), verbose=False)[0]["test_loss"]
    fresh = UserClassifier()
    callback = StructuralReparam("acb")
    result = trainer(tmp_path, callback).test(fresh, loader(), ckpt_path=t.checkpoint_callback.last_model_path or t.checkpoint_callback.best_model_path, verbose=False)
    assert layer_shapes(fresh) == layer_shapes(UserClassifier())
    assert result[0]["test_loss"] == pytest.approx(fused_loss, abs=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="block must be one of"):
        StructuralReparam(block="mobileone")
    with pytest.raises(ValueError, match="init must be one of"):
        StructuralReparam(init="zeros")
    with pytest.raises(LitzooError, match="no conv layer"):
        StructuralReparam().convert(nn.Sequential(nn.Linear(2, 2)))
    callback = StructuralReparam("repvgg")
    callback.convert(UserClassifier())
    with pytest.raises(LitzooError, match="already converted"):
        callback.convert(UserClassifier())


# ----------------------------------------------------------------------------------------------- issue 18


def test_convs_of_a_forward_that_computes_widths_from_shapes_are_converted(tmp_path):
    """A ShuffleNetV2 whose units split at ``int(x.size(1) * ratio)``: torch.fx cannot trace the units, and their
    convs were skipped as "not reached by a traceable forward" although they run; now they are paired on a
    forward of ``example_input_array`` and converted."""
    from user_models import ForeignClassifier, foreign_loader

    module = ForeignClassifier("shufflenetv2")
    callback = StructuralReparam("acb")
    options = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer = L.Trainer(max_epochs=1, callbacks=[callback], **options)
    trainer.fit(module, foreign_loader())
    converted = {layer.conv for layer in callback.report.converted}
    assert {"net.conv1", "net.layers.1.conv2", "net.layers.2.conv2"} <= converted  # stem, depthwise 3x3 inside the split units
    assert not any("traceable" in reason for reason in callback.report.skipped.values())
    assert callback.fusion_report["max_abs_error"] < 1e-5
    assert type(module.net.layers[1].conv2) is nn.Conv2d and type(module.net.layers[1].bn2) is nn.BatchNorm2d
    # the training-time checkpoint loads into a fresh model (the conversion is redone with the same pairing) and is tested fused
    fresh, evaluator = ForeignClassifier("shufflenetv2"), StructuralReparam("acb")
    L.Trainer(callbacks=[evaluator], **options).test(fresh, foreign_loader(), ckpt_path=trainer.checkpoint_callback.best_model_path)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert (fresh.eval()(x) - module.eval()(x)).abs().max() < 1e-5


def test_convs_inside_a_block_with_its_own_fuse_are_left_alone():
    """litzoo's RepVGG block fuses top-down from its own branches: a conv inside it is not converted again."""
    from litzoo.framework.reparam import RepVGGBlock

    model = nn.Sequential(RepVGGBlock(3, 4), nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    report = convert_to_branches(model, "acb")
    assert [layer.conv for layer in report.converted] == ["1"]
    assert "a re-parameterizable block whose own fuse() reads it" in report.skipped["0.branch_3x3.conv"]


def test_depthwise_dbb_runs_no_generic_grouped_conv_on_cpu():
    """The 1x1-kxk branch of a depthwise DBB ends in a 2C -> C conv with groups=C, which PyTorch's CPU backend runs
    through its generic grouped path (DBB on a PNASNet trained several times slower than ACB); it runs as two
    depthwise convs now, with the same result."""
    from torch.overrides import TorchFunctionMode

    from litzoo.framework.reparam.dbb import DiverseBranchBlock

    class Convs(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.conv2d:
                x, w = args[0], args[1]
                groups = args[6] if len(args) > 6 else (kwargs or {}).get("groups", 1)
                self.calls.append((x.shape[1] // groups, w.shape[0] // groups))
            return func(*args, **(kwargs or {}))

    block = randomize_batchnorm(DiverseBranchBlock(6, 6, 7, groups=6), 1).double().eval()
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    with Convs() as seen, torch.no_grad():
        y = block(x)
    assert (2, 1) not in seen.calls and seen.calls.count((1, 1)) >= 3  # kxk, and the two halves of conv2
    conv2 = block.branch_1x1_kxk.conv2
    with torch.no_grad():
        assert (conv2(x.repeat(1, 2, 1, 1)) - F.conv2d(x.repeat(1, 2, 1, 1), conv2.weight, None, conv2.stride, 0, 1, 6)).abs().max() < 1e-12
        fused = block.fuse()
        assert (fused(x) - y).abs().max() < 1e-10
