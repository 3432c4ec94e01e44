"""scikit-learn's digits: 1797 real 8x8 grey-level images of handwritten digits, 10 classes.

The data ships inside scikit-learn (no download), which makes it litzoo's default data for
demos and tests. Source: UCI "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak).
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from litzoo.framework.data import DictTensorDataset, Normalize, SplitsDataModule, check_image_options, resize_images


class DigitsDataModule(SplitsDataModule):
    """scikit-learn's 1797 8x8 handwritten digits, stratified train/val/test split, dict batches.

    Batches are ``{"image": (B, 1, S, S) float, "label": (B,) long}``. Pixels (0..16) are scaled to
    [0, 1], optionally resized to ``image_size`` (bilinear), then normalised with the training
    split's mean and std. The split is stratified by class and fixed by ``split_seed``, so every
    run and every DDP rank sees the same partition.

    Args:
        batch_size: samples per batch (per process under DDP).
        image_size: side of the square images fed to the model (8 = native resolution).
        val_fraction: fraction of all images held out for validation.
        test_fraction: fraction of all images held out for testing.
        split_seed: seed of the stratified split (independent of ``seed_everything``).
        normalize: standardise with the training split's mean/std (else keep [0, 1]).
        num_workers: DataLoader worker processes (the data is in memory; 0 is fastest here).
    """

    num_classes = 10
    in_channels = 1
    num_images = 1797

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 8,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        normalize: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_image_options(image_size, self.in_channels)  # normalised with training statistics, not mean / std options
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be in (0, 1) and sum below 1, got {val_fraction} and {test_fraction}")
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction), ("training", 1 - val_fraction - test_fraction)):
            if round(fraction * self.num_images) < self.num_classes:
                raise ValueError(f"{name} {fraction:g} leaves fewer than {self.num_classes} of {self.num_images} images in a split: one per class is the minimum")
        self.save_hyperparameters()
        self.image_size = image_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, for FLOPs counting and export."""
        return (self.in_channels, self.image_size, self.image_size)

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        """All three splits at once: one stratified draw, normalised with the training split's statistics."""
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        hp = self.hparams
        index = torch.arange(len(labels)).numpy()
        train_val, test = train_test_split(index, test_size=hp.test_fraction, stratify=labels.numpy(), random_state=hp.split_seed)
        val_share = hp.val_fraction / (1.0 - hp.test_fraction)
        train, val = train_test_split(train_val, test_size=val_share, stratify=labels.numpy()[train_val], random_state=hp.split_seed)
        images = resize_images(images, self.image_size)
        if hp.normalize:
            mean, std = images[train].mean().item(), images[train].std().item()
            images = Normalize([mean], [std])(images)
        datasets = {}
        for name, rows in (("train", train), ("val", val), ("test", test)):
            rows = torch.as_tensor(rows)
            datasets[name] = DictTensorDataset(image=images[rows], label=labels[rows])
        return datasets
