"""CLIP — Learning Transferable Visual Models From Natural Language Supervision (Radford et al., ICML 2021).

Two towers map images and captions into one embedding space: a ViT over image patches and a causal
transformer over caption tokens, each followed by a linear projection and L2 normalisation. Trained
with the symmetric InfoNCE loss over the batch, the logits scaled by a learned temperature
``s = exp(logit_scale)`` (initialised to 1/0.07 and clamped to at most 100). Reference implementations:
openai/CLIP ``clip/model.py`` and open_clip ``src/open_clip/model.py`` / ``loss.py`` /
``open_clip_train/train.py`` (the clamp after every step, the weight-decay exclusions).

Evaluation, as in the paper: zero-shot classification (each class name in prompt templates, the
normalised mean of their text embeddings is the class weight; argmax of image·weight) and image↔text
retrieval recall@K on held-out pairs (torchmetrics ``RetrievalRecall``), plus the mean of the text→image
recalls (``text_to_image_mean_recall``: StickerCLIP's and Chinese-CLIP's "mean recall", R@1/5/10 by default).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from litzoo.framework.errors import LitzooError
from litzoo.framework.losses import ClipLoss
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.clip import CLIP, load_clip_weights, retrieval_recalls, zero_shot_weights
from litzoo.framework.optim import adamw_clip, split_weight_decay, warmup_cosine_per_step
from litzoo.framework.visualization import image_grid, log_image

# The model and its evaluation helpers live in the core (framework/nn/clip.py), as MoDE, Altogether, the Perception
# Encoder and StickerCLIP build on them too; they are re-exported here for `from litzoo.modules.clip import CLIP`.
__all__ = ["CLIP", "CLIPModule", "load_clip_weights", "retrieval_recalls", "text_to_image_mean_recall", "zero_shot_weights"]

# ---------------------------------------------------------------------------------------- evaluation


def text_to_image_mean_recall(recalls: dict[str, float], top_k: list[int]) -> float:
    """Mean of the text→image recall@K over ``top_k``: with K = 1, 5, 10, the "mean recall" of Sticker820K /
    StickerCLIP (official ``sticker_clip/eval/emoji_evaluation.py``: ``(r1 + r5 + r10) / 3``) and of Chinese-CLIP's
    text-to-image tables. ``recalls`` is :func:`retrieval_recalls`' output.

    Raises:
        LitzooError: a recall is not finite (features with NaN rank arbitrarily).
    """
    values = [recalls[f"text_to_image_R@{k}"] for k in top_k]
    if not all(math.isfinite(v) for v in values):
        raise LitzooError(f"text→image recalls are not finite: {values}")
    return sum(values) / len(values)


# ------------------------------------------------------------------------------ the LightningModule


class CLIPModule(L.LightningModule):
    """Contrastive image-text training of :class:`CLIP` on ``{"image", "tokens"}`` batches.

    Validation (when the DataModule has a validation split): the contrastive loss; zero-shot accuracy
    when batches carry ``label`` and class names are known (``class_names`` here or the DataModule's);
    image↔text recall@K over the whole split and the mean of the text→image ones (``<stage>/text_to_image_mean_recall``,
    StickerCLIP's metric); the top retrieved images of a few captions to TensorBoard.
    The tokenizer for zero-shot prompts is the DataModule's ``tokenizer``.

    Args:
        max_logit_scale: ``logit_scale`` is clamped to ``[0, max_logit_scale]`` after every step (ln 100).
        gather_distributed: contrast against the global batch under DDP (gather with gradient).
        local_loss: under DDP, each rank's rows against all columns (open_clip ``--local-loss``).
        image_to_text_only: only the image→text term of the loss (CiT's loss).
        class_names: names for zero-shot prompts; default the DataModule's ``class_names``.
        zero_shot_templates: prompt templates with one ``{}`` for the class name.
        retrieval_top_k: the K of the recall@K metrics.
        num_retrieval_examples: captions whose top-5 images are drawn to TensorBoard each validation.
        warmup_steps: linear warm-up steps of the default schedule (open_clip/MetaCLIP: 2000).
        init_from: a checkpoint (a litzoo ``CLIPModule`` ``.ckpt`` or a :class:`CLIP` state dict) whose
            weights initialise the model, e.g. pretrained towers for CiT; the optimizer starts afresh.
        optimizer: called with parameter groups; default AdamW(5e-4, (0.9, 0.98), 1e-6, wd 0.2).
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine to 0, per step.
        **net_kwargs: the :class:`CLIP` model's arguments, ``vocab_size`` … ``init_logit_scale`` (default ViT-B/32).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        max_logit_scale: float = math.log(100),
        gather_distributed: bool = True,
        local_loss: bool = True,
        image_to_text_only: bool = False,
        class_names: list[str] | None = None,
        zero_shot_templates: list[str] | None = None,
        retrieval_top_k: list[int] | None = None,
        num_retrieval_examples: int = 4,
        warmup_steps: int = 2000,
        init_from: str | None = None,
        optimizer: OptimizerCallable = adamw_clip,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(CLIP, net_kwargs, type(self).__name__)
        if max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be positive, got {max_logit_scale}")
        templates = ["a photo of a {}."] if zero_shot_templates is None else list(zero_shot_templates)
        if not templates or any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"zero_shot_templates must be non-empty, each with exactly one '{{}}', got {templates}")
        top_k = [1, 5, 10] if retrieval_top_k is None else list(retrieval_top_k)
        if not top_k or any(k < 1 for k in top_k):
            raise ValueError(f"retrieval_top_k must be positive integers, got {top_k}")
        if warmup_steps < 0 or num_retrieval_examples < 0:
            raise ValueError(f"warmup_steps and num_retrieval_examples must be >= 0, got {warmup_steps} and {num_retrieval_examples}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model = CLIP(**net_kwargs)
        if init_from is not None:
            load_clip_weights(self.model, init_from)
        text, image_size = self.model.text, self.model.image_size
        example_tokens = torch.zeros(2, text.context_length, dtype=torch.long)
        example_tokens[:, 1] = text.end_token_id
        self.example_input_array = (torch.zeros(2, self.model.in_chans, image_size, image_size), example_tokens)
        self.eval_loss = ClipLoss(gather_distributed=False)  # validation: each rank's own batch
        self.loss = ClipLoss(gather_distributed=gather_distributed, local_loss=local_loss, image_to_text_only=image_to_text_only)
        self.max_logit_scale = max_logit_scale
        self.class_names = class_names
        self.templates = templates
        self.top_k = top_k
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self._zero_shot: Tensor | None = None  # (E, K) class weights of the current validation
        self._eval_features: list[tuple[Tensor, Tensor, Tensor]] = []
        self.zero_shot_acc = nn.ModuleDict({"val": MulticlassAccuracy(2, average="micro"), "test": MulticlassAccuracy(2, average="micro")})  # resized in setup

    # ------------------------------------------------------------------ what CiT and users call
    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        return self.model.encode_image(images, normalize)

    def encode_text(self, tokens: Tensor, normalize: bool = True, project: bool = True) -> Tensor:
        return self.model.encode_text(tokens, normalize, project)

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model(images, tokens)

    # ------------------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            text = self.model.text
            if tokenizer.vocab_size > text.token_embedding.num_embeddings:
                raise LitzooError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {text.token_embedding.num_embeddings}")
            if tokenizer.end_id != text.end_token_id or tokenizer.context_length > text.context_length:
                raise LitzooError(
                    f"the tokenizer (end token {tokenizer.end_id}, context {tokenizer.context_length}) does not match the model "
                    f"(end_token_id={text.end_token_id}, context_length={text.context_length})"
                )
        names = self.class_names if self.class_names is not None else getattr(datamodule, "class_names", None)
        self._names = list(names) if names else None
        if self._names:
            self.zero_shot_acc = nn.ModuleDict({s: MulticlassAccuracy(len(self._names), average="micro") for s in ("val", "test")}).to(self.device)

    # ------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        image_features, text_features, scale = self(batch["image"], batch["tokens"])
        loss = self.loss(image_features, text_features, scale)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["tokens"]))
        self.log("train/logit_scale", scale.detach(), batch_size=len(batch["tokens"]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # open_clip clamps after the optimizer step: the temperature never exceeds 1/100
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, self.max_logit_scale)

    def _start_evaluation(self) -> None:
        self._eval_features = []
        self._zero_shot = None
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        if self._names and tokenizer is not None:
            self._zero_shot = zero_shot_weights(self.model, tokenizer, self._names, self.templates)

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        image_features, text_features, scale = self(batch["image"], batch["tokens"])
        batch_size = len(batch["tokens"])
        self.log(f"{stage}/loss", self.eval_loss(image_features, text_features, scale), sync_dist=True, batch_size=batch_size)
        index = batch.get("index", torch.arange(len(image_features), device=self.device) + len(self._eval_features) * len(image_features))
        self._eval_features.append((image_features, text_features, index))
        if self._zero_shot is not None and "label" in batch:
            accuracy = self.zero_shot_acc[stage]
            accuracy(image_features @ self._zero_shot, batch["label"])
            self.log(f"{stage}/zero_shot_acc", accuracy, prog_bar=True, batch_size=batch_size)

    def _finish_evaluation(self, stage: str) -> None:
        if not self._eval_features:
            return
        images, texts, index = (torch.cat(parts) for parts in zip(*self._eval_features, strict=True))
        self._eval_features = []
        if self.trainer.world_size > 1:  # all ranks' pairs; the distributed sampler's padding repeats some
            images, texts, index = (self.all_gather(t).flatten(0, 1) for t in (images, texts, index))
        order = torch.unique(index, return_inverse=True)[1]
        first = torch.full((int(order.max()) + 1,), -1, dtype=torch.long, device=order.device).scatter_reduce(
            0, order, torch.arange(len(order), device=order.device), reduce="amin", include_self=False
        )
        images, texts, index = images[first], texts[first], index[first]
        if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):  # NaN features would rank arbitrarily
            raise LitzooError(f"CLIPModule {stage}: the image or text embeddings are not finite (NaN or inf), so no recall can be measured")
        recalls = retrieval_recalls(images, texts, self.top_k)
        recalls["text_to_image_mean_recall"] = text_to_image_mean_recall(recalls, self.top_k)
        for name, value in recalls.items():
            self.log(f"{stage}/{name}", value, rank_zero_only=True)
        if stage == "val" and not self.trainer.sanity_checking:
            self._log_retrieval_examples(images, texts, index)

    def _log_retrieval_examples(self, images: Tensor, texts: Tensor, index: Tensor) -> None:
        dataset_of = getattr(getattr(self.trainer, "datamodule", None), "dataset", None)
        count = min(self.hparams.num_retrieval_examples, len(index))
        if not self.trainer.is_global_zero or dataset_of is None or count == 0:
            return
        dataset = dataset_of("val")
        top = (texts[:count] @ images.T).topk(min(5, len(index)), dim=1).indices  # (count, 5) images per caption
        lines = []
        for row in range(count):
            caption = dataset.texts[int(index[row])]
            log_image(self, f"val/retrieval/{row}", image_grid([torch.stack([dataset[int(index[j])]["image"] for j in top[row]])]))
            lines.append(f"{row}: \"{caption}\" → pairs {[int(index[j]) for j in top[row]]}")
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("val/retrieval", "  \n".join(lines), self.global_step)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Normalised embeddings of the batch's images and captions (for retrieval indexes, curation, probes)."""
        out = {"image_features": self.encode_image(batch["image"]), "text_features": self.encode_text(batch["tokens"])}
        if "index" in batch:
            out["index"] = batch["index"]
        return out

    def on_fit_start(self) -> None:
        if self._names is None:
            rank_zero_warn("CLIPModule: no class names (module or DataModule), so no zero-shot accuracy is measured")

    # ------------------------------------------------------------------------- optimizers
    def no_weight_decay(self) -> set[str]:
        """open_clip's exclusions: 1-D parameters (biases, norm gains), ``logit_scale``, the class token."""
        return {name for name, p in self.named_parameters() if p.ndim < 2 or name.endswith(("bias", "logit_scale", "cls_token"))}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(split_weight_decay(self, self.no_weight_decay()))
        if self.lr_scheduler is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
        schedule = warmup_cosine_per_step(optimizer, int(self.trainer.estimated_stepping_batches), self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": schedule}
