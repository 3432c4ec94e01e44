"""GPT: a decoder-only transformer language model (Radford et al., "Language Models are Unsupervised
Multitask Learners", 2019 — GPT-2), the model trained on full vs quality-pruned corpora in the text
quality-based pruning study (Sharma et al., arXiv:2405.01582, which trains GPT-2, GPT-Neo, Pythia and OPT).

The network, :class:`GPT`, is in the core (``litzoo.framework.nn.gpt``): GPT-2's layout, token embedding plus
learned position embedding, a stack of pre-norm causal transformer blocks (``litzoo.framework.nn.vit.Block`` with
``causal=True``), a final LayerNorm, and an output head tied to the token embedding. The defaults are GPT-2 small
(124M: width 768, 12 layers, 12 heads, context 1024); configs use tiny sizes. Differences from GPT-2: no dropout,
and the shared timm-style initialisation (``init_vit_weights``) plus GPT-2's N(0, 0.02) for the embeddings.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torch.optim import AdamW
from torchmetrics.text import Perplexity

from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.gpt import GPT

# The network lives in the core (framework/nn/gpt.py), as Altogether's captioner builds on it too and a method may not
# import another method; it is re-exported here for `from litzoo.modules.gpt import GPT`.
__all__ = ["GPT", "GPTLanguageModel", "adamw_gpt"]


def adamw_gpt(params, lr: float = 6e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1) -> AdamW:
    """AdamW lr 6e-4, betas (0.9, 0.95), weight decay 0.1: the common GPT-2 small recipe."""
    return AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


class GPTLanguageModel(L.LightningModule):
    """GPT-2-style causal LM (Radford et al., 2019): next-token cross-entropy, validation perplexity.

    Batches are ``{"tokens": (B, T + 1)}`` (``TextCorpusDataModule``): the model reads the first T
    tokens and predicts the last T. Logs ``train/loss``, ``val/loss`` and ``val/ppl``
    (``torchmetrics.text.Perplexity``).

    The vocabulary size comes from the tokenizer the datamodule trains: leave ``vocab_size`` unset and
    the network is built in :meth:`setup` from ``trainer.datamodule.vocab_size`` (the value is then
    stored in the hyper-parameters, so checkpoints reload without a datamodule).

    Args:
        vocab_size: tokens in the vocabulary; ``None`` = the datamodule's.
        optimizer: optimizer factory (default AdamW 6e-4, betas 0.9/0.95, wd 0.1; no decay on
            biases, norms and position embeddings).
        **net_kwargs: the :class:`GPT`'s other arguments, ``context_length`` … ``mlp_ratio`` (default GPT-2
            small); ``context_length`` must cover the datamodule's ``block_size``.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, vocab_size: int | None = None, optimizer: OptimizerCallable = adamw_gpt, **net_kwargs: Any) -> None:
        super().__init__()
        check_network_kwargs(GPT, net_kwargs, type(self).__name__)
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net_kwargs = net_kwargs  # the network waits for the vocabulary when vocab_size is None
        self.net: GPT | None = None
        if vocab_size is not None:
            self.build(vocab_size)
        self.val_ppl = Perplexity()

    def build(self, vocab_size: int) -> None:
        self.net = GPT(vocab_size, **self.net_kwargs)
        self.hparams["vocab_size"] = vocab_size
        self.example_input_array = torch.zeros(1, self.net.context_length, dtype=torch.long)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.net is None:
            vocab_size = getattr(datamodule, "vocab_size", None)
            if not isinstance(vocab_size, int):
                raise LitzooError("GPTLanguageModel: set model.vocab_size, or use a datamodule with a vocab_size attribute (e.g. TextCorpusDataModule)")
            self.build(vocab_size)
        data_block = getattr(datamodule, "block_size", None)
        if data_block is not None and data_block > self.net.context_length:
            raise LitzooError(f"the datamodule's block_size {data_block} exceeds the model's context_length {self.net.context_length}")

    def forward(self, tokens: Tensor) -> Tensor:
        if self.net is None:
            raise RuntimeError("GPTLanguageModel has no network yet: pass vocab_size or run setup() with a datamodule")
        return self.net(tokens)

    def _logits_targets(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens = batch["tokens"]
        return self(tokens[:, :-1]), tokens[:, 1:]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, targets = self._logits_targets(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits, targets = self._logits_targets(batch)
        self.log("val/loss", F.cross_entropy(logits.flatten(0, 1), targets.flatten()), prog_bar=True)
        self.val_ppl(logits.float(), targets)
        self.log("val/ppl", self.val_ppl)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits, targets = self._logits_targets(batch)
        self.log("test/loss", F.cross_entropy(logits.flatten(0, 1), targets.flatten()))

    def configure_optimizers(self):
        assert self.net is not None
        # GPT-2 practice: decay matrices (and the tied embedding), not biases, norms or positions
        decay, no_decay = [], []
        for name, parameter in self.net.named_parameters():
            (decay if parameter.ndim >= 2 and name != "pos_embed" else no_decay).append(parameter)
        return self.optimizer([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
