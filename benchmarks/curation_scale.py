"""Curation at scale: MetaCLIP's sub-string matcher, the official ones against litzoo's, on one and two processes.

    .venv/bin/python benchmarks/curation_scale.py      # or as part of `make bench`

Data (generated here, seeded, the same every run):

- a vocabulary of 100,000 distinct random lowercase words of 3–10 letters; the word of rank r has Zipf weight 1/r;
- metadata: 500,000 distinct entries of 1–3 words: the 80,000 most frequent words alone (WordNet lemmas and Wikipedia
  unigrams), then 2- and 3-word entries whose words are drawn by Zipf weight (Wikipedia bigrams and titles: frequent
  words sit in many entries), until 500,000;
- captions: 50,000 captions of 5–25 words drawn by Zipf weight, a punctuation mark (``, . ; : ! ?``) after a word with
  probability 0.1, the first word capitalised in half of them (a case-sensitive miss). A caption matches about 17
  entries this way (reported below), overlapping ones included.

Matchers (facebookresearch/MetaCLIP, ``metaclip/metaclip1/substr_matching.py`` and ``substr_matching_ahocorasick.py``):

(a) the official brute force: the entries spaced once (``f" {entry} "``), then per caption the official ``spacing``
    and ``if entry in text`` for every entry, in entry order; timed on the first 20 captions only;
(b) the official Aho-Corasick matcher, written here from that file: a ``pyahocorasick`` automaton with
    ``add_word(f" {entry} ", (idx, f" {entry} "))`` for every entry, then per caption the official ``spacing``, a loop
    ``for end_index, (entry_id, original_value) in automaton.iter(text)`` adding the ids to a set, and ``list(set)``;
(c) litzoo's ``MetadataIndex.match_many`` on all captions in this process;
(d) the same on 2 worker processes (``multiprocessing``, "spawn": the index is pickled to each worker once, at start,
    and built there), every block of captions sent as one chunk per worker, the matches sent back as CSR arrays
    (entries per caption, entry ids), the form pass 1 of a sharded curation stores; the conversion is the workers'.

(b), (c) and (d) are timed in ``ROUNDS`` rounds over all captions; a round goes block by block (5,000 captions), each
block matched by the three arms back to back in an order that rotates from block to block, so that the load of a shared
machine, which drifts over seconds, weighs on the three alike. A round's time per arm is the sum over its blocks; the
rates are medians over the rounds, the ratios are ratios of the medians (wall clock; per core also from the CPU time of
this process, which the load of other processes inflates less). The match sets of (b), (c) and (d) are compared on
every caption, and (a)'s on its 20. On this data the official and litzoo's rules agree exactly: litzoo's spacing also
collapses whitespace runs, which changes a match only for an entry holding a wrapped punctuation mark or a caption with
a double space or an unusual whitespace character, and the entries here are distinct (the official automaton keeps
the last of identical entries only).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from litzoo.framework.curation import MetadataIndex  # noqa: E402

# `common` (which imports torch) is imported inside the functions that need it: the spawned workers import this
# module again, and they need numpy and the index only.

NUM_ENTRIES = 500_000
NUM_CAPTIONS = 50_000
VOCABULARY = 100_000
UNIGRAM_ENTRIES = 80_000
BRUTE_FORCE_CAPTIONS = 20
WORKERS = 2
BLOCK = 5_000
ROUNDS = 5
GOAL_PER_CORE = 1.0
GOAL_WORKERS = 1.8
MARKS = (",", ".", ";", ":", "!", "?")


def synthetic_pool(num_entries: int = NUM_ENTRIES, num_captions: int = NUM_CAPTIONS, vocabulary: int = VOCABULARY,
                   seed: int = 0) -> tuple[list[str], list[str]]:  # fmt: skip
    """(metadata entries, captions) as the module docstring says."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < vocabulary:
        lengths = rng.integers(3, 11, size=vocabulary)
        for row, n in zip(letters[rng.integers(0, 26, size=(vocabulary, 10))], lengths.tolist()):
            word = row[:n].tobytes().decode()
            if word not in seen and len(words) < vocabulary:
                seen.add(word)
                words.append(word)
    weights = 1.0 / np.arange(1, vocabulary + 1)
    weights /= weights.sum()
    entries = words[: min(UNIGRAM_ENTRIES, num_entries)]
    distinct = set(entries)
    while len(entries) < num_entries:
        sizes = rng.integers(2, 4, size=100_000).tolist()
        for row, n in zip(rng.choice(vocabulary, size=(100_000, 3), p=weights).tolist(), sizes):
            entry = " ".join(words[i] for i in row[:n])
            if entry not in distinct and len(entries) < num_entries:
                distinct.add(entry)
                entries.append(entry)
    lengths = rng.integers(5, 26, size=num_captions)
    total = int(lengths.sum())
    drawn = rng.choice(vocabulary, size=total, p=weights).tolist()
    marked = (rng.random(total) < 0.1).tolist()
    which = rng.integers(0, len(MARKS), size=total).tolist()
    capitalised = (rng.random(num_captions) < 0.5).tolist()
    captions, position = [], 0
    for c, n in enumerate(lengths.tolist()):
        tokens = [words[drawn[j]] + (MARKS[which[j]] if marked[j] else "") for j in range(position, position + n)]
        if capitalised[c]:
            tokens[0] = tokens[0].capitalize()
        captions.append(" ".join(tokens))
        position += n
    return entries, captions


# ---- the official matchers, written from facebookresearch/MetaCLIP metaclip/metaclip1/substr_matching*.py ------------


def official_spacing(text: str) -> str:
    """The official ``spacing``: padded, 7 marks wrapped in spaces, tab / newline / carriage return to spaces."""
    spaced_text = f" {text} "
    for punct_to_wrap in [",", ".", ";", ":", "?", "!", "`"]:
        spaced_text = spaced_text.replace(punct_to_wrap, f" {punct_to_wrap} ")
    for char_to_space in ["\t", "\n", "\r"]:
        spaced_text = spaced_text.replace(char_to_space, " ")
    return spaced_text


def official_brute_force(text: str, spaced_metadata: list[str]) -> list[int]:
    """The official ``substr_matching``: every spaced entry tested with ``in``."""
    text = official_spacing(text)
    matched_entry_ids = []
    for entry_id, entry in enumerate(spaced_metadata):
        if entry in text:
            matched_entry_ids.append(entry_id)
    return matched_entry_ids


def official_automaton(metadata: list[str]):
    """The official ``initialize_automaton``: every spaced entry, valued (id, spaced entry)."""
    import ahocorasick

    spaced_metadata = [f" {entry} " for entry in metadata]
    automaton = ahocorasick.Automaton()
    for idx, key in enumerate(spaced_metadata):
        automaton.add_word(key, (idx, key))
    automaton.make_automaton()
    return automaton


def official_ac_matching(text: str, automaton) -> list[int]:
    """The official Aho-Corasick ``substr_matching``: a set of the ids of every occurrence, as a list."""
    text = official_spacing(text)
    matched_entry_ids = set()
    for end_index, (entry_id, original_value) in automaton.iter(text):  # noqa: B007 (the official names)
        matched_entry_ids.add(entry_id)
    return list(matched_entry_ids)


# ---- litzoo on worker processes ---------------------------------------------------------------------------------------

_WORKER_INDEX: MetadataIndex | None = None


def _start_worker(index: MetadataIndex, ready) -> None:
    """Pool initializer: keep the index (unpickled, so built, here) and say so."""
    global _WORKER_INDEX
    _WORKER_INDEX = index
    ready.put(os.getpid())


def _match_chunk(captions: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """The matches of a chunk as CSR (entries per caption, the entry ids one after the other): two arrays to send back
    instead of a list per caption, the form pass 1 of a sharded curation stores; and the worker's CPU seconds."""
    start = time.process_time()
    matches = _WORKER_INDEX.match_many(captions)
    lengths = np.fromiter(map(len, matches), dtype=np.int64, count=len(matches))
    flat = np.fromiter(itertools.chain.from_iterable(matches), dtype=np.int64, count=int(lengths.sum()))
    return lengths, flat, time.process_time() - start


def _from_csr(parts: list[tuple[np.ndarray, np.ndarray, float]]) -> list[list[int]]:
    return [ids.tolist() for lengths, flat, _ in parts for ids in np.split(flat, np.cumsum(lengths)[:-1])]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(entries: list[str], captions: list[str], rounds: int = ROUNDS, workers: int = WORKERS, block: int = BLOCK) -> dict:
    """Build times, the brute force on its subset, then the rounds of (b), (c), (d); match sets compared.

    A round passes over all captions block by block, and every block is matched by the three arms back to back
    (the order rotating from block to block): on a shared machine the load drifts over seconds, and this way every
    arm sees the same drift. A round's time per arm is the sum over its blocks (wall clock, and CPU time of this
    process for the arms that run in it)."""
    build_official, automaton = _timed(lambda: official_automaton(entries))
    build_litzoo, index = _timed(lambda: MetadataIndex(entries))

    spaced_metadata = [f" {entry} " for entry in entries]
    subset = captions[:BRUTE_FORCE_CAPTIONS]
    brute_seconds, brute = _timed(lambda: [official_brute_force(text, spaced_metadata) for text in subset])

    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    blocks = [captions[i : i + block] for i in range(0, len(captions), block)]
    start = time.perf_counter()
    with context.Pool(workers, initializer=_start_worker, initargs=(index, ready)) as pool:
        pids = {ready.get(timeout=600) for _ in range(workers)}
        start_workers = time.perf_counter() - start

        def on_workers(texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, float]]:
            size = -(-len(texts) // workers)  # one chunk per worker
            return pool.map(_match_chunk, [texts[i : i + size] for i in range(0, len(texts), size)], chunksize=1)

        arms = {
            "official_ac": lambda texts: [official_ac_matching(text, automaton) for text in texts],
            "litzoo_1": index.match_many,
            "litzoo_workers": on_workers,
        }
        names = list(arms)
        wall = {name: [0.0] * rounds for name in names}
        cpu = {name: [0.0] * rounds for name in names}
        worker_cpu = [0.0] * rounds  # the CPU seconds of the workers, summed
        first: dict[str, list[list[int]]] = {name: [] for name in names}
        for r in range(rounds):
            for k, texts in enumerate(blocks):
                shift = (r + k) % len(names)
                for name in names[shift:] + names[:shift]:
                    wall_start, cpu_start = time.perf_counter(), time.process_time()
                    out = arms[name](texts)
                    wall[name][r] += time.perf_counter() - wall_start
                    cpu[name][r] += time.process_time() - cpu_start
                    if name == "litzoo_workers":
                        worker_cpu[r] += sum(part[2] for part in out)
                    if r == 0:
                        first[name].extend(_from_csr(out) if name == "litzoo_workers" else out)
    official_sets = [sorted(m) for m in first["official_ac"]]
    rates = {name: len(captions) / statistics.median(s) for name, s in wall.items()}
    cpu_rates = {name: len(captions) / statistics.median(cpu[name]) for name in ("official_ac", "litzoo_1")}
    cpu_rates["litzoo_workers"] = len(captions) / statistics.median(worker_cpu)  # per CPU second of the workers
    return {
        "entries": len(entries), "captions": len(captions), "rounds": rounds, "workers": workers, "block": block,
        "worker_processes": len(pids), "cores": cores(), "load_at_start": load_average(),
        "mean_matches": float(np.mean([len(m) for m in first["litzoo_1"]])),
        "matched_fraction": float(np.mean([bool(m) for m in first["litzoo_1"]])),
        "build_seconds": {"official_ac": build_official, "litzoo": build_litzoo, "litzoo_workers": start_workers},
        "brute_force": {"captions": len(subset), "seconds": brute_seconds, "rate": len(subset) / brute_seconds,
                        "equal": brute == official_sets[: len(subset)] == first["litzoo_1"][: len(subset)]},
        "round_seconds": wall, "round_cpu_seconds": cpu, "round_worker_cpu_seconds": worker_cpu, "rates": rates, "cpu_rates": cpu_rates,
        "equal_official_litzoo": official_sets == first["litzoo_1"], "equal_litzoo_workers": first["litzoo_1"] == first["litzoo_workers"],
        "ratio_per_core": rates["litzoo_1"] / rates["official_ac"], "ratio_per_core_cpu": cpu_rates["litzoo_1"] / cpu_rates["official_ac"],
        "ratio_workers": rates["litzoo_workers"] / rates["litzoo_1"],
    }  # fmt: skip


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> str:
    """The 1 / 5 / 15-minute load averages, as text."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> dict:
    start = time.perf_counter()
    generation, (entries, captions) = _timed(synthetic_pool)
    results = {**measure(entries, captions), "generation_seconds": generation}
    results["seconds"] = time.perf_counter() - start
    return results


def format_section(results: dict) -> str:
    import common

    r, rates, build, brute = results, results["rates"], results["build_seconds"], results["brute_force"]

    def spread(name: str) -> str:
        per_round = sorted(r["captions"] / s for s in r["round_seconds"][name])
        return f"{per_round[0]:,.0f}–{per_round[-1]:,.0f}"

    def cpu(name: str) -> str:
        return f"{r['cpu_rates'][name]:,.0f}" if name in r["cpu_rates"] else "—"

    rows = [
        ['official MetaCLIP brute force (`" e " in text` per entry)', f"{brute['rate']:,.1f} (on {brute['captions']} captions)", "—", "—", "—", "—"],
        ["official MetaCLIP Aho-Corasick (`pyahocorasick`)", f"{rates['official_ac']:,.0f}", spread("official_ac"), cpu("official_ac"),
         f"{build['official_ac']:.1f} s", "1.00"],
        ["litzoo `MetadataIndex.match_many`, 1 process", f"{rates['litzoo_1']:,.0f}", spread("litzoo_1"), cpu("litzoo_1"), f"{build['litzoo']:.1f} s",
         f"{r['ratio_per_core']:.2f}"],
        [f"litzoo `MetadataIndex.match_many`, {r['workers']} worker processes", f"{rates['litzoo_workers']:,.0f}", spread("litzoo_workers"),
         f"{cpu('litzoo_workers')} (per worker CPU second)",
         f"{build['litzoo_workers']:.1f} s (start, index sent and built)", f"{rates['litzoo_workers'] / rates['official_ac']:.2f}"],
    ]  # fmt: skip
    same = r["equal_official_litzoo"] and r["equal_litzoo_workers"] and brute["equal"]
    lines = [
        "## Curation at scale: MetaCLIP matching throughput",
        "",
        f"Same run, same data: {r['entries']:,} synthetic metadata entries of 1–3 words and {r['captions']:,} captions of 5–25 words "
        f"(a seeded Zipf vocabulary of {VOCABULARY:,} words; a caption matches {r['mean_matches']:.1f} entries on average, "
        f"{r['matched_fraction']:.0%} match at least one; `benchmarks/curation_scale.py` says how they are made). The official "
        "matchers are written from facebookresearch/MetaCLIP `metaclip/metaclip1/substr_matching.py` and "
        "`substr_matching_ahocorasick.py`: the same automaton contents (`\" e \"` valued `(id, \" e \")`) and loop. "
        f"Captions/s: median of {r['rounds']} rounds over all captions, each round going block by block ({r['block']:,} captions) "
        "with the three arms back to back on every block (range over the rounds beside it; CPU: from the CPU time of the "
        f"measuring process); the brute force on the first {brute['captions']} captions only. {r['cores']} cores, shared "
        f"(load average at start: {r['load_at_start']}).",
        "",
        common.markdown_table(["matcher", "captions/s (match)", "range over rounds", "captions/s per CPU second", "build",
                               "vs official Aho-Corasick"], rows),  # fmt: skip
        "",
        f"- Identical match sets: official Aho-Corasick = litzoo 1 process = litzoo {r['workers']} workers on all "
        f"{r['captions']:,} captions, and = the brute force on its {brute['captions']}: {common.yes_no(same)}.",
        f"- Per core, litzoo / official Aho-Corasick: **{r['ratio_per_core']:.2f}** wall clock, {r['ratio_per_core_cpu']:.2f} CPU time "
        f"(goal ≥ {GOAL_PER_CORE}: {'met' if r['ratio_per_core'] >= GOAL_PER_CORE else 'not met'}).",
        f"- {r['workers']} workers / 1 process: **{r['ratio_workers']:.2f}** (goal ≥ {GOAL_WORKERS}: "
        f"{'met' if r['ratio_workers'] >= GOAL_WORKERS else 'not met'}; the workers and this process share the machine's "
        f"{r['cores']} cores with whatever else runs, and the captions and matches travel through pipes; per CPU second a worker "
        f"matches {r['cpu_rates']['litzoo_workers'] / r['cpu_rates']['litzoo_1']:.2f}× what the single process does).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    out = main()
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
