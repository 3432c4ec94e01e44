"""The data-curation wing of the core: what decides which training examples to keep, on files or streams.

- ``metaclip.py``: MetaCLIP's sub-string matching of captions against metadata entries, then balancing
  (Xu et al., "Demystifying CLIP Data", ICLR 2024);
- ``text_quality.py``: model-agnostic text quality scores and quality-based pruning of a corpus
  (Sharma, Padthe et al., arXiv:2405.01582).

The commands (``litzoo curate``, ``litzoo text-quality``) are in ``litzoo/cli/curation.py``; Curation in Training
is a callback (``litzoo.callbacks.curation_in_training``).
"""

from litzoo.framework.curation.metaclip import (
    WRAPPED_PUNCTUATION,
    MetadataIndex,
    balance,
    entropy,
    entry_counts,
    entry_probabilities,
    keep_probabilities,
    match_metadata,
    read_metadata,
    spacing,
)
from litzoo.framework.curation.text_quality import (
    FILTERS,
    PAPER_FILTERS,
    BigramLM,
    document_scores,
    filter_weights,
    indicators,
    line_scores,
    prune,
    resolve_filters,
    split_lines,
    top_fraction,
    word_tokens,
)

__all__ = [
    "FILTERS", "PAPER_FILTERS", "WRAPPED_PUNCTUATION",
    "BigramLM", "MetadataIndex",
    "balance", "document_scores", "entropy", "entry_counts", "entry_probabilities", "filter_weights", "indicators",
    "keep_probabilities", "line_scores", "match_metadata", "prune", "read_metadata", "resolve_filters", "spacing", "split_lines",
    "top_fraction", "word_tokens",
]  # fmt: skip
