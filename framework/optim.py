"""Default optimizers and schedules, injectable through LightningCLI (``OptimizerCallable``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler

from litzoo.framework.errors import LitzooError


def sgd_momentum(params: Iterable, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4) -> SGD:
    """SGD with momentum 0.9, lr 0.1, weight decay 1e-4: the RepVGG/ResNet ImageNet recipe.

    As the default of an ``optimizer: OptimizerCallable`` argument; override in a config with
    ``optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05, momentum: 0.9}}``.
    """
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def cosine_per_step(optimizer: Optimizer, total_steps: int) -> dict:
    """Cosine decay from the initial learning rate to 0 over ``total_steps`` optimizer steps.

    Returns Lightning's ``lr_scheduler`` config dict (stepped every optimizer step).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    scheduler: LRScheduler = CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def split_weight_decay(module: torch.nn.Module, no_decay: set[str]) -> list[dict]:
    """Parameter groups for an optimizer: names in ``no_decay`` get ``weight_decay=0``.

    Empty groups are dropped (torch optimizers reject them).
    """
    decay, skip = [], []
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            (skip if name in no_decay else decay).append(parameter)
    groups = [{"params": decay}]
    if skip:
        groups.append({"params": skip, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def cat_art_adam(params: Iterable, lr: float = 1e-3) -> Optimizer:
    """Adam, lr 1e-3, no weight decay: CAT-ART's optimizer (its L2 is on the batch's embeddings, in the loss)."""
    return Adam(params, lr=lr, weight_decay=0.0)


def adamw_clip(params: Iterable, lr: float = 5e-4, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, weight_decay: float = 0.2) -> AdamW:
    """AdamW with open_clip's ViT defaults (lr 5e-4, betas (0.9, 0.98), eps 1e-6) and MetaCLIP's weight decay 0.2."""
    return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def warmup_cosine_per_step(optimizer: Optimizer, total_steps: int, warmup_steps: int) -> dict:
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0 at ``total_steps`` (open_clip's ``cosine_lr``).

    The factor at step ``s`` is ``(s + 1) / warmup_steps`` during warm-up, then
    ``½ (1 + cos(π (s − warmup) / (total − warmup)))``. Warm-up longer than the run is cut to the run.
    Returns Lightning's ``lr_scheduler`` config dict (stepped every optimizer step).
    """
    if total_steps <= 0 or warmup_steps < 0:
        raise ValueError(f"total_steps must be positive and warmup_steps non-negative, got {total_steps} and {warmup_steps}")
    warmup = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        decay_steps = max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step", "frequency": 1}


def scaled_lr(trainer: Any, blr: float, who: str) -> float:
    """MAE's linear scaling rule: ``lr = blr · effective_batch / 256`` (MAE, Audio-MAE, CiT, DiffMAE).

    The effective batch is ``DataModule.batch_size × devices × nodes × accumulate_grad_batches``.
    """
    batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if not isinstance(batch_size, int):
        raise LitzooError(f"{who}: blr needs the DataModule's integer 'batch_size' to compute lr = blr * effective_batch / 256; "
                          "set model.blr to null and give the optimizer an absolute lr instead")  # fmt: skip
    return blr * batch_size * trainer.num_devices * trainer.num_nodes * trainer.accumulate_grad_batches / 256


def warmup_epochs_to_steps(trainer: Any, warmup_epochs: float) -> int:
    """Warm-up given in epochs (the MAE family's unit) as optimizer steps of this run."""
    total_steps = int(trainer.estimated_stepping_batches)
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        steps_per_epoch = total_steps / trainer.max_epochs
    else:  # a max_steps run: one epoch is the training loader's length in optimizer steps
        steps_per_epoch = len(trainer.datamodule.train_dataloader()) / trainer.accumulate_grad_batches
    return math.ceil(warmup_epochs * steps_per_epoch)


def blr_warmup_cosine(module: Any, optimizer: Callable, lr_scheduler: Callable | None, blr: float | None, warmup_epochs: float) -> dict:
    """The MAE family's ``configure_optimizers``: parameter groups without weight decay for
    ``module.no_weight_decay()``, ``lr = blr · effective_batch / 256`` (``blr=None`` keeps the optimizer's
    lr), then the injected scheduler or warm-up (in epochs) + cosine to 0, stepped per optimizer step."""
    built = optimizer(split_weight_decay(module, module.no_weight_decay()))
    if blr is not None:
        lr = scaled_lr(module.trainer, blr, type(module).__name__)
        for group in built.param_groups:
            group["lr"] = lr
    if lr_scheduler is not None:
        return {"optimizer": built, "lr_scheduler": lr_scheduler(built)}
    total_steps = int(module.trainer.estimated_stepping_batches)
    warmup_steps = warmup_epochs_to_steps(module.trainer, warmup_epochs)
    return {"optimizer": built, "lr_scheduler": warmup_cosine_per_step(built, total_steps, warmup_steps)}


def cosine_schedule(
    step: int, total_steps: int, start: float, end: float, warmup_steps: int = 0, warmup_start: float = 0.0, freeze_steps: int = 0
) -> float:
    """The value at ``step`` of DINOv2's per-iteration schedules (``dinov2/utils/utils.py`` ``CosineScheduler``).

    DINOv2 drives lr, weight decay, teacher momentum and teacher temperature with it. Over ``total_steps``:
    ``freeze_steps`` zeros, then ``warmup_steps`` values linear from ``warmup_start`` to ``start`` *both
    included* (``numpy.linspace``), then ``n = total − freeze − warmup`` cosine values
    ``end + ½ (start − end)(1 + cos(π i / n))``, ``i = 0 … n−1`` (so the last one is just above ``end``);
    ``end`` from ``total_steps`` on. The teacher temperature uses ``total_steps == warmup_steps`` (a pure
    linear warm-up, then constant); the momentum 0.992 → 1.0 has no warm-up. DINOv2's last-layer freeze is not
    ``freeze_steps`` (which shifts the schedule): it overwrites the lr schedule's first steps with 0, i.e.
    ``0.0 if step < freeze_last_layer_steps else cosine_schedule(step, ...)``.
    """
    if total_steps < 0 or warmup_steps < 0 or freeze_steps < 0 or warmup_steps + freeze_steps > total_steps:
        raise ValueError(f"cosine_schedule needs 0 <= freeze_steps + warmup_steps <= total_steps; got freeze_steps={freeze_steps}, "
                         f"warmup_steps={warmup_steps}, total_steps={total_steps}")  # fmt: skip
    if step < 0:
        raise ValueError(f"cosine_schedule: step must be non-negative, got {step}")
    if step >= total_steps:
        return float(end)
    if step < freeze_steps:
        return 0.0
    step -= freeze_steps
    if step < warmup_steps:
        if warmup_steps == 1:  # numpy.linspace(a, b, 1) == [a]
            return float(warmup_start)
        if step == warmup_steps - 1:  # linspace's endpoint is exact
            return float(start)
        return step * ((start - warmup_start) / (warmup_steps - 1)) + warmup_start  # numpy.linspace's arithmetic
    step -= warmup_steps
    cosine_steps = total_steps - freeze_steps - warmup_steps
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / cosine_steps))
