"""MetaCLIP curation: sub-string matching of captions against metadata entries, then balancing.

Xu et al., "Demystifying CLIP Data" (ICLR 2024); reference implementation facebookresearch/MetaCLIP
(``metaclip/metaclip1/substr_matching.py`` and its Aho-Corasick twin ``substr_matching_ahocorasick.py``,
``metaclip/metaclip1/balancing.py``). A caption is kept when it names something in the metadata (WordNet
synsets, Wikipedia n-grams and titles), and captions of head entries are sub-sampled so that no entry
contributes more than about ``t`` examples:

1. matching: a caption is *spaced* (padded with spaces, the punctuation ``, . ; : ? !`` and the
   backtick wrapped in spaces, tabs and newlines turned into spaces; here every whitespace run is also
   collapsed to one space) and entry ``e`` matches when ``" e "`` is a sub-string of it:
   case-sensitive, whole words, counted once per caption however often it occurs;
2. counting: ``c_e`` = number of captions matching ``e`` over the whole pool;
3. balancing: ``p_e = t / max(c_e, t)`` (tail entries, ``c_e < t``, keep everything) and a caption
   is kept with probability ``1 - prod_e (1 - p_e)`` over its entries (an independent coin per
   matched entry; the caption is kept if any comes up), 0 without a match.

The matcher is the official Aho-Corasick one: a ``pyahocorasick`` automaton over the spaced entries
``" e "``, run over the spaced caption, every occurrence reported (overlapping ones included). Where it
differs, and why:

- the official spacing does not collapse whitespace runs (``"a, b"`` becomes ``" a ,  b "``), so an entry
  holding a wrapped mark (``"a , b"``) or a caption with a double space or another whitespace character
  (``"\\xa0"``) can differ from the official result; litzoo's rule is the one above, as before;
- the official automaton stores one ``(id, entry)`` per key, so of two identical entries only the last
  one matches; here identical entries match together (the brute-force rule), and an entry that is not in
  spaced form (``"U.S."``, ``" cat"``, the empty entry, which the official rule finds wherever two spaces
  meet) never matches and is left out of the automaton;
- the result is the sorted list of ids; the official returns the ids of a set, in no order.

The coins of balancing are not drawn from a sequential generator but hashed (:func:`caption_coins`): the coin
of (caption, entry) is a pure function of (seed, caption id, entry id), so a pool curated in shards, by any
number of workers in any order, keeps the same captions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from litzoo.framework.curation.ids import id_hashes
from litzoo.framework.errors import LitzooError

#: the punctuation the official ``spacing`` wraps in spaces
WRAPPED_PUNCTUATION = (",", ".", ";", ":", "?", "!", "`")
_WRAPS = tuple((mark, f" {mark} ") for mark in WRAPPED_PUNCTUATION)


def spacing(text: str) -> str:
    """The official caption spacing, with whitespace runs collapsed: ``" a , b . "`` for ``"a, b."``."""
    for mark, wrapped in _WRAPS:
        if mark in text:  # most captions hold few of the marks: the test is cheaper than a replace that finds nothing
            text = text.replace(mark, wrapped)
    return f" {' '.join(text.split())} "


#: one process keeps the automaton it built last when unpickling an index (fingerprint -> built state), so a worker
#: sent the same index with every task (a Dask task, a process-pool job) builds it once
_UNPICKLED: dict[str, tuple] = {}


class MetadataIndex:
    """The metadata entries in an Aho-Corasick automaton (``pyahocorasick``), for :meth:`match` of many captions.

    The automaton holds ``" e "`` for every entry in spaced normal form, with the entry's id as its value; a caption
    is spaced and scanned once, every occurrence of every key reported. An entry that is not in spaced normal form
    (leading / trailing / repeated spaces, tabs, or a wrapped punctuation mark glued to a word, e.g. ``"U.S."``) can
    never be a sub-string of a spaced caption; it is kept in the index's numbering but never matches (see
    :attr:`unmatchable`). Identical entries match together.

    Picklable: the pickle holds the entries (and a fingerprint of them), and the automaton is built again where it
    is unpickled — once per process for the same entries, however often the index is sent there.
    """

    def __init__(self, entries: Sequence[str]) -> None:
        self.entries = list(entries)
        for i, entry in enumerate(self.entries):
            if not isinstance(entry, str):
                raise ValueError(f"metadata entry {i} is not a string: {entry!r}")
        self._fingerprint: str | None = None
        self._automaton, self._duplicates, self.unmatchable = self._build(self.entries)

    @staticmethod
    def _build(entries: list[str]) -> tuple:
        import ahocorasick

        automaton = ahocorasick.Automaton()  # STORE_ANY: the iterator hands out the stored int, STORE_INTS makes a new one
        first: dict[str, int] = {}
        duplicates: dict[int, list[int]] = {}  # the first id of an entry -> the ids of its later copies
        unmatchable: list[int] = []
        for i, entry in enumerate(entries):
            if not entry or spacing(entry) != f" {entry} ":
                unmatchable.append(i)
                continue
            j = first.setdefault(entry, i)
            if j == i:
                automaton.add_word(f" {entry} ", i)
            else:
                duplicates.setdefault(j, []).append(i)
        if first:
            automaton.make_automaton()
        return (automaton if first else None), duplicates, unmatchable

    def fingerprint(self) -> str:
        """A hash of the entries (their text and order): two indexes with the same fingerprint match alike."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(np.fromiter(map(len, self.entries), dtype="<i8", count=len(self.entries)).tobytes())
            digest.update("".join(self.entries).encode("utf-8", "surrogatepass"))  # the lengths delimit the entries
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def __getstate__(self) -> dict:
        return {"entries": self.entries, "fingerprint": self.fingerprint()}

    def __setstate__(self, state: dict) -> None:
        self.entries, self._fingerprint = state["entries"], state["fingerprint"]
        built = _UNPICKLED.get(self._fingerprint)
        if built is None:
            built = self._build(self.entries)
            _UNPICKLED.clear()  # bounded: one automaton (hundreds of MB for 500,000 entries) per process
            _UNPICKLED[self._fingerprint] = built
        self._automaton, self._duplicates, self.unmatchable = built

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries ``e`` with ``" e "`` in ``spacing(text)``."""
        return self.match_many((text,))[0]

    def match_many(self, texts: Iterable[str]) -> list[list[int]]:
        """:meth:`match` of every text, the fast path: per caption, one scan and one set comprehension."""
        if self._automaton is None:
            return [[] for _ in texts]
        scan = self._automaton.iter  # yields (end, id) for every occurrence
        found = [sorted({i for _, i in scan(spacing(text))}) for text in texts]
        if self._duplicates:
            found = [self._with_duplicates(ids) if not self._duplicates.keys().isdisjoint(ids) else ids for ids in found]
        return found

    def _with_duplicates(self, ids: list[int]) -> list[int]:
        more = [j for i in ids if i in self._duplicates for j in self._duplicates[i]]
        return sorted(ids + more)


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
    return index.match_many(texts)


def _flatten(matches: Sequence[Sequence[int]], metadata_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The matches as CSR: the number of entries of every caption, and all the entry ids one after the other."""
    lengths = np.fromiter(map(len, matches), dtype=np.int64, count=len(matches))
    flat = np.fromiter(itertools.chain.from_iterable(matches), dtype=np.int64, count=int(lengths.sum()))
    if flat.size and (flat.min() < 0 or (metadata_size is not None and flat.max() >= metadata_size)):
        bad = int(flat.min()) if flat.min() < 0 else int(flat.max())
        raise ValueError(f"entry id {bad} is out of range for {metadata_size} metadata entries")
    return lengths, flat


def entry_counts(matches: Sequence[Sequence[int]], metadata_size: int) -> np.ndarray:
    """``c_e``: how many texts match each entry, shape ``(metadata_size,)``."""
    _, flat = _flatten(matches, metadata_size)
    return np.bincount(flat, minlength=metadata_size).astype(np.int64, copy=False)


def entry_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """``p_e = t / max(c_e, t)``: 1 for tail entries, ``t / c_e`` for head entries."""
    if t <= 0:
        raise ValueError(f"t must be a positive count, got {t}")
    return t / np.maximum(np.asarray(counts, dtype=np.float64), t)


def keep_probabilities(matches: Sequence[Sequence[int]], metadata_size: int, t: int) -> list[float]:
    """Per text: ``1 - prod over its entries of (1 - p_e)``, 0 for a text without a match."""
    p = entry_probabilities(entry_counts(matches, metadata_size), t)
    return [1.0 - math.prod(1.0 - p[e] for e in m) if m else 0.0 for m in matches]


# splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014): the state
# advances by the golden gamma, the output is the state through two xor-shift-multiply rounds
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_SHIFTS = (np.uint64(30), np.uint64(27), np.uint64(31))


def _caption_keys(ids: Sequence[str], seed: int) -> np.ndarray:
    """A 64-bit key per caption: BLAKE2b of its id, keyed by the seed (the same on every platform and process)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    keys = id_hashes(ids, seed.to_bytes(8, "little"), "caption")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        bad = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"caption id {bad!r} appears more than once: its captions would share their coins")
    return keys


def _coins(ids: Sequence[str], lengths: np.ndarray, flat: np.ndarray, seed: int) -> np.ndarray:
    """The coin of every (caption, matched entry) of the CSR ``lengths, flat``: splitmix64 output number ``e + 1``
    of the stream that starts at the caption's key, as a float64 in [0, 1) (its top 53 bits)."""
    if len(ids) != len(lengths):
        raise ValueError(f"{len(ids)} caption ids for {len(lengths)} captions' matches")
    z = np.repeat(_caption_keys(ids, seed), lengths)
    z += (flat.astype(np.uint64) + np.uint64(1)) * _GAMMA  # uint64 arrays wrap modulo 2**64, as splitmix64 does
    z ^= z >> _SHIFTS[0]
    z *= _MIX[0]
    z ^= z >> _SHIFTS[1]
    z *= _MIX[1]
    z ^= z >> _SHIFTS[2]
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def caption_coins(ids: Sequence[str], matches: Sequence[Sequence[int]], seed: int) -> list[np.ndarray]:
    """For caption ``i``, one uniform float64 in [0, 1) per entry of ``matches[i]`` (in that order).

    The coin of (caption, entry) is a pure function of ``(seed, ids[i], entry id)``: the same whichever other
    captions are in the call and in whatever order, in any process, on any platform. ``ids`` are strings, unique
    within the call (a pool's captions need unique ids: two captions with the same id share their coins); ``seed``
    is an integer in [0, 2**64).
    """
    lengths, flat = _flatten(matches)
    return np.split(_coins(ids, lengths, flat, seed), np.cumsum(lengths)[:-1])


def keep_decisions(ids: Sequence[str], matches: Sequence[Sequence[int]], probabilities: np.ndarray, seed: int) -> np.ndarray:
    """Whether each caption is kept: any of its coins (:func:`caption_coins`) below its entry's keep probability.

    ``probabilities`` are the ``p_e`` of :func:`entry_probabilities` from the pool's global counts; a caption
    without a match is never kept. Returns a bool array, one per caption.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or not np.isfinite(p).all() or (p.size and (p.min() < 0 or p.max() > 1)):
        raise ValueError("probabilities must be a 1-D array of finite numbers in [0, 1]")
    lengths, flat = _flatten(matches, p.size)
    hits = _coins(ids, lengths, flat, seed) < p[flat]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(rows[hits], minlength=len(lengths)) > 0


def balance(matches: Sequence[Sequence[int]], metadata_size: int, t: int, seed: int = 0, ids: Sequence[str] | None = None,
            counts: np.ndarray | None = None) -> list[int]:  # fmt: skip
    """Indices of the kept texts: one coin ``P(heads) = p_e`` per (text, matched entry), kept if any is heads.

    Args:
        matches: per text, the ids of the entries it matches.
        metadata_size: the number of metadata entries.
        t: the balancing threshold.
        seed: the coins' seed (:func:`caption_coins`): a pool curates to the same subset every time.
        ids: the texts' ids, which the coins hang on (default ``"0"``, ``"1"``, ...: the position); with ids,
            a text's fate does not depend on which other texts are in the call or where.
        counts: the ``c_e`` to balance with, shape ``(metadata_size,)``: the whole pool's when ``matches`` are a
            part of it (default: :func:`entry_counts` of ``matches``).
    """
    if counts is None:
        counts = entry_counts(matches, metadata_size)
    else:
        counts = np.asarray(counts)
        if counts.shape != (metadata_size,) or not np.isfinite(counts).all() or (counts < 0).any():
            raise ValueError(f"counts must be {metadata_size} non-negative finite numbers, got shape {counts.shape}")
    ids = [str(i) for i in range(len(matches))] if ids is None else ids
    return np.flatnonzero(keep_decisions(ids, matches, entry_probabilities(counts, t), seed)).tolist()


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution of matches over entries (0 for no match)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    q = counts[counts > 0] / total
    return float(-(q * np.log(q)).sum())
