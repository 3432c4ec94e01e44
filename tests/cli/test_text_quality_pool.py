"""`litzoo text-quality --pool` (litzoo/cli/text_quality.py, framework/curation/text_quality_pool.py): a corpus in JSONL.gz,
Parquet and WebDataset tar shards, written here in each format's own layout and read back, prunes to the same documents
with the same scores as `prune` on the concatenated corpus; a truncated gzip shard is one error line naming it."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from litzoo.cli import main
from litzoo.datamodules.synthetic import text_quality_corpus
from litzoo.framework.curation.text_quality import prune


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = text_quality_corpus(tmp_path_factory.mktemp("tq_pool"), num_documents=120, junk_share=0.4, seed=3)
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


CUTS = [0, 50, 51, 120]  # three shards, one of a single document


def expected(corpus, ids, keep_fraction=0.5, seed=0):
    kept, scores, weights = prune(corpus, keep_fraction, seed=seed, ids=ids)
    return {ids[i]: float(scores[i]) for i in kept}, weights


def one_error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("litzoo: error: ") and err.count("\n") == 1, err
    return err.removeprefix("litzoo: error: ").strip()


def test_jsonl_gz_pool_keeps_what_prune_keeps(corpus, tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    ids = [f"web-{i:04d}" for i in range(len(corpus))]
    for k in range(3):
        with gzip.open(pool / f"part-{k:03d}.jsonl.gz", "wt", encoding="utf-8") as f:
            for i in range(CUTS[k], CUTS[k + 1]):
                f.write(json.dumps({"id": ids[i], "body": corpus[i], "lang": "en"}) + "\n")
    out = tmp_path / "out"
    main(["text-quality", "--pool", str(pool / "part-{000..002}.jsonl.gz"), "--output_dir", str(out), "--text_key", "body",
          "--id_key", "id", "--keep_fraction", "0.5"])  # fmt: skip
    want, weights = expected(corpus, ids)
    rows = []
    for k in range(3):
        with gzip.open(out / f"part-{k:03d}.jsonl.gz", "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    assert {row["id"]: row["quality_score"] for row in rows} == want
    assert all(set(row) == {"id", "body", "lang", "quality_score"} and row["body"] == corpus[ids.index(row["id"])] for row in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == weights and manifest["kept_total"] == len(want) == 60 and manifest["documents"] == [50, 1, 69]
    stdout = capsys.readouterr().out
    assert "filter weights: has_first_letter_caps=" in stdout and "scored 120 documents in 3 shards (1 worker); kept 60 (50.0%)" in stdout


def test_parquet_pool_keeps_what_prune_keeps(corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = tmp_path / "pool"
    pool.mkdir()
    for k in range(3):
        rows = {"id": list(range(CUTS[k], CUTS[k + 1])), "text": corpus[CUTS[k] : CUTS[k + 1]], "image": [f"img/{i}.png" for i in range(CUTS[k], CUTS[k + 1])]}
        pq.write_table(pa.table(rows), pool / f"shard-{k}.parquet", row_group_size=16)  # several row groups per shard
    out = tmp_path / "out"
    main(["text-quality", "--pool", str(pool / "shard-*.parquet"), "--output_dir", str(out), "--id_key", "id", "--keep_fraction", "0.6",
          "--seed", "2"])  # fmt: skip
    want, _ = expected(corpus, [str(i) for i in range(len(corpus))], 0.6, seed=2)
    rows = [row for k in range(3) for row in pq.read_table(out / f"shard-{k}.parquet").to_pylist()]
    assert {str(row["id"]): row["quality_score"] for row in rows} == want
    # the kept rows are the input rows (image paths rebased onto the output folder) plus the score
    assert all(row == {"id": row["id"], "text": corpus[row["id"]], "image": f"../pool/img/{row['id']}.png", "quality_score": row["quality_score"]}
               for row in rows)  # fmt: skip


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_pool_puts_the_score_in_the_json_member(corpus, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    keys = [f"{i:06d}" for i in range(len(corpus))]
    for k in range(3):
        samples = []
        for i in range(CUTS[k], CUTS[k + 1]):
            members = {"txt": corpus[i].encode(), "jpg": bytes([i % 256]) * 7}
            if i % 2:  # half the samples have a .json member already
                members["json"] = json.dumps({"url": f"http://x/{i}"}).encode()
            samples.append((keys[i], members))
        write_tar(pool / f"{k:05d}.tar", samples)
    out = tmp_path / "out"
    main(["text-quality", "--pool", str(pool), "--output_dir", str(out), "--text_key", "txt", "--keep_fraction", "0.5"])
    want, _ = expected(corpus, keys)
    got = {}
    for k in range(3):
        with tarfile.open(out / f"{k:05d}.tar") as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                got.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert {key: json.loads(members["json"])["quality_score"] for key, members in got.items()} == want
    for key, members in got.items():
        i = int(key)
        assert members["txt"].decode() == corpus[i] and members["jpg"] == bytes([i % 256]) * 7
        assert json.loads(members["json"]) == ({"url": f"http://x/{i}"} if i % 2 else {}) | {"quality_score": want[key]}


def test_manifest_and_pool_modes_keep_the_same_documents(corpus, tmp_path):
    (tmp_path / "pool").mkdir()
    lines = [json.dumps({"text": text, "id": f"d{i}"}) + "\n" for i, text in enumerate(corpus)]
    (tmp_path / "all.jsonl").write_text("".join(lines))
    for k in range(3):
        (tmp_path / "pool" / f"p{k}.jsonl").write_text("".join(lines[CUTS[k] : CUTS[k + 1]]))
    main(["text-quality", "--manifest", str(tmp_path / "all.jsonl"), "--output", str(tmp_path / "kept.jsonl"), "--id_key", "id", "--keep_fraction", "0.3"])
    main(["text-quality", "--pool", str(tmp_path / "pool" / "p2.jsonl"), str(tmp_path / "pool" / "p{0,1}.jsonl"), "--output_dir", str(tmp_path / "out"),
          "--id_key", "id", "--keep_fraction", "0.3"])  # fmt: skip
    from_manifest = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    from_pool = [json.loads(line) for k in range(3) for line in (tmp_path / "out" / f"p{k}.jsonl").read_text().splitlines()]
    assert sorted(from_manifest, key=lambda row: row["id"]) == sorted(from_pool, key=lambda row: row["id"])
    # negative control: without the ids, the manifest's tie-break (line indices) keeps another set among the tied scores
    main(["text-quality", "--manifest", str(tmp_path / "all.jsonl"), "--output", str(tmp_path / "kept2.jsonl"), "--keep_fraction", "0.3"])
    assert (tmp_path / "kept2.jsonl").read_text() != (tmp_path / "kept.jsonl").read_text()


def test_a_truncated_gzip_shard_is_one_line_naming_it(corpus, tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    for k in range(2):
        with gzip.open(pool / f"part-{k}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text}) + "\n" for text in corpus[k * 60 : (k + 1) * 60])
    whole = (pool / "part-1.jsonl.gz").read_bytes()
    (pool / "part-1.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    message = one_error_line(capsys, ["text-quality", "--pool", str(pool / "part-*.jsonl.gz"), "--output_dir", str(tmp_path / "out")])
    assert f"shard '{pool / 'part-1.jsonl.gz'}'" in message and "truncated" in message
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "part-0.jsonl.gz").exists()


def test_progress_bars_show_shards_and_documents(corpus, tmp_path, capsys):
    (tmp_path / "pool").mkdir()
    for k in range(2):
        (tmp_path / "pool" / f"{k}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[k * 20 : (k + 1) * 20]))
    main(["text-quality", "--pool", str(tmp_path / "pool"), "--output_dir", str(tmp_path / "out"), "--progress", "true"])
    err = capsys.readouterr().err
    for bar in ("statistics: shards", "statistics: documents", "weights: merging", "scoring: shards", "scoring: documents", "writing: documents"):
        assert bar in err, bar
    assert " docs" in err and " shards" in err


def test_mode_and_argument_errors_are_one_line(corpus, tmp_path, capsys):
    shard = tmp_path / "a.jsonl"
    shard.write_text(json.dumps({"text": corpus[0]}) + "\n")
    cases = [
        ([], "give either --manifest FILE --output FILE"),
        (["--manifest", str(shard), "--pool", str(shard), "--output", str(tmp_path / "o.jsonl")], "give either --manifest"),
        (["--pool", str(shard), "--output", str(tmp_path / "o.jsonl")], "--pool goes with --output_dir (not --output)"),
        (["--manifest", str(shard), "--output_dir", str(tmp_path / "o")], "--manifest goes with --output"),
        (["--pool", str(shard), "--output_dir", str(tmp_path / "o"), "--workers", "0"], "--workers 0: the number of worker processes must be at least 1"),
        (["--pool", str(tmp_path / "missing-{0..1}.jsonl"), "--output_dir", str(tmp_path / "o")], "missing-0.jsonl"),
        (["--pool", str(shard), "--output_dir", str(tmp_path)], "would overwrite the input shard"),
        (["--pool", str(shard), "--output_dir", str(shard)], f"--output_dir '{shard}' is a file, not a folder"),
        (["--pool", str(shard), "--output_dir", str(tmp_path / "o"), "--filters", "[no_such]"], "unknown filters ['no_such']"),
    ]
    for args, message in cases:
        assert message in one_error_line(capsys, ["text-quality", *args]), args
