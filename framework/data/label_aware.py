"""Label-aware augmentation of any DataModule's training batches: each image through a sub-policy of its label's set.

LA3 (Zhao et al., ECCV 2022) trains with a *composite label-aware policy*: every training image draws one sub-policy
(three operations) uniformly from the set searched for its label and applies it with random magnitude levels
(the official ``CIFAR10_CLASSAUG_OP`` / ``PDA_Aug_Policies_Op`` of Simpleple/LA3-Label-Aware-AutoAugment). Here that
is a wrapper of any LightningDataModule, so a policy searched once (``litzoo la3-search``, or written by hand) serves
any data with labels. The official code augments the PIL image before its crop / flip / cutout; the wrapper
augments the batch as the wrapped DataModule made it (after its own augmentation), on the device, in
``on_after_batch_transfer`` while the trainer is training. Validation, test and predict batches are untouched.

The images are expected normalised by ``mean`` / ``std`` (or in [0, 1] when none is given): the wrapper maps them back
to [0, 1], clips, augments (:func:`litzoo.framework.data.augment_ops.augment_batch`) and normalises again.

Every draw comes from a ``torch.Generator`` seeded with ``(seed, epoch, batch position)`` — never from the global
random state —, so a fit resumed mid-epoch augments its remaining batches as the uninterrupted fit would, and a
batch at a given position is augmented alike on every DDP rank and process (ranks see other images, so what they
get still differs). The seed is ``seed_everything``'s unless given, and is saved in the DataModule's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from typing_extensions import override

from litzoo.framework.data.augment_ops import AugmentPolicy, augment_batch, load_policy
from litzoo.framework.data.loaders import default_seed
from litzoo.framework.data.wrappers import DataModuleWrapper
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import derive_seed


class LabelAwareAugmentDataModule(DataModuleWrapper):
    """Wraps ``datamodule``; while training, each image gets a sub-policy drawn from its label's set of ``policy``.

    Args:
        datamodule: any LightningDataModule whose training batches hold images and labels (dicts with
            ``image_key`` / ``label_key``, or ``(images, labels, ...)`` tuples). In a config, a nested
            ``class_path`` / ``init_args``.
        policy: the policy file (:func:`litzoo.framework.data.augment_ops.save_policy`'s format; a relative path
            not found from the working directory is looked up next to litzoo's shipped configs) or, from Python, an
            :class:`~litzoo.framework.data.augment_ops.AugmentPolicy`.
        label_agnostic: draw every image's sub-policy from one set shared by all labels (the policy's shared set,
            else all its labels' sets pooled): the label-agnostic baseline.
        mean: per-channel mean the wrapped DataModule normalised the images with (None: images in [0, 1]).
        std: per-channel std, with ``mean``.
        seed: seed of the draws (None: ``seed_everything``'s, else 0), saved in the state for a resume.
        image_key: the images' key in dict batches.
        label_key: the labels' key in dict batches.

    Raises:
        LitzooError: the policy file is missing or malformed (one line naming it).
        ValueError: ``mean`` / ``std`` of different lengths or a non-positive std.
    """

    def __init__(
        self,
        datamodule: L.LightningDataModule,
        policy: Any,
        label_agnostic: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        super().__init__(datamodule)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the normalisation of the wrapped DataModule), or neither")
        if mean is not None and std is not None:
            if len(mean) != len(std) or not len(mean):
                raise ValueError(f"mean and std must have one value per channel, got {list(mean)} and {list(std)}")
            if any(s <= 0 for s in std):
                raise ValueError(f"std must be positive, got {list(std)}")
        self.policy_source = "the policy" if isinstance(policy, AugmentPolicy) else str(resolve_policy_path(policy))
        self.policy = policy if isinstance(policy, AugmentPolicy) else load_policy(resolve_policy_path(policy))
        self.label_agnostic = label_agnostic
        self.mean = None if mean is None else torch.tensor([float(m) for m in mean]).reshape(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor([float(s) for s in std]).reshape(1, -1, 1, 1)
        self.image_key, self.label_key = image_key, label_key
        self._seed = seed
        self.save_hyperparameters(ignore=["datamodule"] + (["policy"] if isinstance(policy, AugmentPolicy) else []))

    @property
    def seed(self) -> int:
        """The seed of the draws, fixed on first use."""
        if self._seed is None:
            self._seed = default_seed()
        return int(self._seed)

    # --- delegation ------------------------------------------------------------------------------

    @override
    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if trainer is not None:
            module = trainer.lightning_module if trainer.strategy is not None and trainer.strategy.lightning_module is not None else None
            if module is not None and is_overridden("on_after_batch_transfer", module, L.LightningModule):
                raise LitzooError(f"{type(module).__name__} overrides on_after_batch_transfer, which Lightning then calls instead of "
                                  f"{type(self).__name__}'s: the label-aware augmentation would never run")  # fmt: skip
        super().setup(stage)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The wrapped DataModule's state and the seed of the draws."""
        return {**super().state_dict(), "augment_seed": self.seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "augment_seed" in state_dict:
            self._seed = int(state_dict["augment_seed"])

    # --- the augmentation ------------------------------------------------------------------------

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The wrapped DataModule's hook, then, while training only, the label-aware augmentation of the batch at
        the position Lightning gives it in the epoch (``fit_loop.epoch_loop.batch_idx + 1`` before it is counted)."""
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        position = trainer.fit_loop.epoch_loop.batch_idx + 1
        return self.augment(batch, trainer.current_epoch, position)

    def generator(self, epoch: int, position: int) -> torch.Generator:
        """The generator of the draws for the batch at ``position`` of ``epoch``."""
        return torch.Generator().manual_seed(derive_seed(self.seed, epoch, position))

    def augment(self, batch: Any, epoch: int, position: int) -> Any:
        """``batch`` with its images augmented label-aware, drawn from ``(seed, epoch, position)`` only."""
        images, labels = self._images_labels(batch)
        augmented = self.augment_images(images, labels, self.generator(epoch, position))
        if isinstance(batch, dict):
            return {**batch, self.image_key: augmented}
        return type(batch)([augmented, *batch[1:]]) if isinstance(batch, tuple) else [augmented, *batch[1:]]

    def augment_images(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Normalised images -> [0, 1] -> augmented -> normalised again."""
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if self.mean is not None:
            if self.mean.shape[1] not in (1, images.shape[1]):
                raise ValueError(f"mean / std have {self.mean.shape[1]} channels, the images {images.shape[1]}")
            mean, std = self.mean.to(images), self.std.to(images)
            pixels = (images * std + mean).clamp(0.0, 1.0)
        else:
            pixels = images.clamp(0.0, 1.0)
        try:
            out = augment_batch(pixels, labels.detach().cpu().long(), self.policy, generator, self.label_agnostic)
        except KeyError as error:  # a label with no set and no shared set
            raise LitzooError(f"{self.policy_source}: {error.args[0]}") from None
        return (out - mean) / std if self.mean is not None else out

    def _images_labels(self, batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch, dict):
            if self.image_key not in batch or self.label_key not in batch:
                raise LitzooError(f"{type(self).__name__}: a training batch lacks '{self.image_key}' or '{self.label_key}' (keys: {sorted(batch)})")
            return batch[self.image_key], batch[self.label_key]
        if isinstance(batch, (list, tuple)) and len(batch) >= 2:
            return batch[0], batch[1]
        raise LitzooError(f"{type(self).__name__}: cannot find images and labels in a training batch of type {type(batch).__name__}")


def resolve_policy_path(path: str | Path) -> Path:
    """``path`` as given when it exists; else, for a relative path, the same path under the folder that holds litzoo's
    ``configs/`` (the repository, or the installed ``litzoo`` package): the policy files shipped next to the configs
    (``configs/la3/digits_policy.json``) are found from any working directory."""
    path = Path(str(path)).expanduser()
    if path.exists() or path.is_absolute():
        return path
    shipped = Path(__file__).resolve().parents[2] / path  # <root>/framework/data/ -> <root>/configs/...
    return shipped if shipped.is_file() else path


__all__ = ["LabelAwareAugmentDataModule", "resolve_policy_path"]
