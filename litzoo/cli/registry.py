"""Discovery of litzoo's methods, datamodules, callbacks and shipped configs.

Importing every submodule of the three packages also makes their classes known to jsonargparse,
so that ``--model RepVGGClassifier`` resolves the short name. Configs ship as package data
(``litzoo.configs``): ``-c repvgg/digits`` finds ``configs/repvgg/digits.yaml`` when no such file
exists in the working directory.
"""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import pkgutil
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from litzoo.framework.errors import LitzooError

#: section title -> (package, base class, the CLI argument that takes it)
SECTIONS = {
    "methods": ("litzoo.modules", L.LightningModule, "--model"),
    "datamodules": ("litzoo.datamodules", L.LightningDataModule, "--data"),
    "callbacks": ("litzoo.callbacks", Callback, "--trainer.callbacks"),
}


def discover(package: str, base: type) -> dict[str, type]:
    """Concrete classes derived from ``base`` defined in the submodules of ``package``, by name
    (abstract bases, which cannot be instantiated from a config, and private ``_Names`` are left out)."""
    root = importlib.import_module(package)
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(root.__path__, prefix=f"{package}."):
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, base) and obj is not base and not inspect.isabstract(obj) and not name.startswith("_"):
                found[name] = obj
    return dict(sorted(found.items()))


def import_all() -> None:
    """Import every method, datamodule and callback module."""
    for package, base, _ in SECTIONS.values():
        discover(package, base)


def configs_root() -> Path:
    """The folder of the configs shipped with litzoo (``configs/`` of a checkout, ``litzoo/configs`` of a wheel)."""
    return Path(str(importlib.resources.files("litzoo.configs")))


def shipped_configs() -> dict[str, Path]:
    """``{"repvgg/digits": .../configs/repvgg/digits.yaml, ...}``: every shipped config by name."""
    root = configs_root()
    return {str(path.relative_to(root).with_suffix("")): path for path in sorted(root.glob("*/*.yaml"))}


def resolve_config(value: str) -> str:
    """A ``-c`` value: the file itself when it exists, else the shipped config of that name
    (``repvgg/digits``, ``repvgg/digits.yaml`` or ``configs/repvgg/digits.yaml``).

    Raises:
        LitzooError: ``value`` looks like a path but is neither a file nor a shipped config.
    """
    if Path(value).exists() or any(c in value for c in ":{}\n"):  # a file, or an inline YAML string
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml").removesuffix(".yml")
    shipped = shipped_configs().get(name)
    if shipped is None:
        raise LitzooError(f"config '{value}' does not exist, here or among the shipped configs (`litzoo list` shows them)")
    return str(shipped)


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with the value of every ``-c`` / ``--config`` option passed through :func:`resolve_config`."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg in ("-c", "--config") and i + 1 < len(resolved):
            resolved[i + 1] = resolve_config(resolved[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + resolve_config(arg.removeprefix("--config="))
    return resolved


def first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def config_summary(path: Path) -> str:
    """The first comment line of a YAML config."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def listing() -> str:
    """The text printed by ``litzoo list``."""
    lines = []
    for title, (package, base, argument) in SECTIONS.items():
        lines.append(f"{title} ({argument}):")
        for name, cls in discover(package, base).items():
            lines.append(f"  {name:<28} {first_doc_line(cls)}")
        lines.append("")
    lines.append("configs (-c, shipped with litzoo; a file of the same path in the working directory comes first):")
    for name, path in shipped_configs().items():
        lines.append(f"  {name:<38} {config_summary(path)}")
    return "\n".join(lines)


def list_command(argv: Sequence[str]) -> None:
    """``litzoo list``: every method, DataModule, callback and shipped config, with its first doc line."""
    if argv:
        raise LitzooError(f"litzoo list takes no arguments, got {' '.join(argv)}")
    import_all()
    print(listing())
