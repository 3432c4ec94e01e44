"""RandomWalkRegularizer on a node-embedding LightningModule that is not RWR-GAE."""

import lightning as L
import pytest
import torch

from litzoo.callbacks.random_walk_regularizer import RandomWalkRegularizer


class FreeEmbeddings(L.LightningModule):
    """A user model: a free embedding table whose own loss is zero (so only the callback moves it)."""

    def __init__(self, num_nodes=6, dim=4):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(num_nodes, dim) * 0.1)

    def node_embeddings(self, batch):
        return self.table

    def training_step(self, batch, batch_idx):
        return (self.table * 0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def graph():
    e = torch.tensor([(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)]).t()
    return {"edge_index": torch.cat([e, e.flip(0)], 1)}


def fit(callbacks, epochs=150):
    torch.manual_seed(0)
    model = FreeEmbeddings()
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks)
    trainer.fit(model, torch.utils.data.DataLoader([graph()], batch_size=None))
    return model


def test_embeddings_move_as_the_skipgram_loss_says():
    start = fit([], epochs=1).table.detach().clone()
    callback = RandomWalkRegularizer(lr=0.05, walk_length=4, walks_per_node=4, window=2, num_negatives=2)
    model = fit([callback])
    moved = model.table.detach()
    assert not torch.allclose(start, moved)  # negative control: without the callback a zero-lr model does not move
    assert torch.allclose(fit([], epochs=3).table.detach(), start)
    # same-triangle nodes (which co-occur on walks) now score above cross-triangle ones
    context = callback.skipgram.context.weight.detach()
    scores = moved @ context.t()
    same = torch.tensor([[i // 3 == j // 3 for j in range(6)] for i in range(6)])
    assert scores[same].mean() > scores[~same].mean() + 1.0


def test_state_round_trip_and_refusals():
    callback = RandomWalkRegularizer(walk_length=4, window=2)
    fit([callback], epochs=2)
    state = callback.state_dict()
    other = RandomWalkRegularizer(walk_length=4, window=2, seed=5)
    other.load_state_dict(state)
    assert torch.equal(other.generator.get_state(), callback.generator.get_state()) and other._pending is not None
    with pytest.raises(ValueError):
        RandomWalkRegularizer(lr=0)

    class NoEmbeddings(FreeEmbeddings):
        node_embeddings = None

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[RandomWalkRegularizer()])
    with pytest.raises(TypeError, match="node_embeddings"):
        trainer.fit(NoEmbeddings(), torch.utils.data.DataLoader([graph()], batch_size=None))
