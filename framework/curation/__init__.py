"""The data-curation wing of the core: what decides which training examples to keep, on files or streams.

- ``ids.py``: the keyed hash of sample ids that every shard-independent decision below draws on;
- ``metaclip.py``: MetaCLIP's sub-string matching of captions against metadata entries, then balancing
  (Xu et al., "Demystifying CLIP Data", ICLR 2024);
- ``sharded.py``: the same curation of a sharded pool, a two-pass map-reduce on local processes or Dask (``curate_pool``);
- ``text_quality.py``: model-agnostic text quality scores and quality-based pruning of a corpus
  (Sharma, Padthe et al., arXiv:2405.01582).

- ``text_quality_pool.py``: the same pruning of a sharded corpus, statistics and scores per shard, one global cut
  (``prune_pool``).

Pools are lists of shards (JSONL, gzip JSONL, Parquet, WebDataset tar) read by ``litzoo.framework.data.shards``; nothing
here imports torch, so worker processes start fast. The commands are ``litzoo curate`` (``litzoo/cli/curation.py``) and
``litzoo text-quality`` (``litzoo/cli/text_quality.py``); Curation in Training is a callback
(``litzoo.callbacks.curation_in_training``).
"""

from litzoo.framework.curation.metaclip import (
    WRAPPED_PUNCTUATION,
    MetadataIndex,
    balance,
    caption_coins,
    entropy,
    entry_counts,
    entry_probabilities,
    keep_decisions,
    keep_probabilities,
    match_metadata,
    read_metadata,
    spacing,
)
from litzoo.framework.curation.sharded import curate_pool
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
from litzoo.framework.curation.text_quality_pool import prune_pool

__all__ = [
    "FILTERS", "PAPER_FILTERS", "WRAPPED_PUNCTUATION",
    "BigramLM", "MetadataIndex",
    "balance", "caption_coins", "document_scores", "entropy", "entry_counts", "entry_probabilities", "filter_weights", "indicators",
    "keep_decisions", "keep_probabilities", "line_scores", "match_metadata", "prune", "read_metadata", "resolve_filters", "spacing", "split_lines",
    "top_fraction", "word_tokens",
    "curate_pool", "prune_pool",
]  # fmt: skip
