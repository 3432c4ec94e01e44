"""The outer loop of pool-based active learning: fit on the labelled set, evaluate, query, label, repeat; resumable.

The loop of the deep active learning survey (Ren et al., ACM CSUR 2021, Fig. 2) over Lightning: each round builds a
LightningModule and a Trainer (from callables, so a config or a user's code decides what they are), fits on
:class:`~litzoo.framework.active.pool.ActiveLearningDataModule`'s labelled set, tests, records the metric against the
number of labels, and queries the next ``query_size`` samples (:func:`~litzoo.framework.active.query.query`).

Re-initialisation between rounds (``reinit``):

* ``reset`` (default): every round starts from the *same* initial weights, saved once (``initial_weights.pt``); the
  usual protocol of comparisons between strategies (Beck et al., "Effective Evaluation of Deep Active Learning on
  Image Classification Tasks", 2021), since warm starts carry the previous rounds' over-fitting;
* ``fresh``: new random weights every round (seeded by the round);
* ``continue``: warm start from the previous round's final weights.

The run folder holds ``pool.json`` (the acquisitions and results, :class:`~litzoo.framework.active.pool.ActivePool`),
``round_NN/`` (the round's TensorBoard logs, checkpoints and ``final_weights.pt``), the learning curve as TensorBoard
scalars ``active/<metric>`` against the number of labels, a text table, and ``learning_curve.csv``. Every file is
written atomically. A run stopped anywhere resumes: finished rounds are kept, an interrupted fit continues from its
``last.ckpt`` (exact, with litzoo's ``ExactResume``), and a query that was not saved is made again from the round's
final weights; each round is seeded from ``(seed, round)``, so a resumed run ends where the uninterrupted one does.

The area under the learning curve (:func:`learning_curve_auc`) is the trapezoid area under metric-vs-labels divided
by the range of labels: the curve's mean height, in the metric's unit (an accuracy AUC of 0.9 means 0.9 on average).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.utilities.compute import auc

from litzoo.framework.active.pool import ActiveLearningDataModule
from litzoo.framework.active.query import query
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.distributed import barrier, rank
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import derive_seed

REINIT = ("reset", "fresh", "continue")


def learning_curve_auc(labels: Sequence[float], values: Sequence[float]) -> float:
    """Normalised area under a learning curve: ``trapezoid(values over labels) / (max(labels) - min(labels))``.

    One point gives that point's value. Labels must increase strictly.
    """
    if len(labels) != len(values) or not labels:
        raise ValueError(f"a learning curve needs as many label counts as values (got {len(labels)} and {len(values)}), at least one")
    x = torch.tensor([float(v) for v in labels], dtype=torch.float64)
    y = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("a learning curve holds non-finite values")
    if len(x) == 1:
        return float(y[0])
    if not (x[1:] > x[:-1]).all():
        raise ValueError(f"label counts must increase strictly, got {list(labels)}")
    return float(auc(x, y) / (x[-1] - x[0]))


def curve_table(results: Sequence[dict[str, Any]], metric: str) -> str:
    """The learning curve as a Markdown table (round, labels, metric) with its AUC as the last line."""
    lines = [f"| round | labels | {metric} |", "|---:|---:|---:|"]
    lines += [f"| {r['round']} | {r['labels']} | {r[metric]:.4f} |" for r in results]
    if results:
        lines.append(f"\nAUC ({metric} vs labels, normalised): {learning_curve_auc([r['labels'] for r in results], [r[metric] for r in results]):.4f}")
    return "\n".join(lines)


def _save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    with write_files_atomically(path) as (staged,):
        torch.save({k: v.detach().cpu() for k, v in state.items()}, staged)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise LitzooError(f"weights file '{path}' does not load: {' '.join(str(error).split())[:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LitzooError(f"weights file '{path}' does not hold a state dict of tensors")
    return state


class ActiveLearningLoop:
    """Rounds of fit / test / query over an :class:`ActiveLearningDataModule` whose ``pool_file`` is the run's state.

    Args:
        datamodule: the pool; its ``pool_file`` must be set (the loop saves and resumes through it).
        build_model: ``round -> LightningModule``: a new model (its weights are replaced under ``reset`` / ``continue``).
        build_trainer: ``(round, round_dir) -> Trainer`` for that round's fit and test (log into ``round_dir``).
        run_dir: the run folder (created).
        reinit: ``reset``, ``fresh`` or ``continue`` (module docstring).
        metric: the test metric of the learning curve (a key of ``trainer.test``'s results).
    """

    def __init__(self, datamodule: ActiveLearningDataModule, build_model: Callable[[int], L.LightningModule],
                 build_trainer: Callable[[int, Path], L.Trainer], run_dir: str | Path, reinit: str = "reset",
                 metric: str = "test/acc") -> None:  # fmt: skip
        if reinit not in REINIT:
            raise ValueError(f"reinit must be one of {', '.join(REINIT)}; got {reinit!r}")
        if not isinstance(datamodule, ActiveLearningDataModule):
            raise ValueError(f"datamodule must be an ActiveLearningDataModule, got {type(datamodule).__name__}")
        if not datamodule.hparams.pool_file:
            raise ValueError("the ActiveLearningDataModule needs a pool_file: the loop saves every round to it and resumes from it")
        self.datamodule = datamodule
        self.build_model = build_model
        self.build_trainer = build_trainer
        self.run_dir = Path(run_dir).expanduser()
        self.reinit = reinit
        self.metric = metric

    def round_dir(self, round: int) -> Path:
        return self.run_dir / f"round_{round:02d}"

    def _seed(self, round: int) -> None:
        L.seed_everything(derive_seed(self.datamodule.hparams.seed, 3, round) % 2**32, workers=True, verbose=False)

    def _model(self, round: int) -> L.LightningModule:
        """Round ``round``'s model with its starting weights (``reinit``)."""
        self._seed(round)
        model = self.build_model(round)
        initial = self.run_dir / "initial_weights.pt"
        if self.reinit == "reset":
            if initial.exists():
                model.load_state_dict(_load_state(initial))
            elif rank() == 0:
                _save_state(model.state_dict(), initial)
        elif self.reinit == "continue" and round > 0:
            model.load_state_dict(_load_state(self.round_dir(round - 1) / "final_weights.pt"))
        return model

    def _fit_and_test(self, round: int) -> tuple[L.LightningModule, dict[str, float]]:
        model = self._model(round)
        round_dir = self.round_dir(round)
        trainer = self.build_trainer(round, round_dir)
        last = round_dir / "checkpoints" / "last.ckpt"
        trainer.fit(model, datamodule=self.datamodule, ckpt_path=str(last) if last.exists() else None)
        results = trainer.test(model, datamodule=self.datamodule, verbose=False)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if self.metric not in metrics:
            raise LitzooError(f"the test of round {round} logged no {self.metric!r} (it logged: {', '.join(sorted(metrics)) or 'nothing'}); set the metric")
        if rank() == 0:
            _save_state(model.state_dict(), round_dir / "final_weights.pt")
        barrier()
        return model, metrics

    def _model_of(self, round: int) -> L.LightningModule:
        """Round ``round``'s trained model from its ``final_weights.pt`` (a query after a resume)."""
        self._seed(round)
        model = self.build_model(round)
        model.load_state_dict(_load_state(self.round_dir(round) / "final_weights.pt"))
        return model

    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) every round; returns the pool's results (one dict per round: round, labels, metrics)."""
        dm = self.datamodule
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dm.setup("fit")
        pool = dm.pool
        assert pool is not None
        dm.save_pool()
        rounds = dm.hparams.rounds
        curve = TensorBoardLogger(save_dir=str(self.run_dir), name="", version="") if rank() == 0 else None
        round_ = pool.last_round
        while True:
            model = None
            if not pool.results or pool.results[-1]["round"] != round_:
                model, metrics = self._fit_and_test(round_)
                pool.record(round_, metrics)
                dm.save_pool()
                rank_zero_info(f"active learning round {round_}: {pool.num_labelled} labels, {self.metric} {metrics[self.metric]:.4f}")
                if curve is not None:
                    curve.log_metrics({f"active/{self.metric}": metrics[self.metric], "active/round": round_}, step=pool.num_labelled)
            if round_ >= rounds or len(pool.unlabelled) == 0:
                break
            chosen = query(model if model is not None else self._model_of(round_), dm, round_)
            pool.acquire(round_ + 1, chosen, dm.hparams.strategy)
            dm.save_pool()
            round_ += 1
        if curve is not None:
            table = curve_table(pool.results, self.metric)
            curve.experiment.add_text("active/learning_curve", table, global_step=pool.num_labelled)
            curve.log_metrics({f"active/auc_{self.metric}": learning_curve_auc([r["labels"] for r in pool.results], [r[self.metric] for r in pool.results])}, step=pool.num_labelled)
            curve.finalize("success")
            self._write_csv(pool.results)
        barrier()
        return list(pool.results)

    def _write_csv(self, results: Sequence[dict[str, Any]]) -> None:
        names = sorted({k for r in results for k in r} - {"round", "labels"})
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["round", "labels", *names])
        for r in results:
            writer.writerow([r["round"], r["labels"], *(r.get(n, "") for n in names)])
        with write_files_atomically(self.run_dir / "learning_curve.csv") as (staged,):
            staged.write_text(buffer.getvalue())
