"""DDP with 2 CPU processes (gloo): the same config scales, and both ranks end with identical weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = """
import sys, torch, lightning as L
from litzoo.cli import LitzooCLI

class SaveRankWeights(L.Callback):
    # after ReparamFusion / StructuralReparam (trainer_defaults come last): the fused weights of each rank
    def on_fit_end(self, trainer, pl_module):
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "world_size": trainer.world_size, "steps": trainer.global_step}}, f"{out}/rank{{trainer.global_rank}}.pt")

LitzooCLI(args=[
    "fit", "-c", "{config}", {extra}
    "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6", "--trainer.limit_val_batches", "2",
    "--trainer.default_root_dir", "{out}", "--trainer.enable_progress_bar", "false",
], trainer_defaults={{"callbacks": [SaveRankWeights()]}})
"""


@pytest.mark.parametrize(
    "config, extra, steps",
    [
        ("configs/repvgg/digits.yaml", "", 6),  # ReparamFusion on litzoo's own RepVGG
        ("configs/dbb/digits.yaml", '"--model.init_args.width", "4",', 6),  # StructuralReparam converting a plain ResNet
        # CLIP gathering features with gradient, trained on the pairs CiT curates on each rank's shard (one round of 5 steps)
        ("configs/cit/digits_captions.yaml", '"--data.init_args.batch_size", "32",', 5),
    ],
)
def test_two_process_ddp_fit_keeps_ranks_identical(tmp_path: Path, config: str, extra: str, steps: int):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(SCRIPT.format(out=tmp_path, config=config, extra=extra)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["steps"] == steps for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and not any("branch_" in k for k in a)  # fused on both ranks
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_process_ddp_gsm_keeps_ranks_identical_and_exactly_sparse(tmp_path: Path):
    # GlobalSparseMomentum selects gradients after DDP's all-reduce and masks identically on every rank
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(SCRIPT.format(out=tmp_path, config="configs/gsm/digits.yaml", extra='"--model.init_args.width", "4",')))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["steps"] == 6 for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    targets = [v for k, v in a.items() if k.endswith("weight") and v.dim() in (2, 4)]
    total = sum(v.numel() for v in targets)
    assert sum(int((v == 0).sum()) for v in targets) == total - round(0.1 * total)  # the final mask, sparsity 0.9
