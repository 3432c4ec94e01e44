"""GENNAPE: Laplacian encodings checked as eigenvectors, the k-GNN encoder (official demo shape,
node-order invariance, per-node sign flips), the membership-weighted heads by hand, the training
phases (contrastive → frozen encoder + fuzzy c-means → heads), checkpoints and few-shot fine-tuning."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch_geometric.data import Batch, Data

from litzoo.datamodules.architectures import SyntheticArchitectureDataModule
from litzoo.framework.graph.computation import NUM_NODE_FEATURES
from litzoo.framework.nn.cg import CGEncoder, batch_laplacian_eigenvectors, laplacian_eigenvectors
from litzoo.modules.gennape import FuzzyHeadEnsemble, GENNAPEModule


def _normalized_laplacian(edges: list[tuple[int, int]], n: int) -> torch.Tensor:
    a = torch.zeros(n, n, dtype=torch.float64)
    for s, d in edges:
        a[s, d] = a[d, s] = 1.0
    deg = a.sum(1)
    return torch.eye(n, dtype=torch.float64) - a / torch.sqrt(deg[:, None] * deg[None, :])


def test_laplacian_eigenvectors_are_the_nontrivial_eigenvectors():
    edges = [(0, 1), (1, 2), (2, 3), (1, 3), (3, 4)]  # directed dataflow; the Laplacian is undirected
    vectors = laplacian_eigenvectors(torch.tensor(edges).T, 5, 3).double()
    lap = _normalized_laplacian(edges, 5)
    eigenvalues = torch.linalg.eigvalsh(lap)
    for j in range(3):
        v = vectors[:, j]
        assert v.norm().item() == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(lap @ v, eigenvalues[j + 1] * v, atol=1e-5)  # skips the trivial λ = 0
    # fewer nodes than k + 1: zero columns
    small = laplacian_eigenvectors(torch.tensor([[0], [1]]), 2, 3)
    assert small.shape == (2, 3) and torch.equal(small[:, 1:], torch.zeros(2, 2))


def test_batched_eigenvectors_equal_per_graph_ones():
    g1 = Data(x=torch.zeros(4, 1), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    g2 = Data(x=torch.zeros(3, 1), edge_index=torch.tensor([[0, 0], [1, 2]]))
    batch = Batch.from_data_list([g1, g2])
    stacked = batch_laplacian_eigenvectors(batch.edge_index, batch.batch, 2)
    assert torch.equal(stacked[:4], laplacian_eigenvectors(g1.edge_index, 4, 2))
    assert torch.equal(stacked[4:], laplacian_eigenvectors(g2.edge_index, 3, 2))


def _random_graph(n: int = 7, seed: int = 0) -> Data:
    generator = torch.Generator().manual_seed(seed)
    edges = torch.tensor([[i, j] for i in range(n) for j in range(i + 1, n) if torch.rand(1, generator=generator) < 0.4]).T
    return Data(x=torch.randn(n, NUM_NODE_FEATURES, generator=generator), edge_index=edges)


def test_encoder_has_the_official_demo_shape_and_ignores_node_order():
    torch.manual_seed(0)
    encoder = CGEncoder(eigvec_size=0).eval()
    assert len(encoder.convs) == 6 and encoder.convs[0].out_channels == 32 and type(encoder.convs[0]).__name__ == "GraphConv"
    graph = _random_graph()
    perm = torch.randperm(7)
    inverse = torch.argsort(perm)
    permuted = Data(x=graph.x[perm], edge_index=inverse[graph.edge_index])
    one = encoder(graph.x, graph.edge_index, torch.zeros(7, dtype=torch.long))
    other = encoder(permuted.x, permuted.edge_index, torch.zeros(7, dtype=torch.long))
    assert torch.allclose(one, other, atol=1e-6)
    # edge direction matters (messages flow along the dataflow)
    reversed_ = encoder(graph.x, graph.edge_index.flip(0), torch.zeros(7, dtype=torch.long))
    assert not torch.allclose(one, reversed_, atol=1e-4)


def test_eigenvector_rows_are_sign_flipped_per_node_in_training_only():
    torch.manual_seed(0)
    encoder = CGEncoder(eigvec_size=4, flip_prob=0.25)
    seen = []
    encoder.eig_embed.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    graph = _random_graph(40, seed=1)
    eigvecs = laplacian_eigenvectors(graph.edge_index, 40, 4)
    batch = torch.zeros(40, dtype=torch.long)
    for _ in range(50):
        encoder(graph.x, graph.edge_index, batch, eigvecs)
    ratios = torch.stack([s / eigvecs for s in seen])  # (50, 40, 4): +1 or -1, whole rows at a time
    valid = eigvecs.abs() > 1e-6
    row_sign = ratios[:, :, 0]
    assert torch.allclose(ratios[:, valid.all(dim=1)], row_sign[:, valid.all(dim=1), None].expand(-1, -1, 4))
    flipped = (row_sign < 0).float().mean().item()
    assert abs(flipped - 0.25) < 0.05
    seen.clear()
    encoder.eval()(graph.x, graph.edge_index, batch, eigvecs)
    assert torch.equal(seen[0], eigvecs)


def test_heads_are_weighted_by_fuzzy_memberships_by_hand():
    torch.manual_seed(0)
    ensemble = FuzzyHeadEnsemble(4, num_clusters=2, fuzzifier=2.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        ensemble(torch.randn(3, 4))
    ensemble.centers.copy_(torch.tensor([[0.0, 0, 0, 0], [2.0, 0, 0, 0]]))
    ensemble.fitted.fill_(True)
    z = torch.tensor([[0.5, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
    out = ensemble(z)
    for i in range(2):
        d = [float((z[i] - c).norm()) for c in ensemble.centers]
        u = [1 / sum((d[k] / d[j]) ** 2 for j in range(2)) for k in range(2)]
        expected = sum(u[k] * ensemble.heads[k](z[i : i + 1]).item() for k in range(2))
        assert out[i].item() == pytest.approx(expected, abs=1e-6)
    single = FuzzyHeadEnsemble(4, num_clusters=1)
    assert torch.allclose(single(z), single.heads[0](z).view(-1))


def _datamodule() -> SyntheticArchitectureDataModule:
    return SyntheticArchitectureDataModule(per_family=6, batch_size=8, finetune_samples=3, seed=0)


def _trainer(epochs: int, tmp_path) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, deterministic=True)  # fmt: skip


def test_full_run_freezes_the_encoder_fits_clusters_and_evaluates(tmp_path):
    L.seed_everything(0)
    dm = _datamodule()
    model = GENNAPEModule(hidden_dim=16, embed_dim=16, num_layers=2, eigvec_size=4, contrastive_epochs=2, num_clusters=2)
    snapshots = {}

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots[trainer.current_epoch] = ({k: v.clone() for k, v in pl_module.encoder.state_dict().items()},
                                                {k: v.clone() for k, v in pl_module.heads.state_dict().items()})  # fmt: skip

    trainer = L.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[Snapshot()])  # fmt: skip
    trainer.fit(model, dm)
    enc = lambda e: snapshots[e][0]  # noqa: E731
    heads = lambda e: snapshots[e][1]  # noqa: E731
    changed = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert changed(enc(0), enc(1))  # pretraining trains the encoder ...
    assert not changed(heads(0), heads(1))  # ... and not the heads
    assert not changed(enc(1), enc(2)) and not changed(enc(2), enc(3))  # then the encoder is frozen ...
    assert changed(heads(2), heads(3))  # ... and the heads train
    assert bool(model.heads.fitted) and model.heads.centers.abs().sum() > 0
    srcc = trainer.callback_metrics["val/srcc"]
    assert torch.isfinite(srcc) and -1 <= srcc <= 1
    result = trainer.test(model, dm, verbose=False)[0]
    assert {"test/srcc", "test/kendall", "test/mae", "test/top10"} <= set(result)

    # a checkpoint knows its phase and clusters, and predicts the same
    path = tmp_path / "gennape.ckpt"
    trainer.save_checkpoint(path)
    loaded = GENNAPEModule.load_from_checkpoint(path, weights_only=True).eval()
    assert not loaded.pretraining and bool(loaded.heads.fitted)
    batch = next(iter(dm.test_dataloader()))
    assert torch.allclose(loaded(batch), model.eval()(batch), atol=1e-6)

    # few-shot fine-tuning adapts the heads only (the encoder stays frozen) and fits the few-shot set
    tuned = model.finetune(dm.finetune_dataloader(), epochs=30, lr=1e-3)
    assert all(torch.equal(v, tuned.encoder.state_dict()[k]) for k, v in model.encoder.state_dict().items())
    few = next(iter(dm.finetune_dataloader(shuffle=False)))
    before = torch.nn.functional.mse_loss(model(few), few.y.view(-1))
    after = torch.nn.functional.mse_loss(tuned(few), few.y.view(-1))
    assert after < before


def test_without_contrastive_pretraining_encoder_and_head_train_together(tmp_path):
    L.seed_everything(0)
    model = GENNAPEModule(hidden_dim=16, embed_dim=16, num_layers=2, eigvec_size=0, contrastive_epochs=0, num_clusters=1)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainer = _trainer(1, tmp_path)
    trainer.fit(model, _datamodule())
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert torch.isfinite(trainer.callback_metrics["val/srcc"])


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="requires contrastive_epochs"):
        GENNAPEModule(contrastive_epochs=0, num_clusters=3)
    with pytest.raises(ValueError, match="sign flips"):
        GENNAPEModule(contrastive_epochs=5, eigvec_size=0)
    with pytest.raises(ValueError, match="flip_prob"):
        CGEncoder(flip_prob=1.0)
    with pytest.raises(ValueError, match="num_clusters"):
        FuzzyHeadEnsemble(4, num_clusters=0)


# ---------------------------------------------------------------- network arguments: CGEncoder's signature is the source
def test_network_arguments_are_forwarded_flat_and_rebuild_the_module():
    # every encoder argument given, as GENNAPE checkpoints written before the forwarding stored them (nas-search loads those)
    model = rebuilds_from_flat_hparams(GENNAPEModule, embed_dim=8, hidden_dim=6, num_layers=2, eigvec_size=4, flip_prob=0.5,
                                       contrastive_epochs=1, num_clusters=2, fuzzifier=1.5, cluster_seed=3)  # fmt: skip
    assert model.encoder.hidden_dim == 6 and model.encoder.flip_prob == 0.5 and len(model.encoder.convs) == 2
    assert model.heads.centers.shape == (2, 6) and model.heads.fuzzifier == 1.5  # heads: the encoder's width, GENNAPE's own settings


def test_a_misspelt_network_argument_is_named():
    refuses_misspelt_argument(GENNAPEModule, "CGEncoder", "num_layer", "num_layers", num_clusters=2)


def test_cli_help_lists_the_network_arguments_with_types(capsys):
    help_lists("litzoo.modules.gennape.GENNAPEModule", capsys, {
        "num_clusters": "int, default: 3", "fuzzifier": "float", "embed_dim": "int, default: 32", "hidden_dim": "int, default: 32",
        "num_layers": "int, default: 6", "eigvec_size": "int, default: 8", "flip_prob": "float, default: 0.25",
    }, hidden=["num_node_features"])  # fmt: skip
