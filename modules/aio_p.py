"""AIO-P — Expanding Neural Performance Predictors Beyond Image Classification (Mills, Niu, Salameh, Qiu,
Han, Liu, Zhang, Lu, Jui; AAAI 2023, arXiv 2211.17228).

AIO-P pretrains one computation-graph (CG) performance predictor on architectures labelled on several
computer-vision tasks and transfers it to a task it has not seen, zero-shot or after fine-tuning on a few
labelled architectures. Here it is a configuration of litzoo's shared k-GNN (:class:`litzoo.framework.nn.cg.CGEncoder`,
:class:`litzoo.framework.nn.cg.PredictorHead`) on :class:`litzoo.datamodules.architecture_tasks.MultiTaskArchitectureDataModule`
(tiny digit CNNs labelled on three digits tasks).

Verified in the official code (Ascend-Research/AIO-P, MIT: ``run_gpi_acc_predictor.py``,
``model_src/multitask/k_adapters.py``, ``normalizers.py``, ``model_src/get_truth_and_preds.py``):

1. A base CG regressor (GraphConv ×6, hidden 32, tanh, mean pooling, the ``post_proj`` MLP head) is
   trained on the source data with MSE, Adam lr 1e-4 (``-initial_lr``, ``run_gpi_acc_predictor.py:49``), 40 epochs,
   batch 32. Every optimizer step of every phase (base, adapters, fine-tuning) first clips the gradients to
   a total L2 norm of 5.0 (``-max_gradient_norm``, ``params.py:29``; ``torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)``
   between ``backward`` and ``step`` in ``model_src/predictor/model_perf_predictor.py:114``). In a Lightning fit
   this is ``Trainer(gradient_clip_val=5.0)`` (norm clipping over the optimizer's parameters, those without a
   gradient skipped, as the official call): ``configs/aio_p/architectures.yaml`` sets it; :meth:`AIOPModule.finetune`,
   its own loop, clips itself.
2. **K-Adapters** (``CGRegressorAdapter``, ``-k_adapt``, ``-k_epochs 40``): every base parameter is frozen;
   K adapters, one per source task/family, are trained IN SEQUENCE (``set_k(k)``, a fresh Adam over the
   model for each). Adapter k is a GNN body of as many GraphConv layers as the base: layer i reads the
   concatenation of the frozen base's layer-i output and the adapter's previous output (the node
   embedding for the first), tanh after each; its graph embedding (mean pooling) is concatenated with the
   frozen base's graph embedding and goes through adapter k's own head (Linear(2h, h), Linear, ReLU,
   Linear, Linear, Linear(h, 1)). The base head is not used by the adapters. After training,
   ``set_k(-1)``: the prediction is the MEAN of the K adapter heads' outputs.
3. **Label scaling** (``MultiTaskNormalizer``, ``-tar_norm``): labels of each task are standardised with
   their own mean and population std (``numpy.std``); the ``flops`` option first divides a label by
   ``log10(FLOPs + 1) + 1``; ``inverse`` multiplies it back. Each source task/family gets its own
   normaliser; the target's is fitted on the fine-tuning samples, or on the target test set itself when
   there are none; predictions are inverse-transformed before MAE/SRCC.
4. **Fine-tuning** on the target (``-fine_tune_epochs 100``, batch 1, lr 1e-4): either the adapter heads
   (``ft_parameters``; optionally GNN layers), or with ``-rescale w`` only a **rescale** of each adapter's
   last layer: ``s_k = α_k·I + b_k`` (``α`` of shape (K,), ``b`` (K, h + 1)), the last layer's weight
   columns multiplied by ``s_k[:h]`` and its bias by ``s_k[h]`` (``forward_rescale``), everything else
   frozen, loss ``MSE + w·Σ|b|`` (``RescaleLoss``).

Chosen here (not from the code or unverifiable):

- The base predictor trains on the FIRST source task and adapter k on source task k (``adapter_tasks``);
  the official base trains on its source families' data and the adapters on other families/tasks.
- ``α`` and ``b`` start at 1 and 0 (the rescale is the identity until fine-tuned, so zero-shot and
  rescale-fine-tuned models start equal); the official ``init_alpha`` draws both from N(0, 1).
- The adapters read the frozen base's per-layer node states (:meth:`CGEncoder.forward_layers`) with the
  base in eval mode (no eigenvector sign flips).
- Our node features replace the official summed op / shape / kernel embeddings (see :mod:`litzoo.modules.gennape`).
- Phases are epoch ranges of ONE Lightning fit: ``[0, base_epochs)`` base, then ``adapter_epochs`` per
  adapter; one optimizer over all parameters (frozen ones get no gradient, so the effect equals the
  official fresh Adam per adapter except for the adapters' moment estimates being fresh anyway).
- Metrics are computed on labels and predictions in the task's own units (inverse-normalised), per task id:
  ``{val,test}/task<i>/{srcc,kendall,mae,top10}``; a source task is predicted by its own predictor (base
  or adapter), any other task (the target) by the mean of the trained adapters (the base head when none
  is trained yet). ``test/srcc`` etc. are those of the tasks that are not source tasks.
- **Pseudo-labelling** (AIO-P's shared head trained on latent representations sampled from OFA supernets,
  to label architectures on detection / segmentation cheaply) is OUT OF SCOPE: our stand-in tasks are
  cheap enough to label by training each network.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MetricCollection
from torchmetrics.regression import KendallRankCorrCoef, SpearmanCorrCoef

from litzoo.framework.errors import LitzooError
from litzoo.framework.graph.computation import NUM_NODE_FEATURES
from litzoo.framework.nas import TopKPrecision
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.cg import CGEncoder, PredictorHead

# ---------------------------------------------------------------------------------------- blocks


class AdapterBody(nn.Module):
    """One K-Adapter GNN: layer i = GraphConv over ``cat(base layer-i output, previous adapter state)``, tanh."""

    def __init__(self, embed_dim: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        from torch_geometric.nn import GraphConv

        self.convs = nn.ModuleList(GraphConv(hidden_dim + (embed_dim if i == 0 else hidden_dim), hidden_dim) for i in range(num_layers))

    def forward(self, base_states: Sequence[Tensor], edge_index: Tensor, batch: Tensor) -> Tensor:
        from torch_geometric.nn import global_mean_pool

        h = base_states[0]
        for i, conv in enumerate(self.convs):
            h = torch.tanh(conv(torch.cat([base_states[i + 1], h], dim=-1), edge_index))
        return global_mean_pool(h, batch)


def adapter_head(hidden_dim: int) -> PredictorHead:
    """:class:`PredictorHead` reading ``cat(base embedding, adapter embedding)``: its first layer takes 2h."""
    head = PredictorHead(hidden_dim)
    head[0] = nn.Linear(2 * hidden_dim, hidden_dim)
    return head


class AIOPredictor(nn.Module):
    """The AIO-P predictor in plain PyTorch: a base :class:`CGEncoder` + :class:`PredictorHead` and K adapters
    (:class:`AdapterBody` + :func:`adapter_head`), with the fine-tuning rescale ``α·I + b`` of each adapter's
    last layer (identity at initialisation).

    Args:
        num_adapters: K, one adapter per source task.
        embed_dim, hidden_dim, num_layers: the base :class:`CGEncoder`'s (official 32, 32, 6); the adapters
            have as many layers and the same width.
        eigvec_size, flip_prob: the base encoder's Laplacian-eigenvector encodings (the official regressor has
            none: 0).
    """

    def __init__(self, num_adapters: int = 2, embed_dim: int = 32, hidden_dim: int = 32, num_layers: int = 6,
                 eigvec_size: int = 0, flip_prob: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.encoder = CGEncoder(NUM_NODE_FEATURES, embed_dim, hidden_dim, num_layers, eigvec_size, flip_prob)
        self.head = PredictorHead(hidden_dim)
        self.adapters = nn.ModuleList(AdapterBody(embed_dim, hidden_dim, num_layers) for _ in range(num_adapters))
        self.adapter_heads = nn.ModuleList(adapter_head(hidden_dim) for _ in range(num_adapters))
        self.alpha = nn.Parameter(torch.ones(num_adapters), requires_grad=False)
        self.b = nn.Parameter(torch.zeros(num_adapters, hidden_dim + 1), requires_grad=False)

    @property
    def num_adapters(self) -> int:
        return len(self.adapters)

    def base(self, batch: Any) -> Tensor:
        """``(G,)`` the base predictor."""
        z = self.encoder(batch.x, batch.edge_index, batch.batch, getattr(batch, "eigvecs", None))
        return self.head(z).view(-1)

    def base_states(self, batch: Any) -> list[Tensor]:
        return self.encoder.forward_layers(batch.x, batch.edge_index, batch.batch, getattr(batch, "eigvecs", None))

    def adapter(self, batch: Any, k: int, states: list[Tensor] | None = None) -> Tensor:
        """``(G,)`` adapter ``k``'s prediction (through the rescaled last layer)."""
        from torch_geometric.nn import global_mean_pool

        states = self.base_states(batch) if states is None else states
        z = torch.cat([global_mean_pool(states[-1], batch.batch), self.adapters[k](states, batch.edge_index, batch.batch)], dim=-1)
        head = self.adapter_heads[k]
        hidden = z
        for layer in list(head)[:-1]:
            hidden = layer(hidden)
        scale = self.alpha[k] + self.b[k]  # α_k·I + b_k, (h + 1,)
        last = head[-1]
        return (hidden @ (scale[:-1, None] * last.weight.t()) + scale[-1] * last.bias).view(-1)

    def combined(self, batch: Any, adapters: int | None = None) -> Tensor:
        """``(G,)`` the prediction for an unseen task: the mean of the first ``adapters`` adapters (all by
        default), the base predictor when there are none."""
        adapters = self.num_adapters if adapters is None else adapters
        if adapters == 0:
            return self.base(batch)
        states = self.base_states(batch)
        return torch.stack([self.adapter(batch, k, states) for k in range(adapters)]).mean(dim=0)


# ---------------------------------------------------------------------------------------- the module


def adam_aio_p(params: Any, lr: float = 1e-4) -> torch.optim.Adam:
    """Adam at the official learning rate 1e-4."""
    return torch.optim.Adam(params, lr=lr)


def _metrics() -> MetricCollection:
    return MetricCollection({"srcc": SpearmanCorrCoef(), "kendall": KendallRankCorrCoef(), "mae": MeanAbsoluteError(),
                             "top10": TopKPrecision(0.1)})  # fmt: skip


class AIOPModule(L.LightningModule):
    """AIO-P on multi-task CG batches (``x``, ``edge_index``, ``batch``, normalised ``y``, ``y_raw``, a
    ``task`` id per graph, and the normaliser fields of :class:`MultiTaskArchitectureDataModule`).

    Epochs ``[0, base_epochs)`` train the base encoder + head on task ``base_task``; then adapter k trains
    for ``adapter_epochs`` on task ``adapter_tasks[k]`` with the base and the earlier adapters frozen
    (K = ``len(adapter_tasks)``; K = 0 is the plain single-task regressor). Test graphs of a task that is
    not a source task are predicted by the mean of the trained adapters: zero-shot transfer;
    :meth:`finetune` adapts to it on a few samples (``mode="rescale"``: only ``α``, ``b``; ``"heads"``:
    the adapter heads; ``"all"``: everything).

    Args:
        base_task: task id of the base predictor.
        adapter_tasks: task id of each adapter, trained in this order.
        num_tasks: task ids ``0..num_tasks-1`` get metrics.
        base_epochs, adapter_epochs: epochs of each phase (official 40 and 40).
        rescale_l1: weight of ``Σ|b|`` in rescale fine-tuning (the official ``-rescale``).
        optimizer: default Adam lr 1e-4 (official ``-initial_lr``). The official gradient clipping at norm 5.0 is
            the Trainer's ``gradient_clip_val=5.0`` (the shipped config sets it).
        **net_kwargs: the :class:`AIOPredictor`'s arguments ``embed_dim`` … ``flip_prob`` (official 32, 32, 6, no
            eigenvector encodings); its ``num_adapters`` is ``len(adapter_tasks)``.
    """

    monitor = "val/srcc"
    monitor_mode = "max"

    def __init__(
        self,
        base_task: int = 0,
        adapter_tasks: Sequence[int] = (0, 1),
        num_tasks: int = 3,
        base_epochs: int = 40,
        adapter_epochs: int = 40,
        rescale_l1: float = 0.01,
        optimizer: OptimizerCallable = adam_aio_p,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        adapter_tasks = [int(t) for t in adapter_tasks]
        if num_tasks < 1 or not all(0 <= t < num_tasks for t in [base_task, *adapter_tasks]):
            raise LitzooError(f"base_task and adapter_tasks must be task ids in [0, {num_tasks}), got {base_task} and {adapter_tasks}")
        if len(set(adapter_tasks)) != len(adapter_tasks):
            raise LitzooError(f"adapter_tasks must be distinct (one adapter per source task), got {adapter_tasks}")
        if base_epochs < 1 or adapter_epochs < 1 or rescale_l1 < 0:
            raise LitzooError(
                f"base_epochs and adapter_epochs must be at least 1 and rescale_l1 at least 0, got {base_epochs}, {adapter_epochs}, {rescale_l1}"
            )
        check_network_kwargs(AIOPredictor, net_kwargs, type(self).__name__, set_by_owner=("num_adapters",))
        self.save_hyperparameters(ignore=["optimizer"])
        self.adapter_tasks = adapter_tasks
        self.source_tasks = sorted({base_task, *adapter_tasks})
        self.model = AIOPredictor(len(adapter_tasks), **net_kwargs)
        self.optimizer = optimizer
        self.val_metrics = nn.ModuleDict({str(t): _metrics().clone(prefix=f"val/task{t}/") for t in range(num_tasks)})
        self.test_metrics = nn.ModuleDict({str(t): _metrics().clone(prefix=f"test/task{t}/") for t in range(num_tasks)})
        self.test_unseen = _metrics().clone(prefix="test/")
        # 0: base; k + 1: adapter k; in the state dict so a checkpoint knows how far training went
        self.register_buffer("phase", torch.tensor(0))
        self.register_buffer("adapters_trained", torch.tensor(0))

    # ---- phases -------------------------------------------------------------------------------
    def phase_for_epoch(self, epoch: int) -> int:
        hp = self.hparams
        if epoch < hp.base_epochs or not self.adapter_tasks:
            return 0
        return min(len(self.adapter_tasks), 1 + (epoch - hp.base_epochs) // hp.adapter_epochs)

    def set_phase(self, phase: int) -> None:
        """Freezes / unfreezes for ``phase`` (0: base trains; k + 1: only adapter k and its head train)."""
        self.phase.fill_(phase)
        m = self.model
        base_trains = phase == 0
        m.encoder.requires_grad_(base_trains)
        m.head.requires_grad_(base_trains)
        for k in range(m.num_adapters):
            m.adapters[k].requires_grad_(phase == k + 1)
            m.adapter_heads[k].requires_grad_(phase == k + 1)
        m.alpha.requires_grad_(False)
        m.b.requires_grad_(False)
        if phase > 0:
            self.adapters_trained.fill_(max(int(self.adapters_trained), phase))

    def on_train_epoch_start(self) -> None:
        self.set_phase(self.phase_for_epoch(self.current_epoch))

    def on_train_start(self) -> None:
        self.set_phase(self.phase_for_epoch(self.current_epoch))

    def phase_task(self) -> int:
        phase = int(self.phase)
        return self.hparams.base_task if phase == 0 else self.adapter_tasks[phase - 1]

    # ---- predictions --------------------------------------------------------------------------
    def predict_tasks(self, batch: Any) -> Tensor:
        """``(G,)`` normalised predictions, each graph by its task's predictor: a source task's own (base
        or its adapter, once trained), any other task the mean of the trained adapters."""
        tasks = batch.task.view(-1)
        trained = int(self.adapters_trained)
        out = torch.empty(tasks.shape[0], device=tasks.device)
        states = self.model.base_states(batch) if trained else None
        done = torch.zeros_like(tasks, dtype=torch.bool)
        for k, task in enumerate(self.adapter_tasks[:trained]):
            rows = tasks == task
            if rows.any():
                out[rows] = self.model.adapter(batch, k, states)[rows]
                done |= rows
        rows = (tasks == self.hparams.base_task) & ~done
        if rows.any():
            out[rows] = self.model.base(batch)[rows]
            done |= rows
        if (~done).any():
            out[~done] = self.model.combined(batch, trained)[~done]
        return out

    def forward(self, batch: Any) -> Tensor:
        """``(G,)`` normalised predictions (see :meth:`predict_tasks`)."""
        return self.predict_tasks(batch)

    def unseen_task(self, batch: Any) -> Tensor:
        """``(G,)`` normalised zero-shot predictions for a task no predictor was trained on."""
        return self.model.combined(batch, int(self.adapters_trained))

    # ---- steps --------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        phase, task = int(self.phase), self.phase_task()
        rows = batch.task.view(-1) == task
        if not rows.any():
            return None
        if phase == 0:
            preds = self.model.base(batch)
        else:
            self.model.encoder.eval()  # frozen
            preds = self.model.adapter(batch, phase - 1)
        loss = F.mse_loss(preds[rows], batch.y.view(-1)[rows])
        self.log("train/loss", loss, prog_bar=True, batch_size=int(rows.sum()))
        return loss

    def _update(self, batch: Any, collections: nn.ModuleDict, unseen: MetricCollection | None) -> None:
        preds = inverse(self.predict_tasks(batch), batch)
        target = batch.y_raw.view(-1)
        tasks = batch.task.view(-1)
        for task in tasks.unique().tolist():
            rows = tasks == task
            if str(task) in collections:
                collections[str(task)].update(preds[rows], target[rows])
            if unseen is not None and task not in self.source_tasks:
                unseen.update(preds[rows], target[rows])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._update(batch, self.val_metrics, None)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._update(batch, self.test_metrics, self.test_unseen)

    def _log(self, collections: nn.ModuleDict, unseen: MetricCollection | None) -> None:
        for task, metrics in collections.items():
            if metrics["srcc"].update_count == 0:
                continue
            values = metrics.compute()
            self.log_dict(values)
            if unseen is None and task == str(self.phase_task()):
                self.log("val/srcc", values[f"val/task{task}/srcc"], prog_bar=True)
            metrics.reset()
        if unseen is not None and unseen["srcc"].update_count:
            self.log_dict(unseen.compute(), prog_bar=True)
            unseen.reset()

    def on_validation_epoch_end(self) -> None:
        self._log(self.val_metrics, None)

    def on_test_epoch_end(self) -> None:
        self._log(self.test_metrics, self.test_unseen)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return inverse(self.predict_tasks(batch), batch)

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())

    # ---- transfer -----------------------------------------------------------------------------
    def finetune(self, loader: Any, mode: str = "rescale", epochs: int = 100, lr: float = 1e-4, max_grad_norm: float | None = 5.0) -> AIOPModule:
        """A copy adapted to a new task on ``loader``'s labelled graphs (normalised ``y``), trained on its
        unseen-task prediction (:meth:`unseen_task`) for ``epochs`` of Adam (``lr``; official 100 epochs, lr
        1e-4, batch 1), the gradients clipped to total norm ``max_grad_norm`` before every step (official 5.0:
        ``run_gpi_acc_predictor.py:369-370`` fine-tunes through ``train_predictor``, which clips at
        ``model_perf_predictor.py:114``; ``None`` does not clip). ``mode="rescale"``: only ``α``, ``b`` train,
        loss MSE + ``rescale_l1``·Σ|b| (official ``-rescale``); ``"heads"``: the adapter heads train (official
        ``ft_parameters``), or the base head when there is no adapter; ``"all"``: every weight but ``α``, ``b``
        (the official plain regressor's fine-tuning)."""
        if mode not in ("rescale", "heads", "all"):
            raise LitzooError(f"finetune mode must be 'rescale', 'heads' or 'all', got '{mode}'")
        if epochs < 1 or lr <= 0 or (max_grad_norm is not None and max_grad_norm <= 0):
            raise LitzooError(f"epochs must be at least 1, lr and max_grad_norm positive, got {epochs}, {lr} and {max_grad_norm}")
        trained = int(self.adapters_trained)
        if mode == "rescale" and trained == 0:
            raise LitzooError("rescale fine-tuning rescales the adapters' last layers: no adapter is trained yet")
        trainer, self._trainer = self._trainer, None  # the copy must not drag the Trainer along
        try:
            tuned = copy.deepcopy(self)
        finally:
            self._trainer = trainer
        m = tuned.model
        m.requires_grad_(False)
        if mode == "rescale":
            params = [m.alpha, m.b]
        elif mode == "all":
            params = [p for name, p in m.named_parameters() if name not in ("alpha", "b")]
        elif trained:
            params = [p for head in m.adapter_heads[:trained] for p in head.parameters()]
        else:
            params = list(m.head.parameters())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=lr)
        tuned.eval()  # frozen GNNs: no sign-flip noise
        with torch.enable_grad():
            for _ in range(epochs):
                for batch in loader:
                    optimizer.zero_grad()
                    loss = F.mse_loss(tuned.unseen_task(batch), batch.y.view(-1))
                    if mode == "rescale":
                        loss = loss + self.hparams.rescale_l1 * m.b.abs().sum()
                    loss.backward()
                    if max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
        m.requires_grad_(False)
        return tuned


def inverse(preds: Tensor, batch: Any) -> Tensor:
    """Normalised predictions back in their task's units, from the per-graph fields ``norm_mean``,
    ``norm_std``, ``norm_div`` (label = (pred · std + mean) · div); graphs without them are returned as is."""
    if not hasattr(batch, "norm_std"):
        return preds
    return (preds.view(-1) * batch.norm_std.view(-1) + batch.norm_mean.view(-1)) * batch.norm_div.view(-1)
