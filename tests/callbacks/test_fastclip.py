"""FastClip (callbacks/fastclip.py): clipping pushes sigma to <= c, leaves small layers alone, resumes exactly;
conv+BN composites (found on any model), the BN clamp and deflate_iter."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.callbacks.fastclip import ConvBN, FastClip, clamp_batchnorm
from litzoo.framework.spectral import conv_spectral_norm, explicit_operator, power_qr


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


def fit(root, epochs, ckpt_path=None, seed=0, batchnorm="compose", **trainer_kwargs):
    torch.manual_seed(seed)
    model, callback = UserModule(), FastClip(clip=1.0, clip_every=2, warmup_steps=4, warm_iterations=20, batchnorm=batchnorm)
    trainer = L.Trainer(
        default_root_dir=root, max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback, ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1)],
        **trainer_kwargs,
    )
    trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model, callback


@pytest.mark.parametrize("batchnorm", ["compose", "ignore"])
def test_fit_clips_every_layer_of_a_user_cnn_and_logs_sigma(tmp_path, batchnorm):
    from lightning.pytorch.loggers import CSVLogger

    model, callback = fit(tmp_path, epochs=8, batchnorm=batchnorm, logger=CSVLogger(tmp_path))  # 64 steps, events at 4, 6, ..., 64
    net = model.net
    shapes = {"net.conv1": (1, 6, 10), "net.conv2": (6, 6, 10), "net.head": (8,)}
    assert callback.input_shapes == shapes
    assert callback.pairs == {"net.conv1": "net.bn"}  # found by the hooks of the training forward, on any model
    assert callback.events == 31
    # compose: conv1 is clipped through BN o conv1 (eval mode), which is what the network applies at test time
    first = nn.Sequential(net.conv1, net.bn) if batchnorm == "compose" else net.conv1
    for name, layer in (("net.conv1", first), ("net.conv2", net.conv2), ("net.head", net.head)):
        assert exact_sigma(layer, shapes[name]) <= 1.0 + 0.05, name
    state = callback.state_dict()
    keys = {"net.conv1+net.bn" if batchnorm == "compose" else "net.conv1", "net.conv2", "net.head"}
    assert set(state["vectors"]) == keys and state["vectors"]["net.conv2"].shape == (1, 6, 6, 10)
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "fastclip/sigma/net.conv2" in metrics and "fastclip/sigma_max" in metrics
    assert ("fastclip/sigma/net.conv1+net.bn" in metrics) == (batchnorm == "compose")
    if batchnorm == "ignore":  # the BN is left as it is: BN o conv1 is not bounded
        assert "fastclip/sigma/net.bn" not in metrics


def test_resuming_continues_exactly(tmp_path):
    straight, straight_cb = fit(tmp_path / "a", epochs=4)
    fit(tmp_path / "b", epochs=2)
    ckpt = tmp_path / "b" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert any("vectors" in s and s["pairs"] == {"net.conv1": "net.bn"} for s in saved["callbacks"].values())
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
    with pytest.raises(ValueError, match="batchnorm"):
        FastClip(batchnorm="fold")
    with pytest.raises(ValueError, match="deflate_iter"):
        FastClip(deflate_iter=0)
    from litzoo.framework.errors import LitzooError

    with pytest.raises(LitzooError, match="no layer"):
        FastClip(include=["Conv3d"]).targets(TinyCNN())
    assert set(FastClip(exclude=["net.head"]).targets(UserModule())) == {"net.conv1", "net.conv2"}
    assert conv_spectral_norm(nn.Linear(3, 3), (3,)) > 0


# ---------------------------------------------------------------- conv + BN composite, BN clamp, deflate_iter
def conv_bn(gain: float = 1.0, seed: int = 0) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A strided conv into a BN with non-trivial running statistics, gamma (mixed signs) and beta."""
    g = torch.Generator().manual_seed(seed)
    conv, bn = nn.Conv2d(4, 8, 3, 2, 1), nn.BatchNorm2d(8)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
        bn.running_var.copy_(torch.rand(8, generator=g) * 3.75 + 0.25)
        bn.running_mean.copy_(torch.randn(8, generator=g))
        bn.weight.copy_(gain * (torch.rand(8, generator=g) * 1.5 + 0.5) * torch.randn(8, generator=g).sign())
        bn.bias.copy_(torch.randn(8, generator=g))
    return conv, bn


def test_powerqr_of_the_conv_bn_composite_is_its_exact_norm_and_below_the_product_bound():
    shape = (4, 8, 8)
    conv, bn = conv_bn()
    exact = exact_sigma(nn.Sequential(conv, bn).eval(), shape)
    conv.train(), bn.train()  # ConvBN is the eval-mode operator whatever the modules' modes
    sigmas, _ = power_qr(ConvBN(conv, bn), shape, iterations=300, generator=torch.Generator().manual_seed(0))
    assert abs(float(sigmas[0]) - exact) / exact < 1e-3
    gains = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
    product = exact_sigma(conv, shape) * gains.max().item()
    assert exact < 0.95 * product, (exact, product)  # the composite is strictly tighter than the product bound
    assert bn.training and conv.training  # modes restored


@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_clip_events_bring_the_composite_to_c_moving_only_conv_weight_and_gamma(gain):
    shape = (4, 8, 8)
    conv, bn = conv_bn(gain)
    with torch.no_grad():
        conv.weight.mul_(1.5 / exact_sigma(nn.Sequential(conv, bn).eval(), shape))  # composite sigma 1.5
    fixed = {"conv.bias": conv.bias, "bn.bias": bn.bias, "running_mean": bn.running_mean, "running_var": bn.running_var}
    fixed = {k: v.detach().clone() for k, v in fixed.items()}
    gamma = bn.weight.detach().clone()
    callback = FastClip(clip=1.0, warm_iterations=20)
    trajectory = [exact_sigma(nn.Sequential(conv, bn).eval(), shape)]
    for _ in range(10):
        callback.clip_composite("conv", conv, "bn", bn, shape)
        trajectory.append(exact_sigma(nn.Sequential(conv, bn).eval(), shape))
    assert all(b < a for a, b in zip(trajectory, trajectory[1:], strict=False)), trajectory
    assert 0.9 < trajectory[-1] <= 1.0 + 0.05, trajectory  # clipped to c, not collapsed
    assert set(callback.vectors) == {"conv+bn"} and callback.sigmas["conv+bn"] <= 1.0 + 0.05
    assert not torch.equal(bn.weight, gamma)  # gamma takes steps too (official: every "weight" of the composite)
    now = {"conv.bias": conv.bias, "bn.bias": bn.bias, "running_mean": bn.running_mean, "running_var": bn.running_var}
    assert all(torch.equal(fixed[k], now[k]) for k in fixed)
    assert all(p.grad is None for p in (*conv.parameters(), *bn.parameters()))


def test_deflate_iter_runs_several_rounds_per_event():
    shape = (4, 8, 8)
    one, three = scaled_conv(1.5), scaled_conv(1.5)
    FastClip(clip=1.0, warm_iterations=20).clip_step("conv", one, shape)
    FastClip(clip=1.0, warm_iterations=20, deflate_iter=3).clip_step("conv", three, shape)
    assert exact_sigma(three, shape) < exact_sigma(one, shape) - 0.05
    small = scaled_conv(0.6)
    before = [p.detach().clone() for p in small.parameters()]
    FastClip(clip=1.0, deflate_iter=3).clip_step("small", small, shape)  # nothing to clip: no round at all
    assert all(torch.equal(a, b) for a, b in zip(before, small.parameters(), strict=True))


class PairsCNN(nn.Module):
    """A user-written CNN with every way a conv and a BN can meet."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())  # pair
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)  # pair (functional call order, not Sequential)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(4)  # after a ReLU: not a pair
        self.c = nn.Conv2d(4, 4, 1)
        self.relu_c = nn.ReLU(inplace=True)
        self.bn_c = nn.BatchNorm2d(4)  # the same tensor object, but edited in place: not a pair
        self.d = nn.Conv2d(4, 4, 1)
        self.bn_d = nn.BatchNorm2d(4)  # fed by an add: a lone BN
        self.e = nn.Conv2d(4, 4, 1)
        self.bn_e1, self.bn_e2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)  # one output into two BNs: not a pair
        self.fc = nn.Linear(4, 6)
        self.bn_fc = nn.BatchNorm1d(6)  # linear -> BatchNorm1d: a pair
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn_a(self.a(x)))
        x = self.bn_b(F.relu(self.b(x)))
        x = self.bn_c(self.relu_c(self.c(x)))
        x = self.bn_d(self.d(x) + x)
        e = self.e(x)
        x = self.bn_e1(e) + self.bn_e2(e)
        return self.head(F.relu(self.bn_fc(self.fc(x.mean((2, 3))))))


EXPECTED_PAIRS = {"stem.0": "stem.1", "a": "bn_a", "fc": "bn_fc"}


def test_trace_finds_exactly_the_conv_bn_pairs_of_a_user_cnn():
    torch.manual_seed(0)
    net = PairsCNN()
    callback = FastClip(clip=1.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shapes, pairs = callback.trace(net, torch.randn(2, 1, 6, 6))
    assert pairs == EXPECTED_PAIRS
    assert shapes["fc"] == (4,) and shapes["stem.0"] == (1, 6, 6) and len(shapes) == 8
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # eval mode: no BN statistic moved
    assert net.training
    # an excluded BN is no partner: its conv is clipped alone
    assert FastClip(exclude=["bn_a"]).trace(net, torch.randn(2, 1, 6, 6))[1] == {"stem.0": "stem.1", "fc": "bn_fc"}


def test_training_forward_finds_the_pairs_and_an_event_clips_composites_and_clamps_lone_bns():
    torch.manual_seed(0)
    module = UserModule()
    module.net = PairsCNN()
    with torch.no_grad():
        for m in module.net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.fill_(4.0)  # every BN gain well above c
    callback = FastClip(clip=1.0, clip_every=1, warmup_steps=1, warm_iterations=5, power_iterations=30)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, loader())
    pairs = {f"net.{conv}": f"net.{bn}" for conv, bn in EXPECTED_PAIRS.items()}
    assert callback.pairs == pairs and callback.events == 1
    lone = {"net.bn_b", "net.bn_c", "net.bn_d", "net.bn_e1", "net.bn_e2"}
    composites = {f"{conv}+{bn}" for conv, bn in pairs.items()}
    assert set(callback.sigmas) == composites | lone | {"net.b", "net.c", "net.d", "net.e", "net.head"}
    for name in lone:  # clamped: every channel's gain <= c
        bn = module.get_submodule(name)
        assert (bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)).max() <= 1.0 + 1e-6, name
    for name in pairs.values():  # a paired BN is not clamped (it moved by the composite's steps only)
        assert module.get_submodule(name).weight.abs().min() > 3.0, name


def test_batchnorm_clamp_by_hand():
    bn = nn.BatchNorm2d(4, eps=1e-5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, -0.2, -5.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 9.0]))
    sigma = clamp_batchnorm(bn, 1.0)
    assert sigma == pytest.approx(5.0 / (0.25 + 1e-5) ** 0.5)  # the largest |gamma| / sqrt(var + eps), before
    expected = torch.tensor([(4.0 + 1e-5) ** 0.5, -0.2, -((0.25 + 1e-5) ** 0.5), 0.5])
    assert torch.allclose(bn.weight, expected, atol=1e-6)
    assert exact_sigma(bn, (4, 3, 3)) == pytest.approx(1.0, abs=1e-5)  # the eval-mode BN's spectral norm is now c
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, -0.2, -5.0, 0.5]))
    assert clamp_batchnorm(bn, 2.0) > 2.0 and torch.allclose(bn.weight, torch.tensor([3.0, -0.2, -2 * (0.25 + 1e-5) ** 0.5, 0.5]), atol=1e-6)


@pytest.mark.parametrize("mode", ["clamp", "ignore"])
def test_clamp_and_ignore_modes_clip_the_conv_alone(mode):
    conv, bn = conv_bn(gain=3.0)
    with torch.no_grad():
        conv.weight.mul_(1.5 / exact_sigma(conv, (4, 8, 8)))
    net = nn.Sequential(conv, bn)
    callback = FastClip(clip=1.0, batchnorm=mode, warm_iterations=20)
    _, pairs = callback.trace(net, torch.randn(1, 4, 8, 8))
    assert pairs == {"0": "1"}  # detected in every mode, used only by "compose"
    gamma = bn.weight.detach().clone()
    for _ in range(12):
        sigmas = callback.clip_module(net)
    assert "0+1" not in sigmas and exact_sigma(conv, (4, 8, 8)) <= 1.0 + 0.05
    gains = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
    if mode == "clamp":
        assert gains.max() <= 1.0 + 1e-6 and "1" in sigmas
    else:
        assert torch.equal(bn.weight, gamma) and "1" not in sigmas


DDP_SCRIPT = """
import sys, torch, lightning as L
sys.path.insert(0, {tests!r})
from user_models import UserClassifier, loader
from litzoo.callbacks.fastclip import FastClip

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
    # the default clips conv+BN composites, with rank 0's BN statistics (each rank's drift apart)
    assert state_a["pairs"] == state_b["pairs"] and "net.stem.0+net.stem.1" in state_a["sigmas"]
    for name, vector in state_a["vectors"].items():
        assert torch.equal(vector, state_b["vectors"][name]), name


def test_a_run_too_short_for_any_clip_event_warns_at_start_and_at_the_end(tmp_path):
    """FastClip() with its defaults (warmup 500, every 50) in a 30-step fit: no layer is ever clipped; say so."""
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback := FastClip()],
    )  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        trainer.fit(UserModule(), loader())
    messages = [str(w.message) for w in caught if "FastClip" in str(w.message)]
    assert any("30 optimizer steps and the first clip event comes at step 500" in m for m in messages)
    assert any("without a clip event" in m for m in messages)
    assert callback.events == 0
    assert FastClip(warmup_steps=0, clip_every=50).first_event_step() == 50
    assert FastClip(warmup_steps=120, clip_every=50).first_event_step(after=140) == 150
