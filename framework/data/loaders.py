"""DataLoader construction shared by litzoo's DataModules: seeded, resumable shuffling, and the checks of the loader options.

A shuffled loader of :func:`make_loader` is exact to resume, also mid-epoch and with workers:

* its order is a permutation drawn from ``(seed, epoch)`` (:class:`EpochShuffleSampler`), never from the
  global RNG, so it does not depend on what else the run drew; Lightning sets the epoch (``set_epoch``);
* it is a :class:`ResumableLoader`, a DataLoader with ``state_dict`` / ``load_state_dict``: its position
  (epoch, batches read) is saved in every checkpoint and loaded back when a fit restarts mid-epoch (by
  Lightning, and by :class:`litzoo.framework.resume.ExactResume` where Lightning does not: when it built
  the loader before restoring its loops); the loader then reads the batches of that epoch already trained
  again and drops them, so that the workers' augmentations continue exactly where they were (this costs
  the loading time of that part of the epoch, with no training);
* its worker processes are seeded per epoch from ``(seed, epoch, rank)`` and the worker id (torch seeds
  worker ``i`` from the iterator's base seed plus ``i``), not from the global RNG; workers are therefore
  started again every epoch (not persistent), since a kept worker would carry its random state over.

What the training step itself draws (dropout, random masks, main-process augmentations) comes from the global
RNG: :class:`litzoo.framework.resume.ExactResume` saves and restores it.

Lightning 2.x on its own, for comparison: a mid-epoch restart restores the loops' progress and skips the
batches already done by *count* only (no fast-forward), restarting the loader's iterator from scratch; it
restores a loader's position only when the loader has ``state_dict`` / ``load_state_dict``
(``CombinedLoader._state_dicts``) and was built after the loops were restored; it saves no RNG state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from typing_extensions import override

from litzoo.framework.random_state import derive_seed, isolated_rng


def check_loader_options(batch_size: int, num_workers: int) -> None:
    """Raises a ``ValueError`` naming the option when ``batch_size < 1`` or ``num_workers < 0``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")


def default_seed() -> int:
    """Lightning's global seed (``PL_GLOBAL_SEED``, set by ``seed_everything``), or 0 when none was set."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _distributed() -> tuple[int, int]:
    """``(world size, rank)`` of the default process group, ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class EpochShuffleSampler(DistributedSampler):
    """The indices of ``dataset`` in an order drawn from ``(seed, epoch)`` only, sharded over the DDP ranks.

    Each epoch is a permutation of a generator seeded with ``derive_seed(seed, epoch)``; under DDP each rank
    reads every ``world_size``-th index of it (padded to equal shards, as torch's DistributedSampler).
    The process group is read when the sampler is iterated or measured, not when it is built, so a
    sampler built before DDP starts still shards. It is a ``DistributedSampler`` to Lightning, which
    therefore keeps it (instead of wrapping it in one seeded by ``PL_GLOBAL_SEED``) and calls
    :meth:`set_epoch` every epoch.

    Args:
        dataset: a sized dataset.
        seed: the seed of every epoch's order.
        num_replicas: fixed number of shards (default: the DDP world size when iterated, else 1).
        rank: fixed shard (default: the DDP rank when iterated, else 0).
    """

    def __init__(self, dataset: Sized, seed: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        # torch's __init__ would read the process group now; here it is read on use
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0
        self.shuffle, self.drop_last = True, False
        self._num_replicas, self._rank = num_replicas, rank

    @property
    def num_replicas(self) -> int:
        return self._num_replicas if self._num_replicas is not None else _distributed()[0]

    @property
    def rank(self) -> int:
        return self._rank if self._rank is not None else _distributed()[1]

    @property
    def num_samples(self) -> int:
        return -(-len(self.dataset) // self.num_replicas)

    @property
    def total_size(self) -> int:
        return self.num_samples * self.num_replicas

    @override
    def __len__(self) -> int:
        return self.num_samples

    @override
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @override
    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        total = self.total_size
        order += (order * (total // max(len(order), 1) + 1))[: total - len(order)]  # equal shards: repeat the first ones
        return iter(order[self.rank : total : self.num_replicas])


class ResumableLoader(DataLoader):
    """A DataLoader whose place in an epoch is saved in checkpoints and restored on resume, with workers seeded per epoch.

    Takes DataLoader's arguments, plus ``seed`` (default :func:`default_seed`), the seed of its workers'
    random states: each epoch's iterator draws its base seed from a generator seeded with
    ``derive_seed(seed, epoch, rank)``, and torch seeds worker ``i`` (torch, ``random`` and NumPy) from that
    base seed and ``i``. The epoch is the sampler's (``set_epoch``, which Lightning calls every epoch);
    after a whole pass it moves to the next one by itself, for loops without Lightning.

    ``state_dict()`` is ``{"seed", "epoch", "batches"}``, the next batch to read; Lightning saves it in
    every checkpoint of a fit. After ``load_state_dict``, the first iterator of that epoch reads the
    ``batches`` already trained again (with the global RNG put back afterwards) and drops them, so
    the batches and the workers' random states continue exactly. The count is exact for a loader with a
    length (Lightning reads a loader without one a batch ahead). The iterator is started on its first
    ``next``, after Lightning has set the epoch (it creates it earlier, in its data set-up).

    A streamed dataset (an ``IterableDataset`` with ``set_epoch``, such as
    :class:`~litzoo.framework.data.shard_stream.ShardStream`) takes the epoch as a sampler does: the loader sets it
    at the start of every pass (Lightning sets the epoch of samplers only), and its ``seed`` on ``load_state_dict``.
    As Lightning starts one pass per epoch, a pass begun after one cut short (``limit_train_batches``) is the next
    epoch. (A checkpoint written at the end of such a cut epoch holds the cut pass's position: resumed from it, the
    loader replays that epoch's order.)

    Raises:
        ValueError: ``persistent_workers=True``: a worker kept across epochs carries its random state over.
    """

    def __init__(self, dataset: Dataset, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError("ResumableLoader starts its workers every epoch (seeded from seed, epoch and rank); persistent_workers must be False")
        super().__init__(dataset, *args, **kwargs)
        self.seed = default_seed() if seed is None else int(seed)
        self._epoch = 0  # the epoch when the sampler has none of its own
        self._running: tuple[int, int] | None = None  # (epoch, batches read) of the current pass
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip, from load_state_dict

    @property
    def epoch(self) -> int:
        """The epoch the next pass reads: the sampler's when it has one (Lightning sets it), else the loader's."""
        return int(getattr(self.sampler, "epoch", self._epoch))

    def _streamed(self) -> bool:
        """Whether the dataset is an IterableDataset that takes the epoch itself (``set_epoch``)."""
        return isinstance(self.dataset, IterableDataset) and callable(getattr(self.dataset, "set_epoch", None))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next pass (on the sampler, or the streamed dataset, too, when it has ``set_epoch``)."""
        self._epoch = int(epoch)
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(int(epoch))
        if self._streamed():
            self.dataset.set_epoch(int(epoch))

    def _length(self) -> int | None:
        try:
            return len(self)
        except TypeError:  # an IterableDataset without __len__
            return None

    @override
    def __iter__(self) -> Iterator[Any]:
        return _ResumingIterator(self)

    def _start(self) -> Iterator[Any]:
        """The iterator of the current epoch, moved past the batches to skip after a resume."""
        if self._streamed() and self._resume is None and self._running is not None and self._running[1] > 0:
            self.set_epoch(self._running[0] + 1)  # the last pass was cut short: Lightning is in the next epoch
        epoch = self.epoch
        if self._streamed():
            self.dataset.set_epoch(epoch)  # before the workers start with a copy of it
        skip = 0
        if self._resume is not None:
            resume_epoch, batches = self._resume
            self._resume = None
            skip = batches if resume_epoch == epoch else 0  # another epoch: the saved position is stale
        self.generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _distributed()[1]))
        iterator = super().__iter__()
        self._running = (epoch, 0)
        if skip:
            # the workers read these batches again, so their random states are where they were; the
            # global RNG, already restored by ExactResume, must not see what the main process draws here
            with isolated_rng():
                for _ in range(skip):
                    next(iterator)
            self._running = (epoch, skip)
        return iterator

    def _advance(self) -> None:
        """Count one batch read; after the last one of a pass, the next pass is the next epoch."""
        epoch, batches = self._running
        self._running = (epoch, batches + 1)
        length = self._length()
        if length is not None and batches + 1 >= length:
            self.set_epoch(epoch + 1)
            self._running = (epoch + 1, 0)

    def state_dict(self) -> dict[str, int]:
        """``{"seed", "epoch", "batches"}``: where the next batch is read."""
        epoch, batches = self._running if self._running is not None else (self.epoch, 0)
        return {"seed": self.seed, "epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`: its seed (the order's too, with an :class:`EpochShuffleSampler`), its
        epoch, and its batches skipped on the next pass of that epoch."""
        self.seed = int(state_dict["seed"])
        if isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.seed = self.seed
        if self._streamed() and hasattr(self.dataset, "seed"):
            self.dataset.seed = self.seed
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        self.set_epoch(epoch)
        self._running = None
        self._resume = (epoch, batches) if batches else None


class _ResumingIterator(Iterator[Any]):
    """The iterator of a :class:`ResumableLoader`: starts the loader's pass on the first ``next`` and counts the batches."""

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader = loader
        self.iterator: Iterator[Any] | None = None

    @override
    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start()
        batch = next(self.iterator)
        self.loader._advance()
        return batch


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int | None = None, collate_fn: Callable[[list], Any] | None = None
) -> DataLoader:
    """A DataLoader with litzoo's defaults.

    Shuffled: a :class:`ResumableLoader` over an :class:`EpochShuffleSampler` (order from ``(seed, epoch)``,
    sharded over DDP ranks, resumable mid-epoch; workers started and seeded every epoch). In order: a
    DataLoader whose workers, if any, are kept alive across epochs; its workers' base seed comes from a
    generator of its own, so iterating it (validation) draws nothing from the global RNG either.

    Args:
        dataset: the split's dataset.
        batch_size: samples per batch.
        shuffle: a new order every epoch (the training split).
        num_workers: DataLoader worker processes.
        seed: the seed of the order and of the workers; default :func:`default_seed` (``seed_everything``'s).
        collate_fn: the batch collation (default: torch's).
    """
    seed = default_seed() if seed is None else int(seed)
    if shuffle:
        return ResumableLoader(dataset, batch_size=batch_size, sampler=EpochShuffleSampler(dataset, seed), num_workers=num_workers, collate_fn=collate_fn, seed=seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, persistent_workers=num_workers > 0, collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
