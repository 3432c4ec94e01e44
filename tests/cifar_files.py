"""Small CIFAR folders in the exact on-disk format of the python version, for the tests.

The distributed batches are Python 2 ``cPickle`` files, protocol 2: every ``str`` (dict keys, file names,
numpy's dtype codes and raw array bytes) is a Python 2 byte string (``SHORT_BINSTRING`` / ``BINSTRING``
opcodes, not Python 3's ``BINUNICODE`` / ``_codecs.encode``), and arrays are rebuilt through
``numpy.core.multiarray._reconstruct``. :func:`write_py2_pickle` writes that, so the reader is tested on
what users have on disk, not on what Python 3 would write.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")  # the numpy 1 module names of the real files
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def write_py2_pickle(path: Path, obj: Any) -> Path:
    """``obj`` pickled as Python 2's cPickle would (protocol 2, byte strings)."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def image_rows(labels: list[int], seed: int) -> np.ndarray:
    """``(N, 3072)`` uint8 rows of random noise; at pixel (0, 0) the red value is the image's label, the green
    value its index in the batch and the blue value ``seed``, so a test can tell which image it got."""
    rows = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    rows[:, 0] = labels
    rows[:, 1024] = np.arange(len(labels))
    rows[:, 2048] = seed
    return rows


def write_cifar10(root: Path, per_batch: int = 6, test_size: int = 5) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches of ``per_batch`` images, a test batch and the meta file."""
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(per_batch)]
        write_py2_pickle(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels, b"data": image_rows(labels, seed=i),
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
        })  # fmt: skip
    test_labels = [j % 10 for j in range(test_size)]
    write_py2_pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels, b"data": image_rows(test_labels, 9),
                                             b"filenames": [f"test_{j}.png".encode() for j in range(test_size)]})  # fmt: skip
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_py2_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072})
    return folder


def write_cifar100(root: Path, train_size: int = 30, test_size: int = 10) -> Path:
    """``root/cifar-100-python`` with ``train``, ``test`` and ``meta``; fine label ``f`` has coarse label ``f // 5``."""
    folder = root / "cifar-100-python"
    for name, size, seed in (("train", train_size, 1), ("test", test_size, 2)):
        fine = [(7 * j) % 100 for j in range(size)]
        write_py2_pickle(folder / name, {
            b"filenames": [f"{name}_{j}.png".encode() for j in range(size)], b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine], b"data": image_rows(fine, seed),
        })  # fmt: skip
    write_py2_pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                       b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})  # fmt: skip
    return folder
