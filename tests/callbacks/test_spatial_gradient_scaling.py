"""SpatialGradientScaling: the re-parameterization identity, the NMI statistics, the callback on a user's CNN."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.callbacks.spatial_gradient_scaling import SpatialGradientScaling, feature_map_dependence, normalized_mutual_information
from litzoo.framework.errors import LitzooError


# ---------------------------------------------------------------- 1. the defining equivalence
def _batches(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64), torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64))
        for _ in range(steps)
    ]


def _sgd(params, nesterov):
    # weight decay in the optimizer: added to the (scaled) gradient inside step(), as the identity needs
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.02, nesterov=nesterov)


def _train_scaled(w0, multiplier, steps, nesterov, loss_decay=0.0):
    """Plain conv, ``grad *= multiplier`` applied by the callback, ``steps`` SGD steps; the final kernel."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False)).double()
    model[0].weight.data.copy_(w0)
    callback = SpatialGradientScaling({"0": multiplier})
    callback.resolve(model)
    optimizer = (
        _sgd(model.parameters(), nesterov)
        if not loss_decay
        else torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov)
    )
    for x, y in _batches(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y) + 0.5 * loss_decay * model[0].weight.pow(2).sum()
        loss.backward()
        callback.scale_gradients()
        optimizer.step()
    return model[0].weight.detach()


def _train_branched(v3, v1, a3, a1, steps, nesterov):
    """The training-time block: ``W = a3 * V3 + a1 * pad(V1)`` (3x3 + centred 1x1), SGD + wd on V3, V1."""
    v3, v1 = v3.clone().requires_grad_(), v1.clone().requires_grad_()
    optimizer = _sgd([v3, v1], nesterov)
    kernel = lambda: a3 * v3 + a1 * F.pad(v1, (1, 1, 1, 1))  # noqa: E731
    for x, y in _batches(steps):
        optimizer.zero_grad()
        F.mse_loss(F.conv2d(x, kernel(), padding=1), y).backward()
        optimizer.step()
    return kernel().detach()


@pytest.mark.parametrize("nesterov", [False, True])
def test_grad_scaling_equals_training_the_branched_block(nesterov):
    g = torch.Generator().manual_seed(1)
    v3, v1 = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(3, 2, 1, 1, generator=g, dtype=torch.float64)
    a3, a1 = 0.7, 1.9
    centre = torch.zeros(3, 3, dtype=torch.float64)
    centre[1, 1] = 1
    w0 = a3 * v3 + a1 * F.pad(v1, (1, 1, 1, 1))
    branched = _train_branched(v3, v1, a3, a1, 25, nesterov)
    # per position: the sum of the squared scales of the branches covering it
    right = _train_scaled(w0, a3**2 + a1**2 * centre, 25, nesterov)
    assert (right - branched).abs().max().item() < 1e-10
    # the scales themselves (power 1) train something else
    wrong = _train_scaled(w0, a3 + a1 * centre, 25, nesterov)
    assert (wrong - branched).abs().max().item() > 1e-3


def test_grad_scaling_equals_sqrt_reparameterization_and_needs_decoupled_decay():
    """``W = sqrt(S) * V`` with SGD + L2 decay on V is SGD on W with ``grad *= S`` and the optimizer's decay on W."""
    g = torch.Generator().manual_seed(2)
    s = torch.rand(3, 3, generator=g, dtype=torch.float64) * 2 + 0.1
    v0 = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    v = v0.clone().requires_grad_()
    optimizer = _sgd([v], nesterov=False)
    for x, y in _batches(30):
        optimizer.zero_grad()
        F.mse_loss(F.conv2d(x, s.sqrt() * v, padding=1), y).backward()
        optimizer.step()
    reparameterized = (s.sqrt() * v).detach()
    scaled = _train_scaled(s.sqrt() * v0, s, 30, nesterov=False)
    assert (scaled - reparameterized).abs().max().item() < 1e-10
    # an L2 term in the loss is scaled with the gradient (decay S * wd on W): not the same training
    coupled = _train_scaled(s.sqrt() * v0, s, 30, nesterov=False, loss_decay=0.02)
    assert (coupled - reparameterized).abs().max().item() > 1e-4


# ---------------------------------------------------------------- 2. the statistics
def test_nmi_of_identical_independent_and_a_hand_computed_pair():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4000, generator=g)
    torch.testing.assert_close(normalized_mutual_information(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    y = torch.randn(3, 20000, generator=g)
    assert normalized_mutual_information(y, torch.randn(3, 20000, generator=g)).max().item() < 0.02

    # NMI from numpy's histogram2d with the official bins and range, then NMI_k = k NMI / ((k - 1) NMI + 1)
    a = torch.randn(1, 500, generator=g, dtype=torch.float64)
    b = a + 0.7 * torch.randn(1, 500, generator=g, dtype=torch.float64)
    an, bn = a[0].numpy(), b[0].numpy()
    bins = 1 + math.ceil(math.log2(500))
    counts, _, _ = np.histogram2d(an, bn, bins=bins, range=[[an.min(), an.max() + 1e-12], [bn.min(), bn.max() + 1e-12]])
    p = counts / counts.sum()

    def entropy(q):
        q = q[q > 0]
        return -(q * np.log2(q)).sum()

    h_xy = entropy(p.ravel())
    nmi = (entropy(p.sum(0)) + entropy(p.sum(1)) - h_xy) / h_xy
    assert 0.1 < nmi < 0.9
    assert normalized_mutual_information(a, b, k=1.0).item() == pytest.approx(nmi, rel=1e-9)
    assert normalized_mutual_information(a, b, k=5.0).item() == pytest.approx(5 * nmi / (4 * nmi + 1), rel=1e-9)
    assert math.isnan(normalized_mutual_information(torch.ones(1, 50), torch.ones(1, 50)).item())  # constant: undefined


def _reference_nmik_diagonal_removal(x: np.ndarray, y: np.ndarray, k: float) -> float:
    """One channel, the official sgs_diagonal_removal semantics, with numpy: non-zero pairs only,
    their own bins and ranges, the histogram's diagonal zeroed, NaN -> 0."""
    keep = (x != 0) & (y != 0)
    if not keep.any():
        return 0.0
    x, y = x[keep], y[keep]
    bins = 1 + math.ceil(math.log2(len(x)))
    counts, _, _ = np.histogram2d(x, y, bins=bins, range=[[x.min(), x.max() + 1e-12], [y.min(), y.max() + 1e-12]])
    counts *= 1 - np.eye(bins)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()

    def entropy(q):
        q = q[q > 0]
        return -(q * np.log2(q)).sum()

    h_xy = entropy(p.ravel())
    if h_xy == 0:
        return 0.0
    nmi = (entropy(p.sum(0)) + entropy(p.sum(1)) - h_xy) / h_xy
    return k * nmi / ((k - 1) * nmi + 1)


def test_nmi_with_diagonal_removal_matches_the_official_semantics():
    """Post-ReLU pairs (a different number of zeros per channel): per-channel numpy reference to 1e-9,
    a constant or all-zero channel gives 0 (not NaN), and the zero pairs did change the value."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3000, generator=g, dtype=torch.float64) + torch.tensor([[-1.0], [0.0], [0.5], [-0.3]], dtype=torch.float64)
    b = a + 0.8 * torch.randn(4, 3000, generator=g, dtype=torch.float64)
    x, y = a.relu(), b.relu()
    x[2], y[2] = 0.0, 0.0  # an all-zero channel
    x[3, :] = 1.0  # a constant channel
    got = normalized_mutual_information(x, y, k=5.0, diagonal_removal=True)
    expected = [_reference_nmik_diagonal_removal(x[c].numpy(), y[c].numpy(), 5.0) for c in range(4)]
    assert got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got[2] == 0 and got[3] == 0 and 0.1 < got[0] < 0.95 and 0.1 < got[1] < 0.95
    plain = normalized_mutual_information(x[:2], y[:2], k=5.0)
    assert (plain - got[:2]).abs().max() > 0.02


def test_dependence_matrix_orientation_on_stripes():
    # constant along the width, independent along the height: neighbours in the same row are the pixel itself
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(8, 2, 400, 1, generator=g).expand(8, 2, 400, 6)
    d = feature_map_dependence([rows], (3, 3))
    torch.testing.assert_close(d[1], torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert d[0].max().item() < 0.1 and d[2].max().item() < 0.1
    torch.testing.assert_close(d, d.flip(0, 1))  # symmetric through the centre
    # transposed maps give the transposed matrix (height and width are not mixed up)
    torch.testing.assert_close(feature_map_dependence([rows.transpose(2, 3)], (3, 3)), d.T)


# ---------------------------------------------------------------- 3. the callback in a Lightning fit
class UserCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)  # depthwise: scaled too
        self.pw = nn.Conv2d(6, 8, 1)  # 1x1: left alone
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(F.relu(self.pw(self.dw(x))).mean((2, 3)))


class UserModule(L.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.net, self.lr = UserCNN(), lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-3)


def smooth_loader(n=48, batch_size=16, seed=0):
    # low-resolution noise upsampled: neighbouring pixels depend strongly on each other
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class RecordingLogger(Logger):
    def __init__(self):
        super().__init__()
        self.metrics: list[dict] = []

    name = "recording"
    version = 0

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))


class GradSpy(L.Callback):
    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters()})


def make_trainer(tmp_path, callbacks, epochs, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def test_fit_scales_exactly_the_kxk_gradients_by_the_computed_s(tmp_path):
    raw, scaled, logger = GradSpy(), GradSpy(), RecordingLogger()
    sgs = SpatialGradientScaling(warmup_epochs=0, update_every_epochs=1)
    module = UserModule()
    make_trainer(tmp_path, [raw, sgs, scaled], epochs=2, logger=logger).fit(module, smooth_loader())
    assert sgs.updates == 2 and sgs.last_update_epoch == 1 and set(sgs.scalings) == {"net.conv1", "net.dw"}
    for s in sgs.scalings.values():
        assert s.shape == (3, 3) and s.mean().item() == pytest.approx(1.0, abs=1e-6)
        assert s[1, 1].item() == s.max().item() and (s[1, 1] > s.flatten()[[0, 1, 2, 3, 5, 6, 7, 8]]).all()
        torch.testing.assert_close(s, s.flip(0, 1))
    # the stem sees the smooth images: neighbours strongly dependent, yet less than the pixel itself
    assert 1.0 < SpatialGradientScaling.centre_ratio(sgs.scalings["net.conv1"]) < 3.0
    assert len(raw.grads) == 6
    for before, after in zip(raw.grads[3:], scaled.grads[3:], strict=True):  # epoch 1: the final S
        for name in before:
            conv = name.rsplit(".", 1)[0]
            if name.endswith("weight") and conv in sgs.scalings:
                torch.testing.assert_close(after[name], before[name] * sgs.scalings[conv], atol=0, rtol=0)
                assert not torch.equal(after[name], before[name])
            else:  # biases, BN, the 1x1 conv and the head are untouched
                assert torch.equal(after[name], before[name]), name
    logged = {k for m in logger.metrics for k in m}
    assert {"sgs/net.conv1/centre_ratio", "sgs/net.dw/centre_ratio"} <= logged


def test_statistics_run_in_eval_mode_and_restore_it():
    module = UserModule().train()
    sgs = SpatialGradientScaling()
    bn = module.net.bn1
    before = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    x = next(iter(smooth_loader()))[0]
    scalings = sgs.compute_scalings(module, [x, x])
    assert set(scalings) == {"net.conv1", "net.dw"}
    assert module.training and bn.training
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])


def test_warmup_keeps_gradients_unscaled(tmp_path):
    raw, scaled = GradSpy(), GradSpy()
    sgs = SpatialGradientScaling(warmup_epochs=1, update_every_epochs=5)
    make_trainer(tmp_path, [raw, sgs, scaled], epochs=1).fit(UserModule(), smooth_loader())
    assert sgs.updates == 0 and sgs.scalings == {}
    for before, after in zip(raw.grads, scaled.grads, strict=True):
        assert all(torch.equal(after[n], before[n]) for n in before)
    assert sgs.is_update_epoch(1) and not sgs.is_update_epoch(2) and sgs.is_update_epoch(6)


def test_arguments_and_unknown_layers_are_refused():
    with pytest.raises(ValueError, match="mutual_information"):
        SpatialGradientScaling("nmi")
    with pytest.raises(ValueError, match="update_every_epochs"):
        SpatialGradientScaling(update_every_epochs=0)
    with pytest.raises(ValueError, match="non-negative"):
        SpatialGradientScaling({"net.conv1": -torch.ones(3, 3)})
    with pytest.raises(LitzooError, match="net.pw"):  # a 1x1 conv has nothing spatial to scale
        SpatialGradientScaling({"net.pw": torch.ones(1, 1)}).resolve(UserModule())
    with pytest.raises(LitzooError, match="shape"):
        SpatialGradientScaling({"net.conv1": torch.ones(5, 5)}).resolve(UserModule())


def test_gradient_clipping_is_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="clips the \\*scaled\\* gradients"):
        make_trainer(tmp_path, [SpatialGradientScaling()], epochs=1, gradient_clip_val=1.0, limit_train_batches=1).fit(
            UserModule(), smooth_loader()
        )


# ---------------------------------------------------------------- 4. resume
def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    def sgs():  # S at epochs 0 and 2; epoch 1 must use the S restored from the checkpoint
        return SpatialGradientScaling(warmup_epochs=0, update_every_epochs=2)

    torch.manual_seed(0)
    full_cb, full = sgs(), UserModule()
    make_trainer(tmp_path / "full", [full_cb], epochs=3).fit(full, smooth_loader())

    torch.manual_seed(0)
    first_cb, first = sgs(), UserModule()
    t = make_trainer(tmp_path / "first", [first_cb], epochs=1)
    t.fit(first, smooth_loader())
    t.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed_cb, resumed = sgs(), UserModule()
    make_trainer(tmp_path / "resumed", [resumed_cb], epochs=3).fit(resumed, smooth_loader(), ckpt_path=tmp_path / "epoch1.ckpt")

    assert resumed_cb.updates == full_cb.updates == 2
    for name in full_cb.scalings:
        torch.testing.assert_close(resumed_cb.scalings[name], full_cb.scalings[name], atol=1e-6, rtol=0)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)


# ---------------------------------------------------------------- 5. DDP
DDP_SCRIPT = """
import sys, torch, lightning as L
sys.path.insert(0, {tests!r})
from test_spatial_gradient_scaling import UserModule, smooth_loader
from litzoo.callbacks.spatial_gradient_scaling import SpatialGradientScaling

class SaveRank(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        # parameters: BN running statistics differ per rank in plain DDP (its buffers are re-broadcast before each forward)
        state = {{k: v.detach().cpu() for k, v in pl_module.named_parameters()}}
        torch.save({{"state": state, "scalings": sgs.scalings, "world_size": trainer.world_size, "updates": sgs.updates}},
                   f"{out}/rank{{trainer.global_rank}}.pt")

L.seed_everything(0)
sgs = SpatialGradientScaling(warmup_epochs=0, update_every_epochs=1)
trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[sgs, SaveRank()])
# each rank trains on different batches; S is computed on rank 0 and broadcast
trainer.fit(UserModule(), smooth_loader(n=64))
"""


@pytest.mark.slow
def test_two_process_ddp_scales_identically_on_both_ranks(tmp_path):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "ddp_sgs.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path, tests=str(Path(__file__).parent))))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["updates"] == 2 for r in ranks)
    assert ranks[0]["scalings"].keys() == ranks[1]["scalings"].keys() == {"net.conv1", "net.dw"}
    for name, s in ranks[0]["scalings"].items():
        assert torch.equal(s, ranks[1]["scalings"][name]) and not torch.allclose(s, torch.ones(3, 3))
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert "net.conv1.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
