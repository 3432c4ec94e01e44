"""The transferable CG predictor (Han et al., SDM 2023): SupCon against a hand computation and against
NT-Xent, the semi-supervised positives on a planted batch (labelled: same family and accuracy bin;
unlabelled: own views only, labels never read), the phases (pretraining moves the encoder and not the
regressor, then the frozen encoder and a training regressor), a checkpoint round trip, fine-tuning, and
bad arguments."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch_geometric.data import Batch, Data

from litzoo.datamodules.architectures import SyntheticArchitectureDataModule
from litzoo.framework.graph.computation import NUM_NODE_FEATURES
from litzoo.framework.losses import NTXentLoss
from litzoo.framework.losses.supcon import SupConLoss
from litzoo.framework.nn.cg import PredictorHead
from litzoo.modules.transferable_predictor import TransferablePredictorModule, contrastive_groups, family_ids

# ---------------------------------------------------------------------------------------- SupCon


def _supcon_by_hand(z: torch.Tensor, labels: list[int], tau: float) -> float:
    zs = [[float(v) for v in row] for row in z]
    zs = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in zs]
    n = len(zs)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    terms = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(dot(zs[i], zs[a]) / tau) for a in range(n) if a != i)
        terms.append(-sum(math.log(math.exp(dot(zs[i], zs[p]) / tau) / denominator) for p in positives) / len(positives))
    return sum(terms) / len(terms)


def test_supcon_equals_a_hand_computation():
    torch.manual_seed(0)
    z = torch.randn(7, 3, dtype=torch.float64)
    labels = [0, 0, 1, 1, 1, 2, 5]  # a group of 2, a group of 3, two singletons (no term of their own)
    loss = SupConLoss(temperature=0.3)(z, torch.tensor(labels))
    assert loss.item() == pytest.approx(_supcon_by_hand(z, labels, 0.3), rel=1e-10)
    # gradients flow, and no positives anywhere gives a zero loss that still backpropagates
    z.requires_grad_(True)
    SupConLoss(0.3)(z, torch.tensor(labels)).backward()
    assert z.grad.abs().sum() > 0
    alone = SupConLoss(0.3)(z, torch.arange(7))
    assert alone.item() == 0.0 and alone.requires_grad


def test_supcon_with_pairs_is_nt_xent():
    torch.manual_seed(1)
    z0, z1 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    groups = torch.arange(5)
    supcon = SupConLoss(0.2)(torch.cat([z0, z1]), torch.cat([groups, groups]))
    assert supcon.item() == pytest.approx(NTXentLoss(0.2)(z0, z1).item(), rel=1e-10)


def test_supcon_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(0.0)
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------------------------------- positives


def test_positives_are_same_family_close_accuracy_labelled_graphs():
    # planted: standardised accuracies, families, labelled flags
    y = torch.tensor([0.10, 0.40, 0.10, 0.60, -0.20, 0.30, 0.30])
    fam = torch.tensor([0, 0, 1, 0, 0, 0, 0])
    labelled = torch.tensor([True, True, True, True, True, False, False])
    groups = contrastive_groups(y, fam, labelled, positive_margin=0.5)
    same = (groups[:, None] == groups[None, :]).fill_diagonal_(False)
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[0, 1] = expected[1, 0] = True  # family 0, both in bin [0, 0.5)
    # 2: same bin but another family; 3: bin [0.5, 1); 4: bin [-0.5, 0); 5, 6: unlabelled (their y is unread)
    assert torch.equal(same, expected)
    # a wider margin joins 0, 1, 3 (bin [0, 1)); margin 0 uses no labels at all
    wide = contrastive_groups(y, fam, labelled, positive_margin=1.0)
    assert wide[0] == wide[1] == wide[3] and wide[4] != wide[0]
    none = contrastive_groups(y, fam, labelled, positive_margin=0.0)
    assert len(set(none.tolist())) == 7
    with pytest.raises(ValueError, match="positive_margin"):
        contrastive_groups(y, fam, labelled, positive_margin=-1.0)


def _graph(n: int, family: str, y: float, seed: int) -> Data:
    generator = torch.Generator().manual_seed(seed)
    edges = torch.tensor([[i, i + 1] for i in range(n - 1)]).T
    return Data(x=torch.randn(n, NUM_NODE_FEATURES, generator=generator), edge_index=edges, y=torch.tensor([y]),
                y_raw=torch.tensor([y]), family=family)  # fmt: skip


class _HeldOut:
    """A datamodule stand-in whose held-out graphs carry NaN labels: reading them would poison the loss."""

    def __init__(self) -> None:
        self.graphs = [_graph(5 + i, "inception", float("nan"), 100 + i) for i in range(3)]

    def test_dataloader(self):
        from torch_geometric.loader import DataLoader

        return DataLoader(self.graphs, batch_size=2)


def test_unlabelled_graphs_join_the_batch_with_their_own_groups_and_unread_labels(monkeypatch):
    torch.manual_seed(0)
    model = TransferablePredictorModule(embed_dim=8, hidden_dim=8, num_layers=2, eigvec_size=2, unlabelled_graphs=4, positive_margin=0.5)
    held_out = _HeldOut()
    monkeypatch.setattr(model, "_unlabelled", None)
    model._trainer = type("T", (), {"datamodule": held_out})()
    batch = Batch.from_data_list([_graph(6, "resnet", 0.1, 0), _graph(7, "resnet", 0.2, 1), _graph(4, "vgg", 0.1, 2)])
    graphs, groups = model.contrastive_batch(batch)
    assert graphs.num_graphs == 7 and groups.shape == (7,)
    assert groups[0] == groups[1] and groups[2] != groups[0]  # same family and bin / another family
    assert len(set(groups[3:].tolist()) | set(groups[:3].tolist())) == 2 + 4  # each unlabelled graph alone
    assert graphs.family[3:] == ["inception"] * 4
    assert all("y" not in d for d in model.unlabelled_pool())
    model._trainer = None  # the pool is cached: no datamodule needed any more
    model.train()
    with pytest.warns(UserWarning, match="log"):
        loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)  # NaN labels of the held-out graphs were never read


# ---------------------------------------------------------------------------------------- phases


def _datamodule() -> SyntheticArchitectureDataModule:
    return SyntheticArchitectureDataModule(per_family=6, batch_size=8, finetune_samples=3, seed=0)


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_pretraining_moves_the_encoder_then_the_regressor_trains_and_checkpoints_round_trip(tmp_path):
    L.seed_everything(0)
    dm = _datamodule()
    model = TransferablePredictorModule(hidden_dim=16, embed_dim=16, num_layers=2, eigvec_size=4, contrastive_epochs=2,
                                        unlabelled_graphs=4)  # fmt: skip
    snapshots = {}

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots[trainer.current_epoch] = (_snapshot(pl_module.encoder), _snapshot(pl_module.heads))

    start = (_snapshot(model.encoder), _snapshot(model.heads))
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[Snapshot()])  # fmt: skip
    trainer.fit(model, dm)
    assert _changed(start[0], snapshots[0][0]) and _changed(snapshots[0][0], snapshots[1][0])  # pretraining: encoder ...
    assert not _changed(start[1], snapshots[1][1])  # ... and not the regressor
    assert not _changed(snapshots[1][0], snapshots[3][0])  # then a frozen encoder ...
    assert _changed(snapshots[1][1], snapshots[2][1]) and _changed(snapshots[2][1], snapshots[3][1])  # ... and a training regressor
    assert isinstance(model.heads, PredictorHead)  # one regressor, no fuzzy clusters
    result = trainer.test(model, dm, verbose=False)[0]
    assert {"test/srcc", "test/kendall", "test/mae", "test/top10"} <= set(result)
    assert all(math.isfinite(v) for v in result.values())

    path = tmp_path / "transferable.ckpt"
    trainer.save_checkpoint(path)
    loaded = TransferablePredictorModule.load_from_checkpoint(path, weights_only=True).eval()
    assert loaded.hparams.positive_margin == 0.5 and loaded.hparams.unlabelled_graphs == 4
    assert not loaded.pretraining
    batch = next(iter(dm.test_dataloader()))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(batch), model(batch), atol=1e-6)

    # few-shot fine-tuning adapts the regressor of a copy; the encoder stays frozen
    tuned = model.finetune(dm.finetune_dataloader(), epochs=5, lr=1e-3)
    assert not _changed(_snapshot(model.encoder), _snapshot(tuned.encoder)) and _changed(_snapshot(model.heads), _snapshot(tuned.heads))


def test_a_checkpoint_with_the_regressor_as_a_one_head_ensemble_loads(tmp_path):
    # before the CG-predictor base took its head from build_head, the one regressor was stored as a one-head fuzzy
    # ensemble: heads.heads.0.*, plus heads.centers and heads.fitted
    torch.manual_seed(0)
    model = TransferablePredictorModule(embed_dim=8, hidden_dim=8, num_layers=2, eigvec_size=2, contrastive_epochs=1).eval()
    model.heads_phase.fill_(True)
    state = {(f"heads.heads.0.{k[len('heads.'):]}" if k.startswith("heads.") else k): v for k, v in model.state_dict().items()}
    state |= {"heads.centers": torch.zeros(1, 8), "heads.fitted": torch.tensor(True)}
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": L.__version__}, path)
    loaded = TransferablePredictorModule.load_from_checkpoint(path, weights_only=True).eval()
    assert set(loaded.state_dict()) == set(model.state_dict()) and not loaded.pretraining
    batch = Batch.from_data_list([_graph(6, "resnet", 0.1, 0), _graph(7, "vgg", 0.2, 1)])
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))


def test_pretraining_loss_is_supcon_on_two_sign_flip_views():
    torch.manual_seed(0)
    model = TransferablePredictorModule(embed_dim=8, hidden_dim=8, num_layers=2, eigvec_size=2, unlabelled_graphs=0, temperature=0.5)
    batch = Batch.from_data_list([_graph(6, "resnet", 0.1, 0), _graph(7, "resnet", 0.2, 1), _graph(8, "vgg", 0.9, 2)])
    model.train()
    captured = {}
    model.contrastive_loss.register_forward_hook(lambda module, args, out: captured.update(z=args[0], labels=args[1]))
    with pytest.warns(UserWarning, match="log"):
        model.training_step(batch, 0)
    z, labels = captured["z"], captured["labels"]
    assert z.shape == (6, model.hparams.projection_dim)
    assert torch.equal(labels[:3], labels[3:]) and labels[0] == labels[1] != labels[2]
    assert not torch.allclose(z[:3], z[3:])  # the views differ (independent sign flips)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="positive_margin"):
        TransferablePredictorModule(positive_margin=-0.1)
    with pytest.raises(ValueError, match="unlabelled_graphs"):
        TransferablePredictorModule(unlabelled_graphs=-1)
    with pytest.raises(ValueError, match="temperature"):
        TransferablePredictorModule(temperature=0.0)
    with pytest.raises(ValueError, match="contrastive_epochs"):
        TransferablePredictorModule(contrastive_epochs=-1)
    with pytest.raises(ValueError, match="eigvec_size"):
        TransferablePredictorModule(eigvec_size=0)  # views are sign flips of the eigenvector encodings


def test_family_ids_follow_the_family_vocabulary():
    batch = Batch.from_data_list([_graph(3, "vgg", 0.0, 0), _graph(3, "resnet", 0.0, 1)])
    assert family_ids(batch).tolist() == [3, 0]


# ---------------------------------------------------------------- network arguments: CGEncoder's signature is the source
def test_network_arguments_are_forwarded_flat_and_rebuild_the_module():
    model = rebuilds_from_flat_hparams(TransferablePredictorModule, embed_dim=8, hidden_dim=6, num_layers=2, eigvec_size=2, flip_prob=0.5,
                                       contrastive_epochs=1, positive_margin=0.25, unlabelled_graphs=0)  # fmt: skip
    assert model.encoder.hidden_dim == 6 and model.encoder.flip_prob == 0.5 and model.heads[0].in_features == 6
    refuses_misspelt_argument(TransferablePredictorModule, "CGEncoder", "embed_dims", "embed_dim")


def test_a_checkpoint_with_the_old_base_hyperparameters_loads(tmp_path):
    # before the CG-predictor base took its head from build_head it had num_clusters, fuzzifier and cluster_seed arguments,
    # so Lightning stored them with this module's (num_clusters 1: the one regressor); they describe nothing here any more
    model = TransferablePredictorModule(embed_dim=8, hidden_dim=8, num_layers=2, eigvec_size=2, contrastive_epochs=1).eval()
    old = {**dict(model.hparams), "num_clusters": 1, "fuzzifier": 2.0, "cluster_seed": 0}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": old, "pytorch-lightning_version": L.__version__}, path)
    loaded = TransferablePredictorModule.load_from_checkpoint(path, weights_only=True).eval()
    assert dict(loaded.hparams) == dict(model.hparams)
    batch = Batch.from_data_list([_graph(6, "resnet", 0.1, 0), _graph(7, "vgg", 0.2, 1)])
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    for wrong in ({"num_clusters": 3}, {"fuzzifier": 2.0}):  # given from Python they are not this module's: refused
        with pytest.raises(ValueError, match=f"unknown network argument '{next(iter(wrong))}'"):
            TransferablePredictorModule(**wrong)


def test_cli_help_lists_the_network_arguments_with_types(capsys):
    help_lists("litzoo.modules.transferable_predictor.TransferablePredictorModule", capsys, {
        "positive_margin": "float, default: 0.5", "embed_dim": "int, default: 32", "hidden_dim": "int, default: 32",
        "num_layers": "int, default: 6", "eigvec_size": "int, default: 8", "flip_prob": "float, default: 0.25",
    }, hidden=["num_node_features", "num_clusters", "fuzzifier", "cluster_seed"])  # fmt: skip
