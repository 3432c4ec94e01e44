"""Per-domain user–item interaction files: RecBole atomic ``.inter`` files and plain ``user,item,rating,timestamp`` CSV.

Formats, as checked against their sources:

* **RecBole atomic ``.inter``** (RecBole docs "Atomic Files"; ``recbole/data/dataset/dataset.py::_load_feat``, read on
  RUCAIBox/RecBole): UTF-8 text, fields separated by a tab (``field_separator``), the first line a header of
  ``name:type`` fields whose type is one of ``token``, ``token_seq``, ``float``, ``float_seq``
  (``recbole/utils/enum_type.py::FeatureType``); any other type is refused. Only the user and item fields are
  required (``USER_ID_FIELD: user_id``, ``ITEM_ID_FIELD: item_id``); ``rating`` (``RATING_FIELD``) and ``timestamp``
  (``TIME_FIELD``) are optional, and other columns are allowed and ignored here. Token fields are strings (ids are
  never parsed as numbers: ``007`` and ``7`` are two users, as in RecBole, which reads tokens with ``dtype=str``).
  The id fields must be ``token`` and rating / timestamp ``float``, as RecBole declares them.
* **Plain CSV** ``user,item,rating,timestamp``, with or without a header line. RecGURU's Amazon processing
  (Chain123/RecGURU ``data_process/amazon_csv.py``) reads the review JSON's ``reviewerID``, ``asin``, ``overall`` and
  ``unixReviewTime``; a header naming these (or ``user``/``user_id``, ``item``/``item_id``, ``rating``,
  ``timestamp``/``time``) is mapped by name, in any order, extra columns ignored. Without a header the columns are
  positional: user, item, then optionally rating and timestamp (2 to 4 fields, fixed by the first row). The
  "ratings only" Amazon 2018 CSVs are ``item,user,rating,timestamp`` without a header: pass
  ``csv_columns=("item", "user", "rating", "timestamp")``.

Chosen where the formats are silent: blank lines are skipped (pandas' ``skip_blank_lines``); an empty, non-numeric
or non-finite rating / timestamp is an error (RecBole would read NaN); a file without a timestamp keeps its file
order as time order (``timestamp`` = the row's position); duplicate (user, item) rows are kept (RecBole's
``rm_dup_inter`` is off by default, and repeated consumption is part of a sequence). Every error is one
:class:`~litzoo.framework.errors.LitzooError` naming the file and line.

:func:`join_domains` puts several domains in one id space: users joined across domains by their raw id (the
overlapping users), items namespaced per domain (``book:42`` and ``movie:42`` are different items); ids start at 1,
0 is the padding id.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from litzoo.framework.errors import LitzooError

INTER_TYPES = ("token", "token_seq", "float", "float_seq")
FORMATS = ("inter", "csv", "auto")
#: Header names a CSV column may carry, per role (lower-cased).
CSV_ALIASES = {
    "user": ("user", "user_id", "userid", "reviewerid", "uid"),
    "item": ("item", "item_id", "itemid", "asin", "iid"),
    "rating": ("rating", "overall", "score"),
    "timestamp": ("timestamp", "time", "unixreviewtime", "ts"),
}


@dataclass
class DomainInteractions:
    """The rows of one interaction file, in file order.

    Attributes:
        path: the file read.
        users, items: raw ids (strings), one per row.
        ratings: ``(N,)`` float64 (1.0 where the file has no rating column).
        timestamps: ``(N,)`` float64 (the row position where the file has no timestamp column).
        lines: ``(N,)`` the 1-based line of each row in the file (for error messages downstream).
        has_time: whether the file had a timestamp column.
    """

    path: Path
    users: list[str]
    items: list[str]
    ratings: np.ndarray
    timestamps: np.ndarray
    lines: np.ndarray
    has_time: bool = True

    def __len__(self) -> int:
        return len(self.users)


def _number(text: str, path: Path, line: int, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LitzooError(f"{path}:{line}: {name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LitzooError(f"{path}:{line}: {name} {text!r} is not finite")
    return value


def _finish(path: Path, users: list, items: list, ratings: list, times: list | None, lines: list) -> DomainInteractions:
    if not users:
        raise LitzooError(f"{path}: no interaction rows")
    has_time = times is not None
    stamps = np.asarray(times if has_time else range(len(users)), dtype=np.float64)
    return DomainInteractions(path, users, items, np.asarray(ratings, dtype=np.float64), stamps, np.asarray(lines, dtype=np.int64), has_time)


def read_inter(
    path: str | Path, user_field: str = "user_id", item_field: str = "item_id", rating_field: str = "rating", time_field: str = "timestamp"
) -> DomainInteractions:
    """Read a RecBole atomic ``.inter`` file (tab-separated, ``name:type`` header).

    Args:
        path: the file.
        user_field, item_field: the id fields (RecBole's ``USER_ID_FIELD`` / ``ITEM_ID_FIELD``), of type ``token``.
        rating_field, time_field: the optional ``float`` fields (``RATING_FIELD`` / ``TIME_FIELD``).

    Raises:
        LitzooError: naming the file and line: a missing file, a header field not ``name:type`` or of an unknown
            type, a missing id field, an id field not ``token`` or a rating / time field not ``float``, a row with
            another number of fields than the header, an empty id, a non-numeric or non-finite rating or time.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LitzooError(f"{path}: interaction file not found")
    with open(path, encoding="utf-8", newline="") as handle:
        header_line = handle.readline().rstrip("\r\n")
        if not header_line.strip():
            raise LitzooError(f"{path}:1: empty header; expected tab-separated name:type fields such as 'user_id:token'")
        names, types = [], []
        for column in header_line.split("\t"):
            name, sep, kind = column.rpartition(":")
            if not sep or not name:
                raise LitzooError(f"{path}:1: header field {column!r} is not name:type")
            if kind not in INTER_TYPES:
                raise LitzooError(f"{path}:1: field {name!r} has type {kind!r}; RecBole types are {', '.join(INTER_TYPES)}")
            names.append(name)
            types.append(kind)
        if len(set(names)) != len(names):
            raise LitzooError(f"{path}:1: a field name repeats in the header {names}")
        position = {name: i for i, name in enumerate(names)}
        for field_name, role in ((user_field, "user"), (item_field, "item")):
            if field_name not in position:
                raise LitzooError(f"{path}:1: missing the {role} column {field_name!r} (header has {names})")
        expected = {user_field: "token", item_field: "token", rating_field: "float", time_field: "float"}
        for name, kind in expected.items():
            if name in position and types[position[name]] != kind:
                raise LitzooError(f"{path}:1: field {name!r} must be of type {kind}, got {types[position[name]]}")
        u, i = position[user_field], position[item_field]
        r, t = position.get(rating_field), position.get(time_field)
        users, items, ratings, lines = [], [], [], []
        times: list[float] | None = [] if t is not None else None
        for number, line in enumerate(handle, 2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(names):
                raise LitzooError(f"{path}:{number}: {len(fields)} field(s), the header has {len(names)} ({chr(9).join(names)})")
            if not fields[u] or not fields[i]:
                raise LitzooError(f"{path}:{number}: empty {'user' if not fields[u] else 'item'} id")
            users.append(fields[u])
            items.append(fields[i])
            ratings.append(_number(fields[r], path, number, "rating") if r is not None else 1.0)
            if times is not None:
                times.append(_number(fields[t], path, number, "timestamp"))
            lines.append(number)
    return _finish(path, users, items, ratings, times, lines)


def _csv_header(fields: list[str]) -> dict[str, int] | None:
    """Column roles of a header row, or None when the row is data (no field names the user column)."""
    lowered = [f.strip().lower() for f in fields]
    roles = {}
    for role, aliases in CSV_ALIASES.items():
        for index, name in enumerate(lowered):
            if name in aliases:
                roles[role] = index
                break
    return roles if roles else None


def read_csv_interactions(path: str | Path, csv_columns: tuple[str, ...] | None = None) -> DomainInteractions:
    """Read a plain CSV of ``user,item[,rating[,timestamp]]`` rows, with or without a header.

    Args:
        path: the file.
        csv_columns: the roles of the columns of a header-less file, in order (``"user"``, ``"item"``, ``"rating"``,
            ``"timestamp"``, or ``""`` for a column to skip); default: a header if the first row names a user column,
            else ``user,item[,rating[,timestamp]]``.

    Raises:
        LitzooError: naming file and line: missing file, a header without a user or item column, a row with another
            number of fields than the first, an empty id, a non-numeric or non-finite rating or time.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LitzooError(f"{path}: interaction file not found")
    with open(path, encoding="utf-8", newline="") as handle:
        rows = ((number, row) for number, row in enumerate(csv.reader(handle), 1) if row and any(f.strip() for f in row))
        first = next(rows, None)
        if first is None:
            raise LitzooError(f"{path}: no interaction rows")
        roles: dict[str, int] | None
        data_rows = [first]
        if csv_columns is not None:
            unknown = [c for c in csv_columns if c and c not in CSV_ALIASES]
            if unknown:
                raise ValueError(f"csv_columns must name roles among {sorted(CSV_ALIASES)} (or ''), got {unknown}")
            roles = {role: i for i, role in enumerate(csv_columns) if role}
            width = len(csv_columns)
            if _csv_header(first[1]) is not None and "user" in _csv_header(first[1]):
                data_rows = []  # the file has a header anyway: the given roles win, the header row is skipped
        else:
            roles = _csv_header(first[1])
            if roles is not None:
                width = len(first[1])
                data_rows = []
                for role in ("user", "item"):
                    if role not in roles:
                        raise LitzooError(f"{path}:{first[0]}: header {first[1]} has no {role} column (names: {', '.join(CSV_ALIASES[role])})")
            else:
                width = len(first[1])
                if not 2 <= width <= 4:
                    raise LitzooError(f"{path}:{first[0]}: {width} field(s); expected user,item[,rating[,timestamp]]")
                roles = {role: i for i, role in enumerate(("user", "item", "rating", "timestamp")[:width])}
        if "user" not in roles or "item" not in roles:
            raise ValueError(f"csv_columns must include 'user' and 'item', got {csv_columns}")
        u, i, r, t = roles["user"], roles["item"], roles.get("rating"), roles.get("timestamp")
        users, items, ratings, lines = [], [], [], []
        times: list[float] | None = [] if t is not None else None
        for number, fields in itertools.chain(data_rows, rows):
            if len(fields) != width:
                raise LitzooError(f"{path}:{number}: {len(fields)} field(s), expected {width}")
            user, item = fields[u].strip(), fields[i].strip()
            if not user or not item:
                raise LitzooError(f"{path}:{number}: empty {'user' if not user else 'item'} id")
            users.append(user)
            items.append(item)
            ratings.append(_number(fields[r].strip(), path, number, "rating") if r is not None else 1.0)
            if times is not None:
                times.append(_number(fields[t].strip(), path, number, "timestamp"))
            lines.append(number)
    return _finish(path, users, items, ratings, times, lines)


def detect_format(path: str | Path) -> Literal["inter", "csv"]:
    """``"inter"`` for a ``.inter`` file or one whose first line is tab-separated ``name:type`` fields, else ``"csv"``."""
    path = Path(path)
    if path.suffix == ".inter":
        return "inter"
    if path.suffix == ".csv":
        return "csv"
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
    except OSError:
        raise LitzooError(f"{path}: interaction file not found") from None
    fields = first.rstrip("\r\n").split("\t")
    return "inter" if len(fields) > 1 and all(f.rpartition(":")[2] in INTER_TYPES for f in fields) else "csv"


def read_interactions(path: str | Path, format: Literal["inter", "csv", "auto"] = "auto", csv_columns: tuple[str, ...] | None = None) -> DomainInteractions:
    """Read one domain's interaction file in ``format`` (``"auto"``: :func:`detect_format`)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    kind = detect_format(path) if format == "auto" else format
    return read_inter(path) if kind == "inter" else read_csv_interactions(path, csv_columns)


@dataclass
class JoinedInteractions:
    """Several domains in one id space.

    Attributes:
        domains: domain names, in the order given (domain id = position).
        user_ids: raw user id -> user id (1-based, shared by every domain).
        item_ids: per domain, raw item id -> item id (1-based, one space per domain).
        users, items: per domain, ``(N,)`` int64 ids of each row, in file order.
        timestamps, ratings: per domain, ``(N,)`` float64.
        paths: per domain, the file read.
    """

    domains: list[str]
    user_ids: dict[str, int]
    item_ids: dict[str, dict[str, int]]
    users: dict[str, np.ndarray] = field(default_factory=dict)
    items: dict[str, np.ndarray] = field(default_factory=dict)
    timestamps: dict[str, np.ndarray] = field(default_factory=dict)
    ratings: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        """Users over all domains (ids ``1..num_users``; 0 is padding)."""
        return len(self.user_ids)

    def num_items(self, domain: str) -> int:
        """Items of ``domain`` (ids ``1..num_items``; 0 is padding)."""
        return len(self.item_ids[domain])


def join_domains(domains: dict[str, DomainInteractions]) -> JoinedInteractions:
    """Map raw ids to shared user ids and per-domain item ids, both from 1 in order of first appearance
    (domains in the order given, rows in file order), so the ids do not depend on a hash order."""
    if not domains:
        raise ValueError("join_domains needs at least one domain")
    user_ids: dict[str, int] = {}
    joined = JoinedInteractions(list(domains), user_ids, {})
    for name, data in domains.items():
        items: dict[str, int] = {}
        joined.item_ids[name] = items
        joined.users[name] = np.fromiter((user_ids.setdefault(u, len(user_ids) + 1) for u in data.users), dtype=np.int64, count=len(data))
        joined.items[name] = np.fromiter((items.setdefault(i, len(items) + 1) for i in data.items), dtype=np.int64, count=len(data))
        joined.timestamps[name] = data.timestamps
        joined.ratings[name] = data.ratings
        joined.paths[name] = data.path
    return joined


__all__ = [
    "CSV_ALIASES",
    "FORMATS",
    "INTER_TYPES",
    "DomainInteractions",
    "JoinedInteractions",
    "detect_format",
    "join_domains",
    "read_csv_interactions",
    "read_inter",
    "read_interactions",
]
