"""``litzoo la3-search``: search a label-aware augmentation policy (LA3) for a config's classifier and data.

    litzoo la3-search -c configs/la3/digits.yaml --out policy.json                  # pretrain, search, write
    litzoo la3-search -c configs/la3/digits.yaml --out policy.json --ckpt_path runs/.../best.ckpt --evaluations 200
    litzoo la3-search -c my.yaml --out p.json --trainer.max_epochs 5 --ops ShearX Rotate Cutout Identity

The config is built as ``litzoo fit`` would build it, without running it (:func:`litzoo.cli.lightning_cli.build_from_config`).
When its data is a :class:`~litzoo.framework.data.label_aware.LabelAwareAugmentDataModule`, the search uses the
DataModule it wraps (and its ``mean`` / ``std``), so the policy file the config names need not exist yet. The
classifier is trained with the config's trainer on that data (or loaded from ``--ckpt_path``), then
:class:`litzoo.modules.la3.LA3Search` scores policies on the validation split and the policy file is written.
Arguments ``--trainer.*``, ``--model.*``, ``--data.*`` and ``--seed_everything`` go to the config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from litzoo.cli.console import command_parser
from litzoo.cli.lightning_cli import build_from_config
from litzoo.cli.registry import resolve_config
from litzoo.framework.errors import LitzooError

WRAPPER = "LabelAwareAugmentDataModule"
CONFIG_PREFIXES = ("--trainer.", "--model.", "--data.", "--seed_everything", "--optimizer", "--lr_scheduler")


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(the command's own arguments, the config overrides)``: ``--trainer.x v`` / ``--trainer.x=v`` and the like."""
    own, config = [], []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith(CONFIG_PREFIXES):
            config.append(item)
            if "=" not in item and i + 1 < len(items) and not items[i + 1].startswith("--"):
                config.append(items[i + 1])
                i += 1
        else:
            own.append(item)
        i += 1
    return own, config


def inner_data(config: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The wrapped DataModule's spec and the wrapper's arguments, when the config's data is the label-aware wrapper."""
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    if not isinstance(data, dict) or not str(data.get("class_path", "")).endswith(WRAPPER):
        return None, {}
    init = dict(data.get("init_args") or {})
    inner = init.pop("datamodule", None)
    if not isinstance(inner, dict) or "class_path" not in inner:
        raise LitzooError(f"config '{config}': data.init_args.datamodule of {WRAPPER} must be a class_path / init_args mapping")
    return inner, init


def build(config: Path, overrides: Sequence[str]) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The config's model, DataModule (the wrapped one for the label-aware wrapper) and trainer, and the wrapper's arguments."""
    inner, wrapper = inner_data(config)
    data_args = ["--data", json.dumps(inner)] if inner is not None else []
    if inner is not None:  # the wrapped DataModule's overrides, as the config names them, now address the data itself
        overrides = [o.replace("--data.init_args.datamodule.", "--data.", 1) if o.startswith("--data.init_args.datamodule.") else o for o in overrides]
    args = ["-c", str(config), *data_args, "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *overrides]  # fmt: skip
    cli = build_from_config(args)
    return cli.model, cli.datamodule, cli.trainer, wrapper


def la3_search_command(argv: Sequence[str]) -> None:
    """``litzoo la3-search``: pretrain (or load) a config's classifier, run LA3's two stages, write the policy file."""
    from litzoo.framework.data.augment_ops import LA3_OPS, ORIENTATION_OPS
    from litzoo.modules.la3 import LA3Search, collect_split, write_policy

    own, overrides = split_config_args(argv)
    parser = command_parser("litzoo la3-search", "Search a label-aware augmentation policy (LA3) for a config's classifier and data. "
                                                 "Options --trainer.*, --model.*, --data.* and --seed_everything go to the config.")  # fmt: skip
    parser.add_argument("-c", "--config", type=str, required=True, help="a litzoo config, e.g. configs/la3/digits.yaml")
    parser.add_argument("--out", type=str, required=True, help="the policy file to write (JSON)")
    parser.add_argument("--ckpt_path", type=str, default=None, help="a checkpoint of the config's model to search on (else it is trained)")
    parser.add_argument("--evaluations", type=int, default=500, help="stage-1 evaluations after the random ones (official N=500)")
    parser.add_argument("--init-evaluations", type=int, default=100, help="random evaluations first (official 100)")
    parser.add_argument("--predictor-epochs", type=int, default=100, help="epochs of each predictor (official 100)")
    parser.add_argument("--topk", type=int, default=100, help="sub-policies per label (official 100)")
    parser.add_argument("--alpha", type=float, default=2.5, help="mRMR redundancy weight (official README 2.5)")
    parser.add_argument("--ops", type=str, nargs="+", default=None, help=f"operations to search (default: the official 16; also {', '.join(ORIENTATION_OPS)})")
    parser.add_argument("--label-agnostic", action="store_true", help="search one shared set for all labels (the baseline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search")
    args = parser.parse_args(own)

    from litzoo.framework.data.augment_ops import check_ops
    from litzoo.framework.data.staging import check_writable

    output = check_writable(args.out)
    try:
        ops = check_ops(args.ops or LA3_OPS)
    except ValueError as error:
        raise LitzooError(f"--ops: {error}") from None
    try:
        config = Path(resolve_config(args.config))
    except LitzooError:
        raise LitzooError(f"config '{args.config}' does not exist") from None
    if not config.is_file():
        raise LitzooError(f"config '{args.config}' does not exist")
    model, datamodule, trainer, wrapper = build(config, overrides)
    start = time.perf_counter()
    if args.ckpt_path:
        from litzoo.framework.checkpoints import load_checkpoint, state_dict_from

        model.load_state_dict(state_dict_from(load_checkpoint(args.ckpt_path), args.ckpt_path))
        print(f"classifier: {type(model).__name__} loaded from {args.ckpt_path}")
    else:
        trainer.fit(model, datamodule=datamodule)
        print(f"classifier: {type(model).__name__} trained for {trainer.current_epoch} epochs in {time.perf_counter() - start:.0f} s")
    datamodule.setup("validate")
    images, labels = collect_split(datamodule.val_dataloader())
    num_classes = int(getattr(datamodule, "num_classes", 0) or getattr(model.hparams, "num_classes", 0) or int(labels.max()) + 1)
    search = LA3Search(num_classes, ops=ops, label_aware=not args.label_agnostic, evaluations=args.evaluations,
                       init_evaluations=args.init_evaluations, predictor_epochs=args.predictor_epochs, topk=args.topk, alpha=args.alpha,
                       seed=args.seed)  # fmt: skip
    start = time.perf_counter()
    policy = search.run(model, images, labels, wrapper.get("mean"), wrapper.get("std"))
    write_policy(policy, output)
    sets = len(policy.sets) or 1
    print(f"LA3 policy: {sets} set(s) of {args.topk} sub-policies from {len(search.history.evaluated)} evaluations in "
          f"{time.perf_counter() - start:.0f} s; written to {output}")  # fmt: skip
