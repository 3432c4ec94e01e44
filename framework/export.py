"""Export of the deploy model to ONNX, TorchScript or int8, verified against torch on a real batch.

A checkpoint is data: it is read with ``weights_only=True``, and the LightningModule / LightningDataModule
it names is rebuilt only when it is a class litzoo trusts (its own, already imported, or registered with
:func:`litzoo.framework.checkpoints.register_checkpoint_class`); nothing else a checkpoint names is imported or called.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, state_dict_from, trusted_class
from litzoo.framework.deploy import restore_deploy_structure
from litzoo.framework.errors import LitzooError
from litzoo.framework.pruning import compacted_layers, compactors_in, insert_compactors, prune_compacted
from litzoo.framework.reparam import fuse_model
from litzoo.framework.reparam.convert import converted_layers_in, fuse_branches, reconvert
from litzoo.framework.verification import check_finite, compare_outputs

FORMATS = ("onnx", "torchscript", "int8")
#: default allowed max abs difference (relative to max(1, max|y|)) per format: int8 is an approximation
DEFAULT_ATOL = {"onnx": 1e-4, "torchscript": 1e-4, "int8": 0.1}


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
    if fmt == "int8" and input_shape is not None:
        raise LitzooError("int8 export calibrates on the checkpoint's training data; random inputs (--input_shape) cannot calibrate it")
    ckpt_path = Path(ckpt_path)
    module, checkpoint = load_lightning_module(ckpt_path)
    inputs = sample_batch(checkpoint, ckpt_path, batch_size, input_shape)
    if compacted_layers(module):  # a ResRep compactor model: fold (and fuse) it, remove its masked channels
        prune_compacted(module, inputs)
    deploy = fuse_model(module).eval()
    calibration = calibration_batches(checkpoint, ckpt_path, calibration_batches_count) if fmt == "int8" else None
    suffix = {"onnx": ".onnx", "torchscript": ".pt", "int8": ".int8.pt2"}[fmt]
    output = Path(output) if output is not None else ckpt_path.with_suffix(suffix)
    error = export_model(deploy, inputs, output, fmt, atol=DEFAULT_ATOL[fmt] if atol is None else atol, calibration=calibration)
    return output, error
