"""SCCL-style short-text CSV files, the word vocabulary, the SYNTHETIC topic corpus and the clustering DataModules."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer

from litzoo.datamodules.short_text import (
    FUNCTION_WORDS,
    ShortTextDataModule,
    SyntheticShortTextDataModule,
    read_short_text_csv,
    synthetic_short_texts,
    write_short_text_csv,
    write_synthetic_short_texts,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.text.clustering import clustering_accuracy
from litzoo.framework.text.vocabulary import MASK_ID, PAD_ID, UNK_ID, WordVocabulary


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ---- the CSV reader ----------------------------------------------------------------------------------------------------
def test_sccl_csv_read_back(tmp_path):
    # header, columns by name in another order, an extra augmentation column (SCCL's explicit files), quoted commas,
    # doubled quotes, a quoted line break, a blank line, a byte-order mark, labels 1-based and not contiguous
    content = (
        "\ufefftext,label,text1\n"
        'Apple pie recipe,3,x\n'
        '"stock market, falls",7,y\n'
        '\n'
        '"he said ""hi""",3,z\n'
        '"two\nlines",1,w\n'
        'last one,7,v\n'
    )
    corpus = read_short_text_csv(write(tmp_path / "searchsnippets.csv", content))
    assert corpus.texts == ["Apple pie recipe", "stock market, falls", 'he said "hi"', "two\nlines", "last one"]
    assert corpus.label_values == [1, 3, 7]
    assert corpus.labels == [1, 2, 1, 0, 2]
    assert corpus.lines == [2, 3, 5, 6, 8]  # the line each row starts on, the blank line and the quoted break counted
    assert corpus.num_classes == 3 and len(corpus) == 5


def test_written_csv_has_the_exact_format_and_reads_back(tmp_path):
    path = write_short_text_csv(tmp_path / "out.csv", [2, 0, 1], ["plain text", "a, comma", 'a "quote"'])
    assert path.read_text(encoding="utf-8") == 'label,text\n2,plain text\n0,"a, comma"\n1,"a ""quote"""\n'
    corpus = read_short_text_csv(path)
    assert corpus.texts == ["plain text", "a, comma", 'a "quote"'] and corpus.labels == [2, 0, 1]
    assert not list(tmp_path.glob(".*partial*"))  # the temporary file was renamed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty: expected a header line"),
        ("label,body\n1,hello\n", "line 1: no 'text' column in the header"),
        ("class,text\n1,hello\n", "line 1: no 'label' column in the header"),
        ("label,text,text\n1,a,b\n", "line 1: more than one 'text' column"),
        ("label,text\n1,hello\n2,hello, world\n", "line 3: 3 fields, the header has 2 (quote a text holding a comma)"),
        ("label,text\n1,hello\n2\n", "line 3: 1 fields, the header has 2"),
        ("label,text\n1,hello\n\n2,   \n", "line 4: empty text"),
        ("label,text\n1,hello\nsport,ball game\n", "line 3: label 'sport' is not an integer"),
        ("label,text\n1.0,hello\n", "line 2: label '1.0' is not an integer"),
        ("label,text\n", "holds a header but no row"),
        ('label,text\n1,"unclosed\n', "unexpected end of data"),
    ],
)
def test_malformed_csv_gives_one_line_naming_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(LitzooError) as info:
        read_short_text_csv(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(LitzooError, match="does not exist"):
        read_short_text_csv(tmp_path / "nope.csv")
    path = write(tmp_path / "latin.csv", "label,text\n1,caf\xe9 cr\xe8me\n", encoding="latin-1")
    with pytest.raises(LitzooError, match=r"latin\.csv' line 2: not UTF-8"):
        read_short_text_csv(path)


# ---- the vocabulary --------------------------------------------------------------------------------------------------
def test_vocabulary_ids_by_hand_and_round_trip(tmp_path):
    texts = ["Stock market falls", "stock prices rise", "Market rally, stock up", "pie recipe"]
    vocab = WordVocabulary.build(texts, min_frequency=2)
    # counts (lower-cased, punctuation split off): stock 3, market 2; the rest once -> [UNK]
    assert [vocab.id_to_token(i) for i in range(vocab.vocab_size)] == ["[PAD]", "[UNK]", "[MASK]", "stock", "market"]
    tokens, mask = vocab.encode(["STOCK market, unknown", "stock stock stock stock stock market"], max_length=4)
    assert tokens.tolist() == [[3, 4, UNK_ID, UNK_ID], [3, 3, 3, 3]]  # "," is a token of its own (an unseen one)
    assert mask.tolist() == [[True] * 4, [True] * 4]
    tokens, mask = vocab.encode(["market"], max_length=3)
    assert tokens.tolist() == [[4, PAD_ID, PAD_ID]] and mask.tolist() == [[True, False, False]]
    saved = vocab.save(tmp_path / "tokenizer.json")
    assert json.loads(saved.read_text())["model"]["type"] == "WordLevel"
    loaded = WordVocabulary.load(saved)
    sample = texts + ["never seen words [MASK]"]
    assert torch.equal(loaded.encode(sample, 8)[0], vocab.encode(sample, 8)[0])
    assert loaded.encode(["[MASK]"], 1)[0].item() == MASK_ID
    assert loaded.decode(torch.tensor([3, 4, PAD_ID])) == ["stock", "market"]
    # min_frequency 1 keeps every word: a negative control for the threshold
    assert WordVocabulary.build(texts, min_frequency=1).vocab_size == 3 + len({w for t in texts for w in t.lower().replace(",", " ,").split()})


def test_vocabulary_refusals(tmp_path):
    with pytest.raises(LitzooError, match="does not exist"):
        WordVocabulary.load(tmp_path / "tokenizer.json")
    with pytest.raises(LitzooError, match=r"bad\.json' is not a valid tokenizers JSON file"):
        WordVocabulary.load(write(tmp_path / "bad.json", "{not json"))
    from tokenizers import Tokenizer, models

    other = tmp_path / "other.json"
    Tokenizer(models.WordLevel({"<unk>": 0, "[PAD]": 1}, unk_token="<unk>")).save(str(other))
    with pytest.raises(LitzooError, match=r"other\.json': the vocabulary must map"):
        WordVocabulary.load(other)
    with pytest.raises(ValueError, match="min_frequency"):
        WordVocabulary.build(["a"], min_frequency=0)


# ---- the SYNTHETIC generator -------------------------------------------------------------------------------------------
def test_generator_is_deterministic_and_plants_its_topics(tmp_path):
    first = write_synthetic_short_texts(tmp_path / "a" / "SYNTHETIC.csv", num_topics=4, texts_per_topic=150, seed=3)
    again = write_synthetic_short_texts(tmp_path / "b" / "SYNTHETIC.csv", num_topics=4, texts_per_topic=150, seed=3)
    other = write_synthetic_short_texts(tmp_path / "c" / "SYNTHETIC.csv", num_topics=4, texts_per_topic=150, seed=4)
    assert first.path.read_bytes() == again.path.read_bytes() and first.topics_path.read_bytes() == again.topics_path.read_bytes()
    assert first.path.read_bytes() != other.path.read_bytes()
    corpus = read_short_text_csv(first.path)
    assert corpus.label_values == [0, 1, 2, 3] and Counter(corpus.labels) == dict.fromkeys(range(4), 150)
    topic_of = {word: k for k, words in enumerate(first.topic_words) for word in words}
    assert len(topic_of) == 4 * 40  # disjoint topics
    assert json.loads(first.topics_path.read_text())["topic_words"] == first.topic_words
    own = foreign = function = 0
    for text, label in zip(corpus.texts, corpus.labels, strict=True):
        words = text.split()
        assert 5 <= len(words) <= 15
        for word in words:
            if word in FUNCTION_WORDS:
                function += 1
            elif topic_of[word] == label:  # a KeyError here would be a word from nowhere
                own += 1
            else:
                foreign += 1
    total = own + foreign + function
    assert function / total == pytest.approx(0.3, abs=0.02)
    assert foreign / (own + foreign) == pytest.approx(0.15, abs=0.02)  # the planted cross-topic noise share


def bag_of_words_kmeans_accuracy(labels: list[int], texts: list[str], num_clusters: int) -> float:
    features = TfidfVectorizer().fit_transform(texts)
    preds = KMeans(num_clusters, n_init=5, random_state=0).fit_predict(features)
    return clustering_accuracy(torch.tensor(preds), torch.tensor(labels))


def test_generated_topics_are_separable_by_bag_of_words_kmeans():
    labels, texts, _ = synthetic_short_texts(num_topics=4, texts_per_topic=100, seed=0)
    assert bag_of_words_kmeans_accuracy(labels, texts, 4) > 0.8  # chance is about 0.25-0.3
    # negative control: when every content word comes from a random topic (noise 3/4 with 4 topics), nothing separates
    labels, texts, _ = synthetic_short_texts(num_topics=4, texts_per_topic=100, noise_share=0.75, seed=0)
    assert bag_of_words_kmeans_accuracy(labels, texts, 4) < 0.45


def test_generator_refuses_bad_arguments():
    for kwargs, message in [({"num_topics": 1}, "num_topics"), ({"noise_share": 1.0}, "noise_share"), ({"min_words": 6, "max_words": 5}, "max_words")]:
        with pytest.raises(ValueError, match=message):
            synthetic_short_texts(**kwargs)
    with pytest.raises(ValueError, match="function_share"):
        SyntheticShortTextDataModule(root="unused", function_share=-0.1)


# ---- the DataModules --------------------------------------------------------------------------------------------------
def test_datamodule_batches_index_rows_and_every_split_holds_every_row(tmp_path):
    labels, texts, _ = synthetic_short_texts(num_topics=3, texts_per_topic=10, seed=1)
    path = write_short_text_csv(tmp_path / "data.csv", [k + 1 for k in labels], texts)  # 1-based in the file
    dm = ShortTextDataModule(str(path), max_length=12, batch_size=8, save_tokenizer_to=str(tmp_path / "tok" / "tokenizer.json"))
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.corpus.label_values == [1, 2, 3]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"tokens", "mask", "label", "index"}
    assert batch["tokens"].shape == (8, 12) and batch["tokens"].dtype == torch.long
    assert batch["mask"].shape == (8, 12) and batch["mask"].dtype == torch.bool
    assert batch["label"].shape == (8,) and batch["index"].shape == (8,)
    for row, index in enumerate(batch["index"].tolist()):  # index is the file row: its text and label
        tokens, mask = dm.vocabulary.encode([texts[index]], 12)
        assert torch.equal(batch["tokens"][row], tokens[0]) and torch.equal(batch["mask"][row], mask[0])
        assert batch["label"][row].item() == labels[index]
        assert int(batch["mask"][row].sum()) == min(len(texts[index].split()), 12)
    assert (batch["tokens"][~batch["mask"]] == PAD_ID).all()
    seen = torch.cat([b["index"] for b in dm.train_dataloader()])
    assert sorted(seen.tolist()) == list(range(30)) and seen.tolist() != list(range(30))  # all rows, shuffled
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert torch.cat([b["index"] for b in loader]).tolist() == list(range(30))  # every row, in file order
    # the written vocabulary is the one used; reading it back gives the same tokens
    reread = ShortTextDataModule(str(path), max_length=12, batch_size=8, tokenizer_path=str(tmp_path / "tok" / "tokenizer.json"))
    reread.setup("test")
    assert torch.equal(reread.datasets["test"].tensors["tokens"], dm.datasets["train"].tensors["tokens"])


def test_training_order_is_seeded_and_resumes_exactly(tmp_path):
    labels, texts, _ = synthetic_short_texts(num_topics=2, texts_per_topic=20, seed=2)
    path = write_short_text_csv(tmp_path / "data.csv", labels, texts)

    def loader():
        dm = ShortTextDataModule(str(path), batch_size=6)
        dm.load_state_dict({"shuffle_seed": 11})
        dm.setup("fit")
        return dm.train_dataloader()

    full = loader()
    epoch0 = [b["index"].tolist() for b in full]
    epoch1 = [b["index"].tolist() for b in full]
    assert epoch0 != epoch1  # a new order each epoch
    assert [b["index"].tolist() for b in loader()] == epoch0  # the same seed, the same order
    interrupted = loader()
    iterator = iter(interrupted)
    head = [next(iterator)["index"].tolist() for _ in range(3)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [b["index"].tolist() for b in resumed] == epoch0


def test_datamodule_errors_name_the_file(tmp_path):
    path = write(tmp_path / "bad.csv", "label,text\n1,ok\nx,not ok\n")
    dm = ShortTextDataModule(str(path))
    with pytest.raises(LitzooError, match=r"bad\.csv' line 3: label 'x' is not an integer"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="max_length"):
        ShortTextDataModule(str(path), max_length=0)
    with pytest.raises(ValueError, match="batch_size"):
        ShortTextDataModule(str(path), batch_size=0)
    with pytest.raises(RuntimeError, match="after setup"):
        _ = ShortTextDataModule(str(path)).num_classes


def test_synthetic_datamodule_generates_once_and_reads_its_ground_truth(tmp_path):
    dm = SyntheticShortTextDataModule(root=str(tmp_path), num_topics=3, texts_per_topic=12, batch_size=5, seed=7)
    dm.prepare_data()
    written = dm.csv_path().read_bytes()
    dm.setup("fit")
    assert dm.csv_path().parent.name.startswith("SYNTHETIC-k3-n12")
    assert dm.num_classes == 3 and len(dm.datasets["train"]) == 36
    assert len(dm.topic_words) == 3
    expected_labels, expected_texts, _ = synthetic_short_texts(num_topics=3, texts_per_topic=12, seed=7)
    assert dm.corpus.texts == expected_texts and dm.corpus.labels == expected_labels
    # a second DataModule over the same folder reads, and does not rewrite, the set
    again = SyntheticShortTextDataModule(root=str(tmp_path), num_topics=3, texts_per_topic=12, batch_size=5, seed=7)
    again.setup("test")
    assert again.csv_path().read_bytes() == written
    batch = next(iter(again.test_dataloader()))
    assert batch["tokens"].shape == (5, 32) and batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(batch["label"].numpy(), np.array(expected_labels[:5]))
