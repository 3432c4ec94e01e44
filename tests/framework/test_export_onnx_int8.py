"""int8 for onnxruntime (issue 20 item 2): ``export_onnx_int8`` and ``litzoo export --format onnx-int8``.

A tiny RepVGG trained for three epochs on the digits, fused, quantized statically by onnxruntime (QDQ,
int8 per-channel weights) on training batches; checked on held-out digits against the float model and
litzoo's torch int8 model, with a negative control calibrated on all-zero batches."""

from __future__ import annotations

import collections
import copy

import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from torch.fx.experimental.optimization import fuse

from litzoo.cli import find_checkpoint, main
from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework import export
from litzoo.framework.errors import LitzooError
from litzoo.framework.export import (
    export_model,
    export_onnx_int8,
    export_onnx_int8_checked,
    exported_files,
    load_lightning_module,
    sample_batch,
)
from litzoo.framework.reparam import fuse_model, randomize_batchnorm
from litzoo.modules.repvgg import RepVGGClassifier
from litzoo.modules.resnet import ResNet

#: top-1 agreement of the int8 file with the float model (and with the torch int8 model) on held-out digits
MIN_AGREEMENT = 0.95


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def run(path, images: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": images.numpy()})[0])


@pytest.fixture(scope="module")
def digits():
    """(fused tiny RepVGG trained on the digits, 8 training batches, 128 held-out test images)."""
    torch.manual_seed(0)
    data = DigitsDataModule(batch_size=64, image_size=16)
    data.setup("fit")
    data.setup("test")
    module = RepVGGClassifier(
        variant="A0", num_classes=10, in_channels=1, num_blocks=[1, 2, 2, 1], width_multiplier=[0.25, 0.25, 0.25, 0.125], stage_strides=[1, 1, 2, 2, 2]
    )
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    module.train()
    for _ in range(3):
        for batch in data.train_dataloader():
            loss = torch.nn.functional.cross_entropy(module(batch["image"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    deploy = fuse_model(module).eval()
    calibration = [batch["image"] for _, batch in zip(range(8), data.train_dataloader(), strict=False)]
    test = torch.cat([batch["image"] for _, batch in zip(range(2), data.test_dataloader(), strict=False)])
    with torch.no_grad():
        accuracy = (deploy(test).argmax(1) == torch.cat([b["label"] for _, b in zip(range(2), data.test_dataloader(), strict=False)])).float().mean()
    assert accuracy > 0.8, "the float model must have learnt something for agreement to mean anything"
    return deploy, calibration, test


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    deploy, calibration, test = digits
    path = tmp_path_factory.mktemp("onnx_int8") / "model.int8.onnx"
    return export_onnx_int8_checked(deploy, calibration, path, test[:64])


def test_the_file_is_a_self_contained_qdq_model_with_per_channel_int8_weights(exported, digits):
    deploy, _, _ = digits
    path = exported.path
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left
    assert exported_files(path) == [path]
    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 5
    initializers = {t.name: t for t in model.graph.initializer}
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    convs = [m for m in deploy.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(int8_weights) == len(convs), "every conv kernel is stored in int8"
    assert not [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4], "no float kernel left"
    # per channel: the DequantizeLinear of each kernel has one scale per output channel
    kernels = [node for node in model.graph.node if node.op_type == "DequantizeLinear" and node.input[0] in {t.name for t in int8_weights}]
    assert len(kernels) == len(convs)
    for node in kernels:
        scale = numpy_helper.to_array(initializers[node.input[1]])
        assert scale.shape == (initializers[node.input[0]].dims[0],)


def test_onnxruntime_int8_agrees_with_the_float_and_the_torch_int8_model_on_held_out_digits(exported, digits):
    deploy, _, test = digits
    held_out = test[64:]  # not the verification batch
    with torch.no_grad():
        expected = deploy(held_out)
    actual = run(exported.path, held_out)
    agreement = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    assert agreement >= MIN_AGREEMENT
    assert 0 < (actual - expected).abs().max() <= 0.1 * expected.abs().max()  # int8, not the float model
    # the figures the export reports
    assert exported.images == 64 and exported.top1_agreement >= MIN_AGREEMENT and 0 < exported.max_abs_error <= exported.allowed
    assert exported.torch_int8_top1_agreement is not None and exported.torch_int8_top1_agreement >= MIN_AGREEMENT
    assert exported.torch_int8_max_abs_difference <= 0.1 * expected.abs().max()
    assert "top-1 agreement" in exported.summary() and "torch int8" in exported.summary()


def test_wrong_calibration_disagrees_more_and_the_default_tolerance_refuses_it(exported, digits, tmp_path):
    """Negative control: all-zero calibration batches give activation ranges that clip every real image."""
    deploy, calibration, test = digits
    zeros = [torch.zeros_like(batch) for batch in calibration]
    output = tmp_path / "zeros.int8.onnx"
    with pytest.raises(LitzooError, match="differs from the float torch model") as excinfo:
        export_onnx_int8(deploy, zeros, output, test[:64])
    one_line(excinfo)
    assert not output.exists() and not list(tmp_path.iterdir())
    bad = export_onnx_int8_checked(deploy, zeros, output, test[:64], atol=1e3, compare_torch_int8=False)
    assert bad.top1_agreement < exported.top1_agreement - 0.3
    assert bad.max_abs_error > 3 * exported.max_abs_error


def test_export_onnx_int8_returns_the_path_and_export_model_knows_the_format(digits, tmp_path):
    deploy, calibration, test = digits
    path = export_onnx_int8(deploy, calibration[:2], tmp_path / "a.onnx", compare_torch_int8=False)
    assert path == tmp_path / "a.onnx" and path.is_file()
    error = export_model(deploy, test[:16], tmp_path / "b.onnx", "onnx-int8", atol=0.1, calibration=calibration[:2])
    assert 0 < error <= 0.1 * deploy(test[:16]).abs().max().item()


def test_no_calibration_data_and_nan_weights_are_refused_before_export(digits, tmp_path, monkeypatch):
    deploy, calibration, test = digits
    output = tmp_path / "m.int8.onnx"

    def no_export(*args, **kwargs):
        raise AssertionError("the float ONNX export must not start")

    monkeypatch.setattr(export, "_export_onnx", no_export)
    with pytest.raises(LitzooError, match="no calibration batch") as excinfo:
        export_onnx_int8(deploy, [], output, test[:8])
    one_line(excinfo)
    with pytest.raises(LitzooError, match="needs calibration batches") as excinfo:
        export_model(deploy, test[:8], output, "onnx-int8")
    one_line(excinfo)
    diverged = fuse_model(deploy).eval()  # a copy
    with torch.no_grad():
        next(m for m in diverged.modules() if isinstance(m, torch.nn.Conv2d)).weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(LitzooError, match=r"1 tensors of the model are not finite \(first: '.*weight'\); nothing written") as excinfo:
        export_onnx_int8(diverged, calibration, output, test[:8])
    one_line(excinfo)
    assert not list(tmp_path.iterdir())


def onnxruntime_kernels(path, folder) -> collections.Counter:
    """Node types onnxruntime runs for ``path`` (its CPU graph after the QDQ fusions)."""
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{path.stem}.optimized.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_the_default_uint8_activations_run_every_conv_and_residual_addition_of_a_resnet_in_int8(tmp_path):
    """Why ``activation_type`` defaults to uint8: with int8 (S8S8) activations onnxruntime leaves the QDQ residual
    additions, and the convs feeding them, in float (a ResNet-18 at 224x224 then runs at 1.0x its float latency,
    ``benchmarks/deploy_speed.py``); with uint8 every conv becomes a ``QLinearConv`` and every addition a ``QLinearAdd``."""
    torch.manual_seed(0)
    resnet = randomize_batchnorm(ResNet(depth=18, num_classes=10, in_channels=1, stem="cifar", width=8).eval(), seed=0)
    deploy = fuse(copy.deepcopy(resnet))  # BatchNorms folded, as a deploy model
    calibration = [torch.randn(8, 1, 16, 16) for _ in range(4)]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in deploy.modules())
    kernels = {}
    for activation in ("uint8", "int8"):
        path = tmp_path / f"{activation}.onnx"
        check = export_onnx_int8_checked(deploy, calibration, path, torch.randn(8, 1, 16, 16), atol=0.5, activation_type=activation)
        assert check.torch_int8_top1_agreement is not None
        kernels[activation] = onnxruntime_kernels(path, tmp_path)
    assert kernels["uint8"]["QLinearConv"] == convs and kernels["uint8"]["QLinearAdd"] == 8  # 8 basic blocks
    assert kernels["uint8"]["Conv"] + kernels["uint8"]["FusedConv"] == 0
    # the negative control: S8S8 leaves convs in float
    assert kernels["int8"]["QLinearConv"] < convs and kernels["int8"]["QLinearAdd"] < 8
    with pytest.raises(LitzooError, match="activation_type must be int8 or uint8") as excinfo:
        export_onnx_int8(deploy, calibration, tmp_path / "x.onnx", activation_type="int4")
    one_line(excinfo)


# ---------------------------------------------------------------- the command, end to end on a checkpoint
CONFIG = "configs/repvgg/digits.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    main(["fit", "-c", CONFIG, "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"])
    return find_checkpoint(root / "repvgg" / "digits", "last")  # training-time: the export fuses it


def test_cli_exports_a_verified_onnx_int8_file(checkpoint, tmp_path, capsys):
    output = tmp_path / "m.int8.onnx"
    main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx-int8", "--output", str(output), "--calibration_batches", "4", "--batch_size", "64"])
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"exported onnx-int8 to {output};") and "vs torch int8: top-1 agreement" in out and "on 64 images" in out
    reported = float(out.split("vs float torch: top-1 agreement ")[1].split(",")[0])
    module, ckpt = load_lightning_module(checkpoint)
    images = sample_batch(ckpt, checkpoint, 64, None)
    with torch.no_grad():
        expected = module(images)
    actual = run(output, images)
    agreement = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    assert agreement == pytest.approx(reported, abs=1e-3) and agreement >= 0.9
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(output)).graph.node}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input_shape", "[1,16,16]"], "cannot calibrate"),
        (["--calibration_batches", "0"], "at least 1 training batch"),
        (["--format", "onnx-int9"], "invalid choice"),
    ],
)
def test_cli_errors_are_one_line(checkpoint, tmp_path, capsys, extra, message):
    argv = ["export", "--ckpt_path", str(checkpoint), "--format", "onnx-int8", "--output", str(tmp_path / "m.onnx"), *extra]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not (tmp_path / "m.onnx").exists()
