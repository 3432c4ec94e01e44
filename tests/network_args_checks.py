"""Shared checks of the network-arguments convention (``litzoo.framework.network_args``): a LightningModule that
forwards ``**net_kwargs`` to its network keeps flat hyper-parameters that rebuild it, names a misspelt network
argument, and lists the network's arguments with their types in ``litzoo fit --model.help``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import pytest
import torch


def rebuilds_from_flat_hparams(module_cls: type[L.LightningModule], **kwargs: Any) -> L.LightningModule:
    """Build ``module_cls(**kwargs)`` and check that its hyper-parameters hold every given value flat (no nested
    ``net_kwargs``) and that ``module_cls(**hparams)``, the way a checkpoint or ``litzoo export`` rebuilds it, gives
    the same hyper-parameters and, from the same seed, the same state dict. Returns the module."""
    torch.manual_seed(0)
    module = module_cls(**kwargs)
    hparams = dict(module.hparams)
    assert kwargs.items() <= hparams.items()
    assert not any(isinstance(value, Mapping) for value in hparams.values())  # flat
    torch.manual_seed(0)
    rebuilt = module_cls(**hparams)
    assert dict(rebuilt.hparams) == hparams
    state, again = module.state_dict(), rebuilt.state_dict()
    assert state.keys() == again.keys()
    assert all(torch.equal(state[key], again[key]) for key in state)
    return module


def refuses_misspelt_argument(module_cls: type, network: str, wrong: str, right: str, **kwargs: Any) -> None:
    """``module_cls(**kwargs, wrong=...)`` raises one ValueError naming the module, ``wrong``, ``right`` and the network."""
    pattern = rf"^{module_cls.__name__}: unknown network argument '{wrong}' \(did you mean '{right}'\?\) for {network}; it takes "
    with pytest.raises(ValueError, match=pattern):
        module_cls(**kwargs, **{wrong: 1})


def cli_help_sections(class_path: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """``litzoo fit --model.help <class_path>`` as ``{argument: its help text}``, whitespace collapsed
    (``--model.stages [ITEM,...], --model.stages+ [ITEM,...] ...`` counts once, as ``stages``)."""
    from litzoo.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--model.help", class_path])
    text = " ".join(capsys.readouterr().out.split())
    sections: dict[str, str] = {}
    for part in text.split("--model.")[1:]:
        name = part.split()[0].rstrip("+")
        sections[name] = sections.get(name, "") + part
    return sections


def help_lists(class_path: str, capsys: pytest.CaptureFixture[str], types: Mapping[str, str], hidden: Iterable[str] = ()) -> None:
    """The help of ``class_path`` shows each ``types`` argument as ``(type: <type>, default: ...)`` (a value that names
    its default, ``"int, default: 0"``, is checked whole) and none of ``hidden`` (arguments the module fills in itself)."""
    sections = cli_help_sections(class_path, capsys)
    for name, kind in types.items():
        assert name in sections, f"--model.{name} missing from the help of {class_path}"
        expected = kind if "default:" in kind else f"{kind}, default: "
        assert f"(type: {expected}" in sections[name], (name, sections[name])
    assert not set(hidden) & set(sections)
