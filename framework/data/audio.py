"""Audio features with torch ops: Kaldi-compatible log-mel filterbanks, WAV reading / writing.

:func:`kaldi_fbank` computes the features of Kaldi's ``compute-fbank-feats`` (and of
``torchaudio.compliance.kaldi.fbank``) for the options Audio-MAE, AST and CAV-MAE use
(``htk_compat=True, use_energy=False, window_type='hanning', num_mel_bins=128, dither=0,
frame_shift=10``; AudioMAE ``dataset.py``):

1. frames of ``frame_length`` ms every ``frame_shift`` ms, only frames that fit entirely
   (``snip_edges=True``): ``T = 1 + (N − L) // S`` (400 / 160 samples at 16 kHz);
2. optional Gaussian dither (default 0, deterministic);
3. per-frame DC removal (subtract the frame mean);
4. pre-emphasis ``x[j] − 0.97·x[j−1]`` inside the frame, the first sample using itself as predecessor;
5. the window (Kaldi's ``hanning`` is the symmetric Hann window ``0.5 − 0.5·cos(2πn/(L−1))``,
   ``povey`` is that to the power 0.85, ``hamming`` 0.54/0.46, ``rectangular``);
6. zero-pad to the next power of two (512) and take the power spectrum ``|rfft|²``;
7. triangular filters equally spaced on the HTK mel scale ``1127·ln(1 + f/700)`` between
   ``low_freq`` (20 Hz) and ``high_freq`` (Nyquist when ≤ 0: Nyquist + high_freq), evaluated at the
   mel of each FFT bin centre (the Nyquist bin gets weight 0, as in Kaldi);
8. ``log(max(energy, ε))`` with ε = float32 machine epsilon. With ``use_energy=False`` there is no
   energy coefficient, so ``htk_compat`` and ``energy_floor`` change nothing and are not options.

Audio-MAE then pads (zeros) or cuts the ``(T, 128)`` features to ``target_length`` frames and
normalises them as ``(fbank − mean) / (2·std)`` with data-set statistics (AudioSet: −4.2677393,
4.5689974): :func:`pad_or_cut_frames`, :func:`normalize_fbank`. Fine-tuning training items are
augmented in between with SpecAugment frequency / time masks: :func:`spec_augment`. Training waveforms of the
released AudioSet pretraining and fine-tuning scripts are first augmented by :func:`roll_mag_aug`.

WAV files are read and written with the standard library's :mod:`wave` (integer PCM only).
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from litzoo.framework.errors import LitzooError

#: AudioSet statistics of Audio-MAE's 128-bin fbank (AudioMAE ``main_pretrain.py``).
AUDIOSET_FBANK_MEAN = -4.2677393
AUDIOSET_FBANK_STD = 4.5689974

WINDOW_TYPES = ("hanning", "povey", "hamming", "rectangular")


def mel_scale(freq: Tensor | float) -> Tensor:
    """HTK mel scale ``1127·ln(1 + f/700)``."""
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def inverse_mel_scale(mel: Tensor | float) -> Tensor:
    """Inverse of :func:`mel_scale`: ``700·(exp(m/1127) − 1)`` Hz."""
    return 700.0 * torch.expm1(torch.as_tensor(mel, dtype=torch.float64) / 1127.0)


def feature_window(window_type: str, size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Kaldi's analysis windows (symmetric: the ends are ``n = 0`` and ``n = size − 1``)."""
    n = torch.arange(size, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * n / (size - 1))
    if window_type == "hanning":
        window = hann
    elif window_type == "povey":
        window = hann.pow(0.85)
    elif window_type == "hamming":
        window = 0.54 - 0.46 * torch.cos(2 * math.pi * n / (size - 1))
    elif window_type == "rectangular":
        window = torch.ones(size, dtype=torch.float64)
    else:
        raise ValueError(f"window_type must be one of {WINDOW_TYPES}, got {window_type!r}")
    return window.to(dtype)


def mel_filterbank(num_mel_bins: int, fft_size: int, sample_rate: float, low_freq: float = 20.0, high_freq: float = 0.0) -> Tensor:
    """``(num_mel_bins, fft_size // 2 + 1)`` triangular filters on the HTK mel scale (Kaldi's ``MelBanks``).

    Filter ``m`` rises linearly in mel from ``left_m`` to ``centre_m`` and falls to ``right_m``, the
    ``num_mel_bins + 2`` edges equally spaced in mel between ``low_freq`` and ``high_freq``
    (``high_freq ≤ 0`` means ``Nyquist + high_freq``). Weights are evaluated at the mel of FFT bin
    ``k·sample_rate/fft_size`` for ``k < fft_size/2``; the Nyquist bin's column is zero.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if num_mel_bins < 3:
        raise ValueError(f"num_mel_bins must be at least 3, got {num_mel_bins}")
    if not 0.0 <= low_freq < high <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz), got low_freq={low_freq}, high_freq={high}")
    mel_low, mel_high = float(mel_scale(low_freq)), float(mel_scale(high))
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    left = mel_low + delta * torch.arange(num_mel_bins, dtype=torch.float64)[:, None]  # (M, 1)
    centre, right = left + delta, left + 2 * delta
    mel = mel_scale(sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float64))[None]  # (1, K)
    weights = torch.clamp(torch.minimum((mel - left) / (centre - left), (right - mel) / (right - centre)), min=0.0)
    return torch.cat([weights, torch.zeros(num_mel_bins, 1, dtype=torch.float64)], dim=1).float()


def kaldi_fbank(
    waveform: Tensor,
    sample_rate: float = 16000.0,
    num_mel_bins: int = 128,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    window_type: str = "hanning",
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    dither: float = 0.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    round_to_power_of_two: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Kaldi log-mel filterbank energies ``(T, num_mel_bins)`` of a mono waveform ``(N,)`` (or ``(1, N)``).

    ``T = 1 + (N − L) // S`` with ``L = int(sample_rate·frame_length/1000)`` and
    ``S = int(sample_rate·frame_shift/1000)`` (``snip_edges=True``). Computed in float32 like Kaldi
    and torchaudio. ``dither`` adds ``dither·N(0, 1)`` noise to each frame (``generator`` makes it
    reproducible); 0 (default, Audio-MAE's setting) is deterministic.

    Raises:
        ValueError: a waveform shorter than one frame, or options outside their range.
    """
    if waveform.dim() == 2 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.dim() != 1:
        raise ValueError(f"expected a mono waveform of shape (N,) or (1, N), got {tuple(waveform.shape)}")
    if not 0.0 <= preemphasis <= 1.0:
        raise ValueError(f"preemphasis must be in [0, 1], got {preemphasis}")
    if dither < 0:
        raise ValueError(f"dither must be >= 0, got {dither}")
    waveform = waveform.float()
    size = int(sample_rate * frame_length * 0.001)
    shift = int(sample_rate * frame_shift * 0.001)
    if size < 2 or shift < 1:
        raise ValueError(f"frame_length {frame_length} ms and frame_shift {frame_shift} ms give frames of {size} samples every {shift}")
    if len(waveform) < size:
        raise ValueError(f"waveform of {len(waveform)} samples is shorter than one frame ({size} samples)")
    fft_size = 1 << (size - 1).bit_length() if round_to_power_of_two else size
    if fft_size % 2:
        raise ValueError(f"the FFT size {fft_size} must be even: use round_to_power_of_two or another frame_length")
    frames = waveform.unfold(0, size, shift)  # (T, L), snip_edges: only whole frames
    if dither > 0:
        frames = frames + dither * torch.randn(frames.shape, generator=generator, dtype=frames.dtype).to(frames.device)
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if preemphasis > 0:
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = frames - preemphasis * previous
    frames = frames * feature_window(window_type, size).to(frames.device)
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2)  # (T, fft_size/2 + 1)
    banks = mel_filterbank(num_mel_bins, fft_size, sample_rate, low_freq, high_freq).to(frames.device)
    energies = power @ banks.T
    return torch.clamp(energies, min=torch.finfo(torch.float32).eps).log()


def num_frames(num_samples: int, sample_rate: float = 16000.0, frame_length: float = 25.0, frame_shift: float = 10.0) -> int:
    """Frames :func:`kaldi_fbank` gives for ``num_samples`` samples (0 when shorter than a frame)."""
    size, shift = int(sample_rate * frame_length * 0.001), int(sample_rate * frame_shift * 0.001)
    return 0 if num_samples < size else 1 + (num_samples - size) // shift


def num_samples_for(frames: int, sample_rate: float = 16000.0, frame_length: float = 25.0, frame_shift: float = 10.0) -> int:
    """The fewest samples that give ``frames`` frames."""
    size, shift = int(sample_rate * frame_length * 0.001), int(sample_rate * frame_shift * 0.001)
    return size + (frames - 1) * shift


def pad_or_cut_frames(fbank: Tensor, target_length: int) -> Tensor:
    """``(T, F)`` → ``(target_length, F)``: zero frames appended, or the first ``target_length`` kept (Audio-MAE)."""
    frames = fbank.shape[0]
    if frames < target_length:
        return torch.cat([fbank, fbank.new_zeros(target_length - frames, *fbank.shape[1:])], dim=0)
    return fbank[:target_length]


def normalize_fbank(fbank: Tensor, mean: float = AUDIOSET_FBANK_MEAN, std: float = AUDIOSET_FBANK_STD) -> Tensor:
    """Audio-MAE's normalisation ``(fbank − mean) / (2·std)`` (AudioMAE ``dataset.py``)."""
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return (fbank - mean) / (2 * std)


def mask_along_axis(fbank: Tensor, mask_param: int, axis: int, mask_value: float = 0.0,
                    generator: torch.Generator | None = None) -> tuple[Tensor, int, int]:  # fmt: skip
    """One SpecAugment mask: ``fbank`` with rows / columns ``[start, end)`` along ``axis`` set to ``mask_value``.

    torchaudio's ``FrequencyMasking`` / ``TimeMasking`` (``iid_masks=False``, ``functional.mask_along_axis``)
    semantics: ``value = u₁·mask_param``, ``position = u₂·(size − value)`` with ``u₁, u₂ ~ U[0, 1)``
    drawn in that order, ``start = trunc(position)``, ``end = start + trunc(value)`` — so the width is an
    integer in ``[0, mask_param)`` — clipped to ``[0, size]``. ``mask_param < 1`` draws nothing.
    Returns ``(masked copy, start, end)``.
    """
    if mask_param < 0:
        raise ValueError(f"mask_param must be >= 0, got {mask_param}")
    size = fbank.shape[axis]
    if mask_param < 1:
        return fbank, 0, 0
    # float32 draws as torchaudio (torch.rand(1)), so that a shared seed gives the same masks
    value = torch.rand(1, generator=generator) * mask_param
    position = torch.rand(1, generator=generator) * (size - value)
    start = int(position.long())  # .long() truncates toward zero, as torchaudio
    end = start + int(value.long())
    start, end = min(max(start, 0), size), min(max(end, 0), size)
    out = fbank.clone()
    out.narrow(axis, start, end - start).fill_(mask_value)
    return out, start, end


def spec_augment(fbank: Tensor, freqm: int, timem: int, mask_value: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """SpecAugment (Park et al., Interspeech 2019) as Audio-MAE / AST fine-tune: one frequency mask of
    width ``< freqm`` bins, then one time mask of width ``< timem`` frames, on a ``(T, F)`` fbank.

    AudioMAE ``dataset.py`` applies torchaudio's ``FrequencyMasking(freqm)`` then ``TimeMasking(timem)``
    to the raw fbank (masked values 0, *before* the ``(x − mean)/(2·std)`` normalisation) of training
    items only; ``main_finetune_as.py`` sets ``freqm=48, timem=192`` for 1024 × 128 inputs (all data
    sets). A parameter of 0 draws nothing and leaves that axis untouched (as the official ``if freqm != 0``).
    See :func:`mask_along_axis` for the sampling; ``generator`` (default: torch's global RNG) makes it
    reproducible.
    """
    if fbank.dim() != 2:
        raise ValueError(f"expected a (frames, mel bins) fbank, got shape {tuple(fbank.shape)}")
    if freqm < 0 or timem < 0:
        raise ValueError(f"freqm and timem must be >= 0, got {freqm} and {timem}")
    if freqm:
        fbank = mask_along_axis(fbank, freqm, 1, mask_value, generator)[0]
    if timem:
        fbank = mask_along_axis(fbank, timem, 0, mask_value, generator)[0]
    return fbank


#: Audio-MAE's gain ``β + 0.5``, ``β ~ Beta(10, 10)`` (AudioMAE ``dataset.py:173``), drawn as the 10th smallest of 19
#: uniforms: the k-th order statistic of n U[0, 1) draws is Beta(k, n + 1 − k) exactly, and torch's Beta sampler
#: takes no generator.
_ROLL_MAG_BETA = (10, 10)


def roll_mag_aug(waveform: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Audio-MAE's roll / magnitude waveform augmentation, computed as AudioMAE ``dataset.py:169-174``
    (``AudiosetDataset._roll_mag_aug``): a circular shift, then a gain ``m = β + 0.5``, ``β ~ Beta(10, 10)``
    (``m`` in (0.5, 1.5), mean 1).

    The official shift is ``np.random.randint(len(waveform))`` of torchaudio's ``(channels, samples)`` array,
    so it is drawn from ``[0, channels)``, and ``np.roll`` without an axis moves the flattened array. Reproduced
    as written: ``waveform`` is ``(N,)`` (one channel, what :func:`read_wav` returns) or ``(C, N)``. On mono
    audio the shift is therefore always 0 and the released recipe is the gain alone.

    Where it applies (AudioMAE): ``_wav2fbank`` calls it on every training waveform after its mean is removed and
    before mixup mixes two clips (each clip augmented on its own), when ``roll_mag_aug`` is set; the released
    AudioSet scripts set it (``submit_pretrain_audioset2M.sh``, ``ft_as.sh``, ``submit_ft.sh``,
    ``submit_ft_mask_bal.sh``: ``--roll_mag_aug True``), ``main_finetune_as.py:283`` builds the evaluation set
    with ``roll_mag_aug=False``, ``main_finetune_esc.py`` (ESC-50 / SpeechCommands) never sets it.

    Draws from ``generator`` (default: torch's global RNG) in the official order: the shift, then ``β`` (see
    ``_ROLL_MAG_BETA``). Returns a new tensor of the input's shape and dtype.
    """
    if waveform.dim() not in (1, 2) or waveform.numel() == 0:
        raise ValueError(f"expected a non-empty (samples,) or (channels, samples) waveform, got shape {tuple(waveform.shape)}")
    channels = 1 if waveform.dim() == 1 else waveform.shape[0]
    shift = int(torch.randint(0, channels, (), generator=generator))
    k, b = _ROLL_MAG_BETA
    beta = torch.rand(k + b - 1, generator=generator, dtype=torch.float64).sort().values[k - 1]
    rolled = torch.roll(waveform.flatten(), shift).view_as(waveform)
    return rolled * (float(beta) + 0.5)


# ------------------------------------------------------------------------------------- WAV files


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """A WAV file's samples as a mono float32 waveform in [−1, 1] ``(N,)`` and its sample rate.

    Integer PCM of 8 (unsigned), 16 or 32 bits; channels are averaged.

    Raises:
        LitzooError: naming the file and the reason, when it cannot be read, is not a PCM WAV, is empty,
            or is truncated (fewer sample bytes than its header announces).
    """
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate, count = wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()
            data = wav.readframes(count)
    except (OSError, EOFError, wave.Error) as err:
        raise LitzooError(f"cannot read WAV file '{path}': {_wav_error_reason(path, err)}") from None
    if width not in (1, 2, 4):
        raise LitzooError(f"cannot read WAV file '{path}': {8 * width}-bit samples; expected 8, 16 or 32-bit integer PCM")
    if channels < 1 or len(data) < width * channels:
        raise LitzooError(f"cannot read WAV file '{path}': it holds no samples (its header announces {count} frames)")
    if len(data) < count * width * channels:
        # the data chunk was cut (an interrupted copy or download): refuse rather than train on part of it
        raise LitzooError(
            f"cannot read WAV file '{path}': truncated, its header announces {count} frames and the file holds "
            f"{len(data) // (width * channels)}"
        )
    usable = len(data) - len(data) % (width * channels)
    if width == 1:
        samples = (np.frombuffer(data[:usable], dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        dtype = np.dtype("<i2") if width == 2 else np.dtype("<i4")
        samples = np.frombuffer(data[:usable], dtype=dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    samples = samples.reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(np.ascontiguousarray(samples)), rate


def _wav_error_reason(path: str | Path, error: BaseException) -> str:
    """What went wrong reading a WAV file, in words: :mod:`wave` raises a bare ``EOFError`` for an empty or
    truncated header, whose text is empty."""
    if isinstance(error, EOFError):
        try:
            size = Path(path).stat().st_size
        except OSError:
            size = None
        if size == 0:
            return "the file is empty (0 bytes)"
        where = f" after {size} bytes" if size is not None else ""
        return f"the file ends{where} inside its RIFF/WAVE header (truncated, or not a WAV file)"
    text = str(error).strip()
    return text if text else type(error).__name__


def write_wav(path: str | Path, waveform: Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a mono waveform ``(N,)`` (or channels ``(C, N)``) in [−1, 1] as 16-bit PCM (values clipped)."""
    array = np.asarray(waveform, dtype=np.float64)
    array = array[None] if array.ndim == 1 else array
    pcm = np.clip(np.round(array.T * 32767.0), -32768, 32767).astype("<i2")  # (N, C), interleaved
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(array.shape[0])
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate))
        wav.writeframes(pcm.tobytes())


__all__ = [
    "AUDIOSET_FBANK_MEAN",
    "AUDIOSET_FBANK_STD",
    "feature_window",
    "inverse_mel_scale",
    "kaldi_fbank",
    "mel_filterbank",
    "mask_along_axis",
    "mel_scale",
    "normalize_fbank",
    "num_frames",
    "num_samples_for",
    "pad_or_cut_frames",
    "read_wav",
    "roll_mag_aug",
    "spec_augment",
    "write_wav",
]
