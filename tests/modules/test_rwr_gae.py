"""RWR-GAE (modules/rwr_gae.py): the official GAE loss and KL by hand, metrics against brute force, the
regulariser reaching the encoder, and a short run on the SYNTHETIC SBM."""

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litzoo.datamodules.node_graph import KarateClubDataModule, SBMDataModule
from litzoo.modules.rwr_gae import RWRGAE, GraphAutoEncoder, clustering_accuracy, link_prediction_metrics, reconstruction_loss


def test_reconstruction_loss_equals_official_formula():
    torch.manual_seed(0)
    z = torch.randn(4, 3)
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    adj = np.zeros((4, 4))
    adj[[0, 1, 1, 2], [1, 0, 2, 1]] = 1
    pos_weight = (16 - adj.sum()) / adj.sum()  # official: float(N*N - adj.sum()) / adj.sum()
    norm = 16 / ((16 - adj.sum()) * 2)
    logits = (z @ z.t()).numpy()
    labels = adj + np.eye(4)
    sig = 1 / (1 + np.exp(-logits))
    bce = -(pos_weight * labels * np.log(sig) + (1 - labels) * np.log(1 - sig)).mean()
    assert float(reconstruction_loss(z, edge_index, 4)) == pytest.approx(norm * bce, rel=1e-5)


def test_vgae_kl_term_is_official_over_n():
    torch.manual_seed(0)
    net = GraphAutoEncoder(5, 8, 3, variational=True).eval()  # eval: z = mu, so the loss is recon(mu) + KL/N
    x, edge_index = torch.randn(6, 5), torch.tensor([[0, 1, 2, 3, 4, 5], [1, 0, 3, 2, 5, 4]])
    mu, logstd = net.gae.encoder(x, edge_index)
    kld = -0.5 / 6 * torch.mean(torch.sum(1 + 2 * logstd - mu.pow(2) - logstd.exp().pow(2), 1))  # official optimizer.py
    assert torch.isclose(net.loss(x, edge_index), reconstruction_loss(mu, edge_index, 6) + kld, atol=1e-6)


def test_link_metrics_and_hungarian_accuracy_by_brute_force():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    good = link_prediction_metrics(z, torch.tensor([[0], [1]]), torch.tensor([[0], [2]]))
    bad = link_prediction_metrics(z, torch.tensor([[0], [2]]), torch.tensor([[0], [1]]))
    assert good["auc"] == 1.0 and bad["auc"] == 0.0
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([2, 2, 0, 1, 1, 1, 0])
    import itertools
    brute = max(np.mean(np.array([perm[c] for c in clusters]) == labels) for perm in itertools.permutations(range(3)))
    assert clustering_accuracy(labels, clusters) == pytest.approx(brute) and brute == pytest.approx(5 / 7)


def test_walk_step_moves_the_encoder_and_a_plain_gae_does_not_take_it():
    dm = KarateClubDataModule()
    batch = next(iter(dm.train_dataloader()))
    runs = {}
    for reg in (False, True):
        L.seed_everything(0)
        model = RWRGAE(in_channels=34, walk_regularization=reg, num_nodes=34)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0)
        trainer.fit(model, dm)
        runs[reg] = model.node_embeddings(batch).detach()
    # same seed, same GAE step: only the skip-gram step separates them
    assert not torch.allclose(runs[False], runs[True])
    assert len(RWRGAE(in_channels=34, walk_regularization=True, num_nodes=34).configure_optimizers()) == 2
    assert len(RWRGAE(in_channels=34, walk_regularization=False).configure_optimizers()) == 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        RWRGAE(in_channels=4, lr=0)
    with pytest.raises(ValueError):
        RWRGAE(in_channels=4, walk_length=1)


def test_short_run_on_the_sbm_recovers_the_planted_blocks():
    L.seed_everything(0)
    dm = SBMDataModule(blocks=3, block_size=20, p_in=0.4, p_out=0.02, feature_dim=8)
    model = RWRGAE(in_channels=8)
    trainer = L.Trainer(max_epochs=60, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(model, dm)
    result = trainer.test(model, dm, verbose=False)[0]
    assert result["test/nmi"] > 0.8 and result["test/link_auc"] > 0.8
    assert F.cosine_similarity(model.node_embeddings(dm.graph)[0], model.node_embeddings(dm.graph)[1], dim=0) > 0
