"""Tensor data utilities: transforms written with torch ops, dict-batch datasets, the DataModule base that holds
the splits and builds the loaders, and the seeded, resumable training loader."""

from litzoo.framework.data.datasets import DictTensorDataset
from litzoo.framework.data.loaders import EpochShuffleSampler, ResumableLoader, check_loader_options, make_loader
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.transforms import Normalize, check_image_options, resize_images

__all__ = [
    "DictTensorDataset", "EpochShuffleSampler", "Normalize", "ResumableLoader", "SplitsDataModule", "check_image_options",
    "check_loader_options", "make_loader", "resize_images",
]  # fmt: skip
