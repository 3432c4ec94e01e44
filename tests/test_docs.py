"""The documentation pages (``docs/*.md``) do not rot: every ``litzoo`` command line in a bash / console block names
a real command with options it has, every config and repository path a page names exists, every ``litzoo.*`` name
and import resolves, every Python block compiles, and one representative command per page runs for real.

:func:`page_problems` is the checker; it is run on every page and, to prove it catches what it claims, on broken
pages written to a temporary folder.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import io
import json
import re
import shlex
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from litzoo.cli import COMMANDS, LitzooCLI, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

#: LightningCLI's subcommands; every other command is a key of litzoo.cli.COMMANDS
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: repository folders whose paths a page may name in backticks (checked to exist)
REPO_FOLDERS = ("framework", "modules", "callbacks", "datamodules", "benchmarks", "configs", "litzoo", "tests", "docs")
SHELL_LANGUAGES = ("bash", "console", "sh", "shell")

_REPO_PATH = re.compile(rf"^(?:{'|'.join(REPO_FOLDERS)})/[\w./-]*$")
_DOTTED = re.compile(r"^litzoo(?:\.\w+)+$")
_TRAINER_ARGS = frozenset(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


# --------------------------------------------------------------------------------------------- parsing a page
def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """``(language, dedented content, line of the opening fence)`` of every fenced block of a Markdown text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            language, start, body = stripped[3:].strip().split(" ")[0].lower(), i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((language, textwrap.dedent("\n".join(body)), start))
        i += 1
    return blocks


def prose(text: str) -> str:
    """The text outside fenced blocks (where inline backticks are names, not code)."""
    kept, inside = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


def litzoo_argv(line: str) -> list[str] | None:
    """The arguments after ``litzoo`` of a shell line that runs litzoo (``$ `` prompts and ``# comments`` dropped),
    else ``None``."""
    line = line.strip().removeprefix("$ ")
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    if tokens and tokens[0] in ("litzoo", ".venv/bin/litzoo"):
        return tokens[1:]
    if len(tokens) >= 3 and tokens[0].endswith("python") and tokens[1:3] == ["-m", "litzoo"]:
        return tokens[3:]
    return None


def shell_commands(block: str) -> list[list[str]]:
    """The litzoo argvs of a shell block, continuation lines (``\\``) joined."""
    commands, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        argv = litzoo_argv(pending + line)
        pending = ""
        if argv is not None:
            commands.append(argv)
    return commands


def page_commands(path: Path) -> list[list[str]]:
    """Every litzoo command line of the shell blocks of a page, in order."""
    blocks = fenced_blocks(path.read_text(encoding="utf-8"))
    return [argv for language, body, _ in blocks if language in SHELL_LANGUAGES for argv in shell_commands(body)]


# --------------------------------------------------------------------------------------------- checks
@functools.cache
def command_help(name: str) -> str:
    """What ``litzoo <name> --help`` prints (each non-training command parses its own options)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        main([name, "--help"])
    return out.getvalue()


def resolves(dotted: str) -> bool:
    """``litzoo.a.b.c``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def config_problem(value: str, root: Path) -> str | None:
    """A ``-c`` value: a path under the repository (``configs/x/y.yaml``) or a shipped config's name (``x/y``)."""
    path = root / value if value.endswith((".yaml", ".yml")) else root / "configs" / f"{value}.yaml"
    return None if path.is_file() else f"config '{value}' does not exist ({path.relative_to(root)})"


def command_problems(argv: list[str], root: Path) -> list[str]:
    """What is wrong with one ``litzoo ...`` command line of a page."""
    where = "litzoo " + " ".join(argv)
    if not argv or argv[0] in ("-h", "--help"):
        return []
    name, args = argv[0], argv[1:]
    if name not in LIGHTNING_SUBCOMMANDS and name not in COMMANDS:
        return [f"`{where}`: unknown command '{name}' (commands: {', '.join((*LIGHTNING_SUBCOMMANDS, *COMMANDS))})"]
    problems, configs = [], set()
    for i, token in enumerate(args):  # -c / --config values: a config path or a shipped config's name
        if token in ("-c", "--config") and i + 1 < len(args):
            configs.add(i + 1)
        elif token.startswith(("--config=", "-c=")):
            configs.add(i)
    for i, token in enumerate(args):
        value = token.split("=", 1)[1] if token.startswith(("--config=", "-c=")) else token
        if i in configs and (problem := config_problem(value, root)):
            problems.append(f"`{where}`: {problem}")
        elif i not in configs and re.search(r"(?:^|=)configs/\S+\.ya?ml$", token) and not (root / token.split("=")[-1]).is_file():
            problems.append(f"`{where}`: config '{token}' does not exist")  # a config path given to another option
    options = [t.split("=", 1)[0] for t in args if t.startswith("--")]
    if name in LIGHTNING_SUBCOMMANDS:
        for option in options:
            if option.startswith("--trainer."):
                field = option.removeprefix("--trainer.").split(".")[0].rstrip("+")
                if field not in _TRAINER_ARGS:
                    problems.append(f"`{where}`: Lightning's Trainer has no argument '{field}'")
    else:
        text = command_help(name)
        for option in options:
            if option not in ("--help",) and not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                problems.append(f"`{where}`: `litzoo {name}` has no option {option}")
    return problems


def python_problems(code: str, where: str) -> list[str]:
    """A Python block: it compiles, and what it imports from litzoo exists."""
    try:
        tree = ast.parse(code, filename=where)
        compile(tree, where, "exec")
    except SyntaxError as error:
        return [f"{where}: Python block does not compile: {error.msg} (block line {error.lineno})"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "litzoo":
            problems += [
                f"{where}: `from {node.module} import {a.name}` fails" for a in node.names if not resolves(f"{node.module}.{a.name}")
            ]
        elif isinstance(node, ast.Import):
            problems += [
                f"{where}: `import {a.name}` fails" for a in node.names if a.name.split(".")[0] == "litzoo" and not resolves(a.name)
            ]
    return problems


def page_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Everything wrong with one documentation page; ``[]`` for a good one. Repository paths, configs and names are
    checked against ``root`` and the installed ``litzoo``."""
    text = path.read_text(encoding="utf-8")
    problems = []
    for language, body, line in fenced_blocks(text):
        where = f"{path.name}:{line}"
        if language in SHELL_LANGUAGES:
            for argv in shell_commands(body):
                problems += [f"{where}: {p}" for p in command_problems(argv, root)]
        elif language in ("python", "py"):
            problems += python_problems(body, where)
    for span in re.findall(r"`([^`\n]+)`", prose(text)):
        span = span.strip()
        if _REPO_PATH.match(span) and not (root / span).exists():
            problems.append(f"{path.name}: path `{span}` does not exist in the repository")
        elif _DOTTED.match(span) and not resolves(span):
            problems.append(f"{path.name}: `{span}` does not resolve")
        elif span.startswith("litzoo ") and (argv := litzoo_argv(span)) is not None:
            problems += [f"{path.name}: {p}" for p in command_problems(argv, root)]
    return problems


# --------------------------------------------------------------------------------------------- the pages
def test_the_survey_pages_exist_and_have_commands_to_check():
    names = {p.name for p in PAGES}
    assert {"nas_survey.md", "big_models_survey.md"} <= names
    for name in ("nas_survey.md", "big_models_survey.md"):
        commands = page_commands(DOCS / name)
        assert len(commands) >= 5, f"{name}: the checker found only {len(commands)} litzoo commands"
    assert sum(language == "python" for language, _, _ in fenced_blocks((DOCS / "nas_survey.md").read_text())) >= 2


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_names_only_what_exists(page):
    assert page_problems(page) == []


# --------------------------------------------------------------------------------------------- the checker catches
GOOD = """# a page
See `framework/nas/search.py`, `configs/mae/digits.yaml`, `litzoo.framework.nas.evolutionary_search` and `litzoo nas-search`.

```bash
litzoo fit -c configs/mae/digits.yaml --trainer.precision bf16-mixed   # a comment
litzoo fit -c mae/digits --trainer.max_epochs 1
litzoo nas-search --predictor last.ckpt --family vgg \\
    --flops-limit 3e5 --evaluate 2
$ litzoo list
```

```python
from litzoo.framework.nas import random_search

print(random_search)
```
"""

BROKEN = {
    "unknown command": ("```bash\nlitzoo fitt -c configs/mae/digits.yaml\n```\n", "fitt"),
    "missing config path": ("```bash\nlitzoo fit -c configs/nope/none.yaml\n```\n", "configs/nope/none.yaml"),
    "missing config name": ("```console\n$ litzoo test -c nope/none --ckpt_path best\n```\n", "nope/none"),
    "unknown command option": ("```bash\nlitzoo nas-search --predictor x.ckpt \\\n  --no-such-option 3\n```\n", "--no-such-option"),
    "unknown Trainer argument": ("```bash\nlitzoo fit -c mae/digits --trainer.no_such_flag 1\n```\n", "no_such_flag"),
    "Python that does not compile": ("```python\ndef broken(:\n    pass\n```\n", "does not compile"),
    "import of a missing name": ("```python\nfrom litzoo.framework.nas import no_such_search\n```\n", "no_such_search"),
    "missing repository path": ("Read `framework/nas/no_such_file.py`.\n", "framework/nas/no_such_file.py"),
    "missing dotted name": ("Call `litzoo.framework.nas.no_such_function`.\n", "no_such_function"),
    "unknown command in prose": ("Run `litzoo frobnicate --all`.\n", "frobnicate"),
}


def test_checker_passes_a_good_page(tmp_path):
    page = tmp_path / "good.md"
    page.write_text(GOOD, encoding="utf-8")
    assert len(page_commands(page)) == 4
    assert page_problems(page) == []


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_checker_fails_a_broken_page(tmp_path, case):
    snippet, culprit = BROKEN[case]
    page = tmp_path / "broken.md"
    page.write_text(GOOD + "\n" + snippet, encoding="utf-8")
    problems = page_problems(page)
    assert len(problems) == 1 and culprit in problems[0], problems


# --------------------------------------------------------------------------------------------- run for real
def first_command(page: str, name: str, *markers: str) -> list[str]:
    """The first ``litzoo <name> ...`` command of a page whose arguments include ``markers``."""
    for argv in page_commands(DOCS / page):
        if argv[0] == name and all(m in argv for m in markers):
            return argv
    raise AssertionError(f"{page} has no `litzoo {name}` command with {markers}")


def option_values(argv: list[str], option: str) -> list[str]:
    """The values after ``option`` up to the next option."""
    start = argv.index(option) + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    return argv[start:end]


def test_nas_page_labels_a_tiny_benchmark(tmp_path, monkeypatch):
    """The page's seconds-long `litzoo architectures` line, run as written (in a temporary working directory): every
    network of every family is trained and recorded with its graph, family, labels and spec."""
    from litzoo.framework.nas import spec_flops, spec_from_dict, specs_path

    argv = first_command("nas_survey.md", "architectures", "--train-subset")
    monkeypatch.chdir(tmp_path)
    main(argv)
    out = tmp_path / option_values(argv, "--out")[0]
    per_family, families = int(option_values(argv, "--per-family")[0]), option_values(argv, "--families")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    specs = [json.loads(line) for line in specs_path(out).read_text().splitlines()]
    assert [r["family"] for r in records] == [s["family"] for s in specs]
    assert sorted(r["family"] for r in records) == sorted(families * per_family)
    for record, spec in zip(records, specs, strict=True):
        assert 0.0 <= record["label"]["accuracy"] <= 1.0 and record["nodes"] and record["edges"]
        assert record["label"]["flops"] == spec_flops(spec_from_dict(spec["spec"])) == sum(n["flops"] for n in record["nodes"])


def test_nas_page_python_blocks_run(capsys):
    """The page's snippets run as written: a sampled, mutated and graphed network; evolution and random search on the
    same oracle budget, each candidate within the FLOPs limit."""
    blocks = [body for language, body, _ in fenced_blocks((DOCS / "nas_survey.md").read_text()) if language == "python"]
    namespaces = []
    for body in blocks:
        namespace: dict = {"__name__": "docs_snippet"}
        exec(compile(body, "nas_survey.md", "exec"), namespace)
        namespaces.append(namespace)
    graphed = next(ns for ns in namespaces if "graph" in ns)
    assert graphed["graph"].total_flops == graphed["spec_flops"](graphed["child"]) > 0
    searched = next(ns for ns in namespaces if "evolved" in ns)
    assert searched["baseline"].score_calls == searched["evolved"].score_calls == len(searched["evolved"].history)
    assert all(c.flops <= 6e5 for c in searched["evolved"].history + searched["baseline"].history)
    assert "oracle calls each" in capsys.readouterr().out


class LinearOutputDtypes(L.Callback):
    """Records the dtype of every nn.Linear output during fit."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()
        self.handles: list = []
        self.precision: str | None = None

    def on_fit_start(self, trainer, pl_module):
        self.precision = trainer.precision
        for module in pl_module.modules():
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_hook(lambda _m, _i, out: self.dtypes.add(out.dtype)))

    def on_fit_end(self, trainer, pl_module):
        for handle in self.handles:
            handle.remove()


def test_big_models_page_mixed_precision_runs_in_bfloat16(tmp_path, monkeypatch):
    """The page's `bf16-mixed` line, one fast_dev_run step on the CPU: the Trainer takes the flag and the model's
    linear layers compute in bfloat16 (the page says so)."""
    argv = first_command("big_models_survey.md", "fit", "--trainer.precision", "bf16-mixed")
    monkeypatch.chdir(tmp_path)
    probe = LinearOutputDtypes()
    LitzooCLI(args=[*argv, "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"],
              trainer_defaults={"callbacks": [probe]}, parser_kwargs={"exit_on_error": False})  # fmt: skip
    assert probe.precision == "bf16-mixed"
    assert torch.bfloat16 in probe.dtypes and probe.handles
