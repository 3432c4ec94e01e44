"""DINOv2's multi-crop augmentation (2 global + N local crops) on batches of tensors, built from kornia ops.

Reference: facebookresearch/dinov2 ``dinov2/data/augmentations.py::DataAugmentationDINO`` and
``dinov2/data/transforms.py`` (torchvision on PIL images, one image at a time). Each crop is

    random resized crop (bicubic) → horizontal flip (p 0.5) → colour jitter (0.4, 0.4, 0.2, 0.1; p 0.8)
    → grayscale (p 0.2) → Gaussian blur (global 1: p 1.0, global 2: p 0.1, local: p 0.5)
    → solarize (global 2 only, p 0.2) → normalise (ImageNet mean / std)

with global crops of 224 px (area fraction 0.32–1.0) and local crops of 96 px (0.05–0.32). Here the whole batch is
augmented at once, on its device (the LightningModule calls it after the transfer); every crop of every image has its
own random parameters. Where kornia's conventions differ from torchvision's, this module matches torchvision:

- **Resized crop.** The crop boxes come from kornia's ``RandomResizedCrop`` generator, which follows torchvision's
  ``get_params``: area fraction ``U(scale)``, width / height ``exp(U(log ratio))`` with ratio (3/4, 4/3), ten tries,
  then a fallback (kornia places the fallback at random, torchvision centres it; it only happens for scales near
  1). The resampling is ours: torchvision resizes the PIL crop with PIL's bicubic filter, which antialiases when it
  shrinks; kornia's crop interpolates without antialiasing (Keys a = −0.75). ``F.interpolate(bicubic,
  antialias=True)`` is PIL's filter (a = −0.5, support widened when shrinking); the result is clamped to
  ``[0, 1]``, as PIL's uint8 output saturates.
- **Colour jitter.** kornia's ``ColorJitter`` has torchvision's formulas and ranges (brightness multiplies by
  ``U(0.6, 1.4)``, contrast blends with the grayscale mean, saturation with the grayscale, hue shifts by ``U(−0.1,
  0.1)`` turns of the hue circle), but draws one order of the four steps for the whole batch; torchvision draws
  one per image (``randperm(4)``), and so does :class:`PerImageOrderColorJitter` here.
- **Blur.** DINOv2 uses torchvision's ``GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))`` (not PIL's radius blur of
  DINO v1): a 9-tap Gaussian with ``σ ~ U(0.1, 2.0)`` per image and reflect padding, which is kornia's
  ``RandomGaussianBlur((9, 9), (0.1, 2.0))`` with its default ``border_type="reflect"``.
  The probabilities are the paper's (BYOL's): 1.0, 0.1, 0.5. The official ``GaussianBlur`` passes ``1 − p`` to
  ``RandomApply`` (dinov2 PR #411, dinov3 issue #286), so the released checkpoints were trained with 0.0, 0.9, 0.5;
  pass ``blur_p=(0.0, 0.9, 0.5)`` to reproduce that.
- **Solarize.** torchvision's ``RandomSolarize(threshold=128)`` on uint8 inverts the pixels ``≥ 128``; on ``[0, 1]``
  images that is ``x ≥ 128/255 → 1 − x``. kornia's ``RandomSolarize`` draws its threshold from ``0.5 ± 0.1`` and
  adds a random brightness ``± 0.1`` by default; here the threshold is fixed at 128/255 and nothing is added
  (:class:`ThresholdSolarize`, a kornia intensity augmentation around ``kornia.enhance.solarize``).

Grey-level images (C = 1, e.g. digits) go through the same pipeline: saturation and hue leave a grey image unchanged
and grayscale is the identity on it (torchvision does the same on a 1-channel image), so the colour jitter applies
only brightness and contrast (in the per-image order) and the result equals the 3-channel pipeline on the grey image
repeated over 3 channels. ``mean`` / ``std`` then need one value (e.g. ``(0.5,)``).

Randomness: every parameter is drawn from torch's global CPU generator (kornia's generators are kept on the CPU in
float32 even when the module is moved to a GPU or to a half dtype), so ``torch.manual_seed`` reproduces a batch on
any device, and the checkpoints' saved RNG state resumes it. The crop boxes stay on the host, where the crops are
sliced: one antialiased resize per crop (``B·(2 + N)`` small kernels a step); the photometric steps run batched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.augmentation import random_generator as rg
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
    solarize,
)
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOLARIZE_THRESHOLD = 128 / 255  # torchvision's RandomSolarize(threshold=128) on uint8 images, on [0, 1] images

_JITTER_KEYS = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")


def _hue_in_turns(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision's hue factor is a fraction of the hue circle in [−0.5, 0.5]; kornia's ``adjust_hue`` takes radians."""
    return adjust_hue(images, factor * (2 * math.pi))


_JITTER_STEPS = (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction, adjust_saturation_with_gray_subtraction, _hue_in_turns)


class PerImageOrderColorJitter(K.IntensityAugmentationBase2D):
    """torchvision's ``ColorJitter`` on a batch: kornia's factors and formulas, with a random order of the four steps per image.

    ``params["order"]`` is ``(B, 4)``, a permutation of (brightness, contrast, saturation, hue) per image. On 1-channel
    images the saturation and hue steps are skipped (the identity on grey levels, as in torchvision).

    Args:
        brightness, contrast, saturation: ``x`` draws the factor from ``U(1 − x, 1 + x)`` (floored at 0).
        hue: ``x`` draws the shift from ``U(−x, x)`` turns of the hue circle (``x ≤ 0.5``).
        p: probability that an image is jittered.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0, p: float = 1.0) -> None:
        super().__init__(p=p)
        self._param_generator = rg.ColorJitterGenerator(brightness, contrast, saturation, hue)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        params = self._param_generator(batch_shape, self.same_on_batch)
        # replaces the generator's one randperm(4) for the batch; drawn on the CPU, where the rows are chosen below
        params["order"] = torch.rand(batch_shape[0], 4).argsort(dim=1)
        return params

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any], transform: Tensor | None = None) -> Tensor:
        images = input.clamp(0.0, 1.0)
        order = params["order"].cpu()
        factors = [params[key].to(images.device, images.dtype) for key in _JITTER_KEYS]
        num_steps = 4 if images.shape[-3] == 3 else 2  # saturation and hue are the identity on grey levels
        # position k applies, to each image, the k-th step of its own order: the images that share a step there
        # go through it together (each image still gets each step exactly once, in its order)
        for position in range(4):
            for step in range(num_steps):
                rows = (order[:, position] == step).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                rows = rows.to(images.device)
                adjusted = _JITTER_STEPS[step](images.index_select(0, rows), factors[step].index_select(0, rows))
                images = images.index_copy(0, rows, adjusted)
        return images.clamp(0.0, 1.0)


class ThresholdSolarize(K.IntensityAugmentationBase2D):
    """torchvision's ``RandomSolarize(threshold)``: with probability ``p`` an image's pixels ``≥ threshold`` become ``1 − x``.

    kornia's ``RandomSolarize`` draws a threshold and a brightness addition per image; pinning both ranges to a point
    would work too, but stores them as buffers that would end up in every checkpoint of the module that holds this.
    """

    def __init__(self, threshold: float = SOLARIZE_THRESHOLD, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.threshold = float(threshold)

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any], transform: Tensor | None = None) -> Tensor:
        return solarize(input.clamp(0.0, 1.0), self.threshold)


def resized_crops(images: Tensor, boxes: Sequence[Sequence[float]], size: int, source: Sequence[int]) -> Tensor:
    """``(K, C, size, size)``: crop ``k`` is ``images[source[k]]`` cut to ``boxes[k]`` and resized like PIL's bicubic.

    ``boxes[k]`` is ``(x0, y0, x1, y1)`` with inclusive pixel bounds. The resize is ``F.interpolate(bicubic,
    antialias=True)`` (PIL's filter, antialiased when shrinking), clamped to ``[0, 1]`` like PIL's saturated uint8; a
    crop already of the output size is copied as is.
    """
    crops = []
    for (x0, y0, x1, y1), index in zip(boxes, source, strict=True):
        crop = images[index : index + 1, :, int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]
        if crop.shape[-2:] != (size, size):
            crop = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        crops.append(crop)
    if not crops:
        return images.new_zeros(0, images.shape[1], size, size)
    return torch.cat(crops).clamp_(0.0, 1.0)


class MultiCrops(NamedTuple):
    """The crops of a batch: ``global_crops`` 2 tensors ``(B, C, G, G)``, ``local_crops`` ``num_local`` tensors ``(B, C, L, L)``."""

    global_crops: list[Tensor]
    local_crops: list[Tensor]


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if len(value) != 2 or not low < float(value[0]) <= float(value[1]) <= high:
        raise ValueError(f"{name} must be (min, max) with {low} < min <= max <= {high}, got {tuple(value)}")
    return float(value[0]), float(value[1])


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


class MultiCropAugmentation(nn.Module):
    """DINOv2's multi-crop augmentation of a batch; see the module docstring for the pipeline and the conventions.

    Args:
        global_size: side of the 2 global crops (224).
        local_size: side of the local crops (96).
        num_local_crops: number of local crops (8).
        global_scale: area fraction of the global crops (0.32, 1.0).
        local_scale: area fraction of the local crops (0.05, 0.32).
        mean: per-channel mean of the normalisation (ImageNet's; one value for grey-level images).
        std: per-channel std of the normalisation (ImageNet's; one value for grey-level images).
        ratio: width / height range of the crops, log-uniform (3/4, 4/3), torchvision's default.
        brightness: colour jitter brightness (0.4).
        contrast: colour jitter contrast (0.4).
        saturation: colour jitter saturation (0.2).
        hue: colour jitter hue, in turns of the hue circle (0.1).
        color_jitter_p: probability of the colour jitter (0.8).
        grayscale_p: probability of grayscale (0.2).
        blur_p: blur probabilities of (global crop 1, global crop 2, local crops): the paper's (1.0, 0.1, 0.5);
            (0.0, 0.9, 0.5) is what the official code does (see the module docstring).
        blur_kernel_size: taps of the Gaussian kernel (9, in pixels of the crops: consider fewer for tiny images).
        blur_sigma: range of the blur's standard deviation, in pixels (0.1, 2.0).
        solarize_p: probability of solarizing the second global crop (0.2).
        solarize_threshold: pixels ``≥`` it are inverted (128/255).
        hflip_p: probability of a horizontal flip (0.5).
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        num_local_crops: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        blur_kernel_size: int = 9,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_p: float = 0.2,
        solarize_threshold: float = SOLARIZE_THRESHOLD,
        hflip_p: float = 0.5,
    ) -> None:
        super().__init__()
        if global_size < 1 or local_size < 1:
            raise ValueError(f"crop sizes must be positive, got global_size={global_size}, local_size={local_size}")
        if num_local_crops < 0:
            raise ValueError(f"num_local_crops must be non-negative, got {num_local_crops}")
        self.global_size, self.local_size, self.num_local_crops = int(global_size), int(local_size), int(num_local_crops)
        self.global_scale = _check_range("global_scale", global_scale, 0.0, 1.0)
        self.local_scale = _check_range("local_scale", local_scale, 0.0, 1.0)
        self.ratio = _check_range("ratio", ratio, 0.0, math.inf)
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean and std need one value per channel (1 or 3), got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        if len(blur_p) != 3:
            raise ValueError(f"blur_p must be (global 1, global 2, local) probabilities, got {blur_p}")
        for name, p in (("color_jitter_p", color_jitter_p), ("grayscale_p", grayscale_p), ("solarize_p", solarize_p), ("hflip_p", hflip_p)):
            _check_probability(name, p)
        blur_p = tuple(_check_probability("blur_p", p) for p in blur_p)
        if blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd and positive, got {blur_kernel_size}")
        # kornia's reflect padding needs each side longer than the kernel's radius
        for name, size, p in (("global_size", global_size, max(blur_p[:2])), ("local_size", local_size, blur_p[2])):
            if p > 0 and size <= blur_kernel_size // 2:
                raise ValueError(f"{name}={size} is too small for a blur of {blur_kernel_size} taps (reflect padding needs > {blur_kernel_size // 2})")
        if not 0.0 <= solarize_threshold <= 1.0:
            raise ValueError(f"solarize_threshold must be in [0, 1] (images are in [0, 1]), got {solarize_threshold}")
        self.blur_p = blur_p
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1), persistent=False)

        # the box generator of kornia's RandomResizedCrop (torchvision's get_params); resized_crops does the resampling
        self.global_boxes = rg.ResizedCropGenerator((self.global_size,) * 2, scale=self.global_scale, ratio=self.ratio)
        self.local_boxes = rg.ResizedCropGenerator((self.local_size,) * 2, scale=self.local_scale, ratio=self.ratio)

        def blur(p: float) -> list[nn.Module]:
            kernel = (blur_kernel_size, blur_kernel_size)
            return [K.RandomGaussianBlur(kernel, blur_sigma, border_type="reflect", p=p)] if p > 0 else []

        def photometric(*extra: nn.Module) -> nn.Sequential:
            # the official order: flip (with the crop), colour jitter, grayscale, then the crop's own blur / solarize
            return nn.Sequential(
                K.RandomHorizontalFlip(p=hflip_p),
                PerImageOrderColorJitter(brightness, contrast, saturation, hue, p=color_jitter_p),
                K.RandomGrayscale(p=grayscale_p),
                *extra,
            )

        solarize_op = [ThresholdSolarize(solarize_threshold, p=solarize_p)] if solarize_p > 0 else []
        self.global_1 = photometric(*blur(blur_p[0]))
        self.global_2 = photometric(*blur(blur_p[1]), *solarize_op)
        self.local = photometric(*blur(blur_p[2]))

    def _pin_rng_to_cpu(self) -> None:
        # kornia moves its random generators with Module.to(); keep them on the CPU in float32: the draws are then the
        # same on every device and dtype (bf16-true would draw crop scales in bf16) and the crop boxes stay on the host
        cpu = torch.device("cpu")
        for module in self.modules():
            if isinstance(module, (K.AugmentationBase2D, rg.RandomGeneratorBase)) and (module.device != cpu or module.dtype != torch.float32):
                module.set_rng_device_and_dtype(cpu, torch.float32)

    def sample_boxes(self, num: int, height: int, width: int, local: bool = False) -> Tensor:
        """``(num, 4)`` crop boxes ``(x0, y0, x1, y1)`` (inclusive pixels) of global (or local) crops of a ``height × width`` image."""
        self._pin_rng_to_cpu()
        src = (self.local_boxes if local else self.global_boxes)((num, 1, height, width))["src"]
        # (num, 4, 2) corners (x, y): top-left, top-right, bottom-right, bottom-left
        return torch.stack([src[:, 0, 0], src[:, 0, 1], src[:, 2, 0], src[:, 2, 1]], dim=1)

    def _crops(self, images: Tensor, local: bool, copies: int) -> Tensor:
        """``copies`` crops of each image, crop-major: row ``j·B + b`` is crop ``j`` of image ``b``."""
        batch = images.shape[0]
        boxes = self.sample_boxes(copies * batch, images.shape[-2], images.shape[-1], local).tolist()
        size = self.local_size if local else self.global_size
        return resized_crops(images, boxes, size, [k % batch for k in range(copies * batch)])

    def normalize(self, images: Tensor) -> Tensor:
        """``(images − mean) / std`` per channel, with the augmentation's statistics."""
        return (images - self.mean.to(images.device, images.dtype)) / self.std.to(images.device, images.dtype)

    @torch.no_grad()
    def forward(self, images: Tensor) -> MultiCrops:
        """Crops of ``images``, a ``(B, C, H, W)`` float batch in ``[0, 1]`` with C = 1 or 3 (the channels of ``mean``)."""
        if images.dim() != 4 or not images.is_floating_point() or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty (B, C, H, W) float batch in [0, 1], got {tuple(images.shape)} {images.dtype}")
        if images.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"images have {images.shape[1]} channels but mean / std have {self.mean.shape[0]} values: "
                "give one value per channel (e.g. mean=(0.5,), std=(0.5,) for grey-level images)"
            )
        self._pin_rng_to_cpu()
        batch = images.shape[0]
        with torch.autocast(images.device.type, enabled=False):  # augment in float32 under mixed precision too
            images = images.float()
            global_crops = self._crops(images, local=False, copies=2)
            global_1 = self.normalize(self.global_1(global_crops[:batch]))
            global_2 = self.normalize(self.global_2(global_crops[batch:]))
            local_crops: list[Tensor] = []
            if self.num_local_crops:
                crops = self._crops(images, local=True, copies=self.num_local_crops)
                local_crops = list(self.normalize(self.local(crops)).split(batch))
        return MultiCrops([global_1, global_2], local_crops)

    def extra_repr(self) -> str:
        return (
            f"global 2 x {self.global_size} (scale {self.global_scale}), local {self.num_local_crops} x {self.local_size} "
            f"(scale {self.local_scale}), blur_p={self.blur_p}"
        )
