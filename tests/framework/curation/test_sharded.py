"""MetaCLIP curation of a sharded pool (framework/curation/sharded.py): equal to the in-memory ``balance`` of the whole
pool, the same bytes whatever the workers, the engine, the shard order or a kill and a resume; every shard format in
and out, written here by hand in its on-disk format and read back by hand."""

from __future__ import annotations

import gzip
import io
import json
import random
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from litzoo.framework.curation import MetadataIndex, balance, entry_counts, keep_probabilities, sharded
from litzoo.framework.curation.sharded import curate_pool
from litzoo.framework.errors import LitzooError

WORDS = ["cat", "dog", "red", "car", "big", "tree", "house", "New", "York", "blue", "sky", "old", "boat"]
ENTRIES = ["cat", "dog", "red car", "big", "tree", "New York", "blue sky", "old boat", "house", "York", "sky", "U.S."]


def captions(n: int, seed: int) -> list[str]:
    """Zipf-like captions: 'cat' and 'dog' in most (the head t cuts), the other entries rarer (the tail)."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** 1.2 for k in range(len(WORDS))]
    return [" ".join(rng.choices(WORDS, weights, k=rng.randint(1, 7))) + rng.choice(["", ".", "!"]) for _ in range(n)]


def write_jsonl_pool(folder: Path, shards: int = 4, per_shard: int = 120, gz: bool = False, id_key: str | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(shards):
        rows = [{"image": f"images/{k}_{i}.png", "text": text} for i, text in enumerate(captions(per_shard, k))]
        if id_key:
            for i, row in enumerate(rows):
                row[id_key] = f"id-{k}-{i}"
        text = "".join(json.dumps(r) + "\n" + ("\n" if i % 17 == 3 else "") for i, r in enumerate(rows))  # blank lines: not samples
        path = folder / f"pool-{k:03d}.jsonl{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
        paths.append(path)
    return paths


def write_tar_pool(folder: Path, shards: int = 3, per_shard: int = 60) -> list[Path]:
    """WebDataset shards: <key>.jpg (random bytes), <key>.txt (the caption), <key>.json on every other sample."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(shards):
        path = folder / f"shard-{k:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, text in enumerate(captions(per_shard, 10 + k)):
                members = {"jpg": rng.integers(0, 256, 40, dtype=np.uint8).tobytes(), "txt": text.encode()}
                if i % 2:
                    members["json"] = json.dumps({"width": 32, "source": f"s{k}"}).encode()
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{k:02d}{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def write_parquet_pool(folder: Path, shards: int = 3, per_shard: int = 90) -> list[Path]:
    import pyarrow
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(shards):
        rows = [{"uid": f"u{k}_{i}", "caption": text, "width": i} for i, text in enumerate(captions(per_shard, 20 + k))]
        path = folder / f"part-{k}.parquet"
        pq.write_table(pyarrow.Table.from_pylist(rows), path, row_group_size=25)
        paths.append(path)
    return paths


def read_samples(path: Path) -> list[dict]:
    """A shard read back by hand, in its on-disk format."""
    name = path.name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if name.endswith(".jsonl.gz"):
        return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line.strip()]
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return list(samples.values())


def pool_texts_and_ids(paths: list[Path], text_key: str, id_key: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """Every caption of the pool, its id (the rule of Sample.key) and its shard's name, by hand."""
    texts, ids, shard_of = [], [], []
    for path in paths:
        for n, sample in enumerate(read_samples(path)):
            if path.name.endswith(".tar"):
                texts.append(sample[text_key].decode())
                ids.append(sample["__key__"])
            else:
                texts.append(sample[text_key])
                ids.append(str(sample[id_key]) if id_key else f"{path.name}:{n}")
            shard_of.append(path.name)
    return texts, ids, shard_of


def reference(paths: list[Path], t: int, seed: int, text_key: str = "text", id_key: str | None = None) -> dict[str, list[str]]:
    """Kept ids per shard from the in-memory balance of the concatenated pool."""
    texts, ids, shard_of = pool_texts_and_ids(paths, text_key, id_key)
    matches = MetadataIndex(ENTRIES).match_many(texts)
    kept = balance(matches, len(ENTRIES), t, seed=seed, ids=ids, counts=entry_counts(matches, len(ENTRIES)))
    out: dict[str, list[str]] = {p.name: [] for p in paths}
    for i in kept:
        out[shard_of[i]].append(ids[i])
    return out


def curated_ids(output_dir: Path, manifest: dict, id_of) -> dict[str, list[str]]:
    return {Path(s["input"]).name: [id_of(Path(s["input"]).name, r) for r in read_samples(output_dir / s["output"])] for s in manifest["shards"]}


def jsonl_id(kept_positions: dict[str, dict[str, int]]):
    """JSONL records carry no id: find a curated record's position in its input shard by its (unique) image path."""
    def id_of(shard: str, record: dict) -> str:
        return f"{shard}:{kept_positions[shard][Path(record['image']).name]}"

    return id_of


def image_positions(paths: list[Path]) -> dict[str, dict[str, int]]:
    return {p.name: {Path(r["image"]).name: n for n, r in enumerate(read_samples(p))} for p in paths}


def shard_bytes(output_dir: Path, manifest: dict) -> dict[str, bytes]:
    return {s["output"]: (output_dir / s["output"]).read_bytes() for s in manifest["shards"]}


# ---- equal to the in-memory balance; the same bytes whatever the workers and the order -----------------------------


def test_pool_equals_the_in_memory_balance_for_one_and_two_workers_and_any_shard_order(tmp_path):
    paths = write_jsonl_pool(tmp_path / "pool")
    t, seed = 8, 3
    expected = reference(paths, t, seed)
    one = curate_pool(paths, ENTRIES, t, tmp_path / "one", seed=seed, progress=False)
    got = curated_ids(tmp_path / "one", one, jsonl_id(image_positions(paths)))
    assert got == expected
    assert sum(map(len, expected.values())) == one["kept"] and 0 < one["kept"] < one["matched"] < one["captions"] == 480  # not vacuous

    # the counts: before = the whole pool's c_e, after = the kept captions', both in entry_counts.npy
    texts, ids, _ = pool_texts_and_ids(paths, "text")
    matches = MetadataIndex(ENTRIES).match_many(texts)
    kept_ids = {i for shard in expected.values() for i in shard}
    counts = np.load(tmp_path / "one" / "entry_counts.npy")
    assert counts.shape == (2, len(ENTRIES))
    assert counts[0].tolist() == entry_counts(matches, len(ENTRIES)).tolist()
    assert counts[1].tolist() == entry_counts([m for m, i in zip(matches, ids, strict=True) if i in kept_ids], len(ENTRIES)).tolist()
    assert counts[0].max() > 3 * t and counts[1].max() < counts[0].max()  # a head entry was cut
    assert one["expected"] == pytest.approx(sum(keep_probabilities(matches, len(ENTRIES), t)))
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert [s["kept"] for s in manifest["shards"]] == [len(expected[p.name]) for p in paths]
    # paths relative to the pool's folder, rewritten relative to the output's
    first = read_samples(tmp_path / "one" / "pool-000.jsonl")[0]
    assert (tmp_path / "one" / first["image"]).resolve().parent == (tmp_path / "pool" / "images").resolve()
    assert first["entries"] == [ENTRIES[e] for e in MetadataIndex(ENTRIES).match(first["text"])]

    two = curate_pool(paths, ENTRIES, t, tmp_path / "two", seed=seed, workers=2, progress=False)
    backwards = curate_pool(paths[::-1], ENTRIES, t, tmp_path / "backwards", seed=seed, progress=False)
    reference_bytes = shard_bytes(tmp_path / "one", one)
    assert shard_bytes(tmp_path / "two", two) == reference_bytes == shard_bytes(tmp_path / "backwards", backwards)
    assert np.array_equal(np.load(tmp_path / "two" / "entry_counts.npy"), counts)
    # a process pool of the caller's, used for two runs: its workers build the index at their first task and keep it
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for run in ("kept_pool_a", "kept_pool_b"):
            kept_pool = curate_pool(paths, ENTRIES, t, tmp_path / run, seed=seed, executor=pool, progress=False)
            assert shard_bytes(tmp_path / run, kept_pool) == reference_bytes
        assert pool.submit(sum, [1, 2]).result() == 3  # still open: the caller's to shut down
    with pytest.raises(ValueError, match="executor"):
        curate_pool(paths, ENTRIES, t, tmp_path / "both", executor=pool, workers=2)
    # negative control: another seed curates another subset
    other = curate_pool(paths, ENTRIES, t, tmp_path / "other", seed=seed + 1, progress=False)
    assert shard_bytes(tmp_path / "other", other) != reference_bytes


# ---- kill and resume ----------------------------------------------------------------------------------------------


def counting(monkeypatch, name: str, fail_after: int | None = None) -> list[str]:
    """Wrap sharded.<name> (looked up at call time by curate_pool): record the shards it runs on, and raise
    KeyboardInterrupt, as a kill would stop the run, when called again after ``fail_after`` shards."""
    calls, function = [], getattr(sharded, name)

    def wrapped(shard, *args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append(Path(shard).name)
        return function(shard, *args, **kwargs)

    monkeypatch.setattr(sharded, name, wrapped)
    return calls


@pytest.mark.parametrize("killed_in", ["match_shard", "curate_shard"])
def test_a_killed_run_resumes_without_redoing_finished_shards(tmp_path, monkeypatch, killed_in):
    paths = write_jsonl_pool(tmp_path / "pool")
    whole = curate_pool(paths, ENTRIES, 8, tmp_path / "whole", progress=False)

    with monkeypatch.context() as patch:
        counting(patch, killed_in, fail_after=1)
        with pytest.raises(KeyboardInterrupt):
            curate_pool(paths, ENTRIES, 8, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()  # unfinished: no manifest
    assert not [p for p in (tmp_path / "out").rglob("*") if ".partial" in p.name]  # no half-written file

    matched, curated = counting(monkeypatch, "match_shard"), counting(monkeypatch, "curate_shard")
    resumed = curate_pool(paths, ENTRIES, 8, tmp_path / "out", progress=False)
    if killed_in == "match_shard":  # the first shard's pass 1 was done: only the others are matched again
        assert matched == [p.name for p in paths[1:]] and curated == [p.name for p in paths]
        assert resumed["resumed"] == {"matched": [paths[0].name], "curated": []}
    else:  # pass 1 all done, the first shard curated: neither is redone
        assert matched == [] and curated == [p.name for p in paths[1:]]
        assert resumed["resumed"] == {"matched": [p.name for p in paths], "curated": [paths[0].name]}
    assert shard_bytes(tmp_path / "out", resumed) == shard_bytes(tmp_path / "whole", whole)
    assert np.array_equal(np.load(tmp_path / "out" / "entry_counts.npy"), np.load(tmp_path / "whole" / "entry_counts.npy"))

    # a finished run started again redoes nothing and writes the same manifest
    matched.clear(), curated.clear()
    again = curate_pool(paths, ENTRIES, 8, tmp_path / "out", progress=False)
    assert matched == curated == [] and again["resumed"] == {"matched": [p.name for p in paths], "curated": [p.name for p in paths]}
    assert again["shards"] == whole["shards"]


def test_a_changed_shard_is_matched_again_and_every_shard_rebalanced(tmp_path, monkeypatch):
    paths = write_jsonl_pool(tmp_path / "pool")
    curate_pool(paths, ENTRIES, 8, tmp_path / "out", progress=False)
    with paths[2].open("a") as f:
        f.write(json.dumps({"image": "images/new.png", "text": "cat cat dog New York"}) + "\n")
    matched, curated = counting(monkeypatch, "match_shard"), counting(monkeypatch, "curate_shard")
    resumed = curate_pool(paths, ENTRIES, 8, tmp_path / "out", progress=False)
    assert matched == [paths[2].name] and curated == [p.name for p in paths]  # the global counts changed: all of pass 2
    fresh = curate_pool(paths, ENTRIES, 8, tmp_path / "fresh", progress=False)
    assert shard_bytes(tmp_path / "out", resumed) == shard_bytes(tmp_path / "fresh", fresh)


def test_other_arguments_are_refused_in_the_same_folder_unless_overwritten(tmp_path):
    paths = write_jsonl_pool(tmp_path / "pool", shards=2)
    curate_pool(paths, ENTRIES, 8, tmp_path / "out", progress=False)
    with pytest.raises(LitzooError) as error:
        curate_pool(paths, ENTRIES, 20, tmp_path / "out", progress=False)
    message = str(error.value)
    assert "\n" not in message and "t 8 -> 20" in message and "use a new --output_dir, or --overwrite" in message
    with pytest.raises(LitzooError, match="other shards"):
        curate_pool(paths[:1], ENTRIES, 8, tmp_path / "out", progress=False)
    with pytest.raises(LitzooError, match="metadata_fingerprint"):
        curate_pool(paths, ENTRIES[:-1], 8, tmp_path / "out", progress=False)
    replaced = curate_pool(paths, ENTRIES, 20, tmp_path / "out", progress=False, overwrite=True, output_format="jsonl.gz")
    fresh = curate_pool(paths, ENTRIES, 20, tmp_path / "fresh", progress=False, output_format="jsonl.gz")
    assert shard_bytes(tmp_path / "out", replaced) == shard_bytes(tmp_path / "fresh", fresh)
    assert not list((tmp_path / "out").glob("*.jsonl"))  # the previous run's shards were removed, not left beside


def test_a_folder_with_other_files_or_the_inputs_is_refused(tmp_path):
    paths = write_jsonl_pool(tmp_path / "pool", shards=2)
    with pytest.raises(LitzooError, match="would replace the input shard of that name"):
        curate_pool(paths, ENTRIES, 8, tmp_path / "pool", progress=False, overwrite=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "pool-001.jsonl").write_text("precious\n")
    with pytest.raises(LitzooError, match="already holds 'pool-001.jsonl', not written by a curation run"):
        curate_pool(paths, ENTRIES, 8, tmp_path / "busy", progress=False)
    assert (tmp_path / "busy" / "pool-001.jsonl").read_text() == "precious\n"


# ---- formats -------------------------------------------------------------------------------------------------------


def test_webdataset_tar_in_and_out_copies_every_member_and_adds_entries_to_the_json(tmp_path):
    paths = write_tar_pool(tmp_path / "pool")
    expected = reference(paths, 5, 0, text_key="txt")
    manifest = curate_pool(paths, ENTRIES, 5, tmp_path / "out", text_key="txt", progress=False)
    got = curated_ids(tmp_path / "out", manifest, lambda shard, record: record["__key__"])
    assert got == expected and 0 < manifest["kept"] < manifest["matched"]
    originals = {s["__key__"]: s for p in paths for s in read_samples(p)}
    index = MetadataIndex(ENTRIES)
    for path in paths:
        for sample in read_samples(tmp_path / "out" / path.name):
            original = originals[sample["__key__"]]
            assert set(sample) == set(original) | {"json"}
            assert sample["jpg"] == original["jpg"] and sample["txt"] == original["txt"]  # copied byte for byte
            meta = json.loads(sample["json"])
            assert meta.pop("entries") == [ENTRIES[e] for e in index.match(original["txt"].decode())]
            assert meta == (json.loads(original["json"]) if "json" in original else {})  # created when absent

    # open_clip's sizes.json beside the curated shards: what a loader reads instead of counting them
    from litzoo.framework.data.shard_stream import read_shard_sizes

    curated = [tmp_path / "out" / s["output"] for s in manifest["shards"]]
    assert read_shard_sizes(curated) == [len(read_samples(p)) for p in curated] == [s["kept"] for s in manifest["shards"]]

    as_parquet = curate_pool(paths, ENTRIES, 5, tmp_path / "parquet", text_key="txt", output_format="parquet", progress=False)
    rows = read_samples(tmp_path / "parquet" / as_parquet["shards"][0]["output"])
    assert as_parquet["shards"][0]["output"] == "shard-000.parquet"
    assert [r["__key__"] for r in rows] == expected["shard-000.tar"] and isinstance(rows[0]["jpg"], bytes)
    with pytest.raises(LitzooError, match=r"member '\d+\.jpg' holds bytes, which jsonl cannot store"):
        curate_pool(paths, ENTRIES, 5, tmp_path / "jsonl", text_key="txt", output_format="jsonl", progress=False)


def test_parquet_and_gzip_jsonl_pools_with_an_id_key(tmp_path):
    paths = write_parquet_pool(tmp_path / "parquet")
    expected = reference(paths, 6, 1, text_key="caption", id_key="uid")
    manifest = curate_pool(paths, ENTRIES, 6, tmp_path / "out", text_key="caption", id_key="uid", seed=1, progress=False)
    got = curated_ids(tmp_path / "out", manifest, lambda shard, record: record["uid"])
    assert got == expected and 0 < manifest["kept"] < manifest["matched"]
    row = read_samples(tmp_path / "out" / "part-0.parquet")[0]
    assert set(row) == {"uid", "caption", "width", "entries"} and row["entries"]

    gz = write_jsonl_pool(tmp_path / "gz", shards=2, gz=True, id_key="key")
    expected = reference(gz, 6, 0, id_key="key")
    manifest = curate_pool(gz, ENTRIES, 6, tmp_path / "gz_out", id_key="key", progress=False)
    assert curated_ids(tmp_path / "gz_out", manifest, lambda shard, record: record["key"]) == expected
    assert manifest["shards"][0]["output"] == "pool-000.jsonl.gz"

    # JSONL to WebDataset: <key>.json holds the record and its entries, <key>.txt the caption
    as_tar = curate_pool(gz, ENTRIES, 6, tmp_path / "tar_out", id_key="key", output_format="tar", progress=False)
    samples = read_samples(tmp_path / "tar_out" / "pool-001.tar")
    assert [s["__key__"] for s in samples] == expected["pool-001.jsonl.gz"]
    record = json.loads(samples[0]["json"])
    assert record["key"] == samples[0]["__key__"] and samples[0]["txt"].decode() == record["text"] and record["entries"]
    assert as_tar["kept"] == manifest["kept"]


# ---- errors --------------------------------------------------------------------------------------------------------


def test_bad_pools_are_one_line_naming_the_shard(tmp_path):
    paths = write_jsonl_pool(tmp_path / "pool", shards=2, id_key="key")
    paths[1].write_text(paths[1].read_text().replace('"id-1-5"', '"id-1-2"'))
    with pytest.raises(LitzooError, match=r"pool-001.jsonl' holds the id 'id-1-2' \('key'\) twice"):
        curate_pool(paths, ENTRIES, 8, tmp_path / "a", id_key="key", progress=False)
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / paths[0].name
    twin.write_text(paths[0].read_text())
    with pytest.raises(LitzooError, match="have the same name"):
        curate_pool([paths[0], twin], ENTRIES, 8, tmp_path / "b", progress=False)
    paths[0].write_text(paths[0].read_text() + "not json\n")
    with pytest.raises(LitzooError, match=r"pool-000.jsonl' line 128 is not JSON") as error:
        curate_pool(paths, ENTRIES, 8, tmp_path / "c", id_key="key", progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="workers"):
        curate_pool(paths, ENTRIES, 8, tmp_path / "d", workers=0)


def test_the_dask_engine_without_dask_says_how_to_install_it(tmp_path, monkeypatch):
    paths = write_jsonl_pool(tmp_path / "pool", shards=1, per_shard=10)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(LitzooError) as error:
        curate_pool(paths, ENTRIES, 8, tmp_path / "out", engine="dask", progress=False)
    assert str(error.value).endswith("pip install litzoo[distributed]")


# ---- progress and TensorBoard ---------------------------------------------------------------------------------------


def test_progress_bars_and_the_tensorboard_summary(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    paths = write_jsonl_pool(tmp_path / "pool", shards=3)
    manifest = curate_pool(paths, ENTRIES, 8, tmp_path / "out", progress=True, log_dir=tmp_path / "tb")
    err = capsys.readouterr().err
    assert "matching:" in err and "3/3 shards" in err and "captions/s" in err and "writing:" in err and "/360" in err
    curate_pool(paths, ENTRIES, 8, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    fractions = [(e.step, e.value) for e in events.Scalars("curation/kept_fraction")]
    assert fractions == [(i, pytest.approx(s["kept"] / s["captions"])) for i, s in enumerate(manifest["shards"])]
    histograms = events.Histograms("curation/log10_entry_count")
    counts = np.load(tmp_path / "out" / "entry_counts.npy")
    assert [h.step for h in histograms] == [0, 1]
    assert [h.histogram_value.num for h in histograms] == [(counts[0] > 0).sum(), (counts[1] > 0).sum()]
    assert histograms[0].histogram_value.max == pytest.approx(np.log10(counts[0].max()))


# ---- Dask ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_dask_engine_on_a_local_cluster_curates_the_same_bytes(tmp_path):
    distributed = pytest.importorskip("distributed")
    paths = write_jsonl_pool(tmp_path / "pool")
    here = curate_pool(paths, ENTRIES, 8, tmp_path / "here", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = curate_pool(paths, ENTRIES, 8, tmp_path / "dask", engine="dask", scheduler_address=cluster.scheduler_address, progress=False)
        workers = len(cluster.scheduler_info["workers"])
        # a bad shard: the task's LitzooError comes back from the worker as the same one line
        paths[1].write_text(paths[1].read_text() + "not json\n")
        with pytest.raises(LitzooError, match=r"pool-001.jsonl' line 128 is not JSON") as error:
            curate_pool(paths, ENTRIES, 8, tmp_path / "bad", engine="dask", scheduler_address=cluster.scheduler_address, progress=False)
        assert "\n" not in str(error.value)
    assert workers == 2
    assert shard_bytes(tmp_path / "dask", dask) == shard_bytes(tmp_path / "here", here)
    assert np.array_equal(np.load(tmp_path / "dask" / "entry_counts.npy"), np.load(tmp_path / "here" / "entry_counts.npy"))
