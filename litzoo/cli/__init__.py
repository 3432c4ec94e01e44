"""The ``litzoo`` command: LightningCLI with litzoo's defaults for ``fit`` / ``validate`` / ``test`` /
``predict``, plus the commands that are not training runs.

    litzoo fit  -c configs/repvgg/digits.yaml     # or -c repvgg/digits: a shipped config by name
    litzoo test -c configs/repvgg/digits.yaml --ckpt_path best
    litzoo list                                  # litzoo --help: every command
    litzoo export --ckpt_path runs/repvgg/digits/version_0/checkpoints/deploy.ckpt --format onnx
    litzoo curate --manifest pool.jsonl --metadata entries.json --output curated.jsonl
    litzoo text-quality --manifest corpus.jsonl --output pruned.jsonl
    litzoo graph -c configs/repvgg/digits.yaml --out cg.json --summary
    litzoo architectures --out data/architectures/digits.jsonl --per-family 50   # a labelled NAS benchmark
    litzoo architecture-tasks --benchmark data/architectures/digits_v1.jsonl --limit 200   # AIO-P's extra task labels
    litzoo nas-search --predictor gennape.ckpt --family mobilenet --flops-limit 6e5 --evaluate 20
    litzoo active-learn -c configs/active_learning/digits.yaml   # rounds of fit / test / query
    litzoo la3-search -c configs/la3/digits.yaml --out policy.json   # LA3's label-aware augmentation policy

This package is the roof of the house: the only place that imports every room (methods, callbacks,
datamodules, the core). Each command parses its arguments here and calls into the rooms; every
:class:`~litzoo.framework.errors.LitzooError`, :class:`OSError` and argument error reaching it is printed as
one line (:mod:`litzoo.cli.console`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentError

from litzoo.cli.console import all_commands, error_line, overview, parse_error_hint, quiet_third_party_noise, user_error
from litzoo.framework.errors import LitzooError

if TYPE_CHECKING:
    from litzoo.cli.lightning_cli import LitzooCLI, find_checkpoint, run_name

__all__ = ["COMMANDS", "LitzooCLI", "command", "find_checkpoint", "main", "run_name"]


#: the commands that are not LightningCLI subcommands, as ``module:function``; a command's module (and
#: what it needs: torch_geometric, onnxruntime ...) is imported only when it runs
COMMANDS: dict[str, str] = {
    "list": "litzoo.cli.registry:list_command",
    "export": "litzoo.cli.export:export_command",
    "curate": "litzoo.cli.curation:curate_command",
    "text-quality": "litzoo.cli.text_quality:text_quality_command",
    "graph": "litzoo.cli.graph:graph_command",
    "architectures": "litzoo.cli.nas:architectures_command",
    "architecture-tasks": "litzoo.cli.nas:architecture_tasks_command",
    "nas-search": "litzoo.cli.nas:nas_search_command",
    "recaption": "litzoo.cli.recaption:recaption_command",
    "mode-cluster": "litzoo.cli.mode:mode_cluster_command",
    "active-learn": "litzoo.cli.active:active_learn_command",
    "la3-search": "litzoo.cli.la3:la3_search_command",
}


def __getattr__(name: str) -> Any:
    """``LitzooCLI``, ``find_checkpoint`` and ``run_name`` (``lightning_cli.py``: Lightning, torch) are imported on first
    use: ``litzoo curate`` / ``text-quality`` and their spawned worker processes, which import the console script's
    module again, start without them."""
    if name in ("LitzooCLI", "find_checkpoint", "run_name"):
        return getattr(importlib.import_module("litzoo.cli.lightning_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def command(name: str) -> Callable[[Sequence[str]], object]:
    """The function of command ``name`` (a key of :data:`COMMANDS`), imported now."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``litzoo`` console script and ``python -m litzoo``.

    Every :class:`LitzooError` and :class:`OSError` that reaches here, also when raised from inside jsonargparse or
    Lightning, and every argument error, is printed as one line ``litzoo: error: ...`` (exit status 2); anything
    else is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_third_party_noise()
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(overview(list(COMMANDS)))
            if not argv:
                raise SystemExit(2)
        elif argv[0] in COMMANDS:
            command(argv[0])(argv[1:])
        else:
            from litzoo.cli.lightning_cli import LitzooCLI

            if not argv[0].startswith("-") and argv[0] not in LitzooCLI.subcommands():
                raise LitzooError(f"unknown command '{argv[0]}'; the commands are {all_commands(COMMANDS)} (`litzoo --help` describes them)")
            # exit_on_error=False: jsonargparse raises its errors instead of printing its whole usage before them
            LitzooCLI(args=argv, parser_kwargs={"exit_on_error": False})
    except ArgumentError as error:
        print(f"litzoo: error: {error_line(error)} ({parse_error_hint(argv, COMMANDS)})", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        print(f"litzoo: error: {error_line(cause)}", file=sys.stderr)
        raise SystemExit(2) from None
