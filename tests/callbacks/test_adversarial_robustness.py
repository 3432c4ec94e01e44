"""AdversarialRobustness end to end on a tiny two-modality classifier that is not ours, against closed-form curves."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.metrics import average_precision_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from litzoo.callbacks.adversarial_robustness import AdversarialRobustness
from litzoo.framework.adversarial import critical_epsilon
from litzoo.framework.errors import LitzooError

EPSILONS = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8]


class DictData(Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class TensorData(L.LightningDataModule):
    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int = 16) -> None:
        super().__init__()
        self.tensors, self.batch_size = tensors, batch_size

    def test_dataloader(self) -> DataLoader:
        return DataLoader(DictData(self.tensors), batch_size=self.batch_size)


class LateFusion(L.LightningModule):
    """A user's late-fusion classifier: logits = V video + A audio + b, ``forward(video, audio)``; labels one-hot."""

    def __init__(self, video_weight: torch.Tensor, audio_weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.video, self.audio = nn.Linear(video_weight.shape[1], 2, bias=False), nn.Linear(audio_weight.shape[1], 2)
        with torch.no_grad():
            self.video.weight.copy_(video_weight)
            self.audio.weight.copy_(audio_weight)
            self.audio.bias.copy_(bias)
        self.drop = nn.Dropout(0.5)  # must be off during the attack (eval mode)
        self.draws = False

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        if self.draws:  # a forward that consumes the global RNG (as random masking or stochastic depth would)
            torch.rand(())
        return self.drop(self.video(video.flatten(1)) + self.audio(audio.flatten(1)))

    def target(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.argmax(1)

    def test_step(self, batch, batch_idx):
        accuracy = (self(batch["video"], batch["audio"]).argmax(1) == self.target(batch["label"])).float().mean()
        self.log("test/acc", accuracy, on_epoch=True, batch_size=len(batch["label"]))


def planted(seed: int = 0, n: int = 48):
    g = torch.Generator().manual_seed(seed)
    video_weight, audio_weight, bias = torch.randn(2, 6, generator=g), torch.randn(2, 3, generator=g), torch.zeros(2)
    video, audio = torch.randn(n, 2, 3, generator=g), torch.randn(n, 1, 3, generator=g)
    with torch.no_grad():
        logits = video.flatten(1) @ video_weight.T + audio.flatten(1) @ audio_weight.T
    labels = logits.argmax(1)
    labels[: n // 6] = 1 - labels[: n // 6]  # a few wrong clean predictions
    data = {"video": video, "audio": audio, "label": nn.functional.one_hot(labels, 2).float()}
    return LateFusion(video_weight, audio_weight, bias), data


def expected_curve(data, module, keys, norm):
    """Accuracy under the optimal attack of a 2-class linear model: the true-class margin falls by ε times the dual norm
    of the margin's weight difference in each attacked modality (FGSM and PGD both reach it)."""
    labels = data["label"].argmax(1)
    weights = {"video": module.video.weight.detach(), "audio": module.audio.weight.detach()}
    margin = torch.zeros(len(labels))
    reduction = torch.zeros(len(labels))
    for key in ("video", "audio"):
        difference = weights[key][labels] - weights[key][1 - labels]  # (N, D)
        margin += (difference * data[key].flatten(1)).sum(1)
        if key in keys:
            reduction += difference.abs().sum(1) if norm == "linf" else difference.norm(dim=1)
    return [float(((margin - eps * reduction) > 0).float().mean()) for eps in EPSILONS]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adv")
    module, data = planted()
    callback = AdversarialRobustness(epsilons=EPSILONS, attacks=["fgsm", "pgd"], norms=["linf", "l2"],
                                     modalities=[["video"], ["audio"], ["video", "audio"]], steps=8, random_init=False,
                                     input_keys=["video", "audio"], target_method="target")  # fmt: skip
    trainer = L.Trainer(logger=TensorBoardLogger(folder, name="run"), callbacks=[callback], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    metrics = trainer.test(module, datamodule=TensorData(data), verbose=False)[0]
    return callback, trainer, module, data, metrics


def test_curves_equal_the_closed_form(evaluated):
    callback, _, module, data, metrics = evaluated
    results = callback.results
    clean = float(metrics["test/acc"])
    assert results["metric"] == "accuracy" and results["clean"] == pytest.approx(clean) and results["num_samples"] == 48
    assert 0.5 < clean < 1.0
    assert len(results["curves"]) == 2 * 2 * 3
    for curve in results["curves"]:
        expected = expected_curve(data, module, curve["modalities"], curve["norm"])
        assert curve["values"] == pytest.approx(expected, abs=1e-6), curve
        assert curve["values"][0] == pytest.approx(clean)  # ε = 0 leaves the clean value
        star = critical_epsilon(EPSILONS, expected, clean)
        assert (curve["critical_epsilon"] is None) == (star is None)
        if star is not None:
            assert curve["critical_epsilon"] == pytest.approx(star)
    # attacking both modalities is at least as strong as either alone, and ε* reached on the grid for the joint attack
    by = {(c["attack"], c["norm"], tuple(c["modalities"])): c for c in results["curves"]}
    for norm in ("linf", "l2"):
        joint = by[("pgd", norm, ("video", "audio"))]
        assert all(j <= min(v, a) + 1e-9 for j, v, a in
                   zip(joint["values"], by[("pgd", norm, ("video",))]["values"], by[("pgd", norm, ("audio",))]["values"], strict=True))  # fmt: skip
        assert joint["critical_epsilon"] is not None and 0 < joint["critical_epsilon"] <= EPSILONS[-1]


def test_table_and_json_on_disk(evaluated):
    callback, trainer, *_ = evaluated
    table, document = callback.last_files
    assert table.parent == callback.last_files[1].parent and table.parent.name == "adversarial_robustness"
    assert table.parent.parent == __import__("pathlib").Path(trainer.log_dir)
    assert table.name == f"test_step{trainer.global_step}.csv" and not list(table.parent.glob(".*partial*"))
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert list(rows[0]) == ["attack", "norm", "modalities", "epsilon", "metric", "value"]
    assert len(rows) == 12 * len(EPSILONS)  # the grid holds ε = 0, so no extra clean row
    loaded = json.loads(document.read_text(encoding="utf-8"))
    assert loaded == json.loads(json.dumps(callback.results))
    for curve in loaded["curves"]:
        mine = [r for r in rows if (r["attack"], r["norm"], r["modalities"]) == (curve["attack"], curve["norm"], "+".join(curve["modalities"]))]
        assert [float(r["epsilon"]) for r in mine] == EPSILONS
        assert [float(r["value"]) for r in mine] == curve["values"]


def test_tensorboard_scalars_and_text(evaluated):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback, trainer, *_ = evaluated
    events = EventAccumulator(str(trainer.log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    curve = next(c for c in callback.results["curves"] if (c["attack"], c["norm"], c["modalities"]) == ("pgd", "linf", ["video", "audio"]))
    points = events.Scalars("adversarial/pgd_linf/video+audio/accuracy")
    # step 0 is the clean value, step i + 1 grid point i
    assert [p.step for p in points] == list(range(len(EPSILONS) + 1))
    assert [p.value for p in points] == pytest.approx([callback.results["clean"], *curve["values"]], abs=1e-6)
    assert events.Scalars("adversarial/pgd_linf/video+audio/critical_eps")[-1].value == pytest.approx(curve["critical_epsilon"], rel=1e-6)
    text = events.Tensors("adversarial/table/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| pgd | linf | video+audio |" in text and "ε*" in text


def test_random_starts_leave_the_run_rng_alone_and_are_reproducible(tmp_path):
    module, data = planted(seed=1, n=32)
    module.draws = True

    def run(with_callback: bool, global_seed: int = 123, seed: int = 7):
        torch.manual_seed(global_seed)
        # one tiny step from a random start in a large box: the curve is the random start's, so it shows the seed used
        callbacks = [AdversarialRobustness(epsilons=[1.0, 2.0, 3.0], modalities=[["video"], ["audio"]], steps=1, alpha_fraction=1e-3,
                                           input_keys=["video", "audio"], target_method="target", seed=seed,
                                           dirpath=str(tmp_path / str(with_callback)))] if with_callback else []  # fmt: skip
        trainer = L.Trainer(logger=False, callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        trainer.test(module, datamodule=TensorData(data), verbose=False)
        return torch.rand(3), (callbacks[0].results if callbacks else None)

    plain, _ = run(False)
    first, results = run(True)
    second, again = run(True, global_seed=456)  # the random starts depend on the callback's seed only
    assert torch.equal(plain, first)
    assert results == again
    _, other = run(True, seed=8)  # negative control: another callback seed, other random starts
    assert other["curves"] != results["curves"]


class MultiLabel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 3)

    def forward(self, batch: dict) -> torch.Tensor:  # the batch-dict protocol
        return self.layer(batch["image"])

    def test_step(self, batch, batch_idx):
        pass


def test_multilabel_map_matches_sklearn(tmp_path):
    g = torch.Generator().manual_seed(2)
    image = torch.rand(40, 4, generator=g)
    label = (torch.rand(40, 3, generator=g) < 0.4).float()
    label[0], label[1] = 1.0, 0.0  # every class has positives and negatives
    callback = AdversarialRobustness(epsilons=[0.0, 0.1, 0.5], attacks=["pgd"], modalities=[["image"]], bounds={"image": [0.0, 1.0]},
                                     dirpath=str(tmp_path))  # fmt: skip
    trainer = L.Trainer(logger=False, callbacks=[callback], enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    module = MultiLabel()
    trainer.test(module, datamodule=TensorData({"image": image, "label": label}, batch_size=8), verbose=False)
    with torch.no_grad():
        scores = module.layer(image).numpy()
    expected = average_precision_score(label.numpy(), scores, average="macro")
    results = callback.results
    assert results["metric"] == "mAP" and results["clean"] == pytest.approx(expected, abs=1e-6)
    values = results["curves"][0]["values"]
    assert values[0] == pytest.approx(expected, abs=1e-6) and values[2] < values[0]


def test_bad_settings_and_protocol_are_refused(tmp_path):
    for bad in ({"epsilons": [0.2, 0.1]}, {"epsilons": [-0.1]}, {"attacks": ["cw"]}, {"norms": ["l1"]}, {"modalities": [[]]},
                {"fraction": 1.0}, {"bounds": {"image": [1.0, 0.0]}}, {"steps": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            AdversarialRobustness(**bad)
    module, data = planted(n=8)
    trainer = lambda cb: L.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False)  # noqa: E731
    with pytest.raises(LitzooError, match="no method 'logits'"):
        trainer(AdversarialRobustness(method="logits", dirpath=str(tmp_path))).test(module, datamodule=TensorData(data), verbose=False)
    with pytest.raises(LitzooError, match="no 'spectrogram'"):
        callback = AdversarialRobustness(modalities=[["spectrogram"]], input_keys=["video", "audio"], target_method="target", dirpath=str(tmp_path))
        trainer(callback).test(module, datamodule=TensorData(data), verbose=False)
