"""The official triples format read back: dict ids, first-appearance ids, GraIL's inductive layout, one-line errors."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.errors import LitzooError
from litzoo.framework.graphs import read_dict, read_inductive, read_triples_folder


def write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1) if name.endswith(("_txt", "_dict")) else folder / name).write_text(text)
    return folder


def test_first_appearance_ids_like_grail(tmp_path):
    folder = write(tmp_path / "kg", train_txt="a\tlikes\tb\nb\tknows\tc\n\n", valid_txt="c\tlikes\ta\n", test_txt="b\tknows\ta\n")
    graph = read_triples_folder(folder)
    assert graph.entities == ["a", "b", "c"] and graph.relations == ["likes", "knows"]
    assert graph.splits["train"].tolist() == [[0, 0, 1], [1, 1, 2]]
    assert graph.splits["valid"].tolist() == [[2, 0, 0]]
    assert graph.splits["test"].tolist() == [[1, 1, 0]]


def test_dicts_fix_the_ids_like_pathcon(tmp_path):
    folder = write(
        tmp_path / "kg",
        train_txt="a\tlikes\tb\n", test_txt="b\tknows\ta\n",
        entities_dict="1\ta\n0\tb\n", relations_dict="0\tknows\n1\tlikes\n",
    )
    graph = read_triples_folder(folder)
    assert graph.entities == ["b", "a"] and graph.relations == ["knows", "likes"]
    assert graph.splits["train"].tolist() == [[1, 1, 0]] and graph.splits["test"].tolist() == [[0, 0, 1]]
    assert "valid" not in graph.splits


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"train_txt": "a\tr\tb\na\tr\n"}, "train.txt:2: expected 'head<TAB>relation<TAB>tail'"),
        ({"train_txt": "a r b\n"}, "train.txt:1: expected"),
        ({"train_txt": "a\tr\tb\n", "test_txt": "a\tr\tzzz\n"}, "test.txt:1: entity 'zzz' does not occur"),
        ({"train_txt": "a\tr\tb\n", "valid_txt": "\na\ts\tb\n"}, "valid.txt:2: relation 's' does not occur"),
        ({"train_txt": "a\tr\tb\nq\tr\tb\n", "entities_dict": "0\ta\n1\tb\n"}, "train.txt:2: unknown entity 'q'"),
        ({"train_txt": "a\tr\tb\n", "relations_dict": "0\tr\nx\ts\n"}, "relations.dict:2: the id 'x' is not an integer"),
        ({"train_txt": "a\tr\tb\n", "relations_dict": "0\tr\n2\ts\n"}, "relations.dict: ids must be 0..1"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, files, expected):
    folder = write(tmp_path / "kg", **files)
    with pytest.raises(LitzooError) as error:
        read_triples_folder(folder)
    message = str(error.value)
    assert expected in message and "\n" not in message


def test_unseen_entity_allowed_when_not_required(tmp_path):
    folder = write(tmp_path / "kg", train_txt="a\tr\tb\n", test_txt="a\tr\tz\n")
    graph = read_triples_folder(folder, require_seen_entities=False)
    assert graph.splits["test"].tolist() == [[0, 0, 2]]


def test_missing_folder_and_train(tmp_path):
    with pytest.raises(LitzooError, match="not a folder"):
        read_triples_folder(tmp_path / "nope")
    with pytest.raises(LitzooError, match="has no train.txt"):
        read_triples_folder(write(tmp_path / "empty", test_txt="a\tr\tb\n"))


def test_grail_inductive_layout(tmp_path):
    train = write(tmp_path / "toy_v1", train_txt="a\tr\tb\nb\ts\tc\n", valid_txt="a\ts\tc\n")
    write(tmp_path / "toy_v1_ind", train_txt="x\ts\ty\ny\tr\tz\n", test_txt="x\tr\tz\n")
    graph, test = read_inductive(train)
    assert graph.relations == ["r", "s"] and test.relations == ["r", "s"]  # the training relation ids
    assert test.entities == ["x", "y", "z"] and not set(test.entities) & set(graph.entities)
    assert test.splits["train"].tolist() == [[0, 1, 1], [1, 0, 2]] and test.splits["test"].tolist() == [[0, 0, 2]]
    assert "test" not in graph.splits
    write(tmp_path / "toy_v1_ind", train_txt="x\ts\ty\ny\tnew\tz\n")
    with pytest.raises(LitzooError, match=r"toy_v1_ind/train.txt:2: unknown relation 'new'"):
        read_inductive(train)
    with pytest.raises(LitzooError, match="does not exist"):
        read_inductive(write(tmp_path / "other_v1", train_txt="a\tr\tb\n"))


def test_read_dict_rejects_repeats(tmp_path):
    path = tmp_path / "entities.dict"
    path.write_text("0\ta\n1\ta\n")
    with pytest.raises(LitzooError, match=r"entities.dict:2: repeated"):
        read_dict(path)
    assert torch.tensor([1]).item() == 1
