"""Stickers: Sticker820K-style annotated image-text pairs, and a SYNTHETIC sticker set made from scikit-learn's digits.

Sticker820K (Zhao, Ge, Qi, Song, Ding, Xie, Shan; "Sticker820K: Empowering Interactive Retrieval with Stickers",
arXiv 2306.06870; code github.com/sijeh/Sticker820K, ``StickerCLIP/``) annotates each sticker with a description, its
optical characters (OCR), an emotion and a style. StickerCLIP trains on one text per sticker made of those fields:
the official loaders (``sticker_clip/training/emoji_data.py``, ``sticker_data.py``) put the fields in a random order,
drop empty ones (and the "other" label), and join them with '；'. This module reads such annotations from a JSONL file
(one sticker per line)::

    {"id": "s000042", "image": "images/s000042.png", "split": "train", "description": "a cartoon seven",
     "ocr": "LOL", "emotion": "happy", "style": "outline", "label": 7}

and writes the image-text manifests (or WebDataset tar shards) that :class:`~litzoo.datamodules.image_text.ImageTextDataModule`
reads, with the caption made of the fields chosen by ``caption_fields``. The field order of a training caption is
shuffled once per sticker (seeded): the official loader reshuffles at every read, which a fixed manifest cannot do,
so ours is one draw of that augmentation. Validation and test captions keep the order given.

Verified against the official code: the caption fields and their joining (``get_text_from_info``: description,
emotion, style and OCR text, shuffled, '；'-joined; empty fields dropped in ``sticker_data.py``), the metric
(``eval/emoji_evaluation.py``: text→image R@1/5/10 and ``mean_recall = (r1 + r5 + r10) / 3``, logged by
``CLIPModule``) and the fine-tuning recipe (``run_scripts/emoji_finetune_vit-b.sh``, see
``configs/stickerclip/stickers.yaml``). Chosen where the paper is silent or Chinese-specific: the ASCII separator
"; " (our BPE splits on punctuation either way), one emotion label per sticker (the official records hold an emotion
class and an emotion label; the "other" label is not generated), OCR text kept whole (the official cut is 24
characters). The annotation file is JSONL with our field names (``description``, ``ocr``, ``emotion``, ``style``)
where the official LMDB records say ``caption``, ``ocr_text``, ``emotion_class`` / ``emotion_label``, ``style_class``.

SYNTHETIC DATA (:func:`synthetic_stickers`): "stickers" rendered with torch ops from the 1797 real 8x8 digits of
scikit-learn, with planted attributes a test recovers from the pixels:

* emotion → the glyph's colour: each emotion has a hue (``EMOTION_HUES``, 60° apart), jittered by at most 6° per sticker
  (the ``hue`` field). Everything else drawn on a sticker is achromatic (white background, grey shadow, black
  outline and text), and putting a colour over an achromatic layer adds the same amount to R, G and B, which keeps
  its hue: the hue of every coloured pixel is the sticker's ``hue``.
* style → a transform of the glyph: ``plain``, ``outline`` (a black ring: the glyph's 3x3 dilation drawn below it),
  ``shadow`` (a grey copy 2 px down and right, below it), ``thick`` (the glyph's 3x3 dilation), ``tilted`` (rotated by
  15° to 25° either way, the ``angle`` field).
* OCR → a word (or none) drawn in black in a 3x5 pixel font in the bottom strip (rows 18-22), which nothing else reaches.
* description → the digit in one of ``DESCRIPTION_TEMPLATES`` (the ``label`` is the digit).

Stickers are 24x24 RGB PNGs; the glyph box is rows 1-14. The digit images are split 70/10/20 (stratified, seeded) and
each split's stickers are drawn from its own digits, so no test sticker shares a digit image with a training sticker.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from litzoo.datamodules.image_text import ImageTextDataModule
from litzoo.datamodules.synthetic import DIGIT_WORDS
from litzoo.framework.data.jsonl import iter_jsonl, rebase_paths
from litzoo.framework.data.shards import ShardWriter
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.errors import LitzooError

#: Emotion → hue of the glyph in degrees (six hues 60° apart, so the nearest one names the emotion).
EMOTION_HUES = {"angry": 0.0, "happy": 60.0, "calm": 120.0, "sleepy": 180.0, "sad": 240.0, "loving": 300.0}
STYLES = ("plain", "outline", "shadow", "thick", "tilted")
#: The "OCR" words; "" = a sticker without text (drawn twice as often as each word).
OCR_WORDS = ("", "", "LOL", "OK", "NO", "YES", "WOW", "HI", "BYE", "OMG")
DESCRIPTION_TEMPLATES = ("a sticker of the number {}", "a cartoon {}", "a {} sticker", "the digit {}", "{}")
#: The annotation fields a caption may be made of, in their default order.
CAPTION_FIELDS = ("description", "emotion", "style", "ocr")
SPLITS = ("train", "val", "test")
CAPTION_SEPARATOR = "; "  # the official loaders join with the full-width '；'

SIZE = 24  # side of a rendered sticker
GLYPH_TOP, GLYPH_LEFT, GLYPH_BOX = 1, 5, 14  # the 12x12 upsampled digit with a 1 px margin
OCR_TOP = 18  # the text strip: rows 18..22
HUE_JITTER = 6.0
SHADOW_GREY, SHADOW_OFFSET = 0.6, 2

#: 3x5 pixel font of the letters of OCR_WORDS ("1" = ink), one string per row.
FONT = {
    "B": ("110", "101", "110", "101", "110"),
    "E": ("111", "100", "110", "100", "111"),
    "G": ("011", "100", "101", "101", "011"),
    "H": ("101", "101", "111", "101", "101"),
    "I": ("111", "010", "010", "010", "111"),
    "K": ("101", "101", "110", "101", "101"),
    "L": ("100", "100", "100", "100", "111"),
    "M": ("101", "111", "111", "101", "101"),
    "N": ("110", "101", "101", "101", "101"),
    "O": ("111", "101", "101", "101", "111"),
    "S": ("011", "100", "010", "001", "110"),
    "W": ("101", "101", "111", "111", "101"),
    "Y": ("101", "101", "010", "010", "010"),
}


# ------------------------------------------------------------------------------------------- rendering


def text_bitmap(word: str) -> Tensor:
    """``(5, 4 * len(word) - 1)`` float mask of ``word`` in the 3x5 font, one blank column between letters."""
    if not word:
        return torch.zeros(5, 0)
    columns = []
    for i, letter in enumerate(word.upper()):
        if letter not in FONT:
            raise ValueError(f"the sticker font has no letter {letter!r} (it has {''.join(sorted(FONT))})")
        if i:
            columns.append(torch.zeros(5, 1))
        columns.append(torch.tensor([[float(c) for c in row] for row in FONT[letter]]))
    return torch.cat(columns, dim=1)


def ocr_strip_mask(word: str) -> Tensor:
    """``(SIZE, SIZE)`` mask of ``word`` where a sticker draws it: rows ``OCR_TOP``.., centred."""
    mask = torch.zeros(SIZE, SIZE)
    bitmap = text_bitmap(word)
    left = (SIZE - bitmap.shape[1]) // 2
    mask[OCR_TOP : OCR_TOP + 5, left : left + bitmap.shape[1]] = bitmap
    return mask


def _rotate(glyph: Tensor, degrees: float) -> Tensor:
    """``glyph`` (H, W) rotated about its centre (bilinear, zeros outside)."""
    angle = math.radians(degrees)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])[None]
    grid = F.affine_grid(theta, [1, 1, *glyph.shape], align_corners=False)
    return F.grid_sample(glyph[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def _dilate(alpha: Tensor) -> Tensor:
    return F.max_pool2d(alpha[None, None], 3, stride=1, padding=1)[0, 0]


def render_sticker(digit: Tensor, hue: float, style: str, ocr: str = "", angle: float = 0.0) -> Tensor:
    """A ``(3, 24, 24)`` sticker in [0, 1] from an 8x8 digit image in [0, 1].

    Layers, bottom to top: white; the shadow (grey, ``style == "shadow"``); the outline (black, ``"outline"``);
    the glyph in the fully saturated colour of ``hue`` (alpha = the digit's intensity, upsampled to 12x12, dilated for
    ``"thick"``, rotated by ``angle`` degrees for ``"tilted"``); the OCR text (black)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if digit.shape != (8, 8):
        raise ValueError(f"digit must be an 8x8 image, got shape {tuple(digit.shape)}")
    glyph = F.interpolate(digit[None, None].float(), size=(12, 12), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    glyph = F.pad(glyph, (1, 1, 1, 1))  # (14, 14)
    if style == "thick":
        glyph = _dilate(glyph)
    elif style == "tilted":
        glyph = _rotate(glyph, angle).clamp(0, 1)
    alpha = torch.zeros(SIZE, SIZE)
    alpha[GLYPH_TOP : GLYPH_TOP + GLYPH_BOX, GLYPH_LEFT : GLYPH_LEFT + GLYPH_BOX] = glyph
    image = torch.ones(3, SIZE, SIZE)

    def over(colour: Tensor | float, mask: Tensor) -> None:
        image.mul_(1 - mask).add_(mask * (colour if isinstance(colour, float) else colour[:, None, None]))

    if style == "shadow":
        over(SHADOW_GREY, torch.roll(alpha, shifts=(SHADOW_OFFSET, SHADOW_OFFSET), dims=(0, 1)))
    if style == "outline":
        over(0.0, _dilate(alpha))
    over(torch.tensor(colorsys.hsv_to_rgb((hue % 360.0) / 360.0, 1.0, 1.0), dtype=torch.float32), alpha)
    if ocr:
        over(0.0, ocr_strip_mask(ocr))
    return image


def rgb_hues(image: Tensor, min_saturation: float = 0.25) -> Tensor:
    """Hues in degrees [0, 360) of the pixels of a ``(3, H, W)`` image whose HSV saturation is at least ``min_saturation``."""
    r, g, b = image.reshape(3, -1).double()
    high, low = image.reshape(3, -1).double().max(0).values, image.reshape(3, -1).double().min(0).values
    chroma = high - low
    keep = (high > 0) & (chroma / high.clamp_min(1e-12) >= min_saturation)
    r, g, b, high, chroma = r[keep], g[keep], b[keep], high[keep], chroma[keep]
    hue = torch.where(high == r, ((g - b) / chroma) % 6, torch.where(high == g, (b - r) / chroma + 2, (r - g) / chroma + 4))
    return (hue * 60.0) % 360.0


def circular_mean_degrees(angles: Tensor) -> float:
    """The mean direction of ``angles`` (degrees), in [0, 360)."""
    radians = torch.deg2rad(angles.double())
    return float(torch.rad2deg(torch.atan2(radians.sin().mean(), radians.cos().mean()))) % 360.0


# ------------------------------------------------------------------------------------- the SYNTHETIC set


def synthetic_stickers(root: str | Path, counts: tuple[int, int, int] = (2000, 250, 500), seed: int = 0) -> Path:
    """SYNTHETIC stickers written under ``root``: ``images/<id>.png`` and ``annotations.jsonl``; returns the latter.

    ``counts`` stickers for the train, val and test splits, each drawn from its own stratified share (70/10/20) of the
    scikit-learn digits: a random digit image, emotion, style and OCR word (see the module docstring). Each
    annotation line holds ``id, image, split, description, ocr, emotion, style, label`` (the digit) and the planted
    ``hue`` and ``angle``. Deterministic in ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if len(counts) != 3 or any(int(c) < 1 for c in counts):
        raise ValueError(f"counts must be three positive sticker counts (train, val, test), got {counts}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    labels = digits.target
    rest, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=0.125, stratify=labels[rest], random_state=seed)
    pools = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    rng = np.random.default_rng(seed)
    emotions = list(EMOTION_HUES)
    lines = []
    for split, count in zip(SPLITS, counts, strict=True):
        for _ in range(int(count)):
            source = int(rng.choice(pools[split]))
            label = int(labels[source])
            emotion = emotions[int(rng.integers(len(emotions)))]
            hue = float((EMOTION_HUES[emotion] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360.0)
            style = STYLES[int(rng.integers(len(STYLES)))]
            angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 25.0)) if style == "tilted" else 0.0
            ocr = OCR_WORDS[int(rng.integers(len(OCR_WORDS)))]
            description = DESCRIPTION_TEMPLATES[int(rng.integers(len(DESCRIPTION_TEMPLATES)))].format(DIGIT_WORDS[label])
            sticker_id = f"s{len(lines):06d}"
            pixels = render_sticker(images[source], hue, style, ocr, angle)
            array = (pixels.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            Image.fromarray(array, mode="RGB").save(root / "images" / f"{sticker_id}.png")
            lines.append({
                "id": sticker_id, "image": f"images/{sticker_id}.png", "split": split, "description": description, "ocr": ocr,
                "emotion": emotion, "style": style, "label": label, "hue": round(hue, 4), "angle": round(angle, 4), "digit_index": source,
            })  # fmt: skip
    path = root / "annotations.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ annotations → manifests

#: Fields every annotation line holds as strings ("ocr" may be empty).
ANNOTATION_FIELDS = ("image", "split", "description", "ocr", "emotion", "style")


def read_annotations(path: str | Path) -> list[dict]:
    """The sticker annotations of a JSONL file, checked: the string fields of ``ANNOTATION_FIELDS``, a ``split`` of
    train / val / test, an integer ``label`` when present, an image file that exists (relative to the file's folder).

    Raises:
        LitzooError: one line naming the file and line: missing file, bad JSON, a missing or non-string field, an
            unknown split, a non-integer label, a missing image; or naming the file when it holds no sticker.
    """
    path = Path(path).expanduser()
    rows = []
    for number, row in iter_jsonl(path, ANNOTATION_FIELDS, what="sticker annotations"):
        where = f"sticker annotations '{path}' line {number}"
        if row["split"] not in SPLITS:
            raise LitzooError(f"{where}: split {row['split']!r} is not one of train, val, test")
        label = row.get("label")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
            raise LitzooError(f"{where}: \"label\" must be an integer, got {label!r}")
        image = Path(row["image"]).expanduser()
        if not (image if image.is_absolute() else path.parent / image).is_file():
            raise LitzooError(f"{where}: image '{row['image']}' does not exist")
        rows.append(row)
    if not rows:
        raise LitzooError(f"sticker annotations '{path}' hold no sticker")
    return rows


def sticker_caption(annotation: dict, fields: tuple[str, ...] | list[str], rng: np.random.Generator | None = None) -> str:
    """The text of a sticker: the non-empty ``fields`` of its annotation joined by ``"; "``, in a random order when
    ``rng`` is given (the official loader's shuffle), else in the order of ``fields``."""
    parts = [annotation[field].strip() for field in fields if annotation[field].strip()]
    if rng is not None:
        parts = [parts[i] for i in rng.permutation(len(parts))]
    return CAPTION_SEPARATOR.join(parts)


def write_sticker_splits(
    annotations: str | Path, folder: str | Path, caption_fields: tuple[str, ...] | list[str] = CAPTION_FIELDS, shuffle_fields: bool = True,
    seed: int = 0, format: Literal["jsonl", "webdataset"] = "jsonl", shard_size: int = 256,
) -> dict[str, Path]:  # fmt: skip
    """The train / val / test pairs of an annotations file written into ``folder``, which must not exist yet (call it
    through :func:`~litzoo.framework.data.staging.generate_folder_atomically`).

    ``jsonl``: ``<split>.jsonl`` manifests of ``{"image", "text", "id"[, "label"]}`` lines, image paths relative to
    ``folder``. ``webdataset``: tar shards ``<split>-00000.tar``, ``<split>-00001.tar`` … of at most ``shard_size``
    stickers, each sticker the members ``<id>.png`` (the image file's bytes), ``<id>.txt`` (the caption), ``<id>.json``
    (its annotation) and ``<id>.cls`` (the label). Returns ``{split: path}`` (the manifest, or the first shard) for the
    splits that have stickers.

    Raises:
        LitzooError: from :func:`read_annotations`; a sticker whose caption fields are all empty.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    annotations = Path(annotations).expanduser()
    folder = Path(folder)
    rows = read_annotations(annotations)
    rng = np.random.default_rng(seed)
    per_split: dict[str, list[tuple[dict, dict]]] = {split: [] for split in SPLITS}
    for number, row in enumerate(rows, start=1):
        text = sticker_caption(row, caption_fields, rng if shuffle_fields and row["split"] == "train" else None)
        if not text:
            raise LitzooError(f"sticker annotations '{annotations}' sticker {number} ({row.get('id', row['image'])}): the caption fields {list(caption_fields)} are all empty")
        line = {"image": row["image"], "text": text, "id": str(row.get("id", Path(row["image"]).stem))}
        if row.get("label") is not None:
            line["label"] = row["label"]
        per_split[row["split"]].append((line, row))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, items in per_split.items():
        if not items:
            continue
        if format == "jsonl":
            paths[split] = folder / f"{split}.jsonl"
            body = "".join(json.dumps(rebase_paths(line, ["image"], annotations.parent, folder)) + "\n" for line, _ in items)
            paths[split].write_text(body, encoding="utf-8")
        else:  # several shards, so that DDP ranks and DataLoader workers each stream some of the training ones
            paths[split] = folder / f"{split}-00000.tar"
            for number, first in enumerate(range(0, len(items), shard_size)):
                with ShardWriter(folder / f"{split}-{number:05d}.tar") as writer:
                    for line, row in items[first : first + shard_size]:
                        image = Path(row["image"]).expanduser()
                        image = image if image.is_absolute() else annotations.parent / image
                        record = {"__key__": line["id"], "png": image.read_bytes(), "txt": line["text"], "json": row}
                        if "label" in line:
                            record["cls"] = line["label"]
                        writer.write(record)
    return paths


# ------------------------------------------------------------------------------------------ the DataModule


class StickersDataModule(ImageTextDataModule):
    """Sticker image-text pairs (Sticker820K's annotation fields) for StickerCLIP's text→sticker retrieval.

    Reads ``annotations`` (a Sticker820K-style JSONL, see the module docstring) or, without one, generates the
    SYNTHETIC sticker set (:func:`synthetic_stickers`) once into ``root/synthetic-seed<seed>-<counts>``. The pairs are
    written once per choice of caption fields into ``root/pairs/<name>-<digest>`` (the digest covers the annotation
    file's path, size and modification time and the options) as JSONL manifests or WebDataset shards, and read by
    :class:`ImageTextDataModule`. The ``label`` (the digit, for the synthetic set) names ``class_names`` for zero-shot
    accuracy.

    Args:
        root: folder the synthetic set and the written pairs go under.
        annotations: a sticker annotations JSONL to read instead of the synthetic set.
        counts: synthetic stickers in the train, val and test splits.
        seed: seed of the synthetic set and of the training captions' field order.
        caption_fields: annotation fields a caption is made of, joined by "; " (empty ones left out): any of
            ``description``, ``emotion``, ``style``, ``ocr`` (StickerCLIP: all four).
        shuffle_fields: shuffle the field order of each training caption (seeded), as the official loader does.
        format: ``jsonl`` manifests or ``webdataset`` tar shards (training shards are streamed).
        class_names: names of the labels for zero-shot prompts (default: the ten digit words for the synthetic set).
        image_size: side of the images fed to the model (24 = native for the synthetic set).
        tokenizer_path: a ``tokenizer.json`` (the pretrained CLIP's, to fine-tune it); default a BPE trained on the
            training captions.
        vocab_size: size of the trained BPE; an upper bound on the ids of a loaded one.
        context_length: tokens per caption (StickerCLIP: 64).
        batch_size: pairs per batch (StickerCLIP: 64 per GPU).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        root: str = "data/stickers",
        annotations: str | None = None,
        counts: tuple[int, int, int] = (2000, 250, 500),
        seed: int = 0,
        caption_fields: list[str] | None = None,
        shuffle_fields: bool = True,
        format: Literal["jsonl", "webdataset"] = "jsonl",
        class_names: list[str] | None = None,
        image_size: int = 24,
        tokenizer_path: str | None = None,
        vocab_size: int = 256,
        context_length: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        fields = list(CAPTION_FIELDS) if caption_fields is None else list(caption_fields)
        unknown = [field for field in fields if field not in CAPTION_FIELDS]
        if not fields or unknown or len(set(fields)) != len(fields):
            raise ValueError(f"caption_fields must be distinct names among {list(CAPTION_FIELDS)}, got {caption_fields}")
        if format not in ("jsonl", "webdataset"):
            raise ValueError(f"format must be 'jsonl' or 'webdataset', got {format!r}")
        if len(counts) != 3 or any(int(c) < 1 for c in counts):
            raise ValueError(f"counts must be three positive sticker counts (train, val, test), got {counts}")
        root_path = Path(root).expanduser()
        if annotations is None:
            synthetic = root_path / "synthetic-seed{}-{}".format(seed, "-".join(str(int(c)) for c in counts))
            if not (synthetic / "annotations.jsonl").is_file():
                generate_folder_atomically(synthetic, lambda staging: synthetic_stickers(staging, tuple(int(c) for c in counts), seed))
            annotation_file = synthetic / "annotations.jsonl"
            class_names = list(DIGIT_WORDS) if class_names is None else class_names
        else:
            annotation_file = Path(annotations).expanduser()
            if not annotation_file.is_file():
                raise LitzooError(f"sticker annotations '{annotation_file}' do not exist (expected a JSONL file, one sticker a line)")
        self.annotations = annotation_file
        self.pairs_folder = self._write_pairs(root_path, annotation_file, fields, shuffle_fields, seed, format)
        first = {split: self.pairs_folder / (f"{split}.jsonl" if format == "jsonl" else f"{split}-00000.tar") for split in SPLITS}
        spec = {split: str(path if format == "jsonl" else self.pairs_folder / f"{split}-*.tar") for split, path in first.items()}
        splits = {split: spec[split] if first[split].is_file() else None for split in SPLITS}
        if splits["train"] is None:
            raise LitzooError(f"sticker annotations '{annotation_file}' have no sticker of the train split")
        key = "manifest" if format == "jsonl" else "shards"
        super().__init__(
            **{f"{split}_{key}": path for split, path in splits.items()},
            class_names=class_names,
            image_size=image_size,
            channels=3,
            tokenizer_path=tokenizer_path,
            vocab_size=vocab_size,
            context_length=context_length,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        self.save_hyperparameters()
        self.caption_fields = fields

    @staticmethod
    def _write_pairs(root: Path, annotations: Path, fields: list[str], shuffle: bool, seed: int, format: str) -> Path:
        """The folder of the written pairs, generated once (atomically: DDP ranks and parallel tests may race)."""
        stat = annotations.stat()
        options = [str(annotations.resolve()), stat.st_size, stat.st_mtime_ns, fields, shuffle, seed, format]
        digest = hashlib.sha1(json.dumps(options).encode()).hexdigest()[:12]
        folder = root / "pairs" / f"{'+'.join(fields)}-{format}-{digest}"
        done = folder / ("train.jsonl" if format == "jsonl" else "train-00000.tar")
        if not done.is_file():
            generate_folder_atomically(folder, lambda staging: write_sticker_splits(annotations, staging, fields, shuffle, seed, format))  # type: ignore[arg-type]
        return folder
