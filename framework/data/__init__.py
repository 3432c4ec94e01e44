"""Tensor data utilities: transforms written with torch ops, dict-batch datasets."""

from framework.data.datasets import DictTensorDataset
from framework.data.loaders import make_loader
from framework.data.transforms import Normalize, resize_images

__all__ = ["DictTensorDataset", "Normalize", "make_loader", "resize_images"]
