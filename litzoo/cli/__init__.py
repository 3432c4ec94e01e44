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

import sys
from collections.abc import Callable, Sequence

from litzoo.cli.lightning_cli import LitzooCLI, find_checkpoint, run_name
from litzoo.framework.errors import LitzooError, one_line

__all__ = ["COMMANDS", "LitzooCLI", "find_checkpoint", "main", "run_name"]


def _list(argv: Sequence[str]) -> None:
    from litzoo.cli.registry import import_all, listing

    import_all()
    print(listing())


def _export(argv: Sequence[str]) -> None:
    from litzoo.cli.export import export_command

    export_command(argv)


def _curate(argv: Sequence[str]) -> None:
    from litzoo.cli.curation import curate_command

    curate_command(argv)


def _text_quality(argv: Sequence[str]) -> None:
    from litzoo.cli.curation import text_quality_command

    text_quality_command(argv)


def _graph(argv: Sequence[str]) -> None:
    from litzoo.cli.graph import graph_command

    graph_command(argv)


def _architectures(argv: Sequence[str]) -> None:
    from litzoo.cli.nas import architectures_command

    architectures_command(argv)


def _nas_search(argv: Sequence[str]) -> None:
    from litzoo.cli.nas import nas_search_command

    nas_search_command(argv)


def _architecture_tasks(argv: Sequence[str]) -> None:
    from litzoo.cli.nas import architecture_tasks_command

    architecture_tasks_command(argv)


#: the commands that are not LightningCLI subcommands; each is imported only when it runs
COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "list": _list,
    "export": _export,
    "curate": _curate,
    "text-quality": _text_quality,
    "graph": _graph,
    "architectures": _architectures,
    "architecture-tasks": _architecture_tasks,
    "nas-search": _nas_search,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``litzoo`` console script and ``python -m litzoo``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = COMMANDS.get(argv[0]) if argv else None
        if command is not None:
            command(argv[1:])
        else:
            LitzooCLI(args=argv)
    except LitzooError as error:
        print(f"litzoo: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
