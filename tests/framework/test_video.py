"""Video clips (frame folders, .mp4 with PyAV), frame sampling, audio resampling, tubelet patching and embedding."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from litzoo.framework.data.video import (
    decode_video_file,
    frame_files,
    read_frame_folder,
    read_video_file,
    resample_audio,
    sample_frame_indices,
    write_video_file,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.patches import patchify_video, unpatchify_video
from litzoo.framework.nn.video import TubeletEmbed, inflate_patch_embedding


# ---- frame sampling --------------------------------------------------------------------------------------------------
def test_frame_indices_by_hand():
    # 10 fps clip of 40 frames, 4 frames at 2 fps: every 5th frame; centred window of 16 frames starts at (40 - 16) // 2
    assert sample_frame_indices(40, 10, 4, 2, "start") == [0, 5, 10, 15]
    assert sample_frame_indices(40, 10, 4, 2, "centre") == [12, 17, 22, 27]
    assert sample_frame_indices(100, 25, 4, 2, "start") == [0, 12, 25, 37]  # step 12.5, floored
    assert sample_frame_indices(100, 30, 3, 2, "start") == [0, 15, 30]  # 30/2 = 15 exactly, not 14.999…
    assert sample_frame_indices(6, 10, 4, 5, "centre") == [0, 2, 4, 5]  # too short: the last frame repeated
    assert sample_frame_indices(1, 10, 3, 2) == [0, 0, 0]
    assert sample_frame_indices(10, 2, 4, 4, "centre") == [4, 4, 5, 5]  # up-sampling repeats frames
    with pytest.raises(ValueError, match="anchor"):
        sample_frame_indices(10, 2, 4, 4, "middle")


def test_start_anchor_equals_the_av_superb_rule():
    """AV-SUPERB's MAViL expert (torchvision's resampling): ``floor(arange(m) · src/fps)`` from frame 0, first num_frames."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        src, fps = float(rng.choice([24, 25, 29.97, 30, 8, 2])), float(rng.choice([1, 2, 4, 8]))
        n, m = int(rng.integers(20, 400)), int(rng.integers(1, 9))
        step = src / fps
        reference = np.floor(np.arange(m) * step + 1e-9).astype(int).clip(max=n - 1).tolist()
        assert sample_frame_indices(n, src, m, fps, "start") == reference


# ---- frame folders ---------------------------------------------------------------------------------------------------
def write_frame(path, value, size=(6, 4)):
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_frame_folder_numeric_order_and_sampling(tmp_path):
    for number in (1, 2, 10, 3, 11, 4):  # lexical order would put 10 and 11 before 2
        write_frame(tmp_path / f"frame_{number}.png", 10 * number)
    assert [p.name for p in frame_files(tmp_path)] == [f"frame_{n}.png" for n in (1, 2, 3, 4, 10, 11)]
    video = read_frame_folder(tmp_path, num_frames=3, fps=5, source_fps=10, anchor="start")  # frames 0, 2, 4 of the order
    assert video.shape == (3, 3, 4, 6)
    assert torch.allclose(video[:, 0, 0, 0] * 255, torch.tensor([10.0, 30.0, 100.0]))
    padded = read_frame_folder(tmp_path, num_frames=8, fps=10, source_fps=10, anchor="start")
    assert torch.allclose(padded[:, 0, 0, 0] * 255, torch.tensor([10.0, 20, 30, 40, 100, 110, 110, 110]))


def test_frame_folder_errors_are_one_line_naming_the_file(tmp_path):
    def fails(folder, pattern):
        with pytest.raises(LitzooError, match=pattern) as info:
            read_frame_folder(folder, 2, 1, 1)
        assert "\n" not in str(info.value)

    fails(tmp_path / "missing", r"frame folder '.*missing' does not exist")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", r"'.*empty' holds no \.jpg")
    (tmp_path / "noname").mkdir()
    write_frame(tmp_path / "noname" / "cover.jpg", 1)
    fails(tmp_path / "noname", r"frame '.*cover\.jpg' has no frame number")
    (tmp_path / "twice").mkdir()
    write_frame(tmp_path / "twice" / "1.png", 1)
    write_frame(tmp_path / "twice" / "01.png", 1)
    fails(tmp_path / "twice", "same frame number 1")
    (tmp_path / "zero").mkdir()
    (tmp_path / "zero" / "1.png").write_bytes(b"")
    fails(tmp_path / "zero", r"frame '.*zero/1\.png' is empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "1.jpg").write_bytes(b"not an image at all")
    fails(tmp_path / "junk", r"frame '.*junk/1\.jpg' cannot be read as an image")
    (tmp_path / "sizes").mkdir()
    write_frame(tmp_path / "sizes" / "1.png", 1)
    write_frame(tmp_path / "sizes" / "2.png", 1, size=(8, 4))
    fails(tmp_path / "sizes", r"frame '.*sizes/2\.png' is 8x4, the clip's first frame '.*1\.png' is 6x4")


# ---- audio -----------------------------------------------------------------------------------------------------------
def peak_frequency(waveform: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.double().numpy() * np.hanning(len(waveform))))
    return float(np.argmax(spectrum)) * rate / len(waveform)


@pytest.mark.parametrize("rate", [44100, 22050, 8000, 48000])
def test_resampling_keeps_a_tone_and_removes_what_lies_above_the_new_nyquist(rate):
    t = torch.arange(rate) / rate  # one second
    tone = torch.sin(2 * math.pi * 1000.0 * t)
    out = resample_audio(tone, rate, 16000)
    assert out.dtype == torch.float32 and len(out) == 16000  # ceil(N · up / down), one second at 16 kHz
    assert abs(peak_frequency(out, 16000) - 1000.0) <= 1.0
    assert abs(float(out[2000:-2000].abs().max()) - 1.0) < 0.02  # amplitude kept in the pass band
    if rate > 20000:
        high = torch.sin(2 * math.pi * 10000.0 * t)  # above 8 kHz: must be filtered out, not folded to 6 kHz
        assert float(resample_audio(high, rate, 16000)[2000:-2000].abs().max()) < 0.02
        naive = high[torch.floor(torch.arange(16000) * rate / 16000).long()]  # picking samples aliases it
        assert abs(peak_frequency(naive, 16000) - 6000.0) < 5 and float(naive.abs().max()) > 0.9
    assert resample_audio(tone, 16000, 16000) is tone
    with pytest.raises(ValueError, match="non-finite"):
        resample_audio(torch.tensor([0.0, float("nan")] * 20), rate)


# ---- .mp4 with PyAV --------------------------------------------------------------------------------------------------
def moving_block_clip(frames: int = 10) -> torch.Tensor:
    video = torch.zeros(frames, 3, 32, 48)
    for k in range(frames):
        video[k, :, 8:24, 2 + 3 * k : 18 + 3 * k] = torch.tensor([1.0, 0.6, 0.2])[:, None, None]
    return video


def test_mp4_written_with_pyav_reads_back_the_same_frames_and_tone(tmp_path):
    clip, rate = moving_block_clip(), 16000
    tone = 0.5 * torch.sin(2 * math.pi * 440.0 * torch.arange(rate) / rate)
    write_video_file(tmp_path / "clip.mp4", clip, fps=10, audio=tone, sample_rate=rate)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # written whole, no temporary left
    video, audio, audio_rate = read_video_file(tmp_path / "clip.mp4", num_frames=10, fps=10, anchor="start")
    assert video.shape == clip.shape and audio_rate == rate
    assert float((video - clip).abs().mean()) < 0.03  # codec tolerance (4:2:0 chroma blurs the block's edges)
    distances = torch.cdist(video.flatten(1), clip.flatten(1))
    assert torch.equal(distances.argmin(dim=1), torch.arange(10))  # each decoded frame is nearest its own original
    assert abs(peak_frequency(audio, audio_rate) - 440.0) < 2.0
    half, _, _ = read_video_file(tmp_path / "clip.mp4", num_frames=5, fps=5, anchor="start", audio=False)
    assert torch.equal(torch.cdist(half.flatten(1), clip.flatten(1)).argmin(dim=1), torch.tensor([0, 2, 4, 6, 8]))


def test_video_file_errors_name_the_file(tmp_path, monkeypatch):
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(LitzooError, match=r"video file '.*junk\.mp4' cannot be decoded"):
        decode_video_file(tmp_path / "junk.mp4")
    write_video_file(tmp_path / "mute.mp4", moving_block_clip(4), fps=4)
    with pytest.raises(LitzooError, match=r"video file '.*mute\.mp4' has no audio stream"):
        decode_video_file(tmp_path / "mute.mp4")
    assert decode_video_file(tmp_path / "mute.mp4", audio=False)[0].shape == (4, 3, 32, 48)
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(LitzooError, match=r"needs PyAV.*pip install 'litzoo\[video\]'"):
        decode_video_file(tmp_path / "mute.mp4")


# ---- tubelets --------------------------------------------------------------------------------------------------------
def test_patchify_video_order_and_round_trip():
    video = torch.randn(2, 4, 3, 8, 12)
    patches = patchify_video(video, (2, 4, 4))
    assert patches.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3)
    # tubelet (time 1, row 0, column 2) = token 1·6 + 0·3 + 2, its values in (frame, row, column, channel) order
    expected = video[1, 2:4, :, 0:4, 8:12].permute(0, 2, 3, 1).reshape(-1)
    assert torch.equal(patches[1, 8], expected)
    assert torch.equal(unpatchify_video(patches, (2, 4, 4), 3, (2, 2, 3)), video)
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        patchify_video(torch.randn(1, 3, 3, 8, 8), (2, 4, 4))
    with pytest.raises(ValueError, match="does not hold"):
        unpatchify_video(patches, (2, 4, 4), 3, (2, 3, 3))


def test_tubelet_embedding_is_a_linear_map_of_the_patches():
    torch.manual_seed(0)
    embed = TubeletEmbed(num_frames=4, image_size=(8, 12), tubelet=(2, 4, 4), in_chans=3, dim=5)
    video = torch.randn(2, 4, 3, 8, 12)
    tokens = embed(video)
    assert tokens.shape == (2, embed.num_patches, 5) and embed.grid_size == (2, 2, 3)
    weight = embed.proj.weight.permute(0, 2, 3, 4, 1).reshape(5, -1)  # (D, t·p·p·C) in patchify_video's order
    reference = patchify_video(video, (2, 4, 4)) @ weight.T + embed.proj.bias
    torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected clips"):
        embed(torch.randn(2, 3, 4, 8, 12))  # (B, C, T, H, W) is not the DataModules' layout


@pytest.mark.parametrize("frames", [2, 3])
def test_inflated_kernels_start_as_the_image_model(frames):
    torch.manual_seed(1)
    weight, bias = torch.randn(5, 3, 4, 4), torch.randn(5)
    embed = TubeletEmbed(num_frames=2 * frames, image_size=8, tubelet=(frames, 4, 4), in_chans=3, dim=5)
    video = torch.randn(1, 2 * frames, 3, 8, 8)
    embed.load_patch_embedding(weight, bias, "central_frame")
    central = video[0, frames // 2 :: frames]  # the central frame of each tubelet
    image_tokens = F.conv2d(central, weight, bias, stride=4).flatten(2).transpose(1, 2).reshape(1, -1, 5)
    torch.testing.assert_close(embed(video), image_tokens, atol=1e-5, rtol=1e-5)
    embed.load_patch_embedding(weight, bias, "average")
    mean_frames = video[0].reshape(2, frames, 3, 8, 8).mean(dim=1)
    torch.testing.assert_close(embed(video), F.conv2d(mean_frames, weight, bias, stride=4).flatten(2).transpose(1, 2).reshape(1, -1, 5),
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    assert inflate_patch_embedding(weight, frames)[:, :, [i for i in range(frames) if i != frames // 2]].abs().sum() == 0
    with pytest.raises(ValueError, match="method"):
        inflate_patch_embedding(weight, frames, "tile")
