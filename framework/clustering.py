"""Fuzzy c-means (Bezdek, "Pattern Recognition with Fuzzy Objective Function Algorithms", 1981), in torch.

GENNAPE (Mills et al., AAAI 2023) clusters the frozen graph embeddings of the training architectures
with fuzzy c-means and weights one predictor head per cluster by each architecture's membership.

With points ``z_i``, centres ``c_k`` and fuzzifier ``m > 1``, the memberships are

    u_ik = 1 / Σ_j (‖z_i − c_k‖ / ‖z_i − c_j‖)^{2/(m−1)}          (rows sum to 1)

and the centres the membership-weighted means ``c_k = Σ_i u_ik^m z_i / Σ_i u_ik^m``. The two steps
alternate from random memberships until the largest membership change is below ``tol``; each step
cannot increase the objective ``J = Σ_i Σ_k u_ik^m ‖z_i − c_k‖²``. (scikit-fuzzy's ``cmeans`` is the
reference; it is not a dependency here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def fuzzy_memberships(points: Tensor, centers: Tensor, m: float = 2.0, eps: float = 1e-12) -> Tensor:
    """``(N, K)`` memberships of ``points`` ``(N, D)`` in the clusters of ``centers`` ``(K, D)``.

    A point that sits on a centre belongs to it fully (the limit of the formula)."""
    if m <= 1:
        raise ValueError(f"the fuzzifier m must be > 1, got {m}")
    dist = torch.cdist(points, centers)  # (N, K)
    on_center = dist <= eps
    # u_ik = d_ik^(-p) / Σ_j d_ij^(-p) with p = 2/(m−1): the same ratio as the formula, computed stably
    power = 2.0 / (m - 1.0)
    inv = dist.clamp_min(eps).pow(-power)
    u = inv / inv.sum(dim=1, keepdim=True)
    hit = on_center.any(dim=1)
    if hit.any():
        u[hit] = on_center[hit].to(u.dtype) / on_center[hit].sum(dim=1, keepdim=True)
    return u


def fcm_objective(points: Tensor, centers: Tensor, memberships: Tensor, m: float = 2.0) -> Tensor:
    """``J = Σ_i Σ_k u_ik^m ‖z_i − c_k‖²``."""
    return (memberships.pow(m) * torch.cdist(points, centers).pow(2)).sum()


@dataclass
class FuzzyCMeans:
    """The result of :func:`fuzzy_c_means`: ``centers`` ``(K, D)``, training ``memberships`` ``(N, K)``,
    the fuzzifier ``m``, iterations run and the final objective."""

    centers: Tensor
    memberships: Tensor
    m: float
    iterations: int
    objective: float

    def predict(self, points: Tensor) -> Tensor:
        """Memberships of new points in the fitted clusters."""
        return fuzzy_memberships(points, self.centers.to(points), self.m)


def fuzzy_c_means(points: Tensor, num_clusters: int, m: float = 2.0, max_iter: int = 300, tol: float = 1e-5,
                  seed: int = 0) -> FuzzyCMeans:  # fmt: skip
    """Fit ``num_clusters`` fuzzy clusters to ``points`` ``(N, D)`` (float64 internally)."""
    if points.ndim != 2:
        raise ValueError(f"points must be (N, D), got shape {tuple(points.shape)}")
    if not 1 <= num_clusters <= points.shape[0]:
        raise ValueError(f"num_clusters must be in [1, N={points.shape[0]}], got {num_clusters}")
    if m <= 1:
        raise ValueError(f"the fuzzifier m must be > 1, got {m}")
    z = points.detach().double()
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(z.shape[0], num_clusters, generator=generator, dtype=torch.float64).to(z.device)
    u = u / u.sum(dim=1, keepdim=True)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        weights = u.pow(m)
        centers = weights.T @ z / weights.sum(dim=0)[:, None]
        new_u = fuzzy_memberships(z, centers, m)
        change = (new_u - u).abs().max().item()
        u = new_u
        if change < tol:
            break
    centers = u.pow(m).T @ z / u.pow(m).sum(dim=0)[:, None]
    u = fuzzy_memberships(z, centers, m)
    return FuzzyCMeans(centers.to(points.dtype), u.to(points.dtype), m, iterations, float(fcm_objective(z, centers, u, m)))
