"""Generated folders appear whole: written in a sibling and renamed; a lost race or a failed write
leaves nothing behind."""

from __future__ import annotations

import pytest

from litzoo.framework.data.staging import generate_folder_atomically


def _write(text: str):
    def write(staging):
        (staging / "a.txt").write_text(text)
        (staging / "sub").mkdir()
        (staging / "sub" / "b.txt").write_text(text)

    return write


def test_folder_is_written_whole_and_no_staging_is_left(tmp_path):
    target = tmp_path / "data" / "set"
    assert generate_folder_atomically(target, _write("one")) == target
    assert (target / "sub" / "b.txt").read_text() == "one"
    assert sorted(p.name for p in target.parent.iterdir()) == ["set"]
    assert oct(target.stat().st_mode & 0o777) == "0o755"


def test_losing_the_race_keeps_the_first_folder(tmp_path):
    target = tmp_path / "set"
    generate_folder_atomically(target, _write("first"))
    generate_folder_atomically(target, _write("second"))  # another process already renamed its copy
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(staging):
        (staging / "partial.txt").write_text("x")
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError, match="generator broke"):
        generate_folder_atomically(tmp_path / "set", fail)
    assert list(tmp_path.iterdir()) == []
