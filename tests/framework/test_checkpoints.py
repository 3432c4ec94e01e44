"""Checkpoint files a user points at: loaded weights-only, bad ones rejected with one line naming them."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.checkpoints import load_checkpoint, state_dict_from
from litzoo.framework.errors import LitzooError, one_line


class NotAllowed:
    pass


@pytest.mark.parametrize("mmap", [False, True])
def test_loads_state_dicts_and_lightning_checkpoints(tmp_path, mmap):
    state = {"w": torch.arange(4.0)}
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "lightning.ckpt")
    assert torch.equal(state_dict_from(load_checkpoint(tmp_path / "plain.pt", mmap=mmap))["w"], state["w"])
    checkpoint = load_checkpoint(tmp_path / "lightning.ckpt", mmap=mmap)
    assert checkpoint["epoch"] == 3 and torch.equal(state_dict_from(checkpoint)["w"], state["w"])


def write_truncated(path):
    torch.save({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is not a file"),
        (lambda p: p.write_bytes(b"hello, not a checkpoint"), "is not a torch checkpoint"),
        (write_truncated, "is truncated or not a torch checkpoint"),
        (lambda p: torch.save({"obj": NotAllowed()}, p), "holds Python objects"),
        (lambda p: torch.save([torch.zeros(1)], p), "expected a dict"),
    ],
)
@pytest.mark.parametrize("mmap", [False, True])
def test_bad_files_give_one_line_naming_the_file(tmp_path, make, expected, mmap):
    path = tmp_path / "model.ckpt"
    make(path)
    with pytest.raises(LitzooError) as error:
        load_checkpoint(path, mmap=mmap)
    message = one_line(error.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_state_dict_without_tensors_is_rejected():
    with pytest.raises(LitzooError, match="no state dict of tensors"):
        state_dict_from({"state_dict": {"a": 1}}, "x.ckpt")


def test_one_line_extracts_the_worker_message():
    folded = "Caught LitzooError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File ...\nframework.errors.LitzooError: cannot read image 'a.png': broken"
    assert one_line(LitzooError(folded)) == "cannot read image 'a.png': broken"
