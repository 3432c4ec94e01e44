"""``litzoo curate`` (MetaCLIP matching and balancing) and ``litzoo text-quality`` (text quality-based
pruning) on JSONL files: argument parsing and file handling; the algorithms are in
:mod:`litzoo.framework.curation` (``metaclip.py``, ``text_quality.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser

from litzoo.framework.errors import LitzooError


def curate_command(argv: Sequence[str]) -> None:
    """``litzoo curate``: MetaCLIP matching + balancing of a JSONL manifest, written as a curated manifest."""
    import json
    from pathlib import Path

    import numpy as np

    from litzoo.framework.curation import MetadataIndex, balance, entropy, entry_counts, keep_probabilities
    from litzoo.framework.data.jsonl import read_jsonl

    parser = ArgumentParser(prog="litzoo curate", description="MetaCLIP curation of an image-text manifest: sub-string matching, then balancing.")
    parser.add_argument("--manifest", type=str, required=True, help="JSONL, one object per line with a text field")
    parser.add_argument("--metadata", type=str, required=True, help="entries: a JSON list of strings, or a text file with one entry per line")
    parser.add_argument("--t", type=int, default=20000, help="balancing threshold: entries matched by more texts are sub-sampled to about t")
    parser.add_argument("--output", type=str, required=True, help="the curated JSONL manifest (kept lines, unchanged, plus 'entries')")
    parser.add_argument("--text_key", type=str, default="text", help="the caption field of each line")
    parser.add_argument("--seed", type=int, default=0, help="seed of the balancing coins")
    parser.add_argument("--log_dir", type=str, default=None, help="write TensorBoard histograms of log10(entry count) before / after")
    args = parser.parse_args(list(argv))

    metadata_path = Path(args.metadata)
    try:
        raw = metadata_path.read_text(encoding="utf-8")
    except OSError as error:
        raise LitzooError(f"metadata '{metadata_path}' cannot be read: {error.strerror or error}") from None
    if metadata_path.suffix == ".json":
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as error:
            raise LitzooError(f"metadata '{metadata_path}' is not valid JSON: {error.msg} (line {error.lineno})") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise LitzooError(f"metadata '{metadata_path}' must be a JSON list of strings")
    else:
        entries = [line for line in raw.splitlines() if line]
    manifest_path = Path(args.manifest)
    records = read_jsonl(manifest_path, [args.text_key])

    index = MetadataIndex(entries)
    matches = [index.match(r[args.text_key]) for r in records]
    kept = balance(matches, len(entries), args.t, seed=args.seed)
    before = entry_counts(matches, len(entries))
    after = entry_counts([matches[i] for i in kept], len(entries))
    expected = sum(keep_probabilities(matches, len(entries), args.t))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as f:
        for i in kept:
            f.write(json.dumps({**records[i], "entries": [entries[e] for e in matches[i]]}) + "\n")
    matched = sum(1 for m in matches if m)
    tail = before < args.t
    print(
        f"curated {len(records)} texts -> {matched} matched -> {len(kept)} kept (expected {expected:.1f}); "
        f"entries matched {int((before > 0).sum())}/{len(entries)}, head (>= t) {int((~tail & (before > 0)).sum())}; "
        f"tail matches kept {int(after[tail].sum())}/{int(before[tail].sum())}; "
        f"entry entropy {entropy(before):.3f} -> {entropy(after):.3f} nats; largest count {int(before.max(initial=0))} -> {int(after.max(initial=0))}; "
        f"written to {output}"
    )
    if index.unmatchable:
        print(f"note: {len(index.unmatchable)} entries can never match (not in spaced form), e.g. {entries[index.unmatchable[0]]!r}")
    np.save(output.with_suffix(".entry_counts.npy"), np.stack([before, after]))
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

    from litzoo.framework.curation import PAPER_FILTERS, prune
    from litzoo.framework.data.jsonl import read_jsonl

    parser = ArgumentParser(prog="litzoo text-quality", description="Score documents with heuristic line filters weighted by perplexity; keep the top fraction.")
    parser.add_argument("--manifest", type=str, required=True, help="JSONL, one object per line with a text field")
    parser.add_argument("--output", type=str, required=True, help="the kept lines, unchanged, plus 'quality_score'")
    parser.add_argument("--text_key", type=str, default="text", help="the text field of each line")
    parser.add_argument("--keep_fraction", type=float, default=0.6, help="share of documents kept by score (the paper keeps 0.6-0.8)")
    parser.add_argument("--filters", type=list[str], default=list(PAPER_FILTERS), help="line filters by name (litzoo.framework.curation.FILTERS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tie-break between equal scores")
    args = parser.parse_args(list(argv))

    manifest_path = Path(args.manifest)
    records = read_jsonl(manifest_path, [args.text_key])
    try:
        kept, scores, weights = prune([r[args.text_key] for r in records], args.keep_fraction, args.filters, seed=args.seed)
    except ValueError as error:
        raise LitzooError(f"text-quality on '{manifest_path}': {error}") from None
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as f:
        for i in kept:
            f.write(json.dumps({**records[i], "quality_score": float(scores[i])}) + "\n")
    print("filter weights: " + ", ".join(f"{name}={weight:.4f}" for name, weight in weights.items()))
    print(
        f"scored {len(records)} documents (score min {scores.min():.3f}, median {float(sorted(scores)[len(scores) // 2]):.3f}, max {scores.max():.3f}); "
        f"kept {len(kept)} ({len(kept) / len(records):.1%}) with score >= {scores[kept].min():.3f}; written to {output}"
    )
