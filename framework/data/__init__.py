"""Tensor data utilities: transforms written with torch ops, dict-batch datasets, the DataModule base that holds
the splits and builds the loaders, and the seeded, resumable training loader; shard readers and writers of pools.

The names below are imported on first use (PEP 562), so that importing a torch-free module of this package, such as
``shards`` or ``jsonl`` in a curation worker process, does not import torch and Lightning first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "DictTensorDataset": "datasets",
    "EpochShuffleSampler": "loaders",
    "ResumableLoader": "loaders",
    "check_loader_options": "loaders",
    "make_loader": "loaders",
    "SplitsDataModule": "splits",
    "Normalize": "transforms",
    "check_image_options": "transforms",
    "resize_images": "transforms",
}

__all__ = [
    "DictTensorDataset", "EpochShuffleSampler", "Normalize", "ResumableLoader", "SplitsDataModule", "check_image_options",
    "check_loader_options", "make_loader", "resize_images",
]  # fmt: skip

if TYPE_CHECKING:
    from litzoo.framework.data.datasets import DictTensorDataset
    from litzoo.framework.data.loaders import EpochShuffleSampler, ResumableLoader, check_loader_options, make_loader
    from litzoo.framework.data.splits import SplitsDataModule
    from litzoo.framework.data.transforms import Normalize, check_image_options, resize_images


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
