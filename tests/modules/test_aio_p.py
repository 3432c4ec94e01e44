"""AIO-P (modules/aio_p.py): K-Adapter phases, the fine-tuning rescale, transfer and checkpoints, on a
SYNTHETIC multi-task benchmark (no network training)."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_pre_hook

from litzoo.datamodules.architecture_tasks import MultiTaskArchitectureDataModule, synthetic_task_benchmark
from litzoo.framework.errors import LitzooError
from litzoo.modules.aio_p import AIOPModule, adam_aio_p, inverse

TINY = {"embed_dim": 8, "hidden_dim": 8, "num_layers": 2}


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def _adam(params):
    return torch.optim.Adam(params, lr=1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> MultiTaskArchitectureDataModule:
    path = synthetic_task_benchmark(tmp_path_factory.mktemp("aio") / "syn.jsonl", per_family=4, seed=0)
    dm = MultiTaskArchitectureDataModule(str(path), finetune_samples=3, batch_size=8)
    dm.setup()
    return dm


def _trainer(epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kwargs)  # fmt: skip


class ChangedParameters(L.Callback):
    """Names of the parameter groups whose values changed in each training epoch."""

    def __init__(self) -> None:
        self.changed: list[set[str]] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.before = {n: p.detach().clone() for n, p in module.model.named_parameters()}

    def on_train_epoch_end(self, trainer, module) -> None:
        groups = set()
        for name, p in module.model.named_parameters():
            if not torch.equal(p.detach(), self.before[name]):
                groups.add(".".join(name.split(".")[:2]) if name.startswith("adapter") else name.split(".")[0])
        self.changed.append(groups)


@pytest.fixture(scope="module")
def trained(data) -> AIOPModule:
    torch.manual_seed(0)
    module = AIOPModule(base_epochs=1, adapter_epochs=1, adapter_tasks=[0, 1], optimizer=_adam, **TINY)
    recorder = ChangedParameters()
    _trainer(3, callbacks=[recorder]).fit(module, data)
    module.recorded = recorder.changed
    return module.eval()


def test_base_then_adapters_train_in_sequence_with_the_rest_frozen(trained):
    # epoch 0: base encoder + head; epoch 1: adapter 0 (body + head); epoch 2: adapter 1; α, b never
    assert trained.recorded == [{"encoder", "head"}, {"adapters.0", "adapter_heads.0"}, {"adapters.1", "adapter_heads.1"}]
    assert int(trained.adapters_trained) == 2 and int(trained.phase) == 2
    assert not any(p.requires_grad for p in trained.model.encoder.parameters())
    assert all(p.requires_grad for p in trained.model.adapters[1].parameters())
    assert not any(p.requires_grad for p in trained.model.adapters[0].parameters())


def test_unseen_task_is_the_mean_of_the_adapters(trained, data):
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        mean = (trained.model.adapter(batch, 0) + trained.model.adapter(batch, 1)) / 2
        assert torch.allclose(trained.unseen_task(batch), mean)
        preds = trained(batch)
        target = batch.task == 2
        assert torch.allclose(preds[target], mean[target])
        assert torch.allclose(preds[batch.task == 1], trained.model.adapter(batch, 1)[batch.task == 1])
        # predictions in task units: the inverse of the per-graph normalisers
        back = inverse(preds, batch)
        assert torch.allclose(back, (preds * batch.norm_std + batch.norm_mean) * batch.norm_div)


def test_rescale_is_identity_at_init_and_learns(trained, data):
    batch = next(iter(data.finetune_dataloader(shuffle=False)))
    m = trained.model
    with torch.no_grad():  # α = 1, b = 0: the adapter's head unchanged
        from torch_geometric.nn import global_mean_pool

        states = m.base_states(batch)
        z = torch.cat([global_mean_pool(states[-1], batch.batch), m.adapters[0](states, batch.edge_index, batch.batch)], dim=-1)
        assert torch.allclose(m.adapter(batch, 0, states), m.adapter_heads[0](z).view(-1), atol=1e-6)

    def loss(module):
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(module.unseen_task(batch), batch.y))

    tuned = trained.finetune(data.finetune_dataloader(), mode="rescale", epochs=60, lr=5e-2)
    assert loss(tuned) < loss(trained)
    assert not torch.equal(tuned.model.alpha, trained.model.alpha) and tuned.model.b.abs().sum() > 0
    for name, p in tuned.model.named_parameters():  # everything else is untouched
        if name not in ("alpha", "b"):
            assert torch.equal(p, dict(trained.model.named_parameters())[name]), name
    assert torch.equal(trained.model.alpha, torch.ones(2))  # the original is not modified


def test_heads_finetune_changes_only_the_adapter_heads(trained, data):
    tuned = trained.finetune(data.finetune_dataloader(), mode="heads", epochs=5, lr=1e-2)
    changed = {n.split(".")[0] for n, p in tuned.model.named_parameters() if not torch.equal(p, dict(trained.model.named_parameters())[n])}
    assert changed == {"adapter_heads"}
    everything = trained.finetune(data.finetune_dataloader(), mode="all", epochs=1, lr=1e-2)
    changed = {
        n.split(".")[0] for n, p in everything.model.named_parameters() if not torch.equal(p, dict(trained.model.named_parameters())[n])
    }
    assert changed == {"encoder", "adapters", "adapter_heads"}  # the base head is not on the adapters' path


def test_single_task_baseline_has_no_adapters(data):
    torch.manual_seed(0)
    module = AIOPModule(adapter_tasks=[], base_epochs=1, optimizer=_adam, **TINY)
    _trainer(2).fit(module, data)
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        assert torch.allclose(module.eval().unseen_task(batch), module.model.base(batch))
    with pytest.raises(LitzooError) as error:
        module.finetune(data.finetune_dataloader(), mode="rescale")
    assert "no adapter" in _one_line(error)


def test_test_logs_per_task_and_target_metrics(trained, data):
    results = _trainer(1).test(trained, data, verbose=False)[0]
    for key in ("test/srcc", "test/kendall", "test/mae", "test/top10", "test/task0/srcc", "test/task1/mae", "test/task2/srcc"):
        assert key in results
    assert results["test/srcc"] == pytest.approx(results["test/task2/srcc"])


def test_checkpoint_round_trip(trained, data, tmp_path):
    trainer = _trainer(1)
    trainer.strategy.connect(trained)
    path = tmp_path / "aio.ckpt"
    trainer.save_checkpoint(path)
    loaded = AIOPModule.load_from_checkpoint(path, weights_only=False).eval()
    assert int(loaded.adapters_trained) == 2 and loaded.adapter_tasks == [0, 1]
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        assert torch.allclose(loaded(batch), trained(batch))


def test_bad_settings_are_one_line_errors(trained, data):
    with pytest.raises(LitzooError) as error:
        AIOPModule(adapter_tasks=[0, 5], num_tasks=3)
    assert "task ids" in _one_line(error)
    with pytest.raises(LitzooError) as error:
        AIOPModule(adapter_tasks=[1, 1])
    assert "distinct" in _one_line(error)
    with pytest.raises(LitzooError) as error:
        trained.finetune(data.finetune_dataloader(), mode="everything")
    assert "'rescale', 'heads' or 'all'" in _one_line(error)


# ---------------------------------------------------------------- network arguments: AIOPredictor's signature is the source
def test_network_arguments_are_forwarded_flat_and_rebuild_the_module():
    module = rebuilds_from_flat_hparams(AIOPModule, adapter_tasks=[0, 1], base_epochs=2, embed_dim=8, hidden_dim=12, num_layers=2,
                                        eigvec_size=2, flip_prob=0.25)  # fmt: skip
    m = module.model
    assert m.num_adapters == 2 and m.encoder.hidden_dim == 12 and m.encoder.eigvec_size == 2 and m.encoder.flip_prob == 0.25
    assert len(m.adapters[0].convs) == 2 and m.adapter_heads[0][0].in_features == 24 and m.b.shape == (2, 13)


def test_network_argument_errors():
    refuses_misspelt_argument(AIOPModule, "AIOPredictor", "hidden_dims", "hidden_dim")
    with pytest.raises(ValueError, match=r"^AIOPModule: AIOPredictor's 'num_adapters' is set by AIOPModule itself"):
        AIOPModule(num_adapters=3)  # len(adapter_tasks)


def test_cli_help_lists_the_network_arguments_with_the_official_defaults(capsys):
    help_lists("litzoo.modules.aio_p.AIOPModule", capsys, {
        "adapter_tasks": "Sequence[int]", "embed_dim": "int, default: 32", "hidden_dim": "int, default: 32", "num_layers": "int, default: 6",
        "eigvec_size": "int, default: 0", "flip_prob": "float, default: 0.0",
    }, hidden=["num_adapters"])  # fmt: skip


# ---------------------------------------------------------------- the official recipe: Adam 1e-4, gradients clipped at norm 5.0
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "aio_p" / "architectures.yaml"
OFFICIAL_LR, OFFICIAL_MAX_GRAD_NORM = 1e-4, 5.0  # run_gpi_acc_predictor.py -initial_lr; params.py -max_gradient_norm


class StepGradients:
    """The optimizer's gradients as ``step`` sees them (after any clipping), for every step while active; only for
    optimizers stepped without a closure (Lightning's closure computes the gradients inside ``step``)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.grads: list[list[Tensor]] = []

    def __enter__(self) -> StepGradients:
        def hook(optimizer, args, kwargs):
            self.grads.append(_grads(optimizer))
            self.norms.append(_norm(self.grads[-1]))

        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _norm(grads: list[Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def official_clip(grads: list[Tensor], max_norm: float) -> list[Tensor]:
    """model_perf_predictor.py:114, torch.nn.utils.clip_grad_norm_(params, max_norm), written out."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    return [g * torch.clamp(max_norm / (total + 1e-6), max=1.0) for g in grads]


def _grads(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


class LoudAIOP(AIOPModule):
    """The loss times 1000, so the raw gradient norm is far above 5; records the gradients before and after
    Lightning's clipping (on_before_optimizer_step runs before it; configure_gradient_clipping is it)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.raw: list[list[Tensor]] = []
        self.clipped: list[list[Tensor]] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return None if loss is None else loss * 1000

    def on_before_optimizer_step(self, optimizer) -> None:
        if grads := _grads(optimizer):  # none when the batch held no graph of the phase's task (training_step -> None)
            self.raw.append(grads)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if grads := _grads(optimizer):
            self.clipped.append(grads)


def test_the_defaults_are_the_official_recipe():
    assert inspect.signature(AIOPModule).parameters["optimizer"].default is adam_aio_p
    optimizer = adam_aio_p([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == OFFICIAL_LR
    finetune = inspect.signature(AIOPModule.finetune).parameters
    assert finetune["lr"].default == OFFICIAL_LR and finetune["max_grad_norm"].default == OFFICIAL_MAX_GRAD_NORM
    config = yaml.safe_load(CONFIG.read_text())
    assert config["trainer"].get("gradient_clip_val") == OFFICIAL_MAX_GRAD_NORM
    assert config["trainer"].get("gradient_clip_algorithm", "norm") == "norm"
    optimizer = config["model"]["init_args"].get("optimizer")  # absent: the module's default
    assert optimizer is None or (optimizer["class_path"] == "torch.optim.Adam" and optimizer["init_args"]["lr"] == OFFICIAL_LR)


def test_the_config_clips_gradients_at_norm_5_every_step(data):
    trainer_config = yaml.safe_load(CONFIG.read_text())["trainer"]
    torch.manual_seed(0)
    module = LoudAIOP(base_epochs=1, adapter_epochs=1, adapter_tasks=[0], **TINY)
    trainer = _trainer(2, gradient_clip_val=trainer_config.get("gradient_clip_val"),
                       gradient_clip_algorithm=trainer_config.get("gradient_clip_algorithm", "norm"))  # fmt: skip
    trainer.fit(module, data)
    assert len(module.raw) == len(module.clipped) >= 4  # every step of both phases (base, adapter 0)
    for before, after in zip(module.raw, module.clipped, strict=True):
        assert _norm(before) > 2 * OFFICIAL_MAX_GRAD_NORM
        assert _norm(after) == pytest.approx(OFFICIAL_MAX_GRAD_NORM, rel=1e-5)
        for got, want in zip(after, official_clip(before, OFFICIAL_MAX_GRAD_NORM), strict=True):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["rescale", "heads"])
def test_finetune_clips_gradients_at_norm_5_every_step(trained, data, mode):
    batches = []
    for batch in data.finetune_dataloader(shuffle=False):  # labels far off: the raw gradient norm is far above 5
        batch = batch.clone()
        batch.y = batch.y * 1000 + 1000
        batches.append(batch)
    with StepGradients() as stepped:
        trained.finetune(batches, mode=mode, epochs=2)
    assert len(stepped.norms) == 2 * len(batches)
    assert stepped.norms == pytest.approx([OFFICIAL_MAX_GRAD_NORM] * len(stepped.norms), rel=1e-5)
    with StepGradients() as unclipped:
        trained.finetune(batches, mode=mode, epochs=1, max_grad_norm=None)
    assert min(unclipped.norms) > 2 * OFFICIAL_MAX_GRAD_NORM
