"""Tensor data utilities: transforms written with torch ops, dict-batch datasets."""

from litzoo.framework.data.datasets import DictTensorDataset
from litzoo.framework.data.loaders import make_loader
from litzoo.framework.data.transforms import Normalize, resize_images

__all__ = ["DictTensorDataset", "Normalize", "make_loader", "resize_images"]
