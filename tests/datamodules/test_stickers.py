"""Stickers (datamodules/stickers.py): the SYNTHETIC sticker set on disk, its planted attributes recovered from the
pixels, annotations → manifests / WebDataset shards read back, the caption fields option, bad annotation files."""

from __future__ import annotations

import json
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litzoo.datamodules.stickers import (
    CAPTION_FIELDS,
    DESCRIPTION_TEMPLATES,
    EMOTION_HUES,
    OCR_TOP,
    OCR_WORDS,
    STYLES,
    StickersDataModule,
    circular_mean_degrees,
    ocr_strip_mask,
    read_annotations,
    render_sticker,
    rgb_hues,
    sticker_caption,
    synthetic_stickers,
    text_bitmap,
    write_sticker_splits,
)
from litzoo.datamodules.synthetic import DIGIT_WORDS
from litzoo.framework.errors import LitzooError

COUNTS = (40, 8, 16)
ANNOTATION_KEYS = {"id", "image", "split", "description", "ocr", "emotion", "style", "label", "hue", "angle", "digit_index"}


@pytest.fixture(scope="module")
def stickers(tmp_path_factory) -> StickersDataModule:
    return StickersDataModule(root=str(tmp_path_factory.mktemp("stickers")), counts=COUNTS, seed=3, vocab_size=128, batch_size=8)


def _annotations(dm: StickersDataModule) -> list[dict]:
    return [json.loads(line) for line in dm.annotations.read_text(encoding="utf-8").splitlines()]


def _pixels(dm: StickersDataModule, row: dict) -> torch.Tensor:
    """The sticker PNG as a (3, 24, 24) float in [0, 1], read with Pillow (independently of the DataModule)."""
    array = np.array(Image.open(dm.annotations.parent / row["image"]))
    return torch.as_tensor(array, dtype=torch.float64).permute(2, 0, 1) / 255.0


# ----------------------------------------------------------------------------------------- files on disk


def test_generated_files_in_the_exact_format(stickers):
    rows = _annotations(stickers)
    assert [r["split"] for r in rows] == ["train"] * 40 + ["val"] * 8 + ["test"] * 16
    assert [r["id"] for r in rows] == [f"s{i:06d}" for i in range(64)]
    for row in rows:
        assert set(row) == ANNOTATION_KEYS
        assert row["image"] == f"images/{row['id']}.png"
        assert row["emotion"] in EMOTION_HUES and row["style"] in STYLES and row["ocr"] in OCR_WORDS
        assert row["description"] in {t.format(DIGIT_WORDS[row["label"]]) for t in DESCRIPTION_TEMPLATES}
        assert (row["angle"] != 0) == (row["style"] == "tilted") and (row["style"] != "tilted" or 15 <= abs(row["angle"]) <= 25)
        image = Image.open(stickers.annotations.parent / row["image"])
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (24, 24)
    assert read_annotations(stickers.annotations) == rows


def test_each_split_draws_from_its_own_digits(tmp_path):
    """The digit image of a sticker comes from its split's share (70/10/20) of the 1797 digits: no test or validation
    sticker reuses a training digit image."""
    rows = [json.loads(line) for line in synthetic_stickers(tmp_path, counts=(400, 150, 400), seed=1).read_text().splitlines()]
    sources = {split: {r["digit_index"] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["val"] and not sources["val"] & sources["test"]
    assert len(sources["test"]) <= 360 and len(sources["val"]) <= 180  # 400 test stickers from the 360 test digits
    from sklearn.datasets import load_digits

    labels = load_digits().target
    assert all(labels[r["digit_index"]] == r["label"] for r in rows)


def test_manifests_read_back_as_written(stickers):
    rows = {r["id"]: r for r in _annotations(stickers)}
    folder = stickers.pairs_folder
    assert sorted(p.name for p in folder.iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]
    for split in ("train", "val", "test"):
        lines = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
        assert [line["id"] for line in lines] == [i for i, r in rows.items() if r["split"] == split]
        for line in lines:
            row = rows[line["id"]]
            assert set(line) == {"image", "text", "id", "label"} and line["label"] == row["label"]
            assert (folder / line["image"]).resolve() == (stickers.annotations.parent / row["image"]).resolve()
            parts = [row[f] for f in CAPTION_FIELDS if row[f]]
            if split == "train":  # one seeded shuffle of the fields, as the official loader's
                assert sorted(line["text"].split("; ")) == sorted(parts)
            else:
                assert line["text"] == "; ".join(parts) == sticker_caption(row, CAPTION_FIELDS)
    train_texts = [json.loads(line)["text"] for line in (folder / "train.jsonl").read_text().splitlines()]
    in_order = ["; ".join(r[f] for f in CAPTION_FIELDS if r[f]) for r in rows.values() if r["split"] == "train"]
    assert sum(a != b for a, b in zip(train_texts, in_order, strict=True)) > 20  # really shuffled


def test_dataset_items_are_the_png_pixels_and_the_captions(stickers):
    rows = [r for r in _annotations(stickers) if r["split"] == "test"]
    dataset = stickers.dataset("test")
    assert len(dataset) == 16 and dataset.labels.tolist() == [r["label"] for r in rows]
    for i in (0, 7, 15):
        item = dataset[i]
        expected = (_pixels(stickers, rows[i]).float() - 0.5) / 0.5
        torch.testing.assert_close(item["image"], expected, atol=1e-6, rtol=0)
        assert item["text"] == sticker_caption(rows[i], CAPTION_FIELDS)
        assert item["tokens"].shape == (32,) and item["tokens"][0] == stickers.tokenizer.start_id


# ------------------------------------------------------------------------------------ planted attributes


def test_the_emotion_colour_is_the_mean_hue_of_the_glyph_pixels(stickers):
    for row in _annotations(stickers):
        hues = rgb_hues(_pixels(stickers, row))
        assert len(hues) >= 10
        mean = circular_mean_degrees(hues)
        assert abs((mean - row["hue"] + 180) % 360 - 180) < 1.0, (row["id"], mean, row["hue"])
        nearest = min(EMOTION_HUES, key=lambda e: abs((EMOTION_HUES[e] - mean + 180) % 360 - 180))
        assert nearest == row["emotion"]
        # every coloured pixel has the sticker's hue: shadow, outline and text are achromatic
        spread = ((hues - row["hue"] + 180) % 360 - 180).abs().max()
        assert spread < 4.0, (row["id"], float(spread))


def test_hue_recovery_is_not_vacuous():
    """Negative control: a sticker coloured with another emotion's hue is recovered as that emotion, not the annotated one."""
    digit = torch.zeros(8, 8)
    digit[2:6, 3:5] = 1.0
    image = render_sticker(digit, EMOTION_HUES["sad"], "outline", "OK")
    assert abs(circular_mean_degrees(rgb_hues(image)) - 240.0) < 0.5
    assert abs(circular_mean_degrees(rgb_hues(render_sticker(digit, 355.0, "shadow"))) - 355.0) < 0.5  # wraps around 0


def test_the_ocr_word_is_recovered_from_the_text_strip(stickers):
    words = sorted(set(OCR_WORDS))
    for row in _annotations(stickers):
        pixels = _pixels(stickers, row)
        ink = (pixels.max(dim=0).values < 0.5).float()
        assert not ink[OCR_TOP + 5 :].any() and not ink[OCR_TOP - 1].any()  # only the text reaches the strip
        matches = [word for word in words if torch.equal(ink[OCR_TOP - 1 :], ocr_strip_mask(word)[OCR_TOP - 1 :])]
        assert matches == [row["ocr"]], (row["id"], matches)


def test_text_bitmap_by_hand():
    assert text_bitmap("HI").tolist() == [
        [1, 0, 1, 0, 1, 1, 1],
        [1, 0, 1, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 0, 1, 0],
        [1, 0, 1, 0, 1, 1, 1],
    ]
    mask = ocr_strip_mask("HI")
    assert mask.sum() == text_bitmap("HI").sum() and mask[OCR_TOP:OCR_TOP + 5, 8:15].equal(text_bitmap("HI"))  # (24 - 7) // 2 = 8
    with pytest.raises(ValueError, match="no letter 'Z'"):
        text_bitmap("ZZ")


def test_styles_are_the_planted_transforms():
    from sklearn.datasets import load_digits

    digit = torch.as_tensor(load_digits().images[0], dtype=torch.float32) / 16.0
    hue = 120.0
    plain = render_sticker(digit, hue, "plain")
    # tilted by 0 degrees is the plain sticker (identity resampling)
    torch.testing.assert_close(render_sticker(digit, hue, "tilted", angle=0.0), plain, atol=1e-5, rtol=0)

    def ink(image):  # the glyph's alpha: over white, 1 - the smallest channel (the green glyph's red and blue)
        return 1 - image.min(dim=0).values

    def orientation(image):  # degrees of the ink's principal axis (second moments), in image coordinates (y down)
        alpha = ink(image).double()
        ys, xs = torch.meshgrid(torch.arange(24.0, dtype=torch.float64), torch.arange(24.0, dtype=torch.float64), indexing="ij")
        mass = alpha.sum()
        dx, dy = xs - (alpha * xs).sum() / mass, ys - (alpha * ys).sum() / mass
        return math.degrees(0.5 * math.atan2(2 * (alpha * dx * dy).sum(), (alpha * dx * dx).sum() - (alpha * dy * dy).sum()))

    for angle in (20.0, -17.0):  # the principal axis turns by the angle (counter-clockwise on screen), the ink is kept
        tilted = render_sticker(digit, hue, "tilted", angle=angle)
        assert abs((orientation(tilted) - orientation(plain) + angle + 90) % 180 - 90) < 1.0
        assert ink(tilted).sum() == pytest.approx(float(ink(plain).sum()), rel=0.02)

    thick = render_sticker(digit, hue, "thick")
    torch.testing.assert_close(ink(thick), torch.nn.functional.max_pool2d(ink(plain)[None, None], 3, 1, 1)[0, 0], atol=1e-6, rtol=0)
    value = lambda image: image.max(dim=0).values  # noqa: E731
    assert (value(plain) > 0.99).all()  # no dark pixel: a plain glyph is a colour over white
    outline = render_sticker(digit, hue, "outline")
    dark = value(outline) < 0.5  # the black ring shows where the dilated glyph reaches and the glyph is faint
    dilated = torch.nn.functional.max_pool2d(ink(plain)[None, None], 3, 1, 1)[0, 0]
    assert dark.sum() >= 10 and (dilated[dark] > 0.5).all() and (ink(plain)[dark] < 0.5).all()
    shadow = render_sticker(digit, hue, "shadow")
    # off the glyph, the shadow is the glyph's alpha moved 2 px down and right, in grey 0.6 over white
    off_glyph, moved = ink(plain) == 0, torch.roll(ink(plain), shifts=(2, 2), dims=(0, 1))
    torch.testing.assert_close(shadow[:, off_glyph], (1 - 0.4 * moved[off_glyph]).expand(3, -1), atol=1e-6, rtol=0)
    assert (off_glyph & (moved > 0.5)).sum() >= 10
    with pytest.raises(ValueError, match="style must be one of"):
        render_sticker(digit, hue, "wavy")


# ------------------------------------------------------------------------------------------- the options


def test_caption_fields_choose_the_text(stickers):
    root = stickers.pairs_folder.parent.parent
    dm = StickersDataModule(root=str(root), counts=COUNTS, seed=3, caption_fields=["ocr", "description"], shuffle_fields=False, vocab_size=128)
    assert dm.annotations == stickers.annotations and dm.pairs_folder != stickers.pairs_folder
    rows = [r for r in _annotations(stickers) if r["split"] == "train"]
    assert dm.dataset("train").texts == [f"{r['ocr']}; {r['description']}" if r["ocr"] else r["description"] for r in rows]
    only_emotion = StickersDataModule(root=str(root), counts=COUNTS, seed=3, caption_fields=["emotion"], vocab_size=128)
    assert only_emotion.dataset("val").texts == [r["emotion"] for r in _annotations(stickers) if r["split"] == "val"]
    for bad in (["colour"], [], ["ocr", "ocr"]):
        with pytest.raises(ValueError, match="caption_fields must be distinct names"):
            StickersDataModule(root=str(root), counts=COUNTS, seed=3, caption_fields=bad)
    with pytest.raises(ValueError, match="format must be"):
        StickersDataModule(root=str(root), counts=COUNTS, seed=3, format="lmdb")


def test_webdataset_shards_hold_the_same_pairs(stickers):
    root = stickers.pairs_folder.parent.parent
    shards = StickersDataModule(root=str(root), counts=COUNTS, seed=3, format="webdataset", vocab_size=128, batch_size=8)
    assert sorted(p.name for p in shards.pairs_folder.iterdir()) == ["test-00000.tar", "train-00000.tar", "val-00000.tar"]
    with pytest.raises(ValueError, match="shard_size must be positive"):
        write_sticker_splits(stickers.annotations, root / "unused", format="webdataset", shard_size=0)
    # the training pairs in shards of at most shard_size stickers, in order
    several = write_sticker_splits(stickers.annotations, root / "several", format="webdataset", shard_size=16)
    assert several["train"] == root / "several" / "train-00000.tar"
    keys = [[name.split(".")[0] for name in tarfile.open(root / "several" / f"train-{n:05d}.tar").getnames()[::4]] for n in range(3)]
    assert [len(k) for k in keys] == [16, 16, 8] and sum(keys, []) == [r["id"] for r in _annotations(stickers) if r["split"] == "train"]
    assert not (root / "several" / "train-00003.tar").exists()
    rows = [r for r in _annotations(stickers) if r["split"] == "test"]
    with tarfile.open(shards.pairs_folder / "test-00000.tar") as tar:
        names = tar.getnames()
        assert names[:4] == [f"{rows[0]['id']}.{ext}" for ext in ("png", "txt", "json", "cls")]
        assert tar.extractfile(names[0]).read() == (stickers.annotations.parent / rows[0]["image"]).read_bytes()
        assert json.loads(tar.extractfile(names[2]).read()) == rows[0]
        assert tar.extractfile(names[3]).read() == str(rows[0]["label"]).encode()
    jsonl, tar = stickers.dataset("test"), shards.dataset("test")
    assert tar.texts == jsonl.texts and tar.labels.tolist() == jsonl.labels.tolist()
    for i in (0, 9):
        torch.testing.assert_close(tar[i]["image"], jsonl[i]["image"], atol=0, rtol=0)
    shards.setup("fit")
    batches = list(shards.train_dataloader())
    assert sum(len(b["text"]) for b in batches) == 40 and batches[0]["image"].shape[1:] == (3, 24, 24)


# ------------------------------------------------------------------------------------- bad annotations


def _user_set(folder: Path, lines: list[str]) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), 200, dtype=np.uint8)).save(folder / "img" / "a.png")
    path = folder / "stickers.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = {"image": "img/a.png", "split": "train", "description": "a crying cat", "ocr": "", "emotion": "sad", "style": "cartoon"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "line 2 is not JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "emotion"}), "line 2 has no string field 'emotion'"),
        (json.dumps({**GOOD, "split": "dev"}), "line 2: split 'dev' is not one of train, val, test"),
        (json.dumps({**GOOD, "label": "7"}), "line 2: \"label\" must be an integer, got '7'"),
        (json.dumps({**GOOD, "image": "img/missing.png"}), "line 2: image 'img/missing.png' does not exist"),
    ],
)
def test_a_bad_annotation_line_is_one_line_naming_the_file_and_line(tmp_path, bad, message):
    path = _user_set(tmp_path / "user", [json.dumps(GOOD), bad, json.dumps(GOOD)])
    with pytest.raises(LitzooError) as excinfo:
        StickersDataModule(root=str(tmp_path / "out"), annotations=str(path))
    text = str(excinfo.value)
    assert "\n" not in text and f"sticker annotations '{path}'" in text and message in text
    assert not (tmp_path / "out" / "pairs").exists() or not any((tmp_path / "out" / "pairs").iterdir())  # nothing half-written


def test_a_user_annotation_file_becomes_pairs(tmp_path):
    lines = [json.dumps(GOOD), json.dumps({**GOOD, "split": "test", "ocr": "呜呜", "label": 2})]
    path = _user_set(tmp_path / "user", lines)
    dm = StickersDataModule(root=str(tmp_path / "out"), annotations=str(path), shuffle_fields=False, vocab_size=64, context_length=16)
    assert dm.has_split("train") and dm.has_split("test") and not dm.has_split("val")
    assert dm.dataset("train").texts == ["a crying cat; sad; cartoon"]  # the empty OCR field is left out
    assert dm.dataset("test").texts == ["a crying cat; sad; cartoon; 呜呜"] and dm.dataset("test").labels.tolist() == [2]
    with pytest.raises(LitzooError, match=re.escape(f"sticker annotations '{tmp_path / 'none.jsonl'}' do not exist")):
        StickersDataModule(root=str(tmp_path / "out"), annotations=str(tmp_path / "none.jsonl"))
    only_ocr = _user_set(tmp_path / "user2", [json.dumps(GOOD)])
    with pytest.raises(LitzooError, match=r"sticker 1 \(img/a.png\): the caption fields \['ocr'\] are all empty"):
        StickersDataModule(root=str(tmp_path / "out"), annotations=str(only_ocr), caption_fields=["ocr"])
