"""``litzoo curate`` (MetaCLIP matching and balancing) and ``litzoo text-quality`` (text quality-based
pruning) on JSONL files: argument parsing and file handling; the algorithms are in
:mod:`litzoo.framework.curation` (``metaclip.py``, ``text_quality.py``).

Both commands check that their output can be written before the long work, write every file they make to a
temporary sibling renamed into place at the end (:func:`litzoo.framework.data.staging.write_files_atomically`:
an interrupted run leaves the previous output whole, never a shorter file that reads as complete), and rewrite
the relative file paths of the lines they keep (``--path_keys``, default ``image``) relative to the output's
folder, so that a manifest written elsewhere still names the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litzoo.cli.console import add_progress_argument, command_parser, progress
from litzoo.framework.errors import LitzooError

#: side file of ``litzoo curate``: the per-entry match counts before and after balancing, shape (2, entries)
ENTRY_COUNTS_SUFFIX = ".entry_counts.npy"


#: help of ``--path_keys`` (both commands)
PATH_KEYS_HELP = "fields holding file paths relative to the manifest's folder: rewritten relative to the output's folder (absolute paths are kept)"


def curate_command(argv: Sequence[str]) -> None:
    """``litzoo curate``: MetaCLIP matching + balancing of a JSONL manifest, written as a curated manifest."""
    import json

    import numpy as np

    from litzoo.framework.curation import MetadataIndex, balance, entropy, entry_counts, keep_probabilities, read_metadata
    from litzoo.framework.data.jsonl import iter_jsonl, rebase_paths
    from litzoo.framework.data.staging import check_writable, write_files_atomically

    parser = command_parser("litzoo curate", "MetaCLIP curation of an image-text manifest: sub-string matching, then balancing.")
    parser.add_argument("--manifest", type=str, required=True, help="JSONL, one object per line with a text field")
    parser.add_argument("--metadata", type=str, required=True,
                        help="entries: a JSON list of strings, or a text file with one entry per line (told apart by the content)")  # fmt: skip
    parser.add_argument("--t", type=int, default=20000, help="balancing threshold: entries matched by more texts are sub-sampled to about t")
    parser.add_argument("--output", type=str, required=True,
                        help=f"the curated JSONL manifest (kept lines plus 'entries'), and beside it <output stem>{ENTRY_COUNTS_SUFFIX}")  # fmt: skip
    parser.add_argument("--text_key", type=str, default="text", help="the caption field of each line")
    parser.add_argument("--path_keys", type=list[str], default=["image"], help=PATH_KEYS_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the balancing coins")
    parser.add_argument("--log_dir", type=str, default=None, help="write TensorBoard histograms of log10(entry count) before / after")
    add_progress_argument(parser)
    args = parser.parse_args(list(argv))

    if args.t <= 0:
        raise LitzooError(f"--t {args.t}: the balancing threshold must be a positive number of texts per entry")
    manifest_path = Path(args.manifest).expanduser()
    output = check_writable(args.output)
    counts_path = output.with_suffix(ENTRY_COUNTS_SUFFIX)
    entries = read_metadata(args.metadata)
    records = [record for _, record in progress(iter_jsonl(manifest_path, [args.text_key]), "reading", enabled=args.progress, unit=" lines")]

    index = MetadataIndex(entries)
    matches = [index.match(r[args.text_key]) for r in progress(records, "matching", total=len(records), enabled=args.progress, unit=" texts")]
    kept = balance(matches, len(entries), args.t, seed=args.seed)
    before = entry_counts(matches, len(entries))
    after = entry_counts([matches[i] for i in kept], len(entries))
    expected = sum(keep_probabilities(matches, len(entries), args.t))
    with write_files_atomically(output, counts_path) as (staged_output, staged_counts):
        with staged_output.open("w", encoding="utf-8") as f:
            for i in progress(kept, "writing", total=len(kept), enabled=args.progress, unit=" lines"):
                record = rebase_paths(records[i], args.path_keys, manifest_path.parent, output.parent)
                f.write(json.dumps({**record, "entries": [entries[e] for e in matches[i]]}) + "\n")
        np.save(staged_counts, np.stack([before, after]))
    matched = sum(1 for m in matches if m)
    tail = before < args.t
    print(
        f"curated {len(records)} texts -> {matched} matched -> {len(kept)} kept (expected {expected:.1f}); "
        f"entries matched {int((before > 0).sum())}/{len(entries)}, head (>= t) {int((~tail & (before > 0)).sum())}; "
        f"tail matches kept {int(after[tail].sum())}/{int(before[tail].sum())}; "
        f"entry entropy {entropy(before):.3f} -> {entropy(after):.3f} nats; largest count {int(before.max(initial=0))} -> {int(after.max(initial=0))}; "
        f"written to {output} (entry counts before / after: {counts_path})"
    )
    if index.unmatchable:
        print(f"note: {len(index.unmatchable)} entries can never match (not in spaced form), e.g. {entries[index.unmatchable[0]]!r}")
    if args.log_dir:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(args.log_dir) as writer:  # the long tail and the cut head, on a log scale
            for step, counts in enumerate((before, after)):
                if (counts > 0).any():
                    writer.add_histogram("curation/log10_entry_count", np.log10(counts[counts > 0]), global_step=step)
            writer.add_scalars("curation/entropy_nats", {"before": entropy(before), "after": entropy(after)}, 0)


def text_quality_command(argv: Sequence[str]) -> None:
    """``litzoo text-quality``: text quality-based pruning (Sharma et al., arXiv:2405.01582) of any JSONL text column."""
    import json

    from litzoo.framework.curation import PAPER_FILTERS, document_scores, filter_weights, resolve_filters, top_fraction
    from litzoo.framework.data.jsonl import iter_jsonl, rebase_paths
    from litzoo.framework.data.staging import check_writable, write_files_atomically

    parser = command_parser("litzoo text-quality", "Score documents with heuristic line filters weighted by perplexity; keep the top fraction.")
    parser.add_argument("--manifest", type=str, required=True, help="JSONL, one object per line with a text field")
    parser.add_argument("--output", type=str, required=True, help="the kept lines, unchanged, plus 'quality_score'")
    parser.add_argument("--text_key", type=str, default="text", help="the text field of each line")
    parser.add_argument("--keep_fraction", type=float, default=0.6, help="share of documents kept by score (the paper keeps 0.6-0.8)")
    parser.add_argument("--filters", type=list[str], default=list(PAPER_FILTERS), help="line filters by name (litzoo.framework.curation.FILTERS)")
    parser.add_argument("--path_keys", type=list[str], default=["image"], help=PATH_KEYS_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the tie-break between equal scores")
    add_progress_argument(parser)
    args = parser.parse_args(list(argv))

    if not 0.0 < args.keep_fraction <= 1.0:
        raise LitzooError(f"--keep_fraction {args.keep_fraction}: the share of documents kept must be in (0, 1]")
    manifest_path = Path(args.manifest).expanduser()
    output = check_writable(args.output)
    records = [record for _, record in progress(iter_jsonl(manifest_path, [args.text_key]), "reading", enabled=args.progress, unit=" lines")]
    documents = [r[args.text_key] for r in records]
    try:
        # litzoo.framework.curation.prune, phase by phase for the progress bars: the filter weights, then the scores
        # (in one call: numpy's sums would round differently in chunks, and equal scores must stay equal for the ties)
        filters = resolve_filters(args.filters)
        for _ in progress([None], "filter weights", total=1, enabled=args.progress):
            weights = filter_weights(documents, filters)
        for _ in progress([None], "scoring", total=1, enabled=args.progress):
            scores = document_scores(documents, weights, filters)
        kept = top_fraction(scores, args.keep_fraction, seed=args.seed)
    except ValueError as error:
        raise LitzooError(f"text-quality on '{manifest_path}': {error}") from None
    with write_files_atomically(output) as (staged_output,), staged_output.open("w", encoding="utf-8") as f:
        for i in progress(kept, "writing", total=len(kept), enabled=args.progress, unit=" lines"):
            record = rebase_paths(records[i], args.path_keys, manifest_path.parent, output.parent)
            f.write(json.dumps({**record, "quality_score": float(scores[i])}) + "\n")
    print("filter weights: " + ", ".join(f"{name}={weight:.4f}" for name, weight in weights.items()))
    print(
        f"scored {len(records)} documents (score min {scores.min():.3f}, median {float(sorted(scores)[len(scores) // 2]):.3f}, max {scores.max():.3f}); "
        f"kept {len(kept)} ({len(kept) / len(records):.1%}) with score >= {scores[kept].min():.3f}; written to {output}"
    )
