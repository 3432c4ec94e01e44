"""GPT causal LM (modules/gpt.py): causality, tied head, loss going down on a tiny corpus, vocab from the datamodule."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument

from litzoo.datamodules.text_corpus import TextCorpusDataModule
from litzoo.framework.errors import LitzooError
from litzoo.modules.gpt import GPT, GPTLanguageModel


def test_later_tokens_do_not_change_earlier_logits():
    torch.manual_seed(0)
    net = GPT(vocab_size=50, context_length=16, dim=32, depth=2, num_heads=4).eval()
    tokens = torch.randint(0, 50, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    with torch.no_grad():
        a, b = net(tokens), net(changed)
    assert a.shape == (2, 12, 50)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    assert net.head.weight is net.token_embedding.weight
    with pytest.raises(ValueError, match="context_length"):
        net(torch.zeros(1, 17, dtype=torch.long))


def test_loss_decreases_on_a_tiny_corpus():
    torch.manual_seed(0)
    model = GPTLanguageModel(vocab_size=20, context_length=16, dim=32, depth=2, num_heads=4, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    pattern = torch.arange(17) % 5 + 3  # a periodic sequence: every next token is predictable
    batch = {"tokens": pattern.repeat(8, 1)}
    optimizer = model.configure_optimizers()
    losses = []
    for _ in range(40):
        logits, targets = model._logits_targets(batch)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    # positions, norms and biases are not decayed; matrices and the tied embedding are
    decayed, plain = (g["params"] for g in optimizer.param_groups)
    assert model.net.pos_embed in plain and model.net.token_embedding.weight in decayed
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_vocab_size_from_the_datamodule_and_fit(tmp_path):
    path = tmp_path / "c.jsonl"
    sentences = ["The farmer carried the basket to the market.", "A teacher opened the window near the river."]
    path.write_text("".join(json.dumps({"text": "\n".join(sentences[i % 2:] + sentences[: i % 2])}) + "\n" for i in range(40)))
    dm = TextCorpusDataModule(path=str(path), block_size=16, batch_size=4, bpe_vocab_size=64)
    model = GPTLanguageModel(context_length=16, dim=32, depth=1, num_heads=2)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, dm)
    assert model.hparams.vocab_size == dm.vocab_size and model.net.head.out_features == dm.vocab_size
    assert {"train/loss", "val/loss", "val/ppl"} <= set(trainer.callback_metrics)
    ppl, loss = trainer.callback_metrics["val/ppl"], trainer.callback_metrics["val/loss"]
    assert ppl.item() == pytest.approx(loss.exp().item(), rel=0.05)  # perplexity = exp(mean NLL)
    # a checkpoint rebuilds the network from the stored vocab_size
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    again = GPTLanguageModel.load_from_checkpoint(ckpt, weights_only=False)
    tokens = torch.randint(0, dm.vocab_size, (1, 8))
    torch.testing.assert_close(again.eval()(tokens), model.eval()(tokens))


def test_setup_errors_are_clear():
    model = GPTLanguageModel(context_length=8, dim=16, depth=1, num_heads=2)
    with pytest.raises(RuntimeError, match="no network yet"):
        model(torch.zeros(1, 4, dtype=torch.long))
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    model.trainer = trainer
    with pytest.raises(LitzooError, match="vocab_size"):
        model.setup("fit")


# ---------------------------------------------------------------- network arguments: GPT's signature is the source
def test_network_arguments_are_forwarded_flat_and_rebuild_the_module():
    model = rebuilds_from_flat_hparams(GPTLanguageModel, vocab_size=30, context_length=12, dim=16, depth=3, num_heads=2, mlp_ratio=2.0)
    net = model.net
    assert len(net.blocks) == 3 and net.pos_embed.shape == (1, 12, 16) and net.blocks[0].mlp.fc1.out_features == 32
    assert net.blocks[0].attn.num_heads == 2 and net.head.out_features == 30
    # without a vocabulary the forwarded arguments wait for setup, and give the same module once it is known
    later = GPTLanguageModel(context_length=12, dim=16, depth=3, num_heads=2, mlp_ratio=2.0)
    assert later.net is None and later.hparams.vocab_size is None
    later.build(30)  # what setup does with the datamodule's vocab_size
    assert dict(later.hparams) == dict(model.hparams)
    assert {k: v.shape for k, v in later.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_a_misspelt_network_argument_is_named():
    refuses_misspelt_argument(GPTLanguageModel, "GPT", "dimm", "dim", context_length=8)


def test_setup_refuses_blocks_longer_than_the_built_context():
    class Data(L.LightningDataModule):
        vocab_size, block_size = 30, 16

    model = GPTLanguageModel(context_length=12, dim=16, depth=1, num_heads=2)
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(LitzooError, match="block_size 16 exceeds the model's context_length 12"):
        trainer.fit(model, Data())


def test_cli_help_lists_the_network_arguments_with_types(capsys):
    help_lists("litzoo.modules.gpt.GPTLanguageModel", capsys, {
        "vocab_size": "int | null, default: null", "context_length": "int, default: 1024", "dim": "int, default: 768",
        "depth": "int, default: 12", "num_heads": "int, default: 12", "mlp_ratio": "float, default: 4.0",
    })  # fmt: skip
