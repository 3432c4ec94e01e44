"""RepMLPNet: the paper's variants, official state-dict keys, locality injection, official weights, training."""

from __future__ import annotations

import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch import nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import count_parameters
from litzoo.framework.reparam import fuse_model
from litzoo.framework.reparam.repmlp_block import RepMLPBlock, RepMLPBlockDeploy
from litzoo.modules.repmlp import VARIANTS, RepMLPNet, RepMLPNetClassifier, variant_config

# Parameters in millions, official README table (DingXiaoH/RepMLP, "Pre-trained models").
README_PARAMS_M = {"T224": 38.3, "B224": 68.2, "T256": 58.7, "B256": 96.5, "D256": 86.9, "L256": 117.7}

# A tiny network: 8x8 input, patch 2 -> 4x4 tokens; stage 0 has non-square 4x2 partitions and 2
# sharesets, stage 1 (2x2 tokens, two units) one 2x2 partition and 4 sharesets.
TINY = dict(in_channels=1, num_classes=10, patch_size=2, channels=(8, 16), hs=(4, 2), ws=(2, 2), num_blocks=(1, 2), sharesets_nums=(2, 4), reparam_conv_k=(1, 3))


def tiny_net(**kwargs) -> RepMLPNet:
    return RepMLPNet(**{**TINY, **kwargs})


def tiny_classifier(**kwargs) -> RepMLPNetClassifier:
    args = dict(num_classes=10, in_channels=1, image_size=8, patch_size=2, channels=[8, 16], hs=[4, 2], ws=[2, 2], num_blocks=[1, 2], sharesets_nums=[2, 4])
    return RepMLPNetClassifier(**{**args, **kwargs})


@pytest.mark.parametrize("variant", sorted(README_PARAMS_M))
def test_parameter_count_matches_the_official_readme(variant):
    # on the meta device: no memory, no initialisation (T224 alone has 38M parameters)
    with torch.device("meta"):
        train = RepMLPNet.from_variant(variant)
        deploy = RepMLPNet.from_variant(variant, deploy=True)
    # training-time and deploy-time counts differ by the BN and local-conv parameters (< 0.2%)
    for model in (train, deploy):
        assert count_parameters(model) / 1e6 == pytest.approx(README_PARAMS_M[variant], rel=0.01)


def test_variants_and_their_resolution():
    assert variant_config("RepMLPNet-D256")["channels"] == (80, 160, 320, 640)
    assert set(VARIANTS) == {"T224", "B224", "T256", "B256", "D256", "L256"}
    with pytest.raises(ValueError, match="unknown RepMLPNet variant"):
        variant_config("S224")
    with torch.device("meta"):
        model = RepMLPNet.from_variant("T224")
    units = [u for stage in model.stages for u in stage]
    assert [len(s) for s in model.stages] == [2, 2, 6, 2] and len(model.embeds) == 3
    assert [u.repmlp_block.num_sharesets for u in units[:4]] == [1, 1, 4, 4]
    assert units[0].repmlp_block.fc3.weight.shape == (56 * 56, 56 * 56, 1, 1)
    with pytest.raises(ValueError, match=r"stage 0 sees 64x64 feature maps .* not divisible by its partition hs x ws = 56x56"):
        RepMLPNet.from_variant("T224", image_size=256)


def test_argument_errors():
    with pytest.raises(ValueError, match="hs must have one value per stage"):
        tiny_net(hs=(4,))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        tiny_net(image_size=9)
    with pytest.raises(ValueError, match="divisible by num_sharesets"):
        tiny_net(sharesets_nums=(3, 4))


def test_forward_shapes_and_deploy_construction():
    model = tiny_net().eval()
    x = torch.randn(3, 1, 8, 8)
    assert model(x).shape == (3, 10)
    assert model.conv_embedding(x).shape == (3, 8, 4, 4)
    assert tiny_net(deploy=True)(x).shape == (3, 10)
    with pytest.raises(ValueError, match="not divisible by the partition size"):
        model(torch.randn(1, 1, 12, 12))  # 6x6 tokens, 4x2 partitions


def test_fused_network_equals_training_network(randomize_bn):
    model = randomize_bn(tiny_net()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(4, 1, 8, 8)
    deploy = fuse_model(model)
    assert not any(isinstance(m, RepMLPBlock) for m in deploy.modules())
    assert sum(isinstance(m, RepMLPBlockDeploy) for m in deploy.modules()) == 3
    with torch.no_grad():
        assert (model(x) - deploy(x)).abs().max().item() < 1e-5
        # the official in-place name does the same
        assert (model.locality_injection()(x) - deploy(x)).abs().max().item() < 1e-6


# ----------------------------------------------------------- official key names
# Written from DingXiaoH/RepMLP repmlpnet.py: conv_bn() is Sequential(conv, bn) (+ relu);
# RepMLPNetUnit has repmlp_block, ffn_block (ffn_fc1, ffn_fc2), prebn1, prebn2; RepMLPBlock has
# gp (fc1, fc2), fc3 (bias only in deploy), fc3_bn (Identity in deploy), repconv{k} (train only).
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{leaf}" for leaf in BN]


def _unit_keys(prefix: str, deploy: bool) -> list[str]:
    block = f"{prefix}.repmlp_block"
    keys = [f"{block}.gp.fc1.weight", f"{block}.gp.fc1.bias", f"{block}.gp.fc2.weight", f"{block}.gp.fc2.bias", f"{block}.fc3.weight"]
    if deploy:
        keys += [f"{block}.fc3.bias"]
    else:
        keys += _bn(f"{block}.fc3_bn") + [f"{block}.repconv1.conv.weight"] + _bn(f"{block}.repconv1.bn")
        keys += [f"{block}.repconv3.conv.weight"] + _bn(f"{block}.repconv3.bn")
    keys += [f"{prefix}.ffn_block.ffn_fc1.conv.weight"] + _bn(f"{prefix}.ffn_block.ffn_fc1.bn")
    keys += [f"{prefix}.ffn_block.ffn_fc2.conv.weight"] + _bn(f"{prefix}.ffn_block.ffn_fc2.bn")
    return keys + _bn(f"{prefix}.prebn1") + _bn(f"{prefix}.prebn2")


def official_keys(deploy: bool) -> set[str]:
    keys = ["conv_embedding.conv.weight", *_bn("conv_embedding.bn")]
    keys += _unit_keys("stages.0.0", deploy) + _unit_keys("stages.1.0", deploy) + _unit_keys("stages.1.1", deploy)
    keys += ["embeds.0.conv.weight", *_bn("embeds.0.bn"), *_bn("head_norm"), "head.weight", "head.bias"]
    assert len(keys) == len(set(keys))
    return set(keys)


def test_state_dict_keys_equal_the_official_ones_train_and_deploy():
    model = tiny_net()
    assert set(model.state_dict()) == official_keys(deploy=False)
    assert set(fuse_model(model).state_dict()) == official_keys(deploy=True)
    assert set(tiny_net(deploy=True).state_dict()) == official_keys(deploy=True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # official shapes: fc3 is a grouped 1x1 conv (S*h*w, h*w, 1, 1), the local convs depthwise over S
    assert shapes["stages.0.0.repmlp_block.fc3.weight"] == (2 * 8, 8, 1, 1)
    assert shapes["stages.1.1.repmlp_block.repconv3.conv.weight"] == (4, 1, 3, 3)
    assert shapes["stages.0.0.repmlp_block.fc3_bn.weight"] == (2,)
    assert shapes["conv_embedding.conv.weight"] == (8, 1, 2, 2) and shapes["embeds.0.conv.weight"] == (16, 8, 2, 2)


# ----------------------------------------------------------- official checkpoints
def _official_file(tmp_path, randomize_bn, deploy: bool = False, num_classes: int = 10, wrap: bool = True):
    """A released-style file: the authors save ``{'model': state_dict}``, sometimes with ``module.`` prefixes."""
    source = randomize_bn(tiny_net(num_classes=num_classes)).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if deploy:
        source = fuse_model(source)
    state = source.state_dict()
    if wrap:
        state = {"model": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / ("deploy.pth" if deploy else "train.pth")
    torch.save(state, path)
    return source, path


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
def test_official_checkpoint_loads_train_and_deploy(tmp_path, randomize_bn, deploy):
    # a bare state dict for the train-time file, {'model': {'module.' + key: ...}} for the deploy one
    source, path = _official_file(tmp_path, randomize_bn, deploy=deploy, wrap=deploy)
    model = tiny_classifier(official_checkpoint=str(path)).eval()
    blocks = [type(u.repmlp_block) for stage in model.net.stages for u in stage]
    assert blocks == [RepMLPBlockDeploy if deploy else RepMLPBlock] * 3
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert (model(x) - source(x)).abs().max().item() < 1e-6


def test_official_checkpoint_with_another_head_keeps_a_fresh_head(tmp_path, randomize_bn):
    source, path = _official_file(tmp_path, randomize_bn, num_classes=1000)
    with pytest.warns(UserWarning, match="head"):
        model = tiny_classifier(official_checkpoint=str(path))
    loaded = model.net.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(loaded[key], value), key
    assert loaded["head.weight"].shape == (10, 16)


def test_official_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LitzooError, match="broken.pth"):
        tiny_classifier(official_checkpoint=str(bad))
    wrong = tmp_path / "wrong.pth"
    torch.save(tiny_net(channels=(8, 24)).state_dict(), wrong)
    with pytest.raises(LitzooError, match="wrong.pth"):
        tiny_classifier(official_checkpoint=str(wrong))


# ----------------------------------------------------------- LightningModule
def test_classifier_overrides_and_no_weight_decay():
    model = tiny_classifier()
    assert [len(s) for s in model.net.stages] == [1, 2]
    assert model.hparams.variant == "T224" and model.hparams.official_checkpoint is None
    names = model.no_weight_decay()
    assert "net.head.bias" in names and "net.stages.0.0.prebn1.weight" in names and "net.stages.0.0.repmlp_block.gp.fc1.bias" in names
    assert "net.stages.0.0.repmlp_block.fc3.weight" not in names and "net.head.weight" not in names
    with pytest.raises(ValueError, match="partition"):
        tiny_classifier(image_size=12)


def test_training_step_learns_a_batch():
    torch.manual_seed(0)
    model = tiny_classifier()
    images, labels = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = model.net.stages[0][0].repmlp_block.repconv3.conv.weight.detach().clone()
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert not torch.equal(before, model.net.stages[0][0].repmlp_block.repconv3.conv.weight)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_net()
    x = torch.randn(4, 1, 8, 8)
    model(x).square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.use_checkpoint = True
    model(x).square().sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(plain, model.parameters()))
    assert isinstance(model.head, nn.Linear)


def test_the_variant_is_the_networks_argument_and_explicit_values_override_it():
    with torch.device("meta"):
        d256 = RepMLPNet(variant="RepMLPNet-D256", num_classes=10)
        assert count_parameters(d256) == count_parameters(RepMLPNet.from_variant("D256", num_classes=10))
        thinner = RepMLPNet(variant="D256", channels=(40, 80, 160, 320), sharesets_nums=(1, 4, 16, 32))
    assert [len(s) for s in thinner.stages] == [2, 2, 18, 2]  # D256's depths, other widths
    assert thinner.stages[0][0].repmlp_block.fc3.weight.shape == (64 * 64, 64 * 64, 1, 1)  # D256's partitions
    with pytest.raises(ValueError, match="stage 0 sees 56x56"):
        RepMLPNet(variant="D256", image_size=224)  # the variant's 64x64 partitions do not divide 224 / 4


def test_classifier_forwards_the_networks_arguments():
    model = rebuilds_from_flat_hparams(RepMLPNetClassifier, num_classes=10, in_channels=1, image_size=8, patch_size=2, channels=[8, 16],
                                       hs=[4, 2], ws=[2, 2], num_blocks=[1, 2], sharesets_nums=[2, 4], ffn_expand=2)  # fmt: skip
    assert model.net.stages[0][0].ffn_block.ffn_fc1.conv.out_channels == 16 and model.hparams.variant == "T224"
    refuses_misspelt_argument(RepMLPNetClassifier, "RepMLPNet", "sharesets_num", "sharesets_nums", num_classes=10)


def test_cli_help_lists_the_network_arguments_with_types(capsys):
    help_lists("litzoo.modules.repmlp.RepMLPNetClassifier", capsys, {
        "variant": "str, default: T224", "num_classes": "int, default: 1000", "channels": "Optional[Sequence[int]], default: null",
        "hs": "Optional[Sequence[int]]", "reparam_conv_k": "Sequence[int] | null, default: (1, 3)", "image_size": "Union[int, Sequence[int], null]",
        "patch_size": "int | Sequence[int], default: 4", "deploy": "bool, default: False", "official_checkpoint": "str | null, default: null",
    })  # fmt: skip
