"""Span utilities: BIO round trips, conlleval's stray-I rule, flattening nested gold, nesting, span P/R/F1 by hand."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from litzoo.framework.text.spans import (
    BIOScheme,
    SpanCounts,
    SpanF1,
    flatten_for_bio,
    is_nested,
    nested_spans,
    nesting_depth,
    span_prf,
)

# tag ids: O=0, B-PER=1, I-PER=2, B-LOC=3, I-LOC=4
SCHEME = BIOScheme(["PER", "LOC"])
# ORG "北京大学医学部" ⊃ ORG "北京大学" ⊃ LOC "北京", and a nested PER pair further on
NESTED = {(0, 6, "ORG"), (0, 4, "ORG"), (0, 2, "LOC"), (7, 9, "PER"), (8, 9, "PER")}


def test_bio_encoding_by_hand_and_round_trip():
    assert SCHEME.tag_names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    spans = {(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "PER"), (6, 7, "PER")}  # adjacent spans of one type need their B
    tags = SCHEME.encode(spans, 8)
    assert tags == [1, 2, 0, 3, 1, 2, 1, 0]
    assert SCHEME.decode(tags) == spans
    assert SCHEME.encode(set(), 3) == [0, 0, 0] and SCHEME.decode([0, 0, 0]) == set()
    assert SCHEME.decode([3, 4, 4]) == {(0, 3, "LOC")}  # a span running to the end is closed


def test_stray_inside_tag_starts_a_span_as_conlleval():
    # I-PER at the start, I-LOC after O, I-PER after I-LOC, I-LOC after B-PER
    assert SCHEME.decode([2, 2, 0, 4, 2, 1, 4]) == {(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "PER"), (5, 6, "PER"), (6, 7, "LOC")}


def test_every_valid_bio_sequence_round_trips_and_decoding_is_idempotent():
    for tags in itertools.product(range(SCHEME.num_tags), repeat=4):
        spans = SCHEME.decode(tags)
        valid = all(t == 0 or t % 2 == 1 or (i > 0 and tags[i - 1] in (t - 1, t)) for i, t in enumerate(tags))
        assert (SCHEME.encode(spans, 4) == list(tags)) == valid
        assert SCHEME.decode(SCHEME.encode(spans, 4)) == spans


def test_encoding_refuses_what_a_flat_tagging_cannot_hold():
    with pytest.raises(ValueError, match="overlaps"):
        SCHEME.encode({(0, 3, "PER"), (1, 2, "LOC")}, 4)
    with pytest.raises(ValueError, match="past the sequence length"):
        SCHEME.encode({(2, 5, "PER")}, 4)
    with pytest.raises(ValueError, match="type not in"):
        SCHEME.encode({(0, 1, "ORG")}, 4)
    with pytest.raises(ValueError, match="start < end"):
        SCHEME.encode({(2, 2, "PER")}, 4)
    with pytest.raises(ValueError, match="not in"):
        SCHEME.decode([0, 5])
    with pytest.raises(ValueError, match="unique"):
        BIOScheme(["PER", "PER"])


def test_flatten_for_bio_by_hand():
    assert flatten_for_bio(NESTED) == {(0, 6, "ORG"), (7, 9, "PER")}
    assert flatten_for_bio(NESTED, keep="innermost") == {(0, 2, "LOC"), (8, 9, "PER")}
    # crossing spans of equal length: the earlier start wins; same boundaries: the first type in sorted order
    assert flatten_for_bio({(0, 3, "B"), (2, 5, "A")}) == {(0, 3, "B")}
    assert flatten_for_bio({(0, 2, "ORG"), (0, 2, "LOC")}) == {(0, 2, "LOC")}
    BIOScheme(["ORG", "LOC", "PER"]).encode(flatten_for_bio(NESTED), 10)  # the flattened gold is encodable
    with pytest.raises(ValueError, match="keep"):
        flatten_for_bio(NESTED, keep="longest")


def test_flatten_on_laminar_sets_keeps_the_outermost_or_innermost_spans():
    rng = random.Random(0)
    for _ in range(50):
        # a random laminar (properly nested) family: random spans kept only if they cross none already kept
        spans: set = set()
        for _ in range(12):
            a = rng.randrange(0, 12)
            b = rng.randrange(a + 1, 13)
            crossing = any(a < o[1] and o[0] < b and not (o[0] <= a and b <= o[1]) and not (a <= o[0] and o[1] <= b) for o in spans)
            same_boundaries = any(o[:2] == (a, b) for o in spans)  # one type per boundary pair
            if not crossing and not same_boundaries:
                spans.add((a, b, rng.choice("XY")))
        contains = lambda outer, inner: outer != inner and outer[0] <= inner[0] and inner[1] <= outer[1]  # noqa: E731
        outermost = {s for s in spans if not any(contains(o, s) for o in spans)}
        innermost = {s for s in spans if not any(contains(s, o) for o in spans)}
        assert flatten_for_bio(spans) == outermost
        assert flatten_for_bio(spans, keep="innermost") == innermost


def test_nesting_by_hand():
    assert is_nested((0, 2, "LOC"), NESTED) and is_nested((0, 6, "ORG"), NESTED)
    assert not is_nested((7, 9, "PER"), {(7, 9, "PER"), (8, 11, "LOC")})  # crossing is not nesting
    assert not is_nested((7, 9, "PER"), {(7, 9, "PER")})  # a span is not nested in itself
    assert is_nested((7, 9, "PER"), {(7, 9, "PER"), (7, 9, "LOC")})  # same boundaries, another type
    assert [nesting_depth(s, NESTED) for s in [(0, 6, "ORG"), (0, 4, "ORG"), (0, 2, "LOC"), (8, 9, "PER")]] == [0, 1, 2, 1]
    assert nested_spans(NESTED) == NESTED
    assert nested_spans({(0, 2, "A"), (3, 4, "B")}) == set()


# sentence 1: gold nests ORG ⊃ ORG ⊃ LOC, PER (7, 9) is flat in gold; the prediction misses the middle ORG and adds a
# PER (7, 8) inside (7, 9), which makes (7, 9) nested in the prediction. sentence 2: right boundaries, wrong type.
PRED = [{(0, 6, "ORG"), (0, 2, "LOC"), (7, 9, "PER"), (7, 8, "PER")}, {(1, 3, "LOC")}]
GOLD = [{(0, 6, "ORG"), (0, 4, "ORG"), (0, 2, "LOC"), (7, 9, "PER")}, {(1, 3, "PER")}]


def test_span_prf_by_hand():
    counts = span_prf(PRED, GOLD)
    assert counts == SpanCounts(tp=3, fp=2, fn=2, nested_pred=4, nested_pred_correct=3, nested_gold=3, nested_gold_found=2)
    assert counts.precision == pytest.approx(3 / 5) and counts.recall == pytest.approx(3 / 5) and counts.f1 == pytest.approx(3 / 5)
    # nested precision over the 4 spans nested in the prediction, recall over the 3 nested gold spans
    assert counts.nested_precision == pytest.approx(3 / 4)
    assert counts.nested_recall == pytest.approx(2 / 3)
    assert counts.nested_f1 == pytest.approx(2 * (3 / 4) * (2 / 3) / (3 / 4 + 2 / 3))


def test_span_prf_empty_sides_are_zero():
    no_pred = span_prf([set(), set()], GOLD)
    assert (no_pred.tp, no_pred.fp, no_pred.fn) == (0, 0, 5)
    assert no_pred.scores() == dict.fromkeys(no_pred.scores(), 0.0)  # P = 0/0 := 0, R = 0, F1 = 0/0 := 0
    no_gold = span_prf(PRED, [set(), set()])
    assert (no_gold.tp, no_gold.fp, no_gold.fn, no_gold.nested_pred) == (0, 5, 0, 4)
    assert no_gold.scores() == dict.fromkeys(no_gold.scores(), 0.0)
    assert span_prf([set()], [set()]).scores() == dict.fromkeys(no_gold.scores(), 0.0)
    perfect = span_prf(GOLD, GOLD)
    assert perfect.f1 == 1.0 and perfect.nested_f1 == 1.0
    with pytest.raises(ValueError, match="same sentences"):
        span_prf(PRED, GOLD[:1])


def test_span_f1_metric_accumulates_and_sums_across_ranks():
    whole = SpanF1()
    whole.update(PRED[:1], GOLD[:1])
    whole.update(PRED[1:], GOLD[1:])
    expected = span_prf(PRED, GOLD).scores()
    result = whole.compute()
    assert {k: float(v) for k, v in result.items()} == pytest.approx(expected)
    # two "ranks" each seeing one sentence, merged with the metric's own (sum) reduction, give the same scores
    rank0, rank1 = SpanF1(), SpanF1()
    rank0.update(PRED[:1], GOLD[:1])
    rank1.update(PRED[1:], GOLD[1:])
    rank0.merge_state(rank1)
    assert torch.equal(rank0.counts, whole.counts)
    assert {k: float(v) for k, v in rank0.compute().items()} == pytest.approx(expected)
