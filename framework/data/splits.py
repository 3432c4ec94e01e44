"""The splits → datasets → loaders plumbing that every litzoo DataModule shares.

A DataModule derived from :class:`SplitsDataModule` writes only how the data of a split is found and
decoded, in one of two hooks:

* :meth:`~SplitsDataModule.build_dataset` ``(split)``: one split at a time (a folder, a manifest, a data file);
* :meth:`~SplitsDataModule.build_datasets` ``(split)``: every split at once, for splits that come out of one
  draw (a stratified split of one pool, statistics of the training split, a tokenizer trained on it).

The base checks ``batch_size`` / ``num_workers``, keeps the datasets in ``self.datasets`` (split name →
dataset), builds in :meth:`setup` those that a stage needs and any other on first use, and serves the
loaders: the training split shuffled, every other split in order. The training loader is resumable
(:func:`litzoo.framework.data.loaders.make_loader`): its order is drawn from ``(seed, epoch)`` — the seed
is :meth:`~SplitsDataModule.default_shuffle_seed`, ``seed_everything``'s by default, and is saved in the
DataModule's ``state_dict`` so a resumed fit keeps it —, its place in the epoch is saved in checkpoints,
and its workers are seeded per epoch. A DataModule whose items need another collation (``torch_geometric``'s
batches of graphs) overrides :meth:`~SplitsDataModule.make_dataloader` only.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from litzoo.framework.data.loaders import check_loader_options, default_seed, make_loader


class SplitsDataModule(L.LightningDataModule):
    """A LightningDataModule that holds a dataset per split and builds the loaders from them.

    Subclasses call ``super().__init__(batch_size, num_workers)``, then ``self.save_hyperparameters()``
    (the base saves nothing: a subclass's own arguments are its hyper-parameters), and implement
    :meth:`build_dataset` or :meth:`build_datasets`.

    Class attributes a subclass may set:
        splits: the splits the DataModule can have; ``setup(None)`` builds those on disk, in this order.
        test_split: the split ``test_dataloader`` reads (a corpus without a test set tests on ``"val"``).
        predict_split: the split ``predict_dataloader`` reads.

    Args:
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes (started every epoch for the training split, seeded from the
            shuffle seed, the epoch and the rank; kept alive across epochs for the others).

    Raises:
        ValueError: ``batch_size < 1`` or ``num_workers < 0``.
    """

    splits: tuple[str, ...] = ("train", "val", "test")
    test_split: str = "test"
    predict_split: str = "test"

    def __init__(self, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        check_loader_options(batch_size, num_workers)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] = {}
        self._shuffle_seed: int | None = None  # resolved on first use, or restored from a checkpoint

    # --- what a DataModule writes ----------------------------------------------------------------

    def build_dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, read from where the DataModule keeps it.

        A split that is not there raises the DataModule's own one-line error (naming the missing file).
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither build_dataset(split) nor build_datasets(split)")  # abstract: one of the two hooks

    def build_datasets(self, split: str) -> dict[str, Dataset]:
        """The datasets built when ``split`` is first needed: ``{split: build_dataset(split)}``.

        Override it when the splits come out of one draw and return all of them; those already built are kept.
        """
        return {split: self.build_dataset(split)}

    def has_split(self, split: str) -> bool:
        """Whether the data has ``split`` (by default: it is one of :attr:`splits`)."""
        return split in self.splits

    def skips_missing_val(self) -> bool:
        """Whether a missing validation split means "no validation" (an empty list, which Lightning skips)
        rather than the error :meth:`build_dataset` raises for it. Always, by default."""
        return True

    def default_shuffle_seed(self) -> int:
        """The seed of the training order when no checkpoint gave one: ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0.

        Override it to shuffle by a seed of the DataModule's own (the graph DataModules: ``hparams.seed``).
        """
        return default_seed()

    @property
    def shuffle_seed(self) -> int:
        """The seed of the training order, fixed on first use (saved in checkpoints by :meth:`state_dict`)."""
        if self._shuffle_seed is None:
            self._shuffle_seed = int(self.default_shuffle_seed())
        return self._shuffle_seed

    def make_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """The loader of one split's dataset: :func:`litzoo.framework.data.loaders.make_loader` seeded with :attr:`shuffle_seed`.

        The one place to override for another collation (graphs: ``torch_geometric``'s ``Collater``);
        keep ``make_loader`` for the shuffled split, so that it stays resumable.
        """
        return make_loader(dataset, batch_size, shuffle, self.num_workers, seed=self.shuffle_seed)

    # --- the plumbing ----------------------------------------------------------------------------

    def stage_splits(self, stage: str | None) -> tuple[str, ...]:
        """The splits a Lightning stage reads; every split of :attr:`splits` for ``None`` (or another name)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": (self.test_split,), "predict": (self.predict_split,)}
        return needed.get(stage or "", self.splits)

    def setup(self, stage: str | None = None) -> None:
        """Builds the datasets of the splits ``stage`` needs that the data has (the training split always:
        a missing one raises its error here)."""
        for split in self.stage_splits(stage):
            if split not in self.datasets and (split == "train" or self.has_split(split)):
                self.dataset(split)

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built on first use (a split that is not there raises its own error)."""
        if split not in self.datasets:
            built = self.build_datasets(split)
            if split not in built:
                raise RuntimeError(f"{type(self).__name__}.build_datasets({split!r}) returned no {split!r} dataset (got {sorted(built)})")
            for name, dataset in built.items():
                self.datasets.setdefault(name, dataset)
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        return self.make_dataloader(self.dataset(split), batch_size or self.batch_size, shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_split("val") and self.skips_missing_val():
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, shuffle=False)

    # --- resuming --------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        """``{"shuffle_seed"}``: a resumed fit shuffles as the run it continues, whatever ``seed_everything`` it was given."""
        return {"shuffle_seed": self.shuffle_seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "shuffle_seed" in state_dict:
            self._shuffle_seed = int(state_dict["shuffle_seed"])
