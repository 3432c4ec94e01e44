"""Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016), per sample, as
timm's ``DropPath``: a residual branch is zeroed for a random subset of the batch and the survivors
are scaled by ``1 / (1 − p)`` so the expected output is unchanged. Identity in eval mode."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero a sample's residual branch with probability ``p``, scale the rest by ``1 / (1 − p)`` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        # one Bernoulli draw per sample, broadcast over every other dimension
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
