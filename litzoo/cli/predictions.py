"""``litzoo predict`` writes what it predicts: one file per run, named in one output line.

What a module's ``predict_step`` returns decides the file:

* a classifier's ``{"probs": (B, C), "pred": (B,)[, "label": (B,)]}`` (``ImageClassifier``) → ``predictions.csv``,
  one row per sample: ``index`` (in the predicted dataset), ``path`` (when the dataset lists its files as
  ``samples``), ``pred``, ``class`` (when the DataModule names its ``classes``), ``prob`` (the predicted class's
  probability) and ``label`` (when the batch has one);
* a tensor (encoder features of the masked-modelling modules, a CG predictor's scores) or a dict of tensors
  (CLIP's image and text features) → ``predictions.pt``: ``{"index": (N,), <key>: (N, ...)}`` in sample order,
  a tensor returned alone under the key ``"predictions"``; it loads with ``torch.load(..., weights_only=True)``.

Files are written when prediction ends, through a temporary file renamed into place. Under DDP each process
writes its own samples (``predictions.rank<r>.csv``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import Subset
from typing_extensions import override

from litzoo.framework.data.staging import write_files_atomically

__all__ = ["PredictionWriter"]


def _sample_path(dataset: Any, index: int) -> str | None:
    """The file of sample ``index`` when the dataset lists its files (``samples`` of ``(path, label)`` pairs or
    paths, torchvision's convention; through ``Subset``), else ``None``."""
    while isinstance(dataset, Subset):
        index, dataset = int(dataset.indices[index]), dataset.dataset
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, Sequence) or not 0 <= index < len(samples):
        return None
    item = samples[index]
    path = item[0] if isinstance(item, tuple) and item else item
    return str(path) if isinstance(path, (str, PathLike)) else None


def _class_names(trainer: L.Trainer) -> list[str] | None:
    """The DataModule's class names (``classes`` or ``class_names``), when it has them."""
    for attribute in ("classes", "class_names"):
        try:
            names = getattr(trainer.datamodule, attribute, None)
        except Exception:  # a property that needs data the predict run did not set up
            names = None
        if isinstance(names, Sequence) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


class PredictionWriter(BasePredictionWriter):
    """Write the predictions of a ``predict`` run to ``<output_dir>/<filename>.csv`` (classifiers) or ``.pt``.

    Args:
        output_dir: the folder of the file; ``None``: the Trainer's ``log_dir`` (for ``litzoo predict --ckpt_path
            ...``: ``<run>/version_N/predict_<checkpoint>/``), else its ``default_root_dir``.
        filename: the file name, without its suffix.
    """

    def __init__(self, output_dir: str | Path | None = None, filename: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a plain file name without a folder, got {filename!r}")
        self.output_dir = output_dir
        self.filename = filename
        self.path: Path | None = None  # the file written by the last run
        self._reset()

    def _reset(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._tensors: dict[str, list[Tensor]] = {}
        self._indices: list[Tensor] = []
        self._seen = 0
        self._skipped: str | None = None

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        self.path = None

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if isinstance(prediction, Mapping) and isinstance(prediction.get("probs"), Tensor) and isinstance(prediction.get("pred"), Tensor):
            size = len(prediction["pred"])
        elif isinstance(prediction, Tensor) and prediction.ndim > 0:
            size = len(prediction)
        elif isinstance(prediction, Mapping) and any(isinstance(v, Tensor) and v.ndim > 0 for v in prediction.values()):
            size = len(next(v for v in prediction.values() if isinstance(v, Tensor) and v.ndim > 0))
        else:
            self._skipped = type(prediction).__name__
            return
        # the sampler's indices (Lightning tracks them for prediction writers), else the running count
        indices = [int(i) for i in batch_indices] if batch_indices is not None and len(batch_indices) == size else None
        if indices is None:
            indices = list(range(self._seen, self._seen + size))
        self._seen += size
        if isinstance(prediction, Mapping) and "probs" in prediction and "pred" in prediction:
            self._add_rows(trainer, prediction, indices, dataloader_idx)
        else:
            self._indices.append(torch.tensor(indices))
            items = {"predictions": prediction} if isinstance(prediction, Tensor) else prediction
            for key, value in items.items():
                if isinstance(value, Tensor) and value.ndim > 0 and len(value) == size and key != "index":
                    self._tensors.setdefault(str(key), []).append(value.detach().cpu())

    def _add_rows(self, trainer: L.Trainer, prediction: Mapping[str, Tensor], indices: list[int], dataloader_idx: int) -> None:
        pred = prediction["pred"].detach().cpu()
        prob = prediction["probs"].detach().float().cpu().gather(1, pred[:, None].long())[:, 0]
        label = prediction.get("label")
        label = label.detach().cpu() if isinstance(label, Tensor) else None
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, Sequence) else loaders
        dataset = getattr(loader, "dataset", None)
        names = _class_names(trainer)
        for i, index in enumerate(indices):
            row: dict[str, Any] = {"index": index}
            if dataloader_idx:
                row["dataloader"] = dataloader_idx
            path = _sample_path(dataset, index)
            if path is not None:
                row["path"] = path
            row["pred"] = int(pred[i])
            if names is not None and 0 <= int(pred[i]) < len(names):
                row["class"] = names[int(pred[i])]
            row["prob"] = f"{float(prob[i]):.6g}"
            if label is not None:
                row["label"] = int(label[i])
            self._rows.append(row)

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = Path(self.output_dir if self.output_dir is not None else trainer.log_dir or trainer.default_root_dir).expanduser()
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        if self._rows:
            self.path = folder / f"{self.filename}{rank}.csv"
            columns = list(dict.fromkeys(key for row in self._rows for key in row))
            with write_files_atomically(self.path) as (staged,), staged.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self._rows)
            count, kind = len(self._rows), "classes"
        elif self._tensors:
            self.path = folder / f"{self.filename}{rank}.pt"
            payload = {"index": torch.cat(self._indices), **{key: torch.cat(parts) for key, parts in self._tensors.items()}}
            with write_files_atomically(self.path) as (staged,):
                torch.save(payload, staged)
            count, kind = len(payload["index"]), ", ".join(f"{key} {tuple(value.shape[1:])}" for key, value in payload.items() if key != "index")
        else:
            if self._skipped is not None:
                rank_zero_warn(f"PredictionWriter: predict_step returned a {self._skipped}, which it cannot write (a tensor, a dict of tensors or a classifier's probs/pred); nothing written")
            return
        where = str(self.path) if not rank else str(self.path).replace(rank, ".rank*") + " (one file per process)"
        rank_zero_info(f"predict: {count} predictions ({kind}) written to {where}")
