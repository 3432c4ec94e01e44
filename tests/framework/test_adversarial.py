"""FGSM / PGD on dict batches (framework/adversarial.py): closed forms on linear models, ε-balls, gradients by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litzoo.framework.adversarial import classification_loss, critical_epsilon, fgsm, pgd
from litzoo.framework.errors import LitzooError


class TwoInputNet(nn.Module):
    """logits = f([flatten(a), b]); a small MLP with dropout and BatchNorm (so train / eval matter)."""

    def __init__(self, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12 + 5, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, classes))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(torch.cat([batch["a"].flatten(1), batch["b"]], dim=1))


def make_batch(n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.rand(n, 3, 4, generator=g), "b": torch.rand(n, 5, generator=g), "label": torch.randint(0, 3, (n,), generator=g)}


def per_sample(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("bounded", [False, True])
def test_pgd_stays_in_its_ball_for_every_sample(norm, bounded):
    torch.manual_seed(0)
    model = TwoInputNet().eval()
    batch = make_batch()
    eps = 0.05 if norm == "linf" else 0.3
    bounds = {"a": (0.0, 1.0), "b": (0.0, 1.0)} if bounded else None
    # steps far larger than the ball: without the projection every sample would leave it
    out = pgd(model, batch, batch["label"], ["a", "b"], eps, norm, steps=6, alpha=4 * eps, bounds=bounds, generator=torch.Generator().manual_seed(1))
    for key in ("a", "b"):
        size = per_sample(out[key] - batch[key], norm)
        assert bool((size <= eps * (1 + 1e-5)).all()), (key, size.max())
        assert bool((size > 0.5 * eps).all())  # the attack used its budget (a no-op would pass the first check)
        if bounded:
            assert float(out[key].min()) >= 0.0 and float(out[key].max()) <= 1.0


def test_pgd_increases_the_loss_of_a_trained_model():
    # a SYNTHETIC planted task: the class is the sign pattern of two coordinates of "a"
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    train = {"a": torch.randn(256, 3, 4, generator=g), "b": torch.randn(256, 5, generator=g)}
    train["label"] = (train["a"][:, 0, 0] > 0).long() + (train["b"][:, 0] > 0).long()
    model = TwoInputNet(hidden=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(train), train["label"]).backward()
        optimizer.step()
    model.eval()
    test = {key: value[:64] for key, value in train.items()}
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(test), test["label"], reduction="none")
        clean_acc = (model(test).argmax(1) == test["label"]).float().mean()
    assert clean_acc > 0.9
    adversarial = pgd(model, test, test["label"], ["a", "b"], 0.3, "linf", steps=10, model=model)
    single = fgsm(model, test, test["label"], ["a", "b"], 0.3, "linf", model=model)
    with torch.no_grad():
        adv_loss = F.cross_entropy(model(adversarial), test["label"], reduction="none")
        fgsm_loss = F.cross_entropy(model(single), test["label"], reduction="none")
        adv_acc = (model(adversarial).argmax(1) == test["label"]).float().mean()
    assert adv_loss.mean() > 3 * clean_loss.mean()
    assert (adv_loss > clean_loss).float().mean() > 0.95
    assert adv_loss.mean() >= fgsm_loss.mean()  # ten projected steps do at least as well as one
    assert adv_acc < clean_acc - 0.3


class Linear2(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.layer = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.layer.weight.copy_(weight)
            self.layer.bias.copy_(bias)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.layer(batch["x"])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_on_a_linear_model_equals_the_closed_form(norm):
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(2, 7, generator=g), torch.randn(2, generator=g)
    model = Linear2(weight, bias)
    x, y = torch.randn(10, 7, generator=g), torch.randint(0, 2, (10,), generator=g)
    out = fgsm(model, {"x": x}, y, ["x"], 0.25, norm)["x"]
    # CE's gradient is p_other (w_other − w_y): the attack lowers the true-class margin (w_y − w_other)·x
    margin_direction = weight[y] - weight[1 - y]
    if norm == "linf":
        expected = x - 0.25 * margin_direction.sign()
    else:
        expected = x - 0.25 * margin_direction / margin_direction.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # the margin falls by exactly ε‖Δw‖₁ (L∞) or ε‖Δw‖₂ (L2)
    drop = ((margin_direction * x).sum(1) - (margin_direction * out).sum(1))
    dual = margin_direction.abs().sum(1) if norm == "linf" else margin_direction.norm(dim=1)
    torch.testing.assert_close(drop, 0.25 * dual, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_pgd_step_by_hand(norm):
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(3, 6, generator=g), torch.randn(3, generator=g)
    model = Linear2(weight, bias)
    x, y = torch.randn(5, 6, generator=g), torch.tensor([0, 1, 2, 1, 0])
    grad = (torch.softmax(x @ weight.T + bias, dim=1) - F.one_hot(y, 3).float()) @ weight  # ∂CE/∂x, by hand
    step = grad.sign() if norm == "linf" else grad / grad.norm(dim=1, keepdim=True)
    # a large ball: the step is not projected
    out = pgd(model, {"x": x}, y, ["x"], 100.0, norm, steps=1, alpha=0.3, random_init=False)["x"]
    torch.testing.assert_close(out, x + 0.3 * step, atol=1e-6, rtol=0)
    # a small ball: the L2 step is projected radially onto it, the L∞ one clamped
    small = pgd(model, {"x": x}, y, ["x"], 0.1, norm, steps=1, alpha=0.3, random_init=False)["x"]
    expected = x + 0.1 * step if norm == "l2" else x + (0.3 * step).clamp(-0.1, 0.1)
    torch.testing.assert_close(small, expected, atol=1e-6, rtol=0)


def test_only_the_chosen_modality_changes():
    model = TwoInputNet().eval()
    batch = make_batch()
    out = pgd(model, batch, batch["label"], ["a"], 0.1, "linf", steps=3)
    assert not torch.equal(out["a"], batch["a"])
    assert torch.equal(out["b"], batch["b"]) and torch.equal(out["label"], batch["label"])
    both = fgsm(model, batch, batch["label"], ["b"], 0.1, "l2")
    assert torch.equal(both["a"], batch["a"]) and not torch.equal(both["b"], batch["b"])
    # each modality has its own ball: attacked together, each uses the full radius
    joint = pgd(model, batch, batch["label"], ["a", "b"], 0.2, "l2", steps=5, alpha=1.0)
    for key in ("a", "b"):
        torch.testing.assert_close(per_sample(joint[key] - batch[key], "l2"), torch.full((8,), 0.2), atol=1e-5, rtol=0)


def test_parameter_grads_train_flags_batchnorm_and_global_rng_are_untouched():
    torch.manual_seed(0)
    model = TwoInputNet().train()
    model.net[4].eval()  # a mixed state must come back as it was
    known = {name: torch.randn_like(p) for name, p in model.named_parameters() if name.startswith("net.0")}
    for name, p in model.named_parameters():
        p.grad = known[name].clone() if name in known else None
    flags = {name: m.training for name, m in model.named_modules()}
    running = model.net[1].running_mean.clone()
    batch = make_batch()
    rng = torch.get_rng_state()
    out = pgd(model, batch, batch["label"], ["a", "b"], 0.1, "linf", steps=3, model=model, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), rng)  # the random start drew from its own generator
    for name, p in model.named_parameters():
        assert (p.grad is None) if name not in known else torch.equal(p.grad, known[name])
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert torch.equal(model.net[1].running_mean, running)  # BatchNorm ran in eval mode
    # eval mode means deterministic logits: the same attack twice gives the same result (dropout off)
    again = pgd(model, batch, batch["label"], ["a", "b"], 0.1, "linf", steps=3, model=model, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out["a"], again["a"])


def test_seeded_random_start():
    model = TwoInputNet().eval()
    batch = make_batch()
    run = lambda seed: pgd(model, batch, batch["label"], ["a"], 0.1, "l2", steps=1, alpha=0.0, generator=torch.Generator().manual_seed(seed))["a"]  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    start = run(1) - batch["a"]  # alpha 0: the random start itself, inside the ball, not on a fixed radius
    sizes = per_sample(start, "l2")
    assert bool((sizes <= 0.1 + 1e-6).all()) and float(sizes.std()) > 0


def test_eps_zero_returns_the_clean_input():
    model = TwoInputNet().eval()
    batch = make_batch()
    for out in (pgd(model, batch, batch["label"], ["a", "b"], 0.0, "linf"), fgsm(model, batch, batch["label"], ["a"], 0.0, "l2")):
        assert torch.equal(out["a"], batch["a"]) and torch.equal(out["b"], batch["b"])


def test_works_inside_inference_mode():
    model = TwoInputNet().eval()
    with torch.inference_mode():
        batch = make_batch()  # inference tensors, as in Lightning's test loop
        out = pgd(model, batch, batch["label"], ["a"], 0.1, "linf", steps=2)
    assert not out["a"].is_inference() and not torch.equal(out["a"], batch["a"])


def test_multilabel_loss_and_attack():
    logits, target = torch.randn(4, 3), torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]]).float()
    torch.testing.assert_close(classification_loss(logits, target), F.binary_cross_entropy_with_logits(logits, target, reduction="sum"))
    torch.testing.assert_close(classification_loss(logits, target[:, 0].long()), F.cross_entropy(logits, target[:, 0].long(), reduction="sum"))
    model = TwoInputNet().eval()
    batch = make_batch()
    with torch.no_grad():
        before = classification_loss(model(batch), target.repeat(2, 1))
        after = classification_loss(model(pgd(model, batch, target.repeat(2, 1), ["a", "b"], 0.2, "linf")), target.repeat(2, 1))
    assert after > before


def test_bad_input_is_refused():
    model = TwoInputNet().eval()
    batch = make_batch()
    broken = {**batch, "a": batch["a"].clone()}
    broken["a"][0, 0, 0] = float("nan")
    with pytest.raises(LitzooError, match=r"\['a'\] has non-finite"):
        pgd(model, broken, batch["label"], ["a"], 0.1)
    with pytest.raises(LitzooError, match="no 'video' entry"):
        fgsm(model, batch, batch["label"], ["video"], 0.1)
    with pytest.raises(LitzooError, match="outside its valid range"):
        pgd(model, {**batch, "a": batch["a"] + 2}, batch["label"], ["a"], 0.1, bounds={"a": (0.0, 1.0)})
    with pytest.raises(LitzooError, match="loss is not finite"):
        fgsm(lambda b: torch.full((8, 3), float("inf")), batch, batch["label"], ["a"], 0.1)
    for bad in ({"eps": -1.0}, {"eps": float("nan")}, {"norm": "l1"}, {"steps": 0}):
        options = {"eps": 0.1, **bad}
        with pytest.raises(ValueError):
            pgd(model, batch, batch["label"], ["a"], **options)


def test_critical_epsilon_by_hand():
    # threshold 0.5 of clean 1.0 is crossed between (0.2, 0.6) and (0.4, 0.2): 0.2 + 0.1 · 0.2 / 0.4 = 0.25
    assert critical_epsilon([0.1, 0.2, 0.4], [0.9, 0.6, 0.2], clean=1.0) == pytest.approx(0.25)
    # the first segment starts at (0, clean)
    assert critical_epsilon([0.1], [0.0], clean=0.8) == pytest.approx(0.05)
    # a grid point at ε = 0, a point exactly at the threshold, another fraction
    assert critical_epsilon([0.0, 0.5, 1.0], [0.8, 0.4, 0.1], clean=0.8) == pytest.approx(0.5)
    assert critical_epsilon([1.0, 2.0], [0.7, 0.1], clean=1.0, fraction=0.25) == pytest.approx(1.0 + 0.45 / 0.6)
    # never halved on the grid, and the first crossing wins over a later one
    assert critical_epsilon([0.1, 0.2], [0.9, 0.8], clean=1.0) is None
    assert critical_epsilon([0.1, 0.2, 0.3], [0.4, 0.9, 0.1], clean=1.0) == pytest.approx(0.1 * 0.5 / 0.6)
    with pytest.raises(LitzooError):
        critical_epsilon([0.1], [float("nan")], clean=1.0)
