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


def digits_caption_splits(
    root: str | Path, shares: tuple[float, ...] = DEFAULT_SHARES, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, Path]:
    """The caption pool split by image into a noisy training pool and clean held-out pairs.

    Writes the images and ``captions.jsonl`` (:func:`digits_caption_pool`), then ``train.jsonl``: the
    pool's lines for the training images (captions of every kind, the raw pool to train or curate
    on); ``val.jsonl`` and ``test.jsonl``: the held-out images, each with a class caption naming its
    true digit (for zero-shot accuracy and retrieval). The split is stratified by digit and seeded.
    Returns ``{"train": path, "val": path, "test": path}``.
    """
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in (0, 1) and sum below 1, got {val_fraction} and {test_fraction}")
    root = Path(root)
    pool = [json.loads(line) for line in digits_caption_pool(root, shares, seed).read_text(encoding="utf-8").splitlines()]
    labels = np.asarray([line["label"] for line in pool])
    rest, test = train_test_split(np.arange(len(pool)), test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed)
    rng = np.random.default_rng(seed + 1)
    paths = {}
    for split, rows in (("train", train), ("val", val), ("test", test)):
        lines = []
        for i in sorted(rows.tolist()):
            line = dict(pool[i])
            if split != "train":  # a clean pair: a class template naming the true digit
                template = CLASS_TEMPLATES[rng.integers(len(CLASS_TEMPLATES))]
                line.update(text=template.format(DIGIT_WORDS[line["label"]]), kind="class", relevance=2, caption_label=line["label"])
            lines.append(line)
        paths[split] = root / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------- text quality corpus
import os  # noqa: E402  (appended section: the text quality corpus)

# SYNTHETIC DATA for the text quality-based pruning demo (Sharma et al., arXiv:2405.01582): clean
# English-like documents from a small seeded grammar, with injected web-junk lines.
TQ_ADJECTIVES = (
    "old", "young", "quiet", "busy", "small", "large", "bright", "dark", "gentle", "tired", "clever", "brave",
    "curious", "patient", "careful", "happy", "strong", "simple", "ancient", "modern",
)  # fmt: skip
TQ_NOUNS = (
    "farmer", "teacher", "child", "doctor", "sailor", "baker", "student", "painter", "merchant", "soldier",
    "traveler", "writer", "fisherman", "gardener", "musician", "builder", "engineer", "nurse", "poet", "miller",
)  # fmt: skip
TQ_THINGS = (
    "basket", "letter", "lamp", "book", "boat", "map", "cart", "bell", "coat", "bridge", "garden", "violin",
    "ladder", "window", "bottle", "blanket", "candle", "wagon", "kettle", "compass",
)  # fmt: skip
TQ_PLACES = (
    "market", "river", "village", "harbor", "mountain", "library", "station", "forest", "school", "castle",
    "meadow", "city", "valley", "island",
)  # fmt: skip
TQ_VERBS = (
    "carried", "found", "repaired", "painted", "sold", "bought", "opened", "cleaned", "borrowed", "returned",
    "described", "followed", "visited", "admired", "built", "moved", "watched", "remembered", "lost", "shared",
)  # fmt: skip
TQ_TAILS = (
    "and walked slowly to the {place}",
    "and then waited near the {place}",
    "with great care before the evening",
    "and told a story of the {place}",
    "to prepare for the long journey",
    "and returned home to the {place}",
    "with help from the {adj} neighbor",
    "because of the rain in the {place}",
)
TQ_JUNK_KINDS = ("navigation", "repeated", "shout", "code", "lorem", "numbers")
TQ_LOREM = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "tempor", "magna", "aliqua")
TQ_NAV = ("home", "about", "login", "menu", "next", "prev", "share", "tags", "cart", "faq", "rss", "search")


def _tq_random_word(rng: np.random.Generator, low: int = 3, high: int = 8) -> str:
    return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(low, high))))


def _tq_clean_line(rng: np.random.Generator) -> str:
    """One grammatical sentence of 11-17 words; resampled until under 0.15 repeated words."""
    pick = lambda pool: pool[int(rng.integers(len(pool)))]  # noqa: E731
    while True:
        subject = f"{pick(('The', 'Every', 'One', 'Our'))} {pick(TQ_ADJECTIVES)} {pick(TQ_NOUNS)}"
        obj = f"{pick(('the', 'her', 'his', 'their'))} {pick(TQ_ADJECTIVES)} {pick(TQ_THINGS)}"
        tail = pick(TQ_TAILS).format(place=pick(TQ_PLACES), adj=pick(TQ_ADJECTIVES))
        sentence = f"{subject} {pick(TQ_VERBS)} {obj} {tail}."
        words = sentence.lower().split()
        if 1 - len(set(words)) / len(words) < 0.15:
            return sentence


def _tq_junk_line(kind: str, rng: np.random.Generator) -> str:
    """One web-junk line of ``kind`` (random words and numbers, so no two are alike)."""
    n = int(rng.integers(5, 10))
    if kind == "navigation":
        parts = [str(rng.choice(TQ_NAV)) if rng.random() < 0.5 else _tq_random_word(rng) for _ in range(n)]
        return " | ".join(parts) + f" | page {rng.integers(1, 99)} of {rng.integers(100, 999)}"
    if kind == "repeated":
        word = _tq_random_word(rng)
        return " ".join([word] * n)
    if kind == "shout":
        words = [str(rng.choice(TQ_NOUNS + TQ_THINGS + TQ_PLACES)) for _ in range(n // 2)]
        return ("click here to win " + " ".join(words) + " " + _tq_random_word(rng) + " now").upper()
    if kind == "code":
        name, key = _tq_random_word(rng), _tq_random_word(rng)
        return f"var {name}{rng.integers(10, 99)} = {{{key}: {rng.integers(0, 999)}}}; // javascript"
    if kind == "lorem":
        return " ".join(["lorem", "ipsum", *rng.choice(TQ_LOREM, size=n).tolist(), _tq_random_word(rng)])
    if kind == "numbers":
        return " ".join(str(rng.integers(0, 10000)) if rng.random() < 0.7 else f"{rng.random() * 100:.2f}" for _ in range(n))
    raise ValueError(f"unknown junk kind {kind!r}; known: {TQ_JUNK_KINDS}")


def text_quality_corpus(root: str | Path, num_documents: int = 600, junk_share: float = 0.4, seed: int = 0) -> Path:
    """Write ``root/corpus.jsonl``, a SYNTHETIC LM corpus of clean documents and documents with web junk.

    Every document has 4-8 clean lines (one sentence each, from a seeded grammar of ~100 words).
    A share ``junk_share`` of the documents also gets 1-4 junk lines inserted at random positions:
    navigation bars, a random word repeated, all-caps spam, JavaScript with braces, lorem ipsum,
    number lists (``TQ_JUNK_KINDS``). Lines: ``{"text", "junk_lines", "junk_kinds"}``, where
    ``junk_lines`` counts the junk lines (0 = clean). Seeded: the same corpus for the same ``seed``.
    """
    if num_documents < 1:
        raise ValueError(f"num_documents must be positive, got {num_documents}")
    if not 0.0 <= junk_share <= 1.0:
        raise ValueError(f"junk_share must be in [0, 1], got {junk_share}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_documents):
        lines = [_tq_clean_line(rng) for _ in range(int(rng.integers(4, 9)))]
        kinds: list[str] = []
        if rng.random() < junk_share:
            for _ in range(int(rng.integers(1, 5))):
                kind = TQ_JUNK_KINDS[int(rng.integers(len(TQ_JUNK_KINDS)))]
                lines.insert(int(rng.integers(0, len(lines) + 1)), _tq_junk_line(kind, rng))
                kinds.append(kind)
        rows.append({"text": "\n".join(lines), "junk_lines": len(kinds), "junk_kinds": kinds})
    path = root / "corpus.jsonl"
    # written aside and renamed: runs sharing a data_dir never read a half-written corpus
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(partial, path)
    return path


def synthetic_audio_classes(root: str | Path, num_per_class: int = 40, seed: int = 0, sample_rate: int = 16000, seconds: float = 1.0,
                            splits: tuple[str, ...] = ("train", "val")) -> Path:  # fmt: skip
    """SYNTHETIC audio: write ``root/<split>/<class>/<i>.wav`` (16-bit PCM mono), ``num_per_class`` per class and split.

    Eight classes of generated sounds, each with a random level, onset and length (the sound fills 40–100%
    of the clip) over faint white noise, deterministic for a ``seed`` (each split has its own stream):

    * ``tone_low`` / ``tone_mid`` / ``tone_high``: a sine at a random frequency in 250–450 Hz, 900–1300 Hz,
      2500–3500 Hz;
    * ``chirp_up`` / ``chirp_down``: a linear sweep between ~400 Hz and ~3000 Hz, rising or falling;
    * ``am_tone``: a 600–1800 Hz sine amplitude-modulated at 4–12 Hz (depth 0.9);
    * ``white_noise``: flat-spectrum Gaussian noise; ``pink_noise``: Gaussian noise shaped to a 1/f power spectrum.

    Returns ``root``.
    """
    from litzoo.framework.data.audio import write_wav

    classes = ("am_tone", "chirp_down", "chirp_up", "pink_noise", "tone_high", "tone_low", "tone_mid", "white_noise")
    root = Path(root)
    n = int(round(sample_rate * seconds))
    time = np.arange(n) / sample_rate
    for split_index, split in enumerate(splits):
        rng = np.random.default_rng([seed, split_index])
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(num_per_class):
                length = int(n * rng.uniform(0.4, 1.0))
                start = int(rng.integers(0, n - length + 1))
                t = time[:length]
                if name.startswith("tone_"):
                    low, high = {"tone_low": (250, 450), "tone_mid": (900, 1300), "tone_high": (2500, 3500)}[name]
                    sound = np.sin(2 * np.pi * rng.uniform(low, high) * t + rng.uniform(0, 2 * np.pi))
                elif name.startswith("chirp_"):
                    f0, f1 = rng.uniform(300, 600), rng.uniform(2500, 3500)
                    if name == "chirp_down":
                        f0, f1 = f1, f0
                    duration = max(length / sample_rate, 1e-3)
                    sound = np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / duration * t**2))
                elif name == "am_tone":
                    envelope = 1 - 0.9 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))
                    sound = envelope * np.sin(2 * np.pi * rng.uniform(600, 1800) * t)
                else:
                    sound = rng.standard_normal(length)
                    if name == "pink_noise":
                        spectrum = np.fft.rfft(sound)
                        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
                        spectrum[0] = 0
                        sound = np.fft.irfft(spectrum, n=length)
                    sound = sound / (np.abs(sound).max() + 1e-9)
                clip = 0.01 * rng.standard_normal(n)
                clip[start : start + length] += rng.uniform(0.2, 0.8) * sound
                write_wav(folder / f"{i:04d}.wav", clip, sample_rate)
    return root
