"""RepOptimizer: a plain conv trained with CSLA gradient multipliers follows the multi-branch model."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litzoo.callbacks.rep_optimizer import RepOptimizer
from litzoo.framework.errors import LitzooError
from litzoo.framework.reparam.csla import csla_grad_multiplier, csla_initialization

C = 6


def _scales(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(C, generator=g, dtype=torch.float64) + 0.5, torch.rand(C, generator=g, dtype=torch.float64) + 0.3


def make_optimizer(module):
    if module.optimizer_name == "adamw":
        return torch.optim.AdamW(module.parameters(), lr=module.lr, weight_decay=module.weight_decay, eps=module.eps)
    return torch.optim.SGD(module.parameters(), lr=module.lr, momentum=0.9, nesterov=True, weight_decay=module.weight_decay)


class CSLANet(L.LightningModule):
    """Two CSLA blocks (3x3 + 1x1 with constant scales, the first with a trainable identity scale), BN, ReLU, a head."""

    def __init__(self, lr=0.05, weight_decay=0.0, optimizer="sgd", eps=1e-8):
        super().__init__()
        self.lr, self.weight_decay, self.optimizer_name, self.eps = lr, weight_decay, optimizer, eps
        self.stem = nn.Conv2d(1, C, 3, padding=1, bias=False)
        self.k1, self.p1 = nn.Conv2d(C, C, 3, padding=1, bias=False), nn.Conv2d(C, C, 1, bias=False)
        self.identity1 = nn.Parameter(torch.ones(C))
        self.k2, self.p2 = nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.Conv2d(C, C, 1, stride=2, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(C), nn.BatchNorm2d(C)
        self.head = nn.Linear(C, 3)
        (s1c, s1p), (s2c, s2p) = _scales(1), _scales(2)
        for name, value in {"s1c": s1c, "s1p": s1p, "s2c": s2c, "s2p": s2p}.items():
            self.register_buffer(name, value.float())

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.s1c.view(1, -1, 1, 1) * self.k1(x) + self.s1p.view(1, -1, 1, 1) * self.p1(x) + self.identity1.view(1, -1, 1, 1) * x
        x = F.relu(self.bn1(y))
        y = self.s2c.view(1, -1, 1, 1) * self.k2(x) + self.s2p.view(1, -1, 1, 1) * self.p2(x)
        return self.head(F.relu(self.bn2(y)).mean((2, 3)))

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return make_optimizer(self)

    def equivalent_kernels(self):
        k1 = self.s1c.view(-1, 1, 1, 1) * self.k1.weight + self.s1p.view(-1, 1, 1, 1) * F.pad(self.p1.weight, [1, 1, 1, 1])
        k1 = k1.clone()
        k1[range(C), range(C), 1, 1] += self.identity1
        k2 = self.s2c.view(-1, 1, 1, 1) * self.k2.weight + self.s2p.view(-1, 1, 1, 1) * F.pad(self.p2.weight, [1, 1, 1, 1])
        return k1.detach(), k2.detach()


class PlainNet(L.LightningModule):
    """The same network with one 3x3 conv per block: what RepOpt-VGG trains."""

    def __init__(self, csla: CSLANet, lr=0.05, weight_decay=0.0, optimizer="sgd", eps=1e-8):
        super().__init__()
        self.lr, self.weight_decay, self.optimizer_name, self.eps = lr, weight_decay, optimizer, eps
        self.stem = nn.Conv2d(1, C, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(C), nn.BatchNorm2d(C)
        self.head = nn.Linear(C, 3)
        self.to(csla.head.weight.dtype)  # copy at full precision
        with torch.no_grad():  # the shared layers start equal; the rule of initialization gives the convs
            for name in ("stem", "bn1", "bn2", "head"):
                getattr(self, name).load_state_dict(getattr(csla, name).state_dict())
            self.conv1.weight.copy_(csla.k1.weight)
            self.conv2.weight.copy_(csla.k2.weight)
        csla_initialization(self.conv1, csla.s1c, csla.s1p, csla.p1.weight, identity_scale=csla.identity1.detach())
        csla_initialization(self.conv2, csla.s2c, csla.s2p, csla.p2.weight)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(F.relu(self.bn2(self.conv2(x))).mean((2, 3)))

    training_step = CSLANet.training_step

    def configure_optimizers(self):
        return make_optimizer(self)


def multipliers(csla: CSLANet, power: int = 2) -> dict[str, torch.Tensor]:
    return {
        "conv1.weight": csla_grad_multiplier(csla.k1.weight.shape, csla.s1c, csla.s1p, identity=True, power=power),
        "conv2.weight": csla_grad_multiplier(csla.k2.weight.shape, csla.s2c, csla.s2p, identity=False, power=power),
    }


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g, dtype=torch.float64)
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (64,), generator=g)), batch_size=8)


def fit(module, callbacks=(), steps=24, **kwargs):
    trainer = L.Trainer(max_steps=steps, precision="64-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), **kwargs)
    trainer.fit(module, loader())
    return module


def test_multiplier_by_hand():
    m = csla_grad_multiplier((2, 2, 3, 3), torch.tensor([2.0, 3.0]), torch.tensor([0.5, 1.0]), identity=True)
    assert m[0, 1, 0, 0] == 4.0 and m[1, 0, 2, 2] == 9.0  # s_conv^2 off centre
    assert m[0, 1, 1, 1] == 4.25 and m[1, 0, 1, 1] == 10.0  # + s_1x1^2 at the centre
    assert m[0, 0, 1, 1] == 5.25 and m[1, 1, 1, 1] == 11.0  # + 1 on the identity's diagonal
    with pytest.raises(ValueError, match="in == out"):
        csla_grad_multiplier((2, 3, 3, 3), torch.ones(2), torch.ones(2), identity=True)


def test_plain_model_with_multipliers_follows_the_csla_model():
    """The paper's equivalence: 24 momentum-SGD (Nesterov) steps of the multi-branch CSLA model and of
    the plain model with RepOptimizer give the same equivalent kernels, BN and head (float64)."""
    torch.manual_seed(0)
    csla = CSLANet().double()
    plain = PlainNet(csla)
    start = [k.clone() for k in csla.equivalent_kernels()]
    assert all(torch.allclose(a, b) for a, b in zip(start, (plain.conv1.weight, plain.conv2.weight)))
    fit(csla)
    fit(plain, [RepOptimizer(multipliers(csla))])
    for a, b in zip(csla.equivalent_kernels(), (plain.conv1.weight.detach(), plain.conv2.weight.detach())):
        assert (a - b).abs().max() < 1e-10
        assert (a - start[0 if a.shape == start[0].shape else 1]).abs().max() > 1e-3  # they did train
    for name in ("bn1", "bn2", "head", "stem"):
        for (k, a), b in zip(getattr(csla, name).state_dict().items(), getattr(plain, name).state_dict().values()):
            assert torch.allclose(a.double(), b.double(), atol=1e-10), f"{name}.{k}"


def test_wrong_multiplier_power_breaks_the_equivalence():
    """Negative control: scales (power 1, the AdamW rule) instead of squared scales under SGD."""
    torch.manual_seed(0)
    csla = CSLANet().double()
    plain = PlainNet(csla)
    fit(csla)
    fit(plain, [RepOptimizer(multipliers(csla, power=1))])
    assert (csla.equivalent_kernels()[0] - plain.conv1.weight.detach()).abs().max() > 1e-4


def test_weight_decay_is_added_after_the_multiply():
    """The official RepOptimizerSGD: d_p = M * grad + wd * p (the first momentum step is d_p itself)."""
    torch.manual_seed(0)
    csla = CSLANet()
    plain = PlainNet(csla, weight_decay=0.1)
    before = plain.conv1.weight.detach().clone()
    grads = {}

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads["raw"] = pl_module.conv1.weight.grad.detach().clone()

    mults = multipliers(csla)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Spy(), RepOptimizer(mults)])
    x = torch.randn(8, 1, 8, 8)
    trainer.fit(plain, DataLoader(TensorDataset(x, torch.randint(0, 3, (8,))), batch_size=8))
    d_p = mults["conv1.weight"] * grads["raw"] + 0.1 * before
    # Nesterov: the first step moves by lr * (d_p + momentum * d_p)
    expected = before - 0.05 * (d_p + 0.9 * d_p)
    assert (plain.conv1.weight.detach() - expected).abs().max() < 1e-6


def test_refusals():
    csla = CSLANet()
    with pytest.raises(ValueError):
        RepOptimizer({})
    with pytest.raises(LitzooError, match="gradient_clip_val"):
        fit(PlainNet(csla).double(), [RepOptimizer(multipliers(csla))], steps=1, gradient_clip_val=1.0)

    with pytest.raises(LitzooError, match="rule='sgd' but the optimizer is AdamW"):
        fit(PlainNet(csla, optimizer="adamw").double(), [RepOptimizer(multipliers(csla))], steps=1)
    with pytest.raises(LitzooError, match="rule='adamw' but the optimizer is SGD"):
        fit(PlainNet(csla).double(), [RepOptimizer(multipliers(csla, power=1), rule="adamw")], steps=1)

    class RMSpropNet(PlainNet):
        def configure_optimizers(self):
            return torch.optim.RMSprop(self.parameters())

    with pytest.raises(LitzooError, match="RMSprop is not supported"):
        fit(RMSpropNet(csla).double(), [RepOptimizer(multipliers(csla))], steps=1)
    with pytest.raises(ValueError, match="rule"):
        RepOptimizer(multipliers(csla), rule="adam")
    with pytest.raises(LitzooError, match="no parameter named"):
        fit(PlainNet(csla).double(), [RepOptimizer({"nope.weight": torch.ones(1)})], steps=1)


# ---------------------------------------------------------------------------- RepOpt-AdamW
@pytest.mark.parametrize(("eps", "tolerance"), [(1e-8, 1e-5), (1e-13, 1e-9)])
def test_adamw_plain_model_follows_the_csla_model(eps, tolerance):
    """The official RepOptimizerAdamW rule (multipliers = scales, on gradient and update) with
    decoupled weight decay: 24 AdamW steps of the CSLA model and of the plain model agree up to
    Adam's eps, which enters the plain model as eps / M (float64)."""
    torch.manual_seed(0)
    csla = CSLANet(lr=0.01, weight_decay=0.05, optimizer="adamw", eps=eps).double()
    plain = PlainNet(csla, lr=0.01, weight_decay=0.05, optimizer="adamw", eps=eps)
    start = [k.clone() for k in csla.equivalent_kernels()]
    fit(csla)
    fit(plain, [RepOptimizer(multipliers(csla, power=1), rule="adamw")])
    for a, b, s in zip(csla.equivalent_kernels(), (plain.conv1.weight.detach(), plain.conv2.weight.detach()), start):
        assert (a - b).abs().max() < tolerance * a.abs().max()
        assert (a - s).abs().max() > 1e-2  # they did train
    for name in ("bn1", "bn2", "head", "stem"):
        for (k, a), b in zip(getattr(csla, name).state_dict().items(), getattr(plain, name).state_dict().values()):
            assert torch.allclose(a.double(), b.double(), atol=tolerance), f"{name}.{k}"


@pytest.mark.parametrize("wrong", ["gradient only", "squared scales"])
def test_adamw_wrong_rules_break_the_equivalence(wrong):
    """Negative controls: multiplying only the gradient (Adam normalises it away), or the SGD power."""
    torch.manual_seed(0)
    csla = CSLANet(lr=0.01, weight_decay=0.05, optimizer="adamw").double()
    plain = PlainNet(csla, lr=0.01, weight_decay=0.05, optimizer="adamw")
    fit(csla)
    if wrong == "gradient only":
        mults = multipliers(csla, power=1)

        class GradientOnly(L.Callback):
            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                for name, m in mults.items():
                    pl_module.get_parameter(name).grad.mul_(m)

        fit(plain, [GradientOnly()])
    else:
        fit(plain, [RepOptimizer(multipliers(csla, power=2), rule="adamw")])
    assert (csla.equivalent_kernels()[0] - plain.conv1.weight.detach()).abs().max() > 1e-3


def test_adamw_first_step_by_hand():
    """One AdamW step: W1 = W0 (1 - lr wd) - lr M g' / (|g'| + eps) with g' = M g (bias-corrected step 1)."""
    torch.manual_seed(0)
    csla = CSLANet()
    plain = PlainNet(csla, lr=0.01, weight_decay=0.05, optimizer="adamw").double()
    before = plain.conv1.weight.detach().clone()
    grads = {}

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads["raw"] = pl_module.conv1.weight.grad.detach().clone()

    mults = {k: v.double() for k, v in multipliers(csla, power=1).items()}
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        precision="64-true", callbacks=[Spy(), RepOptimizer(mults, rule="adamw")])
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    trainer.fit(plain, DataLoader(TensorDataset(x, torch.randint(0, 3, (8,))), batch_size=8))
    m = mults["conv1.weight"]
    g = m * grads["raw"]
    expected = before * (1 - 0.01 * 0.05) - 0.01 * m * g / (g.abs() + 1e-8)
    assert (plain.conv1.weight.detach() - expected).abs().max() < 1e-12
