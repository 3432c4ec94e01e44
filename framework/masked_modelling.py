"""What every masked-modelling method shares on the Lightning side (MAE, DiffMAE, Audio-MAE, Hiera-MAE ...).

A method's pretraining module builds its network and passes it to :class:`MaskedModellingModule`, which does
the rest, once for all of them:

* training: ``loss, _, _ = self(inputs)`` (a random mask each step), logged as ``train/loss``;
* evaluation with **fixed masks**: the mask noise of validation / test batch ``i`` comes from
  ``torch.Generator().manual_seed(val_seed + i)``, a CPU generator of its own, so every epoch scores the same
  masks whatever the training RNG did; logged as ``{stage}/loss``, with ``{stage}/mean_baseline_loss``, the same
  masked-patch loss for the best constant predictor (every removed patch predicted as the mean target value
  over the batch's removed patches — 0 for normalised-pixel targets, the mean pixel otherwise);
* a TensorBoard image every validation epoch (first batch): rows of originals, masked inputs (removed patches
  at each example's minimum) and reconstructions in pixel space;
* ``predict_step`` and ``forward_features``: the encoder's features of unmasked inputs (what probes read);
* the MAE family's optimisation (:class:`BlrWarmupCosine`): AdamW-style parameter groups without weight decay
  on 1-D parameters, class / mask tokens and position embeddings, ``lr = blr · effective_batch / 256`` and a
  per-step linear warm-up (in epochs) then cosine to 0 (MAE ``main_pretrain.py``, ``util/lr_sched.py``).

The network follows a small protocol: ``forward(inputs, mask_ratio, noise=...) -> (loss, pred, mask)`` with
``pred`` ``(B, L, D)`` per patch; ``forward_features(inputs)``; ``patchify`` / ``unpatchify`` between inputs and
``(B, L, D)`` patches; ``target(inputs)``; optionally ``norm_pix_loss`` (predictions of per-patch normalised
pixels, mapped back for display) and ``no_weight_decay()``. What differs per paper is a named extension point:
:attr:`input_key` / :meth:`inputs` (how a batch becomes the input), :attr:`num_mask_units` (the length of the
mask noise), :meth:`removed_patches` (the network's mask as a per-patch ``1 = removed`` map), :meth:`target`,
:meth:`reconstruct` (predictions → images for the grid), :meth:`grid_image` / :attr:`grid_tag` (how the rows
are drawn), and ``_evaluate`` itself for a method that measures more (DiffMAE's sampling).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from litzoo.framework.nn.masking import num_kept
from litzoo.framework.nn.patches import blank_removed_patches, denormalize_patches
from litzoo.framework.optim import blr_warmup_cosine
from litzoo.framework.visualization import image_grid, log_image


def mean_baseline_loss(target: Tensor, removed: Tensor) -> Tensor:
    """The masked-patch loss of the best constant predictor: every removed patch predicted as the mean
    target value over all removed patches of the batch.

    Args:
        target: ``(B, L, D)`` regression targets.
        removed: ``(B, L)``, nonzero / True = removed (the patches the loss is averaged over).

    Returns the mean over removed patches of the per-patch mean squared error of that constant.
    """
    mask = removed.to(target.dtype)
    constant = target[removed.bool()].mean()  # 0 for normalised-pixel targets
    return ((target - constant).pow(2).mean(dim=-1) * mask).sum() / mask.sum()


class BlrWarmupCosine:
    """The MAE family's ``configure_optimizers`` for a LightningModule with ``optimizer``, ``lr_scheduler``,
    ``blr`` and ``warmup_epochs`` attributes: :func:`litzoo.framework.optim.blr_warmup_cosine` with the
    parameter groups of :meth:`no_weight_decay`. Shared by the pretraining modules and the family's
    fine-tuning classifiers (Audio-MAE's)."""

    #: parameters whose names end with these are not weight-decayed (timm's ``no_weight_decay`` list)
    no_decay_suffixes: tuple[str, ...] = ("cls_token", "mask_token", "pos_embed")

    def no_weight_decay(self) -> set[str]:
        """1-D parameters (biases, norm gains), the class / mask tokens, the position embeddings, and what
        the network itself lists in its own ``no_weight_decay()``."""
        listed = getattr(getattr(self, "model", None), "no_weight_decay", None)
        named = {f"model.{name}" for name in listed()} if callable(listed) else set()
        return {name for name, p in self.named_parameters() if p.ndim < 2 or name.endswith(self.no_decay_suffixes) or name in named}  # type: ignore[attr-defined]

    def configure_optimizers(self) -> Any:
        return blr_warmup_cosine(self, self.optimizer, self.lr_scheduler, self.blr, self.warmup_epochs)  # type: ignore[attr-defined]


class MaskedModellingModule(BlrWarmupCosine, L.LightningModule):
    """Masked-modelling pretraining of ``model`` (see the module docstring for the protocol it follows).

    A subclass builds its network from ``**net_kwargs`` (:mod:`litzoo.framework.network_args`), passes it
    here with its training arguments, then calls ``self.save_hyperparameters(ignore=["optimizer",
    "lr_scheduler"])`` itself (so the saved hyper-parameters are its own signature, network arguments flat).

    Args:
        model: the network (kept as ``self.model``, so checkpoint keys are ``model.*``).
        mask_ratio: fraction of the masking units removed; checked against the network's :attr:`num_mask_units`.
        blr: base learning rate, ``lr = blr · effective_batch / 256``; ``None`` keeps the optimizer's lr.
        warmup_epochs: linear warm-up of the default schedule, in epochs (converted to steps).
        val_seed: seed of the fixed evaluation masks (batch ``i`` uses ``val_seed + i``).
        num_images: examples in the TensorBoard reconstruction grid (0 = none).
        optimizer: called with the parameter groups.
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine to 0, per step.
    """

    monitor = "val/loss"
    monitor_mode = "min"
    #: the batch key of the inputs
    input_key = "image"
    #: the TensorBoard tag of the validation grid
    grid_tag = "val/reconstruction"

    def __init__(
        self,
        model: nn.Module,
        mask_ratio: float,
        blr: float | None,
        warmup_epochs: float,
        val_seed: int,
        num_images: int,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
    ) -> None:
        super().__init__()
        self.model = model
        num_kept(self.num_mask_units, mask_ratio)  # validates mask_ratio against the network's masking units
        if blr is not None and blr <= 0:
            raise ValueError(f"blr must be positive (or null to keep the optimizer's lr), got {blr}")
        if warmup_epochs < 0 or num_images < 0:
            raise ValueError(f"warmup_epochs and num_images must be >= 0, got {warmup_epochs} and {num_images}")
        self.mask_ratio, self.blr, self.warmup_epochs = mask_ratio, blr, warmup_epochs
        self.val_seed, self.num_images = val_seed, num_images
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self._grid: Tensor | None = None

    # ------------------------------------------------------------------- extension points
    @property
    def num_mask_units(self) -> int:
        """How many units one example's mask draws noise for (default: the network's patches)."""
        return self.model.patch_embed.num_patches

    def inputs(self, batch: dict[str, Tensor]) -> Tensor:
        """The network's input in ``batch`` (default ``batch[input_key]``)."""
        return batch[self.input_key]

    def removed_patches(self, mask: Tensor) -> Tensor:
        """The network's returned mask as ``(B, L)`` over the predicted patches, nonzero / True = removed
        (default: the network already returns MAE's float mask, 1 = removed)."""
        return mask

    def target(self, inputs: Tensor) -> Tensor:
        """``(B, L, D)`` regression target of the network's predictions."""
        return self.model.target(inputs)

    def reconstruct(self, inputs: Tensor, pred: Tensor, removed: Tensor) -> Tensor:
        """Inputs with the removed patches replaced by the predictions, in input space (``pred·m + x·(1 − m)``);
        normalised-pixel predictions are mapped back with each true patch's mean and std."""
        patches = self.model.patchify(inputs)
        pixels = denormalize_patches(pred, patches) if getattr(self.model, "norm_pix_loss", False) else pred
        m = removed[..., None].to(patches.dtype)
        return self.model.unpatchify(pixels * m + patches * (1 - m))

    def masked_input(self, inputs: Tensor, removed: Tensor) -> Tensor:
        """The encoder's view: removed patches set to each example's minimum value."""
        return self.model.unpatchify(blank_removed_patches(self.model.patchify(inputs), removed))

    def grid_image(self, rows: list[Tensor]) -> Tensor:
        """Rows of ``(K, C, H, W)`` examples → one ``(3, H', W')`` image in [0, 1]."""
        return image_grid(rows)

    # ------------------------------------------------------------------------- forward
    def forward(self, inputs: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, pred, mask)`` of the network at :attr:`mask_ratio`; ``noise`` ``(B, num_mask_units)`` fixes the mask."""
        return self.model(inputs, self.mask_ratio, noise=noise)

    def forward_features(self, inputs: Tensor) -> Tensor:
        """``(B, D)`` pooled encoder features of unmasked inputs (what linear / k-NN probes read)."""
        return self.model.forward_features(inputs)

    # ------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        inputs = self.inputs(batch)
        loss, _, _ = self(inputs)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(inputs))
        return loss

    def fixed_generator(self, batch_idx: int) -> torch.Generator:
        """The CPU generator of evaluation batch ``batch_idx``, seeded ``val_seed + batch_idx`` (independent of
        the global RNG, so every epoch draws the same masks)."""
        return torch.Generator().manual_seed(self.val_seed + batch_idx)

    def _fixed_noise(self, inputs: Tensor, batch_idx: int, generator: torch.Generator | None = None) -> Tensor:
        """``(B, num_mask_units)`` mask noise of evaluation batch ``batch_idx``: the first draw of its
        :meth:`fixed_generator` (or of ``generator``, that generator already made, for a method that draws more)."""
        generator = self.fixed_generator(batch_idx) if generator is None else generator
        return torch.rand(len(inputs), self.num_mask_units, generator=generator).to(inputs.device)

    def log_losses(self, stage: str, inputs: Tensor, loss: Tensor, removed: Tensor) -> None:
        """``{stage}/loss`` and ``{stage}/mean_baseline_loss`` (see :func:`mean_baseline_loss`)."""
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(inputs))
        self.log(f"{stage}/mean_baseline_loss", mean_baseline_loss(self.target(inputs), removed), sync_dist=True, batch_size=len(inputs))

    def keeps_grid(self, stage: str, batch_idx: int) -> bool:
        """Whether this evaluation batch gives the validation grid (the first validation batch)."""
        return stage == "val" and batch_idx == 0 and self.num_images > 0

    def keep_grid(self, inputs: Tensor, removed: Tensor, reconstruction: Tensor) -> None:
        """Keep the grid rows (originals, masked inputs, reconstructions) of the first :attr:`num_images` examples."""
        k = self.num_images
        self._grid = torch.stack([inputs[:k], self.masked_input(inputs[:k], removed[:k]), reconstruction[:k]])

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        inputs = self.inputs(batch)
        loss, pred, mask = self(inputs, noise=self._fixed_noise(inputs, batch_idx))
        removed = self.removed_patches(mask)
        self.log_losses(stage, inputs, loss, removed)
        if self.keeps_grid(stage, batch_idx):
            k = self.num_images
            self.keep_grid(inputs, removed, self.reconstruct(inputs[:k], pred[:k], removed[:k]))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        grid, self._grid = self._grid, None
        if grid is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        log_image(self, self.grid_tag, self.grid_image(list(grid.detach().float().cpu())))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """``(B, D)`` encoder features of the batch's inputs (see :meth:`forward_features`)."""
        return self.forward_features(self.inputs(batch))


__all__ = ["BlrWarmupCosine", "MaskedModellingModule", "mean_baseline_loss"]
