"""RecGURU: the layers against torch and a hand loop, the official windows, the gradient penalty and both losses by
hand, the stage schedule and which parameters each update moves, evaluation against brute force, two DDP ranks."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from litzoo.datamodules.interactions import SharedTasteDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.recsys.metrics import full_ranks, rank_metrics, sampled_ranks
from litzoo.framework.resume import ExactResume
from litzoo.modules.recguru import (
    DomainDiscriminator,
    PostNormAttention,
    RecGURU,
    RecGURUModule,
    evaluation_windows,
    gradient_penalty,
    mean_negative_bpr_loss,
    noam_factor,
    sampled_softmax_loss,
    training_windows,
)


@pytest.fixture(scope="module")
def shared_taste(tmp_path_factory) -> SharedTasteDataModule:
    dm = SharedTasteDataModule(root=str(tmp_path_factory.mktemp("recsys")), seed=0, batch_size=64, max_len=12)
    dm.setup("fit")
    return dm


def small_module(**overrides) -> RecGURUModule:
    options = dict(pretrain_epochs=1, adversarial_epochs=1, finetune_epochs=1, critic_iterations=2, d_model=8, d_ff=16, d_k=4, d_v=4,
                   num_blocks=1, dropout=0.1, reconstruction_negatives=4)  # fmt: skip
    return RecGURUModule(**{**options, **overrides})


def quiet_trainer(**overrides) -> L.Trainer:
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    return L.Trainer(**{**options, **overrides})


# ---------------------------------------------------------------------------------------------------- layers
def test_attention_equals_torch_multihead_attention_then_residual_layernorm():
    torch.manual_seed(0)
    layer = PostNormAttention(d_model=8, d_k=4, d_v=4, num_heads=2, dropout=0.0).eval()
    reference = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]))
        reference.in_proj_bias.copy_(torch.cat([layer.query.bias, layer.key.bias, layer.value.bias]))
        reference.out_proj.weight.copy_(layer.out.weight)
        reference.out_proj.bias.copy_(layer.out.bias)
    query, memory = torch.randn(3, 5, 8), torch.randn(3, 6, 8)
    blocked = torch.zeros(3, 5, 6, dtype=torch.bool)
    blocked[0, :, :2] = True  # padding keys of row 0
    blocked[1] = torch.ones(5, 6, dtype=torch.bool).triu(1)[:, :6]  # a causal pattern on row 1
    expected = layer.norm(reference(query, memory, memory, attn_mask=blocked.repeat_interleave(2, 0), need_weights=False)[0] + query)
    torch.testing.assert_close(layer(query, memory, blocked), expected, rtol=1e-5, atol=1e-5)


def test_encoder_representation_equals_a_hand_loop_over_the_unpadded_slots():
    """One encoder layer in eval mode, recomputed slot by slot over the non-padding slots only (padding keys out, the
    post-LN residuals, the feed-forward), equals ``RecGURU.encode`` at the [EOS] slot; the padding's content is irrelevant."""
    torch.manual_seed(1)
    net = RecGURU([7, 5], d_model=6, d_ff=10, d_k=3, d_v=4, num_heads=1, num_blocks=1, dropout=0.0).eval()
    enc_in = torch.tensor([[0, 0, 3, 1, 8]])  # two padding slots, items 3 and 1, [EOS] = 8
    layer = net.encoder[0]
    x = net.item_embeddings[0](enc_in)[0] + net.positions[:5]
    keep = [2, 3, 4]
    q = layer.self_attention.query(x[4])
    keys, values = layer.self_attention.key(x[keep]), layer.self_attention.value(x[keep])
    weights = torch.softmax(keys @ q / math.sqrt(3), 0)
    attended = layer.self_attention.norm(layer.self_attention.out(weights @ values) + x[4])
    ffn = layer.feed_forward
    expected = ffn.norm(attended + ffn.outer(F.gelu(ffn.inner(attended), approximate="tanh")))
    torch.testing.assert_close(net.encode(enc_in, 0)[0], expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        net.item_embeddings[0].weight[0] += 5.0  # the padding row: multiplied out, and blocked as a key
    torch.testing.assert_close(net.encode(enc_in, 0)[0], expected, rtol=1e-5, atol=1e-6)


def test_decoders_are_causal_and_see_the_user_representation():
    torch.manual_seed(2)
    net = RecGURU([9, 9], d_model=8, d_ff=16, d_k=4, d_v=4, num_blocks=2, dropout=0.0).eval()
    enc_in, dec_in, _ = training_windows(torch.tensor([[0, 2, 3, 4, 5, 6]]), net.eos(1))
    states = net.reconstruct(enc_in, dec_in, 1)
    later = dec_in.clone()
    later[0, -1] = 9  # change the last decoder input only
    changed = net.reconstruct(enc_in, later, 1)
    torch.testing.assert_close(states[:, :-1], changed[:, :-1])
    assert not torch.allclose(states[:, -1], changed[:, -1])
    other_user = enc_in.clone()
    other_user[0, 1] = 7  # an item only the encoder sees
    assert not torch.allclose(net.reconstruct(other_user, dec_in, 1)[:, -1], states[:, -1])
    assert (states[0, :2] == 0).all() and (states[0, 2] != 0).any()  # dec_in = [0, 0, 2, 3, 4, 5]: padding slots stay zero


def test_prefix_view_reads_only_the_items_up_to_each_slot():
    """``user_view="prefix"``: slot t's user representation is the encoding of [items up to dec_in[t], EOS], so no
    training target leaks into its own prediction; at the last evaluation slot it is the official window's."""
    torch.manual_seed(3)
    net = RecGURU([9, 9], d_model=8, d_ff=16, d_k=4, d_v=4, num_blocks=1, dropout=0.0).eval()
    dec_in = torch.tensor([[0, 0, 2, 3, 4, 5]])
    users = net.prefix_users(dec_in, 1)
    eos = net.eos(1)
    torch.testing.assert_close(users[0, 3], net.encode(torch.tensor([[0, 0, 0, 2, 3, eos]]), 1)[0])
    torch.testing.assert_close(users[0, 5], net.encode(torch.tensor([[0, 2, 3, 4, 5, eos]]), 1)[0])
    assert (users[0, :2] == 0).all()
    history = torch.tensor([[0, 0, 2, 3, 4, 5]])
    enc_in, dec_in = evaluation_windows(history, eos)
    window = net.recommend(enc_in, dec_in, 1, user_view="window")[:, -1]
    prefix_users = net.prefix_users(dec_in, 1)
    torch.testing.assert_close(prefix_users[0, -1], net.encode(enc_in, 1)[0])  # the last slot sees the whole history
    with pytest.raises(ValueError, match="'window' or 'prefix'"):
        net.recommend(enc_in, dec_in, 1, user_view="all")
    changed = history.clone()
    changed[0, -1] = 7  # the newest item: earlier prefix slots must not move, the window view's do
    _, changed_dec = evaluation_windows(changed, eos)
    before = net.recommend(enc_in, dec_in, 1, user_view="prefix")
    after = net.recommend(evaluation_windows(changed, eos)[0], changed_dec, 1, user_view="prefix")
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert window.shape == (1, 8)


# ---------------------------------------------------------------------------------------------------- windows
def official_windows(seq: list[int], length: int, eos: int) -> tuple[list[int], list[int], list[int]]:
    """The rule of the official ``seq_padding`` written out for the test (left padding, last length - 1 items, EOS)."""
    enc = ([0] * (length - len(seq) - 1) + seq if len(seq) < length else seq[-length + 1 :]) + [eos]
    return enc, ([0, 0] + enc[:-2])[-length:], ([0, 0] + enc[1:-1])[-length:]


def test_training_and_evaluation_windows_follow_the_official_rules():
    L, eos = 6, 20
    for seq in ([3], [3, 4], [3, 4, 5, 6], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6], list(range(1, 12))):
        items = torch.tensor([([0] * L + seq)[-L:]])  # the DataModule's ``items``: the last L items, left-padded
        enc, dec_in, dec_out = (t[0].tolist() for t in training_windows(items, eos))
        expected = official_windows(seq[-L:], L, eos) if len(seq) <= L else official_windows(seq, L, eos)
        assert (enc, dec_in, dec_out) == expected, seq
    enc, dec_in = (t[0].tolist() for t in evaluation_windows(torch.tensor([[0, 0, 3, 4, 5, 6]]), eos))
    assert enc == [0, 3, 4, 5, 6, 20] and dec_in == [0, 0, 3, 4, 5, 6]  # test_seq_gen: dec_in = [0] + enc[:-1]


# ---------------------------------------------------------------------------------------------------- losses
def test_gradient_penalty_equals_the_hand_gradient_on_toy_critics():
    real, fake = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[3.0, 0.0], [2.0, 2.0]])
    alpha = torch.tensor([0.25, 0.5])
    linear = nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[3.0, 4.0]]))  # grad_x = w everywhere, ||w|| = 5
    penalty = gradient_penalty(lambda x: linear(x).view(-1), real, fake, weight=0.1, alpha=alpha)
    assert penalty.item() == pytest.approx(0.1 * (5.0 - 1.0) ** 2)
    penalty.backward()  # differentiable in the critic's weights: d/dw 0.1 (||w|| - 1)^2 = 0.2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(linear.weight.grad, 0.2 * 4.0 * torch.tensor([[3.0, 4.0]]) / 5.0)

    def quadratic(x):
        return (x**2).sum(1)  # grad_x = 2 x

    x = alpha[:, None] * real + (1 - alpha[:, None]) * fake  # (2.5, 0.5) and (1.0, 0.5)
    expected = 0.1 * ((2 * x.norm(dim=1) - 1) ** 2).mean()
    assert gradient_penalty(quadratic, real, fake, weight=0.1, alpha=alpha).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(quadratic, real, fake[:1])


def test_reconstruction_and_recommendation_losses_by_hand():
    positive = torch.tensor([[9.0, 1.0, 2.0]])
    negatives = torch.tensor([[[0.0, 0.0], [0.0, 3.0], [1.0, -1.0]]])
    is_target = torch.tensor([[False, True, True]])  # slot 0 is padding
    ce = [math.log(math.exp(1) + 1 + math.exp(3)) - 1, math.log(math.exp(2) + math.exp(1) + math.exp(-1)) - 2]
    assert sampled_softmax_loss(positive, negatives, is_target).item() == pytest.approx(sum(ce) / 2)
    bpr = [-math.log(1 / (1 + math.exp(-(1 - 1.5)))), -math.log(1 / (1 + math.exp(-(2 - 0.0))))]  # against the mean negative score
    assert mean_negative_bpr_loss(positive, negatives, is_target).item() == pytest.approx(sum(bpr) / 2)
    assert sampled_softmax_loss(positive, negatives, torch.zeros_like(is_target)).item() == 0.0


def test_noam_schedule_and_discriminator_shape():
    assert noam_factor(0, 16, 4) == pytest.approx(16**-0.5 * 1 * 4**-1.5)  # warming up: n w^-1.5
    assert noam_factor(8, 16, 4) == pytest.approx(16**-0.5 * 9**-0.5)  # after: n^-0.5
    critic = DomainDiscriminator(4)
    assert [m.out_features for m in critic if isinstance(m, nn.Linear)] == [20, 40, 20, 1]
    assert critic(torch.randn(3, 4)).shape == (3,)


# ---------------------------------------------------------------------------------------------------- the stages
class ParameterMoves(L.Callback):
    """Which parts (critic, encoder, real decoder, target recommender) each training batch changed."""

    def __init__(self) -> None:
        self.moves: list[tuple[str, set[str]]] = []

    @staticmethod
    def snapshot(module) -> dict[str, torch.Tensor]:
        parts = {"critic": module.critic, "encoder": module.net.encoder, "decoder_real": module.net.decoders[0],
                 "recommender_target": module.net.recommenders[module.target_index]}  # fmt: skip
        return {name: torch.cat([p.detach().flatten() for p in part.parameters()]).clone() for name, part in parts.items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = self.snapshot(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        after = self.snapshot(pl_module)
        self.moves.append((pl_module.stage(), {name for name in after if not torch.equal(after[name], self.before[name])}))


def test_each_update_moves_only_its_part(shared_taste):
    module, moves = small_module(), ParameterMoves()
    quiet_trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=0, callbacks=[moves]).fit(module, datamodule=shared_taste)
    assert module.domains == ["d0", "d1"] and module.target == "d1"
    assert moves.moves == [
        *[("pretrain", {"encoder", "decoder_real"})] * 3,  # the auto-encoder only
        ("adversarial", {"critic"}), ("adversarial", {"critic"}),  # critic_iterations = 2 critic updates
        ("adversarial", {"encoder", "decoder_real"}),  # then one generator update
        *[("finetune", {"encoder", "recommender_target"})] * 3,  # target reconstruction + BPR (the real decoder rests)
    ]  # fmt: skip


def test_stage_schedule_and_popularity_negatives():
    module = small_module(pretrain_epochs=2, adversarial_epochs=3, finetune_epochs=6, popularity_negatives_share=2 / 3)
    assert [module.stage(e) for e in range(12)] == ["pretrain"] * 2 + ["adversarial"] * 3 + ["finetune"] * 7
    # the last 2/3 of the 6 fine-tuning epochs (the official switch at 0.8 N of its 0.6 N .. 1.2 N fine-tuning iterations)
    assert [module.popularity_negatives(e) for e in range(11)] == [False] * 7 + [True] * 4
    assert not any(small_module(popularity_negatives_share=0.0).popularity_negatives(e) for e in range(11))


def test_ablation_without_the_critic_skips_the_critic_batches(shared_taste):
    module, moves = small_module(discriminator=False, finetune_epochs=1), ParameterMoves()
    moves.snapshot = lambda m: {"encoder": torch.cat([p.detach().flatten() for p in m.net.encoder.parameters()]).clone()}
    quiet_trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=0, callbacks=[moves]).fit(module, datamodule=shared_taste)
    assert module.critic is None and len(module.optimizers()) == 3
    assert [m for s, m in moves.moves if s == "adversarial"] == [set(), set(), {"encoder"}]


def test_alignment_pairs_each_overlapping_users_two_representations(shared_taste):
    module = small_module(dropout=0.0)
    quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=shared_taste)
    module.eval()
    overlap = torch.tensor(shared_taste.overlapping_users[:5])
    real = module.net.encode(torch.tensor([[0] * 12]).repeat(5, 1), 0)  # any first-domain representations
    fake = module.net.encode(torch.cat([module.other_history[overlap][:, 1:], torch.full((5, 1), module.net.eos(1))], 1), 1)
    expected = F.mse_loss(real, fake)
    torch.testing.assert_close(module.alignment_loss(real, overlap, 5), expected)
    loners = torch.tensor([u for u in range(1, 400) if not module.is_overlapping[u]][:5])
    assert module.alignment_loss(real, loners, 5).item() == 0.0


# ---------------------------------------------------------------------------------------------------- evaluation
def test_logged_test_metrics_equal_brute_force(shared_taste):
    module = small_module()
    trainer = quiet_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=shared_taste)
    logged = trainer.test(module, datamodule=shared_taste, verbose=False)[0]
    module.eval()
    test = shared_taste.domain_dataset("test", "d1").tensors
    with torch.no_grad():
        state = module(test["seq"])
        table = module.net.item_table(1)
        scores = state @ table.t()
    assert test["seq"].shape[1] == 12 and table.shape[0] == shared_taste.num_items("d1") + 1
    ranks = {"sampled": sampled_ranks(scores.gather(1, test["candidates"])),
             "full": full_ranks(scores, test["target"], shared_taste.exclusion_mask("d1", test["user"], test["target"]))}  # fmt: skip
    for kind, r in ranks.items():
        for name, value in rank_metrics(r, (10,)).items():
            if name == "count":
                continue
            assert logged[f"test/{kind}/{name}"] == pytest.approx(float(value), abs=1e-6), (kind, name)
        for name, value in rank_metrics(r, (10,), test["sparse"]).items():
            if name == "count":
                continue
            assert logged[f"test/{kind}/sparse/{name}"] == pytest.approx(float(value), abs=1e-6), (kind, name)


def test_bad_arguments_and_settings(shared_taste):
    with pytest.raises(ValueError, match="domain_pair must name two different domains"):
        RecGURUModule(domain_pair=["d0"])
    with pytest.raises(ValueError, match="finetune_epochs >= 1"):
        RecGURUModule(finetune_epochs=0)
    with pytest.raises(ValueError, match="'wgan' or 'bce'"):
        RecGURUModule(adversarial_loss="hinge")
    with pytest.raises(ValueError, match="did you mean 'd_model'"):
        RecGURUModule(d_modle=8)
    with pytest.raises(LitzooError, match="target 'd0' must be one of"):
        quiet_trainer(max_epochs=1, limit_train_batches=1).fit(small_module(target="d0"), datamodule=shared_taste)  # d0 is not evaluated


class Killed(Exception):
    pass


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Killed


def resume_fit(dm: SharedTasteDataModule, folder: Path, seed: int, save_at: int = 0, ckpt_path: Path | None = None) -> RecGURUModule:
    L.seed_everything(seed)
    module = small_module(popularity_negatives_share=1.0)
    callbacks: list[L.Callback] = [ExactResume()]
    if save_at:
        callbacks += [ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=save_at, save_top_k=-1), KillAt(save_at + 1)]
    trainer = quiet_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0, default_root_dir=folder, callbacks=callbacks,
                            enable_checkpointing=bool(save_at))  # fmt: skip
    if save_at:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=dm)
    else:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    assert trainer.global_step == 12 or save_at  # one optimizer step per batch
    return module


def test_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(shared_taste, tmp_path):
    """Killed in the adversarial epoch (after a critic and before the generator turn) on the shuffling loader, resumed
    from the checkpoint: the weights of every part, the critic's included, equal the uninterrupted run's."""
    straight = resume_fit(shared_taste, tmp_path / "straight", seed=0)
    resume_fit(shared_taste, tmp_path / "killed", seed=0, save_at=5)  # epoch 1, batch 1 done
    resumed = resume_fit(shared_taste, tmp_path / "resumed", seed=123, ckpt_path=tmp_path / "killed" / "step=5.ckpt")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), name
    other = resume_fit(shared_taste, tmp_path / "other", seed=1)  # negative control: another seed, other weights
    assert (other.net.encoder[0].feed_forward.inner.weight - straight.net.encoder[0].feed_forward.inner.weight).abs().max() > 1e-4


DDP_SCRIPT = """
import torch, lightning as L
from litzoo.cli import LitzooCLI

class SaveRankWeights(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "world_size": trainer.world_size}}, f"{out}/rank{{trainer.global_rank}}.pt")

LitzooCLI(args=[
    "fit", "-c", "configs/recguru/shared_taste.yaml", "--data.init_args.root", "{out}/data", "--data.init_args.max_len", "12",
    "--model.init_args.d_model", "8", "--model.init_args.d_ff", "16", "--model.init_args.num_blocks", "1",
    "--model.init_args.pretrain_epochs", "1", "--model.init_args.adversarial_epochs", "1", "--model.init_args.finetune_epochs", "1",
    "--model.init_args.critic_iterations", "2",
    "--trainer.strategy", "{strategy}", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
    "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
    "--trainer.default_root_dir", "{out}", "--trainer.enable_progress_bar", "false",
], trainer_defaults={{"callbacks": [SaveRankWeights()]}})
"""


def test_two_process_ddp_fit_keeps_ranks_identical(tmp_path: Path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path, strategy="ddp_find_unused_parameters_true")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and any(k.startswith("critic.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    plain = tmp_path / "plain"
    plain.mkdir()
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=plain, strategy="ddp")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode != 0 and "needs strategy 'ddp_find_unused_parameters_true'" in result.stderr
