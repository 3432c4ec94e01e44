"""Deploy checkpoints (litzoo.framework.deploy) load back into a user's LightningModule that is not an ImageClassifier:
through `callbacks/base.py::EvaluateDeployModel` (the callbacks that wrote them), or the module's own ``on_load_checkpoint``."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from user_models import UserClassifier, loader

from litzoo.callbacks.reparam_fusion import ReparamFusion
from litzoo.callbacks.resrep import ResRepPruning
from litzoo.framework.deploy import (
    DEPLOY_KEY,
    deploy_marker,
    deploy_marker_of,
    is_deploy_checkpoint,
    is_fused_checkpoint,
    pruned_shapes,
    restore_deploy_structure,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.profiling import count_parameters
from litzoo.framework.reparam import RepVGGBlock, fuse_model

OPTIONS = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


class AccuracyUser(UserClassifier):
    """A user's module (not an ImageClassifier, nothing of litzoo in it) that reports its test accuracy."""

    def test_step(self, batch, _):
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", (logits.argmax(-1) == y).float().mean())


class SelfRestoring(AccuracyUser):
    """A user's module that reads deploy checkpoints itself: also for load_from_checkpoint, with no callback."""

    def on_load_checkpoint(self, checkpoint):
        restore_deploy_structure(self, checkpoint)


def evaluation_loader():
    return loader(n=64, seed=2)


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    """A user's RepVGG-block model trained with ReparamFusion: its in-memory deploy model and deploy.ckpt."""
    torch.manual_seed(0)
    module = AccuracyUser("repvgg")
    fusion = ReparamFusion(measure_latency=False)
    trainer = L.Trainer(max_epochs=3, callbacks=[fusion], default_root_dir=tmp_path_factory.mktemp("fused"), **OPTIONS)
    trainer.fit(module, loader(), loader(seed=1))
    (in_memory,) = trainer.test(module, evaluation_loader(), verbose=False)
    return module, fusion.deploy_path, in_memory


def test_a_users_module_tests_from_the_deploy_checkpoint_of_reparam_fusion(fused_run):
    module, path, in_memory = fused_run
    assert is_fused_checkpoint(torch.load(path, weights_only=True))
    assert not any(isinstance(m, RepVGGBlock) for m in module.modules())
    # the fused weights do not fit the module its constructor builds: without the format, loading fails
    with pytest.raises(RuntimeError, match="Missing key"):
        L.Trainer(**OPTIONS).test(AccuracyUser("repvgg"), evaluation_loader(), ckpt_path=path, verbose=False)
    fresh = AccuracyUser("repvgg")
    (from_file,) = L.Trainer(callbacks=[ReparamFusion()], **OPTIONS).test(fresh, evaluation_loader(), ckpt_path=path, verbose=False)
    assert not any(isinstance(m, RepVGGBlock) for m in fresh.modules())
    assert from_file["test_acc"] == in_memory["test_acc"]
    assert from_file["test_loss"] == pytest.approx(in_memory["test_loss"], abs=1e-6)


def test_a_training_checkpoint_is_still_fused_after_loading(fused_run, tmp_path):
    # the hook acts only when the weights do not fit: a training-time file loads as it is, then is fused
    torch.manual_seed(1)
    trained = AccuracyUser("repvgg")
    path = tmp_path / "train.ckpt"
    torch.save({"state_dict": trained.state_dict(), "pytorch-lightning_version": L.__version__}, path)
    fresh, fusion = AccuracyUser("repvgg"), ReparamFusion()
    L.Trainer(callbacks=[fusion], **OPTIONS).test(fresh, evaluation_loader(), ckpt_path=path, verbose=False)
    assert fusion.fused and not any(isinstance(m, RepVGGBlock) for m in fresh.modules())
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), fuse_model(trained.eval())(x), atol=1e-5, rtol=0)


def test_a_module_restores_the_structure_from_its_own_on_load_checkpoint(fused_run):
    module, path, in_memory = fused_run
    loaded = SelfRestoring.load_from_checkpoint(path)  # no trainer, no callback
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), module.eval()(x))
    (from_file,) = L.Trainer(**OPTIONS).test(SelfRestoring("repvgg"), evaluation_loader(), ckpt_path=path, verbose=False)
    assert from_file["test_acc"] == in_memory["test_acc"]


def test_a_users_module_tests_from_the_pruned_checkpoint_of_resrep(tmp_path):
    torch.manual_seed(0)
    module = AccuracyUser("repvgg")
    module.example_input_array = torch.zeros(2, 1, 12, 12)  # ResRep traces the model in setup
    resrep = ResRepPruning(flops_target=0.5, lasso_strength=1e-2, mask_interval=1, warmup_epochs=1, granularity=8)
    trainer = L.Trainer(max_epochs=6, callbacks=[resrep], default_root_dir=tmp_path, num_sanity_val_steps=0, deterministic=True, **OPTIONS)
    trainer.fit(module, loader(), loader(seed=1))
    assert resrep.pruned and resrep.deploy_path.name == "pruned.ckpt"
    (in_memory,) = trainer.test(module, evaluation_loader(), verbose=False)
    checkpoint = torch.load(resrep.deploy_path, weights_only=True)
    assert is_fused_checkpoint(checkpoint) and pruned_shapes(checkpoint)
    fresh = AccuracyUser("repvgg")
    assert count_parameters(module) < count_parameters(fuse_model(fresh))
    (from_file,) = L.Trainer(callbacks=[ResRepPruning()], **OPTIONS).test(fresh, evaluation_loader(), ckpt_path=resrep.deploy_path, verbose=False)
    assert count_parameters(fresh) == count_parameters(module)
    assert from_file["test_acc"] == in_memory["test_acc"]
    assert from_file["test_loss"] == pytest.approx(in_memory["test_loss"], abs=1e-6)


def test_the_marker_and_restoring_it():
    pruned = fuse_model(AccuracyUser("repvgg"))
    pruned.net.body[1].conv = torch.nn.Conv2d(8, 5, 3, padding=1)
    marker = deploy_marker(pruned, fused=True, pruned=True)
    checkpoint = {DEPLOY_KEY: marker, "state_dict": pruned.state_dict()}
    assert deploy_marker_of(checkpoint) == marker and is_deploy_checkpoint(checkpoint)
    assert not is_deploy_checkpoint({"state_dict": {}}) and deploy_marker_of({DEPLOY_KEY: "junk"}) == {}
    fresh = AccuracyUser("repvgg")
    assert restore_deploy_structure(fresh, checkpoint)
    assert fresh.net.body[1].conv.out_channels == 5
    assert not restore_deploy_structure(fresh, checkpoint)  # idempotent: already the deploy structure
    fresh.load_state_dict(checkpoint["state_dict"])
    with pytest.raises(ValueError, match="needs the pruned model"):
        deploy_marker(fused=True, pruned=True)
    other = {DEPLOY_KEY: {"fused": True, "pruned_shapes": {"net.body.9.conv": marker["pruned_shapes"]["net.body.1.conv"]}}}
    with pytest.raises(LitzooError, match=r"checkpoint 'x.ckpt': its pruned layer shapes do not fit AccuracyUser: .*'net.body.9.conv' does not exist"):
        restore_deploy_structure(AccuracyUser("repvgg"), other, "x.ckpt")
