"""LightningCLI with litzoo's defaults.

    litzoo fit  -c configs/repvgg/digits.yaml
    litzoo fit  -c repvgg/digits                 # a config shipped with litzoo, found by name
    litzoo test -c configs/repvgg/digits.yaml --ckpt_path best
    litzoo fit  --model RepVGGClassifier --data DigitsDataModule --model.num_classes 10

Defaults added to the Trainer unless the config already sets them: a TensorBoardLogger writing to
``runs/<method>/<data>/version_N``, a ModelCheckpoint keeping ``best.ckpt`` (on the module's
``monitor`` metric) and ``last.ckpt``, a LearningRateMonitor, and a model summary with FLOPs.
``--ckpt_path best|last`` finds that file in the newest run of the same method and data.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from litzoo.cli.registry import import_all, resolve_config_args
from litzoo.cli.summary import FlopsModelSummary
from litzoo.framework.checkpoints import load_checkpoint
from litzoo.framework.errors import LitzooError

RUNS_DIR = "runs"


def run_name(obj: object, suffixes: Sequence[str]) -> str:
    """``RepVGGClassifier -> 'repvgg'``, ``DigitsDataModule -> 'digits'``: the run folder names."""
    name = type(obj).__name__
    for suffix in suffixes:
        if name.endswith(suffix) and name != suffix:
            name = name[: -len(suffix)]
            break
    return name.lower()


def find_checkpoint(run_dir: Path, which: str) -> Path | None:
    """``best.ckpt``/``last.ckpt`` of the newest ``version_N`` under ``run_dir`` that has one."""
    def version(path: Path) -> int:
        match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
        return int(match.group(1)) if match else -1

    candidates = sorted(run_dir.glob(f"version_*/checkpoints/{which}.ckpt"), key=version)
    return candidates[-1] if candidates else None


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
        with warnings.catch_warnings():
            if from_command_line:  # the command line itself, with its configs resolved: not a mistake to warn about
                warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
            super().__init__(L.LightningModule, L.LightningDataModule, args=args, **kwargs)

    @property
    def run_dir(self) -> Path:
        root = self._get(self.config_init, "trainer", default={}).get("default_root_dir") or RUNS_DIR
        method = run_name(self.model, ("Classifier", "Module", "Model"))
        # A callback that changes what is trained (StructuralReparam(block="dbb") -> "resnet-dbb")
        # gets its own run folder, so `--ckpt_path best` never picks another technique's run.
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        tags = [c.run_tag for c in callbacks if isinstance(getattr(c, "run_tag", None), str)]
        method = "-".join([method, *tags])
        data = run_name(self.datamodule, ("DataModule",)) if self.datamodule is not None else "data"
        return Path(root) / method / data

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(save_dir=str(self.run_dir.parent.parent), name=str(Path(*self.run_dir.parts[-2:])))
        present = list(config.get("callbacks") or []) + list(callbacks)
        defaults: list[Callback] = []
        if config.get("enable_checkpointing", True) is not False and not any(isinstance(c, ModelCheckpoint) for c in present):
            defaults.extend(self._default_checkpoints())
        if config.get("logger") and not any(isinstance(c, LearningRateMonitor) for c in present):
            defaults.append(LearningRateMonitor(logging_interval="step"))
        if config.get("enable_model_summary", True) is not False and not any(isinstance(c, ModelSummary) for c in present):
            defaults.append(FlopsModelSummary())
        return super()._instantiate_trainer(config, list(callbacks) + defaults)

    def _default_checkpoints(self) -> list[ModelCheckpoint]:
        has_validation = type(self.model).validation_step is not L.LightningModule.validation_step
        monitor = getattr(self.model, "monitor", "val/loss") if has_validation else None
        mode = getattr(self.model, "monitor_mode", "min")
        # Fixed file names, overwritten in place, so that `--ckpt_path best|last` can find them.
        # `last.ckpt` has its own checkpoint callback without a monitor: Lightning's `save_last`
        # writes it only when a top-k checkpoint is saved, i.e. it would stay at the best epoch.
        best = ModelCheckpoint(filename="best", monitor=monitor, mode=mode, save_top_k=1)
        last = ModelCheckpoint(filename="last", save_top_k=1)
        return [best, last]

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        ckpt_path = kwargs.get("ckpt_path")
        if ckpt_path in ("best", "last"):
            found = find_checkpoint(self.run_dir, ckpt_path)
            if found is None:
                where = f"{self.run_dir}/version_*/checkpoints/{ckpt_path}.ckpt"
                if subcommand == "fit":
                    rank_zero_warn(f"--ckpt_path {ckpt_path}: no checkpoint matches {where}; training from scratch")
                    kwargs["ckpt_path"] = None
                    return kwargs
                raise LitzooError(f"--ckpt_path {ckpt_path}: no checkpoint matches {where}; run `litzoo fit` with this config first")
            rank_zero_info(f"--ckpt_path {ckpt_path}: using {found}")
            kwargs["ckpt_path"] = str(found)
        return kwargs

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the hyper-parameters of --ckpt_path here, before anything else touches the
        # file: check it first, so that a bad file fails with one line naming it.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "best", "last"):
            load_checkpoint(ckpt_path, mmap=True)
        super()._parse_ckpt_path()
