"""Audio clips in class folders, ``root/{train,val,test}/<class_name>/*.wav``, as Kaldi log-mel spectrograms.

The layout of ESC-50 / SpeechCommands-style classification sets once sorted into folders::

    root/
      train/  dog/0001.wav  rain/0001.wav ...   (required)
      val/    dog/...       rain/...            (optional)
      test/   dog/...       rain/...            (optional)

Each WAV (integer PCM, read with the standard library's ``wave``; channels averaged to mono) must have
the configured ``sample_rate`` — nothing is resampled. An item becomes Audio-MAE's input: the waveform
minus its mean, cut to the samples that make ``target_length`` frames (a random window in training,
the start otherwise), the Kaldi fbank (``litzoo.framework.data.audio.kaldi_fbank``: 25 ms / 10 ms,
``num_mel_bins`` HTK-mel bins, Hann window), zero frames appended up to ``target_length``, and
``(fbank − norm_mean) / (2·norm_std)``. Training waveforms are augmented by Audio-MAE's roll / magnitude
augmentation (``roll_mag_aug``, :func:`litzoo.framework.data.audio.roll_mag_aug`, on by default as the released
AudioSet pretraining script; ``main_finetune_esc.py``, the official ESC-50 / SpeechCommands fine-tuning, leaves it
off) before the window is cut. Training items may be augmented with SpecAugment
(``freqm`` / ``timem``, :func:`litzoo.framework.data.audio.spec_augment`, on the fbank before normalisation as
AudioMAE ``dataset.py``; off by default because pretraining uses none). Batches:
``{"audio": (B, 1, target_length, num_mel_bins), "label": (B,)}``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from litzoo.framework.data.audio import (
    AUDIOSET_FBANK_MEAN,
    AUDIOSET_FBANK_STD,
    kaldi_fbank,
    normalize_fbank,
    num_samples_for,
    pad_or_cut_frames,
    read_wav,
    roll_mag_aug,
    spec_augment,
)
from litzoo.framework.data.class_folders import ClassFolderDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.errors import LitzooError


class AudioFileDataset(Dataset):
    """WAV files with labels → ``{"audio": (1, target_length, num_mel_bins), "label"}`` items.

    Args:
        samples: ``(path, label)`` pairs.
        sample_rate: the rate every file must have.
        target_length: frames per item.
        num_mel_bins: mel bins.
        norm_mean, norm_std: fbank normalisation ``(x − mean) / (2·std)``.
        random_crop: take a random window of a longer clip (torch's global RNG, seeded by
            ``seed_everything`` and Lightning's worker seeding); else its start. The fbank of a
            deterministic window (``random_crop=False``) is cached in memory after the first read.
        freqm, timem: SpecAugment frequency / time mask parameters (widths drawn in ``[0, freqm)`` bins
            and ``[0, timem)`` frames, torch's global RNG); 0 = no mask. Set them for training data only.
        roll_mag_aug: Audio-MAE's roll / magnitude augmentation of each waveform after its mean is removed
            (:func:`litzoo.framework.data.audio.roll_mag_aug`, torch's global RNG); such items are never cached.
            Set it for training data only.

    Raises:
        LitzooError: on access, naming the file: unreadable, another sample rate, or shorter than one frame.
    """

    def __init__(self, samples: list[tuple[Path, int]], sample_rate: int, target_length: int, num_mel_bins: int,
                 norm_mean: float, norm_std: float, random_crop: bool, freqm: int = 0, timem: int = 0,
                 roll_mag_aug: bool = False) -> None:  # fmt: skip
        if freqm < 0 or timem < 0:
            raise ValueError(f"freqm and timem must be >= 0, got {freqm} and {timem}")
        self.samples = list(samples)
        self.sample_rate, self.target_length, self.num_mel_bins = sample_rate, target_length, num_mel_bins
        self.norm_mean, self.norm_std, self.random_crop = norm_mean, norm_std, random_crop
        self.freqm, self.timem = freqm, timem
        self.roll_mag_aug = roll_mag_aug
        self.num_samples = num_samples_for(target_length, sample_rate)
        self._cache: dict[int, Tensor] = {}

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> Tensor:
        """``(1, target_length, num_mel_bins)`` normalised fbank of the WAV at ``path`` (no SpecAugment)."""
        return normalize_fbank(self.raw_fbank(path), self.norm_mean, self.norm_std)[None]

    def read_waveform(self, path: Path) -> Tensor:
        """The mono waveform of ``path``, checked (sample rate, at least one frame), mean removed."""
        waveform, rate = read_wav(path)
        if rate != self.sample_rate:
            raise LitzooError(f"WAV file '{path}' has sample rate {rate} Hz, expected {self.sample_rate} Hz "
                              "(resampling is not supported: convert the file, or set the data module's sample_rate)")  # fmt: skip
        frame = int(self.sample_rate * 0.025)
        if len(waveform) < frame:
            raise LitzooError(f"WAV file '{path}' holds {len(waveform)} samples, fewer than one 25 ms frame ({frame})")
        return waveform - waveform.mean()

    def fbank_of_waveform(self, waveform: Tensor) -> Tensor:
        """``(target_length, num_mel_bins)`` un-normalised fbank of a waveform (window cut, zero frames appended)."""
        if len(waveform) > self.num_samples:
            offset = int(torch.randint(0, len(waveform) - self.num_samples + 1, ()).item()) if self.random_crop else 0
            waveform = waveform[offset : offset + self.num_samples]
        fbank = kaldi_fbank(waveform, self.sample_rate, self.num_mel_bins)
        return pad_or_cut_frames(fbank, self.target_length)

    def raw_fbank(self, path: Path) -> Tensor:
        """``(target_length, num_mel_bins)`` un-normalised fbank of the WAV at ``path``."""
        return self.fbank_of_waveform(self.read_waveform(path))

    def augmented_waveform(self, path: Path) -> Tensor:
        """:meth:`read_waveform`, then roll / magnitude when ``roll_mag_aug`` is set (AudioMAE ``_wav2fbank``)."""
        waveform = self.read_waveform(path)
        return roll_mag_aug(waveform) if self.roll_mag_aug else waveform

    @property
    def cacheable(self) -> bool:
        """Whether an item's raw fbank is the same on every read (no random window, no waveform augmentation)."""
        return not self.random_crop and not self.roll_mag_aug

    def augment_and_normalize(self, fbank: Tensor) -> Tensor:
        """SpecAugment (when ``freqm`` / ``timem`` are set) on the raw fbank, then normalise → ``(1, T, F)``."""
        if self.freqm or self.timem:
            fbank = spec_augment(fbank, self.freqm, self.timem)
        return normalize_fbank(fbank, self.norm_mean, self.norm_std)[None]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, label = self.samples[index]
        fbank = self._cache.get(index)
        if fbank is None:
            fbank = self.fbank_of_waveform(self.augmented_waveform(path))
            if self.cacheable:
                self._cache[index] = fbank
        return {"audio": self.augment_and_normalize(fbank), "label": torch.tensor(label, dtype=torch.long)}


class AudioFolderDataModule(ClassFolderDataModule):
    """Classification audio in ``root/{train,val,test}/<class_name>/*.wav`` as Audio-MAE spectrograms.

    Batches are ``{"audio": (B, 1, target_length, num_mel_bins) float, "label": (B,) long}`` ("audio"
    is the first key: generic callbacks that take a dict batch's first tensor find it). Classes are
    the sorted sub-folders of ``root/train``; ``val/`` and ``test/`` are optional (without ``val/``,
    ``fit`` trains without validation). Nothing is ever downloaded or resampled. The folder plumbing is
    :class:`litzoo.framework.data.class_folders.ClassFolderDataModule`'s; this class decodes the clips.

    Args:
        root: folder holding ``train/`` (and optionally ``val/``, ``test/``).
        sample_rate: sample rate of every file (16 kHz for Audio-MAE).
        target_length: spectrogram frames (AudioSet 1024 ≈ 10 s; 1 s clips give 98 frames).
        num_mel_bins: mel bins (128).
        norm_mean, norm_std: fbank statistics (default AudioSet's, as Audio-MAE).
        batch_size: samples per batch (per process).
        num_workers: DataLoader worker processes.
        random_crop: random windows of clips longer than ``target_length`` frames in training.
        freqm, timem: SpecAugment on training items (AudioMAE fine-tuning: 48 bins / 192 frames for
            1024 × 128 inputs); 0 (default) = none, as in pretraining. Validation / test items are never masked.
        roll_mag_aug: Audio-MAE's roll / magnitude augmentation of training waveforms
            (:func:`litzoo.framework.data.audio.roll_mag_aug`; on mono clips a gain in (0.5, 1.5)). Default on, as
            the released pretraining script (``--roll_mag_aug True``); the official ESC-50 / SpeechCommands
            fine-tuning (``main_finetune_esc.py``) leaves it off. Validation / test items are never augmented.

    Raises:
        LitzooError: ``root`` or ``root/train`` missing (here); a split without class folders or WAV
            files, or with a class unknown to ``train`` (in ``setup``); a WAV that cannot be read or
            has another sample rate (when loaded, naming the file).
    """

    def __init__(
        self,
        root: str,
        sample_rate: int = 16000,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        norm_mean: float = AUDIOSET_FBANK_MEAN,
        norm_std: float = AUDIOSET_FBANK_STD,
        batch_size: int = 32,
        num_workers: int = 0,
        random_crop: bool = True,
        freqm: int = 0,
        timem: int = 0,
        roll_mag_aug: bool = True,
    ) -> None:
        if sample_rate <= 0 or target_length <= 0 or num_mel_bins < 3:
            raise ValueError(
                f"need sample_rate > 0, target_length > 0 and num_mel_bins >= 3, got {sample_rate}, {target_length}, {num_mel_bins}"
            )
        if norm_std <= 0:
            raise ValueError(f"norm_std must be positive, got {norm_std}")
        if freqm < 0 or timem < 0:
            raise ValueError(f"freqm and timem must be >= 0, got {freqm} and {timem}")
        super().__init__(root, "audio clip", (".wav",), batch_size, num_workers)
        self.save_hyperparameters()
        self.sample_rate, self.target_length, self.num_mel_bins = sample_rate, target_length, num_mel_bins
        self.norm_mean, self.norm_std = norm_mean, norm_std
        self.random_crop = random_crop
        self.freqm, self.timem = freqm, timem
        self.roll_mag_aug = roll_mag_aug

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(1, target_length, num_mel_bins)`` of one item."""
        return (1, self.target_length, self.num_mel_bins)

    def file_dataset(self, samples: list[tuple[Path, int]], split: str) -> AudioFileDataset:
        train = split == "train"  # random windows, roll / magnitude and SpecAugment for training items only
        return AudioFileDataset(samples, self.sample_rate, self.target_length, self.num_mel_bins, self.norm_mean, self.norm_std,
                                random_crop=self.random_crop and train, freqm=self.freqm if train else 0,
                                timem=self.timem if train else 0, roll_mag_aug=self.roll_mag_aug and train)  # fmt: skip


class SyntheticAudioDataModule(AudioFolderDataModule):
    """SYNTHETIC demo data: :func:`litzoo.datamodules.synthetic.synthetic_audio_classes` (8 classes of tones,
    chirps, AM tones and noises; 1 s, 16 kHz) written once under ``root/seed<seed>-n<num_per_class>``
    (through a temporary folder renamed into place, so concurrent processes never see half a tree),
    then read as an :class:`AudioFolderDataModule` (``train/`` and ``val/``, ``num_per_class`` each).
    """

    def __init__(
        self,
        root: str = "data/synthetic_audio",
        num_per_class: int = 40,
        seed: int = 0,
        target_length: int = 96,
        num_mel_bins: int = 128,
        norm_mean: float = AUDIOSET_FBANK_MEAN,
        norm_std: float = AUDIOSET_FBANK_STD,
        batch_size: int = 32,
        num_workers: int = 0,
        random_crop: bool = True,
        freqm: int = 0,
        timem: int = 0,
        roll_mag_aug: bool = True,
    ) -> None:
        if num_per_class < 1:
            raise ValueError(f"num_per_class must be at least 1, got {num_per_class}")
        folder = Path(root).expanduser() / f"seed{seed}-n{num_per_class}"
        self._generate(folder, num_per_class, seed)
        super().__init__(str(folder), 16000, target_length, num_mel_bins, norm_mean, norm_std, batch_size, num_workers, random_crop,
                         freqm, timem, roll_mag_aug)  # fmt: skip
        self.save_hyperparameters()

    @staticmethod
    def _generate(folder: Path, num_per_class: int, seed: int) -> None:
        from litzoo.datamodules.synthetic import synthetic_audio_classes

        if (folder / "val").is_dir():
            return
        generate_folder_atomically(folder, lambda staging: synthetic_audio_classes(staging, num_per_class=num_per_class, seed=seed))
