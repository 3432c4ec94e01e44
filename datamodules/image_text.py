"""Image-text pairs from JSONL manifests, the on-disk format of released pools (LAION/DataComp/MetaCLIP parquet
dumps exported to JSON lines, CC3M/CC12M TSVs converted, COCO/Flickr retrieval splits)::

    {"image": "images/000001.jpg", "text": "a dog on a beach", "label": 3, ...}   one pair per line

Image paths are relative to the manifest's folder (or absolute). Images are read with Pillow when an
item is loaded; captions are tokenized once, when the split is set up, with a BPE tokenizer trained on
the training captions (the `tokenizers` library) or loaded from a ``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from litzoo.datamodules.image_folder import ImageFileDataset
from litzoo.framework.data.jsonl import iter_jsonl
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.data.transforms import Normalize, check_image_options
from litzoo.framework.errors import LitzooError


def read_manifest(path: str | Path, image_key: str = "image", text_key: str = "text", label_key: str | None = None) -> list[dict]:
    """The rows of a JSONL manifest, checked: one JSON object per line with a string caption and an image
    path that exists. ``label_key`` (when given and present in a row) must hold an integer.

    Raises:
        LitzooError: naming the file and line for a missing file, bad JSON, a missing key or image.
    """
    path = Path(path).expanduser()
    rows = []
    for number, row in iter_jsonl(path, [image_key, text_key]):
        image = Path(row[image_key]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise LitzooError(f"manifest '{path}' line {number}: image '{image}' does not exist")
        if label_key is not None and label_key in row and (not isinstance(row[label_key], int) or isinstance(row[label_key], bool)):
            raise LitzooError(f"manifest '{path}' line {number}: \"{label_key}\" must be an integer, got {row[label_key]!r}")
        rows.append({**row, image_key: image})
    if not rows:
        raise LitzooError(f"manifest '{path}' holds no pairs")
    return rows


class ImageTextDataset(Dataset):
    """Image-caption pairs: ``{"image": (C, S, S), "text": str, "tokens": (L,) long, "index": ()}`` items,
    plus ``"label"`` when every pair has one.

    ``texts`` and ``tokens`` (all captions, tokenized) are public: curation reads the captions of the
    whole pool without opening an image.
    """

    def __init__(self, images: Sequence[Path], texts: Sequence[str], tokens: Tensor, reader: ImageFileDataset, labels: Sequence[int] | None = None) -> None:
        if not len(images) == len(texts) == len(tokens) or (labels is not None and len(labels) != len(texts)):
            raise ValueError(f"images ({len(images)}), texts ({len(texts)}), tokens ({len(tokens)}) and labels must have one entry per pair")
        self.images, self.texts, self.tokens = list(images), list(texts), tokens
        self.labels = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.reader.load(self.images[index]), "text": self.texts[index], "tokens": self.tokens[index], "index": torch.tensor(index)}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


class ImageTextDataModule(SplitsDataModule):
    """Image-text pairs from JSONL manifests, for contrastive training (CLIP) and curation (CiT).

    Batches are ``{"image": (B, C, S, S) float, "text": list[str], "tokens": (B, context_length) long,
    "index": (B,) long}`` and ``"label": (B,) long`` when the manifest's pairs carry ``label_key``. Each
    image is read with Pillow, converted to grey levels or RGB, scaled to [0, 1], resized to
    ``image_size`` (bilinear, antialiased when shrinking) and normalised with ``mean``/``std``.

    The tokenizer is the BPE of ``tokenizer_path`` (a ``tokenizer.json``) or, without one, a BPE with
    ``vocab_size`` tokens trained on the training captions (deterministic, so every DDP rank and every
    resumed run builds the same). Token ids are always below ``vocab_size``.

    Args:
        train_manifest: JSONL of the training pairs (the raw pool for curation).
        val_manifest: JSONL of validation pairs (retrieval, and zero-shot accuracy when labelled).
        test_manifest: JSONL of test pairs.
        class_names: names of the classes ``label`` indexes, for zero-shot classification prompts.
        image_key: manifest field of the image path (relative to the manifest's folder, or absolute).
        text_key: manifest field of the caption.
        label_key: manifest field of an integer class label (optional in the manifest).
        image_size: side of the square images fed to the model.
        channels: 1 (grey levels) or 3 (RGB).
        mean: per-channel mean subtracted from [0, 1] pixels (default 0.5 each).
        std: per-channel standard deviation divided by (default 0.5 each).
        tokenizer_path: a ``tokenizer.json`` to use instead of training one.
        vocab_size: size of the trained BPE vocabulary; an upper bound on the ids of a loaded one.
        context_length: tokens per caption including start and end (CLIP: 77).
        batch_size: pairs per batch (per process under DDP).
        num_workers: DataLoader worker processes reading the images.
    """

    def __init__(
        self,
        train_manifest: str,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        class_names: list[str] | None = None,
        image_key: str = "image",
        text_key: str = "text",
        label_key: str = "label",
        image_size: int = 224,
        channels: int = 3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        tokenizer_path: str | None = None,
        vocab_size: int = 49408,
        context_length: int = 77,
        batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        mean, std = check_image_options(image_size, channels, mean, std)
        if class_names is not None and len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be distinct, got {class_names}")
        self.save_hyperparameters()  # with mean and std filled in
        self.image_key, self.text_key, self.label_key = image_key, text_key, label_key
        self.tokenizer_path, self.vocab_size, self.context_length = tokenizer_path, vocab_size, context_length
        self.manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        self.class_names = None if class_names is None else list(class_names)
        self.image_size, self.in_channels = image_size, channels
        self.reader = ImageFileDataset([], mode="L" if channels == 1 else "RGB", image_size=image_size, normalize=Normalize(mean, std))
        self._tokenizer: TextTokenizer | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, for FLOPs counting and export."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def has_split(self, split: str) -> bool:
        return self.manifests.get(split) is not None

    @property
    def tokenizer(self) -> TextTokenizer:
        """The caption tokenizer (loaded, or trained on the training captions on first use)."""
        if self._tokenizer is None:
            if self.tokenizer_path is not None:
                tokenizer = TextTokenizer.load(self.tokenizer_path, self.context_length)
                if tokenizer.vocab_size > self.vocab_size:
                    raise LitzooError(f"tokenizer file '{self.tokenizer_path}' has {tokenizer.vocab_size} tokens, more than vocab_size={self.vocab_size}")
            else:
                texts = [row[self.text_key] for row in self._rows("train")]
                tokenizer = TextTokenizer.train(texts, vocab_size=self.vocab_size, context_length=self.context_length)
            self._tokenizer = tokenizer
        return self._tokenizer

    def _rows(self, split: str) -> list[dict]:
        manifest = self.manifests.get(split)
        if manifest is None:
            raise LitzooError(f"no {split} manifest: pass --data.init_args.{split}_manifest to use the {split} split")
        return read_manifest(manifest, self.image_key, self.text_key, self.label_key)

    def build_dataset(self, split: str) -> ImageTextDataset:
        rows = self._rows(split)
        texts = [row[self.text_key] for row in rows]
        labelled = all(self.label_key in row for row in rows)
        labels = [row[self.label_key] for row in rows] if labelled else None
        if labels is not None and self.class_names is not None and not all(0 <= y < len(self.class_names) for y in labels):
            raise LitzooError(f"manifest '{self.manifests[split]}' has labels outside 0..{len(self.class_names) - 1} (class_names has {len(self.class_names)})")
        return ImageTextDataset([row[self.image_key] for row in rows], texts, self.tokenizer(texts), self.reader, labels)

    @property
    def train_dataset(self) -> ImageTextDataset:
        """The training pairs (the raw pool that curation draws from)."""
        return self.dataset("train")


class DigitsCaptionsDataModule(ImageTextDataModule):
    """SYNTHETIC captions on scikit-learn's real digits (see :func:`litzoo.datamodules.synthetic.digits_caption_splits`):
    a noisy training pool (class captions, mislabelled ones, generic, distractor and noise captions in
    ``shares``) and clean labelled held-out pairs for zero-shot accuracy and retrieval.

    The pool is generated once into ``root/seed<seed>-<shares>`` (ignored by git) and reused.

    Args:
        root: folder the generated pools are written under.
        shares: fractions of caption kinds ``(class, wrong, generic, distractor, noise)`` in the pool.
        seed: seed of the captions and of the stratified image split.
        image_size: side of the images fed to the model (8 = native).
        vocab_size: size of the BPE trained on the pool's captions.
        context_length: tokens per caption.
        batch_size: pairs per batch (per process under DDP).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        root: str = "data/digits_captions",
        shares: tuple[float, float, float, float, float] = (0.4, 0.1, 0.2, 0.2, 0.1),
        seed: int = 0,
        image_size: int = 8,
        vocab_size: int = 256,
        context_length: int = 16,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        from litzoo.datamodules.synthetic import DIGIT_WORDS

        folder = Path(root).expanduser() / ("seed{}-{}".format(seed, "-".join(f"{s:g}" for s in shares)))
        self.pool_folder = folder
        self._generate(folder, tuple(shares), seed)
        super().__init__(
            train_manifest=str(folder / "train.jsonl"),
            val_manifest=str(folder / "val.jsonl"),
            test_manifest=str(folder / "test.jsonl"),
            class_names=list(DIGIT_WORDS),
            image_size=image_size,
            channels=1,
            vocab_size=vocab_size,
            context_length=context_length,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        self.save_hyperparameters()

    @staticmethod
    def _generate(folder: Path, shares: tuple[float, ...], seed: int) -> None:
        """Writes the pool into a temporary sibling and renames it into place, so that concurrent
        processes (DDP ranks, parallel tests) never read a half-written pool."""
        from litzoo.datamodules.synthetic import digits_caption_splits

        if (folder / "test.jsonl").is_file():
            return
        generate_folder_atomically(folder, lambda staging: digits_caption_splits(staging, shares=shares, seed=seed))
