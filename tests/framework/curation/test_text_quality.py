"""Text quality-based pruning (framework/curation/text_quality.py, `litzoo text-quality`; Sharma et al., arXiv:2405.01582):
every filter on hand-made lines, the weight / line / document formulas by hand, pruning, the bigram LM by hand,
and the score separating junk on the synthetic corpus."""

from __future__ import annotations

import json
import math

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
    digit_punctuation_ratio,
    document_scores,
    filter_weights,
    line_scores,
    prune,
    split_lines,
    top_fraction,
    word_repetition_ratio,
    word_tokens,
)

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
