"""The litzoo CLI end to end: fit -> test with --ckpt_path best, resume, list, export, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from litzoo.cli import find_checkpoint, main, run_name
from litzoo.framework.deploy import is_fused_checkpoint
from litzoo.framework.export import load_lightning_module
from litzoo.framework.reparam import RepVGGBlock

CONFIG = "configs/repvgg/digits.yaml"
QUIET = ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One short fit of the RepVGG digits config; returns its root directory."""
    root = tmp_path_factory.mktemp("runs")
    main(["fit", "-c", CONFIG, "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2", *QUIET])
    return root


def test_fit_writes_logs_and_checkpoints_under_method_and_data(trained_run):
    checkpoints = trained_run / "repvgg" / "digits" / "version_0" / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} >= {"best.ckpt", "last.ckpt", "deploy.ckpt"}
    events = EventAccumulator(str(checkpoints.parent)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/acc", "val/loss", "model/flops", "model/params", "fusion/max_abs_error", "fusion/latency_ratio"} <= scalars
    assert any(tag.startswith("lr-") for tag in scalars)
    assert "val/confusion_matrix" in events.Tags()["images"]
    assert events.Scalars("fusion/max_abs_error")[-1].value < 1e-4
    # last.ckpt is the end of training (what `--ckpt_path last` resumes), whatever epoch was best
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # the second and final epoch


def test_deploy_checkpoint_is_fused_and_loads_weights_only(trained_run):
    path = find_checkpoint(trained_run / "repvgg" / "digits", "deploy")
    checkpoint = torch.load(path, weights_only=True)
    assert is_fused_checkpoint(checkpoint)
    assert not any("branch_1x1" in key for key in checkpoint["state_dict"])
    module, _ = load_lightning_module(path)
    assert not any(isinstance(m, RepVGGBlock) for m in module.modules())
    # the same weights as the training-time last.ckpt, fused: equal predictions
    train_module, _ = load_lightning_module(path.with_name("last.ckpt"))
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(module(x), train_module.eval()(x), atol=1e-4)


def test_test_with_best_checkpoint_prints_test_accuracy(trained_run, capsys):
    main(["test", "-c", CONFIG, "--trainer.default_root_dir", str(trained_run), "--ckpt_path", "best", *QUIET])
    out = capsys.readouterr().out
    assert "test/acc" in out
    # Lightning prints its results as plain text, or as a rich table (│ test/acc │ 0.93 │) when rich is installed
    accuracy = float(re.search(r"test/acc\W+([0-9.]+)", out).group(1))
    assert accuracy > 0.5  # two epochs on digits; chance is 0.1


def test_test_on_deploy_checkpoint(trained_run, capsys):
    path = find_checkpoint(trained_run / "repvgg" / "digits", "deploy")
    main(["test", "-c", CONFIG, "--trainer.default_root_dir", str(trained_run), "--ckpt_path", str(path), *QUIET])
    assert "test/acc" in capsys.readouterr().out


def test_fit_resumes_from_last(trained_run):
    main(["fit", "-c", CONFIG, "--trainer.default_root_dir", str(trained_run), "--trainer.max_epochs", "3", "--ckpt_path", "last", *QUIET])
    newest = find_checkpoint(trained_run / "repvgg" / "digits", "last")
    checkpoint = torch.load(newest, weights_only=True)
    # issue 18 item 4: a resume continues its run folder (this asserted `!= "version_0"`, a new version, before)
    assert newest.parent.parent.name == "version_0" and not (trained_run / "repvgg" / "digits" / "version_1").exists()
    assert checkpoint["epoch"] == 2  # resumed after epoch index 1 and trained exactly one more epoch
    assert checkpoint["global_step"] == 3 * 20  # 1257 training images / 64 per batch = 20 steps per epoch
    events = EventAccumulator(str(newest.parent.parent)).Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [19, 39, 59]  # one curve: the three epochs, in order


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_verifies_against_torch(trained_run, tmp_path, capsys, fmt):
    path = find_checkpoint(trained_run / "repvgg" / "digits", "deploy")
    output = tmp_path / f"model.{fmt}"
    main(["export", "--ckpt_path", str(path), "--format", fmt, "--output", str(output)])
    assert output.is_file() and output.stat().st_size > 10_000
    assert "max |exported - torch|" in capsys.readouterr().out


def test_int8_export_runs_and_matches_the_float_model(trained_run, tmp_path, capsys):
    """`litzoo export --format int8` of a training-time RepVGG checkpoint: fused, calibrated on 4 training
    batches, written as a torch.export program; on real test images it agrees with the float model
    (max difference <= 0.1 max|y|, checked by the command; top-1 agreement checked here)."""
    from litzoo.framework.export import sample_batch
    from litzoo.framework.quantization import load_int8

    path = find_checkpoint(trained_run / "repvgg" / "digits", "last")
    output = tmp_path / "m.int8.pt2"
    main(["export", "--ckpt_path", str(path), "--format", "int8", "--output", str(output), "--calibration_batches", "4", "--batch_size", "64"])
    assert "max |exported - torch|" in capsys.readouterr().out
    module, checkpoint = load_lightning_module(path)
    images = sample_batch(checkpoint, path, 64, None)
    with torch.no_grad():
        float_out, int8_out = module(images), load_int8(output)(images)
    assert (float_out.argmax(1) == int8_out.argmax(1)).float().mean() >= 0.95
    assert 0 < (float_out - int8_out).abs().max() <= 0.1 * float_out.abs().max()
    with pytest.raises(SystemExit):
        main(["export", "--ckpt_path", str(path), "--format", "int8", "--input_shape", "[1,16,16]"])
    assert "cannot calibrate" in capsys.readouterr().err.strip().splitlines()[-1]


def test_exported_onnx_has_no_branches_and_a_dynamic_batch(trained_run, tmp_path):
    import onnx
    import onnxruntime

    path = find_checkpoint(trained_run / "repvgg" / "digits", "last")  # training-time: export fuses it
    main(["export", "--ckpt_path", str(path), "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in ops and "Add" not in ops and "Conv" in ops
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert session.run(None, {"image": torch.randn(3, 1, 16, 16).numpy()})[0].shape == (3, 10)


def test_short_class_names(tmp_path):
    main([
        "fit", "--model", "RepVGGClassifier", "--data", "DigitsDataModule",
        "--model.num_classes", "10", "--model.in_channels", "1", "--model.num_blocks", "[1,1,1,1]",
        "--model.width_multiplier", "[0.125,0.125,0.125,0.0625]", "--model.stage_strides", "[1,1,2,2,2]",
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path), *QUIET,
    ])


def test_list_names_everything(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for name in ("RepVGGClassifier", "DigitsDataModule", "ImageFolderDataModule", "ReparamFusion", "StructuralReparam", "configs/repvgg/digits.yaml"):
        assert name in out
    assert "RepVGG image classifier" in out  # first docstring line
    assert "EvaluateDeployModel" not in out  # an abstract base, not something a config can use


def test_missing_best_checkpoint_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "best", *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("litzoo: error: --ckpt_path best: no checkpoint matches") and str(tmp_path) in err[-1]


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_bad_checkpoint_file_is_one_clear_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    for argv in (["test", "-c", CONFIG, "--ckpt_path", str(bad), *QUIET], ["export", "--ckpt_path", str(bad)]):
        with pytest.raises(SystemExit):
            main(argv)
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("litzoo: error: checkpoint") and str(bad) in last


def test_run_names():
    class RepVGGClassifier: ...
    class DigitsDataModule: ...
    assert run_name(RepVGGClassifier(), ("Classifier",)) == "repvgg"
    assert run_name(DigitsDataModule(), ("DataModule",)) == "digits"


def test_structural_reparam_run_has_its_own_folder_and_exports_the_fused_plain_model(tmp_path, capsys):
    config = "configs/dbb/digits.yaml"
    small = ["--model.init_args.width", "4", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1"]
    main(["fit", "-c", config, "--trainer.default_root_dir", str(tmp_path), *small, *QUIET])
    best = tmp_path / "resnet-dbb" / "digits" / "version_0" / "checkpoints" / "best.ckpt"
    assert best.is_file(), "runs of a StructuralReparam config go to runs/<model>-<block>/<data>"
    assert any(".branch_1x1_kxk." in k for k in torch.load(best, weights_only=True)["state_dict"]), "checkpoints hold the converted model (resumable)"
    main(["export", "--ckpt_path", str(best), "--format", "onnx"])
    assert "max |exported - torch|" in capsys.readouterr().out
    onnx_model = onnx.load(str(best.with_suffix(".onnx")))
    ops = {node.op_type for node in onnx_model.graph.node}
    assert "AveragePool" not in ops and "Pad" not in ops, "the exported model is the plain ResNet, without DBB branches"


def test_last_checkpoint_is_the_final_epoch_even_when_it_is_not_the_best(tmp_path):
    # lr 0: val/acc never improves after epoch 0, so only epoch 0 is "best"; Lightning's own
    # save_last would then leave last.ckpt at epoch 0 and `--ckpt_path last` would resume from it
    main(["fit", "-c", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
          "--model.init_args.optimizer.init_args.lr", "0", *QUIET])
    checkpoints = tmp_path / "repvgg" / "digits" / "version_0" / "checkpoints"
    assert torch.load(checkpoints / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 1
