"""Transcripts JSONL / social CSV readers, keyword positions, the SYNTHETIC drifting stations and the DataModules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from litzoo.datamodules.transcripts import (
    SyntheticTranscriptsDataModule,
    TranscriptsDataModule,
    keyword_positions,
    read_social_series,
    read_transcripts,
    synthetic_transcripts,
    write_synthetic_transcripts,
)
from litzoo.framework.errors import LitzooError

TURNS = [
    {"source": "fox", "date": "2019-03-02", "text": "the climate change debate again"},
    {"source": "cnn", "date": "2019-05-10", "text": "Police and climate change"},
    {"source": "cnn", "date": "2021-01-31", "text": "police reform now", "speaker": "ignored"},
]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_transcripts_exact_format(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(t) for t in TURNS[:2]] + ["", json.dumps(TURNS[2])])
    corpus = read_transcripts(path)
    assert corpus.sources == ["fox", "cnn", "cnn"] and corpus.lines == [1, 2, 4]
    assert [d.isoformat() for d in corpus.dates] == ["2019-03-02", "2019-05-10", "2021-01-31"]
    assert corpus.texts[1] == "Police and climate change"


@pytest.mark.parametrize(("line", "message"), [
    ('{"source": "cnn", "date": "2020-01-01", "text": "x"', "line 2 is not JSON"),
    ('["cnn", "2020-01-01", "x"]', "line 2 is not a JSON object"),
    ('{"source": "cnn", "text": "x"}', "line 2: no 'date' field"),
    ('{"source": "cnn", "date": 2020, "text": "x"}', "line 2: a non-string 'date' field"),
    ('{"source": " ", "date": "2020-01-01", "text": "x"}', "line 2: empty 'source'"),
    ('{"source": "cnn", "date": "2020-02-30", "text": "x"}', "line 2: bad date '2020-02-30'"),
    ('{"source": "cnn", "date": "2020-1-3", "text": "x"}', "line 2: bad date"),
])  # fmt: skip
def test_read_transcripts_one_line_errors(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(TURNS[0]), line])
    with pytest.raises(LitzooError, match=message) as excinfo:
        read_transcripts(path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_read_social_series_wide_layout(tmp_path):
    path = write_lines(tmp_path / "s.csv", ["date,police,climate change", "2020-02-01,0.5,1e-3", "2020-01-15,-0.25,2"])
    series = read_social_series(path, "month")
    assert series.names == ["police", "climate change"]
    assert series.periods == [2020 * 12, 2020 * 12 + 1]  # sorted by period
    np.testing.assert_array_equal(series.values, [[-0.25, 2.0], [0.5, 1e-3]])
    np.testing.assert_array_equal(series.aligned([2020 * 12 - 1, 2020 * 12 + 1]), [[np.nan, 0.5], [np.nan, 1e-3]])


@pytest.mark.parametrize(("lines", "period", "message"), [
    (["day,polarity", "2020-01-01,1"], "month", "line 1: no 'date' column"),
    (["date", "2020-01-01"], "month", "line 1: no series column"),
    (["date,polarity", "2020-13-01,1"], "month", "line 2: bad date '2020-13-01'"),
    (["date,polarity", "2020-01-01,high"], "month", "line 2: column 'polarity' holds 'high', not a finite number"),
    (["date,polarity", "2020-01-01,nan"], "month", "not a finite number"),
    (["date,polarity", "2020-01-01,1", "2020-01-20,2"], "month", "line 3: a second row for month 2020-01 .the first is on line 2."),
    (["date,polarity", "2020-01-01,1", "2020-07-01,2"], "year", "line 3: a second row for year 2020"),
    (["date,polarity", "2020-01-01,1,2"], "month", "line 2: 3 fields, the header has 2"),
    (["date,polarity"], "month", "holds a header but no row"),
])  # fmt: skip
def test_read_social_series_one_line_errors(tmp_path, lines, period, message):
    path = write_lines(tmp_path / "bad.csv", lines)
    with pytest.raises(LitzooError, match=message) as excinfo:
        read_social_series(path, period)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)
    with pytest.raises(LitzooError, match="does not exist"):
        read_social_series(tmp_path / "missing.csv")


def test_keyword_positions_by_hand():
    tokens = torch.tensor([[5, 6, 7, 5, 0], [7, 5, 6, 5, 6]])
    mask = tokens != 0
    positions = keyword_positions(tokens, mask, [[5, 6], [7], [6]])
    # keyword 0 = "5 6" (two tokens), keyword 1 = "7", keyword 2 = "6" (loses to keyword 0 where they overlap)
    assert positions.tolist() == [[0, 0, 1, -1, -1], [1, 0, 0, 0, 0]]


def test_datamodule_on_hand_written_files(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(t) for t in TURNS])
    social = write_lines(tmp_path / "s.csv", ["date,police", "2019-06-01,0.1", "2021-06-01,0.3"])
    dm = TranscriptsDataModule(str(path), ["climate change", "police"], str(social), period="year", val_fraction=0.0, test_fraction=0.0,
                               max_length=6, batch_size=4)  # fmt: skip
    dm.setup("fit")
    data = dm.analysis_data()
    assert dm.sources == ["cnn", "fox"] and data["label"].tolist() == [1, 0, 0]
    assert dm.period_labels == ["2019", "2020", "2021"] and data["period"].tolist() == [0, 0, 2]  # the gap year is kept
    # turn 0: "the climate change debate again" -> keyword 0 at words 1-2; turn 1: "police and climate change"
    assert data["keyword_positions"].tolist() == [[-1, 0, 0, -1, -1, -1], [1, -1, 0, 0, -1, -1], [1, -1, -1, -1, -1, -1]]
    names, values = dm.social_aligned()
    assert names == ["police"] and np.array_equal(values, [[0.1, np.nan, 0.3]], equal_nan=True)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"tokens", "mask", "label", "period", "keyword_positions", "index"}
    with pytest.raises(LitzooError, match="keyword 'immigration' never occurs"):
        TranscriptsDataModule(str(path), ["immigration"]).setup("fit")
    three = write_lines(tmp_path / "three.jsonl", [json.dumps(t) for t in TURNS] + [json.dumps({**TURNS[0], "source": "msnbc"})])
    with pytest.raises(LitzooError, match="two sources, the file has 3"):
        TranscriptsDataModule(str(three), ["police"]).setup("fit")
    with pytest.raises(ValueError, match="topic 't' names no keyword or unknown"):
        TranscriptsDataModule(str(path), ["police"], topics={"t": ["racism"]})


def test_generator_plants_the_drift_in_raw_word_counts():
    data = synthetic_transcripts(num_keywords=2, num_periods=20, turns_per_cell=30, drift_starts=[5, 12], max_divergence=0.9, fluctuation=0.05, seed=3)
    planted = data["planted"]
    divergence = np.array(planted["divergence"])
    assert (divergence[0, :5] == 0).all() and (divergence[1, :12] == 0).all() and (divergence[:, -1] > 0.6).all()
    month = {d: t for t, d in enumerate(planted["period_dates"])}
    share = np.zeros((2, 2, 20))  # keyword, station, period: share of the context words from the station's own pool
    total = np.zeros((2, 2, 20))
    for source, date, text in data["turns"]:
        words = text.split()
        k = next(i for i, kw in enumerate(planted["keywords"]) if kw in words)
        s, t = planted["sources"].index(source), month[date[:8] + "01"]
        context = [w for w in words if w != planted["keywords"][k]]
        share[k, s, t] += sum(w in planted["own_words"][source][k] for w in context)
        total[k, s, t] += len(context)
    share /= total
    assert (share[0, :, :5] == 0).all() and (share[1, :, :12] == 0).all()  # identical stations before the drift: no own word at all
    for k in range(2):
        for s in range(2):
            assert np.corrcoef(share[k, s], divergence[k])[0, 1] > 0.95
            np.testing.assert_allclose(share[k, s], divergence[k], atol=0.1)
    # the social series is the divergence one period later, plus noise
    social = np.array(data["social"][planted["keywords"][0]])
    assert np.abs(social[1:] - divergence[0, :-1]).max() < 0.1 and np.corrcoef(social[1:], divergence[0, :-1])[0, 1] > 0.95
    control = synthetic_transcripts(num_keywords=2, num_periods=20, turns_per_cell=5, max_divergence=0.0, seed=3)
    assert not np.array(control["planted"]["divergence"]).any() and control["planted"]["drift_starts"] == [None, None]
    own = {w for pools in control["planted"]["own_words"].values() for pool in pools for w in pool}
    assert not any(w in own for _, _, text in control["turns"] for w in text.split())


def test_written_set_reads_back_and_is_reproducible(tmp_path):
    first = write_synthetic_transcripts(tmp_path / "a", num_keywords=2, num_periods=6, turns_per_cell=2, seed=1)
    second = write_synthetic_transcripts(tmp_path / "b", num_keywords=2, num_periods=6, turns_per_cell=2, seed=1)
    for name in ("transcripts.jsonl", "social.csv", "planted.json"):
        assert (first.folder / name).read_bytes() == (second.folder / name).read_bytes()
    assert sorted(p.name for p in first.folder.iterdir()) == ["planted.json", "social.csv", "transcripts.jsonl"]  # no partial file left
    corpus = read_transcripts(first.transcripts_path)
    assert len(corpus) == 2 * 6 * 2 * 2 and sorted(set(corpus.sources)) == ["station_a", "station_b"]
    social = read_social_series(first.social_path, "month")
    planted = json.loads(first.planted_path.read_text())
    assert social.names == planted["keywords"] and planted["synthetic"] is True
    expected = synthetic_transcripts(num_keywords=2, num_periods=6, turns_per_cell=2, seed=1)["social"]
    np.testing.assert_array_equal(social.values.T, [expected[k] for k in social.names])  # repr floats: exact


def test_synthetic_datamodule(tmp_path):
    dm = SyntheticTranscriptsDataModule(str(tmp_path), num_keywords=3, num_periods=8, turns_per_cell=2, num_topics=2, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.keywords == dm.planted["keywords"] and dm.topics == {"topic_0": dm.keywords[0::2], "topic_1": dm.keywords[1:2]}
    data = dm.analysis_data()
    assert len(data["tokens"]) == 3 * 8 * 2 * 2 and (data["keyword_positions"] >= 0).sum(1).eq(1).all()
    assert data["period"].max() == 7 and dm.social_aligned()[1].shape == (3, 8)
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == len(data["tokens"])
    with pytest.raises(ValueError, match="num_topics"):
        SyntheticTranscriptsDataModule(str(tmp_path), num_keywords=2, num_topics=3)
