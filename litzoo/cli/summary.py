"""Lightning's model summary, with the FLOPs of one sample as its one FLOPs figure."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count
from typing_extensions import override

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
    """Lightning's ``ModelSummary`` whose FLOPs line is litzoo's FLOPs per sample; parameters and FLOPs are also
    logged as metrics (``model/params``, ``model/flops``).

    Lightning counts FLOPs only on a module's ``example_input_array`` (a whole example batch) and prints
    ``0 Total Flops`` for a module without one; litzoo counts them with ``torch.utils.flop_counter`` on one
    sample (see :func:`example_input`, which also reads the datamodule's ``input_shape``). The table shows that
    one figure in place of Lightning's, and keeps Lightning's per-layer FLOPs column only when it sums to it
    (an example batch of one sample); otherwise the column, of another input or all zeros, is left out.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self._flops: int | None = None
        self._input: str = ""

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flops, self._input = None, ""
        sample = example_input(pl_module, trainer) if trainer.is_global_zero else None
        if sample is not None:
            self._flops = count_flops(pl_module, sample)
            shapes = [tuple(x.shape[1:]) for x in (sample if isinstance(sample, tuple) else (sample,))]
            self._input = ", ".join(map(str, shapes))
        super().on_fit_start(trainer, pl_module)  # prints the table through summarize() below
        if not trainer.is_global_zero:
            return
        metrics = {"model/params": float(count_parameters(pl_module))}
        if self._flops is not None:
            metrics["model/flops"] = float(self._flops)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)

    @override
    def summarize(  # type: ignore[override]  # Lightning's is a staticmethod; this one reads the FLOPs counted above
        self,
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(header, values) for header, values in summary_data if header != "FLOPs" or (self._flops is not None and total_flops == self._flops)]
        if self._flops is None:
            flops = f"{'unknown':<10}FLOPs per sample (set example_input_array, or a datamodule input_shape)"
        else:
            flops = f"{format_count(self._flops):<10}FLOPs per sample (input {self._input})"
        rank_zero_info("\n" + format_summary_table(columns, [
            (get_human_readable_count(trainable_parameters), "Trainable params"),
            (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
            (get_human_readable_count(total_parameters), "Total params"),
            (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
            (str(total_training_modes["train"]), "Modules in train mode"),
            (str(total_training_modes["eval"]), "Modules in eval mode"),
        ]) + "\n" + flops)  # fmt: skip


def format_summary_table(columns: list[tuple[str, list[str]]], totals: list[tuple[str, str]]) -> str:
    """Lightning's model-summary layout: a header, the rows of ``columns`` (``(header, values)``), then one
    ``value  label`` line per total."""
    widths = [max([len(header), *(len(str(v)) for v in values)]) for header, values in columns]
    rule = "-" * (sum(widths) + 3 * (len(columns) + 1))
    rows = [" | ".join(f"{header:<{w}}" for (header, _), w in zip(columns, widths, strict=True)), rule]
    for i in range(len(columns[0][1]) if columns else 0):
        rows.append(" | ".join(f"{str(values[i]):<{w}}" for (_, values), w in zip(columns, widths, strict=True)))
    rows.append(rule)
    rows.extend(f"{value:<10}{label}" for value, label in totals)
    return "\n".join(rows)
