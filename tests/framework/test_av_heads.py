"""PE-AV's AlignModalities and ContrastiveHead against hand computations and a transcription of the official forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litzoo.framework.nn.av_heads import PE_AV_HEADS, PE_AV_PAIRINGS, AlignModalities, ContrastiveHead, clip_pair_loss, sigmoid_pair_loss


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))


def test_alignment_by_hand_nearest_frames_conv_as_matmul_then_layer_norm():
    torch.manual_seed(0)
    aligner = AlignModalities(3, 5).double()
    randomise(aligner)
    video = torch.randn(2, 4, 3, dtype=torch.float64)  # 4 video frames
    audio = torch.randn(2, 6, 5, dtype=torch.float64)  # 6 audio steps
    aligned, mask = aligner(audio, None, video, None)
    assert mask is None and aligned.shape == (2, 6, 5)
    frames = [0, 0, 1, 2, 2, 3]  # floor(i * 4 / 6): nearest, written out by hand
    w, b = aligner.conv.weight[:, :, 0], aligner.conv.bias  # the 1x1 conv is x @ Wᵀ + b per step
    expected = layer_norm(video[:, frames] @ w.T + b, aligner.layer_norm.weight, aligner.layer_norm.bias, 1e-5)
    torch.testing.assert_close(aligned, expected)
    # negative control: linear interpolation (another resampling) does not match
    linear = F.interpolate((video @ w.T + b).transpose(1, 2), size=6, mode="linear").transpose(1, 2)
    assert not torch.allclose(layer_norm(linear, aligner.layer_norm.weight, aligner.layer_norm.bias, 1e-5), aligned)


def test_alignment_downsamples_too_and_keeps_equal_lengths_untouched():
    aligner = AlignModalities(2, 2, normalize=False).double()
    with torch.no_grad():
        aligner.conv.weight.copy_(torch.eye(2)[:, :, None])
        aligner.conv.bias.zero_()
    video = torch.arange(12, dtype=torch.float64).view(1, 6, 2)
    out, _ = aligner(torch.zeros(1, 3, 2, dtype=torch.float64), None, video, None)
    torch.testing.assert_close(out, video[:, [0, 2, 4]])  # floor(i * 6 / 3)
    same, _ = aligner(torch.zeros(1, 6, 2, dtype=torch.float64), None, video, None)
    torch.testing.assert_close(same, video)


def test_alignment_of_padded_rows_resamples_each_row_to_its_own_length_and_zero_fills():
    aligner = AlignModalities(2, 3).double()
    randomise(aligner, 1)
    video = torch.randn(2, 4, 2, dtype=torch.float64)
    audio = torch.randn(2, 7, 3, dtype=torch.float64)
    video_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    audio_mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    out, mask = aligner(audio, audio_mask, video, video_mask)
    assert mask is audio_mask
    w, b = aligner.conv.weight[:, :, 0], aligner.conv.bias
    ln = aligner.layer_norm
    rows = [[0, 0, 1, 1, 2, 2, 3], [0, 0, 0, 1, 1]]  # floor(i * 4 / 7) and floor(i * 2 / 5)
    torch.testing.assert_close(out[0], layer_norm(video[0, rows[0]] @ w.T + b, ln.weight, ln.bias, 1e-5))
    torch.testing.assert_close(out[1, :5], layer_norm(video[1, rows[1]] @ w.T + b, ln.weight, ln.bias, 1e-5))
    # padded audio steps hold zeros before the LayerNorm, i.e. its bias after it
    torch.testing.assert_close(out[1, 5:], ln.bias.expand(2, 3))
    aligner.layer_norm = None  # without it: the zeros themselves
    raw, _ = aligner(audio, audio_mask, video, video_mask)
    torch.testing.assert_close(raw[1, 5:], torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(raw[1, :5], video[1, rows[1]] @ w.T + b)


def official_align(aligner: AlignModalities, src, src_mask, tgt, tgt_mask):
    """A transcription of perception_models core/audio_visual_encoder/aligner.py AlignModalities.forward (btc, normalize)."""
    src, tgt = src.transpose(1, 2), tgt.transpose(1, 2)
    tgt = aligner.conv(tgt)

    def get_sizes(seq, mask):
        sizes = mask.sum(-1) if mask is not None else torch.full((seq.size(0),), seq.size(-1))
        return sizes.long()

    src_sizes, tgt_sizes = get_sizes(src, src_mask), get_sizes(tgt, tgt_mask)
    if all(src_sizes == tgt_sizes):
        upsampled = tgt
    else:
        upsampled = torch.zeros(tgt.size(0), tgt.size(1), int(src_sizes.max()), dtype=tgt.dtype)
        for i, (row, tgt_size, src_size) in enumerate(zip(tgt, tgt_sizes, src_sizes, strict=True)):
            upsampled[i, :, :src_size] = F.interpolate(row[:, :tgt_size][None], size=int(src_size), mode="nearest")[0]
    return aligner.layer_norm(upsampled.permute(0, 2, 1)), src_mask


@pytest.mark.parametrize("t_a,t_v", [(16, 8), (25, 8), (7, 7), (5, 9)])
def test_alignment_equals_the_official_forward(t_a, t_v):
    torch.manual_seed(t_a)
    aligner = AlignModalities(4, 6).double()
    randomise(aligner, t_v)
    audio, video = torch.randn(3, t_a, 6, dtype=torch.float64), torch.randn(3, t_v, 4, dtype=torch.float64)
    for masks in ((None, None), (torch.arange(t_a)[None] < torch.tensor([[t_a], [t_a - 1], [2]]),
                                 torch.arange(t_v)[None] < torch.tensor([[t_v], [1], [t_v - 1]]))):  # fmt: skip
        ours, _ = aligner(audio, masks[0], video, masks[1])
        theirs, _ = official_align(aligner, audio, masks[0], video, masks[1])
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_contrastive_head_is_layer_norm_eps_1e6_then_a_bias_free_linear():
    head = ContrastiveHead(6, 4).double()
    randomise(head)
    assert set(head.state_dict()) == {"layer_norm.weight", "layer_norm.bias", "proj.weight"}  # the official names, no bias
    assert head.layer_norm.eps == 1e-6
    x = torch.randn(5, 6, dtype=torch.float64) * 1e-3  # small: eps 1e-6 vs 1e-5 matters here
    expected = layer_norm(x, head.layer_norm.weight, head.layer_norm.bias, 1e-6) @ head.proj.weight.T
    torch.testing.assert_close(head(x), expected)
    assert not torch.allclose(layer_norm(x, head.layer_norm.weight, head.layer_norm.bias, 1e-5) @ head.proj.weight.T, head(x))


def test_the_heads_and_pairings_are_the_official_eight_and_ours():
    assert set(PE_AV_HEADS) == {"audio_visual_text_head", "audio_text_head", "visual_text_head", "audio_visual_head", "audio_head",
                                "visual_head", "visual_plus_text_head", "audio_plus_text_head"}  # fmt: skip
    assert PE_AV_HEADS["audio_plus_text_head"] == ("audio", "text") and PE_AV_HEADS["visual_plus_text_head"] == ("visual", "text")
    embeddings = {head.removesuffix("_head") for head in PE_AV_HEADS}
    assert all(x in embeddings and y in embeddings for x, y in PE_AV_PAIRINGS.values())


def test_clip_pair_loss_by_hand():
    torch.manual_seed(0)
    x, y, scale = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    xn, yn = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(3):
        row = [math.exp(0.7) * float(xn[i] @ yn[j]) for j in range(3)]
        col = [math.exp(0.7) * float(xn[j] @ yn[i]) for j in range(3)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row))) - (col[i] - math.log(sum(math.exp(v) for v in col)))
    assert float(clip_pair_loss(x, y, scale)) == pytest.approx(total / 6, rel=1e-12)


def test_sigmoid_pair_loss_by_hand():
    torch.manual_seed(1)
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    scale, bias = torch.tensor(math.log(10.0), dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    xn, yn = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * (10.0 * float(xn[i] @ yn[j]) - 2.0)))  # -log sigmoid(z * logit)
    assert float(sigmoid_pair_loss(x, y, scale, bias)) == pytest.approx(total / 3, rel=1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        AlignModalities(0, 3)
    with pytest.raises(ValueError):
        ContrastiveHead(3, 0)
    with pytest.raises(ValueError, match="one shape"):
        clip_pair_loss(torch.zeros(2, 3), torch.zeros(3, 3), torch.tensor(0.0))
    with pytest.raises(ValueError, match="mask"):
        AlignModalities(2, 2)(torch.zeros(1, 3, 2), None, torch.zeros(1, 2, 2), torch.ones(1, 5, dtype=torch.bool))
