"""ImageFolderDataModule on small trees of real PNG/JPEG/BMP files written with Pillow in tmp_path."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from litzoo.datamodules.image_folder import ImageFolderDataModule
from litzoo.framework.errors import LitzooError, one_line


def write_image(path: Path, value=(128, 128, 128), size=(12, 10), mode="RGB", fmt=None) -> Path:
    """A constant image of ``size`` = (width, height); ``value`` is an int or an RGB tuple."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path, format=fmt)
    return path


def make_tree(root: Path, splits: dict[str, dict[str, int]], value_of=None) -> None:
    """``splits[split][class] = n`` constant PNG images; ``value_of(class)`` gives their grey level."""
    for split, classes in splits.items():
        for name, count in classes.items():
            value = value_of(name) if value_of else 128
            for i in range(count):
                write_image(root / split / name / f"{i}.png", (value, value, value))


def test_batches_are_dicts_of_resized_normalised_images(tmp_path):
    make_tree(tmp_path, {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}, "test": {"dog": 2}})
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, channels=3, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.long
    assert dm.input_shape == (3, 16, 16)
    assert dm.in_channels == 3
    assert len(dm.datasets["train"]) == 5 and len(dm.datasets["val"]) == 2
    dm.setup("test")
    test_batches = list(dm.test_dataloader())
    assert [len(b["label"]) for b in test_batches] == [2]
    assert test_batches[0]["label"].tolist() == [1, 1]  # only "dog" images, label of dog in train


def test_labels_follow_sorted_train_folders(tmp_path):
    # Each class has its own grey level, so an image's content says which folder it came from.
    levels = {"zebra": 30, "ant": 200, "Moose": 110, "bee": 250}
    make_tree(tmp_path, {"train": {"zebra": 2, "ant": 3, "Moose": 1, "bee": 2}}, value_of=levels.get)
    dm = ImageFolderDataModule(str(tmp_path), image_size=4, channels=1, batch_size=100)
    dm.setup("fit")
    assert dm.classes == ["Moose", "ant", "bee", "zebra"]  # plain string sort, as listed on disk
    assert dm.num_classes == 4
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["label"]) == 8
    for image, label in zip(batch["image"], batch["label"]):
        expected = (levels[dm.classes[label]] / 255 - 0.5) / 0.5
        assert torch.allclose(image, torch.full_like(image, expected), atol=1e-5)
    assert sorted(batch["label"].tolist()) == [0, 1, 1, 1, 2, 2, 3, 3]


def test_num_classes_comes_from_the_listing_without_reading_images(tmp_path):
    for name in ("c", "a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "broken.png").write_bytes(b"not an image")
    dm = ImageFolderDataModule(str(tmp_path))
    assert dm.num_classes == 3
    assert dm.classes == ["a", "b", "c"]
    assert dm.datasets == {}  # nothing scanned before setup


def test_grey_and_rgb_conversion_and_normalisation(tmp_path):
    write_image(tmp_path / "train" / "red" / "0.png", (255, 0, 0))
    rgb = ImageFolderDataModule(str(tmp_path), image_size=8, channels=3)
    rgb.setup("fit")
    image = rgb.datasets["train"][0]["image"]
    assert image.shape == (3, 8, 8)
    assert torch.allclose(image[0], torch.ones(8, 8)) and torch.allclose(image[1:], -torch.ones(2, 8, 8))

    grey = ImageFolderDataModule(str(tmp_path), image_size=8, channels=1)
    grey.setup("fit")
    image = grey.datasets["train"][0]["image"]
    assert image.shape == (1, 8, 8) and grey.input_shape == (1, 8, 8)
    luminance = Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0))  # ITU-R 601-2 luma, 76
    assert luminance not in (0, 255)
    assert torch.allclose(image, torch.full((1, 8, 8), (luminance / 255 - 0.5) / 0.5), atol=1e-6)


def test_custom_mean_and_std_per_channel(tmp_path):
    write_image(tmp_path / "train" / "a" / "0.png", (51, 102, 204))  # 0.2, 0.4, 0.8
    dm = ImageFolderDataModule(str(tmp_path), image_size=4, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.1])
    dm.setup("fit")
    image = dm.datasets["train"][0]["image"]
    expected = torch.tensor([(0.2 - 0.1) / 0.5, (0.4 - 0.2) / 0.25, (0.8 - 0.3) / 0.1]).reshape(3, 1, 1).expand(3, 4, 4)
    assert torch.allclose(image, expected, atol=1e-5)


def test_resize_keeps_orientation_of_non_square_images(tmp_path):
    # 10 wide, 20 high: top half white, bottom half black.
    pixels = np.zeros((20, 10, 3), dtype=np.uint8)
    pixels[:10] = 255
    path = tmp_path / "train" / "a" / "0.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=6, mean=[0, 0, 0], std=[1, 1, 1])
    dm.setup("fit")
    image = dm.datasets["train"][0]["image"]
    assert image.shape == (3, 6, 6)
    assert torch.allclose(image[:, 0, :], torch.ones(3, 6), atol=1e-3)  # top row white
    assert torch.allclose(image[:, -1, :], torch.zeros(3, 6), atol=1e-3)  # bottom row black
    assert image.min() >= 0 and image.max() <= 1


def test_reads_jpeg_bmp_and_nested_files_and_ignores_other_files(tmp_path):
    cls = tmp_path / "train" / "a"
    write_image(cls / "0.png")
    write_image(cls / "1.JPG", fmt="JPEG")
    write_image(cls / "2.jpeg", fmt="JPEG")
    write_image(cls / "3.bmp")
    write_image(cls / "sub" / "4.png")
    (cls / "notes.txt").write_text("not an image")
    (cls / ".hidden.png").write_bytes(b"editor junk")
    (tmp_path / "train" / "README.md").write_text("a file next to the class folders is not a class")
    dm = ImageFolderDataModule(str(tmp_path), image_size=5, batch_size=10)
    dm.setup("fit")
    names = sorted(path.name for path, _ in dm.datasets["train"].samples)
    assert names == ["0.png", "1.JPG", "2.jpeg", "3.bmp", "4.png"]
    assert dm.classes == ["a"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (5, 3, 5, 5)
    assert torch.allclose(batch["image"], torch.full_like(batch["image"], 128 / 255 * 2 - 1), atol=0.05)  # JPEG is lossy


def test_missing_root_names_the_path(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(LitzooError, match="does not exist") as info:
        dm = ImageFolderDataModule(str(root))
        dm.setup("fit")
    assert str(root) in str(info.value) and "\n" not in str(info.value)


def test_missing_train_folder_names_the_path(tmp_path):
    write_image(tmp_path / "val" / "a" / "0.png")
    with pytest.raises(LitzooError) as info:
        dm = ImageFolderDataModule(str(tmp_path))
        dm.setup("fit")
    assert str(tmp_path / "train") in str(info.value)


def test_train_without_class_folders_or_images(tmp_path):
    (tmp_path / "train").mkdir()
    write_image(tmp_path / "train" / "stray.png")  # an image directly in train/ is not a class
    with pytest.raises(LitzooError, match="no class folders") as info:
        dm = ImageFolderDataModule(str(tmp_path))
        dm.setup("fit")
    assert str(tmp_path / "train") in str(info.value) and ".png" in str(info.value)

    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "empty" / "labels.csv").write_text("x")
    dm = ImageFolderDataModule(str(tmp_path))
    with pytest.raises(LitzooError, match="holds no images") as info:
        dm.setup("fit")
    assert str(tmp_path / "train" / "empty") in str(info.value) and ".jpeg" in str(info.value)


def test_val_split_without_images(tmp_path):
    make_tree(tmp_path, {"train": {"a": 1}})
    (tmp_path / "val" / "a").mkdir(parents=True)
    dm = ImageFolderDataModule(str(tmp_path))
    with pytest.raises(LitzooError, match="no images") as info:
        dm.setup("fit")
    assert str(tmp_path / "val") in str(info.value)


def test_class_in_val_not_in_train(tmp_path):
    make_tree(tmp_path, {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1, "horse": 1}})
    dm = ImageFolderDataModule(str(tmp_path))
    with pytest.raises(LitzooError) as info:
        dm.setup("fit")
    assert str(tmp_path / "val" / "horse") in str(info.value)
    assert "cat, dog" in str(info.value)


def test_missing_test_split(tmp_path):
    make_tree(tmp_path, {"train": {"a": 1}, "val": {"a": 1}})
    dm = ImageFolderDataModule(str(tmp_path))
    dm.setup("fit")
    with pytest.raises(LitzooError) as info:
        dm.setup("test")
        dm.test_dataloader()
    assert str(tmp_path / "test") in str(info.value)
    with pytest.raises(LitzooError, match="missing folder"):
        dm.predict_dataloader()


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
def test_fit_without_val_folder_trains_without_validation(tmp_path):
    make_tree(tmp_path, {"train": {"a": 2, "b": 2}})
    dm = ImageFolderDataModule(str(tmp_path), image_size=4, batch_size=2)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 4 * 4, 2)
            self.validated = False

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.linear(batch["image"].flatten(1)), batch["label"])

        def validation_step(self, batch, batch_idx):
            self.validated = True

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Tiny()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert trainer.global_step == 2 and not model.validated
    with pytest.raises(LitzooError, match="validation"):
        trainer.validate(model, dm)


def _corrupt_tree(tmp_path: Path, truncated: bool) -> Path:
    write_image(tmp_path / "train" / "a" / "good.png")
    bad = tmp_path / "train" / "a" / "bad.png"
    if truncated:
        # A valid PNG cut in half: Image.open() succeeds, decoding the pixels fails.
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    else:
        bad.write_bytes(b"\x00garbage, not a PNG\xff" * 10)
    return bad


@pytest.mark.parametrize("truncated", [False, True], ids=["garbage", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, truncated):
    bad = _corrupt_tree(tmp_path, truncated)
    dm = ImageFolderDataModule(str(tmp_path), batch_size=2, num_workers=0)
    dm.setup("fit")  # scanning does not open the files
    with pytest.raises(LitzooError) as info:
        next(iter(dm.train_dataloader()))
    message = str(info.value)
    assert message.startswith(f"cannot read image '{bad}': ")
    assert len(message) > len(f"cannot read image '{bad}': ")  # Pillow's reason follows
    assert "\n" not in message


def test_corrupt_image_message_survives_a_worker_process(tmp_path):
    bad = _corrupt_tree(tmp_path, truncated=False)
    dm = ImageFolderDataModule(str(tmp_path), batch_size=2, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    with pytest.raises(Exception) as info:
        next(iter(loader))
    text, line = str(info.value), one_line(info.value)
    del info, loader  # stops the (persistent) worker now, not in a later garbage collection that waits 5 s
    assert "Original Traceback" in text  # really raised in a worker
    assert line.startswith(f"cannot read image '{bad}': ")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"channels": 2},
        {"batch_size": 0},
        {"num_workers": -1},
        {"channels": 1, "mean": [0.5, 0.5, 0.5]},
        {"std": [0.5, 0.0, 0.5]},
    ],
)
def test_invalid_arguments(tmp_path, kwargs):
    make_tree(tmp_path, {"train": {"a": 1}})
    with pytest.raises(ValueError):
        ImageFolderDataModule(str(tmp_path), **kwargs)


def test_hyperparameters_saved_and_prepare_data_writes_nothing(tmp_path):
    make_tree(tmp_path, {"train": {"a": 1}})
    before = sorted(tmp_path.rglob("*"))
    dm = ImageFolderDataModule(str(tmp_path), image_size=20, channels=1, mean=[0.3], std=[0.2])
    dm.prepare_data()
    assert sorted(tmp_path.rglob("*")) == before
    assert dm.hparams.root == str(tmp_path)
    assert dm.hparams.image_size == 20 and dm.hparams.channels == 1 and dm.hparams.mean == [0.3]
