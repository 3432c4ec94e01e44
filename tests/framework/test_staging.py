"""Generated folders appear whole: written in a sibling and renamed; a lost race or a failed write
leaves nothing behind."""

from __future__ import annotations

import os

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


# ---- files written whole (write_files_atomically, check_writable) ------------------------------------------------


def test_files_are_written_whole_with_their_suffix_and_usual_permissions(tmp_path):
    import numpy as np

    from litzoo.framework.data.staging import write_files_atomically

    target, side = tmp_path / "out" / "kept.jsonl", tmp_path / "out" / "kept.counts.npy"
    with write_files_atomically(target, side) as (staged_target, staged_side):
        assert staged_target.parent == target.parent and staged_side.suffix == ".npy" and staged_target.name.startswith(".kept.jsonl.")
        staged_target.write_text("a\nb\n")
        np.save(staged_side, np.arange(3))  # numpy appends .npy to a name without it: the staged name keeps the suffix
        assert not target.exists()  # nothing is in place before the block ends
    assert target.read_text() == "a\nb\n" and np.load(side).tolist() == [0, 1, 2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["kept.counts.npy", "kept.jsonl"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_write_interrupted_mid_way_keeps_the_previous_files_and_leaves_no_partial_file(tmp_path):
    from litzoo.framework.data.staging import write_files_atomically

    target, side = tmp_path / "kept.jsonl", tmp_path / "kept.npy"
    target.write_text("previous, complete\n")
    side.write_bytes(b"previous side file")
    with pytest.raises(KeyboardInterrupt):
        with write_files_atomically(target, side) as (staged_target, _):
            with staged_target.open("w") as f:
                f.write("half of the new ")
                raise KeyboardInterrupt  # a kill-like interruption in the middle of the writing
    assert target.read_text() == "previous, complete\n" and side.read_bytes() == b"previous side file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.jsonl", "kept.npy"]


def test_check_writable_names_the_output_and_the_reason(tmp_path, monkeypatch):
    from litzoo.framework.data import staging
    from litzoo.framework.errors import LitzooError

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(LitzooError) as error:
        staging.check_writable(tmp_path / "a_file" / "sub" / "out.jsonl")
    assert str(error.value) == f"output '{tmp_path / 'a_file' / 'sub' / 'out.jsonl'}' cannot be written: '{tmp_path / 'a_file'}' is a file, not a folder"
    with pytest.raises(LitzooError, match="is a folder; expected the path of a file"):
        staging.check_writable(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(staging.tempfile, "mkstemp", refuse)  # root ignores file modes: refuse as a read-only folder would
    with pytest.raises(LitzooError) as error:
        staging.check_writable(tmp_path / "out.jsonl", what="curated manifest")
    assert str(error.value) == f"curated manifest '{tmp_path / 'out.jsonl'}' cannot be written: Permission denied ('{tmp_path}')"
    monkeypatch.undo()
    assert staging.check_writable(tmp_path / "new" / "out.jsonl") == tmp_path / "new" / "out.jsonl"
    assert list((tmp_path / "new").iterdir()) == []  # the probe is gone
