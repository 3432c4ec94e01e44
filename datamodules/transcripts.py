"""Broadcast transcripts of two sources over time, a social-media polarity series, and a SYNTHETIC drifting pair of stations.

The data of semantic polarization (Ding, Horning, Rho, "Same Words, Different Meanings", ICWSM 2023, arXiv:2301.08832):
closed captions of CNN and Fox News 2010–2020 cut into speaker turns, and monthly polarity series measured on Twitter.
The paper releases no files; the layouts here are ours, the simplest that carry what the paper uses.

**Transcripts** — JSONL, one speaker turn per line: ``{"source": str, "date": "YYYY-MM-DD", "text": str}`` (other keys
ignored). Refused with one ``LitzooError`` naming the file and the line: a line that is not a JSON object, a missing,
non-string or empty ``source`` / ``date`` / ``text``, a date that is not a real ``YYYY-MM-DD`` day, a file with other than
two sources. A turn is assigned to its **period** by its date: ``period="year"`` (the paper's Study 1 and 2) or
``"month"`` (its Study 3 series). The periods are the contiguous range from the first to the last period of the file
(ours: a period without turns is kept, as a gap, so that the series stay regular for the Granger test).

**Social series** — CSV with a header, ``date,<series>,...`` (ours: the wide layout ``pandas.read_csv(index_col="date")``
gives, one column per series, one row per period; e.g. ``date,polarity``, or one column per keyword named by the
keyword). ``date`` is a ``YYYY-MM-DD`` day inside the period it measures; values are finite numbers. One-line errors
(file and line): a missing ``date`` column or no series column, a bad date, a value that is not a finite number, two
rows in one period, a row with another number of fields.

**Keywords** are given by the user (``keywords=[...]``, words or phrases); a keyword matches where its words (after the
vocabulary's NFKC + lower-case normalisation) occur contiguously in a turn; its positions are the keyword's index,
``-1`` elsewhere. ``topics`` groups keywords (default: one topic per keyword).

Batches (training and classification): ``{"tokens": (B, L) long, "mask": (B, L) bool, "label": (B,) long (the source id,
sources sorted by name), "period": (B,) long, "keyword_positions": (B, L) long, "index": (B,) long (the line's turn
number)}``. The vocabulary (:class:`~litzoo.framework.text.vocabulary.WordVocabulary`) is built on **all** turns (ours:
the language model is trained on the whole corpus without labels, and the analysis reads every turn). The turns are
split seeded into train / val / test (for the masked-language-model loss and the source classifier);
:meth:`TranscriptsDataModule.analysis_data` gives every turn for the polarity analysis.

SYNTHETIC data (:func:`write_synthetic_transcripts`): two stations, ``station_a`` and ``station_b``, produce turns that
each hold one keyword among context words. A context word is drawn from a pool **shared** by both stations with
probability ``1 - d``, and from the station's **own** pool for that keyword with probability ``d``, where ``d = d[k, t]``
is the planted divergence of keyword ``k`` in period ``t``: exactly 0 before the keyword's planted drift start (the two
stations then speak identically), afterwards a linear ramp reaching ``max_divergence`` at the last period plus a
planted random fluctuation (``fluctuation`` × standard normal, clipped to [0, 1]; the innovations make the Granger
direction identifiable). The social CSV has one column per keyword: the planted divergence ``lag`` periods earlier plus
Gaussian noise — the TV polarity Granger-causes it, not the reverse. ``max_divergence=0`` is the negative control (no
drift; the social series is pure noise). Everything planted is in ``planted.json``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from litzoo.framework.data import DictTensorDataset, SplitsDataModule
from litzoo.framework.data.jsonl import iter_jsonl
from litzoo.framework.data.staging import generate_folder_atomically, write_files_atomically
from litzoo.framework.data.tables import read_named_columns
from litzoo.framework.errors import LitzooError
from litzoo.framework.text.synthetic_words import pseudo_words
from litzoo.framework.text.vocabulary import SPECIAL_TOKENS, WordVocabulary

Period = Literal["year", "month"]
FIELDS = ("source", "date", "text")


# ---- periods ---------------------------------------------------------------------------------------------------------
def parse_date(text: str) -> dt.date:
    """A ``YYYY-MM-DD`` day (``ValueError`` otherwise, e.g. ``2020-02-30`` or ``2020-2-3``)."""
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        raise ValueError(f"{text!r} is not a YYYY-MM-DD date")
    return dt.date.fromisoformat(text)


def period_index(day: dt.date, period: Period) -> int:
    """A period number that increases by 1 from one period to the next (years, or months since year 0)."""
    return day.year if period == "year" else day.year * 12 + day.month - 1


def period_label(index: int, period: Period) -> str:
    """``"2020"`` or ``"2020-03"``."""
    return str(index) if period == "year" else f"{index // 12:04d}-{index % 12 + 1:02d}"


def check_period(period: str) -> None:
    if period not in ("year", "month"):
        raise ValueError(f"period must be 'year' or 'month', got {period!r}")


# ---- the transcripts reader ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transcripts:
    """The speaker turns of a transcripts JSONL file.

    Attributes:
        path: the file.
        sources: each turn's source name.
        dates: each turn's day.
        texts: each turn's text.
        lines: each turn's line (1-based).
    """

    path: Path
    sources: list[str]
    dates: list[dt.date]
    texts: list[str]
    lines: list[int] = field(repr=False)

    def __len__(self) -> int:
        return len(self.texts)


def read_transcripts(path: str | Path) -> Transcripts:
    """Read a transcripts JSONL file (see the module docstring); one-line ``LitzooError`` naming the file and line."""
    path = Path(path).expanduser()
    sources, dates, texts, lines = [], [], [], []
    for line, record in iter_jsonl(path, (), what="transcripts JSONL"):
        for key in FIELDS:
            value = record.get(key)
            if not isinstance(value, str):
                raise LitzooError(f"transcripts JSONL '{path}' line {line}: {'no' if value is None else 'a non-string'} {key!r} field "
                                  f"(expected {{\"source\": str, \"date\": \"YYYY-MM-DD\", \"text\": str}})")  # fmt: skip
            if not value.strip():
                raise LitzooError(f"transcripts JSONL '{path}' line {line}: empty {key!r}")
        try:
            day = parse_date(record["date"].strip())
        except ValueError:
            raise LitzooError(f"transcripts JSONL '{path}' line {line}: bad date {record['date']!r} (expected a real YYYY-MM-DD day)") from None
        sources.append(record["source"].strip())
        dates.append(day)
        texts.append(record["text"])
        lines.append(line)
    if not texts:
        raise LitzooError(f"transcripts JSONL '{path}' holds no speaker turn")
    return Transcripts(path, sources, dates, texts, lines)


def write_transcripts(path: str | Path, sources: Sequence[str], dates: Sequence[str], texts: Sequence[str]) -> Path:
    """Write turns as transcripts JSONL (one ``{"source", "date", "text"}`` object a line), atomically."""
    if not len(sources) == len(dates) == len(texts):
        raise ValueError(f"sources, dates and texts must have one entry per turn, got {len(sources)}, {len(dates)}, {len(texts)}")
    path = Path(path).expanduser()
    with write_files_atomically(path) as (staged,):
        staged.write_text("".join(json.dumps({"source": s, "date": d, "text": t}) + "\n" for s, d, t in zip(sources, dates, texts, strict=True)),
                          encoding="utf-8")  # fmt: skip
    return path


# ---- the social series reader ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SocialSeries:
    """The series of a social CSV, one value per period.

    Attributes:
        path: the file.
        names: the series (column) names, in file order.
        periods: the period index of each row (see :func:`period_index`), increasing.
        values: ``(rows, len(names))`` float64.
    """

    path: Path
    names: list[str]
    periods: list[int]
    values: np.ndarray

    def aligned(self, periods: Sequence[int]) -> np.ndarray:
        """``(len(names), len(periods))`` values on the given periods, ``NaN`` where the file has no row."""
        row = {p: i for i, p in enumerate(self.periods)}
        out = np.full((len(self.names), len(periods)), np.nan)
        for j, p in enumerate(periods):
            if p in row:
                out[:, j] = self.values[row[p]]
        return out


def read_social_series(path: str | Path, period: Period = "month") -> SocialSeries:
    """Read a social CSV ``date,<series>,...`` (see the module docstring); one-line ``LitzooError`` naming file and line."""
    check_period(period)
    path = Path(path).expanduser()
    if not path.is_file():
        raise LitzooError(f"social CSV '{path}' does not exist (expected a 'date,<series>,...' file, one row per {period})")
    try:
        first = next(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig").split("\n", 1)[0])), [])
    except UnicodeDecodeError:
        first = []  # read_named_columns names the bad byte's line
    names = [name.strip() for name in first if name.strip() != "date"]
    if "date" in [n.strip() for n in first] and not names:
        raise LitzooError(f"social CSV '{path}' line 1: no series column beside 'date'")
    if any(not name for name in names):
        raise LitzooError(f"social CSV '{path}' line 1: an empty column name in the header")
    periods, rows, seen = [], [], {}
    for line, row in read_named_columns(path, ["date", *names], ",", "social CSV"):
        try:
            day = parse_date(row["date"].strip())
        except ValueError:
            raise LitzooError(f"social CSV '{path}' line {line}: bad date {row['date']!r} (expected a real YYYY-MM-DD day)") from None
        p = period_index(day, period)
        if p in seen:
            raise LitzooError(f"social CSV '{path}' line {line}: a second row for {period} {period_label(p, period)} (the first is on line {seen[p]})")
        seen[p] = line
        values = []
        for name in names:
            try:
                value = float(row[name])
            except ValueError:
                value = float("nan")
            if not np.isfinite(value):
                raise LitzooError(f"social CSV '{path}' line {line}: column {name!r} holds {row[name]!r}, not a finite number")
            values.append(value)
        periods.append(p)
        rows.append(values)
    if not rows:
        raise LitzooError(f"social CSV '{path}' holds a header but no row")
    order = np.argsort(periods, kind="stable")
    return SocialSeries(path, names, [periods[i] for i in order], np.asarray(rows, dtype=np.float64)[order])


def write_social_series(path: str | Path, dates: Sequence[str], series: Mapping[str, Sequence[float]]) -> Path:
    """Write ``date,<name>,...`` rows, atomically (``repr`` floats: read back exactly)."""
    names = list(series)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["date", *names])
    for i, day in enumerate(dates):
        writer.writerow([day, *(repr(float(series[name][i])) for name in names)])
    path = Path(path).expanduser()
    with write_files_atomically(path) as (staged,):
        staged.write_text(buffer.getvalue(), encoding="utf-8")
    return path


# ---- keyword positions -----------------------------------------------------------------------------------------------
def keyword_positions(tokens: Tensor, mask: Tensor, keyword_ids: Sequence[Sequence[int]]) -> Tensor:
    """``(N, L)`` long: the index of the keyword whose token ids occur contiguously at a position, ``-1`` elsewhere
    (an earlier keyword wins an overlap)."""
    out = torch.full(tokens.shape, -1, dtype=torch.long)
    length = tokens.shape[1]
    for k, ids in reversed(list(enumerate(keyword_ids))):  # reversed: the earlier keyword is written last
        n = len(ids)
        if n == 0 or n > length:
            continue
        target = torch.tensor(ids, dtype=torch.long)
        windows = tokens.unfold(1, n, 1)  # (N, L - n + 1, n)
        hit = (windows == target).all(-1) & mask.unfold(1, n, 1).all(-1)
        rows, starts = torch.nonzero(hit, as_tuple=True)
        for offset in range(n):
            out[rows, starts + offset] = k
    return out


# ---- the SYNTHETIC stations ------------------------------------------------------------------------------------------
SOURCES = ("station_a", "station_b")


def _period_day(start_year: int, t: int, period: Period, rng: np.random.Generator) -> dt.date:
    if period == "year":
        return dt.date(start_year + t, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    year, month = start_year + t // 12, t % 12 + 1
    return dt.date(year, month, int(rng.integers(1, 29)))


def default_drift_starts(num_keywords: int, num_periods: int) -> list[int]:
    """Drift starts spread over the first half of the periods after a quarter: ``T/4 .. T/2``."""
    if num_keywords == 1:
        return [num_periods // 4]
    return [int(round(num_periods / 4 + k * (num_periods / 4) / (num_keywords - 1))) for k in range(num_keywords)]


def check_synthetic_arguments(num_keywords: int, num_periods: int, turns_per_cell: int, drift_starts: Sequence[int] | None,
                              max_divergence: float, fluctuation: float, lag: int, social_noise: float) -> None:  # fmt: skip
    """Raises a ``ValueError`` naming the first bad argument of the SYNTHETIC generator."""
    for name, value in (("num_keywords", num_keywords), ("num_periods", num_periods), ("turns_per_cell", turns_per_cell)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_periods < 4:
        raise ValueError(f"num_periods must be at least 4, got {num_periods}")
    if drift_starts is not None and (len(drift_starts) != num_keywords or any(not 0 <= s < num_periods for s in drift_starts)):
        raise ValueError(f"drift_starts must give one period in [0, {num_periods}) per keyword, got {drift_starts}")
    if not 0.0 <= max_divergence <= 1.0 or fluctuation < 0 or social_noise < 0:
        raise ValueError(f"need max_divergence in [0, 1] and non-negative fluctuation / social_noise, got {max_divergence}, {fluctuation}, {social_noise}")
    if not isinstance(lag, int) or not 0 <= lag < num_periods:
        raise ValueError(f"lag must be an integer in [0, {num_periods}), got {lag!r}")


def synthetic_transcripts(
    num_keywords: int = 3,
    num_periods: int = 48,
    turns_per_cell: int = 8,
    drift_starts: Sequence[int] | None = None,
    max_divergence: float = 0.8,
    fluctuation: float = 0.1,
    lag: int = 1,
    social_noise: float = 0.02,
    num_shared: int = 40,
    num_own: int = 8,
    min_context: int = 6,
    max_context: int = 10,
    period: Period = "month",
    start_year: int = 2012,
    seed: int = 0,
) -> dict[str, Any]:
    """The SYNTHETIC corpus as plain data: ``{"turns": [(source, date, text)], "social": {name: [...]}, "dates": [...], "planted": {...}}``.

    See :func:`write_synthetic_transcripts` for the arguments.
    """
    check_period(period)
    check_synthetic_arguments(num_keywords, num_periods, turns_per_cell, drift_starts, max_divergence, fluctuation, lag, social_noise)
    if min(num_shared, num_own, min_context) < 1 or max_context < min_context:
        raise ValueError(f"need positive num_shared, num_own, min_context and max_context >= min_context, got {num_shared}, {num_own}, {min_context}, {max_context}")
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    keywords = pseudo_words(rng, num_keywords, seen)
    shared = pseudo_words(rng, num_shared, seen)
    own = {source: [pseudo_words(rng, num_own, seen) for _ in range(num_keywords)] for source in SOURCES}
    starts = list(drift_starts) if drift_starts is not None else default_drift_starts(num_keywords, num_periods)
    divergence = np.zeros((num_keywords, num_periods))
    for k, start in enumerate(starts):
        t = np.arange(start, num_periods)
        ramp = max_divergence * (t - start + 1) / (num_periods - start)
        noise = fluctuation * rng.standard_normal(len(t)) if max_divergence > 0 else 0.0
        divergence[k, start:] = np.clip(ramp + noise, 0.0, 1.0)
    turns: list[tuple[str, str, str]] = []
    for t in range(num_periods):
        for k in range(num_keywords):
            for source in SOURCES:
                for _ in range(turns_per_cell):
                    size = int(rng.integers(min_context, max_context + 1))
                    from_own = rng.random(size) < divergence[k, t]
                    words = [own[source][k][rng.integers(num_own)] if o else shared[rng.integers(num_shared)] for o in from_own]
                    words.insert(int(rng.integers(0, size + 1)), keywords[k])
                    turns.append((source, _period_day(start_year, t, period, rng).isoformat(), " ".join(words)))
    order = rng.permutation(len(turns))  # a file in no particular order: the reader must not rely on one
    turns = [turns[i] for i in order]
    lagged = np.concatenate([np.zeros((num_keywords, lag)), divergence[:, : num_periods - lag]], axis=1)
    social = {keywords[k]: (lagged[k] + social_noise * rng.standard_normal(num_periods)).tolist() for k in range(num_keywords)}
    dates = [(dt.date(start_year + t, 1, 1) if period == "year" else dt.date(start_year + t // 12, t % 12 + 1, 1)).isoformat() for t in range(num_periods)]
    planted = {
        "synthetic": True, "sources": list(SOURCES), "keywords": keywords, "period": period, "period_dates": dates,
        "drift_starts": starts if max_divergence > 0 else [None] * num_keywords, "divergence": divergence.tolist(), "lag": lag, "max_divergence": max_divergence,
        "shared_words": shared, "own_words": own, "social_columns": keywords,
    }  # fmt: skip
    return {"turns": turns, "social": social, "dates": dates, "planted": planted}


@dataclass(frozen=True)
class SyntheticTranscripts:
    """What :func:`write_synthetic_transcripts` wrote: ``transcripts.jsonl``, ``social.csv`` and ``planted.json`` in ``folder``."""

    folder: Path
    transcripts_path: Path
    social_path: Path
    planted_path: Path
    planted: dict


def write_synthetic_transcripts(folder: str | Path, **kwargs: Any) -> SyntheticTranscripts:
    """Write a SYNTHETIC pair of drifting stations into ``folder`` (each file atomically).

    Args (keyword): num_keywords, num_periods, turns_per_cell (turns per keyword, period and station), drift_starts
        (planted period of each keyword's drift start; default :func:`default_drift_starts`), max_divergence (the planted
        divergence at the last period; 0: the negative control), fluctuation (sd of the planted per-period
        fluctuation), lag (periods the social series trails the planted divergence), social_noise (its noise sd),
        num_shared / num_own (pool sizes), min_context / max_context (context words per turn), period ("month" or
        "year"), start_year, seed.
    """
    data = synthetic_transcripts(**kwargs)
    folder = Path(folder).expanduser()
    sources, dates, texts = zip(*data["turns"], strict=True)
    transcripts = write_transcripts(folder / "transcripts.jsonl", sources, dates, texts)
    social = write_social_series(folder / "social.csv", data["dates"], data["social"])
    planted_path = folder / "planted.json"
    with write_files_atomically(planted_path) as (staged,):
        staged.write_text(json.dumps(data["planted"]) + "\n", encoding="utf-8")
    return SyntheticTranscripts(folder, transcripts, social, planted_path, data["planted"])


# ---- the DataModules -------------------------------------------------------------------------------------------------
def random_split(count: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded split of ``range(count)`` into sorted train / val / test rows (``round`` of the fractions)."""
    order = np.random.default_rng(seed).permutation(count)
    n_test, n_val = round(count * test_fraction), round(count * val_fraction)
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test : n_test + n_val]), "train": np.sort(order[n_test + n_val :])}


class TranscriptsDataModule(SplitsDataModule):
    """Speaker turns of two sources (transcripts JSONL) and, optionally, a social CSV; see the module docstring.

    After :meth:`setup`: ``corpus``, ``vocabulary``, ``vocab_size``, ``sources`` (the two names, sorted: ids 0 and 1),
    ``periods`` (period indices, contiguous), ``period_labels``, ``keywords``, ``topics``, ``social`` (or ``None``),
    ``split_rows``; :meth:`analysis_data` gives every turn's tensors.

    Args:
        path: the transcripts JSONL file.
        keywords: the keywords (words or phrases) whose polarity is measured.
        social_path: a social CSV, or ``None``.
        topics: topic → its keywords; ``None``: one topic per keyword.
        period: ``"year"`` or ``"month"``.
        val_fraction, test_fraction: shares of the turns held out (seeded by ``split_seed``).
        max_length: words per turn; longer turns are cut (a keyword cut off is not seen).
        min_frequency: words seen fewer times become ``[UNK]`` (keywords must stay known).
        batch_size, num_workers: loader options.

    Raises:
        ValueError: bad fractions, ``period``, ``max_length``, ``min_frequency``, no or repeated keywords, topics naming
            unknown keywords.
        LitzooError: (in :meth:`setup`) a missing or malformed file, other than two sources, a keyword that never occurs.
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        path: str,
        keywords: list[str],
        social_path: str | None = None,
        topics: dict[str, list[str]] | None = None,
        period: Period = "year",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        max_length: int = 32,
        min_frequency: int = 1,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_period(period)
        if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
            raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got {val_fraction} and {test_fraction}")
        if max_length < 1 or min_frequency < 1:
            raise ValueError(f"max_length and min_frequency must be positive, got {max_length} and {min_frequency}")
        self.save_hyperparameters()
        self.path, self.social_path, self.period = path, social_path, period
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.max_length, self.min_frequency = max_length, min_frequency
        self.set_keywords(keywords, topics)
        self.corpus: Transcripts | None = None
        self.vocabulary: WordVocabulary | None = None
        self.social: SocialSeries | None = None
        self.sources: list[str] = []
        self.periods: list[int] = []
        self.split_rows: dict[str, np.ndarray] = {}
        self._all: dict[str, Tensor] = {}

    def set_keywords(self, keywords: Sequence[str], topics: Mapping[str, Sequence[str]] | None) -> None:
        keywords = [str(k).strip() for k in keywords]
        if not keywords or any(not k for k in keywords) or len(set(keywords)) != len(keywords):
            raise ValueError(f"keywords must be distinct non-empty strings, got {keywords}")
        topics = {k: [k] for k in keywords} if topics is None else {str(t): [str(w) for w in ws] for t, ws in topics.items()}
        for topic, words in topics.items():
            unknown = [w for w in words if w not in keywords]
            if unknown or not words:
                raise ValueError(f"topic {topic!r} names no keyword or unknown ones: {unknown or words}")
        self.keywords, self.topics = keywords, topics

    @property
    def vocab_size(self) -> int:
        if self.vocabulary is None:
            raise RuntimeError(f"{type(self).__name__}: the vocabulary is known after setup()")
        return self.vocabulary.vocab_size

    @property
    def period_labels(self) -> list[str]:
        return [period_label(p, self.period) for p in self.periods]

    def transcripts_path(self) -> Path:
        return Path(self.path).expanduser()

    def social_file(self) -> Path | None:
        return None if self.social_path is None else Path(self.social_path).expanduser()

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        corpus = read_transcripts(self.transcripts_path())
        sources = sorted(set(corpus.sources))
        if len(sources) != 2:
            raise LitzooError(f"transcripts JSONL '{corpus.path}': polarity compares two sources, the file has {len(sources)}: {sources[:10]}")
        vocabulary = WordVocabulary.build(corpus.texts, min_frequency=self.min_frequency)
        keyword_ids = []
        for word in self.keywords:
            ids = vocabulary.tokenizer.encode(word, add_special_tokens=False).ids
            if not ids or any(i < len(SPECIAL_TOKENS) for i in ids):
                raise LitzooError(f"transcripts JSONL '{corpus.path}': keyword {word!r} never occurs (or is below min_frequency {self.min_frequency})")
            keyword_ids.append(ids)
        tokens, mask = vocabulary.encode(corpus.texts, self.max_length)
        positions = keyword_positions(tokens, mask, keyword_ids)
        index = [period_index(d, self.period) for d in corpus.dates]
        first = min(index)
        self.periods = list(range(first, max(index) + 1))
        self.corpus, self.vocabulary, self.sources = corpus, vocabulary, sources
        social_file = self.social_file()
        self.social = None if social_file is None else read_social_series(social_file, self.period)
        labels = torch.tensor([sources.index(s) for s in corpus.sources], dtype=torch.long)
        self._all = {"tokens": tokens, "mask": mask, "label": labels, "period": torch.tensor(index, dtype=torch.long) - first,
                     "keyword_positions": positions, "index": torch.arange(len(corpus))}  # fmt: skip
        self.split_rows = random_split(len(corpus), self.val_fraction, self.test_fraction, self.split_seed)
        if len(self.split_rows["train"]) == 0:
            raise LitzooError(f"transcripts JSONL '{corpus.path}': no training turn left after the split ({len(corpus)} turns)")
        return {name: DictTensorDataset(**{key: value[torch.from_numpy(rows)] for key, value in self._all.items()}) for name, rows in self.split_rows.items()}

    def analysis_data(self) -> dict[str, Tensor]:
        """Every turn (all splits): ``tokens``, ``mask``, ``label`` (source id), ``period`` (0-based), ``keyword_positions``, ``index``."""
        if not self._all:
            self.dataset("train")
        return self._all

    def social_aligned(self) -> tuple[list[str], np.ndarray] | None:
        """The social series on this corpus' periods (``(names, (S, T))``, NaN where missing), or ``None``."""
        if not self._all:
            self.dataset("train")
        return None if self.social is None else (self.social.names, self.social.aligned(self.periods))


class SyntheticTranscriptsDataModule(TranscriptsDataModule):
    """The SYNTHETIC drifting stations of :func:`write_synthetic_transcripts`, generated once under ``root`` and read as
    :class:`TranscriptsDataModule` (keywords, topics and the social CSV come from the generated set). After :meth:`setup`,
    ``planted`` holds ``planted.json``.

    Args:
        root: the folder the generated sets are written under (one sub-folder per set of generator arguments).
        num_keywords, num_periods, turns_per_cell, max_divergence, fluctuation, lag, social_noise, period, seed: the
            generator's (see :func:`write_synthetic_transcripts`).
        num_topics: keywords are dealt round-robin into this many topics ``topic_0..``.
        val_fraction, test_fraction, split_seed, max_length, batch_size, num_workers: as :class:`TranscriptsDataModule`.
    """

    def __init__(
        self,
        root: str = "data/transcripts",
        num_keywords: int = 3,
        num_periods: int = 48,
        turns_per_cell: int = 8,
        max_divergence: float = 0.8,
        fluctuation: float = 0.1,
        lag: int = 1,
        social_noise: float = 0.02,
        period: Period = "month",
        seed: int = 0,
        num_topics: int = 1,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        max_length: int = 16,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        check_period(period)
        check_synthetic_arguments(num_keywords, num_periods, turns_per_cell, None, max_divergence, fluctuation, lag, social_noise)
        if not 1 <= num_topics <= num_keywords:
            raise ValueError(f"num_topics must be in [1, num_keywords={num_keywords}], got {num_topics}")
        self.generator_args = {"num_keywords": num_keywords, "num_periods": num_periods, "turns_per_cell": turns_per_cell,
                               "max_divergence": max_divergence, "fluctuation": fluctuation, "lag": lag, "social_noise": social_noise,
                               "period": period, "seed": seed}  # fmt: skip
        name = (f"SYNTHETIC-k{num_keywords}-T{num_periods}{period[0]}-n{turns_per_cell}-div{max_divergence:g}-fl{fluctuation:g}-lag{lag}"
                f"-sn{social_noise:g}-seed{seed}")  # fmt: skip
        self.folder = Path(root).expanduser() / name
        self.num_topics = num_topics
        placeholder = [f"keyword_{k}" for k in range(num_keywords)]  # the real keywords are read from planted.json
        super().__init__(str(self.folder / "transcripts.jsonl"), placeholder, str(self.folder / "social.csv"), None, period, val_fraction,
                         test_fraction, split_seed, max_length, 1, batch_size, num_workers)  # fmt: skip
        self.planted: dict | None = None

    def transcripts_path(self) -> Path:
        return self.folder / "transcripts.jsonl"

    def social_file(self) -> Path | None:
        return self.folder / "social.csv"

    def generate(self) -> Path:
        """Write the set into :attr:`folder` unless it is there (a whole folder appears at once: safe across ranks)."""
        if not (self.folder / "planted.json").is_file():
            generate_folder_atomically(self.folder, lambda staging: write_synthetic_transcripts(staging, **self.generator_args))
        return self.folder

    def prepare_data(self) -> None:
        self.generate()

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        self.planted = json.loads((self.generate() / "planted.json").read_text(encoding="utf-8"))
        words = self.planted["keywords"]
        self.set_keywords(words, {f"topic_{j}": words[j :: self.num_topics] for j in range(self.num_topics)})
        return super().build_datasets(split)
