"""The AutoAugment operation space with magnitudes, on image batches, and label-aware augmentation policies as files.

The operations are those LA3 searches over (Zhao et al., "LA3: Efficient Label-Aware AutoAugment", ECCV 2022), as
the official code defines them (``LA3/augmentations.py`` of Simpleple/LA3-Label-Aware-AutoAugment, itself after
fast-autoaugment / rpmcruz/autoaugment): ``augment_list(for_autoaug=False)`` plus ``Identity``, the 16 names of
``augment_list_name_plus_identity(False)`` with the same magnitude ranges. They are written here with torch ops (and
kornia's PIL-equivalent ``equalize``) on float batches ``(B, C, H, W)`` in [0, 1], one magnitude per image, instead of
PIL on one image:

* geometry (``ShearX/Y``, ``TranslateX/Y``, ``Rotate``) samples the input at PIL's inverse affine map of each
  output pixel centre (corner origin, pixel centres at ``i + 0.5``, rotation about ``(W/2, H/2)`` counter-clockwise),
  nearest neighbour, zero fill, as ``Image.transform`` / ``Image.rotate`` do by default;
* ``Contrast``, ``Color``, ``Brightness``, ``Sharpness`` blend with PIL's degenerate image (grey mean, greyscale,
  black, the ``SMOOTH`` 3x3 filter with the border kept) as ``ImageEnhance`` does, on floats (no rounding to 8 bits);
* ``Solarize`` inverts pixels whose 8-bit level is at least the threshold; ``Posterize`` keeps the top bits of the
  8-bit level; ``AutoContrast`` stretches each channel's min..max to 0..1; ``Equalize`` is ``kornia.enhance.equalize``;
* ``Cutout`` (side ``v * W``) fills the square ``[x0, x0 + side) x [y0, y0 + side)`` whose centre is drawn uniformly
  (clipped at the border as the official ``CutoutAbs``) with the official fill: (125, 123, 114) / 255 for RGB, white
  (255, as ``CutoutAbs`` for mode ``L``) for one channel. PIL's rectangle also paints its closing row and column;
  the half-open box here does not.

How an operation is applied follows the official ``RandMagSingleAug`` / ``PDA_Aug_Policies_Op``: its magnitude *level*
is drawn uniformly from ``0..levels-1`` (``random.choice(range(10))``) at each application and mapped to
``low + level / levels * (high - low)``, so the top of the range is never reached, and the signed operations (shear,
translate, rotate; ``random_mirror``) flip the sign of the magnitude with probability 1/2. A sub-policy is a tuple
of operation names (LA3's triples), applied in order.

Three operations that the official list lacks are added for label-dependent harm on digits (``FlipX``, the official
``Flip`` that its list leaves out; ``FlipY``; ``Rotate180``): none has a magnitude. They are not in
:data:`LA3_OPS`; pass them in an op list to search over them.

Every random number (levels, signs, cutout centres, which sub-policy) comes from an explicit ``torch.Generator``,
all drawn up front in a fixed order, so an augmented batch is a function of the images, the labels, the policy and
the generator's seed only.

A :class:`AugmentPolicy` holds the sub-policies of each label (and a shared set for the other labels, or for all of
them in a label-agnostic policy) with the magnitude range of each operation. :func:`save_policy` writes it as a
readable JSON file (a temporary file renamed into place); :func:`load_policy` reads it back and refuses a bad file in
one line naming it: not JSON, an unknown operation, a magnitude range outside the operation's, a bad label, a
non-finite number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError

#: the official fill of Cutout on RGB images (``CutoutAbs``), in [0, 1]
CUTOUT_RGB_FILL = (125 / 255, 123 / 255, 114 / 255)
#: the ``format`` field of a policy file
POLICY_FORMAT = "litzoo-augment-policy"
POLICY_VERSION = 1

OpFunction = Callable[[Tensor, Tensor, Tensor], Tensor]  # (images, magnitudes (B,), uniform (B, 2)) -> images


# ----------------------------------------------------------------------------------------------------- geometry
def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Output pixel centres ``(x, y)`` in corner-origin coordinates, each ``(H, W)``."""
    y, x = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")  # fmt: skip
    return x, y


def affine_sample(images: Tensor, matrix: Tensor) -> Tensor:
    """``out[y, x] = images[in_y, in_x]`` with ``(in_x, in_y) = matrix @ (x, y, 1)`` (PIL's ``Image.transform(AFFINE)``).

    ``matrix`` is ``(B, 2, 3)``, the inverse map from an output pixel centre to the input point, in corner-origin
    pixel coordinates (centres at ``i + 0.5``). Nearest neighbour as PIL's: the input pixel is ``floor`` of the
    point; points outside the image read zero.
    """
    batch, channels, height, width = images.shape
    x, y = _pixel_grid(height, width, images.device)
    points = torch.stack([x, y, torch.ones_like(x)], -1).reshape(1, -1, 3).to(torch.float64)  # (1, HW, 3)
    source = torch.floor(points @ matrix.to(device=images.device, dtype=torch.float64).transpose(1, 2))  # (B, HW, 2)
    col, row = source[..., 0], source[..., 1]
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    flat = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).long()  # (B, HW)
    values = images.reshape(batch, channels, height * width).gather(2, flat.unsqueeze(1).expand(-1, channels, -1))
    values = values * inside.unsqueeze(1).to(images.dtype)
    return values.reshape(batch, channels, height, width)


def _affine_rows(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], -2)


def shear_x(images: Tensor, v: Tensor) -> Tensor:
    """PIL ``(1, v, 0, 0, 1, 0)``: the input point of output ``(x, y)`` is ``(x + v y, y)``."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return affine_sample(images, _affine_rows(one, v, zero, zero, one, zero))


def shear_y(images: Tensor, v: Tensor) -> Tensor:
    """PIL ``(1, 0, 0, v, 1, 0)``: the input point of output ``(x, y)`` is ``(x, v x + y)``."""
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    return affine_sample(images, _affine_rows(one, zero, zero, v, one, zero))


def translate_x(images: Tensor, pixels: Tensor) -> Tensor:
    """PIL ``(1, 0, t, 0, 1, 0)``: ``out[:, x] = in[:, x + t]`` (a positive ``t`` moves the content left)."""
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return affine_sample(images, _affine_rows(one, zero, pixels, zero, one, zero))


def translate_y(images: Tensor, pixels: Tensor) -> Tensor:
    """PIL ``(1, 0, 0, 0, 1, t)``: ``out[y] = in[y + t]`` (a positive ``t`` moves the content up)."""
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return affine_sample(images, _affine_rows(one, zero, zero, zero, one, pixels))


def rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """PIL ``Image.rotate(degrees)``: counter-clockwise about the image centre ``(W/2, H/2)``, nearest, zero fill."""
    height, width = images.shape[-2:]
    angle = -torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(angle), torch.sin(angle)
    cos = torch.where(cos.abs() < 1e-12, torch.zeros_like(cos), cos)  # PIL rounds to 15 digits: exact quarter turns
    sin = torch.where(sin.abs() < 1e-12, torch.zeros_like(sin), sin)
    cx, cy = width / 2.0, height / 2.0
    # input = R (p - c) + c with R = [[cos, sin], [-sin, cos]]
    c = cx - cos * cx - sin * cy
    f = cy + sin * cx - cos * cy
    return affine_sample(images, _affine_rows(cos, sin, c, -sin, cos, f))


# ----------------------------------------------------------------------------------------------------- colour
def _column(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def grayscale(images: Tensor) -> Tensor:
    """PIL's ``L`` conversion ``(299 R + 587 G + 114 B) / 1000`` as ``(B, 1, H, W)``; one channel is returned as is."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        return images.mean(1, keepdim=True)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def blend(degenerate: Tensor, images: Tensor, factor: Tensor) -> Tensor:
    """PIL ``ImageEnhance``: ``degenerate + factor (images - degenerate)``, clipped to [0, 1]."""
    return (degenerate + _column(factor) * (images - degenerate)).clamp(0.0, 1.0)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return blend(mean.expand_as(images), images, factor)


def color(images: Tensor, factor: Tensor) -> Tensor:
    return blend(grayscale(images).expand_as(images), images, factor)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    return blend(torch.zeros_like(images), images, factor)


def smooth(images: Tensor) -> Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``) with the border pixels kept."""
    channels = images.shape[1]
    kernel = torch.ones(3, 3, dtype=images.dtype, device=images.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(channels, 1, 3, 3)
    out = images.clone()
    if images.shape[-1] >= 3 and images.shape[-2] >= 3:
        out[..., 1:-1, 1:-1] = F.conv2d(images, kernel, groups=channels)
    return out


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    return blend(smooth(images), images, factor)


def autocontrast(images: Tensor) -> Tensor:
    """Each channel's min..max stretched to 0..1 (PIL ``autocontrast``, cutoff 0); a flat channel is kept."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    span = high - low
    stretched = (images - low) / span.clamp_min(1e-12)
    return torch.where(span > 0, stretched, images)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """PIL ``solarize``: invert the pixels whose 8-bit level ``round(255 x)`` is at least ``threshold`` (0..256)."""
    levels = torch.round(images * 255.0)
    return torch.where(levels >= _column(threshold), 1.0 - images, images)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """PIL ``posterize``: keep the top ``int(bits)`` bits of each pixel's 8-bit level."""
    levels = torch.round(images * 255.0).to(torch.int64)
    drop = (8 - bits.to(torch.int64).clamp(0, 8)).reshape(-1, 1, 1, 1)
    mask = (~((torch.ones_like(drop) << drop) - 1)) & 0xFF
    return (levels & mask).to(images.dtype) / 255.0


def cutout(images: Tensor, fraction: Tensor, uniform: Tensor) -> Tensor:
    """The official ``Cutout``: a square of side ``fraction * W`` around a centre at ``uniform * (W, H)``, filled.

    ``uniform`` is ``(B, 2)`` in [0, 1). As ``CutoutAbs``: ``x0 = int(max(0, cx - side / 2))``, ``x1 = min(W, x0 + side)``
    (likewise ``y``); a non-positive fraction leaves the image unchanged.
    """
    batch, channels, height, width = images.shape
    side = torch.round(fraction.to(torch.float64) * width * 1e6) / 1e6  # float32 magnitudes: 0.2 * 10 is 2, not 2.0000000298
    x0 = torch.clamp(uniform[:, 0].to(torch.float64) * width - side / 2.0, min=0.0).floor()
    y0 = torch.clamp(uniform[:, 1].to(torch.float64) * height - side / 2.0, min=0.0).floor()
    x1 = torch.clamp(x0 + side, max=float(width))
    y1 = torch.clamp(y0 + side, max=float(height))
    cols = torch.arange(width, dtype=torch.float64, device=images.device).reshape(1, 1, width)
    rows = torch.arange(height, dtype=torch.float64, device=images.device).reshape(1, height, 1)
    inside = (cols >= x0.reshape(-1, 1, 1)) & (cols < x1.reshape(-1, 1, 1)) & (rows >= y0.reshape(-1, 1, 1)) & (rows < y1.reshape(-1, 1, 1))
    inside = inside & (side > 0).reshape(-1, 1, 1)
    if channels == 3:
        fill = torch.tensor(CUTOUT_RGB_FILL, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    else:
        fill = torch.ones(1, channels, 1, 1, dtype=images.dtype, device=images.device)
    return torch.where(inside.unsqueeze(1), fill.expand(batch, -1, height, width), images)


# ----------------------------------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class AugmentOp:
    """One operation: its name, magnitude range, whether the magnitude's sign is mirrored at random, and its function.

    ``function(images, magnitudes, uniform)`` maps ``(B, C, H, W)`` images in [0, 1], one magnitude per image and
    ``(B, 2)`` uniform numbers (Cutout's centre) to the augmented images. ``has_magnitude`` is False for the
    operations whose range is unused (Identity, AutoContrast, Invert, Equalize, the flips).
    """

    name: str
    low: float
    high: float
    signed: bool
    function: OpFunction
    has_magnitude: bool = True

    def __call__(self, images: Tensor, magnitudes: Tensor, uniform: Tensor | None = None) -> Tensor:
        if uniform is None:
            uniform = torch.full((len(images), 2), 0.5, dtype=torch.float32, device=images.device)
        return self.function(images, magnitudes.to(images.device), uniform.to(images.device))


def _op(name: str, low: float, high: float, function: OpFunction, signed: bool = False, has_magnitude: bool = True) -> AugmentOp:
    return AugmentOp(name, float(low), float(high), signed, function, has_magnitude)


OPS: dict[str, AugmentOp] = {op.name: op for op in (
    _op("ShearX", -0.3, 0.3, lambda x, v, u: shear_x(x, v), signed=True),
    _op("ShearY", -0.3, 0.3, lambda x, v, u: shear_y(x, v), signed=True),
    _op("TranslateX", -0.45, 0.45, lambda x, v, u: translate_x(x, v * x.shape[-1]), signed=True),
    _op("TranslateY", -0.45, 0.45, lambda x, v, u: translate_y(x, v * x.shape[-2]), signed=True),
    _op("Rotate", -30, 30, lambda x, v, u: rotate(x, v), signed=True),
    _op("AutoContrast", 0, 1, lambda x, v, u: autocontrast(x), has_magnitude=False),
    _op("Invert", 0, 1, lambda x, v, u: 1.0 - x, has_magnitude=False),
    _op("Equalize", 0, 1, lambda x, v, u: _equalize(x), has_magnitude=False),
    _op("Solarize", 0, 256, lambda x, v, u: solarize(x, v)),
    _op("Posterize", 4, 8, lambda x, v, u: posterize(x, v)),
    _op("Contrast", 0.1, 1.9, lambda x, v, u: contrast(x, v)),
    _op("Color", 0.1, 1.9, lambda x, v, u: color(x, v)),
    _op("Brightness", 0.1, 1.9, lambda x, v, u: brightness(x, v)),
    _op("Sharpness", 0.1, 1.9, lambda x, v, u: sharpness(x, v)),
    _op("Cutout", 0, 0.2, cutout),
    _op("Identity", 0, 1, lambda x, v, u: x, has_magnitude=False),
    _op("FlipX", 0, 1, lambda x, v, u: x.flip(-1), has_magnitude=False),
    _op("FlipY", 0, 1, lambda x, v, u: x.flip(-2), has_magnitude=False),
    _op("Rotate180", 0, 1, lambda x, v, u: x.flip(-2, -1), has_magnitude=False),
)}  # fmt: skip

#: the official search space, in the official order (``augment_list_name_plus_identity(for_autoaug=False)``)
LA3_OPS: tuple[str, ...] = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "AutoContrast", "Invert", "Equalize", "Solarize",
    "Posterize", "Contrast", "Color", "Brightness", "Sharpness", "Cutout", "Identity",
)  # fmt: skip
#: the operations added for label-dependent harm on digits (none is in the official list)
ORIENTATION_OPS: tuple[str, ...] = ("FlipX", "FlipY", "Rotate180")


def _equalize(images: Tensor) -> Tensor:
    from kornia.enhance import equalize

    return equalize(images.clamp(0.0, 1.0))


def check_ops(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, each a known operation and none twice (ValueError otherwise)."""
    names = tuple(names)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation operation(s) {unknown}; the operations are {sorted(OPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation operations listed twice in {list(names)}")
    return names


def level_magnitude(op: AugmentOp, level: Tensor, levels: int, low: float | None = None, high: float | None = None) -> Tensor:
    """The official level -> magnitude map ``low + level / levels * (high - low)`` (level in ``0..levels-1``)."""
    low = op.low if low is None else low
    high = op.high if high is None else high
    return low + level.to(torch.float64) / levels * (high - low)


# ----------------------------------------------------------------------------------------------------- policies
SubPolicy = tuple[str, ...]


@dataclass(frozen=True)
class AugmentPolicy:
    """Sub-policies per label: each image draws one sub-policy of its label's set uniformly and applies its operations.

    Args:
        sets: label -> its sub-policies (tuples of operation names; LA3's are triples).
        shared: the sub-policies of every label that has no set of its own (a label-agnostic policy has only these).
        ranges: operation -> the magnitude range ``(low, high)`` its levels map to; within the operation's own range
            (narrower is allowed); operations not listed use their full range.
        levels: the number of magnitude levels (the official 10).
        info: free JSON-able notes (how the policy was searched, predicted scores); saved and loaded as they are.
    """

    sets: Mapping[int, tuple[SubPolicy, ...]] = field(default_factory=dict)
    shared: tuple[SubPolicy, ...] = ()
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    levels: int = 10
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = policy_problem(self)
        if problem:
            raise ValueError(problem)

    def range_of(self, name: str) -> tuple[float, float]:
        op = OPS[name]
        return tuple(self.ranges.get(name, (op.low, op.high)))  # type: ignore[return-value]

    def set_for(self, label: int) -> tuple[SubPolicy, ...]:
        """The sub-policies of ``label``: its own set, else the shared one (a ``KeyError`` if neither)."""
        found = self.sets.get(int(label)) or self.shared
        if not found:
            raise KeyError(f"the policy has no sub-policies for label {int(label)} and no shared set")
        return found

    def pooled(self) -> AugmentPolicy:
        """The label-agnostic version: one shared set (the shared set if any, else every label's sets, concatenated)."""
        shared = self.shared or tuple(p for label in sorted(self.sets) for p in self.sets[label])
        return AugmentPolicy(shared=shared, ranges=dict(self.ranges), levels=self.levels, info=dict(self.info))

    def ops_used(self) -> list[str]:
        return sorted({name for subs in (*self.sets.values(), self.shared) for sub in subs for name in sub})


def policy_problem(policy: AugmentPolicy) -> str | None:
    """What is wrong with ``policy`` in a few words (None when nothing is)."""
    if isinstance(policy.levels, bool) or not isinstance(policy.levels, int) or policy.levels < 1:
        return f"levels must be a positive integer, got {policy.levels!r}"
    if not policy.sets and not policy.shared:
        return "the policy has no sub-policies (neither per-label sets nor a shared set)"
    for label, subs in policy.sets.items():
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            return f"bad label {label!r}: labels are non-negative integers"
        if not subs:
            return f"label {label} has an empty set of sub-policies"
    for where, subs in [*((f"label {k}", v) for k, v in policy.sets.items()), ("the shared set", policy.shared)]:
        for sub in subs:
            if not isinstance(sub, tuple) or not sub:
                return f"{where}: a sub-policy must be a non-empty list of operation names, got {sub!r}"
            for name in sub:
                if name not in OPS:
                    return f"{where}: unknown operation {name!r} (the operations are {', '.join(sorted(OPS))})"
    for name, bounds in policy.ranges.items():
        if name not in OPS:
            return f"ranges: unknown operation {name!r} (the operations are {', '.join(sorted(OPS))})"
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
            return f"ranges: {name} must be [low, high], got {list(bounds)!r}"
        low, high = float(bounds[0]), float(bounds[1])
        if not (math.isfinite(low) and math.isfinite(high)):
            return f"ranges: {name} has a non-finite bound {list(bounds)!r}"
        op = OPS[name]
        if not (op.low <= low <= high <= op.high):
            return f"ranges: magnitude range [{low:g}, {high:g}] of {name} is out of its range [{op.low:g}, {op.high:g}]"
    return None


# ----------------------------------------------------------------------------------------------------- applying
def draw_sub_policies(labels: Tensor, policy: AugmentPolicy, generator: torch.Generator, label_agnostic: bool = False) -> list[SubPolicy]:
    """One sub-policy per image, uniform over its label's set (the shared set for all in ``label_agnostic`` mode)."""
    uniform = torch.rand(len(labels), generator=generator, dtype=torch.float64)
    agnostic = policy.pooled().shared if label_agnostic else None
    chosen = []
    for u, label in zip(uniform.tolist(), labels.tolist(), strict=True):
        subs = agnostic if agnostic is not None else policy.set_for(int(label))
        chosen.append(subs[min(int(u * len(subs)), len(subs) - 1)])
    return chosen


def apply_sub_policies(images: Tensor, sub_policies: Sequence[SubPolicy], generator: torch.Generator, levels: int = 10,
                       ranges: Mapping[str, tuple[float, float]] | None = None) -> Tensor:  # fmt: skip
    """Each image through its sub-policy, operation by operation, magnitudes drawn as the official code does.

    For each position ``j`` of the longest sub-policy, and for every image whatever its operation, the generator
    gives a level in ``0..levels-1``, a mirror bit and a Cutout centre, in that order: the draws do not depend on
    which operations the images have, so a batch is reproducible from the generator's seed.
    """
    if len(sub_policies) != len(images):
        raise ValueError(f"{len(images)} images but {len(sub_policies)} sub-policies")
    ranges = dict(ranges or {})
    out = images
    length = max((len(s) for s in sub_policies), default=0)
    for position in range(length):
        level = torch.randint(levels, (len(images),), generator=generator)
        mirror = torch.rand(len(images), generator=generator) < 0.5
        uniform = torch.rand(len(images), 2, generator=generator)
        names = [sub[position] if position < len(sub) else "Identity" for sub in sub_policies]
        for name in sorted(set(names) - {"Identity"}):
            op = OPS[name]
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], dtype=torch.long)
            low, high = ranges.get(name, (op.low, op.high))
            magnitude = level_magnitude(op, level[rows], levels, low, high)
            if op.signed:
                magnitude = torch.where(mirror[rows], -magnitude, magnitude)
            index = rows.to(images.device)
            if out is images:
                out = images.clone()
            out[index] = op(out[index], magnitude.float(), uniform[rows])
    return out


def augment_batch(images: Tensor, labels: Tensor, policy: AugmentPolicy, generator: torch.Generator, label_agnostic: bool = False) -> Tensor:
    """``images`` (``(B, C, H, W)`` in [0, 1]) each augmented by a sub-policy drawn from its label's set."""
    subs = draw_sub_policies(labels, policy, generator, label_agnostic)
    return apply_sub_policies(images, subs, generator, policy.levels, policy.ranges)


# ----------------------------------------------------------------------------------------------------- files
def policy_to_json(policy: AugmentPolicy) -> dict[str, Any]:
    """The readable JSON form of a policy (see :func:`save_policy`)."""
    data: dict[str, Any] = {"format": POLICY_FORMAT, "version": POLICY_VERSION, "levels": policy.levels}
    used = policy.ops_used()
    data["ranges"] = {name: list(policy.range_of(name)) for name in used if OPS[name].has_magnitude}
    data["labels"] = {str(label): [list(sub) for sub in policy.sets[label]] for label in sorted(policy.sets)}
    if policy.shared:
        data["shared"] = [list(sub) for sub in policy.shared]
    if policy.info:
        data["info"] = dict(policy.info)
    return data


def save_policy(policy: AugmentPolicy, path: str | Path) -> Path:
    """Writes ``policy`` to ``path`` as indented JSON (one sub-policy a line), through a temporary file renamed into place.

    The file: ``{"format": "litzoo-augment-policy", "version": 1, "levels": 10, "ranges": {op: [low, high]},
    "labels": {"<label>": [[op, op, op], ...]}, "shared": [[op, op, op], ...], "info": {...}}``.
    """
    path = Path(path)
    text = json.dumps(policy_to_json(policy), indent=1, allow_nan=False)
    text = _compact_lists(text)  # one sub-policy a line: ["Rotate", "Identity", "Cutout"] rather than five lines
    with write_files_atomically(path) as (staged,):  # the usual permissions, not mkstemp's owner-only ones
        staged.write_text(text + "\n")
    return path


def _compact_lists(text: str) -> str:
    """Innermost JSON lists of scalars on one line each."""
    import re

    return re.sub(r"\[\s*((?:[^\[\]{}\s][^\[\]{}]*?)?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1).strip()) + "]", text)


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def load_policy(path: str | Path) -> AugmentPolicy:
    """The policy in ``path`` (written by :func:`save_policy`, or by hand in that format).

    Raises:
        LitzooError: one line naming the file and what is wrong: missing, not JSON (with the line), not a policy
            file, a bad label, an unknown operation, a magnitude range outside the operation's, a non-finite number.
    """
    path = Path(path)
    if not path.is_file():
        raise LitzooError(f"augmentation policy file '{path}' does not exist")
    try:
        data = json.loads(path.read_text(), parse_constant=_reject_constant)
    except ValueError as error:
        if isinstance(error, json.JSONDecodeError):
            raise LitzooError(f"'{path}' line {error.lineno}: not a JSON augmentation policy ({error.msg})") from None
        raise LitzooError(f"'{path}': {error} (NaN / Infinity are not allowed)") from None
    except UnicodeDecodeError as error:
        raise LitzooError(f"'{path}': not a text file ({error.reason})") from None
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
        raise LitzooError(f"'{path}' is not an augmentation policy file: expected a JSON object with \"format\": \"{POLICY_FORMAT}\"")
    if data.get("version") != POLICY_VERSION:
        raise LitzooError(f"'{path}': unsupported policy version {data.get('version')!r} (this litzoo reads version {POLICY_VERSION})")
    try:
        policy = _policy_from_json(data)
    except (TypeError, ValueError) as error:
        raise LitzooError(f"'{path}': {error}") from None
    return policy


def _sub_policies(value: Any, where: str) -> tuple[SubPolicy, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of sub-policies (lists of operation names), got {type(value).__name__}")
    subs = []
    for sub in value:
        if not isinstance(sub, list) or not all(isinstance(name, str) for name in sub):
            raise ValueError(f"{where}: a sub-policy must be a list of operation names, got {sub!r}")
        subs.append(tuple(sub))
    return tuple(subs)


def _policy_from_json(data: dict[str, Any]) -> AugmentPolicy:
    labels = data.get("labels", {})
    if not isinstance(labels, dict):
        raise ValueError(f"\"labels\" must be an object of label -> sub-policies, got {type(labels).__name__}")
    sets = {}
    for key, value in labels.items():
        if not (isinstance(key, str) and key.isdigit() and key.isascii()):
            raise ValueError(f"bad label {key!r}: labels are non-negative integers")
        sets[int(key)] = _sub_policies(value, f"label {key}")
    shared = _sub_policies(data.get("shared", []), "\"shared\"")
    ranges = data.get("ranges", {})
    if not isinstance(ranges, dict):
        raise ValueError(f"\"ranges\" must be an object of operation -> [low, high], got {type(ranges).__name__}")
    levels = data.get("levels", 10)
    info = data.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"\"info\" must be an object, got {type(info).__name__}")
    return AugmentPolicy(sets=sets, shared=shared, ranges={k: tuple(v) if isinstance(v, list) else v for k, v in ranges.items()},
                         levels=levels, info=info)  # fmt: skip


__all__ = [
    "LA3_OPS", "OPS", "ORIENTATION_OPS", "AugmentOp", "AugmentPolicy", "affine_sample", "apply_sub_policies", "augment_batch",
    "check_ops", "cutout", "draw_sub_policies", "level_magnitude", "load_policy", "policy_to_json", "rotate", "save_policy",
    "shear_x", "shear_y", "translate_x", "translate_y",
]  # fmt: skip
