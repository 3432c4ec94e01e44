"""One source of truth for a network's arguments.

A LightningModule takes its *training* arguments (optimizer, schedule, mask ratio, seeds ...) and forwards
the network's *architecture* arguments unchanged, ``Net(**net_kwargs)``, so the ``nn.Module``'s signature is
the only place they are declared. LightningCLI (jsonargparse) reads that call in ``__init__``, so configs keep
flat, typed keys (``model.init_args.embed_dim: 32``) and ``--model.help`` lists them; ``save_hyperparameters()``
stores them flat, so a checkpoint rebuilds the module with ``cls(**hparams)``.

:func:`check_network_kwargs` turns a misspelt architecture argument given from Python into one clear error
naming it (from a config, jsonargparse already refuses unknown keys). A network argument the module fills in
itself (``Net(len(tasks), **net_kwargs)``) is hidden from the CLI by jsonargparse and refused here when given.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Collection, Mapping
from typing import Any

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def network_arguments(network: type) -> set[str]:
    """The keyword arguments ``network(...)`` accepts: its ``__init__``'s named parameters and, while an
    ``__init__`` forwards ``**kwargs`` to its parent, the parent's (e.g. an MAE model extending its encoder)."""
    names: set[str] = set()
    for cls in network.__mro__:
        if "__init__" not in vars(cls) or cls is object:
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
        names |= {p.name for p in parameters if p.kind in _NAMED}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return names


def check_network_kwargs(network: type, net_kwargs: Mapping[str, Any], owner: str, set_by_owner: Collection[str] = ()) -> None:
    """Refuse architecture arguments that ``network`` does not take, before it is built.

    Args:
        network: the ``nn.Module`` class the arguments are forwarded to.
        net_kwargs: the forwarded arguments.
        owner: the LightningModule's name, for the message.
        set_by_owner: network arguments the module fills in itself (from the data format or its own
            arguments, e.g. the node-feature width of a graph encoder), so they are not for the caller to give.

    Raises:
        ValueError: naming an argument the module sets itself, or each unknown argument (with the closest
            known name) and the network.
    """
    given = sorted(set(net_kwargs) & set(set_by_owner))
    if given:
        raise ValueError(
            f"{owner}: {network.__name__}'s {', '.join(repr(name) for name in given)} is set by {owner} itself; do not give it"
        )
    known = network_arguments(network) - set(set_by_owner)
    unknown = sorted(set(net_kwargs) - known)
    if unknown:
        hints = [f"'{name}'" + "".join(f" (did you mean '{m}'?)" for m in difflib.get_close_matches(name, known, n=1)) for name in unknown]
        raise ValueError(f"{owner}: unknown network argument {', '.join(hints)} for {network.__name__}; "
                         f"it takes {', '.join(sorted(known))}")  # fmt: skip


__all__ = ["check_network_kwargs", "network_arguments"]
