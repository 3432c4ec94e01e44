"""The text wing: what several language methods share (issue 24: Mulco nested NER, CEIL/CDCC short-text clustering,
ToxVis attributions, semantic polarization).

* ``spans``: entity spans ``(start, end, type)`` (end exclusive), BIO encoding/decoding, flattening nested gold for a
  flat tagger, nesting helpers and span-level micro P/R/F1 (overall and nested) with the ``SpanF1`` metric. The
  linear-chain CRF itself is a network block, in ``litzoo.framework.nn.crf``.
* ``nested_ner``: the nested-NER JSONL reader and writer (character offsets, end exclusive), char / word tokenisation
  with offsets, nesting statistics and the ``NerVocabulary``.
* ``vocabulary``: the word-level ``WordVocabulary`` of short texts (``[PAD]`` 0, ``[UNK]`` 1, ``[MASK]`` 2).
* ``clustering``: clustering accuracy with the Hungarian matching, NMI, ARI and the ``ClusteringMetrics`` metric.
Integrated Gradients lives in ``litzoo.framework.attribution`` (any model taking embeddings).
"""

from litzoo.framework.text.clustering import (
    ClusteringMetrics,
    adjusted_rand_index,
    clustering_accuracy,
    clustering_scores,
    contingency_table,
    hungarian_mapping,
    normalized_mutual_info,
)
from litzoo.framework.text.nested_ner import (
    NerSentence,
    NerVocabulary,
    NestingStatistics,
    nesting_statistics,
    read_nested_ner,
    write_nested_ner,
)
from litzoo.framework.text.spans import (
    BIOScheme,
    Span,
    SpanCounts,
    SpanF1,
    flatten_for_bio,
    is_nested,
    nested_spans,
    nesting_depth,
    span_prf,
    span_sets_from_tensor,
)
from litzoo.framework.text.vocabulary import WordVocabulary

__all__ = [
    "BIOScheme",
    "ClusteringMetrics",
    "NerSentence",
    "NerVocabulary",
    "NestingStatistics",
    "Span",
    "SpanCounts",
    "SpanF1",
    "WordVocabulary",
    "adjusted_rand_index",
    "clustering_accuracy",
    "clustering_scores",
    "contingency_table",
    "flatten_for_bio",
    "hungarian_mapping",
    "is_nested",
    "nested_spans",
    "nesting_depth",
    "nesting_statistics",
    "normalized_mutual_info",
    "read_nested_ner",
    "span_prf",
    "span_sets_from_tensor",
    "write_nested_ner",
]
