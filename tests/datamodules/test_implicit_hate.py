"""Implicit Hate Corpus stage-1 TSV: the reader on files in the exact format (quoting, extra columns, column order), each
one-line error, the writer's bytes, the stratified split, the SYNTHETIC generator's planted truth, the DataModules' batches
and training-only vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from litzoo.datamodules.implicit_hate import (
    CLASSES,
    EXPLICIT,
    IMPLICIT,
    NOT_HATE,
    ImplicitHateDataModule,
    SyntheticImplicitHateDataModule,
    read_implicit_hate_tsv,
    stratified_split,
    synthetic_implicit_hate,
    write_implicit_hate_tsv,
    write_synthetic_implicit_hate,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.text.vocabulary import SPECIAL_TOKENS


def test_reader_reads_the_stage1_layout_with_pandas_quoting(tmp_path):
    path = tmp_path / "implicit_hate_v1_stg1_posts.tsv"
    # as pandas writes / reads it: a quoted post holding a tab, doubled quotes, a newline; a blank line skipped
    path.write_text('post\tclass\nwhite people are great\tnot_hate\n"a ""quoted""\tpost\nover two lines"\timplicit_hate\n\n'
                    "you stupid #@!\texplicit_hate\n", encoding="utf-8")  # fmt: skip
    corpus = read_implicit_hate_tsv(path)
    assert corpus.posts == ["white people are great", 'a "quoted"\tpost\nover two lines', "you stupid #@!"]
    assert corpus.labels == [NOT_HATE, IMPLICIT, EXPLICIT]
    assert [CLASSES[k] for k in corpus.labels] == ["not_hate", "implicit_hate", "explicit_hate"]
    assert corpus.lines == [2, 3, 6]


def test_reader_finds_columns_by_name(tmp_path):
    path = tmp_path / "posts.tsv"
    path.write_text("\ufeffid\tclass\tpost\n7\texplicit_hate\tgo away\n", encoding="utf-8")  # BOM, another order, an extra column
    corpus = read_implicit_hate_tsv(path)
    assert corpus.posts == ["go away"] and corpus.labels == [EXPLICIT]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("text\tclass\nhello\tnot_hate\n", "line 1: no 'post' column in the header"),
        ("post\tlabel\nhello\tnot_hate\n", "line 1: no 'class' column in the header"),
        ("post\tclass\nhello\tnot_hate\nbye\toffensive\n", "line 3: unknown class 'offensive'"),
        ("post\tclass\nhello\tnot_hate\n  \timplicit_hate\n", "line 3: empty post"),
        ("post\tclass\nhello\tnot_hate\textra\n", "line 2: 3 fields, the header has 2"),
        ("post\tclass\n", "holds a header but no row"),
        ("", "is empty"),
    ],
)
def test_reader_errors_are_one_line_naming_file_and_line(tmp_path, content, expected):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LitzooError) as error:
        read_implicit_hate_tsv(path)
    message = str(error.value)
    assert expected in message and str(path) in message and "\n" not in message, message


def test_reader_refuses_a_missing_file_and_non_utf8_bytes(tmp_path):
    with pytest.raises(LitzooError, match="does not exist"):
        read_implicit_hate_tsv(tmp_path / "nope.tsv")
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"post\tclass\nok\tnot_hate\ncaf\xe9\tnot_hate\n")
    with pytest.raises(LitzooError, match=r"line 3: not UTF-8"):
        read_implicit_hate_tsv(path)


def test_writer_bytes_and_round_trip(tmp_path):
    path = write_implicit_hate_tsv(tmp_path / "a.tsv", ["hello world", "x"], [NOT_HATE, EXPLICIT])
    assert path.read_bytes() == b"post\tclass\nhello world\tnot_hate\nx\texplicit_hate\n"
    posts = ['tab\there', 'quote " inside', "new\nline", "plain"]
    labels = [IMPLICIT, NOT_HATE, EXPLICIT, IMPLICIT]
    corpus = read_implicit_hate_tsv(write_implicit_hate_tsv(tmp_path / "b.tsv", posts, labels))
    assert corpus.posts == posts and corpus.labels == labels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tsv", "b.tsv"]  # no staging leftovers
    with pytest.raises(ValueError):
        write_implicit_hate_tsv(tmp_path / "c.tsv", ["a"], [3])


def test_stratified_split_counts_disjointness_and_seed():
    labels = [0] * 50 + [1] * 31 + [2] * 9
    rows = stratified_split(labels, 0.1, 0.2, seed=3)
    everything = np.concatenate(list(rows.values()))
    assert sorted(everything.tolist()) == list(range(90))  # a partition
    counts = {split: np.bincount(np.asarray(labels)[idx], minlength=3).tolist() for split, idx in rows.items()}
    # per class: round(n * 0.2) test, round(n * 0.1) val (Python's round: 6.2 -> 6, 3.1 -> 3, 1.8 -> 2, 0.9 -> 1)
    assert counts["test"] == [10, 6, 2] and counts["val"] == [5, 3, 1] and counts["train"] == [35, 22, 6]
    again = stratified_split(labels, 0.1, 0.2, seed=3)
    assert all(np.array_equal(rows[s], again[s]) for s in rows)
    assert not np.array_equal(rows["test"], stratified_split(labels, 0.1, 0.2, seed=4)["test"])
    with pytest.raises(ValueError):
        stratified_split(labels, 0.5, 0.5, seed=0)


def test_synthetic_generator_plants_triggers_phrases_and_decoys(tmp_path):
    written = write_synthetic_implicit_hate(tmp_path / "posts.tsv", posts_per_class=80, max_triggers=2, decoy_rate=0.5, seed=5)
    corpus = read_implicit_hate_tsv(written.path)
    side = json.loads(written.planted_path.read_text())
    assert side["synthetic"] is True and side["planted"] == written.planted
    triggers, phrases, filler = set(written.trigger_words), [tuple(p) for p in written.coded_phrases], set(written.filler_words)
    coded = {w for p in phrases for w in p}
    assert not (triggers & coded) and not (triggers & filler) and not (coded & filler)  # disjoint pools
    assert np.bincount(corpus.labels).tolist() == [80, 80, 80]
    decoys = 0
    for post, label, planted in zip(corpus.posts, corpus.labels, written.planted, strict=True):
        words = post.split()
        marked = [words[i] for i in planted]
        if label == EXPLICIT:
            assert 1 <= len(planted) <= 2 and all(w in triggers for w in marked)
            assert [w for w in words if w in triggers] == marked and not any(w in coded for w in words)
        elif label == IMPLICIT:
            assert tuple(marked) in phrases and planted == list(range(planted[0], planted[0] + len(planted)))  # one contiguous phrase
            assert not any(w in triggers for w in words) and [w for w in words if w in coded] == marked
        else:
            assert planted == [] and not any(w in triggers for w in words)
            lone = [w for w in words if w in coded]
            assert len(lone) <= 1  # a decoy is a single coded word, never a whole phrase
            decoys += len(lone)
        assert all(w in filler for i, w in enumerate(words) if i not in planted and w not in coded)
    assert 25 <= decoys <= 55  # about decoy_rate of the 80 neutral posts
    again = write_synthetic_implicit_hate(tmp_path / "again.tsv", posts_per_class=80, max_triggers=2, decoy_rate=0.5, seed=5)
    assert again.path.read_bytes() == written.path.read_bytes()
    assert synthetic_implicit_hate(posts_per_class=80, max_triggers=2, seed=6)[0] != corpus.posts


def test_datamodule_batches_splits_and_training_vocabulary(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    posts = [" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(60)]
    labels = [i % 3 for i in range(60)]
    path = write_implicit_hate_tsv(tmp_path / "posts.tsv", posts, labels)
    dm = ImplicitHateDataModule(str(path), val_fraction=0.2, test_fraction=0.2, split_seed=1, max_length=6, batch_size=8)
    dm.setup("fit")
    assert {s: len(r) for s, r in dm.split_rows.items()} == {"train": 36, "val": 12, "test": 12}
    train_words = {w for i in dm.split_rows["train"] for w in posts[i].split()}
    vocab = {dm.vocabulary.id_to_token(i) for i in range(dm.vocab_size)}
    assert vocab - set(SPECIAL_TOKENS) == train_words  # built on the training split only
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"tokens", "mask", "label", "index"}
    assert batch["tokens"].shape == (8, 6) and batch["tokens"].dtype == torch.long and batch["mask"].dtype == torch.bool
    for row in range(8):
        i = int(batch["index"][row])
        assert int(batch["label"][row]) == labels[i]
        expected = [w if w in train_words else "[UNK]" for w in posts[i].split()][:6]
        assert dm.vocabulary.decode(batch["tokens"][row][batch["mask"][row]]) == expected
    assert dm.num_classes == 3 and dm.class_names == CLASSES


def test_datamodule_reports_a_bad_file_at_setup(tmp_path):
    path = tmp_path / "posts.tsv"
    path.write_text("post\tclass\nhi\tnot_hate\nyo\thate\n", encoding="utf-8")
    with pytest.raises(LitzooError, match=r"posts.tsv' line 3: unknown class 'hate'"):
        ImplicitHateDataModule(str(path)).setup("fit")
    with pytest.raises(ValueError):
        ImplicitHateDataModule(str(path), val_fraction=0.6, test_fraction=0.5)


def test_synthetic_datamodule_generates_once_and_serves_the_planted_truth(tmp_path):
    dm = SyntheticImplicitHateDataModule(root=str(tmp_path), posts_per_class=30, batch_size=16)
    dm.prepare_data()
    first = dm.tsv_path().stat().st_mtime_ns
    dm.setup("fit")
    assert dm.tsv_path().stat().st_mtime_ns == first and "SYNTHETIC" in dm.folder.name
    assert [p.name for p in dm.folder.iterdir()] and sorted(p.name for p in dm.folder.iterdir()) == ["posts.planted.json", "posts.tsv"]
    test = dm.dataset("test").tensors
    assert len(test["label"]) == 18  # 20% of 30 per class
    for row, mask in zip(test["index"].tolist(), test["mask"], strict=True):
        assert int(mask.sum()) == len(dm.corpus.posts[row].split())  # one token per pseudo-word: planted positions are token positions
        assert (len(dm.planted["planted"][row]) > 0) == (dm.corpus.labels[row] != NOT_HATE)
    with pytest.raises(ValueError):
        SyntheticImplicitHateDataModule(root=str(tmp_path), decoy_rate=1.5)
