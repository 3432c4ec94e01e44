"""Nested named-entity recognition data: the JSONL span format, its tokenisation, a word-level vocabulary, nesting statistics.

Format. One JSON object per line, ``{"text": str, "entities": [{"start": i, "end": j, "type": T}, ...]}``, with
*character* offsets into ``text`` and ``end`` exclusive (``text[start:end]`` is the mention): the layout issue 24 fixes
for ACE 2005-zh / GENIA / ChiNesE as used by Mulco (Yang et al., "Mulco: Recognizing Chinese Nested Named Entities
Through Multiple Scopes", CIKM 2023, arXiv 2211.10854). Mulco released no code or converter, so the layout was not
checked against one. Other keys of a line (``id``, ...) are ignored. Checked: the ShannonAI MRC-NER converter (github.com/ShannonAI/mrc-for-flat-nested-ner,
``span_position: "1;2"`` with ``start_position`` / ``end_position``) writes *inclusive* word ends, while SpERT-style
token JSON (``{"tokens", "entities": [{"start", "end", "type"}]}``) and Python slicing use exclusive ends; this reader
takes exclusive ends only, so a file converted with inclusive ends must add 1 to every ``end`` (an inclusive file
usually fails here anyway: its ends fall inside a token or before the mention's last character).

Choices where the format is silent, all checked with one-line :class:`LitzooError` naming the file and line:
offsets are integers (not bools or floats) with ``0 <= start < end <= len(text)``; a type is a non-empty string; the
same ``(start, end, type)`` twice is an error, while the same boundaries with two types are kept (GENIA and ACE have a
few such multi-type mentions); crossing (partially overlapping) spans are read and counted by
:func:`nesting_statistics`, not refused; a line whose text has no token is an error (a model cannot read it).

Tokenisation (``level``), with the `tokenizers` pre-tokenizers so that a saved ``tokenizer.json`` tokenises exactly
as the reader did: ``"char"`` makes every non-whitespace character a token (Chinese, as Mulco and ChiNesE), ``"word"``
splits on whitespace and between word characters and punctuation (``\\w+|[^\\w\\s]+``, `tokenizers`' ``Whitespace``;
English). Offsets are Python string indices (checked on astral characters). No normalisation and no lower-casing: case
is an entity cue and normalising would move offsets. An entity is mapped to the token span ``[first token, last token
+ 1)``; its start must be the start of a token and its end the end of one: a boundary inside a token, or on
whitespace, is an error (a model over these tokens could not emit that span, so scoring it would be unfair).

Vocabulary (:class:`NerVocabulary`): a `tokenizers` ``WordLevel`` model built on the training split's tokens, ``[PAD]``
= 0, ``[UNK]`` = 1, then the tokens seen at least ``min_frequency`` times by decreasing count (ties by the token, so the
ids do not depend on the file order); saved and loaded as ``tokenizer.json`` together with the level's pre-tokenizer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from litzoo.framework.data.jsonl import iter_jsonl
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.data.tokenization import read_tokenizer_file
from litzoo.framework.errors import LitzooError
from litzoo.framework.text.spans import Span

Level = Literal["char", "word"]
LEVELS: tuple[str, ...] = ("char", "word")
PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1 of every vocabulary: padding is 0 in the batches


def check_level(level: str) -> str:
    """``level`` if it is ``"char"`` or ``"word"``; else ``ValueError``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return level


def level_pre_tokenizer(level: str) -> pre_tokenizers.PreTokenizer:
    """The `tokenizers` pre-tokenizer of ``level`` (see the module docstring)."""
    if check_level(level) == "char":
        # drop whitespace first, then isolate every remaining character
        return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")])
    return pre_tokenizers.Whitespace()


def tokenize(text: str, level: str) -> list[tuple[str, int, int]]:
    """``(token, start, end)`` of ``text`` at ``level``, character offsets with ``end`` exclusive."""
    return [(token, start, end) for token, (start, end) in level_pre_tokenizer(level).pre_tokenize_str(text)]


@dataclass(frozen=True)
class NerSentence:
    """One line of a nested-NER file, read and tokenised.

    Attributes:
        text: the sentence.
        entities: the gold spans in character offsets, sorted by ``(start, end, type)``.
        tokens: the tokens of ``text`` at the file's level.
        offsets: ``(start, end)`` character offsets of each token.
        token_spans: ``entities`` in token offsets (``end`` exclusive), in the same order.
        line: the line number in the file (for error messages of later checks).
    """

    text: str
    entities: tuple[Span, ...]
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    token_spans: tuple[Span, ...]
    line: int = 0


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entities(record: dict, where: str) -> list[Span]:
    """The character spans of a parsed line, sorted; one-line errors prefixed with ``where``."""
    if "text" not in record or "entities" not in record:
        missing = [key for key in ("text", "entities") if key not in record]
        raise LitzooError(f"{where}: missing key {missing[0]!r} (expected {{\"text\": str, \"entities\": [{{\"start\", \"end\", \"type\"}}]}})")
    text, entities = record["text"], record["entities"]
    if not isinstance(text, str):
        raise LitzooError(f"{where}: 'text' is {type(text).__name__}, not a string")
    if not isinstance(entities, list):
        raise LitzooError(f"{where}: 'entities' is {type(entities).__name__}, not a list")
    spans: list[Span] = []
    seen: set[Span] = set()
    for number, entity in enumerate(entities):
        label = f"{where}: entity {number}"
        if not isinstance(entity, dict):
            raise LitzooError(f"{label} is {type(entity).__name__}, not an object")
        for key in ("start", "end", "type"):
            if key not in entity:
                raise LitzooError(f"{label} has no key {key!r}")
        start, end, kind = entity["start"], entity["end"], entity["type"]
        if not _integer(start) or not _integer(end):
            raise LitzooError(f"{label}: start and end must be integers, got {start!r} and {end!r}")
        if not isinstance(kind, str) or not kind.strip():
            raise LitzooError(f"{label}: type must be a non-empty string, got {kind!r}")
        if start >= end:
            raise LitzooError(f"{label}: empty span [{start}, {end}) (end is exclusive and must exceed start)")
        if start < 0 or end > len(text):
            raise LitzooError(f"{label}: span [{start}, {end}) is out of range for a text of {len(text)} characters")
        span = (start, end, kind)
        if span in seen:
            raise LitzooError(f"{label}: duplicate span [{start}, {end}) {kind!r}")
        seen.add(span)
        spans.append(span)
    return sorted(spans)


def token_spans_of(entities: Sequence[Span], offsets: Sequence[tuple[int, int]], text: str, where: str) -> list[Span]:
    """``entities`` (character offsets) as token spans over tokens at ``offsets``.

    Raises:
        LitzooError: ``where``, the entity and the token when a boundary is not a token boundary.
    """
    starts = {start: index for index, (start, _) in enumerate(offsets)}
    ends = {end: index for index, (_, end) in enumerate(offsets)}
    spans = []
    for start, end, kind in entities:
        for boundary, table, name in ((start, starts, "starts"), (end, ends, "ends")):
            if boundary not in table:
                inside = next((o for o in offsets if o[0] < boundary < o[1]), None)
                place = f"inside the token {text[inside[0] : inside[1]]!r} at [{inside[0]}, {inside[1]})" if inside else "on whitespace"
                raise LitzooError(f"{where}: entity [{start}, {end}) {kind!r} {text[start:end]!r} {name} {place}")
        spans.append((starts[start], ends[end] + 1, kind))
    return spans


def parse_record(record: dict, level: str, where: str, line: int = 0) -> NerSentence:
    """A checked, tokenised :class:`NerSentence` from one parsed JSON object; errors are prefixed with ``where``."""
    entities = _check_entities(record, where)
    text = record["text"]
    pieces = tokenize(text, level)
    if not pieces:
        raise LitzooError(f"{where}: the text has no token")
    offsets = tuple((start, end) for _, start, end in pieces)
    spans = token_spans_of(entities, offsets, text, where)
    return NerSentence(text, tuple(entities), tuple(token for token, _, _ in pieces), offsets, tuple(spans), line)


def read_nested_ner(path: str | Path, level: str) -> list[NerSentence]:
    """The sentences of a nested-NER JSONL file (blank lines skipped), tokenised at ``level``.

    Raises:
        ValueError: an unknown ``level``.
        LitzooError: one line naming the file and line: missing or unreadable file, invalid JSON, a line that is not
            an object, a missing key, a non-integer / empty / out-of-range / duplicate span, a boundary inside a token,
            a text without tokens; or a file without any sentence.
    """
    check_level(level)
    sentences = [
        parse_record(record, level, f"nested NER file '{path}' line {number}", number)
        for number, record in iter_jsonl(path, what="nested NER file")
    ]
    if not sentences:
        raise LitzooError(f"nested NER file '{path}' holds no sentence")
    return sentences


def nested_ner_line(text: str, entities: Iterable[Span]) -> str:
    """One line of the format (no newline): ``{"text", "entities"}``, entities sorted, non-ASCII kept as is."""
    rows = [{"start": start, "end": end, "type": kind} for start, end, kind in sorted(entities)]
    return json.dumps({"text": text, "entities": rows}, ensure_ascii=False)


def write_nested_ner(path: str | Path, sentences: Iterable[tuple[str, Iterable[Span]]]) -> Path:
    """Write ``(text, character spans)`` pairs as a nested-NER JSONL file, whole (a temporary file renamed into place)."""
    path = Path(path).expanduser()
    with write_files_atomically(path) as (staged,):
        with open(staged, "w", encoding="utf-8") as handle:
            handle.writelines(nested_ner_line(text, entities) + "\n" for text, entities in sentences)
    return path


# ---- nesting statistics --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NestingStatistics:
    """Counts over a corpus's gold spans.

    Attributes:
        sentences: sentences counted.
        entities: entities counted.
        nested: entities that contain, or lie inside, another entity of their sentence (equal boundaries with another
            type count too): the "nested entities" share that ChiNesE reports (43.8%).
        crossing: entities that partially overlap another (neither contains the other); flat and nested decoders
            alike cannot emit these.
        max_depth: the most entities stacked on one span (a flat corpus: 1; 北京大学医学部 ⊃ 北京大学 ⊃ 北京: 3).
    """

    sentences: int
    entities: int
    nested: int
    crossing: int
    max_depth: int

    @property
    def nested_share(self) -> float:
        """``nested / entities`` (0 for a corpus without entities)."""
        return self.nested / self.entities if self.entities else 0.0


def nesting_statistics(span_lists: Iterable[Sequence[Span]]) -> NestingStatistics:
    """:class:`NestingStatistics` of the spans of each sentence (character or token offsets alike).

    Pairwise within a sentence (sentences hold tens of entities, so the quadratic scan is cheap and plainly right)."""
    sentences = entities = nested = crossing = max_depth = 0
    for spans in span_lists:
        sentences += 1
        entities += len(spans)
        for i, (start, end, _) in enumerate(spans):
            depth, is_nested, is_crossing = 1, False, False
            for j, (other_start, other_end, _) in enumerate(spans):
                if i == j:
                    continue
                contains = start <= other_start and other_end <= end
                inside = other_start <= start and end <= other_end
                if contains or inside:
                    is_nested = True
                    depth += inside  # count the entities this one lies in (itself included)
                elif other_start < end and start < other_end:
                    is_crossing = True
            nested += is_nested
            crossing += is_crossing
            max_depth = max(max_depth, depth)
    return NestingStatistics(sentences, entities, nested, crossing, max_depth)


# ---- vocabulary ----------------------------------------------------------------------------------------------------
class NerVocabulary:
    """Token ↔ id over a `tokenizers` ``WordLevel`` model, with the level's pre-tokenizer; ``[PAD]`` = 0, ``[UNK]`` = 1.

    Args:
        tokenizer: a ``WordLevel`` tokenizer whose vocabulary maps ``[PAD]`` to 0 and ``[UNK]`` to 1.
        level: ``"char"`` or ``"word"``; the tokenizer's pre-tokenizer must be :func:`level_pre_tokenizer` ``(level)``.

    Raises:
        ValueError: a bad level, another model type, misplaced special tokens or another pre-tokenizer.
    """

    def __init__(self, tokenizer: Tokenizer, level: str) -> None:
        check_level(level)
        model = json.loads(tokenizer.to_str())
        if model.get("model", {}).get("type") != "WordLevel":
            raise ValueError(f"expected a WordLevel tokenizer, got {model.get('model', {}).get('type')!r}")
        if tokenizer.token_to_id(PAD) != 0 or tokenizer.token_to_id(UNK) != 1:
            raise ValueError(f"{PAD} and {UNK} must have ids 0 and 1, got {tokenizer.token_to_id(PAD)} and {tokenizer.token_to_id(UNK)}")
        expected = json.loads(_bare_tokenizer(level).to_str())["pre_tokenizer"]
        if model.get("pre_tokenizer") != expected:
            raise ValueError(f"the tokenizer does not split text at the {level!r} level (its pre-tokenizer is {model.get('pre_tokenizer')})")
        self.tokenizer = tokenizer
        self.level = level
        self._ids = tokenizer.get_vocab()

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], level: str, min_frequency: int = 1) -> NerVocabulary:
        """The tokens seen at least ``min_frequency`` times in ``token_lists`` (the training split), by decreasing count."""
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        counts = Counter(token for tokens in token_lists for token in tokens)
        kept = sorted((token for token, count in counts.items() if count >= min_frequency and token not in (PAD, UNK)), key=lambda t: (-counts[t], t))
        vocab = {PAD: 0, UNK: 1, **{token: index for index, token in enumerate(kept, start=2)}}
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        tokenizer.pre_tokenizer = level_pre_tokenizer(level)
        return cls(tokenizer, level)

    @classmethod
    def load(cls, path: str | Path, level: str) -> NerVocabulary:
        """Read a ``tokenizer.json`` written by :meth:`save`.

        Raises:
            LitzooError: one line naming the file: missing, not a tokenizers file, or not a vocabulary of this ``level``.
        """
        check_level(level)
        tokenizer = read_tokenizer_file(path)
        try:
            return cls(tokenizer, level)
        except ValueError as error:
            raise LitzooError(f"tokenizer file '{path}': {error}") from None

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` whole (a temporary file renamed into place)."""
        path = Path(path).expanduser()
        with write_files_atomically(path) as (staged,):
            self.tokenizer.save(str(staged))
        return path

    def __len__(self) -> int:
        return len(self._ids)

    def encode_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Ids of already split tokens; unknown ones are ``[UNK]`` (1)."""
        return [self._ids.get(token, 1) for token in tokens]

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``(ids, character offsets)`` of raw ``text``, split by the saved pre-tokenizer (inference on new text)."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(offset) for offset in encoding.offsets]

    def __repr__(self) -> str:
        return f"NerVocabulary(level={self.level!r}, size={len(self)})"


def _bare_tokenizer(level: str) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({PAD: 0, UNK: 1}, unk_token=UNK))
    tokenizer.pre_tokenizer = level_pre_tokenizer(level)
    return tokenizer
