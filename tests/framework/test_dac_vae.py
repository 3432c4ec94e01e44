"""DAC-VAE encoder: Snake by formula, the release's shapes by hand, and the whole encoder against a transcription of the
official forward (perception_models core/audio_visual_encoder/audio_codec.py over transformers' DacEncoder) written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litzoo.framework.nn.dac_vae import DAC_VAE_RELEASE, DacEncoderVAE, Snake1d


def official_dac_state_dict(hidden, ratios, codebook_dim, seed=0):
    """A state dict under the names and shapes of DacEncoderVAE(DacConfig(encoder_hidden_size=hidden, downsampling_ratios=ratios))."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"encoder.conv1.weight": r(hidden, 1, 7), "encoder.conv1.bias": r(hidden)}
    for i, s in enumerate(ratios):
        c = hidden * 2 ** (i + 1)
        p = f"encoder.block.{i}."
        for u in (1, 2, 3):
            q = f"{p}res_unit{u}."
            sd |= {q + "snake1.alpha": 1 + r(1, c // 2, 1), q + "conv1.weight": r(c // 2, c // 2, 7), q + "conv1.bias": r(c // 2)}
            sd |= {q + "snake2.alpha": 1 + r(1, c // 2, 1), q + "conv2.weight": r(c // 2, c // 2, 1), q + "conv2.bias": r(c // 2)}
        sd |= {p + "snake1.alpha": 1 + r(1, c // 2, 1), p + "conv1.weight": r(c, c // 2, 2 * s), p + "conv1.bias": r(c)}
    d = hidden * 2 ** len(ratios)
    sd |= {"encoder.snake1.alpha": 1 + r(1, d, 1), "encoder.conv2.weight": r(d, d, 3), "encoder.conv2.bias": r(d)}
    sd |= {"bottleneck.in_proj.weight": r(2 * codebook_dim, d, 1), "bottleneck.in_proj.bias": r(2 * codebook_dim)}
    sd |= {"bottleneck.out_proj.weight": r(d, codebook_dim, 1), "bottleneck.out_proj.bias": r(d)}
    return sd


def ref_snake(x, alpha):
    return x + 1.0 / (alpha + 1e-9) * torch.sin(alpha * x) ** 2


def ref_encode(sd, wav, ratios, codebook_dim):
    hop = math.prod(ratios)
    if wav.shape[-1] % hop:
        wav = F.pad(wav, (0, hop - wav.shape[-1] % hop), mode="reflect")
    x = F.conv1d(wav, sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], padding=3)
    for i, s in enumerate(ratios):
        p = f"encoder.block.{i}."
        for u, dil in zip((1, 2, 3), (1, 3, 9)):
            q = f"{p}res_unit{u}."
            y = F.conv1d(ref_snake(x, sd[q + "snake1.alpha"]), sd[q + "conv1.weight"], sd[q + "conv1.bias"], dilation=dil, padding=3 * dil)
            y = F.conv1d(ref_snake(y, sd[q + "snake2.alpha"]), sd[q + "conv2.weight"], sd[q + "conv2.bias"])
            x = x + y
        x = F.conv1d(ref_snake(x, sd[p + "snake1.alpha"]), sd[p + "conv1.weight"], sd[p + "conv1.bias"], stride=s, padding=math.ceil(s / 2))
    x = F.conv1d(ref_snake(x, sd["encoder.snake1.alpha"]), sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], padding=1)
    return F.conv1d(x, sd["bottleneck.in_proj.weight"], sd["bottleneck.in_proj.bias"])[:, :codebook_dim]


def test_snake_by_formula():
    snake = Snake1d(2)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1))
    x = torch.tensor([[[math.pi / 2, 0.0], [math.pi / 4, 1.0]]])
    expected = torch.tensor([[[math.pi / 2 + 1, 0.0], [math.pi / 4 + 1 / 2, 1 + math.sin(2.0) ** 2 / 2]]])
    torch.testing.assert_close(snake(x), expected, atol=1e-6, rtol=1e-6)


def test_release_configuration_shapes_by_hand():
    model = DacEncoderVAE(**DAC_VAE_RELEASE)
    assert model.hop_length == 1920  # 2 * 8 * 10 * 12: 25 frames a second at 48 kHz
    sd = model.state_dict()
    assert sd["encoder.conv1.weight"].shape == (64, 1, 7)
    assert sd["encoder.block.0.res_unit1.conv1.weight"].shape == (64, 64, 7)  # block 1 works at 64, outputs 128
    assert sd["encoder.block.0.conv1.weight"].shape == (128, 64, 4)  # kernel 2 * stride 2
    assert sd["encoder.block.3.conv1.weight"].shape == (1024, 512, 24)  # stride 12
    assert sd["encoder.conv2.weight"].shape == (1024, 1024, 3)
    assert sd["bottleneck.in_proj.weight"].shape == (256, 1024, 1) and sd["bottleneck.out_proj.weight"].shape == (1024, 128, 1)
    assert len(sd) == 2 + 4 * (3 * 6 + 3) + 3 + 4  # conv1, 4 blocks of (3 units x 6 + snake + conv), snake + conv2, bottleneck


def test_encoder_equals_the_transcription_and_loads_official_names_strict():
    ratios, hidden, codebook_dim = (2, 3), 4, 5
    sd = official_dac_state_dict(hidden, ratios, codebook_dim)
    model = DacEncoderVAE(hidden, ratios, codebook_dim)
    assert set(model.state_dict()) == set(sd)
    model.load_state_dict(sd, strict=True)
    wav = torch.randn(2, 1, 40, generator=torch.Generator().manual_seed(1))  # 40 = 6 * 6 + 4: reflect-padded to 42
    out = model(wav)
    assert out.shape == (2, codebook_dim, 7)
    torch.testing.assert_close(out, ref_encode(sd, wav, ratios, codebook_dim), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(wav[:, 0]), out)  # (B, N) is (B, 1, N)
    assert torch.equal(model.feature_mask(torch.arange(40)[None] < 13), torch.tensor([[True, True, True, False, False, False, False]]))


def test_frozen_encoder_gives_no_gradient_and_an_unfrozen_one_does():
    wav = torch.randn(1, 1, 12, requires_grad=True)
    assert not DacEncoderVAE(2, (2, 3), 3)(wav).requires_grad
    out = DacEncoderVAE(2, (2, 3), 3, frozen=False)(wav)
    out.sum().backward()
    assert wav.grad is not None and wav.grad.abs().sum() > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        DacEncoderVAE(0)
    with pytest.raises(ValueError):
        DacEncoderVAE(4, (2, 0))
    with pytest.raises(ValueError, match="mono"):
        DacEncoderVAE(2, (2,), 3)(torch.randn(1, 2, 8))
