"""The flat BIO-CRF tagger: the BiLSTM-CRF of Lample et al., "Neural Architectures for Named Entity Recognition",
NAACL 2016, as the flat baseline of Mulco (Yang et al., CIKM 2023, arXiv 2211.10854; issue 24, item 1).

The same encoder as Mulco (:class:`~litzoo.framework.nn.text_encoder.BiLSTMTextEncoder`), a linear layer to BIO
emission scores and the linear-chain CRF of the core (:meth:`LinearChainCRF.from_bio
<litzoo.framework.nn.crf.LinearChainCRF.from_bio>`: valid BIO sequences only; its partition function and Viterbi are
checked against brute force in ``tests/framework/test_crf.py``). A flat tagging holds no overlapping spans, so on
nested gold it is trained on :func:`~litzoo.framework.text.spans.flatten_for_bio` (``keep="outermost"``: the spans
contained in no other, the usual choice for a flat tagger on nested data) and, at evaluation, its decoded spans are
scored with the same :class:`~litzoo.framework.text.spans.SpanF1` against the *full* nested gold, so every inner entity
is a false negative it cannot avoid: the gap Mulco claims to close.

Chosen: the CRF loss is the mean negative log-likelihood over sentences (pytorch-crf's ``reduction="mean"``); Adam,
lr 1e-3, as Mulco's, so that the comparison differs only in the output layer (Lample et al. used SGD 0.01 with gradient
clipping on real corpora). Verified in ``tests/modules/test_bio_crf_tagger.py``: the training targets are the BIO tags
of the outermost spans, decoding never emits overlapping spans, and a short fit beats the trivial baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.optim import Adam, Optimizer

from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.crf import LinearChainCRF
from litzoo.framework.nn.text_encoder import BiLSTMTextEncoder
from litzoo.framework.text.span_evaluation import SpanTaggerEvaluation
from litzoo.framework.text.spans import BIOScheme, Span, SpanF1, flatten_for_bio, span_sets_from_tensor

__all__ = ["BIOCRFNet", "BIOCRFTagger", "adam_tagger"]


def adam_tagger(params: Iterable, lr: float = 1e-3) -> Optimizer:
    """Adam, lr 1e-3 (Mulco's choice here, so that the two taggers train alike)."""
    return Adam(params, lr=lr)


class BIOCRFNet(nn.Module):
    """Encoder, linear emissions over BIO tags and a BIO-constrained CRF.

    Args:
        vocab_size: token ids of the vocabulary (``[PAD]`` = 0).
        type_names: entity types; the tags are ``BIOScheme(type_names).tag_names``.
        embed_dim, hidden_dim, num_layers, dropout: the :class:`BiLSTMTextEncoder`'s.
    """

    def __init__(
        self,
        vocab_size: int,
        type_names: Sequence[str],
        embed_dim: int = 64,
        hidden_dim: int = 64,
        num_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.scheme = BIOScheme(type_names)
        self.encoder = BiLSTMTextEncoder(vocab_size, embed_dim, hidden_dim, num_layers, dropout)
        self.emissions = nn.Linear(self.encoder.out_dim, self.scheme.num_tags)
        self.crf = LinearChainCRF.from_bio(self.scheme.tag_names)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Emission scores ``(B, L, num_tags)``."""
        return self.emissions(self.encoder(tokens, mask))

    def nll(self, tokens: Tensor, mask: Tensor, tags: Tensor) -> Tensor:
        """Mean CRF negative log-likelihood of the gold ``tags (B, L)``."""
        return self.crf.nll(self(tokens, mask), tags, mask, reduction="mean")

    @torch.no_grad()
    def decode(self, tokens: Tensor, mask: Tensor) -> list[set[Span]]:
        """Viterbi tags of each sentence, decoded to (non-overlapping) spans."""
        emissions = self(tokens, mask)
        if not torch.isfinite(emissions).all():
            raise LitzooError("BIOCRFTagger: non-finite emission scores")
        return [self.scheme.decode(path) for path in self.crf.viterbi(emissions, mask)]


class BIOCRFTagger(SpanTaggerEvaluation, L.LightningModule):
    """The flat BIO-CRF baseline on a nested-NER DataModule (see :mod:`litzoo.datamodules.nested_ner`).

    The vocabulary size and the type names are read from ``trainer.datamodule`` at setup unless given, and saved in the
    hyper-parameters. Logs ``train/loss`` and ``{val,test}/{precision,recall,f1,nested_precision,nested_recall,nested_f1}``
    against the full nested gold.

    Args:
        vocab_size: token ids (``None``: the DataModule's ``num_tokens``).
        type_names: entity types (``None``: the DataModule's ``type_names``).
        keep: which non-overlapping subset of the nested gold the tagger is trained on (``"outermost"``).
        optimizer: the optimizer factory (Adam 1e-3).
        **net_kwargs: :class:`BIOCRFNet`'s encoder arguments (``embed_dim``, ``hidden_dim``, ``num_layers``, ``dropout``).
    """

    monitor = "val/f1"
    monitor_mode = "max"

    def __init__(
        self,
        vocab_size: int | None = None,
        type_names: list[str] | None = None,
        keep: Literal["outermost", "innermost"] = "outermost",
        optimizer: OptimizerCallable = adam_tagger,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(BIOCRFNet, net_kwargs, type(self).__name__, set_by_owner=("vocab_size", "type_names"))
        if keep not in ("outermost", "innermost"):
            raise ValueError(f"keep must be 'outermost' or 'innermost', got {keep!r}")
        if vocab_size is not None and vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if type_names is not None and (not type_names or len(set(type_names)) != len(type_names)):
            raise ValueError(f"type_names must be unique and non-empty, got {type_names}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net_kwargs = net_kwargs
        self.net: BIOCRFNet | None = None
        if vocab_size is not None and type_names is not None:
            self.build(vocab_size, type_names)
        self.val_spans, self.test_spans = SpanF1(), SpanF1()

    def build(self, vocab_size: int, type_names: Sequence[str]) -> None:
        self.net = BIOCRFNet(vocab_size, type_names, **self.net_kwargs)
        self.hparams["vocab_size"], self.hparams["type_names"] = int(vocab_size), list(type_names)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "type_names"):
            if self.net is None:
                raise LitzooError("BIOCRFTagger: set model.vocab_size and model.type_names, or train with a nested-NER DataModule")
            return
        vocab_size, type_names = datamodule.num_tokens, list(datamodule.type_names)
        if self.net is None:
            self.build(vocab_size, type_names)
        elif (self.net.encoder.vocab_size, self.net.scheme.types) != (vocab_size, type_names):
            raise LitzooError(f"BIOCRFTagger: the network has {self.net.encoder.vocab_size} tokens and types {self.net.scheme.types}, "
                              f"the DataModule {vocab_size} and {type_names}")  # fmt: skip

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.net is None:
            raise RuntimeError("BIOCRFTagger has no network yet: pass vocab_size and type_names or run setup() with a DataModule")
        return self.net(tokens, mask)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """BIO tag ids ``(B, L)`` of the flattened gold (0 = O at padding, which the CRF mask ignores)."""
        length = batch["tokens"].shape[1]
        gold = span_sets_from_tensor(batch["spans"], self.net.scheme.types)
        tags = [self.net.scheme.encode(flatten_for_bio(spans, keep=self.hparams.keep), length) for spans in gold]
        return torch.tensor(tags, dtype=torch.long, device=self.device)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.net is None:
            raise RuntimeError("BIOCRFTagger has no network yet")
        loss = self.net.nll(batch["tokens"], batch["mask"], self.targets(batch))
        if not torch.isfinite(loss):
            raise LitzooError(f"BIOCRFTagger: non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["tokens"]))
        return loss

    def predict_spans(self, tokens: Tensor, mask: Tensor) -> list[set[Span]]:
        """Decoded spans ``(start, end, type)`` of each sentence (token offsets; never overlapping)."""
        return self.net.decode(tokens, mask)

    @property
    def span_types(self) -> Sequence[str]:
        if self.net is None:
            raise RuntimeError("BIOCRFTagger has no network yet: pass vocab_size and type_names or run setup() with a DataModule")
        return self.net.scheme.types

    def configure_optimizers(self) -> Optimizer:
        if self.net is None:
            raise RuntimeError("BIOCRFTagger has no network yet: pass vocab_size and type_names or run setup() with a DataModule")
        return self.optimizer(self.parameters())
