"""Deploy speed at the size users deploy: RepVGG-A0 at 224x224, batch 1 and 32, on 2 intra-op threads.

Issue 20, item 1 (first slice). The digits-size benchmarks (``fusion_latency.py``, ``quantization.py``)
time models whose forward takes a fraction of a millisecond, where per-call overhead decides every
ratio. This one times the paper's RepVGG-A0 (1000 classes, random weights; every BatchNorm gets random
statistics with ``litzoo.framework.reparam.randomize_batchnorm`` so fusion is not a near-identity) as a
user would serve it:

* variants: the training-time network in eval mode (``unfused``: 3x3, 1x1 and identity branches with
  their BatchNorms), the deploy network (``fused``: ``litzoo.framework.reparam.fuse_model``) and its int8
  post-training quantization (``int8``);
* runtimes: eager torch; ``torch.compile`` (default backend, ``dynamic=False``, compile seconds reported);
  onnxruntime on the files ``litzoo.framework.export`` writes (float: ``export_model(..., "onnx")``, what
  ``litzoo export --format onnx`` writes; int8: ``export_onnx_int8_checked``, the QDQ file of
  ``litzoo export --format onnx-int8``), CPU execution provider, default graph optimisations;
* torch int8: ``litzoo.framework.quantization.quantize_ptq`` with the default x86 config (what
  ``litzoo export --format int8`` does), lowered to oneDNN int8 kernels by ``lower_to_x86`` for the batch
  shape (the ``.pt2`` file itself holds the quantize/dequantize reference graph, which is not a fast path).

Both int8 models calibrate on the same few random batches. Every model of one batch size is timed in
alternating rounds (``litzoo.framework.profiling.compare_latency``: order reversed every other round,
median over rounds), so each ratio compares latencies measured side by side in one run.

    .venv/bin/python benchmarks/deploy_speed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import markdown_table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from litzoo.framework.export import export_model, export_onnx_int8_checked
from litzoo.framework.profiling import compare_latency, count_flops
from litzoo.framework.quantization import lower_to_x86, quantization_config, quantize_ptq
from litzoo.framework.reparam import fuse_model, randomize_batchnorm
from litzoo.modules.repvgg import RepVGG

#: intra-op threads for torch and onnxruntime (the issue's measurements use 2)
THREADS = 2
IMAGE = (3, 224, 224)
#: goals of issue 20: fused/unfused and int8/float latency at most these
GOAL_FUSED, GOAL_INT8 = 0.6, 0.5
CALIBRATION = (4, 8)  # batches x images, random normal inputs
#: int8 is checked against float with this tolerance (relative to max(1, max|y|)): with random weights and
#: random calibration images the logits are not a trained model's, so only gross errors are caught
INT8_ATOL = 2.0


@dataclass(frozen=True)
class Timing:
    batch: int
    rounds: int  # alternating rounds (one sample of every model each)
    warmup: int  # untimed forwards of every model first
    min_sample_s: float  # a sample repeats forwards until it lasts this long (0: one forward)


# an A0 forward at batch 32 takes ~0.25 s fused on 2 cores (unfused ~2x): few rounds there
TIMINGS = (Timing(1, rounds=20, warmup=3, min_sample_s=0.05), Timing(32, rounds=7, warmup=1, min_sample_s=0.0))

RUNTIMES = ("eager", "torch.compile", "onnxruntime")
#: (variant, runtime) pairs timed, in table order
ROWS = (
    ("unfused", "eager"), ("fused", "eager"), ("int8", "eager"),
    ("unfused", "torch.compile"), ("fused", "torch.compile"),
    ("unfused", "onnxruntime"), ("fused", "onnxruntime"), ("int8", "onnxruntime"),
)  # fmt: skip
RUNTIME_LABEL = {
    ("int8", "eager"): "torch int8 (PT2E, lowered to oneDNN)",
    ("int8", "onnxruntime"): "onnxruntime (QDQ int8)",
}


class OnnxModel(nn.Module):
    """An onnxruntime session behind a torch call (a tensor in, a tensor out), for ``compare_latency``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(None, {self.input: x.numpy()})
        return torch.from_numpy(y)


def build(seed: int) -> tuple[nn.Module, nn.Module]:
    """RepVGG-A0 (training-time, eval mode, random BN statistics) and its fused copy."""
    torch.manual_seed(seed)
    net = RepVGG.from_variant("A0").eval()
    randomize_batchnorm(net, seed)
    return net, fuse_model(net).eval()


def _relative_difference(reference: torch.Tensor, actual: torch.Tensor) -> float:
    return ((reference - actual).abs().max() / reference.abs().max().clamp_min(1.0)).item()


def _graph_flops(graph: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of an exported graph (``count_flops`` switches to eval mode, which an exported graph refuses)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        graph(x)
    return int(counter.get_total_flops())


def main(timings: tuple[Timing, ...] = TIMINGS, seed: int = 0) -> dict:
    """Time every (variant, runtime) at every batch size; returns ``{"rows", "goals", "flops", "setup_s", ...}``."""
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    unfused, fused = build(seed)
    calibration = [torch.randn(CALIBRATION[1], *IMAGE, generator=generator) for _ in range(CALIBRATION[0])]
    held_out = torch.randn(CALIBRATION[1], *IMAGE, generator=generator)
    one = held_out[:1]
    setup_s: dict[str, float] = {}

    begin = time.perf_counter()
    int8_reference = quantize_ptq(fused, calibration, quantization_config())
    setup_s["torch int8: PTQ (calibration + convert)"] = time.perf_counter() - begin
    flops = {"unfused": count_flops(unfused, one), "fused": count_flops(fused, one), "int8": _graph_flops(int8_reference, one)}

    folder = tempfile.TemporaryDirectory(prefix="litzoo-deploy-speed-")
    paths = {v: Path(folder.name) / f"a0_{v}.onnx" for v in ("unfused", "fused")}
    for variant, model in (("unfused", unfused), ("fused", fused)):
        begin = time.perf_counter()
        export_model(model, held_out, paths[variant], "onnx")
        setup_s[f"ONNX export, {variant}"] = time.perf_counter() - begin
    begin = time.perf_counter()
    check = export_onnx_int8_checked(fused, calibration, Path(folder.name) / "a0_fused.int8.onnx", held_out, atol=INT8_ATOL,
                                     compare_torch_int8=False)  # fmt: skip
    setup_s["ONNX int8 export (float export + quant_pre_process + quantize_static)"] = time.perf_counter() - begin
    paths["int8"] = check.path
    sessions = {v: OnnxModel(p) for v, p in paths.items()}
    with torch.inference_mode():
        torch_int8_vs_float = _relative_difference(fused(held_out), int8_reference(held_out))
        onnx_int8_vs_torch_int8 = _relative_difference(int8_reference(held_out), sessions["int8"](held_out))
    compiled = {v: torch.compile(m, dynamic=False) for v, m in (("unfused", unfused), ("fused", fused))}
    import torch._inductor.config as inductor_config

    caches = inductor_config.force_disable_caches
    inductor_config.force_disable_caches = True  # compile seconds from scratch, not from an earlier run's cache

    rows, goals = [], []
    for timing in timings:
        x = torch.randn(timing.batch, *IMAGE, generator=generator)
        models: dict[tuple[str, str], nn.Module] = {}
        compile_s: dict[tuple[str, str], float] = {}
        begin = time.perf_counter()
        int8 = lower_to_x86(int8_reference, x)  # specialised to this batch shape
        setup_s[f"torch int8: lower_to_x86, batch {timing.batch}"] = time.perf_counter() - begin
        for variant, runtime in ROWS:
            if runtime == "eager":
                models[variant, runtime] = {"unfused": unfused, "fused": fused, "int8": int8}[variant]
            elif runtime == "onnxruntime":
                models[variant, runtime] = sessions[variant]
            else:
                begin = time.perf_counter()
                with torch.inference_mode():
                    compiled[variant](x)  # compile for this shape outside the timing
                compile_s[variant, runtime] = time.perf_counter() - begin
                models[variant, runtime] = compiled[variant]
        with torch.inference_mode():
            outputs = {key: model(x) for key, model in models.items()}
        seconds = compare_latency(list(models.values()), x, rounds=timing.rounds, warmup=timing.warmup,
                                  min_sample_seconds=timing.min_sample_s, threads=THREADS)  # fmt: skip
        ms = {key: 1e3 * s for key, s in zip(models, seconds)}
        baseline = ms["fused", "eager"]
        for variant, runtime in ROWS:
            key = (variant, runtime)
            runtime_base = ms["fused", runtime]
            rows.append({
                "variant": variant, "runtime": runtime, "label": RUNTIME_LABEL.get(key, runtime), "batch": timing.batch,
                "ms": ms[key], "vs_fused_eager": ms[key] / baseline, "vs_fused_runtime": ms[key] / runtime_base,
                "flops_vs_fused": flops[variant] / flops["fused"], "compile_s": compile_s.get(key),
                "max_rel_diff_vs_unfused": _relative_difference(outputs["unfused", "eager"], outputs[key]),
            })  # fmt: skip
        for runtime in RUNTIMES:
            ratio = ms["fused", runtime] / ms["unfused", runtime]
            goals.append({"goal": "fused/unfused", "runtime": runtime, "batch": timing.batch, "ratio": ratio, "target": GOAL_FUSED,
                          "flops_ratio": flops["fused"] / flops["unfused"]})  # fmt: skip
        int8_pairs = (("torch (int8 oneDNN / float fused eager)", ("int8", "eager"), ("fused", "eager")),
                      ("torch (int8 oneDNN / float fused torch.compile)", ("int8", "eager"), ("fused", "torch.compile")),
                      ("onnxruntime (QDQ int8 / float fused)", ("int8", "onnxruntime"), ("fused", "onnxruntime")))  # fmt: skip
        for runtime, numerator, denominator in int8_pairs:
            goals.append({"goal": "int8/float", "runtime": runtime, "batch": timing.batch, "ratio": ms[numerator] / ms[denominator],
                          "target": GOAL_INT8, "flops_ratio": flops["int8"] / flops["fused"]})  # fmt: skip
        print(f"  batch {timing.batch}: " + ", ".join(f"{v} {r} {ms[v, r]:.2f} ms" for v, r in ROWS), file=sys.stderr, flush=True)
    folder.cleanup()
    inductor_config.force_disable_caches = caches
    for goal in goals:
        goal["met"] = goal["ratio"] <= goal["target"]
    return {
        "rows": rows, "goals": goals, "flops": flops, "setup_s": setup_s, "threads": THREADS,
        "timings": [vars(t) for t in timings], "calibration": list(CALIBRATION), "int8_atol": INT8_ATOL,
        "onnx_int8_vs_float": check.max_abs_error, "onnx_int8_allowed": check.allowed,
        "torch_int8_vs_float": torch_int8_vs_float, "onnx_int8_vs_torch_int8": onnx_int8_vs_torch_int8,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def _miss(goal: dict) -> str:
    if goal["met"]:
        return "yes"
    return f"**no**: {goal['ratio'] - goal['target']:+.2f} over ({goal['ratio'] / goal['target']:.2f}x the goal)"


def verdict(results: dict) -> str:
    goals = results["goals"]
    failed = [f"{g['goal']} {g['runtime']} batch {g['batch']} ({g['ratio']:.2f} vs ≤ {g['target']})" for g in goals if not g["met"]]
    text = f"Goals (issue 20): fused/unfused ≤ {GOAL_FUSED}, int8/float ≤ {GOAL_INT8}, at batch 1 and 32. Met in {len(goals) - len(failed)} of {len(goals)}"
    return text + (f"; not met: {'; '.join(failed)}." if failed else ".")


def format_section(results: dict) -> str:
    flops = results["flops"]
    lines = [
        f"## Deploy speed at 224x224: RepVGG-A0 fused / unfused, float / int8, eager / torch.compile / onnxruntime "
        f"(`benchmarks/deploy_speed.py`, {results['seconds']:.0f} s)",
        "",
        verdict(results),
        "",
        markdown_table(
            ["variant", "runtime", "batch", "ms", "/ float fused eager", "/ float fused, same runtime", "FLOPs / fused", "compile s",
             "max \\|y - y_unfused\\| / max(1, max\\|y\\|)"],
            [[r["variant"], r["label"], r["batch"], f"{r['ms']:.2f}", f"{r['vs_fused_eager']:.2f}", f"{r['vs_fused_runtime']:.2f}",
              f"{r['flops_vs_fused']:.3f}", "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}", f"{r['max_rel_diff_vs_unfused']:.2g}"]
             for r in results["rows"]],
        ),  # fmt: skip
        "",
        "Goals, each a latency ratio of two rows above (same batch, same run), with the FLOPs ratio beside it:",
        "",
        markdown_table(
            ["goal", "runtime", "batch", "latency ratio", "FLOPs ratio", "met?"],
            [[f"{g['goal']} ≤ {g['target']}", g["runtime"], g["batch"], f"{g['ratio']:.2f}", f"{g['flops_ratio']:.3f}", _miss(g)]
             for g in results["goals"]],
        ),  # fmt: skip
        "",
        f"FLOPs per image (`litzoo.framework.profiling.count_flops`, `torch.utils.flop_counter`, 2 x MACs, convs and the linear "
        f"layer): unfused {flops['unfused'] / 1e9:.3f} G, fused {flops['fused'] / 1e9:.3f} G, int8 {flops['int8'] / 1e9:.3f} G (the "
        "int8 model runs the fused model's convolutions as int8 MACs; its FLOPs are counted on the quantize/dequantize reference graph). "
        f"Fusion removes only {1 - flops['fused'] / flops['unfused']:.0%} of the FLOPs (the 1x1 branches): a fused/unfused latency "
        f"ratio below {flops['fused'] / flops['unfused']:.2f} comes from the unfused graph's memory-bound extras (BatchNorms, branch "
        "additions, more kernel launches), which a runtime that folds BatchNorms and fuses the additions into the convs does not pay.",
        "",
        f"Protocol: RepVGG-A0 (paper layout, 1000 classes), random weights, every BatchNorm given random statistics before fusion; "
        f"random 224x224 inputs. {results['threads']} intra-op threads in torch and in onnxruntime (inter-op 1). Latency: "
        "`litzoo.framework.profiling.compare_latency`, all eight models of one batch size in alternating rounds (order reversed every "
        "other round), median of the rounds, `torch.inference_mode`; "
        + "; ".join(f"batch {t['batch']}: {t['rounds']} rounds after {t['warmup']} warm-up forward(s)"
                    + (f", a sample repeats forwards for ≥ {t['min_sample_s']} s" if t["min_sample_s"] else ", one forward a sample")
                    for t in results["timings"])
        + ". `torch.compile`: default backend (inductor), `dynamic=False`, compiled once per batch shape before the rounds (compile s: "
        "the first call, inductor caches disabled). "
        "onnxruntime: the ONNX files `litzoo.framework.export` writes (`export_model(..., \"onnx\")`, dynamic batch, verified against "
        "torch to 1e-4), CPU provider, default graph optimisations (which fold the unfused model's BatchNorms into its convs, but not its "
        "branches). torch int8: `quantize_ptq` with the default x86 config (as `litzoo export --format int8`), lowered with "
        "`lower_to_x86` to oneDNN int8 kernels for each batch shape (not `torch.compile`d). onnxruntime int8: "
        "`export_onnx_int8_checked` (as `litzoo export --format onnx-int8`: QDQ, int8 per-channel weights, S8 activations, min-max).",
        "",
        f"int8 accuracy is not measured here (random weights): both int8 models calibrate on {results['calibration'][0]} random batches "
        f"of {results['calibration'][1]} images, and the ONNX int8 file is checked against float with a deliberately loose "
        f"atol={results['int8_atol']} (relative to max(1, max|y|); allowed {results['onnx_int8_allowed']:.3g}, measured "
        f"{results['onnx_int8_vs_float']:.3g}), only to catch a broken file. On held-out random images: torch int8 vs float "
        f"{results['torch_int8_vs_float']:.2g}, onnxruntime int8 vs torch int8 {results['onnx_int8_vs_torch_int8']:.2g} (max abs "
        "difference / max(1, max|y|)). Accuracy drops are measured on the digits configs in the quantization section.",
        "",
        "Set-up time (not timed in the table): " + ", ".join(f"{k} {v:.0f} s" for k, v in results["setup_s"].items()) + ".",
        "",
        "Not in this slice: ResNet-18/50, and the pruning rows (ResRep with and without `prune_residual`, Torch-Pruning, each at 0.5 "
        "of the FLOPs); they come with item 3 of issue 20.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    results = main()
    print(format_section(results))
    print(f"\n({results['seconds']:.0f} s)", file=sys.stderr)
