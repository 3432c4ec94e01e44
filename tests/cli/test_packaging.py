"""One import root: litzoo installs as the single top-level package ``litzoo``, works from a user project
that has its own ``callbacks/`` and ``modules/`` packages, and ships its configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import lightning as L
import pytest

from litzoo.cli.registry import discover, shipped_configs

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A project of a user's own, with top-level packages named like litzoo's rooms."""
    for package in ("callbacks", "modules"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"WHO = 'user {package}'\n")
    (tmp_path / "callbacks" / "resrep.py").write_text("raise ImportError('the user package was searched for litzoo code')\n")
    return tmp_path


@pytest.mark.slow
def test_a_user_project_with_its_own_callbacks_and_modules_packages(user_project: Path):
    check = (
        "import callbacks, modules\n"
        "from litzoo.callbacks import ResRepPruning\n"
        "from litzoo.callbacks.resrep import ResRepPruning as same\n"
        "import litzoo.callbacks\n"
        "assert callbacks.WHO == 'user callbacks' and modules.WHO == 'user modules'\n"
        "assert ResRepPruning is same and ResRepPruning.__module__ == 'litzoo.callbacks.resrep'\n"
        "assert 'callbacks.resrep' not in __import__('sys').modules\n"
        "print(litzoo.callbacks.__file__)\n"
    )
    result = _run(["-c", check], user_project)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not result.stdout.strip().startswith(str(user_project))

    listed = _run(["-m", "litzoo", "list"], user_project)
    assert listed.returncode == 0, listed.stderr[-2000:]
    methods = discover("litzoo.modules", L.LightningModule)
    assert len(methods) >= 15
    section = listed.stdout.split("datamodules (--data):")[0]
    assert all(f"  {name} " in section for name in methods), section
    assert "  repvgg/digits " in listed.stdout

    fit = _run(["-m", "litzoo", "fit", "-c", "repvgg/digits", "--trainer.fast_dev_run", "true",
                "--trainer.enable_progress_bar", "false"], user_project)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert not (user_project / "configs").exists()
    # the console of a real run: no warning about litzoo's own use of LightningCLI, no third-party noise, one FLOPs figure
    console = fit.stdout + fit.stderr
    for noise in ("args parameter is intended to run from within Python", "LeafSpec", "Tip: For seamless", "Total Flops"):
        assert noise not in console, console[-3000:]
    assert console.count("FLOPs per sample") == 1, console[-3000:]


def test_a_config_that_exists_neither_here_nor_shipped_is_one_line(tmp_path: Path, monkeypatch, capsys):
    from litzoo.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "-c", "repvgg/digitz"])
    assert capsys.readouterr().err.strip() == (
        "litzoo: error: config 'repvgg/digitz' does not exist, here or among the shipped configs (`litzoo list` shows them)"
    )


def test_a_local_file_comes_before_the_shipped_config_of_the_same_name(tmp_path: Path, monkeypatch):
    from litzoo.cli.registry import resolve_config_args

    monkeypatch.chdir(tmp_path)
    shipped = str(shipped_configs()["repvgg/digits"])
    for name in ("repvgg/digits", "repvgg/digits.yaml", "configs/repvgg/digits.yaml"):
        assert resolve_config_args(["fit", "-c", name]) == ["fit", "-c", shipped]
    assert resolve_config_args([f"--config={name}"]) == [f"--config={shipped}"]
    (tmp_path / "repvgg").mkdir()
    (tmp_path / "repvgg" / "digits.yaml").write_text("model: {}\n")
    assert resolve_config_args(["fit", "-c", "repvgg/digits.yaml"]) == ["fit", "-c", "repvgg/digits.yaml"]


@pytest.mark.slow
def test_the_wheel_holds_only_the_litzoo_package_and_its_configs(tmp_path: Path):
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("litzoo", "framework", "modules", "callbacks", "datamodules", "configs"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    result = _run(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path / "dist"), str(source)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("litzoo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top_level == {"litzoo"}
    packaged_configs = {name.removeprefix("litzoo/configs/").removesuffix(".yaml") for name in names
                        if name.startswith("litzoo/configs/") and name.endswith(".yaml")}  # fmt: skip
    assert packaged_configs == set(shipped_configs()) and "repvgg/digits" in packaged_configs
    assert "litzoo/configs/la3/digits_policy.json" in names  # a shipped config's policy file ships beside it
    for room in ("framework", "modules", "callbacks", "datamodules"):
        assert f"litzoo/{room}/__init__.py" in names
    assert "litzoo/framework/reparam/fusion.py" in names and "litzoo/cli/__init__.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "litzoo = litzoo.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_every_command_resolves_to_a_function():
    from litzoo.cli import COMMANDS, command

    assert {"list", "export", "curate", "text-quality", "graph", "architectures", "architecture-tasks", "nas-search"} <= set(COMMANDS)
    for name in COMMANDS:
        assert callable(command(name)), name
