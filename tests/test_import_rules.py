"""The rule of arrows (DESIGN.md): imports point down only.

roof (litzoo.cli) -> modules, callbacks, datamodules -> framework -> torch / lightning / ecosystem. Never: the core
importing anything above it; a method importing a callback or another method; a callback importing another callback
file (shared pieces go to ``callbacks/base.py`` or the core); a datamodule importing a method or a callback. Checked on
the AST of every source file, lazy imports inside functions and ``importlib.import_module("...")`` included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("framework", "modules", "callbacks", "datamodules")


def imported_names(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``tree``; ``package`` resolves relative imports."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from litzoo.modules import repvgg` imports the submodule litzoo.modules.repvgg
            names += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):  # fmt: skip
            names.append((node.lineno, node.args[0].value))
    return names


def violation(room: str, stem: str, name: str) -> str | None:
    """Why importing ``name`` from ``<room>/<stem>.py`` breaks the rule of arrows, or ``None``."""
    parts = name.split(".")
    if parts[0] != "litzoo" or len(parts) < 2:
        return None
    target = parts[1] if parts[1] in (*ROOMS, "cli") else "roof"
    own_file = len(parts) > 2 and parts[2] == stem
    if room == "framework" and target != "framework":
        return f"the core imports {target}"
    if room == "modules":
        if target in ("callbacks", "datamodules", "cli", "roof"):
            return f"a method imports {target}"
        if target == "modules" and stem != "__init__" and len(parts) > 2 and not own_file:
            return "a method imports another method"
    if room == "callbacks":
        if target in ("modules", "datamodules", "cli", "roof"):
            return f"a callback imports {target}"
        if target == "callbacks" and stem != "__init__" and len(parts) > 2 and not own_file and parts[2] != "base":
            return "a callback imports another callback file"
    if room == "datamodules" and target in ("modules", "callbacks", "cli", "roof"):
        return f"a datamodule imports {target}"
    return None


def violations_in(path: Path, root: Path = REPO_ROOT) -> list[str]:
    rel = path.relative_to(root)
    room, stem = rel.parts[0], path.stem
    package = ".".join(["litzoo", *rel.parts[:-1]])
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
    found = []
    for line, name in imported_names(tree, package):
        reason = violation(room, stem, name)
        if reason:
            found.append(f"{rel}:{line} imports {name}: {reason}")
    return found


def source_files() -> list[Path]:
    return sorted(p for room in ROOMS for p in (REPO_ROOT / room).rglob("*.py"))


def test_imports_point_down_only():
    files = source_files()
    assert len(files) > 50
    problems = [v for path in files for v in violations_in(path)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "room, stem, source, broken",
    [
        ("framework", "x", "from litzoo.modules.repvgg import RepVGG", True),
        ("framework", "x", "def f():\n    from litzoo.datamodules.digits import DigitsDataModule", True),
        ("framework", "x", "import importlib\nimportlib.import_module('litzoo.cli.registry')", True),
        ("framework", "x", "from litzoo.framework.errors import LitzooError", False),
        ("modules", "repopt_vgg", "from litzoo.callbacks.rep_optimizer import RepOptimizer", True),
        ("modules", "repopt_vgg", "from litzoo.modules.repvgg import stage_widths", True),
        ("modules", "repopt_vgg", "from litzoo.modules import repvgg", True),
        ("modules", "repopt_vgg", "from litzoo.framework.reparam import RepVGGBlock", False),
        ("modules", "__init__", "from litzoo.modules.repvgg import RepVGG", False),
        ("callbacks", "gsm", "from litzoo.callbacks.reparam_fusion import batch_inputs", True),
        ("callbacks", "gsm", "from litzoo.callbacks.base import EvaluateDeployModel", False),
        ("callbacks", "gsm", "from litzoo.modules.resnet import ResNet", True),
        ("datamodules", "digits", "from litzoo.modules.clip import CLIP", True),
        ("datamodules", "architectures", "from litzoo.datamodules.digits import DigitsDataModule", False),
    ],
)
def test_the_checker_catches_each_kind_of_wrong_arrow(tmp_path, room, stem, source, broken):
    (tmp_path / room).mkdir()
    path = tmp_path / room / f"{stem}.py"
    path.write_text(source + "\n")
    assert bool(violations_in(path, root=tmp_path)) is broken


def test_curation_workers_start_without_torch():
    """Curation and text-quality worker processes (spawned, or Dask's) import the shard readers and the matchers only:
    importing them must not import torch or Lightning, which would cost seconds per worker (framework/data's
    ``__init__`` is lazy for this)."""
    import subprocess
    import sys

    # litzoo.cli: a spawned worker of `litzoo curate --workers N` imports the console script's module again
    modules = ["litzoo.framework.data.shards", "litzoo.framework.curation", "litzoo.framework.curation.sharded",
               "litzoo.framework.curation.text_quality_pool", "litzoo.cli", "litzoo.cli.curation", "litzoo.cli.text_quality"]  # fmt: skip
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
