"""MetaCLIP curation: sub-string matching of captions against metadata entries, then balancing.

Xu et al., "Demystifying CLIP Data" (ICLR 2024); reference implementation facebookresearch/MetaCLIP
(``metaclip/substr_matching.py``, ``metaclip/metaclip1/balancing.py``). A caption is kept when it
names something in the metadata (WordNet synsets, Wikipedia n-grams and titles), and captions of
head entries are sub-sampled so that no entry contributes more than about ``t`` examples:

1. matching: a caption is *spaced* (padded with spaces, the punctuation ``, . ; : ? !`` and the
   backtick wrapped in spaces, tabs and newlines turned into spaces; here whitespace runs are also
   collapsed to one space) and entry ``e`` matches when ``" e "`` is a sub-string of it:
   case-sensitive, whole words, counted once per caption however often it occurs;
2. counting: ``c_e`` = number of captions matching ``e`` over the whole pool;
3. balancing: ``p_e = t / max(c_e, t)`` (tail entries, ``c_e < t``, keep everything) and a caption
   is kept with probability ``1 - prod_e (1 - p_e)`` over its entries (an independent coin per
   matched entry; the caption is kept if any comes up), 0 without a match.

The matcher indexes the entries by their spaced token sequence: after spacing, ``" e "`` is a
sub-string exactly when ``e`` equals a run of whole tokens joined by single spaces, so each caption is
scanned once with a hash lookup per (position, length) up to the longest entry's token count. That
is the same set as the sub-string rule (the tests check it against the brute-force rule), in time
linear in the caption length, like the official Aho-Corasick automaton.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from litzoo.framework.errors import LitzooError

#: the punctuation the official ``spacing`` wraps in spaces
WRAPPED_PUNCTUATION = (",", ".", ";", ":", "?", "!", "`")


def spacing(text: str) -> str:
    """The official caption spacing, with whitespace runs collapsed: ``" a , b . "`` for ``"a, b."``."""
    for mark in WRAPPED_PUNCTUATION:
        text = text.replace(mark, f" {mark} ")
    return " " + " ".join(text.split()) + " "


class MetadataIndex:
    """Entries by their token sequence, for :meth:`match` of many captions.

    An entry that is not in spaced normal form (leading / trailing / repeated spaces, tabs, or a
    wrapped punctuation mark glued to a word, e.g. ``"U.S."``) can never be a sub-string of a
    spaced caption; it is kept in the index's numbering but never matches (see :attr:`unmatchable`).
    """

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = list(entries)
        self.ids: dict[str, list[int]] = {}
        self.unmatchable: list[int] = []
        self.longest = 0
        for i, entry in enumerate(self.entries):
            if not isinstance(entry, str):
                raise ValueError(f"metadata entry {i} is not a string: {entry!r}")
            if not entry or spacing(entry) != f" {entry} ":
                self.unmatchable.append(i)
                continue
            self.ids.setdefault(entry, []).append(i)  # duplicate entries match together
            self.longest = max(self.longest, entry.count(" ") + 1)

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries ``e`` with ``" e "`` in ``spacing(text)``."""
        tokens = spacing(text).split()
        found: set[int] = set()
        for start in range(len(tokens)):
            for stop in range(start + 1, min(start + self.longest, len(tokens)) + 1):
                ids = self.ids.get(" ".join(tokens[start:stop]))
                if ids:
                    found.update(ids)
        return sorted(found)


def read_metadata(path: str | Path) -> list[str]:
    """The entries of a metadata file: a JSON list of strings (the official ``metadata.json``), or a text file with
    one entry per non-empty line.

    The format is read from the content, not from the file name: a file whose first non-blank character is ``[``,
    ``{`` or ``"`` is JSON (so ``entries.txt`` holding a JSON list is not taken for one entry that never matches),
    and so is any ``*.json`` file. A text entry therefore cannot start the file with one of those three characters.

    Raises:
        LitzooError: one line naming the file: it cannot be read, is invalid JSON (with the line), or is JSON but
            not a list of strings.
    """
    path = Path(path).expanduser()
    try:
        raw = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark written by some editors is not text
    except (OSError, UnicodeDecodeError) as error:
        raise LitzooError(f"metadata '{path}' cannot be read: {getattr(error, 'strerror', None) or error}") from None
    if path.suffix.lower() == ".json" or raw.lstrip()[:1] in ("[", "{", '"'):
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as error:
            raise LitzooError(f"metadata '{path}' is not valid JSON: {error.msg} (line {error.lineno})") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            bad = type(entries).__name__ if not isinstance(entries, list) else f"a list holding {type(next(e for e in entries if not isinstance(e, str))).__name__}"
            raise LitzooError(f"metadata '{path}' must be a JSON list of strings, got {bad}")
        return entries
    return [line for line in raw.splitlines() if line]


def match_metadata(texts: Iterable[str], entries: Sequence[str] | MetadataIndex) -> list[list[int]]:
    """For every text, the sorted ids of the metadata entries it matches (the sub-string rule)."""
    index = entries if isinstance(entries, MetadataIndex) else MetadataIndex(entries)
    return [index.match(text) for text in texts]


def entry_counts(matches: Sequence[Sequence[int]], metadata_size: int) -> np.ndarray:
    """``c_e``: how many texts match each entry, shape ``(metadata_size,)``."""
    counts = np.zeros(metadata_size, dtype=np.int64)
    flat = [e for m in matches for e in m]
    if flat:
        np.add.at(counts, np.asarray(flat, dtype=np.int64), 1)
    return counts


def entry_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """``p_e = t / max(c_e, t)``: 1 for tail entries, ``t / c_e`` for head entries."""
    if t <= 0:
        raise ValueError(f"t must be a positive count, got {t}")
    return t / np.maximum(np.asarray(counts, dtype=np.float64), t)


def keep_probabilities(matches: Sequence[Sequence[int]], metadata_size: int, t: int) -> list[float]:
    """Per text: ``1 - prod over its entries of (1 - p_e)``, 0 for a text without a match."""
    p = entry_probabilities(entry_counts(matches, metadata_size), t)
    return [1.0 - math.prod(1.0 - p[e] for e in m) if m else 0.0 for m in matches]


def balance(matches: Sequence[Sequence[int]], metadata_size: int, t: int, seed: int = 0) -> list[int]:
    """Indices of the kept texts: one coin ``P(heads) = p_e`` per (text, matched entry), kept if any is heads.

    Seeded (``numpy.random.default_rng(seed)``), so a pool curates to the same subset every time.
    """
    p = entry_probabilities(entry_counts(matches, metadata_size), t)
    rng = np.random.default_rng(seed)
    kept = []
    for i, m in enumerate(matches):
        if m and bool((rng.random(len(m)) < p[np.asarray(m)]).any()):
            kept.append(i)
    return kept


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution of matches over entries (0 for no match)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    q = counts[counts > 0] / total
    return float(-(q * np.log(q)).sum())
