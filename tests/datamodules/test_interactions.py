"""InteractionsDataModule on files in the exact RecBole .inter / CSV formats, and the SYNTHETIC shared-taste domains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litzoo.datamodules.interactions import (
    InteractionFolderDataModule,
    InteractionsDataModule,
    SharedTasteDataModule,
    left_pad,
    write_shared_taste_domains,
)
from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.errors import LitzooError
from litzoo.framework.recsys import full_ranks, rank_metrics, read_inter

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def two_domains(tmp_path, dave=False):
    """Books (.inter, times out of order in the file) and movies (CSV without header); alice and bob are in both."""
    books = tmp_path / "books.inter"
    rows = [("alice", "b3", 30), ("alice", "b1", 10), ("alice", "b2", 20), ("alice", "b4", 40), ("bob", "b1", 5), ("bob", "b5", 5), ("bob", "b2", 6)]
    books.write_text(HEADER + "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in rows))
    movies = tmp_path / "movies.csv"
    movies.write_text("carol,m1,5,1\ncarol,m2,5,2\ncarol,m3,5,3\nalice,m2,4,9\nalice,m1,4,8\nbob,m3,1,7\n" + ("dave,m4,2,0\n" if dave else ""))
    return {"books": str(books), "movies": str(movies)}


def test_leave_one_out_batches_by_hand(tmp_path):
    dm = InteractionsDataModule(two_domains(tmp_path, dave=True), k_core=0, max_len=3, batch_size=8, num_negatives=1)
    dm.setup("fit")
    assert dm.domain_names == ["books", "movies"] and dm.num_users == 4  # dave (movies, one interaction) trains only
    assert (dm.num_items("books"), dm.num_items("movies")) == (5, 4)
    alice, bob, carol = 1, 2, 3  # ids in order of first appearance, books first
    b = {name: i + 1 for i, name in enumerate(["b3", "b1", "b2", "b4", "b5"])}
    m = {"m1": 1, "m2": 2, "m3": 3}
    assert dm.overlapping_users == [alice, bob]
    # alice's books by time: b1 b2 b3 b4 -> train b1 b2, val b3, test b4; bob's: b1, b5 (tie at 5: file order), b2
    assert dm.train_sequences("books") == {alice: [b["b1"], b["b2"]], bob: [b["b1"]]}
    assert dm.train_interactions("movies") == {carol: {m["m1"]}, alice: {m["m1"]}, bob: {m["m3"]}, 4: {4}}
    train = dm.dataset("train")
    rows = {(d, u): i for i, (d, u) in enumerate(zip(train.tensors["domain"].tolist(), train.tensors["user"].tolist()))}
    row = train[rows[(0, alice)]]
    assert row["items"].tolist() == [0, b["b1"], b["b2"]] and row["length"].item() == 2 and row["history_len"].item() == 2
    assert row["seq"].tolist() == [0, 0, b["b1"]] and row["target"].tolist() == [0, 0, b["b2"]]
    val, test = dm.dataset("val"), dm.dataset("test")
    by_key = lambda ds: {(d, u): ds[i] for i, (d, u) in enumerate(zip(ds.tensors["domain"].tolist(), ds.tensors["user"].tolist()))}  # noqa: E731
    v, t = by_key(val)[(0, alice)], by_key(test)[(0, alice)]
    assert v["target"].item() == b["b3"] and v["seq"].tolist() == [0, b["b1"], b["b2"]]
    assert t["target"].item() == b["b4"] and t["seq"].tolist() == [b["b1"], b["b2"], b["b3"]]  # test history = train + val
    assert v["negatives"].tolist() == [b["b5"]] and v["candidates"].tolist() == [b["b3"], b["b5"]]  # b5: alice's only unseen book
    assert v["sparse"].item() and v["history_len"].item() == 2
    # bob's books: b1 train, b5 val, b2 test; alice's movies: 2 interactions -> train m1, test m2, no validation
    assert by_key(test)[(1, alice)]["target"].item() == m["m2"] and (1, alice) not in by_key(val)
    assert by_key(test)[(1, carol)]["negatives"].tolist() == [4]  # m4, carol's only unseen movie
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"seq", "target", "negatives", "candidates", "user", "domain", "history_len", "sparse"}
    assert batch["seq"].shape == (len(val), 3) and batch["candidates"].shape == (len(val), 2)
    # full ranking leaves out the user's other known items, never the target
    mask = dm.exclusion_mask("books", torch.tensor([alice]), torch.tensor([b["b4"]]))
    assert mask[0].nonzero().flatten().tolist() == sorted([b["b1"], b["b2"], b["b3"]])
    pairs = dm.train_pairs("books")
    assert pairs.tolist() == [[alice, b["b1"]], [alice, b["b2"]], [bob, b["b1"]]]


def test_time_split_by_hand(tmp_path):
    dm = InteractionsDataModule(two_domains(tmp_path), k_core=0, split="time", time_quantiles=(0.65, 0.88), max_len=4, batch_size=8, num_negatives=1)
    dm.setup("fit")
    # the 13 timestamps of both domains on one clock: 1 2 3 5 5 6 7 8 9 10 20 30 40; sorted[int(0.65 * 13)] = 9 starts
    # validation, sorted[int(0.88 * 13)] = 30 the test
    assert dm.train_sequences("movies") == {3: [1, 2, 3], 1: [1], 2: [3]}  # alice's m1 at time 8 trains, m2 at 9 validates
    assert dm.train_sequences("books") == {2: [2, 5, 3]}  # bob's b1, b5 (tie at 5: file order), b2; alice has none before 9
    val = dm.dataset("val")
    samples = sorted(zip(val.tensors["domain"].tolist(), val.tensors["user"].tolist(), val.tensors["target"].tolist()))
    assert samples == [(0, 1, 2), (0, 1, 3), (1, 1, 2)]  # alice's b1 (10), b2 (20) and m2 (9)
    test = dm.dataset("test")
    assert sorted(test.tensors["target"].tolist()) == [1, 4]  # b3 (30) and b4 (40), both alice's
    row = test[test.tensors["target"].tolist().index(4)]
    assert row["seq"].tolist() == [0, 2, 3, 1] and row["history_len"].item() == 0  # b1 b2 b3 came before b4; none trains
    assert row["sparse"].item() and row["negatives"].tolist() == [5]


def test_no_held_out_item_leaks_into_training_or_negatives(tmp_path):
    dm = SharedTasteDataModule(root=str(tmp_path), num_users=600, num_items=150, seed=3, eval_domains=["d0", "d1"])
    dm.setup("fit")
    names = dm.domain_names
    for split in ("val", "test"):
        ds = dm.dataset(split)
        for i in range(len(ds)):
            row = ds[i]
            domain, user, target = names[row["domain"].item()], row["user"].item(), row["target"].item()
            train = dm.train_sequences(domain)[user]
            assert target not in train and target not in row["negatives"].tolist()
            assert not set(row["negatives"].tolist()) & dm.known_items(domain)[user]
            assert len(set(row["negatives"].tolist())) == 100
        assert not (ds.tensors["candidates"][:, 1:] == ds.tensors["target"][:, None]).any()
    train = dm.dataset("train")
    for i in range(len(train)):
        row = train[i]
        domain, user = names[row["domain"].item()], row["user"].item()
        held = {t for s in ("val", "test") for t, d, u in zip(*(dm.dataset(s).tensors[k].tolist() for k in ("target", "domain", "user")))
                if names[d] == domain and u == user}  # fmt: skip
        assert not held & set(row["items"].tolist())


def test_k_core_and_errors(tmp_path):
    path = tmp_path / "a.inter"
    # 5-core: users u0..u4 each rate items i0..i4 (25 rows); u5 rates i0 only -> dropped, and i5 (one row) too
    rows = [(f"u{u}", f"i{i}", u * 10 + i) for u in range(5) for i in range(5)] + [("u5", "i0", 99), ("u0", "i5", 98)]
    path.write_text(HEADER + "".join(f"{u}\t{i}\t3\t{t}\n" for u, i, t in rows))
    dm = InteractionsDataModule({"a": str(path)}, num_negatives=1, batch_size=4)
    with pytest.raises(LitzooError, match="a.inter: user 1: only 0 item\\(s\\) of 5 are not the user's, fewer than the 1 negatives"):
        dm.setup("fit")
    dm = InteractionsDataModule({"a": str(path)}, num_negatives=1, k_core=6, batch_size=4)
    with pytest.raises(LitzooError, match="a.inter: no interaction left after 6-core"):
        dm.setup("fit")
    bad = tmp_path / "bad.csv"
    bad.write_text("u1,i1,5,1\nu1,i2,5,x\n")
    with pytest.raises(LitzooError, match=r"bad.csv:2: timestamp 'x' is not a number"):
        InteractionsDataModule({"a": str(bad)}, k_core=0).setup("fit")
    untimed = tmp_path / "untimed.csv"
    untimed.write_text("u1,i1\n")
    with pytest.raises(LitzooError, match="untimed.csv: split='time' needs a timestamp column"):
        InteractionsDataModule({"a": str(untimed)}, k_core=0, split="time").setup("fit")
    for kwargs in ({"split": "random"}, {"format": "json"}, {"max_len": 0}, {"eval_domains": ["z"]}, {"time_quantiles": (0.9, 0.5)}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            InteractionsDataModule({"a": str(path)}, **kwargs)


def test_negatives_are_deterministic_per_seed_and_user(tmp_path):
    files = two_domains(tmp_path, dave=True)
    first = InteractionsDataModule(files, k_core=0, num_negatives=1, seed=5)
    again = InteractionsDataModule(files, k_core=0, num_negatives=1, seed=5)
    for split in ("val", "test"):
        for key in first.dataset(split).tensors:
            assert torch.equal(first.dataset(split).tensors[key], again.dataset(split).tensors[key])
    folder = SharedTasteDataModule(root=str(tmp_path / "s"), num_users=600, num_items=150, seed=1).folder
    d1 = folder / "d1.inter"
    lines = d1.read_text().splitlines(keepends=True)
    last_user = lines[-1].split("\t")[0]
    trimmed = tmp_path / "trimmed.inter"  # the same file without its last user: no other user's negatives change
    trimmed.write_text("".join(line for line in lines if not line.startswith(last_user + "\t")))
    full = InteractionsDataModule({"d1": str(d1)}, seed=1)
    less = InteractionsDataModule({"d1": str(trimmed)}, seed=1)
    other_seed = InteractionsDataModule({"d1": str(d1)}, seed=2)
    a, b, c = (dm.dataset("test").tensors for dm in (full, less, other_seed))
    n = len(b["user"])
    assert len(a["user"]) == n + 1 and torch.equal(a["user"][:n], b["user"])
    assert torch.equal(a["negatives"][:n], b["negatives"]) and torch.equal(a["target"][:n], b["target"])
    assert not torch.equal(a["negatives"], c["negatives"])


def test_training_loader_is_seeded_and_resumable(tmp_path):
    dm = SharedTasteDataModule(root=str(tmp_path), num_users=600, num_items=150, seed=4, batch_size=16, max_len=10)
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader)
    epoch0 = [batch["user"] for batch in loader]
    assert all(batch["items"].shape[1] == 10 for batch in loader)
    epoch1 = [batch["user"] for batch in loader]  # a pass ends the epoch: the next has another order
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    fresh = SharedTasteDataModule(root=str(tmp_path), num_users=600, num_items=150, seed=4, batch_size=16, max_len=10).train_dataloader()
    iterator = iter(fresh)
    head = [next(iterator)["user"] for _ in range(3)]
    state = fresh.state_dict()
    resumed = SharedTasteDataModule(root=str(tmp_path), num_users=600, num_items=150, seed=4, batch_size=16, max_len=10).train_dataloader()
    resumed.load_state_dict(state)
    tail = [batch["user"] for batch in resumed]
    assert torch.equal(torch.cat(head + tail), torch.cat(epoch0))  # killed after 3 batches and resumed = uninterrupted
    assert dm.state_dict() == {"shuffle_seed": 4}
    single = dm.domain_dataloader("train", "d1")
    assert isinstance(single, ResumableLoader) and set(torch.cat([b["domain"] for b in single]).tolist()) == {1}


def test_synthetic_files_and_planted_taste_is_learnable(tmp_path):
    folder = write_shared_taste_domains(tmp_path, num_users=400, num_items=200, seed=0)
    assert folder.name == "SYNTHETIC_shared_taste" and sorted(p.name for p in folder.iterdir()) == ["d0.inter", "d1.inter", "planted.npz"]
    assert (folder / "d0.inter").read_text().startswith(HEADER)
    assert write_shared_taste_domains(tmp_path, num_users=400, num_items=200, seed=0) == folder  # reused, not rewritten
    raw = read_inter(folder / "d1.inter")
    sparse_lengths = np.unique(raw.users, return_counts=True)[1]
    dense_lengths = np.unique(read_inter(folder / "d0.inter").users, return_counts=True)[1]
    assert sparse_lengths.min() >= 5 and sparse_lengths.max() <= 8 and dense_lengths.min() >= 10
    dm = SharedTasteDataModule(root=str(tmp_path / "dm"), seed=0)  # the default sizes: 5-core keeps most of the sparse domain
    planted = dm.planted()
    dm.load()
    assert planted["user_vectors"].shape == (1000, 8) and planted["item_vectors"].shape == (2, 300, 8)
    overlap = {dm.joined.user_ids[f"u{u}"] for u in planted["overlap_users"] if f"u{u}" in dm.joined.user_ids}
    assert set(dm.overlapping_users) <= overlap and len(dm.overlapping_users) > 0.1 * 1000
    # rank the sparse domain's test items by the planted u.v, against popularity in training
    test = dm.dataset("test")
    domain = "d1"
    user_index = {uid: int(raw_id[1:]) for raw_id, uid in dm.joined.user_ids.items()}
    item_index = np.zeros(dm.num_items(domain) + 1, dtype=np.int64)
    for raw_id, iid in dm.joined.item_ids[domain].items():
        item_index[iid] = int(raw_id.split("_i")[1])
    vectors = torch.from_numpy(planted["item_vectors"][1][item_index]).float()
    taste = torch.from_numpy(planted["user_vectors"][[user_index[u] for u in test.tensors["user"].tolist()]]).float()
    planted_scores = taste @ vectors.T
    popularity = torch.bincount(dm.train_pairs(domain)[:, 1], minlength=dm.num_items(domain) + 1).float()
    exclude = dm.exclusion_mask(domain, test.tensors["user"], test.tensors["target"])
    by_taste = rank_metrics(full_ranks(planted_scores, test.tensors["target"], exclude))
    by_popularity = rank_metrics(full_ranks(popularity.expand_as(planted_scores) + 1e-3 * torch.rand_like(planted_scores), test.tensors["target"], exclude))
    # measured at seed 0: HR@10 0.45 by taste, 0.09 by popularity; NDCG@10 0.27 and 0.04
    assert by_taste["hr@10"] > 2 * by_popularity["hr@10"] + 0.1 and by_taste["ndcg@10"] > 2 * by_popularity["ndcg@10"] + 0.05
    # the planted Markov term: in the dense domain a next item is one of the previous item's 3 successors far more
    # often than the 3 / 300 of chance
    dense = read_inter(dm.folder / "d0.inter")
    follows = [int(b.split("_i")[1]) in planted["successors"][0][int(a.split("_i")[1])]
               for (ua, a), (ub, b) in zip(zip(dense.users, dense.items), zip(dense.users[1:], dense.items[1:])) if ua == ub]  # fmt: skip
    assert np.mean(follows) > 2 * 3 / 300


def test_left_pad():
    assert left_pad([[1, 2, 3, 4], [5], []], 3).tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


def test_generator_is_deterministic_per_seed(tmp_path):
    kwargs = {"num_users": 60, "num_items": 40, "dense_length": (5, 9), "sparse_length": (3, 4)}
    a = write_shared_taste_domains(tmp_path / "a", seed=2, **kwargs)
    b = write_shared_taste_domains(tmp_path / "b", seed=2, **kwargs)
    c = write_shared_taste_domains(tmp_path / "c", seed=3, **kwargs)
    assert (a / "d1.inter").read_bytes() == (b / "d1.inter").read_bytes() != (c / "d1.inter").read_bytes()
    assert not [p for p in tmp_path.rglob(".*")]  # no staging folder left behind
    with pytest.raises(ValueError, match="sparse_domain"):
        write_shared_taste_domains(tmp_path / "d", num_domains=2, sparse_domain=2)


def test_hparams_hold_the_reader_settings_also_for_a_subclass(tmp_path):
    # the reader reads its settings from hparams; a subclass (the generator) must not replace them with its own arguments
    dm = SharedTasteDataModule(root=str(tmp_path), num_users=300, num_items=120, seed=3, k_core=2, max_len=7)
    assert dm.hparams["format"] == "inter" and dm.hparams["max_len"] == 7 and dm.hparams["k_core"] == 2 and dm.hparams["seed"] == 3
    assert "num_items" not in dm.hparams  # would clash with a model's num_items when Lightning merges the two
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["items"].shape[1] == 7


def test_interaction_folder_reads_one_file_per_domain_in_either_format(tmp_path):
    folder = tmp_path / "amazon"
    folder.mkdir()
    (folder / "movie.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                        + "".join(f"u{u}\tm{i}\t5\t{10 * i + u}\n" for u in range(4) for i in range(6)))  # fmt: skip
    (folder / "book.csv").write_text("user,item,rating,timestamp\n" + "".join(f"u{u},b{i},4,{i}\n" for u in range(2, 6) for i in range(5)))
    (folder / "notes.txt").write_text("not a domain")
    dm = InteractionFolderDataModule(str(folder), k_core=0, num_negatives=1, max_len=4)
    assert dm.domain_names == ["book", "movie"]  # every .inter / .csv file, sorted by name
    assert dm.num_items("movie") == 6 and dm.num_items("book") == 5
    assert len(dm.overlapping_users) == 2  # u2 and u3 are in both files, joined by id
    ordered = InteractionFolderDataModule(str(folder), domain_names=["movie", "book"], k_core=0, num_negatives=1)
    assert ordered.domain_names == ["movie", "book"]

    with pytest.raises(LitzooError, match="needs data.root"):
        InteractionFolderDataModule()
    with pytest.raises(LitzooError, match="no such folder"):
        InteractionFolderDataModule(str(tmp_path / "missing"))
    with pytest.raises(LitzooError, match=r"domain 'music' has no file \(expected exactly one of music.inter, music.csv\)"):
        InteractionFolderDataModule(str(folder), domain_names=["movie", "music"])
    (folder / "book.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(LitzooError, match="domain 'book' has both book.csv and book.inter"):
        InteractionFolderDataModule(str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LitzooError, match="no .inter or .csv interaction file"):
        InteractionFolderDataModule(str(empty))
