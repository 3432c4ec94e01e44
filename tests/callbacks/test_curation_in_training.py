"""CurationInTraining: the selection rule against a hand computation, the fallback, rounds, resuming, shards, a real fit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from litzoo.callbacks.curation_in_training import CurationInTraining
from litzoo.framework.errors import LitzooError

DIM = 4


class Pool:
    """A pool of N captions; caption i's token row is [i]; items are {"index"}."""

    def __init__(self, n: int) -> None:
        self.tokens = torch.arange(n)[:, None]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.tensor(i)}


class Tokenizer:
    """Class name k -> token id 1000 + k."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __call__(self, texts: list[str]) -> Tensor:
        return torch.tensor([[1000 + self.names.index(t)] for t in texts])


class EmbeddingModule(L.LightningModule):
    """encode_text from a fixed table: class k -> unit vector e_k; caption i -> the given row."""

    def __init__(self, caption_embeddings: Tensor) -> None:
        super().__init__()
        self.captions = caption_embeddings
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[tuple[bool, bool]] = []

    def encode_text(self, tokens: Tensor, normalize: bool = True, project: bool = True) -> Tensor:
        self.calls.append((normalize, project, self.training))
        ids = tokens[:, 0]
        rows = torch.where(ids[:, None] >= 1000, F.one_hot((ids - 1000).clamp(min=0), DIM).float(), self.captions[ids.clamp(max=len(self.captions) - 1)])
        return F.normalize(rows, dim=-1) if normalize else rows


def make_callback(similarities: list[float], batch_size: int, curate_every: int, world_size: int = 1, rank: int = 0, **kwargs) -> CurationInTraining:
    """A callback set up on a pool whose caption i has max cosine ``similarities[i]`` to class 0 (and less to the others)."""
    sims = torch.tensor(similarities)
    # unit vectors with cosine s to e_0 and ~0 to e_1..e_3: (s, sqrt(1 - s²), 0, 0) rotated into e_0/e_3 plane
    captions = torch.stack([sims, torch.zeros_like(sims), torch.zeros_like(sims), (1 - sims**2).clamp(min=0).sqrt()], dim=1)
    names = ["a", "b", "c"]
    module = EmbeddingModule(captions)
    module.train()
    datamodule = SimpleNamespace(train_dataset=Pool(len(sims)), batch_size=batch_size, tokenizer=Tokenizer(names), class_names=names, num_workers=0)
    trainer = SimpleNamespace(datamodule=datamodule, world_size=world_size, global_rank=rank, is_global_zero=rank == 0, loggers=[], global_step=0)
    callback = CurationInTraining(curate_every=curate_every, **kwargs)
    callback.setup(trainer, module, "fit")
    return callback


def hand_curation(similarities, order, threshold, min_ratio, producer, round_size):
    """The rule written out as CiT's engine.py:288-296: producer batches in ``order``; > threshold, else the top int(min_ratio·P)."""
    selected = []
    for start in range(0, len(order), producer):
        batch = order[start : start + producer]
        passing = [i for i in batch if similarities[i] > threshold]
        if len(passing) / len(batch) < min_ratio:  # batch_ratio < args.min_ratio
            passing = sorted(batch, key=lambda i: -similarities[i])[: int(min_ratio * len(batch))]  # topk(k=int(min_ratio * P))
            passing = [i for i in batch if i in passing]
        selected += passing
        if len(selected) >= round_size:
            return selected[:round_size]
    raise AssertionError("pool too small for the hand computation")


def test_selection_equals_the_rule_by_hand():
    torch.manual_seed(0)
    similarities = torch.rand(200).mul(0.9).tolist()  # in [0, 0.9)
    callback = make_callback(similarities, batch_size=4, curate_every=5, threshold=0.55, min_ratio=0.1)
    order = callback._shard_order(0).tolist()
    assert sorted(order) == list(range(200))
    selected = callback.curate()
    assert selected == hand_curation(similarities, order, 0.55, 0.1, producer=8, round_size=20)
    assert all(similarities[i] > 0.55 for i in selected)
    # the producer embedded pre-projection, normalised features, with the model in eval mode, then restored it
    assert all(call[:2] == (True, False) and not call[2] for call in callback.pl_module.calls)
    assert callback.pl_module.training
    stats = callback.last_round
    assert stats["curation/selected_ratio"] == pytest.approx(20 / stats["curation/scanned"])
    assert stats["curation/scanned"] % 8 == 0 and stats["curation/fallback_batches"] == 0


def test_fallback_takes_the_top_min_ratio_of_each_producer_batch():
    similarities = [0.01 * (i % 50) for i in range(100)]  # nothing passes 0.9
    callback = make_callback(similarities, batch_size=2, curate_every=2, threshold=0.9, min_ratio=0.25, producer_batch_size=8)
    order = callback._shard_order(0).tolist()
    selected = callback.curate()
    assert selected == hand_curation(similarities, order, 0.9, 0.25, producer=8, round_size=4)
    assert callback.last_round["curation/fallback_batches"] == 2  # 2 per batch, 4 needed


def test_fallback_rounds_down_as_the_official_code():
    # min_ratio·P = 0.3·8 = 2.4: CiT (engine.py:293, topk(k=int(min_ratio * P))) takes 2 per batch, not ceil's 3
    similarities = [0.008 * ((i * 37) % 100) for i in range(100)]  # distinct, nothing passes 0.9
    callback = make_callback(similarities, batch_size=2, curate_every=3, threshold=0.9, min_ratio=0.3, producer_batch_size=8)
    order = callback._shard_order(0).tolist()
    selected = callback.curate()
    assert selected == hand_curation(similarities, order, 0.9, 0.3, producer=8, round_size=6)
    assert callback.last_round["curation/fallback_batches"] == 3  # 2 per batch, 6 needed
    first = order[:8]
    assert selected[:2] == [i for i in first if i in sorted(first, key=lambda i: -similarities[i])[:2]]


def test_fallback_gives_nothing_when_min_ratio_times_p_is_below_one():
    # min_ratio·P = 0.1·8 = 0.8 -> int 0: a batch where nothing passes contributes nothing; only passing captions are kept
    similarities = [0.95 if i % 10 == 0 else 0.004 * ((i * 37) % 200) for i in range(200)]
    callback = make_callback(similarities, batch_size=2, curate_every=2, threshold=0.9, min_ratio=0.1, producer_batch_size=8)
    order = callback._shard_order(0).tolist()
    selected = callback.curate()
    assert selected == hand_curation(similarities, order, 0.9, 0.1, producer=8, round_size=4)
    assert all(similarities[i] > 0.9 for i in selected)
    assert callback.last_round["curation/fallback_batches"] > 0
    # nothing passes and the fallback gives nothing: one clear line instead of an endless loop
    stuck = make_callback([0.1] * 40, batch_size=2, curate_every=2, threshold=0.9, min_ratio=0.1, producer_batch_size=8)
    with pytest.raises(LitzooError, match=r"selected nothing.*= 0\)$"):
        stuck.curate()
    assert stuck.pl_module.training  # the model's mode is restored


def test_rounds_continue_through_the_pool_and_resume_from_a_checkpoint():
    similarities = [0.9] * 30  # everything passes: rounds are consecutive slices of the pass order
    callback = make_callback(similarities, batch_size=2, curate_every=3, threshold=0.5, min_ratio=0.01, producer_batch_size=4)
    first, second = callback.curate(), callback.curate()
    order = callback._shard_order(0).tolist()
    assert first == order[:6] and second == order[8:14]  # whole producer batches are consumed
    state = callback.state_dict()
    third = callback.curate()
    resumed = make_callback(similarities, batch_size=2, curate_every=3, threshold=0.5, min_ratio=0.01, producer_batch_size=4)
    resumed.load_state_dict(state)
    assert resumed.curate() == third
    # past the end of the pool the next pass has a new seeded order; within a round no pair repeats
    for _ in range(5):
        chunk = callback.curate()
        assert len(chunk) == 6 and len(set(chunk)) == 6
    assert callback.pass_index >= 1


def test_an_in_memory_pool_keeps_its_checkpoint_format():
    # pool_shards=None: the pool's size and, per rank, the producer position and the round being trained (pool indices)
    options = dict(batch_size=2, curate_every=3, threshold=0.5, min_ratio=0.01, producer_batch_size=4)
    callback = make_callback([0.9] * 30, **options)
    callback.start_round()
    callback.round_position = 2
    state = callback.state_dict()
    assert state == {"rounds": 1, "pool_size": 30, "ranks": [{"pass_index": 0, "offset": 8, "round": callback.current_round, "round_position": 2}]}
    assert all(isinstance(i, int) for i in state["ranks"][0]["round"]) and callback.current_round == callback._shard_order(0)[:6].tolist()
    resumed = make_callback([0.9] * 30, **options)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # loaded and not used yet: saved as it was
    following = callback.curate()
    assert resumed.start_round() == callback.current_round and resumed.curate() == following
    # negative control: with the offset lost, the round saved mid-way is still finished, but the next one differs
    control = make_callback([0.9] * 30, **options)
    control.load_state_dict({**state, "ranks": [{**state["ranks"][0], "offset": 0}]})
    assert control.start_round() == callback.current_round and control.curate() != following


def test_the_flat_checkpoint_format_of_before_per_rank_states_still_loads_on_one_process():
    # the format before per-rank states (issue 18): one flat position, read as rank 0's of a 1-process run
    options = dict(batch_size=2, curate_every=3, threshold=0.5, min_ratio=0.01, producer_batch_size=4)
    callback = make_callback([0.9] * 30, **options)
    callback.start_round()
    training = callback.start_round()  # the second round, 2 of its 6 pairs trained
    flat = {"pass_index": callback.pass_index, "offset": callback.offset, "rounds": 2, "round": training, "round_position": 2}
    following = [callback.start_round() for _ in range(3)]
    resumed = make_callback([0.9] * 30, **options)
    resumed.load_state_dict(flat)
    assert resumed.start_round() == training  # the round saved mid-way
    assert [resumed.start_round() for _ in range(3)] == following and resumed.rounds == callback.rounds
    older = make_callback([0.9] * 30, **options)  # before issue 18: no round, nothing to finish
    older.load_state_dict({key: flat[key] for key in ("pass_index", "offset", "rounds")})
    assert older.start_round() == following[0]
    # on two processes the flat position is one rank's only: refused in one line rather than trained by both ranks
    two = make_callback([0.9] * 30, world_size=2, rank=1, **options)
    two.load_state_dict(flat)
    with pytest.raises(LitzooError, match=r"one producer position .* but this fit has 2 DDP ranks; resume it on one process$"):
        two.start_round()


def test_an_in_memory_checkpoint_of_another_pool_or_number_of_ranks_is_refused_in_one_line():
    options = dict(batch_size=2, curate_every=3, threshold=0.5, min_ratio=0.01, producer_batch_size=4)
    callback = make_callback([0.9] * 30, **options)
    callback.start_round()
    callback.round_position = 2
    state = callback.state_dict()
    cases = [
        (make_callback([0.9] * 31, **options), state, r"pool of 30 pairs on 1 DDP ranks; this fit has 31 pairs on 1; resume with the same"),
        (make_callback([0.9] * 30, world_size=2, rank=1, **options), state, r"pool of 30 pairs on 1 DDP ranks; this fit has 30 pairs on 2;"),
        (make_callback([0.9] * 30, **options), {**state, "ranks": [{**state["ranks"][0], "round": [0, 30, 1]}]}, r"pool index 30, but the training"),
    ]
    for resumed, saved, message in cases:
        resumed.load_state_dict(saved)
        with pytest.raises(LitzooError, match=message):
            resumed.start_round()
    with pytest.raises(LitzooError, match="saved streaming pool_shards; resume with the same pool_shards$"):
        make_callback([0.9] * 30, **options).load_state_dict({"rounds": 1, "pool": "0123", "num_shards": 2, "ranks": [{}]})


def test_ranks_curate_disjoint_equal_shards():
    similarities = [0.9] * 41
    shards = [make_callback(similarities, batch_size=2, curate_every=2, world_size=2, rank=r)._shard_order(0) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 20
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_arguments_and_protocols_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        CurationInTraining(threshold=1.5)
    with pytest.raises(ValueError, match="min_ratio"):
        CurationInTraining(min_ratio=0)
    with pytest.raises(ValueError, match="curate_every"):
        CurationInTraining(curate_every=0)
    with pytest.raises(ValueError, match="templates"):
        CurationInTraining(templates=["no slot"])
    trainer = SimpleNamespace(datamodule=SimpleNamespace(batch_size=2), world_size=1, global_rank=0)
    with pytest.raises(LitzooError, match="train_dataset"):
        CurationInTraining().setup(trainer, L.LightningModule(), "fit")
    datamodule = SimpleNamespace(train_dataset=Pool(10), batch_size=2, tokenizer=Tokenizer(["a"]), class_names=["a"])
    with pytest.raises(LitzooError, match="encode_text"):
        CurationInTraining().setup(SimpleNamespace(datamodule=datamodule, world_size=1, global_rank=0), L.LightningModule(), "fit")


@pytest.mark.slow
def test_fit_trains_on_curated_rounds_and_restores_the_datamodule(tmp_path_factory):
    from litzoo.datamodules.image_text import DigitsCaptionsDataModule
    from litzoo.modules.clip import CLIPModule

    root = tmp_path_factory.mktemp("digits_captions")
    datamodule = DigitsCaptionsDataModule(root=str(root), shares=(0.2, 0.05, 0.25, 0.3, 0.2), batch_size=16)
    model = CLIPModule(vocab_size=256, embed_dim=16, image_size=8, patch_size=4, in_chans=1, vision_width=16, vision_depth=1, vision_heads=2,
                       context_length=16, text_width=16, text_depth=1, text_heads=2, image_to_text_only=True, warmup_steps=1)  # fmt: skip
    curation = CurationInTraining(threshold=0.55, min_ratio=0.01, curate_every=3)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, callbacks=[curation])  # fmt: skip
    trainer.fit(model, datamodule)
    assert trainer.global_step == 6 and curation.rounds == 2  # one round of curate_every steps per epoch
    assert trainer.num_training_batches == 3
    assert "train_dataloader" not in vars(datamodule)  # the DataModule's own loader is back
    assert len(datamodule.train_dataloader()) == math.ceil(1257 / 16)
    assert 0 < curation.last_round["curation/selected_ratio"] <= 1

