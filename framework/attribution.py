"""Integrated Gradients over input embeddings, and token attributions.

Integrated Gradients (Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017,
arXiv:1703.01365) attributes a model's score ``F`` for one class to the input features: for an input ``x``
and a baseline ``x'``

    IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x'))/dx_i da,

and by the fundamental theorem of calculus for path integrals the attributions add up to ``F(x) - F(x')``
("completeness"). The integral is approximated by a quadrature ``sum_k w_k g(a_k)``; the gap
``sum_i IG_i - (F(x) - F(x'))`` is the *convergence delta*, which the paper suggests checking (it proposes
20 to 300 steps until the sum is within 5 % of the score difference).

Text models take discrete tokens, so the attribution is taken with respect to the *input embeddings*
(captum's ``LayerIntegratedGradients`` on the embedding layer, as ToxVis -- Gunturi, Ding, Rho,
arXiv:2303.09402 -- and the captum BERT tutorials do): :func:`integrated_gradients` takes any
``forward(embeds, mask) -> logits`` callable, the embeddings of the tokens and those of a baseline, and
:func:`token_attributions` reduces the per-element attributions to one number per token.

Conventions (captum, pytorch/captum ``captum/attr/_core/integrated_gradients.py`` and
``captum/attr/_utils/approximation_methods.py``, read for this file; no captum code is used):

* 50 steps and the Gauss-Legendre rule by default, as in captum. Gauss-Legendre with ``n`` nodes is
  exact for integrands that are polynomials of degree up to ``2n - 1`` along the path; it is the better
  rule for smooth networks.
* ``riemann_trapezoid`` evaluates ``a = 0, 1/(n-1), ..., 1`` with weights ``1/(n-1)`` (halved at both
  ends), a true trapezoid rule whose weights sum to 1. **Deviation from captum**: captum pairs those
  nodes with weights ``1/n`` (halved at the ends), which sum to ``(n-1)/n``, so its trapezoid
  attributions of a linear model are ``(n-1)/n`` of the exact ones; ours are exact (a test checks it).
  ``riemann_left`` / ``riemann_right`` / ``riemann_middle`` are captum's (weights ``1/n``).
* The convergence delta is ``sum(attributions) - (F(x) - F(x'))`` per sample, the sign captum uses.
* Token attribution = the sum of the attributions over the embedding dimension (ToxVis / captum's
  ``summarize_attributions``), which keeps completeness: the token attributions of a sample still add up to
  ``F(x) - F(x')`` when the model ignores padded positions. ``reduction="l2"`` gives the unsigned L2 norm
  instead (a magnitude; completeness is lost). The captum tutorials then divide by the norm of the whole
  vector for display; that scaling is left to the viewer (the AttributionWriter colours each sample
  relative to its largest absolute attribution and stores the raw values).

Chosen where the paper is silent: the baseline defaults to zeros (the paper's choice for images and the
text models it studied, the ToxVis notes' "pad/zero embedding"); the mask is passed unchanged to every
point of the path (only the embeddings are interpolated, as captum's ``additional_forward_args``); the
points of the path are evaluated in batches of ``steps_per_batch`` steps times the batch (one forward and
one backward per batch). The model's output for a row must depend on that row only (no batch statistics:
call it in eval mode), since the gradient of the summed scores is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from litzoo.framework.verification import check_finite

IntegrationMethod = Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]
METHODS: tuple[str, ...] = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")

#: ``forward(embeds (N, ...), mask (N, ...) or None) -> logits (N, C)``
EmbeddingsForward = Callable[[Tensor, "Tensor | None"], Tensor]


def integration_points(steps: int, method: str = "gausslegendre") -> tuple[Tensor, Tensor]:
    """The quadrature nodes ``a_k`` in [0, 1] and weights ``w_k`` (float64, each of length ``steps``) of ``method``.

    ``sum_k w_k g(a_k)`` approximates ``integral_0^1 g(a) da``; the weights of every method sum to 1.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    minimum = 2 if method == "riemann_trapezoid" else 1
    if not isinstance(steps, int) or steps < minimum:
        raise ValueError(f"steps must be an integer >= {minimum} for {method}, got {steps!r}")
    n = steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1], weights summing to 2
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    if method == "riemann_trapezoid":
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    alphas = (torch.arange(n, dtype=torch.float64) + offset) / n
    return alphas, torch.full((n,), 1 / n, dtype=torch.float64)


@dataclass(frozen=True)
class IntegratedGradientsResult:
    """What :func:`integrated_gradients` returns.

    Attributes:
        attributions: same shape as the inputs: the attribution of every input element.
        delta: ``(B,)`` convergence delta, ``attributions[b].sum() - (scores[b] - baseline_scores[b])``.
        scores: ``(B,)`` the target logit at the input, ``F(x)``.
        baseline_scores: ``(B,)`` the target logit at the baseline, ``F(x')``.
    """

    attributions: Tensor
    delta: Tensor
    scores: Tensor
    baseline_scores: Tensor


def _target_scores(logits: Tensor, target: Tensor, rows: int) -> Tensor:
    if logits.dim() != 2 or logits.shape[0] != rows:
        raise ValueError(f"forward must return logits of shape ({rows}, num_classes), got {tuple(logits.shape)}")
    if int(target.min()) < 0 or int(target.max()) >= logits.shape[1]:
        raise ValueError(f"target classes must lie in [0, {logits.shape[1]}), got {target.tolist()}")
    return logits.gather(1, target[:, None]).squeeze(1)


def integrated_gradients(
    forward: EmbeddingsForward,
    inputs_embeds: Tensor,
    baseline: Tensor | float | None = None,
    target: int | Tensor = 0,
    mask: Tensor | None = None,
    steps: int = 50,
    method: IntegrationMethod = "gausslegendre",
    steps_per_batch: int | None = None,
) -> IntegratedGradientsResult:
    """Integrated Gradients of ``forward``'s ``target`` logit with respect to ``inputs_embeds``.

    Args:
        forward: ``forward(embeds, mask) -> logits (N, C)``; called with ``N = k * B`` rows (``k`` path points
            of each sample, point-major) and the mask repeated ``k`` times; ``mask`` is ``None`` when none is given.
        inputs_embeds: ``(B, ...)`` floating inputs, e.g. ``(B, L, D)`` token embeddings.
        baseline: the reference input ``x'``: a tensor broadcastable to ``inputs_embeds`` (e.g. the embeddings
            of pad tokens), a number, or ``None`` for zeros.
        target: the class whose logit is attributed: one int for all samples or a ``(B,)`` tensor.
        mask: passed unchanged to ``forward`` at every point of the path (e.g. ``(B, L)`` attention mask).
        steps: number of quadrature points (captum's default 50).
        method: ``"gausslegendre"`` (captum's default) or a Riemann rule, see :func:`integration_points`.
        steps_per_batch: path points evaluated per forward (memory ``steps_per_batch * B`` rows); all at once
            when ``None``.

    Returns:
        :class:`IntegratedGradientsResult` (attributions, convergence delta, scores at input and baseline).
        The computation runs with gradients enabled and outside inference mode (it may be called from a
        Lightning test or validation hook); it computes gradients of the inputs only, so the parameters'
        ``.grad`` are left untouched. Non-finite results raise :class:`LitzooError`.
    """
    if not torch.is_floating_point(inputs_embeds) or inputs_embeds.dim() < 1:
        raise ValueError(f"inputs_embeds must be a floating tensor with a batch dimension, got {inputs_embeds.dtype}")
    if steps_per_batch is not None and (not isinstance(steps_per_batch, int) or steps_per_batch < 1):
        raise ValueError(f"steps_per_batch must be a positive integer or None, got {steps_per_batch!r}")
    alphas, weights = integration_points(steps, method)
    batch = inputs_embeds.shape[0]
    feature_shape = inputs_embeds.shape[1:]
    ones = (1,) * len(feature_shape)
    chunk = steps if steps_per_batch is None else min(steps_per_batch, steps)
    # inputs created under torch.inference_mode (Lightning's test loop) cannot enter autograd: clone outside it
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs_embeds.detach().clone()
        if baseline is None:
            x0 = torch.zeros_like(x)
        elif isinstance(baseline, Tensor):
            x0 = baseline.detach().to(x).expand_as(x).clone()
        else:
            x0 = torch.full_like(x, float(baseline))
        target_t = (torch.full((batch,), target, dtype=torch.long) if isinstance(target, int) else target.detach().clone().long()).to(x.device)
        if target_t.shape != (batch,):
            raise ValueError(f"target must be an int or a ({batch},) tensor, got shape {tuple(target_t.shape)}")
        mask_c = None if mask is None else mask.detach().clone()
        alphas, weights = alphas.to(x), weights.to(x)
        difference = x - x0
        total_gradient = torch.zeros_like(x)
        for start in range(0, steps, chunk):
            a = alphas[start : start + chunk]
            k = len(a)
            points = (x0.unsqueeze(0) + a.view(k, 1, *ones) * difference.unsqueeze(0)).reshape(k * batch, *feature_shape)
            points.requires_grad_(True)
            repeated_mask = None if mask_c is None else mask_c.repeat(k, *([1] * (mask_c.dim() - 1)))
            logits = forward(points, repeated_mask)
            # each row's score depends on its own row only, so the gradient of the sum is every row's own gradient
            selected = _target_scores(logits, target_t.repeat(k), k * batch).sum()
            (gradient,) = torch.autograd.grad(selected, points)
            total_gradient += (gradient.view(k, batch, *feature_shape) * weights[start : start + k].view(k, 1, *ones)).sum(0)
        attributions = total_gradient * difference
        with torch.no_grad():
            both_mask = None if mask_c is None else torch.cat([mask_c, mask_c])
            ends = _target_scores(forward(torch.cat([x, x0]), both_mask), torch.cat([target_t, target_t]), 2 * batch)
        scores, baseline_scores = ends[:batch], ends[batch:]
        delta = attributions.reshape(batch, -1).sum(1) - (scores - baseline_scores)
    result = IntegratedGradientsResult(attributions.detach(), delta.detach(), scores.detach(), baseline_scores.detach())
    check_finite([result.attributions, result.delta, result.scores, result.baseline_scores], "integrated_gradients: the attributions and scores")
    return result


def token_attributions(attributions: Tensor, mask: Tensor | None = None, reduction: Literal["sum", "l2"] = "sum") -> Tensor:
    """One attribution per token: ``(B, L, D) -> (B, L)``.

    ``"sum"`` adds the attributions over the embedding dimension (signed; keeps completeness), ``"l2"`` takes
    their Euclidean norm (a magnitude). Positions where ``mask`` is false (padding) are set to 0.
    """
    if attributions.dim() != 3:
        raise ValueError(f"attributions must have shape (B, L, D), got {tuple(attributions.shape)}")
    if reduction == "sum":
        per_token = attributions.sum(-1)
    elif reduction == "l2":
        per_token = attributions.norm(dim=-1)
    else:
        raise ValueError(f"reduction must be 'sum' or 'l2', got {reduction!r}")
    if mask is not None:
        if mask.shape != per_token.shape:
            raise ValueError(f"mask must have shape {tuple(per_token.shape)}, got {tuple(mask.shape)}")
        per_token = per_token.masked_fill(~mask.bool(), 0.0)
    return per_token
