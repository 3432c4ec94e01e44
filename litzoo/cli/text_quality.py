"""``litzoo text-quality``: text quality-based pruning (Sharma, Padthe et al., arXiv:2405.01582) of a JSONL file in
memory (``--manifest FILE --output FILE``), or of a corpus in shards (``--pool SPEC... --output_dir DIR``: JSONL,
gzip JSONL, Parquet or WebDataset tar shards, scored by ``--workers`` processes, then cut globally); argument parsing
and file handling. The algorithms are in :mod:`litzoo.framework.curation.text_quality` and
:mod:`litzoo.framework.curation.text_quality_pool`; both modes keep the same documents of the same corpus when the
documents have the same ids (``--id_key``).

Both modes check their output can be written before the long work, write every file through a temporary sibling
renamed into place, and rewrite the relative file paths of the records they keep (``--path_keys``) relative to the
output's folder. A ``--pool`` run that was killed resumes where it stopped when started again with the same arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from litzoo.cli.console import add_progress_argument, command_parser, progress
from litzoo.cli.curation import PATH_KEYS_HELP
from litzoo.framework.errors import LitzooError

#: what ``--manifest`` / ``--pool`` expect, for the error that neither or both were given
MODES = "either --manifest FILE --output FILE (one JSONL file, in memory) or --pool SPEC... --output_dir DIR (shards)"


def text_quality_command(argv: Sequence[str]) -> None:
    """``litzoo text-quality``: text quality-based pruning of a JSONL file or of a corpus in shards."""
    from litzoo.framework.curation.text_quality import PAPER_FILTERS

    parser = command_parser("litzoo text-quality", "Score documents with heuristic line filters weighted by perplexity; keep the top fraction.")
    parser.add_argument("--manifest", type=str, default=None, help="JSONL, one object per line with a text field (pruned in memory)")
    parser.add_argument("--output", type=str, default=None, help="with --manifest: the kept lines, unchanged, plus 'quality_score'")
    parser.add_argument("--pool", type=str, nargs="+", default=None,
                        help="shards (.jsonl, .jsonl.gz, .parquet, WebDataset .tar): files, brace ranges 'part-{000..099}.jsonl.gz', "
                             "globs, folders, or .shards list files")  # fmt: skip
    parser.add_argument("--output_dir", type=str, default=None,
                        help="with --pool: one output shard per input shard (same name and format: the kept records plus "
                             "'quality_score'), manifest.json, and the passes' files in .text_quality/ (to resume)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="with --pool: processes scoring shards in parallel")
    parser.add_argument("--text_key", type=str, default="text", help="the text field of each record (dotted for nested: 'json.text')")
    parser.add_argument("--id_key", type=str | None, default=None,
                        help="the field holding each document's id, which breaks ties in score (default: the line's index; "
                             "in a pool '<shard name>:<index>'; WebDataset samples: their key)")  # fmt: skip
    parser.add_argument("--keep_fraction", type=float, default=0.6, help="share of documents kept by score (the paper keeps 0.6-0.8)")
    parser.add_argument("--filters", type=list[str], default=list(PAPER_FILTERS), help="line filters by name (litzoo.framework.curation.FILTERS)")
    parser.add_argument("--path_keys", type=list[str], default=["image"], help=PATH_KEYS_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the tie-break between equal scores")
    add_progress_argument(parser)
    args = parser.parse_args(list(argv))

    if not 0.0 < args.keep_fraction <= 1.0:
        raise LitzooError(f"--keep_fraction {args.keep_fraction}: the share of documents kept must be in (0, 1]")
    if (args.manifest is None) == (args.pool is None):
        raise LitzooError(f"give {MODES}")
    if args.manifest is not None:
        if args.output is None or args.output_dir is not None or args.workers != 1:
            raise LitzooError(f"--manifest goes with --output (not --output_dir or --workers): give {MODES}")
        _prune_manifest(args)
    else:
        if args.output_dir is None or args.output is not None:
            raise LitzooError(f"--pool goes with --output_dir (not --output): give {MODES}")
        if args.workers < 1:
            raise LitzooError(f"--workers {args.workers}: the number of worker processes must be at least 1")
        _prune_pool(args)


def _prune_manifest(args) -> None:
    import json

    from litzoo.framework.curation import document_scores, filter_weights, resolve_filters, top_fraction
    from litzoo.framework.data.jsonl import iter_jsonl, rebase_paths
    from litzoo.framework.data.staging import check_writable, write_files_atomically

    manifest_path = Path(args.manifest).expanduser()
    output = check_writable(args.output)
    records, ids = [], []
    for number, record in progress(iter_jsonl(manifest_path, [args.text_key]), "reading", enabled=args.progress, unit=" lines"):
        if args.id_key is not None:
            if record.get(args.id_key) is None:
                raise LitzooError(f"manifest '{manifest_path}' line {number} has no id '{args.id_key}'")
            ids.append(str(record[args.id_key]))
        records.append(record)
    documents = [r[args.text_key] for r in records]
    try:
        # litzoo.framework.curation.prune, phase by phase for the progress bars: the filter weights, then the scores
        # (each document's score depends on its own lines only: text_quality.scores_from_statistics)
        filters = resolve_filters(args.filters)
        for _ in progress([None], "filter weights", total=1, enabled=args.progress):
            weights = filter_weights(documents, filters)
        for _ in progress([None], "scoring", total=1, enabled=args.progress):
            scores = document_scores(documents, weights, filters)
        kept = top_fraction(scores, args.keep_fraction, seed=args.seed, ids=ids if args.id_key is not None else None)
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


def _prune_pool(args) -> None:
    from litzoo.framework.curation.text_quality_pool import prune_pool
    from litzoo.framework.data.shards import expand_shards
    from litzoo.framework.data.staging import check_writable

    shards = expand_shards(args.pool)
    output_dir = Path(args.output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise LitzooError(f"--output_dir '{output_dir}' is a file, not a folder")
    check_writable(output_dir / "manifest.json")
    pool = f"'{shards[0]}'" + (f" and {len(shards) - 1} more shards" if len(shards) > 1 else "")
    try:
        manifest = prune_pool(shards, output_dir, keep_fraction=args.keep_fraction, filters=args.filters, text_key=args.text_key,
                              id_key=args.id_key, seed=args.seed, workers=args.workers, path_keys=args.path_keys,
                              progress=partial(progress, enabled=args.progress))  # fmt: skip
    except ValueError as error:
        raise LitzooError(f"text-quality on {pool}: {error}") from None
    total, kept = manifest["documents_total"], manifest["kept_total"]
    print("filter weights: " + ", ".join(f"{name}={weight:.4f}" for name, weight in manifest["weights"].items()))
    print(
        f"scored {total} documents in {len(shards)} shards ({args.workers} worker{'s' if args.workers > 1 else ''}); "
        f"kept {kept} ({kept / total:.1%}) with score >= {manifest['lowest_kept_score']:.3f}; "
        f"written to {output_dir} (manifest: {output_dir / 'manifest.json'})"
    )
