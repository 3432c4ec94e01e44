"""Multi-domain user–item interactions for sequential and MF recommenders, and a SYNTHETIC shared-taste generator.

:class:`InteractionsDataModule` reads one interaction file per domain (RecBole atomic ``.inter`` or plain
``user,item,rating,timestamp`` CSV; :mod:`litzoo.framework.recsys.interactions`), filters each domain to its k-core,
orders every user's interactions by time (file order for equal times) and splits them leave-one-out or by global
time quantiles (:mod:`litzoo.framework.recsys.splits`). Users are joined across domains by raw id; items have one id
space per domain; 0 is padding everywhere.

Batches (dicts of tensors; ``L = max_len``, ``n = num_negatives``):

* ``train`` — one row per (user, domain) with training interactions:
  ``items`` (B, L) the last L training items, left-padded with 0; ``seq`` (B, L) and ``target`` (B, L) the next-item
  pairs of that prefix (``seq[:, t]`` is followed by ``target[:, t]``; SASRec's input / positive), left-padded;
  ``length`` (B,) non-padding entries of ``items``; ``user`` (B,), ``domain`` (B,), ``history_len`` (B,) the user's
  training interactions in the domain (untruncated).
* ``val`` / ``test`` — one row per held-out interaction: ``seq`` (B, L) the user's earlier items in the domain,
  left-padded (for the test of leave-one-out: training items and the validation item, as SASRec); ``target`` (B,);
  ``negatives`` (B, n); ``candidates`` (B, 1 + n) = target then negatives (score column 0 is the positive:
  :func:`~litzoo.framework.recsys.metrics.sampled_ranks`); ``user``, ``domain``, ``history_len`` (B,); ``sparse`` (B,)
  bool, ``history_len <= sparse_max`` (the cold / sparse users of the issue: <= 3 target interactions).

MF models read :meth:`InteractionsDataModule.train_interactions` (user -> set of training items) or
:meth:`~InteractionsDataModule.train_pairs`; full ranking leaves out :meth:`~InteractionsDataModule.exclusion_mask`.

:class:`InteractionFolderDataModule` reads a folder of such files, one per domain (``<domain>.inter`` / ``<domain>.csv``).

:func:`write_shared_taste_domains` writes SYNTHETIC domains with a planted ground truth (users' taste vectors shared
by every domain, per-domain item vectors, a Markov term on the previous item, a share of overlapping users, a sparse
domain) as ``.inter`` files plus ``planted.npz``; :class:`SharedTasteDataModule` generates once, then reads them
through the same reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from litzoo.framework.data import DictTensorDataset, SplitsDataModule
from litzoo.framework.data.staging import generate_folder_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.recsys.interactions import FORMATS, DomainInteractions, JoinedInteractions, join_domains, read_interactions
from litzoo.framework.recsys.metrics import SPARSE_MAX_INTERACTIONS
from litzoo.framework.recsys.negatives import sample_negatives
from litzoo.framework.recsys.splits import k_core, leave_one_out, left_pad, time_cutoffs, time_parts, user_time_order

SPLITS = ("leave_one_out", "time")
_SPLIT_CODE = {"val": 1, "test": 2}


def _subset(data: DomainInteractions, keep: np.ndarray) -> DomainInteractions:
    index = np.flatnonzero(keep)
    return DomainInteractions(
        data.path, [data.users[i] for i in index], [data.items[i] for i in index], data.ratings[index], data.timestamps[index], data.lines[index], data.has_time
    )


class InteractionsDataModule(SplitsDataModule):
    """Per-domain interaction files as sequence batches (see the module docstring for the keys and shapes).

    Args:
        domains: domain name -> interaction file; the order gives the domain ids (0, 1, ...).
        format: ``"inter"`` (RecBole atomic), ``"csv"`` or ``"auto"`` (by suffix / header).
        k_core: keep the iterated k-core of each domain (every user and item with >= k interactions there); 0 or 1 keeps all.
        split: ``"leave_one_out"`` (per user: last test, second-to-last validation) or ``"time"`` (global timestamp
            quantiles ``time_quantiles``; every held-out interaction is a sample, its history the user's earlier ones).
        max_len: the sequence length L (the most recent L items are kept).
        batch_size: samples per batch.
        num_workers: DataLoader workers (the data is in memory; 0 is fastest).
        seed: the seed of the negatives and of the training order (not ``seed_everything``'s: the evaluation
            candidates are part of the data).
        num_negatives: sampled negatives per held-out item (100 in SASRec, RecGURU and RecBole's ``uni100``).
        eval_domains: the domains whose held-out items are validated / tested (default: all).
        time_quantiles: the validation and test cuts of ``split="time"``.
        sparse_max: users with at most this many training interactions in a domain are ``sparse`` there.
        csv_columns: the column roles of header-less CSV files (see :func:`~litzoo.framework.recsys.read_csv_interactions`).

    Raises:
        ValueError: a bad option. LitzooError: a missing or malformed file (file and line), a domain left empty by
            k-core, a domain with too few items for ``num_negatives``.
    """

    def __init__(
        self,
        domains: dict[str, str],
        format: Literal["inter", "csv", "auto"] = "auto",
        k_core: int = 5,
        split: Literal["leave_one_out", "time"] = "leave_one_out",
        max_len: int = 50,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        num_negatives: int = 100,
        eval_domains: list[str] | None = None,
        time_quantiles: tuple[float, float] = (0.8, 0.9),
        sparse_max: int = SPARSE_MAX_INTERACTIONS,
        csv_columns: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if not domains:
            raise ValueError("domains must map at least one domain name to its interaction file")
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if k_core < 0 or max_len < 1 or num_negatives < 1 or sparse_max < 0:
            raise ValueError(f"need k_core >= 0, max_len >= 1, num_negatives >= 1, sparse_max >= 0; got {k_core}, {max_len}, {num_negatives}, {sparse_max}")
        if eval_domains is not None and (not eval_domains or set(eval_domains) - set(domains)):
            raise ValueError(f"eval_domains must be a non-empty subset of {list(domains)}, got {eval_domains}")
        low, high = time_quantiles
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"time_quantiles must satisfy 0 < val <= test < 1, got {time_quantiles}")
        self.domain_files = {str(name): str(path) for name, path in domains.items()}
        # explicit: a bare save_hyperparameters() in a subclass's chain stores, under LightningCLI, the subclass's given
        # arguments instead (SharedTaste's root and sizes, whose num_items would also clash with a model's)
        self.save_hyperparameters(dict(domains=domains, format=format, k_core=k_core, split=split, max_len=max_len, batch_size=batch_size,
                                       num_workers=num_workers, seed=seed, num_negatives=num_negatives, eval_domains=eval_domains,
                                       time_quantiles=time_quantiles, sparse_max=sparse_max, csv_columns=csv_columns))  # fmt: skip
        self.joined: JoinedInteractions | None = None
        self._train: dict[str, dict[int, list[int]]] = {}
        self._known: dict[str, dict[int, set[int]]] = {}
        self._held_out: dict[str, list[tuple[str, int, list[int], int]]] = {"val": [], "test": []}

    # --- reading and splitting -------------------------------------------------------------------
    def read_domain(self, name: str) -> DomainInteractions:
        """One domain's file, filtered to its k-core."""
        hp = self.hparams
        data = read_interactions(self.domain_files[name], hp.format, hp.csv_columns)
        if hp.split == "time" and not data.has_time:
            raise LitzooError(f"{data.path}: split='time' needs a timestamp column")
        _, users = np.unique(np.asarray(data.users, dtype=object), return_inverse=True)
        _, items = np.unique(np.asarray(data.items, dtype=object), return_inverse=True)
        kept = _subset(data, k_core(users, items, hp.k_core))
        if len(kept) == 0:
            raise LitzooError(f"{data.path}: no interaction left after {hp.k_core}-core filtering ({len(data)} rows read)")
        return kept

    def load(self) -> None:
        """Read, filter, join and split every domain once."""
        if self.joined is not None:
            return
        hp = self.hparams
        joined = join_domains({name: self.read_domain(name) for name in self.domain_files})
        cutoffs = time_cutoffs(np.concatenate(list(joined.timestamps.values())), tuple(hp.time_quantiles)) if hp.split == "time" else None
        for name in joined.domains:
            users, items, times = joined.users[name], joined.items[name], joined.timestamps[name]
            train: dict[int, list[int]] = {}
            known: dict[int, set[int]] = {}
            for user, rows in user_time_order(users, times).items():
                sequence = items[rows].tolist()
                parts = leave_one_out(rows) if cutoffs is None else time_parts(times[rows], cutoffs)
                known[user] = set(sequence)
                history = [item for item, part in zip(sequence, parts, strict=True) if part == 0]
                if history:
                    train[user] = history
                for position, (item, part) in enumerate(zip(sequence, parts, strict=True)):
                    if part > 0:  # the earlier items of this user in this domain, whatever their part
                        self._held_out[("val", "test")[part - 1]].append((name, user, sequence[:position], item))
            self._train[name], self._known[name] = train, known
        self.joined = joined

    # --- what models read ------------------------------------------------------------------------
    @property
    def domain_names(self) -> list[str]:
        return list(self.domain_files)

    def domain_index(self, domain: str) -> int:
        return self.domain_names.index(domain)

    @property
    def num_users(self) -> int:
        """Users over all domains; user ids are ``1..num_users`` (0 is padding)."""
        self.load()
        return self.joined.num_users

    def num_items(self, domain: str) -> int:
        """Items of ``domain``; its item ids are ``1..num_items`` (0 is padding)."""
        self.load()
        return self.joined.num_items(domain)

    @property
    def overlapping_users(self) -> list[int]:
        """User ids with interactions (after k-core) in two domains or more, ascending."""
        self.load()
        counts: dict[int, int] = {}
        for known in self._known.values():
            for user in known:
                counts[user] = counts.get(user, 0) + 1
        return sorted(user for user, count in counts.items() if count >= 2)

    def train_interactions(self, domain: str) -> dict[int, set[int]]:
        """User id -> the set of its training items in ``domain`` (for MF models)."""
        self.load()
        return {user: set(items) for user, items in self._train[domain].items()}

    def train_sequences(self, domain: str) -> dict[int, list[int]]:
        """User id -> its training items in ``domain``, in time order."""
        self.load()
        return {user: list(items) for user, items in self._train[domain].items()}

    def train_pairs(self, domain: str) -> Tensor:
        """``(N, 2)`` long (user, item) of the training interactions of ``domain``, users ascending, each in time order."""
        self.load()
        pairs = [(user, item) for user in sorted(self._train[domain]) for item in self._train[domain][user]]
        return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)

    def known_items(self, domain: str) -> dict[int, set[int]]:
        """User id -> every item it interacted with in ``domain`` (all splits): what negatives avoid."""
        self.load()
        return {user: set(items) for user, items in self._known[domain].items()}

    def exclusion_mask(self, domain: str, users: Tensor, targets: Tensor) -> Tensor:
        """``(B, num_items + 1)`` bool for full ranking in ``domain``: each user's known items other than its target."""
        self.load()
        known = self._known[domain]
        mask = torch.zeros(len(users), self.joined.num_items(domain) + 1, dtype=torch.bool)
        for row, (user, target) in enumerate(zip(users.tolist(), targets.tolist(), strict=True)):
            others = known.get(user, set()) - {target}
            if others:
                mask[row, list(others)] = True
        return mask

    # --- datasets --------------------------------------------------------------------------------
    def default_shuffle_seed(self) -> int:
        """``hparams.seed``: the training order follows the DataModule's seed, like its negatives."""
        return int(self.hparams.seed)

    def _train_dataset(self, domains: Sequence[str]) -> DictTensorDataset:
        L = self.hparams.max_len
        rows = [(self.domain_index(name), user, items) for name in domains for user, items in sorted(self._train[name].items())]
        histories = [items for _, _, items in rows]
        return DictTensorDataset(
            items=left_pad(histories, L),
            seq=left_pad([h[:-1] for h in histories], L),
            target=left_pad([h[1:] for h in histories], L),
            length=torch.tensor([min(len(h), L) for h in histories], dtype=torch.long),
            user=torch.tensor([user for _, user, _ in rows], dtype=torch.long),
            domain=torch.tensor([d for d, _, _ in rows], dtype=torch.long),
            history_len=torch.tensor([len(h) for h in histories], dtype=torch.long),
        )

    def _eval_dataset(self, split: str, domains: Sequence[str]) -> DictTensorDataset | None:
        hp = self.hparams
        samples = [s for s in self._held_out[split] if s[0] in domains]
        if not samples:
            return None
        negatives, seen = [], {}
        for name, user, _, _ in samples:
            index = seen[(name, user)] = seen.get((name, user), -1) + 1  # the user's n-th held-out item of the split
            try:
                drawn = sample_negatives(self.joined.num_items(name), self._known[name][user], hp.num_negatives, hp.seed,
                                         self.domain_index(name), user, _SPLIT_CODE[split], index)  # fmt: skip
            except ValueError as error:
                raise LitzooError(f"{self.joined.paths[name]}: user {user}: {error}") from None
            negatives.append(torch.from_numpy(drawn))
        target = torch.tensor([item for _, _, _, item in samples], dtype=torch.long)
        negatives_tensor = torch.stack(negatives)
        history_len = torch.tensor([len(self._train[name].get(user, ())) for name, user, _, _ in samples], dtype=torch.long)
        return DictTensorDataset(
            seq=left_pad([history for _, _, history, _ in samples], hp.max_len),
            target=target,
            negatives=negatives_tensor,
            candidates=torch.cat([target[:, None], negatives_tensor], 1),
            user=torch.tensor([user for _, user, _, _ in samples], dtype=torch.long),
            domain=torch.tensor([self.domain_index(name) for name, _, _, _ in samples], dtype=torch.long),
            history_len=history_len,
            sparse=history_len <= hp.sparse_max,
        )

    def build_datasets(self, split: str) -> dict[str, DictTensorDataset]:
        self.load()
        eval_domains = self.hparams.eval_domains or self.domain_names
        datasets = {"train": self._train_dataset(self.domain_names)}
        for name in ("val", "test"):
            dataset = self._eval_dataset(name, eval_domains)
            if dataset is not None:
                datasets[name] = dataset
            elif name == split:
                raise LitzooError(f"{', '.join(self.domain_files.values())}: no {name} interactions in {eval_domains} after splitting")
        return datasets

    def has_split(self, split: str) -> bool:
        if split == "train":
            return True
        self.load()
        eval_domains = self.hparams.eval_domains or self.domain_names
        return any(s[0] in eval_domains for s in self._held_out.get(split, []))

    def domain_dataset(self, split: str, domain: str) -> DictTensorDataset:
        """The ``split`` dataset of one domain only (a single-domain baseline, CAT-ART's per-domain pretraining)."""
        self.load()
        if domain not in self.domain_files:
            raise ValueError(f"unknown domain {domain!r}; domains are {self.domain_names}")
        if split == "train":
            return self._train_dataset([domain])
        dataset = self._eval_dataset(split, [domain])
        if dataset is None:
            raise LitzooError(f"{self.domain_files[domain]}: no {split} interactions after splitting")
        return dataset

    def domain_dataloader(self, split: str, domain: str) -> DataLoader:
        """A loader of :meth:`domain_dataset` (the training split shuffled and resumable, as ``train_dataloader``)."""
        return self.make_dataloader(self.domain_dataset(split, domain), self.batch_size, shuffle=split == "train")


class InteractionFolderDataModule(InteractionsDataModule):
    """A folder of per-domain interaction files, one domain per file: ``<root>/<domain>.inter`` (RecBole's atomic
    layout, a data set folder of ``.inter`` files) or ``<root>/<domain>.csv`` (``user,item,rating,timestamp``, the
    Amazon-review layout), read as :class:`InteractionsDataModule` (users joined across the files by id).

    Args:
        root: the folder (required; a config leaves it to the command line, ``--data.init_args.root``).
        domain_names: the domains to read, in this order (their ids 0, 1, ...); ``None``: every ``.inter`` / ``.csv``
            file of the folder, sorted by name.
        k_core ... csv_columns: as :class:`InteractionsDataModule` (``format`` follows each file's suffix).

    Raises:
        LitzooError: a missing folder, a folder without interaction files, a domain with no file or with both a
            ``.inter`` and a ``.csv`` file (one line, naming the folder).
    """

    def __init__(
        self,
        root: str | None = None,
        domain_names: list[str] | None = None,
        k_core: int = 5,
        split: Literal["leave_one_out", "time"] = "leave_one_out",
        max_len: int = 50,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        num_negatives: int = 100,
        eval_domains: list[str] | None = None,
        time_quantiles: tuple[float, float] = (0.8, 0.9),
        sparse_max: int = SPARSE_MAX_INTERACTIONS,
        csv_columns: tuple[str, ...] | None = None,
    ) -> None:
        if root is None:
            raise LitzooError(f"{type(self).__name__} needs data.root: the folder holding one <domain>.inter (RecBole atomic) or <domain>.csv "
                              "(user,item,rating,timestamp) file per domain; set it with --data.init_args.root <folder>")  # fmt: skip
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise LitzooError(f"{folder}: no such folder (data.init_args.root must hold one <domain>.inter or <domain>.csv file per domain)")
        files: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".inter", ".csv"):
                files.setdefault(path.stem, []).append(path)
        names = list(domain_names) if domain_names is not None else sorted(files)
        if not names:
            raise LitzooError(f"{folder}: no .inter or .csv interaction file in the folder")
        domains = {}
        for name in names:
            found = files.get(name, [])
            if len(found) != 1:
                what = "no file" if not found else f"both {found[0].name} and {found[1].name}"
                raise LitzooError(f"{folder}: domain {name!r} has {what} (expected exactly one of {name}.inter, {name}.csv)")
            domains[name] = str(found[0])
        self.folder = folder
        super().__init__(domains, format="auto", k_core=k_core, split=split, max_len=max_len, batch_size=batch_size, num_workers=num_workers,
                         seed=seed, num_negatives=num_negatives, eval_domains=eval_domains, time_quantiles=time_quantiles,
                         sparse_max=sparse_max, csv_columns=csv_columns)  # fmt: skip


# ---- SYNTHETIC shared-taste domains ---------------------------------------------------------------------------------
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
START_TIME = 1_600_000_000  # seconds; the synthetic clock starts here


def shared_taste_sequences(
    num_domains: int, num_users: int, num_items: int, overlap: float, sparse_domain: int | None, dense_length: tuple[int, int],
    sparse_length: tuple[int, int], dim: int, temperature: float, markov_weight: float, rng: np.random.Generator,
) -> dict[str, np.ndarray | list]:
    """SYNTHETIC planted tastes and the sequences they generate (see :func:`write_shared_taste_domains`).

    Returns ``user_vectors`` (U, dim), ``item_vectors`` (D, I, dim), ``successors`` (D, I, 3), ``domains_of_user``
    (list of domain lists) and ``sequences`` (per domain, a list of (user, [item indices], [timestamps]))."""  # fmt: skip
    user_vectors = rng.standard_normal((num_users, dim))
    item_vectors = rng.standard_normal((num_domains, num_items, dim)) / np.sqrt(dim)  # u.v has unit variance
    successors = np.stack([np.stack([rng.choice(num_items, 3, replace=False) for _ in range(num_items)]) for _ in range(num_domains)])
    shared = rng.random(num_users) < overlap
    home = rng.integers(0, num_domains, size=num_users)
    domains_of_user = [list(range(num_domains)) if shared[u] else [int(home[u])] for u in range(num_users)]
    sequences: list[list] = [[] for _ in range(num_domains)]
    for user in range(num_users):
        start = rng.uniform(0, 365 * 86400)
        for d in domains_of_user[user]:
            low, high = sparse_length if d == sparse_domain else dense_length
            length = int(rng.integers(low, high + 1))
            taste = item_vectors[d] @ user_vectors[user] / temperature
            used = np.zeros(num_items, dtype=bool)
            items, stamps, previous, clock = [], [], None, start
            for _ in range(length):
                logits = taste.copy()
                if previous is not None:
                    logits[successors[d, previous]] += markov_weight
                logits[used] = -np.inf  # no repeats: a held-out item never appears earlier in the sequence
                p = np.exp(logits - logits.max())
                item = int(rng.choice(num_items, p=p / p.sum()))
                clock += rng.exponential(86400.0)
                items.append(item)
                stamps.append(int(clock))
                used[item], previous = True, item
            sequences[d].append((user, items, stamps))
    return {"user_vectors": user_vectors, "item_vectors": item_vectors, "successors": successors, "domains_of_user": domains_of_user, "sequences": sequences}


def write_shared_taste_domains(
    root: str | Path,
    num_domains: int = 2,
    num_users: int = 1000,
    num_items: int = 300,
    overlap: float = 0.2,
    sparse_domain: int | None = 1,
    dense_length: tuple[int, int] = (10, 30),
    sparse_length: tuple[int, int] = (5, 8),
    dim: int = 8,
    temperature: float = 0.5,
    markov_weight: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write SYNTHETIC cross-domain interactions with a planted ground truth; returns the folder.

    Generative model: user tastes ``u ~ N(0, I_dim)`` shared by every domain; per domain item vectors
    ``v ~ N(0, I_dim / dim)`` and a Markov structure (each item has 3 random successors); a user's next item in a
    domain ~ ``softmax(u.v / temperature + markov_weight [item follows the previous one])`` over the items it has not
    taken yet. A share ``overlap`` of the users is in every domain, each other user in one domain drawn uniformly.
    Sequence lengths are uniform in ``dense_length``, or ``sparse_length`` in ``sparse_domain`` (the sparse target).
    Ratings are ``clip(round(3 + 2 tanh(u.v)), 1, 5)``; timestamps are seconds on one clock for all domains.

    Files (written into a temporary sibling folder and renamed into place; an existing complete folder is reused):
    ``d<k>.inter`` in RecBole's atomic format (users ``u<index>``, items ``d<k>_i<index>``) and ``planted.npz``:
    ``user_vectors`` (U, dim), ``item_vectors`` (D, I, dim), ``successors`` (D, I, 3), ``overlap_users`` (user
    indices in every domain), ``temperature``, ``markov_weight``, ``sparse_domain`` (-1 for none).

    k-core filtering cascades: a sparse user with 5 interactions leaves a 5-core as soon as one of its items does. At
    the default sizes a 5-core keeps about 95% of the sparse domain's users (seeds 0-3: 563-614 of ~600); with far fewer
    users per item (e.g. 400 users, 200 items) the sparse domain's 5-core is empty.

    Raises:
        ValueError: bad sizes or ranges.
    """
    if num_domains < 1 or num_users < 1 or num_items < 4 or dim < 1:
        raise ValueError("need num_domains >= 1, num_users >= 1, num_items >= 4, dim >= 1")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    if sparse_domain is not None and not 0 <= sparse_domain < num_domains:
        raise ValueError(f"sparse_domain must be in 0..{num_domains - 1} or None, got {sparse_domain}")
    for name, (low, high) in (("dense_length", dense_length), ("sparse_length", sparse_length)):
        if not 1 <= low <= high <= num_items:
            raise ValueError(f"{name} must satisfy 1 <= low <= high <= num_items, got {(low, high)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    folder = Path(root).expanduser() / "SYNTHETIC_shared_taste"
    if (folder / "planted.npz").is_file():
        return folder

    def write(staging: Path) -> None:
        planted = shared_taste_sequences(num_domains, num_users, num_items, overlap, sparse_domain, tuple(dense_length), tuple(sparse_length), dim,
                                         temperature, markov_weight, np.random.default_rng(seed))  # fmt: skip
        for d, rows in enumerate(planted["sequences"]):
            lines = [INTER_HEADER]
            for user, items, stamps in rows:
                taste = planted["item_vectors"][d] @ planted["user_vectors"][user]
                for item, stamp in zip(items, stamps, strict=True):
                    rating = float(np.clip(np.round(3 + 2 * np.tanh(taste[item])), 1, 5))
                    lines.append(f"u{user}\td{d}_i{item}\t{rating:g}\t{stamp}\n")
            (staging / f"d{d}.inter").write_text("".join(lines), encoding="utf-8")
        overlap_users = np.array([u for u, ds in enumerate(planted["domains_of_user"]) if len(ds) > 1], dtype=np.int64)
        np.savez(staging / "planted.npz", user_vectors=planted["user_vectors"], item_vectors=planted["item_vectors"], successors=planted["successors"],
                 overlap_users=overlap_users, temperature=temperature, markov_weight=markov_weight,
                 sparse_domain=-1 if sparse_domain is None else sparse_domain)  # fmt: skip

    generate_folder_atomically(folder, write)
    return folder


class SharedTasteDataModule(InteractionsDataModule):
    """The SYNTHETIC shared-taste domains of :func:`write_shared_taste_domains`, generated into
    ``root/seed<seed>-u<num_users>-i<num_items>-d<num_domains>-o<overlap>`` when missing and read through
    :class:`InteractionsDataModule` (domains ``d0``, ``d1``, ...; ``eval_domains`` defaults to the sparse one).

    Args:
        root: folder the generated data is written under.
        num_domains, num_users, num_items, overlap, sparse_domain, seed: passed to :func:`write_shared_taste_domains`.
        k_core, split, max_len, batch_size, num_workers, num_negatives, eval_domains: as :class:`InteractionsDataModule`.
    """

    def __init__(
        self,
        root: str = "data/recsys",
        num_domains: int = 2,
        num_users: int = 1000,
        num_items: int = 300,
        overlap: float = 0.2,
        sparse_domain: int | None = 1,
        seed: int = 0,
        k_core: int = 5,
        split: Literal["leave_one_out", "time"] = "leave_one_out",
        max_len: int = 50,
        batch_size: int = 256,
        num_workers: int = 0,
        num_negatives: int = 100,
        eval_domains: list[str] | None = None,
    ) -> None:
        name = f"seed{seed}-u{num_users}-i{num_items}-d{num_domains}-o{overlap:g}-s{-1 if sparse_domain is None else sparse_domain}"
        self.folder = write_shared_taste_domains(Path(root).expanduser() / name, num_domains=num_domains, num_users=num_users, num_items=num_items,
                                                 overlap=overlap, sparse_domain=sparse_domain, seed=seed)  # fmt: skip
        domains = {f"d{d}": str(self.folder / f"d{d}.inter") for d in range(num_domains)}
        if eval_domains is None and sparse_domain is not None:
            eval_domains = [f"d{sparse_domain}"]
        super().__init__(domains, format="inter", k_core=k_core, split=split, max_len=max_len, batch_size=batch_size, num_workers=num_workers,
                         seed=seed, num_negatives=num_negatives, eval_domains=eval_domains)  # fmt: skip

    def planted(self) -> dict[str, np.ndarray]:
        """The planted ground truth (``planted.npz``), indexed by the generator's user / item indices (``u<index>``, ``d<k>_i<index>``)."""
        with np.load(self.folder / "planted.npz") as data:
            return {key: data[key] for key in data.files}


__all__ = ["InteractionFolderDataModule", "InteractionsDataModule", "SharedTasteDataModule", "left_pad", "shared_taste_sequences", "write_shared_taste_domains"]
