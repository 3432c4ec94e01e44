"""Nested-NER JSONL reader, vocabulary, nesting statistics, SYNTHETIC generator and DataModules."""

from __future__ import annotations

import json
import random

import pytest
import torch

from litzoo.datamodules.nested_ner import (
    GAZETTEERS,
    NestedNERDataModule,
    SyntheticNestedNERDataModule,
    composite_probability,
    synthetic_nested_sentence,
    write_synthetic_nested_ner,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.text.nested_ner import NerVocabulary, nesting_statistics, read_nested_ner, tokenize, write_nested_ner


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def line(text, *entities, **extra):
    return json.dumps({"text": text, "entities": [{"start": s, "end": e, "type": t} for s, e, t in entities], **extra}, ensure_ascii=False)


# ---- reader: offsets by hand -----------------------------------------------------------------------------------------
def test_char_level_offsets_by_hand(tmp_path):
    # 张0 伟1 _2 在3 北4 京5 大6 学7 医8 学9 部10 工11 作12: the space is no token, so chars from 3 on are token index - 1
    text = "张伟 在北京大学医学部工作"
    path = write_lines(tmp_path / "a.jsonl", ["", line(text, (4, 11, "ORG"), (0, 2, "PER"), (4, 8, "ORG"), (4, 6, "GPE"), id=7)])
    (sentence,) = read_nested_ner(path, "char")
    assert sentence.line == 2
    assert "".join(sentence.tokens) == "张伟在北京大学医学部工作" and len(sentence.tokens) == 12
    assert sentence.offsets[2] == (3, 4) and sentence.offsets[-1] == (12, 13)
    assert sentence.entities == ((0, 2, "PER"), (4, 6, "GPE"), (4, 8, "ORG"), (4, 11, "ORG"))
    assert sentence.token_spans == ((0, 2, "PER"), (3, 5, "GPE"), (3, 7, "ORG"), (3, 10, "ORG"))


def test_word_level_offsets_by_hand(tmp_path):
    text = "Dr. Li Na visited Peking University's Health Science Center."
    # Dr . Li Na visited Peking University ' s Health Science Center .
    # 0  1 2  3  4       5      6          7 8 9      10      11     12
    entities = [(4, 9, "PER"), (18, 35, "ORG"), (18, 24, "GPE"), (38, 59, "ORG")]
    assert [text[s:e] for s, e, _ in entities] == ["Li Na", "Peking University", "Peking", "Health Science Center"]
    (sentence,) = read_nested_ner(write_lines(tmp_path / "a.jsonl", [line(text, *entities)]), "word")
    assert sentence.tokens == ("Dr", ".", "Li", "Na", "visited", "Peking", "University", "'", "s", "Health", "Science", "Center", ".")
    assert sentence.token_spans == ((2, 4, "PER"), (5, 6, "GPE"), (5, 7, "ORG"), (9, 12, "ORG"))
    assert tokenize("a😀b 北京", "char") == [("a", 0, 1), ("😀", 1, 2), ("b", 2, 3), ("北", 4, 5), ("京", 5, 6)]  # string indices


def test_written_file_has_the_exact_format_and_reads_back(tmp_path):
    path = write_nested_ner(tmp_path / "out" / "train.jsonl", [("北京大学", [(0, 4, "ORG"), (0, 2, "GPE")]), ("无", [])])
    assert path.read_text(encoding="utf-8") == (
        '{"text": "北京大学", "entities": [{"start": 0, "end": 2, "type": "GPE"}, {"start": 0, "end": 4, "type": "ORG"}]}\n'
        '{"text": "无", "entities": []}\n'
    )
    assert [s.entities for s in read_nested_ner(path, "char")] == [((0, 2, "GPE"), (0, 4, "ORG")), ()]
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temporary file left


MALFORMED = [
    ('{"text": "ab", ', "is not JSON", "char"),
    ("[1, 2]", "is not a JSON object", "char"),
    ('{"entities": []}', "missing key 'text'", "char"),
    ('{"text": "ab"}', "missing key 'entities'", "char"),
    ('{"text": 3, "entities": []}', "'text' is int, not a string", "char"),
    ('{"text": "ab", "entities": {}}', "'entities' is dict, not a list", "char"),
    ('{"text": "ab", "entities": [{"start": 0, "end": 1}]}', "entity 0 has no key 'type'", "char"),
    ('{"text": "ab", "entities": [{"start": 0.0, "end": 1, "type": "X"}]}', "must be integers", "char"),
    ('{"text": "ab", "entities": [{"start": true, "end": 1, "type": "X"}]}', "must be integers", "char"),
    ('{"text": "ab", "entities": [{"start": "0", "end": 1, "type": "X"}]}', "must be integers", "char"),
    ('{"text": "ab", "entities": [{"start": 0, "end": 1, "type": ""}]}', "type must be a non-empty string", "char"),
    ('{"text": "ab", "entities": [{"start": 1, "end": 1, "type": "X"}]}', "empty span [1, 1)", "char"),
    ('{"text": "ab", "entities": [{"start": 1, "end": 3, "type": "X"}]}', "out of range for a text of 2 characters", "char"),
    ('{"text": "ab", "entities": [{"start": -1, "end": 1, "type": "X"}]}', "out of range", "char"),
    ('{"text": "ab", "entities": [{"start": 0, "end": 1, "type": "X"}, {"start": 0, "end": 1, "type": "X"}]}', "entity 1: duplicate span [0, 1) 'X'", "char"),
    ('{"text": "Peking University", "entities": [{"start": 0, "end": 3, "type": "X"}]}', "ends inside the token 'Peking' at [0, 6)", "word"),
    ('{"text": "Peking University", "entities": [{"start": 9, "end": 17, "type": "X"}]}', "starts inside the token 'University' at [7, 17)", "word"),
    ('{"text": "Peking University", "entities": [{"start": 0, "end": 7, "type": "X"}]}', "ends on whitespace", "word"),
    ('{"text": "   ", "entities": []}', "the text has no token", "char"),
]


@pytest.mark.parametrize(("bad", "message", "level"), MALFORMED, ids=[m[1][:24] for m in MALFORMED])
def test_malformed_line_gives_one_line_error_naming_file_and_line(tmp_path, bad, message, level):
    path = write_lines(tmp_path / "bad.jsonl", [line("Peking ok", (0, 6, "GPE")), bad])
    with pytest.raises(LitzooError) as info:
        read_nested_ner(path, level)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "line 2" in text and message in text, text


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(LitzooError, match="does not exist"):
        read_nested_ner(tmp_path / "none.jsonl", "char")
    with pytest.raises(LitzooError, match="holds no sentence"):
        read_nested_ner(write_lines(tmp_path / "empty.jsonl", ["", "  "]), "char")
    same_span_two_types = line("北京", (0, 2, "GPE"), (0, 2, "LOC"))  # kept: not a duplicate
    assert len(read_nested_ner(write_lines(tmp_path / "ok.jsonl", [same_span_two_types]), "char")[0].entities) == 2
    with pytest.raises(ValueError, match="level"):
        read_nested_ner(tmp_path / "ok.jsonl", "bpe")


# ---- nesting statistics ------------------------------------------------------------------------------------------------
def test_nesting_statistics_by_hand():
    stats = nesting_statistics([[(0, 7, "ORG"), (0, 4, "ORG"), (0, 2, "LOC"), (10, 12, "PER")], [(0, 3, "A"), (2, 5, "B")], []])
    assert (stats.sentences, stats.entities, stats.nested, stats.crossing, stats.max_depth) == (3, 6, 3, 2, 3)
    assert stats.nested_share == pytest.approx(0.5)
    assert nesting_statistics([[(0, 2, "GPE"), (0, 2, "LOC")]]).nested == 2  # same boundaries, two types: nested
    touching = nesting_statistics([[(0, 2, "A"), (2, 4, "B")]])  # end exclusive: touching is not overlapping
    assert (touching.nested, touching.crossing, touching.max_depth) == (0, 0, 1)


# ---- vocabulary ----------------------------------------------------------------------------------------------------
def test_vocabulary_ids_save_load_and_encode(tmp_path):
    vocab = NerVocabulary.build([["北", "京", "北"], ["京", "北", "大"]], "char", min_frequency=2)
    assert [vocab.tokenizer.id_to_token(i) for i in range(len(vocab))] == ["[PAD]", "[UNK]", "北", "京"]  # 大 seen once: dropped
    assert vocab.encode_tokens(["京", "大", "北"]) == [3, 1, 2]
    path = vocab.save(tmp_path / "tokenizer.json")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    loaded = NerVocabulary.load(path, "char")
    ids, offsets = loaded.encode("北 大京")  # the saved pre-tokenizer splits as the reader did
    assert ids == [2, 1, 3] and offsets == [(0, 1), (2, 3), (3, 4)]
    with pytest.raises(LitzooError, match="tokenizer.json.*'word' level"):
        NerVocabulary.load(path, "word")
    with pytest.raises(LitzooError, match="not a valid tokenizers JSON"):
        NerVocabulary.load(write_lines(tmp_path / "bad.json", ["{"]), "char")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"]["vocab"] = {"北": 0, "[PAD]": 1, "[UNK]": 2}
    (tmp_path / "swapped.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(LitzooError, match=r"\[PAD\] and \[UNK\] must have ids 0 and 1"):
        NerVocabulary.load(tmp_path / "swapped.json", "char")
    with pytest.raises(ValueError, match="min_frequency"):
        NerVocabulary.build([["a"]], "char", min_frequency=0)


# ---- SYNTHETIC generator -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("target", [0.4, 0.15])
def test_generator_hits_the_nested_share(level, target):
    rng = random.Random(3)
    p = composite_probability(level, target)
    stats = nesting_statistics(synthetic_nested_sentence(level, rng, p)[1] for _ in range(1500))
    assert abs(stats.nested_share - target) < 0.04, stats
    assert stats.crossing == 0 and stats.max_depth == 3
    # negative controls: the extremes are exact
    assert nesting_statistics(synthetic_nested_sentence(level, rng, composite_probability(level, 0.0))[1] for _ in range(100)).nested == 0
    full = nesting_statistics(synthetic_nested_sentence(level, rng, composite_probability(level, 1.0))[1] for _ in range(100))
    assert full.nested == full.entities


@pytest.mark.parametrize("level", ["char", "word"])
def test_generator_plants_every_mention(level):
    """Each span is a gazetteer mention of its type, and no gazetteer name occurs outside the spans."""
    gazetteer = GAZETTEERS[level]
    names = {name: kind for kind, group in gazetteer["atoms"].values() for name in group}
    rng = random.Random(0)
    for _ in range(300):
        text, spans = synthetic_nested_sentence(level, rng, 0.5)
        masked = list(text)
        for start, end, kind in spans:
            mention = text[start:end]
            assert names.get(mention, kind) == kind  # an atom has its type; composites are checked by their parts
            masked[start:end] = ["#"] * (end - start)
        rest = "".join(masked)
        assert not any(name in rest for name in names), (text, spans)


def test_generation_is_deterministic_and_atomic(tmp_path):
    a = write_synthetic_nested_ner(tmp_path / "a", "char", 40, 10, 10, seed=5)
    b = write_synthetic_nested_ner(tmp_path / "b", "char", 40, 10, 10, seed=5)
    c = write_synthetic_nested_ner(tmp_path / "c", "char", 40, 10, 10, seed=6)
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    assert not (a / "train.jsonl").read_bytes().startswith((a / "dev.jsonl").read_bytes())  # each split its own stream
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no staging folder left
    assert len(read_nested_ner(a / "train.jsonl", "char")) == 40
    with pytest.raises(ValueError, match="nested_share"):
        write_synthetic_nested_ner(tmp_path / "d", nested_share=1.5)


# ---- DataModules -------------------------------------------------------------------------------------------------------
def small_folder(tmp_path, dev_type="GPE"):
    root = tmp_path / "ner"
    root.mkdir()
    write_lines(root / "train.jsonl", [line("北京大学", (0, 4, "ORG"), (0, 2, "GPE")), line("张伟 来", (0, 2, "PER")), line("上海港", (0, 3, "LOC"), (0, 2, "GPE"))])
    write_lines(root / "dev.jsonl", [line("北京人", (0, 2, dev_type)), line("来")])
    write_lines(root / "test.jsonl", [line("大学")])
    return root


def test_batches_shapes_padding_and_spans(tmp_path):
    dm = NestedNERDataModule(str(small_folder(tmp_path)), level="char", batch_size=2)
    dm.setup("fit")
    assert dm.type_names == ("GPE", "LOC", "ORG", "PER") and dm.num_types == 4
    batch = next(iter(dm.val_dataloader()))
    vocab = dm.vocabulary
    assert batch["tokens"].tolist() == [vocab.encode_tokens(["北", "京", "人"]), [vocab.encode_tokens(["来"])[0], 0, 0]]
    assert vocab.encode_tokens(["人"]) == [1]  # not in the training split: [UNK]
    assert batch["mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["length"].tolist() == [3, 1] and batch["index"].tolist() == [0, 1]
    assert batch["spans"].shape == (2, 1, 3) and batch["spans"].tolist() == [[[0, 2, 0]], [[-1, -1, -1]]]
    seen = []
    for batch in dm.train_dataloader():
        assert batch["tokens"].shape == batch["mask"].shape and batch["spans"].shape[-1] == 3
        seen += batch["index"].tolist()
    assert sorted(seen) == [0, 1, 2]
    first = dm.datasets["train"][0]  # 北京大学: GPE [0, 2), ORG [0, 4), sorted, type ids by sorted name
    assert first["spans"].tolist() == [[0, 2, 0], [0, 4, 2]]
    assert dm.statistics("train").nested_share == pytest.approx(4 / 5)


def test_unseen_type_and_missing_split(tmp_path):
    dm = NestedNERDataModule(str(small_folder(tmp_path, dev_type="FAC")), level="char", batch_size=2)
    with pytest.raises(LitzooError, match=r"dev.jsonl' line 1: entity type 'FAC' does not occur in the training split"):
        dm.setup("fit")
    (tmp_path / "ner" / "test.jsonl").unlink()
    with pytest.raises(LitzooError, match="test.jsonl' does not exist"):
        NestedNERDataModule(str(tmp_path / "ner"), batch_size=2).test_dataloader()
    with pytest.raises(ValueError, match="level"):
        NestedNERDataModule(str(tmp_path / "ner"), level="subword")
    with pytest.raises(ValueError, match="min_frequency"):
        NestedNERDataModule(str(tmp_path / "ner"), min_frequency=0)


@pytest.mark.parametrize("level", ["char", "word"])
def test_synthetic_datamodule_spans_decode_to_the_gold_mentions(tmp_path, level):
    dm = SyntheticNestedNERDataModule(str(tmp_path), level=level, num_train=300, num_dev=20, num_test=20, batch_size=16, seed=1)
    assert dm.root.name.startswith(f"SYNTHETIC-{level}-seed1")
    dm.setup("fit")
    assert dm.type_names == ("GPE", "LOC", "ORG", "PER")
    assert abs(dm.statistics("train").nested_share - 0.4) < 0.08  # 300 sentences: a looser bound than the generator test
    sentences = dm.sentences("val")
    for batch in dm.val_dataloader():
        for row, index in enumerate(batch["index"].tolist()):
            sentence = sentences[index]
            assert batch["length"][row] == len(sentence.tokens) and batch["tokens"][row, batch["length"][row] :].eq(0).all()
            assert not batch["tokens"][row, : batch["length"][row]].eq(0).any()
            gold = {(s, e, dm.type_names.index(k)) for s, e, k in sentence.token_spans}
            rows = [tuple(span) for span in batch["spans"][row].tolist() if span[0] >= 0]
            assert set(rows) == gold and len(rows) == len(gold)
            # token spans map back to the mention text through the offsets
            mentions = {(sentence.text[sentence.offsets[s][0] : sentence.offsets[e - 1][1]], dm.type_names[t]) for s, e, t in rows}
            assert mentions == {(sentence.text[s:e], k) for s, e, k in sentence.entities}
    again = SyntheticNestedNERDataModule(str(tmp_path), level=level, num_train=300, num_dev=20, num_test=20, batch_size=16, seed=1)
    assert again.root == dm.root and torch.equal(again.dataset("val")[0]["tokens"], dm.dataset("val")[0]["tokens"])
