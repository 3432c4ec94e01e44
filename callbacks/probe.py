"""Frozen-feature evaluation during training: a linear probe (MAE) and a weighted kNN classifier (DINO).

Self-supervised methods are judged by how well a frozen encoder's features classify a labelled data
set. These callbacks run that evaluation every ``every_n_epochs`` training epochs on any
LightningModule, on any labelled DataModule (not necessarily the one being trained on), and log
``probe/<name>/acc``. Several probes side by side (linear + kNN, or one per downstream data set with
different ``name`` s, an AV-SUPERB-style table of frozen-feature results) each log their own key.

Protocols, so any encoder and any labelled data work:

* the LightningModule has ``forward_features(images) -> (B, D)``: one pooled feature vector per
  image (the CLS token, a global average pool, ...). A module without it, or one returning another
  shape (e.g. an unpooled ``(B, C, H, W)`` map), is refused with a :class:`LitzooError`;
* the DataModule's ``train_dataloader()`` and ``val_dataloader()`` (``test_dataloader()`` when it
  has no validation split) give batches with images and class labels: dicts with ``"image"`` and
  ``"label"`` (or ``(image, label)`` tuples); the number of classes is ``datamodule.num_classes``,
  else the largest label + 1.

Frozen means: features are computed in eval mode (BatchNorm running statistics, dropout) under
``torch.no_grad``; the module's weights, buffers, gradients and the train/eval flag of every
submodule are what they were before. Features are extracted once per evaluation, in a fixed order,
from loaders of their own (``shuffle=False``; the DataModule's own training loader would shuffle and
draw from the run's RNG), under a forked RNG seeded by ``seed``, so the probe neither changes the
training run's random streams nor depends on them.

When: ``on_train_epoch_end`` (after the epoch's validation, if any). ``LightningModule.log`` is
allowed there in Lightning 2.x, the value reaches ``trainer.callback_metrics`` and the loggers
(TensorBoard) at the end of the epoch, and the monitoring callbacks (``ModelCheckpoint``,
``EarlyStopping``) run their ``on_train_epoch_end`` after the other callbacks, so they see this epoch's
value. ``ModelCheckpoint(monitor="probe/linear/acc")`` must therefore save at train-epoch end
(``save_on_train_epoch_end=True``); at validation end it would see the previous epoch's value. The
probe runs only during ``fit``.

DDP: every rank computes the probe on the *whole* labelled data set (the probe builds its own
loaders, so Lightning's DistributedSampler never applies to them), from identical weights, with the
same seed; rank 0's accuracy is then broadcast so all ranks log exactly the same number (without
``sync_dist``), and ``callback_metrics`` agree on every rank (needed by ``ModelCheckpoint`` monitors).
This costs each rank the full feature extraction; the labelled sets of a probe are meant to be small.
"""

from __future__ import annotations

import abc
import contextlib
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from litzoo.framework.data.batches import batch_inputs, batch_labels, datamodule_loader, in_order, prepare_side_datamodule
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import eval_mode

# ----------------------------------------------------------------------------------- the classifiers


@torch.no_grad()
def knn_classify(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk_size: int = 1024) -> Tensor:  # fmt: skip
    """DINO's weighted k-nearest-neighbour classifier: the predicted class of each test feature.

    facebookresearch/dino ``eval_knn.py`` (``knn_classifier``; also dinov2 ``eval/knn.py``): features
    are L2-normalised, the ``k`` training features of highest cosine similarity ``s`` vote for their
    class with weight ``exp(s / temperature)``, the class with the largest summed weight wins (ties:
    the lowest class index). ``k`` is capped at the number of training features. Test features are
    processed ``chunk_size`` at a time (memory ``chunk_size × N_train``).
    """
    train = nn.functional.normalize(train_features.float(), dim=1)
    test = nn.functional.normalize(test_features.float(), dim=1)
    k = min(k, len(train))
    predictions = []
    for start in range(0, len(test), chunk_size):
        similarity = test[start : start + chunk_size] @ train.T  # (b, N)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (b, k)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(len(top_index), num_classes, device=test.device)
        votes.scatter_add_(1, train_labels[top_index], weights)  # sum of weights per class
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long, device=test.device)


def linear_probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """MAE's linear-probe head (``main_linprobe.py``): ``BatchNorm1d(D, affine=False, eps=1e-6)`` then
    ``Linear(D, C)``, the linear weight ``trunc_normal(std=0.01)`` and bias 0. The parameter-free
    BatchNorm standardises the features (it can be folded into the linear layer afterwards)."""
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


def train_linear_probe(features: Tensor, labels: Tensor, num_classes: int, epochs: int = 90, lr: float = 0.1,
                       weight_decay: float = 0.0, batch_size: int = 256, seed: int = 0) -> nn.Sequential:  # fmt: skip
    """Train :func:`linear_probe_head` on cached ``(N, D)`` features: SGD (momentum 0.9), cosine decay
    of ``lr`` to 0 over all steps, ``epochs`` passes of shuffled mini-batches, cross-entropy.

    MAE trains the same head with LARS (blr 0.1, lr = blr · batch / 256, batch 16384, 90 epochs, 10
    warm-up epochs, RandomResizedCrop + flip re-applied every epoch). Here the features are extracted
    once without re-augmentation, so the probe trains in seconds; LARS's layer-wise trust ratio matters
    little for a single linear layer on BatchNorm-standardised inputs, and plain SGD with momentum
    is used instead. Deterministic for a given ``seed`` (initialisation and batch order), without
    touching the global RNG. Returns the head in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = linear_probe_head(features.shape[1], num_classes).to(features.device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    head.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator).to(features.device)
            for start in range(0, len(features), batch_size):
                rows = order[start : start + batch_size]
                if len(rows) < 2:  # BatchNorm in training mode needs two samples
                    continue
                loss = nn.functional.cross_entropy(head(features[rows]), labels[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
    return head.eval()


def accuracy(predictions: Tensor, labels: Tensor, num_classes: int) -> float:
    """Top-1 accuracy over all samples (torchmetrics ``MulticlassAccuracy``, ``average="micro"``)."""
    metric = MulticlassAccuracy(num_classes=num_classes, average="micro").to(predictions.device)
    return float(metric(predictions, labels))


# ------------------------------------------------------------------------------------- the callbacks


class _FrozenFeatureProbe(Callback, abc.ABC):
    """Shared machinery: argument checks, data set-up, frozen feature extraction, logging."""

    def __init__(self, datamodule: L.LightningDataModule, every_n_epochs: int, name: str, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(datamodule, L.LightningDataModule):
            raise ValueError(f"datamodule must be a LightningDataModule, got {type(datamodule).__name__}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string (it makes the metric key probe/<name>/acc), got {name!r}")
        self.datamodule, self.every_n_epochs, self.name, self.seed = datamodule, every_n_epochs, name, seed
        self.history: dict[int, float] = {}  # epoch -> accuracy, saved in checkpoints
        self._data_ready = self._test_set_up = False
        self._num_classes: int | None = None

    @property
    def metric_key(self) -> str:
        return f"probe/{self.name}/acc"

    @property
    @override
    def state_key(self) -> str:
        # several probes of one class in one Trainer keep separate checkpoint states
        return self._generate_state_key(name=self.name)

    # ------------------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_protocol(pl_module, type(self).__name__)
        clashes = [
            type(c).__name__ for c in trainer.callbacks if c is not self and isinstance(c, _FrozenFeatureProbe) and c.name == self.name
        ]
        if clashes:
            raise LitzooError(f"{type(self).__name__}: another probe ({clashes[0]}) is also named {self.name!r}; "
                              f"give each probe its own name so each logs its own probe/<name>/acc")  # fmt: skip
        if not self._data_ready:
            prepare_side_datamodule(trainer, self.datamodule, "probe")
            self._data_ready = True

    def prepare(self) -> None:
        """``prepare_data()`` then ``setup("fit")`` the labelled DataModule, once; :meth:`setup` does it
        under a Trainer, :meth:`evaluate` without one."""
        if not self._data_ready:
            self.datamodule.prepare_data()
            self.datamodule.setup("fit")
            self._data_ready = True

    # ------------------------------------------------------------------------------ data
    def _loader(self, split: str) -> DataLoader | None:
        """The DataModule's ``<split>_dataloader()``, or ``None`` when it has none."""
        return datamodule_loader(self.datamodule, split)

    def _splits(self) -> tuple[DataLoader, DataLoader]:
        train = self._loader("train")
        if train is None:
            raise LitzooError(f"{type(self).__name__}({self.name!r}) needs a DataModule with train_dataloader() (labelled training images)")
        evaluation = self._loader("val")
        if evaluation is None:
            if not self._test_set_up:
                self.datamodule.setup("test")
                self._test_set_up = True
            evaluation = self._loader("test")
        if evaluation is None:
            raise LitzooError(
                f"{type(self).__name__}({self.name!r}) needs a DataModule with val_dataloader() or test_dataloader() to evaluate on"
            )
        return train, evaluation

    @torch.no_grad()
    def extract(self, pl_module: L.LightningModule, loader: Any, trainer: L.Trainer | None = None) -> tuple[Tensor, Tensor]:
        """Frozen features ``(N, D)`` (float32) and labels ``(N,)`` of every sample of ``loader``, on the module's device."""
        check_protocol(pl_module, type(self).__name__)
        precision = trainer.precision_plugin if trainer is not None else None
        features, labels = [], []
        with eval_mode(pl_module), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for batch in in_order(loader):
                label = batch_labels(batch)
                if label is None:
                    raise LitzooError(f"{type(self).__name__}({self.name!r}): the DataModule's batches have no labels "
                                      f"(expected dicts with 'image' and 'label', or (image, label) tuples)")  # fmt: skip
                images = batch_inputs(batch).to(pl_module.device)
                context = precision.forward_context() if precision is not None else contextlib.nullcontext()
                with context:
                    out = pl_module.forward_features(precision.convert_input(images) if precision is not None else images)
                if not isinstance(out, Tensor) or out.dim() != 2 or len(out) != len(images):
                    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise LitzooError(f"{type(self).__name__}: {type(pl_module).__name__}.forward_features must return one feature vector "
                                      f"per image, shape (B, D) = ({len(images)}, D); got {shape}. Pool it (CLS token, global average) first")  # fmt: skip
                features.append(out.float())
                labels.append(label.to(out.device).long())
        if not features:
            raise LitzooError(f"{type(self).__name__}({self.name!r}): a split of the DataModule is empty")
        return torch.cat(features), torch.cat(labels)

    def num_classes(self, *label_sets: Tensor) -> int:
        declared = getattr(self.datamodule, "num_classes", None)
        largest = max(int(labels.max()) for labels in label_sets) + 1
        if isinstance(declared, int) and declared > 0:
            if largest > declared:
                raise LitzooError(
                    f"{type(self).__name__}({self.name!r}): label {largest - 1} found but the DataModule says num_classes={declared}"
                )
            return declared
        return largest

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, pl_module: L.LightningModule, trainer: L.Trainer | None = None) -> float:
        """Accuracy on the evaluation split of a probe trained / fitted on the training split's frozen features."""
        self.prepare()
        train_loader, eval_loader = self._splits()
        train_features, train_labels = self.extract(pl_module, train_loader, trainer)
        eval_features, eval_labels = self.extract(pl_module, eval_loader, trainer)
        num_classes = self.num_classes(train_labels, eval_labels)
        predictions = self._predict(train_features, train_labels, eval_features, num_classes)
        return accuracy(predictions, eval_labels, num_classes)

    @abc.abstractmethod
    def _predict(self, train_features: Tensor, train_labels: Tensor, eval_features: Tensor, num_classes: int) -> Tensor:
        """Class predictions for ``eval_features`` from the labelled ``train_features`` (the probe itself)."""

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0:
            return
        value = torch.tensor(self.evaluate(pl_module, trainer), device=pl_module.device)
        value = trainer.strategy.broadcast(value, src=0)  # every rank logs rank 0's number
        self.history[epoch] = float(value)
        pl_module.log(self.metric_key, value, on_step=False, on_epoch=True, prog_bar=False, sync_dist=False)
        rank_zero_info(f"{type(self).__name__}: epoch {epoch} {self.metric_key} = {float(value):.4f}")

    # ------------------------------------------------------------------------------ resuming
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(k): float(v) for k, v in state_dict.get("history", {}).items()}


class LinearProbe(_FrozenFeatureProbe):
    """Every ``every_n_epochs`` epochs, train MAE's linear-probe head on frozen features; log ``probe/<name>/acc``.

    Reference: facebookresearch/mae ``main_linprobe.py``. The head is
    ``BatchNorm1d(D, affine=False, eps=1e-6)`` + ``Linear(D, num_classes)`` (:func:`linear_probe_head`),
    trained from scratch at each evaluation on the DataModule's training split (features extracted once,
    then ``epochs`` passes of shuffled mini-batches, :func:`train_linear_probe`), and evaluated on its
    validation split (test split when there is none). Difference from MAE: SGD with momentum and a
    cosine schedule on cached features instead of LARS on freshly augmented images every epoch (see
    :func:`train_linear_probe`).

    Args:
        datamodule: the labelled DataModule (see the module docstring for its protocol).
        every_n_epochs: run after every this many training epochs (epochs n, 2n, ...).
        name: the metric key is ``probe/<name>/acc``; distinct probes need distinct names.
        epochs: passes over the cached training features (MAE: 90).
        lr: SGD learning rate, cosine-decayed to 0.
        weight_decay: SGD weight decay (MAE: 0).
        batch_size: mini-batch size of the head's training.
        seed: seeds the head's initialisation, its batch order and the feature extraction's RNG.
    """

    def __init__(self, datamodule: L.LightningDataModule, every_n_epochs: int = 1, name: str = "linear", epochs: int = 90,
                 lr: float = 0.1, weight_decay: float = 0.0, batch_size: int = 256, seed: int = 0) -> None:  # fmt: skip
        super().__init__(datamodule, every_n_epochs, name, seed)
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, got {weight_decay}")
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (the head's BatchNorm needs two samples), got {batch_size}")
        self.epochs, self.lr, self.weight_decay, self.batch_size = epochs, lr, weight_decay, batch_size

    @override
    def _predict(self, train_features: Tensor, train_labels: Tensor, eval_features: Tensor, num_classes: int) -> Tensor:
        head = train_linear_probe(
            train_features, train_labels, num_classes, self.epochs, self.lr, self.weight_decay, self.batch_size, self.seed
        )
        with torch.no_grad():
            return head(eval_features).argmax(dim=1)


class KNNProbe(_FrozenFeatureProbe):
    """Every ``every_n_epochs`` epochs, DINO's weighted kNN classifier on frozen features; log ``probe/<name>/acc``.

    Reference: facebookresearch/dino ``eval_knn.py`` (``knn_classifier``, k = 20, T = 0.07; DINOv2
    ``eval/knn.py`` the same with k ∈ {10, 20, 100, 200}). Training-split features are the neighbours,
    validation-split features (test split when there is none) are classified, see :func:`knn_classify`.
    No training, so it is cheap and deterministic.

    Args:
        datamodule: the labelled DataModule (see the module docstring for its protocol).
        every_n_epochs: run after every this many training epochs (epochs n, 2n, ...).
        name: the metric key is ``probe/<name>/acc``; distinct probes need distinct names.
        k: neighbours that vote (capped at the training-set size).
        temperature: vote weight ``exp(cosine similarity / temperature)``.
        seed: seeds the feature extraction's RNG (dataset augmentations, if any).
    """

    def __init__(self, datamodule: L.LightningDataModule, every_n_epochs: int = 1, name: str = "knn", k: int = 20,
                 temperature: float = 0.07, seed: int = 0) -> None:  # fmt: skip
        super().__init__(datamodule, every_n_epochs, name, seed)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.k, self.temperature = k, temperature
        self._warned_k = False

    @override
    def _predict(self, train_features: Tensor, train_labels: Tensor, eval_features: Tensor, num_classes: int) -> Tensor:
        if self.k > len(train_features) and not self._warned_k:
            rank_zero_warn(f"KNNProbe({self.name!r}): k={self.k} exceeds the {len(train_features)} training samples; using all of them")
            self._warned_k = True
        return knn_classify(train_features, train_labels, eval_features, num_classes, self.k, self.temperature)


# ------------------------------------------------------------------------------------- helpers


def check_protocol(pl_module: L.LightningModule, who: str) -> None:
    """Refuse a module without ``forward_features(images) -> (B, D)``."""
    if not callable(getattr(pl_module, "forward_features", None)):
        raise LitzooError(
            f"{who} needs the model's forward_features(images) -> (B, D) feature vectors; {type(pl_module).__name__} has none"
        )
