"""The NAS search spaces (framework/nas/spaces.py): four families of tiny digit CNNs as JSON specs — they build
small networks that run, have their defining structure, round-trip through JSON, and sample seeded."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.nas import FAMILIES, MAX_PARAMS, InceptionBlock, RepVGGTrainBlock, build_network, sample_spec, spec_from_dict
from litzoo.framework.profiling import count_parameters


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_builds_small_networks_that_run(family):
    for seed in range(4):
        spec = sample_spec(family, random.Random(seed))
        model = build_network(spec).eval()
        assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)
        assert count_parameters(model) <= MAX_PARAMS
        assert build_network(spec, num_classes=3)(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_families_have_their_defining_structure():
    specs = {f: [sample_spec(f, random.Random(i)) for i in range(6)] for f in FAMILIES}
    nets = {f: [build_network(s) for s in specs[f]] for f in FAMILIES}
    # mobilenet: depthwise convs; inception: multi-branch blocks; resnet: no grouped convs, 1-3 stages
    assert all(any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in net.modules()) for net in nets["mobilenet"])
    assert all(any(isinstance(m, InceptionBlock) and len(m.branches) >= 1 for m in net.modules()) for net in nets["inception"])
    assert any(any(isinstance(m, InceptionBlock) and len(m.branches) >= 2 for m in net.modules()) for net in nets["inception"])
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for net in nets["resnet"] + nets["vgg"] for m in net.modules())
    assert {s.repvgg for s in specs["vgg"]} == {True, False}
    assert all(any(isinstance(m, RepVGGTrainBlock) for m in n.modules()) == s.repvgg for s, n in zip(specs["vgg"], nets["vgg"]))
    assert {s.act for s in specs["mobilenet"]} <= {"relu6", "hardswish"}


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_json_round_trip_and_deterministic_build(family):
    spec = sample_spec(family, random.Random(7))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["family"] == family
    assert spec_from_dict(data) == spec
    torch.manual_seed(3)
    first = build_network(spec)
    torch.manual_seed(3)
    second = build_network(data)
    assert count_parameters(first) == count_parameters(second)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_sampling_is_seeded_and_varied():
    for family in FAMILIES:
        assert sample_spec(family, random.Random(11)) == sample_spec(family, 11)
        drawn = {json.dumps(sample_spec(family, random.Random(i)).to_dict()) for i in range(8)}
        assert len(drawn) >= 5, family


def test_bad_specs_are_one_line_errors():
    with pytest.raises(LitzooError, match="unknown architecture family 'transformer'") as error:
        spec_from_dict({"family": "transformer"})
    _one_line(error)
    with pytest.raises(LitzooError, match="unknown fields") as error:
        spec_from_dict({"family": "vgg", "depth": 3})
    _one_line(error)
    with pytest.raises(LitzooError, match="unknown architecture family") as error:
        sample_spec("nasnet", 0)
    _one_line(error)
