"""Quantization (callbacks/quantization.py, framework/quantization.py): the int8 grid by hand, PTQ and QAT
on a user-written CNN with BatchNorm, RepVGG quantized in its deploy form, the int8 file."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from user_models import UserClassifier, loader

from litzoo.callbacks.quantization import Quantization
from litzoo.callbacks.reparam_fusion import ReparamFusion
from litzoo.callbacks.structural_reparam import StructuralReparam
from litzoo.framework.errors import LitzooError
from litzoo.framework.quantization import FakeQuantizedNetwork, load_int8, quantization_config, quantize_ptq, weight_statistics

#: QAT exports the network in setup, where loaders passed straight to trainer.fit / test are not built yet
INPUT = torch.zeros(2, 1, 12, 12)


def trainer(tmp_path, callbacks, steps=6, **kwargs):
    return L.Trainer(
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=2,
        callbacks=callbacks,
        **kwargs,
    )


# ---------------------------------------------------------------- the grid, by hand
def _fake_quant(x, scale, zero_point, lo, hi):
    return (torch.clamp(torch.round(x / scale) + zero_point, lo, hi) - zero_point) * scale


def _graph_constants(int8):
    """The activation (scale, zero point) and the weight's (scales, integers) stored in a one-layer int8 graph."""
    qd = torch.ops.quantized_decomposed
    act = next(n for n in int8.graph.nodes if n.target == qd.quantize_per_tensor.default)
    weight = next(
        n
        for n in int8.graph.nodes
        if n.target in (qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default) and n.args[0].op == "get_attr"
    )
    scales = weight.args[1]
    scales = getattr(int8, scales.target) if isinstance(scales, torch.fx.Node) else torch.tensor([scales])
    return float(act.args[1]), int(act.args[2]), scales, getattr(int8, weight.args[0].target)


@pytest.mark.parametrize(("granularity", "bits"), [("per_channel", 8), ("per_tensor", 8), ("per_channel", 4)])
def test_ptq_linear_layer_follows_the_hand_computed_grids(granularity, bits):
    """Min-max PTQ of a Linear: activation S = (max(x, 0) - min(x, 0)) / 255, Z = -round(min / S) (affine
    uint8); weight S = max|W| / ((q_max - q_min) / 2) per output row or per tensor, Z = 0, integers
    round(W / S) on [-2^(b-1), 2^(b-1) - 1]; the output is dq(q(x)) dq(q(W))^T + b."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        layer.weight[2] *= 8.0  # one wide row: per-tensor and per-channel grids differ
    x = torch.randn(32, 6) + 0.3
    config = quantization_config(weight_granularity=granularity, weight_bits=bits, activation_observer="minmax")
    int8 = quantize_ptq(nn.Sequential(layer), [x], config)
    a_scale, a_zero, w_scale, w_int = _graph_constants(int8)

    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    assert a_scale == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert a_zero == -round(lo / a_scale)
    qmax = 2 ** (bits - 1) - 1
    w = layer.weight.detach()
    w_max = w.abs().amax(1) if granularity == "per_channel" else w.abs().max().expand(5)
    torch.testing.assert_close(w_scale.flatten().expand(5).float(), w_max / ((2 * qmax + 1) / 2), rtol=1e-6, atol=0)
    step = w_scale.view(-1, 1) if granularity == "per_channel" else w_scale
    ideal = w / step
    assert int(w_int.min()) >= -qmax - 1 and int(w_int.max()) <= qmax
    # round to nearest; the extreme of each row sits on a tie (|W| / S = q_max + 1/2) and may go either way
    assert ((w_int.float() - ideal).abs() <= 0.5 + 1e-4).all()
    expected = _fake_quant(x, a_scale, a_zero, 0, 255) @ (w_int.float() * step).T + layer.bias.detach()
    with torch.no_grad():
        got = int8(x)
        float_out = layer(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - float_out).abs().max() > 1e-4  # it is quantized


def test_per_channel_beats_per_tensor_on_uneven_channels_at_4_bits():
    """The survey's granularity claim: one wide output channel costs every channel's resolution per tensor."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    with torch.no_grad():
        net[0].weight[0] *= 20.0
        net[2].weight[3] *= 20.0
    xs = [torch.randn(8, 3, 10, 10) for _ in range(3)]
    ref = net(xs[0]).detach()
    errors = {}
    for granularity in ("per_channel", "per_tensor"):
        int8 = quantize_ptq(net, xs, quantization_config(weight_granularity=granularity, weight_bits=4))
        errors[granularity] = (int8(xs[0]) - ref).pow(2).mean().item()
    assert errors["per_channel"] < 0.5 * errors["per_tensor"], errors
    assert weight_statistics(net)["0"]["channel_range_ratio"] > 10


def test_percentile_calibration_beats_min_max_and_histogram_with_an_outlier():
    """The survey's calibration claim: one extreme activation stretches a min-max range over the whole
    grid. torch's histogram search keeps it too (measured: the same scale as min-max); the 99.99th
    percentile range of the same histogram drops it and quantizes the bulk finely."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    calibration = [torch.randn(32, 3, 10, 10) for _ in range(3)]  # 28,800 input values
    calibration[1][0, 0, 0, 0] = 400.0  # one outlier pixel: above the 99.99th percentile
    clean = torch.randn(16, 3, 10, 10)
    ref = net(clean).detach()
    errors = {
        observer: (quantize_ptq(net, calibration, quantization_config(activation_observer=observer))(clean) - ref).pow(2).mean().item()
        for observer in ("minmax", "histogram", "percentile")
    }
    assert errors["percentile"] < 0.1 * min(errors["minmax"], errors["histogram"]), errors


# ---------------------------------------------------------------- PTQ in a fit
def test_ptq_on_a_user_cnn_with_batchnorm(tmp_path):
    torch.manual_seed(0)
    module = UserClassifier("resnet")
    callback = Quantization(mode="ptq", calibration_batches=3)
    fit = trainer(tmp_path, [callback])
    fit.fit(module, loader(), loader(seed=1))
    r = callback.report
    assert r["int8_agreement"] >= 0.9 and 0 < r["int8_relative_error"] < 0.1, r
    assert set(r) >= {"float_acc", "int8_acc", "weight_range_ratio_max_after_fusion"}
    assert isinstance(module.net, nn.Module) and not isinstance(module.net, torch.fx.GraphModule)  # the float model stays
    # the graph holds int8 weights, and the written program is the same model
    assert _int8_constants(callback.int8_model) >= 5  # stem, 4 block convs, projection, head
    assert callback.int8_path is not None and callback.int8_path.name == "int8.pt2"
    x = next(iter(loader(seed=2)))[0]
    with torch.no_grad():
        torch.testing.assert_close(load_int8(callback.int8_path)(x), callback.int8_model(x))


def _int8_constants(graph) -> int:
    return sum(
        1
        for node in graph.graph.nodes
        if node.op == "get_attr" and isinstance(getattr(graph, node.target, None), torch.Tensor) and getattr(graph, node.target).dtype == torch.int8
    )


@pytest.mark.parametrize("fusion_first", [False, True])
def test_ptq_quantizes_repvgg_in_its_fused_form_and_logs_the_range_growth(tmp_path, fusion_first):
    """Quantization fuses a copy itself; with ReparamFusion listed first (it fuses in place when fit
    ends) the training-time statistics still come from the unfused weights."""
    torch.manual_seed(0)
    module = UserClassifier("repvgg")
    callback = Quantization(mode="ptq", calibration_batches=2, filename=None)
    callbacks = [ReparamFusion(deploy_filename=None, measure_latency=False), callback] if fusion_first else [callback]
    trainer(tmp_path, callbacks, steps=4).fit(module, loader(), loader(seed=1))
    before, after = callback.weight_stats["before_fusion"], callback.weight_stats["after_fusion"]
    assert len(before) > len(after)  # 3x3 + 1x1 branches -> one conv per block
    assert all("branch_1x1" not in name for name in after)
    # the trained model is fused only by ReparamFusion, never by Quantization
    assert any(hasattr(m, "branch_1x1") for m in module.net.modules()) != fusion_first
    assert callback.report["int8_agreement"] >= 0.9


def test_load_int8_names_the_bad_file(tmp_path):
    bad = tmp_path / "int8.pt2"
    bad.write_bytes(b"not a program")
    with pytest.raises(LitzooError, match=r"int8.pt2.*not a torch.export program"):
        load_int8(bad)
    with pytest.raises(LitzooError, match="does not exist"):
        load_int8(tmp_path / "missing.pt2")


# ---------------------------------------------------------------- QAT
def test_qat_trains_the_fake_quantized_graph_and_converts_to_int8(tmp_path):
    torch.manual_seed(0)
    module = UserClassifier("resnet", lr=0.02)
    module.example_input_array = INPUT
    callback = Quantization(mode="qat", filename=None)
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            graph = pl_module.net.graph
            seen.setdefault("means", []).append([b.clone() for n, b in graph.named_buffers() if n.endswith("running_mean")])

        def on_validation_start(self, trainer, pl_module):
            means = [b.clone() for n, b in pl_module.net.graph.named_buffers() if n.endswith("running_mean")]
            seen.setdefault("val_start", {})[trainer.global_step] = means

        def on_validation_end(self, trainer, pl_module):
            means = [b.clone() for n, b in pl_module.net.graph.named_buffers() if n.endswith("running_mean")]
            seen.setdefault("val_means", {})[trainer.global_step] = means

    fit = trainer(tmp_path, [callback, Spy()], steps=8)  # 3 batches per epoch: validation after steps 3 and 6
    fit.fit(module, loader(), loader(seed=1))
    assert isinstance(module.net, FakeQuantizedNetwork)
    optimized = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.net.parameters()}  # the optimizer trains the graph's weights
    means = seen["means"]
    # BN statistics move at every training step, after a validation pass too (the graph is switched back) ...
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(means, means[1:]))
    # ... and not during validation (inference form)
    assert torch.equal(seen["val_start"][3][0], seen["val_means"][3][0]) and torch.equal(seen["val_means"][3][0], means[3][0])
    r = callback.report
    assert r["int8_agreement"] >= 0.9 and r["int8_relative_error"] < 0.05, r


def test_a_qat_checkpoint_resumes_and_tests_with_the_rebuilt_graph(tmp_path):
    """setup rebuilds the fake-quantized graph before a checkpoint loads: resuming continues the same
    weights and ranges, and test evaluates the graph (strict state-dict load in both)."""
    torch.manual_seed(0)
    first = UserClassifier("resnet", lr=0.02)
    first.example_input_array = INPUT
    fit = trainer(tmp_path / "a", [Quantization(mode="qat", filename=None)], steps=3, enable_checkpointing=True)
    fit.fit(first, loader(), loader(seed=1))
    path = tmp_path / "qat.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert any("activation_post_process" in key for key in saved)

    resumed, callback = UserClassifier("resnet", lr=0.02), Quantization(mode="qat", filename=None)
    resumed.example_input_array = INPUT
    trainer(tmp_path / "b", [callback], steps=3).fit(resumed, loader(), loader(seed=1), ckpt_path=path)
    assert isinstance(resumed.net, FakeQuantizedNetwork) and resumed.trainer.global_step == 3  # nothing left to train

    tested = UserClassifier("resnet")
    tested.example_input_array = INPUT
    trainer(tmp_path / "c", [Quantization(mode="qat", filename=None)]).test(tested, loader(seed=2), ckpt_path=path)
    for key, value in tested.state_dict().items():
        if not key.endswith("num_batches_tracked"):  # torchao's inference form keeps the counter's add_
            torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)


def test_qat_with_loaders_passed_straight_to_fit_or_test_says_what_to_pass(tmp_path):
    """The network is exported in setup, where Lightning's public API has no loader passed straight to
    trainer.fit / trainer.test: one clear error naming the routes that work."""
    with pytest.raises(LitzooError, match=r"Quantization\(mode='qat'\).*datamodule=.*example_input_array"):
        trainer(tmp_path, [Quantization(mode="qat", filename=None)], steps=1).fit(UserClassifier("resnet"), loader())
    with pytest.raises(LitzooError, match=r"trainer\.test\(model, datamodule=.*example_input_array"):
        trainer(tmp_path, [Quantization(mode="qat", filename=None)]).test(UserClassifier("resnet"), loader())


def test_qat_refuses_callbacks_that_rebuild_the_network(tmp_path):
    with pytest.raises(LitzooError, match="StructuralReparam rebuilds it"):
        trainer(tmp_path, [StructuralReparam(), Quantization(mode="qat")], steps=1).fit(UserClassifier("resnet"), loader())


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="mode"):
        Quantization(mode="int4")
    with pytest.raises(ValueError, match="weight_bits"):
        Quantization(weight_bits=16)
    with pytest.raises(ValueError, match="weight_granularity"):
        Quantization(weight_granularity="per_group")
    with pytest.raises(ValueError, match="calibration_batches"):
        Quantization(calibration_batches=0)
    for escaping in ("../int8.pt2", "/tmp/int8.pt2", "sub/int8.pt2"):
        with pytest.raises(ValueError, match="Quantization: filename must be a plain file name"):
            Quantization(filename=escaping)


# ---------------------------------------------------------------- non-finite values fail
def test_a_diverged_model_is_refused_before_calibration(tmp_path):
    module = UserClassifier("resnet")
    with torch.no_grad():
        module.net.head.weight[0, 0] = float("nan")
    callback = Quantization(mode="ptq", calibration_batches=2)
    with pytest.raises(LitzooError, match=r"quantization: the float model's outputs on the first calibration batch are not finite") as excinfo:
        trainer(tmp_path, [callback], steps=1).fit(module, loader(), loader(seed=1))
    assert "\n" not in str(excinfo.value)
    assert callback.int8_path is None and not list(tmp_path.rglob("int8.pt2"))


def test_the_int8_comparison_refuses_non_finite_outputs():
    """A NaN gap would log as no difference (and be dropped from the logs as non-finite)."""
    module = UserClassifier("resnet").eval()
    batches = [next(iter(loader()))]
    callback = Quantization()
    reference = callback._evaluate(module, "net", module.net, batches)

    class NaNNetwork(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), float("nan"))

    with pytest.raises(LitzooError, match=r"Quantization: the int8 model's outputs on the evaluation batches are not finite \(64 NaN of 64 values\)"):
        callback._evaluate(module, "net", NaNNetwork(), batches, against=reference)
    with pytest.raises(LitzooError, match="Quantization: the reference model's outputs"):
        callback._evaluate(module, "net", module.net, batches, against={"outputs": [torch.full((16, 4), float("inf"))]})


# ---------------------------------------------------------------- DDP
DDP_SCRIPT = """
import sys, torch, lightning as L
sys.path.insert(0, {tests!r})
from user_models import UserClassifier, loader
from litzoo.callbacks.quantization import Quantization
from litzoo.callbacks.reparam_fusion import ReparamFusion

class SaveRank(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        pass

    def teardown(self, trainer, pl_module, stage):
        x = torch.linspace(-2, 2, 4 * 144).view(4, 1, 12, 12)
        with torch.no_grad():
            out = {{mode: cb.int8_model(x) for mode, cb in callbacks.items()}}
        torch.save({{"int8": out, "world_size": trainer.world_size, "path": str(callbacks[{mode!r}].int8_path)}},
                   f"{out_dir}/rank{{trainer.global_rank}}.pt")

L.seed_everything(0)
callbacks = {{{mode!r}: Quantization(mode={mode!r}, calibration_batches=2)}}
trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_steps=4, default_root_dir={out_dir!r}, logger=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[*callbacks.values(), SaveRank()])
module = UserClassifier("resnet", lr=0.02)
module.example_input_array = torch.zeros(2, 1, 12, 12)  # QAT exports the network in setup, before the loaders are built
trainer.fit(module, loader(n=64), loader(n=32, seed=1))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ptq", "qat"])
def test_two_process_ddp_gives_the_same_int8_model_on_both_ranks(tmp_path, mode):
    """Calibration batches drawn with the same seed on every rank (PTQ), fake-quant ranges kept in step by
    DDP's buffer broadcast (QAT): both ranks end with the same int8 model; one file is written."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "ddp_quant.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out_dir=str(tmp_path), tests=str(Path(__file__).parents[1]), mode=mode)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    torch.testing.assert_close(ranks[0]["int8"][mode], ranks[1]["int8"][mode], atol=0, rtol=0)
    assert ranks[0]["path"] == ranks[1]["path"] and Path(ranks[0]["path"]).is_file()
