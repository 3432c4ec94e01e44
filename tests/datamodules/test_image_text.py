"""JSONL image-text manifests (datamodules/image_text.py) and the synthetic digits-captions pool."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litzoo.datamodules.image_text import DigitsCaptionsDataModule, ImageTextDataModule, read_manifest
from litzoo.datamodules.synthetic import CLASS_TEMPLATES, DIGIT_WORDS
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.errors import LitzooError

GREY = np.array([[0, 51, 102, 153], [204, 255, 10, 20], [30, 40, 50, 60], [70, 80, 90, 100]], dtype=np.uint8)
RGB = np.stack([GREY, 255 - GREY, np.full((4, 4), 128, dtype=np.uint8)], axis=-1)


def _write_pool(folder: Path, rows: list[dict] | None = None) -> Path:
    """``folder/images/{grey,colour}.png``, ``folder/../elsewhere/abs.png`` and ``folder/pairs.jsonl``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(GREY, mode="L").save(folder / "images" / "grey.png")
    Image.fromarray(RGB, mode="RGB").save(folder / "images" / "colour.png")
    elsewhere = folder.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    Image.fromarray(255 - GREY, mode="L").save(elsewhere / "abs.png")
    if rows is None:
        rows = [
            {"image": "images/grey.png", "text": "A grey square", "label": 0, "extra": 1},
            {"image": "images/colour.png", "text": "a coloured square", "label": 1},
            {"image": str(elsewhere / "abs.png"), "text": "an inverted grey square", "label": 2},
        ]
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")  # a trailing blank line is fine
    return manifest


def _datamodule(manifest: Path, **kwargs) -> ImageTextDataModule:
    args = dict(
        train_manifest=str(manifest), val_manifest=str(manifest), image_size=4, channels=1, vocab_size=64, context_length=8, batch_size=8
    )
    args.update(kwargs)
    return ImageTextDataModule(**args)


# ------------------------------------------------------------------------------------ read_manifest


def test_read_manifest_resolves_relative_and_absolute_paths(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    rows = read_manifest(manifest)
    assert [row["image"] for row in rows] == [
        tmp_path / "pool" / "images" / "grey.png",
        tmp_path / "pool" / "images" / "colour.png",
        tmp_path / "elsewhere" / "abs.png",
    ]
    assert [row["text"] for row in rows] == ["A grey square", "a coloured square", "an inverted grey square"]
    assert rows[0]["extra"] == 1 and rows[2]["label"] == 2


def _manifest_with(tmp_path: Path, lines: list[str]) -> Path:
    _write_pool(tmp_path / "pool")
    manifest = tmp_path / "pool" / "bad.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


GOOD = json.dumps({"image": "images/grey.png", "text": "a grey square", "label": 0})


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2 is not JSON"),
        (json.dumps({"image": "images/grey.png", "caption": "no text key"}), "line 2 has no string field 'text'"),
        (json.dumps({"image": "images/grey.png", "text": 5}), "line 2 has no string field 'text'"),
        (json.dumps(["images/grey.png", "a list"]), "line 2 is not a JSON object"),
        (json.dumps({"image": "images/missing.png", "text": "x"}), "line 2: image '.*missing.png' does not exist"),
        (json.dumps({"image": "images/grey.png", "text": "x", "label": 1.5}), 'line 2: "label" must be an integer, got 1.5'),
        (json.dumps({"image": "images/grey.png", "text": "x", "label": "3"}), 'line 2: "label" must be an integer'),
        (json.dumps({"image": "images/grey.png", "text": "x", "label": True}), 'line 2: "label" must be an integer'),
    ],
)
def test_read_manifest_errors_name_file_and_line(tmp_path, bad_line, message):
    manifest = _manifest_with(tmp_path, [GOOD, bad_line, GOOD])
    with pytest.raises(LitzooError, match=re.escape(f"manifest '{manifest}'") + ".*" + message) as info:
        read_manifest(manifest, label_key="label")
    assert "\n" not in str(info.value)


def test_read_manifest_missing_and_empty(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(LitzooError, match=re.escape(str(missing)) + ".*does not exist"):
        read_manifest(missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(LitzooError, match=re.escape(str(empty)) + ".*no pairs"):
        read_manifest(empty)
    # without a label_key a non-integer label is not checked
    manifest = _manifest_with(tmp_path, [json.dumps({"image": "images/grey.png", "text": "x", "label": "three"})])
    assert read_manifest(manifest)[0]["label"] == "three"


# ------------------------------------------------------------------------------- ImageTextDataModule


def test_batches_grey(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    dm = _datamodule(manifest, class_names=["a", "b", "c"])
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "text", "tokens", "index", "label"}
    assert batch["image"].shape == (3, 1, 4, 4) and batch["image"].dtype == torch.float32
    assert batch["text"] == ["A grey square", "a coloured square", "an inverted grey square"]
    assert batch["tokens"].dtype == torch.long and batch["tokens"].shape == (3, 8)
    assert torch.equal(batch["tokens"], dm.tokenizer(batch["text"]))
    assert torch.equal(batch["tokens"], dm.datasets["val"].tokens)
    assert batch["label"].tolist() == [0, 1, 2] and batch["index"].tolist() == [0, 1, 2]
    # pixels: /255, then (x - 0.5) / 0.5
    expected = torch.from_numpy(GREY.astype(np.float32) / 255.0 - 0.5) / 0.5
    torch.testing.assert_close(batch["image"][0, 0], expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(batch["image"][2, 0], -expected, atol=1e-6, rtol=1e-6)  # the absolute path: 255 - GREY
    # an RGB file converted to grey levels with Pillow's formula (ITU-R 601-2 luma)
    luma = np.array(Image.fromarray(RGB, mode="RGB").convert("L"), dtype=np.float32)
    torch.testing.assert_close(batch["image"][1, 0], torch.from_numpy(luma / 255.0 - 0.5) / 0.5, atol=1e-6, rtol=1e-6)
    assert dm.input_shape == (1, 4, 4) and dm.num_classes == 3
    assert int(dm.tokenizer(batch["text"]).max()) < 64


def test_batches_rgb_with_custom_normalisation(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    dm = _datamodule(manifest, channels=3, mean=mean, std=std)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (3, 3, 4, 4)
    for c in range(3):
        expected = (torch.from_numpy(RGB[..., c].astype(np.float32)) / 255.0 - mean[c]) / std[c]
        torch.testing.assert_close(batch["image"][1, c], expected, atol=1e-6, rtol=1e-6)
        # a grey file becomes three equal channels
        torch.testing.assert_close(
            batch["image"][0, c], (torch.from_numpy(GREY.astype(np.float32)) / 255.0 - mean[c]) / std[c], atol=1e-6, rtol=1e-6
        )


def test_labels_only_when_every_row_has_one(tmp_path):
    rows = [{"image": "images/grey.png", "text": "a", "label": 0}, {"image": "images/colour.png", "text": "b"}]
    manifest = _write_pool(tmp_path / "pool", rows)
    dm = _datamodule(manifest)
    batch = next(iter(dm.val_dataloader()))
    assert "label" not in batch and dm.datasets["val"].labels is None
    assert set(batch) == {"image", "text", "tokens", "index"}


def test_images_resize_to_image_size(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    dm = _datamodule(manifest, image_size=8)
    item = dm.dataset("val")[0]
    assert item["image"].shape == (1, 8, 8)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(GREY.astype(np.float32))[None, None] / 255.0, size=(8, 8), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(item["image"], (expected[0] - 0.5) / 0.5, atol=1e-6, rtol=1e-6)


def test_trained_tokenizer_uses_the_training_captions(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    dm = _datamodule(manifest, vocab_size=40)
    expected = TextTokenizer.train(["A grey square", "a coloured square", "an inverted grey square"], vocab_size=40, context_length=8)
    assert dm.tokenizer.tokenizer.get_vocab() == expected.tokenizer.get_vocab()
    assert dm.tokenizer is dm.tokenizer  # trained once
    assert dm.tokenizer.vocab_size <= 40


def test_tokenizer_path(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    tok = TextTokenizer.train(["zebra crossing", "grey square", "square zebra"] * 5, vocab_size=60, context_length=8)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    dm = _datamodule(manifest, tokenizer_path=str(path), vocab_size=60)
    batch = next(iter(dm.val_dataloader()))
    assert torch.equal(batch["tokens"], tok(batch["text"]))
    small = _datamodule(manifest, tokenizer_path=str(path), vocab_size=tok.vocab_size - 1)
    with pytest.raises(LitzooError, match=re.escape(str(path)) + f".*{tok.vocab_size} tokens, more than vocab_size={tok.vocab_size - 1}"):
        small.setup("fit")
    broken = _datamodule(manifest, tokenizer_path=str(tmp_path / "missing.json"))
    with pytest.raises(LitzooError, match="missing.json"):
        broken.setup("fit")


def test_errors_in_the_datamodule(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    with pytest.raises(LitzooError, match=re.escape(str(manifest)) + r".*labels outside 0\.\.1"):
        _datamodule(manifest, class_names=["a", "b"]).setup("fit")
    missing = tmp_path / "pool" / "absent.jsonl"
    with pytest.raises(LitzooError, match=re.escape(str(missing))):
        _datamodule(missing).setup("fit")
    bad = _manifest_with(tmp_path, [GOOD, GOOD, json.dumps({"image": "images/grey.png", "text": "x", "label": "two"})])
    with pytest.raises(LitzooError, match=re.escape(str(bad)) + ".*line 3"):
        _datamodule(bad).setup("fit")
    no_test = _datamodule(manifest)
    assert not no_test.has_split("test")
    with pytest.raises(LitzooError, match="no test manifest"):
        no_test.test_dataloader()
    with pytest.raises(ValueError, match="channels"):
        _datamodule(manifest, channels=2)
    with pytest.raises(ValueError, match="mean and std"):
        _datamodule(manifest, channels=3, mean=[0.5])
    with pytest.raises(ValueError, match="distinct"):
        _datamodule(manifest, class_names=["a", "a"])


def test_setup_without_val_manifest(tmp_path):
    manifest = _write_pool(tmp_path / "pool")
    dm = ImageTextDataModule(train_manifest=str(manifest), image_size=4, channels=1, vocab_size=64, context_length=8, batch_size=2)
    dm.setup("fit")
    assert set(dm.datasets) == {"train"} and dm.val_dataloader() == []
    assert sum(len(b["text"]) for b in dm.train_dataloader()) == 3
    assert dm.train_dataset is dm.datasets["train"] and dm.train_dataset.texts[1] == "a coloured square"


# ------------------------------------------------------------------------- DigitsCaptionsDataModule


@pytest.fixture(scope="module")
def digits_dm(tmp_path_factory) -> DigitsCaptionsDataModule:
    return DigitsCaptionsDataModule(root=str(tmp_path_factory.mktemp("digits_captions")), batch_size=16)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_digits_captions_splits(digits_dm):
    folder = digits_dm.pool_folder
    assert folder.name == "seed0-0.4-0.1-0.2-0.2-0.1"
    train, val, test = (_lines(folder / f"{split}.jsonl") for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    images = [row["image"] for row in train + val + test]
    assert len(set(images)) == 1797  # a split by image: no image in two splits
    for row in val + test:  # clean class captions naming the true digit
        assert row["kind"] == "class" and row["caption_label"] == row["label"]
        assert row["text"] in {t.format(DIGIT_WORDS[row["label"]]) for t in CLASS_TEMPLATES}
    assert {row["kind"] for row in train} == {"class", "wrong", "generic", "distractor", "noise"}
    assert np.bincount([row["label"] for row in val], minlength=10).min() >= 17  # stratified: ~18 per digit
    assert digits_dm.class_names == list(DIGIT_WORDS) and digits_dm.input_shape == (1, 8, 8)


def test_digits_captions_tokenizer_and_batches(digits_dm):
    from sklearn.datasets import load_digits

    tok = digits_dm.tokenizer
    assert tok.vocab_size <= 256 and tok.context_length == 16 and tok.end_id == 3
    train = digits_dm.dataset("train")
    assert int(train.tokens.max()) < 256 and train.tokens.shape == (1257, 16)
    batch = next(iter(digits_dm.val_dataloader()))
    assert batch["image"].shape == (16, 1, 8, 8) and batch["label"].shape == (16,)
    first = _lines(digits_dm.pool_folder / "val.jsonl")[0]
    assert batch["text"][0] == first["text"] and int(batch["label"][0]) == first["label"]
    pixels = load_digits().images[int(Path(first["image"]).stem)]
    expected = (np.round(pixels * 255 / 16) / 255 - 0.5) / 0.5
    torch.testing.assert_close(batch["image"][0, 0], torch.from_numpy(expected).float(), atol=1e-6, rtol=1e-6)


def test_digits_captions_second_construction_reuses(digits_dm):
    folder = digits_dm.pool_folder
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = DigitsCaptionsDataModule(root=str(folder.parent))
    assert again.pool_folder == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind


def _construct(root: str, barrier, results) -> None:
    barrier.wait(timeout=60)  # both processes find no pool and generate it at the same time
    dm = DigitsCaptionsDataModule(root=root)
    results.put(hashlib.sha256(b"".join((dm.pool_folder / f"{s}.jsonl").read_bytes() for s in ("train", "val", "test"))).hexdigest())


def test_digits_captions_concurrent_construction(tmp_path):
    # fork: the children start with litzoo already imported (DataLoader workers are forked the same way)
    context = multiprocessing.get_context("fork")
    root = tmp_path / "shared"
    barrier, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_construct, args=(str(root), barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    digests = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert len(set(digests)) == 1
    folders = list(root.iterdir())
    assert [f.name for f in folders] == ["seed0-0.4-0.1-0.2-0.2-0.1"]  # the loser's staging folder is removed
    folder = folders[0]
    assert len(list((folder / "images").iterdir())) == 1797
    assert [len(_lines(folder / f"{s}.jsonl")) for s in ("train", "val", "test")] == [1257, 180, 360]
    assert DigitsCaptionsDataModule(root=str(root)).dataset("test").labels.shape == (360,)


# ------------------------------------------------------------------------------------------ WebDataset shards from the CLI


def test_the_cli_takes_shard_specs(tmp_path):
    """``--data.init_args.train_shards`` takes a brace range or a list (more in test_image_text_webdataset.py)."""
    from litzoo.cli import LitzooCLI
    from litzoo.framework.data.shard_stream import ShardStream
    from litzoo.framework.data.shards import ShardWriter

    manifest = _write_pool(tmp_path / "pool")
    for number in range(2):
        with ShardWriter(tmp_path / f"part-{number}.tar") as writer:
            writer.write({"__key__": f"k{number}", "png": (tmp_path / "pool" / "images" / "grey.png").read_bytes(), "txt": f"grey square {number}"})
    config = str(Path(__file__).parents[2] / "configs" / "clip" / "digits_captions.yaml")
    common = ["-c", config, "--data", "litzoo.datamodules.image_text.ImageTextDataModule", "--data.init_args.channels", "1",
              "--data.init_args.image_size", "8", "--data.init_args.vocab_size", "256", "--data.init_args.context_length", "16"]  # fmt: skip
    brace = str(tmp_path / "part-{0..1}.tar")
    dm = LitzooCLI(args=[*common, "--data.init_args.train_shards", brace, "--data.init_args.val_manifest", str(manifest)], run=False).datamodule
    assert dm.shard_specs["train"] == brace and dm.manifests["val"] == str(manifest) and dm.hparams.train_shards == brace
    dm.setup("fit")
    assert isinstance(dm.train_dataset, ShardStream) and dm.train_dataset.shards == [tmp_path / "part-0.tar", tmp_path / "part-1.tar"]
    listed = f"[{tmp_path / 'part-1.tar'}, {tmp_path / 'part-0.tar'}]"
    dm = LitzooCLI(args=[*common, "--data.init_args.train_shards", listed], run=False).datamodule
    assert dm.shard_specs["train"] == [str(tmp_path / "part-1.tar"), str(tmp_path / "part-0.tar")]
