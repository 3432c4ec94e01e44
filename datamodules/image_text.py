"""Image-text pairs from JSONL manifests or WebDataset tar shards, the on-disk formats of released pools.

A JSONL manifest (LAION/DataComp/MetaCLIP parquet dumps exported to JSON lines, CC3M/CC12M TSVs converted, COCO/Flickr
retrieval splits) holds one pair per line, its image path relative to the manifest's folder (or absolute)::

    {"image": "images/000001.jpg", "text": "a dog on a beach", "label": 3, ...}

WebDataset tar shards (https://github.com/webdataset/webdataset; what img2dataset writes and open_clip and DataComp train
on) hold each pair as consecutive members sharing a key: the image ``{key}.jpg`` (or ``.jpeg``, ``.png``, ``.webp``,
tried in that order), the caption ``{key}.txt`` (open_clip reads ``rename(image="jpg;png;jpeg;webp", text="txt")``)
or a field of ``{key}.json`` (``tar_text_key="json.caption"``), and optionally a class label ``{key}.cls``. A split is given either
as a manifest or as shards (a spec of :func:`litzoo.framework.data.shards.expand_shards`: ``"pool/{00000..00099}.tar"``,
a glob, a folder, a ``.shards`` list); JSONL / Parquet shards of manifest lines work too (image paths relative to each
shard's folder).

Training shards are streamed (:class:`litzoo.framework.data.shard_stream.ShardStream`): each epoch the shard list is
shuffled from ``(seed, epoch)``, split across DDP ranks and DataLoader workers (shard ``i`` read by exactly one of them),
and every rank takes the same number of steps; memory holds a shuffle buffer per worker, never the pool. Validation and
test shards are read once to index their captions (the tar members' offsets are kept, so images are read on demand), as
the retrieval metrics need random access and every rank's full share.

Images are read with Pillow when an item is loaded; captions are tokenized with a BPE tokenizer trained on the training
captions (the `tokenizers` library; streamed from training shards) or loaded from a ``tokenizer.json``.
:meth:`ImageTextDataModule.item_from_record` turns one manifest line or one WebDataset sample into the same training
item the datasets yield (CiT's streamed pool uses it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from litzoo.datamodules.image_folder import ImageFileDataset
from litzoo.framework.data.jsonl import iter_jsonl
from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.data.shard_stream import ShardStream, TarMember, tar_members
from litzoo.framework.data.shards import Sample, expand_shards, get_text, iter_samples, shard_format, split_member_name
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.data.transforms import Normalize, check_image_options
from litzoo.framework.errors import LitzooError

#: Extensions of the image member of a WebDataset sample, tried in this order (open_clip tries ``jpg;png;jpeg;webp``).
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")


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
        if label_key is not None and label_key in row and not _is_label(row[label_key]):
            raise LitzooError(f"manifest '{path}' line {number}: \"{label_key}\" must be an integer, got {row[label_key]!r}")
        rows.append({**row, image_key: image})
    if not rows:
        raise LitzooError(f"manifest '{path}' holds no pairs")
    return rows


def _is_label(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class InlineImage:
    """Image bytes held in memory (a member of a gzip-compressed tar, a Parquet column), with where they come from."""

    data: bytes
    where: str


def image_from_bytes(reader: ImageFileDataset, data: bytes, where: str) -> Tensor:
    """Encoded image bytes decoded exactly as ``reader.load`` decodes a file (mode, [0, 1], resize, normalisation).

    Raises:
        LitzooError: ``"<where>: cannot decode image: <reason>"`` for bytes Pillow cannot decode.
    """
    buffer = io.BytesIO(data)
    try:
        return reader.load(buffer)
    except LitzooError as error:
        cause = error.__cause__
        reason = " ".join(str(cause).replace(repr(buffer), "").split()) if cause is not None else str(error)
        raise LitzooError(f"{where}: cannot decode image: {reason or type(cause).__name__}") from cause


def load_image(reader: ImageFileDataset, source: Path | TarMember | InlineImage) -> Tensor:
    """The image of an image file, a member of an uncompressed tar shard, or bytes held in memory."""
    if isinstance(source, TarMember):
        return image_from_bytes(reader, source.read(), f"shard '{source.shard}' member '{source.name}'")
    if isinstance(source, InlineImage):
        return image_from_bytes(reader, source.data, source.where)
    return reader.load(source)


class ImageTextDataset(Dataset):
    """Image-caption pairs: ``{"image": (C, S, S), "text": str, "tokens": (L,) long, "index": ()}`` items,
    plus ``"label"`` when every pair has one.

    ``texts`` and ``tokens`` (all captions, tokenized) are public: curation reads the captions of the
    whole pool without opening an image. ``images`` are files, or members of tar shards read on demand.
    """

    def __init__(
        self, images: Sequence[Path | TarMember | InlineImage], texts: Sequence[str], tokens: Tensor, reader: ImageFileDataset,
        labels: Sequence[int] | None = None,
    ) -> None:  # fmt: skip
        if not len(images) == len(texts) == len(tokens) or (labels is not None and len(labels) != len(texts)):
            raise ValueError(f"images ({len(images)}), texts ({len(texts)}), tokens ({len(tokens)}) and labels must have one entry per pair")
        self.images, self.texts, self.tokens = list(images), list(texts), tokens
        self.labels = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        item = {"image": load_image(self.reader, self.images[index]), "text": self.texts[index], "tokens": self.tokens[index], "index": torch.tensor(index)}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


class PairDecoder:
    """One manifest line or WebDataset sample → the training item of :class:`ImageTextDataset` for the same pair.

    Small and picklable (DataLoader workers started by spawn get a copy): the image reader, the tokenizer and the keys.
    See :meth:`ImageTextDataModule.item_from_record`.
    """

    def __init__(
        self, reader: ImageFileDataset, tokenizer: TextTokenizer, image_key: str, text_key: str, label_key: str, tar_text_key: str,
        folder: Path | None, num_classes: int | None,
    ) -> None:  # fmt: skip
        self.reader, self.tokenizer = reader, tokenizer
        self.image_key, self.text_key, self.label_key, self.tar_text_key = image_key, text_key, label_key, tar_text_key
        self.folder, self.num_classes = folder, num_classes

    def __call__(self, record: dict, shard: str | Path | None = None, key: str | None = None, index: int = -1) -> dict:
        key = record.get("__key__", key)
        where = " ".join(([f"shard '{shard}'"] if shard is not None else []) + ([f"sample '{key}'"] if key is not None else [])) or "record"
        if "__key__" in record:  # a WebDataset sample: {"__key__", "jpg": bytes, "txt": str, "json": dict, "cls": int, ...}
            ext = next((ext for ext in IMAGE_MEMBERS if ext in record), None)
            if ext is None:
                members = ", ".join(f".{name}" for name in record if name != "__key__") or "none"
                raise LitzooError(f"{where} has no image member (.jpg, .jpeg, .png or .webp; its members: {members})")
            if not isinstance(record[ext], (bytes, bytearray)):
                raise LitzooError(f"{where} member '.{ext}' holds a {type(record[ext]).__name__}, not image bytes")
            image = image_from_bytes(self.reader, bytes(record[ext]), f"{where} member '.{ext}'")
            text = get_text(record, self.tar_text_key)
            if text is None:
                raise LitzooError(f"{where} has no caption '{self.tar_text_key}' (a .txt member, or a dotted key into its .json such as 'json.caption')")
            label, label_name = record.get("cls"), ".cls"
        else:  # a manifest line: {"image": path (or bytes), "text": str, "label": int, ...}
            text = get_text(record, self.text_key)
            if text is None:
                raise LitzooError(f"{where} has no string '{self.text_key}' (the caption)")
            image = self._manifest_image(record, shard, where)
            label, label_name = record.get(self.label_key), f'"{self.label_key}"'
        item = {"image": image, "text": text, "tokens": self.tokenizer([text])[0], "index": torch.tensor(index)}
        if label is not None:
            if not _is_label(label) or (self.num_classes is not None and not 0 <= label < self.num_classes):
                expected = "an integer" if self.num_classes is None else f"an integer in 0..{self.num_classes - 1} (class_names)"
                raise LitzooError(f"{where}: label {label_name} must be {expected}, got {label!r}")
            item["label"] = torch.tensor(label, dtype=torch.long)
        return item

    def _manifest_image(self, record: dict, shard: str | Path | None, where: str) -> Tensor:
        value = record.get(self.image_key)
        if isinstance(value, (bytes, bytearray)):
            return image_from_bytes(self.reader, bytes(value), f"{where} field '{self.image_key}'")
        if not isinstance(value, (str, Path)) or not str(value):
            raise LitzooError(f"{where} has no image path '{self.image_key}'")
        path = Path(value).expanduser()
        folder = Path(shard).parent if shard is not None else self.folder
        if not path.is_absolute() and folder is not None:
            path = folder / path
        try:
            return self.reader.load(path)
        except LitzooError as error:
            raise LitzooError(f"{where}: {error}") from error.__cause__


class _StreamItem:
    """``ShardStream``'s ``decode``: a sample of a shard and its pool index → :class:`PairDecoder`'s item (picklable)."""

    def __init__(self, decoder: PairDecoder) -> None:
        self.decoder = decoder

    def __call__(self, sample: Sample, index: int) -> dict:
        return self.decoder(sample.record, shard=sample.shard, key=sample.key, index=index)


def collate_pairs(items: list[dict]) -> dict:
    """torch's ``default_collate`` of training items, refusing a batch that mixes labelled and unlabelled pairs."""
    keys = set(items[0])
    for item in items[1:]:
        if set(item) != keys:
            raise LitzooError(
                "a batch of streamed training pairs mixes samples with and without a label (a .cls member / the label field): "
                "give every sample of the training shards a label, or none"
            )
    return default_collate(items)


class ImageTextDataModule(SplitsDataModule):
    """Image-text pairs from JSONL manifests or WebDataset tar shards, for contrastive training (CLIP) and curation (CiT).

    Batches are ``{"image": (B, C, S, S) float, "text": list[str], "tokens": (B, context_length) long,
    "index": (B,) long}`` and ``"label": (B,) long`` when the pairs carry a label. Each image is read with Pillow,
    converted to grey levels or RGB, scaled to [0, 1], resized to ``image_size`` (bilinear, antialiased when shrinking)
    and normalised with ``mean``/``std``. ``index`` is the pair's position in its split (for training shards: in the
    whole pool, the shards taken in the order given).

    Each split comes from a manifest (``<split>_manifest``) or from shards (``<split>_shards``), not both. Training
    shards are streamed by a :class:`~litzoo.framework.data.shard_stream.ShardStream`: a new shard order every epoch from
    the shuffle seed and the epoch, each shard read by one (DDP rank, DataLoader worker), a shuffle buffer of
    ``shuffle_buffer`` samples per worker, batches made in the workers (a worker's last batch may be short), the same
    number of steps on every rank (a rank whose shards hold more samples than the smallest rank's drops the excess that
    epoch), and a known length (the shards' samples are counted once: give open_clip's ``sizes.json`` next to the shards
    to skip the counting pass). Validation and test shards are indexed once (captions, labels, the offsets of the image
    members; a gzip-compressed tar's images are held in memory) and read like a manifest.

    The tokenizer is the BPE of ``tokenizer_path`` (a ``tokenizer.json``) or, without one, a BPE with
    ``vocab_size`` tokens trained on the training captions (deterministic, so every DDP rank and every
    resumed run builds the same; from training shards the captions are streamed, one more pass: for a large
    pool give a ``tokenizer_path``). Token ids are always below ``vocab_size``.

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
        train_shards: the training pairs as shards instead of a manifest: a spec of
            :func:`~litzoo.framework.data.shards.expand_shards` (``"pool/{00000..00099}.tar"``, a glob, a folder, a
            ``.shards`` list, or a list of specs); WebDataset tar shards, or JSONL / Parquet shards of manifest lines.
        val_shards: the validation pairs as shards instead of a manifest.
        test_shards: the test pairs as shards instead of a manifest.
        tar_text_key: where a WebDataset sample holds its caption: ``"txt"`` (the ``{key}.txt`` member: open_clip's,
            img2dataset's and DataComp's format) or a dotted key into its ``{key}.json`` member (``"json.caption"``).
            Its class label, when there is one, is the ``{key}.cls`` member.
        shuffle_buffer: samples each worker draws from at random when streaming training shards (WebDataset's
            ``shuffle(n)``), held before decoding (for tar shards: their encoded image bytes); 0 shuffles the shard
            order only.

    Raises:
        ValueError: a split given both as a manifest and as shards, no training pairs, or a bad option.
    """

    def __init__(
        self,
        train_manifest: str | None = None,
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
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        tar_text_key: str = "txt",
        shuffle_buffer: int = 1000,
    ) -> None:
        super().__init__(batch_size, num_workers)
        mean, std = check_image_options(image_size, channels, mean, std)
        if class_names is not None and len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be distinct, got {class_names}")
        manifests = {"train": train_manifest, "val": val_manifest, "test": test_manifest}
        shards = {"train": train_shards, "val": val_shards, "test": test_shards}
        for split in manifests:
            if manifests[split] is not None and shards[split] is not None:
                raise ValueError(f"the {split} pairs are given twice: pass {split}_manifest or {split}_shards, not both")
            if shards[split] is not None and (not shards[split] or isinstance(shards[split], (list, tuple)) and not all(shards[split])):
                raise ValueError(f"{split}_shards must be a non-empty shard spec or list of specs, got {shards[split]!r}")
        if train_manifest is None and train_shards is None:
            raise ValueError("ImageTextDataModule needs the training pairs: pass train_manifest (a JSONL manifest) or train_shards (WebDataset shards)")
        if not tar_text_key:
            raise ValueError("tar_text_key must name the caption of a WebDataset sample ('txt', or a dotted key such as 'json.caption')")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be 0 or more, got {shuffle_buffer}")
        self.save_hyperparameters()  # with mean and std filled in
        self.image_key, self.text_key, self.label_key, self.tar_text_key = image_key, text_key, label_key, tar_text_key
        self.tokenizer_path, self.vocab_size, self.context_length = tokenizer_path, vocab_size, context_length
        self.manifests, self.shard_specs, self.shuffle_buffer = manifests, shards, shuffle_buffer
        self.class_names = None if class_names is None else list(class_names)
        self.image_size, self.in_channels = image_size, channels
        self.reader = ImageFileDataset([], mode="L" if channels == 1 else "RGB", image_size=image_size, normalize=Normalize(mean, std))
        self._tokenizer: TextTokenizer | None = None
        self._decoder: PairDecoder | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, for FLOPs counting and export."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def has_split(self, split: str) -> bool:
        return self.manifests.get(split) is not None or self.shard_specs.get(split) is not None

    @property
    def tokenizer(self) -> TextTokenizer:
        """The caption tokenizer (loaded, or trained on the training captions on first use)."""
        if self._tokenizer is None:
            if self.tokenizer_path is not None:
                tokenizer = TextTokenizer.load(self.tokenizer_path, self.context_length)
                if tokenizer.vocab_size > self.vocab_size:
                    raise LitzooError(f"tokenizer file '{self.tokenizer_path}' has {tokenizer.vocab_size} tokens, more than vocab_size={self.vocab_size}")
            elif self.shard_specs["train"] is not None:
                tokenizer = TextTokenizer.train(self._shard_captions("train"), vocab_size=self.vocab_size, context_length=self.context_length)
            else:
                texts = [row[self.text_key] for row in self._rows("train")]
                tokenizer = TextTokenizer.train(texts, vocab_size=self.vocab_size, context_length=self.context_length)
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def decoder(self) -> PairDecoder:
        """The picklable record → item function behind :meth:`item_from_record` (builds the tokenizer on first use)."""
        if self._decoder is None:
            manifest = self.manifests["train"]
            folder = Path(manifest).expanduser().parent if manifest is not None else None
            self._decoder = PairDecoder(
                self.reader, self.tokenizer, self.image_key, self.text_key, self.label_key, self.tar_text_key, folder, self.num_classes
            )
        return self._decoder

    def item_from_record(self, record: dict, shard: str | Path | None = None, key: str | None = None, index: int = -1) -> dict:
        """The training item of one pair, equal to the one the split datasets yield for it.

        ``record`` is a manifest line (``{image_key: path, text_key: caption, label_key: label}``; the image may also be
        encoded bytes) or a WebDataset sample as :func:`~litzoo.framework.data.shards.iter_samples` reads it
        (``{"__key__", "jpg" | "jpeg" | "png" | "webp": bytes, "txt": str, "json": dict, "cls": int}``: the image
        member tried in that order, the caption at ``tar_text_key``, the label from ``.cls``). The item is
        ``{"image": (C, S, S) float, "text": str, "tokens": (context_length,) long, "index": () long}``, plus
        ``"label": () long`` when the record has one (checked against ``class_names``).

        Args:
            record: the manifest line or sample.
            shard: the file the record was read from: a relative image path is relative to its folder (default: the
                training manifest's folder, else the working directory), and errors name it.
            key: the sample's id, named in errors (a WebDataset sample's is its ``__key__``).
            index: the item's ``index`` (its position in its split or pool; -1 when unknown).

        Raises:
            LitzooError: one line naming the shard and key: no image member or path, an image that cannot be decoded
                or read, no caption, a label that is not an integer of ``class_names``.
        """
        return self.decoder(record, shard=shard, key=key, index=index)

    def _caption_key(self, shard: Path) -> str:
        return self.tar_text_key if shard_format(shard) == "tar" else self.text_key

    def _shard_captions(self, split: str) -> Iterator[str]:
        """The captions of a split's shards, streamed in order (a sample without one raises, naming shard and key)."""
        for shard in expand_shards(self.shard_specs[split]):
            text_key = self._caption_key(shard)
            for sample in iter_samples(shard, text_key=text_key):
                yield get_text(sample.record, text_key)

    def _rows(self, split: str) -> list[dict]:
        manifest = self.manifests.get(split)
        if manifest is None:
            raise LitzooError(f"no {split} manifest: pass --data.init_args.{split}_manifest (or {split}_shards) to use the {split} split")
        return read_manifest(manifest, self.image_key, self.text_key, self.label_key)

    def _shard_pairs(self, split: str) -> tuple[list[Path | TarMember | InlineImage], list[str], list[int | None]]:
        """The images (files, tar members, or bytes), captions and labels of an evaluation split's shards, in order."""
        images: list[Path | TarMember | InlineImage] = []
        texts: list[str] = []
        labels: list[int | None] = []
        for shard in expand_shards(self.shard_specs[split]):
            tar = shard_format(shard) == "tar"
            members = tar_members(shard) if tar else None
            offsets = {split_member_name(name): member for name, member in (members or {}).items()}
            for sample in iter_samples(shard, text_key=self._caption_key(shard)):
                record, where = sample.record, f"shard '{shard}' sample '{sample.key}'"
                if tar:
                    ext = next((ext for ext in IMAGE_MEMBERS if ext in record), None)
                    if ext is None:
                        found = ", ".join(f".{name}" for name in record if name != "__key__") or "none"
                        raise LitzooError(f"{where} has no image member (.jpg, .jpeg, .png or .webp; its members: {found})")
                    image = offsets.get((sample.key, ext)) or InlineImage(bytes(record[ext]), f"{where} member '.{ext}'")
                    label, label_name = record.get("cls"), ".cls"
                else:
                    value = record.get(self.image_key)
                    if isinstance(value, (bytes, bytearray)):
                        image = InlineImage(bytes(value), f"{where} field '{self.image_key}'")
                    elif isinstance(value, str) and value:
                        image = Path(value).expanduser()
                        image = image if image.is_absolute() else shard.parent / image
                        if not image.is_file():
                            raise LitzooError(f"{where}: image '{image}' does not exist")
                    else:
                        raise LitzooError(f"{where} has no image path '{self.image_key}'")
                    label, label_name = record.get(self.label_key), f'"{self.label_key}"'
                if label is not None and not _is_label(label):
                    raise LitzooError(f"{where}: label {label_name} must be an integer, got {label!r}")
                images.append(image)
                texts.append(get_text(record, self._caption_key(shard)))
                labels.append(label)
        if not texts:
            raise LitzooError(f"the {split} shards '{self.shard_specs[split]}' hold no pairs")
        return images, texts, labels

    def build_dataset(self, split: str) -> ImageTextDataset | ShardStream:
        if self.shard_specs.get(split) is not None and split == "train":
            return ShardStream(
                self.shard_specs[split], _StreamItem(self.decoder), batch_size=self.batch_size, collate=collate_pairs,
                num_workers=self.num_workers, shuffle=True, seed=self.shuffle_seed, shuffle_buffer=self.shuffle_buffer,
            )  # fmt: skip
        if self.shard_specs.get(split) is not None:
            images, texts, labels = self._shard_pairs(split)
            source = f"the {split} shards '{self.shard_specs[split]}'"
        else:
            rows = self._rows(split)
            images, texts = [row[self.image_key] for row in rows], [row[self.text_key] for row in rows]
            labels = [row.get(self.label_key) for row in rows]
            source = f"manifest '{self.manifests[split]}'"
        labels = labels if all(label is not None for label in labels) else None
        if labels is not None and self.class_names is not None and not all(0 <= y < len(self.class_names) for y in labels):
            raise LitzooError(f"{source} has labels outside 0..{len(self.class_names) - 1} (class_names has {len(self.class_names)})")
        return ImageTextDataset(images, texts, self.tokenizer(texts), self.reader, labels)

    def make_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """Streamed training shards: a :class:`~litzoo.framework.data.loaders.ResumableLoader` of the stream's own
        batches, on this process's DDP rank (the trainer's, when attached); else the base's loader."""
        if not isinstance(dataset, ShardStream):
            return super().make_dataloader(dataset, batch_size, shuffle)
        dataset.seed = self.shuffle_seed  # a resumed fit restores the DataModule's seed after the dataset was built
        if self.trainer is not None:
            dataset.rank, dataset.world_size = self.trainer.global_rank, self.trainer.world_size
        return ResumableLoader(dataset, batch_size=None, num_workers=self.num_workers, seed=self.shuffle_seed)

    @property
    def train_dataset(self) -> ImageTextDataset | ShardStream:
        """The training pairs (the raw pool that curation draws from); a :class:`ShardStream` for training shards."""
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
