"""FastClip (callbacks/fastclip.py): clipping pushes sigma to <= c, leaves small layers alone, resumes exactly."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.fastclip import FastClip
from framework.spectral import conv_spectral_norm, explicit_operator


def exact_sigma(layer: nn.Module, shape) -> float:
    return torch.linalg.svdvals(explicit_operator(layer, shape).double()).max().item()


def scaled_conv(sigma: float, stride: int = 1, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 8, 3, stride, 1)
    with torch.no_grad():
        conv.weight.mul_(sigma / exact_sigma(conv, (4, 8, 8)))
    return conv


def test_clip_events_bring_sigma_down_to_c_and_leave_small_layers_alone():
    shape = (4, 8, 8)
    big, small = scaled_conv(1.5), scaled_conv(0.6, stride=2, seed=1)
    small_before = [p.detach().clone() for p in small.parameters()]
    callback = FastClip(clip=1.0, warm_iterations=20)
    trajectory = [exact_sigma(big, shape)]
    for _ in range(12):
        callback.clip_step("big", big, shape)
        callback.clip_step("small", small, shape)
        trajectory.append(exact_sigma(big, shape))
    assert all(b < a for a, b in zip(trajectory, trajectory[1:], strict=False)), trajectory
    assert trajectory[-1] <= 1.0 + 0.05, trajectory
    assert trajectory[-1] > 0.9  # clipped to c, not collapsed
    assert all(torch.equal(a, b) for a, b in zip(small_before, small.parameters(), strict=True))
    assert callback.sigmas["small"] == pytest.approx(0.6, rel=1e-2)
    assert set(callback.vectors) == {"big", "small"} and callback.vectors["big"].shape == (1, *shape)


def test_exact_mode_raises_small_layers_towards_c():
    shape = (4, 8, 8)
    small = scaled_conv(0.6)
    callback = FastClip(clip=1.0, exact=True, warm_iterations=20)
    for _ in range(3):
        callback.clip_step("small", small, shape)
    assert exact_sigma(small, shape) > 0.65


def test_clipping_does_not_touch_gradients():
    conv = scaled_conv(1.5)
    FastClip(clip=1.0).clip_step("conv", conv, (4, 8, 8))
    assert all(p.grad is None for p in conv.parameters())


class TinyCNN(nn.Module):
    """A user-written CNN (not litzoo's): two convs (one strided), BN, global pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():  # start well above c so the clipping has work to do
            for m in (self.conv1, self.conv2, self.head):
                m.weight.mul_(2.0)

    def forward(self, x):
        return self.head(F.relu(self.conv2(F.relu(self.bn(self.conv1(x))))).mean((2, 3)))


class UserModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN()

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 6, 10, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (64,), generator=g)), batch_size=8)


def fit(root, epochs, ckpt_path=None, seed=0, **trainer_kwargs):
    torch.manual_seed(seed)
    model, callback = UserModule(), FastClip(clip=1.0, clip_every=2, warmup_steps=4, warm_iterations=20)
    trainer = L.Trainer(
        default_root_dir=root, max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback, ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1)],
        **trainer_kwargs,
    )
    trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model, callback


def test_fit_clips_every_layer_of_a_user_cnn_and_logs_sigma(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    model, callback = fit(tmp_path, epochs=8, logger=CSVLogger(tmp_path))  # 64 steps, events at 4, 6, ..., 64
    net = model.net
    shapes = {"net.conv1": (1, 6, 10), "net.conv2": (6, 6, 10), "net.head": (8,)}
    assert callback.input_shapes == shapes
    assert callback.events == 31
    for name, layer in (("net.conv1", net.conv1), ("net.conv2", net.conv2), ("net.head", net.head)):
        assert exact_sigma(layer, shapes[name]) <= 1.0 + 0.05, name
    state = callback.state_dict()
    assert set(state["vectors"]) == set(shapes) and state["vectors"]["net.conv2"].shape == (1, 6, 6, 10)
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "fastclip/sigma/net.conv2" in metrics and "fastclip/sigma_max" in metrics


def test_resuming_continues_exactly(tmp_path):
    straight, straight_cb = fit(tmp_path / "a", epochs=4)
    fit(tmp_path / "b", epochs=2)
    ckpt = tmp_path / "b" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert any("vectors" in s for s in saved["callbacks"].values())
    resumed, resumed_cb = fit(tmp_path / "b", epochs=4, ckpt_path=ckpt, seed=123)  # another init: all must come from the file
    assert resumed_cb.events == straight_cb.events
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    for name, v in straight_cb.vectors.items():
        assert torch.allclose(v, resumed_cb.vectors[name], atol=1e-6), name


def test_no_target_and_bad_arguments():
    with pytest.raises(ValueError, match="clip must"):
        FastClip(clip=0)
    with pytest.raises(ValueError, match="clip_every"):
        FastClip(clip_every=0)
    with pytest.raises(ValueError, match="clip_step_size"):
        FastClip(clip_step_size=-1)
    with pytest.raises(ValueError, match="include"):
        FastClip(include=[])
    from framework.errors import LitzooError

    with pytest.raises(LitzooError, match="no layer"):
        FastClip(include=["Conv3d"]).targets(TinyCNN())
    assert set(FastClip(exclude=["net.head"]).targets(UserModule())) == {"net.conv1", "net.conv2"}
    assert conv_spectral_norm(nn.Linear(3, 3), (3,)) > 0


DDP_SCRIPT = """
import sys, torch, lightning as L
sys.path.insert(0, {tests!r})
from user_models import UserClassifier, loader
from callbacks.fastclip import FastClip

class SaveRankWeights(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "world_size": trainer.world_size, "clip": clip.state_dict()}}, f"{out}/rank{{trainer.global_rank}}.pt")

L.seed_everything(0)
clip = FastClip(clip=0.5, clip_every=2, warmup_steps=0, power_iterations=20, warm_iterations=4)
trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[clip, SaveRankWeights()])
# each rank sees different batches: the probes and clipping steps must still be identical on both
trainer.fit(UserClassifier("resnet"), loader(n=64))
"""


@pytest.mark.slow
def test_two_process_ddp_clips_identically_on_both_ranks(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "ddp_fastclip.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path, tests=str(Path(__file__).parents[1]))))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    for key in a:
        if "running_" in key or "num_batches" in key:
            continue  # BatchNorm statistics are per rank (each sees its own batches)
        assert torch.equal(a[key], b[key]), key
    state_a, state_b = ranks[0]["clip"], ranks[1]["clip"]
    assert state_a["events"] == state_b["events"] > 0 and state_a["sigmas"] == state_b["sigmas"]
    for name, vector in state_a["vectors"].items():
        assert torch.equal(vector, state_b["vectors"][name]), name
