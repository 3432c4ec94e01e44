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
with the round being trained on and how far, so a run resumed mid-round finishes that very round.

The paper's loss is image→text cross-entropy only: ``CLIPModule(image_to_text_only=True)``.

Protocols, so any image-text LightningModule and DataModule work:

* the LightningModule has ``encode_text(tokens, normalize=True, project=False)``;
* the DataModule has ``train_dataset`` (items are dicts; ``train_dataset.tokens`` is the ``(N, L)``
  tensor of all captions' token ids), ``batch_size``, ``tokenizer`` (captions → token ids) and,
  unless ``class_names`` is given here, ``class_names``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import IterableDataset
from typing_extensions import override

from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.errors import LitzooError


class _CuratedStream(IterableDataset):
    """One curation round per iteration: ``curate_every × batch_size`` curated pool items."""

    def __init__(self, callback: CurationInTraining, dataset: Any, length: int) -> None:
        self.callback, self.dataset, self.length = callback, dataset, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict]:
        for position, index in enumerate(self.callback.start_round()):
            self.callback.round_position = position + 1  # read back on resume: how far this round was trained
            yield self.dataset[index]


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
        seed: seed of the producer's pass order over the pool.
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
        self.threshold, self.min_ratio, self.curate_every = threshold, min_ratio, curate_every
        self.producer_batch_size, self.class_names, self.templates, self.seed = producer_batch_size, class_names, templates, seed
        self.use_projection = use_projection
        # producer position, saved in checkpoints: pass number and offset into this rank's shard
        self.pass_index, self.offset, self.rounds = 0, 0, 0
        self.last_round: dict[str, float] = {}
        # the round being trained on and the items of it read, saved in checkpoints: a run resumed mid-round
        # finishes that round (its loader reads the part already trained again and drops it) instead of curating anew
        self.current_round: list[int] = []
        self.round_position = 0
        self._resumed_round: list[int] | None = None

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/clip-cit/...``): curated data is another run."""
        return "cit"

    # ------------------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        missing = [name for name in ("train_dataset", "batch_size", "tokenizer") if not hasattr(datamodule, name)]
        if datamodule is None or missing:
            raise LitzooError(f"CurationInTraining needs a DataModule with train_dataset, batch_size and tokenizer (missing: {missing or 'a DataModule'})")
        if not callable(getattr(pl_module, "encode_text", None)):
            raise LitzooError(f"CurationInTraining needs the model's encode_text(tokens, normalize, project); {type(pl_module).__name__} has none")
        names = self.class_names if self.class_names is not None else getattr(datamodule, "class_names", None)
        if not names:
            raise LitzooError("CurationInTraining needs class names: pass class_names, or use a DataModule with class_names")
        self.names = list(names)
        self.trainer, self.pl_module, self.datamodule = trainer, pl_module, datamodule
        self.pool = datamodule.train_dataset
        if not isinstance(getattr(self.pool, "tokens", None), Tensor) or len(self.pool.tokens) != len(self.pool):
            raise LitzooError("CurationInTraining needs train_dataset.tokens, the (N, L) token ids of every caption of the pool")
        self.batch_size = int(datamodule.batch_size)
        self.round_size = self.curate_every * self.batch_size
        shard = len(self.pool) // trainer.world_size
        if shard < self.round_size:
            rank_zero_warn(f"CurationInTraining: each rank's shard of the pool ({shard} pairs) is smaller than a round "
                           f"({self.curate_every} × {self.batch_size}); pairs repeat within a round")  # fmt: skip
        stream = _CuratedStream(self, self.pool, self.round_size)
        if getattr(datamodule, "num_workers", 0):
            rank_zero_warn("CurationInTraining reads the curated pairs in the main process (the producer needs the live model); num_workers is ignored")
        # the curated stream is this fit's training data; the DataModule's own loader is restored at teardown
        datamodule.train_dataloader = lambda: ResumableLoader(stream, batch_size=self.batch_size)  # its position is in checkpoints

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage == "fit" and datamodule is not None and "train_dataloader" in vars(datamodule):
            del datamodule.train_dataloader

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

    def start_round(self) -> list[int]:
        """The pool indices of the round this epoch trains on: the round a checkpoint was saved in the middle of, else :meth:`curate`'s."""
        if self._resumed_round is not None:
            indices, self._resumed_round = self._resumed_round, None
        else:
            indices = self.curate()
        self.current_round, self.round_position = indices, 0
        return indices

    @torch.no_grad()
    def curate(self) -> list[int]:
        """One outer-loop round: ``curate_every × batch_size`` pool indices, in the order they were selected."""
        module = self.pl_module
        was_training = module.training
        module.eval()
        try:
            device = module.device
            metadata = self._metadata_embeddings(device)
            producer = self.producer_batch_size or 2 * self.batch_size
            selected: list[int] = []
            taken: set[int] = set()
            scanned = passed = fallback_batches = 0
            similarity_sum = 0.0
            order = self._shard_order(self.pass_index)
            passes_this_round = selected_at_pass_start = 0
            while len(selected) < self.round_size:
                if self.offset >= len(order):  # next pass over the pool; after a whole pass, repeats are allowed
                    self.pass_index, self.offset = self.pass_index + 1, 0
                    order = self._shard_order(self.pass_index)
                    passes_this_round += 1
                    # the fallback rounds down, so it can give nothing: a whole pass with repeats allowed and nothing
                    # selected would loop forever (CiT's own loop would)
                    if passes_this_round >= 3 and len(selected) == selected_at_pass_start:
                        raise LitzooError(f"CurationInTraining: a whole pass over the pool selected nothing (no caption above threshold "
                                          f"{self.threshold}, and int(min_ratio {self.min_ratio} × producer batch {producer}) = 0)")  # fmt: skip
                    selected_at_pass_start = len(selected)
                    if passes_this_round > 1:
                        taken.clear()
                batch = order[self.offset : self.offset + producer]
                self.offset += len(batch)
                text = module.encode_text(self.pool.tokens[batch].to(device), normalize=True, project=self.use_projection)  # (P, W)
                max_similarity = (text @ metadata.T).max(dim=1).values.cpu()  # (P,)
                keep = max_similarity > self.threshold
                if int(keep.sum()) < self.min_ratio * len(batch):  # too few pass: the batch's best min_ratio
                    # CiT engine.py:293 (iterative_classcurate) takes topk(k=int(min_ratio * P)), rounding down, so a
                    # batch with min_ratio * P < 1 gives nothing
                    keep = torch.zeros_like(keep)
                    keep[max_similarity.topk(int(self.min_ratio * len(batch))).indices] = True
                    fallback_batches += 1
                else:
                    passed += int(keep.sum())
                scanned += len(batch)
                similarity_sum += float(max_similarity.sum())
                for index in batch[keep].tolist():
                    if index not in taken:
                        taken.add(index)
                        selected.append(index)
            selected = selected[: self.round_size]
        finally:
            module.train(was_training)
        self.rounds += 1
        self.last_round = {
            "curation/selected_ratio": self.round_size / scanned,
            "curation/passed_threshold": passed / scanned,
            "curation/fallback_batches": float(fallback_batches),
            "curation/scanned": float(scanned),
            "curation/mean_max_similarity": similarity_sum / scanned,
            "curation/threshold": self.threshold,
        }
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(self.last_round, step=self.trainer.global_step)
        return selected

    # ---------------------------------------------------------------------------- resuming
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pass_index": self.pass_index, "offset": self.offset, "rounds": self.rounds, "round": list(self.current_round), "round_position": self.round_position}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pass_index, self.offset, self.rounds = state_dict["pass_index"], state_dict["offset"], state_dict["rounds"]
        round_, position = list(state_dict.get("round", [])), int(state_dict.get("round_position", 0))
        self._resumed_round = round_ if 0 < position < len(round_) else None
