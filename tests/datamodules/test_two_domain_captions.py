"""The SYNTHETIC two-domain caption pool (datamodules/two_domain_captions.py): the files on disk, the planted domains,
seeded regeneration, the DataModule's tasks, batches, data-expert manifests and resumable training order.

MoDE's clustering of the pool is tested in tests/modules/test_mode.py and tests/cli/test_mode_cli.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from litzoo.datamodules.two_domain_captions import (
    DIGIT_WORDS,
    DOMAIN_TEMPLATES,
    NOISE_CAPTIONS,
    TwoDomainCaptionsDataModule,
    two_domain_caption_pool,
)
from litzoo.framework.data.loaders import ResumableLoader
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.errors import LitzooError

FOLDER = "seed0-noise0.2-v128"  # where TwoDomainCaptionsDataModule(root, seed=0, noise_share=0.2, vocab_size=128) looks


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two_domain")
    two_domain_caption_pool(root / FOLDER, noise_share=0.2, seed=0, vocab_size=128)
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _data(root: Path, **kwargs) -> TwoDomainCaptionsDataModule:
    return TwoDomainCaptionsDataModule(root=str(root), vocab_size=128, **kwargs)


# ------------------------------------------------------------------------------------------ the files on disk


def test_pool_is_seeded_byte_for_byte(root, tmp_path):
    paths = two_domain_caption_pool(tmp_path / "again", noise_share=0.2, seed=0, vocab_size=128)
    assert set(paths) == {"train", "val", "test", "val_A", "test_A", "val_B", "test_B"}

    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

    first = digest(root / FOLDER)
    assert len(first) == 1797 + 7 + 1 and first == digest(tmp_path / "again")  # images, manifests and tokenizer.json
    other = two_domain_caption_pool(tmp_path / "seed1", noise_share=0.2, seed=1, vocab_size=128)
    assert other["train"].read_bytes() != paths["train"].read_bytes() and other["test"].read_bytes() != paths["test"].read_bytes()
    for bad in (dict(noise_share=1.0), dict(noise_share=-0.1), dict(val_fraction=0.5, test_fraction=0.5), dict(test_fraction=0.0)):
        with pytest.raises(ValueError, match="noise_share|val_fraction"):
            two_domain_caption_pool(tmp_path / "bad", **bad)


def test_splits_are_stratified_disjoint_and_cover_the_digits(root):
    folder = root / FOLDER
    rows = {name: _lines(folder / f"{name}.jsonl") for name in ("train", "val", "test")}
    assert {name: len(r) for name, r in rows.items()} == {"train": 1257, "val": 180, "test": 360}
    images = sorted(row["image"] for r in rows.values() for row in r)
    assert images == [f"images/{i:05d}.png" for i in range(1797)]  # disjoint, every digit image once
    from sklearn.datasets import load_digits

    target = load_digits().target
    for name, r in rows.items():
        assert all(row["digit"] == target[int(Path(row["image"]).stem)] for row in r)
        counts = np.bincount([row["digit"] for row in r], minlength=10)
        assert np.all(np.abs(counts - len(r) * np.bincount(target) / len(target)) <= 1.5), name  # stratified by digit
        assert [row["image"] for row in r] == sorted(row["image"] for row in r)


def test_pool_lines_plant_two_domains_and_shared_noise(root):
    rows = _lines(root / FOLDER / "train.jsonl")
    assert all(set(row) == {"image", "text", "digit", "domain", "kind"} for row in rows)  # the pool has no task label
    assert all(row["domain"] == ("A" if row["digit"] < 5 else "B") for row in rows)
    vocabulary = {d: {w for t in templates for w in t.format("").split()} for d, templates in DOMAIN_TEMPLATES.items()}
    assert not vocabulary["A"] & vocabulary["B"]  # disjoint vocabularies
    rendered = {d: {t.format(DIGIT_WORDS[k]): t for t in templates for k in range(10)} for d, templates in DOMAIN_TEMPLATES.items()}
    templates_used = {"A": Counter(), "B": Counter()}
    for row in rows:
        if row["kind"] == "class":  # its own domain's template, naming its own digit
            templates_used[row["domain"]][rendered[row["domain"]][row["text"]]] += 1
            assert re.search(rf"\b{DIGIT_WORDS[row['digit']]}\b", row["text"])
        else:
            assert row["kind"] == "noise" and not set(row["text"].split()) & (vocabulary["A"] | vocabulary["B"] | set(DIGIT_WORDS))
            assert row["text"] in NOISE_CAPTIONS or set(row["text"]) <= set("abcdefghijklmnopqrstuvwxyz ")
    for domain, counts in templates_used.items():  # templates drawn uniformly (~500 draws each: 3 sd of a 1/5 share < 0.06)
        total = sum(counts.values())
        assert set(counts) == set(DOMAIN_TEMPLATES[domain]) and all(abs(c / total - 0.2) < 0.06 for c in counts.values()), counts
    noise = [row for row in rows if row["kind"] == "noise"]
    assert abs(len(noise) / len(rows) - 0.2) < 0.035  # noise_share (3 sd of 1257 draws)
    for domain in "AB":  # the noise is shared: as likely on either domain's images
        of = [row for row in rows if row["domain"] == domain]
        assert abs(sum(row["kind"] == "noise" for row in of) / len(of) - 0.2) < 0.05
    named = [row for row in noise if row["text"] in NOISE_CAPTIONS]
    assert 0.35 < len(named) / len(noise) < 0.65  # half from the common list, half random letters


def test_evaluation_manifests_are_clean_and_labelled_by_task(root, tmp_path):
    folder = root / FOLDER
    for split in ("val", "test"):
        rows = _lines(folder / f"{split}.jsonl")
        assert all(row["kind"] == "class" and row["label"] == row["digit"] for row in rows)  # all ten digits, clean captions
        for domain, start in (("A", 0), ("B", 5)):
            part = _lines(folder / f"{split}_{domain}.jsonl")
            assert part == [{**row, "label": row["digit"] - start} for row in rows if row["domain"] == domain]
            assert {row["label"] for row in part} == set(range(5))
    clean = two_domain_caption_pool(tmp_path / "clean", noise_share=0.0, seed=0, vocab_size=128)
    assert all(row["kind"] == "class" for row in _lines(clean["train"]))  # noise_share=0: no noise at all


def test_tokenizer_file_is_the_bpe_of_the_pool_captions(root):
    folder = root / FOLDER
    texts = [row["text"] for row in _lines(folder / "train.jsonl")]
    saved = TextTokenizer.load(folder / "tokenizer.json")
    assert saved.vocab_size <= 128
    assert saved.tokenizer.get_vocab() == TextTokenizer.train(texts, vocab_size=128).tokenizer.get_vocab()
    held_out = [row["text"] for row in _lines(folder / "test.jsonl")]
    assert all(int(saved(t)[0][1:].ne(0).sum()) >= 2 for t in held_out)  # tokenized (start ... end), never empty


# ------------------------------------------------------------------------------------------ the DataModule


@pytest.mark.parametrize(("task", "digits"), [("all", range(10)), ("A", range(5)), ("B", range(5, 10))])
def test_batches_of_each_task(root, task, digits):
    data = _data(root, task=task, batch_size=16)
    assert data.pool_folder == root / FOLDER and data.manifests["train"] == str(root / FOLDER / "train.jsonl")
    assert data.class_names == [DIGIT_WORDS[d] for d in digits] and data.num_classes == len(digits) and data.input_shape == (1, 8, 8)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert set(batch) == {"image", "text", "tokens", "index", "label"}
    assert batch["image"].shape == (16, 1, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["tokens"].shape == (16, 16) and batch["tokens"].dtype == torch.long and int(batch["tokens"].max()) < 128
    assert torch.equal(batch["tokens"], data.tokenizer(batch["text"]))
    for text, label in zip(batch["text"], batch["label"].tolist(), strict=True):  # the label is the digit the caption names
        assert re.search(rf"\b{DIGIT_WORDS[digits[label]]}\b", text)
    validation = sum(len(b["index"]) for b in data.val_dataloader())
    assert validation == (180 if task == "all" else len(_lines(root / FOLDER / f"val_{task}.jsonl")))
    train = next(iter(data.train_dataloader()))
    assert set(train) == {"image", "text", "tokens", "index"}  # the pool carries no task label
    from sklearn.datasets import load_digits

    rows = _lines(root / FOLDER / "train.jsonl")
    first = rows[int(train["index"][0])]
    pixels = np.round(load_digits().images[int(Path(first["image"]).stem)] * (255 / 16)) / 255
    torch.testing.assert_close(train["image"][0, 0], (torch.from_numpy(pixels).float() - 0.5) / 0.5, atol=1e-6, rtol=1e-6)
    assert train["text"][0] == first["text"]


def test_pool_is_generated_once_into_its_folder(tmp_path):
    data = TwoDomainCaptionsDataModule(root=str(tmp_path), seed=2, noise_share=0.1, vocab_size=100)
    folder = tmp_path / "seed2-noise0.1-v100"
    assert data.pool_folder == folder and (folder / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed2-noise0.1-v100"]  # no staging folder left behind
    assert data.hparams["noise_share"] == 0.1 and data.hparams["seed"] == 2
    stamp = (folder / "train.jsonl").stat().st_mtime_ns
    TwoDomainCaptionsDataModule(root=str(tmp_path), seed=2, noise_share=0.1, vocab_size=100)
    assert (folder / "train.jsonl").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert _lines(folder / "train.jsonl") == _lines(two_domain_caption_pool(tmp_path / "direct", 0.1, seed=2, vocab_size=100)["train"])


class FakeClustering:
    """A clustering step that sends the pool's domain-A pairs to expert 0 and the others to expert 1."""

    def __init__(self, name: str = "fake", fail: bool = False) -> None:
        self.name, self.fail, self.calls = name, fail, 0

    def write_experts(self, manifest: str | Path, output: str | Path) -> list[Path]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("clustering failed")
        rows = _lines(Path(manifest))
        paths = []
        for expert, domain in enumerate("AB"):
            path = Path(output) / f"expert_{expert}.jsonl"
            # image paths relative to the new manifest's folder
            path.write_text("".join(json.dumps({**row, "image": f"../{row['image']}"}) + "\n" for row in rows if row["domain"] == domain))
            paths.append(path)
        (Path(output) / "summary.json").write_text("{}")
        return paths


def test_an_expert_trains_on_its_manifest_written_once(root):
    step = FakeClustering("fake_once")
    data = _data(root, expert=1, clustering=step, task="B")
    assert step.calls == 1 and data.experts_folder == root / FOLDER / "fake_once"
    assert data.manifests["train"] == str(root / FOLDER / "fake_once" / "expert_1.jsonl")
    assert "clustering" not in data.hparams and data.hparams["expert"] == 1
    train = data.dataset("train")
    assert len(train) == sum(row["domain"] == "B" for row in _lines(root / FOLDER / "train.jsonl"))
    assert train[0]["image"].shape == (1, 8, 8)
    _data(root, expert=0, clustering=step)
    assert step.calls == 1  # the experts' folder is complete: not clustered again
    with pytest.raises(LitzooError, match=r"data expert 2 has no manifest '.*expert_2\.jsonl' \(the clustering wrote \['expert_0\.jsonl', 'expert_1\.jsonl'\]\)"):
        _data(root, expert=2, clustering=step)
    failing = FakeClustering("fake_fails", fail=True)
    with pytest.raises(RuntimeError, match="clustering failed"):
        _data(root, expert=0, clustering=failing)
    assert not (root / FOLDER / "fake_fails").exists() and not list((root / FOLDER).glob(".fake_fails*"))  # nothing half-written


def test_argument_checks(root):
    with pytest.raises(ValueError, match="task must be 'all', 'A' or 'B'"):
        _data(root, task="C")
    with pytest.raises(ValueError, match="expert and clustering go together"):
        _data(root, expert=0)
    with pytest.raises(ValueError, match="expert and clustering go together"):
        _data(root, clustering=FakeClustering())
    with pytest.raises(ValueError, match="expert must be >= 0"):
        _data(root, expert=-1, clustering=FakeClustering())
    with pytest.raises(ValueError, match="noise_share"):
        _data(root, noise_share=1.0)


def test_training_order_is_seeded_and_resumes_mid_epoch(root):
    def loader(seed: int = 3) -> ResumableLoader:
        data = _data(root, batch_size=300)
        data.load_state_dict({"shuffle_seed": seed})
        data.setup("fit")
        return data.train_dataloader()

    full = loader()
    assert isinstance(full, ResumableLoader)
    epoch0 = [b["index"].tolist() for b in full]
    epoch1 = [b["index"].tolist() for b in full]
    assert sorted(sum(epoch0, [])) == list(range(1257)) and epoch0 != epoch1  # a new order each epoch
    assert [b["index"].tolist() for b in loader()] == epoch0 and [b["index"].tolist() for b in loader(4)] != epoch0  # by the seed
    interrupted = loader()
    iterator = iter(interrupted)
    head = [next(iterator)["index"].tolist() for _ in range(2)]
    state = interrupted.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert head + [b["index"].tolist() for b in resumed] == epoch0  # killed after 2 batches and resumed = uninterrupted
