"""BPR loss and CAT-ART's batch-embedding L2, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from litzoo.framework.losses.bpr import bpr_loss, embedding_l2


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bpr_loss_by_hand_one_negative():
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])
    # -log sigma(d) = softplus(-d): d = 1 and -3
    expected = (softplus(-1.0) + softplus(3.0)) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_loss_several_negatives_compares_each_with_its_own_positive():
    pos = torch.tensor([1.0, -2.0])
    neg = torch.tensor([[0.0, 3.0], [-1.0, 0.5]])
    expected = sum(softplus(neg[b, j].item() - pos[b].item()) for b in range(2) for j in range(2)) / 4
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    # negative control: CAT-ART's BPRLoss broadcasts the (B,) positive along the negatives' axis (B == n here)
    wrong = torch.nn.functional.softplus(neg - pos).mean().item()
    assert abs(wrong - expected) > 0.1


def test_bpr_loss_is_stable_and_refuses_non_finite_scores():
    loss = bpr_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(400.0, rel=1e-6)  # log(sigmoid(-400)) would be -inf
    with pytest.raises(ValueError, match="non-finite"):
        bpr_loss(torch.tensor([float("nan")]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="shape|must be"):
        bpr_loss(torch.zeros(2), torch.zeros(3))


def test_bpr_gradient_raises_the_positive_and_lowers_the_negative():
    pos = torch.tensor([0.5, -1.0], requires_grad=True)
    neg = torch.tensor([0.0, 1.0], requires_grad=True)
    bpr_loss(pos, neg).backward()
    # d/ds+ of -log sigma(s+ - s-) / B = -sigma(s- - s+) / B
    expected = [-1 / (1 + math.exp(0.5)) / 2, -1 / (1 + math.exp(-2.0)) / 2]
    assert pos.grad.tolist() == pytest.approx(expected, rel=1e-6)
    assert neg.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-6)
    assert (pos.grad < 0).all() and (neg.grad > 0).all()  # gradient descent raises s+ and lowers s-


def test_embedding_l2_is_cat_arts_reg_loss():
    user = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    positive = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    negative = torch.tensor([[[0.0, 2.0]], [[1.0, 0.0]]])
    # PureMF.forward: (1/2) (||u||^2 + ||p||^2 + ||n||^2) / len(users) = (6 + 11 + 5) / 2 / 2
    assert embedding_l2(user, positive, negative, batch_size=2).item() == pytest.approx(5.5)
    with pytest.raises(ValueError):
        embedding_l2(user, batch_size=0)
