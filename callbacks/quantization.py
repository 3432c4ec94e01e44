"""Quantization: int8 post-training quantization or quantization-aware training of any model.

Gholami et al., "A Survey of Quantization Methods for Efficient Neural Network Inference" (2021),
on torchao's PT2E flow (``litzoo.framework.quantization``). ``mode="ptq"`` calibrates activation ranges on
training batches when fit ends; ``mode="qat"`` trains the model through fake quantization (straight-
through estimator) from the start of fit. Both end with the int8 model evaluated against its float
reference on the validation data and written as a ``torch.export`` program (``int8.pt2``).

Re-parameterized models are the case users hit most (RepVGG issues #59/#79/#85: fused RepVGG-A0 at
W8A8 reported at 58% top-1): fusing a 3x3, a 1x1 and an identity branch with their BatchNorms
widens the kernel's range relative to its bulk, which a per-tensor grid pays for. The callback
therefore quantizes the *deploy* model (fusing blocks and folding ResRep compactors of a copy first,
whatever the order of the callbacks), and logs each layer's weight range ratio ``max|w| / std(w)``
before and after fusion, so the cause is visible next to the accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from litzoo.framework.data.batches import batch_inputs, batch_labels, reference_loader, sample_training_batches, setup_loader
from litzoo.framework.deploy import check_deploy_filename
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import eval_mode
from litzoo.framework.pruning import compacted_layers, prune_compacted
from litzoo.framework.quantization import (
    FakeQuantizedNetwork,
    check_options,
    convert_qat,
    prepare_qat,
    quantization_config,
    quantize_ptq,
    save_int8,
    weight_statistics,
)
from litzoo.framework.reparam import fuse_model, is_fusable
from litzoo.framework.verification import check_finite, max_abs_difference


@contextlib.contextmanager
def swapped(root: nn.Module, name: str, replacement: nn.Module) -> Iterator[None]:
    """Temporarily replace the submodule ``name`` of ``root`` by ``replacement``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name)
    original = getattr(parent, child)
    setattr(parent, child, replacement)
    try:
        yield
    finally:
        setattr(parent, child, original)


class Quantization(Callback):
    """Int8 quantization of a LightningModule's network: PTQ at the end of fit, or QAT during it.

    The quantized part is the submodule ``module`` (default: the module's ``net`` attribute, or its
    only child), which must be exportable by ``torch.export``; the LightningModule's own code (loss,
    steps) stays float. Its inputs are captured from the LightningModule's forward on real batches.

    ``mode="ptq"``: when fit ends, a copy of the network is brought to its deploy form (re-
    parameterized blocks fused, ResRep compactors folded and their channels removed), calibrated on
    ``calibration_batches`` training batches (drawn with their own seeded generator) and converted.
    The trained float model is left as it is (``last.ckpt`` stays the float model).

    ``mode="qat"``: at ``setup`` (before the optimizer is built, so it trains the right parameters,
    and before DDP wraps the model) the network is fused if it has re-parameterizable blocks, then
    exported in train mode and replaced by its fake-quantized graph (conv + BN simulated folded,
    BN statistics still updated); ``train()``/``eval()`` switch the graph's BN and dropout, and
    ranges are observed on training batches only. When fit ends the graph is converted to int8.
    ``test``/``validate``/``predict`` with this callback rebuild the same graph before a QAT
    checkpoint loads, so they evaluate the fake-quantized model (numerically the int8 one). Callbacks that change the structure during fit
    (``StructuralReparam``, ``ResRepPruning``) are refused with QAT: train with them first, then
    fine-tune the deploy checkpoint with QAT. Checkpoints hold the fake-quant graph's weights and
    ranges; resuming or testing needs the same callback (its ``setup`` rebuilds the graph before
    they load).

    In both modes the int8 model is compared with its float reference (the deploy model for PTQ,
    the fake-quantized model for QAT) on up to ``evaluate_batches`` validation batches (training
    batches if there is no validation loader): accuracy of each (when batches carry labels and the
    output is ``(N, classes)``), top-1 agreement and the largest output difference, logged as
    ``quantization/*`` with the weight statistics (``litzoo.framework.quantization.weight_statistics``).
    The int8 graph is kept in :attr:`int8_model` and written to ``filename`` next to the checkpoints
    (``litzoo.framework.quantization.load_int8`` reads it back), except under ``fast_dev_run``.

    Args:
        mode: ``"ptq"`` or ``"qat"``.
        module: name of the submodule to quantize (``None``: ``net``, or the only child).
        calibration_batches: PTQ calibration batches (the survey suggests 32-128).
        weight_granularity: ``"per_channel"`` (symmetric, one scale per output channel) or ``"per_tensor"``.
        weight_bits: weight grid ``[-2^(b-1), 2^(b-1) - 1]`` (8; fewer bits stress-test, still stored in int8).
        activation_bits: activation grid ``[0, 2^b - 1]`` (affine, per tensor).
        activation_observer: PTQ range estimate, ``"histogram"`` (x86 default, minimises the
            quantization error), ``"minmax"`` or ``"percentile"`` (99.99th / 0.01th percentiles:
            robust to rare extreme activations).
        evaluate_batches: batches for the float / int8 comparison (``None``: the whole loader).
        filename: the int8 program's file name, written next to the checkpoints (``None``: not written); a
            plain file name, no folder.
        seed: of the calibration batches.
    """

    #: callbacks that rebuild the network during fit; a QAT graph cannot follow them
    structure_changing = ("StructuralReparam", "ResRepPruning")

    def __init__(
        self,
        mode: Literal["ptq", "qat"] = "ptq",
        module: str | None = None,
        calibration_batches: int = 32,
        weight_granularity: Literal["per_channel", "per_tensor"] = "per_channel",
        weight_bits: int = 8,
        activation_bits: int = 8,
        activation_observer: Literal["histogram", "minmax", "percentile"] = "histogram",
        evaluate_batches: int | None = None,
        filename: str | None = "int8.pt2",
        seed: int = 0,
    ) -> None:
        if mode not in ("ptq", "qat"):
            raise ValueError(f"mode must be 'ptq' or 'qat', got {mode!r}")
        check_options(weight_granularity, weight_bits, activation_bits, activation_observer)
        for name, value in (("calibration_batches", calibration_batches), ("evaluate_batches", evaluate_batches)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_deploy_filename(filename, "Quantization", "filename")
        self.mode = mode
        self.module = module
        self.calibration_batches = calibration_batches
        self.options = {
            "weight_granularity": weight_granularity,
            "weight_bits": weight_bits,
            "activation_bits": activation_bits,
            "activation_observer": activation_observer,
        }
        self.evaluate_batches = evaluate_batches
        self.filename = filename
        self.seed = int(seed)
        self.int8_model: nn.Module | None = None
        self.int8_path: Path | None = None
        self.report: dict[str, float] = {}
        self.weight_stats: dict[str, dict[str, dict[str, float]]] = {}  # "before_fusion" / "after_fusion" -> layer -> stats
        self._qat_graph: nn.Module | None = None

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/repvgg-qat/...``)."""
        return self.mode

    # ---------------------------------------------------------------- the quantized submodule
    def target_name(self, pl_module: nn.Module) -> str:
        """The name of the submodule to quantize (checked)."""
        if self.module is not None:
            try:
                pl_module.get_submodule(self.module)
            except AttributeError:
                raise LitzooError(f"Quantization: {type(pl_module).__name__} has no submodule '{self.module}'") from None
            if not self.module:
                raise LitzooError("Quantization: module='' would be the LightningModule itself; name its network submodule")
            return self.module
        if isinstance(getattr(pl_module, "net", None), nn.Module):
            return "net"
        children = [name for name, _ in pl_module.named_children()]
        if len(children) == 1:
            return children[0]
        raise LitzooError(
            f"Quantization: {type(pl_module).__name__} has no 'net' and {len(children)} children ({children[:5]}); "
            "name the network to quantize with module=..."
        )

    def _target_inputs(self, pl_module: L.LightningModule, name: str, batches: list[Any]) -> list[Tensor]:
        """What the target submodule receives when the LightningModule runs on each batch (eval mode)."""
        target = pl_module.get_submodule(name)
        captured: list[Tensor] = []
        handle = target.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        try:
            with eval_mode(pl_module), torch.no_grad():
                for batch in batches:
                    count = len(captured)
                    pl_module(batch_inputs(batch).to(pl_module.device))
                    if len(captured) == count:
                        raise LitzooError(f"Quantization: the forward of {type(pl_module).__name__} does not call '{name}'")
        finally:
            handle.remove()
        return captured

    # ---------------------------------------------------------------- QAT: prepare at setup
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        name = self.target_name(pl_module)
        if self.mode != "qat":
            return
        if isinstance(pl_module.get_submodule(name), FakeQuantizedNetwork):  # prepared by an earlier fit
            self._qat_graph = pl_module.get_submodule(name)
            return
        blocking = [type(c).__name__ for c in trainer.callbacks if type(c).__name__ in self.structure_changing]
        if blocking:
            raise LitzooError(
                f"Quantization(mode='qat') exports the network at setup, but {blocking[0]} rebuilds it during fit; "
                "train with it first, then fine-tune the resulting deploy checkpoint with QAT"
            )
        example = self._example_input(trainer, pl_module, name, stage)
        target = pl_module.get_submodule(name)
        self.weight_stats = {"before_fusion": weight_statistics(target)}
        if any(is_fusable(m) for m in target.modules()):
            fuse_model(target, inplace=True)  # QAT trains the deploy structure (the official RepVGG QAT flow)
        self.weight_stats["after_fusion"] = weight_statistics(target)
        graph = prepare_qat(target, example, quantization_config(qat=True, **self._qat_options()))
        parent_name, _, child = name.rpartition(".")
        setattr(pl_module.get_submodule(parent_name), child, graph)
        self._qat_graph = graph
        rank_zero_info(f"Quantization: '{name}' replaced by its fake-quantized graph (QAT, {self._describe()})")

    def _qat_options(self) -> dict[str, Any]:
        # ranges are learnt from the training batches (moving averages), not from a calibration observer
        return {k: v for k, v in self.options.items() if k != "activation_observer"}

    def _example_input(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str, stage: str) -> Tensor:
        if isinstance(getattr(pl_module, "example_input_array", None), Tensor):
            batches = [pl_module.example_input_array]
        elif stage == "fit":
            batches = sample_training_batches(trainer, 1, self.seed, "Quantization(mode='qat') at setup")
        else:  # test / validate / predict of a QAT checkpoint: the graph is rebuilt before its weights load
            batches = [next(iter(setup_loader(trainer, stage, "Quantization(mode='qat') (rebuilding its graph)")))]
        (inputs,) = self._target_inputs(pl_module, name, batches[:1])
        if inputs.shape[0] < 2:  # torch.export would specialise a batch of 1
            inputs = inputs.expand(2, *inputs.shape[1:]).clone()
        return inputs

    def _describe(self) -> str:
        o = self.options
        return f"W{o['weight_bits']} {o['weight_granularity'].replace('_', '-')} symmetric, A{o['activation_bits']} per-tensor affine"

    # ---------------------------------------------------------------- PTQ / convert at fit end
    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the trained, not yet fused weights: a fusion callback may fuse in place in on_fit_end before us
        if self.mode == "ptq":
            self.weight_stats = {"before_fusion": weight_statistics(pl_module.get_submodule(self.target_name(pl_module)))}

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name = self.target_name(pl_module)
        self._synchronise_buffers(trainer, pl_module.get_submodule(name))
        eval_batches = self._evaluation_batches(trainer)
        if self.mode == "ptq":
            batches = sample_training_batches(trainer, self.calibration_batches, self.seed, "Quantization")
            calibration = self._target_inputs(pl_module, name, batches)
            deploy = copy.deepcopy(pl_module.get_submodule(name)).eval()
            self.weight_stats.setdefault("before_fusion", weight_statistics(deploy))
            if compacted_layers(deploy):  # ResRep compactors not yet folded (its on_fit_end has not run)
                prune_compacted(deploy, calibration[0])
            if any(is_fusable(m) for m in deploy.modules()):
                deploy = fuse_model(deploy)
            self.weight_stats["after_fusion"] = weight_statistics(deploy)
            self.int8_model = quantize_ptq(deploy, calibration, quantization_config(qat=False, **self.options))
            reference, example = deploy, calibration[0]
        else:
            if self._qat_graph is None:
                raise LitzooError("Quantization(mode='qat'): the network was not prepared at setup")
            reference = self._qat_graph
            self.int8_model = convert_qat(reference)
            example = self._target_inputs(pl_module, name, eval_batches[:1])[0]
        with eval_mode(pl_module):
            float_metrics = self._evaluate(pl_module, name, reference, eval_batches)
            int8_metrics = self._evaluate(pl_module, name, self.int8_model, eval_batches, against=float_metrics)
        self.report = {f"float_{k}": v for k, v in float_metrics.items() if k != "outputs"}
        self.report.update({f"int8_{k}": v for k, v in int8_metrics.items() if k != "outputs"})
        for stage, stats in self.weight_stats.items():
            if stats:
                self.report[f"weight_range_ratio_max_{stage}"] = max(s["range_ratio"] for s in stats.values())
        self._log(trainer)
        self._save(trainer, example)

    @staticmethod
    @torch.no_grad()
    def _synchronise_buffers(trainer: L.Trainer, network: nn.Module) -> None:
        """Rank 0's buffers (BN statistics, fake-quant ranges) on every rank.

        DDP re-broadcasts buffers at the start of each forward, so after the last training step
        every rank holds the statistics of its own last batch: without this the ranks would convert
        slightly different models.
        """
        if trainer.world_size < 2:
            return
        buffers = trainer.strategy.broadcast({n: b.detach().cpu() for n, b in network.named_buffers()}, src=0)
        for n, b in network.named_buffers():
            b.copy_(buffers[n].to(b.device))

    def _evaluation_batches(self, trainer: L.Trainer) -> list[Any]:
        loader = reference_loader(trainer, "Quantization", stages=("val", "train"))
        batches = []
        for batch in loader:
            batches.append(batch)
            if self.evaluate_batches is not None and len(batches) == self.evaluate_batches:
                break
        return batches

    @torch.no_grad()
    def _evaluate(
        self, pl_module: L.LightningModule, name: str, network: nn.Module, batches: list[Any], against: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Accuracy (if labelled), and against a reference run: top-1 agreement and the largest output gap."""
        outputs, accuracy = [], None
        with swapped(pl_module, name, network):
            for batch in batches:
                out = pl_module(batch_inputs(batch).to(pl_module.device))
                outputs.append(out)
                labels = batch_labels(batch)
                if labels is not None and isinstance(out, Tensor) and out.dim() == 2 and labels.dim() == 1:
                    if accuracy is None:
                        accuracy = MulticlassAccuracy(num_classes=out.shape[1], average="micro").to(out.device)
                    accuracy.update(out, labels.to(out.device))
        metrics: dict[str, Any] = {"outputs": outputs}
        if accuracy is not None:
            metrics["acc"] = accuracy.compute().item()
        if against is not None:
            # a NaN gap would log as "no difference" (and be dropped from the logs): refuse non-finite outputs
            reference_name = "the reference model's outputs (float, or fake-quantized for QAT)"
            check_finite(against["outputs"], f"Quantization: {reference_name} on the evaluation batches", "no int8 model written")
            check_finite(outputs, "Quantization: the int8 model's outputs on the evaluation batches", "no int8 model written")
            gap = max_abs_difference(against["outputs"], outputs)
            scale = max(o.abs().max().item() for o in against["outputs"])
            same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(outputs, against["outputs"], strict=True))
            total = sum(a.shape[0] for a in outputs)
            metrics.update({"max_abs_error": gap, "relative_error": gap / max(scale, 1e-12), "agreement": same / max(total, 1)})
        return metrics

    def _log(self, trainer: L.Trainer) -> None:
        r = self.report
        parts = [f"Quantization ({self.mode}, {self._describe()})"]
        if "float_acc" in r and "int8_acc" in r:
            parts.append(f"accuracy {'fake-quant' if self.mode == 'qat' else 'float'} {r['float_acc']:.4f} -> int8 {r['int8_acc']:.4f}")
        parts.append(f"top-1 agreement {r['int8_agreement']:.4f}, max |int8 - float| {r['int8_max_abs_error']:.3g}")
        lines = [", ".join(parts)]
        before, after = self.weight_stats.get("before_fusion", {}), self.weight_stats.get("after_fusion", {})
        if after:
            width = max(len(n) for n in after)
            lines.append(f"  {'layer':<{width}}  max|w|/std(w) (per-tensor range)  widest/median channel")
            for layer, s in after.items():
                lines.append(f"  {layer:<{width}}  {s['range_ratio']:8.2f}  {s['channel_range_ratio']:8.2f}")
            if before.keys() != after.keys():
                lines.append(
                    f"  fusion: largest per-tensor range ratio {max(s['range_ratio'] for s in before.values()):.2f} over "
                    f"{len(before)} training-time layers -> {max(s['range_ratio'] for s in after.values()):.2f} over {len(after)} fused layers"
                )
        rank_zero_info("\n".join(lines))
        metrics = {f"quantization/{k}": v for k, v in r.items() if isinstance(v, float) and math.isfinite(v)}
        for stage, stats in self.weight_stats.items():
            metrics.update({f"quantization/range_ratio_{stage}/{layer}": s["range_ratio"] for layer, s in stats.items() if math.isfinite(s["range_ratio"])})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _save(self, trainer: L.Trainer, example: Tensor) -> None:
        check_deploy_filename(self.filename, "Quantization", "filename")  # also when changed after __init__
        if self.filename is None or trainer.fast_dev_run or self.int8_model is None:
            return
        directory = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
        path = Path(directory) / self.filename
        if trainer.is_global_zero:
            if example.shape[0] < 2:
                example = example.expand(2, *example.shape[1:]).clone()
            save_int8(self.int8_model, example.cpu(), path)
            rank_zero_info(f"Quantization: int8 model written to {path}")
        trainer.strategy.barrier("Quantization.save")
        self.int8_path = path
