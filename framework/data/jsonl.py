"""JSON-lines files (manifests, corpora): one object per line, checked, with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from litzoo.framework.errors import LitzooError


def read_jsonl(path: str | Path, string_fields: Sequence[str] = (), what: str = "manifest") -> list[dict]:
    """The objects of the non-blank lines of ``path``; each must hold a string in every field of ``string_fields``.

    Raises:
        LitzooError: see :func:`iter_jsonl`.
    """
    return [record for _, record in iter_jsonl(path, string_fields, what)]


def iter_jsonl(path: str | Path, string_fields: Sequence[str] = (), what: str = "manifest") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for the non-blank lines of ``path``, checked as :func:`read_jsonl` says.

    Raises:
        LitzooError: one line naming the file (as ``what``) and, where it applies, the line number: the
            file is missing or unreadable, a line is not JSON, not an object, or lacks a string field.
    """
    path = Path(path).expanduser()
    expected = ", ".join(f'"{field}": ...' for field in string_fields) or "..."
    if not path.is_file():
        reason = "it is not a file" if path.exists() else "it does not exist"
        raise LitzooError(f"{what} '{path}' cannot be read: {reason} (expected a JSONL file of {{{expected}}} lines)")
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise LitzooError(f"{what} '{path}' line {number} is not JSON: {error.msg}") from None
                if not isinstance(record, dict):
                    raise LitzooError(f"{what} '{path}' line {number} is not a JSON object")
                for field in string_fields:
                    if not isinstance(record.get(field), str):
                        raise LitzooError(f"{what} '{path}' line {number} has no string field '{field}'")
                yield number, record
    except (OSError, UnicodeDecodeError) as error:
        raise LitzooError(f"{what} '{path}' cannot be read: {getattr(error, 'strerror', None) or error}") from None


def rebase_paths(record: dict, keys: Sequence[str], source: str | Path, target: str | Path) -> dict:
    """``record`` with the relative file paths in ``keys`` (relative to folder ``source``, as a manifest's image
    paths are relative to the manifest's folder) made relative to folder ``target`` instead, so that they still
    name the same files when the record is written to a manifest in another folder.

    Absolute paths, ``~`` paths, non-string values and missing keys are kept as they are; a path that has no
    relative form from ``target`` (another drive on Windows) becomes absolute. The new paths are relative, not
    absolute, so that a folder holding both the files and the manifest can still be moved as a whole.
    """
    source, target = os.path.abspath(source), os.path.abspath(target)
    if source == target:
        return record
    rebased = dict(record)
    for key in keys:
        value = record.get(key)
        if not isinstance(value, str) or not value or value.startswith("~") or os.path.isabs(value):
            continue
        # os.path, not pathlib: curation rebases millions of records, and this is a third of the time
        path = os.path.join(source, value)
        try:
            rebased[key] = os.path.relpath(path, target).replace(os.sep, "/")
        except ValueError:
            rebased[key] = path
    return rebased


# ---- append-only, resumable record files (benchmark generators) ------------------------------


def complete_records(path: Path, what: str) -> list[tuple[int, dict]]:
    """``(end byte offset, object)`` of the complete lines of an append-only JSONL file written by
    :func:`append_record`; a last line cut short by a kill (no newline, or not JSON) is left out (resume
    by :func:`truncate_file` to the last offset), a bad line before the end raises LitzooError."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    out: list[tuple[int, dict]] = []
    offset = 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        end = offset + len(line) + 1
        if number == len(lines):  # after the last newline: empty, or a partial record
            break
        if line.strip():
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as error:
                if all(not rest.strip() for rest in lines[number:]):
                    break  # the last record, cut short: regenerate it
                raise LitzooError(f"{what} '{path}' line {number} is not a record ({error}); delete the file to regenerate") from None
            out.append((end, record))
        offset = end
    return out


def truncate_file(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (durably), e.g. to drop a partial last record."""
    if path.exists() and path.stat().st_size != size:
        with path.open("r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())


def append_record(handle, record: dict) -> None:
    """One compact JSON line on a binary handle, flushed and fsynced: a kill leaves at most a partial last line."""
    handle.write((json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())
