"""AudioVideoDataModule / AudioTextDataModule on files in the exact layouts, and the SYNTHETIC audio-visual generator."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.signal import resample_poly

from litzoo.datamodules.audio_video import (
    AudioFrontEnd,
    AudioTextDataModule,
    AudioVideoDataModule,
    SyntheticAudioTextDataModule,
    SyntheticAudioVideoDataModule,
    clip_id,
    digit_pitch_band,
    read_json_index,
    read_segment_csv,
    write_synthetic_audio_video,
)
from litzoo.framework.data.audio import kaldi_fbank, normalize_fbank, pad_or_cut_frames, write_wav
from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.data.video import write_video_file
from litzoo.framework.errors import LitzooError

AUDIOSET_HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)
LABELS_CSV = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0jbk,"Animal"\n'


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def fails(pattern, call, *args, **kwargs):
    with pytest.raises(LitzooError, match=pattern) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)


# ---- index files -----------------------------------------------------------------------------------------------------
def test_audioset_segment_csv_layout_and_clip_ids(tmp_path):
    path = write(tmp_path / "train.csv", AUDIOSET_HEADER + '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n\n'
                 'abc_-Z9, 30.500, 40.500, "/m/04rlf"\n')  # fmt: skip
    rows = read_segment_csv(path)
    assert [(r.clip_id, r.labels, r.line) for r in rows] == [
        ("--PJHxphWEs_000030", ("/m/09x0r", "/t/dd00088"), 4),
        ("abc_-Z9_000030.500", ("/m/04rlf",), 6),
    ]
    assert clip_id("x", 0) == "x_000000" and clip_id("x", 7.25) == "x_000007.250"
    plain = write(tmp_path / "plain.csv", 'YTID,start_seconds,end_seconds,labels\nq,1,2,"/m/a"\n')
    assert [r.clip_id for r in read_segment_csv(plain)] == ["q_000001"]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("a, 0, 10, /m/1,/m/2\n", r"line 4: 5 fields, expected 4 .*quote"),
        ('a, zero, 10, "/m/1"\n', r"line 4: start 'zero' or end '10' is not a number"),
        ('a, 10, 10, "/m/1"\n', r"line 4: segment 10\.\.10 s is not an interval"),
        ('a, 0, 10, "/m/1"\na, 0, 10, "/m/2"\n', r"line 5: clip 'a_000000' is listed twice \(first on line 4\)"),
        ('a, 0, 10, "/m/1,"\n', r"line 4: empty label"),
        ("", "lists no segment"),
    ],
)
def test_segment_csv_errors_name_file_and_line(tmp_path, content, pattern):
    path = write(tmp_path / "bad.csv", AUDIOSET_HEADER + content)
    fails(rf"segment CSV '.*bad\.csv'.*{pattern}", read_segment_csv, path)


def test_json_index_layout_and_errors(tmp_path):
    path = write(tmp_path / "val.json", json.dumps({"data": [{"video_id": "c1", "labels": "/m/09x0r,/m/04rlf"}]}))
    assert [(r.clip_id, r.labels) for r in read_json_index(path)] == [("c1", ("/m/09x0r", "/m/04rlf"))]
    fails(r"JSON index '.*bad\.json' line 1 is not valid JSON", read_json_index, write(tmp_path / "bad.json", "{"))
    fails(r"entry 1 is not \{\"video_id\"", read_json_index, write(tmp_path / "b.json", json.dumps({"data": [{"video_id": "a", "labels": "x"},
                                                                                                           {"video_id": 3}]})))  # fmt: skip
    fails(r"has no non-empty \"data\" list", read_json_index, write(tmp_path / "c.json", json.dumps({"data": []})))


# ---- a small data set in the clip-folder layout, with one .mp4 ------------------------------------------------------------
def frame_value(clip: int, k: int) -> int:
    return 20 * clip + 5 * k


def tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return 0.4 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def make_root(tmp_path, clips: int = 3, wav_rate: int = 22050):
    """``train`` as AudioSet CSV: ``clips`` frame-folder clips (12 frames at 4 fps, WAV at ``wav_rate``) and one .mp4;
    ``val`` as JSON with one clip."""
    root = tmp_path / "root"
    write(root / "class_labels_indices.csv", LABELS_CSV)
    mids = ["/m/09x0r", "/m/04rlf", "/m/0jbk"]
    lines = []
    for c in range(clips):
        folder = root / "train" / clip_id(f"yt{c}", 10 * c)
        (folder / "frames").mkdir(parents=True)
        for k in range(12):
            Image.fromarray(np.full((8, 10, 3), frame_value(c, k), dtype=np.uint8)).save(folder / "frames" / f"{k + 1:05d}.png")
        write_wav(folder / "audio.wav", tone(300.0 * (c + 1), wav_rate), wav_rate)
        labels = ",".join(mids[: c % 3 + 1][::-1])  # listed out of order on purpose
        lines.append(f'yt{c}, {10 * c}.000, {10 * c + 3}.000, "{labels}"\n')
    clip = torch.zeros(8, 3, 16, 16)
    for k in range(8):
        clip[k] = k / 8
    write_video_file(root / "train" / "ytv_000005.mp4", clip, fps=8, audio=torch.from_numpy(tone(500.0, 16000)).float())
    lines.append('ytv, 5.000, 6.000, "/m/0jbk"\n')
    write(root / "train.csv", AUDIOSET_HEADER + "".join(lines))
    write(root / "val.json", json.dumps({"data": [{"video_id": clip_id("yt0", 0), "labels": "/m/04rlf"}]}))
    (root / "val").mkdir()
    (root / "val" / clip_id("yt0", 0)).symlink_to(root / "train" / clip_id("yt0", 0))
    return root


def test_batches_from_frame_folders_wav_and_mp4(tmp_path):
    root = make_root(tmp_path)
    dm = AudioVideoDataModule(str(root), label_csv="class_labels_indices.csv", num_frames=4, fps=2.0, frames_fps=4.0, anchor="centre",
                              image_size=16, target_length=64, num_mel_bins=32, batch_size=4)  # fmt: skip
    dm.setup("fit")
    assert dm.classes == ["/m/09x0r", "/m/04rlf", "/m/0jbk"]
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"video", "audio", "label", "index"}
    assert batch["video"].shape == (1, 4, 3, 16, 16) and batch["audio"].shape == (1, 1, 64, 32)
    assert batch["label"].tolist() == [[0.0, 1.0, 0.0]]
    train = dm.datasets["train"]
    items = [train[i] for i in range(4)]
    assert [item["label"].tolist() for item in items[:3]] == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert items[3]["label"].tolist() == [0, 0, 1]
    # 12 frames at 4 fps, 4 at 2 fps: every 2nd frame, the window of 7 frames centred: frames 2, 4, 6, 8; resized 8x10 -> 16
    assert torch.allclose(items[1]["video"][:, 0, 5, 5] * 255, torch.tensor([frame_value(1, k) for k in (2, 4, 6, 8)], dtype=torch.float),
                          atol=1e-3)  # fmt: skip
    # the audio: 22.05 kHz resampled to 16 kHz (resample_poly 320/441), mean removed, centred window, Audio-MAE fbank
    waveform = torch.from_numpy(resample_poly(np.round(tone(600.0, 22050) * 32767) / 32767, 320, 441)).float()
    waveform = waveform - waveform.mean()
    needed = 400 + 63 * 160
    offset = (len(waveform) - needed) // 2
    expected = normalize_fbank(pad_or_cut_frames(kaldi_fbank(waveform[offset : offset + needed], 16000, 32), 64))[None]
    torch.testing.assert_close(items[1]["audio"], expected, atol=1e-4, rtol=1e-4)
    # the .mp4 clip: 8 frames at 8 fps, 4 at 2 fps -> step 4, span 13 > 8: frames 0, 4, 7, 7 (the last repeated)
    assert torch.allclose(items[3]["video"][:, 0, 8, 8], torch.tensor([0, 4, 7, 7]) / 8, atol=0.03)
    mp4_audio = items[3]["audio"][0]
    assert int(mp4_audio.mean(dim=0).argmax()) == int(AudioFrontEnd(16000, 64, 32)(torch.from_numpy(tone(500.0, 16000)).float(), 16000,
                                                                                       "x")[0].mean(dim=0).argmax())  # fmt: skip


def test_training_loader_is_seeded_and_resumes_mid_epoch(tmp_path):
    root = make_root(tmp_path, clips=7)

    def loader():
        dm = AudioVideoDataModule(str(root), num_frames=2, fps=2.0, frames_fps=4.0, image_size=8, target_length=16, num_mel_bins=16,
                                  batch_size=2)  # fmt: skip
        dm.load_state_dict({"shuffle_seed": 5})
        dm.setup("fit")
        return dm.train_dataloader()

    full = loader()
    assert isinstance(full, ResumableLoader)
    epoch0 = [b["index"].tolist() for b in full]
    epoch1 = [b["index"].tolist() for b in full]
    assert sorted(sum(epoch0, [])) == list(range(8)) and epoch0 != epoch1
    interrupted = loader()
    iterator = iter(interrupted)
    head = [next(iterator)["index"].tolist() for _ in range(2)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [b["index"].tolist() for b in resumed] == epoch0  # killed after 2 batches and resumed = uninterrupted


def test_datamodule_errors_name_the_file_and_line(tmp_path):
    root = make_root(tmp_path)
    kwargs = dict(num_frames=2, fps=2.0, frames_fps=4.0, target_length=16, num_mel_bins=16)
    fails(r"audio-video root '.*nowhere' does not exist", AudioVideoDataModule, str(tmp_path / "nowhere"))
    fails(r"label file '.*labels\.csv' does not exist", AudioVideoDataModule, str(root), label_csv="labels.csv")
    with pytest.raises(ValueError, match="anchor"):
        AudioVideoDataModule(str(root), anchor="end")
    (root / "val.json").unlink()  # the rewritten training indices below no longer list its label
    write(root / "train.csv", AUDIOSET_HEADER + 'yt0, 0, 3, "/m/09x0r"\nyt9, 0, 3, "/m/04rlf"\n')
    fails(r"index '.*train\.csv' line 5: clip 'yt9_000000' has neither a folder '.*yt9_000000' nor a file '.*yt9_000000\.mp4'",
          AudioVideoDataModule(str(root), **kwargs).setup, "fit")  # fmt: skip
    write(root / "train.csv", AUDIOSET_HEADER + 'yt0, 0, 3, "/m/09x0r,/m/zzz"\n')
    fails(r"index '.*train\.csv' line 4: label '/m/zzz' is not listed by '.*class_labels_indices\.csv'",
          AudioVideoDataModule(str(root), label_csv="class_labels_indices.csv", **kwargs).setup, "fit")  # fmt: skip
    write(root / "train.csv", AUDIOSET_HEADER + 'yt0, 0, 3, "/m/09x0r"\n')
    no_rate = AudioVideoDataModule(str(root), num_frames=2, fps=2.0, target_length=16, num_mel_bins=16)
    no_rate.setup("fit")
    fails(r"clip folder '.*yt0_000000' holds frames, but the data module has no frames_fps", no_rate.datasets["train"].__getitem__, 0)
    wav = root / "train" / "yt0_000000" / "audio.wav"
    wav.write_bytes(b"RIFF")
    dm = AudioVideoDataModule(str(root), **kwargs)
    dm.setup("fit")
    fails(r"WAV file '.*yt0_000000/audio\.wav'", dm.datasets["train"].__getitem__, 0)
    write_wav(wav, np.zeros(100), 16000)  # 100 samples < one 25 ms frame (400)
    fails(r"audio of '.*audio\.wav' is too short: 100 samples at 16000 Hz", dm.datasets["train"].__getitem__, 0)
    wav.unlink()
    fails(r"clip folder '.*yt0_000000' has no audio\.wav", dm.datasets["train"].__getitem__, 0)


# ---- audio-text pairs ------------------------------------------------------------------------------------------------
def test_audio_text_jsonl_relative_paths_batches_and_errors(tmp_path):
    audio_dir = tmp_path / "clotho" / "audio"
    audio_dir.mkdir(parents=True)
    write_wav(audio_dir / "a.wav", tone(400.0, 32000), 32000)
    write_wav(audio_dir / "b.wav", tone(900.0, 16000), 16000)
    manifest = write(tmp_path / "clotho" / "train.jsonl", '{"audio": "audio/a.wav", "text": "a low hum"}\n\n'
                     f'{{"audio": "{audio_dir / "b.wav"}", "text": "a high whistle, twice"}}\n')  # fmt: skip
    dm = AudioTextDataModule(str(manifest), val_jsonl=str(manifest), target_length=48, num_mel_bins=24, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["text"] == ["a low hum", "a high whistle, twice"] and batch["audio"].shape == (2, 1, 48, 24)
    assert batch["index"].tolist() == [0, 1]
    low, high = (int(batch["audio"][i, 0].mean(dim=0).argmax()) for i in range(2))
    assert low < high  # the 400 Hz clip (resampled from 32 kHz) peaks in a lower mel bin than the 900 Hz one
    assert dm.test_split == "val"
    bad = write(tmp_path / "clotho" / "bad.jsonl", '{"audio": "audio/a.wav", "text": "ok"}\n{"audio": "audio/zz.wav", "text": "x"}\n')
    fails(r"audio-text JSONL '.*bad\.jsonl' line 2: audio file '.*zz\.wav' does not exist", AudioTextDataModule(str(bad)).setup, "fit")
    empty = write(tmp_path / "clotho" / "empty.jsonl", '{"audio": "audio/a.wav", "text": "  "}\n')
    fails(r"line 1: empty caption", AudioTextDataModule(str(empty)).setup, "fit")
    notjson = write(tmp_path / "clotho" / "nj.jsonl", '{"audio": "audio/a.wav"}\n')
    fails(r"nj\.jsonl' line 1 has no string field 'text'", AudioTextDataModule(str(notjson)).setup, "fit")
    fails(r"audio-text JSONL '.*missing\.jsonl' \(train split\) does not exist", AudioTextDataModule, str(tmp_path / "missing.jsonl"))


# ---- SYNTHETIC -------------------------------------------------------------------------------------------------------
def planted(folder):
    with open(folder / "SYNTHETIC_planted.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def modality_bits(batch, high_bin: int):
    """The visual bit from the sprite's motion (centre of mass moving left) and the audio bit from the loudest mel bin."""
    video = batch["video"].mean(dim=2)  # (B, T, H, W)
    columns = torch.arange(video.shape[-1], dtype=torch.float)
    com = (video.sum(dim=2) * columns).sum(dim=-1) / video.sum(dim=(2, 3))  # (B, T)
    visual = (com[:, -1] < com[:, 0]).long()
    audio = (batch["audio"][:, 0].mean(dim=1).argmax(dim=1) >= high_bin).long()
    return visual, audio


def accuracy(pred, target):
    return float((pred == target).float().mean())


def test_synthetic_xor_needs_both_modalities(tmp_path):
    dm = SyntheticAudioVideoDataModule(str(tmp_path), num_train=16, num_val=8, num_digits=3, seed=1, batch_size=16, target_length=64)
    assert dm.classes == ["/synthetic/digit_0", "/synthetic/digit_1", "/synthetic/digit_2", "/synthetic/xor"]
    dm.setup("fit")
    batch = next(iter(dm._loader("train", shuffle=False)))
    truth = planted(dm.root)[:16]
    xor = batch["label"][:, -1].long()
    assert xor.tolist() == [int(row["xor"]) for row in truth]
    assert batch["label"][:, :3].argmax(dim=1).tolist() == [int(row["digit"]) for row in truth]
    # the mel bin of 1 kHz: between the low (400-600 Hz) and the high (1.4-2 kHz) pitch bands
    from litzoo.framework.data.audio import mel_filterbank

    high_bin = int(mel_filterbank(128, 512, 16000)[:, 32].argmax())  # FFT bin 32 = 1000 Hz
    visual, audio = modality_bits(batch, high_bin)
    assert visual.tolist() == [int(row["visual_bit"]) for row in truth]
    assert audio.tolist() == [int(row["audio_bit"]) for row in truth]
    assert accuracy(visual ^ audio, xor) == 1.0  # both modalities together: the label
    for alone in (visual, audio, 1 - visual, 1 - audio):
        assert accuracy(alone, xor) == 0.5  # either alone: chance, exactly (the four pairs are balanced)
    # the sound's loudness peaks when the sprite crosses the centre, whatever its direction
    fresh = write_synthetic_audio_video(tmp_path / "again", 16, 8, 3, seed=1)
    assert planted(fresh) == planted(dm.root)  # deterministic
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder left


def test_synthetic_misalignment_knobs(tmp_path):
    shuffled = write_synthetic_audio_video(tmp_path / "shuffled", 16, 4, 2, seed=0, shuffle_prob=1.0)
    rows = [row for row in planted(shuffled) if row["split"] == "train"]
    assert all(row["audio_source"] != row["clip_id"] for row in rows)  # every clip has another clip's sound
    dm = AudioVideoDataModule(str(shuffled), label_csv="class_labels_indices.csv", num_frames=8, fps=4.0, frames_fps=8.0, target_length=64,
                              batch_size=16)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm._loader("train", shuffle=False)))
    from litzoo.framework.data.audio import mel_filterbank

    visual, audio = modality_bits(batch, int(mel_filterbank(128, 512, 16000)[:, 32].argmax()))
    source_bit = {row["clip_id"]: int(row["audio_bit"]) for row in rows}
    assert audio.tolist() == [source_bit[row["audio_source"]] for row in rows]  # the sound heard is the source clip's
    assert accuracy(visual ^ audio, batch["label"][:, -1].long()) < 1.0  # the planted rule no longer holds for every clip
    # a time shift moves the loudness peak (the sprite's centre crossing, at the clip's middle) by the shift
    aligned = write_synthetic_audio_video(tmp_path / "aligned", 4, 1, 2, seed=0)
    shifted = write_synthetic_audio_video(tmp_path / "shifted", 4, 1, 2, seed=0, audio_shift=0.5)
    from litzoo.framework.data.audio import read_wav

    def peak_time(folder):
        waveform, rate = read_wav(next((folder / "train").iterdir()) / "audio.wav")
        envelope = waveform.abs().unfold(0, 400, 400).max(dim=1).values
        return float(envelope.argmax()) * 400 / rate

    assert abs(peak_time(aligned) - 16 / 8 * 15 / 16 / 2) < 0.05
    assert abs(peak_time(shifted) - peak_time(aligned) - 0.5) < 0.05
    with pytest.raises(ValueError, match="shuffle_prob"):
        write_synthetic_audio_video(tmp_path / "x", shuffle_prob=2.0)


def test_synthetic_bit_labels_add_each_bit_as_a_label_and_nothing_else(tmp_path):
    plain = write_synthetic_audio_video(tmp_path / "plain", 8, 4, 2, seed=3)
    dm = SyntheticAudioVideoDataModule(str(tmp_path), num_train=8, num_val=4, num_digits=2, seed=3, batch_size=8, target_length=64,
                                       bit_labels=True)  # fmt: skip
    assert dm.root.name.endswith("-bits")
    assert dm.classes == ["/synthetic/digit_0", "/synthetic/digit_1", "/synthetic/leftward", "/synthetic/high_pitch", "/synthetic/xor"]
    dm.setup("fit")
    batch = next(iter(dm._loader("train", shuffle=False)))
    truth = planted(dm.root)[:8]
    for column, key in ((2, "visual_bit"), (3, "audio_bit"), (4, "xor")):
        assert batch["label"][:, column].long().tolist() == [int(row[key]) for row in truth]
    # the same clips as without the knob: only the label lists (and the positive count) differ
    assert planted(dm.root) == planted(plain)
    bits = dm.root
    for split in ("train", "val"):
        for clip in (plain / split).iterdir():
            for name in ("audio.wav", "frames/000001.png", "frames/000016.png"):
                assert (clip / name).read_bytes() == (bits / split / clip.name / name).read_bytes()
    lines = (bits / "train.csv").read_text().splitlines()
    plain_lines = (plain / "train.csv").read_text().splitlines()
    positives = sum(1 + int(row["xor"]) + int(row["visual_bit"]) + int(row["audio_bit"]) for row in truth)
    assert lines[1].endswith(f"num_positive_labels={positives}")
    for row, line, plain_line in zip(truth, lines[3:], plain_lines[3:], strict=True):
        wanted = [f"/synthetic/digit_{row['digit']}"] + ["/synthetic/leftward"] * int(row["visual_bit"])
        wanted += ["/synthetic/high_pitch"] * int(row["audio_bit"]) + ["/synthetic/xor"] * int(row["xor"])
        assert line.split('"')[1] == ",".join(wanted)
        assert line.split('"')[0] == plain_line.split('"')[0]


def test_synthetic_audio_text_captions_name_the_heard_pitch(tmp_path):
    dm = SyntheticAudioTextDataModule(str(tmp_path), num_train=8, num_val=4, num_digits=2, seed=2, target_length=64, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm._loader("train", shuffle=False)))
    truth = [row for row in planted(tmp_path / "seed2-n8-4-d2-shift0-shuffle0") if row["split"] == "train"]
    assert batch["audio"].shape == (8, 1, 64, 128) and len(batch["text"]) == 8 and dm.test_split == "val"
    from litzoo.framework.data.audio import mel_filterbank

    high_bin = int(mel_filterbank(128, 512, 16000)[:, 32].argmax())  # 1 kHz, between the two pitch bands
    heard = (batch["audio"][:, 0].mean(dim=1).argmax(dim=1) >= high_bin).long().tolist()
    assert heard == [int(row["audio_bit"]) for row in truth]
    assert [int(" high " in f" {text} ") for text in batch["text"]] == heard  # the caption names the pitch heard
    assert [f" {('right', 'left')[int(row['visual_bit'])]}" in text for row, text in zip(truth, batch["text"], strict=True)] == [True] * 8


def start_pitch(wav) -> float:
    """The frequency (Hz) of the sound's first 0.1 s: the peak of a Hann-windowed, zero-padded spectrum (a chirp rises
    only ~0.6 % on average in that time)."""
    from litzoo.framework.data.audio import read_wav

    waveform, rate = read_wav(wav)
    head = waveform[: rate // 10].double().numpy()
    spectrum = np.abs(np.fft.rfft(head * np.hanning(len(head)), 1 << 17))
    return float(np.argmax(spectrum)) * rate / (1 << 17)


def test_digit_pitch_bands_hand_checked_disjoint_and_inside_the_bit_band():
    # 4 digits: the low band 400-600 Hz cut into log-equal quarters, ratio 1.5 ** (1/4); digit 0 keeps its quarter's
    # central half, 400 * 1.5 ** (1/16) .. 400 * 1.5 ** (3/16); digit 3 of the high band 1400-2000 Hz likewise
    assert digit_pitch_band(0, 0, 4) == pytest.approx((410.2662, 431.5957), abs=1e-3)
    assert digit_pitch_band(3, 1, 4) == pytest.approx((1870.6213, 1955.9089), abs=1e-3)
    for bit, (low, high) in enumerate(((400.0, 600.0), (1400.0, 2000.0))):
        ranges = [digit_pitch_band(d, bit, 10) for d in range(10)]
        assert low < ranges[0][0] and ranges[-1][1] < high
        assert all(a[1] * 1.01 < b[0] for a, b in zip(ranges, ranges[1:])), ranges  # a gap of half a sub-band between digits
    with pytest.raises(ValueError, match="digit"):
        digit_pitch_band(4, 0, 4)


def test_synthetic_pitch_from_digit_ties_the_sound_to_the_digit_and_changes_only_the_audio(tmp_path):
    plain = write_synthetic_audio_video(tmp_path / "plain", 16, 8, 4, seed=4, bit_labels=True)
    dm = SyntheticAudioVideoDataModule(str(tmp_path), num_train=16, num_val=8, num_digits=4, seed=4, batch_size=16, target_length=64,
                                       bit_labels=True, pitch_from_digit=True)  # fmt: skip
    tied = dm.root
    assert tied.name.endswith("-bits-pitchdigit")
    truth = planted(tied)
    assert truth == planted(plain)  # the same digits, bits and XOR labels
    centres = {(d, a): np.sqrt(np.prod(digit_pitch_band(d, a, 4))) for d in range(4) for a in (0, 1)}

    def nearest(pitch: float) -> tuple[int, int]:  # the (digit, audio bit) whose range centre is nearest on a log scale
        return min(centres, key=lambda key: abs(np.log(pitch / centres[key])))

    tied_keys, plain_keys = [], []
    for row in truth:
        wanted = (int(row["digit"]), int(row["audio_bit"]))
        pitch = start_pitch(tied / row["split"] / row["clip_id"] / "audio.wav")
        low, high = digit_pitch_band(*wanted, 4)
        assert low * 0.99 < pitch < high * 1.015, (row, pitch)  # in the digit's range of the audio bit's band
        tied_keys.append(nearest(pitch))
        plain_keys.append(nearest(start_pitch(plain / row["split"] / row["clip_id"] / "audio.wav")))
    wanted = [(int(row["digit"]), int(row["audio_bit"])) for row in truth]
    assert tied_keys == wanted  # the digit is read from the sound alone
    # negative control: without the knob the band still gives the audio bit, but the pitch says little of the digit
    assert [k[1] for k in plain_keys] == [w[1] for w in wanted]
    assert sum(k == w for k, w in zip(plain_keys, wanted, strict=True)) < len(wanted) / 2
    # everything but the WAV files is byte for byte the same as without the knob
    files = sorted(path.relative_to(plain) for path in plain.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(tied) for path in tied.rglob("*") if path.is_file())
    differ = [f for f in files if (plain / f).read_bytes() != (tied / f).read_bytes()]
    assert differ and all(f.name == "audio.wav" for f in differ)
    dm.setup("fit")
    batch = next(iter(dm._loader("train", shuffle=False)))
    assert batch["label"][:, :4].argmax(dim=1).tolist() == [int(row["digit"]) for row in truth[:16]]


# ---- caption augmentation (FLAP's LLM rewrites, pre-generated) -------------------------------------------------------
REWRITES = {"a low hum": ["a quiet drone", "a low humming sound", "humming, low"], "a high whistle": ["someone whistles high"], "a click": []}


def caption_jsonl(tmp_path, rewrites: bool = True):
    """Three pairs: the first caption has 3 rewrites, the second 1, the third none (an empty list)."""
    for name, freq in (("a", 300.0), ("b", 1200.0), ("c", 700.0)):
        if not (tmp_path / f"{name}.wav").is_file():
            write_wav(tmp_path / f"{name}.wav", tone(freq, 16000, 0.5), 16000)
    lines = []
    for name, text in zip("abc", REWRITES, strict=True):
        record = {"audio": f"{name}.wav", "text": text}
        if rewrites:
            record["augmented_texts"] = REWRITES[text]
        lines.append(json.dumps(record))
    return write(tmp_path / ("rewrites.jsonl" if rewrites else "plain.jsonl"), "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("field", "pattern"),
    [
        ('"a quiet drone"', r'line 2: "augmented_texts" is a str, expected a list'),
        ('["ok", "  "]', r"line 2: \"augmented_texts\"\[1\] is '  ', expected a non-empty string"),
        ('["ok", 3]', r'line 2: "augmented_texts"\[1\] is 3, expected a non-empty string'),
        ("null", r'line 2: "augmented_texts" is a NoneType'),
    ],
)
def test_augmented_texts_field_is_checked_with_one_line_errors(tmp_path, field, pattern):
    from litzoo.datamodules.audio_video import read_audio_text_jsonl, read_audio_text_records

    write_wav(tmp_path / "a.wav", tone(300.0, 16000, 0.5), 16000)
    good = write(tmp_path / "good.jsonl", '{"audio": "a.wav", "text": "x", "augmented_texts": ["y", "z"]}\n{"audio": "a.wav", "text": "w"}\n')
    assert [(r.text, r.augmented_texts, r.line) for r in read_audio_text_records(good)] == [("x", ("y", "z"), 1), ("w", (), 2)]
    assert read_audio_text_jsonl(good) == [(tmp_path / "a.wav", "x"), (tmp_path / "a.wav", "w")]  # still (audio, caption) pairs
    bad = write(tmp_path / "bad.jsonl", '{"audio": "a.wav", "text": "x"}\n' + f'{{"audio": "a.wav", "text": "y", "augmented_texts": {field}}}\n')
    fails(rf"audio-text JSONL '.*bad\.jsonl' {pattern}", read_audio_text_jsonl, bad)
    fails(rf"audio-text JSONL '.*bad\.jsonl' {pattern}", AudioTextDataModule(str(bad), caption_augmentation=True).setup, "fit")


def test_caption_augmentation_draws_the_clips_own_texts_by_seed_epoch_and_index(tmp_path):
    from litzoo.datamodules.audio_video import CaptionDrawSampler, CaptionKey

    manifest = caption_jsonl(tmp_path)
    options = dict(val_jsonl=str(manifest), target_length=32, num_mel_bins=24, batch_size=3)
    dms = [AudioTextDataModule(str(manifest), caption_augmentation=True, **options) for _ in range(2)]
    plain = AudioTextDataModule(str(manifest), **options)
    for dm in (*dms, plain):
        dm.load_state_dict({"shuffle_seed": 7})  # as a checkpoint restores it
        dm.setup("fit")
    loaders = [dm.train_dataloader() for dm in dms]
    assert isinstance(loaders[0], ResumableLoader) and isinstance(loaders[0].sampler, CaptionDrawSampler)
    plain_loader = plain.train_dataloader()
    originals = list(REWRITES)
    drawn = {i: set() for i in range(3)}
    for epoch in range(8):
        batches = []
        for loader in (*loaders, plain_loader):
            loader.sampler.set_epoch(epoch)  # as Lightning does
            batches.append(next(iter(loader)))
        first, second, base = batches
        assert first["text"] == second["text"]  # two loader instances draw alike: a function of (seed, epoch, index)
        assert first["index"].tolist() == base["index"].tolist()  # the order is the plain loader's
        assert torch.equal(first["audio"], base["audio"])
        assert base["text"] == [originals[i] for i in base["index"].tolist()]
        for i, text in zip(first["index"].tolist(), first["text"], strict=True):
            assert text in [originals[i], *REWRITES[originals[i]]]  # always one of the clip's own texts
            assert text == dms[0].datasets["train"].caption(i, 7, epoch)  # ... the one drawn for (7, epoch, i), whatever the order
            drawn[i].add(text)
    assert len(drawn[0]) > 1 and len(drawn[1]) == 2 and drawn[2] == {"a click"}  # epochs differ; no rewrites: the caption
    val = next(iter(dms[0].val_dataloader()))
    assert val["text"] == originals and next(iter(dms[0].test_dataloader()))["text"] == originals  # evaluation: the originals
    assert dms[0].datasets["train"][0]["text"] == "a low hum"  # an int index (not a drawn key) reads the original too
    # DDP: both ranks' shards carry the same (seed, epoch), so a pair's text is the same whichever rank reads it
    dataset = dms[0].datasets["train"]
    keys = [key for rank in (0, 1) for key in CaptionDrawSampler(dataset, 7, num_replicas=2, rank=rank)]
    assert {key.index for key in keys} == {0, 1, 2} and {(key.seed, key.epoch) for key in keys} == {(7, 0)}
    assert isinstance(keys[0], CaptionKey)
    # a fit resumed mid-epoch (the loader's and the DataModule's states from a checkpoint) reads the same texts next
    single = dict(options, batch_size=1)
    whole = AudioTextDataModule(str(manifest), caption_augmentation=True, **single)
    whole.load_state_dict({"shuffle_seed": 7})
    loader = whole.train_dataloader()
    loader.sampler.set_epoch(3)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    rest = [batch["text"] for batch in iterator]
    resumed = AudioTextDataModule(str(manifest), caption_augmentation=True, **single)  # its default seed is 0, not 7
    resumed.load_state_dict(whole.state_dict())
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    assert [batch["text"] for batch in loader] == rest and len(rest) == 2


def test_caption_augmentation_probability_rule_and_options(tmp_path):
    from litzoo.datamodules.audio_video import AudioTextDataset

    manifest = caption_jsonl(tmp_path)
    dm = AudioTextDataModule(str(manifest), caption_augmentation=True, target_length=32, num_mel_bins=24)
    pairs = [(path, text) for path, text in dm.dataset("train").pairs]
    rewrites = [REWRITES[text] for _, text in pairs]
    uniform = AudioTextDataset(pairs, dm.front_end, rewrites, True)
    quarter = AudioTextDataset(pairs, dm.front_end, rewrites, 0.25)
    never = AudioTextDataset(pairs, dm.front_end, rewrites, False)
    draws = 4000
    counts_uniform = {text: 0 for text in ["a low hum", *REWRITES["a low hum"]]}
    counts_quarter = dict.fromkeys(counts_uniform, 0)
    for epoch in range(draws):
        counts_uniform[uniform.caption(0, 3, epoch)] += 1
        counts_quarter[quarter.caption(0, 3, epoch)] += 1
        assert never.caption(0, 3, epoch) == "a low hum"
    # True: uniform over the caption and its 3 rewrites (1/4 each; 4 sd of a binomial share is about 0.027)
    assert all(abs(n / draws - 0.25) < 0.03 for n in counts_uniform.values())
    # p = 0.25: the original with probability 3/4, each rewrite 1/12
    assert abs(counts_quarter["a low hum"] / draws - 0.75) < 0.03
    assert all(abs(counts_quarter[text] / draws - 1 / 12) < 0.02 for text in REWRITES["a low hum"])
    assert uniform.caption(0, 3, 5) == uniform.caption(0, 3, 5) and [uniform.caption(0, s, 0) for s in range(40)].count("a low hum") < 40
    for bad in (1.5, -0.1, "yes"):
        with pytest.raises(ValueError, match="caption_augmentation must be a bool or a probability"):
            AudioTextDataModule(str(manifest), caption_augmentation=bad)


def test_caption_augmentation_off_leaves_batches_and_vocabulary_as_before(tmp_path):
    from types import SimpleNamespace

    from litzoo.framework.data.loaders import EpochShuffleSampler
    from litzoo.modules.flap import FLAP

    with_field, without = caption_jsonl(tmp_path), caption_jsonl(tmp_path, rewrites=False)
    options = dict(target_length=32, num_mel_bins=24, batch_size=3)
    dms = [AudioTextDataModule(str(with_field), **options), AudioTextDataModule(str(with_field), caption_augmentation=0.0, **options),
           AudioTextDataModule(str(without), **options)]  # fmt: skip
    batches = []
    for dm in dms:
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert type(loader.sampler) is EpochShuffleSampler  # the base loader, untouched
        epochs = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            epochs.append(next(iter(loader)))
        batches.append(epochs)
    for other in batches[1:]:
        for a, b in zip(batches[0], other, strict=True):
            assert a["text"] == b["text"] and torch.equal(a["audio"], b["audio"]) and torch.equal(a["index"], b["index"])
    assert batches[0][0]["text"] == [list(REWRITES)[i] for i in batches[0][0]["index"].tolist()]
    assert dms[0].datasets["train"].vocabulary_texts == list(REWRITES)
    on = AudioTextDataModule(str(with_field), caption_augmentation=True, **options)
    assert on.dataset("train").vocabulary_texts == list(REWRITES) + [t for texts in REWRITES.values() for t in texts]

    def vocabulary(dm):  # FLAP builds its vocabulary in setup from the training dataset's texts
        module = FLAP(vocab_size=64, max_text_length=8, input_size=[32, 24], patch_size=8, embed_dim=16, depth=1, num_heads=2, text_dim=16,
                      text_depth=1, text_heads=2, proj_dim=16, decoder_dim=16, decoder_depth=1, decoder_heads=2)  # fmt: skip
        module._trainer = SimpleNamespace(datamodule=dm)
        module.setup("fit")
        return set(module.vocabulary.tokenizer.get_vocab())

    assert {"drone", "whistles", "humming"} <= vocabulary(on) and not {"drone", "whistles", "humming"} & vocabulary(dms[0])


def test_synthetic_rewrites_keep_the_facts_and_held_out_templates_stay_out_of_training(tmp_path):
    from litzoo.datamodules.audio_video import ALL_CAPTION_TEMPLATES, DIGIT_WORDS, match_caption_template

    for number, template in enumerate(ALL_CAPTION_TEMPLATES):  # every template reads back as itself, with its facts
        facts = dict(digit="seven", direction="left", pitch="high", sound="chirp")
        assert match_caption_template(template.format(**facts)) == (number, facts)
    assert match_caption_template("a seven slides to the left while a high chirp plays loudly") is None
    dm = SyntheticAudioTextDataModule(str(tmp_path), num_train=16, num_val=8, num_digits=3, seed=1, target_length=64, batch_size=16,
                                      caption_rewrites=3, held_out_templates=3, caption_augmentation=True)  # fmt: skip
    folder = tmp_path / "seed1-n16-8-d3-shift0-shuffle0-rw3-heldout3"
    truth = {row["clip_id"]: row for row in planted(folder)}
    training_templates = len(ALL_CAPTION_TEMPLATES) - 3
    for split in ("train", "val"):
        records = [json.loads(line) for line in (folder / f"{split}_captions.jsonl").read_text().splitlines()]
        assert len(records) == (16 if split == "train" else 8)
        for record in records:
            row = truth[record["audio"].split("/")[1]]
            number, facts = match_caption_template(record["text"])
            planted_facts = {"digit": DIGIT_WORDS[int(row["digit"])], "direction": ("right", "left")[int(row["visual_bit"])],
                             "pitch": ("low", "high")[int(row["audio_bit"])]}  # fmt: skip
            assert {k: facts[k] for k in planted_facts} == planted_facts
            if split == "val":
                assert number >= training_templates and "augmented_texts" not in record  # held-out phrasings only
                continue
            assert number < training_templates and len(record["augmented_texts"]) == 3
            numbers = [number]
            for rewrite in record["augmented_texts"]:
                rewrite_number, rewrite_facts = match_caption_template(rewrite)
                assert rewrite_facts == facts and rewrite_number < training_templates  # same facts, never a held-out phrasing
                numbers.append(rewrite_number)
            assert len(set(numbers)) == 4  # each rewrite in another template
    dm.setup("fit")
    assert dm.datasets["train"].caption_augmentation is True and dm.datasets["val"].caption_augmentation is False
    # the clips are those of the writer without the options; with H = 0 the captions are too (rewrites only added)
    plain = write_synthetic_audio_video(tmp_path / "plain", 16, 8, 3, seed=1)
    rewritten = write_synthetic_audio_video(tmp_path / "rw", 16, 8, 3, seed=1, caption_rewrites=2)
    assert (plain / "SYNTHETIC_planted.csv").read_bytes() == (folder / "SYNTHETIC_planted.csv").read_bytes()
    clip = next(iter(truth))
    assert (plain / "train" / clip / "audio.wav").read_bytes() == (folder / "train" / clip / "audio.wav").read_bytes()
    plain_texts = [json.loads(line)["text"] for line in (plain / "train_captions.jsonl").read_text().splitlines()]
    assert plain_texts == [json.loads(line)["text"] for line in (rewritten / "train_captions.jsonl").read_text().splitlines()]
    assert (plain / "val_captions.jsonl").read_bytes() == (rewritten / "val_captions.jsonl").read_bytes()
    assert "augmented_texts" not in (plain / "train_captions.jsonl").read_text()
    with pytest.raises(ValueError, match="templates left for training"):
        write_synthetic_audio_video(tmp_path / "x", 4, 4, caption_rewrites=9, held_out_templates=3)
