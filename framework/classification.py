"""What every litzoo image classifier shares: loss, metrics, logging, optimizers.

A method's classifier (``RepVGGClassifier`` ...) builds its network and passes it here; this class
does the Lightning side: cross-entropy with optional label smoothing, torchmetrics accuracy and
confusion matrix (an image in TensorBoard), the injected optimizer and scheduler, predictions.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from litzoo.framework.deploy import restore_deploy_structure
from litzoo.framework.optim import cosine_per_step, sgd_momentum, split_weight_decay


def confusion_matrix_image(matrix: Tensor, cell: int = 12) -> Tensor:
    """Render a confusion matrix as a ``(3, H, W)`` image in [0, 1] (rows: true class, columns: predicted).

    Rows are normalised to recall, so each row's colour shows where that class goes; white is 0,
    dark blue is 1. The grid lines make single cells readable at a glance.
    """
    rates = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    white, blue = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.03, 0.19, 0.42])
    colours = white[:, None, None] + (blue - white)[:, None, None] * rates.cpu()[None]
    image = colours.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    image[:, ::cell, :] = 0.75
    image[:, :, ::cell] = 0.75
    return image


class ImageClassifier(L.LightningModule):
    """Cross-entropy image classification around any ``net`` mapping ``(B, C, H, W)`` to logits.

    Args:
        net: the network.
        num_classes: number of classes (for the metrics).
        optimizer: called with parameter groups (see :meth:`no_weight_decay`); default SGD.
        lr_scheduler: called with the optimizer; ``None`` = cosine decay to 0, stepped per batch.
        label_smoothing: cross-entropy label smoothing.
    """

    #: the metric ModelCheckpoint tracks (``best.ckpt``) and its direction
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable = sgd_momentum,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.net = net
        self.num_classes = num_classes
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.label_smoothing = label_smoothing
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        # one log call per step: on small models per-step metric bookkeeping costs a visible share
        # of the step (BENCHMARKS.md); accuracy is measured on the validation set instead
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str, accuracy: MulticlassAccuracy, confusion: MulticlassConfusionMatrix) -> None:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        accuracy(logits, batch["label"])
        confusion.update(logits, batch["label"])
        self.log(f"{stage}/loss", loss, sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc, self.val_confusion)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc, self.test_confusion)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        probs = self(batch["image"]).softmax(dim=-1)
        out = {"probs": probs, "pred": probs.argmax(dim=-1)}
        if "label" in batch:
            out["label"] = batch["label"]
        return out

    # ------------------------------------------------------- confusion matrix
    def _log_confusion(self, stage: str, confusion: MulticlassConfusionMatrix) -> None:
        matrix = confusion.compute()  # synchronised across processes by torchmetrics
        confusion.reset()
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(f"{stage}/confusion_matrix", confusion_matrix_image(matrix), self.global_step)
                rows = "\n".join("| " + " | ".join(str(int(v)) for v in row) + " |" for row in matrix)
                header = "| " + " | ".join(str(i) for i in range(self.num_classes)) + " |\n" + "|---" * self.num_classes + "|\n"
                logger.experiment.add_text(f"{stage}/confusion_matrix", header + rows, self.global_step)

    def on_validation_epoch_end(self) -> None:
        self._log_confusion("val", self.val_confusion)

    def on_test_epoch_end(self) -> None:
        self._log_confusion("test", self.test_confusion)

    # ------------------------------------------------------------- optimizers
    def no_weight_decay(self) -> set[str]:
        """Parameter names trained without weight decay: biases and normalisation weights by default."""
        names = set()
        for module_name, module in self.named_modules():
            for name, _ in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if name == "bias" or isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
                    names.add(full)
        return names

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(split_weight_decay(self, self.no_weight_decay()))
        if self.lr_scheduler is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
        return {"optimizer": optimizer, "lr_scheduler": cosine_per_step(optimizer, int(self.trainer.estimated_stepping_batches))}

    # ------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A deploy checkpoint (fused by ReparamFusion, pruned by ResRepPruning) holds the weights of
        # another structure: give the freshly built training-time network that structure before its
        # state dict is loaded (also for load_from_checkpoint, where no callback is there to do it).
        restore_deploy_structure(self, checkpoint)
