"""The right run and the right checkpoint (issue 18, items 4, 6, 7, 9, 13): one run folder per config,
``--ckpt_path best|last`` resolved in it, checkpoints of other modules refused in one line before anything is
built from them, a resume that continues its run folder, a stop at the first non-finite loss, and
``predict`` / ``test`` writing into the run they evaluate."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from cifar_files import write_cifar10, write_cifar100
from interaction_files import write_interaction_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_configs import needs_root, on_disk_data, policy_args

from litzoo.cli import LitzooCLI, main
from litzoo.cli.lightning_cli import config_variant
from litzoo.cli.predictions import PredictionWriter
from litzoo.cli.registry import shipped_configs
from litzoo.framework.export import load_lightning_module

CONFIG = "configs/repvgg/digits.yaml"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", *QUIET]


def _error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------ item 6: run folders
def test_every_shipped_config_has_its_own_run_folder(tmp_path):
    """Before, configs of one model and data shared a folder (text_quality/corpus_full and corpus_pruned,
    repopt_vgg/digits, digits_adamw and digits_hs, clip and cit), so `--ckpt_path best` of one took the other's
    run. Configs named after their data keep the names README and the Makefile use."""
    write_cifar10(tmp_path, per_batch=1, test_size=1)  # a data.root for the CIFAR configs
    write_cifar100(tmp_path, train_size=1, test_size=1)
    write_interaction_folder(tmp_path)  # and for the configs on a user's interaction files

    def run_dir(path: Path) -> str:
        try:
            return LitzooCLI(args=["-c", str(path)], run=False).run_dir.as_posix()
        except ValueError as error:  # a config for data the user has (CIFAR): it needs data.root, and LA3 a policy first
            assert "needs data.root" in str(error) or "policy" in str(error)
            root = [f"{on_disk_data(str(path))[1]}.root", str(tmp_path)] if needs_root(str(path)) else []
            args = ["-c", str(path), *root, *policy_args(str(path), tmp_path)]
            return LitzooCLI(args=args, run=False).run_dir.as_posix()

    folders = {name: run_dir(path) for name, path in shipped_configs().items()}
    shared = {folder for folder in folders.values() if list(folders.values()).count(folder) > 1}
    assert not shared, f"configs sharing a run folder: {[(n, f) for n, f in folders.items() if f in shared]}"
    assert folders["repvgg/digits"] == "runs/repvgg/digits"
    assert folders["dbb/digits"] == "runs/resnet-dbb/digits"
    assert folders["resrep/repvgg_digits"] == "runs/repvgg-resrep/digits"
    assert folders["quantization/repvgg_digits_ptq"] == "runs/repvgg-ptq/digits"
    assert folders["repopt_vgg/digits_hs"] == "runs/repoptvgg/digits-hs"
    assert folders["text_quality/corpus_pruned"] == "runs/gptlanguage/textcorpus-pruned"
    assert folders["cit/digits_captions"] == "runs/clip-cit/digitscaptions"
    assert folders["polarization/synthetic_stations"] == "runs/semanticpolarization/synthetictranscripts-stations"
    assert folders["ceil/synthetic_topics"] == "runs/ceil/syntheticshorttext-topics"
    assert folders["mbt/synthetic_av"] == "runs/mbt/syntheticaudiovideo-av"


def test_config_variant_keeps_only_what_the_names_do_not_say():
    assert config_variant(["digits"], ["RepVGG", "Digits"]) == ""
    assert config_variant(["repvgg_digits"], ["RepVGG", "resrep", "Digits"]) == ""
    assert config_variant(["digits_mae"], ["HieraMAE", "Digits"]) == ""
    assert config_variant(["architectures"], ["AIOP", "MultiTaskArchitecture"]) == ""
    assert config_variant(["digits_hs"], ["RepOptVGG", "Digits"]) == "hs"
    assert config_variant(["corpus_full"], ["GPTLanguage", "TextCorpus"]) == "full"
    assert config_variant(["synthetic_audioset_finetune"], ["AudioMAE", "SyntheticAudioSet"]) == "finetune"
    assert config_variant(["my-run_2"], ["RepVGG", "Digits"]) == "my_run_2"


def test_ckpt_path_last_is_the_config_s_own_run(tmp_path, caplog):
    """Two configs of one model and data: `--ckpt_path last` of the first finds the first's checkpoint although
    the second ran later (before: the newest run of RepVGG on digits, i.e. the second's), and says which file."""
    variant = tmp_path / "digits_narrow.yaml"
    shutil.copy(CONFIG, variant)
    root = ["--trainer.default_root_dir", str(tmp_path / "runs")]
    main(["fit", "-c", str(variant), *root, *TINY])
    main(["fit", "-c", CONFIG, *root, *TINY])
    expected = tmp_path / "runs" / "repvgg" / "digits-narrow" / "version_0" / "checkpoints" / "last.ckpt"
    assert expected.is_file() and (tmp_path / "runs" / "repvgg" / "digits" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    with caplog.at_level(logging.INFO):
        main(["test", "-c", str(variant), *root, "--ckpt_path", "last", *QUIET, "--trainer.limit_test_batches", "1"])
    assert f"--ckpt_path last: using {expected}" in caplog.text


# ------------------------------------------------------------------------------------------ item 7: refusals
def _foreign_checkpoint(path: Path, class_path: str = "litzoo.modules.mae.MAEModule") -> Path:
    """What `litzoo fit -c configs/mae/digits.yaml` writes, as far as the check reads it."""
    torch.save({"pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0, "state_dict": {"encoder.weight": torch.zeros(2)},
                "hyper_parameters": {"_class_path": class_path, "embed_dim": 16}}, path)  # fmt: skip
    return path


def test_a_checkpoint_of_another_module_is_refused_before_it_is_built(tmp_path, capsys, monkeypatch):
    from litzoo.modules.mae import MAEModule

    built = []
    monkeypatch.setattr(MAEModule, "__init__", lambda self, *a, **k: built.append(1) or L.LightningModule.__init__(self))
    mae = _foreign_checkpoint(tmp_path / "mae.ckpt")
    for command in ("test", "fit", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(mae), *QUIET])
        assert exit_info.value.code == 2
        line = _error_line(capsys)
        assert line == (f"litzoo: error: checkpoint '{mae}' holds a MAEModule (litzoo.modules.mae.MAEModule), but the config asks for a "
                        "RepVGGClassifier (litzoo.modules.repvgg.RepVGGClassifier)")  # fmt: skip
    assert not built, "Lightning built the checkpoint's class"


def test_a_state_dict_is_refused_in_one_line(tmp_path, capsys):
    plain = tmp_path / "weights.pt"
    torch.save({"linear.weight": torch.zeros(2, 2), "linear.bias": torch.zeros(2)}, plain)
    with pytest.raises(SystemExit):
        main(["test", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(plain), *QUIET])
    line = _error_line(capsys)
    assert line.startswith(f"litzoo: error: checkpoint '{plain}' is not a Lightning checkpoint") and "'pytorch-lightning_version'" in line
    assert "a plain state dict of 2 tensors" in line and "RepVGGClassifier (litzoo.modules.repvgg.RepVGGClassifier)" in line


def test_best_of_the_run_folder_is_checked_too(tmp_path, capsys):
    folder = tmp_path / "repvgg" / "digits" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    best = _foreign_checkpoint(folder / "best.ckpt", "litzoo.modules.hiera.HieraClassifier")
    with pytest.raises(SystemExit):
        main(["test", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "best", *QUIET])
    assert _error_line(capsys).startswith(f"litzoo: error: checkpoint '{best}' holds a HieraClassifier (litzoo.modules.hiera.HieraClassifier)")


# ------------------------------------------------------------------------------------------ item 4: resume, one run
def test_a_resume_continues_its_run_folder_and_its_best_checkpoint(tmp_path):
    """lr 0: val/acc cannot improve after epoch 0, so best.ckpt must stay at epoch 0 through the resume. Before,
    the resume opened version_1, whose ModelCheckpoint had lost the best score and saved epoch 1 as "best"."""
    args = ["-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "3",
            "--model.init_args.optimizer.init_args.lr", "0", "--trainer.log_every_n_steps", "1", *QUIET]  # fmt: skip
    main(["fit", *args, "--trainer.max_epochs", "1"])
    main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    run = tmp_path / "repvgg" / "digits"
    assert sorted(p.name for p in run.iterdir()) == ["version_0"]
    checkpoints = run / "version_0" / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 1
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["best.ckpt", "deploy.ckpt", "last.ckpt"]  # no best-v1.ckpt
    events = EventAccumulator(str(run / "version_0")).Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [1, 3]  # one curve, epoch after epoch
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ item 9: non-finite loss
def test_a_non_finite_loss_stops_fit_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--model.init_args.optimizer.init_args.lr", "1e10",
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "10", *QUIET])  # fmt: skip
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    assert line.startswith("litzoo: error: training loss is nan at step ") and "(epoch 0, batch " in line
    step = int(line.split(" at step ")[1].split()[0])
    assert 0 < step < 10
    checkpoints = tmp_path / "repvgg" / "digits" / "version_0" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), "no checkpoint or deploy model of a diverged run"


# ------------------------------------------------------------------------------------------ item 13: predict / test
def test_predict_writes_a_csv_into_the_run_it_evaluates(tmp_path, caplog):
    root = ["--trainer.default_root_dir", str(tmp_path)]
    main(["fit", "-c", CONFIG, *root, *TINY])
    version = tmp_path / "repvgg" / "digits" / "version_0"
    with caplog.at_level(logging.INFO):
        main(["predict", "-c", CONFIG, *root, "--ckpt_path", "last", *QUIET])
        main(["test", "-c", CONFIG, *root, "--ckpt_path", "best", *QUIET, "--trainer.limit_test_batches", "1"])
    output = version / "predict_last" / "predictions.csv"
    assert f"written to {output}" in caplog.text
    assert sorted(p.name for p in version.parent.iterdir()) == ["version_0"], "no new version_N for predict or test"
    assert "test/acc" in EventAccumulator(str(version / "test_best")).Reload().Tags()["scalars"]
    rows = list(csv.DictReader(output.open()))
    datamodule = LitzooCLI(args=["-c", CONFIG], run=False).datamodule
    datamodule.setup("predict")
    images = torch.stack([datamodule.datasets["test"][i]["image"] for i in range(len(datamodule.datasets["test"]))])
    module, _ = load_lightning_module(version / "checkpoints" / "last.ckpt")
    with torch.no_grad():
        probs = module.eval()(images).softmax(-1)
    assert [int(r["index"]) for r in rows] == list(range(len(images)))
    assert list(rows[0]) == ["index", "pred", "prob", "label"]
    assert [int(r["pred"]) for r in rows] == probs.argmax(-1).tolist()
    assert torch.allclose(torch.tensor([float(r["prob"]) for r in rows]), probs.max(-1).values, atol=1e-5)
    assert [int(r["label"]) for r in rows] == [int(datamodule.datasets["test"][i]["label"]) for i in range(len(images))]


def test_prediction_writer_saves_features_and_paths(tmp_path):
    from torch.utils.data import DataLoader, Dataset

    class Files(Dataset):  # a dataset that lists its files, as ImageFolder datasets do
        samples = [(f"img_{i}.png", i % 3) for i in range(10)]

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"image": torch.full((2,), float(i)), "label": i % 3}

    class Features(L.LightningModule):
        def predict_step(self, batch, batch_idx):
            return batch["image"] * 2

    class Classes(L.LightningModule):
        def predict_step(self, batch, batch_idx):
            probs = torch.nn.functional.one_hot(batch["label"], 3).float() * 0.5 + 0.5 / 3
            return {"probs": probs, "pred": probs.argmax(-1)}

    loader = DataLoader(Files(), batch_size=4)
    trainer_args = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    writer = PredictionWriter(output_dir=tmp_path)
    L.Trainer(callbacks=[writer], **trainer_args).predict(Features(), loader)
    saved = torch.load(writer.path, weights_only=True)
    assert writer.path == tmp_path / "predictions.pt"
    assert saved["index"].tolist() == list(range(10)) and torch.equal(saved["predictions"], 2 * torch.arange(10.0)[:, None].expand(10, 2))
    writer = PredictionWriter(output_dir=tmp_path, filename="classes")
    L.Trainer(callbacks=[writer], **trainer_args).predict(Classes(), loader)
    rows = list(csv.DictReader(writer.path.open()))
    assert [(r["path"], int(r["pred"])) for r in rows] == [(f"img_{i}.png", i % 3) for i in range(10)]
    assert all(float(r["prob"]) == pytest.approx(0.5 + 0.5 / 3) for r in rows)


# ------------------------------------------------------------------------------------------ item 4: exact resume
class _Killed(Exception):
    pass


class _KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Killed


def test_litzoo_fit_killed_in_its_last_epoch_and_resumed_with_ckpt_path_last_ends_as_the_uninterrupted_run(tmp_path):
    """The issue's flow: a `litzoo fit` killed in its last epoch and resumed with `--ckpt_path last` (the end of the
    epoch before) ends with the weights of the run that was never killed. The shuffled order comes from (seed, epoch)
    and the RNG states from the checkpoint (ExactResume, a CLI default); before, the resumed epoch saw another order."""
    args = ["fit", "-c", CONFIG, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "2", *QUIET]
    main([*args, "--trainer.default_root_dir", str(tmp_path / "whole")])
    with pytest.raises(_Killed):
        LitzooCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path / "cut")], trainer_defaults={"callbacks": [_KillAtStep(15)]})
    main([*args, "--trainer.default_root_dir", str(tmp_path / "cut"), "--ckpt_path", "last"])
    whole, resumed = (torch.load(next((tmp_path / r).rglob("last.ckpt")), weights_only=True) for r in ("whole", "cut"))
    assert whole["global_step"] == resumed["global_step"] == 18
    for key, value in whole["state_dict"].items():
        assert torch.allclose(value.float(), resumed["state_dict"][key].float(), atol=1e-6, rtol=0), key


@pytest.mark.parametrize("strategy, message", [("fsdp", "requires a GPU accelerator"), ("deepspeed", "DeepSpeed installed")])
def test_trainer_settings_lightning_refuses_fail_in_one_line(tmp_path, capsys, strategy, message):
    # before: a ValueError / MisconfigurationException traceback from inside the Trainer's constructor
    with pytest.raises(SystemExit):
        main(["fit", "-c", CONFIG, "--trainer.strategy", strategy, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("litzoo: error: the trainer settings are refused by Lightning:") and message in line
