"""A SYNTHETIC two-domain caption pool on scikit-learn's real digits, for MoDE's data experts (issue 21).

SYNTHETIC DATA. The images are the 1797 real 8x8 digits; the captions are generated here from two planted domains
with disjoint vocabularies, so that a caption clustering can be scored against the truth:

* domain ``"A"``: digits 0–4, captioned in vocabulary A (pencil, worksheet, chalk ...: "three in chalk");
* domain ``"B"``: digits 5–9, captioned in vocabulary B (neon, jersey, buoy ...: "neon seven");
* shared noise (``noise_share`` of the pool, either domain's digits): captions from one small list common to both
  ("a scanned image", "low resolution picture") or random letters, which name no digit.

Each line of ``train.jsonl`` (the pool): ``{"image": "images/00042.png", "text", "digit", "domain", "kind"}``
with ``domain`` the planted domain of the *image* and ``kind`` ``"class"`` or ``"noise"``. The held-out images get a
clean caption of their own domain; ``val.jsonl`` / ``test.jsonl`` hold all ten digits (labels 0–9), ``{val,test}_A``
digits 0–4 (labels 0–4) and ``{val,test}_B`` digits 5–9 (labels 0–4 = digit − 5): the three zero-shot tasks of MoDE's
evaluation. ``tokenizer.json`` is a BPE trained on every pool caption, shared by the experts and the evaluation.

The DataModule trains on the whole pool, or — given ``expert`` and a ``clustering`` step (an object with ``name`` and
``write_experts(manifest, folder)``, e.g. ``litzoo.modules.mode.MoDEClusteringStep`` named in the config) — on the
manifest of one data expert, running the clustering once into ``<pool>/<clustering.name>/`` when it is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from litzoo.datamodules.image_text import ImageTextDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.errors import LitzooError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: vocabulary A (digits 0-4) and B (digits 5-9): short captions in which the digit word weighs as much as the domain's
DOMAIN_TEMPLATES = {
    "A": ("{} pencil sketch", "worksheet {}", "{} in chalk", "homework {}", "traced {}"),
    "B": ("neon {}", "{} jersey", "buoy {}", "{} address plate", "lottery {}"),
}
NOISE_CAPTIONS = ("a scanned image", "low resolution picture", "grey pixels, cropped", "an old photo", "file upload")
DOMAINS = {"A": range(0, 5), "B": range(5, 10)}


def two_domain_caption_pool(root: str | Path, noise_share: float = 0.2, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                            vocab_size: int = 256) -> dict[str, Path]:  # fmt: skip
    """Write the SYNTHETIC two-domain pool into ``root`` (images, ``train.jsonl``, the evaluation manifests and
    ``tokenizer.json``); returns ``{"train", "val", "test", "val_A", "test_A", "val_B", "test_B": path}``.

    Images are split stratified by digit (seeded); a pool image gets a noise caption with probability ``noise_share``
    and otherwise a caption of its digit in its domain's vocabulary (template drawn uniformly). Seeded: the same pool
    for the same arguments.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 <= noise_share < 1.0:
        raise ValueError(f"noise_share must be in [0, 1), got {noise_share}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in (0, 1) and sum below 1, got {val_fraction} and {test_fraction}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    labels = digits.target
    for i, pixels in enumerate(digits.images):  # 0..16 grey levels -> 0..255, lossless PNG
        Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L").save(root / f"images/{i:05d}.png")
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed)
    rng = np.random.default_rng(seed)

    def line(i: int, noisy: bool) -> dict:
        digit = int(labels[i])
        domain = "A" if digit < 5 else "B"
        if noisy:
            text = NOISE_CAPTIONS[rng.integers(len(NOISE_CAPTIONS))] if rng.random() < 0.5 else _random_letters(rng)
        else:
            templates = DOMAIN_TEMPLATES[domain]
            text = templates[rng.integers(len(templates))].format(DIGIT_WORDS[digit])
        return {"image": f"images/{i:05d}.png", "text": text, "digit": digit, "domain": domain, "kind": "noise" if noisy else "class"}

    # the pool carries no "label": a task's labels (0-9, or 0-4 within a domain) belong to the evaluation manifests
    files = {"train": [line(i, rng.random() < noise_share) for i in sorted(train.tolist())]}
    for split, rows in (("val", val), ("test", test)):
        clean = [{**row, "label": row["digit"]} for row in (line(i, False) for i in sorted(rows.tolist()))]
        files[split] = clean
        for domain, digits_of in DOMAINS.items():
            files[f"{split}_{domain}"] = [{**row, "label": row["digit"] - digits_of.start} for row in clean if row["digit"] in digits_of]
    paths = {}
    for name, rows in files.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    TextTokenizer.train([row["text"] for row in files["train"]], vocab_size=vocab_size).save(root / "tokenizer.json")
    return paths


def _random_letters(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), size=int(rng.integers(8, 24)))).strip() or "x"


class ExpertSplit(Protocol):
    """A clustering step that splits a pool manifest into one training manifest per data expert."""

    @property
    def name(self) -> str: ...

    def write_experts(self, manifest: str | Path, output: str | Path) -> list[Path]: ...


class TwoDomainCaptionsDataModule(ImageTextDataModule):
    """The SYNTHETIC two-domain caption pool (see the module docstring): the whole pool or one data expert's pairs for
    training, and a zero-shot task of all ten digits or of one domain's five for validation and test.

    Args:
        root: folder the generated pools are written under (``root/seed<seed>-noise<noise_share>``).
        noise_share: share of pool captions that are shared noise.
        seed: seed of the captions and of the stratified image split.
        task: the validation / test task: ``"all"`` (ten digits), ``"A"`` (digits 0–4) or ``"B"`` (digits 5–9).
        expert: train on this data expert's manifest (needs ``clustering``); ``None`` = the whole pool.
        clustering: the clustering step that writes the experts' manifests (not saved in the hyper-parameters).
        image_size: side of the images fed to the model (8 = native).
        vocab_size: tokens of the BPE trained on the pool's captions.
        context_length: tokens per caption.
        batch_size: pairs per batch (per process under DDP).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        root: str = "data/two_domain_captions",
        noise_share: float = 0.2,
        seed: int = 0,
        task: Literal["all", "A", "B"] = "all",
        expert: int | None = None,
        clustering: ExpertSplit | None = None,
        image_size: int = 8,
        vocab_size: int = 256,
        context_length: int = 16,
        batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        if task not in ("all", "A", "B"):
            raise ValueError(f"task must be 'all', 'A' or 'B', got {task!r}")
        if (expert is None) != (clustering is None):
            raise ValueError("expert and clustering go together: pass both to train a data expert, neither to train on the whole pool")
        if expert is not None and expert < 0:
            raise ValueError(f"expert must be >= 0, got {expert}")
        if not 0.0 <= noise_share < 1.0:
            raise ValueError(f"noise_share must be in [0, 1), got {noise_share}")
        folder = Path(root).expanduser() / f"seed{seed}-noise{noise_share:g}-v{vocab_size}"
        if not (folder / "tokenizer.json").is_file():  # written last: its presence means the pool is whole
            generate_folder_atomically(
                folder, lambda staging: two_domain_caption_pool(staging, noise_share, seed=seed, vocab_size=vocab_size)
            )
        self.pool_folder = folder
        train = folder / "train.jsonl"
        if clustering is not None:
            experts_folder = folder / clustering.name
            if not (experts_folder / "summary.json").is_file():  # the clustering step writes it with the others
                generate_folder_atomically(experts_folder, lambda staging: clustering.write_experts(train, staging))
            train = experts_folder / f"expert_{expert}.jsonl"
            if not train.is_file():
                found = sorted(p.name for p in experts_folder.glob("expert_*.jsonl"))
                raise LitzooError(f"data expert {expert} has no manifest '{train}' (the clustering wrote {found})")
            self.experts_folder = experts_folder
        suffix = "" if task == "all" else f"_{task}"
        names = list(DIGIT_WORDS) if task == "all" else [DIGIT_WORDS[d] for d in DOMAINS[task]]
        super().__init__(
            train_manifest=str(train),
            val_manifest=str(folder / f"val{suffix}.jsonl"),
            test_manifest=str(folder / f"test{suffix}.jsonl"),
            class_names=names,
            image_size=image_size,
            channels=1,
            tokenizer_path=str(folder / "tokenizer.json"),
            vocab_size=vocab_size,
            context_length=context_length,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        # the clustering step is an object: a checkpoint keeps plain values only (it loads with weights_only=True)
        self.save_hyperparameters(ignore=["clustering"])
