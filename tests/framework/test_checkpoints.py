"""Checkpoint files a user points at: loaded weights-only, bad ones rejected with one line naming them;
the one check of whether a state dict fits a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from litzoo.framework.checkpoints import BN_COUNTERS, check_state_dict, load_checkpoint, load_state_dict_checked, state_dict_from
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


class EncoderDecoder(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
        self.decoder_pred = nn.Linear(6, 4)
        self.head = nn.Linear(6, classes)


def test_a_fitting_state_dict_loads_strictly():
    source, target = EncoderDecoder(), EncoderDecoder()
    fit = load_state_dict_checked(target, source.state_dict(), "w.pt")
    assert fit.ok and not (fit.tolerated_missing or fit.tolerated_shape or fit.tolerated_unexpected)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True))


def test_every_kind_of_mismatch_is_named_with_the_file():
    state = EncoderDecoder(classes=5).state_dict()
    del state["encoder.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(LitzooError) as error:
        load_state_dict_checked(EncoderDecoder(), state, "other.pt", what="toy model")
    message = str(error.value)
    assert message == (
        "checkpoint 'other.pt' does not fit this toy model "
        "(missing: encoder.0.bias; unexpected: extra.weight; other shapes: head.bias, head.weight)"
    )
    with pytest.raises(LitzooError, match=r"does not fit this EncoderDecoder \(missing: encoder.0.bias, encoder.0.weight, "
                                          r"encoder.1.bias, encoder.1.num_batches_tracked \.\.\.\)"):
        load_state_dict_checked(EncoderDecoder(), {k: v for k, v in EncoderDecoder().state_dict().items() if not k.startswith("encoder")}, "p.pt")


def test_what_a_caller_tolerates_keeps_the_models_own_values():
    source, target = EncoderDecoder(classes=5), EncoderDecoder()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("decoder_") and not k.endswith("num_batches_tracked")}
    state["norm.weight"] = torch.ones(6)  # a weight this model does not use
    fit = load_state_dict_checked(target, state, "w.pt", may_miss=["decoder_*", BN_COUNTERS], may_reshape=["head.*"], may_ignore=["norm.*"])
    assert fit.tolerated_missing == ("decoder_pred.bias", "decoder_pred.weight", "encoder.1.num_batches_tracked")
    assert fit.tolerated_shape == ("head.bias", "head.weight") and fit.tolerated_unexpected == ("norm.weight",)
    loaded = target.state_dict()
    for key in ("decoder_pred.weight", "head.weight", "encoder.1.num_batches_tracked"):
        assert torch.equal(loaded[key], before[key]), key
    assert torch.equal(loaded["encoder.0.weight"], source.state_dict()["encoder.0.weight"])
    # the same mismatches without the tolerance are problems
    fit = check_state_dict(state, EncoderDecoder().state_dict())
    assert not fit.ok and fit.problems == len(fit.missing) + len(fit.unexpected) + len(fit.wrong_shape) == 3 + 1 + 2
