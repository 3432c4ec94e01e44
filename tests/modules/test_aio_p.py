"""AIO-P (modules/aio_p.py): K-Adapter phases, the fine-tuning rescale, transfer and checkpoints, on a
SYNTHETIC multi-task benchmark (no network training)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument

from litzoo.datamodules.architecture_tasks import MultiTaskArchitectureDataModule, synthetic_task_benchmark
from litzoo.framework.errors import LitzooError
from litzoo.modules.aio_p import AIOPModule, inverse

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
