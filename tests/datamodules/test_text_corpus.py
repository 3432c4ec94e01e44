"""TextCorpusDataModule: JSONL corpus → split, quality pruning of the training split only, token blocks, budget, errors."""

from __future__ import annotations

import json

import pytest
import torch

from litzoo.datamodules.synthetic import text_quality_corpus
from litzoo.datamodules.text_corpus import TextCorpusDataModule, read_jsonl_texts
from litzoo.framework.errors import LitzooError

CLEAN = [
    "The old farmer carried the basket to the market with his son.",
    "A young teacher opened the window and looked at the quiet river.",
    "The brave sailor repaired the boat and walked to the harbor.",
]
JUNK = ["home | login | page 3 of 99", "qqq qqq qqq qqq qqq", "var x = {a: 1}; // javascript"]


def write_corpus(path, num_clean=30, num_junk=30):
    rows = []
    for i in range(num_clean + num_junk):
        lines = [CLEAN[(i + j) % 3] for j in range(3)]
        if i >= num_clean:
            lines.insert(1, JUNK[i % 3])
        rows.append({"text": "\n".join(lines), "id": i, "junky": i >= num_clean})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def make(path, **kwargs):
    kwargs.setdefault("block_size", 16)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("bpe_vocab_size", 128)
    dm = TextCorpusDataModule(path=str(path), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_blocks_and_batches(tmp_path):
    write_corpus(tmp_path / "c.jsonl")
    dm = make(tmp_path / "c.jsonl", val_fraction=0.2)
    assert len(dm.train_documents) == 48 and len(dm.val_documents) == 12
    assert make(tmp_path / "c.jsonl", val_fraction=0.2, split_seed=0).val_documents == dm.val_documents  # fixed by split_seed
    assert make(tmp_path / "c.jsonl", val_fraction=0.2, split_seed=1).val_documents != dm.val_documents
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"tokens"} and batch["tokens"].shape == (4, 17) and batch["tokens"].dtype == torch.long
    blocks = dm.datasets["train"].tensors["tokens"]
    # stride block_size: each block starts with the previous block's last token
    assert torch.equal(blocks[1:, 0], blocks[:-1, -1])
    assert int(blocks.max()) < dm.vocab_size
    assert (blocks == dm.tokenizer.start_id).any() and (blocks == dm.tokenizer.end_id).any()
    assert dm.stats["kept_fraction"] == 1.0


def test_pruning_touches_the_training_split_only(tmp_path):
    rows = write_corpus(tmp_path / "c.jsonl")
    junky = {r["text"] for r in rows if r["junky"]}
    full = make(tmp_path / "c.jsonl", val_fraction=0.2)
    clean_train = [d for d in full.train_documents if d not in junky]
    keep = len(clean_train) / len(full.train_documents)
    pruned = make(tmp_path / "c.jsonl", val_fraction=0.2, keep_fraction=keep)
    # exactly the clean training documents are kept, in the same seeded split
    assert sorted(pruned.train_documents) == sorted(clean_train)
    assert pruned.stats["kept_fraction"] == pytest.approx(keep)
    # validation is the same held-out documents, junk included: never pruned
    assert pruned.val_documents == full.val_documents and any(d in junky for d in pruned.val_documents)
    assert pruned.stats["train_tokens_available"] < full.stats["train_tokens_available"]


def test_token_budget_equalises_full_and_pruned(tmp_path):
    write_corpus(tmp_path / "c.jsonl")
    full = make(tmp_path / "c.jsonl", token_budget=1600)
    pruned = make(tmp_path / "c.jsonl", token_budget=1600, keep_fraction=0.4)
    # the full stream is cut to the budget, the pruned one repeated up to it
    assert full.stats["train_tokens_available"] > 1600 > pruned.stats["train_tokens_available"]
    assert len(full.datasets["train"]) == len(pruned.datasets["train"]) == 100
    assert full.stats["train_tokens"] == pruned.stats["train_tokens"] == 1600
    with pytest.raises(ValueError, match="token_budget"):
        TextCorpusDataModule(path="x", block_size=16, token_budget=8)


def test_synthetic_fallback_and_validation_path(tmp_path):
    dm = TextCorpusDataModule(data_dir=str(tmp_path / "data"), num_documents=40, block_size=16, bpe_vocab_size=128)
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "data" / "corpus.jsonl").is_file() and len(dm.split()[1]) == 4
    clean = text_quality_corpus(tmp_path / "clean", num_documents=5, junk_share=0.0, seed=1)
    dm = make(tmp_path / "data" / "corpus.jsonl", val_path=str(clean))
    assert dm.split()[1] == read_jsonl_texts(clean) and len(dm.split()[0]) == 40


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ('{"text": "fine."}\n{not json\n', "line 2 is not JSON"),
        ('{"text": "fine."}\n\n{"body": 1}\n', "line 3 has no string field 'text'"),
        ("\n", "holds no document"),
    ],
)
def test_bad_corpus_files_raise_one_line(tmp_path, content, message):
    path = tmp_path / "c.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LitzooError, match=message) as info:
        make(path)
    assert str(path) in str(info.value)


def test_argument_checks():
    for kwargs, message in (({"keep_fraction": 0.0}, "keep_fraction"), ({"val_fraction": 1.0}, "val_fraction"), ({"block_size": 0}, "block_size")):
        with pytest.raises(ValueError, match=message):
            TextCorpusDataModule(**kwargs)
