"""Data sets laid out as ``root/{train,val,test}/<class>/<files>`` (torchvision's ImageFolder layout),
read with the standard library: the image and audio folder DataModules share it.

Classes are the sorted sub-folder names of ``root/train``; ``val/`` and ``test/`` may only hold classes
that ``train/`` has. Hidden files and folders are skipped, files in nested folders count, symlinks are
followed. Every problem is one :class:`LitzooError` line naming the folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

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
