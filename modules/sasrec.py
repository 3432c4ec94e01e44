"""SASRec: self-attentive sequential recommendation (Kang & McAuley, "Self-Attentive Sequential Recommendation",
ICDM 2018, arXiv 1808.09781), the single-domain sequential baseline of the cross-domain recommenders (RecGURU).
Official code: github.com/kang205/SASRec (TensorFlow: ``model.py``, ``modules.py``, ``main.py``, ``sampler.py``,
``util.py``); the widely used PyTorch port github.com/pmixer/SASRec.pytorch (``python/model.py``, ``main.py``,
``utils.py``). Both read line by line; this file follows the official one.

The model: the encoder of :mod:`litzoo.framework.nn.sequence_encoder` over a user's left-padded item sequence, and
the score of item ``i`` after slot ``t`` is ``<F_t, M_i>`` with ``M`` the *same* item embedding table as the input
(the official shares ``item_emb_table``: input lookup and prediction layer; the paper's "shared item embedding").
Row 0 is padding, zero and never trained (the official ``zero_pad``; here ``padding_idx=0``).

Training (official ``model.py`` / ``sampler.py``): for every slot ``t`` of a training sequence, the positive is the
next item and one negative is drawn uniformly; the loss is the binary cross-entropy
``sum_t [-log sigmoid(<F_t, M_pos>) - log(1 - sigmoid(<F_t, M_neg>))] / #(non-padding targets)`` (computed with
``logsigmoid``, the stable form of the official ``log(sigmoid + 1e-24)``); padding targets are ignored. Adam, lr 1e-3,
betas (0.9, 0.98). Evaluation (official ``util.evaluate``): the state at the last slot of the user's history scores the
held-out item among 100 sampled negatives (the DataModule's ``candidates``), and here also among all items (full
ranking, the user's other known items left out); HR@K, NDCG@K, MRR overall and for sparse users
(:class:`~litzoo.framework.recsys.metrics.RankingMetrics`), logged as ``{val,test}/{sampled,full}/[sparse/]{hr@K,ndcg@K,mrr}``.

Verified (tests/modules/test_sasrec.py, tests/framework/test_sequence_encoder.py): the encoder against a loop-per-slot
reference, causality, invariance to padding, the loss against a hand computation, negatives outside the user's items, a
fit above popularity on the SYNTHETIC sparse domain, and two DDP ranks ending identical.

Chosen here, where the paper or the official code is silent or this setting needs it:

* Defaults: the official ``main.py`` defaults (maxlen 50, hidden 50, 2 blocks, 1 head, dropout 0.5, batch 128,
  l2_emb 0) are those of its Amazon runs (``Video``, ``Beauty``); its README trains ML-1M with ``--maxlen 200
  --dropout_rate 0.2`` (the pmixer port made those its defaults). The Amazon ones are the defaults here: the
  cross-domain data of issue 23 are Amazon review categories (RecGURU's Movie-Book, Sport-Cloth) with short, sparse
  sequences, the case the paper tunes dropout 0.5 for. ``l2_emb`` (0 in every official run) is not exposed.
* Negatives: the official sampler avoids the user's *training* items (``ts = set(user_train[user])``), so a user's
  validation or test item can be a training negative; here the negatives avoid every item the user has in the domain
  (:meth:`~litzoo.datamodules.interactions.InteractionsDataModule.known_items`, a superset), so no held-out item is
  ever pushed down during training. Drawn from torch's global generator (seeded by ``seed_everything`` and saved by
  ``ExactResume``), by rejection against the sorted ``user * (num_items + 1) + item`` keys of the known pairs.
* The official sampler draws users with replacement; here each epoch visits every (user, domain) row once in the
  DataModule's seeded, resumable order (pmixer's sampler shuffles users per epoch as well). A row whose history has
  one item has no training pair and weighs nothing (the official resamples such users).
* Initialisation: Glorot-uniform for the embedding tables and dense kernels, zero biases (TensorFlow's defaults, which
  the official code uses); pmixer uses Xavier-normal.
* ``domain``: the model is trained and evaluated on one domain of a multi-domain DataModule; rows of other domains are
  dropped from each batch (the DataModule's loaders mix domains). A batch with no row of the domain still runs a
  zero-weighted all-padding row, so every DDP rank takes part in every gradient all-reduce.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.optim import Adam

from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.sequence_encoder import SelfAttentiveSequenceEncoder
from litzoo.framework.recsys.metrics import SplitRankingMetrics, full_ranks, sampled_ranks
from litzoo.framework.recsys.negatives import known_item_keys, sample_negatives_avoiding


def adam_sasrec(params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.98)) -> Adam:
    """Adam with lr 1e-3 and betas (0.9, 0.98): the official ``AdamOptimizer(learning_rate=args.lr, beta2=0.98)``."""
    return Adam(params, lr=lr, betas=betas)


class SASRec(nn.Module):
    """Self-attentive encoder + shared item embedding: ``(B, L)`` left-padded item ids -> ``(B, L, d)`` states.

    Args:
        num_items: items of the domain (ids ``1..num_items``; 0 is padding).
        dim: width ``d`` (the official ``hidden_units``, 50).
        max_len: longest sequence ``L`` (``maxlen``: 50 for Amazon, 200 for ML-1M).
        num_blocks: self-attention blocks (2).
        num_heads: attention heads (1).
        dropout: dropout rate (0.5 for Amazon, 0.2 for ML-1M).
    """

    def __init__(self, num_items: int, dim: int = 50, max_len: int = 50, num_blocks: int = 2, num_heads: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()  # the official zero_pad: the padding row is always zero
        self.encoder = SelfAttentiveSequenceEncoder(dim, max_len, num_blocks, num_heads, dropout)

    def forward(self, seq: Tensor) -> Tensor:
        """``(B, L)`` item ids, 0 = padding on the left -> ``(B, L, d)``; slot ``t`` sees the items at slots ``<= t``."""
        return self.encoder(self.item_embedding(seq), seq != 0)

    def score(self, states: Tensor, items: Tensor) -> Tensor:
        """``<states, M_items>`` over the last axis: ``(..., d)`` states and ``(...)`` item ids -> ``(...)``."""
        return (states * self.item_embedding(items)).sum(-1)

    def user_state(self, seq: Tensor) -> Tensor:
        """``(B, d)``: the state after the last slot, the user's query for the next item."""
        return self(seq)[:, -1]

    def score_candidates(self, seq: Tensor, candidates: Tensor) -> Tensor:
        """``(B, C)`` scores of each row's candidate items ``(B, C)`` after its sequence."""
        return self.score(self.user_state(seq)[:, None, :], candidates)

    def score_all(self, seq: Tensor) -> Tensor:
        """``(B, num_items + 1)`` scores of every item id (column 0, padding, is not an item)."""
        return self.user_state(seq) @ self.item_embedding.weight.t()


def sasrec_loss(positive_logits: Tensor, negative_logits: Tensor, is_target: Tensor) -> Tensor:
    """The official binary cross-entropy: ``sum(-log s(pos) - log(1 - s(neg)))`` over the target slots / their count.

    Args:
        positive_logits, negative_logits: ``(B, L)`` scores of the next item and of the sampled negative at each slot.
        is_target: ``(B, L)`` bool, False at padding slots (left out of the sum and the count).
    Returns ``0`` (attached to the graph) when no slot is a target.
    """
    weight = is_target.to(positive_logits.dtype)
    per_slot = -F.logsigmoid(positive_logits) - F.logsigmoid(-negative_logits)  # log(1 - s(x)) = logsigmoid(-x)
    return (per_slot * weight).sum() / weight.sum().clamp_min(1.0)


class SASRecModule(L.LightningModule):
    """SASRec trained and evaluated on one domain of an :class:`~litzoo.datamodules.interactions.InteractionsDataModule`.

    Args:
        domain: the domain to train and evaluate on (``None``: the DataModule's first evaluated domain, e.g. the sparse
            domain of ``SharedTasteDataModule``).
        num_items: the domain's items (``None``: read from the DataModule at ``setup``; kept in the hyper-parameters so
            a checkpoint rebuilds the network).
        ks: the cut-offs K of HR@K and NDCG@K.
        full_ranking: also rank every item of the domain at evaluation (the user's other known items left out).
        optimizer: optimizer factory (Adam, lr 1e-3, betas (0.9, 0.98): the official).
        **net_kwargs: :class:`SASRec`'s architecture, ``dim`` ... ``dropout`` (the official Amazon defaults);
            ``max_len`` must cover the DataModule's.
    """

    monitor = "val/sampled/ndcg@10"
    monitor_mode = "max"

    def __init__(
        self,
        domain: str | None = None,
        num_items: int | None = None,
        ks: Sequence[int] = (10,),
        full_ranking: bool = True,
        optimizer: OptimizerCallable = adam_sasrec,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(SASRec, net_kwargs, type(self).__name__, set_by_owner=("num_items",))
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        if num_items is not None and num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net_kwargs = net_kwargs
        self.net: SASRec | None = None
        if num_items is not None:
            self.build(num_items)
        ks = tuple(int(k) for k in ks)
        self.metrics = SplitRankingMetrics(ks, ("sampled", "full") if full_ranking else ("sampled",))
        self.register_buffer("known_keys", torch.zeros(0, dtype=torch.long), persistent=False)
        self.domain_id = 0

    def build(self, num_items: int) -> None:
        self.net = SASRec(num_items, **self.net_kwargs)
        self.hparams["num_items"] = num_items

    @property
    def datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def setup(self, stage: str) -> None:
        datamodule = self.datamodule
        if datamodule is None or not hasattr(datamodule, "known_items"):
            if self.net is None:
                raise LitzooError("SASRecModule: set model.num_items, or train with an InteractionsDataModule")
            return
        names = list(datamodule.domain_names)
        domain = self.hparams.domain or (datamodule.hparams.eval_domains or names)[0]
        if domain not in names:
            raise LitzooError(f"SASRecModule: domain {domain!r} is not one of the DataModule's domains {names}")
        evaluated = datamodule.hparams.eval_domains or names
        if domain not in evaluated:
            raise LitzooError(f"SASRecModule: domain {domain!r} is not evaluated by the DataModule (eval_domains {evaluated}); add it to data.eval_domains")
        self.domain, self.domain_id = domain, names.index(domain)
        num_items = datamodule.num_items(domain)
        if self.net is None:
            self.build(num_items)
        elif self.net.num_items != num_items:
            raise LitzooError(f"SASRecModule: the network has {self.net.num_items} items, domain {domain!r} of the DataModule has {num_items}")
        data_len, max_len = datamodule.hparams.max_len, self.net.encoder.max_len
        if data_len > max_len:
            raise LitzooError(f"SASRecModule: the DataModule's max_len {data_len} exceeds the model's max_len {max_len}")
        self.known_keys = known_item_keys(datamodule.known_items(domain), num_items).to(self.device)

    def forward(self, seq: Tensor) -> Tensor:
        if self.net is None:
            raise RuntimeError("SASRecModule has no network yet: pass num_items or run setup() with a DataModule")
        return self.net(seq)

    def _domain_rows(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["domain"] == self.domain_id

    # ------------------------------------------------------------------ training
    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, int]:
        """The official loss over the batch's rows of the domain, the share of target slots where the positive
        outscores its negative (the official training AUC), and the number of rows used."""
        keep = self._domain_rows(batch)
        seq, target, user = batch["seq"][keep], batch["target"][keep], batch["user"][keep]
        rows = len(seq)
        if not rows:  # no row of this domain: a zero-weighted padding row keeps every parameter in the graph (DDP)
            seq = target = torch.zeros(1, batch["seq"].shape[1], dtype=torch.long, device=self.device)
            user = torch.zeros(1, dtype=torch.long, device=self.device)
        negative = sample_negatives_avoiding(target, user, self.known_keys, self.net.num_items)
        states = self(seq)
        positive_logits, negative_logits = self.net.score(states, target), self.net.score(states, negative)
        is_target = target != 0
        loss = sasrec_loss(positive_logits, negative_logits, is_target)
        auc = ((positive_logits > negative_logits) & is_target).sum() / is_target.sum().clamp_min(1)
        return loss, auc.detach(), rows

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, auc, rows = self.training_loss(batch)
        if not torch.isfinite(loss):
            raise LitzooError(f"SASRecModule: non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=max(rows, 1))
        self.log("train/auc", auc, batch_size=max(rows, 1))
        return loss

    def configure_optimizers(self):
        if self.net is None:
            raise RuntimeError("SASRecModule has no network yet: pass num_items or run setup() with a DataModule")
        return self.optimizer(self.parameters())

    # ------------------------------------------------------------------ evaluation
    def ranks(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"sampled", "full"?, "sparse"}`` for the batch's rows of the domain: 1-based ranks of the held-out items
        among the DataModule's candidates and (``full_ranking``) among all items, and the sparse-user mask."""
        keep = self._domain_rows(batch)
        seq, target = batch["seq"][keep], batch["target"][keep]
        out = {"sparse": batch["sparse"][keep]}
        if not len(seq):
            return out
        state = self(seq)[:, -1]
        scores = self.net.score(state[:, None, :], batch["candidates"][keep])
        if not torch.isfinite(scores).all():
            raise LitzooError("SASRecModule: non-finite candidate scores")
        out["sampled"] = sampled_ranks(scores)
        if self.hparams.full_ranking:
            all_scores = state @ self.net.item_embedding.weight.t()
            exclude = self.datamodule.exclusion_mask(self.domain, batch["user"][keep].cpu(), target.cpu()).to(self.device)
            out["full"] = full_ranks(all_scores, target, exclude)
        return out

    def _eval_step(self, split: str, batch: dict[str, Tensor]) -> None:
        ranks = self.ranks(batch)
        for kind in self.metrics.kinds:
            if kind in ranks:
                self.metrics.update(split, kind, ranks[kind], ranks["sparse"])

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_metrics(self, split: str) -> None:
        for name, value in self.metrics.compute(split).items():  # the same names on every rank (synchronised, NaN left out)
            self.log(name, value, prog_bar=name == f"{split}/sampled/ndcg@10")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")


__all__ = ["SASRec", "SASRecModule", "adam_sasrec", "sasrec_loss"]
