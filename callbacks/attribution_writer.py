"""Token attributions of any text classifier, written at test (and validation) time: ToxVis's view as a callback.

ToxVis (Gunturi, Ding, Rho, "ToxVis: Enabling Interpretability of Implicit vs. Explicit Toxicity Detection
Models with Interactive Visualization", arXiv:2303.09402; no official code found) explains each prediction of a
hate-speech classifier by Integrated Gradients (Sundararajan et al. 2017) over the input embeddings, summed over
the embedding dimension, and shows the tokens coloured by their attribution. This callback does that for the first
``max_samples`` samples of every test (and optionally validation) epoch, on any LightningModule that follows a small
protocol, with the math in :mod:`litzoo.framework.attribution`.

Protocol (checked in ``setup``; a module that lacks a piece is refused with a ``ValueError`` naming it):

* ``embed(tokens (B, L) long) -> (B, L, D)`` float: the input embeddings;
* ``forward_embeds(embeds (B, L, D), mask (B, L) bool) -> (B, C)`` logits: the rest of the network, which must
  ignore positions where the mask is false (then padding gets zero attribution and the token attributions of a
  sample add up to the logit difference);
* token strings: ``id_to_token``, a sequence of strings or a callable ``int -> str``, or else a ``tokenizer``
  with an ``id_to_token(int)`` method (a ``tokenizers.Tokenizer``).

Batches: dicts with ``tokens`` (B, L) long, optionally ``mask`` (B, L) (all true when absent) and ``label`` (B,),
the stable keys of litzoo's text DataModules; or ``(tokens, label)`` tuples.

What is written, by global rank 0 only (under DDP each rank sees its own shard; rank 0's first samples are
written, the other ranks compute nothing), at the end of each epoch of a chosen stage:

* ``<dirpath>/<stage>_step<S>.jsonl`` (``S`` = the trainer's global step, also the TensorBoard step): one line per sample,
  ``{"tokens", "attributions", "label", "prediction", "target", "delta", "score", "baseline_score"}``
  (padding removed; ``label`` is ``null`` without labels; ``score`` / ``baseline_score`` are the target logit at the
  input and at the baseline, ``delta`` the convergence delta over all positions);
* ``<dirpath>/<stage>_step<S>.html``: a standalone page, tokens on a green (positive) / red (negative) background
  whose opacity is the attribution over the sample's largest absolute attribution (captum's colours);
* for every TensorBoard logger, one text entry per sample (``attributions/<stage>/<i>``): a markdown line with
  the label, prediction and delta, and a token / attribution table (TensorBoard's text view renders markdown,
  not inline styles).

``dirpath`` defaults to ``<run folder>/attributions``, the run folder being the first logger's ``log_dir`` (what
``trainer.log_dir`` gives, e.g. ``runs/<method>/<data>/version_N``). Files are
written whole (temporary file, then rename). Chosen here: the attributed class is the prediction (``target=
"label"`` attributes the gold class); the baseline is zero embeddings, or the embedding of ``baseline_token_id``
at every position (the pad-token reference of the captum BERT tutorials); the sanity-check validation is skipped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from litzoo.framework.attribution import METHODS, integrated_gradients, token_attributions
from litzoo.framework.data.batches import batch_labels
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError

STAGES = ("test", "validate")


def token_strings(pl_module: L.LightningModule) -> Callable[[int], str] | None:
    """The module's ``id -> token string`` function from its ``id_to_token`` or ``tokenizer``, or ``None``."""
    vocabulary = getattr(pl_module, "id_to_token", None)
    if callable(vocabulary):
        return lambda i: str(vocabulary(i))
    if isinstance(vocabulary, Sequence) and not isinstance(vocabulary, str):
        return lambda i: str(vocabulary[i])
    tokenizer = getattr(pl_module, "tokenizer", None)
    if tokenizer is not None and callable(getattr(tokenizer, "id_to_token", None)):
        return lambda i: str(tokenizer.id_to_token(i))
    return None


def run_folder(trainer: L.Trainer) -> Path:
    """The run folder as ``trainer.log_dir`` finds it, without its broadcast (this runs on rank 0 only, and a
    collective call there would wait forever for the other ranks)."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = getattr(logger, "log_dir", None) or logger.save_dir
        if folder is not None:
            return Path(folder)
    return Path(trainer.default_root_dir)


def attribution_html(records: list[dict[str, Any]], title: str) -> str:
    """A standalone HTML page: per sample, its label / prediction / delta and the coloured tokens."""
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>' + html.escape(title) + "</title>",
        "<style>body{font-family:sans-serif} .s{margin:1em 0} .t{padding:1px 3px;margin:1px;border-radius:3px;display:inline-block}"
        " .m{color:#555;font-size:90%}</style></head><body>",
        "<h1>" + html.escape(title) + "</h1>",
    ]
    for index, record in enumerate(records):
        scale = max((abs(a) for a in record["attributions"]), default=0.0) or 1.0
        spans = []
        for token, value in zip(record["tokens"], record["attributions"], strict=True):
            alpha = 0.85 * abs(value) / scale
            colour = f"rgba(0,160,0,{alpha:.3f})" if value >= 0 else f"rgba(200,0,0,{alpha:.3f})"
            spans.append(f'<span class="t" style="background:{colour}" title="{value:.6g}">{html.escape(token)}</span>')
        meta = f"sample {index} &middot; label {record['label']} &middot; prediction {record['prediction']} &middot; " \
               f"attributed class {record['target']} &middot; delta {record['delta']:.3g}"  # fmt: skip
        parts.append(f'<div class="s"><div class="m">{meta}</div>{"".join(spans)}</div>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def attribution_markdown(record: dict[str, Any]) -> str:
    """TensorBoard text for one sample: a summary line and a token / attribution table."""
    rows = "\n".join(f"| {html.escape(token).replace('|', '&#124;')} | {value:+.4f} |" for token, value in zip(record["tokens"], record["attributions"], strict=True))
    return (f"label {record['label']} · prediction {record['prediction']} · attributed class {record['target']} · "
            f"delta {record['delta']:.3g}\n\n| token | attribution |\n|---|---|\n{rows}")  # fmt: skip


class AttributionWriter(Callback):
    """Integrated-Gradients token attributions of the first ``max_samples`` samples of each test / validation epoch.

    Args:
        max_samples: samples attributed per epoch (the first ones rank 0 sees).
        target: ``"prediction"`` attributes the predicted class, ``"label"`` the gold class (batches must have labels).
        steps: Integrated-Gradients quadrature points (captum's default 50).
        method: quadrature rule, see :func:`litzoo.framework.attribution.integration_points`.
        baseline_token_id: ``None`` for zero embeddings, else the token whose embedding fills the baseline.
        reduction: ``"sum"`` over the embedding dimension (ToxVis, signed) or ``"l2"`` (magnitude).
        stages: where to attribute: ``"test"`` and / or ``"validate"`` (validation epochs in fit and validate).
        dirpath: folder of the HTML / JSONL files; ``None`` for ``<trainer.log_dir>/attributions``.
        steps_per_batch: path points per forward (memory); all at once when ``None``.
    """

    def __init__(
        self,
        max_samples: int = 8,
        target: Literal["prediction", "label"] = "prediction",
        steps: int = 50,
        method: str = "gausslegendre",
        baseline_token_id: int | None = None,
        reduction: Literal["sum", "l2"] = "sum",
        stages: Sequence[str] = ("test",),
        dirpath: str | None = None,
        steps_per_batch: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"AttributionWriter: max_samples must be a positive integer, got {max_samples!r}")
        if target not in ("prediction", "label"):
            raise ValueError(f"AttributionWriter: target must be 'prediction' or 'label', got {target!r}")
        if method not in METHODS:
            raise ValueError(f"AttributionWriter: method must be one of {', '.join(METHODS)}, got {method!r}")
        minimum = 2 if method == "riemann_trapezoid" else 1
        if not isinstance(steps, int) or steps < minimum:
            raise ValueError(f"AttributionWriter: steps must be an integer >= {minimum} for {method}, got {steps!r}")
        if reduction not in ("sum", "l2"):
            raise ValueError(f"AttributionWriter: reduction must be 'sum' or 'l2', got {reduction!r}")
        stages = (stages,) if isinstance(stages, str) else tuple(stages)
        if not stages or any(stage not in STAGES for stage in stages):
            raise ValueError(f"AttributionWriter: stages must be a non-empty subset of {STAGES}, got {stages!r}")
        if baseline_token_id is not None and (not isinstance(baseline_token_id, int) or baseline_token_id < 0):
            raise ValueError(f"AttributionWriter: baseline_token_id must be a token id >= 0 or None, got {baseline_token_id!r}")
        if steps_per_batch is not None and (not isinstance(steps_per_batch, int) or steps_per_batch < 1):
            raise ValueError(f"AttributionWriter: steps_per_batch must be a positive integer or None, got {steps_per_batch!r}")
        self.max_samples = max_samples
        self.target = target
        self.steps = steps
        self.method = method
        self.baseline_token_id = baseline_token_id
        self.reduction = reduction
        self.stages = stages
        self.dirpath = dirpath
        self.steps_per_batch = steps_per_batch
        self._records: list[dict[str, Any]] = []
        self._to_string: Callable[[int], str] | None = None
        #: the files written last (for the user and the tests)
        self.last_files: list[Path] = []

    # ------------------------------------------------------------------------------------------------ protocol
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        missing = [name for name in ("embed", "forward_embeds") if not callable(getattr(pl_module, name, None))]
        self._to_string = token_strings(pl_module)
        if self._to_string is None:
            missing.append("id_to_token (a list of strings or a callable) or tokenizer.id_to_token")
        if missing:
            raise ValueError(
                f"AttributionWriter: {type(pl_module).__name__} lacks {', '.join(missing)}; it needs embed(tokens) -> embeds, "
                "forward_embeds(embeds, mask) -> logits and a way to turn ids into strings (see litzoo.callbacks.attribution_writer)"
            )

    # ------------------------------------------------------------------------------------------------ hooks
    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records = []

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._records = []

    @override
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:  # fmt: skip
        if "test" in self.stages:
            self._attribute(trainer, pl_module, batch)

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:  # fmt: skip
        if "validate" in self.stages and not trainer.sanity_checking:
            self._attribute(trainer, pl_module, batch)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test" in self.stages:
            self._write(trainer, "test")

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "validate" in self.stages and not trainer.sanity_checking:
            self._write(trainer, "validate")

    # ------------------------------------------------------------------------------------------------ work
    def _attribute(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        remaining = self.max_samples - len(self._records)
        if not trainer.is_global_zero or remaining <= 0:
            return
        tokens = batch["tokens"] if isinstance(batch, dict) else (batch[0] if isinstance(batch, (list, tuple)) else batch)
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            raise LitzooError(f"AttributionWriter: a batch's tokens must be a (B, L) integer tensor, got {type(tokens).__name__}")
        tokens = tokens[:remaining]
        mask = batch.get("mask") if isinstance(batch, dict) else None
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask[:remaining].bool()
        labels = batch_labels(batch)
        labels = None if labels is None else labels[:remaining]
        if self.target == "label" and labels is None:
            raise LitzooError("AttributionWriter: target='label' but the batch has no 'label' (use target='prediction')")
        with torch.inference_mode(False), torch.no_grad():
            tokens, mask = tokens.clone(), mask.clone()  # out of inference mode, so that autograd may use them
            embeds = pl_module.embed(tokens)
            baseline = None if self.baseline_token_id is None else pl_module.embed(torch.full_like(tokens, self.baseline_token_id))
            predictions = pl_module.forward_embeds(embeds, mask).argmax(1)
        target = predictions if self.target == "prediction" else labels.to(predictions.device).long()
        result = integrated_gradients(pl_module.forward_embeds, embeds, baseline, target, mask, self.steps, self.method, self.steps_per_batch)
        per_token = token_attributions(result.attributions, mask, self.reduction)
        to_string = self._to_string
        for b in range(len(tokens)):
            keep = mask[b]
            self._records.append({
                "tokens": [to_string(int(i)) for i in tokens[b][keep].tolist()],
                "attributions": per_token[b][keep].tolist(),
                "label": None if labels is None else int(labels[b]),
                "prediction": int(predictions[b]),
                "target": int(target[b]),
                "delta": float(result.delta[b]),
                "score": float(result.scores[b]),
                "baseline_score": float(result.baseline_scores[b]),
            })  # fmt: skip

    def _write(self, trainer: L.Trainer, stage: str) -> None:
        if not trainer.is_global_zero or not self._records:
            return
        folder = Path(self.dirpath) if self.dirpath is not None else run_folder(trainer) / "attributions"
        name = f"{stage}_step{trainer.global_step}"
        jsonl, page = folder / f"{name}.jsonl", folder / f"{name}.html"
        with write_files_atomically(jsonl, page) as (staged_jsonl, staged_page):
            staged_jsonl.write_text("".join(json.dumps(record, allow_nan=False) + "\n" for record in self._records), encoding="utf-8")
            staged_page.write_text(attribution_html(self._records, f"Integrated-Gradients token attributions: {name}"), encoding="utf-8")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for index, record in enumerate(self._records):
                    logger.experiment.add_text(f"attributions/{stage}/{index}", attribution_markdown(record), trainer.global_step)
        self.last_files = [jsonl, page]
        rank_zero_info(f"AttributionWriter: token attributions of {len(self._records)} samples written to {jsonl} and {page.name}")
