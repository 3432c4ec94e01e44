"""Comparing a model with its transformed copy (fused, pruned, exported, quantized): non-finite values fail.

Every check in litzoo has the form ``max|actual - reference| <= allowed``. Written naively it passes on
NaN: ``nan > allowed`` is ``False``, so a diverged model (``lr 1e10``) sails through the fusion check,
the export check and the int8 comparison and is written to disk. The helpers here are the one place
that rule lives: a difference involving a NaN or an infinity is ``inf`` (never below a tolerance), and
:func:`check_finite` / :func:`compare_outputs` refuse non-finite outputs in one line that says which
side is not finite and how much of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

from litzoo.framework.errors import LitzooError


def output_tensors(outputs: Any) -> list[Tensor]:
    """The tensors of a model's output (a tensor, or any nesting of tuples, lists and dicts)."""
    return [t for t in tree_leaves(outputs) if isinstance(t, Tensor)]


def non_finite_summary(outputs: Any) -> str | None:
    """``"3 NaN, 1 inf of 640 values"`` when ``outputs`` hold non-finite values, ``None`` when all are finite."""
    nan = inf = total = 0
    for t in output_tensors(outputs):
        if not (t.is_floating_point() or t.is_complex()):
            continue
        total += t.numel()
        nan += int(torch.isnan(t).sum())
        inf += int(torch.isinf(t).sum())
    if not nan and not inf:
        return None
    parts = [f"{nan} NaN" if nan else "", f"{inf} inf" if inf else ""]
    return f"{', '.join(p for p in parts if p)} of {total} values"


def check_finite(outputs: Any, what: str, consequence: str = "") -> None:
    """Raise a one-line :class:`LitzooError` when ``outputs`` (tensors, nested) hold a NaN or an infinity.

    Args:
        outputs: a tensor or any nesting of tuples, lists and dicts of tensors.
        what: names them in the message, e.g. ``"ReparamFusion: the trained model's outputs on a real batch"``.
        consequence: appended after a semicolon, e.g. ``"no deploy checkpoint written"``.
    """
    summary = non_finite_summary(outputs)
    if summary is not None:
        raise LitzooError(f"{what} are not finite ({summary})" + (f"; {consequence}" if consequence else ""))


def max_abs_difference(reference: Any, actual: Any) -> float:
    """``max |actual - reference|`` over all output tensors; ``inf`` when either side holds a non-finite value.

    The two outputs must have the same structure (the same number of tensors, each of the same shape).
    """
    first, second = output_tensors(reference), output_tensors(actual)
    if len(first) != len(second):
        raise ValueError(f"the outputs hold {len(second)} tensors, the reference {len(first)}")
    error = 0.0
    for a, b in zip(first, second, strict=True):
        if a.numel() == 0:
            continue
        if non_finite_summary((a, b)) is not None:
            return math.inf
        error = max(error, (b.to(a.dtype) - a).abs().max().item())
    return error


def output_scale(outputs: Any) -> float:
    """``max(1, max|y|)`` over all output tensors (the scale tolerances are relative to); ``inf`` if not finite."""
    scale = 1.0
    for t in output_tensors(outputs):
        if t.numel() == 0:
            continue
        value = t.abs().max().item()
        if not math.isfinite(value):
            return math.inf
        scale = max(scale, value)
    return scale


def compare_outputs(reference: Any, actual: Any, tolerance: float, what: str, reference_name: str = "the reference") -> tuple[float, float]:
    """Check that ``actual`` reproduces ``reference`` to ``tolerance * max(1, max|reference|)``.

    Non-finite values fail on either side, with their own message (a diverged model is not "a wrong
    fusion"). Returns ``(max abs difference, allowed)``.

    Args:
        reference: the outputs of the model as trained (tensors, nested).
        actual: the outputs of its transformed copy (same structure).
        tolerance: allowed difference relative to ``max(1, max|reference|)``.
        what: names the transformed copy, e.g. ``"exported model 'm.onnx'"``.
        reference_name: names the reference, e.g. ``"the torch model"``.

    Raises:
        LitzooError: either side is not finite, or they differ by more than allowed.
    """
    check_finite(reference, f"{what}: the outputs of {reference_name}")
    check_finite(actual, f"{what}: its outputs")
    error = max_abs_difference(reference, actual)
    allowed = tolerance * output_scale(reference)
    if not error <= allowed:  # written so that a NaN fails too
        raise LitzooError(f"{what} differs from {reference_name} by {error:.3g} (allowed {allowed:.3g})")
    return error, allowed


def non_finite_tensors(named: Iterable[tuple[str, Tensor]], allow_inf: bool = False) -> list[str]:
    """The names of the floating-point tensors that hold a NaN (or, unless ``allow_inf``, an infinity).

    ``allow_inf`` is for buffers, where ``-inf`` is a legitimate value (an attention mask's "never").
    """
    bad = []
    for name, t in named:
        if isinstance(t, Tensor) and t.is_floating_point():
            ok = not bool(torch.isnan(t).any()) if allow_inf else bool(torch.isfinite(t).all())
            if not ok:
                bad.append(name)
    return bad


__all__ = [
    "check_finite",
    "compare_outputs",
    "max_abs_difference",
    "non_finite_summary",
    "non_finite_tensors",
    "output_scale",
    "output_tensors",
]
