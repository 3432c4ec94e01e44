"""Datasets whose items are dicts with litzoo's stable batch keys (``image``, ``label``, ...)."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset


class DictTensorDataset(Dataset):
    """In-memory tensors of equal length, served as ``{key: tensor[i]}`` items.

    Example:
        >>> ds = DictTensorDataset(image=torch.zeros(10, 1, 8, 8), label=torch.arange(10))
        >>> sorted(ds[3])
        ['image', 'label']
    """

    def __init__(self, **tensors: Tensor) -> None:
        if not tensors:
            raise ValueError("DictTensorDataset needs at least one tensor")
        lengths = {key: len(value) for key, value in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors must have the same length, got {lengths}")
        self.tensors = tensors
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}
