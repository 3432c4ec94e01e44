"""Data sets laid out as ``root/{train,val,test}/<class>/<files>`` (torchvision's ImageFolder layout): the
reader (:class:`ClassFolders`, standard library only) and the DataModule shell (:class:`ClassFolderDataModule`)
that the image and audio folder DataModules share; each of them only decodes its files.

Classes are the sorted sub-folder names of ``root/train``; ``val/`` and ``test/`` may only hold classes
that ``train/`` has. Hidden files and folders are skipped, files in nested folders count, symlinks are
followed. Every problem is one :class:`LitzooError` line naming the folder.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.errors import LitzooError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``split_dir`` (hidden folders are skipped)."""
    try:
        entries = os.listdir(split_dir)
    except OSError as err:
        raise LitzooError(f"cannot list folder '{split_dir}': {err.strerror or err}") from err
    return sorted(name for name in entries if not name.startswith(".") and (split_dir / name).is_dir())


def files_with_suffix(class_dir: Path, suffixes: Sequence[str]) -> list[Path]:
    """Sorted files under ``class_dir`` (sub-folders included) whose lower-cased name ends in ``suffixes``."""
    suffixes = tuple(s.lower() for s in suffixes)
    files = []
    for folder, dirs, names in os.walk(class_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(folder) / n for n in sorted(names) if not n.startswith(".") and n.lower().endswith(suffixes))
    return files


class ClassFolders:
    """The class-folder tree at ``root`` holding ``kind`` files (``"image"``, ``"audio"``) with ``suffixes``."""

    def __init__(self, root: str | Path, kind: str, suffixes: Sequence[str]) -> None:
        self.root = Path(root).expanduser()
        self.kind, self.suffixes = kind, tuple(suffixes)
        self._classes: list[str] | None = None

    @property
    def holding(self) -> str:
        return f"{'/'.join(self.suffixes)} files"

    def split_dir(self, split: str) -> Path:
        """``root/<split>``, checked to exist (``root`` first, so the message names what is missing)."""
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise LitzooError(f"{self.kind} folder root '{self.root}' {what}: expected a folder holding train/ (and optionally val/, test/)")
        split_dir = self.root / split
        if not split_dir.is_dir():
            need = "required" if split == "train" else f"needed for the {SPLIT_NAMES[split]} split"
            raise LitzooError(f"missing folder '{split_dir}' ({need}): expected one sub-folder per class holding {self.holding}")
        return split_dir

    def has_split(self, split: str) -> bool:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return (self.root / split).is_dir()

    @property
    def classes(self) -> list[str]:
        """Sorted sub-folder names of ``root/train``; label ``i`` is ``classes[i]``."""
        if self._classes is None:
            train_dir = self.split_dir("train")
            classes = class_dirs(train_dir)
            if not classes:
                raise LitzooError(f"no class folders in '{train_dir}': expected one sub-folder per class holding {self.holding}")
            self._classes = classes
        return list(self._classes)

    def samples(self, split: str) -> list[tuple[Path, int]]:
        """``(file, label)`` of every file of ``split``; a training class without files is an error."""
        split_dir = self.split_dir(split)
        index = {name: i for i, name in enumerate(self.classes)}
        found = class_dirs(split_dir)
        if not found:
            raise LitzooError(f"no class folders in '{split_dir}': expected one sub-folder per class holding {self.holding}")
        samples: list[tuple[Path, int]] = []
        for name in found:
            if name not in index:
                known = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
                raise LitzooError(f"class folder '{split_dir / name}' is not a class of '{split_dir.parent / 'train'}' (classes: {known}); "
                                  "val/ and test/ may only hold classes that train/ has")  # fmt: skip
            files = files_with_suffix(split_dir / name, self.suffixes)
            if not files and split == "train":
                raise LitzooError(f"class folder '{split_dir / name}' holds no {self.kind}s: expected {self.holding}")
            samples.extend((path, index[name]) for path in files)
        if not samples:
            raise LitzooError(f"no {self.kind}s in the class folders of '{split_dir}': expected {self.holding}")
        return samples


class ClassFolderDataModule(SplitsDataModule, abc.ABC):
    """The DataModule shell of a class-folder tree ``root/{train,val,test}/<class_name>/*<suffix>``.

    ``root/train`` is required (checked here, so that a wrong path fails before a model is built) and defines
    the classes: its sorted sub-folder names, label ``i`` being ``classes[i]``. ``root/val`` and ``root/test``
    are optional. Without ``val/``, ``fit`` trains without validation; asking for a split that is not on disk
    otherwise (``validate``, ``test``, ``predict``) raises the :class:`LitzooError` naming the missing folder.
    Nothing is ever downloaded.

    A subclass checks its own options, calls ``super().__init__(root, kind, suffixes, batch_size, num_workers)``
    and implements :meth:`file_dataset`: the ``(path, label)`` samples of a split → its dataset.

    Args:
        root: folder holding ``train/`` (and optionally ``val/``, ``test/``).
        kind: what the files are, for messages (``"image"``, ``"audio clip"``).
        suffixes: file name endings read (compared case-insensitively); other files are ignored.
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes that read and decode the files.

    Raises:
        LitzooError: ``root`` or ``root/train`` missing (here); a split without class folders or files, or
            with a class unknown to ``train`` (when the split is set up).
    """

    def __init__(self, root: str | Path, kind: str, suffixes: Sequence[str], batch_size: int, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root = Path(root).expanduser()
        self.folders = ClassFolders(self.root, kind, suffixes)
        self.folders.split_dir("train")  # fail now, not after the model is built, when the tree is not there

    @property
    def classes(self) -> list[str]:
        """Class names, the sorted sub-folder names of ``root/train``; label ``i`` is ``classes[i]``."""
        return self.folders.classes

    @property
    def num_classes(self) -> int:
        """Number of classes (from the folder listing of ``root/train``; no file is opened)."""
        return len(self.classes)

    def has_split(self, split: str) -> bool:
        """Whether ``root/<split>`` exists (``split`` is ``"train"``, ``"val"`` or ``"test"``)."""
        return self.folders.has_split(split)

    def skips_missing_val(self) -> bool:
        # Validation during fit is optional; `validate` without val/ names the missing folder.
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.state.fn == "fit"

    def prepare_data(self) -> None:
        """Checks that the tree is there; never downloads."""
        self.folders.split_dir("train")

    @abc.abstractmethod
    def file_dataset(self, samples: list[tuple[Path, int]], split: str) -> Dataset:
        """The dataset of ``split`` from its ``(path, label)`` samples; ``split`` says whether to augment."""

    def build_dataset(self, split: str) -> Dataset:
        """Lists the files of ``root/<split>`` (none is opened) and hands them to :meth:`file_dataset`."""
        return self.file_dataset(self.folders.samples(split), split)

    def _scan(self, split: str) -> Dataset:
        # the name the folder DataModules had for build_dataset
        return self.build_dataset(split)
