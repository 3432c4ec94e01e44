"""Model-agnostic text quality scores and quality-based pruning of a language-model corpus.

Sharma, Padthe et al., "Text Quality-Based Pruning for Efficient Training of Language Models"
(FAIR, Meta; arXiv:2405.01582, 2024). No official code was released; what follows was confirmed
from the paper's text (section 2, equations 1-3, and its table of filters) and what was chosen here.

Confirmed:

1. ``F = 14`` heuristic *line-level* filters; ``I_i(line) = 1`` when a line passes filter ``i``.
2. Each filter gets a weight from the perplexity of a reference language model::

       w_i = max(0, (PPL_all - PPL_i) / PPL_all)

   with ``PPL_all`` the perplexity of all the data and ``PPL_i`` that of the data filter ``i``
   retains: a filter that keeps lower-perplexity text weighs more, a harmful one weighs 0.
3. ``score_line = sum_i w_i I_i(line) / sum_i w_i`` (eq. 2) and a document's score is the
   token-count-weighted mean of its line scores, ``sum tc_line score_line / sum tc_line`` (eq. 3).
4. Pruning keeps the documents of the top percentiles by score (the paper drops 20-40%:
   ``keep_fraction`` 0.6-0.8) and trains the LM on the rest.
5. The filters (paper's table; names as there): first letter capitalised; not all capitals; word
   repetition ratio (threshold 0.2); digit/punctuation-to-word ratio (threshold 0.25); no ``{``
   (code); ends in terminal punctuation ``. ! ? "``; at least 2 stop words among
   ``the be to of and that have with``; no ``javascript`` / ``lorem ipsum``; token count > 3;
   word count in (3, 256); and four parser-based ones (has object, has noun, has determiner, text
   complexity as in the CAT filter), computed in the paper with spaCy.

Chosen here (the paper leaves these open, or uses tools litzoo does not ship):

* The reference LM: the paper scores with a pre-trained Hugging Face LM. Here the perplexity is any
  callable ``perplexity(texts) -> float`` (corpus-level: ``exp`` of the mean per-token negative
  log-likelihood). The default, :class:`BigramLM`, is a case-sensitive word bigram model with add-k
  smoothing fitted on the corpus itself: model-agnostic, CPU-cheap, and swappable for a real LM.
* Filter polarity: every indicator is 1 for the *clean-looking* side (repetition ratio < 0.2, ratio
  of digits+punctuation to words <= 0.25, no ``{``, no ``javascript``/``lorem ipsum``), so that
  "retained by filter i" is the text a filter keeps.
* Words are whitespace-separated; tokens (for "token count" and the ``tc_line`` weights) are the
  regex tokens of :func:`word_tokens` (runs of word characters, or single punctuation marks). A
  caller may pass another token counter (e.g. the training tokenizer's).
* The repetition ratio is ``1 - distinct / total`` over lower-cased words (the share of words that
  repeat an earlier one); stop words are counted with repetition ("the ... the" counts 2).
* Without a parser, ``has_determiner`` checks a closed list of English determiners (exact up to
  the pronoun use of "that"/"this"), and ``has_noun`` is approximated by a determiner followed by a
  content word (a noun phrase); the paper's ``has_object`` and ``text_complexity`` need a dependency
  parse and are left out. The default filter set therefore has 12 of the paper's 14 filters.
* A filter that retains no line gets weight 0 (its ``PPL_i`` is undefined); if every weight is 0
  there is nothing to rank by and scoring raises ``ValueError``. A document without tokens scores 0.
* Pruning keeps ``round(keep_fraction * N)`` documents (at least 1); ties in score are broken by a
  64-bit hash of the seed and the document's id (:func:`tie_keys`; the id defaults to the document's
  index), then by the id itself, so the kept set is reproducible and does not depend on the order of
  the documents: a corpus split into shards keeps the same documents as the whole corpus.

How it is computed (the same numbers in memory and on a sharded corpus):

* With the default LM, everything the weights and scores need is gathered in one sweep over the lines,
  as counts that add up over parts of the corpus (:class:`CorpusStatistics`): the bigram counts per
  distinct indicator row ("pattern") of the lines, and per line its pattern and token count. Because
  the LM is fitted on the very lines it scores, no line has an unknown word and the negative
  log-likelihood of the lines that filter ``i`` retains is ``sum n_i(v, w) * -log P(w | v)`` over the
  bigram types: :func:`weights_from_statistics` merges the counts of any number of parts and evaluates
  these sums with :func:`math.fsum` (exactly rounded, so in any order), and :func:`scores_from_statistics`
  sums each document's lines the same way. The results are therefore bit-identical whether the corpus
  is one list or many shards in any order (``litzoo.framework.curation.text_quality_pool``), and equal
  to the per-line formula of :class:`BigramLM` up to rounding (1e-12).
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from litzoo.framework.curation.ids import id_hashes

#: a line filter: ``True`` when the line passes (looks like clean prose)
LineFilter = Callable[[str], bool]
#: a reference LM's corpus perplexity
Perplexity = Callable[[Sequence[str]], float]

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
TERMINAL_PUNCTUATION = (".", "!", "?", '"')
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
SPECIAL_PHRASES = ("javascript", "lorem ipsum")
#: add-k smoothing of the default reference LM (:class:`BigramLM`)
BIGRAM_K = 0.1
#: closed class of English determiners (articles, demonstratives, possessives, quantifiers)
DETERMINERS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our", "their",
    "some", "any", "no", "every", "each", "either", "neither", "another", "much", "many", "few", "several",
    "all", "both", "what", "which", "whose",
})  # fmt: skip
#: function words that cannot head a noun phrase (for the ``has_noun`` approximation)
FUNCTION_WORDS = DETERMINERS | STOP_WORDS | frozenset({
    "is", "are", "was", "were", "been", "being", "in", "on", "at", "by", "for", "from", "into", "over", "under",
    "or", "but", "if", "not", "it", "he", "she", "they", "we", "you", "i", "as", "than", "then", "so", "very",
})  # fmt: skip


def word_tokens(text: str) -> list[str]:
    """Runs of word characters and single punctuation marks: ``"Hi, you!" -> ["Hi", ",", "you", "!"]``."""
    return TOKEN_PATTERN.findall(text)


def split_lines(document: str) -> list[str]:
    """The non-blank lines of a document, stripped (the unit the filters score)."""
    return [line.strip() for line in document.splitlines() if line.strip()]


def _words(line: str) -> list[str]:
    return line.split()


# ----------------------------------------------------------------------------- the line filters
def has_first_letter_caps(line: str) -> bool:
    """The line's first letter is upper case (sentence start)."""
    first = next((c for c in line if c.isalpha()), "")
    return first.isupper()


def no_all_caps(line: str) -> bool:
    """Not every letter is upper case (shouting, headers, boilerplate)."""
    letters = [c for c in line if c.isalpha()]
    return not letters or not all(c.isupper() for c in letters)


def word_repetition_ratio(line: str) -> float:
    """Share of the (lower-cased) words that repeat an earlier word: ``1 - distinct / total``."""
    words = [w.lower() for w in _words(line)]
    return (len(words) - len(set(words))) / len(words) if words else 0.0


def low_word_repetition(line: str, threshold: float = 0.2) -> bool:
    """Word repetition ratio below 0.2 (paper: ``word_repetetion_ratio_ge_0_2``)."""
    return word_repetition_ratio(line) < threshold


def digit_punctuation_ratio(line: str) -> float:
    """Digits plus punctuation characters per whitespace word (inf for a line without words)."""
    words = _words(line)
    count = sum(1 for c in line if c.isdigit() or (not c.isalnum() and not c.isspace()))
    return count / len(words) if words else math.inf


def low_digit_punctuation(line: str, threshold: float = 0.25) -> bool:
    """Digits and punctuation per word at most 0.25 (paper: ``digit_punctuation_ratio_0_25``)."""
    return digit_punctuation_ratio(line) <= threshold


def no_special_characters(line: str) -> bool:
    """No ``{``: curly brackets are common in code, not in prose."""
    return "{" not in line


def terminal_punctuation(line: str) -> bool:
    """Ends with ``.``, ``!``, ``?`` or ``"``."""
    return line.rstrip().endswith(TERMINAL_PUNCTUATION)


def stop_word_match_2(line: str) -> bool:
    """At least 2 stop words among the, be, to, of, and, that, have, with (repetitions count)."""
    return sum(1 for w in word_tokens(line.lower()) if w in STOP_WORDS) >= 2


def no_javascript_flag(line: str) -> bool:
    """Contains neither ``javascript`` nor ``lorem ipsum`` (case-insensitive)."""
    lowered = line.lower()
    return not any(phrase in lowered for phrase in SPECIAL_PHRASES)


def token_count_ge_3(line: str) -> bool:
    """More than 3 tokens (words and punctuation marks)."""
    return len(word_tokens(line)) > 3


def word_count_3_256(line: str) -> bool:
    """More than 3 and fewer than 256 whitespace words."""
    return 3 < len(_words(line)) < 256


def has_determiner(line: str) -> bool:
    """Contains a determiner (closed word list; the paper uses spaCy's tagger)."""
    return any(w in DETERMINERS for w in word_tokens(line.lower()))


def has_noun(line: str) -> bool:
    """Contains a noun phrase: a determiner followed by an alphabetic content word.

    An approximation of the paper's parser-based "has noun" that needs no tagger: it misses bare
    nouns ("Dogs bark.") and accepts an adjective after a determiner, but it is 0 for the markup,
    number lists and keyword runs that the filter is meant to catch.
    """
    tokens = word_tokens(line.lower())
    return any(a in DETERMINERS and b.isalpha() and b not in FUNCTION_WORDS for a, b in pairwise(tokens))


#: every filter by name; :data:`PAPER_FILTERS` is the default set
FILTERS: dict[str, LineFilter] = {
    "has_first_letter_caps": has_first_letter_caps,
    "no_all_caps": no_all_caps,
    "word_repetition_ratio_lt_0_2": low_word_repetition,
    "digit_punctuation_ratio_le_0_25": low_digit_punctuation,
    "no_special_characters": no_special_characters,
    "terminal_punctuation": terminal_punctuation,
    "stop_word_match_2": stop_word_match_2,
    "no_javascript_flag": no_javascript_flag,
    "token_count_ge_3": token_count_ge_3,
    "word_count_3_256": word_count_3_256,
    "has_noun": has_noun,
    "has_determiner": has_determiner,
}
#: the paper's filters that can be computed without a parser (12 of its 14)
PAPER_FILTERS: tuple[str, ...] = tuple(FILTERS)


def resolve_filters(filters: Sequence[str] | Mapping[str, LineFilter] | None = None) -> dict[str, LineFilter]:
    """Names (from :data:`FILTERS`) or a ``{name: function}`` mapping -> ``{name: function}``."""
    if filters is None:
        filters = PAPER_FILTERS
    if isinstance(filters, Mapping):
        resolved = dict(filters)
    else:
        unknown = [name for name in filters if name not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filters {unknown}; known: {sorted(FILTERS)}")
        resolved = {name: FILTERS[name] for name in filters}
    if not resolved:
        raise ValueError("at least one filter is needed")
    for name, function in resolved.items():
        if not callable(function):
            raise ValueError(f"filter {name!r} is not callable")
    return resolved


def indicators(lines: Sequence[str], filters: Mapping[str, LineFilter]) -> np.ndarray:
    """``I[j, i] = I_i(line_j)``: a ``(len(lines), len(filters))`` boolean matrix."""
    matrix = np.zeros((len(lines), len(filters)), dtype=bool)
    for i, function in enumerate(filters.values()):
        matrix[:, i] = [bool(function(line)) for line in lines]
    return matrix


# ----------------------------------------------------------------------------- the reference LM
class BigramLM:
    """Word bigram language model with add-k smoothing, the default reference LM for the weights.

    ``P(w | v) = (c(v, w) + k) / (c(v) + k |V|)`` over the tokens of :func:`word_tokens` (case kept,
    so capitalisation is visible to the model), with ``<s>`` before and ``</s>`` after every text;
    ``V`` = the training tokens plus ``</s>`` and ``<unk>`` (unseen words map to ``<unk>``).
    Perplexity is ``exp(-mean log P)`` over every predicted token, ``</s>`` included.

    Args:
        k: add-k smoothing constant (> 0; 1 = Laplace).
        lowercase: lower-case before tokenizing.
    """

    BOS, EOS, UNK = "<s>", "</s>", "<unk>"

    def __init__(self, k: float = BIGRAM_K, lowercase: bool = False) -> None:
        if not k > 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = k
        self.lowercase = lowercase
        self.vocab: set[str] = set()
        self.bigrams: Counter[tuple[str, str]] = Counter()
        self.contexts: Counter[str] = Counter()

    def _sequence(self, text: str, known: bool) -> list[str]:
        tokens = word_tokens(text.lower() if self.lowercase else text)
        if known:
            tokens = [t if t in self.vocab else self.UNK for t in tokens]
        return [self.BOS, *tokens, self.EOS]

    def fit(self, texts: Iterable[str]) -> BigramLM:
        """Count unigrams (as contexts) and bigrams of ``texts``; returns ``self``."""
        texts = list(texts)
        self.vocab = {t for text in texts for t in word_tokens(text.lower() if self.lowercase else text)}
        self.vocab |= {self.EOS, self.UNK}
        self.bigrams, self.contexts = Counter(), Counter()
        for text in texts:
            sequence = self._sequence(text, known=True)
            self.bigrams.update(pairwise(sequence))
            self.contexts.update(sequence[:-1])
        return self

    def log_prob(self, previous: str, word: str) -> float:
        """``log P(word | previous)`` (both already mapped into the vocabulary)."""
        if not self.vocab:
            raise ValueError("BigramLM is not fitted: call fit(texts) first")
        numerator = self.bigrams[(previous, word)] + self.k
        return math.log(numerator / (self.contexts[previous] + self.k * len(self.vocab)))

    def nll(self, texts: Iterable[str]) -> tuple[float, int]:
        """Summed negative log-likelihood and number of predicted tokens."""
        total, count = 0.0, 0
        for text in texts:
            sequence = self._sequence(text, known=True)
            total -= sum(self.log_prob(a, b) for a, b in pairwise(sequence))
            count += len(sequence) - 1
        return total, count

    def perplexity(self, texts: Sequence[str]) -> float:
        """Corpus perplexity ``exp(total NLL / predicted tokens)``."""
        total, count = self.nll(texts)
        if count == 0:
            raise ValueError("perplexity of an empty set of texts is undefined")
        return math.exp(total / count)

    __call__ = perplexity


# ----------------------------------------------------------------------------- statistics that add up over a corpus's parts
_INDEX_ARRAYS = ("bigram_pattern", "bigram_prev", "bigram_next", "bigram_count", "line_pattern", "line_tokens", "document_lines")


@dataclass
class CorpusStatistics:
    """What the filter weights (with the default :class:`BigramLM`) and the document scores of a corpus need, in a
    form whose counts add up over parts of the corpus (one per shard); made by :func:`corpus_statistics`.

    A line's *pattern* is its row of filter indicators ``I_i(line)``; the distinct patterns are numbered per part.

    Attributes:
        filters: the filter names, in the order of the pattern columns.
        tokens: the part's token types (``<s>`` and ``</s>`` included); the bigram arrays index into it.
        patterns: ``(P, F)`` booleans, the distinct patterns of the part's lines.
        bigram_pattern, bigram_prev, bigram_next, bigram_count: the bigram ``(tokens[prev], tokens[next])`` occurs
            ``count`` times in the lines of pattern ``patterns[pattern]`` (one row per distinct triple; empty when
            the statistics were made without bigrams).
        line_pattern, line_tokens: per non-blank line, in order: its pattern and its token count ``tc_line``.
        document_lines: per document, in order: its number of non-blank lines.
    """

    filters: tuple[str, ...]
    tokens: list[str]
    patterns: np.ndarray
    bigram_pattern: np.ndarray
    bigram_prev: np.ndarray
    bigram_next: np.ndarray
    bigram_count: np.ndarray
    line_pattern: np.ndarray
    line_tokens: np.ndarray
    document_lines: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain NumPy arrays (no object arrays: ``numpy.savez`` / ``numpy.load(allow_pickle=False)`` round-trip them)."""
        # a token never holds a line break (word_tokens splits at white space), so one "\n"-joined UTF-8 blob keeps them
        blob = "\n".join(self.tokens).encode("utf-8")
        return {
            "filters": np.array(self.filters, dtype=np.str_).reshape(len(self.filters)),
            "tokens": np.frombuffer(blob, dtype=np.uint8),
            "token_count": np.array(len(self.tokens), dtype=np.int64),
            "patterns": self.patterns,
            **{name: getattr(self, name) for name in _INDEX_ARRAYS},
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CorpusStatistics:
        """The inverse of :meth:`to_arrays` (extra keys are ignored)."""
        count = int(arrays["token_count"])
        text = bytes(np.asarray(arrays["tokens"], dtype=np.uint8)).decode("utf-8")
        tokens = text.split("\n") if count else []
        if len(tokens) != count:
            raise ValueError(f"the token blob holds {len(tokens)} tokens, expected {count}")
        return cls(filters=tuple(str(name) for name in arrays["filters"]), tokens=tokens, patterns=np.asarray(arrays["patterns"], dtype=bool),
                   **{name: np.asarray(arrays[name], dtype=np.int64) for name in _INDEX_ARRAYS})  # fmt: skip

    @property
    def documents(self) -> int:
        return len(self.document_lines)


def corpus_statistics(
    documents: Iterable[str],
    filters: Sequence[str] | Mapping[str, LineFilter] | None = None,
    count_tokens: Callable[[str], int] | None = None,
    bigrams: bool = True,
) -> CorpusStatistics:
    """One sweep over ``documents`` (any iterable, consumed once: a shard can be streamed through it).

    Args:
        documents: the texts; each is split into its non-blank lines (:func:`split_lines`).
        filters: as :func:`filter_weights` (default: :data:`PAPER_FILTERS`).
        count_tokens: ``tc_line`` (default: the number of :func:`word_tokens`); must return a non-negative int.
        bigrams: count the bigrams of the default reference LM (needed for the weights, not for the scores).
    """
    if isinstance(documents, str):
        raise ValueError("documents must be a sequence of strings, not one string")
    resolved = resolve_filters(filters)
    functions = tuple(resolved.values())
    pattern_index: dict[int, int] = {}  # indicator bits of a line -> pattern number (a Python int holds any number of filters)
    counters: list[Counter[tuple[str, str]]] = []
    line_pattern, line_tokens, document_lines = array("q"), array("q"), array("q")
    bos, eos = BigramLM.BOS, BigramLM.EOS
    for document in documents:
        if not isinstance(document, str):
            raise ValueError(f"documents must be strings, got {type(document).__name__}")
        lines = split_lines(document)
        document_lines.append(len(lines))
        for line in lines:
            bits = 0
            for i, function in enumerate(functions):
                if function(line):
                    bits |= 1 << i
            pattern = pattern_index.get(bits)
            if pattern is None:
                pattern = pattern_index[bits] = len(counters)
                counters.append(Counter())
            tokens = word_tokens(line)
            if count_tokens is None:
                count = len(tokens)
            else:
                count = count_tokens(line)
                if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
                    raise ValueError(f"count_tokens must return a non-negative int, got {count!r} for line {line[:40]!r}")
            line_pattern.append(pattern)
            line_tokens.append(int(count))
            if bigrams:
                counters[pattern].update(pairwise([bos, *tokens, eos]))
    patterns = np.array([[bool(bits >> i & 1) for i in range(len(functions))] for bits in pattern_index], dtype=bool).reshape(-1, len(functions))
    vocabulary: dict[str, int] = {}
    rows: list[tuple[int, int, int, int]] = []
    for pattern, counter in enumerate(counters):
        for (previous, word), count in counter.items():
            rows.append((pattern, vocabulary.setdefault(previous, len(vocabulary)), vocabulary.setdefault(word, len(vocabulary)), count))
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return CorpusStatistics(
        filters=tuple(resolved), tokens=list(vocabulary), patterns=patterns,
        bigram_pattern=table[:, 0].copy(), bigram_prev=table[:, 1].copy(), bigram_next=table[:, 2].copy(), bigram_count=table[:, 3].copy(),
        line_pattern=np.frombuffer(line_pattern, dtype=np.int64).copy(), line_tokens=np.frombuffer(line_tokens, dtype=np.int64).copy(),
        document_lines=np.frombuffer(document_lines, dtype=np.int64).copy(),
    )  # fmt: skip


def _sum_rows(pattern: np.ndarray, previous: np.ndarray, word: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, ...]:
    """One row per distinct ``(pattern, previous, word)``, its counts summed (rows sorted by the triple)."""
    if len(count) == 0:
        return pattern, previous, word, count
    order = np.lexsort((word, previous, pattern))
    pattern, previous, word, count = pattern[order], previous[order], word[order], count[order]
    starts = np.flatnonzero(np.concatenate([[True], (pattern[1:] != pattern[:-1]) | (previous[1:] != previous[:-1]) | (word[1:] != word[:-1])]))
    return pattern[starts], previous[starts], word[starts], np.add.reduceat(count, starts)


class _BigramTable:
    """The bigram counts per pattern of a whole corpus, merged part by part (token types and patterns renumbered into
    one numbering; the counts of the same ``(pattern, previous, word)`` summed, so the merged table does not depend on
    how the corpus was split or in which order its parts came)."""

    def __init__(self) -> None:
        self.filters: tuple[str, ...] | None = None
        self.vocabulary: dict[str, int] = {}
        self.pattern_index: dict[bytes, int] = {}
        self.patterns: list[np.ndarray] = []
        self.documents = 0
        self.lines = 0
        self._merged: tuple[np.ndarray, ...] = tuple(np.zeros(0, dtype=np.int64) for _ in range(4))
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._pending_rows = 0

    def add(self, part: CorpusStatistics) -> None:
        if self.filters is None:
            self.filters = part.filters
        elif part.filters != self.filters:
            raise ValueError(f"statistics of different filters cannot be merged: {list(part.filters)} vs {list(self.filters)}")
        self.documents += part.documents
        self.lines += len(part.line_pattern)
        tokens = np.array([self.vocabulary.setdefault(token, len(self.vocabulary)) for token in part.tokens], dtype=np.int64)
        patterns = np.zeros(len(part.patterns), dtype=np.int64)
        for p, row in enumerate(part.patterns):
            key = np.packbits(row).tobytes()
            if key not in self.pattern_index:
                self.pattern_index[key] = len(self.patterns)
                self.patterns.append(np.array(row, dtype=bool))
            patterns[p] = self.pattern_index[key]
        if len(part.bigram_count):
            self._pending.append((patterns[part.bigram_pattern], tokens[part.bigram_prev], tokens[part.bigram_next], part.bigram_count))
            self._pending_rows += len(part.bigram_count)
        if self._pending_rows > max(len(self._merged[3]), 1 << 20):  # merge now and then: memory stays near the merged table's
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            columns = [np.concatenate([self._merged[c], *(rows[c] for rows in self._pending)]) for c in range(4)]
            self._merged = _sum_rows(*columns)
            self._pending, self._pending_rows = [], 0

    def rows(self) -> tuple[np.ndarray, ...]:
        self._merge()
        return self._merged


def weights_from_statistics(parts: Iterable[CorpusStatistics], k: float = BIGRAM_K) -> dict[str, float]:
    """The filter weights (paper, eq. 1) with a :class:`BigramLM` (add-``k``) fitted on all the lines of ``parts``.

    ``parts`` (e.g. one :class:`CorpusStatistics` per shard, loaded one at a time) are merged; ``PPL_i`` is
    ``exp(sum n_i(v, w) * -log P(w | v) / sum n_i(v, w))`` over the merged bigram types, with ``n_i`` the counts in
    the lines filter ``i`` retains (the LM predicts every token of its own training lines, so no ``<unk>`` occurs).
    The sums are :func:`math.fsum` of per-type terms: the same weights, to the last bit, for any split of the corpus
    and any order of its parts.
    """
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    table = _BigramTable()
    for part in parts:
        table.add(part)
    if table.filters is None:
        raise ValueError("no statistics to compute the weights from")
    if table.lines == 0:
        raise ValueError("the documents have no non-blank line to score")
    pattern, previous, word, count = table.rows()
    vocabulary = set(table.vocabulary) - {BigramLM.BOS}
    vocabulary_size = len(vocabulary | {BigramLM.EOS, BigramLM.UNK})  # BigramLM.fit's vocabulary
    contexts = np.zeros(len(table.vocabulary), dtype=np.int64)
    np.add.at(contexts, previous, count)  # c(v): every context position starts exactly one bigram
    order = np.lexsort((word, previous))  # c(v, w): summed over the patterns
    starts = np.flatnonzero(np.concatenate([[True], (previous[order][1:] != previous[order][:-1]) | (word[order][1:] != word[order][:-1])]))
    pair_counts = np.empty(len(count), dtype=np.int64)
    pair_counts[order] = np.repeat(np.add.reduceat(count[order], starts), np.diff(np.append(starts, len(order))))
    nll = count * -np.log((pair_counts + k) / (contexts[previous] + k * vocabulary_size))  # per row: n * -log P(w | v)
    patterns = np.array(table.patterns, dtype=bool).reshape(-1, len(table.filters))

    def perplexity(rows: np.ndarray | slice) -> tuple[float, int]:
        predicted = int(count[rows].sum())
        return (math.exp(math.fsum(nll[rows].tolist()) / predicted), predicted) if predicted else (math.nan, 0)

    ppl_all, _ = perplexity(slice(None))
    if not (ppl_all > 0 and math.isfinite(ppl_all)):
        raise ValueError(f"the perplexity of all lines must be positive and finite, got {ppl_all}")
    weights = {}
    for i, name in enumerate(table.filters):
        ppl_i, predicted = perplexity(patterns[pattern, i])
        weights[name] = max(0.0, (ppl_all - ppl_i) / ppl_all) if predicted else 0.0
    return weights


def _weight_vector(weights: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    missing = [name for name in names if name not in weights]
    if missing:
        raise ValueError(f"no weight for filters {missing}")
    w = np.array([float(weights[name]) for name in names], dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"filter weights must be finite and non-negative, got {dict(weights)}")
    if w.sum() <= 0:
        raise ValueError("every filter weight is 0: no filter retains lower-perplexity text, so there is nothing to rank by")
    return w


def scores_from_statistics(statistics: CorpusStatistics, weights: Mapping[str, float]) -> np.ndarray:
    """Document scores (paper, eqs. 2-3) from the lines' patterns and token counts: ``sum tc score_line / sum tc``.

    Each pattern's line score is ``fsum(w_i of its filters) / fsum(w)`` and each document's sum is an ``fsum``, so a
    document's score depends on its own lines only, never on where it lies in a corpus or a shard.
    """
    w = _weight_vector(weights, statistics.filters)
    total = math.fsum(w.tolist())
    pattern_scores = np.array([math.fsum(w[row].tolist()) / total for row in statistics.patterns], dtype=np.float64)
    weighted = statistics.line_tokens * pattern_scores[statistics.line_pattern] if len(statistics.line_pattern) else np.zeros(0)
    bounds = np.concatenate([[0], np.cumsum(statistics.document_lines)])
    tokens = np.concatenate([[0], np.cumsum(statistics.line_tokens)])
    if bounds[-1] != len(statistics.line_pattern):
        raise ValueError(f"the documents' line counts add up to {bounds[-1]}, but there are {len(statistics.line_pattern)} lines")
    scores = np.zeros(statistics.documents, dtype=np.float64)
    for d in range(statistics.documents):
        start, stop = int(bounds[d]), int(bounds[d + 1])
        count = int(tokens[stop] - tokens[start])
        if count > 0:
            scores[d] = math.fsum(weighted[start:stop].tolist()) / count
    return scores


# ----------------------------------------------------------------------------- weights, scores, pruning
def _all_lines(documents: Sequence[str]) -> list[str]:
    if isinstance(documents, str):
        raise ValueError("documents must be a sequence of strings, not one string")
    lines = [line for document in documents for line in split_lines(document)]
    if not lines:
        raise ValueError("the documents have no non-blank line to score")
    return lines


def filter_weights(
    documents: Sequence[str],
    filters: Sequence[str] | Mapping[str, LineFilter] | None = None,
    perplexity: Perplexity | None = None,
) -> dict[str, float]:
    """``w_i = max(0, (PPL_all - PPL_i) / PPL_all)`` for every filter (paper, eq. 1).

    ``PPL_all`` is the perplexity of all non-blank lines, ``PPL_i`` that of the lines filter ``i``
    passes. ``perplexity`` defaults to a :class:`BigramLM` fitted on these lines, evaluated through
    :func:`corpus_statistics` and :func:`weights_from_statistics` (one sweep, and the same weights as a
    sharded corpus gets). A filter passing no line gets 0.
    """
    if perplexity is None:
        _all_lines(documents)
        return weights_from_statistics([corpus_statistics(documents, filters)])
    lines = _all_lines(documents)
    filters = resolve_filters(filters)
    ppl_all = float(perplexity(lines))
    if not (ppl_all > 0 and math.isfinite(ppl_all)):
        raise ValueError(f"the perplexity of all lines must be positive and finite, got {ppl_all}")
    passed = indicators(lines, filters)
    weights = {}
    for i, name in enumerate(filters):
        kept = [line for line, ok in zip(lines, passed[:, i], strict=True) if ok]
        if not kept:
            weights[name] = 0.0
            continue
        weights[name] = max(0.0, (ppl_all - float(perplexity(kept))) / ppl_all)
    return weights


def _check_weights(weights: Mapping[str, float], filters: Mapping[str, LineFilter] | Sequence[str] | None) -> tuple[dict[str, LineFilter], np.ndarray]:
    if filters is None:
        filters = list(weights)
    resolved = resolve_filters(filters)
    return resolved, _weight_vector(weights, list(resolved))


def line_scores(
    lines: Sequence[str], weights: Mapping[str, float], filters: Sequence[str] | Mapping[str, LineFilter] | None = None
) -> np.ndarray:
    """``score_line = sum_i w_i I_i(line) / sum_i w_i`` (paper, eq. 2), one value in [0, 1] per line.

    ``filters`` defaults to the names in ``weights`` (looked up in :data:`FILTERS`); pass the same
    mapping as to :func:`filter_weights` for custom filters.
    """
    resolved, w = _check_weights(weights, filters)
    return indicators(list(lines), resolved).astype(np.float64) @ w / w.sum()


def document_scores(
    documents: Sequence[str],
    weights: Mapping[str, float],
    filters: Sequence[str] | Mapping[str, LineFilter] | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> np.ndarray:
    """``score_doc = sum tc_line score_line / sum tc_line`` (paper, eq. 3), one value per document.

    ``count_tokens`` gives ``tc_line`` (default: the number of :func:`word_tokens`). A document
    without tokens scores 0. Computed by :func:`scores_from_statistics`: a document's score does not
    depend on the other documents.
    """
    if isinstance(documents, str):
        raise ValueError("documents must be a sequence of strings, not one string")
    resolved, _ = _check_weights(weights, filters)
    return scores_from_statistics(corpus_statistics(documents, resolved, count_tokens, bigrams=False), weights)


# ----------------------------------------------------------------------------- the cut, independent of the documents' order
def tie_keys(ids: Sequence[str], seed: int = 0) -> np.ndarray:
    """A uint64 per id: the first 8 bytes of BLAKE2b of the id (UTF-8), keyed by the seed; a pure function of
    ``(seed, id)``, the same on every platform, whatever other ids are hashed with it."""
    key = hashlib.blake2b(str(int(seed)).encode(), digest_size=32).digest()  # any int seed, as a BLAKE2b key (<= 64 bytes)
    return id_hashes(ids, key, "document")


def score_keys(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """A uint64 per score that sorts ascending as the scores sort *descending* (the IEEE bits made monotone; -0.0 = 0.0).

    Raises:
        ValueError: a score is not finite.
    """
    scores = np.asarray(scores, dtype=np.float64) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite, got {scores[~np.isfinite(scores)][:3].tolist()}")
    bits = scores.view(np.uint64)
    ascending = np.where(bits >> np.uint64(63) == 1, ~bits, bits | np.uint64(1 << 63))
    return ~ascending


def score_of_key(key: int) -> float:
    """The score of a :func:`score_keys` value."""
    ascending = ~np.uint64(key)
    bits = ascending & ~np.uint64(1 << 63) if ascending >> np.uint64(63) == 1 else ~ascending
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def top_fraction(scores: Sequence[float] | np.ndarray, keep_fraction: float, seed: int = 0, ids: Sequence[str] | None = None) -> np.ndarray:
    """Sorted indices of the ``round(keep_fraction * N)`` (at least 1) highest scores.

    Documents are ranked by score (descending), then by :func:`tie_keys` of ``(seed, id)``, then by the id; ``ids``
    default to the indices as strings (``"0"``, ``"1"``, ...). The kept set depends on each document's score and id
    only, not on the order of the documents.

    Raises:
        ValueError: a bad ``keep_fraction``, empty or non-finite scores, ids not matching the scores, or the cut falls
            between two documents of the same score and the same id (nothing tells them apart).
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores must be a non-empty 1-D sequence, got shape {scores.shape}")
    ids = [str(i) for i in range(len(scores))] if ids is None else list(ids)
    if len(ids) != len(scores):
        raise ValueError(f"{len(ids)} ids for {len(scores)} scores")
    keep = max(1, int(round(keep_fraction * len(scores))))
    primary, ties = score_keys(scores), tie_keys(ids, seed)
    order = np.lexsort((ties, primary))
    if keep < len(order):
        # equal (score, hash) pairs (the same id twice, or a 64-bit hash collision): the one straddling the cut is
        # ordered by id
        last = order[keep - 1]
        run = np.flatnonzero((primary[order] == primary[last]) & (ties[order] == ties[last]))
        if run[-1] >= keep:  # the run goes on past the cut: which of its documents are kept is decided by id
            by_id = sorted(order[run], key=lambda i: ids[i])
            cut = keep - 1 - int(run[0])
            if ids[by_id[cut]] == ids[by_id[cut + 1]]:
                raise ValueError(f"the cut falls between documents with the same score and the same id {ids[by_id[cut]]!r}: ids must be unique")
            order[run] = by_id
    return np.sort(order[:keep])


def prune(
    documents: Sequence[str],
    keep_fraction: float = 0.6,
    filters: Sequence[str] | Mapping[str, LineFilter] | None = None,
    perplexity: Perplexity | None = None,
    seed: int = 0,
    count_tokens: Callable[[str], int] | None = None,
    ids: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Weights, document scores, and the sorted indices of the top ``keep_fraction`` documents.

    The paper keeps 60-80% (``keep_fraction`` 0.6 on OpenWebText, 0.8 on Wikipedia). With the default LM the
    lines are swept once (:func:`corpus_statistics`); ``ids`` (default: the indices) break ties in score
    (:func:`top_fraction`). ``litzoo.framework.curation.text_quality_pool.prune_pool`` gives the same result on a
    corpus in shards.

    Returns:
        ``(kept_indices, scores, weights)``.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if perplexity is None:
        _all_lines(documents)
        statistics = corpus_statistics(documents, filters, count_tokens)
        weights = weights_from_statistics([statistics])
        scores = scores_from_statistics(statistics, weights)
    else:
        weights = filter_weights(documents, filters, perplexity)
        scores = document_scores(documents, weights, resolve_filters(filters), count_tokens)
    return top_fraction(scores, keep_fraction, seed, ids), scores, weights
