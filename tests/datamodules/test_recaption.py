"""Re-captioning DataModules (datamodules/recaption.py): the triples and alt-text-pool manifests on disk, their one-line
errors, the batches, the tokenizer, the seeded and resumable training order, and the SYNTHETIC digits generators.

The captioner itself (prompt layout, loss, the pretraining pair's draw statistics) is tested in tests/modules/test_altogether.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litzoo.datamodules.recaption import (
    AltTextPoolDataModule,
    DigitsAltTextPoolDataModule,
    DigitsRecaptionDataModule,
    RecaptionDataModule,
    digits_recaption_splits,
    read_triples,
    train_caption_tokenizer,
)
from litzoo.datamodules.synthetic import DIGIT_WORDS, DISTRACTOR_CAPTIONS, GENERIC_CAPTIONS, KINDS
from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.errors import LitzooError

GREY = np.array([[0, 51, 102, 153], [204, 255, 10, 20], [30, 40, 50, 60], [70, 80, 90, 100]], dtype=np.uint8)


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(pixels.astype(np.float32)) / 255.0 - 0.5) / 0.5


def _write_triples(folder: Path, rows: list[dict] | None = None, name: str = "triples.jsonl") -> Path:
    """``folder/images/{0..5}.png`` (GREY shifted by i), ``folder/../elsewhere/abs.png`` and a manifest of ``rows``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(6):
        Image.fromarray((GREY + 7 * i).astype(np.uint8), mode="L").save(folder / "images" / f"{i}.png")
    elsewhere = folder.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    Image.fromarray(255 - GREY, mode="L").save(elsewhere / "abs.png")
    if rows is None:
        rows = [{"image": f"images/{i}.png", "alt_text": f"zebra {i}" if i % 2 else "", "caption": f"a thin handwritten {DIGIT_WORDS[i]}",
                 "label": i, "extra": "kept"} for i in range(5)]  # fmt: skip
        rows.append({"image": str(elsewhere / "abs.png"), "alt_text": "inverted", "caption": "an inverted square", "label": 5})
    manifest = folder / name
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n", encoding="utf-8")  # a trailing blank line is fine
    return manifest


def _recaption(manifest: Path, **kwargs) -> RecaptionDataModule:
    args = dict(train_manifest=str(manifest), val_manifest=str(manifest), image_size=4, channels=1, vocab_size=80, batch_size=4)
    args.update(kwargs)
    return RecaptionDataModule(**args)


# ------------------------------------------------------------------------------------------ the triples manifest


def test_read_triples_resolves_paths_and_keeps_the_fields(tmp_path):
    manifest = _write_triples(tmp_path / "pool")
    rows = read_triples(manifest)
    assert [row["image"] for row in rows] == [tmp_path / "pool" / "images" / f"{i}.png" for i in range(5)] + [tmp_path / "elsewhere" / "abs.png"]
    assert [row["alt_text"] for row in rows][:2] == ["", "zebra 1"]  # an empty alt-text is a valid (empty) prompt
    assert rows[3]["caption"] == "a thin handwritten three" and rows[0]["extra"] == "kept" and rows[5]["label"] == 5
    # other field names, as the official Altogether_FT's {"img_path", "alt", <response key>}
    other = tmp_path / "other" / "official.jsonl"
    _write_triples(tmp_path / "other", [{"img_path": "images/2.png", "alt": "a 2", "response": "a thin two"}], name="official.jsonl")
    [row] = read_triples(other, image_key="img_path", alt_key="alt", caption_key="response")
    assert (row["img_path"], row["alt"], row["response"]) == (tmp_path / "other" / "images" / "2.png", "a 2", "a thin two")


GOOD = json.dumps({"image": "images/0.png", "alt_text": "a zero", "caption": "a thin zero"})


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "line 2 is not JSON"),
        (json.dumps(["images/0.png", "x", "y"]), "line 2 is not a JSON object"),
        (json.dumps({"image": "images/0.png", "caption": "a zero"}), "line 2 has no string field 'alt_text'"),
        (json.dumps({"image": "images/0.png", "alt_text": "x", "caption": 3}), "line 2 has no string field 'caption'"),
        (json.dumps({"alt_text": "x", "caption": "a zero"}), "line 2 has no image path 'image'"),
        (json.dumps({"image": "", "alt_text": "x", "caption": "a zero"}), "line 2 has no image path 'image'"),
        (json.dumps({"image": "images/missing.png", "alt_text": "x", "caption": "a zero"}), "line 2: image '.*missing.png' does not exist"),
        (json.dumps({"image": "images/0.png", "alt_text": "x", "caption": "   "}), "line 2: 'caption' is empty"),
        (json.dumps({"image": "images/0.png", "alt_text": "x", "caption": "a zero", "label": 1.5}), 'line 2: "label" must be an integer, got 1.5'),
        (json.dumps({"image": "images/0.png", "alt_text": "x", "caption": "a zero", "label": True}), 'line 2: "label" must be an integer, got True'),
        (json.dumps({"image": "images/0.png", "alt_text": "x", "caption": "a zero", "label": "3"}), 'line 2: "label" must be an integer'),
    ],
)
def test_read_triples_errors_are_one_line_naming_file_and_line(tmp_path, bad_line, message):
    _write_triples(tmp_path / "pool")
    manifest = tmp_path / "pool" / "bad.jsonl"
    manifest.write_text(f"{GOOD}\n{bad_line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(LitzooError, match=re.escape(f"manifest '{manifest}'") + ".*" + message) as info:
        read_triples(manifest)
    assert "\n" not in str(info.value)


def test_read_triples_missing_and_empty_files(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(LitzooError, match=re.escape(f"'{missing}'") + ".*does not exist"):
        read_triples(missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(LitzooError, match=re.escape(f"manifest '{empty}' holds no triples")):
        read_triples(empty)


# ------------------------------------------------------------------------------------------ RecaptionDataModule


def test_recaption_batches_keys_shapes_pixels_and_labels(tmp_path):
    manifest = _write_triples(tmp_path / "pool")
    dm = _recaption(manifest)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    assert [len(b["index"]) for b in batches] == [4, 2]
    batch = batches[0]
    assert set(batch) == {"image", "alt_text", "caption", "index", "label"}
    assert batch["image"].shape == (4, 1, 4, 4) and batch["image"].dtype == torch.float32
    assert batch["alt_text"] == ["", "zebra 1", "", "zebra 3"] and batch["caption"][2] == "a thin handwritten two"
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["index"].dtype == torch.long
    assert batch["label"].tolist() == [0, 1, 2, 3] and batch["label"].dtype == torch.long
    for i in range(4):  # read, /255, (x - 0.5) / 0.5
        torch.testing.assert_close(batch["image"][i, 0], _normalised(GREY + 7 * i), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(batches[1]["image"][1, 0], _normalised(255 - GREY), atol=1e-6, rtol=1e-6)  # the absolute path
    assert dm.input_shape == (1, 4, 4)
    # RGB: a grey file becomes three equal channels, each normalised with its own statistics
    rgb = _recaption(manifest, channels=3, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    image = rgb.dataset("val")[0]["image"]
    for c, (m, s) in enumerate(zip([0.1, 0.2, 0.3], [0.5, 0.25, 2.0], strict=True)):
        torch.testing.assert_close(image[c], (torch.from_numpy(GREY.astype(np.float32)) / 255.0 - m) / s, atol=1e-6, rtol=1e-6)


def test_recaption_labels_only_when_every_triple_has_one(tmp_path):
    rows = [{"image": "images/0.png", "alt_text": "a", "caption": "b", "label": 0}, {"image": "images/1.png", "alt_text": "c", "caption": "d"}]
    dm = _recaption(_write_triples(tmp_path / "pool", rows))
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "alt_text", "caption", "index"} and dm.datasets["val"].labels is None


def test_recaption_splits_that_are_not_given(tmp_path):
    manifest = _write_triples(tmp_path / "pool")
    dm = _recaption(manifest, val_manifest=None)
    dm.setup("fit")
    assert dm.val_dataloader() == [] and set(dm.datasets) == {"train"}  # no validation: Lightning skips it
    with pytest.raises(LitzooError, match="no test manifest: pass --data.init_args.test_manifest"):
        dm.test_dataloader()
    broken = _recaption(tmp_path / "pool" / "missing.jsonl")
    with pytest.raises(LitzooError, match=re.escape(str(tmp_path / "pool" / "missing.jsonl")) + ".*does not exist"):
        broken.setup("fit")


def test_recaption_argument_checks():
    with pytest.raises(ValueError, match="needs train_manifest"):
        RecaptionDataModule(train_manifest="")
    with pytest.raises(ValueError, match="image_size"):
        RecaptionDataModule(train_manifest="x.jsonl", image_size=0)
    with pytest.raises(ValueError, match="channels"):
        RecaptionDataModule(train_manifest="x.jsonl", channels=2)
    with pytest.raises(ValueError, match="batch_size"):
        RecaptionDataModule(train_manifest="x.jsonl", batch_size=0)
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        train_caption_tokenizer(["a b"], vocab_size=3)


def test_recaption_tokenizer_is_trained_on_training_alt_texts_and_captions(tmp_path):
    manifest = _write_triples(tmp_path / "pool")
    val = _write_triples(tmp_path / "pool", [{"image": "images/0.png", "alt_text": "giraffe", "caption": "okapi"}], name="val.jsonl")
    # a bound the merges never reach: every training word ends up a whole token, whatever the order of tied merges
    # (the ids are not reproducible between trainings: see the xfail test below)
    dm = _recaption(manifest, val_manifest=str(val), vocab_size=400)
    rows = read_triples(manifest)
    words = {w for row in rows for t in (row["alt_text"], row["caption"]) for w in t.lower().split()}
    vocab = dm.tokenizer.tokenizer.get_vocab()
    assert {w for w in words if f"{w}</w>" in vocab} == words and {"zebra", "inverted"} <= words  # alt-text words (only there) too
    assert not {"okapi", "giraffe"} & {t.removesuffix("</w>") for t in vocab}  # validation texts are not learnt
    assert dm.tokenizer is dm.tokenizer and dm.tokenizer.vocab_size < 400  # trained once
    assert _recaption(manifest, vocab_size=40).tokenizer.vocab_size == 40  # the merges stop at the bound (above the 31-token alphabet)
    ids = dm.tokenizer.tokenizer.encode("an inverted zebra", add_special_tokens=False).ids
    assert dm.tokenizer.tokenizer.decode(ids) == "an inverted zebra"


@pytest.mark.xfail(strict=True, reason="KNOWN BUG: tokenizers' BpeTrainer with end_of_word_suffix numbers the '</w>' tokens (and breaks "
                   "merge ties) in hash-map order, so ids differ between trainings on the same texts (DDP ranks would disagree)")
def test_caption_tokenizer_ids_are_reproducible():
    texts = ["", "zebra 1", "a thin handwritten zero", "a thin handwritten one", "inverted", "an inverted square"]
    first = train_caption_tokenizer(texts, vocab_size=80).tokenizer.to_str()
    assert all(train_caption_tokenizer(texts, vocab_size=80).tokenizer.to_str() == first for _ in range(9))  # 9 matches in a row: ~1e-7 by chance


def test_recaption_tokenizer_path_and_its_bound(tmp_path):
    manifest = _write_triples(tmp_path / "pool")
    tokenizer = train_caption_tokenizer(["okapi giraffe", "a thin okapi"] * 3, vocab_size=60)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    dm = _recaption(manifest, tokenizer_path=str(path), vocab_size=tokenizer.vocab_size)
    assert dm.tokenizer.tokenizer.get_vocab() == tokenizer.tokenizer.get_vocab()
    small = _recaption(manifest, tokenizer_path=str(path), vocab_size=tokenizer.vocab_size - 1)
    with pytest.raises(LitzooError, match=re.escape(f"tokenizer file '{path}' has {tokenizer.vocab_size} tokens, more than vocab_size")):
        small.tokenizer  # noqa: B018 (the property reads the file)


def test_training_order_is_seeded_and_resumes_mid_epoch(tmp_path):
    rows = [{"image": f"images/{i % 6}.png", "alt_text": "", "caption": f"c{i}"} for i in range(11)]
    manifest = _write_triples(tmp_path / "pool", rows)

    def loader(seed: int = 5) -> ResumableLoader:
        dm = _recaption(manifest, batch_size=3)
        dm.load_state_dict({"shuffle_seed": seed})
        dm.setup("fit")
        return dm.train_dataloader()

    full = loader()
    assert isinstance(full, ResumableLoader)
    epoch0 = [b["index"].tolist() for b in full]
    epoch1 = [b["index"].tolist() for b in full]
    assert sorted(sum(epoch0, [])) == list(range(11)) and epoch0 != sorted(epoch0) and epoch0 != epoch1  # shuffled anew each epoch
    assert [b["index"].tolist() for b in loader()] == epoch0 and [b["index"].tolist() for b in loader(6)] != epoch0  # by the seed
    interrupted = loader()
    iterator = iter(interrupted)
    head = [next(iterator)["index"].tolist() for _ in range(2)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [b["index"].tolist() for b in resumed] == epoch0  # killed after 2 batches and resumed = uninterrupted
    assert [b["caption"] for b in loader()][0] == [f"c{i}" for i in epoch0[0]]  # the captions follow the indices


# ------------------------------------------------------------------------------------------ AltTextPoolDataModule


def test_alt_text_pool_batches_tokenizer_and_fixed_validation_prompts(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(GREY + i, mode="L").save(tmp_path / "images" / f"{i}.png")
    lines = [
        {"image": "images/0.png", "alt_texts": ["7", "my kid wrote a seven today", "IMG_0007", " "], "label": 7},
        {"image": "images/1.png", "alt_texts": ["one"], "label": 1},
        {"image": "images/2.png", "alt_texts": ["a zebra", "zebra crossing", "zebra"], "label": 2},
    ]
    manifest = tmp_path / "pool.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    dm = AltTextPoolDataModule(train_manifest=str(manifest), val_manifest=str(manifest), image_size=4, channels=1, vocab_size=400, batch_size=3)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "alt_text", "caption", "index", "label"} and batch["image"].shape == (3, 1, 4, 4)
    assert batch["caption"] == ["my kid wrote a seven today", "one", "zebra crossing"]  # the longest alt-text is the target
    assert batch["alt_text"][0] in {"7", "IMG_0007"} and batch["alt_text"][1] == "" and batch["alt_text"][2] in {"a zebra", "zebra"}
    assert batch["label"].tolist() == [7, 1, 2]
    assert all(next(iter(dm.val_dataloader()))["alt_text"] == batch["alt_text"] for _ in range(5))  # validation: fixed prompts
    torch.manual_seed(0)
    prompts = {dm.dataset("train")[0]["alt_text"] for _ in range(60)}
    assert prompts == {"7", "IMG_0007"}  # training: redrawn at each read, never the target nor the blank one
    vocab = dm.tokenizer.tokenizer.get_vocab()  # trained on the training alt-texts: every word ends up a whole token
    assert all(f"{w}</w>" in vocab for line in lines for t in line["alt_texts"] for w in t.lower().split())
    with pytest.raises(ValueError, match="needs train_manifest"):
        AltTextPoolDataModule(train_manifest="")


# ------------------------------------------------------------------------------------------ the SYNTHETIC generators


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """The seed-0 folder of DigitsAltTextPoolDataModule, which also holds digits_recaption_splits(seed=0)'s files."""
    root = tmp_path_factory.mktemp("digits_pool")
    DigitsAltTextPoolDataModule(root=str(root), seed=0, max_alt_texts=4)
    return root / "seed0_max4"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_triples_are_seeded_byte_for_byte(tmp_path):
    first = digits_recaption_splits(tmp_path / "a", seed=3)
    digits_recaption_splits(tmp_path / "b", seed=3)
    other = digits_recaption_splits(tmp_path / "c", seed=4)
    digest = _folder_digest(tmp_path / "a")
    assert len(digest) == 1797 + 4 and digest == _folder_digest(tmp_path / "b")  # every PNG and manifest, identical
    assert set(first) == {"train", "val", "pool", "test"}
    assert first["train"].read_bytes() != other["train"].read_bytes()  # the seed matters
    with pytest.raises(ValueError, match="annotated_fraction"):
        digits_recaption_splits(tmp_path / "d", annotated_fraction=0.05, val_fraction=0.1)


def test_synthetic_triples_splits_and_planted_alt_texts(digits_root):
    splits = {name: _lines(digits_root / f"{name}.jsonl") for name in ("train", "val", "pool", "test")}
    images = {name: [row["image"] for row in rows] for name, rows in splits.items()}
    assert {name: len(v) for name, v in images.items()} == {"train": 539, "val": 180, "pool": 718, "test": 360}
    everything = sum(images.values(), [])
    assert sorted(everything) == [f"images/{i:05d}.png" for i in range(1797)]  # disjoint, and every digit once
    from sklearn.datasets import load_digits

    target = load_digits().target
    for name, rows in splits.items():  # stratified by digit: each split holds each digit in the overall proportion
        counts = np.bincount([row["label"] for row in rows], minlength=10)
        assert np.all(np.abs(counts - len(rows) * np.bincount(target) / len(target)) <= 1.5), name
        assert all(row["label"] == target[int(Path(row["image"]).stem)] for row in rows)
    triples = splits["train"] + splits["val"]
    assert all(set(row) == {"image", "alt_text", "caption", "label", "kind", "thick", "wide"} for row in triples)
    assert all(set(row) == {"image", "text", "label", "kind", "caption"} for row in splits["pool"])
    assert all(set(row) == {"image", "text", "label"} and re.search(rf"\b{DIGIT_WORDS[row['label']]}\b", row["text"]) for row in splits["test"])
    web = [(row["kind"], row.get("alt_text", row.get("text")), row["label"], row["caption"]) for row in triples + splits["pool"]]
    shares = {kind: np.mean([k == kind for k, *_ in web]) for kind in KINDS}
    for kind, share in zip(KINDS, (0.4, 0.1, 0.2, 0.2, 0.1), strict=True):  # the planted shares (1437 draws: 3 sd < 0.04)
        assert abs(shares[kind] - share) < 0.04, (kind, shares[kind])
    for kind, text, label, caption in web:
        named = {w for w in DIGIT_WORDS if re.search(rf"\b{w}\b", text)}
        assert caption.split()[-1] == DIGIT_WORDS[label]  # the aligned caption names the true digit
        if kind == "class":
            assert named == {DIGIT_WORDS[label]}
        elif kind == "wrong":
            assert len(named) == 1 and DIGIT_WORDS[label] not in named
        elif kind == "generic":
            assert text in GENERIC_CAPTIONS and not named
        elif kind == "distractor":
            assert text in DISTRACTOR_CAPTIONS  # an unrelated scene ("two dogs playing in the park" names a number)
        else:
            assert set(text) <= set("abcdefghijklmnopqrstuvwxyz ") and text not in GENERIC_CAPTIONS + DISTRACTOR_CAPTIONS


def test_digits_recaption_datamodule_batches_are_the_digits(digits_root, tmp_path):
    dm = DigitsRecaptionDataModule(root=str(digits_root.parent), seed=0, batch_size=8)
    assert dm.folder == digits_root.parent / "seed0" and dm.pool_manifest.name == "pool.jsonl" and dm.test_pairs_manifest.name == "test.jsonl"
    assert dm.hparams["seed"] == 0 and dm.hparams["image_size"] == 8
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "alt_text", "caption", "index", "label"} and batch["image"].shape == (8, 1, 8, 8)
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = _lines(dm.folder / "val.jsonl")[:8]
    for i, row in enumerate(rows):  # the 0..16 grey levels, written losslessly as 0..255, read back and normalised
        pixels = np.round(digits.images[int(Path(row["image"]).stem)] * (255 / 16)).astype(np.uint8)
        torch.testing.assert_close(batch["image"][i, 0], _normalised(pixels), atol=1e-6, rtol=1e-6)
        assert (batch["caption"][i], batch["alt_text"][i], int(batch["label"][i])) == (row["caption"], row["alt_text"], row["label"])
    stamp = (dm.folder / "train.jsonl").stat().st_mtime_ns
    DigitsRecaptionDataModule(root=str(digits_root.parent), seed=0)
    assert (dm.folder / "train.jsonl").stat().st_mtime_ns == stamp  # generated once, then reused
    seed1 = DigitsRecaptionDataModule(root=str(tmp_path), seed=1)
    assert seed1.folder == tmp_path / "seed1" and sorted(p.name for p in tmp_path.iterdir()) == ["seed1"]  # no staging folder left
    assert (seed1.folder / "train.jsonl").read_bytes() == digits_recaption_splits(tmp_path / "direct", seed=1)["train"].read_bytes()


def test_digits_alt_text_pool_datamodule_targets_the_planted_longest(digits_root):
    dm = DigitsAltTextPoolDataModule(root=str(digits_root.parent), seed=0, max_alt_texts=4, batch_size=64)
    assert dm.folder == digits_root and dm.manifests["train"].endswith("pretrain_train.jsonl") and not dm.has_split("test")
    rows = _lines(digits_root / "pretrain_val.jsonl")
    assert len(rows) == 180 and {len(row["alt_texts"]) for row in rows} == {1, 2, 3, 4}
    assert [row["image"] for row in rows] == [row["image"] for row in _lines(digits_root / "val.jsonl")]  # the fine-tuning validation images
    captions, prompts = [], []
    for batch in dm.val_dataloader():
        captions += batch["caption"]
        prompts += batch["alt_text"]
    assert captions == [row["longest"] for row in rows]  # the planted target
    assert all((p == "") == (len(set(row["alt_texts"])) == 1) and p != row["longest"] for p, row in zip(prompts, rows, strict=True))
    assert all(p in row["alt_texts"] for p, row in zip(prompts, rows, strict=True) if p)
    extra = [kind for row in _lines(digits_root / "pretrain_train.jsonl") for kind in row["kinds"][1:]]  # the added alt-texts
    assert len(extra) > 800
    for kind, share in zip(KINDS, (0.4, 0.1, 0.2, 0.2, 0.1), strict=True):  # drawn with the planted shares (3 sd < 0.05)
        assert abs(extra.count(kind) / len(extra) - share) < 0.05, kind
    with pytest.raises(ValueError, match="max_alt_texts"):
        DigitsAltTextPoolDataModule(root=str(digits_root.parent), max_alt_texts=0)
