"""Shared test fixtures: deterministic seeds, single-threaded torch, BN randomisation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from litzoo.framework.reparam import randomize_batchnorm

# shared user-written models (tests/user_models.py) import as plain modules
sys.path.insert(0, str(Path(__file__).parent))

# Tests are CPU-only and must not fight over the 2 cores with intra-op threads of parallel workers.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def randomize_bn():
    """``randomize_bn(module, seed=0)`` gives every BatchNorm non-trivial statistics and affine parameters."""
    return randomize_batchnorm
