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

The **pretraining** stage (official ``Altogether_PT``) reads images with several web alt-texts
(``{"image", "alt_texts": [...]}``, :class:`AltTextPoolDataModule`) and hands out the same batches: the longest
alt-text as ``"caption"`` and another one (or "") as ``"alt_text"`` (:func:`longest_and_other`);
:func:`digits_alt_text_pool_splits` is its SYNTHETIC generator on the digits.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
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


class _CaptionerData(SplitsDataModule, ABC):
    """What both stages' DataModules share: JSONL manifests per split, images read as the frozen encoder expects, and
    the BPE the captioner learns (read from ``tokenizer_path`` or trained on the training split on first use). A subclass
    says how a manifest is read (:meth:`read_manifest`) and which of its texts the tokenizer is trained on
    (:meth:`tokenizer_texts`), and calls :meth:`_set_up` from its ``__init__`` after ``save_hyperparameters``."""

    def _set_up(self, manifests: dict[str, str | None], image_size: int, channels: int, mean: list[float], std: list[float],
                tokenizer_path: str | None, vocab_size: int) -> None:  # fmt: skip
        self.manifests = manifests
        self.tokenizer_path, self.vocab_size = tokenizer_path, vocab_size
        self.image_size, self.channels, self.mean, self.std = image_size, channels, mean, std
        self.reader = ImageFileDataset([], mode="L" if channels == 1 else "RGB", image_size=image_size, normalize=Normalize(mean, std))
        self._tokenizer: TextTokenizer | None = None

    @abstractmethod
    def read_manifest(self, manifest: str) -> list[dict]:
        """The rows of one split's manifest, checked."""

    @abstractmethod
    def tokenizer_texts(self, rows: list[dict]) -> list[str]:
        """The texts of the training rows a new BPE is trained on."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def has_split(self, split: str) -> bool:
        return self.manifests.get(split) is not None

    def rows(self, split: str) -> list[dict]:
        manifest = self.manifests.get(split)
        if manifest is None:
            raise LitzooError(f"no {split} manifest: pass --data.init_args.{split}_manifest to use the {split} split")
        return self.read_manifest(manifest)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The BPE of ``tokenizer_path``, or one trained on the training split's texts on first use."""
        if self._tokenizer is None:
            if self.tokenizer_path is not None:
                tokenizer = TextTokenizer.load(self.tokenizer_path)
                if tokenizer.vocab_size > self.vocab_size:
                    raise LitzooError(f"tokenizer file '{self.tokenizer_path}' has {tokenizer.vocab_size} tokens, more than vocab_size={self.vocab_size}")
            else:
                tokenizer = train_caption_tokenizer(self.tokenizer_texts(self.rows("train")), self.vocab_size)
            self._tokenizer = tokenizer
        return self._tokenizer


class RecaptionDataModule(_CaptionerData):
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
        self.image_key, self.alt_key, self.caption_key = image_key, alt_key, caption_key
        self._set_up({"train": train_manifest, "val": val_manifest, "test": test_manifest}, image_size, channels, mean, std, tokenizer_path, vocab_size)

    def read_manifest(self, manifest: str) -> list[dict]:
        return read_triples(manifest, self.image_key, self.alt_key, self.caption_key)

    def tokenizer_texts(self, rows: list[dict]) -> list[str]:
        """The training alt-texts and captions."""
        return [t for row in rows for t in (row[self.alt_key], row[self.caption_key])]

    def build_dataset(self, split: str) -> TripleDataset:
        rows = self.rows(split)
        labels = [row.get("label") for row in rows]
        return TripleDataset([row[self.image_key] for row in rows], [row[self.alt_key] for row in rows], [row[self.caption_key] for row in rows],
                             self.reader, labels if all(label is not None for label in labels) else None)  # fmt: skip


# ------------------------------------------------------------------- the pretraining stage: images with several alt-texts


def longest_and_other(alt_texts: Sequence[str], draw: Callable[[int], int]) -> tuple[str, str]:
    """The pretraining stage's ``(target, prompt)`` of one image (official ``Altogether_PT.__iter__``).

    The alt-texts are de-duplicated (official ``list(set(...))``); the target is the longest by **characters**
    (``len``), the first of the longest winning a tie (the official's strict ``>``; its order is a set's, arbitrary
    between runs, here the manifest's first occurrence, so ties are reproducible); the prompt is another of the image's
    alt-texts, uniformly (``draw(n)`` picks an index in ``0..n-1``; official ``random.choice``), or the empty prompt
    when the image has a single distinct alt-text. The 50/50 prompt dropout comes after, in the LightningModule."""
    unique = list(dict.fromkeys(alt_texts))
    if not unique:
        raise ValueError("an image needs at least one alt-text")
    longest = max(range(len(unique)), key=lambda i: (len(unique[i]), -i))  # the longest; the first one on a tie
    others = unique[:longest] + unique[longest + 1 :]
    return unique[longest], others[draw(len(others))] if others else ""


def read_alt_text_pool(path: str | Path, image_key: str = "image", alt_key: str = "alt_texts") -> list[dict]:
    """The images of a pretraining manifest, checked: each line an object with an image that exists and a list of
    alt-text strings; ``label``, when present, an integer. Blank alt-texts are dropped (as a target they would teach
    only the end token, as a prompt they equal the empty one); an image needs at least one left. Image paths come back
    absolute, ``alt_key`` as the list of the kept alt-texts.

    Raises:
        LitzooError: one line naming the file and line: a missing file, bad JSON, a missing image, an ``alt_key`` that is
            not a list of strings or holds only blank ones, a label that is not an integer, no images at all.
    """
    path = Path(path).expanduser()
    rows = []
    for number, row in iter_jsonl(path, []):
        image = resolve_image(path, number, row.get(image_key), image_key)
        texts = row.get(alt_key)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise LitzooError(f"manifest '{path}' line {number}: '{alt_key}' must be a list of alt-text strings, got {texts!r:.80}")
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise LitzooError(f"manifest '{path}' line {number}: '{alt_key}' holds no non-blank alt-text")
        label = row.get("label")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
            raise LitzooError(f"manifest '{path}' line {number}: \"label\" must be an integer, got {label!r}")
        rows.append({**row, image_key: image, alt_key: texts})
    if not rows:
        raise LitzooError(f"manifest '{path}' holds no images")
    return rows


class AltTextPoolDataset(Dataset):
    """The pretraining stage's items, in the fine-tuning layout: ``{"image", "alt_text": the prompt (another alt-text of
    the image, or "" for an image with one), "caption": the target (its longest alt-text), "index"}`` (+ ``"label"``),
    by :func:`longest_and_other`.

    ``fixed=False`` (training) draws the other alt-text afresh at each read from torch's global generator (seeded by
    ``seed_everything`` and, in DataLoader workers, per worker), as the official re-draws on each pass; ``fixed=True``
    (validation, test) draws it once per image from a generator seeded with the image's index, so the held-out loss is
    the same at every validation."""

    def __init__(self, images: Sequence[Path], alt_texts: Sequence[Sequence[str]], reader: ImageFileDataset, labels: Sequence[int] | None = None,
                 fixed: bool = False) -> None:  # fmt: skip
        if len(images) != len(alt_texts) or (labels is not None and len(labels) != len(images)):
            raise ValueError(f"images ({len(images)}), alt_texts ({len(alt_texts)}) and labels need one entry per image")
        if any(not texts for texts in alt_texts):
            raise ValueError("every image needs at least one alt-text")
        self.images, self.alt_texts, self.reader, self.fixed = list(images), [list(t) for t in alt_texts], reader, fixed
        self.labels = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, index: int) -> tuple[str, str]:
        """``(target, prompt)`` of image ``index``: a fresh draw, or the fixed one (``fixed=True``)."""
        generator = torch.Generator().manual_seed(index) if self.fixed else None
        return longest_and_other(self.alt_texts[index], lambda n: int(torch.randint(n, (), generator=generator)))

    def __getitem__(self, index: int) -> dict:
        target, prompt = self.pair(index)
        item = {"image": self.reader.load(self.images[index]), "alt_text": prompt, "caption": target, "index": torch.tensor(index)}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


class AltTextPoolDataModule(_CaptionerData):
    """Images with several web alt-texts from JSONL manifests, for Altogether's **pretraining** stage
    (official ``Altogether_PT``; its WebDataset json ``{"texts": [["alt", text], ...]}`` becomes a manifest line)::

        {"image": "images/00042.png", "alt_texts": ["7", "my kid wrote a seven today!", "IMG_0042"], ...}

    Batches have the fine-tuning layout (:class:`AltTextPoolDataset`): ``"caption"`` the image's longest alt-text (the
    target), ``"alt_text"`` another one or "" (the prompt before the 50/50 dropout), so the same
    :class:`~litzoo.modules.altogether.AltogetherCaptioner` trains both stages. Images are read as in
    :class:`RecaptionDataModule`; the tokenizer is read from ``tokenizer_path`` or trained on the training alt-texts
    (the fine-tuning stage started from this captioner keeps it: see the captioner's ``init_from``).

    Args:
        train_manifest: JSONL of the training images.
        val_manifest: JSONL of validation images (optional).
        test_manifest: JSONL of test images (optional).
        image_key: manifest field of the image path.
        alt_key: manifest field of the list of alt-texts.
        image_size: side of the square images fed to the image encoder.
        channels: 1 (grey levels) or 3 (RGB).
        mean: per-channel mean subtracted from [0, 1] pixels (default 0.5 each).
        std: per-channel standard deviation divided by (default 0.5 each).
        tokenizer_path: a ``tokenizer.json`` to use instead of training one.
        vocab_size: size of the trained BPE vocabulary (an upper bound on a loaded one's).
        batch_size: images per batch (per process under DDP).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        train_manifest: str,
        val_manifest: str | None = None,
        test_manifest: str | None = None,
        image_key: str = "image",
        alt_key: str = "alt_texts",
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
            raise ValueError("AltTextPoolDataModule needs train_manifest, a JSONL of {image, alt_texts} lines")
        self.save_hyperparameters()  # with mean and std filled in
        self.image_key, self.alt_key = image_key, alt_key
        self._set_up({"train": train_manifest, "val": val_manifest, "test": test_manifest}, image_size, channels, mean, std, tokenizer_path, vocab_size)

    def read_manifest(self, manifest: str) -> list[dict]:
        return read_alt_text_pool(manifest, self.image_key, self.alt_key)

    def tokenizer_texts(self, rows: list[dict]) -> list[str]:
        """The training alt-texts."""
        return [t for row in rows for t in row[self.alt_key]]

    def build_dataset(self, split: str) -> AltTextPoolDataset:
        rows = self.rows(split)
        labels = [row.get("label") for row in rows]
        return AltTextPoolDataset([row[self.image_key] for row in rows], [row[self.alt_key] for row in rows], self.reader,
                                  labels if all(label is not None for label in labels) else None, fixed=split != "train")  # fmt: skip


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


def web_alt_text(rng: np.random.Generator, kind: str, label: int) -> str:
    """One SYNTHETIC web-like alt-text of a digit ``label`` of ``kind`` (:data:`litzoo.datamodules.synthetic.KINDS`):
    a class template naming the digit ("class") or another digit ("wrong"), a generic photo caption, an unrelated
    scene ("distractor"), or random letters ("noise"). Draws from ``rng`` in a fixed order (the generated files depend on it)."""
    from litzoo.datamodules.synthetic import CLASS_TEMPLATES, DIGIT_WORDS, DISTRACTOR_CAPTIONS, GENERIC_CAPTIONS

    if kind in ("class", "wrong"):
        named = label if kind == "class" else int((label + rng.integers(1, 10)) % 10)
        return CLASS_TEMPLATES[rng.integers(len(CLASS_TEMPLATES))].format(DIGIT_WORDS[named])
    if kind == "generic":
        return GENERIC_CAPTIONS[rng.integers(len(GENERIC_CAPTIONS))]
    if kind == "distractor":
        return DISTRACTOR_CAPTIONS[rng.integers(len(DISTRACTOR_CAPTIONS))]
    return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), size=int(rng.integers(8, 30)))).strip() or "x"


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

    from litzoo.datamodules.synthetic import CLASS_TEMPLATES, DEFAULT_SHARES, DIGIT_WORDS, KINDS

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
        alt = web_alt_text(rng, kind, int(label))
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


def digits_alt_text_pool_splits(root: str | Path, seed: int = 0, max_alt_texts: int = 4) -> dict[str, Path]:
    """SYNTHETIC pretraining data for Altogether on scikit-learn's real digits: images with several web-like alt-texts.

    Writes :func:`digits_recaption_splits` (same ``seed``: the same images, splits and alt-texts) under ``root``, then
    gives each image of its pool and of its validation split between 1 and ``max_alt_texts`` alt-texts (uniformly many):
    its existing alt-text first, then more drawn independently by the same recipe (:func:`web_alt_text`, kinds in
    :data:`~litzoo.datamodules.synthetic.DEFAULT_SHARES`: 40% name the digit, 10% a wrong one, 20% generic, 20% an
    unrelated scene, 10% random letters). No aligned caption is involved: the pretraining target is the longest
    alt-text (the planted truth each line carries as ``"longest"``, with each alt-text's ``"kinds"``).

    * ``pretrain_train.jsonl``: the pool images (:class:`AltTextPoolDataModule`'s ``{"image", "alt_texts", "kinds",
      "label", "longest"}``);
    * ``pretrain_val.jsonl``: the fine-tuning validation images, the same format;
    * and :func:`digits_recaption_splits`'s ``train`` / ``val`` / ``pool`` / ``test`` manifests.
    """
    from litzoo.datamodules.synthetic import DEFAULT_SHARES, KINDS

    if max_alt_texts < 1:
        raise ValueError(f"max_alt_texts must be positive, got {max_alt_texts}")
    root = Path(root)
    paths = digits_recaption_splits(root, seed=seed)
    rng = np.random.default_rng(seed + 2)  # its own stream: the fine-tuning files stay those of digits_recaption_splits
    shares = np.asarray(DEFAULT_SHARES, dtype=np.float64)
    for split, source, text_key in (("pretrain_train", "pool", "text"), ("pretrain_val", "val", "alt_text")):
        lines = []
        for row in (json.loads(line) for line in paths[source].read_text(encoding="utf-8").splitlines()):
            count = int(rng.integers(1, max_alt_texts + 1))
            kinds = [row["kind"]] + [KINDS[k] for k in rng.choice(len(KINDS), size=count - 1, p=shares)]
            texts = [row[text_key]] + [web_alt_text(rng, kind, row["label"]) for kind in kinds[1:]]
            longest = longest_and_other(texts, lambda n: 0)[0]
            lines.append({"image": row["image"], "alt_texts": texts, "kinds": kinds, "label": row["label"], "longest": longest})
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return paths


class DigitsAltTextPoolDataModule(AltTextPoolDataModule):
    """SYNTHETIC images with several web-like alt-texts on scikit-learn's real digits (:func:`digits_alt_text_pool_splits`),
    Altogether's pretraining stage: the pool images for training (target = the longest alt-text), the fine-tuning
    validation images for validation. Generated once into ``root/seed<seed>`` (ignored by git) and reused; the same
    folder holds :class:`DigitsRecaptionDataModule`'s triples of that seed (``train.jsonl``, ``val.jsonl``).

    Args:
        root: folder the generated data is written under.
        seed: seed of the alt-texts and of the stratified split.
        max_alt_texts: at most this many alt-texts per image (at least one).
        image_size: side of the images fed to the model (8 = native).
        vocab_size: size of the BPE trained on the training alt-texts.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, root: str = "data/digits_alttext_pool", seed: int = 0, max_alt_texts: int = 4, image_size: int = 8, vocab_size: int = 256,
                 batch_size: int = 64, num_workers: int = 0) -> None:  # fmt: skip
        folder = Path(root).expanduser() / f"seed{seed}_max{max_alt_texts}"
        self.folder = folder
        if not (folder / "pretrain_val.jsonl").is_file():
            generate_folder_atomically(folder, lambda staging: digits_alt_text_pool_splits(staging, seed=seed, max_alt_texts=max_alt_texts))
        super().__init__(
            train_manifest=str(folder / "pretrain_train.jsonl"), val_manifest=str(folder / "pretrain_val.jsonl"), image_size=image_size, channels=1,
            vocab_size=vocab_size, batch_size=batch_size, num_workers=num_workers,
        )  # fmt: skip
        self.save_hyperparameters()


__all__ = [
    "AltTextPoolDataModule", "AltTextPoolDataset", "DigitsAltTextPoolDataModule", "DigitsRecaptionDataModule", "RecaptionDataModule", "TripleDataset",
    "aligned_caption", "caption_attributes", "digits_alt_text_pool_splits", "digits_recaption_splits", "longest_and_other", "read_alt_text_pool",
    "read_triples", "resolve_image", "train_caption_tokenizer", "web_alt_text",
]  # fmt: skip
