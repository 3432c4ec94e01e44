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

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from litzoo.framework.data.class_folders import ClassFolderDataModule
from litzoo.framework.data.transforms import Normalize, check_image_options, resize_images
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


class ImageFolderDataModule(ClassFolderDataModule):
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
    (names starting with ``.``) are ignored. Nothing is ever downloaded. The folder plumbing is
    :class:`litzoo.framework.data.class_folders.ClassFolderDataModule`'s; this class decodes the images.

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
        mean, std = check_image_options(image_size, channels, mean, std)
        super().__init__(root, "image", IMAGE_EXTENSIONS, batch_size, num_workers)
        self.save_hyperparameters()  # with mean and std filled in
        self.image_size = image_size
        self.in_channels = channels
        self.normalize = Normalize(mean, std)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, for FLOPs counting and export."""
        return (self.in_channels, self.image_size, self.image_size)

    def file_dataset(self, samples: list[tuple[Path, int]], split: str) -> ImageFileDataset:
        mode = "L" if self.in_channels == 1 else "RGB"
        return ImageFileDataset(samples, mode=mode, image_size=self.image_size, normalize=self.normalize)
