"""CurationInTraining on a pool streamed from shards (``pool_shards``): the same selection as the in-memory pool in the
same order, each DDP rank on its own shards, bounded reading, the producer's position and round in checkpoints
(a fit stopped mid-round and resumed equals the uninterrupted one), and one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import litzoo.callbacks.curation_in_training as cit_module
from litzoo.callbacks.curation_in_training import CurationInTraining, StreamedPair
from litzoo.framework.errors import LitzooError

DIM = 4
NAMES = ["a", "b", "c"]


# ---------------------------------------------------------------- a pool whose similarities are known
class Tokenizer:
    """Class name k -> token id 1000 + k; caption "caption i" -> token id i."""

    def __call__(self, texts: list[str]) -> Tensor:
        return torch.tensor([[1000 + NAMES.index(t)] if t in NAMES else [int(t.split()[1])] for t in texts])


class EmbeddingModule(L.LightningModule):
    """encode_text from a fixed table: class k -> e_k; caption i -> a unit vector at cosine ``similarities[i]`` to e_0."""

    def __init__(self, similarities: list[float]) -> None:
        super().__init__()
        s = torch.tensor(similarities)
        self.captions = torch.stack([s, torch.zeros_like(s), torch.zeros_like(s), (1 - s**2).clamp(min=0).sqrt()], dim=1)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode_text(self, tokens: Tensor, normalize: bool = True, project: bool = True) -> Tensor:
        ids = tokens[:, 0]
        rows = torch.where(ids[:, None] >= 1000, F.one_hot((ids - 1000).clamp(min=0), DIM).float(), self.captions[ids.clamp(max=len(self.captions) - 1)])
        return F.normalize(rows, dim=-1) if normalize else rows


class Pool:
    """The same captions held in memory: caption i's token row is [i]."""

    def __init__(self, n: int) -> None:
        self.tokens = torch.arange(n)[:, None]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.tensor(i)}


def write_jsonl_shards(folder: Path, layout: list[list[int]]) -> list[Path]:
    """One JSONL shard per list of caption indices: {"id", "text", "image"} lines (a blank line in each, which does not count)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, indices in enumerate(layout):
        lines = [json.dumps({"id": f"{i:05d}", "text": f"caption {i}", "image": f"images/{i}.png"}) for i in indices]
        paths.append(folder / f"pool-{s:03d}.jsonl")
        paths[-1].write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n", encoding="utf-8")
    return paths


def write_tar_shards(folder: Path, layout: list[list[int]]) -> list[Path]:
    """One WebDataset tar shard per list of caption indices: members {key}.txt (the caption) and {key}.png (bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, indices in enumerate(layout):
        paths.append(folder / f"pool-{s:03d}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for i in indices:
                for ext, data in (("png", bytes([i % 256]) * 3), ("txt", f"caption {i}".encode())):
                    info = tarfile.TarInfo(f"{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return paths


def setup_callback(similarities: list[float], batch_size: int, curate_every: int, world_size: int = 1, rank: int = 0, pool=None,
                   **kwargs) -> CurationInTraining:  # fmt: skip
    """A callback set up on the pool of captions with ``similarities`` (streamed when ``pool_shards`` is given)."""
    datamodule = SimpleNamespace(batch_size=batch_size, tokenizer=Tokenizer(), class_names=NAMES, num_workers=0, item_from_record=dict,
                                 train_dataset=pool if pool is not None else Pool(len(similarities)))  # fmt: skip
    trainer = SimpleNamespace(datamodule=datamodule, world_size=world_size, global_rank=rank, is_global_zero=rank == 0, loggers=[], global_step=0)
    callback = CurationInTraining(curate_every=curate_every, **kwargs)
    callback.setup(trainer, EmbeddingModule(similarities).train(), "fit")
    return callback


def random_similarities(n: int, seed: int = 0) -> list[float]:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)).mul(0.9).tolist()


LAYOUT = [list(range(0, 30)), list(range(30, 37)), list(range(37, 78)), list(range(78, 90)), []]  # uneven, one empty shard


def memory_twin(stream: CurationInTraining, similarities: list[float], layout: list[list[int]], **kwargs) -> CurationInTraining:
    """The in-memory callback whose pass order is the streamed one's: the captions of this rank's shards of each pass, in order."""
    memory = setup_callback(similarities, world_size=stream.trainer.world_size, rank=stream.trainer.global_rank, **kwargs)
    memory._shard_order = lambda p: torch.tensor([i for s in stream.rank_shards(p) for i in layout[s]], dtype=torch.long)
    return memory


# ---------------------------------------------------------------- the selection equals the in-memory one
@pytest.mark.parametrize("fmt", ["jsonl", "tar"])
@pytest.mark.parametrize("world_size, rank", [(1, 0), (2, 1)])
def test_streamed_selection_equals_the_in_memory_selection_in_the_same_order(tmp_path, fmt, world_size, rank):
    similarities = random_similarities(90)
    write = write_jsonl_shards if fmt == "jsonl" else write_tar_shards
    write(tmp_path, LAYOUT)
    options = dict(batch_size=4, curate_every=3, threshold=0.6, min_ratio=0.2, producer_batch_size=8)  # fallback: int(1.6) = 1 per batch
    keys = {"jsonl": {"pool_id_key": "id"}, "tar": {"pool_text_key": "txt"}}[fmt]
    stream = setup_callback(similarities, world_size=world_size, rank=rank, pool_shards=str(tmp_path / f"pool-{{000..004}}.{fmt}"), **keys, **options)
    memory = memory_twin(stream, similarities, LAYOUT, **options)
    fallbacks = 0
    for _ in range(12):  # several passes over this rank's shards, with fallback batches and short batches at the ends of passes
        expected, got = memory.curate(), stream.curate()
        assert [pair.key for pair in got] == [f"{i:05d}" for i in expected]
        assert stream.last_round == memory.last_round
        fallbacks += stream.last_round["curation/fallback_batches"]
        assert all(pair.record["txt" if fmt == "tar" else "text"] == f"caption {int(pair.key)}" for pair in got)
    assert stream.pass_index == memory.pass_index >= 3 and fallbacks > 0
    # the default keys of JSONL records: shard name and record number (the blank line not counted)
    if fmt == "jsonl":
        plain = setup_callback(similarities, pool_shards=str(tmp_path), **options)
        first = plain.curate()
        assert all(pair.key == f"{plain.shards[pair.shard].name}:{pair.position}" for pair in first)
        assert [LAYOUT[pair.shard][pair.position] for pair in first] == [int(pair.record["id"]) for pair in first]


def test_a_round_larger_than_the_pool_repeats_pairs_only_after_a_whole_pass(tmp_path):
    similarities = [0.9] * 10  # everything passes; a round of 24 needs more than two passes over 10 pairs
    write_jsonl_shards(tmp_path, [list(range(0, 4)), list(range(4, 10))])
    options = dict(batch_size=4, curate_every=6, threshold=0.5, min_ratio=0.1, producer_batch_size=3)
    stream = setup_callback(similarities, pool_shards=str(tmp_path), pool_id_key="id", **options)
    memory = memory_twin(stream, similarities, [list(range(0, 4)), list(range(4, 10))], **options)
    with pytest.warns(UserWarning, match="more than a whole pass"):
        got = stream.curate()
    assert [pair.key for pair in got] == [f"{i:05d}" for i in memory.curate()]
    assert len(got) == 24 and len({pair.key for pair in got[:10]}) == 10


def test_fallback_and_the_endless_loop_guard_on_a_streamed_pool(tmp_path):
    write_jsonl_shards(tmp_path, [list(range(20)), list(range(20, 40))])
    stuck = setup_callback([0.1] * 40, batch_size=2, curate_every=2, threshold=0.9, min_ratio=0.1, producer_batch_size=8, pool_shards=str(tmp_path))
    with pytest.raises(LitzooError, match=r"selected nothing.*= 0\)$"):
        stuck.curate()
    assert stuck.pl_module.training
    # a rank whose shards hold nothing: one line naming them instead of an endless loop
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jsonl").write_text("\n")
    empty = setup_callback([0.9], batch_size=2, curate_every=2, threshold=0.5, min_ratio=0.1, pool_shards=str(tmp_path / "empty"))
    with pytest.raises(LitzooError, match=r"rank 0 in pass 0 hold no samples: \[.*a\.jsonl'\]$"):
        empty.curate()


def test_pairs_of_equally_named_shards_are_not_taken_for_one_another(tmp_path):
    # default JSONL keys are "<shard name>:<line>": two shards named alike in two folders give the same keys to different pairs
    write_jsonl_shards(tmp_path / "a", [list(range(5))])
    write_jsonl_shards(tmp_path / "b", [list(range(5, 10))])
    callback = setup_callback([0.9] * 10, batch_size=5, curate_every=2, threshold=0.5, min_ratio=0.1, producer_batch_size=10,
                              pool_shards=[str(tmp_path / "a"), str(tmp_path / "b")])  # fmt: skip
    selected = callback.curate()  # a round of 10 from a pool of 10: every pair once, in one pass
    assert sorted(int(pair.record["id"]) for pair in selected) == list(range(10)) and callback.pass_index == 0
    assert len({pair.key for pair in selected}) == 5


# ---------------------------------------------------------------- each rank reads its own shards, one producer batch at a time
def test_each_rank_streams_its_own_shards_in_a_seeded_order_per_pass(tmp_path):
    layout = [list(range(10 * s, 10 * s + 10)) for s in range(7)]
    write_jsonl_shards(tmp_path, layout)
    options = dict(batch_size=2, curate_every=2, threshold=0.5, min_ratio=0.1, producer_batch_size=4, pool_shards=str(tmp_path), pool_id_key="id")
    ranks = [setup_callback([0.9] * 70, world_size=3, rank=r, **options) for r in range(3)]
    for p in range(4):
        mine = [rank.rank_shards(p) for rank in ranks]
        assert sorted(sum(mine, [])) == list(range(7)) and [len(m) for m in mine] == [3, 2, 2]  # disjoint, all shards
        order = torch.randperm(7, generator=torch.Generator().manual_seed(p)).tolist()  # seed 0: the pass's seeded shuffle
        assert mine == [order[r::3] for r in range(3)]
    assert ranks[0].rank_shards(0) != ranks[0].rank_shards(1)
    for rank in ranks:  # what a rank curates comes from its own shards of the pass
        for _ in range(6):
            before = rank.pass_index
            selected = {pair.key for pair in rank.curate()}  # a round may run into the next pass
            allowed = {f"{i:05d}" for p in range(before, rank.pass_index + 1) for s in rank.rank_shards(p) for i in layout[s]}
            assert selected <= allowed
    with pytest.raises(LitzooError, match=r"has 7 shard\(s\) for 8 DDP ranks"):
        setup_callback([0.9] * 70, world_size=8, rank=0, **options)


def test_the_producer_reads_one_batch_at_a_time_and_keeps_only_the_selected_records(tmp_path, monkeypatch):
    write_jsonl_shards(tmp_path, LAYOUT)
    read = []

    def counting(*args, **kwargs):
        for sample in original(*args, **kwargs):
            read.append(sample.key)
            yield sample

    original = cit_module.iter_samples
    monkeypatch.setattr(cit_module, "iter_samples", counting)
    callback = setup_callback(random_similarities(90), batch_size=4, curate_every=2, threshold=0.6, min_ratio=0.2, producer_batch_size=8,
                              pool_shards=str(tmp_path))  # fmt: skip
    selected = callback.curate()
    assert len(read) == callback.last_round["curation/scanned"] and len(read) % 8 == 0  # nothing read ahead of the last batch
    assert len(selected) == 8 and all(isinstance(pair, StreamedPair) for pair in selected)
    assert callback._samples is not None  # the shard stays open between rounds, at the producer's position
    callback.teardown(callback.trainer, callback.pl_module, "fit")
    assert callback._samples is None


# ---------------------------------------------------------------- the position in checkpoints
def test_the_producer_position_and_the_round_resume_from_a_checkpoint(tmp_path):
    similarities = random_similarities(90, seed=1)
    write_tar_shards(tmp_path, LAYOUT)
    options = dict(batch_size=4, curate_every=3, threshold=0.5, min_ratio=0.2, producer_batch_size=5, pool_shards=str(tmp_path), pool_text_key="txt")
    straight = setup_callback(similarities, **options)
    straight.start_round(), straight.start_round()
    training = straight.start_round()  # the round being trained when the checkpoint is written, 5 of its 12 pairs read
    straight.round_position = 5
    assert straight.offset % 5 != 0 or straight.shard > 0  # the producer stands inside a shard, past a shard boundary
    torch.save(straight.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # numbers, strings and lists only
    assert (state["ranks"][0]["pass_index"], state["ranks"][0]["shard"], state["ranks"][0]["offset"]) == (straight.pass_index, straight.shard, straight.offset)
    following = [[pair.key for pair in straight.start_round()] for _ in range(6)]

    resumed = setup_callback(similarities, **options)
    resumed.load_state_dict(state)
    again = resumed.start_round()  # the round saved mid-way, read back from the shards
    assert again == training  # keys, places and records (image bytes included)
    assert [[pair.key for pair in resumed.start_round()] for _ in range(6)] == following
    # negative control: without the offset inside the shard, the next rounds differ
    control = setup_callback(similarities, **options)
    control.load_state_dict({**state, "ranks": [{**state["ranks"][0], "offset": 0}]})
    control.start_round()
    assert [[pair.key for pair in control.start_round()] for _ in range(6)] != following
    # a round saved at its end is not trained again
    finished = setup_callback(similarities, **options)
    finished.load_state_dict({**state, "ranks": [{**state["ranks"][0], "round_position": 12}]})
    assert [pair.key for pair in finished.start_round()] == following[0]


def test_resuming_on_another_pool_is_refused_in_one_line(tmp_path):
    write_jsonl_shards(tmp_path / "pool", LAYOUT)
    options = dict(batch_size=2, curate_every=2, threshold=0.5, min_ratio=0.2, producer_batch_size=4, pool_shards=str(tmp_path / "pool"), pool_id_key="id")
    callback = setup_callback(random_similarities(90), **options)
    callback.start_round()
    callback.round_position = 1
    state = callback.state_dict()
    shard = callback.shards[callback.current_round[0].shard]
    original = shard.read_text()
    # the shard rewritten with its records in another order: the saved places hold other pairs
    shard.write_text("\n".join(reversed([line for line in original.splitlines() if line.strip()])) + "\n")
    moved = setup_callback(random_similarities(90), **options)
    moved.load_state_dict(state)
    with pytest.raises(LitzooError, match=rf"^pool shard '{shard}' sample \d+ has key '\d+', but the checkpoint's curated round holds '\d+' there"):
        moved.start_round()
    shard.write_text(original.splitlines()[0] + "\n")  # cut short
    cut = setup_callback(random_similarities(90), **options)
    cut.load_state_dict(state)
    with pytest.raises(LitzooError, match=rf"^pool shard '{shard}' has fewer than \d+ samples"):
        cut.start_round()
    shard.write_text(original)
    # another list of shards, another number of ranks, an in-memory checkpoint
    write_jsonl_shards(tmp_path / "other", LAYOUT[:3])
    other = setup_callback(random_similarities(90), **{**options, "pool_shards": str(tmp_path / "other")})
    other.load_state_dict(state)
    with pytest.raises(LitzooError, match=r"another pool or on another number of DDP ranks \(5 shards on 1 ranks; this fit: 3 shards of .* on 1\)"):
        other.start_round()
    with pytest.raises(LitzooError, match="in-memory pool, but pool_shards is given"):
        other.load_state_dict({"pass_index": 0, "offset": 0, "rounds": 1, "round": [], "round_position": 0})  # the flat format
    memory_state = {"rounds": 1, "pool_size": 90, "ranks": [{"pass_index": 0, "offset": 0, "round": [], "round_position": 0}]}
    with pytest.raises(LitzooError, match="in-memory pool, but pool_shards is given"):
        other.load_state_dict(memory_state)  # per rank, as the streamed pool's
    memory = setup_callback(random_similarities(90), batch_size=2, curate_every=2)
    with pytest.raises(LitzooError, match="resume with the same pool_shards"):
        memory.load_state_dict(state)


def test_arguments_and_protocols_of_a_streamed_pool_are_checked(tmp_path):
    with pytest.raises(ValueError, match="pool_shards"):
        CurationInTraining(pool_shards=[])
    with pytest.raises(ValueError, match="pool_text_key"):
        CurationInTraining(pool_text_key="")
    write_jsonl_shards(tmp_path, [[0, 1]])
    datamodule = SimpleNamespace(batch_size=2, tokenizer=Tokenizer(), class_names=NAMES)  # no item_from_record
    trainer = SimpleNamespace(datamodule=datamodule, world_size=1, global_rank=0)
    with pytest.raises(LitzooError, match=r"item_from_record \(missing: \['item_from_record'\]\)"):
        CurationInTraining(pool_shards=str(tmp_path)).setup(trainer, EmbeddingModule([0.5, 0.5]), "fit")
    with pytest.raises(LitzooError, match="matches no file"):
        setup_callback([0.5, 0.5], batch_size=2, curate_every=1, pool_shards=str(tmp_path / "nothing-*.tar"))
    callback = setup_callback([0.5, 0.5], batch_size=2, curate_every=1, pool_shards=str(tmp_path), pool_text_key="caption")
    with pytest.raises(LitzooError, match=r"pool-000\.jsonl.*'caption'"):
        callback.curate()


def test_a_curated_pair_becomes_a_training_item_with_its_image_path_relative_to_its_shard(tmp_path):
    write_jsonl_shards(tmp_path / "jsonl", [[0, 1]])
    write_tar_shards(tmp_path / "tar", [[0, 1]])
    jsonl = setup_callback([0.9, 0.9], batch_size=2, curate_every=1, threshold=0.5, pool_shards=str(tmp_path / "jsonl"))
    item = jsonl._item(jsonl.curate()[0])  # item_from_record is dict here: the record it was given
    assert item["image"] == str(tmp_path / "jsonl" / "images" / "0.png") and item["text"] == "caption 0"
    tar = setup_callback([0.9, 0.9], batch_size=2, curate_every=1, threshold=0.5, pool_shards=str(tmp_path / "tar"), pool_text_key="txt")
    pairs = tar.curate()
    assert tar._item(pairs[0]) == {"__key__": "00000", "png": bytes([0]) * 3, "txt": "caption 0"}  # the member bytes as they are

    def refuse(record: dict) -> dict:
        raise LitzooError("sample '00001' member '.png' is not an image")

    tar.datamodule.item_from_record = refuse
    with pytest.raises(LitzooError, match=rf"^pool shard '{tmp_path / 'tar' / 'pool-000.tar'}' sample 1 \('00001'\): sample '00001' member '.png' is not"):
        tar._item(pairs[1])


# ---------------------------------------------------------------- two gloo processes: each rank's position in rank 0's checkpoint
DDP_SCRIPT = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_curation_in_training_pool import random_similarities, setup_callback

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=rank, world_size=2)
similarities = random_similarities(90, seed=rank)  # the ranks' models differ, so do their positions

def run(name, **options):
    key = (lambda pair: pair.key) if "pool_shards" in options else int
    callback = setup_callback(similarities, world_size=2, rank=rank, batch_size=2, curate_every=3, threshold=0.5, min_ratio=0.2,
                              producer_batch_size=4, **options)
    callback.start_round()
    training = [key(pair) for pair in callback.start_round()]
    callback.round_position = 2
    state = callback.state_dict()  # collective: every rank's position and round, in the dict rank 0 writes
    saved = [callback.pass_index, callback.shard, callback.offset]
    if rank == 0:
        torch.save(state, {out!r} + f"/{{name}}.pt")
    dist.barrier()
    following = [[key(pair) for pair in callback.start_round()] for _ in range(4)]
    position = [callback.pass_index, callback.shard, callback.offset]
    resumed = setup_callback(similarities, world_size=2, rank=rank, batch_size=2, curate_every=3, threshold=0.5, min_ratio=0.2,
                             producer_batch_size=4, **options)
    resumed.load_state_dict(torch.load({out!r} + f"/{{name}}.pt", weights_only=True))
    return {{"training": training, "following": following, "saved": saved, "position": position,
            "resumed": [key(pair) for pair in resumed.start_round()], "resumed_following": [[key(pair) for pair in resumed.start_round()] for _ in range(4)],
            "resumed_position": [resumed.pass_index, resumed.shard, resumed.offset]}}

result = {{"streamed": run("streamed", pool_shards={pool!r}, pool_id_key="id"), "in-memory": run("in-memory")}}
json.dump(result, open({out!r} + f"/rank{{rank}}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_ranks_each_resume_their_own_position_and_round(tmp_path):
    # both pools in one pair of processes (starting them is most of the time)
    import socket

    write_jsonl_shards(tmp_path / "pool", LAYOUT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent), port=port, pool=str(tmp_path / "pool"), out=str(tmp_path))))
    processes = [subprocess.Popen([sys.executable, str(script), str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for pool in ("streamed", "in-memory"):
        ranks = [result[pool] for result in results]
        assert ranks[0]["saved"] != ranks[1]["saved"], pool  # so restoring rank 0's position on rank 1 would be wrong
        assert not set(ranks[0]["training"]) & set(ranks[1]["training"]), pool  # disjoint parts of the pool
        for rank in ranks:
            assert rank["resumed"] == rank["training"] and rank["resumed_following"] == rank["following"], pool
            assert rank["resumed_position"] == rank["position"], pool


# ---------------------------------------------------------------- a fit stopped mid-round and resumed equals the uninterrupted one
STEPS = 5  # curate_every: one round of 5 batches of 8 per epoch
EPOCHS, SAVE_AT, KILL_AT = 3, 7, 9  # saved mid-way through the second round (2 of its 5 steps), killed 2 steps later


class Killed(Exception):
    """The process dying."""


class KillAt(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == KILL_AT:
            raise Killed


class RecordRounds(L.Callback):
    """The keys of the pairs each epoch trained on."""

    def __init__(self, curation: CurationInTraining) -> None:
        self.curation, self.rounds = curation, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rounds.append([pair.key for pair in self.curation.current_round])


def digits_pool(folder: Path, fmt: str, n: int = 96, shards: int = 4) -> tuple[Path, str]:
    """SYNTHETIC captions of scikit-learn's real digits (two in three name the digit, the others are distractors): a JSONL
    manifest and the same pairs as ``shards`` pool shards, WebDataset tar (png + txt members) or JSONL whose image paths
    are relative to the shards' folder (not to the manifest's)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from litzoo.datamodules.synthetic import CLASS_TEMPLATES, DIGIT_WORDS, DISTRACTOR_CAPTIONS

    digits, rng = load_digits(), np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "shards").mkdir()
    pairs = []
    for i in range(n):
        image = Image.fromarray(np.round(digits.images[i] * (255 / 16)).astype(np.uint8), mode="L")
        image.save(folder / "images" / f"{i}.png")
        png = io.BytesIO()
        image.save(png, format="PNG")
        words = CLASS_TEMPLATES[rng.integers(len(CLASS_TEMPLATES))].format(DIGIT_WORDS[digits.target[i]])
        text = words if i % 3 else DISTRACTOR_CAPTIONS[rng.integers(len(DISTRACTOR_CAPTIONS))]
        pairs.append((f"{i:05d}", png.getvalue(), text))
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"images/{int(key)}.png", "text": text}) + "\n" for key, _, text in pairs))
    for s in range(shards):
        part = pairs[s::shards]
        if fmt == "tar":
            with tarfile.open(folder / "shards" / f"pool-{s:03d}.tar", "w") as tar:
                for key, png, text in part:
                    for ext, data in (("png", png), ("txt", text.encode())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        else:
            lines = [json.dumps({"image": f"../images/{int(key)}.png", "text": text, "id": key}) for key, _, text in part]
            (folder / "shards" / f"pool-{s:03d}.jsonl").write_text("\n".join(lines) + "\n")
    return manifest, str(folder / "shards" / f"pool-{{000..{shards - 1:03d}}}.{fmt}")


def pool_fit(root: Path, manifest: Path, shards: str, fmt: str, seed: int, kill: bool = False, ckpt_path: Path | None = None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from litzoo.datamodules.image_text import ImageTextDataModule
    from litzoo.framework.resume import ExactResume
    from litzoo.modules.clip import CLIPModule

    L.seed_everything(seed)  # a resumed run starts from another seed and initialisation: everything must come from the file
    source = {"train_shards": shards} if fmt == "tar" else {"train_manifest": str(manifest)}  # a WebDataset pool needs no manifest
    data = ImageTextDataModule(**source, class_names=["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
                               image_size=8, channels=1, vocab_size=64, context_length=8, batch_size=8)  # fmt: skip
    model = CLIPModule(vocab_size=64, embed_dim=16, image_size=8, patch_size=4, in_chans=1, vision_width=16, vision_depth=1, vision_heads=2,
                       context_length=8, text_width=16, text_depth=1, text_heads=2, image_to_text_only=True, warmup_steps=1)  # fmt: skip
    curation = CurationInTraining(threshold=0.85, min_ratio=0.25, curate_every=STEPS, producer_batch_size=16, pool_shards=shards,
                                  pool_text_key="txt" if fmt == "tar" else "text", pool_id_key=None if fmt == "tar" else "id")  # fmt: skip
    rounds = RecordRounds(curation)
    callbacks = [curation, rounds, ExactResume()]
    if kill:
        callbacks += [ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=SAVE_AT, save_top_k=-1), KillAt()]
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=kill, default_root_dir=root, callbacks=callbacks)  # fmt: skip
    if kill:
        with pytest.raises(Killed):
            trainer.fit(model, datamodule=data)
    else:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, curation, rounds, trainer


def max_difference(a: L.LightningModule, b: L.LightningModule) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].numel())


@pytest.mark.parametrize("fmt", ["tar", "jsonl"])
def test_a_fit_stopped_mid_round_resumes_as_if_never_stopped(tmp_path, monkeypatch, fmt):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    manifest, shards = digits_pool(tmp_path / "pool", fmt)
    straight, straight_cb, straight_rounds, _ = pool_fit(tmp_path / "straight", manifest, shards, fmt, seed=0)
    pool_fit(tmp_path / "killed", manifest, shards, fmt, seed=0, kill=True)
    checkpoint = tmp_path / "killed" / f"step={SAVE_AT}.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    state = saved["callbacks"]["CurationInTraining"]["ranks"][0]
    assert state["round_position"] == (SAVE_AT - STEPS) * 8 and len(state["round"]) == STEPS * 8  # mid-round
    resumed, resumed_cb, resumed_rounds, trainer = pool_fit(tmp_path / "resumed", manifest, shards, fmt, seed=123, ckpt_path=checkpoint)
    assert trainer.global_step == EPOCHS * STEPS and straight_cb.rounds == resumed_cb.rounds == EPOCHS
    assert resumed_rounds.rounds == straight_rounds.rounds[1:]  # the round saved mid-way, then the same new one
    assert len({key for round_ in straight_rounds.rounds for key in round_}) > STEPS * 8  # the rounds differ: the producer moved on
    assert (straight_cb.pass_index, straight_cb.shard, straight_cb.offset) == (resumed_cb.pass_index, resumed_cb.shard, resumed_cb.offset)
    assert max_difference(straight, resumed) == 0.0

    # negative control: the same resume with the producer's offset inside its shard lost trains on other pairs
    load = CurationInTraining.load_state_dict
    monkeypatch.setattr(CurationInTraining, "load_state_dict", lambda self, s: load(self, {**s, "ranks": [{**s["ranks"][0], "offset": 0}]}))
    control, _, control_rounds, _ = pool_fit(tmp_path / "control", manifest, shards, fmt, seed=123, ckpt_path=checkpoint)
    assert control_rounds.rounds[0] == straight_rounds.rounds[1] and control_rounds.rounds[1] != straight_rounds.rounds[2]
    assert max_difference(straight, control) > 1e-4
