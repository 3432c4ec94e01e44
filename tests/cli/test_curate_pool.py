"""``litzoo curate --pool ... --output_dir ...``: the sharded pool through the command line (brace ranges, resume,
refusals and argument errors as one line), and ``--manifest`` mode running through the same engine."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import pytest

from litzoo.cli import main
from litzoo.framework.curation import MetadataIndex, balance
from litzoo.framework.curation.sharded import curate_pool

ENTRIES = ["cat", "dog", "red car", "New York", "sky"]
TEXTS = ["a cat", "a dog and a cat", "red car in New York", "blue sky", "nothing", "cat, dog; sky!", "New York cat"]


def pool(folder, shards=3, per_shard=40):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        rows = [{"image": f"img/{k}_{i}.png", "text": TEXTS[(i * 3 + k) % len(TEXTS)] + f" {i}"} for i in range(per_shard)]
        (folder / f"pool-{k:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metadata.json").write_text(json.dumps(ENTRIES))
    return folder


def one_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("litzoo: error: "), err
    return err.removeprefix("litzoo: error: ")


def test_curate_a_pool_from_a_brace_range_and_resume(tmp_path, capsys):
    data = pool(tmp_path / "data")
    out = tmp_path / "out"
    args = ["curate", "--pool", str(data / "pool-{00..02}.jsonl"), "--output_dir", str(out), "--metadata", str(data / "metadata.json"),
            "--t", "10", "--seed", "4", "--log_dir", str(tmp_path / "tb")]  # fmt: skip
    main(args)
    line = capsys.readouterr().out.strip()
    manifest = json.loads((out / "manifest.json").read_text())
    assert line.startswith(f"curated 120 captions in 3 shards -> {manifest['matched']} matched -> {manifest['kept']} kept (expected ")
    assert f"written to {out} (manifest.json, entry_counts.npy)" in line and line.count("\n") == 0
    # the same curation as the library call, equal to the in-memory balance of the concatenated pool
    texts, ids = [], []
    for k in range(3):
        for n, line_ in enumerate((data / f"pool-{k:02d}.jsonl").read_text().splitlines()):
            texts.append(json.loads(line_)["text"])
            ids.append(f"pool-{k:02d}.jsonl:{n}")
    kept = balance(MetadataIndex(ENTRIES).match_many(texts), len(ENTRIES), 10, seed=4, ids=ids)
    got = [json.loads(x)["text"] for k in range(3) for x in (out / f"pool-{k:02d}.jsonl").read_text().splitlines()]
    assert got == [texts[i] for i in kept] and 0 < len(kept) < manifest["matched"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

    main(args)  # again: every shard resumed, nothing recomputed, the same files
    assert "(resumed: 3 matched, 3 curated before)" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["shards"] == manifest["shards"]

    # another threshold in the same folder: refused in one line; --overwrite replaces the run
    message = one_error_line(capsys, [*args[:-2], "--t", "3"])
    assert "holds a curation with other arguments (t 10 -> 3)" in message and "--overwrite" in message
    main([*args[:-2], "--t", "3", "--overwrite", "true", "--output_format", "jsonl.gz", "--progress", "false"])
    assert "3 shards ->" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("pool-*")) == [f"pool-{k:02d}.jsonl.gz" for k in range(3)]
    assert all(json.loads(x)["entries"] for x in gzip.decompress((out / "pool-00.jsonl.gz").read_bytes()).decode().splitlines())


def test_pool_arguments_are_checked_in_one_line(tmp_path, capsys, monkeypatch):
    data = pool(tmp_path / "data", shards=1)
    base = ["curate", "--metadata", str(data / "metadata.json")]
    assert one_error_line(capsys, ["curate", "--pool", str(data)]) == (
        "the following arguments are required: metadata, output_dir (`litzoo curate --help` lists the options)")  # fmt: skip
    both = one_error_line(capsys, [*base, "--pool", str(data), "--manifest", str(data / "pool-00.jsonl")])
    assert both.startswith("--pool and --manifest cannot be used together")
    assert one_error_line(capsys, [*base]).startswith("one of the arguments --pool (with --output_dir) or --manifest (with --output) is required")
    stray = one_error_line(capsys, [*base, "--pool", str(data), "--output_dir", str(tmp_path / "o"), "--output", "x.jsonl"])
    assert stray.startswith("--output does not apply here: --pool writes to --output_dir")
    workers = one_error_line(capsys, [*base, "--pool", str(data), "--output_dir", str(tmp_path / "o"), "--workers", "0"])
    assert workers == "--workers 0: the number of worker processes must be at least 1"
    missing = one_error_line(capsys, [*base, "--pool", str(data / "pool-{00..05}.jsonl"), "--output_dir", str(tmp_path / "o")])
    assert "5 of its 6 shards do not exist" in missing
    monkeypatch.setitem(sys.modules, "distributed", None)
    dask = one_error_line(capsys, [*base, "--pool", str(data), "--output_dir", str(tmp_path / "o"), "--engine", "dask"])
    assert dask.endswith("pip install litzoo[distributed]")
    engine = one_error_line(capsys, [*base, "--pool", str(data), "--output_dir", str(tmp_path / "o"), "--engine", "ray"])
    assert "invalid choice: 'ray'" in engine


def test_manifest_mode_runs_through_the_engine_and_leaves_only_its_two_files(tmp_path, capsys):
    data = pool(tmp_path / "data", shards=1)
    output = tmp_path / "curated" / "kept.jsonl"
    main(["curate", "--manifest", str(data / "pool-00.jsonl"), "--metadata", str(data / "metadata.json"), "--t", "5", "--output", str(output)])
    printed = capsys.readouterr().out
    assert printed.startswith("curated 40 texts -> ") and f"written to {output} (entry counts before / after: " in printed
    assert sorted(p.name for p in output.parent.iterdir()) == ["kept.entry_counts.npy", "kept.jsonl"]  # no work folder left
    # the same records as a pool of one shard curated by the library, paths rebased to the output's folder
    reference = curate_pool([data / "pool-00.jsonl"], ENTRIES, 5, tmp_path / "ref", progress=False, paths_relative_to=output.parent)
    assert output.read_bytes() == (tmp_path / "ref" / "pool-00.jsonl").read_bytes()
    assert np.array_equal(np.load(output.with_suffix(".entry_counts.npy")), np.load(tmp_path / "ref" / "entry_counts.npy"))
    assert json.loads(output.read_text().splitlines()[0])["image"].startswith("../data/img/0_")
    assert reference["kept"] == len(output.read_text().splitlines())
    # another output format by its name
    parquet = tmp_path / "curated" / "kept.parquet"
    main(["curate", "--manifest", str(data / "pool-00.jsonl"), "--metadata", str(data / "metadata.json"), "--t", "5", "--output", str(parquet)])
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).column("text").to_pylist() == [json.loads(x)["text"] for x in output.read_text().splitlines()]
