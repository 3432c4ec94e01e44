"""`litzoo la3-search`: a config's classifier trained (or loaded from its checkpoint), LA3 run on its validation data,
the policy file written and usable by `litzoo fit`; errors in one line."""

from __future__ import annotations

import pytest

from litzoo.cli import main
from litzoo.cli.la3 import split_config_args
from litzoo.framework.data.augment_ops import load_policy

CONFIG = "configs/la3/digits.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--evaluations", "2", "--init-evaluations", "2", "--predictor-epochs", "2", "--topk", "3", "--ops", "Identity", "FlipX", "Rotate180"]


def test_split_config_args():
    own, config = split_config_args(["-c", "x.yaml", "--trainer.max_epochs", "2", "--out", "p.json", "--data.init_args.x=3", "--topk", "4"])
    assert own == ["-c", "x.yaml", "--out", "p.json", "--topk", "4"]
    assert config == ["--trainer.max_epochs", "2", "--data.init_args.x=3"]


def test_fit_then_search_from_its_checkpoint_then_fit_with_the_new_policy(tmp_path, capsys):
    main(["fit", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", *QUIET])  # fmt: skip
    last = next(tmp_path.glob("*/*/version_0/checkpoints/last.ckpt"))
    out = tmp_path / "policy.json"
    main(["la3-search", "-c", CONFIG, "--out", str(out), "--ckpt_path", str(last), *TINY])
    printed = capsys.readouterr().out
    assert f"loaded from {last}" in printed and str(out) in printed
    policy = load_policy(out)
    assert sorted(policy.sets) == list(range(10)) and all(len(s) == 3 for s in policy.sets.values())
    assert set(policy.ops_used()) <= {"Identity", "FlipX", "Rotate180"} and policy.info["evaluations"] == 4
    main(["fit", "-c", CONFIG, "--data.init_args.policy", str(out), "--trainer.fast_dev_run", "true",
          "--trainer.default_root_dir", str(tmp_path / "again"), *QUIET])  # fmt: skip


def test_search_trains_the_classifier_when_no_checkpoint_is_given(tmp_path, capsys):
    out = tmp_path / "agnostic.json"
    main(["la3-search", "-c", CONFIG, "--out", str(out), "--label-agnostic", *TINY, "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"])  # fmt: skip
    assert "trained for 1 epochs" in capsys.readouterr().out
    policy = load_policy(out)
    assert not policy.sets and len(policy.shared) == 3


@pytest.mark.parametrize("args, words", [
    (["-c", "configs/la3/nope.yaml", "--out", "{tmp}/p.json"], "config 'configs/la3/nope.yaml' does not exist"),
    (["-c", CONFIG, "--out", "{tmp}/p.json", "--ckpt_path", "{tmp}/missing.ckpt", *TINY], "missing.ckpt' does not exist"),
    (["-c", CONFIG, "--out", "{tmp}/p.json", "--ops", "Identity", "Spin"], "--ops: unknown augmentation operation(s) ['Spin']"),
])  # fmt: skip
def test_errors_are_one_line(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit):
        main(["la3-search", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("litzoo: error:") and words in line, line


def test_the_wrapped_datamodule_keeps_its_own_hyperparameters():
    """LightningCLI hands every DataModule under ``data`` the hyper-parameters of the ``data`` config (the wrapper's);
    the wrapper gives the wrapped one its own back (DigitsDataModule reads them when it builds its splits)."""
    from litzoo.cli import LitzooCLI

    data = LitzooCLI(args=["-c", CONFIG, "--trainer.logger", "false"], run=False).datamodule
    assert data.datamodule.hparams["_class_path"] == "litzoo.datamodules.digits.DigitsDataModule"
    assert data.datamodule.hparams["image_size"] == 16 and "policy" not in data.datamodule.hparams
    assert data.hparams["policy"] == "configs/la3/digits_policy.json" and "image_size" not in data.hparams
