"""A LightningModule for computation-graph (CG) performance predictors, shared by GENNAPE (Mills et al.,
AAAI 2023, ``modules/gennape.py``) and the transferable predictor (Han et al., SDM 2023,
``modules/transferable_predictor.py``).

The recipe these papers share: a k-GNN encoder (:class:`litzoo.framework.nn.cg.CGEncoder`) is pretrained with a
contrastive objective for ``contrastive_epochs``, then frozen; a predictor head regresses the standardised
target; the test split is a family held out of training (zero-shot transfer), and
:meth:`CGPredictorModule.finetune` adapts to a few labelled graphs of it. A paper plugs in what is its own:

- the head, by :meth:`CGPredictorModule.build_head` (default: one :class:`litzoo.framework.nn.cg.PredictorHead`;
  GENNAPE's membership-weighted fuzzy c-means ensemble) — a method, not a constructor argument, so the
  hyper-parameters stay flat and a checkpoint loads with ``load_from_checkpoint(path)`` alone;
- what is fitted once the encoder is frozen, by :meth:`CGPredictorModule.on_encoder_frozen` (GENNAPE's clusters);
- the contrastive objective, by :meth:`CGPredictorModule.contrastive_loss_of` (default NT-Xent on two views).
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MetricCollection
from torchmetrics.regression import KendallRankCorrCoef, SpearmanCorrCoef

from litzoo.framework.graph.computation import NUM_NODE_FEATURES
from litzoo.framework.losses import NTXentLoss
from litzoo.framework.nas.ranking import TopKPrecision
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.cg import CGEncoder, PredictorHead

# ---------------------------------------------------------------------------------------- the module


def adam_cg_predictor(params: Any, lr: float = 1e-4) -> torch.optim.Adam:
    """Adam at the official demo's learning rate 1e-4 (no weight decay)."""
    return torch.optim.Adam(params, lr=lr)


class CGPredictorModule(L.LightningModule):
    """A CG predictor on batches of computation graphs (``torch_geometric`` batches with ``x``, ``edge_index``,
    ``batch`` and a standardised target ``y``; e.g. ``litzoo.datamodules.architectures.ArchitectureDataModule``).

    Epochs ``[0, contrastive_epochs)`` pretrain the encoder with NT-Xent; at epoch ``contrastive_epochs``
    the encoder is frozen (:meth:`on_encoder_frozen` runs) and the head (``self.heads``, from
    :meth:`build_head`) trains for the remaining epochs. Validation / test log ``srcc`` (Spearman),
    ``kendall``, ``mae`` (in standardised units) and ``top10`` (top-10% precision) once the head is trained;
    the test split is the held-out family, so ``test/srcc`` is zero-shot transfer. :meth:`finetune` adapts the
    head (and the encoder when it is not frozen) on a few labelled graphs of the new family.

    Args:
        contrastive_epochs: contrastive pretraining epochs (0: no pretraining; encoder and head train together).
        temperature: NT-Xent τ.
        projection_dim: output of the contrastive projection MLP (used only in pretraining).
        optimizer: default Adam lr 1e-4 (official demo).
        **net_kwargs: the :class:`CGEncoder`'s arguments ``embed_dim`` … ``flip_prob`` (default the official demo's
            32, 32, 6 layers, 8 eigenvectors flipped with p = 0.25); its ``num_node_features`` is the graphs' own.
    """

    monitor = "val/srcc"
    monitor_mode = "max"

    def __init__(
        self,
        contrastive_epochs: int = 20,
        temperature: float = 0.1,
        projection_dim: int = 32,
        optimizer: OptimizerCallable = adam_cg_predictor,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        if contrastive_epochs < 0:
            raise ValueError(f"contrastive_epochs must be >= 0, got {contrastive_epochs}")
        check_network_kwargs(CGEncoder, net_kwargs, type(self).__name__, set_by_owner=("num_node_features",))
        encoder = CGEncoder(NUM_NODE_FEATURES, **net_kwargs)
        if contrastive_epochs > 0 and (encoder.eigvec_size == 0 or encoder.flip_prob == 0):
            raise ValueError("contrastive views differ by eigenvector sign flips: set eigvec_size > 0 and flip_prob > 0")
        # Lightning collects the arguments of every __init__ in the chain: a subclass's own (GENNAPE's
        # num_clusters ...) are in self.hparams from here on, for build_head to read
        self.save_hyperparameters(ignore=["optimizer"])
        self.encoder = encoder
        hidden_dim = encoder.hidden_dim
        self.projection = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, projection_dim))
        self.heads = self.build_head()
        self.contrastive_loss = NTXentLoss(temperature)
        self.optimizer = optimizer
        metrics = MetricCollection({"srcc": SpearmanCorrCoef(), "kendall": KendallRankCorrCoef(), "mae": MeanAbsoluteError(),
                                    "top10": TopKPrecision(0.1)})  # fmt: skip
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")
        # the phase lives in the state dict, so a checkpoint tested or resumed later knows it
        self.register_buffer("heads_phase", torch.tensor(contrastive_epochs == 0))

    # ---- what a paper plugs in -------------------------------------------------------------------
    def build_head(self) -> nn.Module:
        """The predictor head, ``(G, hidden_dim)`` embeddings → ``(G,)`` or ``(G, 1)`` predictions; called once in
        ``__init__`` after ``save_hyperparameters`` and the encoder, so it reads its settings from ``self.hparams``
        and the embedding width from ``self.encoder.hidden_dim``. Default: one :class:`PredictorHead` (the official
        demo's regressor)."""
        return PredictorHead(self.encoder.hidden_dim)

    def on_encoder_frozen(self) -> None:
        """Called when the encoder has just been frozen after contrastive pretraining, at the start of that
        training epoch — and again at the first frozen epoch of a run resumed from a checkpoint (freezing is
        re-applied then), so state fitted here should live in buffers and be fitted only when missing.
        :meth:`training_embeddings` gives the frozen embeddings of the training graphs. Default: nothing."""

    # ---- phases -------------------------------------------------------------------------------
    @property
    def pretraining(self) -> bool:
        return not bool(self.heads_phase)

    @property
    def encoder_frozen(self) -> bool:
        return self.hparams.contrastive_epochs > 0 and not self.pretraining

    def embed(self, batch: Any) -> Tensor:
        """``(G, hidden_dim)`` graph embeddings (eigenvector sign flips only in training mode)."""
        return self.encoder(batch.x, batch.edge_index, batch.batch, getattr(batch, "eigvecs", None))

    def forward(self, batch: Any) -> Tensor:
        """``(G,)`` predicted standardised targets."""
        return self.heads(self.embed(batch)).view(-1)  # a head may answer (G, 1)

    def on_train_epoch_start(self) -> None:
        if self.pretraining and self.current_epoch >= self.hparams.contrastive_epochs:
            self.heads_phase.fill_(True)
        if not self.encoder_frozen:
            return
        # frozen flags are not in the checkpoint: a resumed run freezes again, and tells the subclass again
        just_frozen = any(p.requires_grad for p in self.encoder.parameters())
        self.encoder.requires_grad_(False)
        self.projection.requires_grad_(False)
        if just_frozen:
            self.on_encoder_frozen()

    @torch.no_grad()
    def training_embeddings(self) -> Tensor:
        """Embeddings of every training graph by the (frozen, eval-mode) encoder."""
        was_training = self.encoder.training
        self.encoder.eval()
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule is not None else self.trainer.train_dataloader
        embeddings = [self.embed(batch.to(self.device)) for batch in loader]
        self.encoder.train(was_training)
        return torch.cat(embeddings)

    # ---- steps --------------------------------------------------------------------------------
    def contrastive_loss_of(self, batch: Any) -> Tensor:
        """GENNAPE's pretraining objective: NT-Xent between two views of every graph, which differ by
        independent eigenvector sign flips, through the projection MLP."""
        z0 = self.projection(self.embed(batch))
        z1 = self.projection(self.embed(batch))
        return self.contrastive_loss(z0, z1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        size = batch.num_graphs
        if self.pretraining:
            loss = self.contrastive_loss_of(batch)
            self.log("train/contrastive_loss", loss, prog_bar=True, batch_size=size)
            return loss
        if self.encoder_frozen:
            self.encoder.eval()  # frozen: no sign-flip noise in its embeddings either
        loss = F.mse_loss(self(batch), batch.y.view(-1))
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def _evaluate(self, batch: Any, metrics: MetricCollection) -> None:
        if self.pretraining:
            return  # no trained head yet
        preds = self(batch)
        metrics.update(preds, batch.y.view(-1))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def _log_metrics(self, metrics: MetricCollection) -> None:
        if metrics["srcc"].update_count == 0:
            if self.pretraining and metrics is self.val_metrics:
                # no head yet: the monitored value is undefined (NaN ranks last in ModelCheckpoint)
                self.log("val/srcc", float("nan"), prog_bar=True)
            return
        self.log_dict(metrics.compute(), prog_bar=True)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch)

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())

    # ---- transfer -----------------------------------------------------------------------------
    def finetune(self, loader: Any, epochs: int = 100, lr: float = 1e-4) -> CGPredictorModule:
        """A copy adapted to a new family: ``epochs`` of Adam (``lr``) with MSE on ``loader``'s graphs —
        the head, plus the encoder when no contrastive pretraining froze it (official demo: 100 epochs,
        lr 1e-4, batch 1). Buffers of the head (GENNAPE's clusters) stay as fitted."""
        if epochs < 1 or lr <= 0:
            raise ValueError(f"epochs must be >= 1 and lr > 0, got {epochs} and {lr}")
        trainer, self._trainer = self._trainer, None  # the copy must not drag the Trainer along
        try:
            tuned = copy.deepcopy(self)
        finally:
            self._trainer = trainer
        frozen = self.hparams.contrastive_epochs > 0
        params = list(tuned.heads.parameters()) + ([] if frozen else list(tuned.encoder.parameters()))
        tuned.encoder.requires_grad_(not frozen)
        optimizer = torch.optim.Adam(params, lr=lr)
        tuned.train()
        if frozen:
            tuned.encoder.eval()
        with torch.enable_grad():
            for _ in range(epochs):
                for batch in loader:
                    optimizer.zero_grad()
                    F.mse_loss(tuned(batch), batch.y.view(-1)).backward()
                    optimizer.step()
        return tuned.eval()
