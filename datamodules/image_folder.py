"""A user's own images in the ImageFolder layout: ``root/{train,val,test}/<class_name>/<image>``.

The layout of ImageNet and of most classification data sets as they sit on disk::

    root/
      train/  cat/0001.png  cat/0002.jpg  dog/0001.jpeg ...   (required)
      val/    cat/...       dog/...                          (optional)
      test/   cat/...       dog/...                          (optional)

Class names are the sorted sub-folder names of ``root/train``; label ``i`` is ``classes[i]``.
Images are read with Pillow when an item is loaded, so the tree may be larger than memory.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from litzoo.framework.data import Normalize, make_loader, resize_images
from litzoo.framework.data.class_folders import SPLITS, ClassFolders
from litzoo.framework.errors import LitzooError

#: File name endings read as images (compared case-insensitively); other files are ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")



def _pil_to_tensor(image: Image.Image) -> Tensor:
    """``(C, H, W)`` float tensor in [0, 1] from an ``L`` or ``RGB`` Pillow image."""
    array = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    array = array.unsqueeze(0) if array.dim() == 2 else array.permute(2, 0, 1)
    return array.float().div_(255.0)


class ImageFileDataset(Dataset):
    """Image files with integer labels, read with Pillow on access: ``{"image", "label"}`` items.

    Args:
        samples: ``(path, label)`` pairs.
        mode: Pillow mode the images are converted to, ``"L"`` (1 channel) or ``"RGB"`` (3 channels).
        image_size: side of the square images served (bilinear resize with antialiasing).
        normalize: applied to each ``(C, H, W)`` image in [0, 1]; ``None`` keeps [0, 1].

    Raises:
        LitzooError: on access, when a file cannot be read or decoded; the message names the file.
    """

    def __init__(self, samples: list[tuple[Path, int]], mode: str, image_size: int, normalize: Normalize | None = None) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self.samples = list(samples)
        self.mode = mode
        self.image_size = image_size
        self.normalize = normalize

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> Tensor:
        """The image at ``path`` as a ``(C, image_size, image_size)`` float tensor, normalised."""
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)  # decodes the whole file, so truncation shows here
        except Exception as err:  # Pillow signals broken files with many types (OSError, SyntaxError, ...)
            reason = " ".join(str(err).replace(f" {str(path)!r}", "").split()) or type(err).__name__  # the path is said once
            raise LitzooError(f"cannot read image '{path}': {reason}") from err
        tensor = resize_images(_pil_to_tensor(image), self.image_size)
        return self.normalize(tensor) if self.normalize is not None else tensor

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        return {"image": self.load(path), "label": torch.tensor(label, dtype=torch.long)}


class ImageFolderDataModule(L.LightningDataModule):
    """A user's own classification images in ``root/{train,val,test}/<class_name>/*.png|jpg|jpeg|bmp``.

    Batches are ``{"image": (B, C, S, S) float, "label": (B,) long}``. Each image is read with
    Pillow, converted to grey levels (``channels=1``) or RGB (``channels=3``), scaled to [0, 1],
    resized to ``image_size`` x ``image_size`` (bilinear, antialiased when shrinking), then
    normalised per channel with ``mean`` and ``std``.

    ``root/train`` is required and defines the classes: its sorted sub-folder names, label ``i``
    being ``classes[i]``. ``root/val`` and ``root/test`` are optional and may only hold classes of
    ``train``. Without ``val``, ``fit`` trains without validation; asking for a split that is not
    on disk otherwise (``validate``, ``test``, ``predict``) raises a :class:`LitzooError`.
    Image files are found in class folders and their sub-folders; other files and hidden entries
    (names starting with ``.``) are ignored. Nothing is ever downloaded.

    Args:
        root: folder holding ``train/`` (and optionally ``val/``, ``test/``).
        image_size: side of the square images fed to the model.
        channels: 1 (images converted to grey levels) or 3 (images converted to RGB).
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes that read and decode the images.
        mean: per-channel mean subtracted from [0, 1] pixels (default 0.5 for each channel).
        std: per-channel standard deviation divided by (default 0.5 for each channel).

    Raises:
        LitzooError: when ``root`` or ``root/train`` is missing (here), when a split has no class
            folder, no image, or a class unknown to ``train`` (in ``setup``), and when an image
            cannot be read (when it is loaded, naming the file).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__()
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey levels) or 3 (RGB), got {channels}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        mean = [0.5] * channels if mean is None else list(mean)
        std = [0.5] * channels if std is None else list(std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels}), got {mean} and {std}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.in_channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.normalize = Normalize(mean, std)  # also checks that std > 0
        self.datasets: dict[str, ImageFileDataset] = {}
        self.folders = ClassFolders(self.root, "image", IMAGE_EXTENSIONS)
        self._split_dir("train")  # fail now, not after the model is built, when the tree is not there

    # --- what a model needs to know ------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names, the sorted sub-folder names of ``root/train``; label ``i`` is ``classes[i]``."""
        return self.folders.classes

    @property
    def num_classes(self) -> int:
        """Number of classes (from the folder listing of ``root/train``; no image is opened)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, for FLOPs counting and export."""
        return (self.in_channels, self.image_size, self.image_size)

    # --- finding the files -----------------------------------------------------------------------

    def _split_dir(self, split: str) -> Path:
        """``root/<split>``, checked to exist (``root`` first, so the message names what is missing)."""
        return self.folders.split_dir(split)

    def has_split(self, split: str) -> bool:
        """Whether ``root/<split>`` exists (``split`` is ``"train"``, ``"val"`` or ``"test"``)."""
        return self.folders.has_split(split)

    def _scan(self, split: str) -> ImageFileDataset:
        samples = self.folders.samples(split)
        mode = "L" if self.in_channels == 1 else "RGB"
        return ImageFileDataset(samples, mode=mode, image_size=self.image_size, normalize=self.normalize)

    # --- Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Checks that the tree is there; never downloads."""
        self._split_dir("train")

    def setup(self, stage: str | None = None) -> None:
        """Lists the image files of the splits ``stage`` needs (all present splits when ``None``)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage or "", SPLITS)
        for split in needed:
            if split not in self.datasets and (split == "train" or self.has_split(split)):
                self.datasets[split] = self._scan(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self._split_dir(split)  # a missing folder raises its own message
            self.datasets[split] = self._scan(split)
        return make_loader(self.datasets[split], self.batch_size, shuffle, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # Validation during fit is optional: without val/, an empty list makes Lightning skip it.
        if not self.has_split("val") and self._fitting():
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _fitting(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.state.fn == "fit"


def _extensions() -> str:
    return "/".join(IMAGE_EXTENSIONS)
