"""Sharded pools: the shard files a pool is split into, read one sample at a time and written atomically.

A pool of captions or image-text pairs (MetaCLIP's billions of alt-texts, a DataComp pool, a web corpus) is a list of
shard files, each small enough for one worker. Four on-disk formats are read and written:

- ``.jsonl``: one JSON object per line (blank lines ignored);
- ``.jsonl.gz``: the same, gzip-compressed;
- ``.parquet``: one row per sample, read through ``pyarrow.parquet.ParquetFile.iter_batches``;
- ``.tar``: WebDataset shards (https://github.com/webdataset/webdataset, the format of open_clip's and DataComp's
  pools): a sample is the consecutive members ``<key>.<ext>`` sharing a key, e.g. ``000042.jpg``, ``000042.txt``,
  ``000042.json``. As in WebDataset's ``base_plus_ext``, the key is the member's folder plus its base name up to the
  first ".", the extension the rest (``a/b.seg.png`` is key ``a/b``, extension ``seg.png``, lower-cased as WebDataset's
  ``group_by_keys`` does); members without an extension, hidden base names (".x") and names starting with "__" are
  skipped. A ``.tar`` that is gzip-compressed is read too.

:func:`iter_samples` streams one shard (memory: one sample, or one Parquet record batch, never a whole shard) as
:class:`Sample` objects with a key that is stable and unique in the pool, and can start at a sample offset to resume.
A bad shard raises one :class:`~litzoo.framework.errors.LitzooError` line naming the shard and the line, row or
member at fault (a truncated gzip, a corrupt tar header, a member cut short, a JSON line that is not an object ...).
:func:`expand_shards` turns a user's spec (WebDataset brace ranges, globs, folders, ``.shards`` list files) into the
list of shard paths; :class:`ShardWriter` writes a shard through a hidden temporary sibling renamed into place.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import posixpath
import re
import sys
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError

SHARD_SUFFIXES = {".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".parquet": "parquet", ".tar": "tar"}

PARQUET_BATCH_ROWS = 1024  # rows per Parquet record batch read or written: memory is bounded by one batch
_PARQUET_BATCH_BYTES = 32 << 20  # a written batch is also flushed at this many bytes of strings / bytes (image columns)
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)  # EOFError: "Compressed file ended before the end-of-stream ..."


def shard_format(path: str | Path) -> str:
    """The format of shard ``path`` from its name: ``"jsonl"``, ``"jsonl.gz"``, ``"parquet"`` or ``"tar"``.

    Raises:
        LitzooError: the name ends in none of :data:`SHARD_SUFFIXES`.
    """
    name = Path(path).name.lower()
    for suffix in sorted(SHARD_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return SHARD_SUFFIXES[suffix]
    known = ", ".join(SHARD_SUFFIXES)
    raise LitzooError(f"shard '{path}' has an unknown format: expected a name ending in one of {known}")


# ---- shard specs ----------------------------------------------------------------------------------------------------


_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")


def _expand_braces(text: str) -> list[str]:
    """WebDataset's (``braceexpand``'s) brace notation: ``{000..009}`` is a zero-padded integer range in the order
    written, ``{a,b}`` a list; several groups expand to their product, left to right. A group that is neither
    (``{x}``) is kept as written, as the shell keeps it."""
    match = next((m for m in _BRACE.finditer(text) if _RANGE.match(m.group(1)) or "," in m.group(1)), None)
    if match is None:
        return [text]
    body = match.group(1)
    numbers = _RANGE.match(body)
    if numbers:
        first, last = numbers.groups()
        padded = any(len(n.lstrip("-")) > 1 and n.lstrip("-").startswith("0") for n in (first, last))
        width = max(len(first), len(last)) if padded else 0
        a, b = int(first), int(last)
        step = 1 if b >= a else -1
        items = [str(n).zfill(width) for n in range(a, b + step, step)]
    else:
        items = body.split(",")
    head, tail = text[: match.start()], text[match.end() :]
    return [expanded for item in items for expanded in _expand_braces(head + item + tail)]


def _shards_in_folder(folder: Path, spec: str) -> list[Path]:
    shards = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or not entry.is_file():  # hidden: a ShardWriter's temporary file, say
            continue
        try:
            shard_format(entry)
        except LitzooError:
            continue
        shards.append(entry)
    if not shards:
        raise LitzooError(f"shard spec '{spec}': folder '{folder}' holds no shard files ({', '.join(SHARD_SUFFIXES)})")
    return shards


def _check_shard(path: Path, spec: str) -> Path:
    if not path.is_file():
        reason = "is not a file" if path.exists() else "does not exist"
        raise LitzooError(f"shard spec '{spec}': shard '{path}' {reason}")
    try:
        shard_format(path)
    except LitzooError as error:
        raise LitzooError(f"shard spec '{spec}': {error}") from None
    return path


def _expand_spec(spec: str, base: Path | None, lists: tuple[Path, ...]) -> list[Path]:
    """The shards of one spec; relative paths in a ``.shards`` list file are relative to that file's folder."""
    def place(text: str) -> Path:
        path = Path(text).expanduser()
        return path if base is None or path.is_absolute() else base / path

    names = _expand_braces(spec)
    if len(names) > 1 or names[0] != spec:
        missing = [name for name in names if not place(name).is_file()]
        if missing:
            raise LitzooError(f"shard spec '{spec}': {len(missing)} of its {len(names)} shards do not exist, e.g. '{place(missing[0])}'")
        return [_check_shard(place(name), spec) for name in names]
    if _GLOB_CHARS.search(spec) and not place(spec).exists():
        matches = sorted(Path(p) for p in glob.glob(str(place(spec))) if Path(p).is_file())
        if not matches:
            raise LitzooError(f"shard spec '{spec}' matches no file")
        return [_check_shard(path, spec) for path in matches]
    path = place(spec)
    if path.is_dir():
        return _shards_in_folder(path, spec)
    if path.name.endswith(".shards"):
        if not path.is_file():
            raise LitzooError(f"shard list '{path}' does not exist")
        if path.resolve() in lists:
            raise LitzooError(f"shard list '{path}' includes itself")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise LitzooError(f"shard list '{path}' cannot be read: {getattr(error, 'strerror', None) or error}") from None
        shards = []
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                shards += _expand_spec(line, path.parent, (*lists, path.resolve()))
            except LitzooError as error:
                raise LitzooError(f"shard list '{path}' line {number}: {error}") from None
        if not shards:
            raise LitzooError(f"shard list '{path}' lists no shards")
        return shards
    return [_check_shard(path, spec)]


def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """The shard files of ``spec``, as absolute paths (they are handed to worker processes whose working folder may
    differ): one spec or a sequence of them, each

    - a shard file (``pool/00000.tar``);
    - a brace range or list in WebDataset's notation: ``pool-{000..009}.tar`` (zero-padded as written),
      ``pool-{a,b}.jsonl``;
    - a glob: ``pool-*.jsonl.gz`` (its matches sorted by path);
    - a folder: its shard files (by suffix, hidden files left out), sorted by name;
    - a text file named ``*.shards`` listing one spec per line (blank lines and ``#`` comments skipped; relative
      paths are relative to the list file's folder).

    The order of the specs is kept.

    Raises:
        LitzooError: naming the spec: a shard does not exist or has an unknown format, a glob matches nothing, a
            folder holds no shards, or a shard appears twice.
    """
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise LitzooError("no shards given: expected a shard file, a brace range, a glob, a folder or a .shards list")
    shards: list[Path] = []
    seen: dict[Path, str] = {}
    for item in specs:
        text = str(item)
        if not text.strip():
            raise LitzooError("an empty shard spec was given")
        for path in _expand_spec(text, None, ()):
            resolved = path.resolve()
            if resolved in seen:
                raise LitzooError(f"shard spec '{text}': shard '{path}' is given twice (also by '{seen[resolved]}')")
            seen[resolved] = text
            shards.append(Path(os.path.abspath(path)))
    return shards


# ---- reading ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One sample of a shard.

    Attributes:
        key: the sample's id, stable and unique in the pool: the WebDataset ``__key__`` for tar shards; for JSONL and
            Parquet ``str(record[id_key])`` when an ``id_key`` is given, else ``f"{shard.name}:{n}"`` with ``n`` the
            0-based index of the record in its shard (blank JSONL lines are not counted).
        record: the JSON object / the Parquet row as a dict / for tar ``{"__key__": key, <ext>: value, ...}``:
            ``.txt`` members decoded as UTF-8 strings, ``.json`` parsed, ``.cls`` as int, the others raw bytes
            (decided by the last part of the extension, as WebDataset's default decoders do).
        shard: the shard's path.
        position: the 0-based index of the sample in its shard.
    """

    key: str
    record: dict
    shard: Path
    position: int


_MISSING = object()


def _lookup(record: dict, key: str) -> Any:
    """``record[key]``, or by a dotted path into nested dicts ("json.caption"); _MISSING when absent."""
    if key in record:
        return record[key]
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def get_text(record: dict, text_key: str) -> str | None:
    """``record[text_key]``; a dotted key such as ``"json.caption"`` looks inside nested dicts (a key that holds the
    dot itself is taken first). None when absent or not a string."""
    value = _lookup(record, text_key)
    return value if isinstance(value, str) else None


def _check_record(record: dict, shard: Path, where: str, text_key: str | None, id_key: str | None) -> None:
    if text_key is not None and get_text(record, text_key) is None:
        raise LitzooError(f"shard '{shard}' {where} has no string '{text_key}'")
    if id_key is not None and _lookup(record, id_key) in (_MISSING, None):
        raise LitzooError(f"shard '{shard}' {where} has no id '{id_key}'")


def _readable_shard(path: str | Path) -> tuple[Path, str]:
    shard = Path(path).expanduser()
    kind = shard_format(shard)
    if not shard.is_file():
        reason = "it is not a file" if shard.exists() else "it does not exist"
        raise LitzooError(f"shard '{shard}' cannot be read: {reason}")
    return shard, kind


def iter_samples(path: str | Path, text_key: str | None = None, id_key: str | None = None, start: int = 0) -> Iterator[Sample]:
    """The samples of one shard, streamed (see the module docstring for the formats).

    Args:
        path: a shard file; its format comes from its name (:func:`shard_format`).
        text_key: when given, every sample must hold a string there (:func:`get_text`, dotted keys allowed).
        id_key: JSONL and Parquet: the field whose value (as a string) is the sample's key; tar samples are always
            keyed by their WebDataset ``__key__``.
        start: skip the first ``start`` samples (to resume); skipped samples are not decoded, and whole Parquet
            row groups are skipped from the file's metadata.

    Raises:
        ValueError: ``start`` is negative.
        LitzooError: one line naming the shard and the line / row / member at fault: a missing file, a truncated or
            corrupt gzip, a line that is not JSON or not an object, a missing text or id, a corrupt tar (a bad
            header, a member cut short, no end-of-archive marker), a member that cannot be decoded, a sample key
            repeated in a tar, a Parquet file that pyarrow cannot read.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    shard, kind = _readable_shard(path)
    if kind == "parquet":
        return _iter_parquet(shard, text_key, id_key, start)
    if kind == "tar":
        return _iter_tar(shard, text_key, start)
    return _iter_jsonl(shard, text_key, id_key, start)


def count_samples(path: str | Path) -> int:
    """The number of samples :func:`iter_samples` yields for shard ``path`` (JSONL: its non-blank lines; Parquet:
    the row count of its metadata; tar: its members grouped by key), found by streaming the shard.

    Raises:
        LitzooError: as :func:`iter_samples`.
    """
    shard, kind = _readable_shard(path)
    if kind == "parquet":
        parquet = _open_parquet(shard)
        try:
            return parquet.metadata.num_rows
        finally:
            parquet.close()
    if kind == "tar":
        return sum(1 for _ in _tar_groups(shard, decode_from=None))
    return sum(1 for _ in _jsonl_lines(shard))


# JSONL --------------------------------------------------------------------------------------------------------------


def _jsonl_lines(shard: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of the non-blank lines, read one at a time (as bytes: decoded line by line, so that an
    encoding error names its own line)."""
    number = 0
    try:
        with (gzip.open(shard, "rb") if shard_format(shard) == "jsonl.gz" else shard.open("rb")) as handle:
            for number, line in enumerate(handle, start=1):  # noqa: B007 (number is read in the except clauses)
                if line.strip():
                    yield number, line
    except _GZIP_ERRORS as error:
        raise LitzooError(f"shard '{shard}' is a corrupt or truncated gzip file (after line {number}): {error}") from None
    except OSError as error:
        raise LitzooError(f"shard '{shard}' cannot be read (after line {number}): {error.strerror or error}") from None


def _iter_jsonl(shard: Path, text_key: str | None, id_key: str | None, start: int) -> Iterator[Sample]:
    for position, (number, line) in enumerate(_jsonl_lines(shard)):
        if position < start:  # resume: skipped lines are not parsed
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise LitzooError(f"shard '{shard}' line {number} is not UTF-8: {error.reason}") from None
        except json.JSONDecodeError as error:
            raise LitzooError(f"shard '{shard}' line {number} is not JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise LitzooError(f"shard '{shard}' line {number} is not a JSON object")
        _check_record(record, shard, f"line {number}", text_key, id_key)
        key = str(_lookup(record, id_key)) if id_key is not None else f"{shard.name}:{position}"
        yield Sample(key, record, shard, position)


# Parquet ------------------------------------------------------------------------------------------------------------


def _open_parquet(shard: Path):
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(str(shard))
    except (pyarrow.ArrowException, OSError) as error:
        raise LitzooError(f"shard '{shard}' is not a Parquet file pyarrow can read: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _iter_parquet(shard: Path, text_key: str | None, id_key: str | None, start: int) -> Iterator[Sample]:
    parquet = _open_parquet(shard)
    try:
        yield from _parquet_rows(shard, parquet, text_key, id_key, start)
    finally:
        parquet.close()


def _parquet_rows(shard: Path, parquet, text_key: str | None, id_key: str | None, start: int) -> Iterator[Sample]:
    import pyarrow

    metadata = parquet.metadata
    # Skip the row groups that lie wholly before `start` from the row counts of the metadata, unread.
    first_group, position = 0, 0
    while first_group < metadata.num_row_groups and position + metadata.row_group(first_group).num_rows <= start:
        position += metadata.row_group(first_group).num_rows
        first_group += 1
    if first_group == metadata.num_row_groups:
        return
    groups = list(range(first_group, metadata.num_row_groups))
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups)
    while True:
        try:
            batch = next(batches, None)
            rows = None if batch is None else batch.to_pylist()
        except (pyarrow.ArrowException, OSError) as error:
            raise LitzooError(f"shard '{shard}' cannot be read at row {position}: {_first_line(error)}") from None
        if rows is None:
            return
        for record in rows:
            if position >= start:
                _check_record(record, shard, f"row {position}", text_key, id_key)
                key = str(_lookup(record, id_key)) if id_key is not None else f"{shard.name}:{position}"
                yield Sample(key, record, shard, position)
            position += 1


# WebDataset tar -----------------------------------------------------------------------------------------------------


class _TailReader:
    """A read-only stream that remembers its last bytes, so that where tarfile stops reading can be checked.

    ``tarfile``'s stream mode ends the archive silently at a header it cannot parse, or at the end of the data, when
    that happens after the first member: a garbage header or a file cut at a block boundary would drop the rest of
    the shard without a word. Its ``offset`` says where the failed header lies; this reader keeps the bytes there."""

    def __init__(self, raw, keep: int = 1 << 16) -> None:
        self.raw, self.keep, self.total = raw, keep, 0
        self.chunks: deque[tuple[int, bytes]] = deque()  # (offset, data) of the last chunks read, >= `keep` bytes

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.chunks.append((self.total, data))
            self.total += len(data)
            while self.total - self.chunks[0][0] - len(self.chunks[0][1]) >= self.keep:
                self.chunks.popleft()
        return data

    def block(self, offset: int) -> bytes | None:
        """The 512 bytes read at ``offset`` (fewer at the end of the data); None when no longer kept."""
        if self.chunks and offset < self.chunks[0][0]:
            return None
        kept = b"".join(data for start, data in self.chunks if start + len(data) > offset)
        begin = offset - next((start for start, data in self.chunks if start + len(data) > offset), self.total)
        return kept[begin : begin + tarfile.BLOCKSIZE]

    def close(self) -> None:
        self.raw.close()


def split_member_name(name: str) -> tuple[str, str] | None:
    """WebDataset's ``base_plus_ext``: ``(key, ext)`` of a member name, None for names that hold no sample part."""
    folder, base = posixpath.split(name)
    if name.startswith("__") or base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (posixpath.join(folder, stem) if folder else stem), ext.lower()


def _decode_member(data: bytes, ext: str, shard: Path, member: str) -> Any:
    kind = ext.rsplit(".", 1)[-1]
    try:
        if kind == "txt":
            return data.decode("utf-8")
        if kind == "json":
            return json.loads(data.decode("utf-8"))
        if kind == "cls":
            return int(data.decode("utf-8").strip())
    except UnicodeDecodeError as error:
        raise LitzooError(f"shard '{shard}' member '{member}' is not UTF-8 text: {error.reason}") from None
    except json.JSONDecodeError as error:
        raise LitzooError(f"shard '{shard}' member '{member}' is not JSON: {error.msg} (line {error.lineno})") from None
    except ValueError:
        raise LitzooError(f"shard '{shard}' member '{member}' is not an integer class label") from None
    return data


def _tar_groups(shard: Path, decode_from: int | None) -> Iterator[tuple[str, dict]]:
    """``(key, record)`` for the samples of a tar shard, in order; records are decoded from sample ``decode_from``
    on (before it, and when None, they hold nothing but their key: counting and skipping do not decode)."""
    with shard.open("rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        # tarfile's "r|*" mode, with the gzip detection done here so that the stream's tail can be kept (_TailReader)
        # and a truncated gzip told apart from a corrupt tar.
        source = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
        stream = _TailReader(source)
        member_name, last_member = "", None
        key, record, seen = None, None, set()
        position = 0
        try:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    # stream mode still lists every TarInfo it read in `members`; drop them to keep memory flat
                    # (as WebDataset's tar_file_iterator does)
                    archive.members = []
                    member_name = member.name
                    if not member.isreg():
                        continue
                    handle = archive.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if len(data) != member.size:  # tarfile raises on a short read itself; this guards the contract
                        raise tarfile.ReadError(f"member data cut short ({len(data)} of {member.size} bytes)")
                    last_member = member_name
                    parts = split_member_name(member_name)
                    if parts is None:
                        continue
                    member_key, ext = parts
                    if member_key != key:
                        if record is not None:
                            yield key, record
                            position += 1
                        if member_key in seen:
                            raise LitzooError(
                                f"shard '{shard}' member '{member_name}': sample '{member_key}' appears twice "
                                "(the members of a sample must be consecutive)"
                            )
                        seen.add(member_key)
                        key, record = member_key, {"__key__": member_key}
                    if ext in record:
                        raise LitzooError(f"shard '{shard}' member '{member_name}': sample '{key}' has two '.{ext}' members")
                    decode = decode_from is not None and position >= decode_from
                    record[ext] = _decode_member(data, ext, shard, member_name) if decode else None
                # The loop ended: at the end-of-archive marker (a zero block), or at a block tarfile could not parse.
                block = stream.block(archive.offset)
                if block is not None and block != bytes(tarfile.BLOCKSIZE):
                    after = f" after member '{last_member}'" if last_member else ""
                    if not block:
                        problem = "ends without the end-of-archive marker (cut short?)"
                    elif len(block) < tarfile.BLOCKSIZE:
                        problem = f"ends inside a member header at byte {archive.offset} (cut short?)"
                    else:
                        problem = f"has a corrupt member header at byte {archive.offset}"
                    raise LitzooError(f"shard '{shard}' {problem}{after}")
        except _GZIP_ERRORS as error:
            raise LitzooError(f"shard '{shard}' is a corrupt or truncated gzip file (at member '{member_name}'): {error}") from None
        except tarfile.TarError as error:
            where = f" at member '{member_name}'" if member_name else ""
            raise LitzooError(f"shard '{shard}' is a corrupt tar file{where}: {error}") from None
        except OSError as error:
            raise LitzooError(f"shard '{shard}' cannot be read (at member '{member_name}'): {error.strerror or error}") from None
    if record is not None:
        yield key, record


def _iter_tar(shard: Path, text_key: str | None, start: int) -> Iterator[Sample]:
    for position, (key, record) in enumerate(_tar_groups(shard, decode_from=start)):
        if position < start:
            continue
        _check_record(record, shard, f"sample '{key}'", text_key, None)
        yield Sample(key, record, shard, position)


# ---- writing ---------------------------------------------------------------------------------------------------------


class ShardWriter:
    """Writes one shard, atomically: records go to a hidden temporary sibling of ``path`` that is flushed, fsynced and
    renamed onto ``path`` when the ``with`` block ends without an error, and removed when it raises (a previous file
    at ``path`` stays as it was until the rename). The format comes from the name, as :func:`shard_format` says:

    - JSONL / JSONL.gz: one ``json.dumps(record, ensure_ascii=False)`` line per record (gzip with mtime 0);
    - Parquet: rows buffered and written as record batches (at most ``PARQUET_BATCH_ROWS`` rows, one row group each)
      with the columns of the first batch; an empty shard is a valid file with no rows;
    - tar: a WebDataset sample per record, which holds its key under ``"__key__"``; each other field ``ext`` becomes
      the member ``f"{key}.{ext}"`` (str as UTF-8, dict / list as JSON, int as its digits, bytes as they are), with
      fixed metadata (mtime 0, uid / gid 0, mode 0o644), so that the same records give byte-identical files.

        with ShardWriter(output / "00000.tar") as writer:
            writer.write({"__key__": "000000", "jpg": image_bytes, "txt": "a cat"})

    Attributes:
        written: the number of records written so far.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.format = shard_format(self.path)
        if self.path.is_dir():
            raise LitzooError(f"shard '{self.path}' is a folder; expected the path of a shard file to write")
        self.written = 0
        self._stack: ExitStack | None = None
        self._used = False
        self._handle: Any = None  # the text stream (JSONL), the tar archive, or the Parquet writer
        self._closers: list[Any] = []
        self._rows: list[dict] = []
        self._row_bytes = 0
        self._first_row = 0
        self._schema: Any = None
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        if self._used:
            raise ValueError(f"ShardWriter for '{self.path}' was already used: it writes its shard once")
        self._used = True
        stack = ExitStack()
        (staged,) = stack.enter_context(write_files_atomically(self.path))
        self._stack, self._staged = stack, staged
        try:
            if self.format in ("jsonl", "jsonl.gz"):
                raw = staged.open("wb")
                self._closers.append(raw)
                binary = raw
                if self.format == "jsonl.gz":  # no file name and mtime 0 in the header: the same records, the same bytes
                    binary = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
                    self._closers.insert(0, binary)
                self._handle = io.TextIOWrapper(binary, encoding="utf-8", newline="\n")
                self._closers.insert(0, self._handle)
            elif self.format == "tar":
                raw = staged.open("wb")
                self._closers.append(raw)
                self._handle = tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT)
                self._closers.insert(0, self._handle)
        except BaseException:
            self._close_quietly()
            stack.__exit__(*sys.exc_info())
            self._stack = None
            raise
        return self

    def write(self, record: dict) -> None:
        """Append one record (see the class docstring for how each format stores it).

        Raises:
            ValueError: not inside the ``with`` block, or ``record`` is not a dict.
            LitzooError: naming the shard and the record: a value the format cannot store (a non-finite number or
                bytes in JSON, a tar record without a string ``__key__`` or with a repeated key, a field the first
                Parquet batch did not have or of another type).
        """
        if self._stack is None:
            raise ValueError(f"ShardWriter for '{self.path}' must be used in a with block")
        if not isinstance(record, dict):
            raise ValueError(f"a shard record must be a dict, got {type(record).__name__}")
        if self.format == "tar":
            self._write_tar(record)
        elif self.format == "parquet":
            if not self._rows:
                self._first_row = self.written
            self._rows.append(record)
            self._row_bytes += sum(len(value) for value in record.values() if isinstance(value, (str, bytes)))
            if len(self._rows) >= PARQUET_BATCH_ROWS or self._row_bytes >= _PARQUET_BATCH_BYTES:
                self._flush_parquet()
        else:
            try:
                line = json.dumps(record, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise LitzooError(f"record {self.written} cannot be written to shard '{self.path}': {error}") from None
            self._handle.write(line + "\n")
        self.written += 1

    def _write_tar(self, record: dict) -> None:
        key = record.get("__key__")
        where = f"record {self.written} cannot be written to shard '{self.path}'"
        if not isinstance(key, str) or split_member_name(f"{key}.x") != (key, "x"):
            raise LitzooError(f"{where}: its '__key__' must be a string without '.' in its base name, got {key!r}")
        if key in self._keys:
            raise LitzooError(f"{where}: key '{key}' was already written")
        self._keys.add(key)
        for ext, value in record.items():
            if ext == "__key__":
                continue
            if not isinstance(ext, str) or not ext or "/" in ext or ext != ext.lower():
                raise LitzooError(f"{where}: field {ext!r} is not a lower-case extension")
            if isinstance(value, (bytes, bytearray, memoryview)):
                data = bytes(value)
            elif isinstance(value, str):
                data = value.encode("utf-8")
            elif isinstance(value, (dict, list)):
                try:
                    data = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
                except (TypeError, ValueError) as error:
                    raise LitzooError(f"{where}: field '{ext}' is not JSON: {error}") from None
            elif isinstance(value, int) and not isinstance(value, bool):
                data = str(value).encode("utf-8")
            else:
                raise LitzooError(f"{where}: field '{ext}' holds a {type(value).__name__} (expected str, bytes, dict, list or int)")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._handle.addfile(info, io.BytesIO(data))

    def _flush_parquet(self) -> None:
        import pyarrow
        import pyarrow.parquet as pq

        rows, self._rows, self._row_bytes = self._rows, [], 0
        first = self._first_row
        where = f"records {first}..{first + len(rows) - 1} cannot be written to shard '{self.path}'"
        if self._schema is None:
            names: dict[str, None] = {}  # the fields of all rows of the first batch, in order of appearance
            for row in rows:
                names.update(dict.fromkeys(row))
            try:
                table = pyarrow.Table.from_pydict({name: [row.get(name) for row in rows] for name in names})
            except (pyarrow.ArrowException, TypeError, ValueError) as error:
                raise LitzooError(f"{where}: {_first_line(error)}") from None
            self._schema = table.schema
            self._handle = pq.ParquetWriter(str(self._staged), self._schema)
            self._closers.insert(0, self._handle)
        else:
            extra = next((name for row in rows for name in row if self._schema.get_field_index(name) < 0), None)
            if extra is not None:
                raise LitzooError(f"{where}: field '{extra}' is not among the columns of the first batch {self._schema.names}")
            try:
                table = pyarrow.Table.from_pylist(rows, schema=self._schema)
            except (pyarrow.ArrowException, TypeError, ValueError) as error:
                raise LitzooError(f"{where}: {_first_line(error)}") from None
        self._handle.write_table(table)

    def _finish(self) -> None:
        if self.format == "parquet":
            if self._rows:
                self._flush_parquet()
            if self._handle is None:  # no record at all: a valid file without columns or rows
                import pyarrow
                import pyarrow.parquet as pq

                pq.write_table(pyarrow.table({}), str(self._staged))
        for closer in self._closers:
            closer.close()
        self._closers = []

    def _close_quietly(self) -> None:
        for closer in self._closers:
            try:
                closer.close()
            except Exception:  # noqa: BLE001 (the error that is propagating matters, not a failed close of a file to drop)
                pass
        self._closers = []

    def __exit__(self, exc_type, exc, traceback) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._close_quietly()
                if not stack.__exit__(type(error), error, error.__traceback__):
                    raise
                return False
            stack.__exit__(None, None, None)
        else:
            self._close_quietly()
            stack.__exit__(exc_type, exc, traceback)
        return False
