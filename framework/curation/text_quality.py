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
  seeded random order, so the kept set is reproducible.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise

import numpy as np

#: a line filter: ``True`` when the line passes (looks like clean prose)
LineFilter = Callable[[str], bool]
#: a reference LM's corpus perplexity
Perplexity = Callable[[Sequence[str]], float]

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
TERMINAL_PUNCTUATION = (".", "!", "?", '"')
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
SPECIAL_PHRASES = ("javascript", "lorem ipsum")
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

    def __init__(self, k: float = 0.1, lowercase: bool = False) -> None:
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
    passes. ``perplexity`` defaults to a :class:`BigramLM` fitted on these lines. A filter passing
    no line gets 0.
    """
    lines = _all_lines(documents)
    filters = resolve_filters(filters)
    if perplexity is None:
        perplexity = BigramLM().fit(lines)
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
    missing = [name for name in resolved if name not in weights]
    if missing:
        raise ValueError(f"no weight for filters {missing}")
    w = np.array([float(weights[name]) for name in resolved], dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"filter weights must be finite and non-negative, got {dict(weights)}")
    if w.sum() <= 0:
        raise ValueError("every filter weight is 0: no filter retains lower-perplexity text, so there is nothing to rank by")
    return resolved, w


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
    without tokens scores 0.
    """
    if isinstance(documents, str):
        raise ValueError("documents must be a sequence of strings, not one string")
    resolved, w = _check_weights(weights, filters)
    count_tokens = count_tokens or (lambda line: len(word_tokens(line)))
    per_document = [split_lines(document) for document in documents]
    flat = [line for lines in per_document for line in lines]
    scores = indicators(flat, resolved).astype(np.float64) @ w / w.sum() if flat else np.zeros(0)
    counts = np.array([count_tokens(line) for line in flat], dtype=np.float64)
    result = np.zeros(len(per_document), dtype=np.float64)
    start = 0
    for d, lines in enumerate(per_document):
        stop = start + len(lines)
        total = counts[start:stop].sum()
        if total > 0:
            result[d] = float((counts[start:stop] * scores[start:stop]).sum() / total)
        start = stop
    return result


def top_fraction(scores: Sequence[float] | np.ndarray, keep_fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of the ``round(keep_fraction * N)`` (at least 1) highest scores; ties in a seeded random order."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores must be a non-empty 1-D sequence, got shape {scores.shape}")
    keep = max(1, int(round(keep_fraction * len(scores))))
    tie_break = np.random.default_rng(seed).permutation(len(scores))
    order = np.lexsort((tie_break, -scores))  # by score descending, then the random key
    return np.sort(order[:keep])


def prune(
    documents: Sequence[str],
    keep_fraction: float = 0.6,
    filters: Sequence[str] | Mapping[str, LineFilter] | None = None,
    perplexity: Perplexity | None = None,
    seed: int = 0,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Weights, document scores, and the sorted indices of the top ``keep_fraction`` documents.

    The paper keeps 60-80% (``keep_fraction`` 0.6 on OpenWebText, 0.8 on Wikipedia).

    Returns:
        ``(kept_indices, scores, weights)``.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    weights = filter_weights(documents, filters, perplexity)
    resolved = resolve_filters(filters)
    scores = document_scores(documents, weights, resolved, count_tokens)
    return top_fraction(scores, keep_fraction, seed), scores, weights
