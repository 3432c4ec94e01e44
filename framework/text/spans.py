"""Entity spans: BIO encoding and decoding, flattening nested gold for a flat tagger, nesting, span-level P/R/F1.

A span is ``(start, end, type)`` over token (or character) indices with ``end`` exclusive, as in the nested-NER JSONL
layout ``{"text", "entities": [{"start", "end", "type"}]}`` that ACE / GENIA / ChiNesE converters produce (issue 24,
Mulco: Yang et al., CIKM 2023, arXiv 2211.10854, which reports span-level micro P/R/F1 overall and on nested entities).

Rules chosen here, each tested in ``tests/framework/text/test_spans.py``:
- **BIO tag ids** (:class:`BIOScheme`): ``0 = "O"``, then ``B-<type>`` and ``I-<type>`` for each type in the order
  given (``B`` at ``1 + 2k``, ``I`` at ``2 + 2k``). Encoding refuses overlapping spans (a flat tagging cannot hold them).
- **Decoding a stray I-X** (an ``I-X`` after ``O``, after the start of the sequence or inside a span of another type)
  starts a new span of type X, as conlleval (CoNLL-2000 ``conlleval`` ``startOfChunk``) and seqeval's default mode do;
  an ``I-Y`` after ``B-X`` / ``I-X`` with ``Y != X`` closes the X span and opens a Y span.
- **Flattening nested gold** (:func:`flatten_for_bio`) for the flat BIO-CRF baseline: greedily keep spans that overlap
  none already kept, longest first (``keep="outermost"``) or shortest first (``keep="innermost"``), ties broken by start
  then type. On a properly nested (laminar) set this is exactly "the spans contained in no other span" (resp. "the spans
  containing no other span"); crossing spans, which are not nesting, are resolved by the same greedy order.
- **Nested** (:func:`is_nested`): a span is nested when another span of the same set contains it or is contained in
  it (containment ignores the type; two spans with the same boundaries and different types are nested in each other).
  Partially overlapping (crossing) spans are not nested. :func:`nesting_depth` counts the other spans containing a span
  (0 for an outermost span).
- **P/R/F1** (:func:`span_prf`): micro-averaged over the corpus, a prediction is correct when start, end and type all
  match a gold span of the same sentence. The *nested* scores follow the usual nested-NER reporting: recall over the gold
  spans that are nested among the gold spans of their sentence, precision over the predicted spans that are nested
  among the predictions of their sentence, F1 their harmonic mean. Every ``0/0`` (no prediction, no gold, ``P = R = 0``)
  is defined as 0, as conlleval and scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "BIOScheme",
    "Span",
    "SpanCounts",
    "SpanF1",
    "flatten_for_bio",
    "is_nested",
    "nested_spans",
    "nesting_depth",
    "span_prf",
    "span_sets_from_tensor",
]

Span = tuple[int, int, str]


def _check_span(span: Span) -> Span:
    if not (isinstance(span, tuple) and len(span) == 3):
        raise ValueError(f"a span is a (start, end, type) tuple, got {span!r}")
    start, end, entity_type = span
    if not (0 <= int(start) < int(end)):
        raise ValueError(f"a span needs 0 <= start < end (end exclusive), got {span!r}")
    if not isinstance(entity_type, str) or not entity_type:
        raise ValueError(f"a span's type must be a non-empty string, got {span!r}")
    return span


def _contains(outer: Span, inner: Span) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]


def _overlap(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# ---------------------------------------------------------------------------------------------------------------------
class BIOScheme:
    """BIO tags over entity ``types``: ``tag_names`` is ``["O", "B-t0", "I-t0", "B-t1", ...]``.

    Args:
        types: the entity types, unique non-empty strings; their order fixes the tag ids.
    """

    def __init__(self, types: Sequence[str]) -> None:
        types = list(types)
        if not types or any(not isinstance(t, str) or not t for t in types) or len(set(types)) != len(types):
            raise ValueError(f"types must be unique non-empty strings, got {types}")
        self.types = types
        self.tag_names = ["O"] + [f"{prefix}-{t}" for t in types for prefix in ("B", "I")]
        self._type_index = {t: k for k, t in enumerate(types)}

    @property
    def num_tags(self) -> int:
        return len(self.tag_names)

    def encode(self, spans: Iterable[Span], length: int) -> list[int]:
        """Tag ids of a sequence of ``length`` tokens holding the non-overlapping ``spans``."""
        tags = [0] * length
        for span in sorted(_check_span(s) for s in spans):
            start, end, entity_type = span
            if end > length:
                raise ValueError(f"span {span!r} ends past the sequence length {length}")
            if entity_type not in self._type_index:
                raise ValueError(f"span {span!r} has a type not in {self.types}")
            if any(tags[start:end]):
                raise ValueError(f"span {span!r} overlaps another span; flatten nested spans first (flatten_for_bio)")
            k = self._type_index[entity_type]
            tags[start] = 1 + 2 * k
            tags[start + 1 : end] = [2 + 2 * k] * (end - start - 1)
        return tags

    def decode(self, tags: Sequence[int]) -> set[Span]:
        """The spans of a tag-id sequence; a stray ``I-X`` starts a new span (conlleval's rule)."""
        spans: set[Span] = set()
        open_start, open_type = -1, None
        for i, tag in enumerate(list(tags) + [0]):  # a final O closes the last span
            tag = int(tag)
            if not 0 <= tag < self.num_tags:
                raise ValueError(f"tag id {tag} at position {i} is not in [0, {self.num_tags})")
            entity_type = None if tag == 0 else self.types[(tag - 1) // 2]
            inside = tag != 0 and tag % 2 == 0
            if inside and entity_type == open_type:
                continue  # I-X continuing an X span
            if open_type is not None:
                spans.add((open_start, i, open_type))
            open_start, open_type = i, entity_type  # B-X, or a stray I-X, opens a span; O opens none
        return spans


# ---------------------------------------------------------------------------------------------------------------------
def flatten_for_bio(spans: Iterable[Span], keep: Literal["outermost", "innermost"] = "outermost") -> set[Span]:
    """The non-overlapping subset of ``spans`` a flat BIO tagger is trained on (greedy; see the module docstring).

    Args:
        spans: the (possibly nested) gold spans of one sequence.
        keep: ``"outermost"`` (longest first) or ``"innermost"`` (shortest first).
    """
    if keep not in ("outermost", "innermost"):
        raise ValueError(f"keep must be 'outermost' or 'innermost', got {keep!r}")
    sign = -1 if keep == "outermost" else 1
    order = sorted({_check_span(s) for s in spans}, key=lambda s: (sign * (s[1] - s[0]), s[0], s[2]))
    kept: list[Span] = []
    for span in order:
        if not any(_overlap(span, other) for other in kept):
            kept.append(span)
    return set(kept)


def is_nested(span: Span, spans: Iterable[Span]) -> bool:
    """Whether another span of ``spans`` contains ``span`` or is contained in it (crossing spans are not nested)."""
    _check_span(span)
    return any(other != span and (_contains(other, span) or _contains(span, other)) for other in spans)


def nesting_depth(span: Span, spans: Iterable[Span]) -> int:
    """How many other spans of ``spans`` contain ``span`` (0 for a span contained in none)."""
    _check_span(span)
    return sum(1 for other in set(spans) if other != span and _contains(other, span))


def nested_spans(spans: Iterable[Span]) -> set[Span]:
    """The spans of ``spans`` that are nested with another span of the set."""
    spans = {_check_span(s) for s in spans}
    return {s for s in spans if is_nested(s, spans)}


# ---------------------------------------------------------------------------------------------------------------------
def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0  # 0/0 := 0 (module docstring)


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


@dataclass(frozen=True)
class SpanCounts:
    """Corpus counts behind span P/R/F1; the scores are properties (``0/0 = 0``).

    ``tp`` / ``fp`` / ``fn`` are over all spans. ``nested_pred`` predictions were nested in their sentence's
    prediction, ``nested_pred_correct`` of them are gold; ``nested_gold`` gold spans were nested in their sentence's
    gold, ``nested_gold_found`` of them were predicted.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    nested_pred: int = 0
    nested_pred_correct: int = 0
    nested_gold: int = 0
    nested_gold_found: int = 0

    def __add__(self, other: SpanCounts) -> SpanCounts:
        return SpanCounts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.tp, self.fp, self.fn, self.nested_pred, self.nested_pred_correct, self.nested_gold, self.nested_gold_found)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _f1(self.precision, self.recall)

    @property
    def nested_precision(self) -> float:
        return _ratio(self.nested_pred_correct, self.nested_pred)

    @property
    def nested_recall(self) -> float:
        return _ratio(self.nested_gold_found, self.nested_gold)

    @property
    def nested_f1(self) -> float:
        return _f1(self.nested_precision, self.nested_recall)

    def scores(self) -> dict[str, float]:
        """``precision``, ``recall``, ``f1`` and the same prefixed with ``nested_``."""
        names = ("precision", "recall", "f1", "nested_precision", "nested_recall", "nested_f1")
        return {name: getattr(self, name) for name in names}


def span_prf(pred: Sequence[Iterable[Span]], gold: Sequence[Iterable[Span]]) -> SpanCounts:
    """Micro span counts (and, through them, P/R/F1) of per-sentence predicted vs gold span sets.

    Args:
        pred: one collection of predicted spans per sentence.
        gold: one collection of gold spans per sentence, aligned with ``pred``.
    """
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold must list the same sentences, got {len(pred)} and {len(gold)}")
    total = SpanCounts()
    for pred_spans, gold_spans in zip(pred, gold, strict=True):
        p = {_check_span(s) for s in pred_spans}
        g = {_check_span(s) for s in gold_spans}
        nested_p, nested_g = nested_spans(p), nested_spans(g)
        tp = len(p & g)
        total = total + SpanCounts(
            tp=tp,
            fp=len(p) - tp,
            fn=len(g) - tp,
            nested_pred=len(nested_p),
            nested_pred_correct=len(nested_p & g),
            nested_gold=len(nested_g),
            nested_gold_found=len(nested_g & p),
        )
    return total


class SpanF1(Metric):
    """Span-level micro P/R/F1, overall and on nested spans, as a torchmetrics ``Metric`` (counts summed over DDP ranks).

    ``update(pred, gold)`` takes per-sentence span sets as :func:`span_prf`; ``compute()`` returns ``{"precision",
    "recall", "f1", "nested_precision", "nested_recall", "nested_f1"}`` as float tensors.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # int64 counts: exact under the sum reduction, unlike float sums of rates
        self.add_state("counts", default=torch.zeros(len(SpanCounts().as_tuple()), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Sequence[Iterable[Span]], gold: Sequence[Iterable[Span]]) -> None:
        counts = span_prf(pred, gold).as_tuple()
        self.counts += torch.tensor(counts, dtype=torch.long, device=self.counts.device)

    def compute(self) -> dict[str, Tensor]:
        scores = SpanCounts(*(int(c) for c in self.counts.tolist())).scores()
        return {name: torch.tensor(value, dtype=torch.float32) for name, value in scores.items()}


def span_sets_from_tensor(spans: Tensor, type_names: Sequence[str]) -> list[set[Span]]:
    """A batch's padded gold ``spans`` ``(B, S, 3)`` of ``(start, end, type id)`` (rows of -1 are padding, the layout of
    ``NestedNERDataModule``) as one set of ``(start, end, type name)`` per sentence."""
    return [{(start, end, type_names[kind]) for start, end, kind in rows if kind >= 0} for rows in spans.tolist()]
