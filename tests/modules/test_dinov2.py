"""DINOv2's LightningModule (modules/dinov2.py::DINOv2Module) against hand computations of the official step
(facebookresearch/dinov2 ``dinov2/train/ssl_meta_arch.py``, ``train.py``, ``utils/param_groups.py``,
``utils/utils.py::CosineScheduler``): the loss terms and their scales with the teacher's crop swap, the EMA teacher,
the schedules, the parameter groups, the probes' features, and a 2-process gloo fit.

The backbone, head, losses, masks and crops have their own tests (test_dinov2_backbone.py, framework/test_dino_losses.py,
test_ema.py, test_block_masking.py, test_multicrop.py); here they are the parts the hand computations are made of.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap
import unittest.mock
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litzoo.datamodules.digits import DigitsDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.losses import sinkhorn_knopp
from litzoo.modules.dinov2 import DINOv2Module, dinov2_param_groups

REPO_ROOT = Path(__file__).parents[2]

#: a tiny DINOv2: 16 px global crops (4x4 patches), 2 local crops of 8 px, K = 32
TINY = dict(image_size=16, patch_size=4, in_chans=1, dim=16, depth=2, num_heads=2, local_crops_size=8, local_crops_number=2,
            crop_mean=(0.3,), crop_std=(0.3,), head_n_prototypes=32, head_hidden_dim=32, head_bottleneck_dim=16)  # fmt: skip


def _module(**kwargs) -> DINOv2Module:
    return DINOv2Module(**{**TINY, **kwargs})


def _views(module: DINOv2Module, batch: int = 6, seed: int = 1):
    """Normalised crops made up so the two global crops of an image differ a lot (crop 2 from another distribution),
    local crops, and the module's iBOT masks; seeded."""
    torch.manual_seed(seed)
    global_crops = torch.cat([torch.randn(batch, 1, 16, 16), 3 * torch.rand(batch, 1, 16, 16) - 2])
    return global_crops, torch.randn(module.hparams.local_crops_number * batch, 1, 8, 8), module.draw_masks(2 * batch)


def _distinguishing(module: DINOv2Module) -> DINOv2Module:
    """A teacher that differs from the student and non-zero centers: every pairing and every center shows in the loss."""
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in module.teacher.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        module.dino_loss.center.normal_(std=0.1)
        if module.ibot_patch_loss is not None:
            module.ibot_patch_loss.center.normal_(std=0.1)
    return module


def _ce(student_logits: torch.Tensor, targets: torch.Tensor, temp: float = 0.1) -> torch.Tensor:
    """Mean over rows of −Σ_k t_k log softmax(s / τ)_k."""
    return -(targets * F.log_softmax(student_logits / temp, dim=-1)).sum(-1).mean()


def _koleo(x: torch.Tensor) -> torch.Tensor:
    """KoLeo by brute force: each row's nearest other row by cosine, −mean log distance of the normalised rows."""
    x = F.normalize(x, dim=-1)
    terms = []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        j = max(others, key=lambda j: float(x[i].detach() @ x[j].detach()))
        terms.append(torch.log((x[i] - x[j]).norm() + 1e-8))
    return -torch.stack(terms).mean()


def _by_hand(module: DINOv2Module, global_crops, local_crops, masks, temp: float, swap: bool = True) -> dict[str, torch.Tensor]:
    """The official step's terms, each crop through the parts on its own (``module`` is not changed)."""
    hp = module.hparams
    b = global_crops.shape[0] // 2
    crops = [global_crops[:b], global_crops[b:]]
    crop_masks = [masks.masks[:b], masks.masks[b:]]
    teacher, student = module.teacher, module.student
    patch_head = "ibot_head" if hp.ibot_separate_head else "dino_head"
    with torch.no_grad():
        out = [teacher["backbone"].forward_features(c) for c in crops]
        logits = [teacher["dino_head"](o["x_norm_clstoken"]) for o in out]
        patch_logits = [teacher[patch_head](o["x_norm_patchtokens"][m]) for o, m in zip(out, crop_masks, strict=True)]
        if hp.centering == "centering":
            targets = [F.softmax((x - module.dino_loss.center) / temp, dim=-1) for x in logits]
            patch_targets = [F.softmax((x - module.ibot_patch_loss.center.reshape(-1)) / temp, dim=-1) for x in patch_logits]
        else:  # Sinkhorn-Knopp over the whole batch of class tokens, and over all masked patches
            joint = sinkhorn_knopp(torch.cat(logits), temp)
            targets = [joint[:b], joint[b:]]
            joint = sinkhorn_knopp(torch.cat(patch_logits), temp, total_rows=sum(len(x) for x in patch_logits))
            patch_targets = [joint[: len(patch_logits[0])], joint[len(patch_logits[0]) :]]
    n_local = hp.local_crops_number
    n_terms = 2 + 2 * n_local
    s_out = [student["backbone"].forward_features(c, masks=m) for c, m in zip(crops, crop_masks, strict=True)]
    s_cls = [o["x_norm_clstoken"] for o in s_out]
    s_logits = [student["dino_head"](x) for x in s_cls]
    # the teacher's crop B is the target of the student's crop A, and A of B
    paired = (targets[1], targets[0]) if swap else (targets[0], targets[1])
    terms = {"dino_global_loss": (_ce(s_logits[0], paired[0]) + _ce(s_logits[1], paired[1])) / n_terms}
    local = 0
    for crop in local_crops.chunk(n_local):
        x = student["dino_head"](student["backbone"](crop))
        local = local + _ce(x, targets[0]) + _ce(x, targets[1])
    terms["dino_local_loss"] = local / n_terms
    terms["koleo_loss"] = hp.koleo_loss_weight * (_koleo(s_cls[0]) + _koleo(s_cls[1]))
    ibot = 0
    for o, m, t in zip(s_out, crop_masks, patch_targets, strict=True):
        per_patch = -(t * F.log_softmax(student[patch_head](o["x_norm_patchtokens"][m]) / 0.1, dim=-1)).sum(-1)  # image by image, in mask order
        counts = m.sum(-1).tolist()
        ibot = ibot + sum(chunk.mean() for chunk in per_patch.split(counts) if len(chunk))
    terms["ibot_loss"] = hp.ibot_loss_weight * ibot / (2 * b)  # averaged per image over all 2B global crops; x 2 x 1/2
    terms["loss"] = sum(terms.values())
    return terms


# ------------------------------------------------------------------------------------------ the loss of one step


@pytest.mark.parametrize(
    "options",
    [{}, {"centering": "sinkhorn_knopp"}, {"ibot_separate_head": True, "ibot_head_n_prototypes": 24, "ibot_head_hidden_dim": 16,
                                          "ibot_head_bottleneck_dim": 8}],  # fmt: skip
    ids=["centering", "sinkhorn_knopp", "separate_ibot_head"],
)
def test_step_loss_is_the_official_sum_of_terms(options):
    module = _distinguishing(_module(layer_scale_init=1.0, **options)).train()
    global_crops, local_crops, masks = _views(module)
    assert 1 <= int(masks.masks.any(1).sum()) <= 6  # at most int(12 * 0.5) of the 12 global crops masked
    before = copy.deepcopy(module)
    losses, monitors = module.forward_losses(global_crops, local_crops, masks, teacher_temp=0.05)
    expected = _by_hand(before, global_crops, local_crops, masks, 0.05)
    assert set(losses) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=2e-5, atol=1e-6, msg=name)
    # negative control: the teacher distinguishes crop A from B, so matching A with A gives a loss far outside the tolerance
    unswapped = _by_hand(before, global_crops, local_crops, masks, 0.05, swap=False)
    difference = float(unswapped["dino_global_loss"] - losses["dino_global_loss"].detach())
    assert abs(difference) > 100 * (1e-6 + 2e-5 * float(losses["dino_global_loss"].detach()))
    losses["loss"].backward()  # the gradient reaches the student's backbone, never the teacher
    assert module.student["backbone"].blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.teacher.parameters())
    assert set(monitors) == {"teacher_entropy_of_mean", "teacher_entropy_per_sample", "teacher_cls_std"}


def test_centers_move_after_the_targets_and_not_in_validation():
    module = _distinguishing(_module(layer_scale_init=1.0))
    global_crops, local_crops, masks = _views(module)
    center = module.dino_loss.center.clone()
    patch_center = module.ibot_patch_loss.center.clone()
    with torch.no_grad():
        out = module.teacher["backbone"].forward_features(global_crops)
        logits = module.teacher["dino_head"](out["x_norm_clstoken"])
        patch_logits = module.teacher["dino_head"](out["x_norm_patchtokens"][masks.masks])
    module.forward_losses(global_crops, local_crops, masks, 0.05, update_centers=False)
    assert torch.equal(module.dino_loss.center, center) and torch.equal(module.ibot_patch_loss.center, patch_center)
    module.forward_losses(global_crops, local_crops, masks, 0.05)
    torch.testing.assert_close(module.dino_loss.center, 0.9 * center + 0.1 * logits.mean(0, keepdim=True))
    torch.testing.assert_close(module.ibot_patch_loss.center, 0.9 * patch_center + 0.1 * patch_logits.mean(0).reshape(1, 1, -1))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_draws_the_views_then_computes_the_same_loss():
    module = _module(layer_scale_init=1.0)
    twin = copy.deepcopy(module)
    images = torch.rand(6, 1, 16, 16)
    torch.manual_seed(3)
    loss = module.training_step({"image": images, "label": torch.zeros(6, dtype=torch.long)}, 0)
    assert int(module.views_drawn) == 1
    # the views come from the step's own seed; the run's RNG (drop path) is left as it was
    torch.manual_seed(twin.view_seed_of_step(0))
    views = twin.views(images)
    torch.manual_seed(3)
    expected, _ = twin.forward_losses(*views, teacher_temp=0.04)  # step 0's teacher temperature
    torch.testing.assert_close(loss, expected["loss"])
    # the next step draws other views; another rank of the same step too
    torch.manual_seed(twin.view_seed_of_step(1))
    assert not torch.equal(twin.views(images)[0], views[0])
    assert twin.view_seed_of_step(0) != twin.view_seed_of_step(1) and len({twin.view_seed_of_step(s) for s in range(50)}) == 50


def test_every_ddp_rank_draws_its_own_views_and_a_module_keeps_its_view_seed():
    module = _module(view_seed=7)
    assert [module.view_seed_of_step(s) for s in range(3)] == [7, 8, 9]  # one process
    seeds = {}
    with unittest.mock.patch("litzoo.modules.dinov2.world_size", return_value=2):
        for rank in range(2):
            with unittest.mock.patch.object(DINOv2Module, "global_rank", new_callable=unittest.mock.PropertyMock, return_value=rank):
                seeds.update({(s, rank): module.view_seed_of_step(s) for s in range(4)})
    assert len(set(seeds.values())) == len(seeds) and seeds[3, 0] == 13 and seeds[3, 1] == 14  # distinct for every step and rank
    torch.manual_seed(123)
    assert int(_module().view_seed) == 123  # default: the run's seed
    assert {"view_seed", "views_drawn"} <= set(module.state_dict())  # checkpointed


def test_collapse_monitors_by_hand():
    from litzoo.modules.dinov2 import collapse_monitors

    uniform = torch.full((4, 8), 1 / 8)
    one_hot = F.one_hot(torch.tensor([0, 0, 0, 0]), 8).float()
    spread = F.one_hot(torch.tensor([0, 1, 2, 3]), 8).float()
    cls = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    m = collapse_monitors(uniform, cls)
    assert math.isclose(m["teacher_entropy_of_mean"], math.log(8), rel_tol=1e-6) and math.isclose(m["teacher_entropy_per_sample"], math.log(8), rel_tol=1e-6)
    m = collapse_monitors(one_hot, cls.new_ones(4, 2))
    assert float(m["teacher_entropy_of_mean"]) == 0.0 and float(m["teacher_entropy_per_sample"]) == 0.0 and float(m["teacher_cls_std"]) == 0.0
    m = collapse_monitors(spread, cls)
    assert math.isclose(m["teacher_entropy_of_mean"], math.log(4), rel_tol=1e-6) and float(m["teacher_entropy_per_sample"]) == 0.0
    assert math.isclose(m["teacher_cls_std"], float(torch.tensor([1.0, 0, -1, 0]).std()), rel_tol=1e-6)


# ------------------------------------------------------------------------------------------ fits: EMA and schedules


def _digits(batch_size: int = 16) -> DigitsDataModule:
    return DigitsDataModule(batch_size=batch_size, image_size=16, normalize=False)


def _trainer(callbacks=(), **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   limit_val_batches=0)  # fmt: skip
    return L.Trainer(callbacks=list(callbacks), **{**options, **kwargs})


@pytest.mark.parametrize("momentum", [1.0, 0.5])
def test_teacher_follows_the_student_by_ema_after_each_step(momentum):
    module = _module(momentum_teacher=momentum, final_momentum_teacher=momentum, warmup_epochs=0)  # lr 0 at step 0 otherwise
    teacher = copy.deepcopy(module.teacher.state_dict())
    _trainer(max_steps=1).fit(module, _digits())
    student = module.student.state_dict()
    moved = 0
    for name, value in module.teacher.state_dict().items():
        expected = momentum * teacher[name] + (1 - momentum) * student[name]
        if momentum == 1.0:
            assert torch.equal(value, teacher[name]), name  # bit-identical
        else:
            torch.testing.assert_close(value, expected, msg=name)
        moved += not torch.equal(student[name], teacher[name])
    assert moved > 10  # the student did move: the comparison means something
    assert not module.teacher.training and all(not m.training for m in module.teacher.modules())
    assert module.student.training


def _official_cosine(base: float, final: float, total: int, warmup: int = 0, start_warmup: float = 0.0) -> list[float]:
    """dinov2/utils/utils.py::CosineScheduler's array, in numpy, then ``final`` for steps past it."""
    iters = np.arange(total - warmup)
    schedule = np.concatenate((np.linspace(start_warmup, base, warmup), final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))))
    return [float(v) for v in schedule] + [final] * 100


class _RecordGroups(L.Callback):
    def __init__(self) -> None:
        self.steps: dict[int, tuple] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        groups = [(g["lr"], g["weight_decay"], g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in optimizer.param_groups]
        self.steps[trainer.global_step] = (pl_module.schedules, groups)


def test_schedules_per_step_against_the_official_arrays():
    epochs, per_epoch, batch = 4, 5, 16
    module = _module(warmup_epochs=1, freeze_last_layer_epochs=2, warmup_teacher_temp_epochs=2)
    record = _RecordGroups()
    _trainer([record], max_epochs=epochs, limit_train_batches=per_epoch).fit(module, _digits(batch))
    total = epochs * per_epoch
    assert sorted(record.steps) == list(range(total))
    peak = 0.004 * math.sqrt(batch / 1024)  # sqrt scaling with respect to 1024
    lr = _official_cosine(peak, 1e-6, total, warmup=per_epoch)
    last_layer_lr = [0.0] * (2 * per_epoch) + lr[2 * per_epoch :]  # the first 2 epochs overwritten with 0
    wd = _official_cosine(0.04, 0.4, total)
    momentum = _official_cosine(0.992, 1.0, total)
    temp = _official_cosine(0.07, 0.07, 2 * per_epoch, warmup=2 * per_epoch, start_warmup=0.04)
    for step, (values, groups) in record.steps.items():
        for name, expected in (("lr", lr), ("last_layer_lr", last_layer_lr), ("weight_decay", wd), ("momentum", momentum), ("teacher_temp", temp)):
            assert math.isclose(getattr(values, name), expected[step], rel_tol=1e-9, abs_tol=1e-12), (step, name)
        for group_lr, group_wd, lr_mult, wd_mult, last in groups:
            assert math.isclose(group_lr, (last_layer_lr if last else lr)[step] * lr_mult, rel_tol=1e-9, abs_tol=1e-15)
            assert math.isclose(group_wd, wd[step] * wd_mult, rel_tol=1e-9, abs_tol=1e-15)
    assert record.steps[0][0].lr == 0.0 and math.isclose(record.steps[per_epoch - 1][0].lr, peak)  # warm-up from 0 to the peak
    assert record.steps[9][0].last_layer_lr == 0.0 and record.steps[10][0].last_layer_lr > 0
    assert record.steps[0][0].teacher_temp == 0.04 and record.steps[9][0].teacher_temp == 0.07 == record.steps[total - 1][0].teacher_temp
    assert any(last for _, _, _, _, last in record.steps[0][1])


def test_gradients_are_clipped_per_student_part():
    module = _module(ibot_separate_head=True, ibot_head_n_prototypes=24, ibot_head_hidden_dim=16, ibot_head_bottleneck_dim=8)
    for i, parameter in enumerate(module.student.parameters()):
        parameter.grad = torch.full_like(parameter, float(i % 7 + 1))
    norms = {name: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in part.parameters()])) for name, part in module.student.items()}
    assert all(norm > 3.0 for norm in norms.values())
    module.configure_gradient_clipping(None, gradient_clip_val=3.0, gradient_clip_algorithm="norm")
    for name, part in module.student.items():  # each part on its own at 3.0, as the official loop (not one global norm)
        torch.testing.assert_close(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in part.parameters()])), torch.tensor(3.0), msg=name)


def test_a_run_without_an_end_is_refused():
    module = _module()
    trainer = _trainer(max_epochs=-1)
    with pytest.raises(LitzooError, match="the schedules need a finite run"):
        trainer.fit(module, _digits())


# ------------------------------------------------------------------------------------------ parameter groups


def test_param_groups_layerwise_decay_patch_embed_and_weight_decay_by_hand():
    depth = 3
    module = _module(depth=depth, num_register_tokens=2, ibot_separate_head=True, ibot_head_n_prototypes=24, ibot_head_hidden_dim=16,
                     ibot_head_bottleneck_dim=8)  # fmt: skip
    groups = dinov2_param_groups(module.student, layerwise_decay=0.9, patch_embed_lr_mult=0.2)
    where = {id(p): g for g in groups for p in g["params"]}
    trainable = [(f"{part}.{name}", p) for part, sub in module.student.items() for name, p in sub.named_parameters()]
    assert len(where) == sum(len(g["params"]) for g in groups) == len(trainable)  # each parameter exactly once
    seen = set()
    for name, parameter in trainable:
        group = where[id(parameter)]
        local = name.split(".", 1)[1]
        if name.startswith("backbone.blocks."):
            i = int(local.split(".")[1])
            lr_mult = 0.9 ** (depth + 1 - (i + 1))  # block i is layer i + 1
        elif local.startswith("patch_embed."):
            lr_mult = 0.9 ** (depth + 1) * 0.2
        elif local in ("cls_token", "pos_embed", "mask_token", "register_tokens"):
            lr_mult = 0.9 ** (depth + 1)  # layer 0
        else:  # the final norm, the heads
            lr_mult = 1.0
        no_decay = local.endswith(".bias") or "norm" in local or local.endswith("gamma")  # tokens are decayed, as in the official
        assert math.isclose(group["lr_multiplier"], lr_mult, rel_tol=1e-12), name
        assert group["wd_multiplier"] == (0.0 if no_decay else 1.0), name
        assert group["is_last_layer"] == ("last_layer" in local), name
        seen.add((local.split(".")[0], group["wd_multiplier"]))
    assert {("cls_token", 1.0), ("register_tokens", 1.0), ("norm", 0.0), ("last_layer", 1.0)} <= seen
    assert math.isclose(where[id(module.student["backbone"].blocks[0].ls1.gamma)]["lr_multiplier"], 0.9**3)
    # parameters that do not train are left out (DINO v1's frozen prototype magnitude)
    frozen = _module(layer_scale_init=None)
    frozen.student["dino_head"].last_layer.parametrizations.weight.original0.requires_grad_(False)
    assert sum(len(g["params"]) for g in dinov2_param_groups(frozen.student)) == sum(p.requires_grad for p in frozen.student.parameters())


# ------------------------------------------------------------------------------------------ features, arguments


def test_forward_features_are_the_teachers_normalised_class_token():
    module = _distinguishing(_module(layer_scale_init=1.0)).eval()
    images = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        features = module.forward_features(images)
        teacher = module.teacher["backbone"].forward_features((images - 0.3) / 0.3)["x_norm_clstoken"]
        student = module.student["backbone"]((images - 0.3) / 0.3)
    assert features.shape == (5, 16)
    torch.testing.assert_close(features, teacher)
    assert (features - student).abs().max() > 1e-2


def test_bad_arguments_are_refused():
    for bad, match in (
        ({"centering": "sk"}, "centering must be"),
        ({"dino_loss_weight": 0.0}, "dino_loss_weight must be positive"),
        ({"local_crops_size": 10}, "local_crops_size .* multiple of the patch size"),
        ({"crop_mean": (0.1, 0.2, 0.3)}, "one value per image channel"),
        ({"momentum_teacher": 1.5}, "momentum_teacher must be in"),
        ({"layerwise_decay": 0.0}, "layerwise_decay"),
        ({"ibot_mask_ratio_min_max": (0.5, 0.1)}, "ibot_mask_ratio_min_max"),
        ({"dimm": 8}, "unknown network argument 'dimm'"),
    ):
        with pytest.raises(ValueError, match=match):
            _module(**bad)


# ------------------------------------------------------------------------------------------ DDP

DDP_SCRIPT = """
import torch, lightning as L
from litzoo.cli import LitzooCLI

class SaveRankState(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.initial = {{k: v.detach().clone() for k, v in pl_module.teacher.state_dict().items()}}
    def on_fit_end(self, trainer, pl_module):
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "initial_teacher": self.initial, "world_size": trainer.world_size, "steps": trainer.global_step}},
                   f"{out}/rank{{trainer.global_rank}}.pt")

LitzooCLI(args=[
    "fit", "-c", "configs/dinov2/digits.yaml",
    "--model.init_args.image_size", "16", "--model.init_args.local_crops_size", "8", "--model.init_args.dim", "16",
    "--model.init_args.depth", "1", "--model.init_args.num_heads", "2", "--model.init_args.head_n_prototypes", "32",
    "--model.init_args.head_hidden_dim", "32", "--model.init_args.head_bottleneck_dim", "16", "--model.init_args.momentum_teacher", "0.9",
    "--data.init_args.image_size", "16", "--data.init_args.batch_size", "8",
    "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.default_root_dir", "{out}", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
    "--trainer.enable_checkpointing", "false", "--trainer.enable_model_summary", "false",
], trainer_defaults={{"callbacks": [SaveRankState()]}})
"""


@pytest.mark.slow
def test_two_process_ddp_fit_ends_with_identical_teachers_and_centers(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["steps"] == 2 for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["dino_loss.center"].abs().sum() > 0 and a["ibot_patch_loss.center"].abs().sum() > 0
    initial = ranks[0]["initial_teacher"]
    assert any(not torch.equal(a[f"teacher.{k}"], v) for k, v in initial.items())  # the EMA moved the teacher


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_bf16_autocast_losses_stay_close_to_float32_and_state_stays_float32(centering):
    """Mixed precision (the official trains in fp16 under FSDP; bf16 is what a CPU autocasts to): the targets,
    Sinkhorn-Knopp, the centers and KoLeo are computed in float32, so each term stays within bf16's resolution of the
    float32 step, and the centers and the EMA teacher stay float32."""
    module = _distinguishing(_module(layer_scale_init=1.0, centering=centering)).train()
    global_crops, local_crops, masks = _views(module)
    twin = copy.deepcopy(module)
    torch.manual_seed(0)
    reference, _ = module.forward_losses(global_crops, local_crops, masks, teacher_temp=0.05)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, monitors = twin.forward_losses(global_crops, local_crops, masks, teacher_temp=0.05)
    assert set(mixed) == set(reference)
    for name, value in reference.items():
        assert torch.isfinite(mixed[name]), name
        torch.testing.assert_close(mixed[name].float(), value, rtol=1e-2, atol=5e-3, msg=name)
    assert module.student["backbone"].blocks[0].attn.qkv.weight.dtype == torch.float32  # autocast casts per op only
    assert twin.dino_loss.center.dtype == torch.float32 and twin.ibot_patch_loss.center.dtype == torch.float32
    if centering == "centering":  # the centers took the same step, within bf16's rounding of the logits
        torch.testing.assert_close(twin.dino_loss.center, module.dino_loss.center, rtol=0.05, atol=0.01)
    mixed["loss"].backward()
    assert torch.isfinite(twin.student["backbone"].blocks[0].attn.qkv.weight.grad).all()


def test_a_bf16_mixed_fit_keeps_float32_state_and_finite_losses():
    module = _module(warmup_epochs=0)
    _trainer(max_steps=2, precision="bf16-mixed").fit(module, _digits())
    state = {**module.teacher.state_dict(), **module.student.state_dict()}
    assert all(value.dtype == torch.float32 for value in state.values() if value.is_floating_point())
    assert module.dino_loss.center.dtype == torch.float32 and torch.isfinite(module.dino_loss.center).all()
    assert int(module.views_drawn) == 2
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())
