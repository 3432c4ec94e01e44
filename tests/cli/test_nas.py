"""The NAS commands (litzoo/cli/nas.py): ``litzoo nas-search`` end to end on a tiny GENNAPE checkpoint, its one-line
errors on bad predictor files, and ``litzoo architecture-tasks`` (``litzoo architectures``:
tests/datamodules/test_architectures.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning as L
import pytest
import torch

from litzoo.cli import main
from litzoo.cli.nas import load_gennape_predictor, nas_search_command
from litzoo.datamodules.architecture_tasks import generate_task_labels, tasks_path
from litzoo.datamodules.architectures import DigitsSplits, SyntheticArchitectureDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.nas import count_spec_parameters, generate_architecture_benchmark, predictor_score_fn, spec_flops, spec_from_dict
from litzoo.modules.gennape import GENNAPEModule


def _tiny_gennape(seed: int = 0) -> GENNAPEModule:
    torch.manual_seed(seed)
    return GENNAPEModule(embed_dim=8, hidden_dim=8, num_layers=2, eigvec_size=4, contrastive_epochs=0, num_clusters=1)


def _checkpoint(tmp_path) -> str:
    L.seed_everything(0, verbose=False)
    model = _tiny_gennape()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, SyntheticArchitectureDataModule(per_family=4, batch_size=4))
    path = tmp_path / "gennape.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def test_command_searches_trains_and_writes_records(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "results" / "search.jsonl"
    limit = 3e5
    records = nas_search_command(["--predictor", ckpt, "--family", "vgg", "--flops-limit", str(limit), "--evaluate", "3", "--out", str(out),
                                  "--population", "6", "--generations", "2", "--children", "3", "--sample-size", "2", "--epochs", "1",
                                  "--train-subset", "64", "--no-progress"])  # fmt: skip
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == json.loads(json.dumps(records)) and len(lines) == 3
    predictor = load_gennape_predictor(ckpt)
    specs = [spec_from_dict(r["spec"]) for r in lines]
    assert torch.allclose(predictor_score_fn(predictor)(specs), torch.tensor([r["predicted"] for r in lines]), atol=1e-5)
    for rank, record in enumerate(lines):
        assert record["rank"] == rank and record["family"] == "vgg"
        assert 0.0 <= record["accuracy"] <= 1.0
        assert record["flops"] == spec_flops(specs[rank]) <= limit
        assert record["params"] == count_spec_parameters(specs[rank])
    predicted = [r["predicted"] for r in lines]
    assert predicted == sorted(predicted, reverse=True)
    printed = capsys.readouterr().out
    best = max(lines, key=lambda r: r["accuracy"])
    assert "best: accuracy" in printed and f"{best['accuracy']:.4f}" in printed


def test_a_bad_predictor_file_is_a_one_line_error(tmp_path):
    args = ["--family", "vgg", "--flops-limit", "1e6", "--out", str(tmp_path / "o.jsonl")]
    with pytest.raises(LitzooError, match="does not exist") as error:
        nas_search_command(["--predictor", str(tmp_path / "missing.ckpt"), *args])
    assert "\n" not in str(error.value)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LitzooError) as error:
        nas_search_command(["--predictor", str(garbage), *args])
    assert "\n" not in str(error.value) and "garbage.ckpt" in str(error.value)
    plain = tmp_path / "plain.ckpt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(LitzooError, match=r"is not a Lightning checkpoint .* but --predictor needs a GENNAPEModule \(litzoo.modules.gennape"):
        nas_search_command(["--predictor", str(plain), *args])
    foreign = tmp_path / "mae.ckpt"
    torch.save({"pytorch-lightning_version": L.__version__, "state_dict": {}, "hyper_parameters": {"_class_path": "litzoo.modules.mae.MAEModule"}}, foreign)
    with pytest.raises(LitzooError, match=r"holds a MAEModule \(litzoo.modules.mae.MAEModule\), but --predictor needs a GENNAPEModule"):
        nas_search_command(["--predictor", str(foreign), *args])
    assert not (tmp_path / "o.jsonl").exists()


def test_a_predictor_that_does_not_load_is_named_in_full(tmp_path):
    """Every mismatched key is in the one line (it was cut at 200 characters, mid-name)."""
    checkpoint = torch.load(_checkpoint(tmp_path), weights_only=True)
    keys = sorted(checkpoint["state_dict"])
    for key in keys:
        checkpoint["state_dict"][key] = torch.zeros(1)
    bad = tmp_path / "shapes.ckpt"
    torch.save(checkpoint, bad)
    with pytest.raises(LitzooError) as error:
        load_gennape_predictor(bad)
    message = str(error.value)
    assert "\n" not in message and len(message) > 400 and f"size mismatch for {keys[-1]}" in message


def test_readme_flow_fit_then_nas_search_with_its_last_checkpoint(tmp_path):
    """README: `litzoo fit -c configs/gennape/architectures.yaml`, then `litzoo nas-search --predictor <its last.ckpt>`
    (the synthetic benchmark instead of the trained one, and a few epochs, to stay fast)."""
    main(["fit", "-c", "configs/gennape/architectures.yaml", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "2",
          "--model.init_args.contrastive_epochs", "1", "--data", "litzoo.datamodules.architectures.SyntheticArchitectureDataModule",
          "--data.per_family", "4", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])  # fmt: skip
    last = tmp_path / "gennape" / "syntheticarchitecture" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["hyper_parameters"]["_class_path"] == "litzoo.modules.gennape.GENNAPEModule"
    out = tmp_path / "found.jsonl"
    # a fresh process, as on the command line: nothing imported but what `litzoo nas-search` imports itself
    done = subprocess.run([sys.executable, "-m", "litzoo", "nas-search", "--predictor", str(last), "--family", "vgg", "--flops-limit", "3e5",
                           "--evaluate", "1", "--out", str(out), "--population", "4", "--generations", "1", "--children", "2",
                           "--sample-size", "2", "--epochs", "1", "--train-subset", "64", "--no-progress"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"-> {out}" in done.stdout
    record = json.loads(out.read_text())
    assert record["family"] == "vgg" and record["flops"] <= 3e5
    assert record["predicted"] == pytest.approx(float(predictor_score_fn(load_gennape_predictor(last))([spec_from_dict(record["spec"])])[0]), abs=1e-5)


def test_architecture_tasks_command_labels_the_requested_tasks_and_records(tmp_path, capsys):
    bench = generate_architecture_benchmark(tmp_path / "b.jsonl", DigitsSplits(), per_family=1, epochs=1, train_subset=96,
                                            latency_repeats=1, progress=False)  # fmt: skip
    main(["architecture-tasks", "--benchmark", str(bench), "--tasks", "digit_value", "--limit", "2", "--noise-sigma", "0.5", "--no-progress"])
    assert str(tasks_path(bench)) in capsys.readouterr().out
    lines = [json.loads(line) for line in tasks_path(bench).read_text().splitlines()]
    assert [(r["index"], r["task"]) for r in lines] == [(0, "digit_value"), (1, "digit_value")]
    assert all(r["generation"]["noise_sigma"] == 0.5 for r in lines)
    # the command's labels are those of the function with the same settings
    direct = generate_task_labels(bench, ["digit_value"], limit=2, out_path=tmp_path / "direct.jsonl", noise_sigma=0.5, progress=False)
    assert [r["value"] for r in lines] == [json.loads(line)["value"] for line in direct.read_text().splitlines()]


def test_architecture_tasks_command_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["architecture-tasks", "--benchmark", str(tmp_path / "missing.jsonl"), "--no-progress"])
    error = capsys.readouterr().err.strip()
    assert error.startswith("litzoo: error:") and "missing" in error and "\n" not in error
