"""Channel groups, compactor folding, the FLOPs model and exact channel removal (litzoo.framework.pruning)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from user_models import UserMobileNetV2, UserRepVGG, UserResNet

from litzoo.framework.profiling import count_flops
from litzoo.framework.pruning import (
    ChannelFlops,
    apply_layer_shapes,
    find_channel_groups,
    fold_compactor,
    fold_compactors,
    insert_compactors,
    layer_shapes,
    remove_channels,
    zero_masked_rows,
)
from litzoo.framework.pruning import removal as removal_module
from litzoo.framework.reparam import FoldBeforeFusing, RepVGGBlock, fuse_model

X = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(3))


def test_residual_model_prunes_internal_convs_only():
    report = find_channel_groups(UserResNet(), X)
    assert [g.leader for g in report.groups] == ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.1.conv1"]
    assert all(g.norm == g.leader.replace("conv1", "bn1") and g.consumers == [g.leader.replace("conv1", "conv2")] for g in report.groups)
    # the residual stream: stem, every conv2 and the projection shortcut are tied together
    assert set(report.skipped) == {"stem.0", "layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"}
    assert all("tied" in reason for reason in report.skipped.values())


def test_depthwise_convs_follow_the_conv_that_feeds_them():
    report = find_channel_groups(UserMobileNetV2(), X)
    groups = {g.leader: g for g in report.groups}
    assert set(groups) == {"features.0.0", "features.1.conv.3", "features.2.conv.0", "features.3.conv.0", "features.4.0"}
    assert groups["features.2.conv.0"].followers == ["features.2.conv.3", "features.2.conv.4"]  # depthwise conv and its BN
    assert groups["features.2.conv.0"].consumers == ["features.2.conv.6"]
    assert groups["features.4.0"].consumers == ["classifier.1"]
    assert set(report.skipped) == {"features.2.conv.6", "features.3.conv.6"}  # tied by the residual addition


class DepthwiseThenPadded(nn.Module):
    """conv-BN-ReLU -> depthwise-BN-ReLU -> 3x3 conv with padding: a removed channel reaches the last
    conv as a non-zero constant (the depthwise BN's shift), which a padded 3x3 conv cannot absorb."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.dw_bn = nn.BatchNorm2d(6)
        self.out = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x):
        return self.out(F.relu(self.dw_bn(self.dw(F.relu(self.bn(self.conv(x)))))))


def test_repvgg_blocks_are_planned_on_their_deploy_form():
    """Training-time RepVGG blocks tie output to input channels through the identity branch; fused,
    each block is a plain conv, so every block is prunable, its compactor before its ReLU."""
    report = find_channel_groups(UserRepVGG(), X)
    assert [(g.leader, g.placement) for g in report.groups] == [(f"body.{i}.conv", f"body.{i}.nonlinearity") for i in range(4)]
    assert report.groups[-1].consumers == ["head"] and not report.skipped


def test_group_that_cannot_be_removed_exactly_is_left_alone():
    report = find_channel_groups(DepthwiseThenPadded(), X)
    assert report.groups == []
    assert "non-zero constant" in report.skipped["conv"] and "3x3" in report.skipped["conv"]


def test_exclude():
    report = find_channel_groups(UserResNet(), X, exclude=["layer2.*"])
    assert [g.leader for g in report.groups] == ["layer1.0.conv1", "layer1.1.conv1"]
    assert report.skipped["layer2.0.conv1"] == "excluded"


def test_fold_compactor_equals_conv_then_compactor():
    g = torch.Generator().manual_seed(0)
    kernel, bias = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    q = torch.randn(4, 5, 1, 1, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)
    k2, b2 = fold_compactor(kernel, bias, q)
    expected = F.conv2d(F.conv2d(x, kernel, bias, padding=1), q)
    assert (F.conv2d(x, k2, b2, padding=1) - expected).abs().max() < 1e-12
    # a hand-checkable case: rows of Q pick and mix output channels
    q = torch.tensor([[1.0, 0.0], [2.0, -1.0]]).reshape(2, 2, 1, 1)
    k, b = fold_compactor(torch.tensor([[[[1.0]]], [[[3.0]]]]), torch.tensor([0.5, 1.0]), q)
    assert k.flatten().tolist() == [1.0, -1.0] and b.tolist() == [0.5, 0.0]


def _compacted_with_random_masks(model: nn.Module, seed: int = 1):
    report = find_channel_groups(model, X)
    flops = ChannelFlops(model, X, report.groups)
    insert_compactors(model, {g.placement: g.channels for g in report.groups})
    g = torch.Generator().manual_seed(seed)
    kept = []
    with torch.no_grad():
        for group in report.groups:
            compactor = model.get_submodule(group.placement).compactor
            compactor.weight.add_(0.3 * torch.randn(compactor.weight.shape, generator=g))
            mask = (torch.rand(group.channels, generator=g) > 0.5).float()
            mask[0] = 1.0
            compactor.mask.copy_(mask)
            kept.append(int(mask.sum()))
    return report, flops, kept


@pytest.mark.parametrize("net", [UserResNet, UserMobileNetV2, UserRepVGG])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_removed_channels_leave_the_masked_model_unchanged(net, dtype, randomize_bn):
    model = net()
    report, flops, kept = _compacted_with_random_masks(model)
    randomize_bn(model)
    model = model.to(dtype).eval()
    x = X.to(dtype)
    zero_masked_rows(model)
    with torch.no_grad():
        masked = model(x)
    removed = fold_compactors(model)
    assert sum(map(len, removed.values())) == sum(g.channels for g in report.groups) - sum(kept)
    remove_channels(model, removed, x)
    with torch.no_grad():
        error = (model(x) - masked).abs().max().item()
    assert error < (1e-5 if dtype == torch.float32 else 1e-12)
    # the physical model has the kept channels, and the FLOPs model counts it exactly
    assert [model.get_submodule(g.leader).out_channels for g in report.groups] == kept
    assert flops(kept) == count_flops(model, x[:1])


def test_depthwise_constant_is_absorbed_not_dropped(monkeypatch, randomize_bn):
    """Negative control: without moving the constant of removed depthwise channels into the
    consumer's bias, the MobileNetV2 removal is wrong by O(1)."""
    model = UserMobileNetV2()
    _compacted_with_random_masks(model)
    randomize_bn(model)
    model.eval()
    zero_masked_rows(model)
    with torch.no_grad():
        masked = model(X)
    monkeypatch.setattr(removal_module, "_absorb_constants", lambda *args: None)
    remove_channels(model, fold_compactors(model), X)
    with torch.no_grad():
        assert (model(X) - masked).abs().max() > 1e-2


def test_pruned_shapes_rebuild_a_fresh_model(randomize_bn):
    model = UserMobileNetV2()
    _compacted_with_random_masks(model)
    randomize_bn(model)
    model.eval()
    zero_masked_rows(model)
    remove_channels(model, fold_compactors(model), X)
    fresh = UserMobileNetV2()
    apply_layer_shapes(fresh, layer_shapes(model))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(X), model(X))
    with pytest.raises(ValueError, match="does not exist"):
        apply_layer_shapes(UserResNet(), layer_shapes(model))


class PlainVGG(nn.Module):
    """Convs with biases and no BatchNorm, as a fused RepVGG is: the compactor follows the conv."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16 * 6 * 6, 3)  # flattened, not pooled: each channel owns 36 features

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


def test_convs_without_batchnorm_and_a_flattening_head():
    model = PlainVGG().eval()
    report, flops, kept = _compacted_with_random_masks(model)
    assert [(g.leader, g.norm) for g in report.groups] == [("body.0", None), ("body.2", None), ("body.4", None)]
    zero_masked_rows(model)
    with torch.no_grad():
        masked = model(X)
    remove_channels(model, fold_compactors(model), X)
    with torch.no_grad():
        assert (model(X) - masked).abs().max() < 1e-5
    assert model.head.in_features == 36 * kept[-1] and flops(kept) == count_flops(model, X[:1])


def test_fuse_model_refuses_a_block_that_carries_a_compactor():
    model = UserRepVGG().eval()
    insert_compactors(model, {"body.1.nonlinearity": 8, "body.3.nonlinearity": 16})
    assert isinstance(model.body[1].nonlinearity, FoldBeforeFusing)
    with pytest.raises(ValueError, match=r"^RepVGGBlock carries a ResRep compactor: fold it with litzoo.framework.pruning.fold_compactors"):
        fuse_model(model)
    with torch.no_grad():
        expected = model(X)
    fold_compactors(model)  # what ResRepPruning does at the end of fit: then the model is plain
    assert not any(isinstance(m, RepVGGBlock) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(fuse_model(model)(X), expected, atol=1e-5, rtol=0)


def test_the_walker_asks_the_protocol_not_an_attribute_name():
    class Adapter(nn.Module):
        """A user's module that a block's fuse() would drop, wherever it sits in the block."""

        def fold_before_fusing(self) -> str:
            return "a user adapter: merge it first"

        def forward(self, x):
            return x

    block = RepVGGBlock(4, 4)
    block.branch_1x1.extra = Adapter()
    with pytest.raises(ValueError, match="RepVGGBlock carries a user adapter: merge it first before fusing the model"):
        fuse_model(nn.Sequential(block))
    assert isinstance(fuse_model(nn.Sequential(RepVGGBlock(4, 4)))[0], nn.Sequential)  # nothing carried: fused


# ----------------------------------------------------------------------------------------------- issue 18
# channel shuffles and splits, dense concatenations: the CNN patterns of public CIFAR collections


def _shuffle(x, groups):
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class CatInputThenShuffle(nn.Module):
    """A conv's output concatenated with the model's input, shuffled, and flattened into a linear layer:
    Torch-Pruning's index maps through the shuffle grow without end (its own search ran out of memory)."""

    def __init__(self, head: str = "flatten"):
        super().__init__()
        self.head = head
        self.conv0, self.bn0 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 64, 4) if head == "flatten" else nn.Linear(8, 4)

    def forward(self, x):
        x = _shuffle(torch.cat([F.relu(self.bn0(self.conv0(x))), x], 1), 2)
        if self.head == "flatten":
            return self.fc(x.flatten(1))
        return self.fc(F.relu(self.bn1(self.conv1(x))).mean((2, 3)))


@pytest.mark.parametrize("head", ["flatten", "conv"])
def test_channel_shuffles_give_groups_or_a_reason_in_bounded_time(head):
    """Before: the search never returned ("flatten") or crashed on an index past the consumer's channels
    (``INDICES element is out of DATA bounds``, "conv"); now the shuffled conv is left alone with the reason."""
    report = find_channel_groups(CatInputThenShuffle(head), torch.randn(2, 4, 8, 8))
    assert "conv0" in report.skipped and "shuffle or reshape it cannot follow" in report.skipped["conv0"]
    if head == "conv":
        assert [g.leader for g in report.groups] == ["conv1"]


def test_the_coupled_channels_are_searched_once_per_coupled_set(monkeypatch):
    """UserResNet's two residual streams (stem and layer1's conv2s; layer2's conv2s and shortcut) are two coupled
    sets, each searched once: 4 internal convs + 2 searches, the other four tied convs get the reason from them
    (before: one Torch-Pruning search per conv, 10)."""
    from litzoo.framework.pruning import channel_groups

    searched = []
    original = channel_groups._group_members
    monkeypatch.setattr(channel_groups, "_group_members", lambda graph, names, conv, idxs, *rest: searched.append(conv) or original(graph, names, conv, idxs, *rest))
    report = find_channel_groups(UserResNet(), X)
    assert len(searched) == 6 and len(report.groups) == 4 and len(report.skipped) == 6


def test_a_model_torch_pruning_cannot_trace_is_refused_in_one_line(monkeypatch):
    import torch_pruning as tp

    from litzoo.framework.errors import LitzooError

    def fail(*args, **kwargs):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fail)
    with pytest.raises(LitzooError, match=r"UserResNet: Torch-Pruning's dependency tracing failed \(ZeroDivisionError") as refused:
        find_channel_groups(UserResNet(), X)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("net", ["densenet", "shufflenetv2", "shufflenetv2_chunk", "pnasnet", "grouped_se"])
def test_flops_model_equals_flop_counter_on_the_pruned_network(net, randomize_bn):
    """DenseNet convs read concatenations of several groups (before: one input group per conv, 0.5000 predicted
    against 0.5027 measured); ChannelFlops equals torch.utils.flop_counter on the physically pruned model."""
    from user_models import FOREIGN_NETS

    from litzoo.framework.pruning import compactors_in, prune_compacted

    x = torch.randn(2, 3, 8, 8)
    for seed in range(3):
        model = randomize_bn(FOREIGN_NETS[net](), seed).eval()
        report = find_channel_groups(model, x)
        flops = ChannelFlops(model, x, report.groups)
        insert_compactors(model, {g.placement: g.channels for g in report.groups})
        generator = torch.Generator().manual_seed(seed)
        kept = []
        for group in report.groups:
            mask = model.get_submodule(group.placement).compactor.mask
            keep = int(torch.randint(1, group.channels + 1, (1,), generator=generator))
            mask[torch.randperm(group.channels, generator=generator)[keep:]] = 0.0
            kept.append(keep)
        assert compactors_in(model.state_dict())
        zero_masked_rows(model)
        with torch.no_grad():
            masked = model(x)
        prune_compacted(model, x)
        with torch.no_grad():
            assert (model(x) - masked).abs().max() < 1e-5
        assert flops(kept) == pytest.approx(count_flops(model, x[:1]), rel=1e-12)


# ----------------------------------------------------------------------------- prune_residual: tied convs, grouped units
def test_prune_residual_puts_tied_convs_in_one_group_and_grouped_channels_in_units():
    from user_models import UserGroupedSENet

    plan = {g.leader: g for g in find_channel_groups(UserResNet(), X, prune_residual=True).groups}
    assert set(plan) == {"stem.0", "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1"}
    assert {t.conv for t in plan["stem.0"].tied} == {"layer1.0.conv2", "layer1.1.conv2"}  # stage 1's residual stream
    assert {t.conv for t in plan["layer2.0.conv2"].tied} == {"layer2.1.conv2", "layer2.0.shortcut.0"}
    assert set(plan["layer2.0.conv2"].consumers) == {"layer2.1.conv1", "head"}
    assert all(t.rows == list(range(16)) for t in plan["layer2.0.conv2"].tied)

    report = find_channel_groups(UserGroupedSENet(), torch.randn(2, 3, 8, 8), prune_residual=True)
    plan = {g.leader: g for g in report.groups}
    assert not report.skipped and len(plan) == 11
    # conv1 feeds a grouped conv (groups=2, 4 channels a group): channel j goes with channel j + 4
    assert plan["block1.conv1"].units == [[0, 4], [1, 5], [2, 6], [3, 7]] and plan["block1.conv1"].unit_size == 2
    # the grouped conv itself is tied to the squeeze-excitation's gate (their product), in the same units
    assert [t.conv for t in plan["block1.conv2"].tied] == ["block1.se.fc2"] and plan["block1.conv2"].groups == 2
    assert plan["block1.conv2"].units == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # the depthwise block: the expansion and the SE gate are one group, the depthwise conv follows
    assert [t.conv for t in plan["block3.expand.0"].tied] == ["block3.se.fc2"]
    assert plan["block3.expand.0"].followers == ["block3.depthwise.0", "block3.depthwise.1"]
    # off, the paper's behaviour: every one of these is left alone (grouped convs are not even candidates)
    off = find_channel_groups(UserGroupedSENet(), torch.randn(2, 3, 8, 8))
    assert {"stem.0", "block1.conv1", "block3.expand.0"} <= set(off.skipped) and "block1.conv2" not in {g.leader for g in off.groups}


def test_a_tied_conv_that_is_excluded_leaves_its_whole_group_alone():
    report = find_channel_groups(UserResNet(), X, exclude=["layer1.1.conv2"], prune_residual=True)
    assert "stem.0" not in {g.leader for g in report.groups}
    assert report.skipped["stem.0"] == "tied to layer1.1.conv2, which cannot be pruned: excluded"


def test_grouped_compactor_folds_block_by_block():
    g = torch.Generator().manual_seed(0)
    kernel = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)  # a conv with 3 groups of 2 channels
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    q = torch.randn(6, 2, 1, 1, generator=g, dtype=torch.float64)  # a block-diagonal compactor, 3 blocks
    x = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    k2, b2 = fold_compactor(kernel, bias, q, groups=3)
    expected = F.conv2d(F.conv2d(x, kernel, bias, padding=1, groups=3), q, groups=3)
    assert (F.conv2d(x, k2, b2, padding=1, groups=3) - expected).abs().max() < 1e-12
    # by hand: one block [[1, 2], [0, 1]] on kernel rows (1, 10) gives rows (21, 10)
    q = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)
    k, b = fold_compactor(torch.tensor([1.0, 10.0]).reshape(2, 1, 1, 1), torch.tensor([1.0, 0.0]), q, groups=1)
    assert k.flatten().tolist() == [21.0, 10.0] and b.tolist() == [1.0, 0.0]
    from litzoo.framework.pruning import Compactor

    compactor = Compactor(6, groups=3)
    assert compactor.weight.shape == (6, 2, 1, 1) and torch.equal(compactor(x.float()), x.float())  # identity at start
    with pytest.raises(ValueError, match="groups must be a positive divisor"):
        Compactor(6, groups=4)


@pytest.mark.parametrize("net", ["resnet", "mobilenetv2", "grouped_se"])
def test_prune_residual_removal_is_exact_smaller_and_counted_by_the_flops_model(net, randomize_bn):
    """Random unit masks on every group (tied convs masked together): the pruned model equals the masked one,
    the tied convs are physically smaller, and ChannelFlops equals torch.utils.flop_counter on it."""
    from user_models import NETS

    from litzoo.framework.pruning import compactors_in, prune_compacted

    for seed in range(2):
        model = randomize_bn(NETS[net](), seed).double().eval()
        x = X.double()
        report = find_channel_groups(model, x, prune_residual=True)
        assert any(g.tied for g in report.groups)
        flops = ChannelFlops(model, x, report.groups)
        insert_compactors(model, {p.placement: (g.channels, p.groups) for g in report.groups for p in g.producers})
        generator = torch.Generator().manual_seed(seed)
        kept, widths = [], {}
        with torch.no_grad():
            for group in report.groups:
                keep = int(torch.randint(1, group.num_units + 1, (1,), generator=generator))
                gone = group.unit_channels(torch.randperm(group.num_units, generator=generator)[keep:].tolist())
                for producer in group.producers:
                    compactor = model.get_submodule(producer.placement).compactor
                    compactor.weight.add_(0.3 * torch.randn(compactor.weight.shape, generator=generator, dtype=torch.float64))
                    compactor.mask[[producer.rows[c] for c in gone]] = 0.0
                    widths[producer.conv] = group.channels - len(gone)
                kept.append(group.channels - len(gone))
        state = compactors_in(model.state_dict())
        assert all(state[p.placement] == (g.channels if p.groups == 1 else (g.channels, p.groups)) for g in report.groups for p in g.producers)
        zero_masked_rows(model)
        with torch.no_grad():
            masked = model(x)
        prune_compacted(model, x)
        with torch.no_grad():
            assert (model(x) - masked).abs().max() < 1e-10
        assert {name: model.get_submodule(name).out_channels for name in widths} == widths  # tied convs cut alike
        assert flops(kept) == pytest.approx(count_flops(model, x[:1]), rel=1e-12)


def test_tied_convs_with_different_removed_channels_are_refused():
    model = UserResNet().eval()
    with pytest.raises(ValueError, match=r"layer1.0.conv2 is tied to stem.0 .* are not those of stem.0"):
        remove_channels(model, {"stem.0": [1, 2], "layer1.0.conv2": [1, 3], "layer1.1.conv2": [1, 2]}, X)
