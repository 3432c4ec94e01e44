"""ToxVis: an implicit / explicit / non-hateful post classifier whose predictions are explained token by token.

Gunturi, Ding, Rho, "ToxVis: Enabling Interpretability of Implicit vs. Explicit Toxicity Detection Models with
Interactive Visualization", arXiv:2303.09402 (2023). **No official code exists** (none is linked from the paper or
Papers with Code); everything below is read from the paper and the ToxVis notes, and every choice the paper leaves
open is marked "(ours)".

What the paper fixes and this module follows:

* three classes, implicit hate / explicit hate / not hateful, on the Implicit Hate Corpus (ElSherief et al., EMNLP
  2021; :mod:`litzoo.datamodules.implicit_hate` reads its stage-1 TSV);
* a Transformer text classifier fine-tuned with cross-entropy over the three classes (the paper fine-tunes RoBERTa and
  XLNet and compares with GPT-3);
* predictions explained with Integrated Gradients on the input embeddings (captum's layer attribution on the embedding
  layer), the token attributions shown over the post. Here the explanation is the
  :class:`~litzoo.callbacks.attribution_writer.AttributionWriter` callback (``configs/toxvis/planted.yaml`` adds it),
  on the protocol this module exposes: :meth:`ToxVisClassifier.embed` ``(tokens) -> embeds``,
  :meth:`ToxVisClassifier.forward_embeds` ``(embeds, mask) -> logits`` and :meth:`ToxVisClassifier.id_to_token`.

What replaces what the paper uses (no pretrained weights are available offline): a small Transformer encoder trained
from scratch (ours) — learned token and position embeddings, ``depth`` pre-norm blocks
(:class:`litzoo.framework.nn.text_encoder.TransformerTextEncoder`: bidirectional, padded keys masked), a final LayerNorm, the **mean over the
post's tokens** (ours; RoBERTa classifies from its ``<s>`` token, XLNet from its last token — a mean needs no special
token and treats every position alike), dropout and a linear head. The CLIP text tower
(:mod:`litzoo.framework.nn.text`) was not reused: it is causal, pools at an end-of-text token and takes no padding mask.

Attribution choices (ours, where the paper is silent): the attributed embeddings are the **token (word) embeddings
only** — positions are added inside :meth:`forward_embeds`, so a zero baseline removes the words and keeps the
positions, as the pad-token reference of the captum BERT tutorial keeps RoBERTa's positions; padded positions are
ignored by attention and pooling, so a post's token attributions add up to ``F(x) - F(baseline)`` (IG completeness).

Metrics: ``{val,test}/loss``, ``{val,test}/acc``, ``{val,test}/macro_f1`` (torchmetrics' ``MulticlassF1Score``,
macro average over the three classes, the measure the corpus' papers report) and ``{val,test}/f1/<class>``; the
checkpoint monitor is ``val/macro_f1``. Defaults (ours): width 64, 2 blocks of 4 heads, AdamW lr 1e-3, weight decay
0.01.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.optim import AdamW
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.text_encoder import TransformerTextEncoder, masked_mean

DEFAULT_CLASS_NAMES = ("not_hate", "implicit_hate", "explicit_hate")


def adamw_toxvis(params: Any, lr: float = 1e-3, weight_decay: float = 0.01) -> AdamW:
    """AdamW for the from-scratch encoder (ours: the paper fine-tunes pretrained models and gives no settings)."""
    return AdamW(params, lr=lr, weight_decay=weight_decay)


def attribution_precision_at_k(attributions: Tensor, mask: Tensor, planted: Tensor) -> Tensor:
    """Per post, the share of its ``k`` highest-attributed tokens that are planted, ``k`` = its planted tokens.

    The evidence measure of the ToxVis notes (the paper shows attributions and measures none): with the planted
    trigger / coded-phrase tokens as the truth, 1 means the explanation ranks exactly them first. Tokens are ranked by
    their **signed** attribution (ours: what pushes the attributed class up, as the green tokens of the visualisation),
    padding excluded; ties are broken by position (a stable sort).

    Args:
        attributions: ``(B, L)`` token attributions.
        mask: ``(B, L)`` bool, the real tokens.
        planted: ``(B, L)`` bool, the planted tokens (inside the mask); every post needs at least one.

    Returns:
        ``(B,)`` float precisions in ``[0, 1]``.

    Raises:
        ValueError: shapes differ, a post has no planted token, a planted token is padding, or attributions are not finite.
    """
    if attributions.shape != mask.shape or mask.shape != planted.shape or attributions.dim() != 2:
        raise ValueError(f"attributions, mask and planted must be (B, L) alike, got {tuple(attributions.shape)}, {tuple(mask.shape)}, {tuple(planted.shape)}")
    mask, planted = mask.bool(), planted.bool()
    if bool((planted & ~mask).any()):
        raise ValueError("a planted token lies on a padded position")
    k = planted.sum(1)
    if bool((k == 0).any()):
        raise ValueError("every post needs at least one planted token (precision@k with k = 0 is undefined)")
    if not bool(torch.isfinite(attributions[mask]).all()):
        raise ValueError("attributions are not finite")
    scores = attributions.double().masked_fill(~mask, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, L)
    ranked_planted = planted.gather(1, order)
    within_k = torch.arange(order.shape[1], device=order.device)[None, :] < k[:, None]
    return (ranked_planted & within_k).sum(1).double() / k.double()


class ToxVisClassifier(L.LightningModule):
    """3-way post classifier (implicit / explicit / not hate) exposing the :class:`AttributionWriter` protocol.

    Args:
        vocab_size: the vocabulary size; ``None`` takes the datamodule's ``vocab_size`` in :meth:`setup`.
        num_classes: output classes (3 for the Implicit Hate Corpus).
        class_names: the name of each class in the metric keys (``f1/<name>``); ``None`` takes the datamodule's
            ``class_names``, else ``not_hate, implicit_hate, explicit_hate``.
        max_positions: longest post the positions cover; ``None`` takes the datamodule's ``max_length`` (else 64); named
            apart from the datamodule's ``max_length`` so that Lightning's merged hyper-parameters never clash.
        dim: token width.
        depth: Transformer blocks.
        num_heads: attention heads (must divide ``dim``).
        mlp_ratio: MLP hidden width over ``dim``.
        dropout: dropout on the token embeddings and on the pooled feature, in ``[0, 1)``.
        optimizer: builds the optimizer from the parameters (default :func:`adamw_toxvis`).

    Raises:
        ValueError: a non-positive size, ``dim`` not divisible by ``num_heads``, a dropout outside ``[0, 1)``, class
            names that do not match ``num_classes``.
    """

    monitor = "val/macro_f1"
    monitor_mode = "max"

    def __init__(
        self,
        vocab_size: int | None = None,
        num_classes: int = 3,
        class_names: Sequence[str] | None = None,
        max_positions: int | None = None,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        optimizer: OptimizerCallable = adamw_toxvis,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("dim", dim), ("depth", depth), ("num_heads", num_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ToxVisClassifier: {name} must be a positive integer, got {value!r}")
        for name, value in (("vocab_size", vocab_size), ("max_positions", max_positions)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"ToxVisClassifier: {name} must be a positive integer or None, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"ToxVisClassifier: num_classes must be at least 2, got {num_classes}")
        if dim % num_heads:
            raise ValueError(f"ToxVisClassifier: dim {dim} must be divisible by num_heads {num_heads}")
        if not mlp_ratio > 0:
            raise ValueError(f"ToxVisClassifier: mlp_ratio must be positive, got {mlp_ratio}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ToxVisClassifier: dropout must be in [0, 1), got {dropout}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"ToxVisClassifier: {len(class_names)} class_names for num_classes={num_classes}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.class_names: tuple[str, ...] | None = None if class_names is None else tuple(class_names)
        self.vocabulary: Any = None  # the datamodule's WordVocabulary (id → string), set in setup
        self.encoder: TransformerTextEncoder | None = None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.metrics = nn.ModuleDict({
            f"{stage}_{kind}": metric
            for stage in ("val", "test")
            for kind, metric in (
                ("acc", MulticlassAccuracy(num_classes, average="micro")),
                ("macro_f1", MulticlassF1Score(num_classes, average="macro")),
                ("class_f1", MulticlassF1Score(num_classes, average="none")),
            )
        })  # fmt: skip
        if vocab_size is not None and max_positions is not None:
            self.build(vocab_size, max_positions)

    def build(self, vocab_size: int, max_positions: int) -> None:
        """Create the encoder (it waits for the vocabulary when ``vocab_size`` is not given)."""
        hp = self.hparams
        self.encoder = TransformerTextEncoder(vocab_size, max_positions, hp.dim, hp.depth, hp.num_heads, hp.mlp_ratio)
        self.hparams["vocab_size"], self.hparams["max_positions"] = vocab_size, max_positions  # a checkpoint rebuilds the same net
        # one full-length post (the model summary's FLOPs)
        self.example_input_array = (torch.zeros(1, max_positions, dtype=torch.long), torch.ones(1, max_positions, dtype=torch.bool))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.vocabulary = getattr(datamodule, "vocabulary", None) or self.vocabulary
        if self.class_names is None:
            names = getattr(datamodule, "class_names", None)
            self.class_names = tuple(names) if names is not None and len(names) == self.hparams.num_classes else None
        if self.class_names is None:
            self.class_names = DEFAULT_CLASS_NAMES if self.hparams.num_classes == 3 else tuple(str(k) for k in range(self.hparams.num_classes))
        if self.encoder is None:
            vocab_size = self.hparams.vocab_size or getattr(datamodule, "vocab_size", None)
            if not isinstance(vocab_size, int):
                raise LitzooError("ToxVisClassifier: set model.vocab_size, or use a datamodule with a vocab_size (e.g. ImplicitHateDataModule)")
            self.build(vocab_size, self.hparams.max_positions or getattr(datamodule, "max_length", None) or 64)
        data_length = getattr(datamodule, "max_length", None)
        if isinstance(data_length, int) and data_length > self.encoder.max_length:
            raise LitzooError(f"ToxVisClassifier: the datamodule's max_length {data_length} exceeds the model's {self.encoder.max_length}")
        vocab_size = getattr(datamodule, "vocab_size", None) if datamodule is not None and getattr(datamodule, "vocabulary", None) is not None else None
        if isinstance(vocab_size, int) and vocab_size > self.encoder.token_embedding.num_embeddings:
            raise LitzooError(f"ToxVisClassifier: the datamodule's vocabulary of {vocab_size} exceeds the model's {self.encoder.token_embedding.num_embeddings}")

    # ------------------------------------------------------------------------------ the AttributionWriter protocol
    def _net(self) -> TransformerTextEncoder:
        if self.encoder is None:
            raise RuntimeError("ToxVisClassifier has no network yet: pass vocab_size and max_positions, or run setup() with a datamodule")
        return self.encoder

    def embed(self, tokens: Tensor) -> Tensor:
        """``(B, L)`` token ids → ``(B, L, dim)`` token embeddings (the input that Integrated Gradients attributes)."""
        return self._net().embed(tokens)

    def forward_embeds(self, embeds: Tensor, mask: Tensor | None) -> Tensor:
        """``(B, L, dim)`` token embeddings and the ``(B, L)`` mask of real tokens → ``(B, num_classes)`` logits."""
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        return self.head(self.dropout(masked_mean(self._net().encode_embeds(self.dropout(embeds), mask), mask.bool())))

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_embeds(self.embed(tokens), mask)

    def id_to_token(self, index: int) -> str:
        """The word of a token id (from the datamodule's vocabulary); ``#<id>`` when no vocabulary is known."""
        if self.vocabulary is None:
            return f"#{int(index)}"
        return self.vocabulary.id_to_token(int(index))

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch["tokens"], batch["mask"]), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _evaluate(self, stage: str, batch: dict[str, Tensor]) -> None:
        logits, labels = self(batch["tokens"], batch["mask"]), batch["label"]
        size = len(labels)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), prog_bar=stage == "val", batch_size=size)
        for kind in ("acc", "macro_f1", "class_f1"):
            self.metrics[f"{stage}_{kind}"].update(logits, labels)
        self.log(f"{stage}/acc", self.metrics[f"{stage}_acc"], batch_size=size)
        self.log(f"{stage}/macro_f1", self.metrics[f"{stage}_macro_f1"], prog_bar=stage == "val", batch_size=size)

    def _log_class_f1(self, stage: str) -> None:
        metric = self.metrics[f"{stage}_class_f1"]
        if not metric.update_called:
            return
        for name, value in zip(self.class_names, metric.compute(), strict=True):
            self.log(f"{stage}/f1/{name}", value)
        metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_class_f1("val")

    def on_test_epoch_end(self) -> None:
        self._log_class_f1("test")

    def configure_optimizers(self):
        net = self._net()
        # decay matrices only (not biases, norms, positions): the usual Transformer practice (ours)
        decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and n != "positional_embedding"] + [self.head.weight]
        no_decay = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and n != "positional_embedding")] + [self.head.bias]
        return self.optimizer([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
