"""The global random states a training step draws from, saved in checkpoints and restored on resume.

Dropout, MAE's random masks and a dataset's augmentations in the main process draw
from the process-wide generators of torch (CPU and CUDA), NumPy and Python's ``random``. Lightning 2.x
saves none of them in a checkpoint (``seed_everything(workers=True)`` only makes Lightning give loaders
without a ``worker_init_fn`` one that seeds workers from torch's per-iterator base seed, worker id and
rank), so a resumed run draws other masks and dropout than the run it continues.
:class:`litzoo.framework.resume.ExactResume` closes that gap with the functions here; ``litzoo fit`` adds it.

The states are stored as tensors, ints and strings only, so checkpoints still load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from ``parts`` (a seed, an epoch, a rank, ...), the same in every process.

    A hash rather than a sum, so ``(seed, epoch + 1)`` and ``(seed + 1, epoch)`` give unrelated streams.
    """
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def collect_rng_states() -> dict[str, Any]:
    """The global random states of torch (CPU, and CUDA once initialised), NumPy and Python, as tensors and numbers."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64), "gauss": python_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global random states to ``states`` (from :func:`collect_rng_states`)."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    if states.get("cuda") and torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):  # a resume may see fewer GPUs
            torch.cuda.set_rng_state(state, device)


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the block with the global random states put back as they were on exit (what it draws is forgotten)."""
    states = collect_rng_states()
    try:
        yield
    finally:
        restore_rng_states(states)


__all__ = ["collect_rng_states", "derive_seed", "isolated_rng", "restore_rng_states"]
