"""Discovery of litzoo's methods, datamodules, callbacks and configs.

Importing every submodule of the three packages also makes their classes known to jsonargparse,
so that ``--model RepVGGClassifier`` resolves the short name.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

#: section title -> (package, base class, the CLI argument that takes it)
SECTIONS = {
    "methods": ("modules", L.LightningModule, "--model"),
    "datamodules": ("datamodules", L.LightningDataModule, "--data"),
    "callbacks": ("callbacks", Callback, "--trainer.callbacks"),
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
    """``./configs`` when run from a checkout, else the configs next to the installed sources."""
    local = Path.cwd() / "configs"
    return local if local.is_dir() else Path(__file__).resolve().parents[1] / "configs"


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
    root = configs_root()
    lines.append("configs (-c):")
    for path in sorted(root.glob("*/*.yaml")):
        lines.append(f"  {str(path.relative_to(root.parent)):<28} {config_summary(path)}")
    return "\n".join(lines)
