"""What the ``litzoo`` command shows on the console: the overview of its commands, errors as one line, progress
bars, and quiet third-party messages that litzoo cannot fix.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from jsonargparse import ArgumentParser

from litzoo.framework.errors import LitzooError, one_line

T = TypeVar("T")

# ---- the overview of every command ------------------------------------------------------------------------------

#: Lightning's subcommands (``LightningCLI.subcommands()``), with the line ``litzoo --help`` shows for each
TRAINING_COMMANDS: dict[str, str] = {
    "fit": "train a config's model on its data (-c configs/<method>/<data>.yaml, or -c <method>/<data>)",
    "validate": "one evaluation epoch on the validation split (--ckpt_path best|last|<file>)",
    "test": "one evaluation epoch on the test split (--ckpt_path best|last|<file>)",
    "predict": "run the model on the predict split (--ckpt_path best|last|<file>)",
}

#: one line per command of :data:`litzoo.cli.COMMANDS`; a test checks that every command has one
COMMAND_SUMMARIES: dict[str, str] = {
    "list": "every method, DataModule, callback and shipped config, one line each",
    "export": "the deploy model of a checkpoint as ONNX, TorchScript or int8, verified against torch",
    "curate": "MetaCLIP curation of a caption pool (JSONL, Parquet or WebDataset shards): sub-string matching, then balancing",
    "text-quality": "text quality-based pruning of a corpus (JSONL, Parquet or WebDataset shards): keep the best-scored fraction",
    "graph": "the computation graph of a config's network, as JSON",
    "architectures": "generate (or resume) a labelled NAS benchmark of networks trained on the digits",
    "architecture-tasks": "AIO-P's extra task labels for the networks of an architecture benchmark",
    "nas-search": "search a family's architectures with a trained performance predictor under a FLOPs limit",
    "recaption": "rewrite the alt-texts of an image-text manifest into aligned captions with an Altogether captioner",
    "mode-cluster": "MoDE: cluster a caption pool in two levels and write one training manifest per data expert",
    "active-learn": "pool-based active learning from a config: fit, test, query and label, round by round (resumable)",
    "la3-search": "LA3: search a label-aware augmentation policy with a pretrained classifier, written as a policy file",
}


def overview(commands: Sequence[str]) -> str:
    """The text of ``litzoo --help``: every command, Lightning's and litzoo's, one line each."""
    width = max(len(name) for name in [*TRAINING_COMMANDS, *commands]) + 2
    lines = [
        "usage: litzoo <command> [options]       (litzoo <command> --help: the options of one command)",
        "",
        "training runs (LightningCLI; a config's model, data and trainer, overridden by --key value):",
        *(f"  {name:<{width}}{summary}" for name, summary in TRAINING_COMMANDS.items()),
        "",
        "other commands:",
        *(f"  {name:<{width}}{COMMAND_SUMMARIES.get(name, '')}".rstrip() for name in commands),
        "",
        "e.g.  litzoo fit -c repvgg/digits    litzoo test -c repvgg/digits --ckpt_path best    litzoo list",
    ]
    return "\n".join(lines)


def all_commands(commands: Iterable[str]) -> str:
    """``"fit, validate, test, predict, list, export, ..."``."""
    return ", ".join([*TRAINING_COMMANDS, *commands])


# ---- errors as one line ---------------------------------------------------------------------------------------


def command_parser(prog: str, description: str) -> ArgumentParser:
    """The argument parser of a ``litzoo`` command: a jsonargparse parser that raises its errors
    (:class:`jsonargparse.ArgumentError`) instead of printing its whole usage, so that ``main`` prints them as one
    line; ``--help`` still prints the usage."""
    return ArgumentParser(prog=prog, description=description, exit_on_error=False)


def user_error(error: BaseException) -> LitzooError | OSError | None:
    """The :class:`LitzooError` or :class:`OSError` that ``error`` is, or was raised from (``raise ... from``, as
    jsonargparse wraps an error raised while it instantiates a config's class), or ``None``: a bug, for a
    traceback. Only explicit causes are followed: an error that merely happened while another was handled is
    not blamed on it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (LitzooError, OSError)):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def error_line(error: BaseException) -> str:
    """One line for the user: a LitzooError's message, an OSError's reason and file, or any other message with its
    lines joined (jsonargparse's messages span several)."""
    if isinstance(error, OSError) and not isinstance(error, LitzooError):
        reason = error.strerror or str(error) or type(error).__name__
        if error.filename is not None:
            reason += f": '{error.filename}'" + (f" -> '{error.filename2}'" if error.filename2 is not None else "")
        text = reason
    else:
        text = one_line(error)
    return " ".join(text.split())


# ---- progress bars --------------------------------------------------------------------------------------------


def progress(iterable: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None, unit: str = "it") -> Iterator[T]:
    """``iterable`` with a tqdm progress bar on stderr: shown when ``enabled``, or for ``None`` when stderr is a
    terminal (never in a log file or a pipe). The bar is removed when the loop ends."""
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return iter(tqdm(iterable, desc=description, total=total, disable=disable, leave=False, file=sys.stderr, unit=unit, dynamic_ncols=True))


def add_progress_argument(parser: ArgumentParser) -> None:
    """``--progress true|false`` (default: when stderr is a terminal)."""
    parser.add_argument("--progress", type=bool | None, default=None, help="show progress bars (default: when stderr is a terminal)")


# ---- third-party messages litzoo cannot fix -------------------------------------------------------------------


class _DropMessages(logging.Filter):
    """Drops the log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


#: logger name -> the beginnings of its messages that say nothing about the user's run:
#: Lightning's advertisements for its cloud services (logged through ``rank_zero_info`` by whichever of the two
#: rank-zero loggers was set last), and the ONNX exporter's note, once per torchvision operator, that
#: torchvision (which litzoo does not use) is not installed
NOISE_LOGS: Mapping[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip: For seamless cloud",),
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
}
_LOG_FILTERS = {name: _DropMessages(prefixes) for name, prefixes in NOISE_LOGS.items()}


def quiet_third_party_noise() -> None:
    """Hide the messages of the libraries below litzoo that a litzoo user can do nothing about, each by its
    exact origin and text: Lightning's own use of a torch class that torch deprecated (``LeafSpec``, a
    FutureWarning from ``lightning.*``), its cloud-service tips, and the ONNX exporter's torchvision notes.
    Every other warning and message still shows. Called by ``main``: the roof's choice, not the rooms'."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning, module=r"lightning\.")
    for name, log_filter in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(log_filter)  # the same filter object: added once however often main runs


def parse_error_hint(argv: Sequence[str], commands: Iterable[str]) -> str:
    """Where a mistyped option is explained: ``litzoo <command> --help``."""
    known = {*TRAINING_COMMANDS, *commands}
    command = next((arg for arg in argv if arg in known), None)
    return f"`litzoo {command} --help` lists the options" if command else "`litzoo --help` lists the commands"

