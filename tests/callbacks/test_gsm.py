"""GlobalSparseMomentum on models litzoo did not write: the gradient surgery, the decay rule, the final mask."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from user_models import UserModule

from litzoo.callbacks.gsm import GlobalSparseMomentum
from litzoo.framework.errors import LitzooError

# the tests run a few steps on purpose; the budget warning is checked in its own test
pytestmark = pytest.mark.filterwarnings("ignore:GlobalSparseMomentum.*decay budget:UserWarning")


def mlp():
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


class SmallCNN(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(F.relu(self.bn2(self.conv2(x))).mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, depthwise 3x3, linear 1x1 projection, identity shortcut."""

    def __init__(self, channels, expand=3):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.project(self.depthwise(self.expand(x)))


class UserMobileNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        return self.classifier(self.blocks(self.stem(x)).mean((2, 3)))


class HalfUsed(nn.Module):
    """``unused`` gets an exactly zero objective gradient, so GSM never selects it."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        return self.used(x) + 0.0 * self.unused(x).sum(1, keepdim=True)


def image_loader(n=48, batch_size=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x[:, :, :4].mean((1, 2, 3)) > 0).long() + (x[:, :, :, :4].mean((1, 2, 3)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def vector_loader(n=32, batch_size=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=dtype)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class RecordingLogger(Logger):
    """Keeps every logged metric in memory."""

    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


def trainer(tmp_path, callback, epochs=1, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        max_epochs=epochs,
        callbacks=[callback] + kwargs.pop("extra_callbacks", []),
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def zeros_and_total(callback, model):
    targets = callback.targets(model)
    return sum(int((p == 0).sum()) for _, p in targets), sum(p.numel() for _, p in targets)


# ---------------------------------------------------------------- 1. the surgery, by hand
@pytest.mark.parametrize("weight_decay", [None, 0.05])
def test_one_step_keeps_exactly_the_top_q_taylor_scores(weight_decay):
    model = mlp()
    g = torch.Generator().manual_seed(3)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=g)
        p.grad = torch.randn(p.shape, generator=g)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    callback = GlobalSparseMomentum(sparsity=0.7, weight_decay=weight_decay)  # N = 12 + 6 = 18 -> Q = round(5.4) = 5
    targets = callback.targets(model)
    assert [n for n, _ in targets] == ["0.weight", "2.weight"]
    assert callback.num_kept(18) == 5

    threshold = callback.mask_gradients(targets)

    # the 5 largest |w * g| over both layers, found independently of the callback
    scores = {(n, i): (p.detach().flatten()[i] * grads[n].flatten()[i]).abs().item() for n, p in targets for i in range(p.numel())}
    top = sorted(scores, key=scores.get, reverse=True)[:5]
    assert threshold.item() == pytest.approx(scores[top[-1]], rel=1e-6)
    decay = weight_decay or 0.0
    for name, p in targets:
        for i in range(p.numel()):
            objective = grads[name].flatten()[i] if (name, i) in top else 0.0
            expected = objective + decay * p.detach().flatten()[i]
            assert p.grad.flatten()[i].item() == pytest.approx(float(expected), abs=1e-7), (name, i)
    assert sum(int((p.grad != 0).sum()) for _, p in targets) == (5 if weight_decay is None else 18)
    for name in ("0.bias", "2.bias"):  # biases are not targets: untouched
        assert torch.equal(dict(model.named_parameters())[name].grad, grads[name])


def test_non_finite_gradients_are_left_alone():
    model = mlp()
    model(torch.randn(5, 4)).sum().backward()
    model[2].weight.grad[0, 0] = float("inf")
    before = [p.grad.clone() for p in model.parameters()]
    callback = GlobalSparseMomentum(0.5, weight_decay=0.1)
    assert callback.mask_gradients(callback.targets(model)) is None  # AMP's scaler skips this step: no mask, no decay
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.grad, b)


def test_a_target_without_gradient_still_decays():
    model = HalfUsed()
    model.used(torch.randn(5, 4)).sum().backward()  # `unused` is not in the graph: its grad stays None
    assert model.unused.weight.grad is None
    callback = GlobalSparseMomentum(0.5, weight_decay=0.1)
    callback.mask_gradients(callback.targets(model))
    torch.testing.assert_close(model.unused.weight.grad, 0.1 * model.unused.weight.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("weight_decay", [None, 0.05])
def test_weights_follow_the_hand_written_momentum_sgd_recurrence(tmp_path, weight_decay):
    torch.manual_seed(0)
    lr, momentum, lam, sparsity = 0.1, 0.9, 0.05, 0.7
    model = UserModule(mlp(), lr=lr, momentum=momentum, decay=lam if weight_decay is None else 0.0)
    start = copy.deepcopy(model.net).double()
    loader = vector_loader(dtype=torch.float64)
    callback = GlobalSparseMomentum(sparsity=sparsity, weight_decay=weight_decay, deploy_filename=None)
    trainer(tmp_path, callback, epochs=2, precision="64-true").fit(model, loader)
    assert callback.steps == 8 and callback.decay_budget == pytest.approx(8 * lr * lam / (1 - momentum))

    # the same 8 steps written out: GSM mask on |w * g|, + lam * w on the weights, heavy-ball momentum
    net, buffers = start, {}
    for _ in range(2):
        for x, y in loader:
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()
            weights = [p for p in net.parameters() if p.dim() == 2]
            scores = torch.cat([(p * p.grad).abs().flatten() for p in weights])
            kept = round((1 - sparsity) * scores.numel())
            top = torch.zeros_like(scores, dtype=torch.bool)
            top[scores.argsort(descending=True)[:kept]] = True
            with torch.no_grad():
                for p, mask in zip(weights, top.split([p.numel() for p in weights]), strict=True):
                    p.grad = p.grad * mask.view_as(p) + lam * p
                for i, p in enumerate(net.parameters()):
                    buffers[i] = momentum * buffers.get(i, torch.zeros_like(p)) + p.grad
                    p -= lr * buffers[i]
    # the callback's final magnitude mask, by hand
    magnitude = torch.cat([p.detach().abs().flatten() for p in net.parameters() if p.dim() == 2])
    cut = magnitude.sort(descending=True).values[round((1 - sparsity) * magnitude.numel()) - 1]
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p[p.abs() < cut] = 0
    for (name, a), b in zip(model.net.named_parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0, msg=name)


# ---------------------------------------------------------------- 2. global, not per layer
def test_final_mask_is_global_with_exactly_n_minus_q_zeros(tmp_path):
    model = UserModule(SmallCNN(), decay=0.05)
    callback = GlobalSparseMomentum(sparsity=0.8, deploy_filename=None)
    trainer(tmp_path, callback, epochs=2).fit(model, image_loader())
    zeros, total = zeros_and_total(callback, model)
    kept = round(0.2 * total)
    assert zeros == total - kept and callback.report["sparsity"] == pytest.approx(1 - kept / total)
    density = callback.report["density"]
    assert set(density) == {"net.conv1.weight", "net.conv2.weight", "net.head.weight"}
    for name, p in model.named_parameters():
        if name in density:
            assert density[name] == pytest.approx(float((p != 0).float().mean()))
    assert max(density.values()) - min(density.values()) > 0.1  # each layer's share follows the global ranking
    assert (model.net.conv1.bias != 0).all() and (model.net.bn1.weight != 0).all()  # biases and norms stay dense
    assert 0 < callback.report["max_abs_output_change"] < callback.report["max_abs_output"]
    assert callback.mask_applied


def test_validation_during_fit_sees_the_sparse_model_and_training_continues_dense(tmp_path):
    seen = []

    class CountZeros(L.Callback):
        def on_validation_batch_start(self, trainer, pl_module, *args):
            seen.append(zeros_and_total(callback, pl_module))

    runs = {}
    for with_validation in (True, False):
        torch.manual_seed(0)
        model = UserModule(SmallCNN(), decay=0.05)
        callback = GlobalSparseMomentum(sparsity=0.8, deploy_filename=None)
        trainer(tmp_path, callback, epochs=2, extra_callbacks=[CountZeros()]).fit(model, image_loader(), image_loader() if with_validation else None)
        runs[with_validation] = model
    assert len(seen) == 2 + 2 * 3  # sanity check + two epochs of three batches, all on the masked weights
    assert all(zeros == total - round(0.2 * total) for zeros, total in seen)
    for (name, a), (_, b) in zip(runs[True].state_dict().items(), runs[False].state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # the dense weights were put back after every validation


def test_exclude_keeps_layers_dense_and_out_of_the_budget(tmp_path):
    model = UserModule(SmallCNN(), decay=0.05)
    callback = GlobalSparseMomentum(sparsity=0.5, exclude=["net.head.*", "*conv1*"], deploy_filename=None)
    trainer(tmp_path, callback).fit(model, image_loader())
    assert [n for n, _ in callback.targets(model)] == ["net.conv2.weight"]
    assert int((model.net.conv2.weight == 0).sum()) == model.net.conv2.weight.numel() // 2
    assert (model.net.head.weight != 0).all() and (model.net.conv1.weight != 0).all()


# ---------------------------------------------------------------- 3. the decay budget rule
def test_logs_the_budget_and_warns_when_it_is_too_small(tmp_path):
    lr, momentum, lam, steps = 0.05, 0.9, 0.01, 200  # B = 200 * 0.05 * 0.01 / 0.1 = 1
    model = UserModule(HalfUsed(), lr=lr, momentum=momentum, decay=lam)
    callback = GlobalSparseMomentum(sparsity=0.75, deploy_filename=None)  # N = 8 + 16 -> Q = 6 (< 8 used weights)
    logger = RecordingLogger()
    with pytest.warns(UserWarning, match="decay budget .* below 8"):  # estimated at the start, with the explanation
        trainer(tmp_path, callback, epochs=100, max_steps=steps, logger=logger, log_every_n_steps=50).fit(model, vector_loader(n=16))
    logged = {}
    for step, metrics in logger.metrics:
        for key, value in metrics.items():
            logged.setdefault(key, []).append((step, value))
    assert [step for step, _ in logged["gsm/decay_budget"]] == [0, 50, 100, 150]
    assert logged["gsm/decay_budget"][-1][1] == pytest.approx(151 * lr * lam / (1 - momentum))
    assert all(value > 0 for _, value in logged["gsm/threshold"])
    assert 0 <= logged["gsm/sparsity"][-1][1] <= 1
    assert logged["gsm/final_sparsity"] == [(steps, pytest.approx(18 / 24))]
    assert (model.net.unused.weight == 0).all()  # never selected, shrunk, and removed by the final mask


def test_decay_budget_rule_holds_for_passive_weights(tmp_path):
    lr, momentum, lam, steps = 0.05, 0.9, 0.01, 200  # B = 1
    model = UserModule(HalfUsed(), lr=lr, momentum=momentum, decay=lam)
    w0 = model.net.unused.weight.detach().clone()
    # exclude nothing, but keep enough weights (Q = 20 of 24) that the shrunken layer survives the final mask
    callback = GlobalSparseMomentum(sparsity=0.2, deploy_filename=None)
    seen = {}

    class Snapshot(L.Callback):
        def on_train_end(self, trainer, pl_module):  # before on_fit_end's mask
            seen["w"] = pl_module.net.unused.weight.detach().clone()

    trainer(tmp_path, callback, epochs=100, max_steps=steps, extra_callbacks=[Snapshot()]).fit(model, vector_loader(n=16))
    budget = callback.decay_budget
    assert budget == pytest.approx(1.0)
    ratio = seen["w"] / w0
    # never selected (zero objective gradient): one common factor exp(-B), within the documented ~10%
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.mean().item()), atol=1e-6, rtol=0)
    assert ratio.mean().item() == pytest.approx(math.exp(-budget), rel=0.1)
    assert abs(ratio.mean().item() - math.exp(-budget * (1 - momentum))) > 0.3  # the 1 / (1 - momentum) factor matters


# ---------------------------------------------------------------- 4. refused settings
@pytest.mark.parametrize(
    "module, callback, message",
    [
        (dict(decay=5e-4), dict(weight_decay=0.01), "decay twice"),
        (dict(decay=0.0), dict(weight_decay=None), "weight_decay 0"),
        (dict(decay=5e-4, optimizer="adam"), dict(), "torch.optim.SGD"),
        (dict(decay=5e-4, momentum=0.0), dict(), "momentum 0"),
    ],
    ids=["double-decay", "no-decay", "adam", "no-momentum"],
)
def test_incompatible_optimizers_are_refused(tmp_path, module, callback, message):
    with pytest.raises(LitzooError, match=message):
        trainer(tmp_path, GlobalSparseMomentum(**callback)).fit(UserModule(mlp(), **module), vector_loader())


def test_bad_arguments():
    for sparsity in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="sparsity must be a fraction in"):
            GlobalSparseMomentum(sparsity=sparsity)
    with pytest.raises(ValueError, match="weight_decay must be positive"):
        GlobalSparseMomentum(weight_decay=0.0)
    with pytest.raises(LitzooError, match="keeps none"):
        GlobalSparseMomentum(sparsity=0.99).num_kept(10)
    with pytest.raises(LitzooError, match="no parameter to prune"):
        GlobalSparseMomentum(exclude=["*"]).targets(mlp())
    for escaping in ("../../deploy.ckpt", "/tmp/deploy.ckpt", "sub/deploy.ckpt"):
        with pytest.raises(ValueError, match="GlobalSparseMomentum: deploy_filename must be a plain file name"):
            GlobalSparseMomentum(deploy_filename=escaping)


# ---------------------------------------------------------------- 5. resuming
def test_resuming_continues_exactly(tmp_path):
    def run(root, epochs, ckpt_path=None, seed=0):
        torch.manual_seed(seed)
        model = UserModule(SmallCNN(), decay=0.05)
        callback = GlobalSparseMomentum(sparsity=0.8, deploy_filename=None)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True)
        trainer(root, callback, epochs=epochs, enable_checkpointing=True, extra_callbacks=[checkpoint]).fit(model, image_loader(), ckpt_path=ckpt_path)
        return model, callback

    straight, straight_cb = run(tmp_path / "a", 2)
    _, half_cb = run(tmp_path / "b", 1)
    ckpt = tmp_path / "b" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if "GlobalSparseMomentum" in k)
    assert state["steps"] == 3 and state["decay_budget_by_group"] and not state["mask_applied"]
    assert (saved["state_dict"]["net.conv2.weight"] != 0).all()  # saved before the final mask: resumable dense weights
    resumed, resumed_cb = run(tmp_path / "b", 2, ckpt_path=ckpt, seed=123)  # another init: all must come from the file
    assert resumed_cb.steps == straight_cb.steps == 6
    assert resumed_cb.decay_budget == pytest.approx(straight_cb.decay_budget, rel=1e-12)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert zeros_and_total(resumed_cb, resumed)[0] == zeros_and_total(straight_cb, straight)[0]


# ---------------------------------------------------------------- 6. depthwise convs, evaluation outside fit
def test_mobilenet_block_with_depthwise_convs_ends_with_the_exact_global_sparsity(tmp_path):
    model = UserModule(UserMobileNet(), lr=0.02, momentum=0.98, decay=0.05)
    callback = GlobalSparseMomentum(sparsity=0.9)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    t = trainer(tmp_path, callback, epochs=2, enable_checkpointing=True, extra_callbacks=[checkpoint])
    t.fit(model, image_loader(), image_loader())
    zeros, total = zeros_and_total(callback, model)
    assert zeros == total - round(0.1 * total)
    assert "net.blocks.0.depthwise.0.weight" in callback.report["density"]
    assert model.net.blocks[0].depthwise[0].weight.shape[1] == 1  # really depthwise
    sparse_loss = t.test(model, image_loader(), verbose=False)[0]["test_loss"]

    # the deploy file holds the sparse weights; a dense training checkpoint is evaluated as the sparse model
    deploy = torch.load(callback.deploy_path, weights_only=True)["state_dict"]
    assert sum(int((deploy[n] == 0).sum()) for n in callback.report["density"]) == zeros
    fresh, evaluator = UserModule(UserMobileNet()), GlobalSparseMomentum(sparsity=0.9)
    result = trainer(tmp_path, evaluator).test(fresh, image_loader(), ckpt_path=tmp_path / "last.ckpt", verbose=False)
    assert zeros_and_total(evaluator, fresh)[0] == zeros
    assert result[0]["test_loss"] == pytest.approx(sparse_loss, abs=1e-6)
