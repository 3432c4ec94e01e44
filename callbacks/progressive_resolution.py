"""Progressive-resolution training: the training images grow through stages of increasing resolution.

The Perception Encoder's image recipe (Bolya et al., "Perception Encoder", 2025, arXiv 2504.13181, §2.1
"Progressive Resolution"; facebookresearch/perception_models releases no training code): CLIP training is split into
stages of increasing resolution — 98 → 154 → 224 px for the ablated ViT-L/14, with a final 336 px stage added — which
halves the training FLOPs at the same number of samples seen while keeping the accuracy (FLIP and CLIPA made the
same observation). The paper gives the stages, not their lengths; equal stages are the default here and any
``milestones`` can be given.

What it needs:

* **from the model**: it must take images of every stage's size. Ours: a ViT built with ``dynamic_size=True``
  (:class:`~litzoo.framework.nn.vit.PatchEmbed`; RoPE-2D needs nothing, learned absolute positions are resampled
  to the new grid by :func:`~litzoo.framework.nn.pos_embed.interpolate_pos_embed`), or any convolutional network.
  A litzoo :class:`~litzoo.framework.nn.vit.PatchEmbed` with a fixed size, or a stage size that is not a multiple of
  its patch, is refused when the fit starts.
* **from the DataModule**: nothing but training batches whose images are at the **final** (largest) resolution —
  an image tensor ``(B, C, H, W)`` under the key ``image_key`` of a dict batch, or first in a list batch. Each
  training batch is resized on its device before the step (bilinear, antialiased when shrinking: the resize
  litzoo's image DataModules use). Because the weights of a bilinear resize sum to 1, resizing a normalised image
  equals normalising the resized one. Validation and test batches are left at the DataModule's resolution
  (the paper evaluates at the final one). A DataModule with an ``image_size`` attribute is checked: a stage larger
  than it would upsample, which is refused.

The stage is a function of the trainer's ``global_step`` (``interval="step"``, the fraction of
``estimated_stepping_batches`` done) or of ``current_epoch`` (``interval="epoch"``), so a resumed run and every DDP rank
choose the same resolution with no state of its own; ``train/resolution`` is logged.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.vit import PatchEmbed


class ProgressiveResolution(L.Callback):
    """Resize training images to the resolution of the current stage.

    Args:
        resolutions: the stages' image sides, in order (e.g. ``[98, 154, 224]``; the paper's are increasing,
            and the last should be the DataModule's own size).
        milestones: the training fractions in ``(0, 1)`` where stages 2, 3 … start, increasing
            (``len(resolutions) − 1`` of them); default: equal stages ``i / len(resolutions)``.
        interval: ``"step"`` — the fraction is ``global_step / estimated_stepping_batches``; ``"epoch"`` —
            ``current_epoch / max_epochs`` (stages change at epoch boundaries).
        image_key: the image entry of dict batches (list batches: the first element).
        antialias: antialias when shrinking (litzoo's DataModules resize with it).
    """

    def __init__(
        self,
        resolutions: list[int],
        milestones: list[float] | None = None,
        interval: str = "step",
        image_key: str = "image",
        antialias: bool = True,
    ) -> None:
        super().__init__()
        sizes = [int(r) for r in resolutions]
        if not sizes or any(r <= 0 or r != s for r, s in zip(sizes, resolutions, strict=True)):
            raise ValueError(f"resolutions must be a non-empty list of positive integers, got {resolutions}")
        if milestones is None:
            marks = [i / len(sizes) for i in range(1, len(sizes))]
        else:
            marks = [float(m) for m in milestones]
            if len(marks) != len(sizes) - 1:
                raise ValueError(f"milestones needs {len(sizes) - 1} entries (one per stage after the first), got {len(marks)}")
            if any(not 0.0 < m < 1.0 for m in marks) or any(b <= a for a, b in zip(marks, marks[1:], strict=False)):
                raise ValueError(f"milestones must increase strictly inside (0, 1), got {marks}")
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
        self.resolutions, self.milestones, self.interval = sizes, marks, interval
        self.image_key, self.antialias = image_key, antialias

    @property
    def run_tag(self) -> str:
        """Appended to the run folder's method name by ``litzoo fit`` (``runs/clip-progressive/...``): another schedule is
        another run."""
        return "progressive"

    # ------------------------------------------------------------------------------ the schedule
    def resolution_at(self, progress: float) -> int:
        """The resolution of the stage holding the training fraction ``progress`` (stage ``i`` covers
        ``[milestones[i − 1], milestones[i])``)."""
        stage = sum(progress >= m for m in self.milestones)
        return self.resolutions[stage]

    def progress(self, trainer: L.Trainer) -> float:
        """The fraction of training done, by :attr:`interval`."""
        if self.interval == "epoch":
            return trainer.current_epoch / trainer.max_epochs
        return trainer.global_step / trainer.estimated_stepping_batches

    def current_resolution(self, trainer: L.Trainer) -> int:
        return self.resolution_at(self.progress(trainer))

    # ------------------------------------------------------------------------------ checks
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch" and (trainer.max_epochs is None or trainer.max_epochs < 1):
            raise LitzooError("ProgressiveResolution(interval='epoch') needs trainer.max_epochs; use interval='step' with max_steps")
        if self.interval == "step" and not 0 < trainer.estimated_stepping_batches < float("inf"):
            raise LitzooError("ProgressiveResolution(interval='step') needs a finite training length (max_steps or max_epochs)")
        for name, layer in pl_module.named_modules():
            if not isinstance(layer, PatchEmbed):
                continue
            if not layer.dynamic_size and any(r != layer.input_hw[0] or r != layer.input_hw[1] for r in self.resolutions):
                raise LitzooError(
                    f"ProgressiveResolution: the patch embedding '{name}' takes {layer.input_hw[0]}x{layer.input_hw[1]} images only; "
                    "build the model with dynamic_size=True"
                )
            bad = [r for r in self.resolutions if r % layer.patch_hw[0] or r % layer.patch_hw[1]]
            if bad:
                raise LitzooError(f"ProgressiveResolution: resolutions {bad} are not multiples of the patch size {layer.patch_hw} of '{name}'")
        data_size = getattr(getattr(trainer, "datamodule", None), "image_size", None)
        if isinstance(data_size, int) and max(self.resolutions) > data_size:
            raise LitzooError(
                f"ProgressiveResolution: resolution {max(self.resolutions)} exceeds the DataModule's image_size {data_size}: the stages "
                "downsample its images, set its image_size to the final resolution"
            )

    # ------------------------------------------------------------------------------ the resize
    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        size = self.current_resolution(trainer)
        if isinstance(batch, dict):
            images = batch.get(self.image_key)
        elif isinstance(batch, list) and batch:
            images = batch[0]
        else:
            raise LitzooError(f"ProgressiveResolution resizes dict batches (key '{self.image_key}') or list batches in place, got {type(batch).__name__}")
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise LitzooError(f"ProgressiveResolution: the batch's images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        if tuple(images.shape[-2:]) != (size, size):
            # the same batch object is handed to training_step next, so replacing the entry resizes what the step sees
            resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=self.antialias)
            if isinstance(batch, dict):
                batch[self.image_key] = resized
            else:
                batch[0] = resized
        pl_module.log("train/resolution", float(size), on_step=True, on_epoch=False, batch_size=images.shape[0])

    @override
    def state_dict(self) -> dict[str, Any]:
        # the stage follows from the trainer's step / epoch, which the checkpoint holds; the schedule is kept to refuse
        # resuming under another one
        return {"resolutions": list(self.resolutions), "milestones": list(self.milestones), "interval": self.interval}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = (list(state_dict.get("resolutions", [])), list(state_dict.get("milestones", [])), state_dict.get("interval"))
        if saved != (self.resolutions, self.milestones, self.interval):
            raise LitzooError(
                f"ProgressiveResolution: the checkpoint was trained with resolutions {saved[0]}, milestones {saved[1]}, interval {saved[2]!r}, "
                f"not {self.resolutions}, {self.milestones}, {self.interval!r}"
            )
