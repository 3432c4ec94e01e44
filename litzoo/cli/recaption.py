"""``litzoo recaption``: re-caption an image-text pool with a trained Altogether captioner (``modules/altogether.py``),
as MetaCLIP 1.2 re-captions its pool (MetaCLIP ``apps/altogether/infer.py``: the alt-text is the prompt) before CLIP
trains on it.

    litzoo recaption --ckpt captioner.ckpt --manifest pool.jsonl --output recaptioned.jsonl [--syn_ratio 1.0]

The pool is a JSONL manifest in :class:`~litzoo.datamodules.image_text.ImageTextDataModule`'s format
(``{"image": path, "text": alt-text, ...}``, images relative to the manifest). The output keeps every line and field,
with the image paths rewritten relative to the output's folder, the generated caption in ``--caption_key``
(``"altogether"``), the original alt-text in ``--keep_key`` (``"alt_text"``), and ``--text_key`` holding the caption
for a share ``--syn_ratio`` of the lines (drawn with ``--seed``) and the alt-text for the others: a static form of
MetaCLIP 1.2's mixing, which draws per sample and epoch (``syn_ratio = 0.15`` there). CLIP then trains on it with
``--data.init_args.train_manifest recaptioned.jsonl``. The output is written to a temporary file and renamed.
"""

from __future__ import annotations

from collections.abc import Sequence


def recaption_command(argv: Sequence[str]) -> None:
    """``litzoo recaption``: generate aligned captions for a pool manifest with an Altogether captioner checkpoint."""
    import json
    from pathlib import Path

    from litzoo.cli.console import add_progress_argument, command_parser, progress
    from litzoo.framework.errors import LitzooError

    parser = command_parser("litzoo recaption", "Rewrite the alt-texts of an image-text manifest into aligned captions with an Altogether captioner.")
    parser.add_argument("--ckpt", type=str, required=True, help="an AltogetherCaptioner checkpoint (litzoo fit -c configs/altogether/...)")
    parser.add_argument("--manifest", type=str, required=True, help="JSONL pool, one {image, text, ...} object per line")
    parser.add_argument("--output", type=str, required=True, help="the re-captioned JSONL manifest")
    parser.add_argument("--syn_ratio", "--syn-ratio", type=float, default=1.0, help="share of lines whose text becomes the generated caption")
    parser.add_argument("--text_key", type=str, default="text", help="the alt-text field read as the prompt, and the field CLIP trains on")
    parser.add_argument("--image_key", type=str, default="image", help="the image path field (relative to the manifest's folder, or absolute)")
    parser.add_argument("--keep_key", type=str, default="alt_text", help="field that keeps the original alt-text")
    parser.add_argument("--caption_key", type=str, default="altogether", help="field that holds the generated caption")
    parser.add_argument("--no_prompt", type=bool, default=False, help="caption from the image alone (the empty prompt) instead of rewriting the alt-text")
    parser.add_argument("--beam_size", type=int, default=1, help="1 = greedy decoding")
    parser.add_argument("--max_new_tokens", type=int | None, default=None, help="caption tokens at most (default: the captioner's max_seq_len - rewrite_prompt)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --syn_ratio draw")
    add_progress_argument(parser)
    args = parser.parse_args(list(argv))

    if not 0.0 <= args.syn_ratio <= 1.0:
        raise LitzooError(f"--syn_ratio {args.syn_ratio}: the share of generated captions must be in [0, 1]")
    if args.batch_size < 1 or args.beam_size < 1:
        raise LitzooError(f"--batch_size {args.batch_size} and --beam_size {args.beam_size} must be at least 1")
    if len({args.text_key, args.keep_key, args.caption_key}) != 3:
        raise LitzooError(f"--text_key, --keep_key and --caption_key must differ, got {args.text_key!r}, {args.keep_key!r}, {args.caption_key!r}")

    import numpy as np
    import torch

    from litzoo.datamodules.image_folder import ImageFileDataset
    from litzoo.datamodules.recaption import resolve_image
    from litzoo.framework.data.jsonl import iter_jsonl, rebase_paths
    from litzoo.framework.data.staging import check_writable, write_files_atomically
    from litzoo.framework.data.transforms import Normalize
    from litzoo.modules.altogether import load_captioner

    manifest = Path(args.manifest).expanduser()
    output = check_writable(args.output)
    captioner = load_captioner(args.ckpt)
    preprocess = captioner.preprocess
    if not preprocess:
        raise LitzooError(f"checkpoint '{args.ckpt}' does not record the image preprocessing (it was not trained with a RecaptionDataModule)")
    reader = ImageFileDataset([], mode="L" if preprocess["channels"] == 1 else "RGB", image_size=preprocess["image_size"],
                              normalize=Normalize(preprocess["mean"], preprocess["std"]))  # fmt: skip
    records, images = [], []
    for number, record in iter_jsonl(manifest, [args.text_key]):
        images.append(resolve_image(manifest, number, record.get(args.image_key), args.image_key))
        records.append(record)
    if not records:
        raise LitzooError(f"manifest '{manifest}' holds no pairs")
    captions: list[str] = []
    starts = range(0, len(records), args.batch_size)
    for start in progress(starts, "re-captioning", total=len(starts), enabled=args.progress, unit=" batches"):
        batch = torch.stack([reader.load(path) for path in images[start : start + args.batch_size]])
        prompts = None if args.no_prompt else [r[args.text_key] for r in records[start : start + args.batch_size]]
        captions += captioner.caption(batch, prompts, beam_size=args.beam_size, max_new_tokens=args.max_new_tokens)
    synthetic = np.random.default_rng(args.seed).random(len(records)) < args.syn_ratio
    with write_files_atomically(output) as (staged,), staged.open("w", encoding="utf-8") as handle:
        for record, caption, use in zip(records, captions, synthetic.tolist(), strict=True):
            alt = record[args.text_key]
            line = {**rebase_paths(record, [args.image_key], manifest.parent, output.parent), args.keep_key: alt, args.caption_key: caption}
            line[args.text_key] = caption if use and caption.strip() else alt  # an empty generation keeps the alt-text
            handle.write(json.dumps(line) + "\n")
    used = sum(1 for caption, use in zip(captions, synthetic.tolist(), strict=True) if use and caption.strip())
    print(f"re-captioned {len(records)} images with '{args.ckpt}' ({'empty prompt' if args.no_prompt else 'alt-text prompt'}, "
          f"{'greedy' if args.beam_size == 1 else f'beam {args.beam_size}'}); {used} lines train on the generated caption "
          f"(syn_ratio {args.syn_ratio:g}); written to {output}")  # fmt: skip
