"""Curation of a sharded pool end to end (read, match, reduce, balance, write): 1 process, 2 worker processes, Dask
with 2 local workers, a run killed and resumed, and the memory peak against the pool's size.

    .venv/bin/python benchmarks/curation_pool.py      # or as part of `make bench`

Data (SYNTHETIC, seeded, the same every run): ``benchmarks/curation_scale.py``'s ``synthetic_pool``: 500,000 metadata
entries of 1–3 words from a Zipf vocabulary of 100,000 words, and captions of 5–25 words drawn by the same weights;
the captions are written here as ``SHARDS`` JSONL shards of ``PER_SHARD`` lines ``{"image": ..., "text": ...}``, and
curated with ``t = T`` (MetaCLIP's 20,000 for 400M captions, scaled to the pool).

Measured, in this order:

- captions/s of :func:`litzoo.framework.curation.sharded.curate_pool` (wall time of the call: both passes and every
  file written, into a new folder every time) with ``workers=1`` (in this process; the index is built once beforehand
  and passed in, as the CLI does for every engine), ``workers=2`` (a spawn process pool, new at every call; each worker
  imports litzoo and builds its own index), ``executor=`` a spawn process pool of 2 kept across the calls (its workers
  build the index at their first task and keep it) and ``engine="dask"`` on a ``distributed.LocalCluster(n_workers=2,
  threads_per_worker=1, processes=True)`` started before the timing (a cluster is up before a job is sent to it; its
  workers keep the index between calls). ``ROUNDS`` alternating rounds, medians. The start-up cost of an engine is
  the wall time of the same call on a pool of 2 one-caption shards (every call for a new process pool, the first call
  for a kept pool and for Dask); "warm" rates are the calls on workers that already hold the index. A control measures how much more work 2 processes get done than 1 on the
  machine at that time (2.0 on 2 free cores), since the cores are shared with whatever else runs;
- the curated shards of the four engines compared byte for byte, and their kept ids compared with the in-memory
  ``balance(matches, E, t, seed, ids=...)`` of the concatenated pool;
- a run (``workers=1``, a fresh subprocess) killed with SIGKILL as soon as its first shard is curated, then started
  again: its curated shards compared with the uninterrupted run's, and the passes it did not redo counted;
- the peak memory (``VmHWM`` of a fresh subprocess plus its children' ``ru_maxrss``) of curating a pool of 1 shard and of 10
  shards of the same size (goal: flat in the pool's size).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation_scale import cores, load_average, synthetic_pool  # noqa: E402 (the benchmarks' folder is put on the path just above)

from litzoo.framework.curation import MetadataIndex, balance  # noqa: E402

# `common` (torch) is imported in format_section only; the spawned workers import litzoo's curation modules.

SHARDS = 10
PER_SHARD = 8_000
T = 4  # MetaCLIP's t = 20,000 for 400M captions, scaled to this pool's 80,000
SEED = 0
ROUNDS = 3
GOAL_WORKERS = 1.8

_CHILD = """
import json, resource, sys
from litzoo.framework.curation import read_metadata
from litzoo.framework.curation.sharded import curate_pool
metadata, output, *shards = sys.argv[1:]
manifest = curate_pool(shards, read_metadata(metadata), {t}, output, seed={seed}, progress=False)
try:  # VmHWM: this process image's own high-water mark (ru_maxrss carries the forking parent's over the exec on Linux)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"peak_kib": peak, "captions": manifest["captions"], "kept": manifest["kept"]}}))
"""


def write_pool(folder: Path, captions: list[str], shards: int, per_shard: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(shards):
        path = folder / f"pool-{k:03d}.jsonl"
        rows = captions[k * per_shard : (k + 1) * per_shard]
        path.write_text("".join(json.dumps({"image": f"images/{k:03d}/{i:06d}.jpg", "text": text}) + "\n" for i, text in enumerate(rows)))
        paths.append(path)
    return paths


def _curate(paths: list[Path], index: MetadataIndex, output: Path, **engine) -> tuple[float, dict]:
    from litzoo.framework.curation.sharded import curate_pool

    start = time.perf_counter()
    manifest = curate_pool(paths, index, T, output, seed=SEED, progress=False, overwrite=True, **engine)
    return time.perf_counter() - start, manifest


def _shard_bytes(output: Path, manifest: dict) -> dict[str, bytes]:
    return {s["output"]: (output / s["output"]).read_bytes() for s in manifest["shards"]}


def _kept_images(output: Path, manifest: dict) -> set[str]:
    return {json.loads(line)["image"].rsplit("images/", 1)[1] for s in manifest["shards"] for line in (output / s["output"]).read_text().splitlines()}


def _child(metadata: Path, output: Path, shards: list[Path]) -> subprocess.Popen:
    code = _CHILD.format(t=T, seed=SEED)
    return subprocess.Popen([sys.executable, "-c", code, str(metadata), str(output), *map(str, shards)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip


def peak_memory(metadata: Path, output: Path, shards: list[Path]) -> dict:
    """Curate ``shards`` in a fresh subprocess; its peak RSS (VmHWM where there is one, + children, KiB on Linux)."""
    child = _child(metadata, output, shards)
    out, err = child.communicate(timeout=600)
    if child.returncode != 0:
        raise RuntimeError(f"memory run failed: {err.strip().splitlines()[-1] if err.strip() else child.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def killed_and_resumed(metadata: Path, index: MetadataIndex, output: Path, shards: list[Path]) -> dict:
    """SIGKILL a fresh ``workers=1`` run as soon as its first shard is curated (its pass-2 summary written); then
    resume it here."""
    child = _child(metadata, output, shards)
    start = time.perf_counter()
    while not (output / ".pass2" / f"{shards[0].name}.npz").exists():
        if child.poll() is not None:
            raise RuntimeError(f"the run to kill ended first (rc {child.returncode}): {child.stderr.read().strip()[-300:]}")
        if time.perf_counter() - start > 600:
            child.kill()
            raise RuntimeError("the run to kill wrote no curated shard in 600 s")
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    killed_after = time.perf_counter() - start
    done_when_killed = sum((output / s.name).exists() for s in shards)
    seconds, manifest = _curate(shards, index, output)
    return {"seconds_to_kill": killed_after, "done_when_killed": done_when_killed, "resume_seconds": seconds,
            "skipped_pass1": len(manifest["resumed"]["matched"]), "skipped_pass2": len(manifest["resumed"]["curated"]),
            "manifest": manifest, "rc": child.returncode}  # fmt: skip


def _burn(iterations: int) -> float:
    """A pure-Python loop; its wall time."""
    start, x = time.perf_counter(), 0
    for i in range(iterations):
        x += i
    return time.perf_counter() - start


def parallel_capacity(iterations: int = 10_000_000) -> float:
    """The control: how many times more work 2 spawned processes do than 1 in the same wall time on this machine now
    (2.0 on 2 idle cores; less when other programs hold the cores)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_burn, [1000, 1000])  # started
        one = pool.apply(_burn, (iterations,))
        two = max(pool.map(_burn, [iterations, iterations], chunksize=1))
    return 2 * one / two


def main() -> dict:
    import logging

    import distributed

    started = time.perf_counter()
    entries, captions = synthetic_pool(num_captions=SHARDS * PER_SHARD)
    build_start = time.perf_counter()
    index = MetadataIndex(entries)
    build_seconds = time.perf_counter() - build_start
    results: dict = {"shards": SHARDS, "per_shard": PER_SHARD, "captions": len(captions), "entries": len(entries), "t": T,
                     "build_seconds": build_seconds, "cores": cores(), "load_at_start": load_average()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="litzoo-curation-pool-") as tmp:
        root = Path(tmp)
        paths = write_pool(root / "pool", captions, SHARDS, PER_SHARD)
        tiny = write_pool(root / "tiny", captions[:2], 2, 1)  # 2 shards: both workers start (a pool starts them on demand)
        metadata = root / "metadata.json"
        metadata.write_text(json.dumps(entries))

        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, \
                ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as kept_pool:  # fmt: skip
            engines = {
                "workers_1": {"workers": 1},
                "workers_2": {"workers": 2},
                "pool_2": {"executor": kept_pool},
                "dask_2": {"engine": "dask", "scheduler_address": cluster.scheduler_address},
            }
            capacity = [parallel_capacity()]
            fixed: dict[str, list[float]] = {name: [] for name in engines}
            full: dict[str, list[float]] = {name: [] for name in engines}
            outputs: dict[str, dict] = {}
            output_dirs: dict[str, Path] = {}
            names = list(engines)
            for r in range(ROUNDS):  # alternating rounds, the order rotated: the machine's load drifts
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    # the start-up cost: the same call on a pool of one caption (a process pool starts anew every call;
                    # Dask's workers are cold at their first call only, then they keep the index)
                    fixed[name].append(_curate(tiny, index, root / f"tiny_{name}_{r}", **engines[name])[0])
                    seconds, outputs[name] = _curate(paths, index, root / f"{name}_{r}", **engines[name])  # a new folder: no resume
                    output_dirs[name] = root / f"{name}_{r}"
                    full[name].append(seconds)
            capacity.append(parallel_capacity())
        reference_bytes = _shard_bytes(output_dirs["workers_1"], outputs["workers_1"])
        same_bytes = {name: _shard_bytes(output_dirs[name], manifest) == reference_bytes for name, manifest in outputs.items()}

        # the in-memory balance of the concatenated pool
        matches = index.match_many(captions)
        ids = [f"{p.name}:{n}" for p in paths for n in range(PER_SHARD)]
        kept = balance(matches, len(entries), T, seed=SEED, ids=ids)
        in_memory = {f"{int(i) // PER_SHARD:03d}/{int(i) % PER_SHARD:06d}.jpg" for i in kept}
        equal_in_memory = _kept_images(output_dirs["workers_1"], outputs["workers_1"]) == in_memory

        killed = killed_and_resumed(metadata, index, root / "killed", paths)
        killed_same = _shard_bytes(root / "killed", killed.pop("manifest")) == reference_bytes

        memory = {n: peak_memory(metadata, root / f"memory_{n}", paths[:n]) for n in (1, SHARDS)}

    manifest = outputs["workers_1"]
    median = statistics.median
    # start-up: none in-process (the index is built once, in the caller, as the CLI does for every engine); a new
    # process pool every call (so it has no warm figure: its start-up is part of every call); the first call of a
    # kept pool or a fresh Dask cluster (their workers keep the index)
    startup = {"workers_1": 0.0, "workers_2": median(fixed["workers_2"]), "pool_2": fixed["pool_2"][0], "dask_2": fixed["dask_2"][0]}
    warm = {"workers_1": median(full["workers_1"]), "pool_2": median(full["pool_2"]), "dask_2": median(full["dask_2"])}
    end_to_end = {name: median(full["workers_2"]) if name == "workers_2" else warm[name] + startup[name] for name in startup}
    results.update({
        "rounds": ROUNDS, "full_seconds": full, "fixed_seconds": fixed, "parallel_capacity": capacity, "startup_seconds": startup,
        "rates": {name: len(captions) / s for name, s in end_to_end.items()},
        "rates_warm": {name: len(captions) / max(s, 1e-9) for name, s in warm.items()},
        "same_bytes": same_bytes, "equal_in_memory": equal_in_memory, "kept": manifest["kept"], "matched": manifest["matched"],
        "killed": {**killed, "same_bytes": killed_same},
        "memory_kib": {str(n): m["peak_kib"] for n, m in memory.items()},
        "memory_captions": {str(n): m["captions"] for n, m in memory.items()},
    })  # fmt: skip
    results["ratio_workers"] = results["rates"]["workers_2"] / results["rates"]["workers_1"]
    results["ratio_workers_warm"] = results["rates_warm"]["pool_2"] / results["rates_warm"]["workers_1"]
    results["ratio_dask_warm"] = results["rates_warm"]["dask_2"] / results["rates_warm"]["workers_1"]
    results["memory_ratio"] = memory[SHARDS]["peak_kib"] / memory[1]["peak_kib"]
    results["seconds"] = time.perf_counter() - started
    return results


def format_section(results: dict) -> str:
    import common

    r = results
    labels = {"workers_1": "1 process (`--workers 1`)", "workers_2": "2 worker processes, a new pool per call (`--workers 2`, spawn)",
              "pool_2": "2 worker processes, a pool kept across calls (`executor=`)",
              "dask_2": "Dask, `LocalCluster` of 2 worker processes (`--engine dask`)"}  # fmt: skip
    warm = r["rates_warm"]
    rows = [
        [label, f"{r['rates'][name]:,.0f}", f"{r['startup_seconds'][name]:.1f} s", f"{warm[name]:,.0f}" if name in warm else "—",
         f"{warm[name] / warm['workers_1']:.2f}" if name in warm else "—", common.yes_no(r["same_bytes"][name])]
        for name, label in labels.items()
    ]  # fmt: skip
    killed, memory = r["killed"], r["memory_kib"]
    capacity = " and ".join(f"{c:.2f}" for c in r["parallel_capacity"])
    lines = [
        "## Curation at scale: a sharded pool end to end",
        "",
        f"`curate_pool` on {r['captions']:,} SYNTHETIC captions in {r['shards']} JSONL shards of {r['per_shard']:,} "
        f"(`benchmarks/curation_scale.py`'s data: {r['entries']:,} metadata entries), t = {r['t']:,}: both passes, every file "
        f"written; {r['matched']:,} captions matched, {r['kept']:,} kept. Median of {r['rounds']} alternating rounds. Start-up: "
        "the wall time of the same call on a pool of 2 shards of one caption (both worker processes started, litzoo imported, the index built "
        "in each): every call for a new process pool, the first call only for a kept pool or a Dask cluster (their workers keep the index); in "
        f"this process the index is built once by the caller, as the CLI does for every engine ({r['build_seconds']:.1f} s, "
        f"not counted). Warm: the calls after the first, on workers that hold the index. {r['cores']} cores shared with whatever else runs (load average at start: "
        f"{r['load_at_start']}).",
        "",
        common.markdown_table(["engine", "captions/s (end to end)", "start-up", "captions/s (warm)", "warm vs 1 process",
                               "same curated bytes"], rows),  # fmt: skip
        "",
        f"- 2 workers / 1 process: **{r['ratio_workers']:.2f}** with a new pool per call (its start-up is paid by every call: "
        f"on this pool of {r['captions']:,} captions it dominates), **{r['ratio_workers_warm']:.2f}** on a kept pool; Dask with 2 "
        f"workers / 1 process, warm: {r['ratio_dask_warm']:.2f} (goal ≥ {GOAL_WORKERS}). Control, measured before and after "
        f"the rounds: 2 spawned processes running a pure-Python loop did {capacity}× the work of 1 in the same time (2.00 "
        "on 2 free cores): the parallel capacity this machine had then.",
        f"- Kept ids equal to the in-memory `balance(matches, E, t, seed, ids=...)` of the concatenated pool: {common.yes_no(r['equal_in_memory'])}.",
        f"- Killed (SIGKILL, {killed['seconds_to_kill']:.1f} s in, {killed['done_when_killed']} of {r['shards']} curated shards on disk) and "
        f"started again: same curated bytes {common.yes_no(killed['same_bytes'])}; not redone: pass 1 of {killed['skipped_pass1']} shards, "
        f"pass 2 of {killed['skipped_pass2']}; the rest finished in {killed['resume_seconds']:.1f} s.",
        f"- Peak memory of a fresh process (RSS high-water mark `VmHWM`, self + children) curating 1 shard: {memory['1'] / 1024:,.0f} MiB; "
        f"{r['shards']} shards of the same size: {memory[str(r['shards'])] / 1024:,.0f} MiB (ratio **{r['memory_ratio']:.2f}**; goal: flat).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    out = main()
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
