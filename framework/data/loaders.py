"""DataLoader construction shared by litzoo's DataModules."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader:
    """A DataLoader with litzoo's defaults: workers kept alive across epochs when there are any.

    Under DDP, Lightning replaces the sampler with a DistributedSampler (``shuffle`` carries over).
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, persistent_workers=num_workers > 0)
