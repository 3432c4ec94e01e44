"""PowerQR singular values against the SVD of the explicit operator matrix (framework/spectral.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from litzoo.framework.spectral import conv_spectral_norm, explicit_operator, power_qr


def exact_sigma(layer: nn.Module, shape: tuple[int, ...]) -> float:
    return torch.linalg.svdvals(explicit_operator(layer, shape)).max().item()


def random_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.3, 2.0)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3.0)
    return bn


CASES = {
    "stride1-pad1": (lambda: nn.Conv2d(3, 5, 3, 1, 1), (3, 8, 8)),
    "stride2-pad1": (lambda: nn.Conv2d(3, 5, 3, 2, 1), (3, 8, 8)),
    "stride1-pad0-7x9": (lambda: nn.Conv2d(3, 5, 3, 1, 0), (3, 7, 9)),
    "stride2-pad2-7x9": (lambda: nn.Conv2d(4, 6, 3, 2, 2), (4, 7, 9)),
    "dilation2": (lambda: nn.Conv2d(3, 4, 3, 1, 2, dilation=2), (3, 8, 8)),
    "groups2-7x9": (lambda: nn.Conv2d(4, 6, 3, 1, 1, groups=2), (4, 7, 9)),
    "depthwise-stride2": (lambda: nn.Conv2d(4, 4, 3, 2, 1, groups=4), (4, 8, 8)),
    "linear": (lambda: nn.Linear(20, 7), (20,)),
    "bn-eval": (lambda: random_bn(3), (3, 5, 6)),
    "conv+bn": (lambda: nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), random_bn(5)), (3, 8, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_power_qr_sigma_matches_the_svd_of_the_explicit_operator(case):
    torch.manual_seed(0)
    make, shape = CASES[case]
    layer = make().double()
    layer.train()  # BN must still be evaluated with its running statistics, and the mode restored
    sigma = conv_spectral_norm(layer, shape, iterations=400, generator=torch.Generator().manual_seed(0))
    exact = exact_sigma(layer, shape)
    assert abs(sigma - exact) / exact < 1e-3
    assert all(m.training for m in layer.modules())


def test_float32_default_settings_are_close():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, 1, 0)
    sigma = conv_spectral_norm(conv, (3, 7, 9), iterations=400, generator=torch.Generator().manual_seed(0))
    assert sigma == pytest.approx(exact_sigma(conv.double(), (3, 7, 9)), rel=1e-3)


def test_conv_bn_composition_is_tighter_than_the_product_of_norms():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, 2, 1).double(), random_bn(5).double()
    shape = (3, 8, 8)
    composed = exact_sigma(nn.Sequential(conv, bn), shape)
    product = exact_sigma(conv, shape) * exact_sigma(bn, (5, 4, 4))
    measured = conv_spectral_norm(nn.Sequential(conv, bn), shape, iterations=400, generator=torch.Generator().manual_seed(0))
    assert measured == pytest.approx(composed, rel=1e-3)
    assert measured < 0.95 * product


def test_reshaped_weight_norm_is_not_the_operator_norm_of_a_strided_conv():
    # negative control: the naive ||reshape(W)||_2 ignores stride and padding
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, 2, 1).double()
    naive = torch.linalg.matrix_norm(conv.weight.reshape(5, -1), ord=2).item()
    exact = exact_sigma(conv, (3, 8, 8))
    assert abs(naive - exact) / exact > 0.05
    assert conv_spectral_norm(conv, (3, 8, 8), iterations=400) == pytest.approx(exact, rel=1e-3)


def test_power_qr_leaves_parameter_gradients_alone():
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), random_bn(3))
    power_qr(conv.eval(), (2, 5, 5), iterations=3, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in conv.parameters())
    # accumulated gradients survive (gradient accumulation / DDP)
    for p in conv.parameters():
        p.grad = torch.ones_like(p)
    power_qr(conv, (2, 5, 5), iterations=3, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in conv.parameters())


def test_power_qr_is_deterministic_orthonormal_and_warm_starts():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    run = lambda: power_qr(conv, (3, 6, 6), k=3, iterations=5, generator=torch.Generator().manual_seed(7))  # noqa: E731
    (s1, v1), (s2, v2) = run(), run()
    assert torch.equal(s1, s2) and torch.equal(v1, v2)
    flat = v1.reshape(3, -1)
    assert torch.allclose(flat @ flat.T, torch.eye(3, dtype=flat.dtype), atol=1e-10)
    # continuing from the vectors equals running longer in one go
    s_cont, v_cont = power_qr(conv, (3, 6, 6), k=3, iterations=5, init=v1)
    s_long, v_long = power_qr(conv, (3, 6, 6), k=3, iterations=10, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(s_cont, s_long, atol=1e-10) and torch.allclose(v_cont, v_long, atol=1e-8)


def test_bad_arguments():
    conv = nn.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match="input_shape"):
        power_qr(conv, (1, 0, 4))
    with pytest.raises(ValueError, match="k must"):
        power_qr(conv, (1, 2, 2), k=5)
    with pytest.raises(ValueError, match="iterations"):
        power_qr(conv, (1, 4, 4), iterations=0)
    with pytest.raises(ValueError, match="init must"):
        power_qr(conv, (1, 4, 4), init=torch.zeros(1, 1, 3, 3))
