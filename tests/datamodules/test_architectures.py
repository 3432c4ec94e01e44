"""The NAS families (framework/nas_spaces.py), the digits architecture benchmark and its DataModules
(datamodules/architectures.py)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from litzoo.datamodules.architectures import (
    ArchitectureDataModule,
    SyntheticArchitectureDataModule,
    architectures_command,
    generate_architecture_benchmark,
    load_benchmark_specs,
    specs_path,
    synthetic_accuracy,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.graph import load_graphs_jsonl
from litzoo.framework.nas_spaces import FAMILIES, MAX_PARAMS, InceptionBlock, RepVGGTrainBlock, build_network, sample_spec, spec_from_dict
from litzoo.framework.profiling import count_flops, count_parameters

# the tiny generation every benchmark test shares: 2 networks per family, 1 epoch on 128 training digits
TINY = {"seed": 0, "epochs": 1, "train_subset": 128, "latency_repeats": 2, "progress": False}


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def _without_latency(path: Path) -> list[dict]:
    """The records of a graph file with the wall-clock label removed (the only label that is not reproducible)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for record in records:
        assert record["label"]["latency_ms"] > 0
        del record["label"]["latency_ms"]
    return records


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.jsonl"
    return generate_architecture_benchmark(path, per_family=2, **TINY)


# ---------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_builds_small_networks_that_run(family):
    for seed in range(4):
        spec = sample_spec(family, random.Random(seed))
        model = build_network(spec).eval()
        assert model(torch.randn(1, 1, 8, 8)).shape == (1, 10)
        assert count_parameters(model) <= MAX_PARAMS
        assert build_network(spec, num_classes=3)(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_families_have_their_defining_structure():
    specs = {f: [sample_spec(f, random.Random(i)) for i in range(6)] for f in FAMILIES}
    nets = {f: [build_network(s) for s in specs[f]] for f in FAMILIES}
    # mobilenet: depthwise convs; inception: multi-branch blocks; resnet: no grouped convs, 1-3 stages
    assert all(any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 for m in net.modules()) for net in nets["mobilenet"])
    assert all(any(isinstance(m, InceptionBlock) and len(m.branches) >= 1 for m in net.modules()) for net in nets["inception"])
    assert any(any(isinstance(m, InceptionBlock) and len(m.branches) >= 2 for m in net.modules()) for net in nets["inception"])
    assert not any(isinstance(m, nn.Conv2d) and m.groups > 1 for net in nets["resnet"] + nets["vgg"] for m in net.modules())
    assert {s.repvgg for s in specs["vgg"]} == {True, False}
    assert all(any(isinstance(m, RepVGGTrainBlock) for m in n.modules()) == s.repvgg for s, n in zip(specs["vgg"], nets["vgg"]))
    assert {s.act for s in specs["mobilenet"]} <= {"relu6", "hardswish"}


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_json_round_trip_and_deterministic_build(family):
    spec = sample_spec(family, random.Random(7))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["family"] == family
    assert spec_from_dict(data) == spec
    torch.manual_seed(3)
    first = build_network(spec)
    torch.manual_seed(3)
    second = build_network(data)
    assert count_parameters(first) == count_parameters(second)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_sampling_is_seeded_and_varied():
    for family in FAMILIES:
        assert sample_spec(family, random.Random(11)) == sample_spec(family, 11)
        drawn = {json.dumps(sample_spec(family, random.Random(i)).to_dict()) for i in range(8)}
        assert len(drawn) >= 5, family


def test_bad_specs_are_one_line_errors():
    with pytest.raises(LitzooError, match="unknown architecture family 'transformer'") as error:
        spec_from_dict({"family": "transformer"})
    _one_line(error)
    with pytest.raises(LitzooError, match="unknown fields") as error:
        spec_from_dict({"family": "vgg", "depth": 3})
    _one_line(error)
    with pytest.raises(LitzooError, match="unknown architecture family") as error:
        sample_spec("nasnet", 0)
    _one_line(error)


# ---------------------------------------------------------------------------------------------- generation
def test_generated_records_are_valid_labelled_graphs(benchmark):
    graphs = load_graphs_jsonl(benchmark)
    specs = load_benchmark_specs(benchmark)
    assert len(graphs) == len(specs) == 2 * len(FAMILIES)
    assert [s["index"] for s in specs] == list(range(8))
    assert [g.family for g in graphs] == list(FAMILIES) * 2 == [s["family"] for s in specs]
    for graph, record in zip(graphs, specs):
        assert set(graph.label) == {"accuracy", "flops", "params", "latency_ms"}
        assert 0.0 <= graph.label["accuracy"] <= 1.0
        model = build_network(spec_from_dict(record["spec"]))
        assert graph.label["flops"] == count_flops(model, torch.zeros(1, 1, 8, 8)) == graph.total_flops
        assert graph.label["params"] == count_parameters(model) == graph.total_params
    # 1 epoch on 128 digits already separates networks (not one constant accuracy)
    assert len({g.label["accuracy"] for g in graphs}) > 1


def test_resumed_generation_equals_an_uninterrupted_run(benchmark, tmp_path, capsys):
    path = tmp_path / "resumed.jsonl"
    # first part through the command, as `litzoo architectures` runs it; then the rest with a larger per_family
    architectures_command(["--out", str(path), "--per-family", "1", "--epochs", "1", "--train-subset", "128", "--no-progress"])
    summary = capsys.readouterr().out
    assert all(family in summary for family in FAMILIES) and "SRCC" in summary
    assert len(load_graphs_jsonl(path)) == len(FAMILIES)
    generate_architecture_benchmark(path, per_family=2, **{**TINY, "latency_repeats": 10})
    assert _without_latency(path) == _without_latency(benchmark)
    assert specs_path(path).read_text() == specs_path(benchmark).read_text()
    # a finished benchmark is left alone
    before = path.read_bytes()
    generate_architecture_benchmark(path, per_family=2, **TINY)
    assert path.read_bytes() == before


def test_a_run_killed_mid_record_is_cut_back_and_completed(benchmark, tmp_path):
    path = tmp_path / "killed.jsonl"
    shutil.copy(benchmark, path)
    shutil.copy(specs_path(benchmark), specs_path(path))
    lines = benchmark.read_bytes().splitlines(keepends=True)
    spec_lines = specs_path(benchmark).read_bytes().splitlines(keepends=True)
    # killed while writing graph 7: half a line, no spec
    path.write_bytes(b"".join(lines[:7]) + lines[7][: len(lines[7]) // 2])
    specs_path(path).write_bytes(b"".join(spec_lines[:7]))
    generate_architecture_benchmark(path, per_family=2, **TINY)
    assert _without_latency(path) == _without_latency(benchmark)
    assert specs_path(path).read_bytes() == specs_path(benchmark).read_bytes()
    # killed between graph 6 and its spec: the graph file is one line ahead, and the spec of 6 half written
    path.write_bytes(b"".join(lines[:7]))
    specs_path(path).write_bytes(b"".join(spec_lines[:6]) + spec_lines[6][:10])
    generate_architecture_benchmark(path, per_family=2, **TINY)
    assert _without_latency(path) == _without_latency(benchmark)
    assert specs_path(path).read_bytes() == specs_path(benchmark).read_bytes()


def test_resuming_with_other_settings_or_a_corrupt_file_is_refused(benchmark, tmp_path):
    path = tmp_path / "other.jsonl"
    shutil.copy(benchmark, path)
    shutil.copy(specs_path(benchmark), specs_path(path))
    with pytest.raises(LitzooError, match="was generated with") as error:
        generate_architecture_benchmark(path, per_family=3, **{**TINY, "epochs": 2})
    _one_line(error)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{not json\n" + "".join(lines[2:]))
    with pytest.raises(LitzooError, match="line 2 is not a record") as error:
        generate_architecture_benchmark(path, per_family=2, **TINY)
    _one_line(error)
    with pytest.raises(LitzooError, match="unknown architecture family") as error:
        generate_architecture_benchmark(tmp_path / "x.jsonl", per_family=1, families=["resnet", "nasnet"], **TINY)
    _one_line(error)


# ---------------------------------------------------------------------------------------------- data modules
def test_datamodule_splits_by_family_and_standardises_with_train_statistics(benchmark):
    dm = ArchitectureDataModule(str(benchmark), test_families=["vgg"], val_fraction=0.34, batch_size=4, finetune_samples=1)
    dm.setup()
    graphs = dm.graphs
    assert {g.family for s in ("train", "val") for g in graphs[s]} == {"resnet", "mobilenet", "inception"}
    assert len(graphs["train"]) == 4 and len(graphs["val"]) == 2
    assert [g.family for g in graphs["finetune"]] == ["vgg"] and [g.family for g in graphs["test"]] == ["vgg"]
    assert graphs["finetune"][0] is not graphs["test"][0]
    train_acc = torch.tensor([g.label["accuracy"] for g in graphs["train"]], dtype=torch.float64)
    assert dm.target_mean == pytest.approx(float(train_acc.mean())) and dm.target_std == pytest.approx(float(train_acc.std()))
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 4 and batch.x.shape[0] == batch.batch.shape[0]
    assert torch.allclose(dm.denormalize(batch.y), batch.y_raw, atol=1e-6)
    assert torch.allclose(batch.y.double().mean(), torch.zeros((), dtype=torch.float64), atol=1e-5)  # train split: mean 0
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch.family == ["vgg"]
    assert torch.allclose(test_batch.y, (test_batch.y_raw - dm.target_mean) / dm.target_std)
    few = list(dm.finetune_dataloader())
    assert sum(b.num_graphs for b in few) == 1 and few[0].family == ["vgg"]
    # the splits are seeded
    again = ArchitectureDataModule(str(benchmark), test_families=["vgg"], val_fraction=0.34, finetune_samples=1)
    again.setup()
    assert again.graphs["finetune"][0].to_dict() == graphs["finetune"][0].to_dict()
    # another target
    flops = ArchitectureDataModule(
        str(benchmark), target="flops", train_families=["resnet", "mobilenet"], test_families=["inception"], val_fraction=0.25
    )
    flops.setup()
    assert {g.family for g in flops.graphs["train"] + flops.graphs["val"]} == {"resnet", "mobilenet"}
    assert flops.target_mean > 1e4


def test_datamodule_errors_are_one_line(benchmark, tmp_path):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(LitzooError, match="litzoo architectures --out") as error:
        ArchitectureDataModule(str(missing)).setup()
    _one_line(error)
    with pytest.raises(LitzooError, match="unknown target 'top5'") as error:
        ArchitectureDataModule(str(benchmark), target="top5").setup()
    _one_line(error)
    with pytest.raises(LitzooError, match="unknown architecture family 'nasbench201'") as error:
        ArchitectureDataModule(str(benchmark), test_families=["nasbench201"])
    _one_line(error)
    with pytest.raises(LitzooError, match="in both train_families and test_families") as error:
        ArchitectureDataModule(str(benchmark), train_families=["vgg", "resnet"], test_families=["vgg"])
    _one_line(error)
    with pytest.raises(LitzooError, match="finetune_samples 2 must be below") as error:
        ArchitectureDataModule(str(benchmark), test_families=["vgg"], finetune_samples=2).setup()
    _one_line(error)
    only_some = tmp_path / "some.jsonl"
    only_some.write_text("".join(line + "\n" for line in benchmark.read_text().splitlines()[:2]))  # resnet, mobilenet
    with pytest.raises(LitzooError, match="has no graphs of family 'inception'") as error:
        ArchitectureDataModule(str(only_some)).setup()
    _one_line(error)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nodes": []}\n')
    with pytest.raises(LitzooError, match="bad.jsonl' line 1") as error:
        ArchitectureDataModule(str(bad)).setup()
    _one_line(error)


def test_default_benchmark_is_generated_once_into_root(tmp_path):
    dm = ArchitectureDataModule(None, root=str(tmp_path), generate_per_family=1, generate_epochs=1, val_fraction=0.34)
    dm.prepare_data()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["digits-seed0-pf1-e1.jsonl", "digits-seed0-pf1-e1.specs.jsonl"]  # no staging folder left
    stamp = (tmp_path / files[0]).stat().st_mtime_ns
    dm.setup()
    assert len(dm.graphs["test"]) == 1 and dm.graphs["test"][0].family == "inception"
    ArchitectureDataModule(None, root=str(tmp_path), generate_per_family=1, generate_epochs=1, val_fraction=0.34).setup()
    assert (tmp_path / files[0]).stat().st_mtime_ns == stamp


def test_synthetic_datamodule_labels_by_the_documented_oracle():
    dm = SyntheticArchitectureDataModule(per_family=4, noise=0.0, finetune_samples=2, val_fraction=0.25)
    dm.setup()
    assert len(dm.graphs["train"]) == 9 and len(dm.graphs["val"]) == 3
    few = dm.graphs["finetune"]
    assert len(few) == 2 and {g.family for g in few} == {"inception"} and len(dm.graphs["test"]) == 2
    for graph in dm.graphs["train"]:
        assert graph.label["accuracy"] == pytest.approx(synthetic_accuracy(graph))
        assert graph.label["flops"] == graph.total_flops
    values = torch.tensor([d.y.item() for d in dm.datasets["train"]], dtype=torch.float64)
    assert abs(values.mean().item()) < 1e-5 and values.std().item() == pytest.approx(1.0, abs=1e-5)
    assert values.std() > 0  # the oracle depends on the architecture
    # more depth with the same shape costs nothing in FLOPs but raises the oracle: it is not FLOPs alone
    shallow = dm.graphs["train"][0]
    deeper = type(shallow)(list(shallow.nodes), list(shallow.edges), dict(shallow.label), shallow.family)
    conv = max((n for n in shallow.nodes if n.op == "conv"), key=lambda n: n.output_shape[1])  # widest: mean width cannot drop
    deeper.nodes = [*shallow.nodes, type(conv)(len(shallow.nodes), "extra", "conv", conv.input_shapes, conv.output_shape)]
    assert synthetic_accuracy(deeper) > synthetic_accuracy(shallow) and deeper.total_flops == shallow.total_flops
    again = SyntheticArchitectureDataModule(per_family=4, noise=0.0, finetune_samples=2, val_fraction=0.25)
    again.setup()
    assert [g.to_dict() for g in again.graphs["finetune"]] == [g.to_dict() for g in few]
