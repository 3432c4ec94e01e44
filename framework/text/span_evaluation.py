"""The evaluation hooks every span tagger shares: span P/R/F1 (overall and nested) on validation and test, sorted spans
from ``predict``.

A LightningModule mixes :class:`SpanTaggerEvaluation` in before ``L.LightningModule``, creates ``self.val_spans`` and
``self.test_spans`` (:class:`~litzoo.framework.text.spans.SpanF1`) in ``__init__`` and provides
``predict_spans(tokens, mask) -> list[set[Span]]`` and ``span_types`` (the type names, in the order of the batches'
``spans`` tensor). Logged: ``{val,test}/{precision,recall,f1,nested_precision,nested_recall,nested_f1}``, F1 and nested
F1 on the progress bar. Mulco and the flat BIO-CRF tagger use it, so the two are scored by the very same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from litzoo.framework.text.spans import Span, SpanF1, span_sets_from_tensor

__all__ = ["SpanTaggerEvaluation"]


class SpanTaggerEvaluation:
    """Validation / test / predict hooks of a span tagger (see the module docstring)."""

    # provided by the host module (see the module docstring)
    val_spans: SpanF1
    test_spans: SpanF1
    span_types: Sequence[str]
    predict_spans: Callable[[Tensor, Tensor], list[set[Span]]]

    def _evaluate_spans(self, batch: dict[str, Tensor], metric: SpanF1) -> None:
        metric.update(self.predict_spans(batch["tokens"], batch["mask"]), span_sets_from_tensor(batch["spans"], self.span_types))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate_spans(batch, self.val_spans)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate_spans(batch, self.test_spans)

    def _log_spans(self, stage: str, metric: SpanF1) -> None:
        for name, value in metric.compute().items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("f1", "nested_f1"))
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_spans("val", self.val_spans)

    def on_test_epoch_end(self) -> None:
        self._log_spans("test", self.test_spans)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[list[Span]]:
        return [sorted(spans) for spans in self.predict_spans(batch["tokens"], batch["mask"])]
