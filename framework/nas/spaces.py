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
Sampled networks have at most :data:`MAX_PARAMS` parameters; :data:`INPUT_SHAPE` (one digit, batch 1) is the
input their FLOPs and computation graphs are measured on.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from litzoo.framework.errors import LitzooError

FAMILIES: tuple[str, ...] = ("resnet", "mobilenet", "inception", "vgg")
MAX_PARAMS = 100_000
"""Upper bound on the parameters of a sampled network (sampling redraws larger ones)."""
INPUT_SHAPE = (1, 1, 8, 8)
"""One digit, batch 1: the input of a network's FLOPs, latency and computation graph (labelling and search)."""


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


# --------------------------------------------------------------------------------------------- mutation
# The value sets of the samplers above: a mutation moves one value to a neighbouring choice of the same set,
# so a mutated spec is one the sampler could have drawn, up to the order of widths (a width step may make a
# stage narrower than the one before it, which every builder accepts).
_RESNET_STEMS, _RESNET_WIDTHS = [8, 12, 16, 24], [8, 12, 16, 24, 32, 48]
_MOBILENET_STEMS, _MOBILENET_WIDTHS, _MOBILENET_EXPANSIONS = [8, 12, 16], [8, 12, 16, 24, 32, 40, 48], [1, 3, 4, 6]
_INCEPTION_STEMS, _INCEPTION_WIDTHS, _INCEPTION_REDUCES = [8, 12, 16, 24], [0, 4, 8, 12, 16], [0, 4, 8]
_VGG_WIDTHS = [8, 12, 16, 24, 32, 48, 64]
_MAX_DOWNSAMPLES = 2  # mobilenet stride-2 blocks, inception downsampling blocks: at most two (8x8 -> 2x2)


def _nearest_index(values: list[int], current: int) -> int:
    return min(range(len(values)), key=lambda i: abs(values[i] - current))


def _step(values: list[int], current: int, rng: random.Random) -> int:
    """The value one step below or above ``current`` in ``values`` (a value off the list snaps to the nearest)."""
    index = _nearest_index(values, current)
    if values[index] != current:
        return values[index]
    moves = [i for i in (index - 1, index + 1) if 0 <= i < len(values)]
    return values[rng.choice(moves)]


def _mutate_resnet(spec: ResNetSpec, rng: random.Random) -> ResNetSpec | None:
    stages = [list(s) for s in spec.stages]
    kind = rng.choice(["stem", "width", "depth", "stride", "stage"])
    if kind == "stem":
        return ResNetSpec(stem=_step(_RESNET_STEMS, spec.stem, rng), stages=stages)
    s = rng.randrange(len(stages))
    if kind == "width":
        stages[s][0] = _step(_RESNET_WIDTHS, stages[s][0], rng)
    elif kind == "depth":  # one basic block more or fewer in a stage (1..3)
        stages[s][1] = _step([1, 2, 3], stages[s][1], rng)
    elif kind == "stride":  # stages after the first downsample or not
        if s == 0:
            return None
        stages[s][2] = 3 - stages[s][2]
    elif rng.random() < 0.5:  # add a stage after the last: one width step wider, one block, random stride
        if len(stages) >= 3:
            return None
        last = stages[-1]
        wider = _RESNET_WIDTHS[min(len(_RESNET_WIDTHS) - 1, _nearest_index(_RESNET_WIDTHS, last[0]) + 1)]
        stages.append([wider, 1, rng.choice([1, 2])])
    else:  # remove a stage; the first stage never strides
        if len(stages) <= 1:
            return None
        del stages[s]
        stages[0][2] = 1
    return ResNetSpec(stem=spec.stem, stages=stages)


def _downsamples(blocks: list[list[int]], position: int) -> int:
    return sum(1 for b in blocks if b[position])


def _mutate_mobilenet(spec: MobileNetSpec, rng: random.Random) -> MobileNetSpec | None:
    blocks = [list(b) for b in spec.blocks]
    kind = rng.choice(["stem", "act", "expansion", "kernel", "width", "stride", "se", "block"])
    if kind == "stem":
        return MobileNetSpec(stem=_step(_MOBILENET_STEMS, spec.stem, rng), act=spec.act, blocks=blocks)
    if kind == "act":
        return MobileNetSpec(stem=spec.stem, act="hardswish" if spec.act == "relu6" else "relu6", blocks=blocks)
    b = rng.randrange(len(blocks))
    if kind == "expansion":
        blocks[b][0] = _step(_MOBILENET_EXPANSIONS, blocks[b][0], rng)
    elif kind == "kernel":
        blocks[b][1] = 5 if blocks[b][1] == 3 else 3
    elif kind == "width":
        blocks[b][2] = _step(_MOBILENET_WIDTHS, blocks[b][2], rng)
    elif kind == "stride":
        if blocks[b][3] == 1 and sum(1 for x in blocks if x[3] == 2) >= _MAX_DOWNSAMPLES:
            return None
        blocks[b][3] = 3 - blocks[b][3]
    elif kind == "se":
        blocks[b][4] = 1 - int(bool(blocks[b][4]))
    elif rng.random() < 0.5:  # one block more: a stride-1 copy of block b after it (depth + 1)
        if len(blocks) >= 7:
            return None
        blocks.insert(b + 1, [blocks[b][0], blocks[b][1], blocks[b][2], 1, blocks[b][4]])
    else:  # one block fewer
        if len(blocks) <= 2:
            return None
        del blocks[b]
    return MobileNetSpec(stem=spec.stem, act=spec.act, blocks=blocks)


def _mutate_inception(spec: InceptionSpec, rng: random.Random) -> InceptionSpec | None:
    blocks = [list(b) for b in spec.blocks]
    kind = rng.choice(["stem", "branch", "branch", "reduce", "downsample", "block"])
    if kind == "stem":
        return InceptionSpec(stem=_step(_INCEPTION_STEMS, spec.stem, rng), blocks=blocks)
    b = rng.randrange(len(blocks))
    block = blocks[b]
    if kind == "branch":  # the width of one branch (b1x1, b3x3, b5x5, pool_proj); 0 drops the branch
        position = rng.choice([0, 2, 4, 5])
        block[position] = _step(_INCEPTION_WIDTHS, block[position], rng)
        if position in (2, 4):
            reduce = position - 1
            if block[position] == 0:
                block[reduce] = 0  # a dropped branch has no reduction either
        if block[0] + block[2] + block[4] + block[5] == 0:
            return None
    elif kind == "reduce":  # the 1x1 reduction of an existing 3x3 or 5x5 branch
        positions = [p for p in (1, 3) if block[p + 1]]
        if not positions:
            return None
        position = rng.choice(positions)
        block[position] = _step(_INCEPTION_REDUCES, block[position], rng)
    elif kind == "downsample":
        if not block[6] and _downsamples(blocks, 6) >= _MAX_DOWNSAMPLES:
            return None
        block[6] = 1 - int(bool(block[6]))
    elif rng.random() < 0.5:  # one block more: a copy of block b without downsampling, after it
        if len(blocks) >= 4:
            return None
        blocks.insert(b + 1, [*block[:6], 0])
    else:
        if len(blocks) <= 1:
            return None
        del blocks[b]
    return InceptionSpec(stem=spec.stem, blocks=blocks)


def _mutate_vgg(spec: VGGSpec, rng: random.Random) -> VGGSpec | None:
    stages = [list(s) for s in spec.stages]
    kind = rng.choice(["repvgg", "width", "depth", "stage"])
    if kind == "repvgg":
        return VGGSpec(repvgg=not spec.repvgg, stages=stages)
    s = rng.randrange(len(stages))
    if kind == "width":
        stages[s][0] = _step(_VGG_WIDTHS, stages[s][0], rng)
    elif kind == "depth":  # one conv more or fewer in a stage (1..3)
        stages[s][1] = _step([1, 2, 3], stages[s][1], rng)
    elif rng.random() < 0.5:  # add a stage: one width step wider than the last, one conv
        if len(stages) >= 3:
            return None
        stages.append([_VGG_WIDTHS[min(len(_VGG_WIDTHS) - 1, _nearest_index(_VGG_WIDTHS, stages[-1][0]) + 1)], 1])
    else:
        if len(stages) <= 1:
            return None
        del stages[s]
    return VGGSpec(repvgg=spec.repvgg, stages=stages)


_MUTATORS = {"resnet": _mutate_resnet, "mobilenet": _mutate_mobilenet, "inception": _mutate_inception, "vgg": _mutate_vgg}


def mutate_spec(spec: ArchSpec, rng: random.Random | int, max_params: int = MAX_PARAMS, num_classes: int = 10) -> ArchSpec:
    """A copy of ``spec`` with one random local change, the mutation of evolutionary NAS (Real et al.,
    "Regularized Evolution for Image Classifier Architecture Search", AAAI 2019).

    Exactly one field of the spec differs from the parent (the parent is never modified); a change inside
    ``stages`` / ``blocks`` touches one stage or block, or adds or removes one:

    - ``resnet``: stem width step; a stage's width step, blocks ±1 (1..3), stride 1<->2 (not the first
      stage); add a stage (a width step wider than the last, one block) or remove one (1..3 stages);
    - ``mobilenet``: stem width step; activation relu6<->hardswish; a block's expansion step (1, 3, 4, 6),
      kernel 3<->5, width step, stride 1<->2 (at most two stride-2 blocks), SE on/off; add a block (a
      stride-1 copy after it) or remove one (2..7 blocks);
    - ``inception``: stem width step; a block's branch width step (0 drops the branch, at least one branch
      stays), a 3x3/5x5 reduction step (0, 4, 8), downsampling on/off (at most two); add a block (a copy
      without downsampling) or remove one (1..4 blocks);
    - ``vgg``: RepVGG training blocks on/off; a stage's width step, convs ±1 (1..3); add or remove a stage.

    "Step" moves to a neighbouring value of the sampler's choices. Mutations are redrawn until the child
    differs from the parent and has at most ``max_params`` parameters.

    Args:
        spec: the parent (any family of :data:`FAMILIES`).
        rng: a ``random.Random`` (advanced) or an int seed; the same rng state gives the same child.
        max_params: parameter bound of the child.
        num_classes: classes of the network whose parameters are counted.

    Raises:
        ValueError: ``spec`` is not an architecture spec, or no valid child was found in 1000 draws.
    """
    if not isinstance(spec, ArchSpec) or spec.family not in _MUTATORS:
        raise ValueError(f"mutate_spec expects an architecture spec of {', '.join(FAMILIES)}, got {type(spec).__name__}")
    if max_params < 1:
        raise ValueError(f"max_params must be at least 1, got {max_params}")
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    mutator = _MUTATORS[spec.family]
    for _ in range(1000):
        child = mutator(spec, rng)
        if child is None or child == spec:
            continue
        if count_spec_parameters(child, num_classes) <= max_params:
            return child
    raise ValueError(f"could not mutate {spec.to_dict()} into a different {spec.family} network with at most {max_params} parameters")
