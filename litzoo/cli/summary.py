"""Lightning's model summary, extended with the FLOPs of one sample."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities import rank_zero_info

from litzoo.framework.profiling import count_flops, count_parameters, format_count


def example_input(pl_module: L.LightningModule, trainer: L.Trainer | None = None) -> torch.Tensor | tuple | None:
    """One input sample for shape-dependent measurements, or ``None`` when none is known.

    Looked up in this order: the module's ``example_input_array`` (a tensor, or a tuple of forward
    arguments such as CLIP's images and tokens), then the datamodule's ``input_shape`` (``(C, H, W)``,
    a litzoo DataModule convention).
    """
    if isinstance(pl_module.example_input_array, torch.Tensor):
        return pl_module.example_input_array[:1]
    if isinstance(pl_module.example_input_array, tuple):
        return tuple(x[:1] for x in pl_module.example_input_array)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    shape = getattr(datamodule, "input_shape", None)
    if shape is None:
        return None
    parameter = next(pl_module.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    return torch.zeros(1, *shape, device=device, dtype=dtype)


class FlopsModelSummary(ModelSummary):
    """Lightning's ``ModelSummary`` plus parameter count and FLOPs per sample, logged as hparams.

    FLOPs come from ``torch.utils.flop_counter`` on one sample (see :func:`example_input`).
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        params = count_parameters(pl_module)
        sample = example_input(pl_module, trainer)
        if sample is None:
            rank_zero_info(f"Params: {format_count(params)} | FLOPs: unknown (set example_input_array or a datamodule input_shape)")
            return
        flops = count_flops(pl_module, sample)
        shapes = [tuple(x.shape[1:]) for x in (sample if isinstance(sample, tuple) else (sample,))]
        rank_zero_info(f"Params: {format_count(params)} | FLOPs per sample: {format_count(flops)} (input {', '.join(map(str, shapes))})")
        for logger in trainer.loggers:
            logger.log_metrics({"model/params": float(params), "model/flops": float(flops)}, step=0)
