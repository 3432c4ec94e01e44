"""CEIL with CDCC (issue 24, item 2): the augmentation, the prompt and its verbalizer scores against the MLM head, the
filtering on hand-made assignments, the classification loss ignoring ``-1``, the phase schedule, a short fit on the
SYNTHETIC topics (planted topic words as label words), an exact mid-epoch resume and a 2-process DDP fit."""

from __future__ import annotations

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

from litzoo.datamodules.short_text import SyntheticShortTextDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.random_state import derive_seed
from litzoo.framework.resume import ExactResume
from litzoo.framework.text.vocabulary import MASK_ID, PAD_ID
from litzoo.modules.ceil import CEIL, CEILNet, append_prompt, augment_tokens, filter_pseudo_labels, verbalizer_logits

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu",
         "devices": 1, "num_sanity_val_steps": 0}  # fmt: skip
TINY = {"dim": 16, "depth": 1, "num_heads": 2, "projection_dim": 16, "mlm_epochs": 1, "cdcc_epochs": 2, "classification_epochs": 2, "iterations": 1,
        "confidence_threshold": 0.0}  # fmt: skip


@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def data(root, texts_per_topic: int = 40) -> SyntheticShortTextDataModule:
    return SyntheticShortTextDataModule(root=str(root), num_topics=4, texts_per_topic=texts_per_topic, batch_size=32)


# ------------------------------------------------------------------------------------------------ the pieces
def test_augmentation_deletes_then_masks_as_a_loop_does():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 50, (64, 12), generator=generator)
    lengths = torch.randint(1, 13, (64,), generator=generator)
    mask = torch.arange(12)[None, :] < lengths[:, None]
    tokens = torch.where(mask, tokens, torch.zeros_like(tokens))
    tokens[0, 0] = MASK_ID  # a special token is never masked again nor counted as a word to mask
    out, out_mask = augment_tokens(tokens, mask, 0.3, 0.2, torch.Generator().manual_seed(5))
    draw = torch.rand(tokens.shape + (2,), generator=torch.Generator().manual_seed(5))
    for row in range(64):
        n = int(lengths[row])
        kept = [i for i in range(n) if draw[row, i, 0] >= 0.3] or [0]
        # the mask draw travels with the word: it is read at the word's original position
        expected = [MASK_ID if (int(tokens[row, i]) >= 3 and draw[row, i, 1] < 0.2) else int(tokens[row, i]) for i in kept]
        assert out[row, : len(kept)].tolist() == expected, row
        assert out_mask[row].tolist() == [i < len(kept) for i in range(12)]
        assert (out[row, len(kept):] == PAD_ID).all()
    same, same_mask = augment_tokens(tokens, mask, 0.0, 0.0)
    assert torch.equal(same, tokens) and torch.equal(same_mask, mask)


def test_the_prompt_follows_the_text_and_cuts_it_to_fit():
    tokens = torch.tensor([[5, 6, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10]])
    mask = tokens != 0
    template = torch.tensor([11, 12, MASK_ID])
    prompt, prompt_mask, at = append_prompt(tokens, mask, template)
    assert prompt.tolist() == [[5, 6, 11, 12, MASK_ID, 0], [5, 6, 7, 11, 12, MASK_ID]]
    assert prompt_mask.tolist() == [[True] * 5 + [False], [True] * 6]
    assert at.tolist() == [4, 5]
    with pytest.raises(ValueError, match="one \\[MASK\\]"):
        append_prompt(tokens, mask, torch.tensor([11, 12]))


def test_prompt_scores_are_the_mlm_head_logits_at_mask_on_the_verbalizer_words():
    torch.manual_seed(0)
    net = CEILNet(vocab_size=30, max_length=10, num_clusters=3, dim=16, depth=1, num_heads=2).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]])
    mask = tokens != 0
    template = torch.tensor([20, MASK_ID])
    verbalizer = torch.tensor([[3, 4], [25, -1], [-1, -1]])
    scores = net.prompt_logits(tokens, mask, template, verbalizer)
    # by hand: the prompts written out, the full MLM logits, read at [MASK]
    prompts = torch.tensor([[5, 6, 7, 20, MASK_ID, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13, 14, 15, 20, MASK_ID]])
    logits = net.mlm_logits(prompts, prompts != 0)
    at_mask = torch.stack([logits[0, 4], logits[1, 9]])
    assert torch.allclose(scores[:, 0], (at_mask[:, 3] + at_mask[:, 4]) / 2, atol=1e-5)
    assert torch.allclose(scores[:, 1], at_mask[:, 25], atol=1e-5)
    assert (scores[:, 2] == -1e4).all()  # no label word
    assert torch.equal(verbalizer_logits(at_mask, verbalizer[:2, :1]), at_mask[:, [3, 25]])


def test_filtering_keeps_confident_consistent_samples_up_to_each_cluster_s_quota():
    probs = torch.tensor([
        [0.90, 0.10], [0.80, 0.20], [0.95, 0.05], [0.60, 0.40],  # cluster 0: 4 samples
        [0.30, 0.70], [0.10, 0.90], [0.45, 0.55],                # cluster 1: 3 samples
    ])  # fmt: skip
    view0 = torch.tensor([0, 0, 1, 0, 1, 1, 1])  # sample 2 changes cluster in a view: dropped however confident
    view1 = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    labels = filter_pseudo_labels(probs, [view0, view1], confidence_threshold=0.65, keep_ratio=0.5)
    # cluster 0: candidates 0 (0.90), 1 (0.80); quota ceil(0.5·4) = 2 -> both. cluster 1: candidates 4 (0.70), 5 (0.90);
    # quota ceil(0.5·3) = 2 -> both; 3 and 6 are under the threshold
    assert labels.tolist() == [0, 0, -1, -1, 1, 1, -1]
    assert filter_pseudo_labels(probs, [view0, view1], 0.65, 0.25).tolist() == [0, -1, -1, -1, -1, 1, -1]  # the most confident
    assert filter_pseudo_labels(probs, [], 0.0, 1.0).tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_the_classification_loss_ignores_filtered_samples():
    torch.manual_seed(0)
    module = CEIL(num_clusters=3, vocab_size=30, max_positions=8, num_samples=5, dim=16, depth=1, num_heads=2)
    module.verbalizer.copy_(torch.tensor([[3, 4, -1], [5, -1, -1], [6, 7, 8]]))
    module.template_ids.copy_(torch.tensor([9, 10, MASK_ID]))
    module.pseudo_labels.copy_(torch.tensor([2, -1, 0, -1, 1]))
    tokens = torch.randint(3, 30, (5, 8))
    mask = torch.arange(8)[None, :] < torch.tensor([3, 5, 2, 4, 5])[:, None]
    index = torch.arange(5)
    loss, kept = module.classification_loss(tokens, mask, index)
    logits = module.net.prompt_logits(tokens, mask, module.template_ids, module.verbalizer)
    assert int(kept) == 3
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits[[0, 2, 4]], torch.tensor([2, 0, 1]))), abs=1e-6)
    module.pseudo_labels.fill_(-1)
    assert float(module.classification_loss(tokens, mask, index)[0]) == 0.0


def test_the_phase_schedule():
    module = CEIL(mlm_epochs=2, cdcc_epochs=2, classification_epochs=1, iterations=2)
    assert module.total_epochs == 2 + 3 * 2 + 2 * 1
    phases = [module.phase(e) for e in range(module.total_epochs + 1)]
    assert phases == [("mlm", -1), ("mlm", -1), ("cdcc", 0), ("cdcc", 0), ("classification", 0), ("cdcc", 1), ("cdcc", 1),
                      ("classification", 1), ("cdcc", 2), ("cdcc", 2), ("cdcc", 2)]  # fmt: skip
    assert [e for e in range(module.total_epochs + 1) if module.ends_cdcc_phase(e)] == [3, 6, 9]
    alone = CEIL(mlm_epochs=1, cdcc_epochs=3, classification_epochs=0, iterations=0)
    assert [alone.phase(e) for e in range(4)] == [("mlm", -1)] + [("cdcc", 0)] * 3


def test_arguments_are_checked():
    for bad in ({"num_clusters": 1}, {"cdcc_epochs": 0}, {"iterations": 1, "classification_epochs": 0}, {"mlm_probability": 0.0},
                {"cluster_temperature": 0.0}, {"disentangle_weight": -1.0}, {"delete_prob": 1.0}, {"keep_ratio": 0.0},
                {"words_per_cluster": 0}, {"template": "topic :"}, {"dim": 10, "num_heads": 4}):  # fmt: skip
        with pytest.raises(ValueError):
            CEIL(**bad)
    with pytest.raises(LitzooError, match="model.num_clusters"):
        CEIL().setup("fit")


# ------------------------------------------------------------------------------------------------ fits
def fit(root, folder, seed: int, save_at: int = 0, ckpt_path=None, texts_per_topic: int = 40, **overrides) -> tuple[CEIL, L.Trainer]:
    L.seed_everything(seed)
    module = CEIL(**{**TINY, **overrides})
    callbacks = [ExactResume()]
    if save_at:
        callbacks += [ModelCheckpoint(dirpath=folder, filename="{step}", every_n_train_steps=save_at, save_top_k=-1), KillAt(save_at + 1)]
    trainer = L.Trainer(max_epochs=module.total_epochs, limit_val_batches=0, default_root_dir=folder, callbacks=callbacks,
                        **{**QUIET, "enable_checkpointing": bool(save_at)})  # fmt: skip
    if save_at:
        with pytest.raises(Killed):
            trainer.fit(module, datamodule=data(root, texts_per_topic))
    else:
        trainer.fit(module, datamodule=data(root, texts_per_topic), ckpt_path=ckpt_path)
    return module, trainer


class Killed(Exception):
    pass


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Killed


def test_a_short_fit_clusters_the_topics_and_takes_planted_words_as_label_words(tmp_path):
    module, _ = fit(tmp_path / "data", tmp_path / "run", seed=0, texts_per_topic=100, dim=32, num_heads=4, mlm_epochs=3, cdcc_epochs=4,
                    confidence_threshold=0.5)  # fmt: skip
    dm = data(tmp_path / "data", 100)
    dm.setup("fit")
    scores = module.iteration_scores
    assert (scores >= 0).all() and scores.shape == (2, 3)  # both iterations recorded
    assert float(scores[-1, 0]) > 0.6  # 4 topics: chance is about 0.3
    kept = module.pseudo_labels >= 0
    assert 0 < int(kept.sum()) < len(module.pseudo_labels)
    # every label word is a planted word, and the words of one cluster come from one topic
    topic_of = {word: topic for topic, words in enumerate(dm.topic_words) for word in words}
    for row in module.verbalizer.tolist():
        words = [dm.vocabulary.id_to_token(i) for i in row if i >= 0]
        assert words and all(word in topic_of for word in words), words
        assert len({topic_of[word] for word in words}) == 1, words


def test_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    root = tmp_path / "data"
    straight, trainer = fit(root, tmp_path / "straight", seed=0)
    per_epoch = trainer.global_step // straight.total_epochs
    assert per_epoch == 5 and trainer.global_step == straight.total_epochs * per_epoch
    save_at = 3 * per_epoch + 2  # mid-epoch 3: the first classification epoch, pseudo-labels in use
    assert straight.phase(3) == ("classification", 0)
    fit(root, tmp_path / "killed", seed=0, save_at=save_at)
    checkpoint = tmp_path / "killed" / f"step={save_at}.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["epoch"] == 3 and (saved["state_dict"]["pseudo_labels"] >= 0).any()
    resumed, resumed_trainer = fit(root, tmp_path / "resumed", seed=123, ckpt_path=checkpoint)
    assert resumed_trainer.global_step == trainer.global_step
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), name
    other, _ = fit(root, tmp_path / "other", seed=1)  # negative control: another start ends elsewhere
    assert (other.net.cluster_head[2].weight - straight.net.cluster_head[2].weight).abs().max() > 1e-3
    loaded = CEIL.load_from_checkpoint(checkpoint, weights_only=False)  # the checkpoint alone rebuilds net and buffers
    assert torch.equal(loaded.pseudo_labels, saved["state_dict"]["pseudo_labels"]) and torch.equal(loaded.verbalizer, saved["state_dict"]["verbalizer"])


class SaveBeforeTheModuleEpochEnd(L.Callback):
    """Writes a checkpoint in on_train_epoch_end, which Lightning calls on callbacks before the module's own hook — as a
    ModelCheckpoint saving at validation end does (check_val_every_n_epoch > 1)."""

    def __init__(self, epoch: int, path: Path) -> None:
        self.epoch, self.path = epoch, path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_a_checkpoint_written_before_the_filtering_resumes_to_the_same_run(tmp_path):
    root = tmp_path / "data"
    straight, trainer = fit(root, tmp_path / "straight", seed=0)
    assert straight.ends_cdcc_phase(2)
    checkpoint = tmp_path / "end_of_epoch_2.ckpt"
    L.seed_everything(0)
    module = CEIL(**TINY)
    killer = L.Trainer(max_epochs=module.total_epochs, limit_val_batches=0, callbacks=[ExactResume(), SaveBeforeTheModuleEpochEnd(2, checkpoint),
                       KillAt(3 * 5)], **QUIET)  # fmt: skip
    with pytest.raises(Killed):
        killer.fit(module, datamodule=data(root))
    saved = torch.load(checkpoint, weights_only=False)
    assert int(saved["state_dict"]["refreshed_iteration"]) == -1 and (saved["state_dict"]["pseudo_labels"] == -1).all()  # before the filtering
    resumed, _ = fit(root, tmp_path / "resumed", seed=123, ckpt_path=checkpoint)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), name


DDP_SCRIPT = """
import lightning as L, torch
from litzoo.datamodules.short_text import SyntheticShortTextDataModule
from litzoo.modules.ceil import CEIL

class Save(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        state = {{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}}
        torch.save({{"state": state, "world_size": trainer.world_size}}, "{out}/rank%d.pt" % trainer.global_rank)

if __name__ == "__main__":
    L.seed_everything(0)
    module = CEIL(dim=16, depth=1, num_heads=2, projection_dim=16, mlm_epochs=1, cdcc_epochs=1, classification_epochs=1, iterations=1,
                  confidence_threshold=0.0)
    dm = SyntheticShortTextDataModule(root="{out}/data", num_topics=4, texts_per_topic=40, batch_size=16)
    trainer = L.Trainer(max_epochs=module.total_epochs, strategy="ddp_find_unused_parameters_true", devices=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[Save()])
    trainer.fit(module, datamodule=dm)
"""


def test_two_process_ddp_fit_keeps_ranks_and_pseudo_labels_identical(tmp_path: Path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=tmp_path)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["world_size"] == b["world_size"] == 2
    assert (a["state"]["pseudo_labels"] >= 0).any() and (a["state"]["iteration_scores"] >= 0).all()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key


class HeadsAroundTheSecondCDCCPhase(L.Callback):
    """The projection heads (and whether AdamW holds moments for them) at the end of the last classification epoch and
    at the first batch of the next CDCC phase."""

    def __init__(self, last_classification_epoch: int) -> None:
        self.epoch = last_classification_epoch
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.moments_after: bool | None = None

    @staticmethod
    def heads(module: CEIL) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.net.state_dict().items() if k.startswith(("instance_head", "cluster_head"))}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: CEIL) -> None:
        if trainer.current_epoch == self.epoch:
            self.before = self.heads(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: CEIL, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch + 1 and batch_idx == 0:
            self.after = self.heads(pl_module)
            state = trainer.optimizers[0].state
            self.moments_after = any(len(state.get(p, {})) > 0 for p in pl_module.net.cluster_head.parameters())


def test_restart_heads_reinitialises_the_heads_at_each_later_cdcc_phase(tmp_path):
    module = CEIL(**TINY)
    assert module.phase(4) == ("classification", 0) and module.phase(5) == ("cdcc", 1)
    runs = {}
    for restart in (True, False):
        L.seed_everything(0)
        module = CEIL(**TINY, restart_heads=restart)
        probe = HeadsAroundTheSecondCDCCPhase(4)
        L.Trainer(max_epochs=module.total_epochs, limit_val_batches=0, callbacks=[probe], **QUIET).fit(module, datamodule=data(tmp_path / "data"))
        runs[restart] = probe
    restarted, warm = runs[True], runs[False]
    for name, value in warm.before.items():  # the same run until the restart: nothing drawn from the global streams
        assert torch.equal(value, restarted.before[name]), name
    # negative control: without restart the heads go into the CDCC phase as the classification left them, moments kept
    assert all(torch.equal(warm.before[k], warm.after[k]) for k in warm.before) and warm.moments_after
    # with it: fresh PyTorch Linear initialisations drawn in order from the seed (0, iteration 1, 1), no moments
    fresh = [nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)]
    torch.manual_seed(derive_seed(0, 1, 1))
    for layer in fresh:
        layer.reset_parameters()
    names = ("instance_head.0", "instance_head.2", "cluster_head.0", "cluster_head.2")
    for name, layer in zip(names, fresh, strict=True):
        assert torch.equal(restarted.after[f"{name}.weight"], layer.weight.detach()), name
        assert torch.equal(restarted.after[f"{name}.bias"], layer.bias.detach()), name
    assert not restarted.moments_after
    assert not torch.equal(restarted.after["cluster_head.2.weight"], restarted.before["cluster_head.2.weight"])


def test_resumes_around_a_restart_of_the_heads_equal_the_uninterrupted_run(tmp_path):
    root = tmp_path / "data"
    straight, _ = fit(root, tmp_path / "straight", seed=0, restart_heads=True)
    assert straight.phase(5) == ("cdcc", 1) and int(straight.restarted_iteration) == 1
    # (a) mid-epoch 5: the heads were restarted and have trained two steps; the resume must not restart them again
    save_at = 5 * 5 + 2
    fit(root, tmp_path / "killed", seed=0, save_at=save_at, restart_heads=True)
    resumed, _ = fit(root, tmp_path / "resumed", seed=123, ckpt_path=tmp_path / "killed" / f"step={save_at}.ckpt", restart_heads=True)
    # (b) the end of the last classification epoch, before the restart: the resumed run must restart them
    checkpoint = tmp_path / "end_of_epoch_4.ckpt"
    L.seed_everything(0)
    module = CEIL(**TINY, restart_heads=True)
    killer = L.Trainer(max_epochs=module.total_epochs, limit_val_batches=0, callbacks=[ExactResume(), SaveBeforeTheModuleEpochEnd(4, checkpoint),
                       KillAt(5 * 5 + 1)], **QUIET)  # fmt: skip
    with pytest.raises(Killed):
        killer.fit(module, datamodule=data(root))
    assert int(torch.load(checkpoint, weights_only=False)["state_dict"]["restarted_iteration"]) == 0
    from_boundary, _ = fit(root, tmp_path / "from_boundary", seed=123, ckpt_path=checkpoint, restart_heads=True)
    for run in (resumed, from_boundary):
        for (name, a), b in zip(straight.state_dict().items(), run.state_dict().values(), strict=True):
            assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), name
