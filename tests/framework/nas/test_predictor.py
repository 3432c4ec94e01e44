"""The CG-predictor base (framework/nas/predictor.py): its default head, a head injected by ``build_head`` (settings
from the subclass's own hyper-parameters, checkpoints loading with ``load_from_checkpoint`` alone), and the
``on_encoder_frozen`` hook — once when the encoder freezes, once more when a frozen-phase run is resumed."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument
from torch import nn

from litzoo.datamodules.architectures import SyntheticArchitectureDataModule
from litzoo.framework.nas import CGPredictorModule
from litzoo.framework.nn.cg import PredictorHead

TINY = {"embed_dim": 8, "hidden_dim": 8, "num_layers": 2, "eigvec_size": 2}


class _ScaledHead(nn.Module):
    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(z)


class _Recording(CGPredictorModule):
    """A subclass with a setting of its own, an injected head and a record of the frozen-encoder calls."""

    def __init__(self, scale: float = 3.0, contrastive_epochs: int = 1) -> None:
        super().__init__(**TINY, contrastive_epochs=contrastive_epochs)
        self.frozen_calls: list[tuple[int, bool]] = []

    def build_head(self) -> nn.Module:
        return _ScaledHead(self.hparams.hidden_dim, self.hparams.scale)

    def on_encoder_frozen(self) -> None:
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        self.frozen_calls.append((self.current_epoch, trainable))


def _datamodule() -> SyntheticArchitectureDataModule:
    return SyntheticArchitectureDataModule(per_family=3, batch_size=8, seed=0)


def _trainer(epochs: int, tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kwargs)  # fmt: skip


def test_the_default_head_is_one_regressor_answering_one_value_per_graph():
    torch.manual_seed(0)
    model = CGPredictorModule(**TINY, contrastive_epochs=0).eval()
    assert isinstance(model.heads, PredictorHead)
    batch = next(iter(_datamodule().test_dataloader()))
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (batch.num_graphs,)
    assert torch.allclose(out, model.heads(model.embed(batch)).view(-1))


def test_an_injected_head_reads_the_subclass_settings_and_its_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    model = _Recording(scale=5.0)
    assert isinstance(model.heads, _ScaledHead) and model.heads.scale == 5.0
    assert dict(model.hparams)["scale"] == 5.0 and all(not isinstance(v, nn.Module) for v in model.hparams.values())  # flat
    trainer = _trainer(1, tmp_path, enable_checkpointing=False)
    trainer.fit(model, _datamodule())
    path = tmp_path / "recording.ckpt"
    trainer.save_checkpoint(path)
    loaded = _Recording.load_from_checkpoint(path, weights_only=True).eval()
    assert loaded.heads.scale == 5.0
    batch = next(iter(_datamodule().test_dataloader()))
    with torch.no_grad():
        assert torch.allclose(loaded(batch), model.eval()(batch), atol=1e-6)


def test_on_encoder_frozen_runs_when_the_encoder_freezes_and_again_after_a_resume(tmp_path):
    L.seed_everything(0, verbose=False)
    model = _Recording(contrastive_epochs=1)
    trainer = _trainer(3, tmp_path)
    trainer.fit(model, _datamodule())
    assert model.frozen_calls == [(1, False)]  # once, at the first frozen epoch, after the freeze
    last = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    resumed = _Recording(contrastive_epochs=1)
    _trainer(4, tmp_path / "resumed").fit(resumed, _datamodule(), ckpt_path=last)
    assert resumed.frozen_calls == [(3, False)]  # the freeze is re-applied to the fresh module, and told once
    assert not any(p.requires_grad for p in resumed.encoder.parameters())


# ---------------------------------------------------------------- network arguments: CGEncoder's signature is the source
def test_encoder_arguments_are_forwarded_flat_and_the_head_reads_the_built_encoder():
    model = rebuilds_from_flat_hparams(CGPredictorModule, contrastive_epochs=2, projection_dim=6, embed_dim=4, hidden_dim=12,
                                       num_layers=3, eigvec_size=2, flip_prob=0.5)  # fmt: skip
    encoder = model.encoder
    assert (encoder.node_embed.out_features, encoder.hidden_dim, len(encoder.convs), encoder.eigvec_size, encoder.flip_prob) == (4, 12, 3, 2, 0.5)
    assert model.heads[0].in_features == 12 and model.projection[0].in_features == 12 and model.projection[-1].out_features == 6
    # with the encoder's defaults nothing about it is in the hyper-parameters: the head reads the encoder, not them
    default = CGPredictorModule(contrastive_epochs=0)
    assert "hidden_dim" not in default.hparams and default.heads[0].in_features == default.encoder.hidden_dim == 32


def test_encoder_argument_errors():
    refuses_misspelt_argument(CGPredictorModule, "CGEncoder", "hiden_dim", "hidden_dim")
    with pytest.raises(ValueError, match=r"^CGPredictorModule: CGEncoder's 'num_node_features' is set by CGPredictorModule itself"):
        CGPredictorModule(num_node_features=4)  # the graphs' own feature width
    with pytest.raises(ValueError, match="sign flips"):  # read from the built encoder
        CGPredictorModule(contrastive_epochs=1, flip_prob=0.0)


def test_cli_help_lists_the_encoder_arguments_but_not_the_node_features(capsys):
    help_lists("litzoo.framework.nas.CGPredictorModule", capsys, {
        "contrastive_epochs": "int, default: 20", "embed_dim": "int, default: 32", "hidden_dim": "int, default: 32",
        "num_layers": "int, default: 6", "eigvec_size": "int, default: 8", "flip_prob": "float, default: 0.25",
    }, hidden=["num_node_features"])  # fmt: skip
