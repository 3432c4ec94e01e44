"""``litzoo active-learn``: the rounds from a config, resumed from the run folder, one-line errors."""

from __future__ import annotations

import json

import pytest

from litzoo.cli import main
from litzoo.cli.active import split_options
from litzoo.framework.active import ActivePool

CONFIG = "configs/active_learning/digits.yaml"
TINY = ["--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.init_args.rounds", "1", "--data.init_args.query_size", "5", "--data.init_args.initial_labels", "10"]  # fmt: skip


def _error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_split_options_takes_only_the_command_options():
    options, rest = split_options(["-c", CONFIG, "--reinit=continue", "--metric", "test/loss", "--trainer.max_steps", "3"])
    assert options == {"--resume": None, "--reinit": "continue", "--metric": "test/loss"}
    assert rest == ["-c", CONFIG, "--trainer.max_steps", "3"]


def test_active_learn_runs_the_rounds_and_resumes_a_finished_run_without_training(tmp_path, capsys):
    main(["active-learn", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), *TINY])
    runs = list(tmp_path.glob("*/*/active_version_0"))
    assert len(runs) == 1
    run = runs[0]
    pool = ActivePool.load(run / "pool.json")
    assert [r["labels"] for r in pool.results] == [10, 15] and pool.acquisitions[1]["strategy"] == "badge"
    assert (run / "learning_curve.csv").read_text().startswith("round,labels,test/acc") and (run / "round_01" / "final_weights.pt").exists()
    out = capsys.readouterr().out
    assert "| 1 | 15 |" in out and "AUC" in out
    before = (run / "pool.json").read_text()
    main(["active-learn", "-c", CONFIG, "--resume", str(run), *TINY])  # all rounds done: nothing is trained again
    assert (run / "pool.json").read_text() == before
    main(["active-learn", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), *TINY])
    assert (run.parent / "active_version_1" / "pool.json").exists()  # a new run gets a new folder


def test_active_learn_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["active-learn", "-c", "configs/resnet/digits.yaml", "--trainer.default_root_dir", str(tmp_path)])
    assert "needs a config whose data is litzoo.framework.active.ActiveLearningDataModule" in _error_line(capsys)
    with pytest.raises(SystemExit):
        main(["active-learn", "-c", CONFIG, "--resume", str(tmp_path)])
    assert "holds no pool.json" in _error_line(capsys)
    (tmp_path / "pool.json").write_text(json.dumps({"format": "litzoo-active-pool", "version": 1, "size": 3, "acquisitions": [], "results": []}))
    with pytest.raises(SystemExit):
        main(["active-learn", "-c", CONFIG, "--resume", str(tmp_path), *TINY])
    line = _error_line(capsys)
    assert line.startswith("litzoo: error: active-learning pool file") and "pool of 3 samples" in line
    with pytest.raises(SystemExit):
        main(["active-learn", "-c", CONFIG, "--reinit", "warm"])
    assert "--reinit must be one of reset, fresh, continue" in _error_line(capsys)


def test_the_wrapped_datamodule_keeps_its_own_hparams_under_lightningcli():
    # LightningCLI builds the wrapped DigitsDataModule inside the wrapper's "given hyper-parameters": without
    # repair_wrapped_hparams it stored the wrapper's (no test_fraction) and crashed in setup
    from litzoo.cli import LitzooCLI

    cli = LitzooCLI(args=["-c", CONFIG, "--trainer.logger", "false", "--data.init_args.datamodule.init_args.test_fraction", "0.3"],
                    run=False, save_config_callback=None, parser_kwargs={"exit_on_error": False})  # fmt: skip
    inner = cli.datamodule.datamodule
    assert inner.hparams["test_fraction"] == 0.3 and inner.hparams["_class_path"] == "litzoo.datamodules.digits.DigitsDataModule"
    assert "initial_labels" not in inner.hparams and cli.datamodule.hparams["initial_labels"] == 20
