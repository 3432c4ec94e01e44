"""RepOpt-VGG: the Hyper-Search model, the plain target model, and their step-by-step equivalence."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch.utils.data import DataLoader, Dataset

from litzoo.callbacks.rep_optimizer import RepOptimizer
from litzoo.framework.classification import ImageClassifier
from litzoo.framework.errors import LitzooError
from litzoo.modules.repopt_vgg import LinearAddBlock, PlainVGGBlock, RepOptVGG, RepOptVGGClassifier

ARCH = dict(num_blocks=[1, 2, 1, 1], width_multiplier=[0.125, 0.125, 0.125, 0.0625], num_classes=3, in_channels=1, stage_strides=[1, 1, 2, 2, 1])


class Images(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(48, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 3, (48,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def fit(module, steps=12):
    trainer = L.Trainer(max_steps=steps, precision="64-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(Images(), batch_size=8))
    return trainer


def test_modes_share_the_layout_and_the_paper_scale_init():
    hs, target = RepOptVGGClassifier(mode="hs", **ARCH), RepOptVGGClassifier(mode="target", **ARCH)
    hs_blocks, target_blocks = hs.net.blocks(), target.net.blocks()
    assert list(hs_blocks) == list(target_blocks) and all(isinstance(b, LinearAddBlock) for b in hs_blocks.values())
    assert all(isinstance(b, PlainVGGBlock) for b in target_blocks.values())
    stage2 = hs.net.stage2  # block 0 of a stage starts at 1, block i at sqrt(2 / i)
    assert torch.all(stage2[0].scale_conv.weight == 1.0) and torch.allclose(stage2[1].scale_conv.weight, torch.full((16,), 2.0**0.5))
    assert stage2[1].scale_identity is not None and stage2[0].scale_identity is None  # 8 -> 16 channels: no identity
    assert set(target.rep_optimizer.multipliers) == {f"net.{name}.conv.weight" for name in target_blocks}


def _equivalent_kernel(block: LinearAddBlock) -> torch.Tensor:
    kernel = block.scale_conv.weight.view(-1, 1, 1, 1) * block.conv.weight
    kernel = kernel + block.scale_1x1.weight.view(-1, 1, 1, 1) * F.pad(block.conv_1x1.weight, [1, 1, 1, 1])
    if block.scale_identity is not None:
        kernel = kernel.clone()
        c = torch.arange(kernel.shape[0])
        kernel[c, c, 1, 1] += block.scale_identity.weight
    return kernel.detach()


def adamw(params):
    return torch.optim.AdamW(params, lr=0.01, weight_decay=0.05)


@pytest.mark.parametrize(("optimizer", "rule", "tolerance"), [(sgd, "sgd", 1e-10), (adamw, "adamw", 1e-5)])
def test_target_model_trains_like_the_csla_model_with_the_searched_scales(tmp_path, optimizer, rule, tolerance):
    """Hyper-Search checkpoint -> target model: with the same starting branches, 12 steps of the CSLA
    model (scales frozen) and of the plain model with RepOptimizer agree (float64): to 1e-10 under
    SGD, and under AdamW, where the target switches to the scales-not-squared rule, up to Adam's eps."""
    torch.manual_seed(0)
    hs = RepOptVGGClassifier(mode="hs", optimizer=optimizer, **ARCH)
    with torch.no_grad():  # "searched" scales: anything but the initial values
        for block in hs.net.blocks().values():
            for scale in (block.scale_conv, block.scale_1x1, block.scale_identity):
                if scale is not None:
                    scale.weight.uniform_(0.4, 1.6)
    torch.save({"state_dict": hs.state_dict()}, tmp_path / "hs.ckpt")
    target = RepOptVGGClassifier(mode="target", scales=str(tmp_path / "hs.ckpt"), optimizer=optimizer, **ARCH)
    hs = hs.double()
    target = target.double()
    with torch.no_grad():  # the CSLA model's starting point, as the rule of initialization gives it
        for name, block in hs.net.blocks().items():
            target.net.get_submodule(name).conv.weight.copy_(_equivalent_kernel(block))
            target.net.get_submodule(name).bn.load_state_dict(block.bn.state_dict())
        target.net.linear.load_state_dict(hs.net.linear.state_dict())
    for block in hs.net.blocks().values():  # CSLA: the branch scales are constants
        block.scale_conv.requires_grad_(False)
        block.scale_1x1.requires_grad_(False)
    fit(hs)
    fit(target)
    assert target.rep_optimizer.rule == rule
    for name, block in hs.net.blocks().items():
        kernel = _equivalent_kernel(block)
        error = (kernel - target.net.get_submodule(name).conv.weight.detach()).abs().max()
        assert error < tolerance * kernel.abs().max(), name


def test_scales_file_errors_name_the_file(tmp_path):
    torch.save({"state_dict": {"net.linear.weight": torch.zeros(3, 32)}}, tmp_path / "other.ckpt")
    with pytest.raises(LitzooError, match="other.ckpt.*no Hyper-Search scales"):
        RepOptVGGClassifier(mode="target", scales=str(tmp_path / "other.ckpt"), **ARCH)
    with pytest.raises(ValueError, match="learns them"):
        RepOptVGGClassifier(mode="hs", scales="x.ckpt", **ARCH)


# ---------------------------------------------------------------- the rule of iteration travels with the model
@pytest.mark.parametrize(("optimizer", "rule"), [(sgd, "sgd"), (adamw, "adamw")])
def test_the_model_alone_trains_like_a_plain_classifier_with_the_repoptimizer_callback(optimizer, rule):
    """RepOpt-VGG applies the rule from its own hooks: 8 steps of the target model alone and of the same
    plain VGG in an ordinary ImageClassifier with the RepOptimizer callback give bit-identical weights."""
    torch.manual_seed(0)
    target = RepOptVGGClassifier(mode="target", optimizer=optimizer, **ARCH)
    arch = {k: v for k, v in ARCH.items() if k != "num_classes"}
    plain = ImageClassifier(RepOptVGG(num_classes=ARCH["num_classes"], mode="target", **arch), ARCH["num_classes"], optimizer=optimizer)
    plain.net.load_state_dict(target.net.state_dict())
    callback = RepOptimizer(target.grad_multipliers(rule), rule=rule)
    start = target.net.stage0.conv.weight.detach().clone()
    for module, callbacks in ((target, []), (plain, [callback])):
        trainer = L.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, callbacks=callbacks)
        trainer.fit(module, DataLoader(Images(), batch_size=8))
    assert target.rep_optimizer.rule == callback.rule == rule
    trained, reference = target.state_dict(), plain.state_dict()
    assert trained.keys() == reference.keys()
    for key, value in trained.items():
        assert torch.equal(value, reference[key]), key
    assert (target.net.stage0.conv.weight.detach() - start).abs().max() > 1e-3  # they did train


def test_a_repoptimizer_callback_on_the_model_is_refused():
    """The model already multiplies its gradients: a RepOptimizer callback on the same weights would do it twice."""
    target = RepOptVGGClassifier(mode="target", optimizer=sgd, **ARCH)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[RepOptimizer(target.grad_multipliers("sgd"))])
    with pytest.raises(LitzooError, match="apply twice"):
        trainer.fit(target, DataLoader(Images(), batch_size=8))


# ---------------------------------------------------------------- network arguments: RepOptVGG's signature is the source
@pytest.mark.parametrize("mode", ["hs", "target", "searched"])
def test_network_arguments_are_forwarded_flat_and_rebuild_the_module(tmp_path, mode):
    """Both modes, and a target model initialised from a Hyper-Search file (rebuilt from its hparams, it reads
    the same scales); ARCH gives every network argument, as checkpoints written before the forwarding stored them."""
    kwargs = dict(mode=mode, label_smoothing=0.1, **ARCH)
    if mode == "searched":
        hs = RepOptVGGClassifier(mode="hs", **ARCH)
        with torch.no_grad():
            for block in hs.net.blocks().values():
                block.scale_conv.weight.uniform_(0.4, 1.6)
        torch.save({"state_dict": hs.state_dict()}, tmp_path / "hs.ckpt")
        kwargs.update(mode="target", scales=str(tmp_path / "hs.ckpt"))
    model = rebuilds_from_flat_hparams(RepOptVGGClassifier, **kwargs)
    net = model.net
    assert net.mode == kwargs["mode"] and net.stage0.conv.in_channels == 1 and net.stage0.conv.stride == (1, 1)
    assert [len(s) for s in (net.stage1, net.stage2, net.stage3, net.stage4)] == [1, 2, 1, 1] and net.linear.out_features == 3
    assert net.stage2[1].conv.out_channels == 16 and net.stage3[0].conv.stride == (2, 2)  # width_multiplier, stage_strides
    if mode == "searched":
        torch.manual_seed(0)  # the seed the helper built the module from: only the scales differ
        unsearched = RepOptVGGClassifier(mode="target", **ARCH)
        assert not torch.equal(model.net.stage1[0].conv.weight, unsearched.net.stage1[0].conv.weight)  # the scales were read


def test_a_misspelt_network_argument_is_named():
    refuses_misspelt_argument(RepOptVGGClassifier, "RepOptVGG", "width_multipler", "width_multiplier", num_classes=3)


def test_cli_help_lists_the_network_arguments_with_the_paper_defaults(capsys):
    """The defaults are the paper's RepOpt-VGG-B1, now declared once, by RepOptVGG."""
    help_lists("litzoo.modules.repopt_vgg.RepOptVGGClassifier", capsys, {
        "mode": "Literal['target', 'hs'], default: target", "num_classes": "int, default: 1000",
        "num_blocks": "Sequence[int], default: (4, 6, 16, 1)", "width_multiplier": "Sequence[float], default: (2.0, 2.0, 2.0, 4.0)",
        "in_channels": "int, default: 3", "stage_strides": "Sequence[int], default: (2, 2, 2, 2, 2)",
    })  # fmt: skip
