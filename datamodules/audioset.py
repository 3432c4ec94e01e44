"""AudioSet in its on-disk format (the JSON data files of AST / Audio-MAE), as multi-label Kaldi log-mel spectrograms.

The format AudioMAE ``dataset.py`` (``AudiosetDataset``, after AST) reads::

    train.json                {"data": [{"wav": "audio/-0RWZT-miFs.wav", "labels": "/m/09x0r,/m/05zppz"}, ...]}
    eval.json                 (same; optional val / test files)
    class_labels_indices.csv  index,mid,display_name
                              0,/m/09x0r,"Speech"
                              ...

``wav`` paths are absolute or relative to the folder of the JSON file; ``labels`` is a comma-separated
list of AudioSet ontology ids (mids) of ``class_labels_indices.csv``. AudioSet itself is not
redistributable: the files must be downloaded and converted by the user (16 kHz mono WAVs, 10 s);
nothing is ever downloaded here.

An item follows ``AudiosetDataset.__getitem__`` with ``main_finetune_as.py``'s AudioSet settings:
waveform minus its mean; in training, with probability ``mixup`` (0.5) mixed with a uniformly drawn
other clip, ``λ·x₁ + (1−λ)·x₂`` with ``λ ~ Beta(10, 10)`` (the second clip zero-padded or cut to the
first's length, the mixture's mean removed again) and labels ``λ·y₁ + (1−λ)·y₂``, each clip first augmented
by roll / magnitude (``roll_mag_aug``, :func:`litzoo.framework.data.audio.roll_mag_aug`: on mono clips a gain
in (0.5, 1.5); the released AudioSet pretraining and fine-tuning scripts pass ``--roll_mag_aug True``); Kaldi fbank
(``litzoo.framework.data.audio.kaldi_fbank``) padded / cut to ``target_length`` frames (the start: no random
crop); in training SpecAugment (``freqm`` 48, ``timem`` 192); ``(fbank − mean)/(2·std)`` with
AudioSet's statistics. Batches: ``{"audio": (B, 1, T, F), "label": (B, C) float multi-hot, "index": (B,)}``.

Not implemented: the class-balanced weighted sampler of the AS-2M recipe (``--weight_sampler``, weights
from ``dataset/audioset/gen_weight.py``) and precomputed ``.npy`` fbanks (``use_fbank``).

:class:`SyntheticAudioSetDataModule` writes a SYNTHETIC multi-label data set in this format.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from litzoo.datamodules.audio_folder import AudioFileDataset
from litzoo.framework.data.audio import AUDIOSET_FBANK_MEAN, AUDIOSET_FBANK_STD, pad_or_cut_frames
from litzoo.framework.data.splits import SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.errors import LitzooError

_CSV_HEADER = ("index", "mid", "display_name")


def read_class_labels(path: str | Path) -> tuple[list[str], list[str]]:
    """``(mids, display_names)`` in index order from an AudioSet ``class_labels_indices.csv``.

    Raises:
        LitzooError: naming the file: missing, no ``index,mid,display_name`` header, a non-integer
            index, indices that are not ``0 … C−1`` each once, a repeated mid, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise LitzooError(f"AudioSet label file '{path}' does not exist (expected class_labels_indices.csv with header index,mid,display_name)")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not set(_CSV_HEADER) <= {f.strip() for f in reader.fieldnames}:
                raise LitzooError(f"AudioSet label file '{path}' has header {reader.fieldnames}, expected index,mid,display_name")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LitzooError(f"cannot read AudioSet label file '{path}': {err}") from None
    if not rows:
        raise LitzooError(f"AudioSet label file '{path}' lists no classes")
    by_index: dict[int, tuple[str, str]] = {}
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        try:
            index = int(row["index"])
        except ValueError:
            raise LitzooError(f"AudioSet label file '{path}' line {line}: index {row['index']!r} is not an integer") from None
        mid = row["mid"]
        if not mid:
            raise LitzooError(f"AudioSet label file '{path}' line {line}: empty mid")
        if mid in seen or index in by_index:
            raise LitzooError(f"AudioSet label file '{path}' line {line}: mid {mid!r} or index {index} appears twice")
        seen.add(mid)
        by_index[index] = (mid, row["display_name"])
    if sorted(by_index) != list(range(len(by_index))):
        raise LitzooError(f"AudioSet label file '{path}': indices must be 0 … {len(by_index) - 1}, each once")
    return [by_index[i][0] for i in range(len(by_index))], [by_index[i][1] for i in range(len(by_index))]


def read_datafile(path: str | Path, mid_index: dict[str, int], label_csv: str | Path = "class_labels_indices.csv") -> list[tuple[Path, list[int]]]:
    """``(wav path, class indices)`` of each entry of an AudioSet JSON data file.

    Relative ``wav`` paths are resolved against the JSON file's folder. The WAV files are not opened here.

    Raises:
        LitzooError: naming the file: missing, not JSON, no ``"data"`` list, an entry without string
            ``wav`` / ``labels``, or a label mid that ``label_csv`` does not list.
    """
    path = Path(path)
    if not path.is_file():
        raise LitzooError(f"AudioSet data file '{path}' does not exist (expected JSON {{\"data\": [{{\"wav\": ..., \"labels\": ...}}]}})")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as err:
        raise LitzooError(f"AudioSet data file '{path}' is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LitzooError(f"cannot read AudioSet data file '{path}': {err}") from None
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, list) or not data:
        raise LitzooError(f"AudioSet data file '{path}' has no non-empty \"data\" list")
    samples: list[tuple[Path, list[int]]] = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("wav"), str) or not isinstance(entry.get("labels"), str):
            raise LitzooError(f"AudioSet data file '{path}': entry {i} is not {{\"wav\": str, \"labels\": str}}")
        indices = []
        for mid in (m.strip() for m in entry["labels"].split(",")):
            if mid not in mid_index:
                raise LitzooError(f"AudioSet data file '{path}': entry {i} ('{entry['wav']}') has label {mid!r}, which '{label_csv}' does not list")
            indices.append(mid_index[mid])
        wav = Path(entry["wav"]).expanduser()
        samples.append((wav if wav.is_absolute() else path.parent / wav, sorted(set(indices))))
    return samples


class AudioSetDataset(AudioFileDataset):
    """AudioSet JSON entries → ``{"audio": (1, T, F), "label": (C,) float, "index"}`` (see the module docstring).

    Args:
        samples: ``(wav path, class indices)`` pairs (:func:`read_datafile`).
        num_classes: C.
        datafile: the JSON file the samples come from (named in errors).
        sample_rate … norm_std: as :class:`litzoo.datamodules.audio_folder.AudioFileDataset`.
        freqm, timem: SpecAugment parameters (training only; 0 = off).
        mixup: probability of mixing an item with another (training only; 0 = off).
        cache: keep the un-mixed fbanks in memory (small data sets; AudioSet itself is too large); never those
            of roll / magnitude augmented items.
        roll_mag_aug: roll / magnitude augmentation of each waveform, before mixup (training only; False = off).
    """

    def __init__(self, samples: list[tuple[Path, list[int]]], num_classes: int, datafile: Path, sample_rate: int, target_length: int,
                 num_mel_bins: int, norm_mean: float, norm_std: float, freqm: int = 0, timem: int = 0, mixup: float = 0.0,
                 cache: bool = False, roll_mag_aug: bool = False) -> None:  # fmt: skip
        super().__init__(samples, sample_rate, target_length, num_mel_bins, norm_mean, norm_std, random_crop=False, freqm=freqm, timem=timem,  # type: ignore[arg-type]
                         roll_mag_aug=roll_mag_aug)  # fmt: skip
        if not 0.0 <= mixup <= 1.0:
            raise ValueError(f"mixup must be a probability in [0, 1], got {mixup}")
        self.num_classes, self.datafile, self.mixup, self.cache = num_classes, datafile, mixup, cache

    def read_waveform(self, path: Path) -> Tensor:
        if not path.is_file():
            raise LitzooError(f"WAV file '{path}' listed in '{self.datafile}' does not exist")
        return super().read_waveform(path)

    def multi_hot(self, indices: list[int]) -> Tensor:
        target = torch.zeros(self.num_classes)
        target[indices] = 1.0
        return target

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        path, labels = self.samples[index]
        target = self.multi_hot(labels)  # type: ignore[arg-type]
        if self.mixup > 0 and float(torch.rand(())) < self.mixup:
            other = int(torch.randint(0, len(self.samples), ()))
            # each clip rolled / scaled on its own before the mix, as AudioMAE _wav2fbank
            first, second = self.augmented_waveform(path), self.augmented_waveform(self.samples[other][0])
            second = pad_or_cut_frames(second, len(first))  # zero-padded or cut to the first clip's length
            lam = float(torch.distributions.Beta(10.0, 10.0).sample())
            mixed = lam * first + (1 - lam) * second
            fbank = self.fbank_of_waveform(mixed - mixed.mean())
            # shared labels get λ + (1 − λ) = 1, as the official "+=" of both label sets
            target = lam * target + (1 - lam) * self.multi_hot(self.samples[other][1])  # type: ignore[arg-type]
        else:
            fbank = self._cache.get(index)
            if fbank is None:
                fbank = self.fbank_of_waveform(self.augmented_waveform(path))
                if self.cache and self.cacheable:
                    self._cache[index] = fbank
        return {"audio": self.augment_and_normalize(fbank), "label": target, "index": torch.tensor(index, dtype=torch.long)}


class AudioSetDataModule(SplitsDataModule):
    """Multi-label audio in AudioSet's JSON data files + ``class_labels_indices.csv`` (see the module docstring).

    Batches: ``{"audio": (B, 1, target_length, num_mel_bins) float, "label": (B, C) float multi-hot (mixed
    in training when ``mixup`` > 0), "index": (B,) long}`` ("audio" first: generic callbacks find it).
    Defaults are AudioMAE ``main_finetune_as.py``'s for AudioSet. Nothing is downloaded or resampled.

    Args:
        train_json: training data file.
        label_csv: ``class_labels_indices.csv``.
        val_json, test_json: optional evaluation data files (AudioSet's ``eval`` set is usually both).
        sample_rate: the rate every WAV must have (16 kHz).
        target_length: frames (1024 ≈ 10 s).
        num_mel_bins: mel bins (128).
        norm_mean, norm_std: fbank statistics (AudioSet's).
        freqm, timem: SpecAugment on training items (48 bins, 192 frames).
        mixup: probability of mixing a training item with another (0.5).
        batch_size: clips per batch (per process).
        num_workers: DataLoader worker processes.
        cache: keep un-mixed fbanks in memory (only for small data sets; training items are not cached while
            ``roll_mag_aug`` is on).
        roll_mag_aug: roll / magnitude augmentation of training waveforms (on: the released AudioSet scripts'
            ``--roll_mag_aug True``; the argument's own default in AudioMAE is off). Validation / test items are
            never augmented (``main_finetune_as.py:283``).

    Raises:
        LitzooError: a data / label file missing (here); malformed CSV or JSON, unknown label mids (in
            ``setup``); a listed WAV missing, unreadable or at another sample rate (when loaded). Each
            message is one line naming the file.
    """

    def __init__(
        self,
        train_json: str,
        label_csv: str,
        val_json: str | None = None,
        test_json: str | None = None,
        sample_rate: int = 16000,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        norm_mean: float = AUDIOSET_FBANK_MEAN,
        norm_std: float = AUDIOSET_FBANK_STD,
        freqm: int = 48,
        timem: int = 192,
        mixup: float = 0.5,
        batch_size: int = 32,
        num_workers: int = 0,
        cache: bool = False,
        roll_mag_aug: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if sample_rate <= 0 or target_length <= 0 or num_mel_bins < 3:
            raise ValueError(f"need sample_rate > 0, target_length > 0 and num_mel_bins >= 3, got {sample_rate}, {target_length}, {num_mel_bins}")
        if norm_std <= 0:
            raise ValueError(f"norm_std must be positive, got {norm_std}")
        if freqm < 0 or timem < 0:
            raise ValueError(f"freqm and timem must be >= 0, got {freqm} and {timem}")
        if not 0.0 <= mixup <= 1.0:
            raise ValueError(f"mixup must be a probability in [0, 1], got {mixup}")
        self.save_hyperparameters()
        self.files = {"train": train_json, "val": val_json, "test": test_json}
        self.label_csv = Path(label_csv).expanduser()
        self.sample_rate, self.target_length, self.num_mel_bins = sample_rate, target_length, num_mel_bins
        self.norm_mean, self.norm_std = norm_mean, norm_std
        self.freqm, self.timem, self.mixup = freqm, timem, mixup
        self.cache, self.roll_mag_aug = cache, roll_mag_aug
        self._labels: tuple[list[str], list[str]] | None = None
        for name, file in (("label file", self.label_csv), *((f"{s} data file", f) for s, f in self.files.items() if f)):
            if not Path(file).expanduser().is_file():
                raise LitzooError(f"AudioSet {name} '{Path(file).expanduser()}' does not exist")

    @property
    def mids(self) -> list[str]:
        if self._labels is None:
            self._labels = read_class_labels(self.label_csv)
        return list(self._labels[0])

    @property
    def classes(self) -> list[str]:
        """Display names, in index order."""
        self.mids  # noqa: B018 -- reads the CSV once
        return list(self._labels[1])  # type: ignore[index]

    @property
    def num_classes(self) -> int:
        return len(self.mids)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.target_length, self.num_mel_bins)

    def has_split(self, split: str) -> bool:
        if split not in self.files:
            raise ValueError(f"split must be one of {tuple(self.files)}, got {split!r}")
        return self.files[split] is not None

    def build_dataset(self, split: str) -> AudioSetDataset:
        file = self.files[split]
        if file is None:
            raise LitzooError(f"no {split}_json was given to AudioSetDataModule, so there is no {split} split")
        path = Path(file).expanduser()
        mids = self.mids
        samples = read_datafile(path, {m: i for i, m in enumerate(mids)}, self.label_csv)
        train = split == "train"  # roll / magnitude, SpecAugment and mixup for training items only
        return AudioSetDataset(samples, len(mids), path, self.sample_rate, self.target_length, self.num_mel_bins, self.norm_mean,
                               self.norm_std, freqm=self.freqm if train else 0, timem=self.timem if train else 0,
                               mixup=self.mixup if train else 0.0, cache=self.cache, roll_mag_aug=self.roll_mag_aug and train)  # fmt: skip

    def prepare_data(self) -> None:
        """Checks that the label file parses; never downloads."""
        read_class_labels(self.label_csv)


# ----------------------------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = ("am_tone", "chirp_down", "chirp_up", "pink_noise", "tone_high", "tone_low", "tone_mid", "white_noise")


def synthetic_audioset(root: str | Path, num_train: int = 320, num_val: int = 160, seed: int = 0, max_labels: int = 3) -> Path:
    """SYNTHETIC multi-label audio in AudioSet's format: ``root/{train,val}.json``, ``root/class_labels_indices.csv``
    (mids ``/synthetic/<class>``) and ``root/audio/<split>/<i>.wav`` (16 kHz, 1 s).

    Each clip is the sum of 1 … ``max_labels`` (uniform) single-class clips of distinct classes drawn from
    :func:`litzoo.datamodules.synthetic.synthetic_audio_classes` (tones, chirps, AM tone, noises), scaled down
    only if the sum would clip; its labels are those classes. Deterministic for a ``seed``. Returns ``root``.
    """
    from litzoo.datamodules.synthetic import synthetic_audio_classes
    from litzoo.framework.data.audio import read_wav, write_wav

    root = Path(root)
    per_class = max(4, max(num_train, num_val) // 4)  # a class appears in ~n/4 mixtures: sources are seldom reused
    sources = synthetic_audio_classes(root / "sources", num_per_class=per_class, seed=seed)
    with open(root / "class_labels_indices.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_CSV_HEADER)
        writer.writerows((i, f"/synthetic/{name}", name.replace("_", " ")) for i, name in enumerate(SYNTHETIC_CLASSES))
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([seed, 100 + split_index])
        (root / "audio" / split).mkdir(parents=True, exist_ok=True)
        entries = []
        for i in range(count):
            classes = sorted(rng.choice(len(SYNTHETIC_CLASSES), size=int(rng.integers(1, max_labels + 1)), replace=False).tolist())
            mixture = sum(read_wav(sources / split / SYNTHETIC_CLASSES[c] / f"{int(rng.integers(per_class)):04d}.wav")[0] for c in classes)
            mixture = mixture / max(1.0, float(mixture.abs().max()) / 0.99)
            name = f"audio/{split}/{i:04d}.wav"
            write_wav(root / name, mixture, 16000)
            entries.append({"wav": name, "labels": ",".join(f"/synthetic/{SYNTHETIC_CLASSES[c]}" for c in classes)})
        (root / f"{split}.json").write_text(json.dumps({"data": entries}, indent=1))
    shutil.rmtree(sources)
    return root


class SyntheticAudioSetDataModule(AudioSetDataModule):
    """SYNTHETIC multi-label demo data: :func:`synthetic_audioset` (8 classes, mixtures of 1–3 per clip) written
    once under ``root/seed<seed>-n<num_train>-<num_val>`` (through a temporary folder renamed into place, so
    concurrent processes never see half a data set), then read through :class:`AudioSetDataModule`
    (``train.json``, ``val.json``; the val file is also the test file).

    Defaults keep the official AudioSet fine-tuning augmentations in proportion to the short clips:
    SpecAugment ``freqm`` 48 of 128 bins as AudioMAE, ``timem`` 18 frames of 96 (192 of 1024), mixup 0.5,
    roll / magnitude on.
    Fbanks are cached in memory (the data set is small).
    """

    def __init__(
        self,
        root: str = "data/synthetic_audioset",
        num_train: int = 320,
        num_val: int = 160,
        seed: int = 0,
        target_length: int = 96,
        num_mel_bins: int = 128,
        norm_mean: float = AUDIOSET_FBANK_MEAN,
        norm_std: float = AUDIOSET_FBANK_STD,
        freqm: int = 48,
        timem: int = 18,
        mixup: float = 0.5,
        batch_size: int = 32,
        num_workers: int = 0,
        roll_mag_aug: bool = True,
    ) -> None:
        if num_train < 1 or num_val < 1:
            raise ValueError(f"num_train and num_val must be at least 1, got {num_train} and {num_val}")
        folder = Path(root).expanduser() / f"seed{seed}-n{num_train}-{num_val}"
        self._generate(folder, num_train, num_val, seed)
        super().__init__(str(folder / "train.json"), str(folder / "class_labels_indices.csv"), str(folder / "val.json"),
                         str(folder / "val.json"), 16000, target_length, num_mel_bins, norm_mean, norm_std, freqm, timem, mixup,
                         batch_size, num_workers, cache=True, roll_mag_aug=roll_mag_aug)  # fmt: skip
        self.save_hyperparameters()

    @staticmethod
    def _generate(folder: Path, num_train: int, num_val: int, seed: int) -> None:
        if (folder / "val.json").is_file():
            return
        generate_folder_atomically(folder, lambda staging: synthetic_audioset(staging, num_train, num_val, seed))
