"""The ``litzoo`` command: LightningCLI with litzoo's defaults for ``fit`` / ``validate`` / ``test`` /
``predict``, plus the commands that are not training runs.

    litzoo fit  -c configs/repvgg/digits.yaml     # or -c repvgg/digits: a shipped config by name
    litzoo test -c configs/repvgg/digits.yaml --ckpt_path best
    litzoo list
    litzoo export --ckpt_path runs/repvgg/digits/version_0/checkpoints/deploy.ckpt --format onnx
    litzoo curate --manifest pool.jsonl --metadata entries.json --output curated.jsonl
    litzoo text-quality --manifest corpus.jsonl --output pruned.jsonl
    litzoo graph -c configs/repvgg/digits.yaml --out cg.json --summary
    litzoo architectures --out data/architectures/digits.jsonl --per-family 50   # a labelled NAS benchmark
    litzoo architecture-tasks --benchmark data/architectures/digits_v1.jsonl --limit 200   # AIO-P's extra task labels
    litzoo nas-search --predictor gennape.ckpt --family mobilenet --flops-limit 6e5 --evaluate 20

This package is the roof of the house: the only place that imports every room (methods, callbacks,
datamodules, the core). Each command parses its arguments here and calls into the rooms; every
:class:`~litzoo.framework.errors.LitzooError` reaching it is printed as one line.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from litzoo.cli.lightning_cli import LitzooCLI, find_checkpoint, run_name
from litzoo.framework.errors import LitzooError, one_line

__all__ = ["COMMANDS", "LitzooCLI", "command", "find_checkpoint", "main", "run_name"]


#: the commands that are not LightningCLI subcommands, as ``module:function``; a command's module (and
#: what it needs: torch_geometric, onnxruntime ...) is imported only when it runs
COMMANDS: dict[str, str] = {
    "list": "litzoo.cli.registry:list_command",
    "export": "litzoo.cli.export:export_command",
    "curate": "litzoo.cli.curation:curate_command",
    "text-quality": "litzoo.cli.curation:text_quality_command",
    "graph": "litzoo.cli.graph:graph_command",
    "architectures": "litzoo.cli.nas:architectures_command",
    "architecture-tasks": "litzoo.cli.nas:architecture_tasks_command",
    "nas-search": "litzoo.cli.nas:nas_search_command",
}


def command(name: str) -> Callable[[Sequence[str]], object]:
    """The function of command ``name`` (a key of :data:`COMMANDS`), imported now."""
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``litzoo`` console script and ``python -m litzoo``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            command(argv[0])(argv[1:])
        else:
            LitzooCLI(args=argv)
    except LitzooError as error:
        print(f"litzoo: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
