"""The masked-modelling parts of framework/nn: random token masking, sin-cos positions, patches."""

from __future__ import annotations

import math

import pytest
import torch

from litzoo.framework.nn import (
    denormalize_patches,
    gather_tokens,
    normalized_pixel_target,
    num_kept,
    patchify,
    random_token_mask,
    restore_tokens,
    sincos_pos_embed_1d,
    sincos_pos_embed_2d,
    unpatchify,
)

# ------------------------------------------------------------------------------------ masking


def test_kept_tokens_are_the_smallest_noise_in_noise_order():
    noise = torch.rand(5, 16, generator=torch.Generator().manual_seed(0))
    mask = random_token_mask(5, 16, 0.75, noise=noise)
    assert torch.equal(mask.ids_keep, torch.argsort(noise, dim=1)[:, :4])
    for b in range(5):  # the same, without argsort: the 4 indices of the 4 smallest values, ascending
        order = sorted(range(16), key=lambda n: float(noise[b, n]))
        assert mask.ids_keep[b].tolist() == order[:4]


def test_ids_restore_is_the_inverse_permutation():
    noise = torch.rand(3, 10, generator=torch.Generator().manual_seed(1))
    mask = random_token_mask(3, 10, 0.6, noise=noise)
    shuffle = torch.argsort(noise, dim=1)
    identity = torch.arange(10).expand(3, -1)
    assert torch.equal(torch.gather(shuffle, 1, mask.ids_restore), identity)
    assert torch.equal(torch.gather(mask.ids_restore, 1, shuffle), identity)


@pytest.mark.parametrize(("length", "ratio", "kept"), [(16, 0.75, 4), (196, 0.75, 49), (10, 0.55, 4), (7, 0.0, 7)])
def test_exact_mask_count(length, ratio, kept):
    mask = random_token_mask(4, length, ratio)
    assert num_kept(length, ratio) == kept == int(length * (1 - ratio))
    assert mask.ids_keep.shape == (4, kept)
    assert (mask.keep.sum(1) == kept).all()
    assert (mask.mae_mask().sum(1) == length - kept).all()


def test_keep_and_drop_conventions_are_explicit_and_consistent():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])  # ascending order: 1, 3, 2, 0 -> keep tokens 1 and 3
    mask = random_token_mask(1, 4, 0.5, noise=noise)
    assert mask.keep.tolist() == [[False, True, False, True]]  # Hiera: True = kept
    assert mask.drop.tolist() == [[True, False, True, False]]  # True = removed
    assert mask.mae_mask().tolist() == [[1.0, 0.0, 1.0, 0.0]]  # MAE: 1 = removed
    assert mask.mae_mask().dtype == torch.float32
    # MAE's own construction of the mask: ones, zero the first len_keep, unshuffle with ids_restore
    mae = torch.ones(1, 4)
    mae[:, :2] = 0
    assert torch.equal(torch.gather(mae, 1, mask.ids_restore), mask.mae_mask())


def test_gather_and_restore_put_tokens_back_in_place():
    tokens = torch.randn(2, 6, 3)
    mask = random_token_mask(2, 6, 0.5, noise=torch.rand(2, 6))
    kept = gather_tokens(tokens, mask.ids_keep)
    fill = torch.full((1, 1, 3), 7.0)
    restored = restore_tokens(kept, fill, mask.ids_restore)
    assert torch.equal(restored[mask.keep], tokens[mask.keep])  # kept tokens back at their places
    assert (restored[mask.drop] == 7.0).all()  # removed places hold the fill token


def test_bad_ratios_and_noise_are_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_token_mask(1, 16, 1.0)
    with pytest.raises(ValueError, match="keeps no token"):
        random_token_mask(1, 4, 0.9)
    with pytest.raises(ValueError, match="noise must have shape"):
        random_token_mask(2, 4, 0.5, noise=torch.rand(2, 5))


# ----------------------------------------------------------------------------- position embeddings


def test_sincos_1d_values_by_hand():
    embed = sincos_pos_embed_1d(6, torch.tensor([0.0, 3.0]))
    omegas = [1.0, 1 / 10000 ** (2 / 6), 1 / 10000 ** (4 / 6)]  # 1 / 10000^(2i/D)
    assert torch.allclose(embed[0], torch.tensor([0, 0, 0, 1, 1, 1.0]))
    expected = [math.sin(3 * w) for w in omegas] + [math.cos(3 * w) for w in omegas]
    assert torch.allclose(embed[1], torch.tensor(expected), atol=1e-7)


def test_sincos_2d_values_by_hand():
    embed = sincos_pos_embed_2d(8, 3, cls_token=True)  # 1 + 9 rows
    assert embed.shape == (10, 8) and embed.dtype == torch.float32
    assert (embed[0] == 0).all()  # the class-token slot
    omegas = [1.0, 0.01]  # D/2 = 4 channels per axis: 1 / 10000^(2i/4)

    def axis(m):
        return [math.sin(m * w) for w in omegas] + [math.cos(m * w) for w in omegas]

    for token, (row, col) in {0: (0, 0), 5: (1, 2), 7: (2, 1), 8: (2, 2)}.items():
        # MAE's layout: first half encodes the column (its meshgrid puts w first), second half the row
        assert torch.allclose(embed[1 + token], torch.tensor(axis(col) + axis(row)), atol=1e-7), token
    rect = sincos_pos_embed_2d(8, (2, 3))
    assert torch.allclose(rect[4], torch.tensor(axis(1) + axis(1)), atol=1e-7)  # token 4 = row 1, col 1
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed_2d(6, 2)


# ------------------------------------------------------------------------------------- patches


def test_patchify_layout_and_round_trip():
    images = torch.randn(2, 3, 6, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 6, 12)  # 3 x 2 grid of 2x2x3 patches
    # patch (row 1, col 1) = token 1*2 + 1, pixels in (row, column, channel) order as MAE's einsum
    assert torch.equal(patches[1, 3], images[1, :, 2:4, 2:4].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(patches, 2, 3, grid_size=(3, 2)), images)
    square = torch.randn(2, 1, 8, 8)
    assert torch.equal(unpatchify(patchify(square, 4), 4, 1), square)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patchify(torch.zeros(1, 1, 5, 5), 2)


def test_normalized_pixel_target_by_hand():
    patch = torch.tensor([[[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0]]])
    target = normalized_pixel_target(patch)
    var = (1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3  # unbiased, as torch.var
    expected = (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) / math.sqrt(var + 1e-6)
    assert torch.allclose(target[0, 0], expected)
    assert torch.equal(target[0, 1], torch.zeros(4))  # a constant patch has target 0
    assert torch.allclose(denormalize_patches(target, patch), patch, atol=1e-5)
