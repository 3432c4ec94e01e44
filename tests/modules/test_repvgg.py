"""RepVGG: the paper's architectures, the deploy conversion, the LightningModule."""

from __future__ import annotations

import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch import nn

from litzoo.framework.profiling import count_flops, count_parameters
from litzoo.framework.reparam import RepVGGBlock, fuse_model
from litzoo.modules.repvgg import G4_MAP, RepVGG, RepVGGClassifier, variant_config

# Deploy-time parameters in millions, RepVGG paper Table 4 (ImageNet, 1000 classes).
PAPER_PARAMS_M = {"A0": 8.30, "A1": 12.78, "A2": 25.49, "B0": 14.33}


@pytest.mark.parametrize("variant", sorted(PAPER_PARAMS_M))
def test_deploy_parameter_count_matches_paper(variant):
    deploy = fuse_model(RepVGG.from_variant(variant).eval())
    assert int(count_parameters(deploy) / 1e4) / 100 == PAPER_PARAMS_M[variant]


def test_a0_multiply_adds_match_paper():
    # Table 4: RepVGG-A0 has 1.4 B theoretical FLOPs (multiply-adds) at 224x224
    deploy = fuse_model(RepVGG.from_variant("A0").eval())
    macs = count_flops(deploy, torch.zeros(1, 3, 224, 224)) / 2
    assert 1.35e9 < macs < 1.45e9


def test_structure_of_a0():
    model = RepVGG.from_variant("A0")
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert len(blocks) == 1 + 2 + 4 + 14 + 1
    assert [len(s) for s in (model.stage1, model.stage2, model.stage3, model.stage4)] == [2, 4, 14, 1]
    assert model.stage0.out_channels == 48 and model.stage4[0].out_channels == 1280
    # every stage opens with stride 2; identity branches exactly where in == out and stride 1
    for stage in (model.stage1, model.stage2, model.stage3, model.stage4):
        assert stage[0].stride == 2 and stage[0].branch_identity is None
        assert all(b.branch_identity is not None for b in stage[1:])


def test_groups_map_applies_to_even_layers():
    model = RepVGG(num_blocks=[2, 2, 2, 1], width_multiplier=[0.25, 0.25, 0.25, 0.25], override_groups_map=G4_MAP)
    layers = [b for stage in (model.stage1, model.stage2, model.stage3, model.stage4) for b in stage]
    assert [b.groups for b in layers] == [1, 4, 1, 4, 1, 4, 1]
    assert model.stage0.groups == 1


def test_variant_names_and_errors():
    assert variant_config("RepVGG-B1g2")["override_groups_map"][26] == 2
    with pytest.raises(ValueError, match="unknown RepVGG variant"):
        variant_config("C9")
    with pytest.raises(ValueError, match="num_blocks"):
        RepVGG(num_blocks=[1, 1, 1])
    with pytest.raises(ValueError, match="layer 0"):
        RepVGG(num_blocks=[1, 1, 1, 1], override_groups_map={0: 2})
    with pytest.raises(ValueError, match="stage_strides"):
        RepVGG(num_blocks=[1, 1, 1, 1], stage_strides=[1, 2, 3, 1, 1])


def tiny_classifier(**kwargs) -> RepVGGClassifier:
    args = dict(num_classes=10, in_channels=1, num_blocks=[1, 2, 1, 1], width_multiplier=[0.25, 0.25, 0.25, 0.125], stage_strides=[1, 1, 2, 2, 2])
    return RepVGGClassifier(**{**args, **kwargs})


def test_fused_network_equals_training_network(randomize_bn):
    model = randomize_bn(tiny_classifier()).double().eval()
    x = torch.randn(4, 1, 13, 11, dtype=torch.float64)
    deploy = fuse_model(model)
    assert not any(isinstance(m, (RepVGGBlock, nn.BatchNorm2d)) for m in deploy.modules())
    assert torch.allclose(model(x), deploy(x), atol=1e-10, rtol=0)


def test_classifier_overrides_variant_and_no_weight_decay_follows_official_recipe():
    model = tiny_classifier()
    assert [len(s) for s in (model.net.stage1, model.net.stage2, model.net.stage3, model.net.stage4)] == [1, 2, 1, 1]
    names = model.no_weight_decay()
    assert "net.linear.bias" in names and "net.stage1.0.branch_3x3.bn.weight" in names and "net.stage1.0.branch_1x1.bn.weight" in names
    # the identity BN weight and conv kernels are decayed
    assert "net.stage2.1.branch_identity.weight" not in names and "net.stage1.0.branch_3x3.conv.weight" not in names
    assert "net.linear.weight" not in names


def test_training_step_learns_a_batch():
    torch.manual_seed(0)
    model = tiny_classifier()
    batch = {"image": torch.randn(16, 1, 16, 16), "label": torch.arange(16) % 10}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_predict_step_returns_probabilities():
    model = tiny_classifier().eval()
    out = model.predict_step({"image": torch.randn(3, 1, 16, 16), "label": torch.tensor([1, 2, 3])}, 0)
    assert out["probs"].shape == (3, 10)
    assert torch.allclose(out["probs"].sum(-1), torch.ones(3))
    assert torch.equal(out["pred"], out["probs"].argmax(-1))


def test_the_variant_is_the_networks_argument_and_explicit_values_override_it():
    model = RepVGG(variant="B1g4", num_blocks=[1, 2, 1, 1], stage_strides=[1, 1, 2, 2, 2])
    assert [len(s) for s in (model.stage1, model.stage2, model.stage3, model.stage4)] == [1, 2, 1, 1]
    assert model.stage1[0].out_channels == 128 and model.stage4[0].out_channels == 2048  # B1's widths: 64 * 2, 512 * 4
    assert [b.groups for s in (model.stage1, model.stage2) for b in s] == [1, 4, 1]  # B1g4's groups map on layers 2, 4, ...
    assert RepVGG(variant="B1g4", num_blocks=[1, 1, 1, 1], override_groups_map={}).stage2[0].groups == 1
    assert RepVGG.from_variant("B0").state_dict().keys() == RepVGG(variant="B0").state_dict().keys()


def test_classifier_forwards_the_networks_arguments():
    model = tiny_classifier(variant="B1g2")  # the variant's groups map (layers 2, 4, ...), the tiny widths
    assert model.net.stage2[0].groups == 2 and model.net.stage1[0].out_channels == 16  # 64 * 0.25
    assert tiny_classifier(variant="B1g2", override_groups_map={}).net.stage2[0].groups == 1
    rebuilds_from_flat_hparams(RepVGGClassifier, variant="B1g2", num_classes=10, in_channels=1, num_blocks=[1, 2, 1, 1],
                               width_multiplier=[0.25, 0.25, 0.25, 0.125], stage_strides=[1, 1, 2, 2, 2], label_smoothing=0.1)  # fmt: skip
    refuses_misspelt_argument(RepVGGClassifier, "RepVGG", "num_block", "num_blocks", num_classes=10)


def test_cli_help_lists_the_network_arguments_with_types(capsys):
    help_lists("litzoo.modules.repvgg.RepVGGClassifier", capsys, {
        "variant": "str, default: A0", "num_classes": "int, default: 1000", "num_blocks": "Optional[Sequence[int]], default: null",
        "width_multiplier": "Optional[Sequence[float]]", "override_groups_map": "Optional[dict[int, int]]", "in_channels": "int, default: 3",
        "stage_strides": "Sequence[int]", "official_checkpoint": "str | null, default: null",
    })  # fmt: skip
