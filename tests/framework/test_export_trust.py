"""What `litzoo export` trusts (issue 18): a checkpoint is data, never code; non-finite outputs fail the
verification; an ONNX export is one self-contained file and every file written is named."""

from __future__ import annotations

import sys

import lightning as L
import onnxruntime
import pytest
import torch
from torch import nn
from user_models import UserClassifier, loader

from litzoo.framework.checkpoints import register_checkpoint_class
from litzoo.framework.deploy import check_deploy_filename, save_deploy_checkpoint
from litzoo.framework.errors import LitzooError
from litzoo.framework.export import (
    calibration_batches,
    export_checkpoint,
    export_model,
    exported_files,
    load_lightning_module,
    sample_batch,
)
from litzoo.framework.quantization import quantization_config, quantize_ptq


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------- item 1: a checkpoint runs no code
def crafted(tmp_path, hyper_parameters, **extra):
    """A checkpoint holding only strings, lists and dicts: it passes ``weights_only=True``."""
    path = tmp_path / "crafted.ckpt"
    torch.save({"hyper_parameters": hyper_parameters, "state_dict": {}, **extra}, path)
    return path


def attacks(marker):
    """Class paths that, called with the checkpoint's values, would create ``marker``."""
    return [
        {"_class_path": "subprocess.Popen", "args": ["touch", str(marker)]},
        {"_class_path": "os.system", "command": f"touch {marker}"},
        {"_class_path": "subprocess.run", "args": ["touch", str(marker)]},
        {"_class_path": "builtins.exec", "source": f"open({str(marker)!r}, 'w').close()"},
        {"_class_path": "torch.os.system", "command": f"touch {marker}"},
    ]


@pytest.mark.parametrize("index", range(5))
def test_a_crafted_model_class_path_runs_nothing(tmp_path, index):
    marker = tmp_path / "pwned"
    path = crafted(tmp_path, attacks(marker)[index])
    with pytest.raises(LitzooError) as excinfo:
        export_checkpoint(path, "onnx", tmp_path / "m.onnx", input_shape=(1, 12, 12))
    text = one_line(excinfo)
    assert str(path) in text and attacks(marker)[index]["_class_path"] in text
    assert not marker.exists()


def test_a_class_path_outside_litzoo_is_refused_before_its_module_is_imported(tmp_path, monkeypatch):
    """Importing a module runs its code: a path to a module not yet imported is refused on the string."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_module_issue18.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = crafted(tmp_path, {"_class_path": "evil_module_issue18.Model"})
    with pytest.raises(LitzooError, match="does not import or call"):
        load_lightning_module(path)
    assert not marker.exists() and "evil_module_issue18" not in sys.modules


@pytest.mark.parametrize(
    ("class_path", "reason"),
    [
        ("litzoo.modules.repvgg.RepVGG", "not a LightningModule"),  # litzoo's, an nn.Module
        ("litzoo.framework.errors.LitzooError", "does not import or call"),  # litzoo's, not a room with Lightning classes
        ("litzoo.datamodules.digits.DigitsDataModule", "not a LightningModule"),  # a DataModule where a model belongs
        ("litzoo.modules.repvgg.nn", "not a LightningModule"),  # a module imported by a trusted file
        ("litzoo.modules.no_such_file.Model", "cannot be imported"),
        ("os.system; touch x", "not a class path"),
    ],
)
def test_only_lightning_classes_of_litzoo_are_rebuilt(tmp_path, class_path, reason):
    path = crafted(tmp_path, {"_class_path": class_path})
    with pytest.raises(LitzooError, match=reason) as excinfo:
        load_lightning_module(path)
    assert str(path) in one_line(excinfo)


def test_the_datamodule_entry_is_checked_the_same_way(tmp_path):
    marker = tmp_path / "pwned"
    for attack in attacks(marker):
        path = crafted(tmp_path, {}, datamodule_hyper_parameters=attack)
        checkpoint = torch.load(path, weights_only=True)
        with pytest.raises(LitzooError, match="datamodule class") as excinfo:
            sample_batch(checkpoint, path, 2, None)
        one_line(excinfo)
        with pytest.raises(LitzooError, match="datamodule class") as excinfo:
            calibration_batches(checkpoint, path, 1)
        one_line(excinfo)
    # a LightningModule where a datamodule belongs
    checkpoint = {"datamodule_hyper_parameters": {"_class_path": "litzoo.modules.repvgg.RepVGGClassifier"}}
    with pytest.raises(LitzooError, match="not a LightningDataModule"):
        sample_batch(checkpoint, tmp_path / "x.ckpt", 2, None)
    assert not marker.exists()


def test_class_paths_nested_in_hyper_parameters_are_not_instantiated(tmp_path):
    marker = tmp_path / "pwned"
    nested = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}
    path = crafted(tmp_path, {"_class_path": "litzoo.modules.repvgg.RepVGGClassifier", "variant": "A0", "extra": [1, {"x": nested}]})
    with pytest.raises(LitzooError, match=r"hyper-parameter 'extra' names class 'subprocess.Popen'") as excinfo:
        load_lightning_module(path)
    one_line(excinfo)
    assert not marker.exists()


class NotImportedModule(L.LightningModule):
    """A user's LightningModule whose module is not imported in the loading process (as in `litzoo export`)."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 2)

    def forward(self, x):
        return self.layer(x)


NotImportedModule.__module__ = "user_package_not_imported_issue18"


def test_a_registered_user_class_is_rebuilt(tmp_path):
    module = NotImportedModule(width=4)
    path = tmp_path / "user.ckpt"
    class_path = "user_package_not_imported_issue18.NotImportedModule"
    torch.save({"hyper_parameters": {"_class_path": class_path, "width": 4}, "state_dict": module.state_dict()}, path)
    with pytest.raises(LitzooError, match="register_checkpoint_class"):
        load_lightning_module(path)
    with pytest.raises(TypeError):
        register_checkpoint_class(nn.Linear)
    assert register_checkpoint_class(NotImportedModule) is NotImportedModule
    loaded, _ = load_lightning_module(path)
    assert isinstance(loaded, NotImportedModule) and loaded.hparams.width == 4
    assert torch.equal(loaded.layer.weight, module.layer.weight)


# ---------------------------------------------------------------- item 3: deploy files stay in the run's folder
@pytest.mark.parametrize("name", ["../deploy.ckpt", "/tmp/deploy.ckpt", "sub/deploy.ckpt", "..", ".", "", "a\\b.ckpt", "C:x.ckpt"])
def test_deploy_file_names_must_be_plain(name):
    with pytest.raises(ValueError, match="plain file name") as excinfo:
        check_deploy_filename(name, "Test")
    one_line(excinfo)


def test_save_deploy_checkpoint_refuses_an_escaping_name_and_non_finite_weights(tmp_path):
    check_deploy_filename("deploy.ckpt", "Test")
    check_deploy_filename(None, "Test")
    module = UserClassifier("resnet")
    trainer = L.Trainer(max_steps=1, default_root_dir=tmp_path / "run", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader())
    with pytest.raises(ValueError, match="plain file name"):
        save_deploy_checkpoint(trainer, "../../escaped.ckpt", "Test")
    assert not list(tmp_path.rglob("escaped.ckpt"))
    with torch.no_grad():
        module.net.head.weight[0, 0] = float("nan")
    with pytest.raises(LitzooError, match=r"Test: 1 tensors of the model are not finite \(first: 'net.head.weight'\)") as excinfo:
        save_deploy_checkpoint(trainer, "deploy.ckpt", "Test")
    one_line(excinfo)
    assert not list(tmp_path.rglob("deploy.ckpt"))


# ---------------------------------------------------------------- item 9: non-finite outputs fail the export check
def nan_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).eval()
    with torch.no_grad():
        model[3].weight[1, 5] = float("nan")
    return model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "int8"])
def test_export_refuses_a_model_with_nan_outputs_and_writes_nothing(tmp_path, fmt):
    output = tmp_path / f"m.{fmt}"
    with pytest.raises(LitzooError, match="not finite") as excinfo:
        export_model(nan_model(), torch.randn(4, 1, 12, 12), output, fmt, calibration=[torch.randn(4, 1, 12, 12)])
    assert "NaN" in one_line(excinfo)
    assert not output.exists()


def test_int8_calibration_refuses_nan_outputs():
    with pytest.raises(LitzooError, match="calibration batch are not finite") as excinfo:
        quantize_ptq(nan_model(), [torch.randn(4, 1, 12, 12)], quantization_config())
    one_line(excinfo)


def test_export_refuses_an_exported_model_whose_outputs_are_not_finite(tmp_path, monkeypatch):
    """The torch model is fine, the exported file computes NaN (a broken exporter): not "verified"."""
    from litzoo.framework import export

    monkeypatch.setattr(export, "_export_torchscript", lambda model, inputs, output: torch.full((4, 3), float("nan")))
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3)).eval()
    with pytest.raises(LitzooError, match=r"exported model '.*m.pt': its outputs are not finite \(12 NaN of 12 values\)") as excinfo:
        export_model(model, torch.randn(4, 1, 12, 12), tmp_path / "m.pt", "torchscript")
    one_line(excinfo)


# ---------------------------------------------------------------- item 12: one ONNX file, every file named
def test_onnx_export_is_one_self_contained_file(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).eval()
    x = torch.randn(4, 1, 12, 12)
    output = tmp_path / "out" / "m.onnx"
    error = export_model(model, x, output, "onnx")
    assert error < 1e-4
    assert sorted(p.name for p in output.parent.iterdir()) == ["m.onnx"]
    assert exported_files(output) == [output]
    moved = tmp_path / "elsewhere.onnx"  # the file alone is the model
    moved.write_bytes(output.read_bytes())
    output.unlink()
    (result,) = onnxruntime.InferenceSession(str(moved), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(result), model(x).detach(), atol=1e-5, rtol=1e-5)


def test_exported_files_names_external_weights(tmp_path):
    """Above 2 GB torch writes the weights beside the model: the listing names that file too."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 3)).eval()
    output = tmp_path / "big.onnx"
    torch.onnx.export(model, (torch.randn(2, 1, 12, 12),), str(output), dynamo=True, external_data=True, verbose=False)
    assert exported_files(output) == [output, tmp_path / "big.onnx.data"]
    assert exported_files(tmp_path / "m.pt") == [tmp_path / "m.pt"]
