"""ReparamFusion on a user's own LightningModule: fuse at fit end, verify, refuse a wrong fuse()."""

from __future__ import annotations

from collections import OrderedDict

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.callbacks.reparam_fusion import ReparamFusion
from litzoo.framework.data.batches import batch_inputs
from litzoo.framework.deploy import is_fused_checkpoint
from litzoo.framework.errors import LitzooError
from litzoo.framework.reparam import ConvBN, RepVGGBlock


class UserNet(L.LightningModule):
    """Not a litzoo model: tuple batches, its own layout, RepVGG blocks used as a plug-in."""

    def __init__(self, block: type[nn.Module] = RepVGGBlock) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(stem=ConvBN(1, 6, 3, padding=1), act=nn.ReLU(), body=block(6, 6), down=block(6, 8, stride=2)))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loaders():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 9, 9, generator=generator), torch.randint(0, 3, (48,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)


def fit(model: L.LightningModule, callback: ReparamFusion, root) -> L.Trainer:
    train, val = loaders()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[callback], default_root_dir=root,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train, val)
    return trainer


def test_fuses_a_user_model_and_writes_a_deploy_checkpoint(tmp_path):
    model = UserNet()
    callback = ReparamFusion(latency_repeats=2)
    _, val = loaders()
    x = next(iter(val))[0]
    trainer = fit(model, callback, tmp_path)
    assert not any(isinstance(m, (RepVGGBlock, ConvBN, nn.BatchNorm2d)) for m in model.modules())
    assert callback.report["max_abs_error"] < 1e-5
    assert callback.report["params_after"] < callback.report["params_before"]
    assert callback.report["flops_after"] < callback.report["flops_before"]
    checkpoint = torch.load(callback.deploy_path, weights_only=True)
    assert is_fused_checkpoint(checkpoint)
    # the deploy weights reproduce the fused model's outputs
    rebuilt = UserNet()
    from litzoo.framework.reparam import fuse_model

    fuse_model(rebuilt, inplace=True)
    rebuilt.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-6)
    assert trainer.state.finished


class WrongFuseBlock(RepVGGBlock):
    """A block whose fuse() forgets the 1x1 branch: the check must catch it."""

    def fuse(self):
        kernel, bias = self.branch_3x3.get_equivalent_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, groups=self.groups)
        conv.weight.data, conv.bias.data = kernel.detach(), bias.detach()
        return nn.Sequential(conv, nn.ReLU())


def test_refuses_a_fuse_that_changes_outputs(tmp_path):
    with pytest.raises(LitzooError, match="fused outputs differ"):
        fit(UserNet(block=WrongFuseBlock), ReparamFusion(measure_latency=False), tmp_path)


def test_warns_when_nothing_to_fuse(tmp_path):
    class Plain(UserNet):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU())

    callback = ReparamFusion()
    with pytest.warns(UserWarning, match="nothing to fuse"):
        fit(Plain(), callback, tmp_path)
    assert callback.deploy_path is None and not callback.fused


def test_test_outside_fit_runs_the_fused_model(tmp_path):
    model = UserNet()
    _, val = loaders()
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[ReparamFusion()], enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.validate(model, val)
    assert not any(isinstance(m, RepVGGBlock) for m in model.modules())


def test_batch_inputs_and_argument_checks():
    image = torch.zeros(2, 1, 4, 4)
    assert batch_inputs({"image": image, "label": torch.zeros(2)}) is image
    assert batch_inputs((image, torch.zeros(2))) is image
    assert batch_inputs(image) is image
    with pytest.raises(ValueError):
        ReparamFusion(tolerance=0)
    with pytest.raises(ValueError):
        ReparamFusion(latency_repeats=0)


def test_a_diverged_model_is_refused_and_no_deploy_checkpoint_is_written(tmp_path):
    """lr 1e10 in the issue; here a NaN weight: the outputs are NaN, `error > allowed` would be False."""
    model = UserNet()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    callback = ReparamFusion(measure_latency=False)
    with pytest.raises(LitzooError, match=r"ReparamFusion: the trained model's outputs on a real batch are not finite \(\d+ NaN") as excinfo:
        fit(model, callback, tmp_path)
    assert "\n" not in str(excinfo.value) and "no deploy checkpoint written" in str(excinfo.value)
    assert not list(tmp_path.rglob("deploy.ckpt")) and not callback.fused


@pytest.mark.parametrize("name", ["../deploy.ckpt", "/tmp/deploy.ckpt", "checkpoints/deploy.ckpt"])
def test_deploy_filename_must_stay_in_the_checkpoint_folder(name):
    with pytest.raises(ValueError, match=r"ReparamFusion: deploy_filename must be a plain file name"):
        ReparamFusion(deploy_filename=name)


def test_latency_ratio_comes_from_alternating_rounds_of_both_models(tmp_path, monkeypatch):
    """The two models are timed together (compare_latency), the training-time one on a copy; no time is asserted."""
    from litzoo.callbacks import reparam_fusion

    calls = []

    def fake_compare_latency(models, example, rounds, min_sample_seconds):
        calls.append(([any(isinstance(m, RepVGGBlock) for m in model.modules()) for model in models], rounds))
        return [0.004, 0.001]

    monkeypatch.setattr(reparam_fusion, "compare_latency", fake_compare_latency)
    model = UserNet()
    callback = ReparamFusion(latency_repeats=7, deploy_filename=None)
    fit(model, callback, tmp_path)
    assert calls == [([True, False], 7)]  # the unfused copy and the fused model, in one call
    assert callback.report["latency_ratio"] == pytest.approx(0.25)
    assert callback.report["latency_ms_before"] == pytest.approx(4.0) and callback.report["latency_ms_after"] == pytest.approx(1.0)
