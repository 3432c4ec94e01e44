"""Deploy speed at the size users deploy: RepVGG-A0, ResNet-18 and ResNet-50 at 224x224, batch 1 and 32, on 2 intra-op threads.

Issue 20, item 1 (and the item-4 profile of fusion at batch 1). The digits-size benchmarks
(``fusion_latency.py``, ``quantization.py``) time models whose forward takes a fraction of a
millisecond, where per-call overhead decides every ratio. This one times networks of the paper sizes
(1000 classes, random weights; every BatchNorm gets random statistics with
``litzoo.framework.reparam.randomize_batchnorm`` so that folding it is not a near-identity) as a user
would serve them. ``NETWORKS`` lists them, each a named builder; every network gives the same rows:

* variants: the training-time network in eval mode (``unfused``), its float deploy network (``fused``),
  the int8 post-training quantization of ``fused`` (``int8``) and the pruned deploy networks of
  :func:`pruned_variants` at ``FLOPS_TARGET`` of the FLOPs: ResRep with ``prune_residual=True`` (``resrep``),
  the same keeping multiples of ``ROUND_TO`` channels (``resrep-r16``), ResRep with the paper's rule
  (``resrep-off``: residual-tied channels kept; ResNets only) and Torch-Pruning's global group-L2 pruning
  (``torch-pruning``). RepVGG-A0's ``fused`` is ``litzoo.framework.reparam.fuse_model``
  (each block's three branches and BatchNorms become one 3x3 conv). A plain ResNet has no fusable
  block, so ``fuse_model`` returns it unchanged (its convs still run conv then BatchNorm in eager
  torch); its ``fused`` is every conv -> BatchNorm pair folded into the conv by
  ``torch.fx.experimental.optimization.fuse`` (what ``benchmarks/quantization.py`` does too);
* runtimes: eager torch; ``torch.compile`` (default backend, ``dynamic=False``, compile seconds reported);
  onnxruntime on the files ``litzoo.framework.export`` writes (float: ``export_model(..., "onnx")``, what
  ``litzoo export --format onnx`` writes; int8: ``export_onnx_int8_checked``, the QDQ file of
  ``litzoo export --format onnx-int8``), CPU execution provider, default graph optimisations (which
  fold an unfused ResNet's BatchNorms into its convs themselves);
* torch int8: ``litzoo.framework.quantization.quantize_ptq`` with the default x86 config (what
  ``litzoo export --format int8`` does), lowered to oneDNN int8 kernels by ``lower_to_x86`` for the batch
  shape (the ``.pt2`` file itself holds the quantize/dequantize reference graph, which is not a fast path).

Both int8 models calibrate on the same few random batches. Every model of one network and batch size is
timed in alternating rounds (``litzoo.framework.profiling.compare_latency``: order reversed every other
round, median over rounds), so each ratio compares latencies measured side by side in one run.

    .venv/bin/python benchmarks/deploy_speed.py
"""

from __future__ import annotations

import copy
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from common import markdown_table, resrep_prune, torch_pruning_to_flops
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from litzoo.framework.export import export_model, export_onnx_int8_checked
from litzoo.framework.profiling import compare_latency, count_flops, count_parameters
from litzoo.framework.quantization import lower_to_x86, quantization_config, quantize_ptq
from litzoo.framework.reparam import fuse_model, randomize_batchnorm
from litzoo.modules.repvgg import RepVGG
from litzoo.modules.resnet import ResNet

#: intra-op threads for torch and onnxruntime (the issue's measurements use 2)
THREADS = 2
IMAGE = (3, 224, 224)
#: goals of issue 20: fused/unfused and int8/float latency at most these; pruned/dense latency at most
#: GOAL_PRUNED times the pruned/dense FLOPs ratio
GOAL_FUSED, GOAL_INT8, GOAL_PRUNED = 0.6, 0.5, 1.15
#: the pruned variants keep at most this fraction of the dense deploy model's FLOPs
FLOPS_TARGET = 0.5
#: Torch-Pruning's schedule: linear to 0.9 of every group's channels in this many steps (stepped until the
#: FLOPs target). Fewer than ``benchmarks/pruning.py``'s 200 at 32x32: a step of ResNet-50 at 224x224 (global
#: ranking, then a FLOPs count) costs about a second; one step moves the FLOPs by about 2-3 %.
PRUNING_STEPS = 50
#: ResRep's aligned variant keeps multiples of this many channels (``ResRepPruning(round_to=...)``): onnxruntime's
#: and oneDNN's blocked conv kernels take channel multiples of 8/16 (see ``benchmarks/prune_residual.py``)
ROUND_TO = 16
PRUNED_LABELS = {
    "resrep": "ResRep, `prune_residual=True`",
    f"resrep-r{ROUND_TO}": f"ResRep, `prune_residual=True, round_to={ROUND_TO}`",
    "resrep-off": "ResRep, `prune_residual=False` (the paper's rule)",
    "torch-pruning": "Torch-Pruning",
}
CALIBRATION = (4, 8)  # batches x images, random normal inputs
#: int8 is checked against float with this tolerance (relative to max(1, max|y|)): with random weights and
#: random calibration images the logits are not a trained model's, so only gross errors are caught
INT8_ATOL = 2.0
RUNTIMES = ("eager", "torch.compile", "onnxruntime")
RUNTIME_LABEL = {
    ("int8", "eager"): "torch int8 (PT2E, lowered to oneDNN)",
    ("int8", "onnxruntime"): "onnxruntime (QDQ int8)",
}


@dataclass(frozen=True)
class Timing:
    batch: int
    rounds: int  # alternating rounds (one sample of every model each)
    warmup: int  # untimed forwards of every model first (the first one is the output check)
    min_sample_s: float  # a sample repeats forwards until it lasts this long (0: one forward)


@dataclass(frozen=True)
class Network:
    """One benchmarked network: how to build it, what its deploy form is, how long to time it.

    Args:
        name: the table's name.
        build: seed -> the training-time network in eval mode, BatchNorm statistics randomised.
        deploy: training-time network -> a float deploy copy (eval mode).
        fusion: what ``fused`` means for this network (table text).
        fusion_goal: whether the issue's fused/unfused goal applies (structural re-parameterization;
            a ResNet's BatchNorm folding is reported without a goal).
        prune_deploy: Torch-Pruning prunes the deploy network (``True``) or the training-time network,
            whose BatchNorms it prunes with their convs and which is then deployed (``False``).
        timings: one per batch size.
        profile_fusion: also profile fused vs unfused at batch 1 (issue 20, item 4).
        profile_pruning: also profile the pruned networks against the dense one at batch 1 (where their time goes).
        tied_channels: the network has output channels tied across convs (residual additions), which
            ``ResRepPruning(prune_residual=False)`` leaves alone; RepVGG has none (its compactors follow each
            block's branch sum), so there both ResRep settings prune alike and only one is timed.
    """

    name: str
    build: Callable[[int], nn.Module]
    deploy: Callable[[nn.Module], nn.Module]
    fusion: str
    fusion_goal: bool
    prune_deploy: bool
    timings: tuple[Timing, ...]
    profile_fusion: bool = False
    tied_channels: bool = True
    profile_pruning: bool = False


def repvgg_a0(seed: int) -> nn.Module:
    """RepVGG-A0 (paper layout, training-time blocks), eval mode, random BatchNorm statistics."""
    torch.manual_seed(seed)
    return randomize_batchnorm(RepVGG.from_variant("A0").eval(), seed)


def resnet(depth: int) -> Callable[[int], nn.Module]:
    """A builder of the paper's ResNet-``depth`` (ImageNet stem), eval mode, random BatchNorm statistics."""

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return randomize_batchnorm(ResNet(depth=depth, stem="imagenet").eval(), seed)

    return build


def fuse_blocks(network: nn.Module) -> nn.Module:
    """litzoo's deploy walker: every re-parameterized block fused (a copy)."""
    return fuse_model(network).eval()


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """A copy with every conv -> BatchNorm pair folded into the conv (a ``torch.fx`` GraphModule)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(network).eval())


# ResNet-50's forward at batch 32 takes ~1 s on 2 cores (11 models a round): fewer rounds there
NETWORKS = (
    Network("RepVGG-A0", repvgg_a0, fuse_blocks, "`fuse_model`: three branches and their BatchNorms -> one 3x3 conv",
            fusion_goal=True, prune_deploy=True, profile_fusion=True, tied_channels=False,
            timings=(Timing(1, rounds=20, warmup=3, min_sample_s=0.05), Timing(32, rounds=7, warmup=1, min_sample_s=0.0))),
    Network("ResNet-18", resnet(18), fold_batchnorm, "BatchNorms folded into the convs (`torch.fx.experimental.optimization.fuse`)",
            fusion_goal=False, prune_deploy=False, profile_pruning=True,
            timings=(Timing(1, rounds=20, warmup=3, min_sample_s=0.05), Timing(32, rounds=5, warmup=1, min_sample_s=0.0))),
    Network("ResNet-50", resnet(50), fold_batchnorm, "BatchNorms folded into the convs (`torch.fx.experimental.optimization.fuse`)",
            fusion_goal=False, prune_deploy=False,
            timings=(Timing(1, rounds=15, warmup=2, min_sample_s=0.05), Timing(32, rounds=3, warmup=1, min_sample_s=0.0))),
)  # fmt: skip


class OnnxModel(nn.Module):
    """An onnxruntime session behind a torch call (a tensor in, a tensor out), for ``compare_latency``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        # no busy-waiting between calls: a session's idle worker threads spin by default and take the cores from
        # the model timed next in the round (fused RepVGG-A0 in eager torch read 14.8 ms next to spinning sessions,
        # 12.0 ms without; onnxruntime's own fused/unfused moved between 0.8 and 1.3)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(None, {self.input: x.numpy()})
        return torch.from_numpy(y)


def onnxruntime_op_counts(path: Path) -> dict[str, int]:
    """Node types of ``path`` after onnxruntime's CPU graph optimisations (what a session runs): tells a QDQ
    pattern that became an int8 kernel (``QLinearConv``) from one left in float (``Conv`` with dequantized weights)."""
    import collections

    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="litzoo-ort-optimized-") as folder:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return dict(collections.Counter(node.op_type for node in graph.node).most_common())


# ----------------------------------------------------------------------------- pruned variants
def classifier_layers(network: nn.Module) -> list[nn.Module]:
    """The layers whose outputs pruning must keep: the linear classifier (every ``nn.Linear`` of these CNNs)."""
    return [m for m in network.modules() if isinstance(m, nn.Linear)]


def torch_pruning_deploy(network: Network, unfused: nn.Module, fused: nn.Module, example: torch.Tensor) -> nn.Module:
    """Torch-Pruning at ``FLOPS_TARGET`` of the FLOPs (``common.torch_pruning_to_flops``), as a float deploy network.

    RepVGG-A0 is pruned in its deploy form (a plain conv-ReLU stack); a ResNet in its training form, so
    that each BatchNorm is pruned with its conv (and counts in the group's magnitude), then its BatchNorms
    are folded. The FLOPs are counted on ``example`` (224x224: the FLOPs ratio depends on the size).
    """
    if network.prune_deploy:
        pruned = copy.deepcopy(fused).eval()
        torch_pruning_to_flops(pruned, example, FLOPS_TARGET, classifier_layers(pruned), iterative_steps=PRUNING_STEPS)
        return pruned
    pruned = copy.deepcopy(unfused).eval()
    torch_pruning_to_flops(pruned, example, FLOPS_TARGET, classifier_layers(pruned), iterative_steps=PRUNING_STEPS)
    return network.deploy(pruned)


def resrep_deploy(network: Network, unfused: nn.Module, example: torch.Tensor, prune_residual: bool, round_to: int | None) -> nn.Module:
    """ResRep (``ResRepPruning``) at ``FLOPS_TARGET`` of the FLOPs, without training, as a float deploy network.

    ``common.resrep_prune`` on a copy of the training-time network: compactors attached, the units
    ranked in a seeded random order (random weights have no trained importance), one mask update to the
    target, then the physical removal (``ResRepPruning.prune`` checks the pruned network against the
    masked one) and the network's deploy transform (RepVGG's branch fusion, a ResNet's BatchNorm folding).
    """
    pruned = copy.deepcopy(unfused).eval()
    resrep_prune(pruned, example, FLOPS_TARGET, prune_residual, seed=0, round_to=round_to)
    return network.deploy(pruned)


def pruned_variants(network: Network, unfused: nn.Module, fused: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """The pruned float deploy networks of ``network``, by variant name (:data:`PRUNED_LABELS`); each is timed in
    every runtime against the dense ``fused`` network, next to its FLOPs ratio.

    ResRep with ``prune_residual`` (with and without ``round_to``), ResRep without it where the network has
    residual-tied channels (``network.tied_channels``), and Torch-Pruning; all at ``FLOPS_TARGET`` of the FLOPs.

    Args:
        network: the network's entry of ``NETWORKS``.
        unfused: its training-time network (eval mode, random BatchNorm statistics); not modified.
        fused: its dense deploy network; not modified.
        example: one image at the deployed size (FLOPs are counted on it).
    """
    variants = {
        "resrep": resrep_deploy(network, unfused, example, prune_residual=True, round_to=None),
        f"resrep-r{ROUND_TO}": resrep_deploy(network, unfused, example, prune_residual=True, round_to=ROUND_TO),
    }
    if network.tied_channels:
        variants["resrep-off"] = resrep_deploy(network, unfused, example, prune_residual=False, round_to=None)
    variants["torch-pruning"] = torch_pruning_deploy(network, unfused, fused, example)
    return variants


# ----------------------------------------------------------------------------- measurements
def _relative_difference(reference: torch.Tensor, actual: torch.Tensor) -> float:
    return ((reference - actual).abs().max() / reference.abs().max().clamp_min(1.0)).item()


def _graph_flops(graph: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of an exported graph (``count_flops`` switches to eval mode, which an exported graph refuses)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        graph(x)
    return int(counter.get_total_flops())


def row_keys(pruned: list[str]) -> list[tuple[str, str]]:
    """(variant, runtime) pairs timed, in table order: by runtime, then unfused, fused, int8, pruned."""
    return [(variant, runtime) for runtime in RUNTIMES for variant in ("unfused", "fused", "int8", *pruned)
            if not (variant == "int8" and runtime == "torch.compile")]  # fmt: skip


def measure_network(network: Network, seed: int, timings: tuple[Timing, ...] | None = None) -> dict:
    """Build, export, compile and time every (variant, runtime) of ``network``; rows, goals and set-up times."""
    timings = timings or network.timings
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    unfused = network.build(seed)
    fused = network.deploy(unfused)
    calibration = [torch.randn(CALIBRATION[1], *IMAGE, generator=generator) for _ in range(CALIBRATION[0])]
    held_out = torch.randn(CALIBRATION[1], *IMAGE, generator=generator)
    one = held_out[:1]
    setup_s: dict[str, float] = {}

    begin = time.perf_counter()
    pruned = pruned_variants(network, unfused, fused, one)
    setup_s[f"pruning ({', '.join(pruned)})"] = time.perf_counter() - begin
    begin = time.perf_counter()
    int8_reference = quantize_ptq(fused, calibration, quantization_config())
    setup_s["torch int8: PTQ (calibration + convert)"] = time.perf_counter() - begin
    floats = {"unfused": unfused, "fused": fused, **pruned}
    flops = {v: count_flops(m, one) for v, m in floats.items()} | {"int8": _graph_flops(int8_reference, one)}
    params = {v: count_parameters(m) for v, m in floats.items()}

    folder = tempfile.TemporaryDirectory(prefix="litzoo-deploy-speed-")
    paths = {v: Path(folder.name) / f"{v}.onnx" for v in floats}
    for variant, model in floats.items():
        begin = time.perf_counter()
        export_model(model, held_out, paths[variant], "onnx")
        setup_s[f"ONNX export, {variant}"] = time.perf_counter() - begin
    begin = time.perf_counter()
    check = export_onnx_int8_checked(fused, calibration, Path(folder.name) / "fused.int8.onnx", held_out, atol=INT8_ATOL,
                                     compare_torch_int8=False)  # fmt: skip
    setup_s["ONNX int8 export (float export + quant_pre_process + quantize_static)"] = time.perf_counter() - begin
    paths["int8"] = check.path
    int8_ops = onnxruntime_op_counts(check.path)
    sessions = {v: OnnxModel(p) for v, p in paths.items()}
    with torch.inference_mode():
        torch_int8_vs_float = _relative_difference(fused(held_out), int8_reference(held_out))
        onnx_int8_vs_torch_int8 = _relative_difference(int8_reference(held_out), sessions["int8"](held_out))
    compiled = {v: torch.compile(m, dynamic=False) for v, m in floats.items()}

    keys = row_keys(list(pruned))
    rows, goals = [], []
    profile = pruning = None
    for timing in timings:
        x = torch.randn(timing.batch, *IMAGE, generator=generator)
        if network.profile_fusion and timing.batch == 1:
            profile = fusion_profile(unfused, fused, x)
        if network.profile_pruning and timing.batch == 1:
            pruning = pruning_profile(fused, pruned, x)
        models: dict[tuple[str, str], nn.Module] = {}
        compile_s: dict[tuple[str, str], float] = {}
        begin = time.perf_counter()
        int8 = lower_to_x86(int8_reference, x)  # specialised to this batch shape
        setup_s[f"torch int8: lower_to_x86, batch {timing.batch}"] = time.perf_counter() - begin
        for variant, runtime in keys:
            if runtime == "eager":
                models[variant, runtime] = int8 if variant == "int8" else floats[variant]
            elif runtime == "onnxruntime":
                models[variant, runtime] = sessions[variant]
            else:
                begin = time.perf_counter()
                with torch.inference_mode():
                    compiled[variant](x)  # compile for this shape outside the timing
                compile_s[variant, runtime] = time.perf_counter() - begin
                models[variant, runtime] = compiled[variant]
        with torch.inference_mode():  # the first warm-up forward of every model
            outputs = {key: model(x) for key, model in models.items()}
        seconds = compare_latency(list(models.values()), x, rounds=timing.rounds, warmup=timing.warmup - 1,
                                  min_sample_seconds=timing.min_sample_s, threads=THREADS)  # fmt: skip
        ms = {key: 1e3 * s for key, s in zip(models, seconds)}
        for variant, runtime in keys:
            key = (variant, runtime)
            # a pruned network computes another function: its runtimes are checked against its own eager output
            reference = outputs[variant, "eager"] if variant in pruned else outputs["unfused", "eager"]
            rows.append({
                "network": network.name, "variant": variant, "runtime": runtime, "label": RUNTIME_LABEL.get(key, runtime),
                "batch": timing.batch, "ms": ms[key], "vs_fused_eager": ms[key] / ms["fused", "eager"],
                "vs_fused_runtime": ms[key] / ms["fused", runtime], "flops_vs_fused": flops[variant] / flops["fused"],
                "compile_s": compile_s.get(key), "max_rel_diff": _relative_difference(reference, outputs[key]),
            })  # fmt: skip
        goal = {"network": network.name, "batch": timing.batch}
        for runtime in RUNTIMES:
            goals.append(goal | {"goal": "fused/unfused", "runtime": runtime, "ratio": ms["fused", runtime] / ms["unfused", runtime],
                                 "target": GOAL_FUSED if network.fusion_goal else None, "flops_ratio": flops["fused"] / flops["unfused"]})  # fmt: skip
        int8_pairs = (("torch (int8 oneDNN / float fused eager)", ("int8", "eager"), ("fused", "eager")),
                      ("torch (int8 oneDNN / float fused torch.compile)", ("int8", "eager"), ("fused", "torch.compile")),
                      ("onnxruntime (QDQ int8 / float fused)", ("int8", "onnxruntime"), ("fused", "onnxruntime")))  # fmt: skip
        for runtime, numerator, denominator in int8_pairs:
            goals.append(goal | {"goal": "int8/float", "runtime": runtime, "ratio": ms[numerator] / ms[denominator],
                                 "target": GOAL_INT8, "flops_ratio": flops["int8"] / flops["fused"]})  # fmt: skip
        for variant in pruned:
            flops_ratio = flops[variant] / flops["fused"]
            for runtime in RUNTIMES:
                goals.append(goal | {"goal": f"{variant}/dense", "runtime": runtime, "ratio": ms[variant, runtime] / ms["fused", runtime],
                                     "target": GOAL_PRUNED * flops_ratio, "flops_ratio": flops_ratio})  # fmt: skip
        print(f"  {network.name} batch {timing.batch}: " + ", ".join(f"{v} {r} {ms[v, r]:.2f} ms" for v, r in keys), file=sys.stderr, flush=True)
    folder.cleanup()
    return {
        "rows": rows, "goals": goals, "flops": flops, "params": params, "setup_s": setup_s, "timings": [vars(t) for t in timings],
        "fusion": network.fusion, "onnx_int8_vs_float": check.max_abs_error, "onnx_int8_allowed": check.allowed,
        "torch_int8_vs_float": torch_int8_vs_float, "onnx_int8_vs_torch_int8": onnx_int8_vs_torch_int8, "fusion_profile": profile, "pruning_profile": pruning,
        "int8_onnx_ops": int8_ops, "seconds": time.perf_counter() - start,
    }  # fmt: skip


# ----------------------------------------------------------------------------- item 4: fusion at batch 1
#: torch.profiler op names -> the categories of the fusion profile
OP_CATEGORIES = {
    "aten::native_batch_norm": "BatchNorm", "aten::add": "branch / residual additions", "aten::add_": "branch / residual additions",
    "aten::clamp_min": "ReLU", "aten::clamp_min_": "ReLU", "aten::addmm": "linear", "aten::mean": "pooling", "aten::sum": "pooling",
    "aten::max_pool2d_with_indices": "pooling", "aten::max_pool2d": "pooling",
}  # fmt: skip
PROFILE_FORWARDS = 20


def _op_profile(model: nn.Module, x: torch.Tensor, forwards: int = PROFILE_FORWARDS) -> dict[str, float]:
    """Self CPU ms per forward by category (convs by kernel size), ``torch.profiler`` over ``forwards`` forwards."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(forwards):
                model(x)
    totals: dict[str, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key == "aten::mkldnn_convolution":
            kernel = event.input_shapes[1][2:]
            category = f"conv {kernel[0]}x{kernel[1]}"
        elif event.key == "aten::_slow_conv2d_forward":
            # PyTorch's native conv: at batch 1 it takes oneDNN only for inputs of more than 20480 elements (ConvUtils.h),
            # which a pruned late-stage conv (7x7 maps, < 418 channels) falls under
            kernel = event.input_shapes[1][2:]
            category = f"conv {kernel[0]}x{kernel[1]} (native, not oneDNN)"
        else:
            category = OP_CATEGORIES.get(event.key, "other (allocation, dispatch, reshapes)")
        totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total / 1e3 / forwards
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


#: a oneDNN verbose line of an executed primitive: kind, ..., problem description, milliseconds
VERBOSE_EXEC = re.compile(r"^onednn_verbose,(?:v\d+,)?(?:primitive,)?exec,cpu,(\w+),.*,([^,]*),([0-9.]+)$")


def _onednn_profile(model: nn.Module, x: torch.Tensor, forwards: int = 5) -> dict[str, float]:
    """Milliseconds per forward inside oneDNN (its verbose mode): convolutions, and the reorders of weights
    (a weight's shape) and of activations (anything else), read from oneDNN's lines on the process's stdout."""
    weights = {"x".join(map(str, m.weight.shape)) for m in model.modules() if isinstance(m, nn.Conv2d)}
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log, torch.inference_mode():
        for _ in range(3):
            model(x)
        os.dup2(log.fileno(), 1)  # oneDNN prints to the C stdout
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(forwards):
                    model(x)
        finally:
            import ctypes

            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().splitlines()
    totals: dict[str, float] = {}
    for line in lines:
        match = VERBOSE_EXEC.match(line)
        if match is None:
            continue
        kind, problem, milliseconds = match.groups()
        if kind == "reorder":
            category = "weight reorders" if problem in weights else "activation reorders"
        elif kind == "convolution":
            category = "conv 1x1" if "kh1" in problem else "conv 3x3+"
        else:
            category = kind
        totals[category] = totals.get(category, 0.0) + float(milliseconds) / forwards
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def deploy_layout(model: nn.Module) -> nn.Module:
    """A copy in ``channels_last`` with in-place ReLUs (the deploy-side choices item 4 asks about)."""
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    return model


class PrePacked(nn.Module):
    """``model`` with its convolution weights packed once into oneDNN's layout (``torch.utils.mkldnn.to_mkldnn``,
    which takes and returns oneDNN tensors): a diagnostic of what the per-call weight reorders cost, not a deploy path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from torch.utils import mkldnn

        self.model = mkldnn.to_mkldnn(copy.deepcopy(model).eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to_mkldnn()).to_dense()


def fusion_profile(unfused: nn.Module, fused: nn.Module, x: torch.Tensor, rounds: int = 30) -> dict:
    """Where the fused and the unfused network spend a batch-1 forward, and what memory format and in-place
    ReLU change, like for like (both networks in each layout), timed in alternating rounds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        ops = {"unfused": _op_profile(unfused, x), "fused": _op_profile(fused, x)}
        onednn = {"unfused": _onednn_profile(unfused, x), "fused": _onednn_profile(fused, x)}
    finally:
        torch.set_num_threads(previous)
    layouts = {
        "unfused": unfused, "fused": fused, "unfused, channels_last": copy.deepcopy(unfused).to(memory_format=torch.channels_last),
        "fused, channels_last": copy.deepcopy(fused).to(memory_format=torch.channels_last),
        "fused, in-place ReLU": deploy_layout(fused).to(memory_format=torch.contiguous_format),
        "unfused, channels_last + in-place ReLU": deploy_layout(unfused), "fused, channels_last + in-place ReLU": deploy_layout(fused),
        "fused, weights pre-packed": PrePacked(fused),  # the unfused network's BatchNorms do not run on oneDNN tensors
    }  # fmt: skip
    with torch.inference_mode():
        reference = unfused(x)
        differences = {name: _relative_difference(reference, model(x)) for name, model in layouts.items()}
    seconds = compare_latency(list(layouts.values()), x, rounds=rounds, warmup=3, min_sample_seconds=0.05, threads=THREADS)
    ms = {name: 1e3 * s for name, s in zip(layouts, seconds)}
    return {"ops": ops, "onednn": onednn, "ms": ms, "max_rel_diff": differences, "rounds": rounds, "forwards": PROFILE_FORWARDS}


#: the pruning profile interleaves the networks: this many rounds of PROFILE_FORWARDS // PROFILE_ROUNDS forwards each,
#: median per category (a burst of other work on the shared cores then spoils one round, not a whole network's profile)
PROFILE_ROUNDS = 5


def _median_profile(rounds: list[dict[str, float]]) -> dict[str, float]:
    categories = {k for r in rounds for k in r}
    median = {k: statistics.median(r.get(k, 0.0) for r in rounds) for k in categories}
    return dict(sorted(median.items(), key=lambda item: -item[1]))


def pruning_profile(dense: nn.Module, pruned: dict[str, nn.Module], x: torch.Tensor) -> dict:
    """Where the dense and each pruned deploy network spend a forward of ``x`` in eager torch: self CPU ms by op
    category (``torch.profiler``), the oneDNN split into convolutions and reorders, and the FLOPs (counted convs
    and linear layers), so that a latency ratio above the FLOPs ratio can be attributed. The networks are
    profiled in interleaved rounds, median per category."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    models = {"dense": dense, **pruned}
    ops: dict[str, list] = {name: [] for name in models}
    onednn: dict[str, list] = {name: [] for name in models}
    try:
        for _ in range(PROFILE_ROUNDS):
            for name, model in models.items():
                ops[name].append(_op_profile(model, x, forwards=max(1, PROFILE_FORWARDS // PROFILE_ROUNDS)))
                onednn[name].append(_onednn_profile(model, x, forwards=2))
    finally:
        torch.set_num_threads(previous)
    return {
        "ops": {name: _median_profile(r) for name, r in ops.items()},
        "onednn": {name: _median_profile(r) for name, r in onednn.items()},
        "flops": {name: count_flops(model, x) for name, model in models.items()},
        "conv_channels": {name: sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) for name, model in models.items()},
        "batch": x.shape[0], "forwards": PROFILE_FORWARDS, "rounds": PROFILE_ROUNDS,
    }  # fmt: skip


# ----------------------------------------------------------------------------- run and report
def main(networks: tuple[Network, ...] = NETWORKS, seed: int = 0, timings: tuple[Timing, ...] | None = None) -> dict:
    """Every network's rows and goals; ``timings`` replaces every network's own (a short run)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    import torch._inductor.config as inductor_config

    caches = inductor_config.force_disable_caches
    inductor_config.force_disable_caches = True  # compile seconds from scratch, not from an earlier run's cache
    try:
        results = {network.name: measure_network(network, seed, timings) for network in networks}
    finally:
        inductor_config.force_disable_caches = caches
        torch.set_num_threads(previous)
    goals = [goal for result in results.values() for goal in result["goals"]]
    for goal in goals:
        goal["met"] = None if goal["target"] is None else goal["ratio"] <= goal["target"]
    return {
        "networks": results, "goals": goals, "threads": THREADS, "calibration": list(CALIBRATION), "int8_atol": INT8_ATOL,
        "flops_target": FLOPS_TARGET, "pruning_steps": PRUNING_STEPS, "seconds": time.perf_counter() - start,
    }  # fmt: skip


def _target(goal: dict) -> str:
    if goal["target"] is None:
        return f"{goal['goal']} (no goal)"
    if goal["goal"] in ("fused/unfused", "int8/float"):
        return f"{goal['goal']} ≤ {goal['target']}"
    return f"{goal['goal']} ≤ {GOAL_PRUNED} x FLOPs ratio = {goal['target']:.2f}"


def _miss(goal: dict) -> str:
    if goal["met"] is None:
        return "-"
    if goal["met"]:
        return "yes"
    return f"**no**: {goal['ratio'] - goal['target']:+.2f} over ({goal['ratio'] / goal['target']:.2f}x the goal)"


def verdict(results: dict) -> str:
    goals = [g for g in results["goals"] if g["met"] is not None]
    lines = [f"Goals (issue 20), each a latency ratio in one run at batch 1 and 32: fused/unfused ≤ {GOAL_FUSED} (RepVGG-A0), "
             f"int8/float ≤ {GOAL_INT8}, pruned/dense ≤ {GOAL_PRUNED} x the FLOPs ratio (pruned at ≤ {results['flops_target']} of the "
             f"FLOPs). Met in {sum(g['met'] for g in goals)} of {len(goals)}:"]  # fmt: skip
    for kind in ("fused/unfused", "int8/float", "pruned/dense"):
        mine = [g for g in goals if (g["goal"] == kind) or (kind == "pruned/dense" and g["goal"] not in ("fused/unfused", "int8/float"))]
        failed = [f"{g['network']} {g['goal']} {g['runtime']} batch {g['batch']} ({g['ratio']:.2f} vs ≤ {g['target']:.2f})"
                  for g in mine if not g["met"]]  # fmt: skip
        lines.append(f"- {kind}: {len(mine) - len(failed)} of {len(mine)}" + (f"; not met: {'; '.join(failed)}." if failed else "."))
    return "\n".join(lines)


def _network_table(name: str, result: dict) -> str:
    flops, params = result["flops"], result["params"]
    pruned = [v for v in flops if v not in ("unfused", "fused", "int8")]
    return "\n".join([
        f"### {name} ({result['seconds']:.0f} s): fused = {result['fusion']}",
        "",
        markdown_table(
            ["variant", "runtime", "batch", "ms", "/ float fused eager", "/ float fused, same runtime", "FLOPs / fused", "compile s",
             "max \\|y - y_ref\\| / max(1, max\\|y_ref\\|)"],
            [[r["variant"], r["label"], r["batch"], f"{r['ms']:.2f}", f"{r['vs_fused_eager']:.2f}", f"{r['vs_fused_runtime']:.2f}",
              f"{r['flops_vs_fused']:.3f}", "-" if r["compile_s"] is None else f"{r['compile_s']:.0f}", f"{r['max_rel_diff']:.2g}"]
             for r in result["rows"]],
        ),
        "",
        f"FLOPs per image: unfused {flops['unfused'] / 1e9:.3f} G, fused {flops['fused'] / 1e9:.3f} G, int8 {flops['int8'] / 1e9:.3f} G"
        + "".join(f", {v} ({PRUNED_LABELS.get(v, v)}) {flops[v] / 1e9:.3f} G ({flops[v] / flops['fused']:.3f} of fused, parameters "
                  f"{params[v] / params['fused']:.3f})"
                  for v in pruned)
        + f". Parameters: unfused {params['unfused'] / 1e6:.2f} M, fused {params['fused'] / 1e6:.2f} M. int8 vs float on held-out "
        f"random images: torch {result['torch_int8_vs_float']:.2g}, onnxruntime vs torch int8 {result['onnx_int8_vs_torch_int8']:.2g}; "
        f"ONNX int8 check {result['onnx_int8_vs_float']:.3g} (allowed {result['onnx_int8_allowed']:.3g}). int8 ONNX as onnxruntime runs it "
        f"(after its graph optimisations): {_int8_kernels(result['int8_onnx_ops'])}. Rounds: "
        + "; ".join(f"batch {t['batch']}: {t['rounds']} after {t['warmup']} warm-up forward(s)"
                    + (f", samples ≥ {t['min_sample_s']} s" if t["min_sample_s"] else ", one forward a sample") for t in result["timings"])
        + ". Set-up (not timed): " + ", ".join(f"{k} {v:.0f} s" for k, v in result["setup_s"].items()) + ".",
    ])  # fmt: skip


def _int8_kernels(ops: dict[str, int]) -> str:
    convs = ops.get("QLinearConv", 0) + ops.get("Conv", 0) + ops.get("FusedConv", 0)
    text = f"{ops.get('QLinearConv', 0)} of {convs} convs as `QLinearConv`"
    if ops.get("Add", 0) or ops.get("QLinearAdd", 0):
        text += f", {ops.get('QLinearAdd', 0)} of {ops.get('QLinearAdd', 0) + ops.get('Add', 0)} additions as `QLinearAdd`"
    if convs > ops.get("QLinearConv", 0):
        text += (f"; the other convs run in float, with {ops.get('DequantizeLinear', 0)} `DequantizeLinear` nodes left to run at "
                 "every call (onnxruntime keeps QDQ additions in float with S8 activations, and the convs that feed them too)")  # fmt: skip
    return text


def _shares(profile: dict[str, float], top: int = 6) -> str:
    total = sum(profile.values())
    return ", ".join(f"{k} {v:.2f} ms ({v / total:.0%})" for k, v in list(profile.items())[:top]) + f"; total {total:.2f} ms"


def fusion_paragraph(profile: dict, eager_ratio: float | None) -> str:
    """Issue 20, item 4: where the fused RepVGG-A0 spends its batch-1 time, from the measured profile.

    Every statement is computed from ``profile``; which way a comparison went decides the wording.
    """
    ms, ops, onednn = profile["ms"], profile["ops"], profile["onednn"]
    unfused_total, fused_total = sum(ops["unfused"].values()), sum(ops["fused"].values())
    conv_unfused, conv_fused = ops["unfused"].get("conv 3x3", 0.0), ops["fused"].get("conv 3x3", 0.0)
    conv_share = conv_fused / fused_total if fused_total else float("nan")
    ratio = ms["fused"] / ms["unfused"]  # alternating rounds: steadier than two profiles taken one after the other
    best, best_unfused = ms["fused, channels_last + in-place ReLU"], ms["unfused, channels_last + in-place ReLU"]
    like_for_like, packed = best / best_unfused, ms["fused, weights pre-packed"] / ms["unfused"]
    weights, activations = onednn["fused"].get("weight reorders", 0.0), onednn["fused"].get("activation reorders", 0.0)
    fused_onednn = sum(onednn["fused"].values()) or float("nan")  # nan: oneDNN printed nothing (a build without it)
    table = "" if eager_ratio is None else f"fused/unfused in eager torch reads {eager_ratio:.2f} in the table above (goal ≤ {GOAL_FUSED}). "
    if ratio > GOAL_FUSED:
        # fused = convs + rest; reaching GOAL_FUSED * unfused by faster convs alone needs them this much faster
        needed = (ratio - GOAL_FUSED) / (ratio * conv_share)
        need = f"The goal would need the fused network's 3x3 convolutions to take {needed:.0%} less time than they do."
    else:
        need = f"In these rounds the goal is met ({ratio:.2f})."
    layout = (f"like for like, fused/unfused is {like_for_like:.2f}: a layout gain, not a fusion gain"
              if like_for_like >= ratio else f"like for like, fused/unfused is {like_for_like:.2f}")  # fmt: skip
    packing = ("the per-call weight reorders are not what keeps the ratio above the goal" if packed > GOAL_FUSED
               else "without the per-call weight reorders the goal would be met")  # fmt: skip
    return (
        f"**Fusion at batch 1 (issue 20, item 4).** RepVGG-A0, batch 1, {THREADS} threads: {table}"
        f"Self CPU time per forward (`torch.profiler`, {profile['forwards']} forwards): unfused: {_shares(ops['unfused'])}; "
        f"fused: {_shares(ops['fused'])}. Fusion keeps the 3x3 convolutions (the same shapes and FLOPs with other weights: "
        f"{conv_unfused:.2f} ms in the unfused forward, {conv_fused:.2f} ms in the fused one, {conv_share:.0%} of it) and removes "
        f"the rest (the 1x1 convs, BatchNorms, branch additions and their allocations: {1 - conv_unfused / unfused_total:.0%} of the "
        f"unfused forward), so at batch 1 fused/unfused cannot go much below the 3x3 convolutions' share of the unfused forward, "
        f"{conv_unfused / unfused_total:.2f} here; in alternating rounds it reads {ratio:.2f}. The removed extras are mostly "
        "memory-bound work on activations, small at batch 1 and large at batch 32, where the same fusion reads lower in the table. " + need
        + f" Inside the convolutions (oneDNN verbose, fused network: {_shares(onednn['fused'], top=4)}) eager PyTorch reorders every "
        f"weight into oneDNN's blocked layout on every call ({weights:.2f} ms) and, in the default NCHW layout, the activations in "
        f"and out ({activations:.2f} ms): {(weights + activations) / fused_onednn:.0%} of the fused network's oneDNN time. Deploy-side "
        f"choices, timed in alternating rounds ({profile['rounds']} rounds, ms per forward): " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
        + f". channels_last + in-place ReLU make the fused network {best / ms['fused']:.2f} of its NCHW self and {best / ms['unfused']:.2f} "
        f"of the unfused network as it is, but the same change makes the unfused network {best_unfused / ms['unfused']:.2f} of itself: "
        f"{layout}. `fuse_model` keeps the layout it is given (`deploy_model.to(memory_format=torch.channels_last)` is a user's "
        f"one-line choice). Weights packed once (`torch.utils.mkldnn`, oneDNN tensors in and out: a diagnostic, not a deploy path) "
        f"give {packed:.2f} of the unfused network: {packing}."
    )


def pruning_paragraph(name: str, profile: dict) -> str:
    """Where a pruned network's time goes against the dense one's, from the measured profile: every number and
    every comparison's wording computed from ``profile``."""
    ops, onednn, flops, channels = profile["ops"], profile["onednn"], profile["flops"], profile["conv_channels"]

    def conv_ms(variant: str) -> float:
        return sum(v for k, v in ops[variant].items() if k.startswith("conv"))

    def onednn_ms(variant: str, kind: str) -> float:
        return sum(v for k, v in onednn[variant].items() if kind in k)

    dense_total = sum(ops["dense"].values())
    dense_conv, dense_rest = conv_ms("dense"), dense_total - conv_ms("dense")
    parts, slower_convs, rest_above = [], [], []
    for variant in ops:
        if variant == "dense":
            continue
        flops_ratio = flops[variant] / flops["dense"]
        total = sum(ops[variant].values())
        conv_ratio, rest_ratio = conv_ms(variant) / dense_conv, (total - conv_ms(variant)) / dense_rest
        # the profiled ratio minus the FLOPs ratio, split into what the convolutions and the rest add to it
        conv_excess, rest_excess = dense_conv * (conv_ratio - flops_ratio) / dense_total, dense_rest * (rest_ratio - flops_ratio) / dense_total
        throughput = (flops[variant] / 1e6 / conv_ms(variant), flops["dense"] / 1e6 / dense_conv)
        native = sum(v for k, v in ops[variant].items() if "native" in k)
        if throughput[0] < throughput[1]:
            slower_convs.append(variant)
        if rest_excess > 0:
            rest_above.append(variant)
        parts.append(
            f"{variant} (FLOPs {flops_ratio:.3f}, conv output channels {channels[variant] / channels['dense']:.2f} of dense): profiled "
            f"forward {total / dense_total:.2f} of dense = FLOPs ratio {conv_excess + rest_excess:+.2f}, of which the convolutions "
            f"(time ratio {conv_ratio:.2f}, {throughput[0]:.0f} GFLOP/s vs {throughput[1]:.0f} dense"
            + (f"; {native:.2f} ms of them on PyTorch's native path, not oneDNN" if native else "") + ") add "
            f"{conv_excess:+.2f} and everything else (pooling, ReLU, additions, allocation, dispatch; time ratio {rest_ratio:.2f}) "
            f"{rest_excess:+.2f}; oneDNN reorders {onednn_ms(variant, 'reorder'):.2f} ms vs {onednn_ms('dense', 'reorder'):.2f} ms dense"
        )  # fmt: skip
    reasons = []
    if slower_convs:
        reasons.append(f"narrower convolutions run at a lower throughput ({', '.join(slower_convs)})")
    if rest_above:
        reasons.append(
            "the work outside the convolutions scales with the activations, by the channel fraction (not its square, as a conv's "
            "FLOPs do: input and output channels both shrink) or not at all (per-op dispatch and allocation), so it cannot follow "
            f"the FLOPs ratio ({', '.join(rest_above)})"
        )
    return (
        f"**Where the pruned networks' time goes ({name}, batch {profile['batch']}, eager torch, {THREADS} threads, `torch.profiler` "
        f"over {profile['forwards']} forwards and oneDNN verbose, the networks interleaved in {profile.get('rounds', 1)} rounds, median "
        f"per op category; a profile, rougher than the alternating latency rounds of the table).** Dense: {_shares(ops['dense'])}. " + "; ".join(parts) + ". "
        + (f"What keeps the latency ratio above the FLOPs ratio: {'; and '.join(reasons)}." if reasons else "In this profile the pruned forwards track their FLOPs ratio.")
    )


def format_section(results: dict) -> str:
    networks = results["networks"]
    names = list(networks)
    lines = [
        f"## Deploy speed at 224x224: {', '.join(names)}; unfused / fused, float / int8, dense / pruned; eager / torch.compile / "
        f"onnxruntime (`benchmarks/deploy_speed.py`, {results['seconds']:.0f} s)",
        "",
        verdict(results),
        "",
    ]
    for name, result in networks.items():
        lines += [_network_table(name, result), ""]
    lines += [
        "Goals, each a latency ratio of two rows above (same network, batch and run), with the FLOPs ratio beside it:",
        "",
        markdown_table(
            ["network", "goal", "runtime", "batch", "latency ratio", "FLOPs ratio", "met?"],
            [[g["network"], _target(g), g["runtime"], g["batch"], f"{g['ratio']:.2f}", f"{g['flops_ratio']:.3f}", _miss(g)]
             for g in results["goals"]],
        ),  # fmt: skip
        "",
        "FLOPs: `litzoo.framework.profiling.count_flops` (`torch.utils.flop_counter`, 2 x MACs, convs and linear layers; BatchNorm, "
        "ReLU, pooling and additions are not counted). int8 runs the fused network's convolutions as int8 MACs (its FLOPs are counted "
        "on the quantize/dequantize reference graph). RepVGG fusion removes only the 1x1 branches' FLOPs: a fused/unfused latency ratio "
        "below the FLOPs ratio comes from the unfused graph's memory-bound extras (BatchNorms, branch additions, more kernel launches), "
        "which a runtime that folds BatchNorms and fuses the additions into the convs does not pay. A plain ResNet has no block "
        "`fuse_model` fuses (it returns the network unchanged, conv then BatchNorm in eager torch: the `unfused` rows); its `fused` "
        "rows fold each BatchNorm into its conv, which removes no counted FLOPs, and onnxruntime folds the unfused ResNet's "
        "BatchNorms itself.",
        "",
        f"Pruned rows, all at ≤ {results['flops_target']} of the dense network's FLOPs at 224x224. ResRep (`ResRepPruning`, "
        "`benchmarks/common.py::resrep_prune`): compactors attached to the training-time network, every unit's compactor rows "
        "scaled by one seeded random factor (random weights have no trained importance: the units are ranked in a random order), "
        "one mask update to the target, the physical removal (checked against the masked network), then the deploy transform; "
        "`resrep` prunes the residual-tied channels too (`prune_residual=True`), `resrep-r16` keeps multiples of 16 channels "
        "(`round_to=16`), `resrep-off` is the paper's rule (tied channels kept; RepVGG-A0 has none, so only the ResNets get "
        "it). Torch-Pruning (`MetaPruner`, `GroupMagnitudeImportance(p=2)`, global ranking, its dependency graph free to "
        f"prune the channels tied by residual additions, the classifier kept), stepped (linear schedule to 0.9 of the channels in "
        f"{results['pruning_steps']} steps, `benchmarks/common.py::torch_pruning_to_flops`, the loop of `benchmarks/pruning.py`) until "
        "the target (one step moves the FLOPs by 2-3 %); RepVGG-A0 is pruned in its fused form, a ResNet with its BatchNorms, "
        "which are then folded. Random weights: the pruned widths are not the ones a trained network would get; the latency of "
        "a given width is. The pruned rows' output differences are against their own eager output; every other row's against "
        "the unfused network's.",
        "",
        f"Protocol: each network (1000 classes, ImageNet layout) with random weights, every BatchNorm given random statistics; "
        f"random 224x224 inputs. {results['threads']} intra-op threads in torch and in onnxruntime (inter-op 1). Latency: "
        "`litzoo.framework.profiling.compare_latency`, all the models of one network and batch size in alternating rounds (order "
        "reversed every other round), median of the rounds, `torch.inference_mode`; the rounds of each network are under its table "
        "(fewer for ResNet-50 at batch 32, whose forward takes ~1 s). `torch.compile`: default backend (inductor), `dynamic=False`, "
        "compiled once per batch shape before the rounds (compile s: the first call, inductor caches disabled). onnxruntime: the ONNX "
        "files `litzoo.framework.export` writes (`export_model(..., \"onnx\")`, dynamic batch, verified against torch to 1e-4), CPU "
        "provider, default graph optimisations (which fold BatchNorms into convs, but not RepVGG's branches), worker threads not "
        "spinning between calls (`session.intra_op.allow_spinning` 0: an idle session's spinning threads slow the model timed next). torch int8: "
        "`quantize_ptq` with the default x86 config (as `litzoo export --format int8`), lowered with `lower_to_x86` to oneDNN int8 "
        "kernels for each batch shape (not `torch.compile`d). onnxruntime int8: `export_onnx_int8_checked` (as `litzoo export "
        "--format onnx-int8`: QDQ, int8 per-channel weights, U8 per-tensor activations (its default since issue 20: with S8 "
        "activations onnxruntime 1.32 left the ResNets' residual additions and the convs around them in float, and their int8 "
        "files ran at 1.0-1.6x the float ones), min-max).",
        "",
        f"int8 accuracy is not measured here (random weights): both int8 models calibrate on {results['calibration'][0]} random batches "
        f"of {results['calibration'][1]} images, and the ONNX int8 file is checked against float with a deliberately loose "
        f"atol={results['int8_atol']} (relative to max(1, max|y|)), only to catch a broken file. Accuracy drops are measured on the "
        "digits configs in the quantization section.",
    ]
    for name, result in networks.items():
        if result.get("pruning_profile"):
            lines += ["", pruning_paragraph(name, result["pruning_profile"])]
        if result.get("fusion_profile"):
            eager = next((g["ratio"] for g in result["goals"] if g["goal"] == "fused/unfused" and g["runtime"] == "eager" and g["batch"] == 1), None)
            lines += ["", fusion_paragraph(result["fusion_profile"], eager)]
    return "\n".join(lines)


if __name__ == "__main__":
    results = main()
    print(format_section(results))
    print(f"\n({results['seconds']:.0f} s)", file=sys.stderr)
