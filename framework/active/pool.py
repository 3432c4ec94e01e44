"""The labelled / unlabelled pool of an active-learning run, persisted to disk, and the DataModule that wraps any other.

Pool-based active learning (the deep active learning survey, Ren et al., ACM CSUR 2021, §2) keeps a small labelled set
``L`` and a large unlabelled pool ``U`` of one training split; each round a model is trained on ``L``, a query strategy
picks ``k`` samples of ``U``, an oracle labels them and they move to ``L``. Here the training split of an existing
DataModule is the pool and its labels play the oracle: a sample's label is *read* only once it is in ``L`` (the
training loader yields ``L`` only; the scoring loader yields ``U``'s inputs, and the strategies never look at labels).

:class:`ActivePool` holds the acquisitions (which indices came in which round, and how) and the per-round results; it
is the state of a run and lives in one JSON file, written atomically after every change, so a run killed at any point
resumes from its last finished step (``framework/active/loop.py``). The file (``format: litzoo-active-pool``, version 1)
is checked on load: a bad file gives one line naming the file and what is wrong.

:class:`ActiveLearningDataModule` wraps any LightningDataModule whose training loader reads a map-style dataset: its
``train_dataloader`` yields the labelled subset (seeded, resumable shuffling, :func:`~litzoo.framework.data.make_loader`),
validation and test are the wrapped DataModule's own, and :meth:`ActiveLearningDataModule.pool_loader` yields a list of
pool indices in a fixed order for scoring. The query settings (strategy, query size, MC-dropout passes ...) are its
arguments too, so one config describes the whole run: ``litzoo fit`` trains one round on the current labelled set and
``litzoo active-learn`` runs all of them.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from typing_extensions import override

from litzoo.framework.data.batches import datamodule_loader
from litzoo.framework.data.loaders import make_loader
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.data.wrappers import DataModuleWrapper
from litzoo.framework.distributed import rank
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import derive_seed

POOL_FORMAT = "litzoo-active-pool"
POOL_VERSION = 1

#: the query strategies an :class:`ActiveLearningDataModule` accepts (``framework/active/query.py`` runs them)
STRATEGIES = ("random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge")


class ActivePool:
    """Which samples of a pool of ``size`` are labelled, acquired in which round, and each round's results.

    Args:
        size: number of samples in the pool (the wrapped training split).
        acquisitions: ``[{"round": r, "strategy": name, "indices": [...]}, ...]`` in order (round 0 = the initial draw).
        results: ``[{"round": r, "labels": n, <metric>: value, ...}, ...]``, one per evaluated round.
        settings: what the run was started with (seed, strategy, sizes), checked again on resume.
    """

    def __init__(self, size: int, acquisitions: Sequence[dict[str, Any]] = (), results: Sequence[dict[str, Any]] = (),
                 settings: dict[str, Any] | None = None) -> None:  # fmt: skip
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int (the number of pool samples), got {size!r}")
        self.size = size
        self.settings = dict(settings or {})
        self.acquisitions: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self._labelled = torch.zeros(size, dtype=torch.bool)
        by_round = {}
        for result in results:
            if int(result["round"]) in by_round:
                raise ValueError(f"round {result['round']} has results twice")
            by_round[int(result["round"])] = result
        for acquisition in acquisitions:  # replayed in order: each round's acquisition, then its results
            self.acquire(int(acquisition["round"]), acquisition["indices"], str(acquisition.get("strategy", "")))
            result = by_round.pop(self.last_round, None)
            if result is not None:
                self.record(self.last_round, {k: v for k, v in result.items() if k not in ("round", "labels")})
        if by_round:
            raise ValueError(f"results of rounds {sorted(by_round)} have no acquisition")

    # ------------------------------------------------------------------------------------------ the index sets
    @property
    def labelled(self) -> Tensor:
        """Labelled pool indices in the order they were acquired."""
        return torch.tensor([i for a in self.acquisitions for i in a["indices"]], dtype=torch.long)

    @property
    def unlabelled(self) -> Tensor:
        """Unlabelled pool indices, ascending."""
        return torch.nonzero(~self._labelled).flatten()

    @property
    def num_labelled(self) -> int:
        return int(self._labelled.sum())

    @property
    def last_round(self) -> int:
        """The round of the latest acquisition (-1 before the initial draw)."""
        return self.acquisitions[-1]["round"] if self.acquisitions else -1

    def acquire(self, round: int, indices: Iterable[int] | Tensor, strategy: str = "") -> None:
        """Move ``indices`` (pool indices) from the unlabelled pool to the labelled set, as round ``round``'s acquisition.

        Raises ``ValueError`` for an index out of range, a repeated index, an index already labelled, or a round that
        does not follow the last one: the two sets stay disjoint and every acquisition is recorded once.
        """
        values = indices.tolist() if isinstance(indices, Tensor) else list(indices)
        if any(isinstance(i, bool) or not isinstance(i, int) for i in values):
            raise ValueError(f"round {round}: pool indices must be ints, got {values[:5]}")
        if round != self.last_round + 1:
            raise ValueError(f"acquisition of round {round} does not follow round {self.last_round}")
        outside = [i for i in values if not 0 <= i < self.size]
        if outside:
            raise ValueError(f"round {round}: pool indices {outside[:5]} are outside [0, {self.size})")
        if len(set(values)) != len(values):
            raise ValueError(f"round {round}: the acquisition repeats pool indices")
        already = [i for i in values if self._labelled[i]]
        if already:
            raise ValueError(f"round {round}: pool indices {already[:5]} are labelled already")
        self._labelled[values] = True
        self.acquisitions.append({"round": round, "strategy": strategy, "indices": values})

    def record(self, round: int, metrics: dict[str, float]) -> None:
        """Store round ``round``'s evaluation (after its acquisition, with the number of labels it was trained on)."""
        if round != self.last_round:
            raise ValueError(f"results of round {round} given, but the latest acquisition is round {self.last_round}")
        if self.results and self.results[-1]["round"] == round:
            raise ValueError(f"round {round} has results already")
        clean = {}
        for name, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"round {round}: metric {name} is not finite ({value})")
            clean[str(name)] = value
        self.results.append({"round": round, "labels": self.num_labelled, **clean})

    # ------------------------------------------------------------------------------------------ the file
    def to_dict(self) -> dict[str, Any]:
        return {"format": POOL_FORMAT, "version": POOL_VERSION, "size": self.size, "settings": self.settings,
                "acquisitions": self.acquisitions, "results": self.results}  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Write the pool as JSON, atomically (a temporary sibling renamed onto ``path``)."""
        path = Path(path).expanduser()
        with write_files_atomically(path) as (staged,):
            staged.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ActivePool:
        """Read a pool file; a missing, malformed or inconsistent file raises one :class:`LitzooError` line naming it."""
        path = Path(path).expanduser()
        try:
            text = path.read_text()
        except OSError as error:
            raise LitzooError(f"active-learning pool file '{path}' cannot be read: {error.strerror or error}") from None
        try:
            data = json.loads(text, parse_constant=lambda name: float("nan"))
        except json.JSONDecodeError as error:
            raise LitzooError(f"active-learning pool file '{path}', line {error.lineno}: not JSON ({error.msg})") from None
        if not isinstance(data, dict) or data.get("format") != POOL_FORMAT:
            raise LitzooError(f"active-learning pool file '{path}' is not a litzoo pool (no \"format\": \"{POOL_FORMAT}\")")
        if data.get("version") != POOL_VERSION:
            raise LitzooError(f"active-learning pool file '{path}' has version {data.get('version')!r}; this litzoo reads version {POOL_VERSION}")
        try:
            acquisitions, results = data["acquisitions"], data["results"]
            if not isinstance(acquisitions, list) or not isinstance(results, list) or not isinstance(data.get("settings", {}), dict):
                raise ValueError("acquisitions and results must be lists, settings an object")
            return cls(data["size"], acquisitions, results, data.get("settings"))
        except (KeyError, TypeError, ValueError) as error:
            what = f"misses {error}" if isinstance(error, KeyError) else str(error)
            raise LitzooError(f"active-learning pool file '{path}': {what}") from None


def check_map_style(dataset: Any, who: str) -> Dataset:
    """``dataset`` if it is a map-style dataset (``__len__`` and ``__getitem__``), else a ``ValueError``."""
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ValueError(f"{who} needs a map-style training dataset (with __len__ and __getitem__), got {type(dataset).__name__}")
    return dataset


class ActiveLearningDataModule(DataModuleWrapper):
    """Any DataModule's training split as an active-learning pool; trains on its labelled part.

    Args:
        datamodule: the wrapped DataModule; its training loader's dataset is the pool, its validation and test loaders
            are used as they are.
        initial_labels: size of the initial labelled set, drawn uniformly from the pool (round 0).
        query_size: samples labelled per round.
        rounds: query rounds of ``litzoo active-learn`` (the run evaluates ``rounds + 1`` labelled-set sizes).
        strategy: ``random``, ``least_confidence``, ``margin``, ``entropy``, ``bald`` (MC dropout), ``coreset``
            (greedy k-center on penultimate features) or ``badge`` (last-layer gradient embedding + k-means++ seeding).
        mc_samples: MC-dropout passes of ``bald`` (10-20 in Gal et al. 2017).
        pool_file: the run's pool file (JSON); read when it exists, written by :meth:`save_pool`. ``None`` keeps the
            pool in memory (the initial draw only).
        seed: seed of the initial draw, of each round's training order and of the strategies' random choices.
        batch_size: training batch size; ``None`` takes the wrapped DataModule's.
        scoring_batch_size: samples per forward pass when scoring the pool.
        input_key: the batch entry the model reads (``None``: ``image`` or ``audio``, else the first tensor).
        head: name of the model's last ``nn.Linear`` (its input is the penultimate feature of ``coreset`` / ``badge``);
            ``None`` takes the last ``nn.Linear`` in the model's module order.
        num_workers: DataLoader workers of the labelled and scoring loaders.
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        initial_labels: int = 20,
        query_size: int = 20,
        rounds: int = 10,
        strategy: str = "entropy",
        mc_samples: int = 20,
        pool_file: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        scoring_batch_size: int = 256,
        input_key: str | None = None,
        head: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(datamodule)
        for name, value, low in (("initial_labels", initial_labels, 1), ("query_size", query_size, 1), ("rounds", rounds, 0),
                                 ("mc_samples", mc_samples, 1), ("scoring_batch_size", scoring_batch_size, 1), ("num_workers", num_workers, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        self.save_hyperparameters(ignore=["datamodule"])
        self.pool: ActivePool | None = None
        self._train_dataset: Dataset | None = None
        self._batch_size: int | None = batch_size

    # ------------------------------------------------------------------------------------------ the pool
    @property
    def settings(self) -> dict[str, Any]:
        """What a pool file must agree with to be resumed by this DataModule."""
        hp = self.hparams
        return {"seed": hp.seed, "initial_labels": hp.initial_labels, "query_size": hp.query_size, "strategy": hp.strategy}

    @property
    def train_dataset(self) -> Dataset:
        """The wrapped DataModule's training dataset (the pool)."""
        if self._train_dataset is None:
            self.setup("fit")
        assert self._train_dataset is not None
        return self._train_dataset

    def load_pool(self) -> ActivePool:
        """The pool of :attr:`pool_file` when it exists (checked against the dataset size and the settings), else the
        initial draw of ``initial_labels`` pool indices (``randperm`` under ``derive_seed(seed, "initial")``)."""
        size = len(self.train_dataset)
        hp = self.hparams
        path = Path(hp.pool_file).expanduser() if hp.pool_file else None
        if path is not None and path.exists():
            pool = ActivePool.load(path)
            if pool.size != size:
                raise LitzooError(f"active-learning pool file '{path}' is for a pool of {pool.size} samples; the training split has {size}")
            stored = {k: pool.settings.get(k) for k in self.settings}
            if stored != self.settings:
                diff = ", ".join(f"{k}: file {stored[k]!r}, config {self.settings[k]!r}" for k in self.settings if stored[k] != self.settings[k])
                raise LitzooError(f"active-learning pool file '{path}' was started with other settings ({diff}); use a new run folder")
            return pool
        if hp.initial_labels > size:
            raise ValueError(f"initial_labels {hp.initial_labels} exceeds the pool of {size} training samples")
        generator = torch.Generator().manual_seed(derive_seed(hp.seed, 0))
        pool = ActivePool(size, settings=self.settings)
        pool.acquire(0, torch.randperm(size, generator=generator)[: hp.initial_labels], "random")
        return pool

    def save_pool(self) -> None:
        """Write :attr:`pool` to ``pool_file`` (on global rank 0 only under DDP; nothing without a file)."""
        if self.pool is None or not self.hparams.pool_file:
            return
        if rank() != 0:
            return
        self.pool.save(self.hparams.pool_file)

    # ------------------------------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, stage: str | None = None) -> None:
        if self._train_dataset is None:
            super().setup("fit")
            loader = datamodule_loader(self.datamodule, "train")
            if loader is None:
                raise ValueError(f"{type(self.datamodule).__name__} has no train_dataloader: it cannot be an active-learning pool")
            self._train_dataset = check_map_style(getattr(loader, "dataset", None), type(self).__name__)
            if self._batch_size is None:
                self._batch_size = getattr(loader, "batch_size", None) or 32
        if stage in ("test", "validate"):
            super().setup(stage)
        if self.pool is None:
            self.pool = self.load_pool()

    def labelled_dataset(self) -> Subset:
        """The labelled part of the pool, in acquisition order."""
        self.setup("fit")
        assert self.pool is not None
        return Subset(self.train_dataset, self.pool.labelled.tolist())

    @override
    def train_dataloader(self) -> DataLoader:
        """The labelled set, shuffled from ``(seed, round)`` and resumable mid-epoch (sharded under DDP)."""
        self.setup("fit")
        assert self.pool is not None and self._batch_size is not None
        labelled = self.labelled_dataset()
        seed = derive_seed(self.hparams.seed, 1, self.pool.last_round) % 2**31
        return make_loader(labelled, min(self._batch_size, len(labelled)), shuffle=True, num_workers=self.hparams.num_workers, seed=seed)

    def scoring_dataset(self) -> Dataset:
        """The pool as the strategies see it: the training dataset, with its random augmentation turned off when it has
        the ``augment: bool`` switch (the CIFAR datasets): a query should not depend on a random crop, nor draw from the
        random state."""
        dataset = self.train_dataset
        if getattr(dataset, "augment", None) is True:
            dataset = copy.copy(dataset)
            dataset.augment = False  # type: ignore[attr-defined]
        return dataset

    def pool_loader(self, indices: Sequence[int] | Tensor) -> DataLoader:
        """The samples ``indices`` of the pool in that order (no shuffling, no sampler, no augmentation:
        :meth:`scoring_dataset`), ``scoring_batch_size`` at a time."""
        values = indices.tolist() if isinstance(indices, Tensor) else list(indices)
        collate = getattr(datamodule_loader(self.datamodule, "train"), "collate_fn", None)
        return DataLoader(Subset(self.scoring_dataset(), values), batch_size=self.hparams.scoring_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.hparams.seed))  # fmt: skip (iterating draws nothing global)

    # ------------------------------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        """The labelled set a checkpoint was trained on (the pool file stays the run's state) and the wrapped state."""
        state = super().state_dict()
        if self.pool is not None:
            state["labelled"] = self.pool.labelled
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        labelled = state_dict.get("labelled")
        if labelled is not None and self.pool is not None and not torch.equal(torch.as_tensor(labelled), self.pool.labelled):
            raise LitzooError(
                f"the checkpoint was trained on {len(labelled)} labelled samples that differ from the pool's {self.pool.num_labelled}: "
                "resume it with the pool file of its own run"
            )
