"""Gaussian diffusion: the cosine noise schedule, the forward process ``q(x_t | x_0)``, a timestep
embedding, and the DDIM update for a model that predicts the clean signal ``x_0``.

Conventions. Discrete times ``t ∈ {0, 1, …, T}``; ``alphas_cumprod[t] = ᾱ_t`` with ``ᾱ_0 = 1``
(clean data) and ``ᾱ_T ≈ 0`` (pure noise). The cosine schedule is Nichol & Dhariwal (2021, eq. 17):
``ᾱ_t = f(t) / f(0)``, ``f(t) = cos²(π/2 · (t/T + s) / (1 + s))``, ``s = 0.008``, with every
``β_t = 1 − ᾱ_t / ᾱ_{t−1}`` clipped to at most 0.999 (so ``ᾱ_T`` is tiny but not exactly zero).

DDIM (Song et al., 2021, eq. 12) written for an ``x_0``-predicting model: with
``ε̂ = (x_t − √ᾱ_t · x̂_0) / √(1 − ᾱ_t)``,
``x_{t'} = √ᾱ_{t'} · x̂_0 + √(1 − ᾱ_{t'} − σ²) · ε̂ + σ·z``,
``σ = η · √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) · √(1 − ᾱ_t / ᾱ_{t'})``; ``η = 0`` is deterministic DDIM,
``η = 1`` the DDPM ancestral step. The last step lands on ``t' = 0`` where ``x_0 = x̂_0`` exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from litzoo.framework.nn.pos_embed import sincos_pos_embed_1d


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """``(T + 1,)`` float64 ``ᾱ_t`` for ``t = 0 … T`` of the cosine schedule (``ᾱ_0 = 1``)."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be at least 1, got {timesteps}")
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)  # β_1 … β_T
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)])


class GaussianDiffusion(nn.Module):
    """The cosine schedule as (non-persistent) buffers, ``q_sample`` and the DDIM step.

    Args:
        timesteps: ``T`` (DDPM / Nichol & Dhariwal: 1000).
    """

    def __init__(self, timesteps: int = 1000) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(timesteps).float(), persistent=False)

    def _alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """``ᾱ_t`` gathered per sample and shaped to broadcast against ``like`` ``(B, …)``."""
        return self.alphas_cumprod.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε`` for per-sample integer ``t`` ``(B,)``."""
        alpha_bar = self._alpha_bar(t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def sample_timesteps(self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` times uniform on ``{1, …, T}`` (drawn on the CPU when a generator is given)."""
        if generator is not None:
            return torch.randint(1, self.timesteps + 1, (batch,), generator=generator).to(device)
        return torch.randint(1, self.timesteps + 1, (batch,), device=device)

    def ddim_timesteps(self, steps: int) -> list[tuple[int, int]]:
        """``steps`` pairs ``(t, t')`` evenly spaced from ``T`` down to 0 (the last ``t'`` is 0)."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"sampling steps must be in [1, {self.timesteps}], got {steps}")
        times = torch.linspace(self.timesteps, 0, steps + 1).round().long().tolist()
        return list(zip(times[:-1], times[1:], strict=True))

    def ddim_step(self, x_t: Tensor, x0_pred: Tensor, t: int, t_prev: int, eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
        """One DDIM update ``x_t → x_{t'}`` from the model's ``x̂_0`` (see the module docstring)."""
        a_t = self.alphas_cumprod[t].item()
        a_prev = self.alphas_cumprod[t_prev].item()
        eps = (x_t - math.sqrt(a_t) * x0_pred) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(max(0.0, 1 - a_t / a_prev))
        x_prev = math.sqrt(a_prev) * x0_pred + math.sqrt(max(0.0, 1 - a_prev - sigma**2)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * (torch.randn_like(x_t) if noise is None else noise)
        return x_prev


class TimestepEmbedding(nn.Module):
    """Integer ``t`` ``(B,)`` → ``(B, dim)``: sinusoidal features (the transformer's sin-cos code, as
    DDPM) → ``Linear → SiLU → Linear``."""

    def __init__(self, dim: int, frequency_dim: int | None = None) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim or dim
        self.mlp = nn.Sequential(nn.Linear(self.frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        features = sincos_pos_embed_1d(self.frequency_dim, t.float().cpu()).to(t.device)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


__all__ = ["GaussianDiffusion", "TimestepEmbedding", "cosine_alphas_cumprod"]
