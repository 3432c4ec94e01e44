"""What the ``litzoo`` command shows (issue 18, items 11 and 14): every error that reaches it is one line naming the
file or value, --help and an unknown command list every command, ``litzoo list`` is plain text, progress bars, one
FLOPs figure in the model summary, and third-party noise hidden without hiding real warnings."""

from __future__ import annotations

import logging
import re
import warnings

import lightning as L
import pytest
import torch
from torch import nn

from litzoo.cli import COMMANDS, main
from litzoo.cli.console import COMMAND_SUMMARIES, TRAINING_COMMANDS, error_line, quiet_third_party_noise, user_error
from litzoo.cli.registry import plain_text, summary_line
from litzoo.cli.summary import FlopsModelSummary
from litzoo.framework.errors import LitzooError

QUIET = ["--trainer.enable_progress_bar", "false"]


def one_error_line(capsys, argv: list[str]) -> str:
    """The message ``main(argv)`` prints, after checking that it exits with 2 and prints exactly one line on stderr
    (warnings, such as Lightning's note on an unseeded run, are recorded apart, whatever pytest's options)."""
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings(record=True):
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("litzoo: error: "), err
    return err.removeprefix("litzoo: error: ").rstrip("\n")


# ---- errors: one line -------------------------------------------------------------------------------------------


def test_a_missing_data_root_raised_inside_jsonargparse_is_one_line(tmp_path, capsys):
    missing = tmp_path / "missing"
    image = one_error_line(capsys, ["fit", "--model", "litzoo.modules.repvgg.RepVGGClassifier",
                                    "--data", "litzoo.datamodules.image_folder.ImageFolderDataModule", "--data.root", str(missing), *QUIET])  # fmt: skip
    assert image == f"image folder root '{missing}' does not exist: expected a folder holding train/ (and optionally val/, test/)"
    audio = one_error_line(capsys, ["fit", "--model", "litzoo.modules.audio_mae.AudioMAEClassifier", "--model.num_classes", "2",
                                    "--data", "litzoo.datamodules.audio_folder.AudioFolderDataModule", "--data.root", str(missing), *QUIET])  # fmt: skip
    assert str(missing) in audio and "does not exist" in audio


def test_an_unwritable_output_is_one_line_for_every_command(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "pool.jsonl").write_text('{"image": "a.png", "text": "a cat"}\n')
    (tmp_path / "entries.txt").write_text("cat\n")
    blocked = tmp_path / "a_file" / "sub"
    cases = {
        "curate": ["--manifest", str(tmp_path / "pool.jsonl"), "--metadata", str(tmp_path / "entries.txt"), "--output", str(blocked / "o.jsonl")],
        "text-quality": ["--manifest", str(tmp_path / "pool.jsonl"), "--output", str(blocked / "o.jsonl")],
        "graph": ["-c", "repvgg/digits", "--out", str(blocked / "g.json")],
        "export": ["--ckpt_path", str(tmp_path / "any.ckpt"), "--output", str(blocked / "m.onnx")],
    }
    for name, args in cases.items():
        message = one_error_line(capsys, [name, *args])
        assert message.endswith(f"cannot be written: '{tmp_path / 'a_file'}' is a file, not a folder"), message
    # a command that does not check first: its OSError, one line naming the path
    assert str(tmp_path / "a_file") in one_error_line(capsys, ["architectures", "--out", str(blocked / "benchmark.jsonl")])
    # a training run: the OSError of its logger's folder, raised inside Lightning
    message = one_error_line(capsys, ["fit", "-c", "repvgg/digits", "--trainer.max_steps", "1", "--trainer.default_root_dir", str(blocked), *QUIET])
    assert str(tmp_path / "a_file") in message


def test_curate_refuses_a_threshold_that_is_not_positive_in_one_line(tmp_path, capsys):
    message = one_error_line(capsys, ["curate", "--manifest", "m.jsonl", "--metadata", "e.txt", "--output", str(tmp_path / "o.jsonl"), "--t", "-5"])
    assert message == "--t -5: the balancing threshold must be a positive number of texts per entry"


def test_argument_errors_keep_their_text_without_the_usage(capsys):
    missing = one_error_line(capsys, ["curate", "--manifest", "m.jsonl"])
    assert missing == "the following arguments are required: metadata, output (`litzoo curate --help` lists the options)"
    typed = one_error_line(capsys, ["fit", "-c", "repvgg/digits", "--trainer.max_epochs", "abc"])
    assert typed.startswith('Parser key "trainer.max_epochs": ') and "Given value: abc" in typed and typed.endswith("(`litzoo fit --help` lists the options)")
    unknown = one_error_line(capsys, ["fit", "-c", "repvgg/digits", "--trainer.max_epochz", "3"])
    assert unknown.startswith("unrecognized arguments: --trainer.max_epochz 3")


def test_user_errors_are_found_through_explicit_causes_only():
    try:
        try:
            raise LitzooError("root 'x' does not exist")
        except LitzooError as inner:
            raise ValueError("Does not validate against any of the Union subtypes\nErrors: ...") from inner
    except ValueError as wrapped:
        assert str(user_error(wrapped)) == "root 'x' does not exist"
    try:
        try:
            raise FileNotFoundError(2, "No such file or directory", "a.txt")
        except OSError:
            raise RuntimeError("a bug while handling it")  # noqa: B904 - the point: not `from`, so not the cause
    except RuntimeError as bug:
        assert user_error(bug) is None
    assert error_line(PermissionError(13, "Permission denied", "/out/x.jsonl")) == "Permission denied: '/out/x.jsonl'"
    assert error_line(OSError("disk on fire")) == "disk on fire"
    assert error_line(LitzooError("two\nlines")) == "two lines"


# ---- every command, in --help and after an unknown one ----------------------------------------------------------


def test_help_and_an_unknown_command_list_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in [*TRAINING_COMMANDS, *COMMANDS]:
        assert re.search(rf"^  {re.escape(name)} +\S", out, re.MULTILINE), name
    message = one_error_line(capsys, ["curat"])
    assert message.startswith("unknown command 'curat'; the commands are fit, validate, test, predict, ")
    assert all(name in message for name in COMMANDS)
    assert set(COMMAND_SUMMARIES) == set(COMMANDS)  # a new command needs its line in the overview


# ---- litzoo list: plain one-line descriptions -------------------------------------------------------------------


def test_rst_is_rendered_as_plain_text():
    assert plain_text("Fine-tuning of :class:`AudioViTClassifier` on ``{\"audio\", \"label\"}`` batches") == (
        'Fine-tuning of AudioViTClassifier on {"audio", "label"} batches'
    )
    assert plain_text(":class:`~litzoo.framework.data.splits.SplitsDataModule` and :func:`a.b.f` and :ref:`the guide <guide>`") == (
        "SplitsDataModule and a.b.f and the guide"
    )
    assert plain_text("**bold**, *emphasis* and ``x *= 2`` or 3 * 4") == "bold, emphasis and x *= 2 or 3 * 4"

    class Documented:
        """First sentence with ``code``
        over two lines. Second sentence.

        Another paragraph."""

    assert summary_line(Documented) == "First sentence with code over two lines."


def test_list_shows_clean_one_line_descriptions(capsys):
    main(["list"])
    lines = capsys.readouterr().out.splitlines()
    described = [line for line in lines if line.startswith("  ")]
    assert len(described) > 50
    for line in described:
        assert not re.search(r"``|:(class|func|mod|meth|attr):|`", line), line
        name, _, description = line.strip().partition("  ")
        assert description.strip() and len(description.strip()) <= 110, line


# ---- the model summary: one FLOPs figure ------------------------------------------------------------------------


class TinyModule(L.LightningModule):
    def __init__(self, example_batch: int) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 4)
        self.example_input_array = torch.zeros(example_batch, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8)), batch_size=2)


@pytest.mark.parametrize("example_batch", [1, 4])
def test_the_model_summary_shows_one_flops_figure(example_batch, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    trainer = L.Trainer(max_steps=1, callbacks=[FlopsModelSummary()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(TinyModule(example_batch))
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "Total Flops" not in text
    flops_lines = [line for line in text.splitlines() if "FLOPs" in line and "|" not in line]
    assert flops_lines == ["64        FLOPs per sample (input (8,))"]  # 2 * 8 * 4 multiply-adds of one sample, by hand
    header = next(line for line in text.splitlines() if line.lstrip().startswith("| Name"))
    # Lightning's per-layer FLOPs column is of the example batch: kept only when that batch is one sample
    assert ("FLOPs" in header) == (example_batch == 1)


# ---- third-party noise ------------------------------------------------------------------------------------------


def test_third_party_noise_is_hidden_and_real_warnings_still_show(caplog):
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_noise()
        _tree_flatten(torch.zeros(1))  # Lightning's own use of torch's deprecated LeafSpec
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, "user.py", 1, module="user_code")
        warnings.warn("a real problem in the user's run", UserWarning, stacklevel=1)
        warnings.warn_explicit("another FutureWarning of Lightning", FutureWarning, "x.py", 1, module="lightning.pytorch.trainer")
    shown = [(w.category, str(w.message)) for w in caught]
    assert (UserWarning, "a real problem in the user's run") in shown
    assert (FutureWarning, "another FutureWarning of Lightning") in shown
    assert (FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated") in shown  # the same text from another module
    assert sum("LeafSpec" in message for _, message in shown) == 1

    caplog.set_level(logging.INFO)
    quiet_third_party_noise()
    quiet_third_party_noise()  # idempotent: main may run many times in one process
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
    rank_zero_info("GPU available: False, used: False")
    onnx = logging.getLogger("torch.onnx._internal.exporter._registration")
    onnx.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
    onnx.warning("a real ONNX registration problem")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["GPU available: False, used: False", "a real ONNX registration problem"]
    assert len(onnx.filters) == 1


# ---- progress bars -----------------------------------------------------------------------------------------------


def test_curate_shows_progress_bars_on_request_and_none_without_a_terminal(tmp_path, capsys):
    (tmp_path / "pool.jsonl").write_text("".join(f'{{"text": "a cat {i}"}}\n' for i in range(20)))
    (tmp_path / "entries.txt").write_text("cat\n")
    args = ["curate", "--manifest", str(tmp_path / "pool.jsonl"), "--metadata", str(tmp_path / "entries.txt"), "--output", str(tmp_path / "o.jsonl")]
    main(args)  # stderr is not a terminal here: no bar
    assert capsys.readouterr().err == ""
    main([*args, "--progress", "true"])
    err = capsys.readouterr().err
    assert "matching:" in err and "0/20" in err and "writing:" in err  # the bars, cleared when done (leave=False)
    main([*args, "--progress", "false"])
    assert capsys.readouterr().err == ""

