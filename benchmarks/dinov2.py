"""DINOv2 on digits: what self-distillation gives a frozen ViT, and what each of its terms contributes.

    .venv/bin/python benchmarks/dinov2.py      # or as part of `make bench`

`configs/dinov2/digits.yaml` (ViT 64-d x 4 blocks on 16 px digits, 2 global + 4 local crops, DINO + iBOT + KoLeo,
centering), 3 seeds, against the same run

* with Sinkhorn-Knopp instead of the softmax-centering of the teacher (``centering: sinkhorn_knopp``);
* without KoLeo (``koleo_loss_weight: 0``);
* without iBOT (``ibot_loss_weight: 0``: no patch loss; the student's global crops are still masked, as the official
  step does);
* with LayerScale initialised at 1.0 instead of the paper's 1e-5 (not an ablation of the paper: it tests whether the
  near-constant class token of a LayerScale-1e-5 start is what keeps the teacher's class-token targets uniform here);
* against MAE with the same encoder (64-d x 4 blocks x 4 heads, 4x4 patches of the same 16 px digits, so the same 16
  tokens per image), a 1 x 32-d decoder and the same 40 epochs of batch 64 (``configs/mae/digits.yaml``'s recipe
  otherwise);
* and against the encoder at its random initialisation (same seed).

The probes are the configs' own: DINO's weighted 20-NN (T 0.07) and a BN + linear head on the frozen class token (the
DINOv2 teacher's), trained on the 1257 training digits, scored on the 180 validation digits. The collapse monitors of
the last validation (fixed views, final teacher temperature) say whether the class-token targets are informative:
``teacher_entropy_per_sample`` equal to ln K (K = 256 prototypes, ln K = 5.545) means every image gets the uniform
target, and the DINO term then carries no signal.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from litzoo.callbacks.probe import KNNProbe, LinearProbe  # noqa: E402
from litzoo.datamodules.digits import DigitsDataModule  # noqa: E402
from litzoo.modules.mae import MAEModule  # noqa: E402

CONFIG = common.ROOT / "configs" / "dinov2" / "digits.yaml"
MAE_CONFIG = common.ROOT / "configs" / "mae" / "digits.yaml"
SEEDS = (0, 1, 2)
EPOCHS = 40
IMAGE_SIZE = 16
PARTIAL = common.ROOT / "runs" / "benchmarks" / "dinov2.partial.jsonl"  # each finished run, so an interrupted run can be read

#: variant -> (label, config overrides)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dinov2": ("DINOv2 (centering, iBOT, KoLeo): the config", ()),
    "sinkhorn": ("Sinkhorn-Knopp instead of centering", ("--model.init_args.centering", "sinkhorn_knopp")),
    "no_koleo": ("without KoLeo", ("--model.init_args.koleo_loss_weight", "0")),
    "no_ibot": ("without iBOT", ("--model.init_args.ibot_loss_weight", "0")),
    # not an ablation of the paper: a probe of the uniform-target plateau. With gamma = 1e-5 every block's output is
    # scaled to nearly nothing at the start, so the class token is nearly the same for every image.
    "layer_scale_1": ("LayerScale initialised at 1.0 instead of 1e-5", ("--model.init_args.layer_scale_init", "1.0")),
}
MONITORS = ("teacher_entropy_per_sample", "teacher_entropy_of_mean", "teacher_cls_std", "dino_global_loss", "ibot_loss")



def dinov2_run(variant: str, seed: int) -> dict:
    """Probe accuracies at initialisation and after ``EPOCHS`` of one DINOv2 variant; the last validation's monitors."""
    cli = common.config_cli(CONFIG, "--seed_everything", str(seed), "--trainer.max_epochs", str(EPOCHS), *VARIANTS[variant][1])
    probes = {type(c).__name__: c for c in cli.trainer.callbacks if isinstance(c, (LinearProbe, KNNProbe))}
    before = {name: probe.evaluate(cli.model) for name, probe in probes.items()}
    for probe in probes.values():
        probe.every_n_epochs = EPOCHS  # evaluate once, at the end
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = cli.trainer.callback_metrics
    return {"variant": variant, "seed": seed, "before": before, "after": {name: probe.history[EPOCHS - 1] for name, probe in probes.items()},
            "monitors": {name: float(metrics[f"val/{name}"]) for name in MONITORS if f"val/{name}" in metrics},
            "fit_seconds": time.perf_counter() - start}  # fmt: skip


def mae_run(seed: int) -> dict:
    """MAE with DINOv2's encoder size on the same 16 px digits for the same epochs and batch; the same probes."""
    import yaml

    config = yaml.safe_load(MAE_CONFIG.read_text())["model"]["init_args"]
    dino = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    config.update(img_size=IMAGE_SIZE, patch_size=dino["patch_size"], embed_dim=dino["dim"], depth=dino["depth"], num_heads=dino["num_heads"])
    L.seed_everything(seed, verbose=False)
    module = MAEModule(**config)
    probe_data = DigitsDataModule(batch_size=256, image_size=IMAGE_SIZE, normalize=False)
    probes = {"LinearProbe": LinearProbe(probe_data, seed=seed), "KNNProbe": KNNProbe(probe_data, seed=seed)}
    before = {name: probe.evaluate(module) for name, probe in probes.items()}
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, DigitsDataModule(batch_size=64, image_size=IMAGE_SIZE, normalize=False))
    return {"variant": "mae", "seed": seed, "before": before, "after": {name: probe.evaluate(module) for name, probe in probes.items()},
            "monitors": {}, "fit_seconds": time.perf_counter() - start}  # fmt: skip


def main() -> dict:
    common.quiet_lightning()
    start = time.perf_counter()
    PARTIAL.parent.mkdir(parents=True, exist_ok=True)
    PARTIAL.write_text("")
    runs = []
    for seed in SEEDS:
        for variant in (*VARIANTS, "mae"):
            run = mae_run(seed) if variant == "mae" else dinov2_run(variant, seed)
            runs.append(run)
            with PARTIAL.open("a") as f:
                f.write(json.dumps(run) + "\n")
            print(f"  {variant} seed {seed}: linear {run['before']['LinearProbe']:.3f} -> {run['after']['LinearProbe']:.3f}, "
                  f"knn {run['before']['KNNProbe']:.3f} -> {run['after']['KNNProbe']:.3f}, {run['monitors']} ({run['fit_seconds']:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    return {"runs": runs, "epochs": EPOCHS, "seconds": time.perf_counter() - start}


_LABELS = {**{name: label for name, (label, _) in VARIANTS.items()}, "mae": "MAE, same encoder, epochs and batch"}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def format_section(results: dict) -> str:
    runs = results["runs"]
    by_variant: dict[str, list[dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    seeds = sorted({run["seed"] for run in runs})
    rows = []
    for variant in (*VARIANTS, "mae"):
        group = by_variant.get(variant, [])
        if not group:
            continue
        monitors = [r["monitors"] for r in group]
        rows.append([
            _LABELS[variant],
            common.mean_sd([r["before"]["KNNProbe"] for r in group]),
            common.mean_sd([r["before"]["LinearProbe"] for r in group]),
            common.mean_sd([r["after"]["KNNProbe"] for r in group]),
            common.mean_sd([r["after"]["LinearProbe"] for r in group]),
            f"{_mean([m['teacher_entropy_per_sample'] for m in monitors]):.3f}" if monitors[0] else "—",
            f"{_mean([m['teacher_cls_std'] for m in monitors]):.3f}" if monitors[0] else "—",
            f"{_mean([r['fit_seconds'] for r in group]):.0f}",
        ])  # fmt: skip
    def effect(variant: str) -> str:
        """The full config minus ``variant`` on both probes, and whether it exceeds the seed spread (the larger sd)."""
        words = []
        for key, probe in (("KNNProbe", "kNN"), ("LinearProbe", "linear")):
            full, other = [r["after"][key] for r in by_variant["dinov2"]], [r["after"][key] for r in by_variant[variant]]
            gap, spread = _mean(full) - _mean(other), max(statistics.stdev(full), statistics.stdev(other)) if len(full) > 1 else 0.0
            words.append(f"{probe} {gap:+.3f}" + ("" if abs(gap) > spread else " (within the seed spread)"))
        return ", ".join(words)

    entropy = _mean([r["monitors"]["teacher_entropy_per_sample"] for r in by_variant["dinov2"]])
    uniform = entropy > math.log(256) - 0.05
    std_full, std_no_koleo = (_mean([r["monitors"]["teacher_cls_std"] for r in by_variant[v]]) for v in ("dinov2", "no_koleo"))
    mae_init = _mean([r["before"]["LinearProbe"] for r in by_variant["mae"]])
    dino_linear = _mean([r["after"]["LinearProbe"] for r in by_variant["dinov2"]])
    paragraph = (
        f"The full config minus each variant (positive: the full config probes better): against no KoLeo {effect('no_koleo')}; "
        f"against no iBOT {effect('no_ibot')}; against Sinkhorn-Knopp (so positive = centering better) {effect('sinkhorn')}; "
        f"against MAE {effect('mae')}. The paper keeps all three of KoLeo, the iBOT term and Sinkhorn-Knopp (its Table 1 "
        "steps from iBOT to DINOv2 and its Table 3 ablations, ViT-L on LVD-142M). "
        f"Collapse: the teacher's class-token targets end at a per-image entropy of {entropy:.3f} against ln 256 = "
        f"{math.log(256):.3f} for the uniform target"
        + (" in every variant — uniform, so the DINO class-token term carries no signal at this scale (the plateau "
           f"dinov3#199 and dinov2#407 report on small data sets). The class token itself stays spread (std {std_full:.3f} of "
           f"0.125) when KoLeo pushes the class tokens apart, and without KoLeo it nearly collapses to a point (std "
           f"{std_no_koleo:.3f}). What the class token learns here comes through KoLeo, the iBOT term and the shared "
           "backbone. LayerScale's 1e-5 start (a nearly constant class token at initialisation) is not the cause: starting at "
           "1.0 ends on the same uniform targets." if uniform else ".")
        + (f" MAE's encoder at its random initialisation already gives the linear probe {mae_init:.3f}, more than DINOv2's "
           f"trained teacher ({dino_linear:.3f}): random ViT features of 16 px digits are strong at this size."
           if mae_init > dino_linear else "")
    )  # fmt: skip
    return "\n".join([
        "## DINOv2 on digits: self-distillation against MAE, and its ablations (`benchmarks/dinov2.py`, "
        f"{results['seconds']:.0f} s)",
        "",
        f"`configs/dinov2/digits.yaml` (ViT 64-d × 4 blocks × 4 heads on 16 px digits, 4x4 patches, 2 global + 4 local crops, "
        f"K = 256 prototypes), {results['epochs']} epochs of batch 64, seeds {seeds} (mean ± sd); one term changed per row. "
        "Probes on the frozen class token (the DINOv2 teacher's): DINO's weighted 20-NN (T 0.07) and a BN + linear head, "
        "trained on the 1257 training digits and scored on the 180 validation digits. The entropy and std columns are the "
        "last validation's collapse monitors (per-image entropy of the teacher's class-token target, ln 256 = 5.545 when "
        "uniform; per-dimension std of the normalised teacher class token, 0.125 when spread over 64 dimensions, 0 when "
        "collapsed to a point). Each run's fit time is on one thread (`OMP_NUM_THREADS=1`) of a shared machine.",
        "",
        common.markdown_table(["run", "kNN at init", "linear at init", "kNN after", "linear after", "teacher entropy", "class-token std", "fit s"], rows),
        "",
        paragraph,
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    common.setup_threads()
    out = main()
    print(format_section(out))
    print(f"({out['seconds']:.0f} s)")
