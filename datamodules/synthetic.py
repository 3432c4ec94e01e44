"""Synthetic image-text pools built from scikit-learn's digits, for the curation and CLIP demos.

SYNTHETIC DATA. The images are the 1797 real digits; the captions are generated here, with a known
relevance to the image, so that curation can be scored against the truth. The pool is written in
the on-disk format of released image-text pools: a JSONL manifest of
``{"image": path, "text": caption, ...}`` lines next to the image files (8x8 grey PNGs).

Caption kinds (``kind`` field) and their default shares of the pool:

* ``"class"`` (0.4): the digit's word in one of several templates ("a photo of the number seven");
* ``"wrong"`` (0.1): the same templates naming another digit (a mislabelled pair);
* ``"generic"`` (0.2): a caption about handwriting with no digit word ("a scanned handwritten mark");
* ``"distractor"`` (0.2): an unrelated caption ("a red car parked on the street");
* ``"noise"`` (0.1): random letters.

``relevance`` is 2 for ``class``, 1 for ``generic`` and 0 otherwise; ``caption_label`` is the digit
a caption names (-1 when it names none).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASS_TEMPLATES = (
    "a photo of the number {}",
    "handwritten digit {}",
    "the digit {} written by hand",
    "a scan of a {}, black on white",
    "{}",
    "my kid wrote a {} today!",
    "A blurry {}. Low resolution.",
)
GENERIC_CAPTIONS = (
    "a scanned handwritten mark",
    "pen strokes on white paper",
    "a low resolution grey image",
    "someone's handwriting, cropped",
    "a form field filled in by hand",
)
DISTRACTOR_CAPTIONS = (
    "a red car parked on the street",
    "sunset over the sea",
    "two dogs playing in the park",
    "a bowl of fresh fruit on a table",
    "mountains covered in snow",
    "a crowded train station at night",
)
KINDS = ("class", "wrong", "generic", "distractor", "noise")
DEFAULT_SHARES = (0.4, 0.1, 0.2, 0.2, 0.1)


def digits_caption_pool(root: str | Path, shares: tuple[float, ...] = DEFAULT_SHARES, seed: int = 0) -> Path:
    """Write the 1797 digits as PNGs under ``root/images`` with generated captions; return the manifest path.

    Each line of ``root/captions.jsonl``: ``{"image": "images/00042.png", "text", "label", "kind",
    "relevance", "caption_label"}`` (image paths relative to the manifest). Seeded: the same pool
    for the same ``seed``.
    """
    if len(shares) != len(KINDS) or any(s < 0 for s in shares) or not np.isclose(sum(shares), 1.0):
        raise ValueError(f"shares must be {len(KINDS)} non-negative numbers summing to 1 (for {KINDS}), got {shares}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(KINDS), size=len(digits.target), p=np.asarray(shares, dtype=np.float64))
    lines = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        name = f"images/{i:05d}.png"
        # 0..16 grey levels -> 0..255, stored losslessly
        Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L").save(root / name)
        kind = KINDS[kinds[i]]
        caption_label = -1
        if kind in ("class", "wrong"):
            caption_label = int(label) if kind == "class" else int((label + rng.integers(1, 10)) % 10)
            text = CLASS_TEMPLATES[rng.integers(len(CLASS_TEMPLATES))].format(DIGIT_WORDS[caption_label])
        elif kind == "generic":
            text = GENERIC_CAPTIONS[rng.integers(len(GENERIC_CAPTIONS))]
        elif kind == "distractor":
            text = DISTRACTOR_CAPTIONS[rng.integers(len(DISTRACTOR_CAPTIONS))]
        else:
            letters = rng.choice(list("abcdefghijklmnopqrstuvwxyz "), size=int(rng.integers(8, 30)))
            text = "".join(letters).strip() or "x"
        relevance = {"class": 2, "generic": 1}.get(kind, 0)
        lines.append({"image": name, "text": text, "label": int(label), "kind": kind, "relevance": relevance, "caption_label": caption_label})
    manifest = root / "captions.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest
