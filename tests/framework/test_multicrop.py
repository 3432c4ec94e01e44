"""DINOv2's multi-crop augmentation on batches (framework/data/multicrop.py), against torchvision's / PIL's conventions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from litzoo.framework.data.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    PerImageOrderColorJitter,
    ThresholdSolarize,
    resized_crops,
)

SMALL = dict(global_size=24, local_size=12, num_local_crops=3)
# only the crop (and what a test turns back on): photometric steps off, identity normalisation
PLAIN = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=0.0, hflip_p=0.0, mean=(0.0,) * 3, std=(1.0,) * 3)


def _all_crops(out):
    return out.global_crops + out.local_crops


def test_shapes_counts_and_values_normalised_with_mean_and_std():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 40, 36)
    out = MultiCropAugmentation(**SMALL)(images)
    assert len(out.global_crops) == 2 and len(out.local_crops) == 3
    assert all(c.shape == (3, 3, 24, 24) and c.dtype == torch.float32 for c in out.global_crops)
    assert all(c.shape == (3, 3, 12, 12) for c in out.local_crops)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for crop in _all_crops(out):
        assert torch.isfinite(crop).all()
        pixels = crop * std + mean  # every step keeps images in [0, 1] (the bicubic overshoot is clamped, as PIL's uint8)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert pixels.std() > 0.05
    assert MultiCropAugmentation(**{**SMALL, "num_local_crops": 0})(images).local_crops == []


def test_each_crop_comes_from_its_own_image():
    levels = torch.linspace(0.1, 0.9, 5)
    images = levels.view(5, 1, 1, 1).expand(5, 3, 30, 30)  # image b is flat at level b
    out = MultiCropAugmentation(**SMALL, **PLAIN)(images)
    for crop in _all_crops(out):
        assert torch.allclose(crop.mean((1, 2, 3)), levels, atol=1e-5)


def test_seeded_reproducibility_and_per_image_parameters():
    images = torch.rand(1, 3, 40, 40).repeat(6, 1, 1, 1)  # one image six times
    module = MultiCropAugmentation(**SMALL)
    torch.manual_seed(0)
    first = module(images)
    torch.manual_seed(0)
    again = module(images)
    torch.manual_seed(1)
    other = module(images)
    for a, b, c in zip(_all_crops(first), _all_crops(again), _all_crops(other), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        # the same image gets its own crop, flip, colours and blur in every row of the batch
        for i, j in itertools.combinations(range(6), 2):
            assert not torch.allclose(a[i], a[j], atol=1e-3)


def test_crop_boxes_respect_the_scale_and_ratio_ranges():
    module = MultiCropAugmentation(**SMALL)
    height, width = 100, 120
    torch.manual_seed(0)
    for local, (low, high) in ((True, (0.05, 0.32)), (False, (0.32, 1.0))):
        boxes = module.sample_boxes(4000, height, width, local=local)
        w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] < width).all() and (boxes[:, 3] < height).all()
        # w = round(sqrt(area·r)), h = round(sqrt(area/r)) for some area fraction in [low, high] and r in [3/4, 4/3]
        assert ((w + 0.5) * (h + 0.5) >= low * height * width).all() and ((w - 0.5) * (h - 0.5) <= high * height * width).all()
        assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
        fraction = w * h / (height * width)
        assert fraction.min() < low + 0.02 and fraction.max() > high - 0.04  # the whole range is used
        if local:  # local crops always fit: the area fraction is U(0.05, 0.32), of mean 0.185
            assert abs(fraction.mean().item() - 0.185) < 0.006
            assert abs(torch.log(w / h).mean().item()) < 0.01  # log-uniform ratio, symmetric around 1


def test_planted_ramps_reveal_that_each_crop_is_its_box():
    # channel 0 holds x, channel 1 holds y: a crop's first and last values give its extent. The global boxes are the
    # first draw of a forward call, so a replay of sample_boxes under the same seed gives the boxes of the crops.
    height, width, size = 96, 128, 32
    x = (torch.arange(width) + 0.5) / width
    y = (torch.arange(height) + 0.5) / height
    image = torch.stack([x.expand(height, width), y[:, None].expand(height, width), torch.full((height, width), 0.5)])
    images = image.expand(8, 3, height, width).contiguous()
    module = MultiCropAugmentation(global_size=size, num_local_crops=0, **PLAIN)
    torch.manual_seed(5)
    crops = torch.cat(module(images).global_crops)
    torch.manual_seed(5)
    boxes = module.sample_boxes(16, height, width)
    for crop, (x0, y0, x1, y1) in zip(crops, boxes.tolist(), strict=True):
        # output pixel j samples the input at x0 - 0.5 + (j + 0.5)·w/size: the first to last span is w·(size - 1)/size
        measured_w = (crop[0, :, -1] - crop[0, :, 0]).mean().item() * width * size / (size - 1)
        measured_h = (crop[1, -1, :] - crop[1, 0, :]).mean().item() * height * size / (size - 1)
        assert abs(measured_w - (x1 - x0 + 1)) < 1.5 and abs(measured_h - (y1 - y0 + 1)) < 1.5
        centre_x = crop[0].mean().item() * width - 0.5
        assert abs(centre_x - (x0 + x1) / 2) < 0.75
        fraction = measured_w * measured_h / (height * width)
        assert 0.32 * 0.9 < fraction < 1.05


def test_resize_is_pils_bicubic():
    # torchvision resizes the PIL crop with PIL's bicubic filter (a = -0.5, antialiased when shrinking); PIL rounds
    # its intermediate pass to uint8, hence 1 grey level. kornia's crop (Keys a = -0.75, no antialias) is 1.9-4 off.
    base = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    pixels = (F.interpolate(base, size=(50, 60), mode="bilinear", align_corners=False) * 180 + 40).round()  # smooth, no clipping
    pil_image = Image.fromarray(pixels[0].permute(1, 2, 0).numpy().astype(np.uint8))
    for box, size in (((5, 3, 44, 40), 24), ((0, 0, 59, 49), 50), ((10, 10, 29, 25), 48), ((3, 7, 33, 30), 96)):
        ours = resized_crops(pixels / 255, [box], size, [0])[0].permute(1, 2, 0).numpy() * 255
        x0, y0, x1, y1 = box
        pil = np.asarray(pil_image.crop((x0, y0, x1 + 1, y1 + 1)).resize((size, size), Image.BICUBIC), dtype=np.float64)
        assert np.abs(ours - pil).max() < 1.1, box


def test_solarize_inverts_only_the_pixels_at_or_above_128():
    levels = (torch.arange(256, dtype=torch.float32) / 255).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    # scale 1 and ratio 1: the crop is the whole image at its own size, copied as is
    module = MultiCropAugmentation(global_size=16, num_local_crops=0, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), **{**PLAIN, "solarize_p": 1.0})
    first, second = module(levels).global_crops
    assert torch.equal(first, levels)  # no solarization on the first global crop
    assert torch.equal(second, torch.where(levels >= 128 / 255, 1 - levels, levels))
    assert second[0, 0, 7, 15] == levels[0, 0, 7, 15]  # 127/255 stays
    assert torch.isclose(second[0, 0, 8, 0], levels[0, 0, 7, 15], rtol=0, atol=1e-7)  # 128/255 becomes 127/255
    with pytest.raises(ValueError, match="solarize_threshold"):
        MultiCropAugmentation(solarize_threshold=128)


def test_each_step_is_applied_with_its_probability():
    # blur 1.0 / 0.1 / 0.5 (the paper's; the official code blurs with 0.0 / 0.9 / 0.5), solarize 0.2 on crop 2 only,
    # colour jitter 0.8, grayscale 0.2, flip 0.5: the fraction of the 400 crops a step changed
    torch.manual_seed(0)
    images = torch.rand(400, 3, 16, 16)
    plain = dict(global_size=16, local_size=16, num_local_crops=1, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), ratio=(1.0, 1.0))

    def changed(options, crop):
        out = MultiCropAugmentation(**plain, **{**PLAIN, **options})(images)
        return ((_all_crops(out)[crop] - images).abs().flatten(1).amax(1) > 1e-6).float().mean().item()

    blur = {"blur_p": (1.0, 0.1, 0.5), "blur_sigma": (1.0, 2.0)}  # sigma 0.1 would change nothing visible
    assert changed(blur, 0) == 1.0 and abs(changed(blur, 1) - 0.1) < 0.05 and abs(changed(blur, 2) - 0.5) < 0.08
    assert changed({"solarize_p": 0.2}, 0) == 0.0 and abs(changed({"solarize_p": 0.2}, 1) - 0.2) < 0.06
    assert abs(changed({"color_jitter_p": 0.8}, 2) - 0.8) < 0.06
    assert abs(changed({"hflip_p": 0.5}, 0) - 0.5) < 0.08
    flipped = MultiCropAugmentation(**plain, **{**PLAIN, "hflip_p": 0.5})(images).global_crops[0]
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images, strict=True))  # left-right
    out = MultiCropAugmentation(**plain, **{**PLAIN, "grayscale_p": 0.2})(images)
    grey = (out.global_crops[0].amax(1) - out.global_crops[0].amin(1)).flatten(1).amax(1) < 1e-6
    assert abs(grey.float().mean().item() - 0.2) < 0.06


def _torchvision_jitter(image, order, factors):
    """torchvision's ColorJitter steps on one (3, H, W) image in ``order`` (hue left out: its factor is 0 here)."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    for step in order:
        factor = factors[step]
        gray = (image * weights).sum(0, keepdim=True)
        if step == 0:
            image = (image * factor).clamp(0, 1)
        elif step == 1:
            image = (factor * image + (1 - factor) * gray.mean()).clamp(0, 1)
        elif step == 2:
            image = (factor * image + (1 - factor) * gray).clamp(0, 1)
    return image


def test_colour_jitter_follows_each_images_own_order():
    # brightness then contrast differs from contrast then brightness only through the clamps: a bright image shows it
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    orders = torch.tensor(list(itertools.permutations(range(4))))  # the 24 orders, one per row
    factors = (1.4, 0.6, 1.3, 0.0)
    params = {key: torch.full((24,), value) for key, value in zip(("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"), factors, strict=True)}
    params |= {"order": orders, "batch_prob": torch.ones(24)}
    out = PerImageOrderColorJitter(0.4, 0.4, 0.2, 0.1)(image.expand(24, 3, 8, 8), params=params)
    for row, order in enumerate(orders.tolist()):
        assert torch.allclose(out[row], _torchvision_jitter(image, order, factors), atol=1e-5), order
    assert (out - out[:1]).abs().amax() > 0.05  # the order matters on this image
    # a fresh draw: one permutation per image, not one for the batch
    torch.manual_seed(0)
    jitter = PerImageOrderColorJitter(0.4, 0.4, 0.2, 0.1)
    drawn = jitter.forward_parameters(torch.Size((64, 3, 8, 8)))["order"]
    assert torch.equal(drawn.sort(1).values, torch.arange(4).expand(64, 4)) and len({tuple(o) for o in drawn.tolist()}) > 10


def test_hue_is_in_turns_of_the_circle_and_blur_is_torchvisions_9_tap_gaussian():
    red = torch.zeros(2, 3, 4, 4)
    red[:, 0] = 1.0
    params = {"brightness_factor": torch.ones(2), "contrast_factor": torch.ones(2), "saturation_factor": torch.ones(2)}
    params |= {"hue_factor": torch.tensor([1 / 3, -1 / 3]), "order": torch.tensor([[3, 0, 1, 2]] * 2), "batch_prob": torch.ones(2)}
    out = PerImageOrderColorJitter(hue=0.5)(red, params=params)
    green, blue = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    green[1], blue[2] = 1.0, 1.0
    assert torch.allclose(out[0], green, atol=1e-5) and torch.allclose(out[1], blue, atol=1e-5)
    # torchvision's GaussianBlur(9, sigma): x in linspace(-4, 4, 9), exp(-x²/2σ²) normalised, reflect padding
    blur = MultiCropAugmentation(**SMALL).global_1[-1]
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 1.9])
    out = blur(images, params={"sigma": sigma, "batch_prob": torch.ones(2)})
    for i in range(2):
        taps = torch.exp(-0.5 * (torch.linspace(-4, 4, 9) / sigma[i]) ** 2)
        taps = taps / taps.sum()
        padded = F.pad(images[i : i + 1], (4, 4, 4, 4), mode="reflect")
        ref = F.conv2d(padded, taps.view(1, 1, 1, 9).expand(3, 1, 1, 9), groups=3)
        ref = F.conv2d(ref, taps.view(1, 1, 9, 1).expand(3, 1, 9, 1), groups=3)
        assert torch.allclose(out[i], ref[0], atol=1e-5)
    assert isinstance(MultiCropAugmentation(**SMALL).global_2[-1], ThresholdSolarize)


def test_grey_level_images_equal_the_rgb_pipeline_on_repeated_channels():
    # on a grey image saturation, hue and grayscale are the identity, as in torchvision: same draws, same crops
    images = torch.rand(5, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    grey = MultiCropAugmentation(mean=(0.5,), std=(0.25,), **SMALL)(images)
    torch.manual_seed(3)
    rgb = MultiCropAugmentation(mean=(0.5,) * 3, std=(0.25,) * 3, **SMALL)(images.repeat(1, 3, 1, 1))
    for g, c in zip(_all_crops(grey), _all_crops(rgb), strict=True):
        assert g.shape[1] == 1 and torch.isfinite(g).all()
        assert torch.allclose(c, g.expand_as(c), atol=1e-5)
    with pytest.raises(ValueError, match="1 channels but mean / std have 3 values"):
        MultiCropAugmentation(**SMALL)(images)


def test_draws_stay_on_the_cpu_in_float32_when_the_module_moves():
    # kornia moves its generators with Module.to(); pinned to the CPU / float32, a moved module draws the same crops
    images = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    reference = MultiCropAugmentation(**SMALL)(images)
    moved = MultiCropAugmentation(**SMALL).to(torch.float64)
    torch.manual_seed(0)
    out = moved(images)
    for a, b in zip(_all_crops(reference), _all_crops(out), strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b)
    assert MultiCropAugmentation(**SMALL).state_dict() == {}  # nothing lands in the checkpoints of the module holding it


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="global_scale"):
        MultiCropAugmentation(global_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="blur_kernel_size"):
        MultiCropAugmentation(blur_kernel_size=4)
    with pytest.raises(ValueError, match="local_size=4 is too small"):
        MultiCropAugmentation(local_size=4)
    with pytest.raises(ValueError, match="color_jitter_p"):
        MultiCropAugmentation(color_jitter_p=1.2)
    with pytest.raises(ValueError, match="mean and std"):
        MultiCropAugmentation(mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="float batch"):
        MultiCropAugmentation(**SMALL)(torch.zeros(2, 3, 40, 40, dtype=torch.uint8))
    assert math.isclose(MultiCropAugmentation().blur_p[1], 0.1)
