"""CIFAR-10 / CIFAR-100 DataModules on small folders written in the python version's exact format (Python 2
protocol-2 pickles, tests/cifar_files.py), and the restricted unpickler that reads them."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import write_cifar10, write_cifar100, write_py2_pickle

from litzoo.datamodules.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR10DataModule, CIFAR100DataModule, pad_crop_flip
from litzoo.framework.data.safe_pickle import load_pickle
from litzoo.framework.data.transforms import Normalize
from litzoo.framework.errors import LitzooError


def raw_batch(path: Path) -> tuple[np.ndarray, list[int], str]:
    """``(images (N, 3, 32, 32) uint8, labels, label key)`` of a file this test wrote (plain pickle: trusted)."""
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    key = "labels" if "labels" in batch else "fine_labels"
    return batch["data"].reshape(-1, 3, 32, 32), batch[key], key


def identity(image: torch.Tensor, normalize: Normalize) -> tuple[int, int, int]:
    """(label, index in its batch, batch seed) planted at pixel (0, 0) of an unaugmented normalised image."""
    pixels = ((image * normalize.std + normalize.mean) * 255).round().to(torch.int64)
    return tuple(pixels[:, 0, 0].tolist())


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- batches, labels, splits -------------------------------------------------------------------------


def test_cifar10_batches_labels_and_split_sizes(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=6, test_size=5)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=4, augment=False)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.long
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10 and dm.in_channels == 3
    assert dm.class_names[:3] == ["airplane", "automobile", "bird"] and len(dm.class_names) == 10
    assert len(dm.datasets["train"]) == 27 and len(dm.datasets["val"]) == 3  # round(0.1 * 30) held out

    # Every training image is in exactly one of train / val, with its own label and pixels, normalised
    # with the standard CIFAR-10 statistics.
    normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    raw = {}
    for i in range(1, 6):
        images, labels, _ = raw_batch(folder / f"data_batch_{i}")
        for j, (image, label) in enumerate(zip(images, labels, strict=True)):
            raw[(label, j, i)] = image
    seen = []
    for split in ("train", "val"):
        for item in dm.datasets[split]:
            key = identity(item["image"], normalize)
            assert item["label"].item() == key[0]
            torch.testing.assert_close(item["image"], normalize(torch.from_numpy(raw[key]).float() / 255), rtol=0, atol=1e-6)
            seen.append(key)
    assert sorted(seen) == sorted(raw)

    dm.setup("test")
    batches = list(dm.test_dataloader())
    test = {key: torch.cat([b[key] for b in batches]) for key in ("image", "label")}
    images, labels, _ = raw_batch(folder / "test_batch")
    assert test["label"].tolist() == labels  # in file order
    torch.testing.assert_close(test["image"], normalize(torch.from_numpy(images).float() / 255), rtol=0, atol=1e-6)


def test_root_may_be_the_batches_folder_itself(tmp_path):
    folder = write_cifar10(tmp_path)
    assert CIFAR10DataModule(str(folder)).data_dir == folder
    assert CIFAR10DataModule(str(tmp_path)).data_dir == folder


def test_validation_split_is_seeded_and_stratified(tmp_path):
    write_cifar10(tmp_path, per_batch=10)  # 50 images, 5 of each class

    def split(seed: int, fraction: float = 0.2) -> tuple[list, list]:
        dm = CIFAR10DataModule(str(tmp_path), val_fraction=fraction, split_seed=seed, augment=False)
        dm.setup("fit")
        ids = {name: sorted(identity(item["image"], Normalize(CIFAR10_MEAN, CIFAR10_STD)) for item in dm.datasets[name]) for name in ("train", "val")}
        return ids["train"], ids["val"]

    train, val = split(0)
    assert len(train) == 40 and len(val) == 10 and not set(train) & set(val)
    assert sorted(label for label, _, _ in val) == list(range(10))  # one of each class: stratified
    assert split(0) == (train, val)  # the seed alone fixes it ...
    torch.manual_seed(123)
    assert split(0) == (train, val)  # ... not the global RNG
    assert split(1)[1] != val
    _, val_30 = split(0, 0.3)
    assert len(val_30) == 15 and sorted(np.bincount([label for label, _, _ in val_30], minlength=10).tolist()) == [1] * 5 + [2] * 5


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = write_cifar100(tmp_path, train_size=30, test_size=10)
    _, fine, _ = raw_batch(folder / "test")
    for labels, num_classes, expected in (("fine", 100, fine), ("coarse", 20, [f // 5 for f in fine])):
        dm = CIFAR100DataModule(str(tmp_path), labels=labels, batch_size=64)
        assert dm.num_classes == num_classes
        assert dm.class_names == [f"{labels}{i}" for i in range(num_classes)]
        dm.setup("test")
        batch = next(iter(dm.test_dataloader()))
        assert batch["label"].tolist() == expected
        assert batch["image"].shape == (10, 3, 32, 32)
        assert dm.datasets["test"].normalize.mean.flatten().tolist() == pytest.approx(CIFAR100_MEAN)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 27 and len(dm.datasets["val"]) == 3
    with pytest.raises(ValueError, match="labels must be 'fine'"):
        CIFAR100DataModule(str(tmp_path), labels="medium")


def test_normalization_with_the_training_split_statistics(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), normalization="train", augment=False)
    dm.setup("fit")
    train = torch.stack([item["image"] for item in dm.datasets["train"]])
    torch.testing.assert_close(train.mean((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(train.std((0, 2, 3), correction=0), torch.ones(3), rtol=0, atol=1e-5)
    dm.setup("test")
    assert dm.datasets["test"].normalize is dm.datasets["train"].normalize  # test uses the training statistics
    alone = CIFAR10DataModule(str(tmp_path), normalization="train")  # test set up alone: the same statistics
    alone.setup("test")
    torch.testing.assert_close(alone.datasets["test"].normalize.mean, dm.datasets["train"].normalize.mean)
    torch.testing.assert_close(alone.datasets["test"].normalize.std, dm.datasets["train"].normalize.std)


# --- augmentation ------------------------------------------------------------------------------------


def crops_and_flips(image: torch.Tensor) -> torch.Tensor:
    """All 9 x 9 x 2 results of zero-pad 4 / crop 32 / optional flip of a (3, 32, 32) image."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = [padded[:, top : top + 32, left : left + 32] for top in range(9) for left in range(9)]
    return torch.stack(crops + [c.flip(-1) for c in crops])


def test_pad_crop_flip_draws_every_crop_and_both_flips():
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32) + 1
    candidates = crops_and_flips(image).flatten(1)
    generator = torch.Generator().manual_seed(0)
    drawn = set()
    for _ in range(600):
        out = pad_crop_flip(image, generator=generator)
        assert out.shape == image.shape
        match = torch.nonzero((candidates == out.flatten()).all(1)).flatten()
        assert len(match) == 1
        drawn.add(int(match))
    assert len(drawn) > 140  # of 162: every offset and both flips occur


def test_augmentation_only_on_training_images(tmp_path):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=100)
    dm.setup("fit")
    dm.setup("test")
    train, normalize = dm.datasets["train"], dm.datasets["train"].normalize
    changed = 0
    for index in range(len(train)):
        original = train.images[index].float() / 255
        candidates = normalize(crops_and_flips(original)).flatten(1)
        first, second = train[index]["image"], train[index]["image"]
        for item in (first, second):
            assert torch.isclose(candidates, item.flatten(), rtol=0, atol=1e-6).all(1).any()
        changed += not torch.equal(first, second)
    assert changed > len(train) // 2  # drawn again at every access
    for name in ("val", "test"):
        dataset = dm.datasets[name]
        for index in range(len(dataset)):
            first, second = dataset[index]["image"], dataset[index]["image"]
            assert torch.equal(first, second)
            torch.testing.assert_close(first, normalize(dataset.images[index].float() / 255))
    plain = CIFAR10DataModule(str(tmp_path), augment=False)
    plain.setup("fit")
    torch.testing.assert_close(plain.datasets["train"][0]["image"], normalize(plain.datasets["train"].images[0].float() / 255))


# --- errors: one line naming the file ----------------------------------------------------------------


def test_missing_root_says_where_to_get_the_data():
    with pytest.raises(LitzooError) as excinfo:
        CIFAR10DataModule()
    message = one_line_error(excinfo)
    assert "CIFAR10DataModule needs data.root" in message and "cifar-10-batches-py/" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "cifar-10-python.tar.gz" in message
    with pytest.raises(LitzooError, match=r"CIFAR100DataModule needs data.root: the folder holding cifar-100-python/ \(unpack cifar-100-python.tar.gz"):
        CIFAR100DataModule()


def test_missing_folder_and_batch(tmp_path):
    with pytest.raises(LitzooError, match=f"CIFAR-10 root '{tmp_path / 'nowhere'}' does not exist"):
        CIFAR10DataModule(str(tmp_path / "nowhere"))
    with pytest.raises(LitzooError) as excinfo:
        CIFAR10DataModule(str(tmp_path))
    assert f"CIFAR-10 root '{tmp_path}' holds neither cifar-10-batches-py/ nor its files (data_batch_1" in one_line_error(excinfo)
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    dm = CIFAR10DataModule(str(tmp_path))
    for step in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(LitzooError) as excinfo:
            step()
        assert one_line_error(excinfo).startswith(f"missing CIFAR-10 file '{folder / 'data_batch_3'}': the python version holds data_batch_1")
    (folder / "test_batch").unlink()
    with pytest.raises(LitzooError, match="missing CIFAR-10 file .*test_batch"):
        CIFAR10DataModule(str(tmp_path)).setup("test")


def _rewrite(path: Path, **changes) -> None:
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    for key, value in changes.items():
        if value is None:
            del batch[key.encode()]
        else:
            batch[key.encode()] = value
    write_py2_pickle(path, batch)


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(data=np.zeros((6, 3000), np.uint8)), r"'data' must be a uint8 array of shape \(N, 3072\) .*got uint8 array of shape \(6, 3000\)"),
        (dict(data=np.zeros((6, 3072), np.float32)), r"'data' must be a uint8 array .*got float32 array of shape \(6, 3072\)"),
        (dict(data=np.zeros((0, 3072), np.uint8)), r"'data' must be a uint8 array .*N >= 1"),
        (dict(data=[1, 2, 3]), r"'data' must be a uint8 array .*got list"),
        (dict(labels=[0, 1, 2]), r"6 images but 3 labels in 'labels'"),
        (dict(labels=[0, 1, 2, 3, 4, 10]), r"label 10 in 'labels' is outside 0\.\.9"),
        (dict(labels=[0, 1, 2, 3, 4, -1]), r"label -1 in 'labels' is outside 0\.\.9"),
        (dict(labels=[0.5] * 6), r"'labels' must be a list of ints, got float64"),
        (dict(labels=None), r"is not a CIFAR-10 batch: no 'labels' entry"),
    ],
)
def test_malformed_batch_is_named(tmp_path, change, expected):
    folder = write_cifar10(tmp_path)
    _rewrite(folder / "data_batch_2", **change)
    with pytest.raises(LitzooError) as excinfo:
        CIFAR10DataModule(str(tmp_path)).setup("fit")
    message = one_line_error(excinfo)
    assert message.startswith(f"'{folder / 'data_batch_2'}'")
    assert re.search(expected, message), message


def test_not_a_dict_and_bad_meta(tmp_path):
    folder = write_cifar10(tmp_path)
    write_py2_pickle(folder / "data_batch_1", [1, 2, 3])
    with pytest.raises(LitzooError, match=r"is not a CIFAR-10 batch: expected a dict with 'data' and 'labels', got list"):
        CIFAR10DataModule(str(tmp_path)).setup("fit")
    write_py2_pickle(folder / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(LitzooError) as excinfo:
        _ = CIFAR10DataModule(str(tmp_path)).class_names
    assert one_line_error(excinfo) == f"'{folder / 'batches.meta'}' is not a CIFAR-10 meta file: expected 'label_names', a list of 10 names"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_pickle_is_named(tmp_path, damage):
    folder = write_cifar10(tmp_path)
    path = folder / "data_batch_4"
    content = path.read_bytes()
    path.write_bytes({"truncated": content[: len(content) // 2], "garbage": b"this is not a pickle at all", "empty": b""}[damage])
    with pytest.raises(LitzooError) as excinfo:
        CIFAR10DataModule(str(tmp_path)).setup("fit")
    assert one_line_error(excinfo).startswith(f"cannot read '{path}': not a valid pickle (")


# --- the restricted unpickler ------------------------------------------------------------------------


class _RunsACommand:
    """Pickles to "call os.system(command)" when loaded: what a malicious CIFAR batch would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def test_malicious_batch_is_refused_without_running_it(tmp_path):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _RunsACommand(f"touch {marker}"), "labels": [0]}, protocol=2)
    (folder / "data_batch_1").write_bytes(payload)
    with pytest.raises(LitzooError) as excinfo:
        CIFAR10DataModule(str(tmp_path)).setup("fit")
    message = one_line_error(excinfo)
    assert message.startswith(f"refusing to unpickle '{folder / 'data_batch_1'}': it asks for '{os.system.__module__}.system'")
    assert not marker.exists()
    # the payload is real: Python's own pickle runs it
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(_Evals(), protocol=0),
    pickle.dumps(_Evals(), protocol=2),
    pickle.dumps(_Evals(), protocol=5),
    b"c__builtin__\neval\n(S'1'\ntR.",  # Python 2 names are refused as written, not translated to builtins first
    b"csubprocess\nPopen\n(S'true'\ntR.",
    b"\x80\x02cnumpy\nndarray\nq\x00.",  # an allowed global alone is fine
], ids=["eval-protocol-0", "eval-protocol-2", "eval-protocol-5", "py2-builtin-eval", "subprocess-popen", "allowed-ndarray"])  # fmt: skip
def test_restricted_unpickler_refuses_every_other_global(tmp_path, payload):
    path = tmp_path / "file.pkl"
    path.write_bytes(payload)
    if payload.endswith(b"ndarray\nq\x00."):
        assert load_pickle(path) is np.ndarray
        return
    with pytest.raises(LitzooError, match=r"^refusing to unpickle '.*file\.pkl': it asks for '(builtins\.eval|__builtin__\.eval|subprocess\.Popen)'"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_pickled_by_python3_load(tmp_path, protocol):
    # a batch re-saved with Python 3 (bytes through _codecs.encode at protocol 2, _frombuffer at 5)
    obj = {"data": np.arange(24, dtype=np.uint8).reshape(2, 12), "labels": [1, 2], "x": np.float64(0.5), b"k": (1.5, None, True)}
    path = tmp_path / "batch.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded["data"], obj["data"])
    assert loaded["labels"] == [1, 2] and loaded["x"] == 0.5 and loaded[b"k"] == (1.5, None, True)


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(LitzooError, match=f"^cannot read '{tmp_path / 'absent'}': No such file"):
        load_pickle(tmp_path / "absent")
