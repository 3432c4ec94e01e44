"""Text quality-based pruning (framework/curation/text_quality.py, `litzoo text-quality`; Sharma et al., arXiv:2405.01582):
every filter on hand-made lines, the weight / line / document formulas by hand, pruning, the bigram LM by hand,
and the score separating junk on the synthetic corpus."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from litzoo.cli import main
from litzoo.datamodules.synthetic import TQ_JUNK_KINDS, text_quality_corpus
from litzoo.framework.curation.text_quality import (
    FILTERS,
    PAPER_FILTERS,
    BigramLM,
    CorpusStatistics,
    corpus_statistics,
    digit_punctuation_ratio,
    document_scores,
    filter_weights,
    line_scores,
    prune,
    score_keys,
    scores_from_statistics,
    split_lines,
    tie_keys,
    top_fraction,
    weights_from_statistics,
    word_repetition_ratio,
    word_tokens,
)
from litzoo.framework.errors import LitzooError

CLEAN = "The old farmer carried the basket to the market with his son."

# (filter, line, expected) — each filter on lines that pass and fail it
CASES = [
    ("has_first_letter_caps", CLEAN, True),
    ("has_first_letter_caps", "  \"quoted start, lower case", False),
    ("has_first_letter_caps", "42 Apples were sold", True),  # the first *letter* counts
    ("no_all_caps", CLEAN, True),
    ("no_all_caps", "CLICK HERE TO WIN 100 PRIZES", False),
    ("no_all_caps", "1234 5678", True),  # no letter at all is not shouting
    ("word_repetition_ratio_lt_0_2", CLEAN, True),  # 12 words, "the" x3: 2/12 < 0.2
    ("word_repetition_ratio_lt_0_2", "buy buy buy now", False),
    ("word_repetition_ratio_lt_0_2", "The cat and the dog", False),  # 1/5 = 0.2 is not < 0.2, case-insensitive
    ("digit_punctuation_ratio_le_0_25", CLEAN, True),  # 1 mark / 12 words
    ("digit_punctuation_ratio_le_0_25", "home | about | page 2", False),
    ("digit_punctuation_ratio_le_0_25", "one two three, four!", False),  # 2 / 4 = 0.5
    ("no_special_characters", CLEAN, True),
    ("no_special_characters", "function f() { return 1; }", False),
    ("terminal_punctuation", CLEAN, True),
    ("terminal_punctuation", 'He said "stop"', True),  # the paper counts a closing quote
    ("terminal_punctuation", "He said stop,", False),
    ("terminal_punctuation", "Is it?  ", True),
    ("terminal_punctuation", "a list of words", False),
    ("stop_word_match_2", CLEAN, True),
    ("stop_word_match_2", "The cat sat.", False),  # one stop word
    ("stop_word_match_2", "the the", True),  # repetitions count
    ("stop_word_match_2", "There theory", False),  # whole words only
    ("no_javascript_flag", CLEAN, True),
    ("no_javascript_flag", "Please enable JavaScript to continue.", False),
    ("no_javascript_flag", "Lorem Ipsum dolor sit amet.", False),
    ("token_count_ge_3", "Hi there, you!", True),  # 5 tokens
    ("token_count_ge_3", "Hi you!", False),  # 3 tokens is not > 3
    ("word_count_3_256", "one two three", False),
    ("word_count_3_256", "one two three four", True),
    ("word_count_3_256", " ".join(["w"] * 256), False),
    ("word_count_3_256", " ".join(["w"] * 255), True),
    ("has_determiner", "Dogs bark at every car.", True),
    ("has_determiner", "Dogs bark loudly.", False),
    ("has_noun", "She opened the window.", True),
    ("has_noun", "It is the.", False),  # determiner without a content word after it
    ("has_noun", "12 34 56 78", False),
]


@pytest.mark.parametrize(("name", "line", "expected"), CASES)
def test_each_filter_on_hand_made_lines(name, line, expected):
    assert FILTERS[name](line) is expected


def test_every_filter_has_a_passing_and_a_failing_case():
    for name in PAPER_FILTERS:
        assert {expected for n, _, expected in CASES if n == name} == {True, False}, name


def test_ratios_and_tokens_by_hand():
    assert word_repetition_ratio("a b a b c") == pytest.approx(1 - 3 / 5)
    assert digit_punctuation_ratio("a1, b2.") == pytest.approx(4 / 2)
    assert word_tokens("Hi, you2!") == ["Hi", ",", "you2", "!"]
    assert split_lines("  a \n\n b\n") == ["a", "b"]


def stub_perplexity(table):
    """A reference 'LM' whose perplexity of a set of lines is looked up by the set."""
    return lambda texts: table[frozenset(texts)]


def test_filter_weights_match_the_formula_by_hand():
    docs = ["good line.\nBAD", "other"]
    filters = {
        "ends_with_dot": lambda line: line.endswith("."),  # keeps {"good line."}
        "lower_start": lambda line: line[0].islower(),  # keeps {"good line.", "other"}
        "short": lambda line: len(line) <= 3,  # keeps {"BAD"}
        "nothing": lambda line: False,  # keeps nothing
    }
    table = {
        frozenset({"good line.", "BAD", "other"}): 100.0,
        frozenset({"good line."}): 40.0,
        frozenset({"good line.", "other"}): 75.0,
        frozenset({"BAD"}): 300.0,
    }
    weights = filter_weights(docs, filters, stub_perplexity(table))
    assert weights == pytest.approx({"ends_with_dot": 0.6, "lower_start": 0.25, "short": 0.0, "nothing": 0.0})


def test_line_and_document_scores_by_hand():
    weights = {"terminal_punctuation": 0.6, "has_first_letter_caps": 0.2, "no_special_characters": 0.0}
    lines = ["Ends well.", "no dot {", "Caps only", "lower but ends."]
    # sum w = 0.8: passes (T, C, S) -> (0.6+0.2)/0.8, (0)/0.8, (0.2)/0.8, (0.6)/0.8
    expected = np.array([1.0, 0.0, 0.25, 0.75])
    np.testing.assert_allclose(line_scores(lines, weights), expected)
    docs = ["Ends well.\nno dot {", "Caps only\n\nlower but ends.", ""]
    # token counts: "Ends well." 3, "no dot {" 3, "Caps only" 2, "lower but ends." 4
    want = [(3 * 1.0 + 3 * 0.0) / 6, (2 * 0.25 + 4 * 0.75) / 6, 0.0]
    np.testing.assert_allclose(document_scores(docs, weights), want)
    # a custom token counter (e.g. the training tokenizer's) changes the weighting
    np.testing.assert_allclose(document_scores(docs[:1], weights, count_tokens=lambda line: 1 if "{" in line else 3), [0.75])


def test_scores_reject_bad_weights():
    with pytest.raises(ValueError, match="every filter weight is 0"):
        line_scores(["a"], {"terminal_punctuation": 0.0})
    with pytest.raises(ValueError, match="non-negative"):
        line_scores(["a"], {"terminal_punctuation": -1.0})
    with pytest.raises(ValueError, match="unknown filters"):
        line_scores(["a"], {"no_such_filter": 1.0})
    with pytest.raises(ValueError, match="no weight"):
        line_scores(["a"], {"terminal_punctuation": 1.0}, filters=["terminal_punctuation", "no_all_caps"])
    with pytest.raises(ValueError, match="not one string"):
        document_scores("a document", {"terminal_punctuation": 1.0})


def test_top_fraction_keeps_exactly_the_top_and_breaks_ties_by_seed():
    scores = [0.1, 0.9, 0.5, 0.7, 0.3]
    assert top_fraction(scores, 0.6).tolist() == [1, 2, 3]
    assert top_fraction(scores, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert top_fraction(scores, 0.01).tolist() == [1]  # at least one document
    ties = [1.0] * 10
    picks = {tuple(top_fraction(ties, 0.5, seed=s)) for s in range(20)}
    assert all(len(p) == 5 for p in picks) and len(picks) > 1  # the seed decides among ties
    assert top_fraction(ties, 0.5, seed=3).tolist() == top_fraction(ties, 0.5, seed=3).tolist()
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="keep_fraction"):
            top_fraction(scores, bad)


def test_bigram_perplexity_by_hand():
    lm = BigramLM(k=1.0).fit(["a b", "a a"])
    # vocab {a, b, </s>, <unk>} = 4; counts: <s>a 2, ab 1, b</s> 1, aa 1, a</s> 1; contexts <s> 2, a 3, b 1
    p = {("<s>", "a"): (2 + 1) / (2 + 4), ("a", "b"): (1 + 1) / (3 + 4), ("b", "</s>"): (1 + 1) / (1 + 4)}
    assert lm.perplexity(["a b"]) == pytest.approx(math.exp(-sum(math.log(v) for v in p.values()) / 3))
    # an unseen word maps to <unk>: P(<unk> | a) = (0 + 1) / (3 + 4), P(</s> | <unk>) = 1/4
    unk = [(2 + 1) / 6, 1 / 7, 1 / 4]
    assert lm(["a zebra"]) == pytest.approx(math.exp(-sum(math.log(v) for v in unk) / 3))
    assert BigramLM(lowercase=True).fit(["A b"]).perplexity(["a B"]) == BigramLM().fit(["a b"]).perplexity(["a b"])
    with pytest.raises(ValueError, match="not fitted"):
        BigramLM().perplexity(["a"])
    with pytest.raises(ValueError, match="k must be positive"):
        BigramLM(k=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = text_quality_corpus(tmp_path_factory.mktemp("tq"), num_documents=300, junk_share=0.4, seed=0)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synthetic_corpus_is_seeded_and_records_its_junk(corpus, tmp_path):
    again = [json.loads(line) for line in text_quality_corpus(tmp_path, 300, 0.4, seed=0).read_text().splitlines()]
    assert again == corpus
    junk = [row for row in corpus if row["junk_lines"]]
    assert 0.3 < len(junk) / len(corpus) < 0.5
    assert all(len(row["junk_kinds"]) == row["junk_lines"] and set(row["junk_kinds"]) <= set(TQ_JUNK_KINDS) for row in corpus)
    clean = [row for row in corpus if not row["junk_lines"]]
    assert all(all(FILTERS[name](line) for name in PAPER_FILTERS) for row in clean[:50] for line in split_lines(row["text"]))
    with pytest.raises(ValueError, match="junk_share"):
        text_quality_corpus(tmp_path, 10, junk_share=1.5)


def test_scores_separate_junk_on_the_synthetic_corpus(corpus):
    documents = [row["text"] for row in corpus]
    kept, scores, weights = prune(documents, keep_fraction=0.6)
    clean = torch.tensor([row["junk_lines"] == 0 for row in corpus])
    assert binary_auroc(torch.tensor(scores), clean.long()).item() >= 0.95
    # filters no line fails on this corpus retain everything: PPL_i = PPL_all, weight 0
    assert weights["token_count_ge_3"] == 0.0 and weights["word_count_3_256"] == 0.0
    assert weights["terminal_punctuation"] > 0.1 and weights["has_first_letter_caps"] > 0.1
    assert len(kept) == round(0.6 * len(corpus))
    assert clean[torch.as_tensor(kept)].float().mean() > clean.float().mean() + 0.2


def test_cli_text_quality_writes_the_kept_rows(corpus, tmp_path, capsys):
    manifest = tmp_path / "in.jsonl"
    manifest.write_text("".join(json.dumps({"body": row["text"], "id": i}) + "\n" for i, row in enumerate(corpus)))
    output = tmp_path / "out" / "kept.jsonl"
    main(["text-quality", "--manifest", str(manifest), "--text_key", "body", "--keep_fraction", "0.5", "--output", str(output)])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(corpus) // 2
    assert all(set(row) == {"body", "id", "quality_score"} for row in rows)
    scores = [row["quality_score"] for row in rows]
    expected = prune([row["text"] for row in corpus], 0.5)[1]
    assert sorted(scores) == pytest.approx(sorted(expected)[-len(rows):])
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)  # input order kept
    out = capsys.readouterr().out
    assert "filter weights: has_first_letter_caps=" in out and f"kept {len(rows)} (50.0%)" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ('{"text": "fine."}\nnot json\n', "line 2 is not JSON"),
        ('{"text": "fine."}\n{"body": "x"}\n', "line 2 has no string field 'text'"),
    ],
)
def test_cli_text_quality_errors_are_one_line(tmp_path, capsys, content, message):
    manifest = tmp_path / "in.jsonl"
    if content is not None:
        manifest.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["text-quality", "--manifest", str(manifest), "--output", str(tmp_path / "o.jsonl")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("litzoo: error: ") and message in err and str(manifest) in err and "\n" not in err


def test_cli_with_progress_bars_keeps_exactly_what_prune_keeps(corpus, tmp_path, capsys):
    manifest = tmp_path / "in.jsonl"
    manifest.write_text("".join(json.dumps({"text": row["text"], "id": i}) + "\n" for i, row in enumerate(corpus)))
    main(["text-quality", "--manifest", str(manifest), "--keep_fraction", "0.6", "--seed", "3", "--output", str(tmp_path / "o.jsonl"),
          "--progress", "true"])  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    kept, scores, _ = prune([row["text"] for row in corpus], 0.6, seed=3)
    assert [row["id"] for row in rows] == kept.tolist()
    assert [row["quality_score"] for row in rows] == scores[kept].tolist()
    err = capsys.readouterr().err
    # --progress true: shown without a tty (each bar is drawn at 0% and cleared when done, leave=False; whether a 100%
    # frame is drawn in between depends on tqdm's refresh interval, so only the bars' names are checked)
    assert "filter weights:" in err and "scoring:" in err and "writing:" in err


def test_an_interrupted_text_quality_keeps_the_previous_output(corpus, tmp_path, interrupt_writer):
    manifest = tmp_path / "in.jsonl"
    manifest.write_text("".join(json.dumps({"text": row["text"]}) + "\n" for row in corpus[:60]))
    output = tmp_path / "kept.jsonl"
    main(["text-quality", "--manifest", str(manifest), "--output", str(output)])
    previous = output.read_bytes()
    calls = interrupt_writer("quality_score", at=5)
    with pytest.raises(KeyboardInterrupt):
        main(["text-quality", "--manifest", str(manifest), "--keep_fraction", "0.9", "--output", str(output)])
    assert len(calls) == 5 and output.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "kept.jsonl"]


def test_cli_text_quality_checks_its_arguments_and_output_before_the_work(tmp_path, capsys, monkeypatch):
    import litzoo.framework.curation as curation

    monkeypatch.setattr(curation, "filter_weights", lambda *a, **k: pytest.fail("scored before the checks"))
    manifest = tmp_path / "in.jsonl"
    manifest.write_text('{"text": "Fine text here."}\n')
    (tmp_path / "a_file").write_text("")
    cases = [
        (["--keep_fraction", "0", "--output", str(tmp_path / "o.jsonl")], "--keep_fraction 0.0: the share of documents kept must be in (0, 1]"),
        (["--output", str(tmp_path / "a_file" / "o.jsonl")],
         f"output '{tmp_path / 'a_file' / 'o.jsonl'}' cannot be written: '{tmp_path / 'a_file'}' is a file, not a folder"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["text-quality", "--manifest", str(manifest), *args])
        assert exit_info.value.code == 2 and capsys.readouterr().err == f"litzoo: error: {message}\n"


# ----------------------------------------------------------------------------- one sweep, mergeable statistics, the id-keyed cut
def test_default_weights_equal_the_bigram_lm_formula_line_by_line(corpus):
    documents = [row["text"] for row in corpus]
    lines = [line for document in documents for line in split_lines(document)]
    # reference: the paper's eq. 1 with BigramLM.perplexity evaluated on the retained lines, one line at a time
    reference = filter_weights(documents, perplexity=BigramLM().fit(lines))
    weights = filter_weights(documents)
    assert weights.keys() == reference.keys()
    assert max(abs(weights[name] - reference[name]) for name in weights) < 1e-12
    assert max(reference.values()) > 0.1
    # negative control: another smoothing constant gives other weights
    other = weights_from_statistics([corpus_statistics(documents)], k=1.0)
    assert max(abs(other[name] - reference[name]) for name in weights) > 1e-4


def test_statistics_of_any_split_give_the_same_weights_and_scores_to_the_last_bit(corpus, tmp_path):
    documents = [row["text"] for row in corpus]
    whole = corpus_statistics(documents)
    weights = weights_from_statistics([whole])
    scores = scores_from_statistics(whole, weights)
    rng = np.random.default_rng(0)
    for trial in range(3):
        cuts = np.sort(rng.choice(np.arange(1, len(documents)), size=4 + trial, replace=False))
        parts = [corpus_statistics(part) for part in np.split(np.array(documents, dtype=object), cuts)]
        # through the on-disk arrays (numpy.savez / load without pickle), in another order
        saved = []
        for i, part in enumerate(parts):
            np.savez(tmp_path / f"part{i}.npz", **part.to_arrays())
            with np.load(tmp_path / f"part{i}.npz", allow_pickle=False) as data:
                saved.append(CorpusStatistics.from_arrays({name: data[name] for name in data.files}))
        assert weights_from_statistics(saved[::-1]) == weights
        assert weights_from_statistics(rng.permutation(np.array(saved, dtype=object)).tolist()) == weights
        assert np.array_equal(np.concatenate([scores_from_statistics(part, weights) for part in saved]), scores)
    # and the same as the public functions
    assert filter_weights(documents) == weights
    assert np.array_equal(document_scores(documents, weights), scores)
    np.testing.assert_allclose(scores, prune(documents, perplexity=BigramLM().fit([x for d in documents for x in split_lines(d)]))[1], atol=1e-12)


def test_statistics_count_bigrams_per_pattern_by_hand():
    filters = {"dot": lambda line: line.endswith("."), "caps": lambda line: line[0].isupper()}
    stats = corpus_statistics(["A b.\nc d", "", "A b."], filters)
    assert stats.filters == ("dot", "caps")
    assert stats.patterns.tolist() == [[True, True], [False, False]]
    assert stats.line_pattern.tolist() == [0, 1, 0] and stats.line_tokens.tolist() == [3, 2, 3] and stats.document_lines.tolist() == [2, 0, 1]
    rows = {(int(p), stats.tokens[v], stats.tokens[w]): int(n) for p, v, w, n in
            zip(stats.bigram_pattern, stats.bigram_prev, stats.bigram_next, stats.bigram_count, strict=True)}  # fmt: skip
    assert rows == {(0, "<s>", "A"): 2, (0, "A", "b"): 2, (0, "b", "."): 2, (0, ".", "</s>"): 2,
                    (1, "<s>", "c"): 1, (1, "c", "d"): 1, (1, "d", "</s>"): 1}  # fmt: skip
    # by hand: V = {A, b, ., c, d, </s>, <unk>} = 7, k = 0.1; filter "dot" retains the two "A b." lines
    k, v = 0.1, 7
    log_p = {("<s>", "A"): (2 + k) / (3 + k * v), ("A", "b"): (2 + k) / (2 + k * v), ("b", "."): (2 + k) / (2 + k * v),
             (".", "</s>"): (2 + k) / (2 + k * v), ("<s>", "c"): (1 + k) / (3 + k * v), ("c", "d"): (1 + k) / (1 + k * v),
             ("d", "</s>"): (1 + k) / (1 + k * v)}  # fmt: skip
    nll = {pair: -math.log(p) for pair, p in log_p.items()}
    dot = math.exp(2 * sum(nll[pair] for pair in list(nll)[:4]) / 8)
    every = math.exp((2 * sum(nll[pair] for pair in list(nll)[:4]) + sum(nll[pair] for pair in list(nll)[4:])) / 11)
    assert weights_from_statistics([stats]) == pytest.approx({"dot": (every - dot) / every, "caps": (every - dot) / every}, abs=1e-12)
    with pytest.raises(ValueError, match="non-negative int"):
        corpus_statistics(["A b."], filters, count_tokens=lambda line: 1.5)
    with pytest.raises(ValueError, match="different filters"):
        weights_from_statistics([stats, corpus_statistics(["x"])])


def test_top_fraction_keeps_the_same_ids_whatever_the_order(corpus):
    documents = [row["text"] for row in corpus]
    ids = [f"doc-{i}" for i in range(len(documents))]
    kept, scores, _ = prune(documents, 0.5, seed=4, ids=ids)
    assert (scores == scores[kept].min()).sum() > 2  # the cut falls among tied scores: the ids decide
    rng = np.random.default_rng(1)
    for _ in range(3):
        order = rng.permutation(len(documents))
        again, _, _ = prune([documents[i] for i in order], 0.5, seed=4, ids=[ids[i] for i in order])
        assert sorted(ids[order[i]] for i in again) == sorted(ids[i] for i in kept)
    assert sorted(prune(documents, 0.5, seed=5, ids=ids)[0].tolist()) != sorted(kept.tolist())  # the seed matters
    # the hash is a pure function of (seed, id)
    assert tie_keys(["a", "b"], 3)[1] == tie_keys(["b"], 3)[0] != tie_keys(["b"], 4)[0]
    assert tie_keys(["x"], 0).dtype == np.uint64


def test_top_fraction_breaks_equal_hashes_by_id_and_refuses_a_cut_between_equal_ids(monkeypatch):
    import litzoo.framework.curation.text_quality as text_quality

    monkeypatch.setattr(text_quality, "tie_keys", lambda ids, seed=0: np.zeros(len(ids), dtype=np.uint64))  # every hash collides
    scores = [0.5, 0.9, 0.5, 0.5, 0.1]
    assert text_quality.top_fraction(scores, 0.6, ids=["d", "a", "c", "b", "e"]).tolist() == [1, 2, 3]
    assert text_quality.top_fraction(scores, 0.4, ids=["d", "a", "c", "b", "e"]).tolist() == [1, 3]  # "b" < "c" < "d"
    with pytest.raises(ValueError, match="same id 'x'"):
        text_quality.top_fraction(scores, 0.4, ids=["x", "a", "x", "y", "e"])
    assert text_quality.top_fraction(scores, 0.8, ids=["x", "a", "x", "y", "e"]).tolist() == [0, 1, 2, 3]  # the cut is not between the two
    with pytest.raises(ValueError, match="finite"):
        top_fraction([0.1, math.nan], 0.5)


@pytest.mark.parametrize("collide", [False, True])
def test_select_boundary_equals_the_in_memory_top_fraction(monkeypatch, collide):
    import litzoo.framework.curation.text_quality as text_quality
    from litzoo.framework.curation.text_quality_pool import select_boundary

    rng = np.random.default_rng(2)
    scores = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, 0.3333333333333333], size=500)  # heavy ties
    ids = [f"s{i}" for i in range(len(scores))]
    if collide:  # 64-bit hashes that collide: 4 values only, so the ids decide within (score, hash)
        monkeypatch.setattr(text_quality, "tie_keys", lambda ids, seed=0: np.array([int(i[1:]) % 4 for i in ids], dtype=np.uint64))
    cuts = [0, 7, 7, 130, 420, 500]  # an empty chunk included
    chunks = [(scores[a:b], ids[a:b]) for a, b in itertools.pairwise(cuts)]
    for keep_fraction in (0.01, 0.3, 0.5, 0.77, 1.0):
        expected = {ids[i] for i in text_quality.top_fraction(scores, keep_fraction, seed=9, ids=ids)}
        keep = max(1, round(keep_fraction * len(scores)))
        for limit in (1, 3, 10_000):  # 1: the radix passes go down to the last 16 bits
            loaders = [lambda c=c: (score_keys(c[0]), text_quality.tie_keys(c[1], 9)) for c in chunks]
            boundary = select_boundary(loaders, [len(c[0]) for c in chunks], keep, [lambda c=c: c[1] for c in chunks], limit=limit)
            kept = {i for c, load in zip(chunks, loaders, strict=True) for i, k in zip(c[1], boundary.kept(*load(), lambda c=c: c[1]), strict=True) if k}
            assert kept == expected, (keep_fraction, limit)
            assert boundary.score == scores[[ids.index(i) for i in expected]].min()


# ----------------------------------------------------------------------------- the sharded pipeline
def write_jsonl_shards(folder, corpus, cuts, name="part-{}.jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (a, b) in enumerate(itertools.pairwise(cuts)):
        path = folder / name.format(k)
        path.write_text("".join(json.dumps({"text": corpus[i]["text"], "id": f"doc-{i}", "image": f"img/{i}.png"}) + "\n" for i in range(a, b)))
        paths.append(path)
    return paths


def read_output(manifest):
    return {name: [json.loads(line) for line in Path(path).read_text().splitlines()]
            for name, path in zip(manifest["shards_in"], manifest["shards_out"], strict=True)}  # fmt: skip


def test_prune_pool_equals_prune_on_the_concatenated_corpus(corpus, tmp_path):
    from litzoo.framework.curation.text_quality_pool import prune_pool

    corpus = corpus[:150]
    shards = write_jsonl_shards(tmp_path / "pool", corpus, [0, 40, 41, 100, 150])
    ids = [f"doc-{i}" for i in range(len(corpus))]
    kept, scores, weights = prune([row["text"] for row in corpus], 0.5, seed=7, ids=ids)
    expected = {ids[i]: float(scores[i]) for i in kept}
    results = {}
    for label, order, workers in (("forward", shards, 1), ("reversed", shards[::-1], 1), ("two workers", shards[::-1], 2)):
        out = tmp_path / label
        manifest = prune_pool(order, out, keep_fraction=0.5, id_key="id", seed=7, workers=workers)
        assert manifest["weights"] == weights, label  # bit-identical
        rows = [row for shard_rows in read_output(manifest).values() for row in shard_rows]
        assert {row["id"]: row["quality_score"] for row in rows} == expected, label
        assert manifest["kept_total"] == len(kept) == sum(manifest["kept"]) and manifest["documents_total"] == len(corpus)
        assert manifest["lowest_kept_score"] == min(expected.values())
        results[label] = {Path(p).name: Path(p).read_bytes() for p in manifest["shards_out"]}
        for shard, shard_rows in read_output(manifest).items():  # kept records unchanged, in shard order, paths rebased
            originals = {row["id"]: row for row in map(json.loads, Path(shard).read_text().splitlines())}
            assert [row["id"] for row in shard_rows] == sorted((row["id"] for row in shard_rows), key=lambda i: int(i[4:]))
            for row in shard_rows:
                assert row == {**originals[row["id"]], "image": f"../pool/{originals[row['id']]['image']}", "quality_score": expected[row["id"]]}
    assert results["forward"] == results["reversed"] == results["two workers"]
    assert (scores == min(expected.values())).sum() > sum(1 for s in expected.values() if s == min(expected.values()))  # ties were cut


def test_prune_pool_default_ids_and_negative_control(corpus, tmp_path):
    from litzoo.framework.curation.text_quality_pool import prune_pool

    corpus = corpus[:90]
    shards = write_jsonl_shards(tmp_path / "pool", corpus, [0, 30, 90])
    # without id_key a document's id is "<shard name>:<index in its shard>"
    ids = [f"part-0.jsonl:{i}" for i in range(30)] + [f"part-1.jsonl:{i}" for i in range(60)]
    kept, _, _ = prune([row["text"] for row in corpus], 0.4, ids=ids)
    manifest = prune_pool(shards, tmp_path / "out", keep_fraction=0.4)
    rows = [row for shard_rows in read_output(manifest).values() for row in shard_rows]
    assert sorted(row["id"] for row in rows) == sorted(f"doc-{i}" for i in kept)
    # negative control: the in-memory cut with other ids (the indices) keeps another set among the ties
    assert sorted(prune([row["text"] for row in corpus], 0.4)[0].tolist()) != sorted(kept.tolist())


def test_prune_pool_resumes_where_it_stopped(corpus, tmp_path, monkeypatch):
    import litzoo.framework.curation.text_quality_pool as pool

    corpus = corpus[:90]
    shards = write_jsonl_shards(tmp_path / "pool", corpus, [0, 30, 60, 90])
    reference = pool.prune_pool(shards, tmp_path / "reference", keep_fraction=0.5, id_key="id")
    calls = []

    def recorded(name, function):
        def task(*args):
            calls.append((name, Path(args[0]).name))
            return function(*args)

        return task

    for name in ("_statistics_task", "_score_task", "_write_task"):
        monkeypatch.setattr(pool, name, recorded(name, getattr(pool, name)))
    real_write = pool._write_task

    def killed_at_the_second_shard(*args):
        if sum(1 for call in calls if call[0] == "_write_task") == 1:
            raise KeyboardInterrupt
        return real_write(*args)

    monkeypatch.setattr(pool, "_write_task", killed_at_the_second_shard)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pool.prune_pool(shards, out, keep_fraction=0.5, id_key="id")
    assert not (out / "manifest.json").exists() and (out / "part-0.jsonl").exists() and not (out / "part-1.jsonl").exists()
    assert not [p for p in out.rglob("*") if ".partial" in p.name]  # nothing half-written left behind
    monkeypatch.setattr(pool, "_write_task", real_write)
    calls.clear()
    manifest = pool.prune_pool(shards, out, keep_fraction=0.5, id_key="id")
    assert calls == [("_write_task", "part-1.jsonl"), ("_write_task", "part-2.jsonl")]  # resumed at the first unfinished shard
    assert len(read_output(manifest)) == 3
    assert [Path(p).read_bytes() for p in manifest["shards_out"]] == [Path(p).read_bytes() for p in reference["shards_out"]]
    calls.clear()
    pool.prune_pool(shards, out, keep_fraction=0.5, id_key="id")
    assert calls == []  # everything done: nothing recomputed
    # another argument that changes the scores (the seed of the tie keys): statistics kept, scores and outputs redone
    pool.prune_pool(shards, out, keep_fraction=0.5, id_key="id", seed=1)
    assert {name for name, _ in calls} == {"_score_task", "_write_task"}
    # a run that changes the outputs and is killed: the earlier run's manifest no longer describes them, so it is gone
    monkeypatch.setattr(pool, "_write_task", killed_at_the_second_shard)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        pool.prune_pool(shards, out, keep_fraction=0.4, id_key="id", seed=1)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(pool, "_write_task", real_write)
    # a shard that changed: its statistics are redone (fingerprint: size + mtime), the others kept
    calls.clear()
    shards[1].write_text(shards[1].read_text().replace("doc-3", "doc-X3"))
    os.utime(shards[1], ns=(1, 1))
    pool.prune_pool(shards, out, keep_fraction=0.5, id_key="id", seed=1)
    assert [call for call in calls if call[0] == "_statistics_task"] == [("_statistics_task", "part-1.jsonl")]


def test_prune_pool_refuses_colliding_outputs_and_bad_arguments(corpus, tmp_path):
    from litzoo.framework.curation.text_quality_pool import prune_pool

    a = write_jsonl_shards(tmp_path / "a", corpus[:5], [0, 5])
    b = write_jsonl_shards(tmp_path / "b", corpus[5:10], [0, 5])
    with pytest.raises(LitzooError, match="have the same name"):
        prune_pool([*a, *b], tmp_path / "out")
    with pytest.raises(LitzooError, match="would overwrite the input shard"):
        prune_pool(a, tmp_path / "a")
    with pytest.raises(ValueError, match="keep_fraction"):
        prune_pool(a, tmp_path / "out", keep_fraction=0)
    with pytest.raises(ValueError, match="workers"):
        prune_pool(a, tmp_path / "out", workers=0)
    with pytest.raises(LitzooError, match="does not exist"):
        prune_pool([tmp_path / "missing.jsonl"], tmp_path / "out")
