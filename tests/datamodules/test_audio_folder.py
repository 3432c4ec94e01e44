"""AudioFolderDataModule on tiny WAV trees written in tmp_path; the synthetic audio generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litzoo.datamodules.audio_folder import AudioFolderDataModule, SyntheticAudioDataModule
from litzoo.datamodules.synthetic import synthetic_audio_classes
from litzoo.framework.data.audio import kaldi_fbank, normalize_fbank, pad_or_cut_frames, read_wav, roll_mag_aug, write_wav
from litzoo.framework.data.batches import batch_inputs
from litzoo.framework.errors import LitzooError


def _tree(root, rate=16000, n=2400, splits=("train", "val")):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in ("hiss", "tone"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) if name == "tone" else 0.1 * rng.standard_normal(n)
                write_wav(root / split / name / f"{i}.wav", x, rate)
    return root


def test_batches_shapes_labels_and_fbank_values(tmp_path):
    root = _tree(tmp_path / "data")
    dm = AudioFolderDataModule(str(root), target_length=16, num_mel_bins=32, batch_size=4)
    dm.setup("fit")
    assert dm.classes == ["hiss", "tone"] and dm.input_shape == (1, 16, 32)
    batch = next(iter(dm.val_dataloader()))
    assert list(batch) == ["audio", "label"] and batch["audio"].shape == (4, 1, 16, 32)
    assert batch["label"].tolist() == [0, 0, 0, 1]
    assert batch_inputs(batch) is batch["audio"]  # generic callbacks find the spectrogram
    # the item equals the documented pipeline: mean removed, fbank (13 frames of 2400 samples), zero frames
    # appended up to 16 (before normalisation, as Audio-MAE), normalised
    wav, _ = read_wav(root / "val" / "hiss" / "0.wav")
    expected = normalize_fbank(pad_or_cut_frames(kaldi_fbank(wav - wav.mean(), num_mel_bins=32), 16))
    torch.testing.assert_close(batch["audio"][0, 0], expected)
    assert torch.allclose(batch["audio"][0, 0, 13:], normalize_fbank(torch.zeros(3, 32)))
    # longer clips are cut to the samples of target_length frames
    short = AudioFolderDataModule(str(root), target_length=5, num_mel_bins=32, batch_size=2)
    expected = normalize_fbank(kaldi_fbank((wav - wav.mean())[: 400 + 4 * 160], num_mel_bins=32))
    torch.testing.assert_close(short._scan("val")[0]["audio"][0], expected)


def test_random_crop_in_training_only(tmp_path):
    root = _tree(tmp_path / "data", n=8000)
    dm = AudioFolderDataModule(str(root), target_length=8, num_mel_bins=32, batch_size=2)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    torch.manual_seed(0)
    crops = {tuple(train[0]["audio"].flatten()[:4].tolist()) for _ in range(5)}
    assert len(crops) > 1
    assert torch.equal(val[0]["audio"], val[0]["audio"])


def test_clear_errors(tmp_path):
    with pytest.raises(LitzooError, match="does not exist"):
        AudioFolderDataModule(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LitzooError, match="missing folder .*train"):
        AudioFolderDataModule(str(tmp_path / "empty"))
    root = _tree(tmp_path / "data", splits=("train",))
    (root / "train" / "hiss" / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage")
    dm = AudioFolderDataModule(str(root), target_length=8, num_mel_bins=32, batch_size=8, random_crop=False)
    dm.setup("fit")
    with pytest.raises(LitzooError, match="bad.wav"):
        next(iter(dm.train_dataloader()))
    (root / "train" / "hiss" / "bad.wav").unlink()
    write_wav(root / "train" / "tone" / "8k.wav", np.zeros(800), 8000)
    dm = AudioFolderDataModule(str(root), target_length=8, num_mel_bins=32, batch_size=8, random_crop=False)
    with pytest.raises(LitzooError, match="8k.wav' has sample rate 8000 Hz, expected 16000"):
        next(iter(dm.train_dataloader()))
    with pytest.raises(LitzooError, match="missing folder .*test"):
        dm.test_dataloader()


def test_synthetic_generator_is_deterministic_and_datamodule_generates(tmp_path):
    a = synthetic_audio_classes(tmp_path / "a", num_per_class=2, seed=3, seconds=0.5)
    b = synthetic_audio_classes(tmp_path / "b", num_per_class=2, seed=3, seconds=0.5)
    files = sorted(p.relative_to(a) for p in a.rglob("*.wav"))
    assert len(files) == 2 * 8 * 2
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    x, rate = read_wav(a / "train" / "tone_low" / "0000.wav")
    assert rate == 16000 and x.shape == (8000,)
    dm = SyntheticAudioDataModule(str(tmp_path / "syn"), num_per_class=1, target_length=32, num_mel_bins=32, batch_size=8)
    assert dm.num_classes == 8 and (tmp_path / "syn" / "seed0-n1" / "val").is_dir()
    assert [p.name for p in (tmp_path / "syn").iterdir()] == ["seed0-n1"]  # no staging folder left
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["audio"].shape == (8, 1, 32, 32)


def test_roll_mag_aug_on_training_waveforms_only(tmp_path):
    root = _tree(tmp_path / "data", n=4000)  # 23 frames
    dm = AudioFolderDataModule(str(root), target_length=20, num_mel_bins=32, batch_size=2, random_crop=False)
    assert dm.roll_mag_aug  # on by default, as the released AudioMAE pretraining script
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert train.roll_mag_aug and not val.roll_mag_aug
    wav, _ = read_wav(train.samples[0][0])
    torch.manual_seed(7)
    item = train[0]["audio"][0]
    # the documented place: the waveform minus its mean, augmented (same draws), then the fbank pipeline
    expected = normalize_fbank(pad_or_cut_frames(kaldi_fbank(roll_mag_aug(wav - wav.mean(), torch.Generator().manual_seed(7)), num_mel_bins=32), 20))
    torch.testing.assert_close(item, expected)
    plain = normalize_fbank(pad_or_cut_frames(kaldi_fbank(wav - wav.mean(), num_mel_bins=32), 20))
    assert not torch.allclose(item, plain)
    assert not torch.allclose(train[0]["audio"][0], item)  # a new gain on every read: augmented items are not cached
    # validation items are untouched, and draw nothing from the RNG
    val_wav, _ = read_wav(val.samples[0][0])
    reference = normalize_fbank(pad_or_cut_frames(kaldi_fbank(val_wav - val_wav.mean(), num_mel_bins=32), 20))
    state = torch.get_rng_state()
    for _ in range(3):
        torch.testing.assert_close(val[0]["audio"][0], reference)
    assert torch.equal(torch.get_rng_state(), state)
    off = AudioFolderDataModule(str(root), target_length=20, num_mel_bins=32, batch_size=2, random_crop=False, roll_mag_aug=False)
    off.setup("fit")
    torch.testing.assert_close(off.datasets["train"][0]["audio"][0], plain)


def test_spec_augment_on_training_items_only(tmp_path):
    root = _tree(tmp_path / "data", n=4000)  # 23 frames
    dm = AudioFolderDataModule(str(root), target_length=20, num_mel_bins=32, batch_size=2, random_crop=False, freqm=12, timem=10,
                               roll_mag_aug=False)  # SpecAugment alone: its draws are the only ones
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    plain = train.load(train.samples[0][0])[0]  # the same item without SpecAugment
    masked_value = normalize_fbank(torch.zeros(()))  # raw fbank 0 before normalisation, as AudioMAE dataset.py
    torch.manual_seed(1)
    u = [float(torch.rand(1)) for _ in range(4)]
    torch.manual_seed(1)
    item = train[0]["audio"][0]
    f0 = int(u[1] * (32 - u[0] * 12))
    f1 = f0 + int(u[0] * 12)
    t0 = int(u[3] * (20 - u[2] * 10))
    t1 = t0 + int(u[2] * 10)
    expected = plain.clone()
    expected[:, f0:f1] = masked_value
    expected[t0:t1, :] = masked_value
    assert f1 > f0 and t1 > t0
    torch.testing.assert_close(item, expected)
    # validation items are never masked: always the deterministic pipeline
    wav, _ = read_wav(val.samples[0][0])
    reference = normalize_fbank(pad_or_cut_frames(kaldi_fbank(wav - wav.mean(), num_mel_bins=32), 20))
    for _ in range(3):
        torch.testing.assert_close(val[0]["audio"][0], reference)
    assert val.freqm == val.timem == 0
    with pytest.raises(ValueError, match="freqm and timem"):
        AudioFolderDataModule(str(root), freqm=-1)
