"""The synthetic digits caption pool: real images on disk, captions of known relevance, seeded; curated with MetaCLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from litzoo.cli import main
from litzoo.datamodules.synthetic import DIGIT_WORDS, KINDS, digits_caption_pool
from litzoo.framework.curation import match_metadata, spacing


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return digits_caption_pool(tmp_path_factory.mktemp("pool"), seed=0)


def test_pool_holds_the_real_digits_and_captions_of_known_relevance(pool):
    lines = [json.loads(line) for line in pool.read_text().splitlines()]
    digits = load_digits()
    assert len(lines) == 1797
    for i in (0, 500, 1796):
        with Image.open(pool.parent / lines[i]["image"]) as image:
            assert image.mode == "L" and image.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(image), np.round(digits.images[i] * 255 / 16).astype(np.uint8))
        assert lines[i]["label"] == digits.target[i]
    shares = {k: sum(line["kind"] == k for line in lines) / len(lines) for k in KINDS}
    assert shares == pytest.approx({"class": 0.4, "wrong": 0.1, "generic": 0.2, "distractor": 0.2, "noise": 0.1}, abs=0.04)
    for line in lines:
        if line["kind"] == "class":
            assert line["caption_label"] == line["label"] and DIGIT_WORDS[line["label"]] in line["text"] and line["relevance"] == 2
        elif line["kind"] == "wrong":
            assert line["caption_label"] != line["label"] and DIGIT_WORDS[line["caption_label"]] in line["text"]
        else:  # names no digit of its own ("two dogs playing in the park" is a distractor that matches "two")
            assert line["caption_label"] == -1 and line["relevance"] == (1 if line["kind"] == "generic" else 0)


def test_pool_is_seeded(tmp_path, pool):
    again = digits_caption_pool(tmp_path / "again", seed=0)
    other = digits_caption_pool(tmp_path / "other", seed=1)
    assert again.read_text() == pool.read_text() != other.read_text()
    with pytest.raises(ValueError, match="shares"):
        digits_caption_pool(tmp_path / "bad", shares=(1.0, 0.0))


def test_metaclip_curation_of_the_pool_keeps_only_captions_that_name_a_digit(pool, tmp_path, capsys):
    """Metadata = the ten digit words: every kept caption names a digit; with t above every count nothing
    that matches is dropped (all entries are tail), and at t = 20 each word keeps about 20 captions."""
    (tmp_path / "words.json").write_text(json.dumps(list(DIGIT_WORDS)))
    lines = [json.loads(line) for line in pool.read_text().splitlines()]
    matched = [m for m in match_metadata([r["text"] for r in lines], list(DIGIT_WORDS)) if m]
    for t, check in ((10_000, "all"), (20, "balanced")):
        out = tmp_path / f"curated_{t}.jsonl"
        main(["curate", "--manifest", str(pool), "--metadata", str(tmp_path / "words.json"), "--t", str(t), "--output", str(out)])
        capsys.readouterr()
        kept = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(r["entries"] and any(w in spacing(r["text"]).split() for w in r["entries"]) for r in kept)
        if check == "all":
            assert len(kept) == len(matched) > sum(r["kind"] in ("class", "wrong") for r in lines) * 0.9
        else:
            per_word = np.bincount([DIGIT_WORDS.index(r["entries"][0]) for r in kept], minlength=10)
            assert per_word.max() < 45 and per_word.min() > 5, per_word
