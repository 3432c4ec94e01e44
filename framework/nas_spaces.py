"""Four families of tiny CNNs for 8x8 single-channel images: the search spaces of litzoo's NAS benchmark.

The transferable computation-graph predictor (Han et al., "A General-Purpose Transferable Predictor for
Neural Architecture Search", SDM 2023, arXiv 2302.10835) and GENNAPE (Mills et al., AAAI 2023,
arXiv 2211.17226) train a performance predictor on the computation graphs of networks from some families
(search spaces) and evaluate it on a family it has never seen. This module provides such families at a
size a CPU can train in seconds:

- ``"resnet"``: a stem and residual stages of basic blocks (depth, width, stride per stage);
- ``"mobilenet"``: inverted residual blocks (MobileNetV2/V3) with depthwise convs, expansion ratio,
  kernel size, ReLU6 or hard-swish, optional squeeze-and-excitation;
- ``"inception"``: multi-branch blocks (1x1, 1x1→3x3, 1x1→5x5, 3x3 max-pool→1x1) concatenated;
- ``"vgg"``: plain conv stacks, optionally RepVGG training-time blocks (3x3 + 1x1 + identity branches).

Each family is a small dataclass *spec* (``spec.to_dict()`` is JSON; :func:`spec_from_dict` inverts it),
:func:`sample_spec` draws one from a seeded ``random.Random``, and :func:`build_network` turns it into a
plain ``nn.Module`` (``(B, 1, 8, 8) -> (B, num_classes)`` logits; every forward is ``torch.fx``-traceable).
Sampled networks have at most :data:`MAX_PARAMS` parameters.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from framework.errors import LitzooError

FAMILIES: tuple[str, ...] = ("resnet", "mobilenet", "inception", "vgg")
MAX_PARAMS = 100_000
"""Upper bound on the parameters of a sampled network (sampling redraws larger ones)."""


def _act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "relu6":
        return nn.ReLU6(inplace=False)
    if name == "hardswish":
        return nn.Hardswish(inplace=False)
    raise LitzooError(f"unknown activation '{name}' (expected relu, relu6 or hardswish)")


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) + BatchNorm2d + optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: str | None = "relu") -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(_act(act))
        super().__init__(*layers)


class Classifier(nn.Module):
    """Global average pooling + linear: the head every family shares."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------------------------- specs
@dataclass
class ArchSpec:
    """Base of the family specs: ``to_dict`` adds the family name so a dict alone says how to rebuild."""

    family: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}


@dataclass
class ResNetSpec(ArchSpec):
    """Stem conv of ``stem`` channels, then stages of basic residual blocks (two 3x3 conv-BN, identity or
    1x1-projection shortcut). ``stages`` holds ``[channels, blocks, stride]`` per stage."""

    family: ClassVar[str] = "resnet"
    stem: int = 16
    stages: list[list[int]] = field(default_factory=lambda: [[16, 1, 1], [32, 1, 2]])


@dataclass
class MobileNetSpec(ArchSpec):
    """Stem conv, then inverted residual blocks ``[expansion, kernel, out_channels, stride, se]``
    (1x1 expand → depthwise kxk → optional squeeze-excitation → 1x1 project; residual when shapes match)."""

    family: ClassVar[str] = "mobilenet"
    stem: int = 16
    act: str = "relu6"
    blocks: list[list[int]] = field(default_factory=lambda: [[1, 3, 16, 1, 0], [4, 3, 24, 2, 1]])


@dataclass
class InceptionSpec(ArchSpec):
    """Stem conv, then inception blocks ``[b1x1, b3x3_reduce, b3x3, b5x5_reduce, b5x5, pool_proj, downsample]``
    (a zero width drops that branch; ``downsample`` adds a stride-2 max-pool after the block)."""

    family: ClassVar[str] = "inception"
    stem: int = 16
    blocks: list[list[int]] = field(default_factory=lambda: [[8, 8, 8, 4, 4, 4, 1]])


@dataclass
class VGGSpec(ArchSpec):
    """Plain stages of 3x3 conv-BN-ReLU, ``[channels, convs]`` each, a stride-2 max-pool between stages.
    With ``repvgg`` every conv is a RepVGG training-time block: 3x3-BN + 1x1-BN (+ BN identity) summed."""

    family: ClassVar[str] = "vgg"
    repvgg: bool = False
    stages: list[list[int]] = field(default_factory=lambda: [[16, 1], [32, 1]])


SPEC_TYPES: dict[str, type[ArchSpec]] = {cls.family: cls for cls in (ResNetSpec, MobileNetSpec, InceptionSpec, VGGSpec)}


def check_family(family: str) -> str:
    if family not in SPEC_TYPES:
        raise LitzooError(f"unknown architecture family '{family}' (expected one of {', '.join(FAMILIES)})")
    return family


def spec_from_dict(data: dict[str, Any]) -> ArchSpec:
    """The spec that ``spec.to_dict()`` wrote; one-line :class:`LitzooError` on a bad dict."""
    if not isinstance(data, dict) or "family" not in data:
        raise LitzooError(f"an architecture spec must be a JSON object with a 'family' field, got {str(data)[:80]}")
    cls = SPEC_TYPES.get(data["family"])
    if cls is None:
        check_family(str(data["family"]))
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = set(data) - fields - {"family"}
    if extra:
        raise LitzooError(f"{data['family']} spec has unknown fields {sorted(extra)} (expected {sorted(fields)})")
    return cls(**{k: v for k, v in data.items() if k != "family"})


# --------------------------------------------------------------------------------------------- blocks
class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride)
        self.conv2 = ConvBNAct(cout, cout, 3, 1, act=None)
        self.shortcut = ConvBNAct(cin, cout, 1, stride, act=None) if (stride != 1 or cin != cout) else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) with the hard-sigmoid gate of MobileNetV3."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 inverted residual block."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int, se: bool, act: str) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=act))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(ConvBNAct(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return out + x if self.residual else out


class InceptionBlock(nn.Module):
    """GoogLeNet-style block: the non-empty branches run in parallel and are concatenated on channels."""

    def __init__(self, cin: int, b1: int, r3: int, b3: int, r5: int, b5: int, pool: int) -> None:
        super().__init__()
        branches: list[nn.Module] = []
        if b1:
            branches.append(ConvBNAct(cin, b1, 1))
        if b3:
            branches.append(nn.Sequential(ConvBNAct(cin, r3, 1), ConvBNAct(r3, b3, 3)) if r3 else ConvBNAct(cin, b3, 3))
        if b5:
            branches.append(nn.Sequential(ConvBNAct(cin, r5, 1), ConvBNAct(r5, b5, 5)) if r5 else ConvBNAct(cin, b5, 5))
        if pool:
            branches.append(nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBNAct(cin, pool, 1)))
        if not branches:
            raise LitzooError("an inception block needs at least one branch of non-zero width")
        self.branches = nn.ModuleList(branches)
        self.out_channels = b1 + b3 + b5 + pool

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class RepVGGTrainBlock(nn.Module):
    """RepVGG training-time block (Ding et al. 2021): ReLU(BN(3x3) + BN(1x1) [+ BN(x)])."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense = ConvBNAct(cin, cout, 3, act=None)
        self.one = ConvBNAct(cin, cout, 1, act=None)
        self.identity = nn.BatchNorm2d(cin) if cin == cout else None
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.dense(x) + self.one(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)


# --------------------------------------------------------------------------------------------- builders
def _resnet(spec: ResNetSpec, in_channels: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [ConvBNAct(in_channels, spec.stem, 3)]
    cin = spec.stem
    for channels, blocks, stride in spec.stages:
        for b in range(blocks):
            layers.append(BasicBlock(cin, channels, stride if b == 0 else 1))
            cin = channels
    return nn.Sequential(nn.Sequential(*layers), Classifier(cin, num_classes))


def _mobilenet(spec: MobileNetSpec, in_channels: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [ConvBNAct(in_channels, spec.stem, 3, act=spec.act)]
    cin = spec.stem
    for expansion, kernel, cout, stride, se in spec.blocks:
        layers.append(InvertedResidual(cin, cout, expansion, kernel, stride, bool(se), spec.act))
        cin = cout
    return nn.Sequential(nn.Sequential(*layers), Classifier(cin, num_classes))


def _inception(spec: InceptionSpec, in_channels: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [ConvBNAct(in_channels, spec.stem, 3)]
    cin = spec.stem
    for b1, r3, b3, r5, b5, pool, downsample in spec.blocks:
        block = InceptionBlock(cin, b1, r3, b3, r5, b5, pool)
        layers.append(block)
        cin = block.out_channels
        if downsample:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(nn.Sequential(*layers), Classifier(cin, num_classes))


def _vgg(spec: VGGSpec, in_channels: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_channels
    for s, (channels, convs) in enumerate(spec.stages):
        if s > 0:
            layers.append(nn.MaxPool2d(2))
        for _ in range(convs):
            layers.append(RepVGGTrainBlock(cin, channels) if spec.repvgg else ConvBNAct(cin, channels, 3))
            cin = channels
    return nn.Sequential(nn.Sequential(*layers), Classifier(cin, num_classes))


_BUILDERS = {"resnet": _resnet, "mobilenet": _mobilenet, "inception": _inception, "vgg": _vgg}


def build_network(spec: ArchSpec | dict[str, Any], num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The ``nn.Module`` of ``spec`` (or of its ``to_dict()``): ``(B, in_channels, H, W) -> (B, num_classes)``.

    The structure (and so the parameter count) depends only on the spec; the initial weights come from
    torch's global generator, so seed it (``torch.manual_seed``) for identical weights.
    """
    if isinstance(spec, dict):
        spec = spec_from_dict(spec)
    if not isinstance(spec, ArchSpec):
        raise LitzooError(f"build_network expects an architecture spec or its dict, got {type(spec).__name__}")
    return _BUILDERS[spec.family](spec, in_channels, num_classes)


# --------------------------------------------------------------------------------------------- sampling
def _sample_resnet(rng: random.Random) -> ResNetSpec:
    widths = [8, 12, 16, 24, 32, 48]
    stem = rng.choice([8, 12, 16, 24])
    stages, width_index = [], rng.randrange(0, 3)
    for s in range(rng.randint(1, 3)):
        width_index = min(len(widths) - 1, width_index + (rng.randint(0, 2) if s else 0))
        stride = 1 if s == 0 else rng.choice([1, 2])
        stages.append([widths[width_index], rng.randint(1, 3), stride])
    return ResNetSpec(stem=stem, stages=stages)


def _sample_mobilenet(rng: random.Random) -> MobileNetSpec:
    widths = [8, 12, 16, 24, 32, 40, 48]
    stem = rng.choice([8, 12, 16])
    blocks, width_index, downsamples = [], rng.randrange(0, 3), 0
    for _ in range(rng.randint(2, 7)):
        width_index = min(len(widths) - 1, width_index + rng.randint(0, 1))
        stride = 2 if (downsamples < 2 and rng.random() < 0.3) else 1
        downsamples += stride == 2
        blocks.append([rng.choice([1, 3, 4, 6]), rng.choice([3, 5]), widths[width_index], stride, int(rng.random() < 0.4)])
    return MobileNetSpec(stem=stem, act=rng.choice(["relu6", "hardswish"]), blocks=blocks)


def _sample_inception(rng: random.Random) -> InceptionSpec:
    def width() -> int:
        return rng.choice([0, 4, 8, 12, 16])

    blocks, downsamples = [], 0
    for _ in range(rng.randint(1, 4)):
        b1, b3, b5, pool = width(), width(), width(), width()
        if b1 + b3 + b5 + pool == 0:
            b3 = rng.choice([8, 16])
        r3 = rng.choice([0, 4, 8]) if b3 else 0
        r5 = rng.choice([0, 4, 8]) if b5 else 0
        downsample = int(downsamples < 2 and rng.random() < 0.35)
        downsamples += downsample
        blocks.append([b1, r3, b3, r5, b5, pool, downsample])
    return InceptionSpec(stem=rng.choice([8, 12, 16, 24]), blocks=blocks)


def _sample_vgg(rng: random.Random) -> VGGSpec:
    widths = [8, 12, 16, 24, 32, 48, 64]
    stages, width_index = [], rng.randrange(0, 3)
    for s in range(rng.randint(1, 3)):
        width_index = min(len(widths) - 1, width_index + (rng.randint(0, 2) if s else 0))
        stages.append([widths[width_index], rng.randint(1, 3)])
    return VGGSpec(repvgg=rng.random() < 0.5, stages=stages)


_SAMPLERS = {"resnet": _sample_resnet, "mobilenet": _sample_mobilenet, "inception": _sample_inception, "vgg": _sample_vgg}


def count_spec_parameters(spec: ArchSpec, num_classes: int = 10, in_channels: int = 1) -> int:
    """Parameters of ``build_network(spec)``, built on the meta device (no memory, no use of the global RNG)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_network(spec, num_classes, in_channels).parameters())


def sample_spec(family: str, rng: random.Random | int, max_params: int = MAX_PARAMS, num_classes: int = 10) -> ArchSpec:
    """A random spec of ``family`` drawn from ``rng`` (a ``random.Random``, or an int seed), redrawn until the
    network has at most ``max_params`` parameters. The same seed gives the same spec on every machine."""
    sampler = _SAMPLERS[check_family(family)]
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    for _ in range(1000):
        spec = sampler(rng)
        if count_spec_parameters(spec, num_classes) <= max_params:
            return spec
    raise LitzooError(f"could not sample a {family} network with at most {max_params} parameters in 1000 draws")
