"""Perception Encoder pieces on the toy CLIP: progressive resolution against a fixed resolution at the same steps.

    .venv/bin/python benchmarks/perception_encoder.py      # or as part of `make bench`

The paper (Bolya et al. 2025, §2.1): training in stages of increasing resolution (98 → 154 → 224) halves the training
FLOPs at the same samples seen and keeps the accuracy. Here, on the SYNTHETIC digit captions
(``configs/perception_encoder/digits_captions.yaml``, 30 epochs, 3 seeds), three arms with the same steps and recipe:

* CLIP: ``configs/clip/digits_captions.yaml`` (class-token readout, absolute positions, 8 px);
* PE-style, fixed 8 px: RoPE-2D + attention pooling + ``ln_pre`` (the PE config without its callback);
* PE-style, progressive 4 → 6 → 8 px: the PE config as shipped (:class:`ProgressiveResolution`, equal thirds).

Reported: test zero-shot accuracy on the 360 held-out digits, test text→image R@10, training FLOPs (forward FLOPs of the
model per sample at each step's resolution × batch, counted with ``torch.utils.flop_counter``; backward ≈ 2× forward in
every arm, so the ratio holds for the whole step), those of the image tower alone, and the training wall time.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from litzoo.callbacks.progressive_resolution import ProgressiveResolution  # noqa: E402
from litzoo.datamodules.image_text import DigitsCaptionsDataModule  # noqa: E402
from litzoo.framework.profiling import count_flops  # noqa: E402
from litzoo.modules.clip import CLIPModule  # noqa: E402

PE_CONFIG = common.ROOT / "configs" / "perception_encoder" / "digits_captions.yaml"
CLIP_CONFIG = common.ROOT / "configs" / "clip" / "digits_captions.yaml"
SEEDS = (0, 1, 2)
ARMS = ("clip", "pe_fixed", "pe_progressive")
LABELS = {"clip": "CLIP (class token, abs. positions), 8 px", "pe_fixed": "PE-style (RoPE-2D + attention pool), fixed 8 px",
          "pe_progressive": "PE-style, progressive 4 → 6 → 8 px"}  # fmt: skip


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[int] | None]:
    config = yaml.safe_load(path.read_text())
    model = dict(config["model"]["init_args"])
    optimizer = model.pop("optimizer")
    assert optimizer["class_path"] == "torch.optim.AdamW", f"{path}: expected AdamW"
    resolutions = None
    for callback in config["trainer"].get("callbacks", []):
        if callback["class_path"].endswith("ProgressiveResolution"):
            resolutions = list(callback["init_args"]["resolutions"])
    return model, dict(optimizer["init_args"]), {"data": dict(config["data"]["init_args"]), "epochs": int(config["trainer"]["max_epochs"])}, resolutions


def run(arm: str, seed: int) -> dict[str, Any]:
    model_args, optim_args, rest, resolutions = _read(CLIP_CONFIG if arm == "clip" else PE_CONFIG)
    L.seed_everything(seed, verbose=False)
    module = CLIPModule(**model_args, optimizer=lambda params: torch.optim.AdamW(params, **optim_args))
    data = DigitsCaptionsDataModule(**rest["data"])
    callbacks: list[L.Callback] = []
    if arm == "pe_progressive":
        callbacks.append(ProgressiveResolution(resolutions))
    trainer = L.Trainer(max_epochs=rest["epochs"], accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=callbacks)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    metrics = trainer.test(module, datamodule=data, verbose=False)[0]
    # training FLOPs: each step's forward FLOPs at its resolution (the batch's tokens are the same in every arm)
    steps, batch, side = int(trainer.global_step), int(rest["data"]["batch_size"]), int(model_args["image_size"])
    tokens = torch.zeros(1, model_args["context_length"], dtype=torch.long)
    tokens[:, 1] = module.model.text.end_token_id

    def flops_at(size: int) -> tuple[int, int]:
        images = torch.zeros(1, model_args["in_chans"], size, size)
        return count_flops(module.model, (images, tokens)), count_flops(ImageTower(module.model), images)

    schedule = callbacks[0] if callbacks else ProgressiveResolution([side])
    per_step = [schedule.resolution_at(s / steps) for s in range(steps)]
    cost = {size: flops_at(size) for size in set(per_step)}
    return {
        "arm": arm, "seed": seed, "zero_shot": float(metrics["test/zero_shot_acc"]), "t2i_r10": float(metrics["test/text_to_image_R@10"]),
        "train_flops": float(sum(cost[s][0] for s in per_step) * batch), "image_flops": float(sum(cost[s][1] for s in per_step) * batch),
        "seconds": seconds, "steps": steps, "stages": {str(size): per_step.count(size) for size in sorted(set(per_step))},
    }  # fmt: skip


class ImageTower(torch.nn.Module):
    """The image side of a CLIP (ViT, pooling, projection), for its FLOPs alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


def main() -> dict[str, Any]:
    common.quiet_lightning()
    start = time.perf_counter()
    runs = []
    for seed in SEEDS:
        for arm in ARMS:
            runs.append(run(arm, seed))
            print(f"perception_encoder: {runs[-1]}", file=sys.stderr, flush=True)  # progress of a long run
    return {"runs": runs, "seeds": list(SEEDS), "machine": common.machine_info(), "seconds": time.perf_counter() - start}


def format_section(results: dict[str, Any]) -> str:
    runs = results["runs"]

    def of(arm: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["arm"] == arm]

    base_flops, base_seconds = statistics.mean(of("pe_fixed", "train_flops")), statistics.mean(of("pe_fixed", "seconds"))
    base_image = statistics.mean(of("pe_fixed", "image_flops"))
    rows = [
        [LABELS[arm], common.mean_sd(of(arm, "zero_shot")), common.mean_sd(of(arm, "t2i_r10")),
         f"{statistics.mean(of(arm, 'train_flops')) / 1e9:.1f} G ({statistics.mean(of(arm, 'train_flops')) / base_flops:.2f}×)",
         f"{statistics.mean(of(arm, 'image_flops')) / 1e9:.1f} G ({statistics.mean(of(arm, 'image_flops')) / base_image:.2f}×)",
         f"{statistics.mean(of(arm, 'seconds')):.0f} s ({statistics.mean(of(arm, 'seconds')) / base_seconds:.2f}×)"]
        for arm in ARMS
    ]  # fmt: skip
    progressive = [r for r in runs if r["arm"] == "pe_progressive"]
    wins = sum(p["zero_shot"] >= f["zero_shot"] for p, f in zip(progressive, [r for r in runs if r["arm"] == "pe_fixed"], strict=True))
    return "\n".join([
        "## Perception Encoder: progressive resolution on the toy CLIP",
        "",
        f"SYNTHETIC digit captions (`configs/perception_encoder/digits_captions.yaml`: ViT 2 × 64-d on 2x2 patches, text 2 × 64-d, "
        f"30 epochs, {progressive[0]['steps']} steps of batch 128), seeds {results['seeds']} (mean ± sd). Same steps, data and recipe in "
        f"every arm; the progressive arm trains {progressive[0]['stages']} steps at each side (px). Zero-shot accuracy and text→image R@10 "
        "on the 360 held-out test digits at 8 px; training FLOPs = forward FLOPs per sample at each step's resolution × batch "
        "(ratio to the fixed PE-style arm; the text tower's share is the same in every arm, so the image tower's column is the saving "
        "the schedule makes); wall time of `fit` on a shared machine (indicative only).",
        "",
        common.markdown_table(["arm", "test zero-shot acc", "test t→i R@10", "training FLOPs (both towers)", "of which image tower", "fit time"], rows),
        "",
        f"Progressive ≥ fixed in {wins} of {len(progressive)} seeds. The paper's claim is the same accuracy at about half the "
        "training FLOPs (98 → 154 → 224 px for ViT-L/14); at 8 px the first stage (4 px) has only 2x2 patches.",
    ])  # fmt: skip


if __name__ == "__main__":
    common.setup_threads()
    out = main()
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
