"""Every callback on CNN patterns nobody here wrote, and every pair of callbacks (issue 18, items 20-28).

Small versions of what public CIFAR model collections do (``tests/user_models.py``): channel shuffle and
split by ratio (ShuffleNetV2, two ways), dense concatenation (DenseNet), grouped and depthwise convs with
squeeze-excitation (ResNeXt / RegNetX / SENet / EfficientNet), another repository's RepVGG block with
``switch_to_deploy()`` and ``rbr_reparam``, and separable 7x7 / 5x5 / 3x3 cells (PNASNet). Each callback
runs a 3-step fit on 3 x 8 x 8 inputs and either works, with its own checks passing and the post-conditions
below (exact to 1e-5, FLOPs equal to ``torch.utils.flop_counter``, the deploy model left in its deploy form),
or refuses in ``setup`` with one line. Every ordered pair of callbacks does the same on the foreign RepVGG
model (and on one with litzoo's own RepVGG blocks): it works, or ``setup`` refuses it in one line.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable

import lightning as L
import pytest
import torch
from torch import nn
from user_models import FOREIGN_INPUT, FOREIGN_NETS, ForeignClassifier, foreign_loader

from litzoo.callbacks.fastclip import FastClip
from litzoo.callbacks.gsm import GlobalSparseMomentum
from litzoo.callbacks.quantization import Quantization
from litzoo.callbacks.reparam_fusion import ReparamFusion
from litzoo.callbacks.resrep import ResRepPruning
from litzoo.callbacks.spatial_gradient_scaling import SpatialGradientScaling
from litzoo.callbacks.structural_reparam import StructuralReparam
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import count_flops
from litzoo.framework.pruning import compacted_layers
from litzoo.framework.reparam import RepVGGBlock, is_fusable
from litzoo.framework.reparam.convert import BatchNormSlot

CALLBACKS: dict[str, Callable[[], L.Callback]] = {
    "resrep": lambda: ResRepPruning(flops_target=0.8, lasso_strength=1e-2, mask_interval=1, warmup_epochs=0, granularity=64),
    "acb": lambda: StructuralReparam("acb"),
    "dbb": lambda: StructuralReparam("dbb"),
    "repvgg": lambda: StructuralReparam("repvgg"),
    "fusion": lambda: ReparamFusion(measure_latency=False, deploy_filename=None),
    "gsm": lambda: GlobalSparseMomentum(sparsity=0.5, deploy_filename=None),
    "sgs": lambda: SpatialGradientScaling(),
    "fastclip": lambda: FastClip(clip_every=1, warmup_steps=0, power_iterations=5, warm_iterations=2),
    "ptq": lambda: Quantization("ptq", calibration_batches=1, filename=None),
}

#: (net, callback) -> the refusal expected in setup; every other combination must work
REFUSED = {
    ("densenet", "acb"): "no conv layer of ForeignClassifier can be converted",  # pre-activation: only 1x1 convs feed a BN
    ("densenet", "dbb"): "no conv layer of ForeignClassifier can be converted",
    ("densenet", "repvgg"): "no conv layer of ForeignClassifier can be converted",
    ("grouped_se", "resrep"): "flops_target=0.8 cannot be reached",  # residual additions, SE products and grouped convs tie most layers
}


class FlopsSpy(L.Callback):
    """Before ResRep prunes (it stands first in the list): what ResRep's FLOPs model predicts for its masks."""

    def __init__(self, resrep: ResRepPruning) -> None:
        self.resrep, self.predicted = resrep, None

    def on_fit_end(self, trainer, pl_module):
        if compacted_layers(pl_module):
            self.predicted = self.resrep.flops(self.resrep.kept_channels(pl_module))


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """The fits write their deploy checkpoints (ResRep's pruned.ckpt) into the working directory: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


def fit(module: L.LightningModule, names: list[str]) -> tuple[list[L.Callback], list[L.Callback]]:
    """A 3-step fit with the named callbacks (in that order); returns them and the spies."""
    callbacks = [CALLBACKS[name]() for name in names]
    spies = [FlopsSpy(c) for c in callbacks if isinstance(c, ResRepPruning)]
    trainer = L.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1, callbacks=[*spies, *callbacks], default_root_dir=None,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nothing to fuse", short-run notices: not what these tests check
        trainer.fit(module, foreign_loader(), foreign_loader(seed=1))
    return callbacks, spies


def check_works(module: L.LightningModule, callback: L.Callback, spies: list[FlopsSpy]) -> None:
    """The post-conditions of one callback after a fit (also when another callback ran with it)."""
    net = module.net
    assert not any(isinstance(m, BatchNormSlot) for m in net.modules())  # no StructuralReparam block left unfused
    if isinstance(callback, ResRepPruning):
        report = callback.report
        assert callback.pruned and not compacted_layers(module) and report["removal_error"] < 1e-5
        assert report["flops_after"] == count_flops(net, FOREIGN_INPUT[:1])
        spy = next(s for s in spies if s.resrep is callback)
        assert spy.predicted == pytest.approx(report["flops_after"], rel=1e-12)  # ResRep's FLOPs model, exact
    elif isinstance(callback, StructuralReparam):
        assert callback.layers == [] and callback.report.converted
        if callback.fusion_report:  # fused by this callback (not already by another one's fuse_model)
            assert callback.fusion_report["max_abs_error"] <= 1e-5 * max(1.0, callback.fusion_report.get("max_abs_output", 1.0))
            assert callback.fusion_report["params_deploy"] < callback.fusion_report["params_training"]
        for layer in callback.report.converted:  # the user's own layers back in their places (or deployed with their block)
            try:
                conv, bn = module.get_submodule(layer.conv), module.get_submodule(layer.bn)
            except AttributeError:
                assert ".rbr_dense." in layer.conv  # inside another repository's block, converted in place by ReparamFusion
                continue
            assert type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d
    elif isinstance(callback, ReparamFusion):
        # litzoo's blocks replaced by their deploy modules, the foreign ones converted in place (rbr_reparam)
        assert not any(callable(getattr(m, "fuse", None)) for m in net.modules())
        assert all(hasattr(m, "rbr_reparam") for m in net.modules() if is_fusable(m))
        if callback.fused:
            assert callback.report["max_abs_error"] < 1e-5 and callback.report["float64_random_bn_error"] < 1e-8
    elif isinstance(callback, GlobalSparseMomentum):
        assert callback.report["sparsity"] >= 0.5 - 1e-6
    elif isinstance(callback, SpatialGradientScaling):
        assert callback.updates >= 1 and callback.scalings
    elif isinstance(callback, FastClip):
        assert callback.events == 3
    elif isinstance(callback, Quantization):
        assert callback.int8_model is not None and callback.report["int8_agreement"] >= 0.0


@pytest.mark.parametrize("callback", list(CALLBACKS))
@pytest.mark.parametrize("net", list(FOREIGN_NETS))
def test_every_callback_works_or_refuses_in_setup(net, callback):
    torch.manual_seed(0)
    module = ForeignClassifier(net)
    refusal = REFUSED.get((net, callback))
    if refusal is not None:
        before = {k: v.clone() for k, v in module.state_dict().items()}
        with pytest.raises(LitzooError, match=re.escape(refusal)) as refused:
            fit(module, [callback])
        assert "\n" not in str(refused.value)
        assert module.state_dict().keys() == before.keys()  # refused before changing anything
        return
    callbacks, spies = fit(module, [callback])
    check_works(module, callbacks[0], spies)


# ---------------------------------------------------------------------------------------------- pairs

PAIR_CALLBACKS = ["resrep", "acb", "fusion", "gsm", "sgs", "fastclip", "ptq"]

#: pairs refused in either order, and pairs that must stand in the given order (callbacks/base.py)
REFUSED_PAIRS = {
    frozenset({"resrep", "acb"}): "cannot share a Trainer: both rebuild the model's conv-BN pairs during fit",
    frozenset({"gsm", "acb"}): "cannot share a Trainer: GSM's sparsity mask is on the training-time branch weights",
    frozenset({"gsm", "fusion"}): "cannot share a Trainer: GSM's sparsity mask is on the training-time weights",
    frozenset({"gsm", "resrep"}): "cannot share a Trainer: ResRep trains its compactors outside the optimizer",
}
ORDERED_PAIRS = {
    ("resrep", "fusion"): "ResRepPruning must come before ReparamFusion",
    ("gsm", "ptq"): "GlobalSparseMomentum must come before Quantization",
}


class LitzooRepVGGNet(nn.Module):
    """litzoo's own RepVGG blocks followed by a user's conv-BN: something for every callback of a pair."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(RepVGGBlock(3, 8), RepVGGBlock(8, 8), RepVGGBlock(8, 16, stride=2), nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


@pytest.mark.parametrize("net", ["official_repvgg", "litzoo_repvgg"])
@pytest.mark.parametrize("first,second", list(itertools.permutations(PAIR_CALLBACKS, 2)))
def test_every_pair_of_callbacks_works_in_this_order_or_is_refused_in_setup(monkeypatch, net, first, second):
    monkeypatch.setitem(FOREIGN_NETS, "litzoo_repvgg", LitzooRepVGGNet)
    torch.manual_seed(0)
    module = ForeignClassifier(net)
    refusal = REFUSED_PAIRS.get(frozenset({first, second})) or ORDERED_PAIRS.get((second, first))
    if refusal is not None:
        with pytest.raises(LitzooError, match=re.escape(refusal)) as refused:
            fit(module, [first, second])
        assert "\n" not in str(refused.value)
        assert not compacted_layers(module) and not any(isinstance(m, BatchNormSlot) for m in module.modules())  # nothing changed yet
        return
    callbacks, spies = fit(module, [first, second])
    for callback in callbacks:
        check_works(module, callback, spies)


def test_a_subclass_of_a_litzoo_callback_is_stacked_by_what_it_is():
    class MyFusion(ReparamFusion):
        pass

    module = ForeignClassifier("official_repvgg")
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[MyFusion(), CALLBACKS["resrep"]()])
    with pytest.raises(LitzooError, match="ResRepPruning must come before ReparamFusion"):
        trainer.fit(module, foreign_loader())
