"""DigitsDataModule: scikit-learn's 1797 digits, stratified and reproducible splits, dict batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from litzoo.datamodules.digits import DigitsDataModule

DIGITS = load_digits()
TOTAL_PER_CLASS = np.bincount(DIGITS.target, minlength=10)


def make(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def images_of(dm: DigitsDataModule, split: str) -> torch.Tensor:
    return dm.datasets[split].tensors["image"]


def labels_of(dm: DigitsDataModule, split: str) -> np.ndarray:
    return dm.datasets[split].tensors["label"].numpy()


def image_keys(images: torch.Tensor) -> Counter:
    """Multiset of images, as bytes of their 0..16 grey levels (the set has a few duplicates)."""
    levels = torch.round(images * 16).to(torch.uint8).numpy()
    return Counter(image.tobytes() for image in levels)


def test_split_sizes():
    dm = make()
    sizes = {split: len(dm.datasets[split]) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == 360  # ceil(20% of 1797)
    assert abs(sizes["val"] - 180) <= 1
    assert sizes["train"] == 1797 - 360 - sizes["val"]


def test_split_is_stratified():
    dm = make()
    for split, fraction, tolerance in (("test", 0.2, 1), ("val", 0.1, 2), ("train", 0.7, 2)):
        counts = np.bincount(labels_of(dm, split), minlength=10)
        assert np.all(np.abs(counts - fraction * TOTAL_PER_CLASS) <= tolerance), (split, counts)


def test_splits_partition_the_data_set():
    dm = make(normalize=False)
    parts = [image_keys(images_of(dm, split)) for split in ("train", "val", "test")]
    # Every image lands in exactly one split: the multisets add up to the whole data set,
    # which also holds with duplicate images (and fails if one image were served twice).
    assert parts[0] + parts[1] + parts[2] == image_keys(torch.tensor(DIGITS.images, dtype=torch.float32) / 16)
    # Labels travel with their images.
    label_of = {}
    for image, label in zip(DIGITS.images, DIGITS.target):
        label_of.setdefault((image.astype(np.uint8).tobytes()), set()).add(int(label))
    for split in ("train", "val", "test"):
        levels = torch.round(images_of(dm, split) * 16).to(torch.uint8).numpy()
        for image, label in zip(levels, labels_of(dm, split)):
            assert int(label) in label_of[image[0].tobytes()]


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    a, b, c = make(split_seed=0, normalize=False), make(split_seed=0, normalize=False), make(split_seed=1, normalize=False)
    for split in ("train", "val", "test"):
        assert torch.equal(images_of(a, split), images_of(b, split))
        assert np.array_equal(labels_of(a, split), labels_of(b, split))
    assert image_keys(images_of(a, "test")) != image_keys(images_of(c, "test"))


def test_normalisation_uses_training_statistics():
    dm = make()
    train = images_of(dm, "train")
    assert abs(train.mean().item()) < 1e-4
    assert abs(train.std().item() - 1.0) < 1e-4
    raw = make(normalize=False)
    assert raw.datasets["train"].tensors["image"].min() == 0.0 and images_of(raw, "train").max() == 1.0
    # Validation images are transformed with the training mean/std, not their own.
    mean, std = images_of(raw, "train").mean(), images_of(raw, "train").std()
    assert torch.allclose(images_of(dm, "val"), (images_of(raw, "val") - mean) / std, atol=1e-5)


def test_image_size_and_batches():
    dm = make(image_size=32, batch_size=16)
    assert dm.input_shape == (1, 32, 32)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (16, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == torch.long
    assert dm.num_classes == 10 and dm.in_channels == 1
    assert sum(len(b["label"]) for b in dm.test_dataloader()) == 360


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"image_size": 0},
        {"val_fraction": 0.0},
        {"test_fraction": 1.0},
        {"val_fraction": 0.5, "test_fraction": 0.5},
        {"val_fraction": -0.1},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        DigitsDataModule(**kwargs)
