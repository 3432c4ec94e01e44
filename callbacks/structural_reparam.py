"""Train any CNN with ACNet / DBB / RepVGG branches and get the same CNN back, better trained.

Structural re-parameterization as a plug-in (ACNet, Ding et al., ICCV 2019; Diverse Branch Block,
Ding et al., CVPR 2021; RepVGG, Ding et al., CVPR 2021): at the start of fit every eligible
conv-BN pair of the user's model becomes a multi-branch block, the model trains, and at the end of
fit each block is fused back into a conv and a BN in the original places. The deploy model has the
user's architecture, layer shapes and parameter count; only its weights differ.

Reference implementations: DingXiaoH/ACNet ``acnet/acnet_builder.py`` and
DingXiaoH/DiverseBranchBlock ``convnet_utils.py`` (which swap conv-BN constructors globally);
here the swap is done on an already built model, found through its traced graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from litzoo.callbacks.base import EvaluateDeployModel, example_inputs
from litzoo.framework.data.batches import reference_batch
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import count_parameters, eval_mode
from litzoo.framework.reparam.convert import (
    BLOCKS,
    INITS,
    ConversionReport,
    ConvertedLayer,
    convert_to_branches,
    converted_layers_in,
    fuse_branches,
    reconvert,
    still_converted,
)
from litzoo.framework.reparam.verify import fusion_error


class StructuralReparam(EvaluateDeployModel):
    """Convert a model's conv-BN pairs to ``block`` for training; fuse them back when fit ends.

    What is converted is explicit: a ``nn.Conv2d`` whose output only a ``BatchNorm2d`` consumes,
    with zero padding, dilation 1, a square kernel, and the block's own constraints (see
    :func:`litzoo.framework.reparam.convert.skip_reason`). The report of converted and skipped layers is
    printed and kept in :attr:`report`; the counts are logged as ``reparam/converted`` and
    ``reparam/skipped``. Where torch.fx cannot trace a module's forward (``int(x.size(1) * ratio)``),
    the convs directly inside it are paired with their BatchNorm on one forward of an example input
    (``example_input_array``, else the first training batch of a DataModule).

    The converted blocks fuse back to the user's conv and BatchNorm wherever they are fused, so
    another callback that fuses the model first (``ReparamFusion``, ``Quantization``) gives the same
    deploy model; this callback then has nothing left to fuse.

    Checkpoints written during fit hold the converted (training-time) model, so resuming continues
    with the branches. Loading such a checkpoint for ``validate``/``test``/``predict`` (or
    ``litzoo export``) redoes the conversion, loads, and fuses, so evaluation runs on the user's
    architecture.

    Args:
        block: ``"acb"`` (kxk + 1xk + kx1), ``"dbb"`` (kxk + 1x1 + 1x1-avg + 1x1-kxk) or ``"repvgg"``
            (3x3 + 1x1 + identity, linear: the model's own ReLUs stay where they are).
        init: ``"paper"`` (added branches initialised as in the papers; train from scratch) or
            ``"preserve"`` (added branches start at zero output, so the converted model computes
            what the original did: fine-tuning a trained model).
        exclude: ``fnmatch`` patterns of conv names (as in ``pl_module.named_modules()``) to keep.
        fuse_at_end: fuse back when fit ends (otherwise call :meth:`fuse` yourself).
        tolerance: the fused model must reproduce the trained one on a real batch to
            ``tolerance * max(1, max|y|)``; a float64 check with random BN statistics must agree
            to 1e-8 (relative).
    """

    float64_tolerance = 1e-8

    def __init__(
        self,
        block: Literal["acb", "dbb", "repvgg"] = "acb",
        init: Literal["paper", "preserve"] = "paper",
        exclude: list[str] | None = None,
        fuse_at_end: bool = True,
        tolerance: float = 1e-4,
    ) -> None:
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got '{block}'")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got '{init}'")
        if tolerance <= 0:
            raise ValueError(f"tolerance must be positive, got {tolerance}")
        self.block = block
        self.init = init
        self.exclude = list(exclude or [])
        self.fuse_at_end = fuse_at_end
        self.tolerance = tolerance
        self.report = ConversionReport()
        self.layers: list[ConvertedLayer] = []  # converted and not yet fused
        self.fusion_report: dict[str, float] = {}
        self._load_hook: Any = None

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/resnet-dbb/...``)."""
        return self.block

    @property
    @override
    def state_key(self) -> str:
        return f"StructuralReparam[block={self.block}]"

    # ---------------------------------------------------------------- the two halves
    def convert(self, module: nn.Module, example_inputs: torch.Tensor | Callable[[], torch.Tensor | None] | None = None) -> ConversionReport:
        """Convert ``module`` in place (usable without a Trainer); returns the report.

        ``example_inputs`` (or a function returning them) is used only where torch.fx cannot trace a forward.
        """
        if self.layers:
            raise LitzooError("StructuralReparam: this callback has already converted a model that is not fused back yet")
        params_before = count_parameters(module)
        self.report = convert_to_branches(module, self.block, self.init, self.exclude, example_inputs)
        self.layers = list(self.report.converted)
        if not self.layers:
            rank_zero_info(f"StructuralReparam({self.block}): {self.report.summary()}")
            first = next(iter(self.report.skipped.items()), ("-", "no conv layer at all"))
            raise LitzooError(
                f"StructuralReparam: no conv layer of {type(module).__name__} can be converted to '{self.block}' "
                f"({len(self.report.skipped)} skipped, e.g. {first[0]}: {first[1]}; the full report is logged above)"
            )
        rank_zero_info(
            f"StructuralReparam({self.block}): {self.report.summary()}\n"
            f"  training-time parameters {params_before:,} -> {count_parameters(module):,}"
        )
        return self.report

    def fuse(self, module: nn.Module) -> nn.Module:
        """Fuse every converted block of ``module`` back into its original conv + BN, in place."""
        fuse_branches(module, self.layers)
        self.layers = []
        return module

    # ---------------------------------------------------------------- fit
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == TrainerFn.FITTING:
            if not self.layers:
                self.convert(pl_module, lambda: self._example_inputs(trainer, pl_module, stage))
                for logger in trainer.loggers:
                    logger.log_metrics({"reparam/converted": len(self.report.converted), "reparam/skipped": len(self.report.skipped)}, step=0)
        elif not self.layers:
            # A checkpoint of the converted model may be loaded next (``ckpt_path``): redo the
            # conversion right before the weights arrive, so they fit.
            self._load_hook = pl_module.register_load_state_dict_pre_hook(
                lambda module, state_dict, prefix, *args: self._reconvert_before_loading(module, state_dict, prefix, trainer, stage)
            )

    @staticmethod
    def _example_inputs(trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> torch.Tensor | None:
        """An input for the run-time pairing of untraceable modules; ``None`` (those convs are skipped, with
        the reason) when loaders go straight to ``trainer.fit`` and the module has no ``example_input_array``."""
        try:
            return example_inputs(trainer, pl_module, "StructuralReparam (pairing convs that torch.fx cannot trace)", stage)
        except LitzooError:
            return None

    def _reconvert_before_loading(self, module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, trainer: L.Trainer, stage: str) -> None:
        if prefix:  # only the root module's hook; children load after it
            return
        layers = converted_layers_in(module, state_dict, lambda: self._example_inputs(trainer, module, stage))
        if layers:
            reconvert(module, layers)
            self.layers = layers

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.fuse_at_end or not self.layers:
            return
        if not still_converted(pl_module, self.layers):
            rank_zero_info(f"StructuralReparam({self.block}): the model was fused back already (by another callback's fuse_model); nothing left to fuse")
            self.layers = []
            return
        inputs = reference_batch(trainer, pl_module, "StructuralReparam")
        # the fusion itself, on a float64 copy with random BN statistics (independent of the trained values)
        float64_error = fusion_error(pl_module, inputs[:8], relative=True, fuse=lambda model: fuse_branches(model, self.layers))
        params_trained = count_parameters(pl_module)
        with eval_mode(pl_module), torch.no_grad():
            reference = pl_module(inputs).clone()
        self.fuse(pl_module)
        with eval_mode(pl_module), torch.no_grad():
            error = (pl_module(inputs) - reference).abs().max().item()
        scale = max(1.0, reference.abs().max().item())
        self.fusion_report = {
            "max_abs_error": error,
            "float64_random_bn_error": float64_error,
            "params_training": float(params_trained),
            "params_deploy": float(count_parameters(pl_module)),
        }
        rank_zero_info(
            f"StructuralReparam({self.block}): fused back; max |fused - trained| = {error:.3g}, "
            f"float64 random-BN check {float64_error:.3g}; parameters {params_trained:,} -> {count_parameters(pl_module):,}"
        )
        for logger in trainer.loggers:
            logger.log_metrics({f"reparam/{k}": v for k, v in self.fusion_report.items()}, step=trainer.global_step)
        if error > self.tolerance * scale or float64_error > self.float64_tolerance:
            raise LitzooError(
                f"StructuralReparam: the fused model differs from the trained one by {error:.3g} "
                f"(float64 random-BN check {float64_error:.3g}); the fusion is not exact"
            )

    # ---------------------------------------------------------------- evaluation outside fit
    @override
    def _to_deploy_for_evaluation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING or not still_converted(pl_module, self.layers):
            return
        self.fuse(pl_module)
        rank_zero_info(f"StructuralReparam({self.block}): evaluating the fused model ({count_parameters(pl_module):,} parameters)")

    # ---------------------------------------------------------------- resuming
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"block": self.block, "layers": [layer.to_dict() for layer in self.layers]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [ConvertedLayer.from_dict(values) for values in state_dict.get("layers", [])]
        if self.layers and [layer.conv for layer in saved] != [layer.conv for layer in self.layers]:
            raise LitzooError(
                f"StructuralReparam: the checkpoint was trained with {len(saved)} converted layers "
                f"({[layer.conv for layer in saved][:3]} ...), this run converted {len(self.layers)}; "
                "use the same block, exclude patterns and model"
            )
