"""Stop a fit at the first non-finite training loss, saying at which step.

A diverged run (a learning rate far too high, a bad batch) otherwise trains on NaN weights to the end, exits
with status 0 and leaves NaN checkpoints and deploy models behind. ``litzoo fit`` adds this callback unless the
config has its own.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from litzoo.framework.errors import LitzooError

__all__ = ["StopOnNonFiniteLoss"]


class StopOnNonFiniteLoss(Callback):
    """Raise a one-line :class:`LitzooError` when a training loss is NaN or infinite, before its backward pass.

    The check runs in ``on_before_backward``, so the step whose loss is not finite updates no weight and no
    checkpoint is written from it; ``on_fit_end`` hooks (fusion, export) do not run. Under DDP the decision is
    reduced over the processes (any rank's non-finite loss stops every rank), so no process waits for the
    others in a collective.
    """

    def __init__(self) -> None:
        self._batch_idx = 0

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        value = f"{loss.detach().float().mean().item():g}" if not finite else "finite here, not finite on another process"
        raise LitzooError(
            f"training loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx}): "
            "fit stopped before that step's update; lower the learning rate or check the data"
        )
