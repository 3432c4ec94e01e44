"""MetaCLIP curation (framework/curation/metaclip.py, `litzoo curate`): the matching rule on edge cases and against
the brute-force sub-string rule, keep probabilities by hand, and what balancing guarantees."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from litzoo.cli import main
from litzoo.framework.curation import (
    MetadataIndex,
    balance,
    entropy,
    entry_counts,
    entry_probabilities,
    keep_probabilities,
    match_metadata,
    spacing,
)


def brute_force(texts, entries):
    """The rule as stated: ``" e "`` is a sub-string of the spaced, whitespace-normalised text."""
    return [sorted(i for i, e in enumerate(entries) if f" {e} " in spacing(t)) for t in texts]


def test_spacing_wraps_punctuation_and_normalises_whitespace():
    assert spacing("a cat,on\tthe  mat.") == " a cat , on the mat . "
    assert spacing("why?!`x`") == " why ? ! ` x ` "


def test_matching_edge_cases():
    entries = ["New York", "York", "New York City", "cat", "Cat", "U.S.", "on  the", "mat", "hot dog"]
    texts = [
        "I love New York City!",  # overlapping entries all match
        "a cat, a cat and a cat.",  # punctuation-separated, repeated: counted once
        "Cat on the category mat",  # case-sensitive; whole words only ("category" is not "cat")
        "made in the U.S.",  # a wrapped mark inside an entry: never matches
        "on  the mat",  # the double space is normalised in the text, not in the entry
        "hot\ndog",  # newline -> space
        "",
    ]
    got = match_metadata(texts, entries)
    assert got == [[0, 1, 2], [3], [4, 7], [], [7], [8], []]
    assert got == brute_force(texts, entries)
    assert MetadataIndex(entries).unmatchable == [5, 6]


def test_index_equals_the_sub_string_rule_on_random_captions():
    rng = random.Random(0)
    words = ["red", "Red", "car", "cars", "a", "dog", "hot", "New", "York", "x.y", "big"]
    marks = ["", "", "", ",", ".", "!", "?", ";", ":", "`"]
    entries = sorted({" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(60)})
    texts = [
        "".join(rng.choice(words) + rng.choice(marks) + rng.choice([" ", "  ", "\t", "\n"]) for _ in range(rng.randint(0, 12)))
        for _ in range(300)
    ]
    got = match_metadata(texts, entries)
    assert got == brute_force(texts, entries)
    assert sum(map(len, got)) > 200 and sum(len(m) > 1 for m in got) > 50  # the comparison is not vacuous


def test_keep_probabilities_by_hand():
    # entry 0 matched by 4 texts, entry 1 by 2, entry 2 by 1; t = 2 -> p = [0.5, 1, 1]
    matches = [[0], [0, 1], [0], [0, 2], [1], []]
    counts = entry_counts(matches, 4)
    assert counts.tolist() == [4, 2, 1, 0]
    assert entry_probabilities(counts, 2).tolist() == [0.5, 1.0, 1.0, 1.0]
    assert keep_probabilities(matches, 4, 2) == [0.5, 1.0, 0.5, 1.0, 1.0, 0.0]
    # t = 1: p = [1/4, 1/2, 1]; a text with entries 0 and 1 is kept unless both coins fail: 1 - 3/4 * 1/2
    assert keep_probabilities(matches, 4, 1) == pytest.approx([0.25, 1 - 0.75 * 0.5, 0.25, 1.0, 0.5, 0.0])


def zipf_pool(n_entries=300, n_texts=20000, seed=0):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_entries + 1) ** 1.1
    weights /= weights.sum()
    return [sorted(set(rng.choice(n_entries, size=rng.integers(1, 4), p=weights).tolist())) for _ in range(n_texts)]


def test_balancing_guarantees():
    matches, t = zipf_pool(), 50
    n = 300
    before = entry_counts(matches, n)
    kept = balance(matches, n, t, seed=0)
    after = entry_counts([matches[i] for i in kept], n)
    tail = before < t
    # (i) a tail entry keeps every one of its matches: p_e = 1 fires for sure
    assert np.array_equal(after[tail], before[tail]) and tail.sum() > 100
    # (ii) the kept count is a sum of independent Bernoullis with the keep probabilities
    probs = np.asarray(keep_probabilities(matches, n, t))
    mean, sd = probs.sum(), math.sqrt((probs * (1 - probs)).sum())
    assert abs(len(kept) - mean) < 4 * sd, (len(kept), mean, sd)
    # (iii) the distribution over entries flattens; head entries are cut (not to exactly t: co-occurring tail entries keep texts)
    assert entropy(after) > entropy(before) + 0.5
    assert after.max() < 0.5 * before.max()
    # seeded: the same subset every time, another seed another subset
    assert balance(matches, n, t, seed=0) == kept != balance(matches, n, t, seed=1)


def test_single_match_texts_keep_min_count_t_in_expectation():
    matches = [[0]] * 1000 + [[1]] * 30
    kept = [balance(matches, 2, 100, seed=s) for s in range(20)]
    counts = np.array([entry_counts([matches[i] for i in k], 2) for k in kept])
    assert counts[:, 1].tolist() == [30] * 20
    assert abs(counts[:, 0].mean() - 100) < 4 * math.sqrt(1000 * 0.1 * 0.9 / 20)


def test_curate_command_writes_the_curated_manifest(tmp_path, capsys):
    entries = ["cat", "dog", "zebra"]
    (tmp_path / "metadata.json").write_text(json.dumps(entries))
    lines = [{"image": f"{i}.png", "text": "a cat" if i < 40 else ("a dog." if i < 50 else "nothing here")} for i in range(60)]
    lines.append({"image": "z.png", "text": "Zebra, zebra!"})
    (tmp_path / "pool.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "curated.jsonl"
    main(["curate", "--manifest", str(tmp_path / "pool.jsonl"), "--metadata", str(tmp_path / "metadata.json"), "--t", "12", "--output", str(out),
          "--log_dir", str(tmp_path / "tb")])  # fmt: skip
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    printed = capsys.readouterr().out
    assert "61 texts -> 51 matched" in printed and "tail matches kept 11/11" in printed
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["entries"] == ["dog"] for r in kept) == 10 and sum(r["entries"] == ["zebra"] for r in kept) == 1
    assert 0 < sum(r["entries"] == ["cat"] for r in kept) < 40
    assert all(set(r) == {"image", "text", "entries"} for r in kept)
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "text": "a cat"}\nnot json\n')
    with pytest.raises(SystemExit):
        main(["curate", "--manifest", str(tmp_path / "bad.jsonl"), "--metadata", str(tmp_path / "metadata.json"), "--output", str(out)])
    assert "bad.jsonl' line 2 is not JSON" in capsys.readouterr().err


# ---- the metadata file, the output files (issue 18, items 10 and 12) ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("metadata.json", '["cat", "dog"]', ["cat", "dog"]),
        ("entries.txt", '[\n  "cat",\n  "dog"\n]\n', ["cat", "dog"]),  # a JSON list under another name: JSON all the same
        ("metadata.json.bak", '\ufeff ["cat"]', ["cat"]),  # a byte-order mark and a space before the list
        ("entries", "cat\ndog\n\nhot dog\n", ["cat", "dog", "hot dog"]),
    ],
)
def test_metadata_format_is_read_from_the_content(tmp_path, name, content, expected):
    from litzoo.framework.curation import read_metadata

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_metadata(path) == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("entries.txt", '["cat", "dog"', "is not valid JSON: Expecting ',' delimiter (line 1)"),
        ("metadata.json", '{"cat": 3}', "must be a JSON list of strings, got dict"),
        ("entries.list", '["cat", 3]', "must be a JSON list of strings, got a list holding int"),
    ],
)
def test_bad_metadata_is_one_line_naming_the_file(tmp_path, name, content, message):
    from litzoo.framework.curation import read_metadata
    from litzoo.framework.errors import LitzooError

    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LitzooError) as error:
        read_metadata(path)
    assert str(error.value) == f"metadata '{path}' {message}"


def _pool(folder, n=30):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"image": f"images/{i}.png", "text": "a cat" if i % 3 else "a dog"} for i in range(n)]
    rows.append({"image": str(folder / "abs.png"), "text": "a dog"})
    (folder / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pool.jsonl"


def test_curate_reads_a_json_list_not_named_json(tmp_path, capsys):
    manifest = _pool(tmp_path)
    (tmp_path / "entries.txt").write_text(json.dumps(["cat", "dog"]))  # read as one text entry before: 0 kept, rc 0
    main(["curate", "--manifest", str(manifest), "--metadata", str(tmp_path / "entries.txt"), "--output", str(tmp_path / "out.jsonl")])
    assert "31 texts -> 31 matched -> 31 kept" in capsys.readouterr().out
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 31


def test_curated_image_paths_still_name_the_same_files_from_another_folder(tmp_path):
    manifest = _pool(tmp_path / "data")
    (tmp_path / "data" / "metadata.json").write_text(json.dumps(["cat", "dog"]))
    for output in (tmp_path / "curated" / "deep" / "out.jsonl", tmp_path / "data" / "same.jsonl"):
        main(["curate", "--manifest", str(manifest), "--metadata", str(tmp_path / "data" / "metadata.json"), "--output", str(output)])
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        resolved = [(output.parent / r["image"]).resolve() for r in rows]
        assert resolved[:30] == [(tmp_path / "data" / "images" / f"{i}.png").resolve() for i in range(30)]
        assert rows[30]["image"] == str(tmp_path / "data" / "abs.png")  # absolute paths are kept as they are
    assert rows[0]["image"] == "images/0.png"  # written next to the manifest: unchanged
    assert json.loads((tmp_path / "curated" / "deep" / "out.jsonl").read_text().splitlines()[0])["image"] == "../../data/images/0.png"


def test_an_interrupted_curate_keeps_the_previous_output_and_its_side_file(tmp_path, interrupt_writer):
    manifest = _pool(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps(["cat", "dog"]))
    output = tmp_path / "out" / "curated.jsonl"
    args = ["curate", "--manifest", str(manifest), "--metadata", str(tmp_path / "metadata.json"), "--output", str(output)]
    main([*args, "--t", "5"])
    previous, previous_counts = output.read_bytes(), np.load(output.with_suffix(".entry_counts.npy"))
    files = sorted(p.name for p in output.parent.iterdir())
    assert files == ["curated.entry_counts.npy", "curated.jsonl"]

    calls = interrupt_writer("entries", at=10)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--t", "100"])  # another threshold: a different output had it been written
    assert len(calls) == 10
    assert output.read_bytes() == previous and np.array_equal(np.load(output.with_suffix(".entry_counts.npy")), previous_counts)
    assert sorted(p.name for p in output.parent.iterdir()) == files  # no partial or stale file beside them
