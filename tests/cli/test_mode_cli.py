"""`litzoo mode-cluster` (litzoo/cli/mode.py) writes the clustering and one manifest per data expert, which
ImageTextDataModule trains on; `litzoo test --model MoDEEnsemble` reports weighted / uniform / per-expert zero-shot
accuracy equal to the ensemble computed by hand; bad input is one error line naming the file and line."""

from __future__ import annotations

import json

import pytest
import torch

from litzoo.cli import main
from litzoo.datamodules.image_text import ImageTextDataModule
from litzoo.datamodules.two_domain_captions import TwoDomainCaptionsDataModule, two_domain_caption_pool
from litzoo.framework.nn.clip import CLIP
from litzoo.modules.mode import MoDE, ModeClustering, ensemble_logits

TINY = dict(vocab_size=128, embed_dim=8, image_size=8, patch_size=4, in_chans=1, vision_width=16, vision_depth=1, vision_heads=2,
            context_length=16, text_width=16, text_depth=1, text_heads=2)  # fmt: skip
ARGS = ["--num_fine", "16", "--num_coarse", "2", "--embed_dim", "32", "--fine_iters", "3", "--coarse_iters", "10", "--vocab_size", "128"]


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    root = tmp_path_factory.mktemp("mode_cli")
    pool = two_domain_caption_pool(root / "seed0-noise0.2-v128", seed=0, vocab_size=128)
    main(["mode-cluster", "--manifest", str(pool["train"]), "--output", str(root / "clusters"), *ARGS])
    return root, pool


def one_error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith((" ", "/")) or line.startswith("litzoo: error: ")]  # not warnings
    assert lines[-1].startswith("litzoo: error: ") and "Traceback" not in err, err
    return lines[-1].removeprefix("litzoo: error: ").strip()


def test_mode_cluster_writes_expert_manifests(clustered):
    root, pool = clustered
    out = root / "clusters"
    assert sorted(p.name for p in out.iterdir()) == ["clustering.pt", "expert_0.jsonl", "expert_1.jsonl", "summary.json", "tokenizer.json"]
    clustering = ModeClustering.load(out / "clustering.pt")
    rows = [json.loads(line) for line in pool["train"].read_text().splitlines()]
    fine, coarse = clustering.assign([r["text"] for r in rows])
    by_image = {r["image"]: (int(f), int(c)) for r, f, c in zip(rows, fine, coarse, strict=True)}
    for k in range(2):
        lines = [json.loads(line) for line in (out / f"expert_{k}.jsonl").read_text().splitlines()]
        inside = [line for line in lines if line["mode_coarse"] == k]
        n_out = int((coarse != k).sum())
        assert len(inside) == int((coarse == k).sum()) and len(lines) - len(inside) == int(n_out * 0.02)
        assert all(
            by_image[line["image"].removeprefix("../seed0-noise0.2-v128/")] == (line["mode_fine"], line["mode_coarse"]) for line in lines
        )
        assert all((out / line["image"]).is_file() for line in lines)  # image paths rebased to the output folder
    data = ImageTextDataModule(train_manifest=str(out / "expert_0.jsonl"), tokenizer_path=str(out / "tokenizer.json"), image_size=8, channels=1,
                               vocab_size=128, context_length=16, batch_size=8)  # fmt: skip
    assert len(data.dataset("train")) == len((out / "expert_0.jsonl").read_text().splitlines())


def test_mode_cluster_bad_manifest_is_one_line(tmp_path, capsys):
    manifest = tmp_path / "pool.jsonl"
    manifest.write_text('{"image": "a.png", "text": "one"}\n{"image": "b.png", "text": \n')
    line = one_error_line(capsys, ["mode-cluster", "--manifest", str(manifest), "--output", str(tmp_path / "out"), *ARGS])
    assert str(manifest) in line and "line 2 is not JSON" in line
    manifest.write_text('{"image": "a.png", "text": "one"}\n')
    line = one_error_line(capsys, ["mode-cluster", "--manifest", str(manifest), "--output", str(tmp_path / "out"), *ARGS])
    assert str(manifest) in line and "16 fine clusters need at least as many captions" in line
    assert not (tmp_path / "out" / "clustering.pt").exists()


def _expert_checkpoint(path, seed):
    torch.manual_seed(seed)
    model = CLIP(**TINY)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": dict(TINY),
                "pytorch-lightning_version": "2.6.6"}, path)  # fmt: skip
    return model.eval()


def test_ensemble_test_run_equals_the_hand_computation(clustered, tmp_path):
    root, _ = clustered
    experts = [_expert_checkpoint(tmp_path / f"e{k}.ckpt", k) for k in range(2)]
    argv = ["test", "--model", "litzoo.modules.mode.MoDEEnsemble", "--model.experts", f"[{tmp_path / 'e0.ckpt'}, {tmp_path / 'e1.ckpt'}]",
            "--model.clustering", str(root / "clusters" / "clustering.pt"), "--model.temperature", "0.01", "--data", "litzoo.datamodules.two_domain_captions.TwoDomainCaptionsDataModule",
            "--data.root", str(root), "--data.vocab_size", "128", "--data.task", "A", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]  # fmt: skip
    from litzoo.cli.lightning_cli import LitzooCLI

    cli = LitzooCLI(args=argv, parser_kwargs={"exit_on_error": False})
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    data = TwoDomainCaptionsDataModule(root=str(root), vocab_size=128, task="A")
    dataset = data.dataset("test")
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    # a sharp softmax (temperature 0.01, not the official 8) so that the weighted ensemble differs from the uniform one
    mode = MoDE(experts, ModeClustering.load(root / "clusters" / "clustering.pt"), temperature=0.01)
    with torch.no_grad():
        logits = mode(images, mode.class_embeddings(data.tokenizer, data.class_names, ["{}"]))
        weights, _, _ = mode.task_weights(data.class_names, ["{}"])

    def acc(x):
        return float((x.argmax(1) == dataset.labels).float().mean())

    assert acc(ensemble_logits(logits, weights)) != acc(logits.mean(0))  # the test can tell them apart
    assert logged["test/zero_shot_acc/weighted"] == pytest.approx(acc(ensemble_logits(logits, weights)), abs=1e-6)
    assert logged["test/zero_shot_acc/uniform"] == pytest.approx(acc(logits.mean(0)), abs=1e-6)
    for k in range(2):
        assert logged[f"test/zero_shot_acc/expert_{k}"] == pytest.approx(acc(logits[k]), abs=1e-6)
        assert logged[f"test/weight/expert_{k}"] == pytest.approx(float(weights[k]), abs=1e-6)


def test_ensemble_with_a_bad_clustering_file_is_one_line(clustered, tmp_path, capsys):
    _expert_checkpoint(tmp_path / "e0.ckpt", 0)
    bad = tmp_path / "clustering.pt"
    bad.write_text("not a clustering")
    line = one_error_line(capsys, ["test", "--model", "litzoo.modules.mode.MoDEEnsemble", "--model.experts", f"[{tmp_path / 'e0.ckpt'}]",
                                   "--model.clustering", str(bad), "--data", "litzoo.datamodules.two_domain_captions.TwoDomainCaptionsDataModule",
                                   "--data.root", str(clustered[0]), "--data.vocab_size", "128"])  # fmt: skip
    assert str(bad) in line and "is not a torch file" in line
