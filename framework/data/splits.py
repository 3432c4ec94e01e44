"""The splits → datasets → loaders plumbing that every litzoo DataModule shares.

A DataModule derived from :class:`SplitsDataModule` writes only how the data of a split is found and
decoded, in one of two hooks:

* :meth:`~SplitsDataModule.build_dataset` ``(split)``: one split at a time (a folder, a manifest, a data file);
* :meth:`~SplitsDataModule.build_datasets` ``(split)``: every split at once, for splits that come out of one
  draw (a stratified split of one pool, statistics of the training split, a tokenizer trained on it).

The base checks ``batch_size`` / ``num_workers``, keeps the datasets in ``self.datasets`` (split name →
dataset), builds in :meth:`setup` those that a stage needs and any other on first use, and serves the
loaders: the training split shuffled, every other split in order. A shuffled loader has no generator of
its own: its order comes from torch's global RNG, which ``seed_everything`` seeds. A DataModule whose
items need another loader class (``torch_geometric``'s DataLoader for graphs) overrides
:meth:`~SplitsDataModule.make_dataloader` only.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from litzoo.framework.data.loaders import check_loader_options, make_loader


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
        num_workers: DataLoader worker processes (kept alive across epochs when there are any).

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

    def make_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """The loader of one split's dataset: :func:`litzoo.framework.data.loaders.make_loader`.

        The one place to override for another loader class (graphs: ``torch_geometric.loader.DataLoader``)
        or a loader with a seeded generator of its own.
        """
        return make_loader(dataset, batch_size, shuffle, self.num_workers)

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
