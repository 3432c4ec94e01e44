"""Batch helpers for code that works on any LightningModule: find a batch's input and labels, and
get batches from a run's data through Lightning's public API only.

litzoo's DataModules yield dict batches with stable keys (``image``, ``audio``, ``label``, ...); a user's
loaders may yield ``(input, label)`` tuples or bare tensors. :func:`batch_inputs` and
:func:`batch_labels` read all three, so a callback never needs to know whose data it sees.

Where the data comes from depends on the hook. From ``on_train_start`` / ``on_fit_end`` on,
Lightning has built the loaders (``trainer.train_dataloader``, ``trainer.val_dataloaders``, ...).
In ``setup`` it has not; what is public there is the attached ``trainer.datamodule`` and the
LightningModule's own ``*_dataloader`` hooks, which :func:`setup_loader` calls as Lightning itself
would. Loaders passed straight to ``trainer.fit(model, loader)`` cannot be reached from ``setup``
through public API: that case is refused with a message that says what to pass instead.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

from litzoo.framework.errors import LitzooError

#: the stable batch keys of litzoo's DataModules that hold a model's input, in order of preference
INPUT_KEYS = ("image", "audio")

#: the trainer's built loaders of each stage (set once Lightning has built them), and the hook that makes them
_STAGES: dict[str, tuple[str, str]] = {
    "fit": ("train_dataloader", "train_dataloader"),
    "train": ("train_dataloader", "train_dataloader"),
    "validate": ("val_dataloaders", "val_dataloader"),
    "val": ("val_dataloaders", "val_dataloader"),
    "test": ("test_dataloaders", "test_dataloader"),
    "predict": ("predict_dataloaders", "predict_dataloader"),
}


def batch_inputs(batch: Any) -> torch.Tensor:
    """The model input of a batch: the ``image`` (or ``audio``) entry of a dict batch, else the first tensor."""
    if isinstance(batch, dict):
        for key in INPUT_KEYS:
            if key in batch:
                return batch[key]
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"cannot find the input tensor in a batch of type {type(batch).__name__}")
    return batch


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The class labels of a batch, if it has them: the ``label`` entry of a dict, else the second tensor."""
    if isinstance(batch, dict):
        label = batch.get("label")
        return label if isinstance(label, torch.Tensor) else None
    if isinstance(batch, (list, tuple)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


def first_loader(loaders: Any) -> Any:
    """The first loader of a collection of loaders (dict / list / tuple, nested), or ``loaders`` itself."""
    while isinstance(loaders, (dict, list, tuple)):
        if not loaders:
            return None
        loaders = next(iter(loaders.values())) if isinstance(loaders, dict) else loaders[0]
    return loaders


def datamodule_loader(datamodule: L.LightningDataModule, split: str) -> Any:
    """The first loader of ``datamodule.<split>_dataloader()``, or ``None`` when the DataModule has none (not
    overridden, or it raises ``NotImplementedError`` / ``MisconfigurationException``). The frozen-feature probes read
    their labelled DataModules through it."""
    method = f"{split}_dataloader"
    if not is_overridden(method, datamodule, L.LightningDataModule):
        return None
    try:
        return first_loader(getattr(datamodule, method)())
    except (MisconfigurationException, NotImplementedError):
        return None


def prepare_side_datamodule(trainer: L.Trainer, datamodule: L.LightningDataModule, who: str) -> None:
    """``prepare_data`` (on local rank 0 only, Lightning's rule, then a barrier) and ``setup("fit")`` of a DataModule a
    callback reads beside the run's own (a probe's labelled data); nothing when it *is* the Trainer's DataModule, which
    the Trainer prepares and sets up itself."""
    if datamodule is trainer.datamodule:
        return
    if trainer.local_rank == 0:
        datamodule.prepare_data()
    trainer.strategy.barrier(f"{who}_prepare_data")
    datamodule.setup("fit")


def in_order(loader: Any) -> Any:
    """The loader's data in a fixed order: a plain sequential ``DataLoader`` over its dataset (no shuffling, no
    DistributedSampler, no workers) with the same collate function and batch size; other iterables as they are."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size or 1, shuffle=False, collate_fn=loader.collate_fn, num_workers=0)


def reference_loader(trainer: L.Trainer, who: str, stages: tuple[str, ...] = ("val", "train")):
    """The first loader of the first of ``stages`` that has one (``"test"``, ``"predict"``, ``"val"``,
    ``"train"``): by default the first validation loader, else the training one.

    Reads the loaders Lightning has built for the current run, so it is for hooks from
    ``on_train_start`` / ``on_validation_start`` / ``on_test_start`` on (``on_fit_end`` included).
    """
    for stage in stages:
        loader = first_loader(getattr(trainer, _STAGES[stage][0]))
        if loader is not None:
            return loader
    raise LitzooError(f"{who} needs a {' or '.join(stages)} dataloader for a reference batch")


def reference_batch(trainer: L.Trainer, pl_module: L.LightningModule, who: str, stages: tuple[str, ...] = ("val", "train")) -> torch.Tensor:
    """The input of the first batch of :func:`reference_loader`, on the module's device: the real batch
    a callback checks a model transformation on (fused, pruned, masked outputs against the originals)."""
    return batch_inputs(next(iter(reference_loader(trainer, who, stages)))).to(pl_module.device)


def setup_loader(trainer: L.Trainer, stage: str, who: str) -> Any:
    """The (first) loader ``stage`` will use, also in ``setup``, before Lightning builds it.

    The loader Lightning has built if there is one; else the one the attached DataModule's hook
    returns, else the LightningModule's own overridden hook (Lightning's order). Loaders passed
    straight to ``trainer.fit(model, loader)`` / ``trainer.test(model, loader)`` are not reachable
    before Lightning builds them: a :class:`LitzooError` says what to pass instead.

    Args:
        trainer: the running trainer.
        stage: ``"fit"`` (or ``"train"``), ``"validate"`` (or ``"val"``), ``"test"`` or ``"predict"``.
        who: names the caller in the error.
    """
    stage = getattr(stage, "value", stage)  # Lightning's TrainerFn as given to setup(), or its string
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {sorted(_STAGES)}, got {stage!r}")
    built, hook = _STAGES[stage]
    loader = first_loader(getattr(trainer, built))
    if loader is not None:
        return loader
    # as Lightning's data source: an attached DataModule provides every stage's loaders, else the module
    owner = trainer.datamodule if trainer.datamodule is not None else trainer.lightning_module
    if owner is not None and is_overridden(hook, owner):
        loader = first_loader(getattr(owner, hook)())
        if loader is not None:
            return loader
    entry = "fit" if stage in ("fit", "train") else stage
    raise LitzooError(
        f"{who} needs a {hook.removesuffix('_dataloader')} batch before Lightning builds its dataloaders, where loaders passed "
        f"straight to trainer.{entry}(model, loader) cannot be read: pass a LightningDataModule (trainer.{entry}(model, datamodule=...)), "
        f"define the module's {hook}(), or set the module's example_input_array"
    )


def sample_training_batches(trainer: L.Trainer, num_batches: int, seed: int, who: str) -> list[Any]:
    """``num_batches`` batches drawn at random from the training set, leaving the run's RNG streams alone.

    The batches come from a loader of their own (iterating the training loader would shift its
    shuffling or reset persistent workers) with a generator seeded by ``seed``, under a forked RNG
    (dataset augmentations draw from the global one), so a run with the caller draws the same
    training batches, dropout and augmentations as a run without it, and a resumed run the same
    samples. Batches are returned as collated, on the CPU. Usable in ``setup`` (see
    :func:`setup_loader` for where the training set is found there).
    """
    loader = setup_loader(trainer, "fit", who)
    if not isinstance(loader, DataLoader):
        raise LitzooError(f"{who} needs a torch DataLoader for training, got {type(loader).__name__}")
    dataset = loader.dataset
    generator = torch.Generator().manual_seed(seed)
    sampler = None if isinstance(dataset, IterableDataset) else RandomSampler(dataset, generator=generator)
    extra = DataLoader(dataset, batch_size=loader.batch_size or 1, sampler=sampler, collate_fn=loader.collate_fn, num_workers=0)
    batches = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in extra:
            batches.append(batch)
            if len(batches) == num_batches:
                break
    return batches
