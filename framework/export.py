"""Export of the deploy model to ONNX, TorchScript or int8, verified against torch on a real batch.

A checkpoint is data: it is read with ``weights_only=True``, and the LightningModule / LightningDataModule
it names is rebuilt only when it is a class litzoo trusts (its own, already imported, or registered with
:func:`litzoo.framework.checkpoints.register_checkpoint_class`); nothing else a checkpoint names is imported or called.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, state_dict_from, trusted_class
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.deploy import restore_deploy_structure
from litzoo.framework.errors import LitzooError
from litzoo.framework.pruning import compacted_layers, compactors_in, insert_compactors, prune_compacted
from litzoo.framework.reparam import fuse_model
from litzoo.framework.reparam.convert import converted_layers_in, fuse_branches, reconvert
from litzoo.framework.verification import check_finite, compare_outputs, max_abs_difference, non_finite_tensors

FORMATS = ("onnx", "torchscript", "int8", "onnx-int8")
#: default allowed max abs difference (relative to max(1, max|y|)) per format: int8 is an approximation
DEFAULT_ATOL = {"onnx": 1e-4, "torchscript": 1e-4, "int8": 0.1, "onnx-int8": 0.1}
#: the file each format writes next to the checkpoint by default
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "int8": ".int8.pt2", "onnx-int8": ".int8.onnx"}


def _nested_class_path(value: Any) -> str | None:
    """The first ``{"class_path": ...}`` inside a hyper-parameter value, or ``None``."""
    if isinstance(value, Mapping):
        if "class_path" in value:
            return str(value["class_path"])
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _nested_class_path(item)
            if found is not None:
                return found
    return None


def _instantiate(hparams: Any, path: Path, what: str, base: type) -> Any:
    if not isinstance(hparams, Mapping) or "_class_path" not in hparams:
        raise LitzooError(f"checkpoint '{path}' does not record its {what} class; it was not written by `litzoo fit`")
    cls = trusted_class(hparams["_class_path"], base, path, what)
    kwargs = {k: v for k, v in hparams.items() if not (isinstance(k, str) and k.startswith("_"))}
    for key, value in kwargs.items():
        # objects built from a config ({"class_path": ..., "init_args": ...}) are not rebuilt from a checkpoint
        nested = _nested_class_path(value)
        if nested is not None:
            raise LitzooError(
                f"checkpoint '{path}': {what} hyper-parameter '{key}' names class '{nested}'; classes nested in hyper-parameters are not instantiated"
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise LitzooError(f"checkpoint '{path}': cannot rebuild {cls.__name__} from its saved hyper-parameters: {error}") from None


def load_lightning_module(path: str | Path) -> tuple[L.LightningModule, dict[str, Any]]:
    """Rebuild the LightningModule saved in a ``litzoo fit`` checkpoint (training-time or deploy).

    A checkpoint of a model converted by ``StructuralReparam`` is loaded into the converted
    structure and fused back, giving the model's own architecture. A pruned checkpoint
    (``ResRepPruning``'s ``pruned.ckpt``) gets its recorded layer shapes first; a checkpoint of a
    ResRep compactor model is loaded with its compactors (:func:`litzoo.framework.pruning.prune_compacted`
    removes the channels given example inputs; :func:`export_checkpoint` does).

    Returns the module in eval mode and the loaded checkpoint dict.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    module = _instantiate(checkpoint.get("hyper_parameters"), path, "model", L.LightningModule)
    restore_deploy_structure(module, checkpoint, path)  # deploy weights: fused / pruned structure first
    state = state_dict_from(checkpoint, path)
    if any("activation_post_process" in key for key in state):
        raise LitzooError(
            f"checkpoint '{path}' holds a fake-quantized graph (trained with Quantization(mode='qat')); "
            "its int8 model is the int8.pt2 written next to it at the end of fit"
        )
    insert_compactors(module, compactors_in(state))  # trained with ResRepPruning, not yet pruned
    # trained with StructuralReparam: the weights are those of the converted blocks
    converted = converted_layers_in(module, state)
    reconvert(module, converted)
    load_state_dict_checked(module, state, path)
    fuse_branches(module, converted)
    return module.eval(), checkpoint


def sample_batch(checkpoint: dict[str, Any], path: Path, batch_size: int, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """Inputs to verify the export on: the checkpoint's own datamodule's test images, or random ones."""
    if input_shape is not None:
        return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    datamodule = _instantiate(checkpoint.get("datamodule_hyper_parameters"), path, "datamodule", L.LightningDataModule)
    datamodule.setup("test")
    images = next(iter(datamodule.test_dataloader()))["image"]
    return images[:batch_size]


def calibration_batches(checkpoint: dict[str, Any], path: Path, num_batches: int) -> list[torch.Tensor]:
    """``num_batches`` training images of the checkpoint's own datamodule (for int8 calibration)."""
    datamodule = _instantiate(checkpoint.get("datamodule_hyper_parameters"), path, "datamodule", L.LightningDataModule)
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch["image"] if isinstance(batch, dict) else batch[0])
        if len(batches) == num_batches:
            break
    return batches


def export_model(
    model: nn.Module,
    inputs: torch.Tensor,
    output: str | Path,
    fmt: str,
    atol: float = 1e-4,
    calibration: list[torch.Tensor] | None = None,
) -> float:
    """Write ``model`` (eval mode) to ``output`` and return the max abs difference to torch on ``inputs``.

    ``fmt="int8"`` quantizes ``model`` after training (x86 int8 defaults of
    ``litzoo.framework.quantization``), calibrated on ``calibration``, and writes a ``torch.export`` program.
    ``fmt="onnx-int8"`` writes a QDQ int8 ONNX file calibrated on ``calibration`` (:func:`export_onnx_int8`).
    ``fmt="onnx"`` writes one self-contained file while the weights fit ONNX's 2 GB limit, and the
    weights beside it (``<output>.data``) beyond; :func:`exported_files` lists what a file needs.

    Raises:
        LitzooError: unknown format; the torch model's outputs on ``inputs`` are not finite (nothing is
            written); the exported model's outputs are not finite or disagree beyond ``atol * max(1, max|y|)``.
    """
    if fmt not in FORMATS:
        raise LitzooError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    output = Path(output)
    model = model.eval()
    with torch.no_grad():
        expected = model(inputs)
    # a diverged model would "verify" (NaN differences pass any tolerance): refuse it before writing
    check_finite(expected, f"export to '{output}': the torch model's outputs on the verification batch", "nothing written")
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx-int8":
        if not calibration:
            raise LitzooError(f"export to '{output}': onnx-int8 needs calibration batches; nothing written")
        return export_onnx_int8_checked(model, calibration, output, inputs, atol=atol).max_abs_error
    if fmt == "onnx":
        actual = _export_onnx(model, inputs, output)
    elif fmt == "int8":
        actual = _export_int8(model, inputs, output, calibration or [inputs])
    else:
        actual = _export_torchscript(model, inputs, output)
    error, _ = compare_outputs(expected, actual, atol, f"exported model '{output}'", "torch")
    return error


def exported_files(output: str | Path) -> list[Path]:
    """The files an exported model consists of: ``output`` first, then the external data files it references.

    An ONNX file may keep its weights in other files (``torch.onnx`` does above 2 GB); a copy of the
    model file alone does not load. TorchScript and int8 (``.pt2``) exports are one file each.
    """
    output = Path(output)
    files = [output]
    if output.suffix == ".onnx":
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        proto = onnx.load(str(output), load_external_data=False)
        tensors = list(proto.graph.initializer)
        tensors += [a.t for node in proto.graph.node for a in node.attribute if a.HasField("t")]
        for tensor in tensors:
            if uses_external_data(tensor):
                location = output.parent / ExternalDataInfo(tensor).location
                if location not in files:
                    files.append(location)
    return files


def _export_onnx(model: nn.Module, inputs: torch.Tensor, output: Path) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError:
        raise LitzooError("ONNX export needs the export extra: pip install 'litzoo[export]'") from None
    # the batch dimension stays dynamic so the file serves any batch size; external_data=False keeps the
    # weights inside the file (one file to copy) unless they exceed ONNX's 2 GB limit, where torch
    # writes them beside it
    torch.onnx.export(model, (inputs,), str(output), input_names=["image"], output_names=["output"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False, external_data=False)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"image": inputs.numpy()})
    return torch.from_numpy(result)


def _export_int8(model: nn.Module, inputs: torch.Tensor, output: Path, calibration: list[torch.Tensor]) -> torch.Tensor:
    from litzoo.framework.quantization import load_int8, quantization_config, quantize_ptq, save_int8

    save_int8(quantize_ptq(model, calibration, quantization_config()), inputs, output)
    with torch.no_grad():
        return load_int8(output)(inputs)


def _export_torchscript(model: nn.Module, inputs: torch.Tensor, output: Path) -> torch.Tensor:
    if isinstance(model, L.LightningModule):
        traced = model.to_torchscript(method="trace", example_inputs=inputs)  # guards Lightning-only attributes
    else:
        traced = torch.jit.trace(model, inputs)
    traced.save(str(output))
    loaded = torch.jit.load(str(output))
    with torch.no_grad():
        return loaded(inputs)


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    batch_size: int = 8,
    input_shape: tuple[int, ...] | None = None,
    atol: float | None = None,
    calibration_batches_count: int = 32,
) -> tuple[Path, float]:
    """Load a ``litzoo fit`` checkpoint, fuse it, export it, verify it. Returns (file, max abs error).

    The checkpoint is read with ``weights_only=True`` and only the classes :func:`litzoo.framework.checkpoints.trusted_class`
    describes are rebuilt from it. Every file written is ``exported_files(file)`` (an ONNX model above
    2 GB keeps its weights beside it). ``fmt="int8"`` calibrates on ``calibration_batches_count`` batches of the checkpoint's training
    data; ``atol`` defaults to the format's (:data:`DEFAULT_ATOL`).
    """
    if fmt not in FORMATS:
        raise LitzooError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    if fmt in ("int8", "onnx-int8") and input_shape is not None:
        raise LitzooError("int8 export calibrates on the checkpoint's training data; random inputs (--input_shape) cannot calibrate it")
    deploy, inputs, calibration, output = _checkpoint_deploy_model(ckpt_path, fmt, output, batch_size, input_shape, calibration_batches_count)
    error = export_model(deploy, inputs, output, fmt, atol=DEFAULT_ATOL[fmt] if atol is None else atol, calibration=calibration)
    return output, error


def _checkpoint_deploy_model(
    ckpt_path: str | Path, fmt: str, output: str | Path | None, batch_size: int, input_shape: tuple[int, ...] | None, calibration_count: int
) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor] | None, Path]:
    """The fused deploy model of a checkpoint, its verification batch, its calibration batches (int8 formats) and the output path."""
    ckpt_path = Path(ckpt_path)
    module, checkpoint = load_lightning_module(ckpt_path)
    inputs = sample_batch(checkpoint, ckpt_path, batch_size, input_shape)
    if compacted_layers(module):  # a ResRep compactor model: fold (and fuse) it, remove its masked channels
        prune_compacted(module, inputs)
    deploy = fuse_model(module).eval()
    calibration = None
    if fmt in ("int8", "onnx-int8"):
        if calibration_count < 1:  # calibration_batches(..., 0) would read the whole training set
            raise LitzooError(f"{fmt} export calibrates on at least 1 training batch, got {calibration_count} calibration batches")
        calibration = calibration_batches(checkpoint, ckpt_path, calibration_count)
        if not calibration:
            raise LitzooError(f"checkpoint '{ckpt_path}': its datamodule gave no training batch to calibrate int8 on")
    output = Path(output) if output is not None else ckpt_path.with_suffix(SUFFIXES[fmt])
    return deploy, inputs, calibration, output


def export_checkpoint_onnx_int8(
    ckpt_path: str | Path,
    output: str | Path | None = None,
    batch_size: int = 8,
    atol: float | None = None,
    calibration_batches_count: int = 32,
) -> OnnxInt8Check:
    """:func:`export_checkpoint` with ``fmt="onnx-int8"``, returning every verification figure (:class:`OnnxInt8Check`)."""
    deploy, inputs, calibration, output = _checkpoint_deploy_model(ckpt_path, "onnx-int8", output, batch_size, None, calibration_batches_count)
    return export_onnx_int8_checked(deploy, calibration or [], output, inputs, atol=DEFAULT_ATOL["onnx-int8"] if atol is None else atol)


# ---------------------------------------------------------------- int8 for onnxruntime (QDQ, onnxruntime's own quantizer)
@dataclass(frozen=True)
class OnnxInt8Check:
    """What :func:`export_onnx_int8_checked` wrote and measured on the verification batch.

    ``max_abs_error`` / ``top1_agreement`` compare the int8 ONNX (run by onnxruntime) with the float torch
    model; ``torch_int8_*`` compare it with litzoo's torch int8 model (:func:`litzoo.framework.quantization.quantize_ptq`
    calibrated on the same batches), ``None`` where that model could not be built (``torch_int8_note`` says why).
    """

    path: Path
    images: int
    max_abs_error: float
    allowed: float
    top1_agreement: float
    torch_int8_max_abs_difference: float | None
    torch_int8_top1_agreement: float | None
    torch_int8_note: str = ""

    def summary(self) -> str:
        text = f"vs float torch: top-1 agreement {self.top1_agreement:.3f}, max |int8 - float| = {self.max_abs_error:.3g} (allowed {self.allowed:.3g})"
        if self.torch_int8_top1_agreement is not None:
            text += f"; vs torch int8: top-1 agreement {self.torch_int8_top1_agreement:.3f}, max |difference| = {self.torch_int8_max_abs_difference:.3g}"
        elif self.torch_int8_note:
            text += f"; torch int8 not compared ({self.torch_int8_note})"
        return text + f"; on {self.images} images"


def _top1_agreement(reference: torch.Tensor, actual: torch.Tensor) -> float:
    if reference.ndim < 2:
        return math.nan
    return (reference.argmax(1) == actual.argmax(1)).float().mean().item()


def _onnxruntime():
    try:
        import onnxruntime
        from onnxruntime import quantization
    except ImportError:
        raise LitzooError("ONNX export needs the export extra: pip install 'litzoo[export]'") from None
    return onnxruntime, quantization


def _run_onnx(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    onnxruntime, _ = _onnxruntime()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"image": inputs.numpy()})
    return torch.from_numpy(result)


def export_onnx_int8(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    path: str | Path,
    inputs: torch.Tensor | None = None,
    **options: Any,
) -> Path:
    """Write ``model`` (the deploy model) as a static QDQ int8 ONNX file, calibrated on ``calibration_batches``.

    See :func:`export_onnx_int8_checked` (same arguments), which also returns the verification figures.
    """
    return export_onnx_int8_checked(model, calibration_batches, path, inputs, **options).path


def export_onnx_int8_checked(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    path: str | Path,
    inputs: torch.Tensor | None = None,
    atol: float = DEFAULT_ATOL["onnx-int8"],
    activation_type: str = "uint8",
    calibrate_method: str = "minmax",
    compare_torch_int8: bool = True,
) -> OnnxInt8Check:
    """Export ``model`` to float ONNX, quantize it with onnxruntime's own tooling, verify it, write it whole.

    The float file is :func:`export_model`'s ONNX export (checked against torch), run through
    ``onnxruntime.quantization.quant_pre_process`` (shape inference, graph optimisation) and
    ``quantize_static`` in the QDQ format: int8 symmetric weights per output channel, ``activation_type``
    activations per tensor, whose ranges ``calibrate_method`` (``"minmax"``, ``"entropy"`` or
    ``"percentile"``) takes from ``calibration_batches`` (the training batches the PTQ callback and
    ``--format int8`` calibrate on). ``"uint8"`` (U8S8, the default) is the torch x86 grid and what x86
    integer kernels multiply natively; ``"int8"`` (S8S8) is ``quantize_static``'s own default, with which
    onnxruntime (1.32) keeps a residual addition's QDQ nodes in float and runs the convs around it in
    float too: a ResNet-18's int8 file then runs at 1.0x the float one, and 0.38x with U8S8
    (``benchmarks/deploy_speed.py``).

    The quantized file is run by onnxruntime on ``inputs`` (default: the first calibration batch; pass
    held-out images) and compared with the float model (top-1 agreement, max abs difference within
    ``atol * max(1, max|y|)``) and, with ``compare_torch_int8``, with the torch int8 model of
    :func:`litzoo.framework.quantization.quantize_ptq` calibrated on the same batches. Only a verified file
    is renamed onto ``path``; a failure leaves the previous file, if any.

    Raises:
        LitzooError: no calibration batch; the model has non-finite weights or outputs (nothing written);
            the int8 file's outputs are not finite or differ beyond the tolerance.
    """
    _, quantization = _onnxruntime()
    path = Path(path)
    model = model.eval()
    batches = [batch.detach().float().cpu() for batch in calibration_batches]
    if not batches:
        raise LitzooError(f"onnx-int8 export to '{path}': no calibration batch; nothing written")
    bad = non_finite_tensors(list(model.named_parameters()) + list(model.named_buffers()))
    if bad:
        raise LitzooError(f"onnx-int8 export to '{path}': {len(bad)} tensors of the model are not finite (first: '{bad[0]}'); nothing written")
    inputs = batches[0] if inputs is None else inputs.detach().float().cpu()
    with torch.no_grad():
        expected = model(inputs)
    check_finite(expected, f"onnx-int8 export to '{path}': the torch model's outputs on the verification batch", "nothing written")
    activation = {"int8": quantization.QuantType.QInt8, "uint8": quantization.QuantType.QUInt8}.get(activation_type)
    method = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}.get(calibrate_method)
    if activation is None or method is None:
        raise LitzooError(f"onnx-int8 export: activation_type must be int8 or uint8 and calibrate_method minmax, entropy or percentile, got {activation_type!r}, {calibrate_method!r}")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch.numpy()}

    with tempfile.TemporaryDirectory(prefix="litzoo-onnx-int8-") as folder:
        float_path, prepared_path = Path(folder) / "float.onnx", Path(folder) / "prepared.onnx"
        compare_outputs(expected, _export_onnx(model, inputs, float_path), 1e-4, f"float ONNX of '{path}'", "torch")
        quantization.quant_pre_process(str(float_path), str(prepared_path))
        with write_files_atomically(path) as (staged,):
            quantization.quantize_static(
                str(prepared_path), str(staged), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=activation, weight_type=quantization.QuantType.QInt8,
                calibrate_method=getattr(quantization.CalibrationMethod, method),
            )  # fmt: skip
            actual = _run_onnx(staged, inputs)
            error, allowed = compare_outputs(expected, actual, atol, f"int8 ONNX '{path}'", "the float torch model")
            torch_error = torch_top1 = None
            note = ""
            if compare_torch_int8:
                torch_int8 = _torch_int8_outputs(model, batches, inputs)
                if isinstance(torch_int8, str):
                    note = torch_int8
                else:
                    torch_error, torch_top1 = max_abs_difference(torch_int8, actual), _top1_agreement(torch_int8, actual)
    return OnnxInt8Check(path, len(inputs), error, allowed, _top1_agreement(expected, actual), torch_error, torch_top1, note)


def _torch_int8_outputs(model: nn.Module, batches: list[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor | str:
    """The torch int8 model's outputs on ``inputs`` (PTQ on the same batches), or why it could not be built."""
    from litzoo.framework.quantization import quantization_config, quantize_ptq

    try:
        int8 = quantize_ptq(model, batches, quantization_config())
        with torch.no_grad():
            return int8(inputs)
    except Exception as error:  # noqa: BLE001 - a model torch.export cannot capture still gets its ONNX int8 file
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
