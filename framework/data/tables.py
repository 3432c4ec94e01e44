"""Delimited text tables with a header line (CSV, TSV), read by column name with the line of every row.

The conventions of pandas' ``read_csv`` defaults, which the published loaders of these files use (SCCL's short-text
CSVs, the Implicit Hate Corpus TSV): a header line naming the columns, standard quoting (``"`` with ``""`` inside,
a quoted value may hold the delimiter or span lines), blank lines skipped, extra columns ignored, a UTF-8 byte-order
mark allowed. Stricter than pandas where pandas guesses: a stray or unclosed quote (``csv`` strict mode), a row with
another number of fields than the header, or bytes that are not UTF-8 are errors, each one line naming the file and
the line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

from litzoo.framework.errors import LitzooError


def read_named_columns(path: str | Path, columns: Sequence[str], delimiter: str = ",", what: str = "CSV",
                       value_name: str = "value") -> Iterator[tuple[int, dict[str, str]]]:  # fmt: skip
    """``(line, {column: value})`` for every non-blank row of ``path``, ``line`` the 1-based line the row starts on.

    Args:
        path: the file (existence is the caller's to check, with its own hint).
        columns: the header names to return (each must appear exactly once; other columns are ignored).
        delimiter: ``","`` (CSV) or ``"\\t"`` (TSV).
        what: the file's kind in messages, e.g. ``"short-text CSV"``.
        value_name: what a value is, for the hint on a row with too many fields.

    Raises:
        LitzooError: one line, ``{what} '{path}' line N: ...``: not UTF-8, an empty file, a column missing from (or
            repeated in) the header, a row with another number of fields than the header, a quoting error.
    """
    path = Path(path)
    shown = "<TAB>" if delimiter == "\t" else delimiter
    data = path.read_bytes()  # decoding the whole file locates a bad byte's line
    try:
        content = data.decode("utf-8-sig")  # a byte-order mark (Excel's UTF-8 CSV) is not part of the first column's name
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LitzooError(f"{what} '{path}' line {line}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise LitzooError(f"{what} '{path}' is empty: expected a header line '{shown.join(columns)}'")
        names = [name.strip() for name in header]
        positions = {}
        for name in columns:
            if names.count(name) != 1:
                count = "no" if name not in names else "more than one"
                raise LitzooError(f"{what} '{path}' line 1: {count} '{name}' column in the header (columns: {names})")
            positions[name] = names.index(name)
        while True:
            line = reader.line_num + 1  # a row starts after the last line read (a quoted value may span lines)
            row = next(reader, None)
            if row is None:
                return
            if not row:
                continue  # a blank line (pandas' skip_blank_lines)
            if len(row) != len(names):
                holding = "a comma" if delimiter == "," else "a tab" if delimiter == "\t" else repr(delimiter)
                hint = f" (quote a {value_name} holding {holding})" if len(row) > len(names) else ""
                raise LitzooError(f"{what} '{path}' line {line}: {len(row)} fields, the header has {len(names)}{hint}")
            yield line, {name: row[position] for name, position in positions.items()}
    except csv.Error as error:
        raise LitzooError(f"{what} '{path}' line {reader.line_num}: {error}") from None


__all__ = ["read_named_columns"]
