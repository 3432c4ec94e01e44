"""Shared test fixtures: small models that are not litzoo's, and deterministic seeds."""

from __future__ import annotations

import os

import pytest
import torch

# Tests are CPU-only and must not fight over the 2 cores with intra-op threads of parallel workers.
torch.set_num_threads(1)
os.environ.setdefault("PL_DISABLE_FORK", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize_batchnorm(module: torch.nn.Module, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters: default ones (0, 1, 1, 0) hide fusion bugs."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1.0, 1.0, generator=generator)
                m.running_var.uniform_(0.3, 2.0, generator=generator)
                if m.affine:
                    m.weight.uniform_(0.3, 1.7, generator=generator)
                    m.bias.uniform_(-1.0, 1.0, generator=generator)
    return module


@pytest.fixture
def randomize_bn():
    """``randomize_bn(module)`` gives every BatchNorm non-trivial statistics and affine parameters."""
    return _randomize_batchnorm
