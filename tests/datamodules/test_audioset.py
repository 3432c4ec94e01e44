"""AudioSetDataModule on tiny AudioSet-format data files written in tmp_path; the synthetic AudioSet generator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from litzoo.datamodules.audioset import AudioSetDataModule, SyntheticAudioSetDataModule, read_class_labels
from litzoo.framework.data.audio import kaldi_fbank, normalize_fbank, pad_or_cut_frames, read_wav, roll_mag_aug, write_wav
from litzoo.framework.errors import LitzooError

CSV = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/0ytgt,"Child speech"\n'


def _dataset(root, n=3000):
    """3 classes, 4 clips of different lengths; train.json with relative paths, val.json with absolute ones."""
    (root / "audio").mkdir(parents=True)
    (root / "class_labels_indices.csv").write_text(CSV)
    rng = np.random.default_rng(0)
    labels = ["/m/09x0r,/m/05zppz", "/m/0ytgt", "/m/05zppz", "/m/09x0r,/m/0ytgt,/m/05zppz"]
    entries = []
    for i, label in enumerate(labels):
        write_wav(root / "audio" / f"{i}.wav", 0.2 * rng.standard_normal(n + 700 * i) + 0.05, 16000)
        entries.append({"wav": f"audio/{i}.wav", "labels": label})
    (root / "train.json").write_text(json.dumps({"data": entries}))
    absolute = [{**e, "wav": str(root / e["wav"])} for e in entries]
    (root / "val.json").write_text(json.dumps({"data": absolute}))
    return root


def _module(root, **kwargs):
    args = dict(target_length=24, num_mel_bins=32, batch_size=4, freqm=0, timem=0, mixup=0.0, roll_mag_aug=False)
    return AudioSetDataModule(str(root / "train.json"), str(root / "class_labels_indices.csv"), str(root / "val.json"), **{**args, **kwargs})


def _expected(root, i, frames=24):
    wav, _ = read_wav(root / "audio" / f"{i}.wav")
    return normalize_fbank(pad_or_cut_frames(kaldi_fbank(wav - wav.mean(), num_mel_bins=32), frames))


def test_batches_multi_hot_labels_index_and_fbank(tmp_path):
    root = _dataset(tmp_path / "as")
    dm = _module(root)
    assert dm.mids == ["/m/09x0r", "/m/05zppz", "/m/0ytgt"] and dm.classes[1] == "Male speech, man speaking"
    dm.setup("fit")
    for split in ("train", "val"):  # relative (to the JSON) and absolute wav paths
        batch = next(iter(dm._loader(split, shuffle=False)))
        assert list(batch) == ["audio", "label", "index"]
        assert batch["audio"].shape == (4, 1, 24, 32) and batch["label"].dtype == torch.float32
        assert batch["label"].tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 1, 1]]
        assert batch["index"].tolist() == [0, 1, 2, 3]
        for i in range(4):  # clip 0 is 17 frames (zero frames appended), clips 2-3 are cut to 24 frames
            torch.testing.assert_close(batch["audio"][i, 0], _expected(root, i))


def test_mixup_mixes_waveforms_and_labels_with_beta_lambda(tmp_path):
    root = _dataset(tmp_path / "as")
    dm = _module(root, mixup=1.0)
    dm.setup("fit")
    train = dm.datasets["train"]
    torch.manual_seed(3)
    item = train[1]
    torch.manual_seed(3)  # replay the dataset's draws: mix or not, the partner, then λ ~ Beta(10, 10)
    assert float(torch.rand(())) < 1.0
    other = int(torch.randint(0, 4, ()))
    lam = float(torch.distributions.Beta(10.0, 10.0).sample())
    first, _ = read_wav(root / "audio" / "1.wav")
    second, _ = read_wav(root / "audio" / f"{other}.wav")
    first, second = first - first.mean(), second - second.mean()
    second = torch.cat([second, torch.zeros(max(0, len(first) - len(second)))])[: len(first)]
    mixed = lam * first + (1 - lam) * second
    expected = normalize_fbank(pad_or_cut_frames(kaldi_fbank(mixed - mixed.mean(), num_mel_bins=32), 24))
    torch.testing.assert_close(item["audio"][0], expected)
    y = {0: [1, 1, 0], 1: [0, 0, 1], 2: [0, 1, 0], 3: [1, 1, 1]}
    torch.testing.assert_close(item["label"], lam * torch.tensor(y[1], dtype=torch.float) + (1 - lam) * torch.tensor(y[other], dtype=torch.float))
    assert 0.2 < lam < 0.8
    # evaluation data is never mixed nor masked, whatever the settings
    dm = _module(root, mixup=1.0, freqm=20, timem=10)
    dm.setup("fit")
    val = dm.datasets["val"]
    assert val.mixup == 0 and val.freqm == val.timem == 0
    torch.testing.assert_close(val[1]["audio"][0], _expected(root, 1))
    assert val[1]["label"].tolist() == [0, 0, 1]
    # SpecAugment reaches the training items: some bins / frames hold the normalised 0 of a masked fbank
    train = dm.datasets["train"]
    train.mixup = 0.0
    torch.manual_seed(0)
    masked = normalize_fbank(torch.zeros(()))
    assert any((train[2]["audio"][0] == masked).any() for _ in range(5))


def test_roll_mag_aug_on_each_training_clip_before_mixup_and_never_on_evaluation_data(tmp_path):
    root = _dataset(tmp_path / "as")
    dm = AudioSetDataModule(str(root / "train.json"), str(root / "class_labels_indices.csv"), str(root / "val.json"),
                            target_length=24, num_mel_bins=32, batch_size=4, freqm=0, timem=0, mixup=1.0)  # fmt: skip
    assert dm.roll_mag_aug  # on by default: the released AudioSet scripts pass --roll_mag_aug True
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert train.roll_mag_aug and not val.roll_mag_aug
    torch.manual_seed(3)
    item = train[1]
    torch.manual_seed(3)  # replay AudioMAE _wav2fbank's order: mix or not, the partner, roll / magnitude of each clip, then λ
    assert float(torch.rand(())) < 1.0
    other = int(torch.randint(0, 4, ()))
    first, _ = read_wav(root / "audio" / "1.wav")
    second, _ = read_wav(root / "audio" / f"{other}.wav")
    first, second = roll_mag_aug(first - first.mean()), roll_mag_aug(second - second.mean())
    lam = float(torch.distributions.Beta(10.0, 10.0).sample())
    second = torch.cat([second, torch.zeros(max(0, len(first) - len(second)))])[: len(first)]
    mixed = lam * first + (1 - lam) * second
    torch.testing.assert_close(item["audio"][0], normalize_fbank(pad_or_cut_frames(kaldi_fbank(mixed - mixed.mean(), num_mel_bins=32), 24)))
    # un-mixed training items are augmented too, and not cached even with cache=True
    train.mixup, train.cache = 0.0, True
    torch.manual_seed(5)
    single = train[2]["audio"][0]
    wav, _ = read_wav(root / "audio" / "2.wav")
    torch.manual_seed(5)
    torch.testing.assert_close(single, normalize_fbank(pad_or_cut_frames(kaldi_fbank(roll_mag_aug(wav - wav.mean()), num_mel_bins=32), 24)))
    assert not train._cache and not torch.allclose(train[2]["audio"][0], single)
    # evaluation data is untouched and draws nothing
    state = torch.get_rng_state()
    for i in range(4):
        torch.testing.assert_close(val[i]["audio"][0], _expected(root, i))
    assert torch.equal(torch.get_rng_state(), state)


def test_one_line_errors_name_the_file(tmp_path):
    root = _dataset(tmp_path / "as")

    def error(match, **paths):
        args = {"train_json": str(root / "train.json"), "label_csv": str(root / "class_labels_indices.csv"), **paths}
        with pytest.raises(LitzooError, match=match) as info:
            dm = AudioSetDataModule(**args, target_length=24, num_mel_bins=32, batch_size=4)
            dm.setup("fit")
            next(iter(dm.train_dataloader()))
        assert "\n" not in str(info.value)

    error(r"data file '.*nope.json' does not exist", train_json=str(root / "nope.json"))
    error(r"label file '.*none.csv' does not exist", label_csv=str(root / "none.csv"))
    (root / "bad.json").write_text('{"data": [{"wav": "a.wav", "labels": "/m/09x0r"},]}')
    error(r"'.*bad.json' is not valid JSON \(.*line 1 column", train_json=str(root / "bad.json"))
    (root / "nodata.json").write_text('{"items": []}')
    error(r"'.*nodata.json' has no non-empty \"data\" list", train_json=str(root / "nodata.json"))
    (root / "unknown.json").write_text(json.dumps({"data": [{"wav": "audio/0.wav", "labels": "/m/09x0r,/m/zzz"}]}))
    error(r"'.*unknown.json': entry 0 \('audio/0.wav'\) has label '/m/zzz', which '.*class_labels_indices.csv' does not list",
          train_json=str(root / "unknown.json"))  # fmt: skip
    (root / "missing.json").write_text(json.dumps({"data": [{"wav": "audio/gone.wav", "labels": "/m/09x0r"}]}))
    error(r"WAV file '.*gone.wav' listed in '.*missing.json' does not exist", train_json=str(root / "missing.json"))
    (root / "header.csv").write_text("idx,mid,name\n0,/m/09x0r,Speech\n")
    error(r"label file '.*header.csv' has header .* expected index,mid,display_name", label_csv=str(root / "header.csv"))
    (root / "index.csv").write_text("index,mid,display_name\nzero,/m/09x0r,Speech\n")
    error(r"label file '.*index.csv' line 2: index 'zero' is not an integer", label_csv=str(root / "index.csv"))
    (root / "gap.csv").write_text("index,mid,display_name\n0,/m/09x0r,Speech\n2,/m/0ytgt,Child\n")
    error(r"'.*gap.csv': indices must be 0 … 1", label_csv=str(root / "gap.csv"))
    with pytest.raises(ValueError, match="mixup"):
        _module(root, mixup=1.5)


def test_synthetic_audioset_is_multi_label_deterministic_and_atomic(tmp_path):
    dm = SyntheticAudioSetDataModule(str(tmp_path / "syn"), num_train=12, num_val=6, target_length=32, num_mel_bins=32, batch_size=6)
    folder = tmp_path / "syn" / "seed0-n12-6"
    assert [p.name for p in (tmp_path / "syn").iterdir()] == ["seed0-n12-6"]  # no staging folder left
    assert not (folder / "sources").exists()
    mids, _ = read_class_labels(folder / "class_labels_indices.csv")
    assert dm.num_classes == 8 and all(m.startswith("/synthetic/") for m in mids)
    counts = [len(e["labels"].split(",")) for e in json.loads((folder / "train.json").read_text())["data"]]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["audio"].shape == (6, 1, 32, 32) and batch["label"].shape == (6, 8)
    assert set(batch["label"].unique().tolist()) <= {0.0, 1.0} and (batch["label"].sum(1) >= 1).all()
    again = SyntheticAudioSetDataModule(str(tmp_path / "other"), num_train=12, num_val=6)
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    other = tmp_path / "other" / "seed0-n12-6"
    assert files and all((folder / f).read_bytes() == (other / f).read_bytes() for f in files)
    assert again.num_classes == 8
