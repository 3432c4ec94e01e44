"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the python-pickle folders as distributed.

The "CIFAR-10 python version" and "CIFAR-100 python version" of https://www.cs.toronto.edu/~kriz/cifar.html
(``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) unpack to::

    cifar-10-batches-py/   data_batch_1 ... data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Each batch is a Python 2 pickle of a dict: ``data``, a ``uint8`` array of shape ``(N, 3072)`` (one
32x32 image a row: the 1024 red, then green, then blue values, row-major), and the labels, a list of
``N`` ints (``labels`` for CIFAR-10; ``fine_labels`` (100 classes) and ``coarse_labels`` (20
superclasses) for CIFAR-100). The meta files name the classes (``label_names``; ``fine_label_names``,
``coarse_label_names``). 50,000 training and 10,000 test images.

The pickles are read with :func:`litzoo.framework.data.safe_pickle.load_pickle`, which builds only
Python containers and numpy arrays: a file that asks for anything else (a pickle can name any
callable, ``os.system`` included) is refused in one line before anything runs. Nothing is ever
downloaded.

The augmentation is the one of the CIFAR experiments of ResNet, ACNet, DBB, ResRep and GSM (the
official ``data_factory.py``: ``Pad(4)``, ``RandomCrop(32)``, ``RandomHorizontalFlip()``), written
with torch ops and applied to training items only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from litzoo.framework.data.safe_pickle import load_pickle
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.transforms import Normalize
from litzoo.framework.errors import LitzooError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (3, 32, 32)

#: Per-channel mean and standard deviation of the 50,000 training images' pixels in [0, 1].
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def pad_crop_flip(image: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """The standard CIFAR augmentation of one ``(C, H, W)`` image: zero-pad ``padding`` pixels on each
    side, take a random ``H x W`` crop, flip it left-right with probability 1/2.

    Draws from ``generator``, else from torch's global RNG (seeded per DataLoader worker), as
    torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``, which pad with 0 before
    normalisation: the border is black.
    """
    height, width = image.shape[-2:]
    padded = F.pad(image, (padding, padding, padding, padding))
    top, left = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,), generator=generator))
    crop = padded[..., top : top + height, left : left + width]
    if torch.rand((), generator=generator) < 0.5:
        crop = crop.flip(-1)
    return crop


class CIFARImages(Dataset):
    """In-memory ``uint8`` CIFAR images served as ``{"image": (3, 32, 32) float, "label": long}`` items.

    Args:
        images: ``(N, 3, 32, 32)`` ``uint8`` tensor.
        labels: ``(N,)`` ``long`` tensor.
        normalize: applied to each image scaled to [0, 1].
        augment: pad 4 / random crop / horizontal flip (:func:`pad_crop_flip`) before normalising.
    """

    def __init__(self, images: Tensor, labels: Tensor, normalize: Normalize, augment: bool = False) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.normalize = normalize
        self.augment = augment

    @property
    def targets(self) -> list[int]:
        """The label of every image, in order."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = self.images[index]
        if self.augment:
            image = pad_crop_flip(image)  # on uint8: the zero border is black, as torchvision pads the PIL image
        return {"image": self.normalize(image.float().div_(255.0)), "label": self.labels[index]}


def _field(batch: dict, key: str) -> Any:
    # Python 2 `str` keys decode to `str` with latin1; a batch re-pickled by Python 3 may have `bytes` keys
    return batch[key] if key in batch else batch.get(key.encode("latin1"))


class _CIFARDataModule(SplitsDataModule):
    """What CIFAR-10 and CIFAR-100 share: finding the folder, reading and checking the pickles, the
    validation split, normalisation and augmentation. The subclasses name their files and labels."""

    name: str = "CIFAR"
    folder: str = ""  # the folder the archive unpacks to
    archive: str = ""
    train_files: tuple[str, ...] = ()
    test_file: str = ""
    meta_file: str = ""
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    label_key: str = "labels"  # the key of the labels in a data batch
    names_key: str = "label_names"  # the key of the class names in the meta file
    num_classes: int = 10
    in_channels = 3

    def __init__(
        self,
        root: str | None,
        batch_size: int,
        val_fraction: float,
        split_seed: int,
        normalization: Literal["standard", "train"],
        augment: bool,
        num_workers: int,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if root is None:
            raise LitzooError(f"{type(self).__name__} needs data.root: the folder holding {self.folder}/ (unpack {self.archive}, the "
                              f"'{self.name} python version' of {CIFAR_URL}); set it with --data.init_args.root <folder>")  # fmt: skip
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if normalization not in ("standard", "train"):
            raise ValueError(f"normalization must be 'standard' or 'train', got {normalization!r}")
        self.root = Path(root).expanduser()
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.normalization, self.augment = normalization, augment
        self.data_dir = self._find_folder()  # fail now, not after the model is built, when the folder is not there
        self._normalize: Normalize | None = None
        self._class_names: list[str] | None = None

    # --- the files -------------------------------------------------------------------------------

    def _find_folder(self) -> Path:
        """``root/<folder>`` or ``root`` itself, whichever holds the files."""
        expected = f"expected the folder holding {self.folder}/ (unpack {self.archive} from {CIFAR_URL} there)"
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise LitzooError(f"{self.name} root '{self.root}' {what}: {expected}")
        for candidate in (self.root / self.folder, self.root):
            if (candidate / self.train_files[0]).is_file() or (candidate / self.test_file).is_file():
                return candidate
        raise LitzooError(f"{self.name} root '{self.root}' holds neither {self.folder}/ nor its files "
                          f"({', '.join(self._file_names())}): {expected}")  # fmt: skip

    def _file_names(self) -> list[str]:
        return [*self.train_files, self.test_file, self.meta_file]

    def _path(self, name: str) -> Path:
        path = self.data_dir / name
        if not path.is_file():
            raise LitzooError(f"missing {self.name} file '{path}': the python version holds {', '.join(self._file_names())}")
        return path

    def prepare_data(self) -> None:
        """Checks that every file of the python version is there; never downloads."""
        for name in self._file_names():
            self._path(name)

    def read_batch(self, name: str) -> tuple[Tensor, Tensor]:
        """``(images (N, 3, 32, 32) uint8, labels (N,) long)`` of the batch file ``name``, checked."""
        path = self._path(name)
        batch = load_pickle(path)
        if not isinstance(batch, dict):
            raise LitzooError(f"'{path}' is not a {self.name} batch: expected a dict with 'data' and '{self.label_key}', got {type(batch).__name__}")
        data, labels = _field(batch, "data"), _field(batch, self.label_key)
        for key, value in (("data", data), (self.label_key, labels)):
            if value is None:
                raise LitzooError(f"'{path}' is not a {self.name} batch: no '{key}' entry (found {', '.join(map(repr, list(batch)[:10]))})")
        pixels = int(np.prod(IMAGE_SHAPE))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels or len(data) == 0:
            got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise LitzooError(f"'{path}': 'data' must be a uint8 array of shape (N, {pixels}) with N >= 1 (one 32x32 RGB image a row), got {got}")
        try:
            labels = np.asarray(labels)
        except (TypeError, ValueError) as err:  # ragged lists and the like
            raise LitzooError(f"'{path}': '{self.label_key}' must be a list of ints ({err})") from err
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise LitzooError(f"'{path}': '{self.label_key}' must be a list of ints, got {labels.dtype} values of shape {labels.shape}")
        if len(labels) != len(data):
            raise LitzooError(f"'{path}': {len(data)} images but {len(labels)} labels in '{self.label_key}'")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            bad = int(labels.min() if labels.min() < 0 else labels.max())
            raise LitzooError(f"'{path}': label {bad} in '{self.label_key}' is outside 0..{self.num_classes - 1}")
        images = torch.from_numpy(np.ascontiguousarray(data)).reshape(len(data), *IMAGE_SHAPE)
        return images, torch.from_numpy(labels.astype(np.int64))

    def read_batches(self, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        """The batches ``names`` read and concatenated in order."""
        parts = [self.read_batch(name) for name in names]
        return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])

    @property
    def class_names(self) -> list[str]:
        """The class names of the meta file; label ``i`` is ``class_names[i]``."""
        if self._class_names is None:
            path = self._path(self.meta_file)
            meta = load_pickle(path)
            names = _field(meta, self.names_key) if isinstance(meta, dict) else None
            if not isinstance(names, list) or len(names) != self.num_classes or not all(isinstance(n, (str, bytes)) for n in names):
                raise LitzooError(f"'{path}' is not a {self.name} meta file: expected '{self.names_key}', a list of {self.num_classes} names")
            self._class_names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
        return list(self._class_names)

    @property
    def classes(self) -> list[str]:
        """The class names (the name ImageFolderDataModule uses)."""
        return self.class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, for FLOPs counting and export."""
        return IMAGE_SHAPE

    # --- the splits ------------------------------------------------------------------------------

    def split_indices(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(train, val)`` indices into the training batches: ``round(val_fraction * N)`` images held out,
        stratified (each class in proportion to its size) and drawn with ``split_seed`` only."""
        count = len(labels)
        num_val = round(self.val_fraction * count)
        if not 0 < num_val < count:
            raise LitzooError(f"val_fraction {self.val_fraction:g} of the {count} training images of '{self.data_dir}' leaves "
                              f"{num_val} for validation and {count - num_val} for training: both need at least one")  # fmt: skip
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(count, generator=generator)
        order = order[torch.argsort(labels[order], stable=True)]  # grouped by class, random within each class
        sizes = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(sizes, 0) - sizes
        grouped = labels[order]
        rank = torch.arange(count) - starts[grouped]
        # Every class's k-th image sits at the fraction (k + 1/2) / size of its class: the first num_val
        # by that fraction are the classes in proportion; ties between classes are broken at random.
        position = (rank + 0.5) / sizes[grouped]
        shuffle = torch.randperm(count, generator=generator)
        val = order[shuffle[torch.argsort(position[shuffle], stable=True)][:num_val]]
        held_out = torch.zeros(count, dtype=torch.bool)
        held_out[val] = True
        return torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten()

    def normalizer(self, train_images: Tensor | None) -> Normalize:
        """The standard statistics, or the per-channel mean and std of ``train_images``' pixels in [0, 1]."""
        if self._normalize is None:
            if self.normalization == "standard":
                self._normalize = Normalize(self.mean, self.std)
            else:
                if train_images is None:  # the test split alone: its statistics are the training split's
                    images, labels = self.read_batches(self.train_files)
                    train_images = images[self.split_indices(labels)[0]]
                self._normalize = Normalize(*channel_statistics(train_images))
        return self._normalize

    def build_datasets(self, split: str) -> dict[str, Dataset]:
        """``train`` and ``val`` together (one seeded split of the training batches), ``test`` alone."""
        if split == "test":
            images, labels = self.read_batches((self.test_file,))
            return {"test": CIFARImages(images, labels, self.normalizer(None))}
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        images, labels = self.read_batches(self.train_files)
        train, val = self.split_indices(labels)
        normalize = self.normalizer(images[train])
        return {
            "train": CIFARImages(images[train], labels[train], normalize, augment=self.augment),
            "val": CIFARImages(images[val], labels[val], normalize),
        }


def channel_statistics(images: Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of ``(N, C, H, W)`` ``uint8`` images scaled to [0, 1],
    exact (pixel-value histograms), in chunks so that no float copy of the whole set is made."""
    channels = images.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].transpose(0, 1).reshape(channels, -1).long()
        counts += torch.zeros(channels, 256, dtype=torch.float64).scatter_add_(1, part, torch.ones_like(part, dtype=torch.float64))
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / total
    return mean.tolist(), var.sqrt().clamp_min(1e-12).tolist()


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 from ``cifar-10-batches-py/`` (the python version as distributed), 10 classes, dict batches.

    Batches are ``{"image": (B, 3, 32, 32) float, "label": (B,) long}``. ``val_fraction`` of the 50,000
    training images (stratified by class, fixed by ``split_seed``, the same for every run and DDP rank) are
    held out for validation; ``test_batch`` is the test split. Pixels are scaled to [0, 1] and normalised
    per channel with the standard CIFAR-10 statistics (``normalization="standard"``) or those of the
    training split (``"train"``). Training images are augmented (zero-pad 4, random 32x32 crop,
    horizontal flip; ``augment``); validation and test images never are.

    Args:
        root: the folder holding ``cifar-10-batches-py/`` (or that folder itself). Required; there is no
            download: get ``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html.
        batch_size: samples per batch (per process under DDP).
        val_fraction: fraction of the training images held out for validation, in (0, 1).
        split_seed: seed of the validation split (independent of ``seed_everything``).
        normalization: ``"standard"`` (mean 0.4914, 0.4822, 0.4465; std 0.2470, 0.2435, 0.2616) or
            ``"train"`` (the training split's own per-channel statistics).
        augment: the standard augmentation on training images.
        num_workers: DataLoader worker processes (the images are in memory).

    Raises:
        LitzooError: one line naming the file or folder: ``root`` not given (here, with where to get the
            data), the folder or a batch missing, a pickle that asks for anything but containers and
            numpy arrays, a corrupt pickle, a wrong shape / dtype, a label out of range.
    """

    name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    meta_file = "batches.meta"
    mean, std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        normalization: Literal["standard", "train"] = "standard",
        augment: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(root, batch_size, val_fraction, split_seed, normalization, augment, num_workers)
        self.save_hyperparameters()



class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 from ``cifar-100-python/`` (the python version as distributed), 100 fine or 20 coarse classes.

    As :class:`CIFAR10DataModule` otherwise: ``{"image": (B, 3, 32, 32) float, "label": (B,) long}``,
    a stratified seeded validation split of ``train``, ``test`` as the test split, standard (mean
    0.5071, 0.4865, 0.4409; std 0.2673, 0.2564, 0.2762) or training-split normalisation, the standard
    augmentation on training images only.

    Args:
        root: the folder holding ``cifar-100-python/`` (or that folder itself). Required; there is no
            download: get ``cifar-100-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html.
        labels: ``"fine"`` (100 classes, ``fine_labels``) or ``"coarse"`` (20 superclasses, ``coarse_labels``).
        batch_size: samples per batch (per process under DDP).
        val_fraction: fraction of the training images held out for validation, in (0, 1).
        split_seed: seed of the validation split (independent of ``seed_everything``).
        normalization: ``"standard"`` or ``"train"`` (the training split's own per-channel statistics).
        augment: the standard augmentation on training images.
        num_workers: DataLoader worker processes (the images are in memory).

    Raises:
        LitzooError: as :class:`CIFAR10DataModule`.
    """

    name = "CIFAR-100"
    folder = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    train_files = ("train",)
    test_file = "test"
    meta_file = "meta"
    mean, std = CIFAR100_MEAN, CIFAR100_STD

    def __init__(
        self,
        root: str | None = None,
        labels: Literal["fine", "coarse"] = "fine",
        batch_size: int = 128,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        normalization: Literal["standard", "train"] = "standard",
        augment: bool = True,
        num_workers: int = 0,
    ) -> None:
        if labels not in ("fine", "coarse"):
            raise ValueError(f"labels must be 'fine' (100 classes) or 'coarse' (20 superclasses), got {labels!r}")
        self.labels = labels
        self.num_classes = 100 if labels == "fine" else 20
        self.label_key, self.names_key = f"{labels}_labels", f"{labels}_label_names"
        super().__init__(root, batch_size, val_fraction, split_seed, normalization, augment, num_workers)
        self.save_hyperparameters()
