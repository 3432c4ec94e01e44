"""Masked modelling: what MAE pretraining gives a frozen encoder, and what masking saves per step.

    .venv/bin/python benchmarks/masked_modelling.py      # or as part of `make bench`

1. MAE on digits (configs/mae/digits.yaml, 3 seeds): held-out masked-patch error against predicting the
   mean pixel, and the frozen class-token features probed (linear head, weighted 20-NN) after pretraining
   against the same encoder at its random initialisation.
2. Step time of MAE pretraining at mask 0.75 against the same ViT encoder trained on all tokens with a
   linear head (forward + backward + AdamW step; alternating rounds, medians). The paper: the encoder
   sees 25% of the patches, "3x or more" faster pretraining.
3. Audio-MAE (configs/audio_mae/synthetic_audio.yaml, 3 seeds): probes of the frozen encoder at random
   initialisation and after pretraining on the synthetic audio classes.
   MAE-Hiera (configs/hiera/digits_mae.yaml, 3 seeds): the same before/after probes on digits.
4. Hiera (configs/hiera/digits.yaml) against a plain ViT classifier of similar size on the same digits
   and recipe, 3 seeds: accuracy, and throughput ratios (alternating rounds).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from litzoo.callbacks.probe import KNNProbe, LinearProbe  # noqa: E402
from litzoo.datamodules.digits import DigitsDataModule  # noqa: E402
from litzoo.modules.mae import MAEModule  # noqa: E402

CONFIG = common.ROOT / "configs" / "mae" / "digits.yaml"
SEEDS = (0, 1, 2)
EPOCHS = 40
STEP_GOAL = 0.4  # issue #8: MAE step / all-token step


def _config() -> tuple[dict, dict]:
    config = yaml.safe_load(CONFIG.read_text())
    return dict(config["model"]["init_args"]), dict(config["data"]["init_args"])


def _probes(seed: int) -> tuple[LinearProbe, KNNProbe]:
    data = DigitsDataModule(batch_size=256, normalize=False)
    return LinearProbe(data, seed=seed), KNNProbe(data, seed=seed)


def pretrain_and_probe(seed: int, epochs: int = EPOCHS) -> dict:
    """Probe accuracies of the encoder at initialisation and after ``epochs`` of MAE; masked-patch errors."""
    model_args, data_args = _config()
    L.seed_everything(seed, verbose=False)
    module = MAEModule(**model_args)
    linear, knn = _probes(seed)
    before = {"linear": linear.evaluate(module), "knn": knn.evaluate(module)}
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, DigitsDataModule(**data_args))
    seconds = time.perf_counter() - start
    after = {"linear": linear.evaluate(module), "knn": knn.evaluate(module)}
    metrics = trainer.callback_metrics
    return {"seed": seed, "before": before, "after": after, "val_loss": float(metrics["val/loss"]),
            "mean_baseline": float(metrics["val/mean_baseline_loss"]), "fit_seconds": seconds}  # fmt: skip


class _Supervised(nn.Module):
    """The MAE encoder on all patches with a linear head: the all-token step MAE is compared with."""

    def __init__(self, mae: MAEModule, num_classes: int) -> None:
        super().__init__()
        self.mae = mae.model
        self.head = nn.Linear(self.mae.cls_token.shape[-1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.mae.forward_features(images))


def step_time_ratio(batch: int = 8, rounds: int = 3, steps: int = 2) -> dict:
    """Median MAE step / median all-token step for MAE's smallest model, ViT-B/16 on 224² images, with the
    paper's decoder (8 blocks × 512-d) and with its 1-block ablation; alternating rounds."""
    torch.manual_seed(0)
    encoder = {"img_size": 224, "patch_size": 16, "in_chans": 3, "embed_dim": 768, "depth": 12, "num_heads": 12}
    variants = {"mae_decoder_8x512": MAEModule(**encoder, decoder_depth=8).model, "mae_decoder_1x512": MAEModule(**encoder, decoder_depth=1).model}
    supervised = _Supervised(MAEModule(**encoder, decoder_depth=1), 1000)
    images = torch.randn(batch, 3, 224, 224)
    labels = torch.randint(0, 1000, (batch,))

    def make_step(model: nn.Module, loss_of) -> callable:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            loss = loss_of(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps_by_name = {name: make_step(model, lambda m: m(images, 0.75)[0]) for name, model in variants.items()}
    steps_by_name["all_tokens"] = make_step(supervised, lambda m: nn.functional.cross_entropy(m(images), labels))
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for step in steps_by_name.values():
        step()  # warm-up
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"batch": batch, "ms": {name: 1e3 * t for name, t in medians.items()},
            "ratio": {name: medians[name] / medians["all_tokens"] for name in variants}, "goal": STEP_GOAL}  # fmt: skip



AUDIO_CONFIG = common.ROOT / "configs" / "audio_mae" / "synthetic_audio.yaml"
AUDIO_EPOCHS = 30
HIERA_CONFIG = common.ROOT / "configs" / "hiera" / "digits.yaml"
HIERA_MAE_CONFIG = common.ROOT / "configs" / "hiera" / "digits_mae.yaml"
HIERA_MAE_EPOCHS = 40


def probes_before_after(config: Path, seed: int, epochs: int) -> dict:
    """A pretraining config's own linear / kNN probes at the encoder's random initialisation and after
    ``epochs`` of pretraining (same seed)."""
    cli = common.config_cli(config, "--seed_everything", str(seed), "--trainer.max_epochs", str(epochs))
    probes = {type(c).__name__: c for c in cli.trainer.callbacks if isinstance(c, (LinearProbe, KNNProbe))}
    before = {name: probe.evaluate(cli.model) for name, probe in probes.items()}
    for probe in probes.values():
        probe.every_n_epochs = epochs  # evaluate once, at the end
    cli.trainer.fit(cli.model, cli.datamodule)
    after = {name: probe.history[epochs - 1] for name, probe in probes.items()}
    return {"seed": seed, "before": before, "after": after, "val_loss": float(cli.trainer.callback_metrics["val/loss"])}


class _ViTNet(nn.Module):
    """A plain ViT classifier (class token → linear head) from litzoo.framework.nn, the Hiera comparison."""

    def __init__(self, image_size: int, patch_size: int, dim: int, depth: int, num_heads: int, num_classes: int) -> None:
        super().__init__()
        from litzoo.framework.nn import VisionTransformer

        self.vit = VisionTransformer(image_size, patch_size, 1, dim, depth, num_heads)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit.pool(self.vit(images), "token"))


def hiera_versus_vit(seed: int) -> dict:
    """Val accuracy of the Hiera config and of a ViT (patch 4, width 64, 4 blocks) trained the same way."""
    from litzoo.framework.classification import ImageClassifier
    from litzoo.framework.profiling import count_parameters

    cli = common.config_cli(HIERA_CONFIG, "--seed_everything", str(seed))
    cli.trainer.fit(cli.model, cli.datamodule)
    hiera_acc = float(cli.trainer.callback_metrics["val/acc"])
    L.seed_everything(seed, verbose=False)
    vit = ImageClassifier(_ViTNet(32, 4, 64, 4, 4, 10), 10, optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05))
    trainer = L.Trainer(max_epochs=cli.trainer.max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(vit, DigitsDataModule(batch_size=64, image_size=32))
    return {"seed": seed, "hiera_acc": hiera_acc, "vit_acc": float(trainer.callback_metrics["val/acc"]),
            "hiera_params": count_parameters(cli.model), "vit_params": count_parameters(vit), "hiera": cli.model, "vit": vit}  # fmt: skip


def throughput_ratio(first: nn.Module, second: nn.Module, batch: int = 64, rounds: int = 7, repeats: int = 20) -> dict:
    """Inference images/s of two classifiers on 1x32x32 inputs (eval, inference_mode), alternating rounds."""
    from litzoo.framework.profiling import eval_mode

    images = torch.randn(batch, 1, 32, 32)
    times: dict[str, list[float]] = {"first": [], "second": []}
    with eval_mode(first), eval_mode(second), torch.inference_mode():
        first(images), second(images)
        for _ in range(rounds):
            for name, model in (("first", first), ("second", second)):
                start = time.perf_counter()
                for _ in range(repeats):
                    model(images)
                times[name].append((time.perf_counter() - start) / repeats)
    first_s, second_s = statistics.median(times["first"]), statistics.median(times["second"])
    return {"batch": batch, "first_images_per_s": batch / first_s, "second_images_per_s": batch / second_s, "ratio": second_s / first_s}


def main() -> dict:
    common.quiet_lightning()
    start = time.perf_counter()
    runs = []
    for seed in SEEDS:
        runs.append(pretrain_and_probe(seed))
        r = runs[-1]
        print(f"  seed {seed}: linear {r['before']['linear']:.3f} -> {r['after']['linear']:.3f}, knn {r['before']['knn']:.3f} -> "
              f"{r['after']['knn']:.3f}, masked-patch MSE {r['val_loss']:.4f} (mean {r['mean_baseline']:.4f})", file=sys.stderr, flush=True)  # fmt: skip
    timing = step_time_ratio()
    audio = []
    for seed in SEEDS:
        audio.append(probes_before_after(AUDIO_CONFIG, seed, AUDIO_EPOCHS))
        print(f"  audio seed {seed}: {audio[-1]['before']} -> {audio[-1]['after']}", file=sys.stderr, flush=True)
    hiera_mae = []
    for seed in SEEDS:
        hiera_mae.append(probes_before_after(HIERA_MAE_CONFIG, seed, HIERA_MAE_EPOCHS))
        print(f"  hiera-mae seed {seed}: {hiera_mae[-1]['before']} -> {hiera_mae[-1]['after']}", file=sys.stderr, flush=True)
    hiera = []
    for seed in SEEDS:
        row = hiera_versus_vit(seed)
        print(f"  hiera seed {seed}: hiera {row['hiera_acc']:.3f} vit {row['vit_acc']:.3f}", file=sys.stderr, flush=True)
        hiera.append(row)
    speed = throughput_ratio(hiera[0].pop("hiera"), hiera[0].pop("vit"))
    for row in hiera[1:]:
        row.pop("hiera"), row.pop("vit")
    return {"runs": runs, "timing": timing, "epochs": EPOCHS, "audio": audio, "audio_epochs": AUDIO_EPOCHS, "hiera_mae": hiera_mae,
            "hiera_mae_epochs": HIERA_MAE_EPOCHS, "hiera": hiera,
            "hiera_speed": speed, "seconds": time.perf_counter() - start}  # fmt: skip




_STEP_LABELS = {"mae_decoder_8x512": "MAE, the paper's decoder (8 blocks × 512-d)", "mae_decoder_1x512": "MAE, the paper's 1-block decoder ablation"}


def format_section(results: dict) -> str:
    runs, timing = results["runs"], results["timing"]
    rows = [
        ["linear probe (MAE head: BN + linear, 90 epochs)", common.mean_sd([r["before"]["linear"] for r in runs]), common.mean_sd([r["after"]["linear"] for r in runs])],
        ["weighted 20-NN (DINO, T 0.07)", common.mean_sd([r["before"]["knn"] for r in runs]), common.mean_sd([r["after"]["knn"] for r in runs])],
        ["held-out masked-patch MSE (mean pixel: " + common.mean_sd([r["mean_baseline"] for r in runs]) + ")", "—", common.mean_sd([r["val_loss"] for r in runs])],
    ]
    return "\n".join([
        "## Masked modelling: MAE on digits, and the cost of a masked step",
        "",
        f"`configs/mae/digits.yaml` (encoder 2 × 64-d on 2x2 patches, decoder 1 × 32-d, mask 0.75, raw-pixel loss), "
        f"{results['epochs']} epochs, seeds {[r['seed'] for r in runs]} (mean ± sd). Probes on the frozen class token, "
        "trained on the 1257 training digits and scored on the 180 validation digits: at the encoder's random initialisation "
        "(same seed) and after MAE pretraining.",
        "",
        common.markdown_table(["evaluation", "random init", "after MAE"], rows),
        "",
        f"Step time, MAE pretraining at mask 0.75 vs the same ViT-B/16 encoder trained on all 196 tokens with a linear head "
        f"(224², batch {timing['batch']}, forward + backward + AdamW, medians of alternating rounds; goal ≤ {timing['goal']}):",
        "",
        common.markdown_table(["step", "ms", "ratio to all tokens", "goal"], [
            ["all 196 tokens + linear head", f"{timing['ms']['all_tokens']:.0f}", "1.00", ""],
            *[[_STEP_LABELS[name], f"{timing['ms'][name]:.0f}", f"{ratio:.2f}", "met" if ratio <= timing["goal"] else "not met"]
              for name, ratio in timing["ratio"].items()],
        ]),
        "",
        f"Audio-MAE (`configs/audio_mae/synthetic_audio.yaml`: SYNTHETIC 8-class audio, 96 frames × 64 mel bins, 8x8 patches, "
        f"encoder 2 × 64-d, 2 window-attention decoder blocks, mask 0.8), {results['audio_epochs']} epochs, seeds "
        f"{[r['seed'] for r in results['audio']]}; the config's probes on the frozen mean-pooled encoder tokens:",
        "",
        common.markdown_table(["evaluation", "random init", "after Audio-MAE"], [
            [name, common.mean_sd([r["before"][key] for r in results["audio"]]), common.mean_sd([r["after"][key] for r in results["audio"]])]
            for name, key in (("linear probe", "LinearProbe"), ("weighted 20-NN", "KNNProbe"))
        ]),
        "",
        f"MAE-Hiera (`configs/hiera/digits_mae.yaml`: the Hiera below with a 3x3 stride-2 patch conv, 16 mask units of 4x4 tokens, "
        f"60% removed, multi-scale fusion, 1-block decoder, norm-pix loss), {results['hiera_mae_epochs']} epochs, seeds "
        f"{[r['seed'] for r in results['hiera_mae']]}; the config's probes on the frozen mean-pooled fused encoding:",
        "",
        common.markdown_table(["evaluation", "random init", "after MAE-Hiera"], [
            [name, common.mean_sd([r["before"][key] for r in results["hiera_mae"]]), common.mean_sd([r["after"][key] for r in results["hiera_mae"]])]
            for name, key in (("linear probe", "LinearProbe"), ("weighted 20-NN", "KNNProbe"))
        ]),
        "",
        f"Hiera vs a plain ViT on digits 32x32, same recipe (`configs/hiera/digits.yaml`: AdamW 2e-3, 10 epochs), seeds "
        f"{[r['seed'] for r in results['hiera']]}: Hiera (3 stages, widths 32-64-128, q-pooling, mask-unit attention in stage 1; "
        f"{results['hiera'][0]['hiera_params']:,} parameters) val accuracy {common.mean_sd([r['hiera_acc'] for r in results['hiera']])}; "
        f"ViT (patch 4, 4 blocks × 64-d; {results['hiera'][0]['vit_params']:,} parameters) {common.mean_sd([r['vit_acc'] for r in results['hiera']])}. "
        f"Inference at batch {results['hiera_speed']['batch']}: Hiera {results['hiera_speed']['first_images_per_s']:,.0f} images/s, ViT "
        f"{results['hiera_speed']['second_images_per_s']:,.0f} images/s (Hiera / ViT time {1 / results['hiera_speed']['ratio']:.2f}).",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    common.setup_threads()
    out = main()
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
