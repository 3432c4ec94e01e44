"""Audio-visual clips (VGGSound / AudioSet layouts) and audio-caption pairs (AudioCaps / Clotho), plus a SYNTHETIC generator.

The shared data layer of issue 25 (MBT, MAViL, PE-AV heads, AV-SUPERB probing, adversarial robustness; FLAP for the
audio-text pairs). Nothing is downloaded: AudioSet, VGGSound, AudioCaps and Clotho are not redistributable, the user
brings the clips.

**Clips** (:class:`AudioVideoDataModule`)::

    root/
      train.csv | train.json       the index of the split (below); val.* and test.* are optional
      train/<clip_id>/frames/*.jpg|png   frames extracted at ``frames_fps`` (ordered by the number in the name)
      train/<clip_id>/audio.wav          the sound (integer PCM, any rate: resampled to ``sample_rate``)
      train/<clip_id>.mp4                or the clip as one video file with an audio track (PyAV, the ``video`` extra)
      class_labels_indices.csv     optional: AudioSet's ``index,mid,display_name`` (the order of the label vector)

A clip folder is used when there is one, else the ``.mp4``. **Index files**:

* CSV in AudioSet's segment-list layout (``balanced_train_segments.csv`` …)::

      # Segments csv created Sun Mar  5 10:54:31 2017
      # num_ytids=22160, num_segs=22160, num_unique_labels=527, num_positive_labels=52882
      # YTID, start_seconds, end_seconds, positive_labels
      --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"

  lines starting with ``#`` are comments, fields are separated by a comma and optional spaces, the labels field is
  one quoted, comma-separated list; a plain header line ``YTID,start_seconds,end_seconds,labels`` is also accepted.
  (VGGSound's ``vggsound.csv``, ``YTID,start,label,split`` with one display name per row, is another layout: convert it
  to this one.)
* JSON in CAV-MAE's layout ``{"data": [{"video_id": "<clip_id>", "labels": "/m/09x0r,/m/05zppz"}, ...]}``.

**Clip ids** (a choice: AudioSet fixes none, VGGSound's released files are named so): ``<YTID>_<start>`` with the
start in whole seconds zero-padded to 6 digits, ``--PJHxphWEs_000030``; a start with a fraction keeps its
milliseconds, ``--PJHxphWEs_000030.500`` (:func:`clip_id`). JSON indices name the clip id directly.

**Labels**: with ``label_csv``, the label of each index row must be one of its mids and the target is ordered by its
``index`` column (:func:`litzoo.datamodules.audioset.read_class_labels`); without it the classes are the sorted labels of
the training index. Targets are multi-hot ``(C,)`` float (multi-label, as AudioSet; VGGSound's single label is one hot).

**An item**: ``num_frames`` frames sampled at ``fps`` from the clip (:func:`litzoo.framework.data.video.sample_frame_indices`,
``anchor`` centre or start; short clips repeat their last frame), optionally resized to ``image_size`` (bilinear,
antialiased) and normalised by ``video_mean`` / ``video_std``; the audio as Audio-MAE's front-end
(``datamodules/audio_folder.py``): mono, resampled to ``sample_rate`` (:func:`litzoo.framework.data.video.resample_audio`),
minus its mean, the window of samples that makes ``target_length`` fbank frames taken with the same ``anchor`` as the
frames (so that both modalities cover the same moment), Kaldi fbank, zero frames appended, ``(fbank − mean)/(2·std)``.
Batches: ``{"video": (B, T, C, H, W) float, "audio": (B, 1, target_length, num_mel_bins) float, "label": (B, C) float,
"index": (B,) long}``. No augmentation is applied (methods add their own); the training split is shuffled by the
seeded, resumable loader of :class:`litzoo.framework.data.splits.SplitsDataModule`.

**Audio-text pairs** (:class:`AudioTextDataModule`, for FLAP): JSONL files, one ``{"audio": path, "text": caption}``
per line (AudioCaps / Clotho as pairs: a clip with five captions is five lines), audio paths absolute or relative to
the JSONL's folder; batches ``{"audio": (B, 1, T, F), "text": list[str], "index": (B,)}``. A line may also carry
``"augmented_texts": [str, ...]``, pre-generated rewrites of its caption (FLAP's LLM caption augmentation), drawn from
at training time with ``caption_augmentation`` (see the class).

**SYNTHETIC data** (:func:`write_synthetic_audio_video`, :class:`SyntheticAudioVideoDataModule`): see the function.
Errors about files are one :class:`~litzoo.framework.errors.LitzooError` line naming the file (and line).
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from litzoo.datamodules.audioset import read_class_labels
from litzoo.framework.data.audio import (
    AUDIOSET_FBANK_MEAN,
    AUDIOSET_FBANK_STD,
    kaldi_fbank,
    normalize_fbank,
    num_samples_for,
    pad_or_cut_frames,
    read_wav,
    write_wav,
)
from litzoo.framework.data.jsonl import iter_jsonl
from litzoo.framework.data.loaders import EpochShuffleSampler, ResumableLoader
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.data.video import ANCHORS, read_frame_folder, read_video_file, resample_audio
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import derive_seed
from litzoo.framework.text.vocabulary import WordVocabulary

INDEX_SUFFIXES = (".csv", ".json")


# ---- index files -----------------------------------------------------------------------------------------------------
def clip_id(ytid: str, start_seconds: float) -> str:
    """``<YTID>_<start>``: whole seconds zero-padded to 6 digits (``abc_000030``), else with milliseconds (``abc_000030.500``)."""
    millis = round(start_seconds * 1000)
    seconds, rest = divmod(millis, 1000)
    return f"{ytid}_{seconds:06d}" if rest == 0 else f"{ytid}_{seconds:06d}.{rest:03d}"


@dataclass(frozen=True)
class IndexRow:
    """One clip of an index file: its id, labels (as written) and the line it is on (the entry number for JSON)."""

    clip_id: str
    labels: tuple[str, ...]
    line: int


def _split_labels(text: str, where: str) -> tuple[str, ...]:
    labels = tuple(label.strip() for label in text.split(","))
    if not text.strip() or any(not label for label in labels):
        raise LitzooError(f"{where}: empty label in {text!r} (expected a quoted, comma-separated list like \"/m/09x0r,/m/05zppz\")")
    return labels


def read_segment_csv(path: str | Path) -> list[IndexRow]:
    """The rows of an AudioSet-style segment CSV (see the module docstring) as :class:`IndexRow` with :func:`clip_id` ids.

    Raises:
        LitzooError: ``segment CSV '<path>' line N: ...``: missing file, not UTF-8, another number of fields than 4, a
            start / end that is not a finite number or ``end <= start``, an empty label, a clip listed twice, no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise LitzooError(f"segment CSV '{path}' does not exist (expected lines 'YTID, start_seconds, end_seconds, \"labels\"')")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise LitzooError(f"segment CSV '{path}' is not UTF-8 text ({error.reason} at byte {error.start})") from None
    rows: list[IndexRow] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"segment CSV '{path}' line {number}"
        try:
            fields = next(csv.reader([line], skipinitialspace=True, strict=True))
        except csv.Error as error:
            raise LitzooError(f"{where}: {error}") from None
        if not rows and fields and fields[0].strip().upper() == "YTID":
            continue  # a plain header line
        if len(fields) != 4:
            raise LitzooError(f"{where}: {len(fields)} fields, expected 4 (YTID, start_seconds, end_seconds, \"labels\"; "
                              "quote the comma-separated labels)")  # fmt: skip
        ytid, start_text, end_text, label_text = (field.strip() for field in fields)
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            raise LitzooError(f"{where}: start {start_text!r} or end {end_text!r} is not a number of seconds") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise LitzooError(f"{where}: segment {start_text}..{end_text} s is not an interval 0 <= start < end")
        if not ytid:
            raise LitzooError(f"{where}: empty YTID")
        clip = clip_id(ytid, start)
        if clip in seen:
            raise LitzooError(f"{where}: clip '{clip}' is listed twice (first on line {seen[clip]})")
        seen[clip] = number
        rows.append(IndexRow(clip, _split_labels(label_text, where), number))
    if not rows:
        raise LitzooError(f"segment CSV '{path}' lists no segment")
    return rows


def read_json_index(path: str | Path) -> list[IndexRow]:
    """The entries of a CAV-MAE-style JSON index ``{"data": [{"video_id", "labels"}]}`` (``line`` = entry number, from 0).

    Raises:
        LitzooError: naming the file (and entry): missing, not JSON, no ``"data"`` list, an entry without string
            ``video_id`` / ``labels``, an empty label, a clip listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise LitzooError(f"JSON index '{path}' does not exist (expected {{\"data\": [{{\"video_id\": ..., \"labels\": ...}}]}})")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LitzooError(f"JSON index '{path}' line {error.lineno} is not valid JSON: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LitzooError(f"JSON index '{path}' cannot be read: {error}") from None
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, list) or not data:
        raise LitzooError(f"JSON index '{path}' has no non-empty \"data\" list")
    rows, seen = [], set()
    for number, entry in enumerate(data):
        where = f"JSON index '{path}' entry {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("video_id"), str) or not isinstance(entry.get("labels"), str):
            raise LitzooError(f"{where} is not {{\"video_id\": str, \"labels\": str}}")
        clip = entry["video_id"].strip()
        if not clip or clip in seen:
            raise LitzooError(f"{where}: video_id {clip!r} is empty or listed twice")
        seen.add(clip)
        rows.append(IndexRow(clip, _split_labels(entry["labels"], where), number))
    return rows


def read_index(path: str | Path) -> list[IndexRow]:
    """:func:`read_segment_csv` for ``.csv``, :func:`read_json_index` for ``.json``."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_json_index(path)
    return read_segment_csv(path)


# ---- audio front-end shared by both DataModules ----------------------------------------------------------------------
@dataclass(frozen=True)
class AudioFrontEnd:
    """Audio-MAE's front-end on a waveform of any rate (see the module docstring)."""

    sample_rate: int = 16000
    target_length: int = 1024
    num_mel_bins: int = 128
    norm_mean: float = AUDIOSET_FBANK_MEAN
    norm_std: float = AUDIOSET_FBANK_STD
    anchor: str = "start"

    def __call__(self, waveform: Tensor, rate: int, source: object) -> Tensor:
        """``(1, target_length, num_mel_bins)``; ``source`` (a path) is named in the error for audio shorter than one frame."""
        if not torch.isfinite(waveform).all():
            raise LitzooError(f"audio of '{source}' holds a non-finite sample")
        waveform = resample_audio(waveform, rate, self.sample_rate)
        frame = int(self.sample_rate * 0.025)
        if len(waveform) < frame:
            raise LitzooError(f"audio of '{source}' is too short: {len(waveform)} samples at {self.sample_rate} Hz, fewer than one "
                              f"25 ms fbank frame ({frame})")  # fmt: skip
        waveform = waveform - waveform.mean()
        needed = num_samples_for(self.target_length, self.sample_rate)
        if len(waveform) > needed:
            offset = (len(waveform) - needed) // 2 if self.anchor == "centre" else 0
            waveform = waveform[offset : offset + needed]
        fbank = pad_or_cut_frames(kaldi_fbank(waveform, self.sample_rate, self.num_mel_bins), self.target_length)
        return normalize_fbank(fbank, self.norm_mean, self.norm_std)[None]


def _check_audio_options(sample_rate: int, target_length: int, num_mel_bins: int, norm_std: float) -> None:
    if sample_rate <= 0 or target_length <= 0 or num_mel_bins < 3:
        raise ValueError(f"need sample_rate > 0, target_length > 0 and num_mel_bins >= 3, got {sample_rate}, {target_length}, {num_mel_bins}")
    if norm_std <= 0:
        raise ValueError(f"norm_std must be positive, got {norm_std}")


# ---- clips -----------------------------------------------------------------------------------------------------------
class AudioVideoDataset(Dataset):
    """Clips → ``{"video": (T, C, H, W), "audio": (1, T_a, F), "label": (C,), "index"}`` items.

    Args:
        clips: ``(clip folder or .mp4, class indices)`` pairs.
        num_classes: C.
        num_frames, fps, anchor: the frame sampling (:func:`litzoo.framework.data.video.sample_frame_indices`).
        frames_fps: the rate of the frame folders' frames (``None``: a clip folder is refused).
        image_size: resize frames to ``image_size²`` (``None``: keep the clips' size).
        video_mean, video_std: per-channel normalisation of the [0, 1] frames (``None``: none).
        audio: the audio front-end.
    """

    def __init__(self, clips: Sequence[tuple[Path, list[int]]], num_classes: int, num_frames: int, fps: float, anchor: str,
                 frames_fps: float | None, image_size: int | None, video_mean: Sequence[float] | None,
                 video_std: Sequence[float] | None, audio: AudioFrontEnd, texts: Sequence[str] | None = None) -> None:  # fmt: skip
        self.clips, self.num_classes = list(clips), num_classes
        self.texts = None if texts is None else list(texts)  # one caption per clip (``captions=True``), as "text"
        self.num_frames, self.fps, self.anchor, self.frames_fps = num_frames, fps, anchor, frames_fps
        self.image_size, self.audio = image_size, audio
        self.video_mean = None if video_mean is None else torch.tensor(video_mean, dtype=torch.float32)[:, None, None]
        self.video_std = None if video_std is None else torch.tensor(video_std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.clips)

    def read_clip(self, path: Path) -> tuple[Tensor, Tensor, int]:
        """``(frames (T, 3, H, W) in [0, 1], waveform, rate)`` of a clip folder or video file."""
        if path.is_dir():
            if self.frames_fps is None:
                raise LitzooError(f"clip folder '{path}' holds frames, but the data module has no frames_fps (the rate they were extracted at)")
            video = read_frame_folder(path / "frames", self.num_frames, self.fps, self.frames_fps, self.anchor)
            wav = path / "audio.wav"
            if not wav.is_file():
                raise LitzooError(f"clip folder '{path}' has no audio.wav")
            waveform, rate = read_wav(wav)
            return video, waveform, rate
        video, waveform, rate = read_video_file(path, self.num_frames, self.fps, self.anchor, audio=True)
        assert waveform is not None and rate is not None  # audio=True raises when there is none
        return video, waveform, rate

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, labels = self.clips[index]
        video, waveform, rate = self.read_clip(path)
        if self.image_size is not None and tuple(video.shape[-2:]) != (self.image_size, self.image_size):
            video = F.interpolate(video, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        if self.video_mean is not None and self.video_std is not None:
            video = (video - self.video_mean) / self.video_std
        audio = self.audio(waveform, rate, path / "audio.wav" if path.is_dir() else path)
        target = torch.zeros(self.num_classes)
        target[labels] = 1.0
        item = {"video": video, "audio": audio, "label": target, "index": torch.tensor(index, dtype=torch.long)}
        if self.texts is not None:
            item["text"] = self.texts[index]
        return item


class AudioVideoDataModule(SplitsDataModule):
    """Audio-visual clips in VGGSound / AudioSet layouts (see the module docstring).

    Args:
        root: the folder holding ``<split>.csv|json`` and ``<split>/`` (``train`` required; ``val``, ``test`` optional).
        label_csv: AudioSet's ``class_labels_indices.csv`` (relative to ``root`` unless absolute); ``None``: the sorted
            labels of the training index.
        num_frames: frames per clip (MAViL: 8).
        fps: the rate they are sampled at (MAViL / AV-SUPERB: 2).
        frames_fps: the rate of the frames in ``frames/`` folders (``None``: only ``.mp4`` clips are accepted).
        anchor: ``"centre"`` or ``"start"`` window of the clip, for frames and audio alike.
        image_size: resize the frames to this square side (``None``: keep; all clips must then share one size).
        video_mean, video_std: per-channel frame normalisation (e.g. ImageNet's, as AV-SUPERB's MAViL); ``None``: [0, 1].
        sample_rate: the audio rate after resampling (16 kHz).
        target_length: fbank frames (1024 ≈ 10 s).
        num_mel_bins: mel bins (128).
        norm_mean, norm_std: fbank statistics (AudioSet's, as Audio-MAE).
        batch_size, num_workers: the loaders'.
        captions: add each clip's caption as ``"text"`` (a list of str in a batch), read from ``<root>/<split>_captions.jsonl``
            (``{"audio": "<split>/<clip_id>/audio.wav" or ".mp4", "text": caption}``, paths relative to ``root``; the first
            caption of a clip is used; the layout :func:`write_synthetic_audio_video` writes); :attr:`vocabulary` is then a
            :class:`~litzoo.framework.text.vocabulary.WordVocabulary` of the training captions (PE-AV).

    Raises:
        ValueError: bad options. LitzooError (one line naming the file): ``root`` or its training index missing (here); a
        malformed index, an unknown label, a clip with neither folder nor ``.mp4`` (in ``setup``); an unreadable clip
        (when loaded).
    """

    def __init__(
        self,
        root: str,
        label_csv: str | None = None,
        num_frames: int = 8,
        fps: float = 2.0,
        frames_fps: float | None = None,
        anchor: str = "centre",
        image_size: int | None = None,
        video_mean: tuple[float, float, float] | None = None,
        video_std: tuple[float, float, float] | None = None,
        sample_rate: int = 16000,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        norm_mean: float = AUDIOSET_FBANK_MEAN,
        norm_std: float = AUDIOSET_FBANK_STD,
        batch_size: int = 8,
        num_workers: int = 0,
        captions: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.captions, self._vocabulary = captions, None
        if num_frames < 1 or not fps > 0 or (frames_fps is not None and not frames_fps > 0):
            raise ValueError(f"need num_frames >= 1, fps > 0 and frames_fps > 0 (or None), got {num_frames}, {fps}, {frames_fps}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive (or None), got {image_size}")
        if (video_mean is None) != (video_std is None) or (video_std is not None and min(video_std) <= 0):
            raise ValueError(f"give video_mean and video_std together, with positive std, got {video_mean} and {video_std}")
        _check_audio_options(sample_rate, target_length, num_mel_bins, norm_std)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise LitzooError(f"audio-video root '{self.root}' does not exist")
        if self.index_file("train") is None:
            raise LitzooError(f"audio-video root '{self.root}' has no training index train.csv or train.json")
        self.label_csv = None if label_csv is None else (self.root / Path(label_csv).expanduser())
        if self.label_csv is not None and not self.label_csv.is_file():
            raise LitzooError(f"label file '{self.label_csv}' does not exist")
        self.num_frames, self.fps, self.frames_fps, self.anchor = num_frames, fps, frames_fps, anchor
        self.image_size, self.video_mean, self.video_std = image_size, video_mean, video_std
        self.front_end = AudioFrontEnd(sample_rate, target_length, num_mel_bins, norm_mean, norm_std, anchor)
        self._classes: list[str] | None = None

    def index_file(self, split: str) -> Path | None:
        """``<root>/<split>.csv`` or ``.json`` (the CSV when both are there), or ``None``."""
        return next((self.root / f"{split}{suffix}" for suffix in INDEX_SUFFIXES if (self.root / f"{split}{suffix}").is_file()), None)

    def has_split(self, split: str) -> bool:
        return split in self.splits and self.index_file(split) is not None

    @property
    def classes(self) -> list[str]:
        """The label of each target position: ``label_csv``'s mids in index order, else the training index's sorted labels."""
        if self._classes is None:
            if self.label_csv is not None:
                self._classes = read_class_labels(self.label_csv)[0]
            else:
                train = self.index_file("train")
                assert train is not None
                self._classes = sorted({label for row in read_index(train) for label in row.labels})
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def build_dataset(self, split: str) -> AudioVideoDataset:
        index = self.index_file(split)
        if index is None:
            raise LitzooError(f"audio-video root '{self.root}' has no {split} index {split}.csv or {split}.json")
        position = {label: i for i, label in enumerate(self.classes)}
        source = f"'{self.label_csv}'" if self.label_csv is not None else f"the training index '{self.index_file('train')}'"
        where = "line" if index.suffix.lower() == ".csv" else "entry"
        clips = []
        for row in read_index(index):
            unknown = [label for label in row.labels if label not in position]
            if unknown:
                raise LitzooError(f"index '{index}' {where} {row.line}: label {unknown[0]!r} is not listed by {source}")
            folder, video = self.root / split / row.clip_id, self.root / split / f"{row.clip_id}.mp4"
            path = folder if folder.is_dir() else video
            if not path.is_file() and not path.is_dir():
                raise LitzooError(f"index '{index}' {where} {row.line}: clip '{row.clip_id}' has neither a folder '{folder}' nor a file '{video}'")
            clips.append((path, sorted({position[label] for label in row.labels})))
        texts = self.read_captions(split, [path for path, _ in clips]) if self.captions else None
        return AudioVideoDataset(clips, len(position), self.num_frames, self.fps, self.anchor, self.frames_fps, self.image_size,
                                 self.video_mean, self.video_std, self.front_end, texts)  # fmt: skip

    def read_captions(self, split: str, clips: Sequence[Path]) -> list[str]:
        """The caption of each clip (folder or ``.mp4``) from ``<root>/<split>_captions.jsonl`` (see ``captions``)."""
        file = self.root / f"{split}_captions.jsonl"
        by_audio: dict[Path, str] = {}
        for number, record in iter_jsonl(file, ("audio", "text"), what="caption JSONL"):
            if not record["text"].strip():
                raise LitzooError(f"caption JSONL '{file}' line {number}: empty caption")
            by_audio.setdefault((self.root / Path(record["audio"]).expanduser()).resolve(), record["text"])
        texts = []
        for clip in clips:
            audio = (clip / "audio.wav" if clip.is_dir() else clip).resolve()
            if audio not in by_audio:
                raise LitzooError(f"caption JSONL '{file}' has no caption for clip '{clip.name}' (expected a line with \"audio\": "
                                  f"\"{audio.relative_to(self.root.resolve())}\")")  # fmt: skip
            texts.append(by_audio[audio])
        return texts

    @property
    def vocabulary(self) -> WordVocabulary | None:
        """With ``captions``, the words of the training captions (built once); else ``None``."""
        if self.captions and self._vocabulary is None:
            train = self.index_file("train")
            assert train is not None
            folders = [self.root / "train" / row.clip_id for row in read_index(train)]
            clips = [folder if folder.is_dir() else folder.with_name(f"{folder.name}.mp4") for folder in folders]
            self._vocabulary = WordVocabulary.build(self.read_captions("train", clips))
        return self._vocabulary


# ---- audio-text pairs ------------------------------------------------------------------------------------------------
#: the optional JSONL field of a caption's pre-generated rewrites (LLM paraphrases), a list of non-empty strings
AUGMENTED_TEXTS = "augmented_texts"


@dataclass(frozen=True)
class AudioTextRecord:
    """One line of an audio-text JSONL: the audio file, its caption, the caption's rewrites (may be empty), the line."""

    audio: Path
    text: str
    augmented_texts: tuple[str, ...]
    line: int


class CaptionKey(NamedTuple):
    """What the training sampler of an :class:`AudioTextDataModule` with ``caption_augmentation`` yields in place of an
    index: the index and the ``(seed, epoch)`` its caption is drawn from (:meth:`AudioTextDataset.caption`)."""

    index: int
    seed: int
    epoch: int


def check_caption_augmentation(value: bool | float) -> bool | float:
    """``value`` as :class:`AudioTextDataModule` reads it: a bool as is, a number in ``[0, 1]`` as a float.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise ValueError(f"caption_augmentation must be a bool or a probability in [0, 1], got {value!r}")


def draw_caption(texts: Sequence[str], rule: bool | float, rng: random.Random) -> str:
    """One of ``texts`` (the original caption first, then its rewrites) by ``rule`` (see :class:`AudioTextDataModule`):
    ``True``: uniform over all of them (LaCLIP's rule); a probability ``p``: a rewrite (uniform among them) with
    probability ``p``, else the original; ``False`` (or a clip without rewrites): the original, drawing nothing."""
    if rule is False or len(texts) == 1:
        return texts[0]
    if rule is True:
        return texts[rng.randrange(len(texts))]
    return texts[1 + rng.randrange(len(texts) - 1)] if rng.random() < rule else texts[0]


class AudioTextDataset(Dataset):
    """``(audio path, caption)`` pairs → ``{"audio": (1, T, F), "text": str, "index"}``.

    Indexed by an int, an item holds the original caption. With ``caption_augmentation`` (the training split of an
    :class:`AudioTextDataModule` that asks for it), an item indexed by a :class:`CaptionKey` holds :meth:`caption`.

    Args:
        pairs: ``(audio path, caption)``.
        audio: the audio front-end.
        augmented_texts: each pair's rewrites (``None``: none).
        caption_augmentation: the drawing rule of :func:`draw_caption` (``False``: never a rewrite).
    """

    def __init__(self, pairs: Sequence[tuple[Path, str]], audio: AudioFrontEnd, augmented_texts: Sequence[Sequence[str]] | None = None,
                 caption_augmentation: bool | float = False) -> None:  # fmt: skip
        self.pairs, self.audio = list(pairs), audio
        self.augmented_texts = [()] * len(self.pairs) if augmented_texts is None else [tuple(texts) for texts in augmented_texts]
        if len(self.augmented_texts) != len(self.pairs):
            raise ValueError(f"got {len(self.augmented_texts)} lists of augmented texts for {len(self.pairs)} pairs")
        self.caption_augmentation = check_caption_augmentation(caption_augmentation)

    def __len__(self) -> int:
        return len(self.pairs)

    def caption(self, index: int, seed: int, epoch: int) -> str:
        """The caption of pair ``index`` in ``epoch``: :func:`draw_caption` over the original and its rewrites with a
        ``random.Random`` seeded by ``derive_seed(seed, epoch, index)`` only (no global state: resumes and DDP ranks agree)."""
        texts = (self.pairs[index][1], *self.augmented_texts[index])
        return draw_caption(texts, self.caption_augmentation, random.Random(derive_seed(seed, epoch, index)))

    @property
    def vocabulary_texts(self) -> list[str]:
        """Every text an item can hold: the captions, and with ``caption_augmentation`` their rewrites too (the words a
        text encoder's vocabulary should cover, :class:`litzoo.modules.flap.FLAP`)."""
        texts = [text for _, text in self.pairs]
        if self.caption_augmentation:  # True or a probability above 0
            texts += [text for rewrites in self.augmented_texts for text in rewrites]
        return texts

    def __getitem__(self, key: int | CaptionKey) -> dict:
        if isinstance(key, CaptionKey):
            index, text = key.index, self.caption(key.index, key.seed, key.epoch)
        else:
            index = int(key)
            text = self.pairs[index][1]
        path = self.pairs[index][0]
        waveform, rate = read_wav(path)
        return {"audio": self.audio(waveform, rate, path), "text": text, "index": torch.tensor(index, dtype=torch.long)}


class CaptionDrawSampler(EpochShuffleSampler):
    """:class:`~litzoo.framework.data.loaders.EpochShuffleSampler`'s order (from ``(seed, epoch)``, sharded over DDP
    ranks), each index yielded as a :class:`CaptionKey` carrying the seed and epoch its caption is drawn from."""

    def __iter__(self) -> Iterator[CaptionKey]:
        seed, epoch = self.seed, self.epoch
        return (CaptionKey(int(index), seed, epoch) for index in super().__iter__())


def read_audio_text_records(path: str | Path) -> list[AudioTextRecord]:
    """The lines of an audio-text JSONL (relative audio paths from the JSONL's folder): ``{"audio", "text"}`` and an
    optional ``"augmented_texts"``, a list of the caption's rewrites (non-empty strings; an empty list is none).

    Raises:
        LitzooError: ``audio-text JSONL '<path>' line N: ...``: the file missing, a line that is not a JSON object with
            string ``audio`` and ``text``, an empty caption, ``augmented_texts`` not a list of non-empty strings, an audio
            file that does not exist; no pairs.
    """
    path = Path(path).expanduser()
    records = []
    for number, record in iter_jsonl(path, ("audio", "text"), what="audio-text JSONL"):
        where = f"audio-text JSONL '{path}' line {number}"
        if not record["text"].strip():
            raise LitzooError(f"{where}: empty caption")
        rewrites = record.get(AUGMENTED_TEXTS, [])
        if not isinstance(rewrites, list):
            raise LitzooError(f"{where}: \"{AUGMENTED_TEXTS}\" is a {type(rewrites).__name__}, expected a list of the caption's rewrites (strings)")
        for position, rewrite in enumerate(rewrites):
            if not isinstance(rewrite, str) or not rewrite.strip():
                raise LitzooError(f"{where}: \"{AUGMENTED_TEXTS}\"[{position}] is {rewrite!r}, expected a non-empty string")
        audio = Path(record["audio"]).expanduser()
        audio = audio if audio.is_absolute() else path.parent / audio
        if not audio.is_file():
            raise LitzooError(f"{where}: audio file '{audio}' does not exist")
        records.append(AudioTextRecord(audio, record["text"], tuple(rewrites), number))
    if not records:
        raise LitzooError(f"audio-text JSONL '{path}' holds no pair")
    return records


def read_audio_text_jsonl(path: str | Path) -> list[tuple[Path, str]]:
    """``(audio path, caption)`` of each line of an audio-text JSONL (:func:`read_audio_text_records`, which checks the
    lines, ``augmented_texts`` included).

    Raises:
        LitzooError: see :func:`read_audio_text_records`.
    """
    return [(record.audio, record.text) for record in read_audio_text_records(path)]


class AudioTextDataModule(SplitsDataModule):
    """Audio-caption pairs in JSONL files (FLAP; AudioCaps / Clotho as pairs), audio through Audio-MAE's front-end.

    **Caption augmentation** (FLAP trains on LLM-rewritten captions; no LLM runs here, so the rewrites are generated
    beforehand and stored with the pair): a JSONL line may carry ``"augmented_texts": ["...", ...]``, rewrites of its
    caption (the field name is ours: FLAP's rewrites are not released, and LaCLIP's code, which trains CLIP the same way,
    keeps them in separate files). With ``caption_augmentation`` each *training* item's text is drawn from the caption
    and its rewrites (:func:`draw_caption`): ``True`` uniformly over the ``1 + K`` texts (LaCLIP's
    ``random.choice(caption_list)``), a probability ``p`` a rewrite with probability ``p`` (uniform among the ``K``), else
    the original; a pair without rewrites keeps its caption. The draw comes from ``derive_seed(seed, epoch, index)``,
    ``seed`` being the shuffle seed (saved in checkpoints), never from the global random state: a resumed fit draws what
    the uninterrupted one would, and every DDP rank draws the same text for a pair. Validation, test and predict use
    the original captions. Off by default (batches and vocabulary as without the field).

    Args:
        train_jsonl: training pairs; ``val_jsonl``, ``test_jsonl`` optional (a missing test split tests on ``val``).
        sample_rate … norm_std: the audio front-end (audio cut from its start, as Audio-MAE).
        batch_size, num_workers: the loaders'.
        caption_augmentation: ``False`` (default), ``True`` (uniform) or the probability of a rewrite (see above).

    Raises:
        ValueError: bad options. LitzooError: a given JSONL missing (here), malformed or naming a missing audio file (in
        ``setup``), an unreadable WAV (when loaded): one line naming the file and line.
    """

    def __init__(self, train_jsonl: str, val_jsonl: str | None = None, test_jsonl: str | None = None, sample_rate: int = 16000,
                 target_length: int = 1024, num_mel_bins: int = 128, norm_mean: float = AUDIOSET_FBANK_MEAN,
                 norm_std: float = AUDIOSET_FBANK_STD, batch_size: int = 8, num_workers: int = 0,
                 caption_augmentation: bool | float = False) -> None:  # fmt: skip
        super().__init__(batch_size, num_workers)
        _check_audio_options(sample_rate, target_length, num_mel_bins, norm_std)
        self.caption_augmentation = check_caption_augmentation(caption_augmentation)
        self.save_hyperparameters()
        self.files = {"train": train_jsonl, "val": val_jsonl, "test": test_jsonl}
        for split, file in self.files.items():
            if file is not None and not Path(file).expanduser().is_file():
                raise LitzooError(f"audio-text JSONL '{Path(file).expanduser()}' ({split} split) does not exist")
        self.test_split = "test" if test_jsonl is not None else "val"
        self.front_end = AudioFrontEnd(sample_rate, target_length, num_mel_bins, norm_mean, norm_std, "start")

    @property
    def augments_captions(self) -> bool:
        """Whether training items draw their text from the captions' rewrites (``caption_augmentation`` not off)."""
        return bool(self.caption_augmentation)  # True or a probability above 0

    def has_split(self, split: str) -> bool:
        return self.files.get(split) is not None

    def build_dataset(self, split: str) -> AudioTextDataset:
        file = self.files.get(split)
        if file is None:
            raise LitzooError(f"{type(self).__name__} was given no {split} JSONL")
        records = read_audio_text_records(file)
        rule = self.caption_augmentation if split == "train" and self.augments_captions else False
        return AudioTextDataset([(record.audio, record.text) for record in records], self.front_end,
                                [record.augmented_texts for record in records], rule)  # fmt: skip

    def make_dataloader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        """The base's loaders; with caption augmentation the shuffled (training) one samples :class:`CaptionKey` s (the
        same order, and resumable, as the base's :class:`~litzoo.framework.data.loaders.ResumableLoader`)."""
        if not (shuffle and self.augments_captions):
            return super().make_dataloader(dataset, batch_size, shuffle)
        seed = self.shuffle_seed
        return ResumableLoader(dataset, batch_size=batch_size, sampler=CaptionDrawSampler(dataset, seed), num_workers=self.num_workers, seed=seed)


# ---- SYNTHETIC data --------------------------------------------------------------------------------------------------
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a {digit} slides to the {direction} while a {pitch} {sound} plays",
    "the digit {digit} moves {direction} and a {pitch} {sound} sounds",
    "a {pitch} {sound} as a {digit} drifts to the {direction}",
)
#: more phrasings of the same four facts, used only by ``caption_rewrites`` / ``held_out_templates`` (a stand-in for an
#: LLM's paraphrases); :data:`ALL_CAPTION_TEMPLATES` is both tuples, the held-out templates are its last ones
PARAPHRASE_TEMPLATES = (
    "we hear a {pitch} {sound} and see a {digit} going {direction}",
    "there is a {pitch} {sound} and the number {digit} travels {direction}",
    "a {sound} at {pitch} pitch accompanies a {digit} heading {direction}",
    "the {digit} glides {direction} as a {pitch} {sound} rings out",
    "a {pitch} pitched {sound} is heard while the {digit} crosses to the {direction}",
    "on screen a {digit} shifts {direction} and a {pitch} {sound} hums",
    "listen for a {pitch} {sound} while watching a {digit} pass {direction}",
    "a {digit} heads {direction} with a {pitch} {sound} in the background",
    "somewhere a {pitch} {sound} beeps and a {digit} wanders {direction}",
)
ALL_CAPTION_TEMPLATES = CAPTION_TEMPLATES + PARAPHRASE_TEMPLATES
CAPTION_FIELDS = ("digit", "direction", "pitch", "sound")


def match_caption_template(text: str) -> tuple[int, dict[str, str]] | None:
    """``(position in ALL_CAPTION_TEMPLATES, {"digit", "direction", "pitch", "sound"})`` of a SYNTHETIC caption, or
    ``None`` when no template words it (the ground truth of which phrasing and which facts a caption holds)."""
    for number, template in enumerate(ALL_CAPTION_TEMPLATES):
        pattern = re.escape(template)
        for field in CAPTION_FIELDS:
            pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>\\w+)")
        found = re.fullmatch(pattern, text)
        if found:
            return number, found.groupdict()
    return None


def _check_phrasing_options(caption_rewrites: int, held_out_templates: int) -> None:
    training = len(ALL_CAPTION_TEMPLATES) - held_out_templates
    if caption_rewrites < 0 or held_out_templates < 0 or training < 1 + caption_rewrites:
        raise ValueError(f"need caption_rewrites >= 0 and 0 <= held_out_templates with at least 1 + caption_rewrites of the "
                         f"{len(ALL_CAPTION_TEMPLATES)} templates left for training, got {caption_rewrites} and {held_out_templates}")  # fmt: skip


#: pitch bands (Hz) of the audio bit: 0 low, 1 high; a clip's base pitch is drawn uniformly in its band
PITCH_BANDS = ((400.0, 600.0), (1400.0, 2000.0))
SPRITE_SCALE = 2  # the 8x8 digits upscaled to 16x16 sprites
#: the labels of the visual and the audio bit (``bit_labels=True``)
BIT_LABELS = ("/synthetic/leftward", "/synthetic/high_pitch")


def digit_pitch_band(digit: int, audio_bit: int, num_digits: int) -> tuple[float, float]:
    """``pitch_from_digit``: the base-pitch range (Hz) of digit ``digit`` in the band of ``audio_bit``: the band cut into
    ``num_digits`` equal sub-bands on a log scale, the digit's sub-band (lowest digit lowest), its central half.

    The central half leaves a gap of half a sub-band between neighbouring digits (with 4 digits, ~5 % of the pitch:
    about one 64-bin mel channel in the low band), so the digit is read from the audio by pitch alone; the pitch
    still jitters within the range (a nuisance), and the audio bit still picks the band."""
    if not 0 <= digit < num_digits or audio_bit not in (0, 1):
        raise ValueError(f"need 0 <= digit < num_digits and audio_bit in (0, 1), got {digit}, {num_digits}, {audio_bit}")
    low, high = PITCH_BANDS[audio_bit]
    step = math.log(high / low) / num_digits
    return low * math.exp(step * (digit + 0.25)), low * math.exp(step * (digit + 0.75))


def _planted_bits(count: int, rng: np.random.Generator) -> np.ndarray:
    """``(count, 2)`` (visual, audio) bits with the four pairs as equal in number as ``count`` allows, in random order:
    then each bit alone says nothing of their XOR (exactly, when ``count`` is a multiple of 4)."""
    pairs = np.array([(0, 0), (0, 1), (1, 0), (1, 1)])
    return pairs[rng.permutation(np.arange(count) % 4)]


def write_synthetic_audio_video(folder: str | Path, num_train: int = 64, num_val: int = 32, num_digits: int = 4, seed: int = 0,
                                num_frames: int = 16, fps: int = 8, size: int = 32, sample_rate: int = 16000,
                                audio_shift: float = 0.0, shuffle_prob: float = 0.0, bit_labels: bool = False,
                                pitch_from_digit: bool = False, caption_rewrites: int = 0, held_out_templates: int = 0) -> Path:  # fmt: skip
    """Write a SYNTHETIC audio-visual data set with a planted cross-modal label in the clip-folder + segment-CSV layout.

    Each clip (``num_frames`` frames at ``fps``, ``size²`` RGB PNGs, and a WAV of the same duration at ``sample_rate``):

    * **video**: one real 8×8 scikit-learn digit of class ``d`` (drawn from ``num_digits`` classes), upscaled ×2 and drawn
      in a random colour at a random height, moving at constant speed across the canvas, left → right when the
      **visual bit** ``v`` is 0 and right → left when it is 1;
    * **audio**: a tone or a rising chirp (+25 %; random, a nuisance) whose base pitch lies in the low band
      (400–600 Hz) when the **audio bit** ``a`` is 0 and the high band (1.4–2 kHz) when it is 1; its loudness follows the
      sprite's closeness to the canvas centre (``0.2 + 0.8·(1 − |x − c| / c)``, the same for both directions, so the
      audio says nothing of ``v``), which ties the sound's timing to the motion;
    * **labels** (multi-label, AudioSet style): ``/synthetic/digit_<d>`` and, when ``v XOR a`` = 1, ``/synthetic/xor``. The
      four ``(v, a)`` pairs are balanced within each split, so either modality alone is at chance on the XOR label.
      With ``bit_labels``, each bit is a label too, ``/synthetic/leftward`` (``v`` = 1) and ``/synthetic/high_pitch``
      (``a`` = 1), listed before ``/synthetic/xor``: a multi-label model then gets a first-order signal for each bit
      (a balanced XOR alone gives none: its gradient for either bit averages to zero, so small models sit at chance or
      memorise), while the XOR column still needs both modalities.
    * **shared content** (``pitch_from_digit``; off by default): the base pitch is drawn in the digit's own part of the
      audio bit's band (:func:`digit_pitch_band`), so the sound says which digit is seen and inter-modal contrast has a
      per-clip content to align (MAViL's evidence). The bits, the XOR and their balance are unchanged (the band is still
      the audio bit's; the digit is drawn independently of the bits), and the same random draws are made in the same
      order, so only the WAV files differ from the knob off; off, the files are those of earlier versions, byte for byte.
    * **caption phrasings** (both off by default; then the caption files are those of earlier versions, byte for byte):
      ``caption_rewrites`` K writes, for each *training* clip, ``"augmented_texts"``: K rewrites of its caption with the
      same four facts (digit, direction, pitch, sound words) in K other templates of :data:`ALL_CAPTION_TEMPLATES` (drawn
      without replacement; a stand-in for an LLM's paraphrases, :class:`AudioTextDataModule`'s caption augmentation);
      ``held_out_templates`` H reserves the last H templates for the validation captions, which then use only them,
      while training captions and their rewrites use only the others (validation phrasings never seen in training).
      With H = 0 the captions are those of the knob off; with H > 0 each caption's template is drawn from its split's
      templates. These draws come from a generator of their own (seeded by ``seed`` and the split), so the clips, the
      audio and the planted truth are the same as with both off.

    Misalignment: ``audio_shift`` seconds delays the audio circularly relative to the motion; with probability
    ``shuffle_prob`` a clip gets the sound of another clip of its split (its labels stay its own: noisy correspondence).
    Files: ``train.csv`` / ``val.csv`` (segment CSVs; YTIDs ``SYNxxxxxxxx``, start 0), ``class_labels_indices.csv``,
    ``<split>/<clip_id>/frames/NNNNNN.png`` + ``audio.wav``, ``<split>_captions.jsonl`` (``{"audio", "text"}`` from
    templates; the sound's words are those of the audio actually written), and ``SYNTHETIC_planted.csv`` (the ground
    truth: split, clip_id, digit, visual_bit, audio_bit, xor, audio_source, audio_shift). Written through a temporary
    folder renamed into place (:func:`litzoo.framework.data.staging.generate_folder_atomically`).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if num_train < 1 or num_val < 1 or not 1 <= num_digits <= 10 or num_frames < 2 or fps < 1:
        raise ValueError(f"need num_train, num_val >= 1, 1 <= num_digits <= 10, num_frames >= 2, fps >= 1; got {num_train}, {num_val}, "
                         f"{num_digits}, {num_frames}, {fps}")  # fmt: skip
    if size < 8 * SPRITE_SCALE + 2:
        raise ValueError(f"size must be at least {8 * SPRITE_SCALE + 2} (the sprite is {8 * SPRITE_SCALE} pixels), got {size}")
    if not 0.0 <= shuffle_prob <= 1.0:
        raise ValueError(f"shuffle_prob must be a probability, got {shuffle_prob}")
    _check_phrasing_options(caption_rewrites, held_out_templates)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    duration = num_frames / fps
    sprite_side = 8 * SPRITE_SCALE
    travel = size - sprite_side
    t_audio = np.arange(int(round(duration * sample_rate))) / sample_rate
    mids = [f"/synthetic/digit_{d}" for d in range(num_digits)] + (list(BIT_LABELS) if bit_labels else []) + ["/synthetic/xor"]

    def write(staging: Path) -> None:
        with open(staging / "class_labels_indices.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "mid", "display_name"])
            for i, mid in enumerate(mids):
                writer.writerow([i, mid, mid.rsplit("/", 1)[1].replace("_", " ")])
        planted_rows = []
        num_training_templates = len(ALL_CAPTION_TEMPLATES) - held_out_templates
        for split_number, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            phrasing_rng = np.random.default_rng([seed, 25, split_number])  # the phrasings' own draws
            bits = _planted_bits(count, rng)
            classes = rng.integers(0, num_digits, count)
            chirps = rng.integers(0, 2, count)
            bands = [digit_pitch_band(int(d), int(a), num_digits) if pitch_from_digit else PITCH_BANDS[a] for d, a in zip(classes, bits[:, 1], strict=True)]
            pitches = np.array([rng.uniform(*band) for band in bands])
            waveforms, rows, captions = [], [], []
            for i in range(count):
                v, a, d = int(bits[i, 0]), int(bits[i, 1]), int(classes[i])
                ytid = f"SYN{split[0].upper()}{seed % 1000:03d}{i:05d}"
                clip = clip_id(ytid, 0.0)
                frames = staging / split / clip / "frames"
                frames.mkdir(parents=True)
                image = digits.images[rng.choice(np.flatnonzero(digits.target == d))] / 16.0
                sprite = np.kron(image, np.ones((SPRITE_SCALE, SPRITE_SCALE)))
                colour = rng.uniform(0.4, 1.0, 3)
                top = int(rng.integers(0, size - sprite_side + 1))
                for k in range(num_frames):
                    progress = k / (num_frames - 1)
                    left = int(round(travel * (progress if v == 0 else 1 - progress)))
                    canvas = np.zeros((size, size, 3))
                    canvas[top : top + sprite_side, left : left + sprite_side] = sprite[..., None] * colour
                    Image.fromarray((canvas * 255).round().astype(np.uint8)).save(frames / f"{k + 1:06d}.png")
                # the sound: loudness from the sprite centre's distance to the canvas centre at each audio sample
                progress = np.clip(t_audio / (duration * (num_frames - 1) / num_frames), 0, 1)
                x = travel * (progress if v == 0 else 1 - progress)
                loudness = 0.2 + 0.8 * (1 - np.abs(x - travel / 2) / (travel / 2))
                rise = 0.25 * t_audio / duration if chirps[i] else 0.0
                phase = 2 * np.pi * np.cumsum(np.full_like(t_audio, pitches[i]) * (1 + rise)) / sample_rate  # instantaneous pitch
                waveforms.append(0.5 * loudness * np.sin(phase))
                rows.append((ytid, d, v, a, clip))
            shift = int(round(audio_shift * sample_rate))
            for i, (_, d, v, a, clip) in enumerate(rows):
                source = i
                if count > 1 and rng.random() < shuffle_prob:
                    source = int((i + rng.integers(1, count)) % count)  # another clip of the split
                write_wav(staging / split / clip / "audio.wav", np.roll(waveforms[source], shift), sample_rate)
                heard = int(bits[source, 1])
                facts = dict(digit=DIGIT_WORDS[d], direction=("right", "left")[v], pitch=("low", "high")[heard],
                             sound=("chirp" if chirps[source] else "tone"))  # fmt: skip
                template = int(rng.integers(len(CAPTION_TEMPLATES)))  # drawn in every case: the main stream stays as it was
                if held_out_templates:
                    template = int(phrasing_rng.integers(num_training_templates)) if split == "train" else \
                        num_training_templates + int(phrasing_rng.integers(held_out_templates))  # fmt: skip
                caption = {"audio": f"{split}/{clip}/audio.wav", "text": ALL_CAPTION_TEMPLATES[template].format(**facts)}
                if caption_rewrites and split == "train":
                    others = [t for t in range(num_training_templates) if t != template]
                    chosen = phrasing_rng.choice(others, size=caption_rewrites, replace=False)
                    caption[AUGMENTED_TEXTS] = [ALL_CAPTION_TEMPLATES[int(t)].format(**facts) for t in chosen]
                captions.append(caption)
                planted_rows.append([split, clip, d, v, a, v ^ a, rows[source][4], audio_shift])
            with open(staging / f"{split}.csv", "w", encoding="utf-8") as handle:
                positives = sum(1 + (v ^ a) + (v + a if bit_labels else 0) for _, _, v, a, _ in rows)
                handle.write(f"# Segments csv of a SYNTHETIC audio-visual data set (litzoo, seed {seed})\n")
                handle.write(f"# num_ytids={count}, num_segs={count}, num_unique_labels={len(mids)}, num_positive_labels={positives}\n")
                handle.write("# YTID, start_seconds, end_seconds, positive_labels\n")
                for ytid, d, v, a, _ in rows:
                    bits_heard = [BIT_LABELS[0]] * v + [BIT_LABELS[1]] * a if bit_labels else []
                    labels = ",".join([mids[d]] + bits_heard + ([mids[-1]] if v ^ a else []))
                    handle.write(f'{ytid}, 0.000, {duration:.3f}, "{labels}"\n')
            with open(staging / f"{split}_captions.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(caption) + "\n" for caption in captions)
        with open(staging / "SYNTHETIC_planted.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["split", "clip_id", "digit", "visual_bit", "audio_bit", "xor", "audio_source", "audio_shift"])
            writer.writerows(planted_rows)

    return generate_folder_atomically(folder, write)


class SyntheticAudioVideoDataModule(AudioVideoDataModule):
    """SYNTHETIC demo data: :func:`write_synthetic_audio_video` written once under
    ``root/seed<seed>-n<num_train>-<num_val>-d<num_digits>-shift<audio_shift>-shuffle<shuffle_prob>`` (``-bits`` appended
    with ``bit_labels``, then ``-pitchdigit`` with ``pitch_from_digit``), then read as an :class:`AudioVideoDataModule` (labels from its ``class_labels_indices.csv``:
    ``num_digits`` digit classes, with ``bit_labels`` the two bit labels, then ``/synthetic/xor``). Clips last 2 s (16
    frames at 8 fps); by default 8 frames are sampled at 4 fps and the audio gives 192 fbank frames."""

    def __init__(self, root: str = "data/synthetic_audio_video", num_train: int = 64, num_val: int = 32, num_digits: int = 4,
                 seed: int = 0, audio_shift: float = 0.0, shuffle_prob: float = 0.0, num_frames: int = 8, fps: float = 4.0,
                 anchor: str = "centre", target_length: int = 192, num_mel_bins: int = 128, batch_size: int = 16,
                 num_workers: int = 0, bit_labels: bool = False, captions: bool = False, pitch_from_digit: bool = False) -> None:  # fmt: skip
        name = f"seed{seed}-n{num_train}-{num_val}-d{num_digits}-shift{audio_shift:g}-shuffle{shuffle_prob:g}" + ("-bits" if bit_labels else "")
        name += "-pitchdigit" if pitch_from_digit else ""
        folder = Path(root).expanduser() / name
        if not (folder / "SYNTHETIC_planted.csv").is_file():
            write_synthetic_audio_video(folder, num_train, num_val, num_digits, seed, audio_shift=audio_shift, shuffle_prob=shuffle_prob,
                                        bit_labels=bit_labels, pitch_from_digit=pitch_from_digit)  # fmt: skip
        super().__init__(str(folder), "class_labels_indices.csv", num_frames, fps, 8.0, anchor, None, None, None, 16000, target_length,
                         num_mel_bins, batch_size=batch_size, num_workers=num_workers, captions=captions)  # fmt: skip
        self.save_hyperparameters()


class SyntheticAudioTextDataModule(AudioTextDataModule):
    """SYNTHETIC audio-caption pairs (FLAP's demo): :func:`write_synthetic_audio_video` written once under
    ``root/seed<seed>-n<num_train>-<num_val>-d<num_digits>-shift0-shuffle0`` (the folder
    :class:`SyntheticAudioVideoDataModule` uses for the same arguments; ``-rw<K>`` appended with ``caption_rewrites``,
    then ``-heldout<H>`` with ``held_out_templates``), its ``train_captions.jsonl`` / ``val_captions.jsonl`` read as an
    :class:`AudioTextDataModule` (testing on ``val``). The captions name what is heard, the pitch band (``low`` /
    ``high``) and the sound (``tone`` / ``chirp``), and what is only seen (digit, direction): from the audio alone a
    caption is identifiable up to its two sound words. ``caption_rewrites`` / ``held_out_templates``: the writer's
    (rewrites of the training captions in other templates; validation phrasings never seen in training);
    ``caption_augmentation``: :class:`AudioTextDataModule`'s (draw the training texts from the rewrites)."""

    def __init__(self, root: str = "data/synthetic_audio_video", num_train: int = 64, num_val: int = 32, num_digits: int = 4,
                 seed: int = 0, target_length: int = 192, num_mel_bins: int = 128, batch_size: int = 16, num_workers: int = 0,
                 caption_rewrites: int = 0, held_out_templates: int = 0, caption_augmentation: bool | float = False) -> None:  # fmt: skip
        _check_phrasing_options(caption_rewrites, held_out_templates)
        name = f"seed{seed}-n{num_train}-{num_val}-d{num_digits}-shift0-shuffle0"
        name += (f"-rw{caption_rewrites}" if caption_rewrites else "") + (f"-heldout{held_out_templates}" if held_out_templates else "")
        folder = Path(root).expanduser() / name
        if not (folder / "SYNTHETIC_planted.csv").is_file():
            write_synthetic_audio_video(folder, num_train, num_val, num_digits, seed, caption_rewrites=caption_rewrites,
                                        held_out_templates=held_out_templates)  # fmt: skip
        super().__init__(str(folder / "train_captions.jsonl"), str(folder / "val_captions.jsonl"), None, 16000, target_length, num_mel_bins,
                         batch_size=batch_size, num_workers=num_workers, caption_augmentation=caption_augmentation)  # fmt: skip
        self.save_hyperparameters()


__all__ = [
    "ALL_CAPTION_TEMPLATES",
    "AUGMENTED_TEXTS",
    "AudioFrontEnd",
    "AudioTextDataModule",
    "AudioTextDataset",
    "AudioTextRecord",
    "AudioVideoDataModule",
    "AudioVideoDataset",
    "CaptionDrawSampler",
    "CaptionKey",
    "IndexRow",
    "SyntheticAudioTextDataModule",
    "SyntheticAudioVideoDataModule",
    "check_caption_augmentation",
    "clip_id",
    "digit_pitch_band",
    "draw_caption",
    "match_caption_template",
    "read_audio_text_jsonl",
    "read_audio_text_records",
    "read_index",
    "read_json_index",
    "read_segment_csv",
    "write_synthetic_audio_video",
]
