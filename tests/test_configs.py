"""Every config under configs/ runs: one fast_dev_run fit each, so no config can rot."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import yaml
from cifar_files import write_cifar10, write_cifar100
from interaction_files import write_interaction_folder

from litzoo.cli import main

CONFIGS = sorted(str(p) for p in Path("configs").glob("*/*.yaml"))

#: DataModules that read a data set the user has on disk (no embedded default) -> writer of a tiny folder in its format.
#: The folders are as small as a fit allows (a few images), so that the configs' full-size networks run fast.
ON_DISK_DATA = {
    "litzoo.datamodules.cifar.CIFAR10DataModule": partial(write_cifar10, per_batch=2, test_size=2),
    "litzoo.datamodules.cifar.CIFAR100DataModule": partial(write_cifar100, train_size=10, test_size=2),
    "litzoo.datamodules.interactions.InteractionFolderDataModule": write_interaction_folder,
}
#: what the one-line error of each of them says when data.root is missing
MISSING_ROOT_MESSAGES = {
    "litzoo.datamodules.cifar.CIFAR10DataModule": ("litzoo: error: CIFAR", "DataModule needs data.root: the folder holding cifar-", "cifar.html"),
    "litzoo.datamodules.cifar.CIFAR100DataModule": ("litzoo: error: CIFAR", "DataModule needs data.root: the folder holding cifar-", "cifar.html"),
    "litzoo.datamodules.interactions.InteractionFolderDataModule": (
        "litzoo: error: InteractionFolderDataModule needs data.root", "<domain>.inter (RecBole atomic) or <domain>.csv"),
}


def on_disk_data(config: str) -> tuple[dict, str]:
    """The config's data section that reads the user's disk and the option prefix of its arguments: ``data`` itself, or
    the DataModule a wrapper (active learning, LA3) takes as its ``datamodule`` argument."""
    data = yaml.safe_load(Path(config).read_text()).get("data") or {}
    inner = (data.get("init_args") or {}).get("datamodule")
    if data.get("class_path") not in ON_DISK_DATA and isinstance(inner, dict):
        return inner, "--data.init_args.datamodule.init_args"
    return data, "--data.init_args"


def needs_root(config: str) -> bool:
    """Whether the config's data is on the user's disk and the config leaves ``root`` to the command line."""
    data, _ = on_disk_data(config)
    return data.get("class_path") in ON_DISK_DATA and "root" not in (data.get("init_args") or {})


def data_root_args(config: str, tmp_path: Path) -> list[str]:
    """``--data.init_args.root <a tiny folder in the data's format>`` for a config that needs one, else nothing.

    A wrapped DataModule gets its own option, and a folder with enough training images for the wrapper's
    ``initial_labels`` (an active-learning pool is drawn from them)."""
    if not needs_root(config):
        return []
    data, prefix = on_disk_data(config)
    writer = ON_DISK_DATA[data["class_path"]]
    initial = (yaml.safe_load(Path(config).read_text())["data"].get("init_args") or {}).get("initial_labels")
    if initial and data["class_path"].endswith("CIFAR10DataModule"):
        writer = partial(write_cifar10, per_batch=initial // 4 + 1, test_size=2)  # 5 batches, 10% held out for validation
    writer(tmp_path / "data")
    return [f"{prefix}.root", str(tmp_path / "data")]


def policy_args(config: str, tmp_path: Path) -> list[str]:
    """``--data.init_args.policy <a tiny policy>`` for an LA3 config whose policy file the user searches first
    (``configs/la3/cifar10.yaml``), else nothing."""
    from litzoo.framework.data.augment_ops import AugmentPolicy, save_policy
    from litzoo.framework.data.label_aware import resolve_policy_path

    data = yaml.safe_load(Path(config).read_text()).get("data") or {}
    policy = (data.get("init_args") or {}).get("policy")
    if not str(data.get("class_path", "")).endswith("LabelAwareAugmentDataModule") or resolve_policy_path(policy).is_file():
        return []
    path = save_policy(AugmentPolicy(shared=(("Rotate", "Identity", "Cutout"),)), tmp_path / "policy.json")
    return ["--data.init_args.policy", str(path)]


def test_configs_are_found():
    assert "configs/repvgg/digits.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_config_runs_fast_dev_run(config, tmp_path):
    main(["fit", "-c", config, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false", *data_root_args(config, tmp_path), *policy_args(config, tmp_path)])


@pytest.mark.parametrize("config", [c for c in CONFIGS if needs_root(c)])
def test_config_without_its_data_root_fails_in_one_line(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["fit", "-c", config, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    line = err.strip().splitlines()[-1]
    start, *parts = MISSING_ROOT_MESSAGES[on_disk_data(config)[0]["class_path"]]
    assert line.startswith(start) and all(part in line for part in parts), line
