"""ShardStream (framework/data/shard_stream.py): every sample read once per epoch over (rank, worker), equal steps on
every rank, the shard order of (seed, epoch), sizes.json, shuffle buffers, a real DataLoader with workers, 2 gloo ranks.

The shards are written here in their exact format (JSONL lines; WebDataset tar members) with ShardWriter.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import textwrap
from itertools import product
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.data.shard_stream import ShardStream, TarMember, read_shard_sizes, tar_members, trim_to
from litzoo.framework.data.shards import ShardWriter
from litzoo.framework.errors import LitzooError, one_line
from litzoo.framework.random_state import derive_seed


def write_shards(folder: Path, sizes: list[int], suffix: str = "jsonl") -> list[Path]:
    """Shards ``folder/part-NNN.<suffix>`` holding ``sizes[i]`` samples keyed ``"<i>-<j>"``."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, size in enumerate(sizes):
        path = folder / f"part-{i:03d}.{suffix}"
        with ShardWriter(path) as writer:
            for j in range(size):
                record = {"__key__": f"{i}-{j}", "txt": f"caption {i} {j}"} if suffix == "tar" else {"id": f"{i}-{j}", "text": f"caption {i} {j}"}
                writer.write(record)
        shards.append(path)
    return shards


def sample_id(sample, index: int) -> tuple[str, int]:
    """The decode of these tests: the sample's own id and its pool index."""
    return (sample.record.get("id") or sample.record["__key__"]), index


def ids(batch) -> list[str]:
    """The sample ids of a collated batch (default_collate of (id, index) tuples: [ids, indices])."""
    return list(batch[0])


def expected_shards(count: int, seed: int, epoch: int, rank: int, world: int, worker: int, workers: int) -> list[int]:
    """Brute force: the shard list permuted from (seed, epoch), then [rank::world][worker::workers]."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, epoch))).tolist()
    return order[rank::world][worker::workers]


# ------------------------------------------------------------------------------------------ trim_to


def test_trim_to_takes_from_the_largest_first():
    assert trim_to([5, 1, 3], 9) == [5, 1, 3]  # enough: unchanged
    assert trim_to([5, 1, 3], 6) == [3, 1, 2]  # level 2 (sum 5), one more to the first above it
    assert trim_to([4, 4, 4], 10) == [4, 3, 3]
    assert trim_to([7, 0, 2], 2) == [1, 0, 1]
    assert trim_to([3, 3], 0) == [0, 0]
    for units in ([9, 2, 5, 5, 0], [1, 1, 1], [10, 3]):
        for total in range(sum(units) + 1):
            quotas = trim_to(units, total)
            assert sum(quotas) == total and all(0 <= q <= u for q, u in zip(quotas, units, strict=True))
            trimmed = [q for q, u in zip(quotas, units, strict=True) if q < u]
            assert not trimmed or max(trimmed) - min(trimmed) <= 1  # the cut ones stay even
            # taken from the largest: an entry left whole is not above the cut ones (but for the one extra unit)
            assert not trimmed or all(q <= min(trimmed) + 1 for q, u in zip(quotas, units, strict=True) if q == u)


# ------------------------------------------------------------------------------------------ the split of an epoch


def simulate(stream: ShardStream, epoch: int, world: int) -> dict[tuple[int, int], list[tuple[str, int]]]:
    """What each (rank, worker) yields in ``epoch``, without processes."""
    return {(rank, worker): list(map(lambda pair: sample_id(*pair), stream.worker_samples(epoch, rank, world, worker)))
            for rank, worker in product(range(world), range(stream.workers))}  # fmt: skip


@pytest.mark.parametrize(("world", "workers", "batch_size"), [(1, 0, None), (2, 3, None), (2, 2, 4), (3, 1, 2), (1, 4, 3)])
def test_every_sample_is_read_once_when_the_ranks_hold_the_same(tmp_path, world, workers, batch_size):
    shards = write_shards(tmp_path, [6] * 12)  # 12 equal shards: every rank holds 12 / world of them
    stream = ShardStream(shards, sample_id, batch_size=batch_size, num_workers=workers, seed=3)
    everything = {f"{i}-{j}" for i in range(12) for j in range(6)}
    for epoch in (0, 1):
        read = simulate(stream, epoch, world)
        flat = [key for part in read.values() for key, _ in part]
        assert len(flat) == len(set(flat)) and set(flat) == everything  # none twice, none lost
        for (rank, worker), part in read.items():
            shard_ids = expected_shards(12, 3, epoch, rank, world, worker, max(workers, 1))
            assert [key for key, _ in part] == [f"{i}-{j}" for i in shard_ids for j in range(6)]  # its shards, in order
            assert all(index == 6 * int(key.split("-")[0]) + int(key.split("-")[1]) for key, index in part)  # pool index
    first, second = (simulate(stream, epoch, world) for epoch in (0, 1))
    assert first != second and simulate(stream, 0, world) == first  # a new order per epoch, the same for the same epoch
    stream.world_size, stream.rank = world, 0
    held = [6 * len(expected_shards(12, 3, 0, 0, world, w, max(workers, 1))) for w in range(max(workers, 1))]
    assert len(stream) == (sum(held) if batch_size is None else sum(-(-n // batch_size) for n in held))


@pytest.mark.parametrize(("world", "workers", "batch_size"), [(2, 1, None), (2, 2, 3), (3, 2, None), (4, 1, 2)])
def test_uneven_shards_keep_the_ranks_in_step(tmp_path, world, workers, batch_size):
    sizes = [9, 1, 4, 7, 3, 0, 12, 5, 2]
    shards = write_shards(tmp_path, sizes)
    stream = ShardStream(shards, sample_id, batch_size=batch_size, num_workers=workers, seed=11)
    for epoch in range(3):
        read = simulate(stream, epoch, world)
        flat = [key for part in read.values() for key, _ in part]
        assert len(flat) == len(set(flat))  # never twice
        steps_of_rank = []
        for rank in range(world):
            units = 0
            for worker in range(workers):
                part = [key for key, _ in read[rank, worker]]
                held = [f"{i}-{j}" for i in expected_shards(len(sizes), 11, epoch, rank, world, worker, workers) for j in range(sizes[i])]
                assert part == held[: len(part)]  # a prefix of its own shards, in order
                units += len(part) if batch_size is None else -(-len(part) // batch_size)
            steps_of_rank.append(units)
        # brute force: every rank takes the smallest rank's number of batches, and drops only what it must
        full = [sum(sum(sizes[i] for i in expected_shards(len(sizes), 11, epoch, r, world, w, workers)) if batch_size is None
                    else -(-sum(sizes[i] for i in expected_shards(len(sizes), 11, epoch, r, world, w, workers)) // batch_size)
                    for w in range(workers)) for r in range(world)]  # fmt: skip
        assert steps_of_rank == [min(full)] * world
        stream.world_size = world
        assert stream.steps(epoch) == min(full)
        for rank in range(world):
            stream.rank = rank
            assert stream.samples(epoch) == sum(len(read[rank, w]) for w in range(workers))
        stream.rank = stream.world_size = None


def test_fewer_shards_than_ranks_is_refused(tmp_path):
    stream = ShardStream(write_shards(tmp_path, [3, 0, 2]), sample_id, world_size=4, rank=0)
    with pytest.raises(LitzooError, match=r"the 3 shards .* leave a DDP rank of 4 without samples in epoch 0"):
        len(stream)
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1"):
        ShardStream(write_shards(tmp_path, [1]), sample_id, world_size=2, rank=2)
    with pytest.raises(ValueError, match="counts must hold one"):
        ShardStream(write_shards(tmp_path, [1]), sample_id, counts=[1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        ShardStream(write_shards(tmp_path, [1]), sample_id, batch_size=0)


def test_unshuffled_streams_read_the_shards_in_order(tmp_path):
    stream = ShardStream(write_shards(tmp_path, [2, 3, 1]), sample_id, shuffle=False, shuffle_buffer=5)
    assert [key for key, _ in stream] == ["0-0", "0-1", "1-0", "1-1", "1-2", "2-0"]
    assert [index for _, index in stream] == list(range(6))


# ------------------------------------------------------------------------------------------ counts


def test_counts_come_from_sizes_json_without_reading_the_shards(tmp_path, monkeypatch):
    shards = write_shards(tmp_path, [4, 2, 5])
    (tmp_path / "sizes.json").write_text(json.dumps({"part-000.jsonl": 4, "part-002.jsonl": 5, "other.tar": 1}))
    counted = []
    import litzoo.framework.data.shard_stream as module

    real = module.count_samples
    monkeypatch.setattr(module, "count_samples", lambda path: counted.append(Path(path).name) or real(path))
    stream = ShardStream(shards, sample_id, shuffle=False)
    assert stream.counts == [4, 2, 5] and counted == ["part-001.jsonl"]  # only the shard sizes.json does not list
    assert stream.counts == [4, 2, 5] and counted == ["part-001.jsonl"]  # counted once
    assert stream.offsets == [0, 4, 6] and len(stream) == 11
    assert read_shard_sizes(shards) == [4, None, 5]


def test_a_shard_that_disagrees_with_its_count_raises(tmp_path):
    shards = write_shards(tmp_path, [3, 2])
    (tmp_path / "sizes.json").write_text(json.dumps({"part-000.jsonl": 5, "part-001.jsonl": 1}))
    stream = ShardStream(shards, sample_id, shuffle=False)
    with pytest.raises(LitzooError, match=re.escape(f"shard '{shards[0]}' holds 3 samples, not the 5 of '{tmp_path / 'sizes.json'}'")):
        list(stream)
    stream = ShardStream(shards, sample_id, shuffle=False, counts=[1, 2])  # found before the quota is read
    with pytest.raises(LitzooError, match=re.escape(f"shard '{shards[0]}' holds more than 1 samples, not the 1 of the counts given (changed on disk?)")):
        list(stream)


@pytest.mark.parametrize(("text", "message"), [("[1, 2]", "is not a JSON object"), ("{bad", "cannot be read as JSON"),
                                               ('{"part-000.jsonl": -1}', "entry 'part-000.jsonl' must be a non-negative integer, got -1"),
                                               ('{"part-000.jsonl": "3"}', "must be a non-negative integer, got '3'")])  # fmt: skip
def test_bad_sizes_json_names_the_file(tmp_path, text, message):
    shards = write_shards(tmp_path, [3])
    (tmp_path / "sizes.json").write_text(text)
    with pytest.raises(LitzooError, match=re.escape(f"sizes file '{tmp_path / 'sizes.json'}'") + ".*" + re.escape(message)):
        ShardStream(shards, sample_id).counts  # noqa: B018 (the property reads sizes.json)


# ------------------------------------------------------------------------------------------ shuffle buffer


def test_shuffle_buffer_is_a_seeded_permutation(tmp_path):
    shards = write_shards(tmp_path, [10, 10, 10])
    plain = ShardStream(shards, sample_id, seed=1)
    buffered = ShardStream(shards, sample_id, seed=1, shuffle_buffer=8)
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        buffered.set_epoch(epoch)
        a, b = list(plain), list(buffered)
        assert sorted(a) == sorted(b) and a != b  # the same samples, in another order
        assert b == list(buffered)  # the same order again: from (seed, epoch, rank, worker) only
        # a buffer of 8 moves a sample at most 8 places earlier than it is read
        assert all(b.index(x) >= a.index(x) - 8 for x in a)
    buffered.set_epoch(0)
    zero = list(buffered)
    buffered.set_epoch(1)
    assert list(buffered) != zero


# ------------------------------------------------------------------------------------------ real DataLoaders


def test_a_dataloader_with_two_workers_reads_every_sample_once(tmp_path):
    shards = write_shards(tmp_path, [5, 3, 4, 6, 2], suffix="tar")
    stream = ShardStream(shards, sample_id, batch_size=2, num_workers=2, seed=5)
    loader = ResumableLoader(stream, batch_size=None, num_workers=2, seed=5)
    everything = {f"{i}-{j}" for i, size in enumerate([5, 3, 4, 6, 2]) for j in range(size)}
    passes = []
    for epoch in (0, 1):
        length = len(loader)  # this epoch's (after the pass the loader moves to the next one, whose length may differ)
        batches = list(loader)
        assert len(batches) == length == stream.steps(epoch)  # the length is exact, workers and short batches included
        keys = [key for batch in batches for key in ids(batch)]
        assert len(keys) == len(set(keys)) == len(everything) and set(keys) == everything
        simulated = simulate(stream, epoch, 1)
        for worker in (0, 1):  # each worker's batches hold its simulated samples, in order
            own = {k for k, _ in simulated[0, worker]}
            assert [k for batch in batches if ids(batch)[0] in own for k in ids(batch)] == [k for k, _ in simulated[0, worker]]
        passes.append(keys)
    assert passes[0] != passes[1] and stream.epoch == 2 and loader.state_dict() == {"seed": 5, "epoch": 2, "batches": 0}
    # a plain DataLoader in another number of workers is refused (the length would be wrong)
    with pytest.raises(Exception, match="built for 2 reader"):
        list(DataLoader(stream, batch_size=None, num_workers=0))


def test_the_loader_resumes_a_stream_mid_epoch(tmp_path):
    shards = write_shards(tmp_path, [4, 4, 4, 4])
    make = lambda: ResumableLoader(ShardStream(shards, sample_id, batch_size=3, num_workers=2, seed=2, shuffle_buffer=3), batch_size=None, num_workers=2, seed=2)  # noqa: E731
    straight = make()
    list(straight)  # epoch 0
    epoch_one = [ids(batch) for batch in straight]
    interrupted = make()
    list(interrupted)
    iterator = iter(interrupted)
    done = [ids(next(iterator)) for _ in range(2)]
    state = interrupted.state_dict()
    assert state == {"seed": 2, "epoch": 1, "batches": 2} and done == epoch_one[:2]
    resumed = make()
    resumed.load_state_dict(state)
    assert [ids(batch) for batch in resumed] == epoch_one[2:]
    # a pass cut short (limit_train_batches) is followed by the next epoch, as Lightning's
    cut = make()
    iterator = iter(cut)
    next(iterator)
    del iterator
    assert [ids(batch) for batch in cut] == epoch_one


def test_epoch_and_seed_reach_the_stream(tmp_path):
    stream = ShardStream(write_shards(tmp_path, [2, 2, 2]), sample_id, seed=0)
    loader = ResumableLoader(stream, batch_size=None, seed=0)
    loader.set_epoch(4)
    assert stream.epoch == 4
    loader.load_state_dict({"seed": 9, "epoch": 2, "batches": 0})
    assert stream.seed == 9 and stream.epoch == 2
    assert [key for key, _ in loader] == [k for k, _ in simulate(ShardStream(stream.shards, sample_id, seed=9), 2, 1)[0, 0]]


# ------------------------------------------------------------------------------------------ tar random access


def test_tar_members_read_by_offset(tmp_path):
    shard = tmp_path / "a.tar"
    with ShardWriter(shard) as writer:
        writer.write({"__key__": "x", "png": b"\x89PNG-one", "txt": "first"})
        writer.write({"__key__": "d/y", "jpg": bytes(range(256)) * 3, "txt": "second"})
    members = tar_members(shard)
    assert set(members) == {"x.png", "x.txt", "d/y.jpg", "d/y.txt"}
    assert members["d/y.jpg"].read() == bytes(range(256)) * 3 and members["x.txt"].read() == b"first"
    assert members["x.png"] == TarMember(shard, "x.png", members["x.png"].offset, 8)
    compressed = tmp_path / "b.tar"
    compressed.write_bytes(gzip.compress(shard.read_bytes()))
    assert tar_members(compressed) is None
    shard.write_bytes(shard.read_bytes()[:1000])  # cut short after indexing
    with pytest.raises(LitzooError, match=re.escape(f"shard '{shard}' member 'd/y.jpg' is cut short")):
        members["d/y.jpg"].read()
    not_tar = tmp_path / "c.tar"
    not_tar.write_bytes(b"hello" * 200)
    with pytest.raises(LitzooError, match=re.escape(f"shard '{not_tar}' cannot be read as a tar file")):
        tar_members(not_tar)


# ------------------------------------------------------------------------------------------ two gloo ranks

DDP_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.data.shard_stream import ShardStream

def decode(sample, index):
    return sample.key

rank, folder = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="file://" + os.path.join(folder, "rendezvous"), rank=rank, world_size=2)
torch.set_num_threads(1)
stream = ShardStream(os.path.join(folder, "shards"), decode, batch_size=3, num_workers=2, seed=7)  # rank from the process group
loader = ResumableLoader(stream, batch_size=None, num_workers=2, seed=7)
lengths, epochs = [], []
for _ in range(2):
    lengths.append(len(loader))
    epochs.append([key for batch in loader for key in batch])
steps = torch.tensor(lengths)
dist.all_reduce(steps, op=dist.ReduceOp.MAX)
with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
    json.dump({"epochs": epochs, "lengths": lengths, "max_lengths": steps.tolist(), "placement": list(stream.placement())}, handle)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_ranks_read_disjoint_samples(tmp_path):
    """Two processes in a gloo group (started as torchrun starts them), each a DataLoader with 2 workers."""
    sizes = [4, 4, 4, 4, 4, 4]
    write_shards(tmp_path / "shards", sizes, suffix="tar")
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    ranks = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]  # fmt: skip
    for process in ranks:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["placement"] for r in ranks] == [[0, 2], [1, 2]]
    assert ranks[0]["lengths"] == ranks[1]["lengths"] == ranks[0]["max_lengths"]  # the same steps on both ranks
    everything = {f"{i}-{j}" for i, size in enumerate(sizes) for j in range(size)}
    for epoch in (0, 1):
        a, b = (set(r["epochs"][epoch]) for r in ranks)
        assert len(a) == len(ranks[0]["epochs"][epoch]) and not a & b and a | b == everything  # disjoint, nothing lost
        for rank, keys in enumerate((a, b)):  # each rank read its shards of that epoch's order
            held = {int(k.split("-")[0]) for k in keys}
            assert held == set(expected_shards(len(sizes), 7, epoch, rank, 2, 0, 1))
    assert set(ranks[0]["epochs"][0]) != set(ranks[0]["epochs"][1])  # the shards move between ranks across epochs


def test_one_line_of_a_worker_error(tmp_path):
    shards = write_shards(tmp_path, [2])
    (tmp_path / "sizes.json").write_text(json.dumps({"part-000.jsonl": 3}))
    loader = ResumableLoader(ShardStream(shards, sample_id, num_workers=1), batch_size=None, num_workers=1)
    with pytest.raises(Exception) as info:
        list(loader)
    assert one_line(info.value).startswith(f"shard '{shards[0]}' holds 2 samples, not the 3 of")
