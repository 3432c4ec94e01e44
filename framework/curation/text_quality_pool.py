"""Text quality-based pruning of a corpus in shards (Sharma, Padthe et al., arXiv:2405.01582), in parallel.

The algorithm is :mod:`litzoo.framework.curation.text_quality`'s (filter weights from the perplexity of a bigram LM
fitted on the corpus, document scores, the top ``keep_fraction``); this file runs it over a list of shards (JSONL,
gzip JSONL, Parquet, WebDataset tar: :mod:`litzoo.framework.data.shards`) that need not fit in memory together, and
gives the same weights, the same scores (to the last bit) and the same kept documents as
:func:`~litzoo.framework.curation.text_quality.prune` on the concatenated corpus, whatever the number of workers
or the order of the shards:

1. **statistics** (per shard, parallel): one streamed sweep over the shard's documents gives its
   :class:`~litzoo.framework.curation.text_quality.CorpusStatistics` (bigram counts per line pattern, per line its
   pattern and token count) and its document ids, saved to ``.text_quality/statistics/<shard name>.npz``;
2. **weights** (reduce): the per-shard counts are merged (their sums do not depend on the split) and the weights
   computed from them (:func:`~litzoo.framework.curation.text_quality.weights_from_statistics`);
3. **scores** (per shard, parallel): each document's score from its shard's statistics, and its tie key (a hash of
   the seed and its id), saved to ``.text_quality/scores/<shard name>.npy`` and ``<shard name>.ties.npy``;
4. **cut**: the boundary of the top ``round(keep_fraction * N)`` documents in the order (score descending, tie key,
   id), found by a radix selection over the score files (16 bits per pass, then the few remaining candidates in
   memory), so memory stays bounded by one shard's scores, not the pool's;
5. **write** (per shard, parallel): the shard is read again and its documents ranked at or above the boundary are
   written to ``<output_dir>/<shard name>`` in the shard's own format, plus ``"quality_score"`` (for a WebDataset
   sample, in its ``.json`` member), relative paths in ``path_keys`` rebased onto ``output_dir``; then
   ``manifest.json``.

Every file is written to a temporary sibling and renamed into place. A run killed and started again with the same
arguments resumes: each pass skips the shards whose file is there with the same fingerprint (the shard's size and
modification time, and the arguments that shaped the file). Workers are local processes started with "spawn"
(:class:`concurrent.futures.ProcessPoolExecutor`); the per-shard functions are top-level, and their arguments
(including custom filters and ``count_tokens``) must be picklable.

Memory: a worker holds one shard's statistics; the parent holds the merged bigram table of the whole corpus (the
LM that the weights are defined by) while it computes the weights, and one shard's scores at a time otherwise.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from litzoo.framework.curation.text_quality import (
    CorpusStatistics,
    LineFilter,
    corpus_statistics,
    resolve_filters,
    score_keys,
    score_of_key,
    scores_from_statistics,
    tie_keys,
    weights_from_statistics,
)
from litzoo.framework.data.jsonl import rebase_paths
from litzoo.framework.data.shards import ShardWriter, get_text, iter_samples, shard_format
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError

#: the folder of ``output_dir`` that holds the passes' per-shard files
STATE_FOLDER = ".text_quality"
#: the cut gathers its remaining candidates in memory once at most this many documents match its prefix
CANDIDATE_LIMIT = 1 << 20
#: a progress function as :func:`litzoo.cli.console.progress`: ``progress(iterable, description, total=, unit=)``
Progress = Callable[..., Iterable[Any]]

_DIGITS, _DIGIT_BITS = 8, 16  # the 128-bit key (score key, tie key) is selected 16 bits at a time


# ---- the cut -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Boundary:
    """The last kept document's rank key: a document is kept when its ``(score key, tie key)`` is smaller, or equal
    and (when ``id`` is not None: the key is shared by several documents) its id is not greater than ``id``."""

    score_key: int
    tie: int
    id: str | None

    @property
    def score(self) -> float:
        """The lowest kept score."""
        return score_of_key(self.score_key)

    def kept(self, keys: np.ndarray, ties: np.ndarray, ids: Callable[[], Sequence[str]]) -> np.ndarray:
        """A boolean per document of one shard; ``ids()`` is called only when a document has the boundary's key."""
        boundary, tie = np.uint64(self.score_key), np.uint64(self.tie)
        kept = (keys < boundary) | ((keys == boundary) & (ties < tie))
        equal = np.flatnonzero((keys == boundary) & (ties == tie))
        if len(equal):
            if self.id is None:
                kept[equal] = True
            else:
                names = ids()
                kept[equal] = [names[i] <= self.id for i in equal]
        return kept


def _prefix_mask(keys: np.ndarray, ties: np.ndarray, level: int, prefix: int) -> np.ndarray:
    """Documents whose 128-bit key ``(keys, ties)`` starts with the ``level`` 16-bit digits of ``prefix``."""
    if level == 0:
        return np.ones(len(keys), dtype=bool)
    if level <= _DIGITS // 2:
        return keys >> np.uint64(64 - _DIGIT_BITS * level) == np.uint64(prefix)
    low = _DIGIT_BITS * (level - _DIGITS // 2)
    return (keys == np.uint64(prefix >> low)) & (ties >> np.uint64(64 - low) == np.uint64(prefix & ((1 << low) - 1)))


def _digit(keys: np.ndarray, ties: np.ndarray, level: int) -> np.ndarray:
    source = keys if level < _DIGITS // 2 else ties
    return ((source >> np.uint64(64 - _DIGIT_BITS * (level % (_DIGITS // 2) + 1))) & np.uint64(0xFFFF)).astype(np.intp)


def select_boundary(
    chunks: Sequence[Callable[[], tuple[np.ndarray, np.ndarray]]],
    sizes: Sequence[int],
    keep: int,
    ids: Sequence[Callable[[], Sequence[str]]],
    limit: int | None = None,
) -> Boundary:
    """The :class:`Boundary` of the ``keep`` first documents of all ``chunks`` in the order (score key, tie key, id).

    ``chunks[c]()`` loads chunk ``c``'s ``(score keys, tie keys)`` (uint64 arrays, :func:`score_keys` and
    :func:`tie_keys`; ``sizes[c]`` long) and ``ids[c]()`` its ids. While more than ``limit`` documents share the key prefix found so far,
    one pass over the chunks histograms the next 16 bits; the remaining candidates are then sorted in memory.

    Raises:
        ValueError: ``keep`` is not in [1, number of documents], or the cut falls between two documents with the same
            score and the same id.
    """
    limit = CANDIDATE_LIMIT if limit is None else limit
    if len(sizes) != len(chunks) or len(ids) != len(chunks):
        raise ValueError(f"{len(chunks)} chunks, {len(sizes)} sizes and {len(ids)} id loaders")
    total = sum(sizes)
    if not 1 <= keep <= total:
        raise ValueError(f"keep must be in [1, {total}], got {keep}")
    level, prefix, rank, matching = 0, 0, keep, total  # rank: 1-based, among the documents matching the prefix
    while level < _DIGITS and matching > limit:
        histogram = np.zeros(1 << _DIGIT_BITS, dtype=np.int64)
        for chunk in chunks:
            keys, ties = chunk()
            mask = _prefix_mask(keys, ties, level, prefix)
            histogram += np.bincount(_digit(keys[mask], ties[mask], level), minlength=1 << _DIGIT_BITS)
        cumulative = np.cumsum(histogram)
        digit = int(np.searchsorted(cumulative, rank))
        rank -= int(cumulative[digit - 1]) if digit else 0
        matching = int(histogram[digit])
        prefix, level = (prefix << _DIGIT_BITS) | digit, level + 1
    found = []
    for c, chunk in enumerate(chunks):
        keys, ties = chunk()
        where = np.flatnonzero(_prefix_mask(keys, ties, level, prefix))
        found.append((keys[where], ties[where], np.full(len(where), c), where))
    keys, ties, chunk_of, position = (np.concatenate(column) for column in zip(*found, strict=True))
    order = np.lexsort((ties, keys))
    last = order[rank - 1]
    run = order[(keys[order] == keys[last]) & (ties[order] == ties[last])]
    boundary = Boundary(int(keys[last]), int(ties[last]), None)
    if len(run) == 1:
        return boundary
    loaded: dict[int, Sequence[str]] = {}
    names = []
    for i in run:
        if int(chunk_of[i]) not in loaded:
            loaded[int(chunk_of[i])] = ids[int(chunk_of[i])]()
        names.append(loaded[int(chunk_of[i])][int(position[i])])
    names.sort()
    cut = (rank - 1) - int(np.flatnonzero(order == run[0])[0])  # the boundary's place within its run
    if cut + 1 < len(names) and names[cut] == names[cut + 1]:
        raise ValueError(f"the cut falls between documents with the same score and the same id {names[cut]!r}: ids must be unique")
    return Boundary(boundary.score_key, boundary.tie, names[cut] if cut + 1 < len(names) else None)


# ---- per-shard files -------------------------------------------------------------------------------------------------
def _pack_strings(strings: Sequence[str]) -> dict[str, np.ndarray]:
    data = [s.encode("utf-8", "surrogatepass") for s in strings]
    return {"ids": np.frombuffer(b"".join(data), dtype=np.uint8), "id_offsets": np.cumsum([0, *map(len, data)], dtype=np.int64)}


def _unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = bytes(blob)
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in itertools.pairwise(offsets.tolist())]


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _stored_fingerprint(path: Path) -> str | None:
    """The fingerprint a pass stored with its file, or None when there is none (absent, unreadable, partial)."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return str(data["fingerprint"])
        return json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def _check_unchanged(shard: Path, fingerprint: str) -> None:
    """The shard still has the size and modification time its pass-1 fingerprint recorded."""
    recorded = json.loads(fingerprint)
    stat = shard.stat()
    if (stat.st_size, stat.st_mtime_ns) != (recorded["size"], recorded["mtime_ns"]):
        raise LitzooError(f"shard '{shard}' changed while it was pruned (size or modification time): run again once it is complete")


def _statistics_task(shard: str, target: str, fingerprint: str, filters: Any, text_key: str, id_key: str | None, count_tokens: Any) -> int:
    """Pass 1 on one shard: its statistics and ids, saved to ``target``; returns its number of documents."""
    ids: list[str] = []

    def texts() -> Iterator[str]:
        for sample in iter_samples(shard, text_key=text_key, id_key=id_key):
            ids.append(sample.key)
            yield get_text(sample.record, text_key)

    statistics = corpus_statistics(texts(), filters, count_tokens)
    _check_unchanged(Path(shard), fingerprint)
    with write_files_atomically(target) as (staged,):
        np.savez(staged, **statistics.to_arrays(), **_pack_strings(ids), fingerprint=np.array(fingerprint))
    return len(ids)


def _score_task(statistics_file: str, scores_file: str, ties_file: str, stamp: str, fingerprint: str, weights: dict[str, float], seed: int) -> int:
    """Pass 3 on one shard: its documents' scores and tie keys; returns its number of documents."""
    data = _load(Path(statistics_file))
    scores = scores_from_statistics(CorpusStatistics.from_arrays(data), weights)
    ties = tie_keys(_unpack_strings(data["ids"], data["id_offsets"]), seed)
    with write_files_atomically(scores_file, ties_file, stamp) as (staged_scores, staged_ties, staged_stamp):
        np.save(staged_scores, scores)
        np.save(staged_ties, ties)
        staged_stamp.write_text(json.dumps({"fingerprint": fingerprint}), encoding="utf-8")
    return len(scores)


def _scored_record(record: dict, score: float, kind: str, shard: Path, output_dir: Path, path_keys: Sequence[str], key: str) -> dict:
    if kind == "tar":  # a WebDataset sample: the score goes into its .json member, made when it has none
        meta = record.get("json", {})
        if not isinstance(meta, dict):
            raise LitzooError(f"shard '{shard}' sample '{key}': its .json member is not an object, so 'quality_score' cannot be added to it")
        return {**record, "json": {**meta, "quality_score": score}}
    return {**rebase_paths(record, path_keys, shard.parent, output_dir), "quality_score": score}


def _write_task(shard: str, output: str, statistics_file: str, scores_file: str, ties_file: str, stamp: str, fingerprint: str,
                shard_fingerprint: str, boundary: Boundary, text_key: str, id_key: str | None, path_keys: Sequence[str]) -> tuple[int, int]:  # fmt: skip
    """Pass 5 on one shard: its kept documents written to ``output``; returns (documents, kept)."""
    shard_path, output_path = Path(shard), Path(output)
    _check_unchanged(shard_path, shard_fingerprint)
    scores, ties = np.load(scores_file, allow_pickle=False), np.load(ties_file, allow_pickle=False)
    data = _load(Path(statistics_file))
    ids = _unpack_strings(data["ids"], data["id_offsets"])
    kept = boundary.kept(score_keys(scores), ties, lambda: ids)
    kind = shard_format(shard_path)
    seen = 0
    with ShardWriter(output_path) as writer:
        for sample in iter_samples(shard_path, text_key=text_key, id_key=id_key):
            n = sample.position
            if n >= len(ids) or sample.key != ids[n]:
                raise LitzooError(f"shard '{shard_path}' changed while it was pruned: sample {n} is '{sample.key}', its statistics say "
                                  f"'{ids[n] if n < len(ids) else '(no such sample)'}'; remove '{statistics_file}' and run again")  # fmt: skip
            seen += 1
            if kept[n]:
                writer.write(_scored_record(sample.record, float(scores[n]), kind, shard_path, output_path.parent, path_keys, sample.key))
        if seen != len(ids):
            raise LitzooError(f"shard '{shard_path}' changed while it was pruned: it has {seen} samples, its statistics {len(ids)}")
    summary = {"fingerprint": fingerprint, "documents": len(ids), "kept": int(kept.sum())}
    with write_files_atomically(stamp) as (staged,):
        staged.write_text(json.dumps(summary), encoding="utf-8")
    return len(ids), int(kept.sum())


# ---- running the passes ----------------------------------------------------------------------------------------------
class _Workers:
    """Runs per-shard jobs here (one worker) or in a pool of spawned processes, started at the first parallel pass."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def run(self, function: Callable[..., Any], jobs: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """``(job index, result)`` in the order the jobs finish; the first error stops the pass and is raised."""
        if self.workers == 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                yield i, function(*job)
            return
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        futures = {self._executor.submit(function, *job): i for i, job in enumerate(jobs)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    yield futures[future], future.result()
        except BrokenProcessPool as error:
            raise LitzooError(f"a worker process ended abruptly (out of memory, or killed): {error}; run again to resume from the finished shards") from None
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class _Bars:
    """Two progress bars for a pass: shards done, and documents (per second) as each shard finishes."""

    def __init__(self, progress: Progress | None, name: str, shards: int, documents: int | None) -> None:
        self._bars = [] if progress is None else [
            iter(progress(itertools.repeat(None), f"{name}: shards", total=shards, unit=" shards")),
            iter(progress(itertools.repeat(None), f"{name}: documents", total=documents, unit=" docs")),
        ]  # fmt: skip

    def advance(self, documents: int) -> None:
        if self._bars:
            next(self._bars[0])
            for _ in range(documents):
                next(self._bars[1])

    def close(self) -> None:
        for bar in self._bars:
            close = getattr(bar, "close", None)
            if close is not None:
                close()


def _run_pass(workers: _Workers, progress: Progress | None, name: str, function: Callable[..., Any], jobs: dict[int, tuple],
              done: dict[int, int], total_documents: int | None, shards: int) -> dict[int, Any]:  # fmt: skip
    """Runs ``jobs`` (shard index -> arguments) with bars that start with the ``done`` shards (index -> documents)."""
    bars = _Bars(progress, name, shards, total_documents)
    try:
        for documents in done.values():
            bars.advance(documents)
        order = list(jobs)
        results = {}
        for i, result in workers.run(function, [jobs[s] for s in order]):
            results[order[i]] = result
            bars.advance(result[0] if isinstance(result, tuple) else result)
        return results
    finally:
        bars.close()


def _fingerprint(shard: Path, **arguments: Any) -> str:
    stat = shard.stat()
    return json.dumps({"shard": str(shard.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **arguments}, sort_keys=True)


def _describe(function: Any) -> str | None:
    return None if function is None else f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def prune_pool(
    shards: Sequence[str | Path],
    output_dir: str | Path,
    *,
    keep_fraction: float = 0.6,
    filters: Sequence[str] | Mapping[str, LineFilter] | None = None,
    text_key: str = "text",
    id_key: str | None = None,
    seed: int = 0,
    workers: int = 1,
    count_tokens: Callable[[str], int] | None = None,
    path_keys: Sequence[str] = ("image",),
    progress: Progress | None = None,
) -> dict:
    """Text quality-based pruning of the corpus in ``shards`` into ``output_dir`` (see the module docstring).

    Args:
        shards: the shard files (e.g. from :func:`litzoo.framework.data.shards.expand_shards`), with distinct names.
        output_dir: receives ``<shard name>`` per shard (the kept documents plus ``"quality_score"``),
            ``manifest.json``, and the passes' files in ``.text_quality/``.
        keep_fraction: share of the documents kept (the paper keeps 0.6-0.8).
        filters: line filters by name or as ``{name: function}`` (top-level functions: they go to worker processes).
        text_key: the text of each record (dotted keys look into nested dicts: ``"json.text"`` in a tar sample).
        id_key: JSONL / Parquet: the field holding the document's id (default ``"<shard name>:<index>"``); the id
            breaks ties in score, so ids that do not change when the pool is re-sharded keep the same documents.
        seed: seed of the tie keys.
        workers: processes scoring shards in parallel (1: in this process).
        count_tokens: ``tc_line`` (default: the number of ``word_tokens``); a top-level function.
        path_keys: JSONL / Parquet fields holding file paths relative to the shard's folder, rewritten relative to
            ``output_dir``.
        progress: shows the passes' progress bars (a function like :func:`litzoo.cli.console.progress`).

    Returns:
        The manifest (also written to ``output_dir / "manifest.json"``): shards in and out, documents and kept per
        shard, weights, the lowest kept score and the arguments.

    Raises:
        ValueError: a bad argument, or a corpus whose weights or cut cannot be computed (no line, every weight 0,
            the cut between two documents with the same id and score).
        LitzooError: a bad shard (one line naming it), two shards with the same name, or an output that would
            overwrite an input shard.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    shards = [Path(shard).expanduser() for shard in shards]
    if not shards:
        raise ValueError("no shards to prune")
    resolved = resolve_filters(filters)
    filters_out = resolved if isinstance(filters, Mapping) else list(resolved)  # names travel to workers, not functions
    output_dir = Path(output_dir).expanduser()
    names: dict[str, Path] = {}
    for shard in shards:
        shard_format(shard)
        if shard.name in names:
            raise LitzooError(f"shards '{names[shard.name]}' and '{shard}' have the same name: their outputs would both be '{output_dir / shard.name}'")
        names[shard.name] = shard
        if (output_dir / shard.name).resolve() == shard.resolve():
            raise LitzooError(f"output '{output_dir / shard.name}' would overwrite the input shard '{shard}': choose another output folder")
        if not shard.is_file():
            raise LitzooError(f"shard '{shard}' cannot be read: {'it is not a file' if shard.exists() else 'it does not exist'}")
    state = output_dir / STATE_FOLDER
    statistics_files = [state / "statistics" / f"{shard.name}.npz" for shard in shards]
    scores_files = [state / "scores" / f"{shard.name}.npy" for shard in shards]
    ties_files = [state / "scores" / f"{shard.name}.ties.npy" for shard in shards]
    score_stamps = [state / "scores" / f"{shard.name}.json" for shard in shards]
    write_stamps = [state / "written" / f"{shard.name}.json" for shard in shards]
    outputs = [output_dir / shard.name for shard in shards]
    filter_names = {name: _describe(function) for name, function in resolved.items()}
    arguments = {"filters": filter_names, "text_key": text_key, "id_key": id_key, "count_tokens": _describe(count_tokens)}
    pass1 = [_fingerprint(shard, **arguments) for shard in shards]
    runner = _Workers(workers)
    try:
        # 1. statistics per shard
        done, jobs = {}, {}
        for s, shard in enumerate(shards):
            if _stored_fingerprint(statistics_files[s]) == pass1[s]:
                with np.load(statistics_files[s], allow_pickle=False) as data:
                    done[s] = len(data["document_lines"])
            else:
                jobs[s] = (str(shard), str(statistics_files[s]), pass1[s], filters_out, text_key, id_key, count_tokens)
        documents = {**done, **_run_pass(runner, progress, "statistics", _statistics_task, jobs, done, None, len(shards))}
        total = sum(documents.values())
        if total == 0:
            raise ValueError("the shards hold no document")

        # 2. weights from the merged counts
        def parts() -> Iterator[CorpusStatistics]:
            for s in _progress(progress, range(len(shards)), "weights: merging shard counts", len(shards), " shards"):
                yield CorpusStatistics.from_arrays(_load(statistics_files[s]))

        weights = weights_from_statistics(parts())

        # 3. scores per shard
        weight_text = {name: float.hex(value) for name, value in weights.items()}
        pass3 = [json.dumps({"statistics": fingerprint, "weights": weight_text, "seed": seed}, sort_keys=True) for fingerprint in pass1]
        done, jobs = {}, {}
        for s in range(len(shards)):
            if _stored_fingerprint(score_stamps[s]) == pass3[s] and scores_files[s].is_file() and ties_files[s].is_file():
                done[s] = documents[s]
            else:
                jobs[s] = (str(statistics_files[s]), str(scores_files[s]), str(ties_files[s]), str(score_stamps[s]), pass3[s], weights, seed)
        _run_pass(runner, progress, "scoring", _score_task, jobs, done, total, len(shards))

        # 4. the global cut
        keep = max(1, int(round(keep_fraction * total)))

        def chunk(s: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
            return lambda: (score_keys(np.load(scores_files[s], allow_pickle=False)), np.load(ties_files[s], allow_pickle=False))

        def shard_ids(s: int) -> Callable[[], list[str]]:
            def load() -> list[str]:
                data = _load(statistics_files[s])
                return _unpack_strings(data["ids"], data["id_offsets"])

            return load

        indices = range(len(shards))
        boundary = select_boundary([chunk(s) for s in indices], [documents[s] for s in indices], keep, [shard_ids(s) for s in indices])

        # 5. the kept documents, per shard
        cut = {"score_key": str(boundary.score_key), "tie": str(boundary.tie), "id": boundary.id}
        pass5 = [json.dumps({"scores": fingerprint, "boundary": cut, "path_keys": list(path_keys), "output": str(outputs[s].resolve())}, sort_keys=True)
                 for s, fingerprint in enumerate(pass3)]  # fmt: skip
        done, jobs, kept = {}, {}, {}
        for s, shard in enumerate(shards):
            stamp = _read_stamp(write_stamps[s])
            if stamp is not None and stamp.get("fingerprint") == pass5[s] and outputs[s].is_file():
                done[s], kept[s] = documents[s], int(stamp["kept"])
            else:
                jobs[s] = (str(shard), str(outputs[s]), str(statistics_files[s]), str(scores_files[s]), str(ties_files[s]), str(write_stamps[s]),
                           pass5[s], pass1[s], boundary, text_key, id_key, list(path_keys))  # fmt: skip
        if jobs:  # the outputs are about to change: a manifest of an earlier run must not describe them meanwhile
            (output_dir / "manifest.json").unlink(missing_ok=True)
        results = _run_pass(runner, progress, "writing", _write_task, jobs, done, total, len(shards))
        kept.update({s: result[1] for s, result in results.items()})
    finally:
        runner.close()
    if sum(kept.values()) != keep:  # the boundary selects exactly `keep` documents
        raise RuntimeError(f"kept {sum(kept.values())} documents, expected {keep}")
    manifest = {
        "method": "text quality-based pruning (Sharma, Padthe et al., arXiv:2405.01582)",
        "shards_in": [str(shard) for shard in shards],
        "shards_out": [str(output) for output in outputs],
        "documents": [documents[s] for s in range(len(shards))],
        "kept": [kept[s] for s in range(len(shards))],
        "documents_total": total,
        "kept_total": keep,
        "keep_fraction": keep_fraction,
        "lowest_kept_score": boundary.score,
        "weights": weights,
        "args": {**arguments, "seed": seed, "path_keys": list(path_keys), "workers": workers},
    }
    with write_files_atomically(output_dir / "manifest.json") as (staged,):
        staged.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _read_stamp(path: Path) -> dict | None:
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _progress(progress: Progress | None, iterable: Iterable[Any], description: str, total: int, unit: str) -> Iterable[Any]:
    return iterable if progress is None else progress(iterable, description, total=total, unit=unit)

