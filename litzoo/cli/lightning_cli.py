"""LightningCLI with litzoo's defaults.

    litzoo fit  -c configs/repvgg/digits.yaml
    litzoo fit  -c repvgg/digits                 # a config shipped with litzoo, found by name
    litzoo test -c configs/repvgg/digits.yaml --ckpt_path best
    litzoo fit  --model RepVGGClassifier --data DigitsDataModule --model.num_classes 10

Defaults added to the Trainer unless the config already sets them: a TensorBoardLogger writing to the run
folder of the config (:meth:`LitzooCLI.run_dir`, ``runs/<method>/<data>/version_N``), a ModelCheckpoint
keeping ``best.ckpt`` (on the module's ``monitor`` metric) and ``last.ckpt``, a LearningRateMonitor, a model
summary with FLOPs, a stop at the first non-finite training loss (:class:`~litzoo.cli.nonfinite.StopOnNonFiniteLoss`),
the RNG states and training-loader position saved for an exact mid-epoch resume
(:class:`~litzoo.framework.resume.ExactResume`) and, for ``predict``, a writer of the predictions (:class:`~litzoo.cli.predictions.PredictionWriter`).

``--ckpt_path best|last`` finds that file in the newest ``version_N`` of the config's run folder and says
which file it chose. A checkpoint of another module, or a file that is not a Lightning checkpoint, is refused
in one line before anything is built from it. A resumed ``fit`` continues the run folder of its checkpoint
(the same ``version_N``: one TensorBoard curve, best-checkpoint tracking kept); ``validate`` / ``test`` /
``predict`` of a checkpoint log into ``<its version_N>/<command>_<checkpoint name>/``.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litzoo.cli.nonfinite import StopOnNonFiniteLoss
from litzoo.cli.predictions import PredictionWriter
from litzoo.cli.registry import import_all, resolve_config_args
from litzoo.cli.summary import FlopsModelSummary
from litzoo.framework.checkpoints import check_checkpoint_class, load_checkpoint, loaded_class
from litzoo.framework.errors import LitzooError
from litzoo.framework.resume import ExactResume

RUNS_DIR = "runs"
METHOD_SUFFIXES = ("Classifier", "Module", "Model")
DATA_SUFFIXES = ("DataModule",)


def _class_stem(obj: object, suffixes: Sequence[str]) -> str:
    """``RepVGGClassifier -> 'RepVGG'``: the class name without the first of ``suffixes`` it ends with."""
    name = type(obj).__name__
    for suffix in suffixes:
        if name.endswith(suffix) and name != suffix:
            return name[: -len(suffix)]
    return name


def run_name(obj: object, suffixes: Sequence[str]) -> str:
    """``RepVGGClassifier -> 'repvgg'``, ``DigitsDataModule -> 'digits'``: the run folder names."""
    return _class_stem(obj, suffixes).lower()


def name_words(name: str) -> set[str]:
    """Every run of consecutive words of a CamelCase ``name``, lower-cased:
    ``RepOptVGG -> {rep, opt, vgg, repopt, optvgg, repoptvgg}``; ``resrep -> {resrep}``."""
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)] or [name.lower()]
    return {"".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def config_variant(stems: Iterable[str], names: Iterable[str]) -> str:
    """What config file names say beyond ``names`` (the model, data and technique names of the run): the words
    of each stem (split at ``_`` and ``-``) that are not one of those names, one of their CamelCase words or a
    run of them (a plural ``s`` aside), joined by ``_``.

    ``digits_hs`` with ``RepOptVGG``, ``Digits`` -> ``hs``; ``repvgg_digits`` with ``RepVGG``, ``Digits``, ``resrep``
    -> ``''``; ``corpus_pruned`` with ``GPTLanguage``, ``TextCorpus`` -> ``pruned``.
    """
    said = set().union(*(name_words(name) for name in names))

    def is_said(text: str) -> bool:
        return text in said or text + "s" in said or (text.endswith("s") and text[:-1] in said)

    rest: list[str] = []
    for stem in stems:
        words = [w for w in re.split(r"[_\-\s]+", stem.lower()) if w]
        i = 0
        while i < len(words):
            j = next((j for j in range(len(words), i, -1) if is_said("".join(words[i:j]))), None)
            if j is None:
                rest.append(words[i])
                i += 1
            else:
                i = j
    return "_".join(dict.fromkeys(rest))


def find_checkpoint(run_dir: Path, which: str) -> Path | None:
    """``best.ckpt``/``last.ckpt`` of the newest ``version_N`` under ``run_dir`` that has one."""
    def version(path: Path) -> int:
        match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
        return int(match.group(1)) if match else -1

    candidates = sorted(run_dir.glob(f"version_*/checkpoints/{which}.ckpt"), key=version)
    return candidates[-1] if candidates else None


def run_version_dir(checkpoint: Path) -> Path | None:
    """The ``version_N`` folder of a checkpoint a litzoo run wrote (``.../version_N/checkpoints/x.ckpt``), else ``None``."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" and checkpoint.parent.parent.name else None


def import_config_class(class_path: str) -> type | None:
    """The class a config names (the user's own choice, which jsonargparse has imported already), or ``None``."""
    found = loaded_class(class_path)
    if found is None:
        module, _, name = class_path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name, None) if module else None
        except ImportError:
            return None
    return found if isinstance(found, type) else None


class LitzooCLI(LightningCLI):
    """LightningCLI over every litzoo (or user) LightningModule and DataModule, with litzoo defaults."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs: Any) -> None:
        import_all()
        # `-c repvgg/digits` names a shipped config when no such file exists here
        from_command_line = args is None or list(args) == sys.argv[1:]
        args = resolve_config_args(sys.argv[1:] if args is None else args)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)  # methods take their optimizer as an argument
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self._checkpoint: Path | None = None  # --ckpt_path, `best` / `last` resolved (set with the Trainer)
        with warnings.catch_warnings():
            if from_command_line:  # the command line itself, with its configs resolved: not a mistake to warn about
                warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
            super().__init__(L.LightningModule, L.LightningDataModule, args=args, **kwargs)

    # ------------------------------------------------------------------------------- the run folder
    def _config_stems(self) -> list[str]:
        """The file names (without suffix) of the ``-c`` config files of this command, in order."""
        values = list(self.config.get("config") or [])
        if self.subcommand is not None:
            values += list(self.config.get(self.subcommand, {}).get("config") or [])
        stems = []
        for value in values:
            text = str(value)
            if text and not any(c in text for c in ":{}\n"):  # a file, not an inline YAML string
                stems.append(Path(text).stem)
        return stems

    @property
    def run_dir(self) -> Path:
        """``<default_root_dir or runs>/<method>[-<technique>]/<data>[-<variant>]``: the run folder of this config.

        ``<method>`` and ``<data>`` come from the model's and the DataModule's class names; a callback that changes
        what is trained adds its ``run_tag`` (``StructuralReparam(block="dbb")`` -> ``resnet-dbb``), so `--ckpt_path
        best` never picks another technique's run. ``<variant>`` is what the ``-c`` config file's name says beyond
        those names (:func:`config_variant`), so two configs of one model and data get two folders
        (``configs/repopt_vgg/digits_hs.yaml`` -> ``repoptvgg/digits-hs``) while a config named after its data keeps
        the plain one (``configs/repvgg/digits.yaml`` -> ``repvgg/digits``, ``configs/resrep/repvgg_digits.yaml`` ->
        ``repvgg-resrep/digits``).
        """
        trainer = self._get(self.config_init, "trainer", default={})
        root = trainer.get("default_root_dir") or RUNS_DIR
        callbacks = trainer.get("callbacks") or []
        tags = [c.run_tag for c in callbacks if isinstance(getattr(c, "run_tag", None), str)]
        method = "-".join([run_name(self.model, METHOD_SUFFIXES), *tags])
        names = [_class_stem(self.model, METHOD_SUFFIXES), *tags]
        if self.datamodule is not None:
            data = run_name(self.datamodule, DATA_SUFFIXES)
            names.append(_class_stem(self.datamodule, DATA_SUFFIXES))
        else:
            data = "data"
        variant = config_variant(self._config_stems(), names)
        return Path(root) / method / (f"{data}-{variant}" if variant else data)

    # ------------------------------------------------------------------------------- the checkpoint
    def _ckpt_path_argument(self) -> str | None:
        value = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
        return None if value is None else str(value)

    def _resolve_checkpoint(self) -> Path | None:
        """``--ckpt_path``, with ``best`` / ``last`` found in the config's run folder, checked to hold this model."""
        value = self._ckpt_path_argument()
        if value not in ("best", "last"):
            return None if value is None else Path(value)
        found = find_checkpoint(self.run_dir, value)
        if found is None:
            where = f"{self.run_dir}/version_*/checkpoints/{value}.ckpt"
            if self.subcommand == "fit":
                rank_zero_warn(f"--ckpt_path {value}: no checkpoint matches {where}; training from scratch")
                return None
            raise LitzooError(f"--ckpt_path {value}: no checkpoint matches {where}; run `litzoo fit` with this config first")
        check_checkpoint_class(found, load_checkpoint(found, mmap=True), type(self.model))
        rank_zero_info(f"--ckpt_path {value}: using {found}")
        return found

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the hyper-parameters of --ckpt_path here and rebuilds the model as the class the file
        # names: check first that the file is a Lightning checkpoint of the config's model, in one line.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "best", "last"):
            checkpoint = load_checkpoint(ckpt_path, mmap=True)
            class_path = getattr(self.config[subcommand].get("model"), "class_path", None)
            expected = import_config_class(class_path) if isinstance(class_path, str) else None
            if expected is not None:
                check_checkpoint_class(ckpt_path, checkpoint, expected)
        super()._parse_ckpt_path()

    # ------------------------------------------------------------------------------- the Trainer
    def _default_logger(self) -> TensorBoardLogger:
        """The run folder's logger: a new ``version_N``; for a resumed fit, the checkpoint's own ``version_N``; for
        ``validate`` / ``test`` / ``predict`` of a checkpoint, ``<its version_N>/<command>_<checkpoint name>``."""
        checkpoint = self._checkpoint
        version_dir = run_version_dir(checkpoint.resolve()) if checkpoint is not None else None
        if self.subcommand in ("validate", "test", "predict") and checkpoint is not None:
            # absolute: the evaluation's own sub-folder, never a version_N of the run folder
            base = version_dir if version_dir is not None else self.run_dir.resolve()
            return TensorBoardLogger(save_dir=str(base), name=f"{self.subcommand}_{checkpoint.stem}", version="")
        # Absolute paths: ModelCheckpoint keeps its best-model tracking across a resume only when the
        # checkpoint folder it computes is, as a string, the one saved in the checkpoint.
        run_dir = version_dir.parent if self.subcommand == "fit" and version_dir is not None else self.run_dir.resolve()
        version = version_dir.name if self.subcommand == "fit" and version_dir is not None else None
        return TensorBoardLogger(save_dir=str(run_dir.parent.parent), name=f"{run_dir.parent.name}/{run_dir.name}", version=version)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        self._checkpoint = self._resolve_checkpoint()
        if config.get("logger") in (None, True):
            config["logger"] = self._default_logger()
        present = list(config.get("callbacks") or []) + list(callbacks)
        defaults: list[Callback] = []
        if config.get("enable_checkpointing", True) is not False and not any(isinstance(c, ModelCheckpoint) for c in present):
            defaults.extend(self._default_checkpoints())
        if config.get("logger") and not any(isinstance(c, LearningRateMonitor) for c in present):
            defaults.append(LearningRateMonitor(logging_interval="step"))
        if config.get("enable_model_summary", True) is not False and not any(isinstance(c, ModelSummary) for c in present):
            defaults.append(FlopsModelSummary())
        if not any(isinstance(c, StopOnNonFiniteLoss) for c in present):
            defaults.append(StopOnNonFiniteLoss())
        if not any(isinstance(c, ExactResume) for c in present):
            defaults.append(ExactResume())  # RNG states and the training loader's position in every checkpoint
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in present):
            defaults.append(PredictionWriter())
        try:
            return super()._instantiate_trainer(config, list(callbacks) + defaults)
        except (ValueError, MisconfigurationException) as error:
            # what the Trainer refuses of its arguments (a strategy that needs a GPU, DeepSpeed not installed, a bad
            # precision or device count) is the config's mistake: one line, not a traceback
            raise LitzooError(f"the trainer settings are refused by Lightning: {' '.join(str(error).split())}") from None

    def _default_checkpoints(self) -> list[ModelCheckpoint]:
        has_validation = type(self.model).validation_step is not L.LightningModule.validation_step
        monitor = getattr(self.model, "monitor", "val/loss") if has_validation else None
        mode = getattr(self.model, "monitor_mode", "min")
        # Fixed file names, overwritten in place, so that `--ckpt_path best|last` can find them.
        # `last.ckpt` has its own checkpoint callback without a monitor: Lightning's `save_last`
        # writes it only when a top-k checkpoint is saved, i.e. it would stay at the best epoch.
        # validate / test / predict save nothing, but they restore the state of the fit's checkpoint callbacks:
        # the same callbacks, pointed at the folder of the evaluated checkpoint, take it without a warning
        version_dir = run_version_dir(self._checkpoint.resolve()) if self._checkpoint is not None else None
        dirpath = str(version_dir / "checkpoints") if self.subcommand != "fit" and version_dir is not None else None
        best = ModelCheckpoint(dirpath=dirpath, filename="best", monitor=monitor, mode=mode, save_top_k=1)
        last = ModelCheckpoint(dirpath=dirpath, filename="last", save_top_k=1)
        return [best, last]

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "ckpt_path" in kwargs:
            kwargs["ckpt_path"] = None if self._checkpoint is None else str(self._checkpoint)
        return kwargs

    def _run_subcommand(self, subcommand: str) -> None:
        with warnings.catch_warnings():
            if subcommand == "fit" and self._checkpoint is not None:
                # a resume writes into the checkpoint's own folder, which is not empty: that is the point
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super()._run_subcommand(subcommand)


def build_from_config(args: Sequence[str]) -> LitzooCLI:
    """The model, DataModule and Trainer of a config and its overrides, built but not run (``run=False``), for the
    commands that are not one fit (``litzoo graph``, ``litzoo active-learn``, ``litzoo la3-search``). No config file is
    saved; an error a class raises while jsonargparse builds it that is the user's (:func:`litzoo.cli.console.user_error`)
    is raised as itself, so ``main`` prints it as one line."""
    from litzoo.cli.console import user_error

    with warnings.catch_warnings():  # the command's own sys.argv is not the config's
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        try:
            return LitzooCLI(args=list(args), run=False, save_config_callback=None, parser_kwargs={"exit_on_error": False})
        except ValueError as error:  # jsonargparse wraps what a class raises while it is built (a missing data root)
            cause = user_error(error)
            if not isinstance(cause, LitzooError):
                raise
            raise cause from None
