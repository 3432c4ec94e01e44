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
import re
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


#: an RST role, ``:class:`~a.b.C``` or ``:func:`text <target>```: the role, a ``~``, the text and the target
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)\s*(?:<([^>`]*)>)?`")
#: the end of a sentence: a full stop, then a space, then a capital, a digit or an opening bracket
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]][.!?])\s+(?=[A-Z0-9(\[])")


def plain_text(rst: str) -> str:
    """``rst`` (a docstring's reStructuredText) as Sphinx would show it, on one line: ````x```` -> ``x``,
    ``:class:`~a.b.C``` -> ``C``, ``:func:`a.b.f``` -> ``a.b.f``, ``:ref:`text <target>``` -> ``text``,
    ``**bold**`` and ``*emphasis*`` -> their words; the content of a literal is kept as it is."""

    def role(match: re.Match) -> str:
        tilde, text, target = match.groups()
        if target is not None and text:
            return text
        name = text or target or ""
        return name.rsplit(".", 1)[-1] if tilde else name

    parts = re.split(r"(``.+?``)", rst, flags=re.DOTALL)
    for i, part in enumerate(parts):
        if i % 2:  # a literal
            parts[i] = part[2:-2]
            continue
        part = _ROLE.sub(role, part)
        part = re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"\1", part)
        part = re.sub(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])", r"\1", part)
        parts[i] = re.sub(r"`([^`]+)`_{0,2}", r"\1", part)  # interpreted text, links
    return " ".join("".join(parts).split())


def first_sentence(text: str, width: int = 110) -> str:
    """The first sentence of ``text`` on one line, cut at a word with ``...`` when longer than ``width``."""
    text = _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0]
    if len(text) > width:
        text = text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:(") + "..."
    return text


def summary_line(obj: object, width: int = 110) -> str:
    """One clean line describing ``obj``: the first sentence of its docstring's first paragraph, in plain text
    (:func:`plain_text`)."""
    doc = (inspect.getdoc(obj) or "").strip()
    return first_sentence(plain_text(re.split(r"\n\s*\n", doc, maxsplit=1)[0]), width) if doc else ""


def config_summary(path: Path, width: int = 110) -> str:
    """The first sentence of a YAML config's opening comment (its first lines starting with ``#``)."""
    comment = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or (comment and not line.strip("# ")):
            if comment or line.strip():
                break
            continue
        comment.append(line.lstrip("#").strip())
    return first_sentence(" ".join(comment), width)


def listing() -> str:
    """The text printed by ``litzoo list``."""
    lines = []
    for title, (package, base, argument) in SECTIONS.items():
        lines.append(f"{title} ({argument}):")
        classes = discover(package, base)
        width = max(map(len, classes), default=0)
        for name, cls in classes.items():
            lines.append(f"  {name:<{width}}  {summary_line(cls)}".rstrip())
        lines.append("")
    lines.append("configs (-c, shipped with litzoo; a file of the same path in the working directory comes first):")
    configs = shipped_configs()
    width = max(map(len, configs), default=0)
    for name, path in configs.items():
        lines.append(f"  {name:<{width}}  {config_summary(path)}".rstrip())
    return "\n".join(lines)


def list_command(argv: Sequence[str]) -> None:
    """``litzoo list``: every method, DataModule, callback and shipped config, with its first doc line."""
    if argv:
        raise LitzooError(f"litzoo list takes no arguments, got {' '.join(argv)}")
    import_all()
    print(listing())
