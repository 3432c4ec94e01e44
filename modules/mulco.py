"""Mulco: nested named-entity recognition through multiple scopes (Yang, Luo, Guo, Chen, Niu, Xu, "Mulco: Recognizing
Chinese Nested Named Entities Through Multiple Scopes", CIKM 2023, arXiv 2211.10854).

What the paper fixes (its abstract; the full text could not be read offline and no official code was released, so
everything below the abstract's level is marked as chosen): a character encoder feeds several *scopes*; each scope is
a sequence-labelling layer that recognises an entity by tagging an **anchor** character with the entity's **type and
length**, so that spans which overlap (nested entities) can be emitted by different scopes; the scopes' entities are
united. Reported metric: span-level micro P/R/F1, overall and on nested entities
(:class:`~litzoo.framework.text.spans.SpanF1`).

Chosen here where the available text is silent (each tested in ``tests/modules/test_mulco.py``):

- **Encoder**: the BiLSTM of :class:`~litzoo.framework.nn.text_encoder.BiLSTMTextEncoder` (the paper names BERT or a
  BiLSTM; BERT-zh weights are not available offline). Shared unchanged with the flat baseline
  (``modules/bio_crf_tagger.py``), so the comparison isolates the output layer.
- **Anchor**: the entity's *first* token (its start). Nested Chinese entities share starts often (北京大学医学部 ⊃
  北京大学 ⊃ 北京), which is exactly why several scopes are needed; an end anchor would be symmetric.
- **Length**: exact lengths ``1..max_length`` in tokens, no buckets (a bucket would make the decoded end ambiguous).
  A gold span longer than ``max_length`` cannot be represented: it is left out of the targets and counted
  (:attr:`ScopeAssignment.too_long`), and at evaluation it is a false negative.
- **Labels per scope**: ``0 = O``, and ``1 + k * max_length + (length - 1)`` for type ``k`` (softmax over
  ``1 + num_types * max_length`` classes at every token); non-anchor tokens are ``O``.
- **Assigning gold spans to scopes** (:meth:`MulcoScheme.assign`): a span's preferred scope is its nesting depth (the
  number of gold spans containing it; outermost = scope 0), capped at ``num_scopes - 1``. Spans are placed in the
  order (preferred scope, start, longest first, type); a span whose preferred scope already holds a span with the same
  anchor goes to the next deeper free scope, then the next shallower one; one that finds no free scope is left out and
  counted (:attr:`ScopeAssignment.dropped`). So no scope ever holds two spans with the same anchor, and any gold set in
  which at most ``num_scopes`` spans share a start (with lengths <= ``max_length``) round-trips exactly through
  encode -> decode.
- **Decoding**: per scope, each token whose arg-max label is not ``O`` gives ``(t, t + length, type)``; a span that
  would run past the sentence is discarded (not clipped); the union over scopes is the prediction (a span emitted by
  two scopes counts once). No further conflict resolution.
- **Loss**: the sum over scopes of the token cross-entropy averaged over the real tokens.
- **Optimizer**: Adam, lr 1e-3 (not given in the available text).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.optim import Adam, Optimizer

from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.text_encoder import BiLSTMTextEncoder
from litzoo.framework.text.span_evaluation import SpanTaggerEvaluation
from litzoo.framework.text.spans import Span, SpanF1, nesting_depth, span_sets_from_tensor

__all__ = ["MulcoModule", "MulcoNet", "MulcoScheme", "ScopeAssignment", "adam_mulco"]


def adam_mulco(params: Iterable, lr: float = 1e-3) -> Optimizer:
    """Adam, lr 1e-3 (a choice: the available text of the paper gives no optimizer)."""
    return Adam(params, lr=lr)


# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ScopeAssignment:
    """Gold spans placed in scopes: ``scopes[s]`` holds scope ``s``'s spans (distinct anchors); ``dropped`` found no free
    scope; ``too_long`` exceed ``max_length``."""

    scopes: list[list[Span]]
    dropped: list[Span] = field(default_factory=list)
    too_long: list[Span] = field(default_factory=list)


class MulcoScheme:
    """The scope tagging of Mulco: the label ids, the assignment of gold spans to scopes, encoding and decoding.

    Args:
        types: entity type names (type id = position).
        num_scopes: number of scopes ``S`` (>= 1).
        max_length: the longest span a label can express, in tokens (>= 1).
    """

    def __init__(self, types: Sequence[str], num_scopes: int, max_length: int) -> None:
        types = list(types)
        if not types or len(set(types)) != len(types):
            raise ValueError(f"types must be unique and non-empty, got {types}")
        if num_scopes < 1 or max_length < 1:
            raise ValueError(f"num_scopes and max_length must be >= 1, got {num_scopes}, {max_length}")
        self.types, self.num_scopes, self.max_length = types, int(num_scopes), int(max_length)
        self._type_index = {name: k for k, name in enumerate(types)}

    @property
    def num_labels(self) -> int:
        """``1 + num_types * max_length`` (O, then every (type, length))."""
        return 1 + len(self.types) * self.max_length

    def label(self, entity_type: str, length: int) -> int:
        if not 1 <= length <= self.max_length:
            raise ValueError(f"length {length} is outside 1..{self.max_length}")
        return 1 + self._type_index[entity_type] * self.max_length + (length - 1)

    def unlabel(self, label: int) -> tuple[str, int]:
        """``(type, length)`` of a non-O label id."""
        if not 1 <= label < self.num_labels:
            raise ValueError(f"label {label} is not an entity label of 1..{self.num_labels - 1}")
        kind, length = divmod(label - 1, self.max_length)
        return self.types[kind], length + 1

    def assign(self, spans: Iterable[Span]) -> ScopeAssignment:
        """Place gold spans in scopes by nesting depth, moving on where an anchor is taken (module docstring)."""
        spans = sorted(set(spans))
        for span in spans:
            if span[2] not in self._type_index:
                raise ValueError(f"span {span!r} has a type not in {self.types}")
        result = ScopeAssignment(scopes=[[] for _ in range(self.num_scopes)])
        keyed = []
        for span in spans:
            if span[1] - span[0] > self.max_length:
                result.too_long.append(span)
                continue
            preferred = min(nesting_depth(span, spans), self.num_scopes - 1)
            keyed.append(((preferred, span[0], -(span[1] - span[0]), span[2]), preferred, span))
        anchors: list[set[int]] = [set() for _ in range(self.num_scopes)]
        for _, preferred, span in sorted(keyed):
            order = list(range(preferred, self.num_scopes)) + list(range(preferred - 1, -1, -1))
            free = next((s for s in order if span[0] not in anchors[s]), None)
            if free is None:
                result.dropped.append(span)
                continue
            anchors[free].add(span[0])
            result.scopes[free].append(span)
        return result

    def encode(self, spans: Iterable[Span], length: int) -> tuple[Tensor, ScopeAssignment]:
        """Scope labels ``(S, length)`` long of one sentence's gold spans, and the assignment they came from."""
        spans = list(spans)
        for span in spans:
            if not 0 <= span[0] < span[1] <= length:
                raise ValueError(f"span {span!r} does not fit a sentence of {length} tokens")
        assignment = self.assign(spans)
        labels = torch.zeros(self.num_scopes, length, dtype=torch.long)
        for scope, scope_spans in enumerate(assignment.scopes):
            for start, end, entity_type in scope_spans:
                labels[scope, start] = self.label(entity_type, end - start)
        return labels, assignment

    def decode(self, labels: Tensor | Sequence[Sequence[int]], length: int) -> set[Span]:
        """The union over scopes of the spans a label grid ``(S, >= length)`` names (past-the-end spans discarded)."""
        spans: set[Span] = set()
        for row in torch.as_tensor(labels).tolist():
            for start, label in enumerate(row[:length]):
                if label == 0:
                    continue
                entity_type, span_length = self.unlabel(int(label))
                if start + span_length <= length:
                    spans.add((start, start + span_length, entity_type))
        return spans


# ---------------------------------------------------------------------------------------------------------------------
class MulcoNet(nn.Module):
    """The encoder and ``num_scopes`` linear scope heads: ``(tokens, mask) -> logits (B, S, L, 1 + num_types * max_length)``.

    Args:
        vocab_size: token ids of the vocabulary (``[PAD]`` = 0).
        num_types: entity types.
        num_scopes: scope heads (3: enough for the depth-3 nesting of ORG ⊃ ORG ⊃ GPE).
        max_length: the longest span a label expresses, in tokens.
        embed_dim, hidden_dim, num_layers, dropout: the :class:`BiLSTMTextEncoder`'s.
    """

    def __init__(
        self,
        vocab_size: int,
        num_types: int,
        num_scopes: int = 3,
        max_length: int = 16,
        embed_dim: int = 64,
        hidden_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_types < 1 or num_scopes < 1 or max_length < 1:
            raise ValueError(f"num_types, num_scopes and max_length must be >= 1, got {num_types}, {num_scopes}, {max_length}")
        self.num_types, self.num_scopes, self.max_length = num_types, num_scopes, max_length
        self.num_labels = 1 + num_types * max_length
        self.encoder = BiLSTMTextEncoder(vocab_size, embed_dim, hidden_dim, num_layers, dropout)
        # one head per scope: each scope is its own sequence-labelling layer over the shared features
        self.heads = nn.ModuleList(nn.Linear(self.encoder.out_dim, self.num_labels) for _ in range(num_scopes))

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        features = self.encoder(tokens, mask)
        return torch.stack([head(features) for head in self.heads], dim=1)


class MulcoModule(SpanTaggerEvaluation, L.LightningModule):
    """Mulco on a nested-NER DataModule (batches ``tokens``, ``mask``, ``length``, ``spans``; see
    :mod:`litzoo.datamodules.nested_ner`).

    The vocabulary size and the type names are read from ``trainer.datamodule`` (``num_tokens``, ``type_names``) at
    setup unless given, and saved in the hyper-parameters so that a checkpoint rebuilds the network. Logs
    ``train/loss`` and ``{val,test}/{precision,recall,f1,nested_precision,nested_recall,nested_f1}``.

    Args:
        vocab_size: token ids (``None``: the DataModule's ``num_tokens``).
        type_names: entity types (``None``: the DataModule's ``type_names``).
        optimizer: the optimizer factory (Adam 1e-3).
        **net_kwargs: :class:`MulcoNet`'s architecture arguments (``num_scopes``, ``max_length``, ``embed_dim``, ...).
    """

    monitor = "val/f1"
    monitor_mode = "max"

    def __init__(
        self,
        vocab_size: int | None = None,
        type_names: list[str] | None = None,
        optimizer: OptimizerCallable = adam_mulco,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(MulcoNet, net_kwargs, type(self).__name__, set_by_owner=("vocab_size", "num_types"))
        if vocab_size is not None and vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if type_names is not None and (not type_names or len(set(type_names)) != len(type_names)):
            raise ValueError(f"type_names must be unique and non-empty, got {type_names}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net_kwargs = net_kwargs
        self.net: MulcoNet | None = None
        self.scheme: MulcoScheme | None = None
        if vocab_size is not None and type_names is not None:
            self.build(vocab_size, type_names)
        self.val_spans, self.test_spans = SpanF1(), SpanF1()

    def build(self, vocab_size: int, type_names: Sequence[str]) -> None:
        self.net = MulcoNet(vocab_size, len(type_names), **self.net_kwargs)
        self.scheme = MulcoScheme(type_names, self.net.num_scopes, self.net.max_length)
        self.hparams["vocab_size"], self.hparams["type_names"] = int(vocab_size), list(type_names)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "type_names"):
            if self.net is None:
                raise LitzooError("MulcoModule: set model.vocab_size and model.type_names, or train with a nested-NER DataModule")
            return
        vocab_size, type_names = datamodule.num_tokens, list(datamodule.type_names)
        if self.net is None:
            self.build(vocab_size, type_names)
        elif (self.net.encoder.vocab_size, self.scheme.types) != (vocab_size, type_names):
            raise LitzooError(f"MulcoModule: the network has {self.net.encoder.vocab_size} tokens and types {self.scheme.types}, "
                              f"the DataModule {vocab_size} and {type_names}")  # fmt: skip

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.net is None:
            raise RuntimeError("MulcoModule has no network yet: pass vocab_size and type_names or run setup() with a DataModule")
        return self.net(tokens, mask)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """Scope labels ``(B, S, L)`` of the batch's gold spans (``-100``, ignored, at padding)."""
        gold = span_sets_from_tensor(batch["spans"], self.scheme.types)
        length = batch["tokens"].shape[1]
        labels = torch.stack([self.scheme.encode(spans, length)[0] for spans in gold]).to(self.device)
        return labels.masked_fill(~batch["mask"][:, None, :], -100)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Sum over scopes of the token cross-entropy averaged over real tokens."""
        per_scope = [F.cross_entropy(logits[:, s].flatten(0, 1), targets[:, s].flatten(), ignore_index=-100) for s in range(logits.shape[1])]
        return torch.stack(per_scope).sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["tokens"], batch["mask"])
        loss = self.loss(logits, self.targets(batch))
        if not torch.isfinite(loss):
            raise LitzooError(f"MulcoModule: non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["tokens"]))
        return loss

    @torch.no_grad()
    def predict_spans(self, tokens: Tensor, mask: Tensor) -> list[set[Span]]:
        """Decoded spans ``(start, end, type)`` of each sentence (token offsets): the union over scopes."""
        logits = self(tokens, mask)
        if not torch.isfinite(logits).all():
            raise LitzooError("MulcoModule: non-finite scope logits")
        labels = logits.argmax(-1).cpu()
        lengths = mask.long().sum(1).tolist()
        return [self.scheme.decode(labels[b], lengths[b]) for b in range(len(lengths))]

    @property
    def span_types(self) -> Sequence[str]:
        if self.scheme is None:
            raise RuntimeError("MulcoModule has no network yet: pass vocab_size and type_names or run setup() with a DataModule")
        return self.scheme.types

    def configure_optimizers(self) -> Optimizer:
        if self.net is None:
            raise RuntimeError("MulcoModule has no network yet: pass vocab_size and type_names or run setup() with a DataModule")
        return self.optimizer(self.parameters())
