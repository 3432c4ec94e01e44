"""A DataModule that wraps another DataModule (given as a config's nested ``class_path``): the base and its hparams repair.

Under LightningCLI every LightningDataModule that jsonargparse builds for the ``data`` key, the wrapped one included, is
built inside Lightning's "given hyper-parameters" context holding the *outer* ``data`` config, so the inner
DataModule's ``save_hyperparameters()`` stores the wrapper's arguments instead of its own (and a DataModule that reads
``self.hparams`` then fails: ``DigitsDataModule`` has no ``test_fraction``). The outer config holds the inner one under
the wrapper's argument name, with every default filled in by jsonargparse, so the inner hparams can be put right.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from typing_extensions import override


def repair_wrapped_hparams(inner: L.LightningDataModule, argument: str) -> None:
    """Give ``inner`` its own hyper-parameters when LightningCLI gave it its wrapper's.

    The symptom is ``inner.hparams`` naming another class in ``_class_path`` and holding ``argument`` (the wrapper's
    argument that received ``inner``) as a ``{"class_path", "init_args"}`` mapping; the repair replaces them by that
    mapping's ``init_args`` (and ``_class_path``), as LightningCLI stores a top-level DataModule's. Anything else is left
    alone (a DataModule built in Python, or one that saves its hyper-parameters explicitly).
    """
    hparams = inner.hparams
    nested = hparams.get(argument) if isinstance(hparams, Mapping) else None
    if not isinstance(nested, Mapping) or "class_path" not in nested:
        return
    own_path = f"{type(inner).__module__}.{type(inner).__qualname__}"
    if hparams.get("_class_path") == own_path:
        return
    fixed = {"_class_path": nested["class_path"], **dict(nested.get("init_args") or {}), **dict(nested.get("dict_kwargs") or {})}
    hparams.clear()
    hparams.update(fixed)


class DataModuleWrapper(L.LightningDataModule):
    """A DataModule that wraps another, its ``datamodule`` argument (in a config, a nested ``class_path``), and changes
    only part of it: everything it does not override is the wrapped DataModule's — ``prepare_data`` / ``setup`` /
    ``teardown``, the four loaders, the batch-transfer hooks, the state in checkpoints (under ``"datamodule"``) and the
    attributes it lacks (``num_classes``, ``input_shape``, ``classes`` ...). The base of the active-learning pool
    (``framework/active/pool.py``) and of LA3's label-aware augmentation (``framework/data/label_aware.py``).

    Raises:
        ValueError: ``datamodule`` is not a LightningDataModule.
    """

    def __init__(self, datamodule: L.LightningDataModule) -> None:
        super().__init__()
        if not isinstance(datamodule, L.LightningDataModule):
            raise ValueError(f"datamodule must be a LightningDataModule, got {type(datamodule).__name__}")
        repair_wrapped_hparams(datamodule, "datamodule")
        self.datamodule = datamodule

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper lacks are the wrapped DataModule's (private ones never are)."""
        if name.startswith("_") or name == "datamodule":
            raise AttributeError(name)
        inner = self.__dict__.get("datamodule")
        if inner is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(inner, name)

    @override
    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    @override
    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)

    @override
    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    @override
    def train_dataloader(self) -> Any:
        return self.datamodule.train_dataloader()

    @override
    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    @override
    def test_dataloader(self) -> Any:
        return self.datamodule.test_dataloader()

    @override
    def predict_dataloader(self) -> Any:
        return self.datamodule.predict_dataloader()

    @override
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return self.datamodule.transfer_batch_to_device(batch, device, dataloader_idx)

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_before_batch_transfer(batch, dataloader_idx)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"datamodule": self.datamodule.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "datamodule" in state_dict:
            self.datamodule.load_state_dict(state_dict["datamodule"])
