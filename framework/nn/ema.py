"""Exponential-moving-average (EMA) teachers: ``teacher ← m·teacher + (1 − m)·student`` after each step.

Self-distillation methods (DINO, iBOT, DINOv2; BYOL and MoCo's key encoder likewise) train a student by
gradient descent and let the teacher follow it as an EMA of its weights. Reference implementation:
facebookresearch/dinov2 ``dinov2/train/ssl_meta_arch.py`` (``SSLMetaArch.update_teacher``: one
``torch._foreach_mul_`` and one ``torch._foreach_add_`` over the teacher's and student's parameter lists, under
``no_grad``; the teacher starts as a copy of the student, ``prepare_for_distributed_training``, and never gets
gradients). The momentum follows a cosine schedule from 0.992 to 1.0 (``framework.optim.cosine_schedule``).

Here parameters are paired by *name*, not by position, so two modules that merely have the same number of
tensors cannot be mixed up silently; any difference in names or shapes is a ValueError naming the first ones.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

__all__ = ["ema_update_", "make_teacher"]


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` whose parameters do not require gradients: the EMA teacher at step 0.

    DINOv2 starts the teacher as an exact copy of the student (``teacher.load_state_dict(student.state_dict())``).
    The train/eval mode is copied as it is: DINOv2 keeps its teacher in eval mode (``SSLMetaArch.train``), and
    a LightningModule's ``train()`` call would switch it back, so the caller sets the mode where it runs it.
    """
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def _paired(kind: str, teacher: dict[str, Tensor], student: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The teacher's and student's tensors in the same order, after checking names, shapes and dtypes match."""
    if teacher.keys() != student.keys():
        only_teacher = sorted(teacher.keys() - student.keys())[:5]
        only_student = sorted(student.keys() - teacher.keys())[:5]
        raise ValueError(
            f"ema_update_: teacher and student {kind} differ by name; only in the teacher: {only_teacher}, only in the student: {only_student}"
        )
    for name, teacher_tensor in teacher.items():
        student_tensor = student[name]
        if teacher_tensor.shape != student_tensor.shape or teacher_tensor.dtype != student_tensor.dtype:
            raise ValueError(
                f"ema_update_: {kind[:-1]} {name!r} differs between teacher and student: "
                f"{tuple(teacher_tensor.shape)} {teacher_tensor.dtype} vs {tuple(student_tensor.shape)} {student_tensor.dtype}"
            )
    names = list(teacher)
    return [teacher[name] for name in names], [student[name] for name in names]


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place, ``teacher ← momentum·teacher + (1 − momentum)·student`` over the parameters, matched by name.

    Buffers (those in the state dict, e.g. BatchNorm running statistics) are copied from the student rather
    than averaged. DINOv2 updates parameters only, and its ViTs have no such buffers (it refuses BatchNorm,
    ``has_batchnorms``), so there this changes nothing. For a model that has them, a teacher kept in eval mode
    (as DINOv2 keeps it) never updates its own running statistics, which would stay at their initial values;
    the student's statistics are those of the current weights, and integer buffers (``num_batches_tracked``)
    cannot be averaged anyway. Non-persistent buffers (caches derived from the input, such as position tables
    built for one resolution) are left alone: teacher and student may see different resolutions.

    ``momentum`` 1 leaves the parameters bit-identical (the arithmetic is skipped: ``−0.0 + 0.0`` would turn
    negative zeros positive) and 0 copies the student exactly. Raises ValueError when ``momentum`` is not in
    [0, 1] or the modules' parameter or buffer names, shapes or dtypes differ.
    """
    if not (isinstance(momentum, (int, float)) and math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"ema_update_: momentum must be a number in [0, 1], got {momentum!r}")
    teacher_parameters, student_parameters = _paired("parameters", dict(teacher.named_parameters()), dict(student.named_parameters()))
    teacher_persistent = teacher.state_dict(keep_vars=True).keys()
    student_persistent = student.state_dict(keep_vars=True).keys()
    teacher_buffers, student_buffers = _paired(
        "buffers",
        {name: buffer for name, buffer in teacher.named_buffers() if name in teacher_persistent},
        {name: buffer for name, buffer in student.named_buffers() if name in student_persistent},
    )
    if teacher_parameters and momentum != 1.0:
        if momentum == 0.0:
            torch._foreach_copy_(teacher_parameters, student_parameters)
        else:
            torch._foreach_mul_(teacher_parameters, momentum)
            torch._foreach_add_(teacher_parameters, student_parameters, alpha=1.0 - momentum)
    for teacher_buffer, student_buffer in zip(teacher_buffers, student_buffers, strict=True):
        teacher_buffer.copy_(student_buffer)
