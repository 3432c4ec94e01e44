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


# ---- issue 19: the Aho-Corasick matcher, id-keyed coins ------------------------------------------------------------


def old_spacing(text):
    """``spacing`` as it was before the automaton (the reference for the faster one)."""
    for mark in (",", ".", ";", ":", "?", "!", "`"):
        text = text.replace(mark, f" {mark} ")
    return " " + " ".join(text.split()) + " "


class TokenIndex:
    """The former pure-Python matcher, kept as an oracle: entries by their spaced token sequence, a hash lookup per
    (position, length) of the caption's tokens."""

    def __init__(self, entries):
        self.ids, self.longest = {}, 0
        for i, entry in enumerate(entries):
            if entry and old_spacing(entry) == f" {entry} ":
                self.ids.setdefault(entry, []).append(i)
                self.longest = max(self.longest, entry.count(" ") + 1)

    def match(self, text):
        tokens = old_spacing(text).split()
        found = set()
        for start in range(len(tokens)):
            for stop in range(start + 1, min(start + self.longest, len(tokens)) + 1):
                found.update(self.ids.get(" ".join(tokens[start:stop]), ()))
        return sorted(found)


WHITESPACE = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\xa0", "\u3000", "\u2028", "\x0b"]
MARKS = ["", "", "", ",", ".", "!", "?", ";", ":", "`", "，", "?!", "..."]
WORDS = ["red", "Red", "car", "cars", "a", "b", "c", "dog", "hot", "New", "York", "x.y", "café", "東京", "タワー", "naïve", "😀", "big"]


def random_caption(rng, words=WORDS):
    return "".join(rng.choice(words) + rng.choice(MARKS) + rng.choice(WHITESPACE) for _ in range(rng.randint(0, 14)))


def random_entries(rng, n=80):
    entries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(n)]
    entries += ["a b", "b c", "a b c", "東京 タワー", "café", "car"]  # overlapping entries; unicode
    entries += ["car", "a b"]  # duplicates: both copies match
    entries += ["", " car", "car ", "hot  dog", "U.S.", "dog,", "a\tb", "x.y", "naïve\xa0car"]  # never in spaced form
    entries += [", car", "car , dog", "?"]  # spaced punctuation: in spaced form, can match
    rng.shuffle(entries)
    return entries


def test_spacing_equals_the_former_spacing_on_random_strings():
    rng = random.Random(1)
    alphabet = "ab東é😀" + "".join(WRAPPED) + "".join(WHITESPACE) + "，\x1c\x85"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert spacing(text) == old_spacing(text), repr(text)


WRAPPED = (",", ".", ";", ":", "?", "!", "`")


def test_automaton_equals_the_former_index_and_the_sub_string_rule():
    rng = random.Random(2)
    for _trial in range(5):
        entries = random_entries(rng)
        texts = [random_caption(rng) for _ in range(300)] + ["a b c", "car , dog", "café, 東京 タワー!", "?", ""]
        index = MetadataIndex(entries)
        oracle = TokenIndex(entries)
        got = index.match_many(texts)
        assert got == [oracle.match(t) for t in texts]
        # the sub-string rule, but for the empty entry: "  " is a sub-string of a caption without a word, yet it matches nothing
        assert all(g == b for g, b, t in zip(got, brute_force(texts, entries), texts) if t.split())
        assert got == [index.match(t) for t in texts] == match_metadata(iter(texts), entries)  # a generator too
        assert index.unmatchable == [i for i, e in enumerate(entries) if not e or old_spacing(e) != f" {e} "]
        # not vacuous: many multi-entry matches, the duplicates and the overlapping entries among them
        assert sum(map(len, got)) > 300 and sum(len(m) > 2 for m in got) > 30
        both = [i for i, e in enumerate(entries) if e == "car"]
        assert len(both) >= 2 and all(set(both) <= set(m) for m in got if set(both) & set(m))
        assert sum(set(both) <= set(m) for m in got) > 5
        overlap = {entries.index("a b"), entries.index("b c"), entries.index("a b c")}
        assert overlap <= set(got[-5])


def test_matching_is_unchanged_on_a_larger_random_pool():
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(300)]
    entries = sorted({" ".join(rng.choice(vocabulary[:60]) for _ in range(rng.randint(1, 3))) for _ in range(3000)})
    texts = [random_caption(rng, vocabulary[:80]) for _ in range(500)]
    oracle = TokenIndex(entries)
    assert MetadataIndex(entries).match_many(texts) == [oracle.match(t) for t in texts]


def test_an_index_without_matchable_entries_matches_nothing():
    for entries in ([], ["", "U.S."]):
        index = MetadataIndex(entries)
        assert index.match_many(["U.S. and a cat", ""]) == [[], []] and index.match("U.S.") == []
    with pytest.raises(ValueError, match="metadata entry 1 is not a string"):
        MetadataIndex(["cat", 3])


def test_the_index_pickles_to_its_entries_and_matches_alike():
    import pickle

    from litzoo.framework.curation import metaclip

    rng = random.Random(4)
    entries = random_entries(rng)
    texts = [random_caption(rng) for _ in range(200)]
    index = MetadataIndex(entries)
    data = pickle.dumps(index)
    metaclip._UNPICKLED.clear()
    copy = pickle.loads(data)
    assert copy.entries == entries and copy.unmatchable == index.unmatchable
    assert copy.match_many(texts) == index.match_many(texts)
    assert pickle.loads(data)._automaton is copy._automaton  # sent again to the same process: built once
    other = pickle.loads(pickle.dumps(MetadataIndex(["cat"])))
    assert other._automaton is not copy._automaton and other.match("a cat") == [0]
    # the fingerprint tells the entries apart, boundaries included
    assert MetadataIndex(["ab", "c"]).fingerprint() != MetadataIndex(["a", "bc"]).fingerprint()
    assert MetadataIndex(["a", "b"]).fingerprint() == MetadataIndex(["a", "b"]).fingerprint() != MetadataIndex(["b", "a"]).fingerprint()


def reference_coin(seed, caption_id, entry):
    """The coin written out with Python integers: BLAKE2b key of the id, splitmix64 output ``entry + 1``."""
    import hashlib

    mask = 2**64 - 1
    key = int.from_bytes(hashlib.blake2b(caption_id.encode(), digest_size=8, key=seed.to_bytes(8, "little")).digest(), "little")
    z = (key + (entry + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z >> 11) / 2**53


def test_coins_are_a_pure_function_of_seed_id_and_entry():
    from litzoo.framework.curation import caption_coins

    rng = random.Random(5)
    ids = [f"shard-{i // 100}.tar:{i}" for i in range(1000)] + ["é", "😀", ""]
    matches = [sorted(rng.sample(range(5000), rng.randint(0, 6))) for _ in ids]
    coins = caption_coins(ids, matches, seed=7)
    assert [len(c) for c in coins] == [len(m) for m in matches] and all(c.dtype == np.float64 for c in coins)
    for i in (0, 17, 999, 1000, 1001):
        assert coins[i].tolist() == [reference_coin(7, ids[i], e) for e in matches[i]]
    # any subset, in any order, entries listed in any order: the same coin for the same (id, entry)
    order = rng.sample(range(len(ids)), 300)
    reversed_entries = [matches[i][::-1] for i in order]
    subset = caption_coins([ids[i] for i in order], reversed_entries, seed=7)
    for i, c in zip(order, subset):
        assert c.tolist() == coins[i].tolist()[::-1]
    # another seed: other coins; the same id with other entries: other coins
    again = caption_coins(ids, matches, seed=8)
    assert all(not np.any(a == b) for a, b in zip(coins, again) if len(a))
    assert caption_coins(["x"], [[0, 1, 2]], 0)[0].tolist() != caption_coins(["y"], [[0, 1, 2]], 0)[0].tolist()


def test_coins_are_uniform_and_independent():
    from litzoo.framework.curation import caption_coins

    n, k = 10_000, 10
    coins = np.stack(caption_coins([str(i) for i in range(n)], [list(range(k))] * n, seed=0))  # (n, k): 10^5 coins
    flat = coins.ravel()
    assert (flat >= 0).all() and (flat < 1).all() and len(np.unique(flat)) == flat.size
    assert abs(flat.mean() - 0.5) < 0.01
    deciles = np.bincount((flat * 10).astype(int), minlength=10)
    assert np.all(np.abs(deciles - flat.size / 10) < 0.1 * flat.size / 10), deciles
    bins = np.bincount((flat * 100).astype(int), minlength=100)
    chi2 = ((bins - flat.size / 100) ** 2 / (flat.size / 100)).sum()
    assert chi2 < 160  # 99 degrees of freedom: mean 99, sd 14
    # no correlation between the entries of a caption, nor between neighbouring ids for the same entry
    assert abs(np.corrcoef(coins[:, 0], coins[:, 1])[0, 1]) < 0.04
    assert abs(np.corrcoef(coins[:-1, 3], coins[1:, 3])[0, 1]) < 0.04
    other_seed = np.concatenate(caption_coins([str(i) for i in range(n)], [[0]] * n, seed=1))
    assert abs(np.corrcoef(coins[:, 0], other_seed)[0, 1]) < 0.04


def test_keep_decisions_are_the_coins_against_the_probabilities():
    from litzoo.framework.curation import caption_coins, keep_decisions

    rng = random.Random(6)
    ids = [f"id{i}" for i in range(2000)]
    matches = [sorted(rng.sample(range(50), rng.randint(0, 4))) for _ in ids]
    p = np.array([rng.random() for _ in range(50)])
    p[:5], p[5:10] = 0.0, 1.0
    kept = keep_decisions(ids, matches, p, seed=3)
    coins = caption_coins(ids, matches, seed=3)
    assert kept.dtype == bool and kept.tolist() == [bool(np.any(c < p[m])) if m else False for c, m in zip(coins, matches)]
    assert 0.2 < kept.mean() < 0.9
    assert all(kept[i] for i, m in enumerate(matches) if set(m) & set(range(5, 10)))  # p = 1: kept for sure
    assert not any(kept[i] for i, m in enumerate(matches) if m and set(m) <= set(range(5)))  # p = 0 only: never
    # the coins of a caption's entries are independent: two entries of p = 1/2 keep 3/4 of the captions
    both = keep_decisions([f"c{i}" for i in range(4000)], [[0, 1]] * 4000, np.array([0.5, 0.5]), seed=0)
    assert abs(both.mean() - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)
    with pytest.raises(ValueError, match="appears more than once"):
        keep_decisions(["a", "b", "a"], [[0], [1], [2]], p, 0)
    with pytest.raises(ValueError, match="caption ids must be strings"):
        keep_decisions(["a", 1], [[0], [1]], p, 0)
    with pytest.raises(ValueError, match="2 caption ids for 3"):
        keep_decisions(["a", "b"], [[0], [1], [2]], p, 0)
    with pytest.raises(ValueError, match="entry id 50 is out of range"):
        keep_decisions(["a"], [[50]], p, 0)
    with pytest.raises(ValueError, match="finite numbers in"):
        keep_decisions(["a"], [[0]], np.array([np.nan]), 0)
    with pytest.raises(ValueError, match="seed must be"):
        keep_decisions(["a"], [[0]], p, -1)


def test_balance_of_a_shard_with_the_pool_counts_keeps_what_the_whole_pool_keeps():
    matches, n, t = zipf_pool(n_texts=6000), 300, 40
    ids = [f"pool:{i}" for i in range(len(matches))]
    counts = entry_counts(matches, n)
    whole = set(balance(matches, n, t, seed=2, ids=ids))
    assert balance(matches, n, t, seed=2, ids=ids, counts=counts) == sorted(whole)
    assert balance(matches, n, t, seed=2) == balance(matches, n, t, seed=2, ids=[str(i) for i in range(len(matches))])
    rng = random.Random(7)
    shards = [list(range(s, len(matches), 3)) for s in range(3)]
    for shard in shards:
        rng.shuffle(shard)
        kept = balance([matches[i] for i in shard], n, t, seed=2, ids=[ids[i] for i in shard], counts=counts)
        assert {shard[j] for j in kept} == {i for i in shard if i in whole}
    # with the shard's own counts instead of the pool's, the heads are cut far less: more is kept
    local = balance([matches[i] for i in shards[0]], n, t, seed=2, ids=[ids[i] for i in shards[0]])
    assert len(local) > 1.15 * len(whole & set(shards[0]))
    with pytest.raises(ValueError, match="counts must be 300 non-negative"):
        balance(matches, n, t, counts=counts[:-1])
    with pytest.raises(ValueError, match="entry id 300 is out of range"):
        entry_counts([[300]], n)
