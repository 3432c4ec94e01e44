"""DataLoader construction shared by litzoo's DataModules, and the checks of its two options."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset


def check_loader_options(batch_size: int, num_workers: int) -> None:
    """Raises a ``ValueError`` naming the option when ``batch_size < 1`` or ``num_workers < 0``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader:
    """A DataLoader with litzoo's defaults: workers kept alive across epochs when there are any.

    A shuffled loader draws its order from torch's global RNG (no generator of its own), so
    ``seed_everything`` fixes it. Under DDP, Lightning replaces the sampler with a DistributedSampler
    (``shuffle`` carries over).
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, persistent_workers=num_workers > 0)
