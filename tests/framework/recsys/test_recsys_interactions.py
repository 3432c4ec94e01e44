"""Readers of RecBole atomic ``.inter`` and plain CSV interaction files: exact formats read back, one-line errors, domain joining."""

from __future__ import annotations

import numpy as np
import pytest

from litzoo.framework.errors import LitzooError
from litzoo.framework.recsys import detect_format, join_domains, read_csv_interactions, read_inter, read_interactions

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\tb7\t4.0\t1500000010\n"
    "007\tb2\t5\t1500000000\n"
    "\n"
    "7\tb7\t3.5\t1500000005.5\n"
)


def test_inter_read_back_exactly(tmp_path):
    path = tmp_path / "books.inter"
    path.write_text(INTER)
    data = read_inter(path)
    assert data.users == ["u1", "007", "7"]  # tokens are strings: 007 and 7 are two users, as in RecBole
    assert data.items == ["b7", "b2", "b7"]
    assert data.ratings.tolist() == [4.0, 5.0, 3.5]
    assert data.timestamps.tolist() == [1500000010.0, 1500000000.0, 1500000005.5]
    assert data.lines.tolist() == [2, 3, 5] and data.has_time  # the blank line 4 is skipped, numbering kept


def test_inter_optional_and_extra_columns(tmp_path):
    path = tmp_path / "a.inter"
    # columns in another order, an extra token_seq column, no rating and no timestamp: file order is the time order
    path.write_text("review:token_seq\titem_id:token\tuser_id:token\nnice book\ti1\tu1\n\ti2\tu1\nok\ti1\tu2\n")
    data = read_inter(path)
    assert data.users == ["u1", "u1", "u2"] and data.items == ["i1", "i2", "i1"]
    assert data.ratings.tolist() == [1.0, 1.0, 1.0] and data.timestamps.tolist() == [0.0, 1.0, 2.0] and not data.has_time


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\n", "a.inter:2: 2 field(s), the header has 3"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\t2\tx\n", "a.inter:3: 4 field(s), the header has 3"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t12\nu1\ti2\tyesterday\n", "a.inter:3: timestamp 'yesterday' is not a number"),
        ("user_id:token\titem_id:token\trating:float\nu1\ti1\tfive\n", "a.inter:2: rating 'five' is not a number"),
        ("user_id:token\titem_id:token\trating:float\nu1\ti1\tnan\n", "a.inter:2: rating 'nan' is not finite"),
        ("user_id:token\titem_id:token\trating:float\nu1\ti1\t\n", "a.inter:2: rating '' is not a number"),
        ("user_id:token\trating:float\nu1\t3\n", "a.inter:1: missing the item column 'item_id'"),
        ("user_id:token\titem_id:int\nu1\ti1\n", "a.inter:1: field 'item_id' has type 'int'"),
        ("user_id:token\titem_id\nu1\ti1\n", "a.inter:1: header field 'item_id' is not name:type"),
        ("user_id:token\titem_id:token\ttimestamp:token\nu1\ti1\t3\n", "a.inter:1: field 'timestamp' must be of type float"),
        ("user_id:token\titem_id:token\n\ti1\n", "a.inter:2: empty user id"),
        ("user_id:token\titem_id:token\n", "a.inter: no interaction rows"),
    ],
)
def test_inter_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "a.inter"
    path.write_text(text)
    with pytest.raises(LitzooError) as error:
        read_inter(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_csv_with_and_without_header(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("u1,i1,5,100\nu2,i1,3.5,50\n")
    named = tmp_path / "named.csv"  # the Amazon review field names, in another order, with an extra column
    named.write_text("asin,reviewerID,unixReviewTime,overall,verified\ni1,u1,100,5,True\ni1,u2,50,3.5,False\n")
    for path in (plain, named):
        data = read_csv_interactions(path)
        assert data.users == ["u1", "u2"] and data.items == ["i1", "i1"]
        assert data.ratings.tolist() == [5.0, 3.5] and data.timestamps.tolist() == [100.0, 50.0]
    two = tmp_path / "two.csv"
    two.write_text("u1,i1\nu1,i2\n")
    assert read_csv_interactions(two).timestamps.tolist() == [0.0, 1.0]
    ratings_only = tmp_path / "ratings_only.csv"  # Amazon 2018 "ratings only": item,user,rating,timestamp without header
    ratings_only.write_text("i9,u3,4,77\n")
    data = read_csv_interactions(ratings_only, csv_columns=("item", "user", "rating", "timestamp"))
    assert (data.users, data.items, data.timestamps.tolist()) == (["u3"], ["i9"], [77.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("u1,i1,5,100\nu2,i1,5\n", "b.csv:2: 3 field(s), expected 4"),
        ("u1,i1,5,100\nu2,i1,5,noon\n", "b.csv:2: timestamp 'noon' is not a number"),
        ("u1,i1,great,100\n", "b.csv:1: rating 'great' is not a number"),
        ("user,rating,timestamp\nu1,5,100\n", "b.csv:1: header ['user', 'rating', 'timestamp'] has no item column"),
        ("user,item,rating,timestamp\nu1,i1,5,inf\n", "b.csv:2: timestamp 'inf' is not finite"),
        ("u1\n", "b.csv:1: 1 field(s); expected user,item[,rating[,timestamp]]"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(LitzooError) as error:
        read_csv_interactions(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_file_and_format_detection(tmp_path):
    with pytest.raises(LitzooError, match="nope.inter: interaction file not found"):
        read_interactions(tmp_path / "nope.inter")
    odd = tmp_path / "books.txt"
    odd.write_text(INTER)
    assert detect_format(odd) == "inter" and read_interactions(odd).users == ["u1", "007", "7"]
    flat = tmp_path / "books.dat"
    flat.write_text("u1,i1\n")
    assert detect_format(flat) == "csv"
    with pytest.raises(ValueError, match="format must be one of"):
        read_interactions(flat, format="parquet")


def test_join_domains_shares_users_and_namespaces_items(tmp_path):
    (tmp_path / "a.csv").write_text("alice,x\nbob,y\nalice,y\n")
    (tmp_path / "b.csv").write_text("carol,x\nbob,x\n")
    joined = join_domains({"a": read_csv_interactions(tmp_path / "a.csv"), "b": read_csv_interactions(tmp_path / "b.csv")})
    assert joined.user_ids == {"alice": 1, "bob": 2, "carol": 3} and joined.num_users == 3
    assert joined.item_ids == {"a": {"x": 1, "y": 2}, "b": {"x": 1}}  # "x" of a and "x" of b are different items
    assert joined.users["a"].tolist() == [1, 2, 1] and joined.users["b"].tolist() == [3, 2]
    assert joined.items["a"].tolist() == [1, 2, 2] and joined.items["b"].tolist() == [1, 1]
    assert joined.num_items("a") == 2 and joined.num_items("b") == 1 and 0 not in np.concatenate(list(joined.users.values()))
