"""BEiT / DINOv2 block masking and the iBOT masks of a batch (framework/nn/block_masking.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from litzoo.framework.nn.block_masking import BlockMaskGenerator, ibot_masks

# ------------------------------------------------------------------------------------ the official loop, by hand


class _Recorded:
    """Hands out a fixed list of U[0, 1) numbers and counts how many were taken."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.taken = values, 0

    def __call__(self) -> float:
        self.taken += 1
        return self.values[self.taken - 1]


def test_hand_checked_loop_with_fixed_uniforms():
    # 4 x 4 grid, blocks of >= 4 patches, aspect in [0.3, 1/0.3], target 6. Each try takes (area, aspect) and, when
    # the block fits, (top, left); area = 4 + (max_mask_patches - 4)·u, log aspect = log 0.3 + (log(1/0.3) - log 0.3)·u.
    uniforms = _Recorded([
        # block 1, max_mask_patches = min(6, 8) = 6
        0.0, 0.0,             # area 4, aspect 0.3: 1 x round(3.65) = 1 x 4, not narrower than the grid: skipped, no position drawn
        0.0, 0.5, 0.0, 0.99,  # area 4, aspect 1: 2 x 2 at top 0, left int(0.99·3) = 2: 4 new patches
        # block 2, max_mask_patches = 6 - 4 = 2: area 4 + (2 - 4)·u
        0.0, 0.5, 0.0, 0.99,  # the same 2 x 2 block: 0 new patches, not kept
        0.5, 0.0, 0.0, 0.5,   # area 3, aspect 0.3: 1 x 3 at top 0, left int(0.5·2) = 1: 1 new patch (0, 1) <= 2
        # block 3, max_mask_patches = 1: area 4 - 3·0.99 = 1.03
        0.99, 0.5, 0.9, 0.0,  # 1 x 1 at top int(0.9·4) = 3, left 0: the 6th patch
        0.123,                # never taken: the target is reached
    ])  # fmt: skip
    mask = BlockMaskGenerator(4, max_num_patches=8).mask_from_uniforms(6, uniforms)
    expected = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert uniforms.taken == 18


def test_a_block_that_fails_all_its_tries_ends_the_mask_short():
    # every try draws a 1 x 4 block on a 4-wide grid (not strictly narrower): after `attempts` tries the mask is given up
    uniforms = _Recorded([0.0, 0.0] * 3 + [0.5] * 10)
    mask = BlockMaskGenerator(4, attempts=3).mask_from_uniforms(5, uniforms)
    assert not mask.any()
    assert uniforms.taken == 6


def test_block_orientation_rows_are_sqrt_area_times_aspect():
    # area 8 and aspect 2 pinned: round(sqrt(16)) = 4 rows, round(sqrt(4)) = 2 columns
    generator = BlockMaskGenerator(10, max_num_patches=8, min_num_patches=8, min_aspect=2.0, max_aspect=2.0)
    mask = generator(8, torch.Generator().manual_seed(0))
    rows, cols = np.nonzero(mask.numpy())
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (4, 2)
    assert int(mask.sum()) == 8
    # a (h, w) grid: each block stays strictly shorter than its 3 rows
    wide = BlockMaskGenerator((3, 12), max_num_patches=18)
    assert wide(18, torch.Generator().manual_seed(0)).shape == (3, 12)
    stream = iter(torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).tolist()).__next__
    for _ in range(200):
        block = np.zeros((3, 12), dtype=bool)
        if wide.place_block(block, 18, stream):
            assert block.any(axis=1).sum() < 3


# ------------------------------------------------------------------------------------ statistics


def test_one_block_on_an_empty_grid_is_a_rectangle_within_the_area_and_aspect_bounds():
    generator = BlockMaskGenerator(16)  # DINOv2: 224 / 14, max 0.5·N = 128 patches per block, aspect [0.3, 3.33]
    uniforms = torch.rand(40_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).tolist()
    stream = iter(uniforms).__next__
    taller = wider = 0
    aspects = []
    for _ in range(2000):
        mask = np.zeros((16, 16), dtype=bool)
        new = generator.place_block(mask, 128, stream)
        assert new > 0  # an empty grid always takes a block within 10 tries here
        rows, cols = np.nonzero(mask)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height * width == new == mask.sum()  # a filled rectangle
        assert height < 16 and width < 16
        # some area in [4, 128] and aspect in [0.3, 1/0.3] round to (height, width):
        # (h ± 0.5)^2 brackets area·aspect and (w ± 0.5)^2 brackets area/aspect
        assert (height - 0.5) / (width + 0.5) <= 1 / 0.3 and (height + 0.5) / (width - 0.5) >= 0.3
        assert (height - 0.5) * (width - 0.5) <= 128 and (height + 0.5) * (width + 0.5) >= 4
        taller += height > width
        wider += height < width
        aspects.append(height / width)
    # log-uniform aspect: as many tall blocks as wide ones (a uniform aspect in [0.3, 3.33] gives 77 % tall)
    assert abs(taller - wider) / 2000 < 0.05
    assert min(aspects) <= 0.34 and max(aspects) >= 3.0  # the extremes are reached (e.g. 1 x 4 and 4 x 1)


@pytest.mark.parametrize("side", [16, 7])
def test_counts_never_exceed_the_target_and_rarely_fall_short(side):
    # On the official code (Python's random, 20 000 draws of int(N·U(0.1, 0.5)) patches): 16 x 16 gives 91.8 % exact
    # counts and a mean shortfall of 0.085 (at most 5); 7 x 7 gives 95.5 % and 0.046. A count that adds whole blocks
    # instead of the new patches (no delta accounting) stops far short.
    num_patches = side * side
    generator = BlockMaskGenerator(side)
    rng = torch.Generator().manual_seed(1)
    targets = (num_patches * (0.1 + 0.4 * torch.rand(2000, generator=rng))).long().tolist()
    shortfalls = np.array([target - int(generator(target, rng).sum()) for target in targets])
    assert shortfalls.min() >= 0
    assert (shortfalls == 0).mean() > 0.88
    assert shortfalls.mean() < 0.15
    assert shortfalls.max() < 8


# ------------------------------------------------------------------------------------ the iBOT masks of a batch


def test_stratified_ratios_and_the_shuffle():
    # 8 images, 4 masked, strata linspace(0.1, 0.5, 5): the k-th smallest count falls in stratum k, whose mean is
    # N·(p_k + p_k+1)/2 - 0.5 (the int) - about 0.09 (the shortfall); one U(0.1, 0.5) for all would give the order
    # statistics N·(0.18, 0.26, 0.34, 0.42), 7.7 patches off.
    generator_fn = BlockMaskGenerator(16)
    rng = torch.Generator().manual_seed(0)
    probs = torch.linspace(0.1, 0.5, 5)
    caps = (256 * probs).long()  # int(N·p) in float32, as the official code
    sorted_counts, masked_positions = [], torch.zeros(8)
    for _ in range(300):
        result = ibot_masks(8, generator_fn, generator=rng)
        counts = result.masks.sum(-1)
        assert int((counts > 0).sum()) == 4
        stratum_counts = counts[counts > 0].sort().values
        assert torch.all(stratum_counts <= caps[1:]) and torch.all(stratum_counts >= caps[:-1] - 8)
        sorted_counts.append(stratum_counts.float())
        masked_positions += (counts > 0).float()
    means = torch.stack(sorted_counts).mean(0)
    expected = 256 * (probs[:-1] + probs[1:]) / 2 - 0.5 - 0.09
    assert torch.allclose(means, expected, atol=1.5), (means, expected)
    # shuffled: every position is masked about half the time (without the shuffle, always the first 4)
    frequency = masked_positions / 300
    assert torch.all((frequency > 0.4) & (frequency < 0.6)), frequency


@pytest.mark.parametrize("num_images", [1, 2, 7, 8])
def test_masked_image_count_and_the_bookkeeping(num_images):
    generator_fn = BlockMaskGenerator(16)
    result = ibot_masks(num_images, generator_fn, generator=torch.Generator().manual_seed(3))
    masks = result.masks
    assert masks.shape == (num_images, 256) and masks.dtype == torch.bool
    per_image = masks.sum(-1)
    assert int((per_image > 0).sum()) == int(num_images * 0.5)
    assert torch.equal(result.mask_indices, masks.flatten().nonzero().flatten())
    assert torch.equal(result.n_masked_patches, torch.tensor([masks.sum()]))
    # each masked image's patch weights are 1/#masked and sum to 1; unmasked images have none
    image_of_patch = result.mask_indices // 256
    assert torch.allclose(result.masks_weight, 1.0 / per_image[image_of_patch].float())
    totals = torch.zeros(num_images).index_add_(0, image_of_patch, result.masks_weight)
    assert torch.allclose(totals, (per_image > 0).float())
    assert int(result.n_masked_patches) <= result.upperbound


def test_upperbound_by_hand():
    # 8 images -> 4 masked, probs = [0.1, 0.2, 0.3, 0.4, 0.5]: int(256·0.2) + int(256·0.3) + int(256·0.4) + int(256·0.5)
    result = ibot_masks(8, BlockMaskGenerator(16), generator=torch.Generator().manual_seed(0))
    assert result.upperbound == 51 + 76 + 102 + 128
    assert ibot_masks(1, BlockMaskGenerator(16)).upperbound == 0  # int(1·0.5) = 0 images masked


def test_seeded_resumable_and_free_of_python_random():
    generator_fn = BlockMaskGenerator(14)

    def draw(seed_python: int, rng: torch.Generator):
        random.seed(seed_python)  # the official code's state: must not matter here
        return ibot_masks(16, generator_fn, generator=rng)

    rng = torch.Generator().manual_seed(7)
    first, second = draw(0, rng), draw(0, rng)
    replay = torch.Generator().manual_seed(7)
    assert torch.equal(draw(1, replay).masks, first.masks)
    state = replay.get_state()
    assert torch.equal(draw(2, replay).masks, second.masks)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(draw(3, resumed).masks, second.masks)  # resuming from a saved state continues the stream
    assert not torch.equal(first.masks, second.masks)
    # without a generator, torch's global generator (saved in checkpoints) drives it
    torch.manual_seed(11)
    a = ibot_masks(16, generator_fn).masks
    torch.manual_seed(11)
    assert torch.equal(ibot_masks(16, generator_fn).masks, a)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="grid_size"):
        BlockMaskGenerator(0)
    with pytest.raises(ValueError, match="max_aspect"):
        BlockMaskGenerator(8, min_aspect=0.5, max_aspect=0.4)
    with pytest.raises(ValueError, match="min_aspect"):
        BlockMaskGenerator(8, min_aspect=0.0)
    with pytest.raises(ValueError, match="attempts"):
        BlockMaskGenerator(8, attempts=0)
    with pytest.raises(ValueError, match="num_masking_patches"):
        BlockMaskGenerator(4)(17)
    with pytest.raises(ValueError, match="mask_probability"):
        ibot_masks(4, BlockMaskGenerator(4), mask_probability=1.5)
    with pytest.raises(ValueError, match="ratio_range"):
        ibot_masks(4, BlockMaskGenerator(4), ratio_range=(0.5, 0.1))
