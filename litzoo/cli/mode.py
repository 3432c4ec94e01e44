"""``litzoo mode-cluster``: MoDE's clustering step (Ma et al., CVPR 2024) — a pool manifest's captions clustered in two
levels, and one training manifest per data expert; argument parsing only. The algorithm is
:class:`litzoo.modules.mode.MoDEClusteringStep`.

    litzoo mode-cluster --manifest pool.jsonl --output clusters --num_fine 1024 --num_coarse 4
    litzoo fit -c <a CLIP config> --data.init_args.train_manifest clusters/expert_0.jsonl \\
        --data.init_args.tokenizer_path clusters/tokenizer.json      # each expert, in any order, on any machine

The output folder holds ``clustering.pt`` (centres, fine → coarse map, caption embedder; loads with
``weights_only=True``), ``expert_<k>.jsonl``, ``tokenizer.json`` and ``summary.json``, each written whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litzoo.cli.console import command_parser
from litzoo.framework.errors import LitzooError


def mode_cluster_command(argv: Sequence[str]) -> None:
    """``litzoo mode-cluster``: cluster a pool's captions and write one manifest per MoDE data expert."""
    parser = command_parser(
        "litzoo mode-cluster", "MoDE: two-level caption clustering of a pool and one training manifest per data expert."
    )
    parser.add_argument(
        "--manifest", type=str, required=True, help="the pool: JSONL, one pair per line ({'image': path, 'text': caption, ...})"
    )
    parser.add_argument(
        "--output", type=str, required=True, help="folder for clustering.pt, expert_<k>.jsonl, tokenizer.json, summary.json"
    )
    parser.add_argument("--num_fine", type=int, default=1024, help="fine centres, balanced k-means (paper: 1024)")
    parser.add_argument("--num_coarse", type=int, default=4, help="coarse clusters = data experts (paper: 4)")
    parser.add_argument("--ooc_ratio", type=float, default=0.02, help="share of the out-of-cluster pairs each expert also trains on")
    parser.add_argument("--embed_dim", type=int, default=64, help="dimensions of the TF-IDF + SVD caption embedder (the SimCSE stand-in)")
    parser.add_argument("--distance", type=str, default="euclidean", help="'euclidean' (MoDE) or 'cosine'")
    parser.add_argument("--fine_iters", type=int, default=50, help="balanced k-means iterations per chunk")
    parser.add_argument("--coarse_iters", type=int, default=100, help="coarse k-means iterations")
    parser.add_argument("--coarse_balanced", type=bool, default=True, help="balanced coarse k-means, as the official code")
    parser.add_argument("--chunk_size", type=int | None, default=None, help="fit the fine centres online over chunks of this many captions")
    parser.add_argument("--vocab_size", type=int, default=49408, help="tokens of the BPE tokenizer shared by the experts")
    parser.add_argument("--text_key", type=str, default="text", help="the caption field")
    parser.add_argument("--image_key", type=str, default="image", help="the image path field (rewritten relative to --output)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the embedder, the clustering and the out-of-cluster draws")
    args = parser.parse_args(list(argv))

    from litzoo.framework.data.staging import check_writable
    from litzoo.modules.mode import MoDEClusteringStep

    output = Path(args.output).expanduser()
    if output.exists() and not output.is_dir():
        raise LitzooError(f"--output '{output}' is a file, not a folder")
    check_writable(output / "clustering.pt")
    try:
        step = MoDEClusteringStep(
            args.num_fine, args.num_coarse, args.ooc_ratio, args.embed_dim, args.distance, args.fine_iters, args.coarse_iters,
            args.coarse_balanced, args.chunk_size, args.vocab_size, args.text_key, args.image_key, args.seed,
        )  # fmt: skip
    except ValueError as error:
        raise LitzooError(f"mode-cluster: {error}") from None
    paths = step.write_experts(args.manifest, output)
    import json

    info = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    for k, path in enumerate(paths):
        print(f"expert {k}: {info['expert_pairs'][k]} pairs ({info['cluster_pairs'][k]} of its cluster) -> {path}")
    print(f"clustering ({args.num_fine} fine, {args.num_coarse} coarse, {info['num_captions']} captions) -> {output / 'clustering.pt'}")
