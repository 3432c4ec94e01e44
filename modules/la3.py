"""LA3: Label-Aware AutoAugment (Zhao, Lu, Wang, Wang, Niu; "LA3: Efficient Label-Aware AutoAugment", ECCV 2022).

LA3 searches augmentation policies *per label* on a classifier that is already trained, then trains a new model with
a composite label-aware policy. Read against the official code, Simpleple/LA3-Label-Aware-AutoAugment:

* the space (``LA3/augmentations.py``): a sub-policy is a triple of operations from the 16 of
  ``augment_list_name_plus_identity(False)`` (all ``16**3`` triples, ``get_total_augment_policy_op``); each operation
  gets a random magnitude level 0..9 at each application. The operations live in
  :mod:`litzoo.framework.data.augment_ops`; any list of them can be searched (``ops``).
* stage 1 (``LA3/search_stage_1.py``): an *evaluation* augments the validation images of each label ``c`` with a
  triple chosen for ``c`` (one triple per label in the same pass, ``custDatasetGivenClsIdxOpAug``) and records, per
  label, ``100 (acc_pre_c - acc_after_c)`` (lower is better) and, for the UCB statistics, the overall drop
  ``100 (mean_c acc_pre_c - acc_after)``. First ``100`` evaluations of random triples (each label its own random
  order); then, until ``N = 500`` evaluations are spent: whenever the queue is empty, an ensemble of 5 neural predictors
  is trained on every (triple, label) -> mean score so far, and for each label, candidates are generated around its 5
  best evaluated triples (5 with the third op redrawn, 5 with the second and third, per triple), up to 50 triples never
  evaluated for the label, and triples drawn with probability proportional to the UCB value
  ``(100 - mean overall drop) + sqrt(2 ln n_c / n_{c,t})`` (0 for triples never played) until 100 draws; the
  ensemble's mean prediction ranks them and the 10 lowest (shuffled) join the queue, one per evaluation.
* the predictor (``Neural_Predictor_Embedding_Class_Op_Model`` in ``LA3/networks/neural_predictor_model.py``):
  op embeddings (dim 100, the Identity op's fixed at zero by ``padding_idx``) summed over the triple, concatenated
  with a label embedding (dim 100), 3 x (Linear 100 + ReLU), Linear to one score; L1 loss, Adam lr 0.01, 100 epochs,
  batches of 10,000, trained on a shuffled 90 % of the data (the other 10 % only reports a validation loss).
* stage 2 (``LA3/search_stage_2.py``): a fresh ensemble on all scores predicts every triple for every label; per label,
  ``--topk 100`` triples are chosen by mRMR: relevance ``r = max(pred) - pred``; each step adds the triple maximising
  ``r + alpha * mean(r) * mean_{s in S} ||e - e_s||_1`` with ``e`` the op-count vector of a triple (Manhattan
  distance; ``alpha`` 2.5 in the README's example, 0 the script's default).
* training (``LA3/dataset.py`` ``CIFAR10_CLASSAUG_OP``): each image draws one triple of its label's set uniformly
  (:class:`litzoo.framework.data.label_aware.LabelAwareAugmentDataModule`).

Where this file departs from the official code (said again where it happens):

* mRMR's first pick. The official ``select_batch_([pred.argmax()], topk)`` puts ``argmax(pred)`` — under its own
  score convention (accuracy drop) the triple predicted *worst* — into the set, then draws the first selected triple
  at random (seed 1234 + label) and returns ``topk + 1`` triples. Here the set starts from the triple of largest
  relevance (the best predicted) and holds ``topk`` triples; the greedy rule after it is the official one.
* The predictor takes any number of operations (``num_ops``), not 16; the label count is the classifier's.
* Everything random comes from seeded generators (NumPy ``default_rng``, ``torch.Generator``) instead of the global
  ``random`` / ``np.random`` state, so a search is reproducible from ``seed``.

A label-agnostic search (``label_aware=False``, the baseline of the same budget) runs the same loop with every image
given one pseudo-label: each evaluation scores one triple on the whole validation set, and the result is one shared
set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from litzoo.framework.data.augment_ops import LA3_OPS, AugmentPolicy, apply_sub_policies, check_ops, save_policy
from litzoo.framework.data.batches import batch_inputs, batch_labels
from litzoo.framework.random_state import derive_seed, isolated_rng


# ----------------------------------------------------------------------------------------------------- the predictor
class NeuralPredictor(nn.Module):
    """The official ``Neural_Predictor_Embedding_Class_Op_Model``: predicted score of (op1, op2, op3, label).

    Args:
        num_ops: size of the operation space.
        num_classes: number of labels.
        identity_index: index of the Identity operation, whose embedding is fixed at zero (``padding_idx``); None for none.
        embed_dim: embedding width (official 100).
        hidden: width of the hidden layers (official 100).
        num_linears: hidden Linear + ReLU layers (official 3).
    """

    def __init__(self, num_ops: int, num_classes: int, identity_index: int | None = None, embed_dim: int = 100, hidden: int = 100,
                 num_linears: int = 3) -> None:  # fmt: skip
        super().__init__()
        if num_ops < 1 or num_classes < 1 or embed_dim < 1 or hidden < 1 or num_linears < 1:
            raise ValueError(f"num_ops, num_classes, embed_dim, hidden and num_linears must be positive, got {num_ops}, {num_classes}, "
                             f"{embed_dim}, {hidden}, {num_linears}")  # fmt: skip
        self.op_embedding = nn.Embedding(num_ops, embed_dim, padding_idx=identity_index)
        self.class_embedding = nn.Embedding(num_classes, embed_dim)
        layers: list[nn.Module] = []
        width = 2 * embed_dim
        for _ in range(num_linears):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def embedding(self, encoding: Tensor) -> Tensor:
        """``[sum of the ops' embeddings, label embedding]`` of ``(N, k + 1)`` encodings ``(op_1..op_k, label)``."""
        ops = self.op_embedding(encoding[:, :-1]).sum(1)  # the official sum, not the mean ("#/ 3" commented out)
        return torch.cat([ops, self.class_embedding(encoding[:, -1])], dim=1)

    def forward(self, encoding: Tensor) -> Tensor:
        return self.mlp(self.embedding(encoding)).squeeze(1)


def train_predictor_ensemble(encodings: Tensor, scores: Tensor, num_ops: int, num_classes: int, identity_index: int | None = None,
                             ensemble: int = 5, epochs: int = 100, lr: float = 0.01, batch_size: int = 10000,
                             train_fraction: float = 0.9, seed: int = 0, **predictor: Any) -> tuple[list[NeuralPredictor], float]:  # fmt: skip
    """The official ``train_neural_predictors``: ``ensemble`` predictors, each trained for ``epochs`` with Adam and the
    L1 loss on the same shuffled ``train_fraction`` of the rows (one shuffle, as the official loader's).

    Returns the predictors (in eval mode) and their mean L1 loss on the held-out rows (NaN when none are held out).
    Seeded by ``seed``; the global random state is left as it was.
    """
    count = len(scores)
    if count == 0:
        raise ValueError("no scores to train the predictors on")
    generator = torch.Generator().manual_seed(derive_seed(seed, 1))
    order = torch.randperm(count, generator=generator)
    cut = max(1, int(count * train_fraction))
    train, held = order[:cut], order[cut:]
    predictors = []
    with isolated_rng():
        torch.manual_seed(derive_seed(seed, 2))
        for _ in range(ensemble):
            model = NeuralPredictor(num_ops, num_classes, identity_index, **predictor)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
            model.train()
            for _ in range(epochs):
                for start in range(0, len(train), batch_size):
                    rows = train[start : start + batch_size]
                    loss = nn.functional.l1_loss(model(encodings[rows]), scores[rows])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            model.eval()
            predictors.append(model)
    held_loss = float("nan")
    if len(held):
        with torch.no_grad():
            held_loss = float(np.mean([nn.functional.l1_loss(m(encodings[held]), scores[held]).item() for m in predictors]))
    return predictors, held_loss


@torch.no_grad()
def ensemble_predict(predictors: Sequence[nn.Module], encodings: Tensor, chunk: int = 65536) -> Tensor:
    """The mean prediction of the ensemble (the official acquisition: ``np.mean(predictions, axis=0)``)."""
    parts = [torch.stack([p(encodings[s : s + chunk]) for p in predictors]).mean(0) for s in range(0, len(encodings), chunk)]
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------------- the rules
def ucb_weights(score_sum: np.ndarray, played: np.ndarray, total: float) -> np.ndarray:
    """The official UCB value of each triple for one label: ``(100 - score_sum / played) + sqrt(2 ln total / played)``,
    with ``np.nan_to_num`` (a triple never played gives NaN, hence 0: it is never drawn this way)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (100.0 - score_sum / played) + np.sqrt(2.0 * np.log(total) / played)
    return np.nan_to_num(values)


def op_count_features(triples: np.ndarray, num_ops: int) -> np.ndarray:
    """``(P, num_ops)`` op-count vectors of ``(P, k)`` op indices (stage 2's ``embed``)."""
    features = np.zeros((len(triples), num_ops))
    for column in range(triples.shape[1]):
        np.add.at(features, (np.arange(len(triples)), triples[:, column]), 1.0)
    return features


def mrmr_select(relevance: np.ndarray, features: np.ndarray, k: int, alpha: float, first: int | None = None) -> list[int]:
    """Greedy mRMR of stage 2: from ``first`` (default: the most relevant), add ``argmax r + alpha * mean(r) * mean_S d``.

    ``d`` is the Manhattan distance between feature rows, averaged over the selected set ``S``; ``mean(r)`` is the
    mean relevance over all candidates (1 when it is 0), as the official ``mRMR.update_distance``. Returns ``k``
    distinct indices in the order chosen (fewer when there are fewer candidates).
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    count = len(relevance)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    mean_relevance = float(relevance.mean()) or 1.0
    selected = [int(np.argmax(relevance)) if first is None else int(first)]
    distance_sum = np.abs(features - features[selected[0]]).sum(1)
    while len(selected) < min(k, count):
        objective = relevance + alpha * mean_relevance * distance_sum / len(selected)
        objective[selected] = -np.inf
        chosen = int(np.argmax(objective))
        selected.append(chosen)
        distance_sum += np.abs(features - features[chosen]).sum(1)
    return selected


# ----------------------------------------------------------------------------------------------------- evaluation
def collect_split(loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
    """Every ``(image, label)`` of a loader, concatenated on the CPU (LA3 evaluates on a small validation set)."""
    images, labels = [], []
    for batch in loader:
        found = batch_labels(batch)
        if found is None:
            raise ValueError("the validation batches have no labels: LA3 scores policies per label")
        images.append(batch_inputs(batch).detach().cpu())
        labels.append(found.detach().cpu().long())
    if not images:
        raise ValueError("the validation loader is empty")
    return torch.cat(images), torch.cat(labels)


class PolicyEvaluator:
    """Scores triples per label on a trained classifier: ``100 (acc_pre_c - acc_after_c)`` (the official score).

    Args:
        classifier: any callable images -> logits (a LightningModule, an ``nn.Module``); put in eval mode while scoring.
        images: validation images as the classifier takes them (normalised by ``mean`` / ``std``, or in [0, 1]).
        labels: their labels.
        num_classes: number of labels.
        ops: the operation names, indexed by the triples' entries.
        mean, std: the images' normalisation (None: images in [0, 1]).
        levels: magnitude levels.
        batch_size: images per forward pass.
    """

    def __init__(self, classifier: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, num_classes: int, ops: Sequence[str],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, levels: int = 10, batch_size: int = 512) -> None:  # fmt: skip
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"need as many labels as images (at least one), got {len(images)} and {len(labels)}")
        self.classifier, self.labels, self.num_classes = classifier, labels.long(), num_classes
        self.ops, self.levels, self.batch_size = tuple(ops), levels, batch_size
        self.mean = None if mean is None else torch.tensor(list(mean), dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(list(std), dtype=torch.float32).reshape(1, -1, 1, 1)
        self.pixels = images.float() if self.mean is None else images.float() * self.std + self.mean
        self.pixels = self.pixels.clamp(0.0, 1.0)
        self.counts = torch.bincount(self.labels, minlength=num_classes).double()
        self.pre_class = self.class_accuracy(self.pixels)

    @torch.no_grad()
    def class_accuracy(self, pixels: Tensor) -> Tensor:
        """Per-label accuracy (recall) of the classifier on ``pixels`` (labels absent from the set count as 0)."""
        module = self.classifier if isinstance(self.classifier, nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            device = next(module.parameters()).device if module is not None and any(True for _ in module.parameters()) else pixels.device
            correct = torch.zeros(self.num_classes, dtype=torch.float64)
            for start in range(0, len(pixels), self.batch_size):
                chunk = pixels[start : start + self.batch_size]
                inputs = chunk if self.mean is None else (chunk - self.mean) / self.std
                predicted = self.classifier(inputs.to(device)).argmax(-1).cpu()
                labels = self.labels[start : start + self.batch_size]
                correct += torch.bincount(labels[predicted == labels], minlength=self.num_classes).double()
        finally:
            if module is not None:
                module.train(was_training)
        return torch.where(self.counts > 0, correct / self.counts.clamp_min(1), torch.zeros_like(correct))

    def evaluate(self, triples: Sequence[Sequence[int]], generator: torch.Generator, groups: Tensor | None = None) -> tuple[float, np.ndarray]:
        """Augment the images of each group ``g`` (label, or 0 for all in a label-agnostic search) with ``triples[g]``.

        Returns the overall score ``100 (mean_c acc_pre_c - acc_after)`` and the per-label scores
        ``100 (acc_pre_c - acc_after_c)`` (official ``eval_with_auged_data``).
        """
        groups = self.labels if groups is None else groups
        subs = [tuple(self.ops[i] for i in triples[int(g)]) for g in groups.tolist()]
        augmented = apply_sub_policies(self.pixels, subs, generator, self.levels)
        after_class = self.class_accuracy(augmented)
        present = self.counts > 0
        pre_overall = float(self.pre_class[present].mean())
        after_overall = float((after_class * self.counts).sum() / self.counts.sum())
        return 100.0 * (pre_overall - after_overall), (100.0 * (self.pre_class - after_class)).numpy()


# ----------------------------------------------------------------------------------------------------- the search
@dataclass
class SearchHistory:
    """What stage 1 collected: per (triple, group) the summed per-label scores and play counts; per group the UCB
    statistics (summed overall scores, plays) and the evaluations in order."""

    class_score_sum: np.ndarray
    class_played: np.ndarray
    ucb_score_sum: np.ndarray
    ucb_played: np.ndarray
    evaluated: list[list[int]] = field(default_factory=list)
    predictor_losses: list[float] = field(default_factory=list)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(triple index, group, mean per-label score)`` of every (triple, group) played at least once."""
        triple, group = np.nonzero(self.class_played)
        return triple, group, self.class_score_sum[triple, group] / self.class_played[triple, group]


class LA3Search:
    """Both stages of LA3 on a trained classifier and its validation data; :meth:`run` returns the policy.

    Args:
        num_classes: number of labels.
        ops: the operations searched (the official 16 by default).
        label_aware: search per label (LA3); False searches one shared set (the label-agnostic baseline).
        evaluations: stage-1 evaluations after the random ones (official ``--N 500``).
        init_evaluations: random evaluations first (official 100).
        candidates: candidates generated per label and round (official ``C_num=100``).
        top_evaluated: best evaluated triples the candidates are generated around (official 5).
        per_round: candidates kept per label and round, one per evaluation (official 10).
        unplayed: at most this many never-evaluated triples among the candidates (official 50).
        ensemble: predictors in the ensemble (official 5).
        predictor_epochs: epochs of each predictor (official 100).
        predictor_lr: Adam learning rate (official 0.01).
        topk: sub-policies per label in the final policy (official ``--topk 100``).
        alpha: mRMR redundancy weight (official README 2.5; the script's default is 0). The diversity bonus is
            ``alpha * mean(r)`` per unit of Manhattan distance (up to 6 between triples), so at 2.5 it can outweigh the
            relevance gap between a harmless and a harmful triple: on the digits with planted harm (benchmarks/la3.py)
            alpha 0.25 keeps the harmful operations out of the affected labels' sets and 2.5 does not.
        levels: magnitude levels (official 10).
        seed: seed of every draw.
        predictor: extra :class:`NeuralPredictor` arguments (``embed_dim``, ``hidden``, ``num_linears``).
    """

    def __init__(self, num_classes: int, ops: Sequence[str] = LA3_OPS, label_aware: bool = True, evaluations: int = 500,
                 init_evaluations: int = 100, candidates: int = 100, top_evaluated: int = 5, per_round: int = 10,
                 unplayed: int = 50, ensemble: int = 5, predictor_epochs: int = 100, predictor_lr: float = 0.01, topk: int = 100,
                 alpha: float = 2.5, levels: int = 10, seed: int = 0, predictor: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.ops = check_ops(ops)
        for name, value in (("num_classes", num_classes), ("init_evaluations", init_evaluations), ("candidates", candidates),
                            ("top_evaluated", top_evaluated), ("per_round", per_round), ("ensemble", ensemble),
                            ("predictor_epochs", predictor_epochs), ("topk", topk), ("levels", levels)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if evaluations < 0 or unplayed < 0:
            raise ValueError(f"evaluations and unplayed must be >= 0, got {evaluations} and {unplayed}")
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
        if predictor_lr <= 0:
            raise ValueError(f"predictor_lr must be positive, got {predictor_lr}")
        self.num_classes, self.label_aware = num_classes, label_aware
        self.groups = num_classes if label_aware else 1
        self.evaluations, self.init_evaluations = evaluations, init_evaluations
        self.candidates, self.top_evaluated, self.per_round, self.unplayed = candidates, top_evaluated, per_round, unplayed
        self.ensemble, self.predictor_epochs, self.predictor_lr = ensemble, predictor_epochs, predictor_lr
        self.topk, self.alpha, self.levels, self.seed = topk, alpha, levels, seed
        self.predictor = dict(predictor or {})
        n = len(self.ops)
        self.num_triples = n**3
        self.triples = np.stack(np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 3)  # official order
        self.identity = self.ops.index("Identity") if "Identity" in self.ops else None
        self.rng = np.random.default_rng(derive_seed(seed, 0))

    def triple_index(self, a: int, b: int, c: int) -> int:
        n = len(self.ops)
        return (a * n + b) * n + c

    def names(self, index: int) -> tuple[str, str, str]:
        return tuple(self.ops[i] for i in self.triples[index])  # type: ignore[return-value]

    # --- stage 1 ---------------------------------------------------------------------------------

    def new_history(self) -> SearchHistory:
        return SearchHistory(np.zeros((self.num_triples, self.groups)), np.zeros((self.num_triples, self.groups)),
                             np.zeros((self.groups, self.num_triples)), np.zeros((self.groups, self.num_triples)))  # fmt: skip

    def record(self, history: SearchHistory, chosen: Sequence[int], overall: float, class_scores: np.ndarray) -> None:
        """One evaluation's scores into the history (official bookkeeping of ``eval_with_auged_data``)."""
        for group, index in enumerate(chosen):
            history.class_score_sum[index, group] += round(float(class_scores[group]), 4)
            history.class_played[index, group] += 1
            history.ucb_score_sum[group, index] += round(overall, 4)  # the overall drop, as the official op-triple statistics
            history.ucb_played[group, index] += 1
        history.evaluated.append([int(i) for i in chosen])

    def encode(self, indices: np.ndarray, groups: np.ndarray) -> Tensor:
        return torch.from_numpy(np.concatenate([self.triples[indices], np.asarray(groups).reshape(-1, 1)], 1)).long()

    def train_predictors(self, history: SearchHistory, round_seed: int) -> list[NeuralPredictor]:
        triple, group, score = history.rows()
        predictors, loss = train_predictor_ensemble(
            self.encode(triple, group), torch.tensor(score, dtype=torch.float32), len(self.ops), self.groups, self.identity,
            ensemble=self.ensemble, epochs=self.predictor_epochs, lr=self.predictor_lr, seed=derive_seed(self.seed, round_seed),
            **self.predictor)  # fmt: skip
        history.predictor_losses.append(loss)
        return predictors

    def generate_candidates(self, history: SearchHistory, group: int) -> list[int]:
        """The official ``generate_candidates`` for one label: around its best evaluated triples, unplayed ones, UCB draws."""
        n = len(self.ops)
        played = np.nonzero(history.class_played[:, group])[0]
        means = history.class_score_sum[played, group] / history.class_played[played, group]
        best = played[np.argsort(means, kind="stable")[: self.top_evaluated]]
        chosen: dict[int, None] = {}
        for index in best:
            a, b, _ = self.triples[index]
            for _ in range(5):
                chosen.setdefault(self.triple_index(a, b, int(self.rng.integers(n))))
            for _ in range(5):
                chosen.setdefault(self.triple_index(a, int(self.rng.integers(n)), int(self.rng.integers(n))))
        never = np.nonzero(history.class_played[:, group] == 0)[0]
        if len(never) and self.unplayed:
            for index in self.rng.choice(never, min(self.unplayed, len(never))):
                chosen.setdefault(int(index))
        weights = ucb_weights(history.ucb_score_sum[group], history.ucb_played[group], history.ucb_played[group].sum())
        if weights.sum() > 0:
            for _ in range(self.candidates - len(chosen)):
                chosen.setdefault(int(self.rng.choice(self.num_triples, p=weights / weights.sum())))
        return list(chosen)

    def next_round(self, history: SearchHistory, round_index: int) -> list[list[int]]:
        """``per_round`` evaluations (each a triple per group) chosen by the predictor ensemble."""
        predictors = self.train_predictors(history, round_index)
        per_group = []
        for group in range(self.groups):
            candidates = np.array(self.generate_candidates(history, group))
            predicted = ensemble_predict(predictors, self.encode(candidates, np.full(len(candidates), group))).numpy()
            keep = candidates[np.argsort(predicted, kind="stable")[: self.per_round]]
            keep = keep[self.rng.permutation(len(keep))]
            per_group.append(np.resize(keep, self.per_round))  # a tiny space may give fewer candidates: cycle them
        return [list(map(int, column)) for column in np.stack(per_group, 1)]

    def stage1(self, evaluator: PolicyEvaluator, groups: Tensor | None = None) -> SearchHistory:
        """Random evaluations, then predictor-guided ones until ``evaluations`` are spent."""
        history = self.new_history()
        initial = np.stack([self.rng.permutation(self.num_triples)[: self.init_evaluations] for _ in range(self.groups)], 1)
        initial = np.resize(initial, (self.init_evaluations, self.groups)) if len(initial) < self.init_evaluations else initial
        count = 0
        for chosen in initial:
            self._evaluate(evaluator, history, chosen, count, groups)
            count += 1
        queue: list[list[int]] = []
        rounds = 0
        for _ in range(self.evaluations):
            if not queue:
                queue = self.next_round(history, rounds)
                rounds += 1
            self._evaluate(evaluator, history, queue.pop(), count, groups)
            count += 1
        return history

    def _evaluate(self, evaluator: PolicyEvaluator, history: SearchHistory, chosen: Sequence[int], count: int, groups: Tensor | None) -> None:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, 3, count))
        overall, class_scores = evaluator.evaluate([self.triples[i] for i in chosen], generator, groups)
        scores = class_scores if self.label_aware else np.array([overall])
        self.record(history, chosen, overall, scores)

    # --- stage 2 ---------------------------------------------------------------------------------

    def predict_all(self, history: SearchHistory) -> dict[int, np.ndarray]:
        """Stage 2's predictions: a fresh ensemble trained on every score predicts every triple for every group."""
        predictors = self.train_predictors(history, 10**6)
        everything = np.arange(self.num_triples)
        return {group: ensemble_predict(predictors, self.encode(everything, np.full(self.num_triples, group))).numpy().astype(np.float64)
                for group in range(self.groups)}  # fmt: skip

    def select(self, predictions: dict[int, np.ndarray], alpha: float | None = None) -> dict[int, list[int]]:
        """Per group, ``topk`` triples by mRMR (relevance ``max(pred) - pred``, op-count vectors, ``alpha``)."""
        features = op_count_features(self.triples, len(self.ops))
        alpha = self.alpha if alpha is None else alpha
        return {group: mrmr_select(predicted.max() - predicted, features, self.topk, alpha) for group, predicted in predictions.items()}

    def stage2(self, history: SearchHistory) -> tuple[dict[int, list[int]], dict[int, np.ndarray]]:
        """Per group: ``topk`` triples by mRMR over the fresh ensemble's predictions of every triple; and those predictions."""
        predictions = self.predict_all(history)
        return self.select(predictions), predictions

    def policy(self, selected: dict[int, list[int]], predictions: dict[int, np.ndarray], history: SearchHistory) -> AugmentPolicy:
        """The searched sets as an :class:`AugmentPolicy` (per label, or one shared set), with notes in ``info``."""
        info: dict[str, Any] = {
            "method": "LA3 (Zhao et al., ECCV 2022)", "label_aware": self.label_aware, "ops": list(self.ops),
            "evaluations": len(history.evaluated), "topk": self.topk, "alpha": self.alpha, "seed": self.seed,
            "predicted_drop": {str(g): [round(float(predictions[g][i]), 3) for i in selected[g]] for g in selected},
        }  # fmt: skip
        sets = {g: tuple(self.names(i) for i in selected[g]) for g in selected}
        if self.label_aware:
            return AugmentPolicy(sets=sets, levels=self.levels, info=info)
        return AugmentPolicy(shared=sets[0], levels=self.levels, info=info)

    def run(self, classifier: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> AugmentPolicy:  # fmt: skip
        """Both stages on ``classifier`` and validation ``images`` / ``labels``: the searched policy."""
        evaluator = PolicyEvaluator(classifier, images, labels, self.num_classes, self.ops, mean, std, self.levels)
        groups = None if self.label_aware else torch.zeros_like(evaluator.labels)
        self.history = self.stage1(evaluator, groups)
        selected, predictions = self.stage2(self.history)
        return self.policy(selected, predictions, self.history)


def write_policy(policy: AugmentPolicy, path: str | Path) -> Path:
    """Writes the searched policy as a readable JSON file (:func:`litzoo.framework.data.augment_ops.save_policy`)."""
    return save_policy(policy, path)


__all__ = [
    "LA3Search", "NeuralPredictor", "PolicyEvaluator", "SearchHistory", "collect_split", "ensemble_predict", "mrmr_select",
    "op_count_features", "train_predictor_ensemble", "ucb_weights", "write_policy",
]  # fmt: skip
