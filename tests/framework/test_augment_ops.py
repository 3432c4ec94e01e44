"""The augmentation operations against hand computations and PIL (the official LA3 code's implementation), the
seeded magnitude draws, and the policy file: round trip and one-line errors naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from litzoo.framework.data.augment_ops import (
    LA3_OPS,
    OPS,
    AugmentPolicy,
    apply_sub_policies,
    augment_batch,
    cutout,
    draw_sub_policies,
    level_magnitude,
    load_policy,
    policy_to_json,
    rotate,
    save_policy,
    shear_x,
    translate_x,
    translate_y,
)
from litzoo.framework.errors import LitzooError


def ramp(height: int = 4, width: int = 4) -> torch.Tensor:
    return torch.arange(float(height * width)).reshape(1, 1, height, width)


def rgb_image(seed: int = 0, size: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def as_levels(tensor: torch.Tensor) -> np.ndarray:
    return torch.round(tensor[0].permute(1, 2, 0) * 255.0).to(torch.int64).numpy()


# ------------------------------------------------------------------------------------------------ geometry by hand
def test_half_turn_is_both_flips_and_quarter_turn_is_rot90():
    x = ramp()
    assert torch.equal(rotate(x, torch.tensor([180.0])), x.flip(-1, -2))
    assert torch.equal(rotate(x, torch.tensor([90.0])), torch.rot90(x, 1, (-2, -1)))  # counter-clockwise, as PIL
    assert torch.equal(rotate(x, torch.tensor([0.0])), x)
    assert torch.equal(OPS["Rotate180"](x, torch.zeros(1)), x.flip(-1, -2))


def test_translation_by_one_pixel_by_hand():
    x = ramp()
    left = torch.tensor([[1.0, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0], [13, 14, 15, 0]])  # PIL (1, 0, 1, 0, 1, 0): content moves left
    assert torch.equal(translate_x(x, torch.tensor([1.0]))[0, 0], left)
    up = torch.tensor([[4.0, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [0, 0, 0, 0]])
    assert torch.equal(translate_y(x, torch.tensor([1.0]))[0, 0], up)
    # TranslateX's magnitude is a fraction of the width: 0.25 of 4 pixels = one pixel; -0.25 moves right
    assert torch.equal(OPS["TranslateX"](x, torch.tensor([0.25]))[0, 0], left)
    assert torch.equal(OPS["TranslateX"](x, torch.tensor([-0.25]))[0, 0, :, 1:], x[0, 0, :, :3])


def test_shear_by_hand():
    # input point of output (x, y) is (x + y, y) at pixel centres: row r reads columns c + r + 1 (floor of c + r + 1)
    expected = torch.tensor([[1.0, 2, 3, 0], [6, 7, 0, 0], [11, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(shear_x(ramp(), torch.tensor([1.0]))[0, 0], expected)


@pytest.mark.parametrize("angle", [30.0, -17.0, 12.5])
def test_rotate_equals_pil(angle):
    image = rgb_image(1)
    ours = as_levels(rotate(as_tensor(image), torch.tensor([angle])))
    assert (ours == np.asarray(Image.fromarray(image).rotate(angle))).mean() > 0.97  # nearest: ties at pixel edges aside


@pytest.mark.parametrize("name, matrix", [("ShearX", (1, 0.3, 0, 0, 1, 0)), ("ShearY", (1, 0, 0, 0.3, 1, 0)), ("TranslateX", (1, 0, 3, 0, 1, 0))])
def test_affine_ops_equal_pil(name, matrix):
    image = rgb_image(2)
    magnitude = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 3 / 12}[name]
    pil = np.asarray(Image.fromarray(image).transform((12, 12), Image.AFFINE, matrix))
    assert (as_levels(OPS[name](as_tensor(image), torch.tensor([magnitude]))) == pil).all()


# ------------------------------------------------------------------------------------------------ pixels vs PIL
@pytest.mark.parametrize("name, magnitude, pil, tolerance", [
    ("Invert", 0.0, ImageOps.invert, 0),
    ("AutoContrast", 0.0, ImageOps.autocontrast, 1),
    ("Equalize", 0.0, ImageOps.equalize, 0),
    ("Solarize", 100.0, lambda im: ImageOps.solarize(im, 100), 0),
    ("Posterize", 4.0, lambda im: ImageOps.posterize(im, 4), 0),
    ("Posterize", 6.7, lambda im: ImageOps.posterize(im, 6), 0),
    ("Contrast", 1.7, lambda im: ImageEnhance.Contrast(im).enhance(1.7), 2),
    ("Color", 0.4, lambda im: ImageEnhance.Color(im).enhance(0.4), 1),
    ("Brightness", 1.3, lambda im: ImageEnhance.Brightness(im).enhance(1.3), 1),
    ("Sharpness", 1.8, lambda im: ImageEnhance.Sharpness(im).enhance(1.8), 1),
    ("Sharpness", 0.2, lambda im: ImageEnhance.Sharpness(im).enhance(0.2), 1),
])  # fmt: skip
def test_pixel_ops_equal_pil(name, magnitude, pil, tolerance):
    image = rgb_image(3)
    ours = as_levels(OPS[name](as_tensor(image), torch.tensor([magnitude])))
    theirs = np.asarray(pil(Image.fromarray(image))).astype(np.int64)
    assert np.abs(ours - theirs).max() <= tolerance


def test_pixel_ops_by_hand():
    x = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]])
    assert torch.allclose(OPS["Brightness"](x, torch.tensor([1.5])), torch.tensor([[[[0.0, 0.375], [0.75, 1.0]]]]))
    # contrast 0.5 blends halfway to the mean 0.4375
    assert torch.allclose(OPS["Contrast"](x, torch.tensor([0.5])), 0.4375 + 0.5 * (x - 0.4375))
    assert torch.equal(OPS["Color"](x, torch.tensor([0.1])), x)  # one channel: greyscale is the image itself
    # solarize 128: levels 0, 64 kept; 128 (0.5 -> 127.5 rounds to 128) and 255 inverted
    assert torch.allclose(OPS["Solarize"](x, torch.tensor([128.0])), torch.tensor([[[[0.0, 0.25], [0.5, 0.0]]]]))
    assert torch.allclose(OPS["AutoContrast"](x * 0.5 + 0.2, torch.zeros(1)), x)


def test_cutout_by_hand():
    x = torch.zeros(2, 1, 10, 10)
    # side 0.2 * 10 = 2 around centre (5, 5): x0 = int(5 - 1) = 4, the box is rows / columns 4 and 5
    out = cutout(x, torch.tensor([0.2, 0.0]), torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    expected = torch.zeros(10, 10)
    expected[4:6, 4:6] = 1.0  # white on one channel, as the official CutoutAbs on mode L
    assert torch.equal(out[0, 0], expected) and torch.equal(out[1], x[1])  # fraction 0: unchanged
    corner = cutout(torch.zeros(1, 3, 10, 10), torch.tensor([0.2]), torch.tensor([[0.0, 0.95]]))
    assert torch.allclose(corner[0, :, 9, 0], torch.tensor([125 / 255, 123 / 255, 114 / 255]))  # clipped at the border
    # centre (0, 9.5): x0 = int(max(0, -1)) = 0, x1 = 2; y0 = int(8.5) = 8, y1 = min(10, 10): rows 8-9, columns 0-1
    expected_box = torch.zeros(10, 10, dtype=torch.bool)
    expected_box[8:10, 0:2] = True
    assert torch.equal(corner[0, 0] > 0, expected_box)


def test_official_ops_and_level_map():
    assert LA3_OPS[-1] == "Identity" and len(LA3_OPS) == 16
    assert (OPS["Rotate"].low, OPS["Rotate"].high) == (-30.0, 30.0) and OPS["Rotate"].signed
    levels = torch.arange(10)
    assert torch.allclose(level_magnitude(OPS["Rotate"], levels, 10), torch.tensor([-30.0 + 6 * i for i in range(10)], dtype=torch.float64))


def test_magnitudes_drawn_as_the_generator_says():
    """Replay the draws by hand: per position a level, a mirror bit and a Cutout centre for every image, in that order."""
    x = ramp(8, 8).repeat(3, 1, 1, 1) / 64.0
    subs = [("TranslateX", "Identity"), ("Brightness", "Rotate"), ("Identity", "TranslateY")]
    out = apply_sub_policies(x, subs, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    level0, mirror0, _ = torch.randint(10, (3,), generator=g), torch.rand(3, generator=g) < 0.5, torch.rand(3, 2, generator=g)
    level1, mirror1, _ = torch.randint(10, (3,), generator=g), torch.rand(3, generator=g) < 0.5, torch.rand(3, 2, generator=g)
    shift = (-0.45 + level0[0].item() / 10 * 0.9) * (-1 if mirror0[0] else 1)
    assert torch.equal(out[0:1], translate_x(x[0:1], torch.tensor([shift * 8])))
    factor = 0.1 + level0[1].item() / 10 * 1.8
    angle = (-30 + level1[1].item() / 10 * 60) * (-1 if mirror1[1] else 1)
    assert torch.allclose(out[1:2], rotate((x[1:2] * factor).clamp(0, 1), torch.tensor([angle])))
    shift_y = (-0.45 + level1[2].item() / 10 * 0.9) * (-1 if mirror1[2] else 1)
    assert torch.equal(out[2:3], translate_y(x[2:3], torch.tensor([shift_y * 8])))
    assert torch.equal(out, apply_sub_policies(x, subs, torch.Generator().manual_seed(5)))


def test_sub_policies_come_from_the_label_s_set():
    policy = AugmentPolicy(sets={0: (("Invert",),), 1: (("FlipX",), ("FlipY",))}, shared=(("Identity",),))
    labels = torch.tensor([0, 1, 2, 1, 0, 1, 1, 1])
    subs = draw_sub_policies(labels, policy, torch.Generator().manual_seed(0))
    assert [s for s, label in zip(subs, labels) if label == 0] == [("Invert",)] * 2
    assert [s for s, label in zip(subs, labels) if label == 2] == [("Identity",)]
    assert {s for s, label in zip(subs, labels) if label == 1} == {("FlipX",), ("FlipY",)}
    agnostic = draw_sub_policies(labels, policy, torch.Generator().manual_seed(0), label_agnostic=True)
    assert set(agnostic) <= {("Identity",)}  # the shared set serves every label
    images = torch.rand(8, 1, 4, 4)
    out = augment_batch(images, labels, policy, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], 1 - images[0]) and torch.equal(out[2], images[2])


# ------------------------------------------------------------------------------------------------ policy files
def policy() -> AugmentPolicy:
    return AugmentPolicy(sets={0: (("Rotate", "Cutout", "Identity"), ("FlipX", "Equalize", "Posterize")), 3: (("ShearX", "ShearX", "ShearY"),)},
                         shared=(("Identity", "Identity", "Identity"),), ranges={"Rotate": (-10.0, 10.0)}, info={"seed": 3})  # fmt: skip


def test_policy_file_round_trips(tmp_path):
    path = save_policy(policy(), tmp_path / "p.json")
    loaded = load_policy(path)
    assert loaded.sets == policy().sets and loaded.shared == policy().shared and loaded.info == {"seed": 3}
    assert loaded.range_of("Rotate") == (-10.0, 10.0) and loaded.range_of("ShearX") == (-0.3, 0.3)
    assert policy_to_json(loaded) == policy_to_json(policy())
    text = path.read_text()
    assert '["Rotate", "Cutout", "Identity"]' in text  # readable: one sub-policy a line
    assert not list(tmp_path.glob(".*.tmp"))


def write(tmp_path, data, raw: str | None = None):
    path = tmp_path / "bad.json"
    path.write_text(raw if raw is not None else json.dumps(data))
    return path


@pytest.mark.parametrize("change, words", [
    (lambda d: d["labels"]["0"].append(["Rotate", "Spin", "Identity"]), "unknown operation 'Spin'"),
    (lambda d: d["ranges"].update(Rotate=[-45, 10]), "out of its range [-30, 30]"),
    (lambda d: d["labels"].update({"-1": [["Identity"]]}), "bad label '-1'"),
    (lambda d: d["labels"].update({"cat": [["Identity"]]}), "bad label 'cat'"),
    (lambda d: d.update(format="something"), "not an augmentation policy file"),
    (lambda d: d["labels"].update({"1": []}), "label 1 has an empty set"),
    (lambda d: d["ranges"].update(Rotate=[-5]), "must be [low, high]"),
])  # fmt: skip
def test_bad_policy_files_fail_in_one_line_naming_the_file(tmp_path, change, words):
    data = policy_to_json(policy())
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(LitzooError) as excinfo:
        load_policy(path)
    message = str(excinfo.value)
    assert str(path) in message and words in message and "\n" not in message, message


def test_non_finite_numbers_and_broken_json_are_refused(tmp_path):
    text = json.dumps(policy_to_json(policy()), indent=1).replace("-10.0", "NaN")
    with pytest.raises(LitzooError, match=r"bad\.json'.*non-finite number NaN"):
        load_policy(write(tmp_path, None, text))
    with pytest.raises(LitzooError, match=r"bad\.json' line 3: not a JSON"):
        load_policy(write(tmp_path, None, '{\n "format": "litzoo-augment-policy",\n "version": 1,,\n}'))
    with pytest.raises(LitzooError, match="does not exist"):
        load_policy(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="non-finite"):
        AugmentPolicy(shared=(("Rotate",),), ranges={"Rotate": (float("nan"), 1.0)})
