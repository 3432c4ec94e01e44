"""Gradient re-parameterization and spectral control on digits: RepOpt-VGG, SGS, FastClip.

Three tables, each against baselines trained in the same run with the same data, optimizer
settings and epochs (seeds 0, 1, 2):

* RepOptimizers: the RepVGG digits layout (``configs/repvgg/digits.yaml``) trained as a plain VGG,
  as RepVGG (training-time branches), and as RepOpt-VGG (a Hyper-Search run learning the scales,
  then the plain target with the RepOptimizer). Test accuracy and the median training step time
  as a ratio to the plain VGG's: RepOpt should cost what plain costs.
* Spatial Gradient Scaling: the plain CNN of ``benchmarks/structural_reparam.py`` trained plain,
  with ``SpatialGradientScaling`` (mutual-information scalings) and with DBB branches
  (``StructuralReparam(block="dbb")``), the branched re-parameterization SGS stands in for.
* FastClip: σ₁ from PowerQR against the SVD of the explicit operator on small shapes; the cost of
  one clipping event relative to a training step; the plain CNN trained plain, with
  ``FastClip(clip=1)`` on each conv alone (``batchnorm="ignore"``) and on each BN∘conv composite
  (``batchnorm="compose"``, the default): test accuracy clean, under Gaussian input noise and under
  one-step FGSM, the largest σ₁ of a layer and of a BN∘conv composite.

    .venv/bin/python benchmarks/gradient_reparam.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import lightning as L
import torch
import yaml
from common import ROOT, markdown_table, quiet_lightning, setup_threads
from structural_reparam import StepTimer, load_config, plain_cnn
from torch import nn
from torch.nn import functional as F
from torch.optim import SGD
from torchmetrics.classification import MulticlassAccuracy

from litzoo.callbacks.fastclip import ConvBN, FastClip
from litzoo.callbacks.spatial_gradient_scaling import SpatialGradientScaling
from litzoo.callbacks.structural_reparam import StructuralReparam
from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.spectral import conv_spectral_norm, explicit_operator
from litzoo.modules.repopt_vgg import RepOptVGG, RepOptVGGClassifier
from litzoo.modules.repvgg import RepVGG

REPVGG_CONFIG = ROOT / "configs" / "repvgg" / "digits.yaml"


def _trainer(epochs: int, callbacks: list) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)


def _run(model: L.LightningModule, data, epochs: int, callbacks: list | None = None, test: bool = True) -> dict:
    timer = StepTimer()
    trainer = _trainer(epochs, [timer, *(callbacks or [])])
    begin = time.perf_counter()
    trainer.fit(model, data)
    out = {"fit_s": time.perf_counter() - begin, "step_ms": 1e3 * statistics.median(timer.times), "trainer": trainer}
    if test:
        out["test_acc"] = trainer.test(model, data, verbose=False)[0]["test/acc"]
    return out


# ----------------------------------------------------------------------------- RepOptimizers
def repopt(seeds: tuple[int, ...], tmp: str) -> list[dict]:
    config = yaml.safe_load(REPVGG_CONFIG.read_text())
    model_args = dict(config["model"]["init_args"])
    sgd = dict(model_args.pop("optimizer")["init_args"])
    arch = {k: model_args[k] for k in ("num_blocks", "width_multiplier", "stage_strides", "num_classes", "in_channels")}
    smoothing, epochs = model_args.get("label_smoothing", 0.0), int(config["trainer"]["max_epochs"])
    data_args = dict(config["data"]["init_args"])

    def optimizer(params):
        return SGD(params, **sgd)

    rows = []
    for seed in seeds:
        runs = {}
        L.seed_everything(seed, verbose=False)
        plain = ImageClassifier(RepOptVGG(mode="target", **{k: arch[k] for k in arch}), 10, optimizer=optimizer, label_smoothing=smoothing)
        runs["plain VGG"] = _run(plain, DigitsDataModule(**data_args), epochs)
        L.seed_everything(seed, verbose=False)
        repvgg = ImageClassifier(RepVGG(num_blocks=arch["num_blocks"], num_classes=10, width_multiplier=arch["width_multiplier"],
                                        in_channels=arch["in_channels"], stage_strides=arch["stage_strides"]), 10, optimizer=optimizer, label_smoothing=smoothing)
        runs["RepVGG (branches)"] = _run(repvgg, DigitsDataModule(**data_args), epochs)
        L.seed_everything(seed, verbose=False)
        hs = RepOptVGGClassifier(mode="hs", optimizer=optimizer, label_smoothing=smoothing, **arch)
        runs["RepOpt Hyper-Search (CSLA, trainable scales)"] = _run(hs, DigitsDataModule(**data_args), epochs)
        path = f"{tmp}/hs_seed{seed}.ckpt"
        runs["RepOpt Hyper-Search (CSLA, trainable scales)"]["trainer"].save_checkpoint(path, weights_only=True)
        L.seed_everything(seed, verbose=False)
        target = RepOptVGGClassifier(mode="target", scales=path, optimizer=optimizer, label_smoothing=smoothing, **arch)
        runs["RepOpt-VGG (plain + RepOptimizer)"] = _run(target, DigitsDataModule(**data_args), epochs)
        for variant, run in runs.items():
            rows.append({"variant": variant, "seed": seed, "test_acc": run["test_acc"], "step_ms": run["step_ms"], "fit_s": run["fit_s"]})
            print(f"  repopt seed {seed} {variant}: {run['test_acc']:.4f}, step {run['step_ms']:.1f} ms", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- SGS
def sgs(seeds: tuple[int, ...], epochs: int = 10, width: int = 16) -> list[dict]:
    smoothing, sgd, data_args = load_config()
    rows = []
    for seed in seeds:
        for variant in ("plain", "SGS (mutual information)", "DBB branches"):
            L.seed_everything(seed, verbose=False)
            model = ImageClassifier(plain_cnn(width), 10, optimizer=lambda params: SGD(params, **sgd), label_smoothing=smoothing)
            callbacks = {"plain": [], "SGS (mutual information)": [SpatialGradientScaling(warmup_epochs=1, update_every_epochs=3)],
                         "DBB branches": [StructuralReparam(block="dbb")]}[variant]
            run = _run(model, DigitsDataModule(**data_args), epochs, callbacks)
            rows.append({"variant": variant, "seed": seed, "test_acc": run["test_acc"], "step_ms": run["step_ms"], "fit_s": run["fit_s"]})
            print(f"  sgs seed {seed} {variant}: {run['test_acc']:.4f}, step {run['step_ms']:.1f} ms", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- FastClip
def spectral_accuracy() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    cases = [
        ("conv 3x3 stride 1 pad 1, 8x8", nn.Conv2d(4, 6, 3, 1, 1), (4, 8, 8)),
        ("conv 3x3 stride 2 pad 1, 8x8", nn.Conv2d(4, 6, 3, 2, 1), (4, 8, 8)),
        ("conv 3x3 stride 1 pad 0, 7x9", nn.Conv2d(3, 5, 3, 1, 0), (3, 7, 9)),
        ("conv 3x3 groups 2 dilation 2, 9x9", nn.Conv2d(4, 6, 3, 1, 2, dilation=2, groups=2), (4, 9, 9)),
        ("conv + BN (eval)", nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4)), (3, 8, 8)),
    ]
    rows = []
    for name, layer, shape in cases:
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        layer = layer.double().eval()
        exact = torch.linalg.svdvals(explicit_operator(layer, shape))[0].item()
        begin = time.perf_counter()
        estimate = conv_spectral_norm(layer, shape, iterations=400, generator=torch.Generator().manual_seed(1))
        rows.append({"case": name, "exact": exact, "powerqr": float(estimate), "relative_error": abs(float(estimate) - exact) / exact,
                     "ms": 1e3 * (time.perf_counter() - begin)})
    return rows


FASTCLIP_VARIANTS = {"plain": None, "FastClip c=1, conv alone": "ignore", "FastClip c=1, conv+BN composite": "compose"}


def fgsm_accuracy(model: nn.Module, loader, eps: float) -> float:
    """Test accuracy under one-step L-inf FGSM (Goodfellow et al. 2015) of size ``eps`` on the normalised inputs.

    ``x + eps * sign(grad_x CE(model(x), y))`` with the model in eval mode (BN running statistics);
    the gradient is taken with ``autograd.grad`` on the input only.
    """
    accuracy = MulticlassAccuracy(num_classes=10, average="micro")
    model.eval()
    for batch in loader:
        x = batch["image"].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), batch["label"]), x)
        with torch.no_grad():
            accuracy.update(model(x + eps * grad.sign()), batch["label"])
    return accuracy.compute().item()


def fastclip(seeds: tuple[int, ...], epochs: int = 10, width: int = 16, noise: tuple[float, ...] = (0.5, 1.0),
             fgsm: tuple[float, ...] = (0.05, 0.1)) -> dict:
    smoothing, sgd, data_args = load_config()
    rows = []
    for seed in seeds:
        for variant, batchnorm in FASTCLIP_VARIANTS.items():
            L.seed_everything(seed, verbose=False)
            model = ImageClassifier(plain_cnn(width), 10, optimizer=lambda params: SGD(params, **sgd), label_smoothing=smoothing)
            clip = FastClip(clip=1.0, clip_every=10, warmup_steps=40, batchnorm=batchnorm) if batchnorm else None
            data = DigitsDataModule(**data_args)
            run = _run(model, data, epochs, [clip] if clip else [])
            model.eval()
            data.setup("test")
            noisy = {}
            for level in noise:
                accuracy = MulticlassAccuracy(num_classes=10, average="micro")
                g = torch.Generator().manual_seed(seed)
                with torch.no_grad():
                    for batch in data.test_dataloader():
                        accuracy.update(model(batch["image"] + level * torch.randn(batch["image"].shape, generator=g)), batch["label"])
                noisy[level] = accuracy.compute().item()
            adversarial = {eps: fgsm_accuracy(model, data.test_dataloader(), eps) for eps in fgsm}
            # input shapes and conv -> BN pairs from one eval forward (the plain run has no FastClip of its own)
            shapes, pairs = FastClip().trace(model, next(iter(data.test_dataloader()))["image"][:1])
            norm = {n: conv_spectral_norm(model.get_submodule(n), s, iterations=200, generator=torch.Generator().manual_seed(0)) for n, s in shapes.items()}
            sigma_max = max(norm.values())
            composite_max = max([conv_spectral_norm(ConvBN(model.get_submodule(c), model.get_submodule(b)), shapes[c], iterations=200,
                                                    generator=torch.Generator().manual_seed(0)) for c, b in pairs.items()], default=float("nan"))
            clip_ms = None
            if clip is not None:  # one clipping event on the trained model, every layer (or composite)
                begin = time.perf_counter()
                clip.clip_module(model)
                clip_ms = 1e3 * (time.perf_counter() - begin)
            rows.append({"variant": variant, "seed": seed, "test_acc": run["test_acc"], "noisy": noisy, "fgsm": adversarial,
                         "sigma_max": float(sigma_max), "composite_sigma_max": float(composite_max), "pairs": len(pairs),
                         "step_ms": run["step_ms"], "clip_event_ms": clip_ms})
            print(f"  fastclip seed {seed} {variant}: {run['test_acc']:.4f}, noisy {noisy}, fgsm {adversarial}, sigma_max {sigma_max:.3f}, "
                  f"BN o conv sigma_max {composite_max:.3f} ({len(pairs)} pairs)", file=sys.stderr, flush=True)
    return {"rows": rows, "noise": noise, "fgsm": fgsm}


# ----------------------------------------------------------------------------- report
def _summary(rows: list[dict], baseline: str) -> list[dict]:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    base_step = statistics.median(r["step_ms"] for r in rows if r["variant"] == baseline)
    out = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        accs = [r["test_acc"] for r in mine]
        step = statistics.median(r["step_ms"] for r in mine)
        out.append({"variant": v, "accs": accs, "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "step_ms": step, "step_ratio": step / base_step, "fit_s": statistics.mean(r["fit_s"] for r in mine)})
    return out


def main(seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    import tempfile

    quiet_lightning()
    setup_threads()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        repopt_rows = repopt(seeds, tmp)
    results = {
        "seeds": list(seeds),
        "repopt": _summary(repopt_rows, "plain VGG"),
        "sgs": _summary(sgs(seeds), "plain"),
        "spectral": spectral_accuracy(),
        "fastclip": fastclip(seeds),
    }
    results["seconds"] = time.perf_counter() - start
    return results


def _accuracy_table(summary: list[dict], baseline: str, n: int) -> str:
    headers = ["variant", f"test acc, mean ± std ({n} seeds)", "per seed", "train step ms", f"step / {baseline}", "fit s"]
    rows = [[r["variant"], f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f} %", ", ".join(f"{100 * a:.2f}" for a in r["accs"]),
             f"{r['step_ms']:.1f}", f"{r['step_ratio']:.2f}", f"{r['fit_s']:.0f}"] for r in summary]
    return markdown_table(headers, rows)


def to_markdown(results: dict) -> str:
    n = len(results["seeds"])
    parts = ["### RepOptimizers (RepVGG digits layout, 30 epochs each; RepOpt-VGG needs the Hyper-Search run first)", "",
             _accuracy_table(results["repopt"], "plain VGG", n), "",
             "### Spatial Gradient Scaling (plain CNN of the structural re-parameterization table, 10 epochs)", "",
             _accuracy_table(results["sgs"], "plain", n), "",
             "### FastClip: PowerQR σ₁ against the SVD of the explicit operator (float64, 400 iterations)", ""]
    parts.append(markdown_table(["layer, input", "σ₁ exact (SVD)", "σ₁ PowerQR", "relative error", "ms"],
                                [[r["case"], f"{r['exact']:.6f}", f"{r['powerqr']:.6f}", f"{r['relative_error']:.1e}", f"{r['ms']:.0f}"] for r in results["spectral"]]))
    fc = results["fastclip"]
    parts += ["", "### FastClip on the plain CNN (10 epochs; c = 1 on every conv and linear layer, or on every BN∘conv composite and the head, "
              "every 10 steps after 40; FGSM ε on the normalised input scale)", ""]
    headers = (["variant", "test acc (clean)"] + [f"test acc, Gaussian noise σ={s}" for s in fc["noise"]]
               + [f"test acc, FGSM ε={e}" for e in fc["fgsm"]]
               + ["largest σ₁ of a layer", "largest σ₁ of a BN∘conv", "train step ms", "one clipping event ms"])
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in fc["rows"]):
        mine = [r for r in fc["rows"] if r["variant"] == variant]

        def mean_std(values):
            return f"{100 * statistics.mean(values):.2f} ± {100 * (statistics.stdev(values) if len(values) > 1 else 0):.2f} %"

        clip_ms = [r["clip_event_ms"] for r in mine if r["clip_event_ms"] is not None]
        rows.append([variant, mean_std([r["test_acc"] for r in mine])] + [mean_std([r["noisy"][s] for r in mine]) for s in fc["noise"]]
                    + [mean_std([r["fgsm"][e] for r in mine]) for e in fc["fgsm"]]
                    + [f"{statistics.mean(r['sigma_max'] for r in mine):.3f}", f"{statistics.mean(r['composite_sigma_max'] for r in mine):.3f}",
                       f"{statistics.median(r['step_ms'] for r in mine):.1f}",
                       f"{statistics.mean(clip_ms):.0f} ({statistics.mean(clip_ms) / statistics.median(r['step_ms'] for r in mine):.1f} steps)" if clip_ms else "-"])
    parts.append(markdown_table(headers, rows))
    return "\n".join(parts)


def verdict(results: dict) -> str:
    repopt_rows = {r["variant"]: r for r in results["repopt"]}
    sgs_rows = {r["variant"]: r for r in results["sgs"]}
    worst = max(r["relative_error"] for r in results["spectral"])
    ro, rv = repopt_rows["RepOpt-VGG (plain + RepOptimizer)"], repopt_rows["RepVGG (branches)"]
    sg, db = sgs_rows["SGS (mutual information)"], sgs_rows["DBB branches"]
    return "\n".join([
        f"- RepOpt-VGG trains at x{ro['step_ratio']:.2f} the plain VGG's step time (RepVGG's branches: x{rv['step_ratio']:.2f}); "
        f"accuracy {100 * ro['mean']:.2f} vs RepVGG {100 * rv['mean']:.2f} vs plain {100 * repopt_rows['plain VGG']['mean']:.2f} %.",
        f"- SGS costs x{sg['step_ratio']:.2f} the plain step (DBB branches x{db['step_ratio']:.2f}); accuracy {100 * sg['mean']:.2f} vs DBB {100 * db['mean']:.2f} "
        f"vs plain {100 * sgs_rows['plain']['mean']:.2f} %.",
        f"- PowerQR σ₁ matches the explicit operator's SVD to {worst:.1e} relative at worst (goal 1e-3: {'met' if worst <= 1e-3 else 'not met'}).",
        "- Digits saturates and the test split is 360 images (1 image = 0.28 points): accuracy differences below the seed spread are no evidence either way.",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results = main(tuple(args.seeds))
    print(to_markdown(results))
    print()
    print(verdict(results))
