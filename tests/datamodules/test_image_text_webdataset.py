"""WebDataset tar shards in ImageTextDataModule (datamodules/image_text.py): one record → the same item as a manifest's,
streamed training shards (split over workers, equal steps), evaluation shards, a CLIP fit and its exact resume, bad shards.

Every shard is written here in its exact on-disk format: tar members ``{key}.png`` (the bytes of the same PNG files a
JSONL manifest points at), ``{key}.txt`` / ``{key}.json``, ``{key}.cls``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from litzoo.datamodules.image_text import ImageTextDataModule
from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.data.shard_stream import ShardStream
from litzoo.framework.data.shards import ShardWriter, iter_samples
from litzoo.framework.errors import LitzooError, one_line

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_pairs(count: int, offset: int = 0) -> list[tuple[np.ndarray, str, int]]:
    """``count`` (8x8 uint8 digit image, caption, label) from scikit-learn's real digits, from ``offset`` on."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pairs = []
    for i in range(offset, offset + count):
        label = int(digits.target[i])
        pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        pairs.append((pixels, f"a photo of the number {WORDS[label]}" if i % 3 else f"handwritten {WORDS[label]} number {i}", label))
    return pairs


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_pool(folder: Path, pairs: list, shard_sizes: list[int], caption: str = "txt", labels: bool = True, prefix: str = "pool") -> tuple[Path, list[Path]]:
    """The same pairs as a JSONL manifest (``folder/manifest.jsonl`` + PNG files) and as WebDataset tar shards
    ``folder/<prefix>-{000..}.tar`` (the PNG files' bytes; caption in ``.txt`` or ``.json["caption"]``)."""
    assert sum(shard_sizes) == len(pairs)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, shards, position = [], [], 0
    for number, size in enumerate(shard_sizes):
        shard = folder / f"{prefix}-{number:03d}.tar"
        with ShardWriter(shard) as writer:
            for i in range(position, position + size):
                pixels, text, label = pairs[i]
                data = png_bytes(pixels)
                (folder / "images" / f"{prefix}{i:05d}.png").write_bytes(data)
                row = {"image": f"images/{prefix}{i:05d}.png", "text": text}
                record = {"__key__": f"{prefix}{i:05d}", "png": data}
                record.update({"txt": text} if caption == "txt" else {"json": {"caption": text, "id": i}})
                if labels:
                    row["label"] = record["cls"] = label
                rows.append(row)
                writer.write(record)
        shards.append(shard)
        position += size
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest, shards


def datamodule(**kwargs) -> ImageTextDataModule:
    options = dict(image_size=8, channels=1, vocab_size=64, context_length=8, batch_size=4, class_names=WORDS, shuffle_buffer=0)
    options.update(kwargs)
    return ImageTextDataModule(**options)


def assert_same_item(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ------------------------------------------------------------------------------------------ item_from_record


@pytest.mark.parametrize(("channels", "caption"), [(1, "txt"), (3, "json")])
def test_item_from_record_equals_the_manifest_item_for_the_same_pair(tmp_path, channels, caption):
    pairs = digit_pairs(12)
    manifest, shards = write_pool(tmp_path, pairs, [5, 7], caption=caption)
    dm = datamodule(train_manifest=str(manifest), channels=channels, tar_text_key="txt" if caption == "txt" else "json.caption")
    mapped = dm.dataset("train")
    samples = [sample for shard in shards for sample in iter_samples(shard)]
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(mapped) == len(samples) == len(lines) == 12
    for index, (sample, line) in enumerate(zip(samples, lines, strict=True)):
        expected = mapped[index]
        assert set(expected) == {"image", "text", "tokens", "index", "label"} and expected["image"].shape == (channels, 8, 8)
        assert_same_item(dm.item_from_record(sample.record, shard=sample.shard, index=index), expected)  # the tar sample
        assert_same_item(dm.item_from_record(line, index=index), expected)  # the raw manifest line, relative path
    # the pixels by hand: /255 then (x - 0.5) / 0.5, a grey image giving equal channels
    expected = torch.from_numpy(pairs[3][0].astype(np.float32) / 255 - 0.5) / 0.5
    for c in range(channels):
        torch.testing.assert_close(dm.item_from_record(samples[3].record)["image"][c], expected, atol=1e-6, rtol=1e-6)
    # negative control: another sample's record gives another item
    other = dm.item_from_record(samples[4].record, index=3)
    assert not torch.equal(other["image"], mapped[3]["image"])


def test_item_from_record_without_label_and_with_bytes_or_absolute_paths(tmp_path):
    pairs = digit_pairs(3)
    manifest, shards = write_pool(tmp_path, pairs, [3], labels=False)
    dm = datamodule(train_manifest=str(manifest))
    item = dm.item_from_record(next(iter_samples(shards[0])).record)
    assert set(item) == {"image", "text", "tokens", "index"} and int(item["index"]) == -1
    absolute = {"image": str(tmp_path / "images" / "pool00001.png"), "text": pairs[1][1]}
    inline = {"image": png_bytes(pairs[1][0]), "text": pairs[1][1]}
    assert_same_item(dm.item_from_record(absolute, index=1), dm.dataset("train")[1])
    assert_same_item(dm.item_from_record(inline, index=1), dm.dataset("train")[1])
    # a JSONL shard's relative path is relative to that shard's folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.png").write_bytes(png_bytes(pairs[2][0]))
    assert_same_item(dm.item_from_record({"image": "x.png", "text": pairs[2][1]}, shard=elsewhere / "part.jsonl", index=2), dm.dataset("train")[2])


def test_bad_samples_raise_one_line_naming_shard_and_key(tmp_path):
    manifest, _ = write_pool(tmp_path, digit_pairs(2), [2])
    dm = datamodule(train_manifest=str(manifest), class_names=["a", "b"])
    good = png_bytes(digit_pairs(1)[0][0])
    bad = tmp_path / "bad.tar"
    with ShardWriter(bad) as writer:
        writer.write({"__key__": "no-image", "txt": "a caption", "json": {"caption": "x"}})
        writer.write({"__key__": "broken", "png": good[:40], "txt": "a caption"})
        writer.write({"__key__": "no-caption", "png": good, "json": {"url": "x"}})
        writer.write({"__key__": "bad-label", "png": good, "txt": "a caption", "cls": 7})
    samples = {sample.key: sample for sample in iter_samples(bad)}
    expected = {
        "no-image": r"has no image member \(\.jpg, \.jpeg, \.png or \.webp; its members: \.txt, \.json\)",
        "broken": r"member '\.png': cannot decode image: .+",
        "no-caption": r"has no caption 'txt'",
        "bad-label": r"label \.cls must be an integer in 0\.\.1 \(class_names\), got 7",
    }
    for key, message in expected.items():
        with pytest.raises(LitzooError, match=re.escape(f"shard '{bad}' sample '{key}'") + ".*" + message) as info:
            dm.item_from_record(samples[key].record, shard=bad)
        assert "\n" not in str(info.value) and "BytesIO" not in str(info.value)
    with pytest.raises(LitzooError, match=r"sample 'no-image' has no image member"):  # without the shard: the key still
        dm.item_from_record(samples["no-image"].record)
    with pytest.raises(LitzooError, match=re.escape(f"shard '{tmp_path / 'p.jsonl'}' sample 'p.jsonl:3': cannot read image")):
        dm.item_from_record({"image": "missing.png", "text": "x"}, shard=tmp_path / "p.jsonl", key="p.jsonl:3")
    with pytest.raises(LitzooError, match=r"record has no string 'text'"):
        dm.item_from_record({"image": "images/pool00000.png", "caption": "x"})


# ------------------------------------------------------------------------------------------ split options


def test_split_options_are_exclusive_and_checked(tmp_path):
    manifest, shards = write_pool(tmp_path, digit_pairs(4), [4])
    with pytest.raises(ValueError, match="train pairs are given twice: pass train_manifest or train_shards, not both"):
        datamodule(train_manifest=str(manifest), train_shards=str(shards[0]))
    with pytest.raises(ValueError, match="val pairs are given twice"):
        datamodule(train_manifest=str(manifest), val_manifest=str(manifest), val_shards=str(shards[0]))
    with pytest.raises(ValueError, match="needs the training pairs"):
        datamodule(val_manifest=str(manifest))
    with pytest.raises(ValueError, match="test_shards must be a non-empty"):
        datamodule(train_manifest=str(manifest), test_shards=[])
    with pytest.raises(ValueError, match="tar_text_key"):
        datamodule(train_manifest=str(manifest), tar_text_key="")
    with pytest.raises(ValueError, match="shuffle_buffer"):
        datamodule(train_manifest=str(manifest), shuffle_buffer=-1)
    dm = datamodule(train_shards=str(tmp_path / "pool-{000..000}.tar"), test_shards=str(shards[0]))
    assert dm.has_split("train") and dm.has_split("test") and not dm.has_split("val") and dm.val_dataloader() == []
    with pytest.raises(LitzooError, match=r"shard spec .*missing-.*do not exist"):
        datamodule(train_shards=str(tmp_path / "missing-{000..001}.tar")).setup("fit")


# ------------------------------------------------------------------------------------------ evaluation shards


@pytest.mark.parametrize("compressed", [False, True])
def test_evaluation_shards_read_like_the_manifest(tmp_path, compressed):
    pairs = digit_pairs(10)
    manifest, shards = write_pool(tmp_path, pairs, [4, 6])
    if compressed:  # a gzip-compressed tar (no random access: its images are held in memory)
        import gzip

        for shard in shards:
            shard.write_bytes(gzip.compress(shard.read_bytes()))
    from_manifest = datamodule(train_manifest=str(manifest), val_manifest=str(manifest))
    from_shards = datamodule(train_manifest=str(manifest), val_shards=[str(s) for s in shards])
    a, b = from_manifest.dataset("val"), from_shards.dataset("val")
    assert len(a) == len(b) == 10 and a.texts == b.texts and torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    for index in range(10):
        assert_same_item(a[index], b[index])
    batch = next(iter(from_shards.val_dataloader()))
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["label"].tolist() == [p[2] for p in pairs[:4]]
    # the labels are checked against class_names as a manifest's are
    with pytest.raises(LitzooError, match=r"the val shards .* has labels outside 0\.\.1"):
        datamodule(train_manifest=str(manifest), val_shards=str(shards[0]), class_names=["a", "b"]).dataset("val")


def test_jsonl_evaluation_shards_resolve_images_from_their_folder(tmp_path):
    from litzoo.framework.data.shards import ShardWriter as Writer

    manifest, _ = write_pool(tmp_path, digit_pairs(6), [6])
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    (tmp_path / "parts").mkdir()
    for number, part in enumerate((lines[:2], lines[2:])):  # the same lines, image paths relative to the shard's folder
        with Writer(tmp_path / "parts" / f"val-{number}.jsonl.gz") as writer:
            for line in part:
                writer.write({**line, "image": f"../{line['image']}"})
    expected = datamodule(train_manifest=str(manifest), val_manifest=str(manifest)).dataset("val")
    dataset = datamodule(train_manifest=str(manifest), val_shards=str(tmp_path / "parts")).dataset("val")
    assert len(dataset) == 6 and all(isinstance(image, Path) for image in dataset.images)
    for index in range(6):
        assert_same_item(dataset[index], expected[index])
    with Writer(tmp_path / "parts" / "val-1.jsonl.gz") as writer:
        writer.write({"image": "nowhere.png", "text": "lost"})
    with pytest.raises(LitzooError, match=re.escape(f"shard '{tmp_path / 'parts' / 'val-1.jsonl.gz'}' sample 'val-1.jsonl.gz:0': image '") + ".*nowhere.png' does not exist"):
        datamodule(train_manifest=str(manifest), val_shards=str(tmp_path / "parts")).dataset("val")


def test_evaluation_shards_errors(tmp_path):
    manifest, _ = write_pool(tmp_path, digit_pairs(2), [2])
    bad = tmp_path / "eval.tar"
    with ShardWriter(bad) as writer:
        writer.write({"__key__": "k0", "png": png_bytes(digit_pairs(1)[0][0]), "txt": "fine"})
        writer.write({"__key__": "k1", "txt": "no image"})
    with pytest.raises(LitzooError, match=re.escape(f"shard '{bad}' sample 'k1' has no image member")):
        datamodule(train_manifest=str(manifest), val_shards=str(bad)).dataset("val")
    with ShardWriter(bad) as writer:
        writer.write({"__key__": "k0", "png": png_bytes(digit_pairs(1)[0][0]), "json": {"caption": "in json"}})
    with pytest.raises(LitzooError, match=re.escape(f"shard '{bad}' sample 'k0' has no string 'txt'")):
        datamodule(train_manifest=str(manifest), val_shards=str(bad)).dataset("val")
    with ShardWriter(bad) as writer:
        writer.write({"__key__": "k0", "png": b"not a png", "txt": "undecodable"})
    dataset = datamodule(train_manifest=str(manifest), val_shards=str(bad)).dataset("val")
    with pytest.raises(LitzooError, match=re.escape(f"shard '{bad}' member 'k0.png': cannot decode image: cannot identify image file")):
        dataset[0]


# ------------------------------------------------------------------------------------------ streamed training shards


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_training_batches_hold_the_manifest_items(tmp_path, num_workers):
    pairs = digit_pairs(22)
    manifest, shards = write_pool(tmp_path, pairs, [6, 4, 7, 5])
    streamed = datamodule(train_shards=[str(s) for s in shards], num_workers=num_workers, batch_size=3, shuffle_buffer=4)
    mapped = datamodule(train_manifest=str(manifest)).dataset("train")
    # the BPE is trained on the same captions in the same order, streamed from the shards
    assert streamed.tokenizer.tokenizer.get_vocab() == datamodule(train_manifest=str(manifest)).tokenizer.tokenizer.get_vocab()
    streamed.setup("fit")
    stream = streamed.train_dataset
    assert isinstance(stream, ShardStream) and stream.counts == [6, 4, 7, 5]
    loader = streamed.train_dataloader()
    assert isinstance(loader, ResumableLoader) and loader.batch_size is None
    orders = []
    for _epoch in range(2):
        length = len(loader)
        batches = list(loader)
        assert len(batches) == length and all(len(batch["text"]) <= 3 for batch in batches)
        indices = [int(i) for batch in batches for i in batch["index"]]
        assert sorted(indices) == list(range(22))  # one rank: every pair once
        for batch in batches:
            assert set(batch) == {"image", "text", "tokens", "index", "label"} and batch["image"].shape[1:] == (1, 8, 8)
            for row, index in enumerate(batch["index"].tolist()):
                expected = mapped[index]  # the same pair in the manifest: the same image, caption, tokens, label
                assert torch.equal(batch["image"][row], expected["image"]) and batch["text"][row] == expected["text"]
                assert torch.equal(batch["tokens"][row], expected["tokens"]) and batch["label"][row] == expected["label"]
        orders.append(indices)
    assert orders[0] != orders[1]  # a new order every epoch


def test_the_trainer_rank_picks_its_shards(tmp_path):
    _, shards = write_pool(tmp_path, digit_pairs(24), [4] * 6)
    seen = []
    for rank in (0, 1):
        dm = datamodule(train_shards=str(tmp_path / "pool-{000..005}.tar"), batch_size=4)
        dm.trainer = type("Trainer", (), {"global_rank": rank, "world_size": 2})()  # what Lightning attaches
        indices = [int(i) for batch in dm.train_dataloader() for i in batch["index"]]
        order = dm.train_dataset.shard_order(0)
        assert {i // 4 for i in indices} == set(order[rank::2])  # its shards of epoch 0's order
        seen.append(set(indices))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(24))


def test_mixed_labels_in_a_streamed_batch_are_refused(tmp_path):
    _, labelled = write_pool(tmp_path / "a", digit_pairs(2), [2])
    _, unlabelled = write_pool(tmp_path / "b", digit_pairs(2, offset=2), [2], labels=False, prefix="other")
    dm = datamodule(train_shards=[str(labelled[0]), str(unlabelled[0])], batch_size=4)
    with pytest.raises(LitzooError, match="mixes samples with and without a label"):
        list(dm.train_dataloader())


def test_a_bad_training_shard_names_shard_and_key_through_the_workers(tmp_path):
    _, shards = write_pool(tmp_path, digit_pairs(4), [4])
    bad = tmp_path / "bad.tar"
    with ShardWriter(bad) as writer:
        writer.write({"__key__": "ok", "png": png_bytes(digit_pairs(1)[0][0]), "txt": "fine"})
        writer.write({"__key__": "broken", "png": b"\x89PNG\r\n\x1a\n truncated", "txt": "an undecodable image"})
    dm = datamodule(train_shards=[str(bad)], tokenizer_path=None, num_workers=1, batch_size=2)
    dm.tokenizer  # noqa: B018 (trained from the shard's captions, which are fine)
    with pytest.raises(Exception) as info:
        list(dm.train_dataloader())
    assert re.fullmatch(re.escape(f"shard '{bad}' sample 'broken' member '.png': cannot decode image: ") + ".+", one_line(info.value))


# ------------------------------------------------------------------------------------------ CLIP on shards, resumed

STEPS, SAVE_AT, KILL_AT = 12, 17, 20  # 12 steps an epoch, 2 epochs; a checkpoint mid-epoch 1, the process dies 3 steps later


class Killed(Exception):
    pass


class Record(L.Callback):
    """The pool indices of every training batch, and a kill at ``kill`` steps."""

    def __init__(self, kill: int | None = None) -> None:
        self.kill, self.batches = kill, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.kill:
            raise Killed
        self.batches.append((trainer.global_step, batch["index"].tolist()))


def clip_fit(root: Path, shards: list[Path], val: dict, seed: int, kill: bool = False, ckpt_path: Path | None = None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from litzoo.framework.resume import ExactResume
    from litzoo.modules.clip import CLIPModule

    L.seed_everything(seed)
    data = datamodule(train_shards=[str(s) for s in shards], batch_size=8, num_workers=2, shuffle_buffer=4, **val)
    model = CLIPModule(vocab_size=64, embed_dim=16, image_size=8, patch_size=4, in_chans=1, vision_width=16, vision_depth=1, vision_heads=2,
                       context_length=8, text_width=16, text_depth=1, text_heads=2, warmup_steps=2, zero_shot_templates=["{}"])  # fmt: skip
    record = Record(KILL_AT if kill else None)
    callbacks = [record, ExactResume()]
    if kill:
        callbacks.append(ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=SAVE_AT, save_top_k=-1))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=kill, default_root_dir=root, callbacks=callbacks, num_sanity_val_steps=0)  # fmt: skip
    if kill:
        with pytest.raises(Killed):
            trainer.fit(model, datamodule=data)
    else:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, record, trainer


@pytest.mark.slow
def test_clip_trains_on_shards_and_resumes_exactly_mid_epoch(tmp_path):
    # 96 digits in 6 tar shards of 16; 2 workers take 3 shards each: 6 batches of 8 per worker, 12 steps an epoch
    manifest, shards = write_pool(tmp_path / "pool", digit_pairs(96), [16] * 6)
    _, val_shards = write_pool(tmp_path / "val", digit_pairs(24, offset=200), [12, 12], prefix="val")
    straight, straight_record, trainer = clip_fit(tmp_path / "straight", shards, {"val_shards": [str(s) for s in val_shards]}, seed=0)
    assert trainer.num_training_batches == STEPS and trainer.global_step == 2 * STEPS
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["val/loss"]) and "val/zero_shot_acc" in metrics and "val/image_to_text_R@1" in metrics
    epochs = [[i for step, batch in straight_record.batches if step // STEPS == epoch for i in batch] for epoch in (0, 1)]
    assert all(sorted(indices) == list(range(96)) for indices in epochs)  # each epoch read every training pair once
    assert epochs[0] != epochs[1]  # in the order of its own epoch (the loader gave the stream its epoch)
    # killed mid-epoch 1, resumed from the checkpoint of step 17 with another seed: the same batches, the same weights
    clip_fit(tmp_path / "killed", shards, {"val_manifest": str(manifest)}, seed=0, kill=True)
    checkpoint = tmp_path / "killed" / f"step={SAVE_AT}.ckpt"
    assert torch.load(checkpoint, weights_only=True)["callbacks"]["ExactResume"]["train_loaders"] == [{"seed": 0, "epoch": 1, "batches": SAVE_AT - STEPS}]
    resumed, resumed_record, resumed_trainer = clip_fit(tmp_path / "resumed", shards, {"val_shards": [str(s) for s in val_shards]}, seed=123,
                                                        ckpt_path=checkpoint)  # fmt: skip
    assert resumed_trainer.global_step == 2 * STEPS
    assert resumed_record.batches == straight_record.batches[SAVE_AT:]  # the rest of epoch 1, batch for batch
    assert resumed_record.batches[0][1] != straight_record.batches[STEPS][1]  # not the start of the epoch (negative control)
    a, b = straight.state_dict(), resumed.state_dict()
    difference = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())
    assert difference <= 1e-6, difference
