"""The EMA teacher update (framework/nn/ema.py) and DINOv2's cosine schedule (framework/optim.py::cosine_schedule,
dinov2/utils/utils.py ``CosineScheduler``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from litzoo.framework.nn.ema import ema_update_, make_teacher
from litzoo.framework.optim import cosine_schedule


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.norm = nn.BatchNorm1d(3)


class _Reordered(nn.Module):
    """The same names as _Net, registered in another order."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.b = nn.Linear(3, 3)
        self.a = nn.Linear(3, 3)


def _bits(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().view(torch.int32) for name, p in module.named_parameters()}


def test_make_teacher_is_a_frozen_deep_copy():
    student = _Net()
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (name, s), (_, t) in zip(student.named_parameters(), teacher.named_parameters(), strict=True):
        assert torch.equal(s, t) and s.data_ptr() != t.data_ptr(), name


def test_momentum_one_leaves_the_teacher_bit_identical():
    student, teacher = _Net(), _Net()
    with torch.no_grad():
        teacher.a.weight[0, 0] = -0.0  # the naive m·t + (1−m)·s turns −0.0 into +0.0
        student.a.weight[0, 0] = 0.5
    before = _bits(teacher)
    ema_update_(teacher, student, 1.0)
    after = _bits(teacher)
    assert all(torch.equal(before[name], after[name]) for name in before)
    # negative control: the arithmetic this avoids does change the bits
    naive = teacher.a.weight.detach().clone() * 1.0 + 0.0 * student.a.weight.detach()
    assert not torch.equal(naive.view(torch.int32), before["a.weight"])


def test_momentum_zero_copies_the_student():
    student, teacher = _Net(), make_teacher(_Net())
    ema_update_(teacher, student, 0.0)
    for (name, s), (_, t) in zip(student.named_parameters(), teacher.named_parameters(), strict=True):
        assert torch.equal(s, t), name


def test_momentum_by_hand_matched_by_name_and_buffers_copied():
    student, teacher = _Net(), _Reordered()
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.fill_(1.0)
        student.a.weight.fill_(3.0)
        student.b.weight.fill_(-2.0)
    student.norm.train()(torch.randn(8, 3))  # BatchNorm running statistics that differ from the teacher's
    expected = {name: 0.9 * t.detach() + 0.1 * dict(student.named_parameters())[name].detach() for name, t in teacher.named_parameters()}
    ema_update_(teacher, student, 0.9)
    for name, parameter in teacher.named_parameters():
        torch.testing.assert_close(parameter, expected[name])
    torch.testing.assert_close(teacher.a.weight, torch.full((3, 3), 1.2))  # 0.9·1 + 0.1·3
    torch.testing.assert_close(teacher.b.weight, torch.full((3, 3), 0.7))  # 0.9·1 + 0.1·(−2)
    assert torch.equal(teacher.norm.running_mean, student.norm.running_mean)
    assert teacher.norm.num_batches_tracked.item() == 1
    assert teacher.a.weight.grad_fn is None  # in place under no_grad, even on parameters that require grad


def test_non_persistent_buffers_are_left_alone():
    student, teacher = _Net(), _Net()
    student.register_buffer("cache", torch.zeros(5), persistent=False)
    teacher.register_buffer("cache", torch.ones(7), persistent=False)  # a cache built for another resolution
    ema_update_(teacher, student, 0.5)
    assert teacher.cache.tolist() == [1.0] * 7


def test_mismatched_modules_and_bad_momentum_are_refused():
    with pytest.raises(ValueError, match="only in the teacher"):
        ema_update_(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), nn.Sequential(nn.Linear(3, 3)), 0.9)
    with pytest.raises(ValueError, match=r"'weight' differs.*\(4, 3\).*\(3, 3\)"):
        ema_update_(nn.Linear(3, 4), nn.Linear(3, 3), 0.9)
    with pytest.raises(ValueError, match="running_mean"):
        ema_update_(nn.BatchNorm1d(3, affine=False), nn.BatchNorm1d(4, affine=False), 0.9)
    for momentum in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
            ema_update_(nn.Linear(3, 3), nn.Linear(3, 3), momentum)


# ---------------------------------------------------------------------------------------------
# DINOv2's CosineScheduler


def _reference_schedule(total: int, start: float, end: float, warmup: int = 0, warmup_start: float = 0.0, freeze: int = 0) -> list[float]:
    """The CosineScheduler array, built with numpy: zeros, linspace warm-up, cosine."""
    decay = np.arange(total - warmup - freeze)
    cosine = end + 0.5 * (start - end) * (1 + np.cos(np.pi * decay / len(decay)))
    return np.concatenate((np.zeros(freeze), np.linspace(warmup_start, start, warmup), cosine)).tolist()


@pytest.mark.parametrize(
    "total, start, end, warmup, warmup_start, freeze",
    [
        (20, 0.992, 1.0, 0, 0.0, 0),  # teacher momentum
        (30, 4e-3, 1e-6, 10, 0.0, 0),  # lr with warm-up
        (5, 0.07, 0.07, 5, 0.04, 0),  # teacher temperature: warm-up only, then constant
        (17, 0.5, 0.1, 4, 0.2, 3),  # freeze, warm-up, cosine
        (6, 1.0, 0.0, 1, 0.3, 0),  # a one-step warm-up is its start value
    ],
)
def test_cosine_schedule_matches_the_official_array(total, start, end, warmup, warmup_start, freeze):
    reference = _reference_schedule(total, start, end, warmup, warmup_start, freeze)
    assert len(reference) == total
    values = [cosine_schedule(step, total, start, end, warmup, warmup_start, freeze) for step in range(total + 3)]
    np.testing.assert_allclose(values[:total], reference, rtol=0, atol=1e-15)
    assert values[total:] == [end] * 3  # past the end: the final value


def test_cosine_schedule_hand_values_and_bad_arguments():
    assert cosine_schedule(5, 10, 0.992, 1.0) == pytest.approx(0.996, abs=1e-15)  # half-way: cos(π/2) = 0
    assert cosine_schedule(0, 10, 0.992, 1.0) == 0.992
    assert [cosine_schedule(s, 4, 0.07, 0.07, 4, 0.04) for s in range(5)] == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07], abs=1e-15)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(0, 5, 1.0, 0.0, warmup_steps=4, freeze_steps=2)
    with pytest.raises(ValueError, match="non-negative"):
        cosine_schedule(-1, 5, 1.0, 0.0)
