"""Re-captioning triples (image, alt-text, aligned caption) in JSONL, the fine-tuning format of Altogether
(Xu et al., "Altogether: Image Captioning via Re-aligning Alt-text", EMNLP 2024; MetaCLIP ``apps/altogether``),
and a SYNTHETIC generator of such triples on scikit-learn's real digits.

A manifest holds one triple per line, its image path relative to the manifest's folder (or absolute), as the
image-text manifests of :mod:`litzoo.datamodules.image_text`::

    {"image": "images/00042.png", "alt_text": "my kid wrote a 7 today!", "caption": "a thin and wide handwritten seven", ...}

(the official ``Altogether_FT`` reads a JSON list of ``{"img_path", "alt", <response key>}`` records: the same three
fields). Batches are ``{"image": (B, C, S, S), "alt_text": list[str], "caption": list[str], "index": (B,)}`` plus
``"label"`` when every triple has an integer ``label``. The prompt dropout, the token layout and the loss mask are the
method's (``modules/altogether.py``); this file only reads and decodes.

The tokenizer is a BPE trained on the training triples' alt-texts and captions (or a saved ``tokenizer.json``), with
CLIP's end-of-word suffix ``</w>`` and its decoder, so that generated token ids decode back to words
(``TextTokenizer`` conventions otherwise: lower-cased, ``<pad>`` = 0, ``<end_of_text>`` = 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from litzoo.datamodules.image_folder import ImageFileDataset
from litzoo.framework.data.jsonl import iter_jsonl
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.data.tokenization import SPECIAL_TOKENS, UNK, TextTokenizer
from litzoo.framework.data.transforms import Normalize, check_image_options
from litzoo.framework.errors import LitzooError

#: CLIP's BPE marks the end of a word with this suffix (openai/CLIP simple_tokenizer.py), so that decoding joins sub-words
END_OF_WORD = "</w>"


def train_caption_tokenizer(texts: Iterable[str], vocab_size: int, context_length: int = 77) -> TextTokenizer:
    """A lower-cased BPE with CLIP's ``</w>`` end-of-word suffix and the matching decoder, trained on ``texts``.

    Unlike :meth:`TextTokenizer.train`'s BPE, its ids decode back to the words (``decode`` joins sub-words), which a
    captioner's generated text needs. Deterministic (no seed)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix=END_OF_WORD))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), end_of_word_suffix=END_OF_WORD, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tokenizer, context_length)


def resolve_image(manifest: Path, number: int, value: object, key: str) -> Path:
    """The image file of a manifest line: ``value`` relative to the manifest's folder (or absolute), checked."""
    if not isinstance(value, str) or not value:
        raise LitzooError(f"manifest '{manifest}' line {number} has no image path '{key}'")
    image = Path(value).expanduser()
    image = image if image.is_absolute() else manifest.parent / image
    if not image.is_file():
        raise LitzooError(f"manifest '{manifest}' line {number}: image '{image}' does not exist")
    return image


def read_triples(path: str | Path, image_key: str = "image", alt_key: str = "alt_text", caption_key: str = "caption") -> list[dict]:
    """The triples of a JSONL manifest, checked: each line an object with an image that exists, a string alt-text
    (may be empty) and a non-empty string caption; ``label``, when present, an integer. Image paths come back absolute.

    Raises:
        LitzooError: one line naming the file and line: a missing file, bad JSON, a missing or non-string field, a
            missing image, an empty caption, a label that is not an integer, no triples at all.
    """
    path = Path(path).expanduser()
    rows = []
    for number, row in iter_jsonl(path, [alt_key, caption_key]):
        image = resolve_image(path, number, row.get(image_key), image_key)
        if not row[caption_key].strip():
            raise LitzooError(f"manifest '{path}' line {number}: '{caption_key}' is empty (the target caption)")
        label = row.get("label")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
            raise LitzooError(f"manifest '{path}' line {number}: \"label\" must be an integer, got {label!r}")
        rows.append({**row, image_key: image})
    if not rows:
        raise LitzooError(f"manifest '{path}' holds no triples")
    return rows


class TripleDataset(Dataset):
    """``{"image": (C, S, S), "alt_text": str, "caption": str, "index": ()}`` items (+ ``"label"`` when all have one)."""

    def __init__(self, images: Sequence[Path], alt_texts: Sequence[str], captions: Sequence[str], reader: ImageFileDataset,
                 labels: Sequence[int] | None = None) -> None:  # fmt: skip
        if not len(images) == len(alt_texts) == len(captions) or (labels is not None and len(labels) != len(images)):
            raise ValueError(f"images ({len(images)}), alt_texts ({len(alt_texts)}), captions ({len(captions)}) and labels need one entry per triple")
        self.images, self.alt_texts, self.captions = list(images), list(alt_texts), list(captions)
        self.labels = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.reader.load(self.images[index]), "alt_text": self.alt_texts[index], "caption": self.captions[index], "index": torch.tensor(index)}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


class RecaptionDataModule(SplitsDataModule):
    """(image, alt-text, caption) triples from JSONL manifests, to train a re-captioner (Altogether).

    Images are read with Pillow, converted to grey levels or RGB, scaled to [0, 1], resized to ``image_size`` and
    normalised with ``mean`` / ``std`` (use the statistics the frozen CLIP image encoder was trained with). The
    tokenizer (:attr:`tokenizer`) is read from ``tokenizer_path`` or trained on the training split's alt-texts and
    captions (:func:`train_caption_tokenizer`); the captioner takes it from here and stores it in its checkpoint.

    Args:
        train_manifest: JSONL of the training triples.
        val_manifest: JSONL of validation triples (optional).
        test_manifest: JSONL of test triples (optional).
        image_key: manifest field of the image path.
        alt_key: manifest field of the alt-text (the captioner's prompt).
        caption_key: manifest field of the aligned caption (the captioner's target).
        image_size: side of the square images fed to the image encoder.
        channels: 1 (grey levels) or 3 (RGB).
        mean: per-channel mean subtracted from [0, 1] pixels (default 0.5 each).
        std: per-channel standard deviation divided by (default 0.5 each).
        tokenizer_path: a ``tokenizer.json`` to use instead of training one.
        vocab_size: size of the trained BPE vocabulary (an upper bound on a loaded one's).
        batch_size: triples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        train_manifest: str,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        image_key: str = "image",
        alt_key: str = "alt_text",
        caption_key: str = "caption",
        image_size: int = 224,
        channels: int = 3,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        tokenizer_path: str | None = None,
        vocab_size: int = 50272,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        mean, std = check_image_options(image_size, channels, mean, std)
        if not train_manifest:
            raise ValueError("RecaptionDataModule needs train_manifest, a JSONL of {image, alt_text, caption} triples")
        self.save_hyperparameters()  # with mean and std filled in
        self.manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        self.image_key, self.alt_key, self.caption_key = image_key, alt_key, caption_key
        self.tokenizer_path, self.vocab_size = tokenizer_path, vocab_size
        self.image_size, self.channels, self.mean, self.std = image_size, channels, mean, std
        self.reader = ImageFileDataset([], mode="L" if channels == 1 else "RGB", image_size=image_size, normalize=Normalize(mean, std))
        self._tokenizer: TextTokenizer | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def has_split(self, split: str) -> bool:
        return self.manifests.get(split) is not None

    def rows(self, split: str) -> list[dict]:
        manifest = self.manifests.get(split)
        if manifest is None:
            raise LitzooError(f"no {split} manifest: pass --data.init_args.{split}_manifest to use the {split} split")
        return read_triples(manifest, self.image_key, self.alt_key, self.caption_key)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The BPE of ``tokenizer_path``, or one trained on the training alt-texts and captions on first use."""
        if self._tokenizer is None:
            if self.tokenizer_path is not None:
                tokenizer = TextTokenizer.load(self.tokenizer_path)
                if tokenizer.vocab_size > self.vocab_size:
                    raise LitzooError(f"tokenizer file '{self.tokenizer_path}' has {tokenizer.vocab_size} tokens, more than vocab_size={self.vocab_size}")
            else:
                rows = self.rows("train")
                tokenizer = train_caption_tokenizer([t for row in rows for t in (row[self.alt_key], row[self.caption_key])], self.vocab_size)
            self._tokenizer = tokenizer
        return self._tokenizer

    def build_dataset(self, split: str) -> TripleDataset:
        rows = self.rows(split)
        labels = [row.get("label") for row in rows]
        return TripleDataset([row[self.image_key] for row in rows], [row[self.alt_key] for row in rows], [row[self.caption_key] for row in rows],
                             self.reader, labels if all(label is not None for label in labels) else None)  # fmt: skip


# ------------------------------------------------------------------------------ SYNTHETIC digits triples

THICKNESS = ("thin", "thick")
WIDTH = ("narrow", "wide")


def caption_attributes(pixels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the aligned captions say that only the image shows, read off the 8x8 digits (grey levels 0..16).

    Returns ``(thick, wide)`` booleans per image: the ink mass (sum of grey levels) above the median of the images of
    the same digit, and the ink's horizontal spread (the ink-weighted standard deviation of the column index) above the
    median spread of that digit. Relative to the digit's own median, so that each attribute splits every digit in half
    (both measures are continuous: no ties at the median)."""
    pixels = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), 8, 8)
    ink = pixels.sum(axis=(1, 2))
    columns = pixels.sum(axis=1) / np.maximum(ink[:, None], 1e-12)  # (N, 8) share of the ink in each column
    centre = columns @ np.arange(8.0)
    width = np.sqrt(np.maximum(columns @ np.arange(8.0) ** 2 - centre**2, 0.0))
    thick, wide = np.zeros(len(pixels), dtype=bool), np.zeros(len(pixels), dtype=bool)
    for digit in np.unique(labels):
        rows = labels == digit
        thick[rows] = ink[rows] > np.median(ink[rows])
        wide[rows] = width[rows] > np.median(width[rows])
    return thick, wide


def aligned_caption(word: str, thick: bool, wide: bool) -> str:
    """The SYNTHETIC re-aligned caption: the true digit and two attributes read off the image."""
    return f"a {THICKNESS[int(thick)]} and {WIDTH[int(wide)]} handwritten {word}"


def digits_recaption_splits(root: str | Path, seed: int = 0, annotated_fraction: float = 0.4, val_fraction: float = 0.1,
                            test_fraction: float = 0.2) -> dict[str, Path]:  # fmt: skip
    """SYNTHETIC re-captioning data on scikit-learn's 1797 real digits; returns the manifests by name.

    Every image gets a web-like **alt-text** from :mod:`litzoo.datamodules.synthetic`'s vocabulary and shares (40% name
    the digit, 10% a wrong digit, 20% generic, 20% an unrelated scene, 10% random letters) and an **aligned caption**
    that names the true digit and two attributes read off the image (:func:`caption_attributes`,
    :func:`aligned_caption`): "a thick and narrow handwritten seven". The planted truth: the caption is a function of the
    image alone; the alt-text helps only when it names the right digit.

    Written under ``root`` (images as 8x8 grey PNGs in ``images/``, paths relative to the manifests):

    * ``train.jsonl`` / ``val.jsonl``: the captioner's triples ``{"image", "alt_text", "caption", "label", "kind",
      "thick", "wide"}`` (the "human-annotated" set: ``annotated_fraction`` of the non-test images, less ``val``);
    * ``pool.jsonl``: the rest of the non-test images as an image-text pool in
      :class:`~litzoo.datamodules.image_text.ImageTextDataModule`'s format ``{"image", "text": alt-text, "label", "kind",
      "caption"}`` (the pool to re-caption; ``caption`` is the truth, for scoring only);
    * ``test.jsonl``: the held-out images with a clean class caption (``{"image", "text", "label"}``), for CLIP's
      zero-shot accuracy, as in :func:`~litzoo.datamodules.synthetic.digits_caption_splits`.

    Stratified by digit and seeded: the same files for the same ``seed``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from litzoo.datamodules.synthetic import CLASS_TEMPLATES, DEFAULT_SHARES, DIGIT_WORDS, DISTRACTOR_CAPTIONS, GENERIC_CAPTIONS, KINDS

    fractions = (annotated_fraction, val_fraction, test_fraction)
    if not all(0 < f < 1 for f in fractions) or val_fraction + test_fraction >= 1 or annotated_fraction <= val_fraction:
        raise ValueError(f"need 0 < val_fraction < annotated_fraction < 1 and 0 < test_fraction, val_fraction + test_fraction < 1; got {fractions}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    thick, wide = caption_attributes(digits.images, labels)
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(KINDS), size=len(labels), p=np.asarray(DEFAULT_SHARES, dtype=np.float64))
    lines = []
    for i, (pixels, label) in enumerate(zip(digits.images, labels, strict=True)):
        name = f"images/{i:05d}.png"
        Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L").save(root / name)  # 0..16 -> 0..255, lossless
        kind = KINDS[kinds[i]]
        if kind in ("class", "wrong"):
            named = int(label) if kind == "class" else int((label + rng.integers(1, 10)) % 10)
            alt = CLASS_TEMPLATES[rng.integers(len(CLASS_TEMPLATES))].format(DIGIT_WORDS[named])
        elif kind == "generic":
            alt = GENERIC_CAPTIONS[rng.integers(len(GENERIC_CAPTIONS))]
        elif kind == "distractor":
            alt = DISTRACTOR_CAPTIONS[rng.integers(len(DISTRACTOR_CAPTIONS))]
        else:
            alt = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), size=int(rng.integers(8, 30)))).strip() or "x"
        caption = aligned_caption(DIGIT_WORDS[label], bool(thick[i]), bool(wide[i]))
        lines.append({"image": name, "alt_text": alt, "caption": caption, "label": int(label), "kind": kind, "thick": bool(thick[i]), "wide": bool(wide[i])})
    index = np.arange(len(lines))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    rest_fraction = 1 - test_fraction
    pool, annotated = train_test_split(rest, test_size=annotated_fraction / rest_fraction, stratify=labels[rest], random_state=seed)
    train, val = train_test_split(annotated, test_size=val_fraction / annotated_fraction, stratify=labels[annotated], random_state=seed)
    template_rng = np.random.default_rng(seed + 1)
    out: dict[str, list[dict]] = {"train": [], "val": [], "pool": [], "test": []}
    for split, rows in (("train", train), ("val", val), ("pool", pool), ("test", test)):
        for i in sorted(rows.tolist()):
            line = lines[i]
            if split == "pool":
                out[split].append({"image": line["image"], "text": line["alt_text"], "label": line["label"], "kind": line["kind"], "caption": line["caption"]})
            elif split == "test":  # a clean class caption, for zero-shot accuracy and retrieval
                text = CLASS_TEMPLATES[template_rng.integers(len(CLASS_TEMPLATES))].format(DIGIT_WORDS[line["label"]])
                out[split].append({"image": line["image"], "text": text, "label": line["label"]})
            else:
                out[split].append(dict(line))
    paths = {}
    for split, rows in out.items():
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return paths


class DigitsRecaptionDataModule(RecaptionDataModule):
    """SYNTHETIC (image, alt-text, aligned caption) triples on scikit-learn's real digits
    (:func:`digits_recaption_splits`): the captioner's training and validation triples; the same folder holds the pool to
    re-caption (``pool.jsonl``) and clean test pairs (``test.jsonl``) for the CLIP trained on it.

    Generated once into ``root/seed<seed>`` (ignored by git) and reused.

    Args:
        root: folder the generated data is written under.
        seed: seed of the alt-texts and of the stratified split.
        image_size: side of the images fed to the model (8 = native).
        vocab_size: size of the BPE trained on the training triples.
        batch_size: triples per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, root: str = "data/digits_recaption", seed: int = 0, image_size: int = 8, vocab_size: int = 256, batch_size: int = 64,
                 num_workers: int = 0) -> None:  # fmt: skip
        folder = Path(root).expanduser() / f"seed{seed}"
        self.folder = folder
        if not (folder / "test.jsonl").is_file():
            # written into a temporary sibling and renamed: DDP ranks and parallel tests never read a half-written folder
            generate_folder_atomically(folder, lambda staging: digits_recaption_splits(staging, seed=seed))
        super().__init__(
            train_manifest=str(folder / "train.jsonl"), val_manifest=str(folder / "val.jsonl"), image_size=image_size, channels=1,
            vocab_size=vocab_size, batch_size=batch_size, num_workers=num_workers,
        )  # fmt: skip
        self.save_hyperparameters()

    @property
    def pool_manifest(self) -> Path:
        """The image-text pool to re-caption (``{"image", "text": alt-text, "label", "kind", "caption"}``)."""
        return self.folder / "pool.jsonl"

    @property
    def test_pairs_manifest(self) -> Path:
        """Clean held-out pairs (``{"image", "text", "label"}``) for CLIP's zero-shot accuracy."""
        return self.folder / "test.jsonl"


__all__ = [
    "DigitsRecaptionDataModule", "RecaptionDataModule", "TripleDataset", "aligned_caption", "caption_attributes", "digits_recaption_splits",
    "read_triples", "resolve_image", "train_caption_tokenizer",
]  # fmt: skip
