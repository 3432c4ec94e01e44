"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking (Rendle, Freudenthaler, Gantner,
Schmidt-Thieme, "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009), as CAT-ART trains it: the
single-domain baseline of issue 23 and the per-domain pretraining of CAT-ART's user embeddings (Li et al., "One for
All, All for One: Learning and Transferring User Embeddings for Cross-Domain Recommendation", WSDM 2023; code
Chain123/CAT-ART: ``models.py`` ``PureMF``, ``main_single_mf.py`` / ``main_cross_pre.py``, ``utils/data.py``
``SingleEmbedRec``, ``run_functions.py`` ``train_single_step`` / ``test_single_step``).

Model: a user table and an item table (one row per id, row 0 the padding id), ``score(u, i) = <p_u, q_i>``.

Training, as CAT-ART's: one sample per training interaction (u, i) of the domain; for each, a negative j drawn
uniformly from the domain's items that are not among u's *training* items (``SingleEmbedRec.__getitem__`` redraws while
``neg in pos_dict[user]``, the training split only, so a held-out item may be drawn as a training negative); loss
``-mean log sigma(s_ui - s_uj)`` (:func:`litzoo.framework.losses.bpr.bpr_loss`) plus ``decay`` times the L2 of the
batch's embeddings (:func:`~litzoo.framework.losses.bpr.embedding_l2`; CAT-ART's Adam has ``weight_decay=0``).
Defaults of ``main_cross_pre.py``: latent 64, Adam lr 1e-3, decay 1e-4, 1 negative. Initialisation: CAT-ART keeps
``nn.Embedding``'s N(0, 1) (``init_std=1``); with 64 dimensions that makes the initial scores N(0, 64), which its
2000-epoch, early-stopped runs on millions of interactions wash out but a run of minutes does not (measured in
``benchmarks/bpr_mf.py``), so the shipped config sets ``init_std: 0.1`` (LightGCN's and RecBole's scale), and says so.

Batches: ``InteractionsDataModule``'s training loader yields one row per (user, domain) in an order drawn from
(seed, epoch) and resumable mid-epoch. This module takes the rows of its ``domain`` and expands each into *all* that
user's training interactions there (read once from ``train_sequences``, untruncated by ``max_len``), so an epoch still
visits every training interaction exactly once, as CAT-ART's; what differs is that a batch groups the interactions of
``batch_size`` users (a batch of users, not of 2048 interactions: the DataModule has no per-interaction form; a
``pairs`` training form there would give CAT-ART's exact batches). A user's negatives in an epoch come from a generator
seeded by ``(negative_seed, domain, epoch, user)`` only: independent of the batch a user lands in, of the DDP rank and
of the global RNG, so a run resumed mid-epoch (the loader's position restored) draws exactly the negatives of the
uninterrupted run.

Evaluation (each validation / test row of ``domain``; rows of other domains are skipped): sampled, the held-out item
among the DataModule's 100 ``candidates`` (:func:`~litzoo.framework.recsys.metrics.sampled_ranks`); full, among all the
domain's items minus the user's other known items (``exclusion_mask``; :func:`~litzoo.framework.recsys.metrics.full_ranks`;
CAT-ART's ``test_single_step`` masks training and validation items the same way). HR@K, NDCG@K and MRR with
:class:`~litzoo.framework.recsys.metrics.RankingMetrics`, overall and for sparse users (<= 3 training interactions),
logged as ``{val,test}/{sampled,full}/[sparse/]{hr@10,ndcg@10,mrr}``. Ties rank pessimistically.

Verified: the loss and the regularisation against CAT-ART's formulas by hand, the gradient's sign; negatives never
among the user's training items; the logged metrics equal a brute-force recomputation from the embeddings; exact
mid-epoch resume; a fit beats popularity on the sparse domain (tests/modules/test_bpr_mf.py). Chosen where CAT-ART
is silent or differs for a reason given above: the user-grouped batches, the seeding of negatives, ``init_std`` of the
config, and evaluation with sampled candidates as well (CAT-ART ranks all items only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from litzoo.framework.losses.bpr import bpr_loss, embedding_l2
from litzoo.framework.optim import cat_art_adam
from litzoo.framework.random_state import derive_seed
from litzoo.framework.recsys.metrics import SplitRankingMetrics, full_ranks, sampled_ranks
from litzoo.framework.recsys.negatives import uniform_negatives


class BPRMF(nn.Module):
    """``score(u, i) = <p_u, q_i>`` over a user table and an item table (plain PyTorch; row 0 of each is padding).

    Args:
        num_users: user ids are ``1..num_users``.
        num_items: item ids are ``1..num_items``.
        dim: latent width (64, CAT-ART's).
        init_std: standard deviation of the normal initialisation (1, ``nn.Embedding``'s, CAT-ART's).
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 64, init_std: float = 1.0) -> None:
        super().__init__()
        if num_users < 1 or num_items < 1 or dim < 1 or init_std <= 0:
            raise ValueError(f"need num_users, num_items, dim >= 1 and init_std > 0; got {num_users}, {num_items}, {dim}, {init_std}")
        self.user = nn.Embedding(num_users + 1, dim)
        self.item = nn.Embedding(num_items + 1, dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores ``(B,)`` of ``items`` ``(B,)``, or ``(B, n)`` of ``items`` ``(B, n)`` (each row for its user)."""
        user = self.user(users)
        return (user[:, None] * self.item(items)).sum(-1) if items.dim() == 2 else (user * self.item(items)).sum(-1)

    def score_all(self, users: Tensor) -> Tensor:
        """``(B, num_items + 1)`` scores of every item id for ``users`` (column 0, the padding id, is never ranked)."""
        return self.user(users) @ self.item.weight.t()


class BPRMFModule(L.LightningModule):
    """BPR-MF on one domain of an :class:`~litzoo.datamodules.interactions.InteractionsDataModule`.

    Args:
        domain: the domain trained and evaluated (its validation / test rows must be among the DataModule's
            ``eval_domains``; a split with none of them logs nothing and warns).
        dim: latent width (64).
        decay: weight of the batch-embedding L2 (1e-4, CAT-ART's ``weight_decay`` argument).
        train_negatives: negatives per training interaction (1, CAT-ART's ``bpr_neg``).
        init_std: normal initialisation scale of both tables (1, CAT-ART's; the config uses 0.1, see the module docstring).
        negative_seed: seed of the training negatives.
        ks: HR / NDCG cut-offs.
        optimizer: the optimizer (CAT-ART's Adam, lr 1e-3, no weight decay).
    """

    monitor = "val/full/ndcg@10"  # what the CLI keeps best.ckpt on (CAT-ART early-stops on the validation loss)
    monitor_mode = "max"

    def __init__(
        self,
        domain: str,
        dim: int = 64,
        decay: float = 1e-4,
        train_negatives: int = 1,
        init_std: float = 1.0,
        negative_seed: int = 0,
        ks: Sequence[int] = (10,),
        optimizer: OptimizerCallable = cat_art_adam,
    ) -> None:
        super().__init__()
        if not domain:
            raise ValueError("domain must name one of the DataModule's domains")
        if dim < 1 or train_negatives < 1 or decay < 0 or init_std <= 0 or not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"need dim >= 1, train_negatives >= 1, decay >= 0, init_std > 0 and positive ks; got {dim}, {train_negatives}, {decay}, {init_std}, {ks}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net: BPRMF | None = None
        self.domain = domain
        self.domain_id = -1
        self._train: dict[int, np.ndarray] = {}
        self.metrics = SplitRankingMetrics(tuple(ks))

    # ------------------------------------------------------------------ tables
    def build(self, num_users: int, num_items: int) -> BPRMF:
        """Create the tables (once): ``setup`` calls it with the DataModule's sizes."""
        if self.net is None:
            self.net = BPRMF(num_users, num_items, self.hparams.dim, self.hparams.init_std)
        elif (self.net.user.num_embeddings - 1, self.net.item.num_embeddings - 1) != (num_users, num_items):
            raise ValueError(f"the tables hold {self.net.user.num_embeddings - 1} users and {self.net.item.num_embeddings - 1} items, "
                             f"the data {num_users} and {num_items} in domain {self.domain!r}")  # fmt: skip
        return self.net

    @override
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        datamodule.load()
        if self.domain not in datamodule.domain_names:
            raise ValueError(f"domain {self.domain!r} is not one of the DataModule's domains {datamodule.domain_names}")
        self.domain_id = datamodule.domain_index(self.domain)
        self._train = {user: np.asarray(items, dtype=np.int64) for user, items in datamodule.train_sequences(self.domain).items()}
        self._exclusion_mask = datamodule.exclusion_mask
        self.build(datamodule.num_users, datamodule.num_items(self.domain))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bpr_mf_tables"] = (self.net.user.num_embeddings - 1, self.net.item.num_embeddings - 1)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.build(*checkpoint["bpr_mf_tables"])  # load_from_checkpoint without a DataModule: sizes from the file

    def user_embeddings(self) -> Tensor:
        """``(num_users + 1, dim)`` trained user vectors (row 0 padding): what CAT-ART stacks over domains."""
        return self.net.user.weight.detach()

    def item_embeddings(self) -> Tensor:
        """``(num_items + 1, dim)`` trained item vectors of ``domain`` (row 0 padding)."""
        return self.net.item.weight.detach()

    # ------------------------------------------------------------------ training
    def training_pairs(self, users: Tensor, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(users (P,), positives (P,), negatives (P, n))``: every training interaction of ``users`` in ``domain``,
        each with ``train_negatives`` negatives from the generator of ``(negative_seed, domain, epoch, user)``."""
        num_items = self.net.item.num_embeddings - 1
        hp = self.hparams
        user_rows, positives, negatives = [], [], []
        for user in users.tolist():
            items = self._train[user]
            rng = np.random.default_rng(derive_seed(hp.negative_seed, self.domain_id, epoch, user))
            user_rows.append(np.full(len(items), user, dtype=np.int64))
            positives.append(items)
            negatives.append(uniform_negatives(num_items, items, len(items) * hp.train_negatives, rng).reshape(len(items), hp.train_negatives))
        as_tensor = lambda parts: torch.from_numpy(np.concatenate(parts)).to(self.device)  # noqa: E731
        return as_tensor(user_rows), as_tensor(positives), as_tensor(negatives)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        users = batch["user"][batch["domain"] == self.domain_id]
        if users.numel() == 0:
            return None  # no row of this domain in the batch: nothing to train (Lightning skips the step)
        users, positives, negatives = self.training_pairs(users, self.current_epoch)
        user, positive, negative = self.net.user(users), self.net.item(positives), self.net.item(negatives)
        ranking = bpr_loss((user * positive).sum(-1), (user[:, None] * negative).sum(-1))
        regularisation = embedding_l2(user, positive, negative, batch_size=len(users))
        loss = ranking + self.hparams.decay * regularisation
        if not torch.isfinite(loss):
            raise FloatingPointError(f"BPR-MF loss is not finite at epoch {self.current_epoch}, batch {batch_idx}")
        self.log_dict({"train/loss": loss, "train/bpr": ranking, "train/l2": regularisation}, batch_size=len(users))
        return loss

    # ------------------------------------------------------------------ evaluation
    def ranks(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(sampled ranks, full ranks, sparse)`` of the batch's rows of ``domain`` (None when it has none)."""
        rows = batch["domain"] == self.domain_id
        if not rows.any():
            return None
        users, targets = batch["user"][rows], batch["target"][rows]
        sampled = sampled_ranks(self.net(users, batch["candidates"][rows]))
        exclude = self._exclusion_mask(self.domain, users.cpu(), targets.cpu()).to(self.device)
        full = full_ranks(self.net.score_all(users), targets, exclude)
        return sampled, full, batch["sparse"][rows]

    def _evaluation_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        ranked = self.ranks(batch)
        if ranked is not None:
            sampled, full, sparse = ranked
            self.metrics.update(stage, "sampled", sampled, sparse)
            self.metrics.update(stage, "full", full, sparse)

    def _log_metrics(self, stage: str) -> None:
        if self.metrics.count(stage) == 0:
            if not self.trainer.sanity_checking:
                rank_zero_warn(f"BPR-MF: no {stage} row of domain {self.domain!r} was evaluated; is it among the DataModule's eval_domains?")
            return
        self.log_dict(self.metrics.compute(stage))  # the sparse group is left out when the split has no sparse user

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    @override
    def configure_optimizers(self) -> Optimizer:
        return self.optimizer(self.parameters())


__all__ = ["BPRMF", "BPRMFModule"]
