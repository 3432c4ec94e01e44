"""Shards of a pool: every format written by ShardWriter and read back by iter_samples; WebDataset tars as other
tools write them; shard specs; and every kind of damaged file, written in its exact format, refused with one line
that names the shard and the place."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from litzoo.framework.data.shards import (
    PARQUET_BATCH_ROWS,
    Sample,
    ShardWriter,
    count_samples,
    expand_shards,
    get_text,
    iter_samples,
    shard_format,
)
from litzoo.framework.errors import LitzooError

FORMATS = ["jsonl", "jsonl.gz", "parquet", "tar"]


def _records(fmt: str, n: int) -> list[dict]:
    if fmt == "tar":
        return [
            {"__key__": f"{i:06d}", "jpg": bytes([i % 256, 0xFF, 0xD8]) * 3, "txt": f"a photo é {i}", "json": {"caption": f"c{i}", "w": i},
             "cls": i % 7}
            for i in range(n)
        ]  # fmt: skip
    return [{"id": f"s{i}", "text": f"caption é {i}", "meta": {"caption": f"c{i}", "score": i / 4}, "tags": [i, i + 1]} for i in range(n)]


def _write(path, records):
    with ShardWriter(path) as writer:
        for record in records:
            writer.write(record)
    assert writer.written == len(records)
    return path


def _tar(path, members, mode="w"):
    """A tar written by Python's tarfile directly, as other tools write WebDataset shards: (name, bytes) members,
    or (name, None) for a folder entry."""
    with tarfile.open(path, mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname = 1_700_000_000, "someone"
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


# ---- formats and round trips ----------------------------------------------------------------------------------------


def test_shard_format_from_the_name():
    assert [shard_format(n) for n in ["a.jsonl", "a.jsonl.gz", "b/c.parquet", "00.tar", "X.JSONL"]] == [
        "jsonl", "jsonl.gz", "parquet", "tar", "jsonl",
    ]  # fmt: skip
    for bad in ["a.json", "a.gz", "a.tar.gz", "a.csv", ".jsonl"]:
        with pytest.raises(LitzooError, match="unknown format"):
            shard_format(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keys_positions_and_start(tmp_path, fmt):
    n = 2 * PARQUET_BATCH_ROWS + 300 if fmt == "parquet" else 300  # Parquet: several row groups
    records = _records(fmt, n)
    shard = _write(tmp_path / f"pool-000.{fmt}", records)
    samples = list(iter_samples(shard))
    assert [s.record for s in samples] == records
    assert [s.position for s in samples] == list(range(n))
    assert all(s.shard == shard for s in samples)
    if fmt == "tar":
        assert [s.key for s in samples] == [r["__key__"] for r in records]
    else:
        assert [s.key for s in samples] == [f"pool-000.{fmt}:{i}" for i in range(n)]
        assert [s.key for s in iter_samples(shard, id_key="id")] == [r["id"] for r in records]
    assert count_samples(shard) == n
    for start in [0, 1, 137, PARQUET_BATCH_ROWS, PARQUET_BATCH_ROWS + 5, n - 1, n, n + 10]:
        assert list(iter_samples(shard, start=start)) == samples[start:], start
    text_key = "json.caption" if fmt == "tar" else "meta.caption"
    assert [get_text(s.record, text_key) for s in iter_samples(shard, text_key=text_key)] == [f"c{i}" for i in range(n)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_shard_is_valid(tmp_path, fmt):
    shard = _write(tmp_path / f"empty.{fmt}", [])
    assert list(iter_samples(shard)) == [] and count_samples(shard) == 0


def test_jsonl_lines_blank_lines_and_keys(tmp_path):
    shard = tmp_path / "a.jsonl"
    shard.write_text('{"text": "x", "id": 7}\n\n   \n{"text": "y", "id": 8}\n', encoding="utf-8")
    samples = list(iter_samples(shard, text_key="text", id_key="id"))
    assert samples == [Sample("7", {"text": "x", "id": 7}, shard, 0), Sample("8", {"text": "y", "id": 8}, shard, 1)]
    assert [s.key for s in iter_samples(shard)] == ["a.jsonl:0", "a.jsonl:1"]  # blank lines are not counted
    assert count_samples(shard) == 2


def test_jsonl_writer_writes_one_plain_json_line_per_record(tmp_path):
    records = [{"text": "naïve café", "n": 1}, {"text": "b", "nested": {"x": [1, 2]}}]
    plain = _write(tmp_path / "a.jsonl", records)
    assert plain.read_text(encoding="utf-8") == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    packed = _write(tmp_path / "a.jsonl.gz", records)
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert packed.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime 0: the same records give the same bytes
    assert _write(tmp_path / "b.jsonl.gz", records).read_bytes() == packed.read_bytes()


def test_tar_writer_is_deterministic_webdataset(tmp_path):
    records = _records("tar", 20)
    first = _write(tmp_path / "a.tar", records)
    os.utime(first, (1, 1))
    second = _write(tmp_path / "b.tar", records)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as archive:
        members = archive.getmembers()
        assert [m.name for m in members[:4]] == ["000000.jpg", "000000.txt", "000000.json", "000000.cls"]
        assert {(m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) for m in members} == {(0, 0, 0, 0o644, "", "")}
        assert archive.extractfile("000003.json").read() == b'{"caption": "c3", "w": 3}'
        assert archive.extractfile("000003.cls").read() == b"3"
        assert archive.extractfile("000003.txt").read() == "a photo é 3".encode()


def test_parquet_writer_columns_and_batches(tmp_path):
    # the first record lacks "extra": the columns are those of the whole first batch, not of its first row
    records = [{"text": "a"}, {"text": "b", "extra": 2.5}] + [{"text": f"t{i}", "extra": float(i)} for i in range(PARQUET_BATCH_ROWS + 10)]
    shard = _write(tmp_path / "a.parquet", records)
    assert [s.record for s in iter_samples(shard)] == [{"text": "a", "extra": None}] + records[1:]
    parquet = pq.ParquetFile(shard)
    assert parquet.schema_arrow.names == ["text", "extra"] and parquet.metadata.num_row_groups == 2
    with pytest.raises(LitzooError, match=r"b\.parquet.*field 'late'.*first batch"):
        _write(tmp_path / "b.parquet", [{"text": "a"}] * PARQUET_BATCH_ROWS + [{"text": "b", "late": 1}])
    assert not (tmp_path / "b.parquet").exists()
    empty = _write(tmp_path / "e.parquet", [])
    assert pq.read_table(empty).num_rows == 0


def test_parquet_start_skips_row_groups_unread(tmp_path):
    # rows of the first row group are destroyed on disk: a resume past them never reads them, a full read fails
    records = [{"text": f"caption {i:05d} " + "x" * 40} for i in range(3 * PARQUET_BATCH_ROWS)]
    shard = _write(tmp_path / "a.parquet", records)
    column = pq.ParquetFile(shard).metadata.row_group(0).column(0)
    raw = bytearray(shard.read_bytes())
    begin = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    raw[begin : begin + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    shard.write_bytes(bytes(raw))
    for start in [PARQUET_BATCH_ROWS, PARQUET_BATCH_ROWS + 3]:  # at and after the end of the damaged row group
        resumed = list(iter_samples(shard, start=start))
        assert [s.record for s in resumed] == records[start:]
        assert resumed[0].position == start
    with pytest.raises(LitzooError, match=r"a\.parquet' cannot be read at row 0"):
        list(iter_samples(shard))


def test_reading_streams_before_a_damaged_end(tmp_path):
    # a reader that loads the shard whole fails before the first sample; a streaming one yields it first
    lines = tmp_path / "a.jsonl.gz"
    body = b"".join(json.dumps({"text": f"t{i}"}).encode() + b"\n" for i in range(20000))
    lines.write_bytes(gzip.compress(body)[:-2000])
    first = next(iter_samples(lines))
    assert first.record == {"text": "t0"}
    tar = _write(tmp_path / "b.tar", _records("tar", 50))
    tar.write_bytes(tar.read_bytes()[: 40 * 2048 + 700])
    assert next(iter_samples(tar)).key == "000000"


# ---- WebDataset tars written by other tools -------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_webdataset_tar_written_by_tarfile(tmp_path, compressed):
    """open_clip / DataComp / img2dataset shards: {key}.jpg, {key}.txt, {key}.json per sample; folders, metadata and
    hidden members are skipped; a key keeps its folder; the extension is everything after the first dot."""
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) + b"\xff\xd9"
    members = [("__meta__.json", b"{}"), ("part", None)]
    for i in range(3):
        members += [(f"part/{i:06d}.jpg", jpeg), (f"part/{i:06d}.txt", f"caption {i}".encode()),
                    (f"part/{i:06d}.json", json.dumps({"caption": f"c{i}", "key": f"{i:06d}"}).encode())]  # fmt: skip
    members += [("part/.hidden.txt", b"x"), ("README", b"no extension"), ("part/000003.seg.PNG", b"png"), ("part/000003.cls", b" 4\n")]
    shard = _tar(tmp_path / "shard-00000.tar", members, mode="w:gz" if compressed else "w")
    samples = list(iter_samples(shard))
    assert [s.key for s in samples] == ["part/000000", "part/000001", "part/000002", "part/000003"]
    assert [s.position for s in samples] == [0, 1, 2, 3]
    assert samples[1].record == {"__key__": "part/000001", "jpg": jpeg, "txt": "caption 1", "json": {"caption": "c1", "key": "000001"}}
    assert samples[3].record == {"__key__": "part/000003", "seg.png": b"png", "cls": 4}
    assert [s.key for s in iter_samples(shard, start=2)] == ["part/000002", "part/000003"]
    assert [get_text(s.record, "json.caption") for s in samples] == ["c0", "c1", "c2", None]
    with pytest.raises(LitzooError, match="sample 'part/000003' has no string 'json.caption'"):
        list(iter_samples(shard, text_key="json.caption"))
    assert count_samples(shard) == 4


# ---- damaged files --------------------------------------------------------------------------------------------------


def _refused(path, match, **kwargs):
    with pytest.raises(LitzooError, match=match) as caught:
        list(iter_samples(path, **kwargs))
    message = str(caught.value)
    assert "\n" not in message and f"'{path}'" in message, message
    return message


def test_missing_and_misnamed_shards(tmp_path):
    _refused(tmp_path / "absent.tar", "does not exist")
    (tmp_path / "dir.jsonl").mkdir()
    _refused(tmp_path / "dir.jsonl", "not a file")
    with pytest.raises(ValueError, match="start"):
        iter_samples(_write(tmp_path / "a.jsonl", [{"a": 1}]), start=-1)


@pytest.mark.parametrize("cut", [1, 500, None])
def test_truncated_gzip(tmp_path, cut):
    shard = tmp_path / "a.jsonl.gz"
    packed = gzip.compress(b"".join(json.dumps({"text": f"caption {i}"}).encode() + b"\n" for i in range(2000)))
    shard.write_bytes(packed[: len(packed) // 2 if cut is None else len(packed) - cut])
    _refused(shard, "corrupt or truncated gzip")
    with pytest.raises(LitzooError, match="truncated gzip"):
        count_samples(shard)


def test_bad_jsonl_lines(tmp_path):
    cases = {
        '{"text": "a"}\n{"text": "b",\n': r"line 2 is not JSON",
        '{"text": "a"}\n\n[1, 2]\n': r"line 3 is not a JSON object",
        '{"text": "a"}\n{"text": 3}\n': r"line 2 has no string 'text'",
        '{"text": "a"}\n{"caption": "b"}\n': r"line 2 has no string 'text'",
    }
    for number, (body, match) in enumerate(cases.items()):
        shard = tmp_path / f"{number}.jsonl"
        shard.write_text(body, encoding="utf-8")
        _refused(shard, match, text_key="text")
    shard = tmp_path / "latin.jsonl"
    shard.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    _refused(shard, "line 2 is not UTF-8")
    _refused(_write(tmp_path / "ids.jsonl", [{"id": 1}, {"x": 2}]), "line 2 has no id 'id'", id_key="id")
    _refused(_write(tmp_path / "ids.parquet", [{"id": 1, "t": "a"}, {"id": None, "t": None}]), "row 1 has no id 'id'", id_key="id")
    _refused(_write(tmp_path / "text.parquet", [{"t": "a"}, {"t": None}]), "row 1 has no string 't'", text_key="t")


def test_a_tar_member_cut_short(tmp_path):
    shard = _write(tmp_path / "a.tar", _records("tar", 10))
    with tarfile.open(shard) as archive:
        member = archive.getmember("000004.jpg")
    shard.write_bytes(shard.read_bytes()[: member.offset_data + 5])  # 5 of its 9 bytes remain
    assert "000004.jpg" in _refused(shard, "corrupt tar")
    assert "000004.jpg" in _refused(shard, "corrupt tar", start=8)
    with pytest.raises(LitzooError, match="000004.jpg"):
        count_samples(shard)


@pytest.mark.parametrize("where", ["header", "boundary", "inside-header"])
def test_a_corrupt_or_cut_tar_header_is_not_taken_for_the_end(tmp_path, where):
    # tarfile's stream mode ends an archive silently at a header it cannot parse: the shard must not lose samples
    shard = _write(tmp_path / "a.tar", _records("tar", 10))
    with tarfile.open(shard) as archive:
        offset = archive.getmember("000006.jpg").offset
    raw = bytearray(shard.read_bytes())
    if where == "header":
        raw[offset : offset + 512] = (b"not a tar header " * 40)[:512]
        match = f"corrupt member header at byte {offset} after member '000005.cls'"
    elif where == "boundary":
        raw = raw[:offset]
        match = "ends without the end-of-archive marker.*000005.cls"
    else:
        raw = raw[: offset + 100]
        match = "ends inside a member header"
    shard.write_bytes(bytes(raw))
    _refused(shard, match)
    with pytest.raises(LitzooError, match=match):
        count_samples(shard)


def test_a_corrupt_first_header_and_an_empty_file(tmp_path):
    shard = _write(tmp_path / "a.tar", _records("tar", 3))
    raw = bytearray(shard.read_bytes())
    raw[:100] = b"x" * 100
    shard.write_bytes(bytes(raw))
    _refused(shard, "corrupt tar file")
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    _refused(empty, "corrupt tar file")


def test_a_truncated_gzip_tar(tmp_path):
    plain = _write(tmp_path / "a.tar", _records("tar", 200))
    shard = tmp_path / "b.tar"
    packed = gzip.compress(plain.read_bytes())
    shard.write_bytes(packed)
    assert [s.record for s in iter_samples(shard)] == [s.record for s in iter_samples(plain)]
    shard.write_bytes(packed[: len(packed) // 2])
    _refused(shard, "corrupt or truncated gzip file .at member '0000")


def test_bad_tar_members(tmp_path):
    _refused(_tar(tmp_path / "a.tar", [("0.txt", b"a"), ("0.json", b"{not json")]), "member '0.json' is not JSON")
    _refused(_tar(tmp_path / "b.tar", [("0.txt", b"\xff\xfe")]), "member '0.txt' is not UTF-8")
    _refused(_tar(tmp_path / "c.tar", [("0.cls", b"cat")]), "member '0.cls' is not an integer")
    _refused(_tar(tmp_path / "d.tar", [("0.txt", b"a"), ("1.txt", b"b"), ("0.jpg", b"c")]), "member '0.jpg': sample '0' appears twice")
    _refused(_tar(tmp_path / "e.tar", [("0.txt", b"a"), ("0.TXT", b"b")]), r"member '0.TXT': sample '0' has two '.txt'")
    _refused(_tar(tmp_path / "f.tar", [("0.txt", b"a"), ("1.jpg", b"b")]), "sample '1' has no string 'txt'", text_key="txt")


def test_parquet_files_pyarrow_cannot_read(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    _refused(junk, "not a Parquet file")
    shard = _write(tmp_path / "cut.parquet", [{"text": "a"}] * 10)
    shard.write_bytes(shard.read_bytes()[:-20])
    _refused(shard, "not a Parquet file")
    with pytest.raises(LitzooError, match="cut.parquet"):
        count_samples(shard)


# ---- the writer ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_is_atomic(tmp_path, fmt):
    path = _write(tmp_path / f"a.{fmt}", _records(fmt, 3))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(path) as writer:
            for record in _records(fmt, 5):
                writer.write(record)
            assert path.read_bytes() == before  # the previous file stays until the rename
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    _write(path, _records(fmt, 5))
    assert count_samples(path) == 5 and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_writer_refuses_what_the_format_cannot_store(tmp_path):
    cases = [
        ("a.jsonl", {"x": float("nan")}, "record 1 cannot be written.*a.jsonl"),
        ("b.jsonl.gz", {"x": b"bytes"}, "record 1 cannot be written.*b.jsonl.gz"),
        ("c.tar", {"txt": "no key"}, "__key__"),
        ("d.tar", {"__key__": "a.b", "txt": "x"}, "__key__"),
        ("e.tar", {"__key__": "0", "txt": "again"}, "key '0' was already written"),
        ("f.tar", {"__key__": "1", "txt": 1.5}, "field 'txt' holds a float"),
        ("g.tar", {"__key__": "1", "json": {"x": float("inf")}}, "field 'json' is not JSON"),
    ]
    for name, bad, match in cases:
        first = {"__key__": "0", "txt": "ok"} if name.endswith(".tar") else {"x": 1}
        with pytest.raises(LitzooError, match=match):
            _write(tmp_path / name, [first, bad])
        assert not (tmp_path / name).exists()
    with pytest.raises(ValueError, match="with block"):
        ShardWriter(tmp_path / "h.jsonl").write({"a": 1})
    writer = ShardWriter(tmp_path / "i.jsonl")
    with writer:
        writer.write({"a": 1})
    with pytest.raises(ValueError, match="already used"):
        writer.__enter__()
    (tmp_path / "i.jsonl").unlink()
    with pytest.raises(LitzooError, match="unknown format"):
        ShardWriter(tmp_path / "h.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- specs -----------------------------------------------------------------------------------------------------------


def test_expand_shards(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()  # the working folder, as os.getcwd() names it
    monkeypatch.chdir(tmp_path)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(12):
        (pool / f"pool-{i:03d}.tar").write_bytes(b"")
    for name in ["a.jsonl", "b.jsonl.gz", "c.parquet", "notes.txt", ".a.jsonl.1234.partial.jsonl"]:
        (pool / name).write_bytes(b"")
    assert expand_shards("pool/pool-{003..005}.tar") == [pool / f"pool-{i:03d}.tar" for i in (3, 4, 5)]
    assert expand_shards("pool/pool-{010..008}.tar") == [pool / f"pool-{i:03d}.tar" for i in (10, 9, 8)]
    assert expand_shards("pool/pool-00{1,0}.tar") == [pool / "pool-001.tar", pool / "pool-000.tar"]
    assert expand_shards("pool/pool-0{0..1}{0,1}.tar") == [pool / f"pool-{i:03d}.tar" for i in (0, 1, 10, 11)]
    assert expand_shards(pool / "pool-01*.tar") == [pool / "pool-010.tar", pool / "pool-011.tar"]
    assert expand_shards("pool") == [pool / n for n in ["a.jsonl", "b.jsonl.gz", "c.parquet"]] + [pool / f"pool-{i:03d}.tar" for i in range(12)]
    assert expand_shards(["pool/b.jsonl.gz", "pool/a.jsonl"]) == [pool / "b.jsonl.gz", pool / "a.jsonl"]
    (pool / "sub").mkdir()
    (pool / "sub" / "more.shards").write_text("# the rest\n../c.parquet\n\n{0..1}.jsonl\n", encoding="utf-8")
    (pool / "sub" / "0.jsonl").write_bytes(b"")
    (pool / "sub" / "1.jsonl").write_bytes(b"")
    (tmp_path / "all.shards").write_text(f"pool/pool-00{{0..1}}.tar\n{pool / 'a.jsonl'}\npool/sub/more.shards\n", encoding="utf-8")
    assert expand_shards("all.shards") == [pool / "pool-000.tar", pool / "pool-001.tar", pool / "a.jsonl", pool / "c.parquet",
                                           pool / "sub" / "0.jsonl", pool / "sub" / "1.jsonl"]  # fmt: skip


def test_expand_shards_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        (tmp_path / f"p-{i}.jsonl").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    cases = [
        ("p-{0..3}.jsonl", r"'p-\{0\.\.3\}\.jsonl': 1 of its 4 shards do not exist, e.g. 'p-3.jsonl'"),
        (["p-{0..1}.jsonl", "p-1.jsonl"], r"'p-1.jsonl' is given twice"),
        (["p-0.jsonl", str(tmp_path / "p-0.jsonl")], "is given twice"),
        ("p-*.tar", "matches no file"),
        ("*", "notes.txt' has an unknown format"),
        ("notes.txt", "unknown format"),
        ("absent.jsonl", "does not exist"),
        ("empty", "holds no shard files"),
        ([], "no shards given"),
        ("missing.shards", "does not exist"),
    ]
    for spec, match in cases:
        with pytest.raises(LitzooError, match=match):
            expand_shards(spec)
    (tmp_path / "loop.shards").write_text("p-0.jsonl\nloop.shards\n", encoding="utf-8")
    with pytest.raises(LitzooError, match="includes itself"):
        expand_shards("loop.shards")
    (tmp_path / "bad.shards").write_text("p-0.jsonl\np-9.jsonl\n", encoding="utf-8")
    with pytest.raises(LitzooError, match="bad.shards' line 2: .*p-9.jsonl' does not exist"):
        expand_shards("bad.shards")


def test_get_text():
    record = {"txt": "a", "json": {"caption": "b", "n": 3, "deep": {"x": "c"}}, "a.b": "literal", "a": {"b": "nested"}}
    assert get_text(record, "txt") == "a"
    assert get_text(record, "json.caption") == "b"
    assert get_text(record, "json.deep.x") == "c"
    assert get_text(record, "a.b") == "literal"  # a key that holds the dot is taken first
    assert get_text(record, "json.n") is None and get_text(record, "json.none") is None and get_text(record, "txt.x") is None
    assert get_text(record, "json") is None and get_text(record, "absent") is None
