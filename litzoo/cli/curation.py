"""``litzoo curate`` (MetaCLIP matching and balancing): argument parsing and file handling; the algorithms are in
:mod:`litzoo.framework.curation` (``metaclip.py``: matching and coins, ``sharded.py``: the two-pass map-reduce over a
sharded pool on local processes or Dask).

    litzoo curate --pool 'pool/{00000..00099}.tar' --text_key txt --metadata metadata.json --t 20000 \
        --output_dir curated/ --workers 8                     # or --engine dask --scheduler_address tcp://host:8786
    litzoo curate --manifest pool.jsonl --metadata metadata.json --output curated.jsonl

The command checks that its output can be written before the long work; every file is written to a temporary
sibling renamed into place (an interrupted run leaves no shorter file that reads as complete; a pool run started
again resumes at its first unfinished shard), and the relative file paths of the kept records (``--path_keys``,
default ``image``) are rewritten relative to the output's folder, so that they still name the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litzoo.cli.console import add_progress_argument, command_parser
from litzoo.framework.errors import LitzooError

#: side file of ``litzoo curate``: the per-entry match counts before and after balancing, shape (2, entries)
ENTRY_COUNTS_SUFFIX = ".entry_counts.npy"


#: help of ``--path_keys`` (``litzoo curate`` and ``litzoo text-quality``)
PATH_KEYS_HELP = "fields holding file paths relative to the manifest's folder: rewritten relative to the output's folder (absolute paths are kept)"


def curate_command(argv: Sequence[str]) -> None:
    """``litzoo curate``: MetaCLIP matching + balancing of a sharded pool (``--pool ... --output_dir``: curated shards
    and a manifest, :func:`litzoo.framework.curation.sharded.curate_pool`), or of one JSONL manifest (``--manifest ...
    --output``: one curated file beside its entry counts, through the same engine as a pool of one shard)."""
    import os
    import shutil
    import tempfile

    from jsonargparse import ArgumentError

    from litzoo.framework.curation import MetadataIndex, read_metadata
    from litzoo.framework.curation.sharded import OUTPUT_FORMATS, curate_pool
    from litzoo.framework.data.shards import expand_shards, shard_format
    from litzoo.framework.data.staging import check_writable

    parser = command_parser("litzoo curate", "MetaCLIP curation of image-text captions: sub-string matching, then balancing, "
                            "on a sharded pool (--pool, --output_dir) or one JSONL manifest (--manifest, --output).")  # fmt: skip
    parser.add_argument("--pool", type=str, nargs="+", default=None,
                        help="the pool's shards (.jsonl, .jsonl.gz, .parquet, WebDataset .tar): files, brace ranges "
                             "'pool-{000..099}.tar', globs, folders, or .shards files listing them")  # fmt: skip
    parser.add_argument("--output_dir", type=str, default=None,
                        help="with --pool: the curated shards (same names), manifest.json, entry_counts.npy (before / after) "
                             "and the files a killed run resumes from")  # fmt: skip
    parser.add_argument("--manifest", type=str, default=None, help="instead of --pool: one JSONL file, one object per line with a text field")
    parser.add_argument("--output", type=str, default=None,
                        help=f"with --manifest: the curated manifest (kept lines plus 'entries'; JSONL, or the format its name says), "
                             f"and beside it <output stem>{ENTRY_COUNTS_SUFFIX}")  # fmt: skip
    parser.add_argument("--metadata", type=str, default=None,
                        help="entries: a JSON list of strings, or a text file with one entry per line (told apart by the content)")  # fmt: skip
    parser.add_argument("--t", type=int, default=20000, help="balancing threshold: entries matched by more texts are sub-sampled to about t")
    parser.add_argument("--text_key", type=str, default="text",
                        help="the caption field of each sample (WebDataset tar: 'txt', or 'json.caption' inside the .json member)")  # fmt: skip
    parser.add_argument("--id_key", type=str | None, default=None,
                        help="JSONL / Parquet: the field holding each caption's unique id, which its coins hang on "
                             "(default: '<shard name>:<line>'; tar shards: the sample key)")  # fmt: skip
    parser.add_argument("--path_keys", type=list[str], default=["image"], help=PATH_KEYS_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the balancing coins")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (1: this process)")
    parser.add_argument("--engine", type=str, default="local", choices=["local", "dask"],
                        help="'dask': the same two passes on a Dask cluster (pip install litzoo[distributed])")  # fmt: skip
    parser.add_argument("--scheduler_address", type=str | None, default=None,
                        help="with --engine dask: the scheduler, e.g. tcp://host:8786 (default: Dask's own local cluster)")  # fmt: skip
    parser.add_argument("--output_format", type=str | None, default=None, choices=[None, *OUTPUT_FORMATS],
                        help="the curated shards' format (default: each input shard's own)")  # fmt: skip
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="replace what a curation with other arguments left in --output_dir instead of refusing")  # fmt: skip
    parser.add_argument("--log_dir", type=str, default=None,
                        help="TensorBoard summary: histograms of log10(entry count) before / after, entropy, kept fraction per shard")  # fmt: skip
    add_progress_argument(parser)
    args = parser.parse_args(list(argv))

    if args.pool is not None and args.manifest is not None:
        raise ArgumentError(None, "--pool and --manifest cannot be used together: curate a sharded pool or one manifest")
    if args.pool is None and args.manifest is None:
        raise ArgumentError(None, "one of the arguments --pool (with --output_dir) or --manifest (with --output) is required")
    needed = ["metadata", "output_dir"] if args.pool is not None else ["metadata", "output"]
    missing = [name for name in needed if getattr(args, name) is None]
    if missing:
        raise ArgumentError(None, f"the following arguments are required: {', '.join(missing)}")
    stray = "output" if args.pool is not None else "output_dir"
    if getattr(args, stray) is not None:
        mode = "--pool writes to --output_dir" if args.pool is not None else "--manifest writes to --output"
        raise ArgumentError(None, f"--{stray} does not apply here: {mode}")
    if args.t <= 0:
        raise LitzooError(f"--t {args.t}: the balancing threshold must be a positive number of texts per entry")
    if args.workers < 1:
        raise LitzooError(f"--workers {args.workers}: the number of worker processes must be at least 1")
    if args.scheduler_address is not None and args.engine != "dask":
        raise LitzooError(f"--scheduler_address {args.scheduler_address}: a Dask scheduler needs --engine dask")
    options = {"text_key": args.text_key, "id_key": args.id_key, "seed": args.seed, "workers": args.workers, "engine": args.engine,
               "scheduler_address": args.scheduler_address, "path_keys": tuple(args.path_keys), "progress": args.progress,
               "log_dir": args.log_dir}  # fmt: skip

    if args.pool is not None:
        output_dir = check_writable(Path(args.output_dir).expanduser() / "manifest.json", "output folder").parent
        shards = expand_shards(args.pool)
        index = MetadataIndex(read_metadata(args.metadata))
        manifest = curate_pool(shards, index, args.t, output_dir, output_format=args.output_format, overwrite=args.overwrite, **options)
        done = manifest["resumed"]
        resumed = f" (resumed: {len(done['matched'])} matched, {len(done['curated'])} curated before)" if done["matched"] else ""
        print(
            f"curated {manifest['captions']} captions in {len(shards)} shards{resumed} -> {_curation_summary(manifest, index)}; "
            f"{manifest['seconds']:.1f} s; written to {output_dir} (manifest.json, entry_counts.npy)"
        )
    else:
        if args.output_format is not None:
            raise ArgumentError(None, "--output_format is for --pool; with --manifest the name of --output says the format")
        manifest_path = Path(args.manifest).expanduser()
        output = check_writable(args.output)
        counts_path = output.with_suffix(ENTRY_COUNTS_SUFFIX)
        try:
            output_format = shard_format(output)
        except LitzooError:
            output_format = "jsonl"  # any other name: JSONL, as always
        index = MetadataIndex(read_metadata(args.metadata))
        # a pool of one shard, curated in a hidden folder beside the output and moved into place: the output and its
        # side file appear whole (each renamed in one step), and nothing else is left beside them, even on a kill
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".curating", dir=output.parent))
        try:
            manifest = curate_pool([manifest_path], index, args.t, work, output_format=output_format, paths_relative_to=output.parent, **options)
            os.replace(work / manifest["shards"][0]["output"], output)
            os.replace(work / "entry_counts.npy", counts_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"curated {manifest['captions']} texts -> {_curation_summary(manifest, index)}; "
            f"written to {output} (entry counts before / after: {counts_path})"
        )
    if index.unmatchable:
        print(f"note: {len(index.unmatchable)} entries can never match (not in spaced form), e.g. {index.entries[index.unmatchable[0]]!r}")


def _curation_summary(manifest: dict, index) -> str:
    """``"<matched> matched -> <kept> kept (expected ...); entries matched ...; ... largest count a -> b"``."""
    before, after, counts = manifest["counts"]["before"], manifest["counts"]["after"], manifest["counts"]
    return (
        f"{manifest['matched']} matched -> {manifest['kept']} kept (expected {manifest['expected']:.1f}); "
        f"entries matched {before['entries_matched']}/{len(index.entries)}, head (>= t) {counts['head_entries']}; "
        f"tail matches kept {counts['tail_matches_after']}/{counts['tail_matches_before']}; "
        f"entry entropy {before['entropy_nats']:.3f} -> {after['entropy_nats']:.3f} nats; "
        f"largest count {before['largest']} -> {after['largest']}"
    )
