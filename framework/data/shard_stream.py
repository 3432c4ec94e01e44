"""Training on a sharded pool without holding it: an ``IterableDataset`` that streams shards, split across DDP ranks and
DataLoader workers, with a known length and equal steps on every rank.

The pool is a list of shard files (:mod:`litzoo.framework.data.shards`: WebDataset tar shards as open_clip and DataComp
train on, JSONL, Parquet). As WebDataset's ``split_by_node`` / ``split_by_worker`` and open_clip's ``get_wds_dataset``
do, every epoch the list of shards is shuffled by a seeded permutation (from ``(seed, epoch)``, the same on every rank),
then dealt out: DDP rank ``r`` of ``world_size`` takes ``order[r::world_size]`` and its DataLoader worker ``w`` of
``num_workers`` takes ``order[r::world_size][w::num_workers]``. Shard ``i`` is therefore read by exactly one
(rank, worker) per epoch: no sample is read twice. Each worker streams its shards one sample at a time, optionally
through a seeded shuffle buffer (WebDataset's ``shuffle(n)``), decodes what it yields and collates its own batches.

**Length and equal steps.** The number of samples of every shard is counted once (from an open_clip ``sizes.json`` next
to the shards, ``{"<shard file name>": count, ...}``, else by streaming the shard with
:func:`~litzoo.framework.data.shards.count_samples`) and kept. From these counts every rank computes, identically and
without communicating, how many batches each (rank, worker) can make in an epoch; DDP needs every rank to take the same
number of optimizer steps (a rank with a batch more would wait forever in the gradient all-reduce), so each rank reads
the *smallest* rank's number of batches and drops the rest of its samples (from its workers with the most batches
first). ``len(stream)`` is that number of batches (of samples without ``batch_size``), the same on every rank, so
Lightning shows a progress bar and ends the epoch on every rank at the same step. With shards of equal size (what
img2dataset writes, all but the last) nothing or almost nothing is dropped; with shards of uneven size the dropped
samples differ from epoch to epoch (the shards move between ranks) and the length can change from one epoch to the
next — Lightning reads it once, at the first epoch, and ends a later epoch at that count or when the pass runs out,
on every rank alike.

Batches are collated in the workers (as WebDataset's ``batched``), so a worker's last batch may be short and the number
of batches is known exactly whatever the number of workers; give the stream to a DataLoader with ``batch_size=None``.
With :class:`~litzoo.framework.data.loaders.ResumableLoader` (which calls :meth:`ShardStream.set_epoch` every pass) a
fit stopped mid-epoch resumes exactly: the order depends on ``(seed, epoch)``, the rank and the worker only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from litzoo.framework.data.shards import Sample, count_samples, expand_shards, iter_samples
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import derive_seed

SIZES_FILE = "sizes.json"  # open_clip's per-folder sample counts: {"<shard file name>": number of samples, ...}


def read_shard_sizes(shards: Sequence[Path]) -> list[int | None]:
    """The sample count of each shard from a ``sizes.json`` in its folder (open_clip's convention), ``None`` where the
    folder has no such file or the file does not list the shard.

    Raises:
        LitzooError: a ``sizes.json`` that is not a JSON object of non-negative integers, naming the file and the entry.
    """
    tables: dict[Path, dict | None] = {}
    sizes: list[int | None] = []
    for shard in shards:
        folder = shard.parent
        if folder not in tables:
            path = folder / SIZES_FILE
            table = None
            if path.is_file():
                try:
                    table = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise LitzooError(f"sizes file '{path}' cannot be read as JSON: {getattr(error, 'msg', None) or error}") from None
                if not isinstance(table, dict):
                    raise LitzooError(f"sizes file '{path}' is not a JSON object of shard name -> sample count")
            tables[folder] = table
        table = tables[folder]
        value = None if table is None else table.get(shard.name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise LitzooError(f"sizes file '{folder / SIZES_FILE}' entry '{shard.name}' must be a non-negative integer, got {value!r}")
        sizes.append(value)
    return sizes


def _distributed() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def trim_to(units: Sequence[int], total: int) -> list[int]:
    """``units`` lowered to sum to ``total`` by taking from the largest first (water-filling), so that the workers of
    a rank stay as even as they can: every entry above the final level ``c`` becomes ``c`` or ``c + 1``.

    ``total`` at or above ``sum(units)`` leaves them as they are.
    """
    units = [int(u) for u in units]
    if total >= sum(units):
        return units
    low, high = 0, max(units)
    while low < high:  # the highest level c with sum(min(u, c)) <= total
        middle = (low + high + 1) // 2
        if sum(min(u, middle) for u in units) <= total:
            low = middle
        else:
            high = middle - 1
    quotas = [min(u, low) for u in units]
    rest = total - sum(quotas)
    for index, u in enumerate(units):  # fewer than the entries above the level: one more to the first of them
        if rest and u > low:
            quotas[index] += 1
            rest -= 1
    return quotas


class ShardStream(IterableDataset):
    """Samples of a sharded pool, streamed, each read by one (DDP rank, DataLoader worker) per epoch (module docstring).

    Args:
        shards: the shards, as :func:`~litzoo.framework.data.shards.expand_shards` takes them (files, brace ranges,
            globs, folders, ``.shards`` lists, or a list of those); their order fixes the samples' ``index``.
        decode: ``decode(sample, index) -> item``: the training item of a
            :class:`~litzoo.framework.data.shards.Sample`, whose ``index`` is its position in the whole pool (the
            samples of the shards before it, in the order given, plus its position in its shard). Runs in the workers:
            it must pickle with the stream when workers are spawned.
        batch_size: samples per batch, collated in the workers with ``collate`` (give the stream to a DataLoader with
            ``batch_size=None``); ``None`` yields single items and counts the length in samples.
        collate: merges a worker's items into a batch (default: torch's ``default_collate``).
        num_workers: the DataLoader's ``num_workers`` (0: the main process reads, as one worker), needed to count the
            batches, which are made per worker; iterating in another number of workers raises.
        shuffle: shuffle the shard order every epoch (and use the shuffle buffer); ``False`` reads the shards in the
            order given (each rank and worker still takes its share of them).
        seed: seed of the shard order and of the shuffle buffers, with the epoch (and the rank and worker).
        shuffle_buffer: samples each worker holds to draw its next sample from at random (WebDataset's
            ``shuffle(n)``; 0: shard order only). It holds records as read, before decoding (for tar shards: the
            image bytes).
        counts: the number of samples of each shard when known (else read from ``sizes.json`` or counted).
        rank: this process's DDP rank (default: the process group's when iterated, else 0).
        world_size: the number of DDP ranks (default: the process group's when iterated, else 1).

    Raises:
        ValueError: a bad ``batch_size``, ``num_workers``, ``shuffle_buffer``, ``counts``, ``rank`` or ``world_size``.
        LitzooError: a bad shard spec; when counting or reading, a shard that cannot be read (naming it), a shard whose
            number of samples is not the one counted or listed in ``sizes.json``, or fewer samples than DDP ranks.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        decode: Callable[[Sample, int], Any],
        batch_size: int | None = None,
        collate: Callable[[list], Any] | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 0,
        counts: Sequence[int] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be 0 or more, got {shuffle_buffer}")
        self.shards = expand_shards(shards)
        if counts is not None and (len(counts) != len(self.shards) or any(int(c) < 0 for c in counts)):
            raise ValueError(f"counts must hold one non-negative count per shard ({len(self.shards)}), got {list(counts)}")
        self.decode, self.batch_size = decode, batch_size
        self.collate = default_collate if collate is None else collate
        self.num_workers, self.shuffle, self.seed, self.shuffle_buffer = num_workers, shuffle, int(seed), shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self._check_placement(rank, world_size)
        self.epoch = 0
        self._counts = None if counts is None else [int(c) for c in counts]
        self._count_sources: list[str] = ["the counts given"] * len(self.shards)
        self._placement: tuple[int, int] | None = None  # (rank, world size) found in the main process
        self._quotas: tuple[tuple[int, int, int], list[list[int]]] | None = None  # of the last (seed, epoch, world size) asked

    @staticmethod
    def _check_placement(rank: int | None, world_size: int | None) -> None:
        if world_size is not None and world_size < 1:
            raise ValueError(f"world_size must be positive, got {world_size}")
        if rank is not None and not 0 <= rank < (world_size if world_size is not None else rank + 1):
            raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")

    # --- counts ---------------------------------------------------------------------------------------------------

    @property
    def counts(self) -> list[int]:
        """The number of samples of each shard: given, from ``sizes.json``, or counted by streaming (once)."""
        if self._counts is None:
            listed = read_shard_sizes(self.shards)
            self._counts = [count_samples(shard) if size is None else size for shard, size in zip(self.shards, listed, strict=True)]
            self._count_sources = [
                f"'{shard.parent / SIZES_FILE}'" if size is not None else "its count when the stream was set up"
                for shard, size in zip(self.shards, listed, strict=True)
            ]
        return self._counts

    @property
    def offsets(self) -> list[int]:
        """The pool index of each shard's first sample (the samples of the shards before it)."""
        offsets, total = [], 0
        for count in self.counts:
            offsets.append(total)
            total += count
        return offsets

    # --- the plan of an epoch ---------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next pass (its shard order and shuffle buffers); fixes the DDP placement here, in the
        main process, so that workers started by spawn (which see no process group) read the right shards, and counts
        the shards' samples if they were not yet."""
        self.epoch = int(epoch)
        self._placement = self.placement()
        self.counts  # noqa: B018 (counted here once, not again in every worker)

    def placement(self) -> tuple[int, int]:
        """``(rank, world size)``: the ones given, else the ones found in the main process, else the process group's."""
        found = self._placement if self._placement is not None else _distributed()
        rank = self.rank if self.rank is not None else found[0]
        world_size = self.world_size if self.world_size is not None else found[1]
        self._check_placement(rank, world_size)
        return rank, world_size

    @property
    def workers(self) -> int:
        """The number of readers per rank: the DataLoader's workers, or 1 (the main process)."""
        return max(self.num_workers, 1)

    def shard_order(self, epoch: int) -> list[int]:
        """The shard indices in the order of ``epoch``: a permutation from ``(seed, epoch)``, the same on every rank."""
        if not self.shuffle:
            return list(range(len(self.shards)))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(len(self.shards), generator=generator).tolist()

    def assignment(self, epoch: int, rank: int, world_size: int, worker: int) -> list[int]:
        """The shards (indices, in reading order) that worker ``worker`` of rank ``rank`` reads in ``epoch``:
        ``shard_order(epoch)[rank::world_size][worker::workers]``."""
        return self.shard_order(epoch)[rank::world_size][worker :: self.workers]

    def _units(self, samples: int) -> int:
        """Batches (samples without batch_size) that ``samples`` samples of one worker make."""
        return samples if self.batch_size is None else -(-samples // self.batch_size)

    def quotas(self, epoch: int, world_size: int) -> list[list[int]]:
        """``quotas[rank][worker]``: the batches (samples without ``batch_size``) each worker yields in ``epoch``; every
        rank's sum is the smallest rank's number of batches, so that all ranks take the same number of steps."""
        if self._quotas is None or self._quotas[0] != (self.seed, epoch, world_size):
            counts, order = self.counts, self.shard_order(epoch)
            units = [[self._units(sum(counts[i] for i in order[rank::world_size][worker :: self.workers])) for worker in range(self.workers)]
                     for rank in range(world_size)]  # fmt: skip
            steps = min(sum(row) for row in units)
            self._quotas = ((self.seed, epoch, world_size), [trim_to(row, steps) for row in units])
        return self._quotas[1]

    def samples(self, epoch: int | None = None) -> int:
        """The samples this rank reads in ``epoch`` (default: the current one): all those of its shards but the ones
        dropped to keep the ranks in step."""
        epoch = self.epoch if epoch is None else epoch
        rank, world_size = self.placement()
        quotas = self.quotas(epoch, world_size)[rank]
        total = 0
        for worker, quota in enumerate(quotas):
            held = sum(self.counts[i] for i in self.assignment(epoch, rank, world_size, worker))
            total += min(held, quota if self.batch_size is None else quota * self.batch_size)
        return total

    def steps(self, epoch: int | None = None) -> int:
        """Batches (samples without ``batch_size``) per rank in ``epoch`` (default: the current one), the same on every rank.

        Raises:
            LitzooError: some rank would read nothing (fewer non-empty shards than DDP ranks).
        """
        epoch = self.epoch if epoch is None else epoch
        _, world_size = self.placement()
        steps = sum(self.quotas(epoch, world_size)[0])
        if steps == 0:
            raise LitzooError(
                f"the {len(self.shards)} shards (first '{self.shards[0]}', {sum(self.counts)} samples) leave a DDP rank of {world_size} "
                f"without samples in epoch {epoch}: give at least one non-empty shard per rank"
            )
        return steps

    def __len__(self) -> int:
        """:meth:`steps` of the current epoch (found in the main process, so it fixes the DDP placement too)."""
        if self._placement is None:
            self._placement = self.placement()
        return self.steps()

    # --- reading ----------------------------------------------------------------------------------------------------

    def _shard_samples(self, shard_index: int) -> Iterator[Sample]:
        """The samples of one shard; a shard read to its end must hold the number of samples it was counted with."""
        shard = self.shards[shard_index]
        expected = self.counts[shard_index]
        read = 0
        for sample in iter_samples(shard):
            read += 1
            if read > expected:
                break
            yield sample
        if read != expected:
            held = f"more than {expected}" if read > expected else str(read)
            raise LitzooError(f"shard '{shard}' holds {held} samples, not the {expected} of {self._count_sources[shard_index]} (changed on disk?)")

    def _shuffled(self, samples: Iterator[tuple[Sample, int]], rng: random.Random) -> Iterator[tuple[Sample, int]]:
        """WebDataset's shuffle buffer: each sample read replaces one drawn at random from the buffer, which is yielded."""
        buffer: list[tuple[Sample, int]] = []
        for item in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            slot = rng.randrange(len(buffer))
            buffer[slot], item = item, buffer[slot]
            yield item
        rng.shuffle(buffer)
        yield from buffer

    def worker_samples(self, epoch: int, rank: int, world_size: int, worker: int) -> Iterator[tuple[Sample, int]]:
        """``(sample, pool index)`` that worker ``worker`` of rank ``rank`` yields in ``epoch``, before decoding: its
        shards in order, through the shuffle buffer, cut at its quota. A pure function of its arguments (and the seed)."""
        quota = self.quotas(epoch, world_size)[rank][worker]
        limit = quota if self.batch_size is None else quota * self.batch_size
        offsets = self.offsets

        def read() -> Iterator[tuple[Sample, int]]:
            for index in self.assignment(epoch, rank, world_size, worker):
                for sample in self._shard_samples(index):
                    yield sample, offsets[index] + sample.position

        stream = read()
        if self.shuffle and self.shuffle_buffer:
            stream = self._shuffled(stream, random.Random(derive_seed(self.seed, epoch, rank, worker)))
        try:
            if limit > 0:
                for taken, item in enumerate(stream, start=1):
                    yield item
                    if taken >= limit:  # before reading one more sample (or opening the next shard)
                        break
        finally:
            stream.close()  # closes the open shard file of a pass cut at the quota

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise ValueError(
                f"ShardStream was built for {self.workers} reader(s) per rank (num_workers={self.num_workers}) but is iterated "
                f"by {workers}: give it the DataLoader's num_workers"
            )
        rank, world_size = self.placement()
        batch: list[Any] = []
        for sample, index in self.worker_samples(self.epoch, rank, world_size, worker):
            item = self.decode(sample, index)
            if self.batch_size is None:
                yield item
                continue
            batch.append(item)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch = []
        if batch:
            yield self.collate(batch)


# ---- random access into uncompressed tar shards (evaluation splits) ----------------------------------------------------


@dataclass(frozen=True)
class TarMember:
    """One member of an uncompressed tar shard, read on demand by its byte offset (no scan of the shard)."""

    shard: Path
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        """The member's bytes.

        Raises:
            LitzooError: the shard cannot be read there any more (naming shard and member).
        """
        try:
            with self.shard.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.size)
        except OSError as error:
            raise LitzooError(f"shard '{self.shard}' member '{self.name}' cannot be read: {error.strerror or error}") from None
        if len(data) != self.size:
            raise LitzooError(f"shard '{self.shard}' member '{self.name}' is cut short ({len(data)} of {self.size} bytes; changed on disk?)")
        return data


def tar_members(shard: str | Path) -> dict[str, TarMember] | None:
    """The regular members of tar shard ``shard`` by name, with their data offsets, from one pass over the headers;
    ``None`` for a gzip-compressed tar (it has no random access: read it by streaming).

    Raises:
        LitzooError: the shard cannot be read or is not a tar file (naming it).
    """
    import tarfile

    shard = Path(shard)
    try:
        with shard.open("rb") as handle:
            if handle.read(2) == b"\x1f\x8b":
                return None
        members = {}
        with tarfile.open(shard, mode="r:") as archive:
            for member in archive:
                if member.isreg():
                    members[member.name] = TarMember(shard, member.name, member.offset_data, member.size)
        return members
    except (OSError, tarfile.TarError) as error:
        raise LitzooError(f"shard '{shard}' cannot be read as a tar file: {getattr(error, 'strerror', None) or error}") from None
