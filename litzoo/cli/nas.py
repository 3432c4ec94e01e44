"""``litzoo architectures`` (a labelled NAS benchmark of tiny digit CNNs) and ``litzoo nas-search``
(predictor-guided search): the commands of the NAS wing."""

from __future__ import annotations

from collections.abc import Sequence


def architectures_command(argv: Sequence[str]) -> None:
    from litzoo.datamodules.architectures import architectures_command as command

    command(argv)


def nas_search_command(argv: Sequence[str]) -> None:
    from litzoo.framework.nas_search import nas_search_command as command

    command(argv)
