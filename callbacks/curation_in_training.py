"""Curation in Training (CiT): the model's own text encoder picks its training pairs from a raw pool.

Xu et al., "CiT: Curation in Training for Effective Vision-Language Data" (ICCV 2023); reference
implementation facebookresearch/CiT (``engine.py``: ``iterative_classcurate``, ``max_sim``;
``main.py``; ``configs.py``). Two loops share the text encoder:

* outer loop (every ``curate_every`` steps): embed the task metadata (class names, template ``"{}"``)
  and the pool's captions with the *current* text encoder, pre-projection and L2-normalised; stream
  the pool in producer batches (``2 × batch_size`` by default); keep the captions whose maximum cosine
  similarity to a class exceeds ``threshold`` — or, when fewer than ``min_ratio`` of a producer batch
  pass, its top ``min_ratio`` fraction — until ``curate_every × batch_size`` pairs are collected
  (no pair twice in one round), cut to exactly that many;
* inner loop: ``curate_every`` training steps on the curated pairs.

Here one outer round is one training epoch: the callback replaces the DataModule's training stream for
the fit by the curated one (``len = curate_every`` batches), so ``max_epochs`` counts curation rounds
and validation runs between rounds. The producer keeps its place in the pool across rounds (a seeded
permutation per pass, the same on every rank), and each DDP rank curates its own shard of it
(``rank::world_size``), as each CiT GPU fills its own buffer. Its position is saved in checkpoints,
with the round being trained on and how far, so a run resumed mid-round finishes that very round; under
DDP rank 0's checkpoint holds every rank's position and round (gathered when saving), and each rank
resumes its own. A checkpoint of the format before per-rank states (one flat position) is read as rank
0's of a 1-process run: it resumes on one process, and is refused in one line on more.

The pool is either the DataModule's training set, held in memory (its captions' token ids,
``train_dataset.tokens``), or — with ``pool_shards`` — a pool far bigger than memory streamed from
WebDataset tar or JSONL / Parquet shards (:mod:`litzoo.framework.data.shards`), as CiT's producer
streams YFCC100M. Then each pass shuffles the list of shards (seeded, the same on every rank) and each
DDP rank streams its own shards (``shards[rank::world_size]``) in producer batches, which are tokenized
with the DataModule's tokenizer and embedded; only the selected records are kept, and they become
training items through the DataModule's ``item_from_record``. Memory holds one producer batch and one
round's selected records. The producer's position (pass, shard of this rank's list, samples read in
that shard) and the round being trained (where each of its samples lies: shard and position, re-read on
resume) are saved in checkpoints, per rank.

The paper's loss is image→text cross-entropy only: ``CLIPModule(image_to_text_only=True)``.

Protocols, so any image-text LightningModule and DataModule work:

* the LightningModule has ``encode_text(tokens, normalize=True, project=False)``;
* the DataModule has ``batch_size``, ``tokenizer`` (captions → token ids) and, unless ``class_names`` is
  given here, ``class_names``; for an in-memory pool ``train_dataset`` (items are dicts;
  ``train_dataset.tokens`` is the ``(N, L)`` tensor of all captions' token ids); for a streamed pool
  ``item_from_record(record)`` (a shard's record → a training item).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import IterableDataset
from typing_extensions import override

from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.data.shards import Sample, expand_shards, get_text, iter_samples, shard_format
from litzoo.framework.errors import LitzooError


class StreamedPair(NamedTuple):
    """A pair curated from a streamed pool: its sample key, where it lies (index in the pool's shard list, position in the shard), its record."""

    key: str
    shard: int
    position: int
    record: dict


class _CuratedStream(IterableDataset):
    """One curation round per iteration: ``curate_every × batch_size`` curated pool items."""

    def __init__(self, callback: CurationInTraining, to_item: Callable[[Any], dict], length: int) -> None:
        self.callback, self.to_item, self.length = callback, to_item, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict]:
        for position, selected in enumerate(self.callback.start_round()):
            self.callback.round_position = position + 1  # read back on resume: how far this round was trained
            yield self.to_item(selected)


class CurationInTraining(L.Callback):
    """Every ``curate_every`` steps, select the pool pairs whose caption is close to the task's class names.

    Args:
        threshold: minimum of a caption's maximum cosine similarity to the class names (paper: 0.55 on
            YFCC15M, 0.7 on YFCC100M).
        min_ratio: when fewer than this fraction of a producer batch of P captions pass, its top
            ``int(min_ratio × P)`` by similarity are taken instead, rounded down as CiT's ``engine.py:293``
            does, so none when ``min_ratio × P < 1`` (paper: 0.003 on YFCC15M, 0.01 on YFCC100M).
        curate_every: training steps per curation round (paper: 100).
        producer_batch_size: captions embedded at once; default ``2 × batch_size`` (paper).
        class_names: the task metadata; default the DataModule's ``class_names``.
        templates: templates each class name is embedded with (paper: ``["{}"]``); several are averaged.
        use_projection: compare in the joint embedding space (after the text projection) instead of the
            paper's pre-projection text features (CiT ``skip_text_projection=True``).
        seed: seed of the producer's pass order over the pool (of its pairs, or of its shards).
        pool_shards: stream the pool from these shards instead of the DataModule's training set: a spec of
            :func:`~litzoo.framework.data.shards.expand_shards` (a file, ``"pool-{000..099}.tar"``, a glob,
            a folder, a ``.shards`` list, or several). WebDataset tar shards (``{key}.jpg|png`` and
            ``{key}.txt`` / ``{key}.json``) or JSONL / Parquet shards of ``{"image": path, "text": ...}``
            records, image paths relative to the shard's folder. There must be at least one shard per DDP rank.
        pool_text_key: where a streamed record holds its caption: ``"text"`` (JSONL), ``"txt"`` (a tar's
            ``.txt`` member), or a dotted key into a nested record (``"json.caption"``).
        pool_id_key: the field of a JSONL / Parquet record that identifies its pair (default: shard name and
            line); a tar sample is identified by its ``__key__``. No pair is taken twice in a round.
    """

    def __init__(
        self,
        threshold: float = 0.55,
        min_ratio: float = 0.003,
        curate_every: int = 100,
        producer_batch_size: int | None = None,
        class_names: list[str] | None = None,
        templates: list[str] | None = None,
        use_projection: bool = False,
        seed: int = 0,
        pool_shards: str | list[str] | None = None,
        pool_text_key: str = "text",
        pool_id_key: str | None = None,
    ) -> None:
        super().__init__()
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity, so it must be in [-1, 1], got {threshold}")
        if not 0.0 < min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
        if curate_every < 1:
            raise ValueError(f"curate_every must be at least 1, got {curate_every}")
        if producer_batch_size is not None and producer_batch_size < 1:
            raise ValueError(f"producer_batch_size must be positive, got {producer_batch_size}")
        templates = ["{}"] if templates is None else list(templates)
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"templates must be non-empty, each with exactly one '{{}}', got {templates}")
        if pool_shards is not None and (not pool_shards or isinstance(pool_shards, (list, tuple)) and not all(pool_shards)):
            raise ValueError(f"pool_shards must be a non-empty shard spec or list of specs, got {pool_shards!r}")
        if not pool_text_key or (pool_id_key is not None and not pool_id_key):
            raise ValueError(f"pool_text_key and pool_id_key must be non-empty field names, got {pool_text_key!r} and {pool_id_key!r}")
        self.threshold, self.min_ratio, self.curate_every = threshold, min_ratio, curate_every
        self.producer_batch_size, self.class_names, self.templates, self.seed = producer_batch_size, class_names, templates, seed
        self.use_projection = use_projection
        self.pool_shards, self.pool_text_key, self.pool_id_key = pool_shards, pool_text_key, pool_id_key
        # producer position, saved in checkpoints: pass number and offset into this rank's shard of the pool;
        # for a streamed pool, offset counts the samples read from shard number `shard` of this rank's list
        self.pass_index, self.offset, self.rounds = 0, 0, 0
        self.shard = 0
        self.last_round: dict[str, float] = {}
        # the round being trained on and the items of it read, saved in checkpoints: a run resumed mid-round
        # finishes that round (its loader reads the part already trained again and drops it) instead of curating anew;
        # pool indices for an in-memory pool, StreamedPair tuples for a streamed one
        self.current_round: list = []
        self.round_position = 0
        self._resumed_round: list | None = None
        self._samples: Iterator[Sample] | None = None  # the open stream of the current shard
        self._rank_shards: tuple[int, list[int]] | None = None  # (pass, this rank's shards in it), cached
        self._pass_samples: int | None = 0  # samples read in this pass (None: unknown, the pass began before a resume)
        self._pending_state: dict[str, Any] | None = None  # a loaded checkpoint's, put back when the pool and the rank are known
        self._warned_small_pool = False

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/clip-cit/...``): curated data is another run."""
        return "cit"

    @property
    def streaming(self) -> bool:
        """Whether the pool is streamed from ``pool_shards``."""
        return self.pool_shards is not None

    # ------------------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        needed = ("batch_size", "tokenizer", "item_from_record") if self.streaming else ("train_dataset", "batch_size", "tokenizer")
        missing = [name for name in needed if not hasattr(datamodule, name)]
        if datamodule is None or missing:
            raise LitzooError(f"CurationInTraining needs a DataModule with {', '.join(needed[:-1])} and {needed[-1]} (missing: {missing or 'a DataModule'})")
        if not callable(getattr(pl_module, "encode_text", None)):
            raise LitzooError(f"CurationInTraining needs the model's encode_text(tokens, normalize, project); {type(pl_module).__name__} has none")
        names = self.class_names if self.class_names is not None else getattr(datamodule, "class_names", None)
        if not names:
            raise LitzooError("CurationInTraining needs class names: pass class_names, or use a DataModule with class_names")
        self.names = list(names)
        self.trainer, self.pl_module, self.datamodule = trainer, pl_module, datamodule
        self.batch_size = int(datamodule.batch_size)
        self.round_size = self.curate_every * self.batch_size
        if self.streaming:
            self.shards = expand_shards(self.pool_shards)
            if len(self.shards) < trainer.world_size:
                raise LitzooError(f"CurationInTraining: pool_shards {self.pool_shards!r} has {len(self.shards)} shard(s) for {trainer.world_size} "
                                  "DDP ranks; each rank streams its own shards, so split the pool into at least one shard per rank")  # fmt: skip
            self._image_key = getattr(datamodule, "image_key", "image")
            self._formats = [shard_format(path) for path in self.shards]
            self._rank_shards = None
            stream = _CuratedStream(self, self._item, self.round_size)
        else:
            self.pool = datamodule.train_dataset
            if not isinstance(getattr(self.pool, "tokens", None), Tensor) or len(self.pool.tokens) != len(self.pool):
                raise LitzooError("CurationInTraining needs train_dataset.tokens, the (N, L) token ids of every caption of the pool")
            shard = len(self.pool) // trainer.world_size
            if shard < self.round_size:
                rank_zero_warn(f"CurationInTraining: each rank's shard of the pool ({shard} pairs) is smaller than a round "
                               f"({self.curate_every} × {self.batch_size}); pairs repeat within a round")  # fmt: skip
            stream = _CuratedStream(self, self.pool.__getitem__, self.round_size)
        if getattr(datamodule, "num_workers", 0):
            rank_zero_warn("CurationInTraining reads the curated pairs in the main process (the producer needs the live model); num_workers is ignored")
        # the curated stream is this fit's training data; the DataModule's own loader is restored at teardown
        datamodule.train_dataloader = lambda: ResumableLoader(stream, batch_size=self.batch_size)  # its position is in checkpoints

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage == "fit" and datamodule is not None and "train_dataloader" in vars(datamodule):
            del datamodule.train_dataloader
        self._close_stream()

    # --------------------------------------------------------------------------- curation
    def _shard_order(self, pass_index: int) -> Tensor:
        """This rank's pool indices in pass ``pass_index``: a seeded permutation (equal on all ranks), strided by rank."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
        order = torch.randperm(len(self.pool), generator=generator)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return order[: len(order) // world * world][rank::world]  # equal shards, so every rank trains the same steps

    @torch.no_grad()
    def _metadata_embeddings(self, device: torch.device) -> Tensor:
        tokenizer = self.datamodule.tokenizer
        rows = []
        for name in self.names:
            tokens = tokenizer([t.format(name) for t in self.templates]).to(device)
            rows.append(torch.nn.functional.normalize(self.pl_module.encode_text(tokens, normalize=True, project=self.use_projection).mean(0), dim=-1))
        return torch.stack(rows)  # (K, W)

    def start_round(self) -> list:
        """The pairs of the round this epoch trains on: the round a checkpoint was saved in the middle of, else :meth:`curate`'s."""
        self._apply_state()
        if self._resumed_round is not None:
            selected, self._resumed_round = self._resumed_round, None
        else:
            self.current_round = []  # memory holds one round: the last one is let go before the next is curated
            selected = self.curate()
        self.current_round, self.round_position = selected, 0
        return selected

    @torch.no_grad()
    def curate(self) -> list:
        """One outer-loop round: ``curate_every × batch_size`` pairs, in the order they were selected: pool indices for
        an in-memory pool, :class:`StreamedPair` pairs (key, shard, position, record) for a streamed one."""
        self._apply_state()
        module = self.pl_module
        was_training = module.training
        module.eval()
        try:
            if self.streaming:
                selected = self._select(self._read_stream_batch, self._next_stream_pass)
            else:
                order = self._shard_order(self.pass_index)

                def read_batch(producer: int) -> tuple[list[int], Tensor, list[int]] | None:
                    if self.offset >= len(order):  # this pass is exhausted
                        return None
                    batch = order[self.offset : self.offset + producer]
                    self.offset += len(batch)
                    return batch.tolist(), self.pool.tokens[batch], batch.tolist()

                def next_pass() -> None:
                    nonlocal order
                    self.pass_index, self.offset = self.pass_index + 1, 0
                    order = self._shard_order(self.pass_index)

                selected = self._select(read_batch, next_pass)
        finally:
            module.train(was_training)
        self.rounds += 1
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(self.last_round, step=self.trainer.global_step)
        return selected

    def _select(self, read_batch: Callable[[int], tuple[list, Tensor, list] | None], next_pass: Callable[[], None]) -> list:
        """CiT's selection loop over producer batches; ``read_batch(P)`` gives ``(pair ids, token ids, payloads)`` of up to
        P pairs, or ``None`` at the end of a pass, after which ``next_pass()`` starts the next one."""
        module, device = self.pl_module, self.pl_module.device
        metadata = self._metadata_embeddings(device)
        producer = self.producer_batch_size or 2 * self.batch_size
        selected: list = []
        taken: set = set()
        scanned = passed = fallback_batches = 0
        similarity_sum = 0.0
        passes_this_round = selected_at_pass_start = 0
        while len(selected) < self.round_size:
            batch = read_batch(producer)
            if batch is None:  # next pass over the pool; after a whole pass, repeats are allowed
                next_pass()
                passes_this_round += 1
                # the fallback rounds down, so it can give nothing: a whole pass with repeats allowed and nothing
                # selected would loop forever (CiT's own loop would)
                if passes_this_round >= 3 and len(selected) == selected_at_pass_start:
                    raise LitzooError(f"CurationInTraining: a whole pass over the pool selected nothing (no caption above threshold "
                                      f"{self.threshold}, and int(min_ratio {self.min_ratio} × producer batch {producer}) = 0)")  # fmt: skip
                selected_at_pass_start = len(selected)
                if passes_this_round > 1:
                    taken.clear()
                    self._warn_small_pool()
                continue
            ids, tokens, payloads = batch
            text = module.encode_text(tokens.to(device), normalize=True, project=self.use_projection)  # (P, W)
            max_similarity = (text @ metadata.T).max(dim=1).values.cpu()  # (P,)
            keep = max_similarity > self.threshold
            if int(keep.sum()) < self.min_ratio * len(ids):  # too few pass: the batch's best min_ratio
                # CiT engine.py:293 (iterative_classcurate) takes topk(k=int(min_ratio * P)), rounding down, so a
                # batch with min_ratio * P < 1 gives nothing
                keep = torch.zeros_like(keep)
                keep[max_similarity.topk(int(self.min_ratio * len(ids))).indices] = True
                fallback_batches += 1
            else:
                passed += int(keep.sum())
            scanned += len(ids)
            similarity_sum += float(max_similarity.sum())
            for j in keep.nonzero()[:, 0].tolist():
                if ids[j] not in taken:
                    taken.add(ids[j])
                    selected.append(payloads[j])
        self.last_round = {
            "curation/selected_ratio": self.round_size / scanned,
            "curation/passed_threshold": passed / scanned,
            "curation/fallback_batches": float(fallback_batches),
            "curation/scanned": float(scanned),
            "curation/mean_max_similarity": similarity_sum / scanned,
            "curation/threshold": self.threshold,
        }
        return selected[: self.round_size]

    # ---------------------------------------------------------------------- a streamed pool
    def rank_shards(self, pass_index: int) -> list[int]:
        """The shards this rank streams in pass ``pass_index`` (indices into :attr:`shards`): every ``world_size``-th
        of a seeded shuffle of the shard list, the same shuffle on every rank."""
        if self._rank_shards is None or self._rank_shards[0] != pass_index:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            order = torch.randperm(len(self.shards), generator=generator).tolist()
            self._rank_shards = (pass_index, order[self.trainer.global_rank :: self.trainer.world_size])
        return self._rank_shards[1]

    def _close_stream(self) -> None:
        if self._samples is not None:
            self._samples.close()  # a generator: closes the shard's file
            self._samples = None

    def _read_stream_batch(self, producer: int) -> tuple[list[str], Tensor, list[StreamedPair]] | None:
        """The next producer batch of this rank's pass: up to ``producer`` samples, across shard ends; ``None`` once the pass is over."""
        mine = self.rank_shards(self.pass_index)
        samples: list[StreamedPair] = []
        while len(samples) < producer and self.shard < len(mine):
            if self._samples is None:
                self._samples = iter_samples(self.shards[mine[self.shard]], self.pool_text_key, self.pool_id_key, start=self.offset)
            sample = next(self._samples, None)
            if sample is None:  # this shard is read: the next one of this rank's list
                self._close_stream()
                self.shard, self.offset = self.shard + 1, 0
                continue
            self.offset += 1
            samples.append(StreamedPair(sample.key, mine[self.shard], sample.position, sample.record))
        if not samples:
            return None
        if self._pass_samples is not None:
            self._pass_samples += len(samples)
        texts = [get_text(sample.record, self.pool_text_key) for sample in samples]
        # a pair's identity within a round: its key, unique in the pool for tar shards and with pool_id_key; else its
        # place, since the default "<shard name>:<line>" keys of two shards of one name in two folders coincide
        ids = [sample.key if self.pool_id_key is not None or self._formats[sample.shard] == "tar" else (sample.shard, sample.position) for sample in samples]
        return ids, self.datamodule.tokenizer(texts), samples

    def _next_stream_pass(self) -> None:
        if self._pass_samples == 0:
            mine = [str(self.shards[i]) for i in self.rank_shards(self.pass_index)]
            raise LitzooError(f"CurationInTraining: the pool shards of rank {self.trainer.global_rank} in pass {self.pass_index} hold no samples: {mine}")
        self._close_stream()
        self.pass_index, self.shard, self.offset, self._pass_samples = self.pass_index + 1, 0, 0, 0

    def _warn_small_pool(self) -> None:
        if self.streaming and not self._warned_small_pool:
            self._warned_small_pool = True
            warnings.warn(f"CurationInTraining: a round ({self.curate_every} × {self.batch_size} pairs) took more than a whole pass over "
                          f"rank {self.trainer.global_rank}'s shards of the pool; pairs repeat within a round", stacklevel=2)  # fmt: skip

    def _item(self, selected: StreamedPair) -> dict:
        """The training item of a curated pair, by the DataModule's ``item_from_record``."""
        record = selected.record
        shard = self.shards[selected.shard]
        image = record.get(self._image_key)
        if self._formats[selected.shard] != "tar" and isinstance(image, str) and not Path(image).expanduser().is_absolute():
            record = {**record, self._image_key: str(shard.parent / Path(image).expanduser())}  # relative to the shard, as a manifest's
        try:
            return self.datamodule.item_from_record(record)
        except LitzooError as error:  # a bad image or caption: the line names the shard it is in
            if str(shard) in str(error):
                raise
            raise LitzooError(f"pool shard '{shard}' sample {selected.position} ({selected.key!r}): {error}") from error.__cause__

    def _reread_round(self, places: Sequence[Sequence[int]], keys: Sequence[str]) -> list[StreamedPair]:
        """The round a checkpoint was saved in: its pairs read again from the shards at their saved places, checked by key."""
        slots: dict[int, dict[int, list[int]]] = {}  # shard -> position -> slots of the round
        for slot, (shard, position) in enumerate(places):
            if not 0 <= shard < len(self.shards):
                raise LitzooError(f"CurationInTraining: the checkpoint's curated round names shard {shard}, but pool_shards has {len(self.shards)}")
            slots.setdefault(shard, {}).setdefault(position, []).append(slot)
        round_: list[StreamedPair | None] = [None] * len(places)
        for shard, wanted in slots.items():
            last = max(wanted)
            samples = iter_samples(self.shards[shard], self.pool_text_key, self.pool_id_key, start=min(wanted))
            try:
                for sample in samples:
                    for slot in wanted.get(sample.position, ()):
                        if sample.key != keys[slot]:
                            raise LitzooError(f"pool shard '{self.shards[shard]}' sample {sample.position} has key {sample.key!r}, but the checkpoint's "
                                              f"curated round holds {keys[slot]!r} there: the pool changed since the checkpoint")  # fmt: skip
                        round_[slot] = StreamedPair(sample.key, shard, sample.position, sample.record)
                    if sample.position >= last:
                        break
            finally:
                samples.close()
            if any(round_[slot] is None for slots_ in wanted.values() for slot in slots_):
                raise LitzooError(f"pool shard '{self.shards[shard]}' has fewer than {last + 1} samples, but the checkpoint's curated round "
                                  f"holds its sample {last}: the pool changed since the checkpoint")  # fmt: skip
        return round_  # type: ignore[return-value]

    def _fingerprint(self) -> str:
        """Names the pool's shard list, so that a checkpoint is not resumed on another pool."""
        return hashlib.sha256("\n".join(path.name for path in self.shards).encode()).hexdigest()[:16]

    def _stream_state(self) -> dict[str, Any]:
        """This rank's producer position and round."""
        return {
            "pass_index": self.pass_index,
            "shard": self.shard,
            "offset": self.offset,
            "round": [[pair.shard, pair.position] for pair in self.current_round],
            "round_keys": [pair.key for pair in self.current_round],
            "round_position": self.round_position,
        }

    def _apply_stream_state(self, state: dict[str, Any]) -> None:
        """Puts back this rank's producer position and round from a loaded checkpoint (once the shards are known)."""
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if state["pool"] != self._fingerprint() or len(state["ranks"]) != world or state["ranks"][rank] is None:
            raise LitzooError(f"CurationInTraining: the checkpoint was saved streaming another pool or on another number of DDP ranks "
                              f"({state['num_shards']} shards on {len(state['ranks'])} ranks; this fit: {len(self.shards)} shards of "
                              f"pool_shards {self.pool_shards!r} on {world}); resume with the same pool_shards and ranks")  # fmt: skip
        mine = state["ranks"][rank]
        self._close_stream()
        self.pass_index, self.shard, self.offset = int(mine["pass_index"]), int(mine["shard"]), int(mine["offset"])
        self._pass_samples = None  # the pass began before the checkpoint
        position = int(mine["round_position"])
        places, keys = mine["round"], list(mine["round_keys"])
        self._resumed_round = self._reread_round(places, keys) if 0 < position < len(places) else None

    # ------------------------------------------------------------------------ an in-memory pool
    def _memory_state(self) -> dict[str, Any]:
        """This rank's producer position (pass, offset into this rank's shard of the pass order) and round (pool indices)."""
        return {"pass_index": self.pass_index, "offset": self.offset, "round": list(self.current_round), "round_position": self.round_position}

    def _apply_memory_state(self, state: dict[str, Any]) -> None:
        """Puts back this rank's producer position and round from a loaded checkpoint."""
        world, rank, size = self.trainer.world_size, self.trainer.global_rank, len(self.pool)
        if "pool_size" not in state and world > 1:  # the flat format held the position of the rank that wrote it only
            raise LitzooError(f"CurationInTraining: the checkpoint holds one producer position (the format before per-rank positions, read as a "
                              f"1-process run's), but this fit has {world} DDP ranks; resume it on one process")  # fmt: skip
        ranks = state["ranks"]
        if len(ranks) != world or ranks[rank] is None or state.get("pool_size", size) != size:
            raise LitzooError(f"CurationInTraining: the checkpoint was saved curating an in-memory pool of {state.get('pool_size')} pairs on "
                              f"{len(ranks)} DDP ranks; this fit has {size} pairs on {world}; resume with the same training set and ranks")  # fmt: skip
        mine = ranks[rank]
        round_, position = [int(i) for i in mine["round"]], int(mine["round_position"])
        outside = [i for i in round_ if not 0 <= i < size]
        if outside:
            raise LitzooError(f"CurationInTraining: the checkpoint's curated round holds pool index {outside[0]}, but the training set has {size} pairs")
        self.pass_index, self.offset = int(mine["pass_index"]), int(mine["offset"])
        self._resumed_round = round_ if 0 < position < len(round_) else None

    # ---------------------------------------------------------------------------- resuming
    def _apply_state(self) -> None:
        """Puts back this rank's part of a loaded checkpoint, once: when the first round starts."""
        state, self._pending_state = self._pending_state, None
        if state is not None and self.streaming:
            self._apply_stream_state(state)
        elif state is not None:
            self._apply_memory_state(state)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._pending_state is not None:  # loaded and not used yet: saved as it was
            return {**self._pending_state, "rounds": self.rounds}
        # each rank curates its own part of the pool, but only rank 0 writes the checkpoint: it holds every rank's
        # state (Lightning calls state_dict on every rank when saving, so the gather is collective)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        mine = self._stream_state() if self.streaming else self._memory_state()
        ranks: list[dict | None] = [None] * world
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks[rank] = mine
        if self.streaming:
            return {"rounds": self.rounds, "pool": self._fingerprint(), "num_shards": len(self.shards), "ranks": ranks}
        return {"rounds": self.rounds, "pool_size": len(self.pool), "ranks": ranks}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rounds = state_dict["rounds"]
        if self.streaming and "pool" not in state_dict:
            raise LitzooError("CurationInTraining: the checkpoint was saved curating an in-memory pool, but pool_shards is given; resume without it")
        if not self.streaming and "pool" in state_dict:
            raise LitzooError("CurationInTraining: the checkpoint was saved streaming pool_shards; resume with the same pool_shards")
        if "ranks" not in state_dict:  # the flat format before per-rank states: rank 0's position, as a 1-process run saved it
            # (checkpoints of before issue 18 hold no round: nothing to finish)
            mine = {"pass_index": state_dict["pass_index"], "offset": state_dict["offset"], "round": list(state_dict.get("round", [])),
                    "round_position": state_dict.get("round_position", 0)}  # fmt: skip
            state_dict = {"rounds": self.rounds, "ranks": [mine]}
        self._pending_state = dict(state_dict)  # put back when the pool and the rank are known (start_round / curate)
