"""read_named_columns: rows by column name with the line each starts on, and one-line errors naming file and line."""

from __future__ import annotations

import pytest

from litzoo.framework.data.tables import read_named_columns
from litzoo.framework.errors import LitzooError


def test_rows_by_name_with_their_start_lines(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('\ufeffid\tpost\tclass\n1\t"two\nlines"\tnot_hate\n\n2\tplain\texplicit_hate\n', encoding="utf-8")
    rows = list(read_named_columns(path, ("post", "class"), "\t", "test TSV"))
    assert rows == [(2, {"post": "two\nlines", "class": "not_hate"}), (5, {"post": "plain", "class": "explicit_hate"})]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "test TSV '.*' is empty: expected a header line 'post<TAB>class'"),
        ("post\tpost\tclass\n", "line 1: more than one 'post' column"),
        ("post\tclass\na\tb\tc\n", r"line 2: 3 fields, the header has 2 \(quote a post holding a tab\)"),
        ('post\tclass\n"a\tb\n', "line 2: unexpected end of data"),
    ],
)
def test_malformed_tables_give_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LitzooError, match=message) as error:
        list(read_named_columns(path, ("post", "class"), "\t", "test TSV", value_name="post"))
    assert "\n" not in str(error.value)


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"label,text\n1,ok\n2,caf\xe9\n")
    with pytest.raises(LitzooError, match=r"t\.csv' line 3: not UTF-8"):
        list(read_named_columns(path, ("label", "text")))
