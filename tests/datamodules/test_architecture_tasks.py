"""The multi-task architecture benchmark (datamodules/architecture_tasks.py): AIO-P's label normaliser, the
extra-task labelling and the multi-task DataModule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from litzoo.datamodules.architecture_tasks import (
    MultiTaskArchitectureDataModule,
    TaskNormalizer,
    generate_task_labels,
    load_task_labels,
    synthetic_task_benchmark,
    tasks_path,
)
from litzoo.datamodules.architectures import DigitsSplits
from litzoo.framework.errors import LitzooError
from litzoo.framework.nas import generate_architecture_benchmark


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return synthetic_task_benchmark(tmp_path_factory.mktemp("tasks") / "syn.jsonl", per_family=4, seed=0)


# ---------------------------------------------------------------------------------------------- normaliser
def test_normalizer_standardises_with_population_std_and_inverts():
    norm = TaskNormalizer().fit([1.0, 2.0, 3.0, 4.0])
    assert norm.mean == pytest.approx(2.5)
    assert norm.std == pytest.approx(math.sqrt(1.25))  # numpy.std: ddof 0, as the official normaliser
    y = norm.transform(torch.tensor([1.0, 4.0]))
    assert y.tolist() == pytest.approx([-1.5 / math.sqrt(1.25), 1.5 / math.sqrt(1.25)])
    assert norm.inverse(y).tolist() == pytest.approx([1.0, 4.0])
    assert TaskNormalizer().fit([0.7, 0.7]).std == 1.0  # constant labels: no division by zero


def test_flops_option_divides_by_log_flops_before_standardising():
    norm = TaskNormalizer(flops=True).fit([0.5, 0.8], [9.0, 99.0])
    q = [0.5 / (math.log10(10) + 1), 0.8 / (math.log10(100) + 1)]  # 0.25 and 0.2667
    assert norm.mean == pytest.approx(sum(q) / 2)
    assert norm.std == pytest.approx(abs(q[0] - q[1]) / 2)
    y = norm.transform(torch.tensor([0.5, 0.8]), torch.tensor([9.0, 99.0]))
    assert y.tolist() == pytest.approx([-1.0, 1.0])
    assert norm.inverse(y, torch.tensor([9.0, 99.0])).tolist() == pytest.approx([0.5, 0.8])
    with pytest.raises(LitzooError):
        norm.inverse(y)  # FLOPs are needed to undo the quotient


# ---------------------------------------------------------------------------------------------- data module
def test_datamodule_splits_tasks_and_scales_labels(synthetic):
    dm = MultiTaskArchitectureDataModule(str(synthetic), finetune_samples=3, batch_size=8)
    dm.setup()
    arch = dm.architectures
    assert not set(arch["train"]) & set(arch["test"]) and not set(arch["finetune"]) & set(arch["test"])
    assert not set(arch["val"]) & set(arch["train"]) and len(arch["finetune"]) == 3
    tasks = {split: sorted({int(d.task) for d in items}) for split, items in dm.datasets.items()}
    assert tasks == {"train": [0, 1], "val": [0, 1], "test": [0, 1, 2], "finetune": [2]}
    labels = load_task_labels(synthetic)
    for t in range(len(dm.source_tasks)):
        y = torch.tensor([float(d.y) for d in dm.datasets["train"] if int(d.task) == t], dtype=torch.float64)
        assert float(y.mean()) == pytest.approx(0.0, abs=1e-6) and float(y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    # the target normaliser is fitted on the few-shot labels
    few = [labels[i]["digit_value"] for i in arch["finetune"]]
    assert dm.normalizers["digit_value"].mean == pytest.approx(sum(few) / 3)
    for item in dm.datasets["test"]:  # every item carries what inverts its label
        back = (item.y * item.norm_std + item.norm_mean) * item.norm_div
        assert float(back) == pytest.approx(float(item.y_raw), abs=1e-5)
    batch = next(iter(dm.train_dataloader()))
    assert batch.task.shape == (batch.num_graphs,) and batch.y.shape == (batch.num_graphs,)


def test_datamodule_flops_option_and_oracle_target_scale(synthetic):
    dm = MultiTaskArchitectureDataModule(str(synthetic), finetune_samples=0, flops_normalization=True)
    dm.setup()
    item = dm.datasets["test"][0]
    assert float(item.norm_div) == pytest.approx(math.log10(float(item.flops) + 1) + 1)
    # no few-shot labels: the target scale comes from the test labels, as in the official script
    test_target = [float(d.y) for d in dm.datasets["test"] if int(d.task) == 2]
    assert sum(test_target) / len(test_target) == pytest.approx(0.0, abs=1e-5)


def test_datamodule_errors_are_one_line(synthetic, tmp_path):
    with pytest.raises(LitzooError) as error:
        MultiTaskArchitectureDataModule(str(synthetic), source_tasks=["classification", "segmentation"])
    assert "unknown architecture task 'segmentation'" in _one_line(error)
    with pytest.raises(LitzooError) as error:
        MultiTaskArchitectureDataModule(str(synthetic), source_tasks=["classification"], target_task="classification")
    assert "unseen" in _one_line(error)
    with pytest.raises(LitzooError) as error:
        MultiTaskArchitectureDataModule(str(synthetic), finetune_samples=100).setup()
    assert "too few" in _one_line(error)
    lonely = tmp_path / "lonely.jsonl"
    lonely.write_text(synthetic.read_text())
    with pytest.raises(LitzooError) as error:
        MultiTaskArchitectureDataModule(str(lonely)).setup()
    assert "litzoo architecture-tasks" in _one_line(error)


# ---------------------------------------------------------------------------------------------- labelling
def test_task_labels_are_generated_resumed_and_deterministic(tmp_path):
    bench = generate_architecture_benchmark(
        tmp_path / "b.jsonl", DigitsSplits(), per_family=1, epochs=1, train_subset=96, latency_repeats=1, progress=False
    )
    out = generate_task_labels(bench, limit=2, progress=False)
    assert out == tasks_path(bench)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["task"]) for r in lines] == [(0, "digit_value"), (0, "noisy_digits"), (1, "digit_value"), (1, "noisy_digits")]
    for r in lines:
        if r["task"] == "digit_value":
            assert -10 < r["value"] < 0  # −RMSE in digit units
        else:
            assert 0 <= r["value"] <= 1
    # a run killed mid-record leaves a partial line: it is dropped and the run extends to 3 records
    first = out.read_text()
    with out.open("a") as handle:
        handle.write('{"index": 2, "ta')
    generate_task_labels(bench, limit=3, progress=False)
    text = out.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 6
    # the same settings elsewhere give the same labels; other settings are refused
    again = generate_task_labels(bench, limit=3, out_path=tmp_path / "again.jsonl", progress=False)
    assert [json.loads(x)["value"] for x in again.read_text().splitlines()] == [json.loads(x)["value"] for x in text.splitlines()]
    with pytest.raises(LitzooError) as error:
        generate_task_labels(bench, noise_sigma=0.5, progress=False)
    assert "generated with" in _one_line(error)
    assert set(load_task_labels(bench)[0]) == {"classification", "digit_value", "noisy_digits"}
