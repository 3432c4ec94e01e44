"""``litzoo active-learn``: pool-based active learning from a config whose data is an ``ActiveLearningDataModule``.

    litzoo active-learn -c configs/active_learning/digits.yaml                 # a new run: runs/<...>/active_version_N
    litzoo active-learn -c configs/active_learning/digits.yaml --data.init_args.strategy badge --reinit reset
    litzoo active-learn -c configs/active_learning/digits.yaml --resume runs/<...>/active_version_0

Every round builds the config's model and Trainer again (``round_NN/`` holds the round's logs and checkpoints); the
loop is :class:`litzoo.framework.active.ActiveLearningLoop`. Options of this command (the rest is the config's):
``--resume RUN_DIR`` continues a run from its ``pool.json``; ``--reinit reset|fresh|continue``; ``--metric test/acc``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litzoo.framework.errors import LitzooError

#: the run folder, handed to the processes Lightning's DDP launcher starts
RUN_DIR_VARIABLE = "LITZOO_ACTIVE_RUN_DIR"
OPTIONS = {"--resume": None, "--reinit": "reset", "--metric": "test/acc"}


def split_options(argv: Sequence[str]) -> tuple[dict[str, str | None], list[str]]:
    """This command's own options (``--resume``, ``--reinit``, ``--metric``, as ``--x v`` or ``--x=v``) and the rest."""
    options: dict[str, str | None] = dict(OPTIONS)
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in OPTIONS:
            if not eq:
                if i + 1 >= len(args):
                    raise LitzooError(f"litzoo active-learn: {name} needs a value")
                value = args[i + 1]
                i += 1
            options[name] = value
        else:
            rest.append(args[i])
        i += 1
    return options, rest


def _build(args: Sequence[str]) -> Any:
    from litzoo.cli.lightning_cli import build_from_config

    return build_from_config(args)


def _next_version(folder: Path) -> Path:
    taken = {int(p.name.rsplit("_", 1)[1]) for p in folder.glob("active_version_*") if p.name.rsplit("_", 1)[1].isdigit()}
    return folder / f"active_version_{max(taken, default=-1) + 1}"


def active_learn_command(argv: Sequence[str]) -> None:
    """``litzoo active-learn -c CONFIG [--resume RUN_DIR] [--reinit reset|fresh|continue] [--metric test/acc] [config
    overrides]``: the rounds of fit / test / query of the config's ActiveLearningDataModule, resumable."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    from litzoo.framework.active import REINIT, ActiveLearningDataModule, ActiveLearningLoop, curve_table

    options, rest = split_options(argv)
    reinit, metric = str(options["--reinit"]), str(options["--metric"])
    if reinit not in REINIT:
        raise LitzooError(f"litzoo active-learn: --reinit must be one of {', '.join(REINIT)}, got '{reinit}'")
    quiet = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    inherited = os.environ.get(RUN_DIR_VARIABLE)
    probe = _build([*rest, *quiet])
    if not isinstance(probe.datamodule, ActiveLearningDataModule):
        raise LitzooError(f"litzoo active-learn needs a config whose data is litzoo.framework.active.ActiveLearningDataModule, got {type(probe.datamodule).__name__}")
    if options["--resume"] is not None:
        run_dir = Path(str(options["--resume"])).expanduser()
        if not (run_dir / "pool.json").is_file():
            raise LitzooError(f"--resume '{run_dir}' holds no pool.json: not an active-learning run folder")
    elif inherited:
        run_dir = Path(inherited)  # a DDP rank Lightning started: the folder rank 0 chose
    else:
        run_dir = _next_version(probe.run_dir)
    # Lightning's DDP launcher runs this command again for every other rank, with this environment: they must not
    # pick the next free folder (rank 0 has made this one by then)
    os.environ[RUN_DIR_VARIABLE] = str(run_dir)
    pool_args = ["--data.init_args.pool_file", str(run_dir / "pool.json")]
    built: dict[int, Any] = {}

    def build_model(round_: int) -> Any:
        logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": str(run_dir), "name": "", "version": f"round_{round_:02d}"}}  # fmt: skip
        built[round_] = _build([*rest, *pool_args, "--trainer.logger", json.dumps(logger)])
        return built[round_].model

    def build_trainer(round_: int, round_dir: Path) -> Any:
        return built[round_].trainer

    try:
        datamodule = _build([*rest, *pool_args, *quiet]).datamodule
        results = ActiveLearningLoop(datamodule, build_model, build_trainer, run_dir, reinit=reinit, metric=metric).run()
    finally:
        if inherited is None:  # the next command in this process chooses its own folder
            os.environ.pop(RUN_DIR_VARIABLE, None)
    from litzoo.framework.distributed import rank

    if rank() == 0:
        print(curve_table(results, metric))
        print(f"{run_dir}: pool.json, learning_curve.csv, round_NN/ (tensorboard --logdir {run_dir})")
