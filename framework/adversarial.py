"""White-box adversarial attacks on dict batches: FGSM and PGD under L∞ / L2, on one input modality or several.

The attack math of issue 25's adversarial-robustness study (Li, Ma, Qu, Huang, Metze, "Audio-Visual Event Recognition
through the Lens of Adversary", ICASSP 2021, arXiv 2011.07430: FGSM / PGD on the audio input, the visual input or both of
an audio-visual classifier; :class:`litzoo.callbacks.adversarial_robustness.AdversarialRobustness` sweeps ε with it). No
official code of that paper was found. The rules:

* **FGSM** (Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015):
  ``x' = x + ε · sign(∇ₓ L)``; under ``norm="l2"`` the fast *gradient* method ``x' = x + ε · g / ‖g‖₂`` (per sample).
* **PGD** (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
  ICLR 2018): a random start in the ε-ball, then ``steps`` ascent steps of size ``α`` along ``sign(g)`` (L∞) or
  ``g / ‖g‖₂`` (L2), each followed by the projection onto the ball around the clean input and the clamp to the valid
  input range.

Checked line by line against Harry24k/adversarial-attacks-pytorch (``torchattacks/attacks/fgsm.py``, ``pgd.py``,
``pgdl2.py``), our own code. Followed: the L∞ random start is uniform in ``[-ε, ε]`` per element; the L2 random start is
a Gaussian direction scaled to radius ``r · ε`` with ``r ~ U(0, 1)`` per sample (torchattacks' rule: not uniform in the
ball's volume, which in high dimension would put every start on the sphere); the L∞ projection clamps ``δ`` to
``[-ε, ε]``, the L2 projection scales ``δ`` by ``min(1, ε / ‖δ‖₂)``; the clamp to the valid range comes after the
projection (it moves each element towards the clean value when the clean input lies in the range, so it never leaves the
ball: the range is checked to hold the clean input); the gradient is of the *untargeted* loss at the true labels.
Different / chosen here:

* **Several inputs.** ``keys`` names the batch entries to perturb (``["audio"]``, ``["video"]``, ``["audio", "video"]``).
  Each perturbed entry has its *own* ε-ball of radius ``eps`` (per-modality budgets, the simple choice; a joint ball over
  the concatenation would let the attack move its whole budget into the weaker modality) and its own per-sample gradient
  normalisation under L2. Entries not named are passed through (as copies made outside inference mode).
* **Losses.** ``loss_fn(logits, target) -> scalar``; the default :func:`classification_loss` is softmax cross-entropy for
  integer class targets ``(B,)`` and BCE-with-logits for multi-hot float targets ``(B, C)``, *summed* over samples (sign
  and L2 normalisation remove the scale, and a sum keeps each sample's gradient independent of the batch size; the
  samples do not interact in eval mode).
* **Step size.** ``alpha=None`` is Madry et al.'s ``2.5 · ε / steps`` (enough to reach the far side of the ball from any
  start); torchattacks' defaults are absolute (8/255 with α 2/255 for L∞; ε 1 with α 0.2 for L2).
* **Gradients** come from :func:`torch.autograd.grad` with respect to the perturbed inputs only, so the parameters'
  ``.grad`` are never written; the model (``model=``) runs in eval mode and every submodule's train flag is restored.
  The attack works also inside Lightning's test loop (``torch.inference_mode``): inputs are cloned out of it.
* **Randomness** comes only from the ``generator`` passed in (a CPU :class:`torch.Generator`; the draws are moved to the
  input's device), so an attack never advances the global RNG streams and is reproducible on every device.
* A zero gradient (L2) gives no step rather than a division by zero (torchattacks adds 1e-10 to the norm).
* Non-finite inputs, losses or gradients raise :class:`~litzoo.framework.errors.LitzooError`; ``ε = 0`` returns the clean
  values exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import eval_mode

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
ATTACKS: tuple[str, ...] = ("fgsm", "pgd")
Forward = Callable[[dict[str, Any]], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def classification_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Summed softmax cross-entropy for class indices ``(B,)``, or BCE-with-logits for multi-hot ``(B, C)`` targets."""
    if logits.dim() != 2:
        raise LitzooError(f"adversarial attack: the logits must have shape (B, C), got {tuple(logits.shape)}")
    if not target.is_floating_point() and target.dim() == 1:
        return F.cross_entropy(logits.float(), target.long(), reduction="sum")
    if target.shape == logits.shape:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="sum")
    raise LitzooError(f"adversarial attack: target of shape {tuple(target.shape)} ({target.dtype}) fits logits {tuple(logits.shape)} "
                      "neither as class indices (B,) nor as multi-hot labels (B, C)")  # fmt: skip


def _per_sample_norm(x: Tensor) -> Tensor:
    """‖x_b‖₂ over all dimensions but the first, shaped to broadcast against ``x``."""
    return x.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))


def project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """``delta`` projected onto the per-sample ε-ball of ``norm`` (L∞: element-wise clamp; L2: radial scaling)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = _per_sample_norm(delta)
    # min(1, ε / ‖δ‖); a zero δ stays zero (the where avoids 0 / 0)
    factor = torch.where(length > eps, eps / length.clamp_min(torch.finfo(delta.dtype).tiny), torch.ones_like(length))
    return delta * factor


def ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent unit step of ``norm``'s ball: ``sign(g)`` (L∞) or ``g / ‖g‖₂`` per sample (L2; 0 where g = 0)."""
    if norm == "linf":
        return grad.sign()
    length = _per_sample_norm(grad)
    return torch.where(length > 0, grad / length.clamp_min(torch.finfo(grad.dtype).tiny), torch.zeros_like(grad))


def random_start(shape: torch.Size, eps: float, norm: Norm, generator: torch.Generator | None, dtype: torch.dtype,
                 device: torch.device) -> Tensor:  # fmt: skip
    """A random ``δ`` in the ε-ball, drawn on the CPU from ``generator`` (torchattacks' rules, see the module docstring)."""
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator, dtype=torch.float64)
        radius = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=generator, dtype=torch.float64) * eps
        delta = direction / _per_sample_norm(direction).clamp_min(1e-300) * radius
    return project(delta.to(dtype), eps, norm).to(device)


def _check_arguments(batch: Mapping[str, Any], keys: Sequence[str], eps: float, norm: str,
                     bounds: Mapping[str, tuple[float, float]] | None) -> list[str]:  # fmt: skip
    if norm not in NORMS:
        raise ValueError(f"adversarial attack: norm must be one of {NORMS}, got {norm!r}")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"adversarial attack: eps must be a finite number >= 0, got {eps!r}")
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"adversarial attack: keys must name one or more distinct batch entries, got {keys!r}")
    for key in keys:
        if key not in batch:
            raise LitzooError(f"adversarial attack: the batch has no {key!r} entry to perturb (its keys: {', '.join(map(str, batch))})")
        value = batch[key]
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() < 1:
            raise LitzooError(f"adversarial attack: batch[{key!r}] must be a floating-point tensor (B, ...), got "
                              f"{type(value).__name__ if not isinstance(value, Tensor) else value.dtype}")  # fmt: skip
        if not bool(torch.isfinite(value).all()):
            raise LitzooError(f"adversarial attack: batch[{key!r}] has non-finite values")
        if bounds is not None and key in bounds:
            low, high = bounds[key]
            if not low < high:
                raise ValueError(f"adversarial attack: bounds[{key!r}] must be (low, high) with low < high, got {bounds[key]!r}")
            if bool((value < low).any()) or bool((value > high).any()):
                raise LitzooError(f"adversarial attack: batch[{key!r}] has values outside its valid range [{low}, {high}] "
                                  f"(found [{float(value.min()):.6g}, {float(value.max()):.6g}])")  # fmt: skip
    return keys


@contextlib.contextmanager
def _attack_mode(model: nn.Module | None) -> Iterator[None]:
    """Autograd on (also inside ``torch.inference_mode``), the model in eval mode, its train flags restored after."""
    with torch.inference_mode(False), torch.enable_grad(), (eval_mode(model) if model is not None else contextlib.nullcontext()):
        yield


def _copy(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A dict copy of ``batch`` whose tensors are detached clones (made under :func:`_attack_mode`, so not inference tensors,
    which autograd could not save for the backward pass)."""
    return {key: value.detach().clone() if isinstance(value, Tensor) else value for key, value in batch.items()}


def _gradients(forward: Forward, batch: Mapping[str, Any], current: dict[str, Tensor], target: Tensor,
               loss_fn: LossFn) -> dict[str, Tensor]:  # fmt: skip
    """∇ of ``loss_fn(forward(batch with current), target)`` with respect to the entries of ``current``."""
    leaves = {key: value.detach().requires_grad_(True) for key, value in current.items()}
    logits = forward({**batch, **leaves})
    if not isinstance(logits, Tensor):
        raise LitzooError(f"adversarial attack: the forward must return a logits tensor, got {type(logits).__name__}")
    loss = loss_fn(logits, target)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise LitzooError("adversarial attack: loss_fn must return a scalar tensor")
    if not bool(torch.isfinite(loss)):
        raise LitzooError(f"adversarial attack: the loss is not finite ({float(loss)})")
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    result = {}
    for key, grad in zip(leaves, grads, strict=True):
        grad = torch.zeros_like(leaves[key]) if grad is None else grad  # the forward ignores this input
        if not bool(torch.isfinite(grad).all()):
            raise LitzooError(f"adversarial attack: the gradient with respect to {key!r} has non-finite values")
        result[key] = grad.detach()
    return result


def _clamp(key: str, value: Tensor, bounds: Mapping[str, tuple[float, float]] | None) -> Tensor:
    if bounds is None or key not in bounds:
        return value
    low, high = bounds[key]
    return value.clamp(low, high)


def fgsm(forward: Forward, batch: Mapping[str, Any], target: Tensor, keys: Sequence[str], eps: float, norm: Norm = "linf",
         loss_fn: LossFn = classification_loss, bounds: Mapping[str, tuple[float, float]] | None = None,
         model: nn.Module | None = None) -> dict[str, Any]:  # fmt: skip
    """One fast-gradient step of size ``eps`` on the entries ``keys`` of ``batch``; returns a new batch dict.

    Args:
        forward: ``forward(batch_dict) -> logits (B, C)``.
        batch: the inputs (e.g. ``{"video": ..., "audio": ..., "label": ...}``); not modified.
        target: class indices ``(B,)`` or multi-hot labels ``(B, C)`` for ``loss_fn``.
        keys: the entries to perturb, each within its own ε-ball.
        eps: the radius (≥ 0).
        norm: ``"linf"`` (``ε · sign(g)``, FGSM) or ``"l2"`` (``ε · g / ‖g‖₂`` per sample, the fast gradient method).
        loss_fn: ``loss_fn(logits, target) -> scalar`` to increase (:func:`classification_loss` by default).
        bounds: optional valid range ``(low, high)`` per key; the result is clamped to it.
        model: the network behind ``forward``: run in eval mode, train flags restored.
    """
    keys = _check_arguments(batch, keys, eps, norm, bounds)
    with _attack_mode(model):
        batch, target = _copy(batch), target.detach().clone()
        if eps == 0:
            return batch
        grads = _gradients(forward, batch, {key: batch[key] for key in keys}, target, loss_fn)
        adversarial = {key: _clamp(key, batch[key] + eps * ascent_direction(grads[key], norm), bounds).detach() for key in keys}
    return {**batch, **adversarial}


def pgd(forward: Forward, batch: Mapping[str, Any], target: Tensor, keys: Sequence[str], eps: float, norm: Norm = "linf",
        steps: int = 10, alpha: float | None = None, random_init: bool = True, generator: torch.Generator | None = None,
        loss_fn: LossFn = classification_loss, bounds: Mapping[str, tuple[float, float]] | None = None,
        model: nn.Module | None = None) -> dict[str, Any]:  # fmt: skip
    """Projected gradient ascent (Madry et al.) on the entries ``keys`` of ``batch``; returns a new batch dict.

    Every returned entry ``x'`` satisfies ``‖x' − x‖ ≤ eps`` per sample in ``norm`` (and lies in ``bounds``).

    Args:
        forward, batch, target, keys, eps, norm, loss_fn, bounds, model: as :func:`fgsm`.
        steps: ascent steps (≥ 1).
        alpha: step size; ``None`` for ``2.5 · eps / steps``.
        random_init: start from a random point of the ball (drawn from ``generator``), else from the clean input.
        generator: a CPU generator for the random start; ``None`` draws from a fresh generator seeded 0 (never the
            global RNG).
    """
    keys = _check_arguments(batch, keys, eps, norm, bounds)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"pgd: steps must be a positive integer, got {steps!r}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"pgd: alpha must be a finite number >= 0, got {alpha!r}")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    with _attack_mode(model):
        batch, target = _copy(batch), target.detach().clone()
        if eps == 0:
            return batch
        clean = {key: batch[key] for key in keys}
        current = dict(clean)
        if random_init:
            current = {key: _clamp(key, x + random_start(x.shape, eps, norm, generator, x.dtype, x.device), bounds) for key, x in clean.items()}
        for _ in range(steps):
            grads = _gradients(forward, batch, current, target, loss_fn)
            current = {
                key: _clamp(key, clean[key] + project(current[key] + alpha * ascent_direction(grads[key], norm) - clean[key], eps, norm), bounds)
                for key in keys
            }  # fmt: skip
    return {**batch, **{key: value.detach() for key, value in current.items()}}


def attack(name: str, forward: Forward, batch: Mapping[str, Any], target: Tensor, keys: Sequence[str], eps: float, norm: Norm = "linf",
           **options: Any) -> dict[str, Any]:  # fmt: skip
    """:func:`fgsm` or :func:`pgd` by name (``options`` go to the chosen one; PGD-only options are dropped for FGSM)."""
    if name == "fgsm":
        for option in ("steps", "alpha", "random_init", "generator"):
            options.pop(option, None)
        return fgsm(forward, batch, target, keys, eps, norm, **options)
    if name == "pgd":
        return pgd(forward, batch, target, keys, eps, norm, **options)
    raise ValueError(f"adversarial attack: name must be one of {ATTACKS}, got {name!r}")


def critical_epsilon(epsilons: Sequence[float], values: Sequence[float], clean: float, fraction: float = 0.5) -> float | None:
    """The smallest ε at which the robustness curve falls to ``fraction × clean``, linearly interpolated.

    The curve is ``(0, clean)`` followed by ``(epsilons[i], values[i])`` (``epsilons`` increasing, > 0; a grid point at
    ε = 0 is allowed and must then carry the clean value). The first segment whose end is at or below the threshold
    ``t = fraction · clean`` gives ``ε* = ε_a + (m_a − t) (ε_b − ε_a) / (m_a − m_b)``; ``None`` when the curve never
    reaches ``t`` on the grid. A clean value ≤ 0 has no meaningful drop: ``None``.
    """
    if len(epsilons) != len(values):
        raise ValueError(f"critical_epsilon: {len(epsilons)} epsilons but {len(values)} values")
    if not 0 < fraction < 1:
        raise ValueError(f"critical_epsilon: fraction must lie in (0, 1), got {fraction!r}")
    if any(not math.isfinite(v) for v in [clean, *values]) or any(not math.isfinite(e) for e in epsilons):
        raise LitzooError("critical_epsilon: the robustness curve has non-finite values")
    if clean <= 0:
        return None
    threshold = fraction * clean
    points = [(0.0, float(clean))] + [(float(e), float(v)) for e, v in zip(epsilons, values, strict=True) if e > 0]
    for (e_a, m_a), (e_b, m_b) in pairwise(points):
        if e_b <= e_a:
            raise ValueError(f"critical_epsilon: epsilons must increase, got {list(epsilons)}")
        if m_b <= threshold:
            if m_a <= threshold:  # only possible at the first point if clean ≤ threshold, excluded above
                return e_a
            return e_a + (m_a - threshold) * (e_b - e_a) / (m_a - m_b)
    return None
