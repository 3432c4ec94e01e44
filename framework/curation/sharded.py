"""MetaCLIP curation of a sharded pool: the two-pass map-reduce, on local processes or on a Dask cluster.

Xu et al., "Demystifying CLIP Data" (ICLR 2024) balance a pool of billions of captions; the reference implementation
(facebookresearch/MetaCLIP, ``metaclip/metaclip1/indexing/``: ``substr_indexing.py`` writes one inverted index per
shard, ``entry_count.py`` sums them, ``balance_sampling.py`` draws each shard's subset from the summed counts) is the
map-reduce that :func:`curate_pool` runs:

1. **pass 1** (per shard, in parallel): every caption of the shard is matched against the metadata
   (:class:`~litzoo.framework.curation.metaclip.MetadataIndex`); ``output_dir/.pass1/<shard name>.npz`` holds the
   shard's entry counts, its per-caption matches (CSR) and its caption ids;
2. **reduce**: the per-shard counts are summed into the pool's ``c_e`` (``output_dir/.pass1/entry_counts.npy``);
3. **pass 2** (per shard, in parallel): keep decisions from the global counts with
   :func:`~litzoo.framework.curation.metaclip.keep_decisions`, whose coin for a (caption, entry) pair depends only on
   the seed and the caption's id; the kept samples are written to ``output_dir/<shard name>`` (the input's format, or
   ``output_format``) with their matched entries under ``"entries"``, and a per-shard summary to
   ``output_dir/.pass2/<shard name>.npz``.

Then ``output_dir/entry_counts.npy`` (shape ``(2, E)``: the counts before / after balancing), ``output_dir/sizes.json``
(the kept samples per curated shard, open_clip's file, so a loader need not count them) and ``output_dir/manifest.json`` (written last: a folder with a manifest holds a finished run). Unlike the reference,
whose coins come from a global RNG stream, the result — the kept ids of every shard, the bytes of every curated
shard — does not depend on the number of workers, the engine, the order of the shards, or a run killed and resumed.

Engines. ``workers=1``: everything in this process. ``workers=N``: a
:class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (safe beside torch and threads in
the parent); each worker process builds the metadata index once, in the pool's initializer. ``engine="dask"``: the
same per-shard functions on a ``distributed.Client(scheduler_address)`` (``client.map`` / ``client.gather``); the
metadata entries (with their fingerprint) are scattered to every worker once (``broadcast=True``), and each worker
process builds its index on its first task and keeps it, keyed by the fingerprint (:func:`worker_index`, the same
cache the pool's initializer fills). Scattering the index itself would work too (it pickles as its entries and is
rebuilt where unpickled), but a scattered value that Dask spills to disk under memory pressure is deserialised, so
rebuilt, again; the per-process cache builds once whatever Dask does with the data, under a lock for the threads of
one worker. The index stays in the worker processes after the job (one index per process: replaced by the next
job's). The per-shard functions (:func:`match_shard`, :func:`curate_shard`) are plain
top-level functions of plain arguments (paths as strings, dicts of numbers and strings), so both engines pickle
them by reference. Shards and ``output_dir`` must be reachable at the same paths from every worker (a shared file
system on a cluster).

Resume. Every file is written to a hidden temporary sibling and renamed into place. A shard's pass-1 file and its
pass-2 summary record a fingerprint: the shard's resolved path, size and modification time, and the arguments its
result depends on (metadata digest, text / id keys; for pass 2 also ``t``, seed, output format, path keys and the
digest of the global counts). A run started again skips the shards whose files exist with a matching fingerprint
(a curated shard must also still have the size recorded): a killed run resumes at its first unfinished shard; a
shard file that changed is matched again, and every pass 2 redone since the global counts changed. A changed
*argument* is refused instead of mixed into a folder curated with other arguments (``output_dir/.run.json``
records them): start in a new folder, or pass ``overwrite=True`` to delete the previous run's files first.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import shutil
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from litzoo.framework.curation.metaclip import MetadataIndex, entropy, entry_probabilities, keep_decisions
from litzoo.framework.data.jsonl import rebase_paths
from litzoo.framework.data.shards import SHARD_SUFFIXES, ShardWriter, get_text, iter_samples, shard_format
from litzoo.framework.data.staging import check_writable, write_files_atomically
from litzoo.framework.errors import LitzooError

#: the formats a curated shard can be written in (``output_format``)
OUTPUT_FORMATS = tuple(SHARD_SUFFIXES.values())
#: captions matched (pass 1) or decided (pass 2) per batch: bounds the memory of Python lists, not of the shard
BATCH = 4096
#: bumped when the files of a run change meaning, so that an older folder is recomputed rather than misread
LAYOUT_VERSION = 1

PASS1, PASS2, RUN_RECORD, MANIFEST, ENTRY_COUNTS = ".pass1", ".pass2", ".run.json", "manifest.json", "entry_counts.npy"
SIZES = "sizes.json"  # open_clip's per-folder sample counts, read by its WebDataset loader and by ShardStream


# ---- the metadata index of a worker process -------------------------------------------------------------------------

_WORKER_LOCK = threading.Lock()
_WORKER: dict[str, Any] = {"digest": None, "index": None}


def worker_index(metadata: MetadataIndex | tuple[str, Sequence[str] | bytes] | None) -> MetadataIndex:
    """The metadata index a per-shard function matches with.

    ``metadata`` is an index (in-process runs), ``(digest, entries)`` (the pool's initializer, Dask tasks, a caller's
    pool, whose tasks carry the entries pickled by the parent of the job: the index
    is built once per process and kept until another digest arrives; a lock makes threads of one Dask worker build
    it once), or None (a pool worker: the index its initializer built).
    """
    if isinstance(metadata, MetadataIndex):
        return metadata
    with _WORKER_LOCK:
        if metadata is None:
            if _WORKER["index"] is None:
                raise RuntimeError("this worker process has no metadata index: start the pool with init_worker")
            return _WORKER["index"]
        digest, entries = metadata
        if _WORKER["digest"] != digest:
            _WORKER["index"], _WORKER["digest"] = None, None  # free the previous one before building
            if isinstance(entries, bytes):  # pickled once by this job's parent (a caller's pool): unpickled only here
                entries = pickle.loads(entries)
            _WORKER["index"], _WORKER["digest"] = MetadataIndex(entries), digest
        return _WORKER["index"]


def init_worker(digest: str, entries: Sequence[str]) -> None:
    """Initializer of the process pool: build this worker's metadata index once, for all its shards."""
    worker_index((digest, entries))


# ---- fingerprints ---------------------------------------------------------------------------------------------------


def shard_fingerprint(shard: Path) -> dict:
    """What identifies a shard's content for resume: its resolved path, size and modification time (ns)."""
    stat = shard.stat()
    return {"shard": str(shard), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_unchanged(shard: Path, fingerprint: dict) -> None:
    try:
        now = shard_fingerprint(shard)
    except OSError as error:
        raise LitzooError(f"shard '{shard}' cannot be read: {error.strerror or error}") from None
    if (now["size"], now["mtime_ns"]) != (fingerprint["size"], fingerprint["mtime_ns"]):
        raise LitzooError(f"shard '{shard}' changed while it was curated (size or modification time); run the curation again")


def _recorded_fingerprint(path: Path) -> dict | None:
    """The fingerprint recorded in a pass-1 / pass-2 file, None when the file is absent or unreadable (redone)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return json.loads(str(data["fingerprint"]))
    except Exception:  # noqa: BLE001 (a damaged or foreign file is recomputed, never trusted)
        return None


def _save_npz(path: Path, fingerprint: dict, **arrays: np.ndarray) -> None:
    with write_files_atomically(path) as (staged,):
        with staged.open("wb") as handle:
            np.savez(handle, fingerprint=np.array(json.dumps(fingerprint, sort_keys=True)), **arrays)


# ---- pass 1: match one shard ---------------------------------------------------------------------------------------


def match_shard(shard: str, pass1_path: str, fingerprint: dict, *, text_key: str, id_key: str | None,
                metadata: MetadataIndex | tuple[str, Sequence[str]] | None = None,
                report: Callable[[int], object] | None = None) -> dict:  # fmt: skip
    """Pass 1 on one shard: match every caption, write ``pass1_path`` (``.npz``, atomically).

    The file holds ``indptr`` (int64, captions + 1) and ``indices`` (int32): the CSR of the sorted matched entry ids
    per caption; ``id_bytes`` (uint8) and ``id_ends`` (int64): the UTF-8 caption ids, concatenated; ``count_entries``
    / ``count_values``: the shard's non-zero entry counts; ``fingerprint``: as given (JSON).

    Args:
        shard: the shard file (any format of :func:`~litzoo.framework.data.shards.iter_samples`).
        pass1_path: where to write.
        fingerprint: recorded in the file; its ``size`` / ``mtime_ns`` must still be the shard's.
        text_key: the caption field (dotted for nested JSON: ``"json.caption"``).
        id_key: JSONL / Parquet: the field holding the caption id (unique in the shard); None: ``"<shard name>:<n>"``.
        metadata: see :func:`worker_index`.
        report: called with the number of captions of each matched batch (an in-process progress bar).

    Returns:
        ``{"shard", "captions", "matched"}``.

    Raises:
        LitzooError: the shard cannot be read (one line naming it and the line / row / member), holds an id twice,
            or changed since ``fingerprint`` was taken.
    """
    path = Path(shard)
    _check_unchanged(path, fingerprint)
    index = worker_index(metadata)
    indptr, indices = array("q", [0]), array("i")
    id_bytes, id_ends = bytearray(), array("q")
    id_hashes = array("q") if id_key is not None else None
    texts: list[str] = []

    def flush() -> None:
        for matched in index.match_many(texts):
            indices.extend(matched)
            indptr.append(len(indices))
        if report is not None:
            report(len(texts))
        texts.clear()

    for sample in iter_samples(path, text_key=text_key, id_key=id_key):
        texts.append(get_text(sample.record, text_key))
        id_bytes += sample.key.encode("utf-8")
        id_ends.append(len(id_bytes))
        if id_hashes is not None:
            id_hashes.append(hash(sample.key))
        if len(texts) >= BATCH:
            flush()
    flush()
    if id_hashes is not None:
        _check_unique_ids(path, id_key, np.frombuffer(id_hashes, dtype=np.int64), bytes(id_bytes), np.frombuffer(id_ends, dtype=np.int64))

    indptr_np = np.frombuffer(indptr, dtype=np.int64)
    indices_np = np.frombuffer(indices, dtype=np.int32)
    count_entries, count_values = np.unique(indices_np, return_counts=True)  # one count per (caption, entry): sorted ids
    _save_npz(Path(pass1_path), fingerprint, indptr=indptr_np, indices=indices_np,
              id_bytes=np.frombuffer(bytes(id_bytes), dtype=np.uint8), id_ends=np.frombuffer(id_ends, dtype=np.int64),
              count_entries=count_entries.astype(np.int32), count_values=count_values.astype(np.int64))  # fmt: skip
    captions = len(indptr_np) - 1
    return {"shard": path.name, "captions": captions, "matched": int((np.diff(indptr_np) > 0).sum())}


def _check_unique_ids(shard: Path, id_key: str, hashes: np.ndarray, id_bytes: bytes, id_ends: np.ndarray) -> None:
    """Equal ids would draw equal coins and name two samples alike: refused. Hashes first (no set of strings)."""
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    starts = np.concatenate([[0], id_ends[:-1]])
    for k in same:
        a, b = int(order[k]), int(order[k + 1])
        if id_bytes[starts[a] : id_ends[a]] == id_bytes[starts[b] : id_ends[b]]:
            key = id_bytes[starts[a] : id_ends[a]].decode("utf-8")
            raise LitzooError(f"shard '{shard}' holds the id '{key}' ('{id_key}') twice (samples {a} and {b}): caption ids must be unique")


def _read_pass1(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(path) as data:
        indptr, indices = data["indptr"], data["indices"]
        raw, ends = data["id_bytes"].tobytes(), data["id_ends"]
    starts = np.concatenate([[0], ends[:-1]]).tolist()
    return indptr, indices, [raw[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist(), strict=True)]


# ---- pass 2: curate one shard --------------------------------------------------------------------------------------


def output_name(shard: Path, output_format: str | None) -> str:
    """The curated shard's file name: the input's, with the suffix of ``output_format`` when given."""
    name, kind = shard.name, shard_format(shard)
    if output_format is None or output_format == kind:
        return name
    suffix = next(s for s in sorted(SHARD_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s))
    return name[: -len(suffix)] + next(s for s, f in SHARD_SUFFIXES.items() if f == output_format)


def _tar_key(key: str) -> str:
    """A WebDataset key for a JSONL / Parquet sample written to a tar: no "." (it starts the extension) nor "/"."""
    return key.replace("/", "_").replace("\\", "_").replace(".", "_")


def _curated_record(sample, in_format: str, out_format: str, names: list[str], text_key: str,
                    path_keys: Sequence[str], rebase_to: Path) -> dict:  # fmt: skip
    """The record written for a kept sample: its own fields plus ``"entries"`` (the matched entry strings)."""
    record = sample.record
    if in_format == "tar":
        if out_format == "tar":  # every member copied; the entries go into the .json member (made when absent)
            meta = record.get("json", {})
            if not isinstance(meta, dict):
                raise LitzooError(f"shard '{sample.shard}' sample '{sample.key}': its .json member is a {type(meta).__name__}, "
                                  "not an object to add 'entries' to")  # fmt: skip
            return {**record, "json": {**meta, "entries": names}}
        if out_format in ("jsonl", "jsonl.gz"):
            binary = next((ext for ext, value in record.items() if isinstance(value, bytes)), None)
            if binary is not None:
                raise LitzooError(f"shard '{sample.shard}' member '{sample.key}.{binary}' holds bytes, which {out_format} "
                                  "cannot store: write the curated shards as tar or parquet (output_format)")  # fmt: skip
        return {**record, "entries": names}
    record = rebase_paths(record, path_keys, sample.shard.parent, rebase_to)
    if out_format == "tar":  # a JSONL / Parquet record becomes <key>.json (the record) and <key>.txt (the caption)
        return {"__key__": _tar_key(sample.key), "json": {**record, "entries": names}, "txt": get_text(sample.record, text_key)}
    return {**record, "entries": names}


def curate_shard(shard: str, output_path: str, summary_path: str, pass1_path: str, counts_path: str,
                 fingerprint: dict, *, t: int, seed: int, text_key: str, id_key: str | None,
                 path_keys: Sequence[str], rebase_to: str,
                 metadata: MetadataIndex | tuple[str, Sequence[str]] | None = None,
                 report: Callable[[int], object] | None = None) -> dict:  # fmt: skip
    """Pass 2 on one shard: keep decisions from the global counts, the curated shard, its summary.

    Args:
        shard: the shard file.
        output_path: the curated shard (format from its name), written atomically.
        summary_path: then the summary ``.npz``: ``fingerprint``, ``stats`` (captions, matched, kept, output bytes),
            ``expected`` (the sum of the keep probabilities), ``after_entries`` / ``after_values`` (the kept samples'
            non-zero entry counts).
        pass1_path: the shard's pass-1 file (its matches and ids).
        counts_path: the global entry counts (``.npy``), summed over the pool.
        fingerprint: recorded in the summary.
        t: the balancing threshold.
        seed: seed of the coins (:func:`~litzoo.framework.curation.metaclip.keep_decisions`).
        text_key, id_key: as in pass 1.
        path_keys: JSONL / Parquet fields holding file paths relative to the shard's folder, rewritten relative to
            ``rebase_to``.
        rebase_to: the folder the curated shard's relative paths are relative to.
        metadata: see :func:`worker_index` (the entry strings written under ``"entries"``).
        report: called with the number of captions of each batch written (an in-process progress bar).

    Returns:
        ``{"shard", "captions", "kept"}``.
    """
    path, output = Path(shard), Path(output_path)
    _check_unchanged(path, fingerprint)
    names_of = worker_index(metadata).entries
    probabilities = entry_probabilities(np.load(counts_path), t)
    indptr, indices, ids = _read_pass1(Path(pass1_path))
    captions = len(ids)
    keep = np.zeros(captions, dtype=bool)
    for begin in range(0, captions, BATCH):  # coins per caption: batching changes nothing, bounds the lists' memory
        stop = min(begin + BATCH, captions)
        bounds = (indptr[begin : stop + 1] - indptr[begin]).tolist()
        flat = indices[indptr[begin] : indptr[stop]].tolist()
        matches = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        keep[begin:stop] = keep_decisions(ids[begin:stop], matches, probabilities, seed)
    # expected number kept: sum over captions of 1 - prod_e (1 - p_e), from the CSR (log1p(-1) = -inf: sure keep)
    rows = np.repeat(np.arange(captions), np.diff(indptr))
    with np.errstate(divide="ignore"):
        log_miss = np.bincount(rows, weights=np.log1p(-probabilities[indices]), minlength=captions)
    expected = float((1.0 - np.exp(log_miss)).sum())
    kept_positions = np.flatnonzero(keep)
    kept_rows = keep[rows]
    after_entries, after_values = np.unique(indices[kept_rows], return_counts=True)

    in_format, out_format = shard_format(path), shard_format(output)
    last = int(kept_positions[-1]) if len(kept_positions) else -1
    done = 0
    with ShardWriter(output) as writer:
        if last >= 0:
            for sample in iter_samples(path, text_key=text_key, id_key=id_key):
                i = sample.position
                if sample.key != ids[i]:
                    raise LitzooError(f"shard '{path}' changed since it was matched: sample {i} is '{sample.key}', was '{ids[i]}'")
                if keep[i]:
                    names = [names_of[e] for e in indices[indptr[i] : indptr[i + 1]].tolist()]
                    writer.write(_curated_record(sample, in_format, out_format, names, text_key, path_keys, Path(rebase_to)))
                if report is not None and (i + 1) % BATCH == 0:
                    report(i + 1 - done)
                    done = i + 1
                if i >= last:  # nothing kept after it: the rest of the shard is not read
                    break
    if report is not None:
        report(captions - done)
    stats = np.array([captions, int((np.diff(indptr) > 0).sum()), len(kept_positions), output.stat().st_size], dtype=np.int64)
    _save_npz(Path(summary_path), fingerprint, stats=stats, expected=np.array(expected),
              after_entries=after_entries.astype(np.int32), after_values=after_values.astype(np.int64))  # fmt: skip
    return {"shard": path.name, "captions": captions, "kept": len(kept_positions)}


# ---- engines ------------------------------------------------------------------------------------------------------


@contextmanager
def _engine(engine: str, workers: int, scheduler_address: str | None, digest: str, index: MetadataIndex,
            executor: Executor | None = None) -> Iterator[Callable]:  # fmt: skip
    """``run(function, per_shard_args, common, on_result, on_progress)`` on the chosen engine, open for both passes
    (one pool, one index per worker process). ``on_result(i, result)`` is called as each shard finishes;
    ``on_progress(captions)`` per batch in-process, per shard otherwise."""
    if engine == "dask":
        try:
            import distributed
        except ImportError:
            raise LitzooError("engine 'dask' needs Dask's distributed scheduler, which is not installed: pip install litzoo[distributed]") from None
        client = distributed.Client(scheduler_address)  # None: Dask's own default local cluster
        try:
            [metadata] = client.scatter([(digest, index.entries)], broadcast=True, hash=False)

            def run_dask(function, per_shard, common, on_result, on_progress):
                if not per_shard:
                    return []
                futures = client.map(function, *zip(*per_shard, strict=True), **common, metadata=metadata, pure=False)
                position = {future.key: i for i, future in enumerate(futures)}
                for future in distributed.as_completed(futures):
                    result = future.result()  # re-raises a task's error (a LitzooError naming the shard) here
                    on_progress(result["captions"])
                    on_result(position[future.key], result)
                return client.gather(futures)

            yield run_dask
        finally:
            client.close()
    elif workers > 1 or executor is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        owned = executor is None
        if owned:
            executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=init_worker, initargs=(digest, index.entries))  # fmt: skip
            task_metadata = None  # the initializer built it
        else:
            # sent with every task, since any process may get any task: pickled once here, so that a task costs a copy of
            # bytes, and unpickled and built only by a process that does not hold this digest's index yet (worker_index)
            task_metadata = (digest, pickle.dumps(index.entries, protocol=pickle.HIGHEST_PROTOCOL))

        def run_pool(function, per_shard, common, on_result, on_progress):
            futures = {executor.submit(function, *args, **common, metadata=task_metadata): i for i, args in enumerate(per_shard)}
            results: list[Any] = [None] * len(per_shard)
            for future in as_completed(futures):
                results[futures[future]] = result = future.result()
                on_progress(result["captions"])
                on_result(futures[future], result)
            return results

        try:
            yield run_pool
        finally:
            if owned:
                executor.shutdown(wait=True, cancel_futures=True)
    else:

        def run_here(function, per_shard, common, on_result, on_progress):
            results = []
            for i, args in enumerate(per_shard):
                results.append(function(*args, **common, metadata=index, report=on_progress))
                on_result(i, results[-1])
            return results

        yield run_here


def _bar(description: str, total: int | None, enabled: bool | None):
    """A tqdm bar on stderr, as ``litzoo.cli.console.progress`` draws them (the core cannot import the roof): shown
    when ``enabled``, for None when stderr is a terminal; removed when done."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, desc=description, disable=disable, leave=False, file=sys.stderr, unit=" captions", dynamic_ncols=True)


# ---- the run --------------------------------------------------------------------------------------------------------


def _run_arguments(entries: Sequence[str], digest: str, t: int, seed: int, text_key: str, id_key: str | None,
                   output_format: str | None, path_keys: Sequence[str], rebase_to: Path, shards: list[Path],
                   outputs: list[str]) -> dict:  # fmt: skip
    return {"layout": LAYOUT_VERSION, "metadata_fingerprint": digest, "metadata_size": len(entries), "t": t, "seed": seed,
            "text_key": text_key, "id_key": id_key, "output_format": output_format, "path_keys": list(path_keys),
            "paths_relative_to": str(rebase_to), "shards": sorted(str(s) for s in shards), "outputs": sorted(outputs)}  # fmt: skip


def _prepare_folder(output_dir: Path, arguments: dict, outputs: list[str], shards: list[Path], overwrite: bool) -> None:
    """Refuse to mix runs with other arguments (unless ``overwrite``: the previous run's files are deleted) and to
    write a curated shard over one of the input shards or over a file this run did not write."""
    record_path = output_dir / RUN_RECORD
    inputs = {s.resolve() for s in shards}
    clash = next((name for name in outputs if (output_dir / name).resolve() in inputs), None)
    if clash is not None:
        raise LitzooError(f"output folder '{output_dir}': the curated shard '{clash}' would replace the input shard of that name; "
                          "write to another --output_dir")  # fmt: skip
    previous = None
    if record_path.is_file():
        try:
            previous = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
    if previous is not None and previous != arguments:
        if not overwrite:
            changed = [k for k in arguments if previous.get(k) != arguments[k]]
            what = ", ".join("other shards" if k in ("shards", "outputs") else f"{k} {previous.get(k)!r} -> {arguments[k]!r}"
                             for k in dict.fromkeys("shards" if k == "outputs" else k for k in changed)) or "an unreadable record"  # fmt: skip
            raise LitzooError(f"output folder '{output_dir}' holds a curation with other arguments ({what}); "
                              "use a new --output_dir, or --overwrite to replace it")  # fmt: skip
        for name in previous.get("outputs", []) if isinstance(previous.get("outputs"), list) else []:
            target = output_dir / Path(str(name)).name
            if target.resolve() not in inputs:
                target.unlink(missing_ok=True)
        for folder in (PASS1, PASS2):
            shutil.rmtree(output_dir / folder, ignore_errors=True)
        for name in (MANIFEST, ENTRY_COUNTS, SIZES, RUN_RECORD):
            (output_dir / name).unlink(missing_ok=True)
        previous = None
    if previous is None:
        foreign = [name for name in [*outputs, MANIFEST, ENTRY_COUNTS, SIZES] if (output_dir / name).exists()]
        if foreign and not overwrite:
            raise LitzooError(f"output folder '{output_dir}' already holds '{foreign[0]}', not written by a curation run with these "
                              "arguments; use a new --output_dir, or --overwrite to replace it")  # fmt: skip
        with write_files_atomically(record_path) as (staged,):
            staged.write_text(json.dumps(arguments, indent=1) + "\n", encoding="utf-8")


def _count_stats(counts: np.ndarray) -> dict:
    return {"total": int(counts.sum()), "entries_matched": int((counts > 0).sum()), "largest": int(counts.max(initial=0)),
            "entropy_nats": entropy(counts)}  # fmt: skip


def curate_pool(shards: Sequence[str | Path], metadata: Sequence[str] | MetadataIndex, t: int, output_dir: str | Path, *,
                text_key: str = "text", id_key: str | None = None, seed: int = 0, workers: int = 1, engine: str = "local",
                scheduler_address: str | None = None, output_format: str | None = None,
                path_keys: Sequence[str] = ("image",), progress: bool | None = True, log_dir: str | Path | None = None,
                overwrite: bool = False, paths_relative_to: str | Path | None = None,
                executor: Executor | None = None) -> dict:  # fmt: skip
    """MetaCLIP curation of a sharded pool into ``output_dir`` (the module docstring describes the passes).

    Args:
        shards: the shard files (e.g. :func:`~litzoo.framework.data.shards.expand_shards` of a spec), names unique.
        metadata: the entries, or a :class:`MetadataIndex` of them (worker processes build their own from its
            ``entries``).
        t: the balancing threshold: entries matched by more captions are sub-sampled to about ``t``.
        output_dir: the curated shards, ``manifest.json``, ``entry_counts.npy`` and the resume files.
        text_key: the caption field (tar shards: an extension, ``"txt"``, or ``"json.caption"``).
        id_key: JSONL / Parquet: the field holding each caption's id (unique in the pool); None: tar keys, and
            ``"<shard name>:<n>"`` for the others. The coins depend on the ids.
        seed: seed of the coins.
        workers: local worker processes (``engine="local"``); 1 runs in this process.
        engine: ``"local"`` or ``"dask"`` (``distributed.Client(scheduler_address)``; ``workers`` is then the
            cluster's business).
        scheduler_address: the Dask scheduler (``"tcp://host:8786"``); None: Dask's default local cluster.
        output_format: ``"jsonl"``, ``"jsonl.gz"``, ``"parquet"`` or ``"tar"``; None: each shard's own format.
        path_keys: JSONL / Parquet fields holding file paths relative to the shard's folder, rewritten relative to
            the curated shard's folder.
        progress: progress bars on stderr (None: when stderr is a terminal).
        log_dir: a TensorBoard summary: histograms of log10 entry counts before / after, the entropy before /
            after, the kept fraction per shard (over the shard index).
        overwrite: delete what an earlier run with other arguments left in ``output_dir`` instead of refusing.
        paths_relative_to: the folder the rewritten paths are relative to, when the curated shards are moved after
            the run (``litzoo curate --manifest``); default ``output_dir``.
        executor: a process pool of the caller's (``concurrent.futures.ProcessPoolExecutor``), kept across calls as a
            Dask cluster is: the shards go to it instead of ``workers`` new processes, and each of its processes builds
            the index at its first task and keeps it (as Dask workers do), so a second call pays no start-up. Not
            shut down here.

    Returns:
        The manifest (also written to ``output_dir/manifest.json``): ``shards`` (per shard: input, output, captions,
        matched, kept, expected), totals, ``counts`` (before / after: total, entries matched, largest, entropy,
        head entries and tail matches kept), ``arguments``, ``resumed`` (``matched`` / ``curated``: the shards whose pass 1 / pass 2 was done before and skipped) and
        ``seconds``.

    Raises:
        ValueError: a bad argument (``t``, ``workers``, ``engine``, ``output_format``).
        LitzooError: a shard cannot be read (one line naming it), two shards share a name, ``output_dir`` holds a
            run with other arguments or would overwrite an input, Dask is not installed.
    """
    started = time.perf_counter()
    if isinstance(t, bool) or not isinstance(t, int) or t <= 0:
        raise ValueError(f"t must be a positive number of captions per entry, got {t!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    if executor is not None and (engine != "local" or workers != 1):
        raise ValueError("executor is a process pool of the caller's: give it alone, without workers or engine='dask'")
    if engine not in ("local", "dask"):
        raise ValueError(f"engine must be 'local' or 'dask', got {engine!r}")
    if scheduler_address is not None and engine != "dask":
        raise ValueError("scheduler_address is the address of a Dask scheduler: give engine='dask' with it")
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)} or None, got {output_format!r}")
    shard_paths = [Path(s).expanduser().resolve() for s in shards]
    if not shard_paths:
        raise ValueError("no shards to curate")
    names: dict[str, Path] = {}
    for shard in shard_paths:
        shard_format(shard)  # a LitzooError naming it for an unknown format
        if not shard.is_file():
            reason = "it is not a file" if shard.exists() else "it does not exist"
            raise LitzooError(f"shard '{shard}' cannot be read: {reason}")
        if shard.name in names:
            raise LitzooError(f"shards '{names[shard.name]}' and '{shard}' have the same name: curated shards and caption ids are named after it")
        names[shard.name] = shard
    outputs = [output_name(s, output_format) for s in shard_paths]
    if len(set(outputs)) < len(outputs):
        twice = next(name for name in outputs if outputs.count(name) > 1)
        raise LitzooError(f"two shards would be curated to the same file '{twice}' (output format {output_format}): rename one")
    index = metadata if isinstance(metadata, MetadataIndex) else MetadataIndex(metadata)
    entries = index.entries
    digest = index.fingerprint()
    out = check_writable(Path(output_dir).expanduser() / MANIFEST, "output folder").parent.resolve()
    rebase_to = Path(paths_relative_to).expanduser().resolve() if paths_relative_to is not None else out
    arguments = _run_arguments(entries, digest, t, seed, text_key, id_key, output_format, path_keys, rebase_to, shard_paths, outputs)
    _prepare_folder(out, arguments, outputs, shard_paths, overwrite)
    (out / MANIFEST).unlink(missing_ok=True)  # until the end: the folder holds an unfinished run
    (out / PASS1).mkdir(exist_ok=True)
    (out / PASS2).mkdir(exist_ok=True)

    # resume: which shards' passes are already done with these arguments and this content
    fingerprints = [shard_fingerprint(s) for s in shard_paths]
    pass1_paths = [out / PASS1 / f"{s.name}.npz" for s in shard_paths]
    pass1_fp = [{**fp, "metadata_fingerprint": digest, "text_key": text_key, "id_key": id_key, "layout": LAYOUT_VERSION} for fp in fingerprints]
    todo1 = [i for i, path in enumerate(pass1_paths) if _recorded_fingerprint(path) != pass1_fp[i]]
    common1 = {"text_key": text_key, "id_key": id_key}

    with _engine(engine, workers, scheduler_address, digest, index, executor) as run:
        bar = _bar("matching", None, progress)
        shards_done = [len(shard_paths) - len(todo1)]

        def shard_finished(bar, total):
            def on_result(_i: int, _result: dict) -> None:
                shards_done[0] += 1
                bar.set_postfix_str(f"{shards_done[0]}/{total} shards", refresh=True)

            return on_result

        bar.set_postfix_str(f"{shards_done[0]}/{len(shard_paths)} shards", refresh=False)
        with bar:
            run(match_shard, [(str(shard_paths[i]), str(pass1_paths[i]), pass1_fp[i]) for i in todo1], common1,
                shard_finished(bar, len(shard_paths)), bar.update)  # fmt: skip

        # reduce: the pool's entry counts
        before = np.zeros(len(entries), dtype=np.int64)
        captions_per_shard = []
        for path in pass1_paths:
            with np.load(path) as data:
                np.add.at(before, data["count_entries"], data["count_values"])
                captions_per_shard.append(len(data["indptr"]) - 1)
        counts_path = out / PASS1 / ENTRY_COUNTS
        if not counts_path.is_file() or not np.array_equal(np.load(counts_path), before):
            with write_files_atomically(counts_path) as (staged,):
                np.save(staged, before)
        counts_digest = hashlib.sha256(before.tobytes()).hexdigest()

        summary_paths = [out / PASS2 / f"{s.name}.npz" for s in shard_paths]
        pass2_fp = [{**fp, "counts_sha256": counts_digest, "t": t, "seed": seed, "output": outputs[i], "path_keys": list(path_keys),
                     "paths_relative_to": str(rebase_to)} for i, fp in enumerate(pass1_fp)]  # fmt: skip
        todo2 = []
        for i, path in enumerate(summary_paths):
            curated = out / outputs[i]
            if _recorded_fingerprint(path) != pass2_fp[i] or not curated.is_file():
                todo2.append(i)
                continue
            with np.load(path) as data:
                if curated.stat().st_size != int(data["stats"][3]):  # the curated shard is not the one written then
                    todo2.append(i)
        common2 = {"t": t, "seed": seed, "text_key": text_key, "id_key": id_key, "path_keys": list(path_keys), "rebase_to": str(rebase_to)}
        bar = _bar("writing", sum(captions_per_shard[i] for i in todo2), progress)
        shards_done[0] = len(shard_paths) - len(todo2)
        bar.set_postfix_str(f"{shards_done[0]}/{len(shard_paths)} shards", refresh=False)
        with bar:
            run(curate_shard, [(str(shard_paths[i]), str(out / outputs[i]), str(summary_paths[i]), str(pass1_paths[i]), str(counts_path),
                                pass2_fp[i]) for i in todo2], common2, shard_finished(bar, len(shard_paths)), bar.update)  # fmt: skip

    # the manifest and the counts before / after, from the per-shard files
    after = np.zeros(len(entries), dtype=np.int64)
    per_shard = []
    for i, path in enumerate(summary_paths):
        with np.load(path) as data:
            np.add.at(after, data["after_entries"], data["after_values"])
            n, matched, kept, _ = (int(v) for v in data["stats"])
            per_shard.append({"input": str(shard_paths[i]), "output": outputs[i], "captions": n, "matched": matched, "kept": kept,
                              "expected": float(data["expected"])})  # fmt: skip
    tail = before < t
    counts = {
        "before": _count_stats(before), "after": _count_stats(after),
        "head_entries": int((~tail & (before > 0)).sum()),
        "tail_matches_before": int(before[tail].sum()), "tail_matches_after": int(after[tail].sum()),
        "unmatchable_entries": len(getattr(index, "unmatchable", ())),
    }  # fmt: skip
    expected = sum(s["expected"] for s in per_shard)
    if not all(math.isfinite(v) for v in (expected, counts["before"]["entropy_nats"], counts["after"]["entropy_nats"])):
        raise RuntimeError(f"curation of '{out}' produced a non-finite statistic: expected {expected}, counts {counts}")
    manifest = {
        "shards": per_shard,
        "captions": sum(s["captions"] for s in per_shard), "matched": sum(s["matched"] for s in per_shard),
        "kept": sum(s["kept"] for s in per_shard), "expected": expected,
        "counts": counts, "entry_counts": ENTRY_COUNTS,
        "arguments": {k: v for k, v in arguments.items() if k not in ("shards", "outputs")},
        "resumed": {"matched": [shard_paths[i].name for i in sorted(set(range(len(shard_paths))) - set(todo1))],
                    "curated": [shard_paths[i].name for i in sorted(set(range(len(shard_paths))) - set(todo2))]},
    }  # fmt: skip
    with write_files_atomically(out / ENTRY_COUNTS) as (staged,):
        np.save(staged, np.stack([before, after]))
    with write_files_atomically(out / SIZES) as (staged,):  # a loader knows the curated shards' lengths without a pass
        staged.write_text(json.dumps({s["output"]: s["kept"] for s in per_shard}, indent=1) + "\n", encoding="utf-8")
    if log_dir is not None:
        _write_tensorboard(Path(log_dir), before, after, per_shard)
    manifest["seconds"] = time.perf_counter() - started
    with write_files_atomically(out / MANIFEST) as (staged,):
        staged.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _write_tensorboard(log_dir: Path, before: np.ndarray, after: np.ndarray, per_shard: list[dict]) -> None:
    """Histograms of log10(entry count) before (step 0) / after (step 1): the long tail and the cut head; the entropy
    before / after; the kept fraction of every shard over the shard index (in the order given)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for step, counts in enumerate((before, after)):
            if (counts > 0).any():
                writer.add_histogram("curation/log10_entry_count", np.log10(counts[counts > 0]), global_step=step)
        writer.add_scalars("curation/entropy_nats", {"before": entropy(before), "after": entropy(after)}, 0)
        for step, shard in enumerate(per_shard):
            writer.add_scalar("curation/kept_fraction", shard["kept"] / shard["captions"] if shard["captions"] else 0.0, global_step=step)


__all__ = ["OUTPUT_FORMATS", "curate_pool", "curate_shard", "init_worker", "match_shard", "output_name",
           "shard_fingerprint", "worker_index"]  # fmt: skip
