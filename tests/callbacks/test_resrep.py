"""ResRepPruning on models litzoo did not write: gradient resetting, mask updates, exact removal,
the FLOPs target, resuming, evaluation and loading of the pruned model."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from user_models import UserClassifier, loader

from litzoo.callbacks.resrep import ResRepPruning
from litzoo.framework.errors import LitzooError
from litzoo.framework.export import load_lightning_module
from litzoo.framework.profiling import count_flops
from litzoo.framework.pruning import compacted_layers
from litzoo.framework.reparam import fuse_model

#: the input shape ResRep traces in setup, where loaders passed straight to trainer.fit are not built yet
INPUT = torch.zeros(2, 1, 12, 12)


def trainer(tmp_path, callback, **kwargs) -> L.Trainer:
    options = dict(max_epochs=6, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, deterministic=True)
    options.update(kwargs)
    return L.Trainer(callbacks=[callback], **options)


def fast_resrep(**kwargs) -> ResRepPruning:
    """The paper's algorithm on a schedule that fits a few tiny epochs (3 steps per epoch)."""
    options = dict(flops_target=0.5, lasso_strength=1e-2, mask_interval=1, warmup_epochs=1, granularity=8)
    options.update(kwargs)
    return ResRepPruning(**options)


def test_argument_checks():
    for bad in (dict(flops_target=0), dict(flops_target=1.0), dict(mask_interval=0), dict(granularity=0), dict(min_channels=0), dict(compactor_momentum=1.0), dict(compactor_lr=0.0)):
        with pytest.raises(ValueError):
            ResRepPruning(**bad)


def test_unreachable_target_is_refused():
    module = UserClassifier("resnet")
    with pytest.raises(LitzooError, match="cannot be reached"):
        ResRepPruning(flops_target=0.05).attach(module, torch.randn(2, 1, 12, 12))


def test_mask_update_follows_the_official_rule():
    """Global ranking by compactor row norm, at most ``granularity`` more per update while above the
    target, at least ``min_channels`` per layer, stop as soon as the FLOPs target is met."""
    module = UserClassifier("resnet")
    callback = ResRepPruning(flops_target=0.5, granularity=3, min_channels=2)
    callback.attach(module, torch.randn(2, 1, 12, 12))
    compactors = list(callback.compactors(module).values())  # 8, 8, 16, 16 channels
    norms = torch.linspace(2.0, 1.0, 48)[torch.randperm(48, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        start = 0
        for c in compactors:
            c.weight.copy_(torch.diag(norms[start : start + c.channels]).reshape(c.channels, c.channels, 1, 1))
            start += c.channels
    callback.update_masks(module)
    masked = [(i, j) for i, c in enumerate(compactors) for j in (c.mask == 0).nonzero().flatten().tolist()]
    lowest = sorted(((i, j) for i, c in enumerate(compactors) for j in range(c.channels)), key=lambda p: compactors[p[0]].row_norms()[p[1]].item())
    assert masked == sorted(lowest[:3])  # the three globally smallest rows, nothing more
    for _ in range(40):
        callback.update_masks(module)
    kept = callback.kept_channels(module)
    assert callback.flops_ratio(module) <= 0.5 and min(kept) >= 2
    # one channel fewer masked would be above the target: the update stops at the target
    for layer in range(len(kept)):
        more = np.array(kept)
        more[layer] += 1
        assert callback.flops.ratio(more) > 0.5 or kept[layer] == compactors[layer].channels


def test_gradient_resetting_and_compactor_sgd_by_hand(tmp_path):
    """One step: masked rows get only the lasso gradient, the others objective + lasso; the
    compactor moves by ``lr * grad`` (first momentum step), outside the user's optimizer."""
    module = UserClassifier("resnet", weight_decay=0.1)
    callback = ResRepPruning(lasso_strength=0.3, warmup_epochs=100)
    trainer_ = trainer(tmp_path, callback, max_steps=1, enable_checkpointing=False)
    trainer_.strategy.connect(module)
    callback.attach(module, torch.randn(2, 1, 12, 12))
    compactor = callback.compactors(module)["net.layer1.0.bn1"]
    with torch.no_grad():
        compactor.weight.add_(0.1 * torch.randn(compactor.weight.shape))
        compactor.mask[[1, 5]] = 0.0
    before = compactor.weight.detach().clone()
    seen = {}

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen["grad"] = compactor.weight.grad.detach().clone()
            seen["in_optimizer"] = any(p is compactor.weight for g in optimizer.param_groups for p in g["params"])
            seen["lr"] = optimizer.param_groups[0]["lr"]

    trainer_ = trainer(tmp_path, callback, max_steps=1, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer_.callbacks.insert(0, Spy())
    callback.prune_at_end = False
    trainer_.fit(module, loader())
    norms = before.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    mask = torch.ones(8)
    mask[[1, 5]] = 0.0
    expected = before - seen["lr"] * (seen["grad"] * mask.view(-1, 1, 1, 1) + 0.3 * before / norms)
    assert not seen["in_optimizer"]
    assert (compactor.weight.detach() - expected).abs().max() < 1e-7
    assert compactor.weight.grad is None


def test_loaders_passed_straight_to_fit_are_refused_with_what_to_pass(tmp_path):
    """ResRep traces the model in setup; Lightning's public API has no loader there when the loaders go
    straight to trainer.fit: one clear error naming the routes that work (a DataModule, example_input_array)."""
    with pytest.raises(LitzooError, match=r"ResRepPruning.*datamodule=.*example_input_array"):
        trainer(tmp_path, fast_resrep(), max_steps=1).fit(UserClassifier("resnet"), loader())


@pytest.mark.parametrize("net", ["resnet", "mobilenetv2", "repvgg"])
def test_fit_meets_the_flops_target_and_removes_the_channels(tmp_path, net):
    module = UserClassifier(net)
    module.example_input_array = INPUT  # ResRep traces the model in setup, before the loaders passed to fit are built
    original_flops = count_flops(fuse_model(UserClassifier(net).net), torch.randn(1, 1, 12, 12))  # deploy form
    callback = fast_resrep()
    trainer(tmp_path, callback, enable_checkpointing=False).fit(module, loader(), loader(seed=1))
    assert not compacted_layers(module) and callback.pruned
    r = callback.report
    assert r["removal_error"] < 1e-5
    assert r["flops_before"] == original_flops
    assert count_flops(module.net, torch.randn(1, 1, 12, 12)) == r["flops_after"] <= 0.5 * original_flops
    assert r["params_after"] < r["params_before"]
    kept = [module.get_submodule(group.leader).out_channels for group in callback.groups]  # physically fewer channels
    assert all(k <= g.channels for k, g in zip(kept, callback.groups)) and sum(kept) < sum(g.channels for g in callback.groups)


@pytest.mark.parametrize("net", ["resnet", "mobilenetv2", "grouped_se"])
def test_prune_residual_prunes_tied_and_grouped_channels_to_the_target(tmp_path, net):
    """A residual network, an inverted residual network, and one with grouped convs, squeeze-excitation and a
    depthwise block: with ``prune_residual`` the tied convs lose channels too, all alike, and the removal is exact."""
    module = UserClassifier(net)
    module.example_input_array = INPUT
    callback = fast_resrep(prune_residual=True, deploy_filename=None)
    trainer(tmp_path, callback, enable_checkpointing=False).fit(module, loader(), loader(seed=1))
    r = callback.report
    assert callback.pruned and r["removal_error"] < 1e-5 and r["flops_ratio"] <= 0.5
    assert count_flops(module.net, torch.randn(1, 1, 12, 12)) == r["flops_after"]
    tied = [g for g in callback.groups if g.tied]
    widths = [[module.get_submodule(p.conv).out_channels for p in g.producers] for g in tied]
    assert tied and all(len(set(w)) == 1 for w in widths)  # every conv of a tied set keeps the same channels
    assert any(w[0] < g.channels for w, g in zip(widths, tied, strict=True))  # and tied channels were removed
    for group in callback.groups:  # grouped convs lose whole units: still divisible into their groups
        kept = module.get_submodule(group.leader).out_channels
        assert kept % group.unit_size == 0 and kept >= group.unit_size


def test_tied_groups_follow_the_group_lasso_and_are_masked_in_units(tmp_path):
    """One step by hand on a tied set (the stem and the two conv2 of stage 1 of UserResNet): each row gets
    ``lasso * Q_row / rms`` with ``rms`` the root mean square of the row norms of its channel in the three
    compactors; then one mask update masks the lowest-rms channel in all three."""
    module = UserClassifier("resnet")
    callback = ResRepPruning(lasso_strength=0.3, warmup_epochs=100, prune_residual=True, prune_at_end=False)
    callback.attach(module, torch.randn(2, 1, 12, 12))
    group = next(g for g in callback.groups if g.leader == "net.stem.0")
    compactors = [callback.all_compactors(module)[p.placement] for p in group.producers]
    assert len(compactors) == 3
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for c in compactors:
            c.weight.add_(0.2 * torch.randn(c.weight.shape, generator=generator))
        compactors[1].weight[5].mul_(0.1)  # channel 5 is weakest in one compactor only
        for c in compactors:
            c.mask[[2]] = 0.0
    before = [c.weight.detach().clone() for c in compactors]
    seen = {}

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen["grads"] = [c.weight.grad.detach().clone() for c in compactors]
            seen["lr"] = optimizer.param_groups[0]["lr"]

    trainer_ = trainer(tmp_path, callback, max_steps=1, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer_.callbacks.insert(0, Spy())
    trainer_.fit(module, loader())
    squares = sum(w.flatten(1).square().sum(1) for w in before)
    rms = (squares / 3).sqrt().view(-1, 1, 1, 1)
    mask = torch.ones(8)
    mask[2] = 0.0
    for c, w, grad in zip(compactors, before, seen["grads"], strict=True):
        expected = w - seen["lr"] * (grad * mask.view(-1, 1, 1, 1) + 0.3 * w / rms)
        assert (c.weight.detach() - expected).abs().max() < 1e-7
    # the mask update ranks the tied channels by that rms: with room for one channel, channel 5 goes, in all three
    # every other compactor row has norm 1; channel 5 of the tied set has rows of norm 1, 0.5, 1 (rms 0.866):
    # the lowest of all (a sum of norms, 2.5, would rank it last)
    callback.granularity = 1
    with torch.no_grad():
        for c in [*callback.all_compactors(module).values()]:
            c.weight.copy_(torch.eye(c.channels).reshape(c.weight.shape))
            c.mask.fill_(1.0)
        compactors[1].weight[5].mul_(0.5)
    norms = callback.unit_norms(module)[callback.groups.index(group)]
    assert norms[5].item() == pytest.approx((2.25 / 3) ** 0.5) and norms[5] == torch.cat(callback.unit_norms(module)).min()
    callback.update_masks(module)
    assert all(c.mask.tolist() == [0.0 if i == 5 else 1.0 for i in range(8)] for c in compactors)
    assert all(c.num_kept == c.channels for g in callback.groups if g is not group for c in [callback.compactors(module)[g.placement]])


def test_resume_continues_the_schedule_exactly(tmp_path):
    def run(max_epochs, ckpt_path=None, root="a"):
        L.seed_everything(0)
        module = UserClassifier("resnet", weight_decay=1e-3)
        module.example_input_array = INPUT
        callback = fast_resrep(prune_at_end=False)
        t = trainer(tmp_path / root, callback, max_epochs=max_epochs, num_sanity_val_steps=0)
        t.fit(module, loader(), ckpt_path=ckpt_path)
        return module, callback, t

    straight, straight_cb, _ = run(6)
    _, _, half = run(3, root="b")
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed, resumed_cb, _ = run(6, ckpt_path=tmp_path / "half.ckpt", root="c")
    assert resumed_cb.mask_updates == straight_cb.mask_updates > 0
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and any(k.endswith("compactor.mask") for k in a)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_evaluation_prunes_a_compactor_checkpoint_and_the_pruned_file_loads(tmp_path):
    module = UserClassifier("mobilenetv2")
    module.example_input_array = INPUT
    callback = fast_resrep()
    t = trainer(tmp_path, callback, num_sanity_val_steps=0)
    t.fit(module, loader(), loader(seed=1))
    module.eval()
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        expected = module(x)
    # the last checkpoint holds the compactor model: testing it runs on the pruned model
    last = t.checkpoint_callback.last_model_path or t.checkpoint_callback.best_model_path
    fresh, evaluator = UserClassifier("mobilenetv2"), ResRepPruning()
    L.Trainer(callbacks=[evaluator], logger=False, enable_progress_bar=False).test(fresh, loader(seed=2), ckpt_path=last)
    assert evaluator.pruned and not compacted_layers(fresh)
    with torch.no_grad():
        assert (fresh.eval()(x) - expected).abs().max() < 1e-5
    # the pruned checkpoint records its layer shapes: it loads without the callback
    assert callback.deploy_path is not None and callback.deploy_path.exists()
    loaded = UserClassifier("mobilenetv2")
    checkpoint = torch.load(callback.deploy_path, weights_only=True)
    from litzoo.framework.pruning import apply_layer_shapes

    apply_layer_shapes(loaded, checkpoint["litzoo"]["pruned_shapes"])
    loaded.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), expected)


@pytest.mark.parametrize("net", ["resnet", "repvgg"])
def test_litzoo_loader_reads_the_pruned_checkpoint(tmp_path, net):
    module = UserClassifier(net)
    module.example_input_array = INPUT
    module.hparams["_class_path"] = "user_models.UserClassifier"  # what `litzoo fit` records
    callback = fast_resrep()
    trainer(tmp_path, callback, num_sanity_val_steps=0).fit(module, loader(), loader(seed=1))
    loaded, _ = load_lightning_module(callback.deploy_path)
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x), module.eval()(x))


DDP_SCRIPT = """
import sys, torch, lightning as L
sys.path.insert(0, {tests!r})
from user_models import UserClassifier, loader
from litzoo.callbacks.resrep import ResRepPruning

class SaveRankWeights(L.Callback):
    def on_fit_end(self, trainer, pl_module):  # runs after ResRepPruning's: the pruned weights
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "world_size": trainer.world_size, "updates": resrep.mask_updates}}, f"{out}/rank{{trainer.global_rank}}.pt")

L.seed_everything(0)
resrep = ResRepPruning(flops_target=0.5, lasso_strength=1e-2, mask_interval=1, warmup_epochs=0, granularity=8, prune_residual={prune_residual})
trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[resrep, SaveRankWeights()],
                    default_root_dir="{out}")  # where the pruned deploy checkpoint goes, not the repository
# each rank sees different batches: the masks must still be decided identically (from synchronised gradients)
module = UserClassifier({net!r})
module.example_input_array = torch.zeros(2, 1, 12, 12)  # traced in setup, before the loaders passed to fit are built
trainer.fit(module, loader(n=96), loader(seed=1))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("net", "prune_residual"), [("mobilenetv2", False), ("grouped_se", True)])
def test_two_process_ddp_prunes_identically_on_both_ranks(tmp_path, net, prune_residual):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    tests = str(Path(__file__).parents[1])
    script = tmp_path / "ddp_resrep.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path, tests=tests, net=net, prune_residual=prune_residual)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["updates"] > 0 for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and not any("compactor" in k for k in a)  # pruned on both ranks
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_export_of_a_compactor_checkpoint_prunes_before_fusing(tmp_path):
    """RepVGG + ResRep: fusing first would drop the compactors; export folds them, fuses, prunes."""
    from litzoo.framework.export import export_checkpoint

    module = UserClassifier("repvgg")
    module.example_input_array = INPUT
    module.hparams["_class_path"] = "user_models.UserClassifier"
    callback = fast_resrep(prune_at_end=False)
    t = trainer(tmp_path, callback, num_sanity_val_steps=0)
    t.fit(module, loader(), loader(seed=1))
    with pytest.raises(ValueError, match="compactor"):
        fuse_model(module)
    output, error = export_checkpoint(t.checkpoint_callback.best_model_path, "onnx", tmp_path / "pruned.onnx", input_shape=(1, 12, 12))
    assert output.exists() and error < 1e-4
    import onnx

    graph = onnx.load(str(output)).graph
    widths = [init.dims[0] for init in graph.initializer if len(init.dims) == 4]
    assert sum(widths) < 8 + 8 + 16 + 16  # fewer output channels than the unpruned blocks


# ----------------------------------------------------------------------------------------------- issue 18


def official_resrep_mask_model(origin_deps, flops_func, flops_target, granularity, num_at_least, metric, cur_deps):
    """DingXiaoH/ResRep ``rr/resrep_util.py::resrep_mask_model``, transcribed by hand (without pacesetters):
    returns ``{layer: [masked channels]}``. ``metric`` maps ``(layer, channel)`` to the row norm."""
    origin_flops = flops_func(origin_deps)
    sorted_metric = sorted(metric, key=metric.get)
    cur_deactivated = int(np.sum(np.asarray(origin_deps) - np.asarray(cur_deps)))
    next_deactivated_max = cur_deactivated + granularity if flops_func(cur_deps) > flops_target * origin_flops else 9999999
    attempt = np.array(origin_deps)
    i = 0
    skip = []
    while True:
        if flops_func(attempt) <= flops_target * origin_flops:
            break
        layer = sorted_metric[i][0]
        if attempt[layer] <= num_at_least:
            skip.append(i)
            i += 1
            continue
        attempt[layer] -= 1
        i += 1
        if i >= next_deactivated_max:
            break
    masked: dict[int, list[int]] = {}
    for k in range(i):
        if k not in skip:
            masked.setdefault(sorted_metric[k][0], []).append(sorted_metric[k][1])
    return masked


def _set_row_norms(callback, module, norms):
    start = 0
    with torch.no_grad():
        for c in callback.compactors(module).values():
            c.weight.copy_(torch.diag(norms[start : start + c.channels]).reshape(c.channels, c.channels, 1, 1))
            start += c.channels


@pytest.mark.parametrize("seed", range(4))
def test_mask_update_counts_skipped_candidates_toward_the_limit_as_the_official_code(seed):
    """Candidates skipped because their layer is at min_channels count toward the per-update limit (official
    ``i``); in the first case layer 0's rows are the smallest: it stops at min_channels after 2, its 6 other rows
    are skipped, and the official update ends after one more channel (3 in all, not 8)."""
    module = UserClassifier("resnet")
    callback = ResRepPruning(flops_target=0.62, granularity=8, min_channels=6)
    callback.attach(module, torch.randn(2, 1, 12, 12))
    compactors = list(callback.compactors(module).values())  # 8, 8, 16, 16 channels
    generator = torch.Generator().manual_seed(seed)
    norms = torch.rand(48, generator=generator) + 1.0
    if seed == 0:
        norms[:8] = torch.linspace(0.1, 0.2, 8)  # layer 0 first in the ranking
    _set_row_norms(callback, module, norms)
    origin = [c.channels for c in compactors]
    for _update in range(3):
        metric = {(i, j): float(c.row_norms()[j]) for i, c in enumerate(compactors) for j in range(c.channels)}
        expected = official_resrep_mask_model(origin, callback.flops, 0.62, 8, 6, metric, callback.kept_channels(module))
        callback.update_masks(module)
        masked = {i: sorted((c.mask == 0).nonzero().flatten().tolist()) for i, c in enumerate(compactors)}
        assert {i: v for i, v in masked.items() if v} == {i: sorted(v) for i, v in expected.items()}
    if seed == 0:
        first = ResRepPruning(flops_target=0.62, granularity=8, min_channels=6)
        fresh = UserClassifier("resnet")
        first.attach(fresh, torch.randn(2, 1, 12, 12))
        _set_row_norms(first, fresh, norms)
        first.update_masks(fresh)
        assert sum(first.kept_channels(fresh)) == 48 - 3


def test_flops_target_is_saved_and_a_changed_target_warns_at_resume():
    callback = ResRepPruning(flops_target=0.5)
    state = callback.state_dict()
    assert state["flops_target"] == 0.5
    with pytest.warns(UserWarning, match=r"flops_target 0.5.*this run uses 0.3"):
        ResRepPruning(flops_target=0.3).load_state_dict(state)


def test_a_refused_model_is_left_unchanged_and_refused_again(tmp_path):
    """Every check runs before the compactors go in: an unreachable target leaves the model as it was,
    and fitting it again gives the same one-line refusal (not an AttributeError)."""
    module = UserClassifier("resnet")
    module.example_input_array = INPUT
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for _ in range(2):
        with pytest.raises(LitzooError, match="cannot be reached") as refused:
            trainer(tmp_path, ResRepPruning(flops_target=0.05), max_steps=1).fit(module, loader())
        assert "\n" not in str(refused.value)
        assert not compacted_layers(module)
        assert module.state_dict().keys() == before.keys()
        assert all(torch.equal(module.state_dict()[k], v) for k, v in before.items())


def test_official_style_repvgg_blocks_are_planned_on_their_deploy_form(tmp_path):
    """Another repository's RepVGG block (rbr_dense / rbr_1x1 / rbr_identity, switch_to_deploy() builds
    rbr_reparam, its own ReLU): its compactor goes before the block's nonlinearity, as for litzoo's blocks."""
    from user_models import FOREIGN_INPUT, ForeignClassifier, foreign_loader

    module = ForeignClassifier("official_repvgg")
    callback = fast_resrep(flops_target=0.6)
    trainer(tmp_path, callback, max_epochs=4, enable_checkpointing=False).fit(module, foreign_loader(), foreign_loader(seed=1))
    placements = {g.leader: g.placement for g in callback.groups}
    assert placements["net.stage.0.rbr_reparam"] == "net.stage.0.nonlinearity"
    assert placements["net.stage.2.rbr_reparam"] == "net.stage.2.nonlinearity"
    assert callback.pruned and callback.report["removal_error"] < 1e-5
    assert not hasattr(module.net.stage[0], "rbr_dense")  # deployed by its own switch_to_deploy()
    widths = [module.net.stage[i].rbr_reparam.out_channels for i in range(3)]
    assert sum(widths) < 8 + 16 + 16
    assert count_flops(module.net, FOREIGN_INPUT[:1]) == callback.report["flops_after"] <= 0.6 * callback.report["flops_before"]


def test_a_block_without_a_nonlinearity_submodule_is_named_for_what_it_lacks():
    from torch import nn
    from user_models import OfficialStyleRepVGGBlock

    class ActBlock(OfficialStyleRepVGGBlock):  # the activation under another name (timm writes ``act``)
        def __init__(self, cin, cout, stride=1):
            super().__init__(cin, cout, stride)
            self.act = self.nonlinearity
            del self.nonlinearity

        def forward(self, x):
            self.nonlinearity = self.act
            try:
                return super().forward(x)
            finally:
                del self.nonlinearity

    net = nn.Sequential(ActBlock(3, 8), ActBlock(8, 8), nn.Conv2d(8, 4, 1), nn.Flatten(2))
    from litzoo.framework.pruning import find_channel_groups

    report = find_channel_groups(net, torch.randn(2, 3, 8, 8))
    assert "has no nonlinearity submodule" in report.skipped["0.rbr_reparam"]


@pytest.mark.parametrize("net", ["resnet", "grouped_se"])
def test_round_to_keeps_multiples_and_removes_each_layers_lowest_ranked_channels(net):
    """``round_to=4``: a layer's channels go a block at a time, its lowest-ranked ones, so every kept count is a
    multiple of 4 (and of the layer's unit); without it the same norms leave counts that are not."""

    def masked_plan(round_to):
        module = UserClassifier(net)
        callback = ResRepPruning(flops_target=0.5, granularity=10**6, prune_residual=True, round_to=round_to)
        callback.attach(module, torch.randn(2, 1, 12, 12))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # every unit's rows scaled by its own factor: a random ranking
            for group in callback.groups:
                factors = torch.rand(group.num_units, generator=generator) + 0.5
                for unit in range(group.num_units):
                    for producer in group.producers:
                        compactor = callback.all_compactors(module)[producer.placement]
                        rows = [producer.rows[c] for c in group.unit_channels([unit])]
                        compactor.weight[rows] *= factors[unit]
        callback.update_masks(module)
        return module, callback

    module, callback = masked_plan(4)
    assert callback.flops_ratio(module) <= 0.5
    kept = callback.kept_channels(module)
    assert all(k % 4 == 0 and k % g.unit_size == 0 for k, g in zip(kept, callback.groups, strict=True) if k < g.channels)
    for group, norms in zip(callback.groups, callback.unit_norms(module), strict=True):
        mask = callback.compactors(module)[group.placement].mask
        gone = sorted({u for u in range(group.num_units) if mask[group.unit_channels([u])[0]] == 0})
        assert gone == sorted(norms.argsort()[: len(gone)].tolist())  # the layer's lowest-ranked units
    plain_module, plain = masked_plan(None)
    assert any(k % 4 for k in plain.kept_channels(plain_module))


def test_round_to_is_checked():
    with pytest.raises(ValueError, match="round_to must be a positive number"):
        ResRepPruning(round_to=0)
