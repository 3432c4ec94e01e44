"""Kaldi fbank front-end (framework/data/audio.py) against an independent, loop-per-frame NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from litzoo.framework.data.audio import (
    kaldi_fbank,
    mask_along_axis,
    mel_filterbank,
    normalize_fbank,
    num_frames,
    num_samples_for,
    pad_or_cut_frames,
    read_wav,
    roll_mag_aug,
    spec_augment,
    write_wav,
)
from litzoo.framework.errors import LitzooError


def reference_fbank(x: np.ndarray, sr: int = 16000, bins: int = 128, window: str = "hanning") -> np.ndarray:
    """Kaldi's compute-fbank-feats written out plainly in float64 (snip_edges, no dither, use_energy=False)."""
    size, shift, nfft = int(sr * 0.025), int(sr * 0.010), 512
    n = np.arange(size)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / (size - 1))
    if window == "povey":
        win = win**0.85

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    step = (hi - lo) / (bins + 1)
    banks = np.zeros((bins, nfft // 2 + 1))
    for m in range(bins):
        left, centre, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        for k in range(nfft // 2):  # the Nyquist bin stays 0
            f = mel(k * sr / nfft)
            if left < f < right:
                banks[m, k] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
    out = []
    for t in range(1 + (len(x) - size) // shift):
        frame = x[t * shift : t * shift + size].astype(np.float64)
        frame = frame - frame.mean()
        emph = frame.copy()
        for j in range(size - 1, 0, -1):
            emph[j] = frame[j] - 0.97 * frame[j - 1]
        emph[0] = frame[0] - 0.97 * frame[0]
        spectrum = np.abs(np.fft.rfft(emph * win, n=nfft)) ** 2
        out.append(np.log(np.maximum(banks @ spectrum, np.finfo(np.float32).eps)))
    return np.array(out)


@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_fbank_matches_numpy_reference(window):
    rng = np.random.default_rng(0)
    t = np.arange(5000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(5000) + 0.01  # a DC offset to remove
    ours = kaldi_fbank(torch.tensor(x, dtype=torch.float32), window_type=window).double().numpy()
    ref = reference_fbank(x.astype(np.float32), window=window)
    assert ours.shape == ref.shape == (1 + (5000 - 400) // 160, 128)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_fbank_shape_formula_and_helpers():
    for n in (400, 401, 559, 560, 16000):
        assert kaldi_fbank(torch.randn(n)).shape == (1 + (n - 400) // 160, 128) == (num_frames(n), 128)
    assert num_frames(num_samples_for(98)) == 98 and num_frames(num_samples_for(98) - 1) == 97
    assert kaldi_fbank(torch.randn(1, 1000), num_mel_bins=64).shape == (4, 64)
    with pytest.raises(ValueError, match="shorter than one frame"):
        kaldi_fbank(torch.randn(399))


def test_pure_tone_peaks_in_its_mel_bin():
    banks = mel_filterbank(128, 512, 16000)
    for freq in (500.0, 1000.0, 3000.0):
        x = torch.sin(2 * math.pi * freq * torch.arange(16000) / 16000)
        peak = kaldi_fbank(x).mean(dim=0).argmax().item()
        k = round(freq / 16000 * 512)  # the tone's FFT bin
        assert abs(peak - banks[:, k].argmax().item()) <= 1, (freq, peak)
    # triangles overlap by half: between the first and last centres (~34 Hz, ~7.9 kHz) the weights sum to 1;
    # nothing below 20 Hz (bin 0) nor at Nyquist
    assert banks[:, 0].sum() == 0 and banks[:, -1].sum() == 0
    torch.testing.assert_close(banks[:, 2:250].sum(dim=0), torch.ones(248), atol=1e-5, rtol=0)


def test_dither_option_and_determinism():
    x = torch.randn(4000)
    assert torch.equal(kaldi_fbank(x), kaldi_fbank(x))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = kaldi_fbank(x, dither=1.0, generator=g1), kaldi_fbank(x, dither=1.0, generator=g2)
    assert torch.equal(a, b) and not torch.allclose(a, kaldi_fbank(x))


def test_pad_cut_and_normalize():
    f = torch.randn(5, 3)
    padded = pad_or_cut_frames(f, 8)
    assert padded.shape == (8, 3) and torch.equal(padded[:5], f) and (padded[5:] == 0).all()
    assert torch.equal(pad_or_cut_frames(f, 2), f[:2])
    assert torch.allclose(normalize_fbank(torch.tensor([1.0]), mean=-1.0, std=2.0), torch.tensor([0.5]))


def test_wav_roundtrip_and_bad_file(tmp_path):
    x = 0.5 * torch.sin(torch.arange(800) / 5.0)
    write_wav(tmp_path / "a.wav", x, 8000)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and y.shape == (800,) and torch.allclose(x, y, atol=1 / 32767)
    write_wav(tmp_path / "s.wav", np.stack([x.numpy(), -x.numpy() * 0]), 8000)  # stereo -> mean of channels
    assert torch.allclose(read_wav(tmp_path / "s.wav")[0], x / 2, atol=1 / 32767)
    (tmp_path / "bad.wav").write_bytes(b"RIFF1234not a wave file")
    with pytest.raises(LitzooError, match="bad.wav"):
        read_wav(tmp_path / "bad.wav")


def test_empty_and_truncated_wav_files_say_why(tmp_path):
    """`wave` raises a bare EOFError for these: the message used to end in "cannot read WAV file 'x': "."""
    write_wav(tmp_path / "full.wav", 0.5 * torch.sin(torch.arange(1000) / 5.0), 16000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "header.wav").write_bytes(data[:30])  # cut inside the fmt chunk
    (tmp_path / "samples.wav").write_bytes(data[:500])  # 44-byte header + 228 of the 1000 samples
    (tmp_path / "nodata.wav").write_bytes(data[:44])
    expected = {
        "empty.wav": r"the file is empty \(0 bytes\)",
        "header.wav": r"the file ends after 30 bytes inside its RIFF/WAVE header \(truncated, or not a WAV file\)",
        "samples.wav": r"truncated, its header announces 1000 frames and the file holds 228",
        "nodata.wav": r"it holds no samples \(its header announces 1000 frames\)",
    }
    for name, reason in expected.items():
        with pytest.raises(LitzooError, match=rf"^cannot read WAV file '.*{name}': {reason}$") as excinfo:
            read_wav(tmp_path / name)
        assert "\n" not in str(excinfo.value)


def _expected_band(u_value: float, u_position: float, param: int, size: int) -> tuple[int, int]:
    """torchaudio's mask_along_axis by hand: width trunc(u1·param), start trunc(u2·(size − u1·param))."""
    value = u_value * param
    start = int(u_position * (size - value))
    return start, start + int(value)


def test_spec_augment_masks_exactly_the_sampled_bands():
    fbank = torch.rand(100, 40) + 1.0  # no zeros anywhere before masking
    out = spec_augment(fbank, freqm=20, timem=30, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u = [float(torch.rand(1, generator=g)) for _ in range(4)]  # frequency (value, position), then time
    f0, f1 = _expected_band(u[0], u[1], 20, 40)
    t0, t1 = _expected_band(u[2], u[3], 30, 100)
    assert 0 < f1 - f0 < 20 and 0 < t1 - t0 < 30  # this seed draws non-empty masks
    expected = fbank.clone()
    expected[:, f0:f1] = 0.0
    expected[t0:t1, :] = 0.0
    assert torch.equal(out, expected)
    assert (fbank > 0).all()


def test_spec_augment_width_distribution_and_off_switch():
    g = torch.Generator().manual_seed(0)
    widths, starts = set(), set()
    for _ in range(400):
        _, start, end = mask_along_axis(torch.ones(10, 50), 5, axis=1, generator=g)
        widths.add(end - start)
        starts.add(start)
        assert 0 <= start and end <= 50
    assert widths == {0, 1, 2, 3, 4}  # uniform integer widths in [0, param): never param itself
    assert min(starts) == 0 and max(starts) >= 45  # starts cover the whole axis
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    x = torch.randn(8, 6)
    assert torch.equal(spec_augment(x, 0, 0, generator=g), x) and torch.equal(g.get_state(), state)  # nothing drawn
    # a parameter larger than the axis (as timem 192 on short clips) clips the band to the axis
    for _ in range(50):
        _, start, end = mask_along_axis(torch.ones(8, 4), 30, axis=0, generator=g)
        assert 0 <= start <= end <= 8
    with pytest.raises(ValueError, match="freqm and timem"):
        spec_augment(x, -1, 0)
    with pytest.raises(ValueError, match="frames, mel bins"):
        spec_augment(torch.randn(1, 8, 6), 2, 2)


def official_roll_mag_aug(waveform: np.ndarray, idx: int, beta: float) -> np.ndarray:
    """AudioMAE dataset.py:169-174 (_roll_mag_aug) with its two draws given: np.roll without an axis, then the gain."""
    rolled_waveform = np.roll(waveform, idx)
    mag = beta + 0.5
    return rolled_waveform * mag


def roll_mag_draws(generator: torch.Generator, channels: int) -> tuple[int, float]:
    """The official draws, np.random.randint(len(waveform)) then np.random.beta(10, 10), from a torch generator:
    the shift in [0, channels), β the 10th smallest of 19 uniforms."""
    idx = int(torch.randint(0, channels, (), generator=generator))
    beta = float(torch.rand(19, generator=generator, dtype=torch.float64).sort().values[9])
    return idx, beta


def test_roll_mag_aug_is_the_official_roll_then_gain():
    x = torch.randn(1000)
    out = roll_mag_aug(x, torch.Generator().manual_seed(3))
    idx, beta = roll_mag_draws(torch.Generator().manual_seed(3), 1)
    assert idx == 0  # drawn from [0, len) of torchaudio's (1, N) array: mono audio is never shifted
    np.testing.assert_allclose(out.numpy(), official_roll_mag_aug(x.numpy()[None], idx, beta)[0], rtol=1e-6)
    assert out.shape == x.shape and out.dtype == x.dtype and 0.5 < beta + 0.5 < 1.5 and not torch.equal(out, x)
    torch.manual_seed(3)  # no generator: torch's global RNG, as the datasets draw
    assert torch.equal(roll_mag_aug(x), out)
    # (channels, samples): the shift is in [0, channels) and moves the flattened array
    x2 = torch.randn(2, 50)
    shifted = next(s for s in range(100) if roll_mag_draws(torch.Generator().manual_seed(s), 2)[0] == 1)
    idx, beta = roll_mag_draws(torch.Generator().manual_seed(shifted), 2)
    out = roll_mag_aug(x2, torch.Generator().manual_seed(shifted))
    np.testing.assert_allclose(out.numpy(), official_roll_mag_aug(x2.numpy(), idx, beta), rtol=1e-6)
    m = beta + 0.5  # by hand: each channel's last sample opens the next channel, channel 1's last opens channel 0
    assert torch.allclose(out[0, 0], x2[1, -1] * m) and torch.allclose(out[1, 0], x2[0, -1] * m)
    assert torch.allclose(out[0, 1:], x2[0, :-1] * m)
    with pytest.raises(ValueError, match="waveform"):
        roll_mag_aug(torch.zeros(1, 2, 3))


def test_roll_mag_aug_gain_is_beta_10_10_plus_half():
    g = torch.Generator().manual_seed(0)
    gains = torch.tensor([float(roll_mag_aug(torch.ones(1), g)) for _ in range(4000)], dtype=torch.float64)
    # Beta(10, 10) + 0.5: mean 1, variance 10·10 / (20²·21)
    assert gains.min() > 0.5 and gains.max() < 1.5
    assert abs(float(gains.mean()) - 1.0) < 0.01
    assert abs(float(gains.var()) - 100 / (400 * 21)) < 0.0015
