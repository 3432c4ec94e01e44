"""TextTokenizer (framework/data/tokenization.py): CLIP's token layout, truncation, training, save/load and bad files."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.errors import LitzooError

CORPUS = [
    "a photo of the number seven",
    "handwritten digit three",
    "the digit five written by hand",
    "a red car parked on the street",
    "two dogs playing in the park",
    "sunset over the sea",
    "a bowl of fresh fruit on a table",
    "mountains covered in snow",
] * 3


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, vocab_size=80, context_length=8)


def _ids(tok: TextTokenizer, text: str) -> list[int]:
    return tok.tokenizer.encode(text, add_special_tokens=False).ids


def test_special_token_ids(tok):
    assert (tok.pad_id, tok.start_id, tok.end_id) == (0, 2, 3)
    assert tok.tokenizer.token_to_id("<unk>") == 1
    assert tok.vocab_size <= 80
    assert repr(tok) == f"TextTokenizer(vocab_size={tok.vocab_size}, context_length=8)"


def test_layout_start_ids_end_then_zero_padding(tok):
    body = _ids(tok, "a red car")
    assert 1 <= len(body) <= 5 and 0 not in body
    out = tok(["a red car", ""])
    assert out.dtype == torch.long and out.shape == (2, 8)
    expected = [2, *body, 3] + [0] * (8 - 2 - len(body))
    assert out[0].tolist() == expected
    assert out[1].tolist() == [2, 3, 0, 0, 0, 0, 0, 0]  # an empty caption
    assert torch.equal(tok("a red car"), out[:1])  # a single string is one row
    assert tok.end_positions(out).tolist() == [1 + len(body), 1]


def test_truncation_keeps_the_end_token_last(tok):
    text = "a bowl of fresh fruit on a table and two dogs playing in the park"
    body = _ids(tok, text)
    assert len(body) > 6  # longer than the 6 body slots of context 8
    out = tok([text])
    assert out[0].tolist() == [2, *body[:6], 3]
    assert tok.end_positions(out).tolist() == [7]
    # exactly fitting: no truncation, end at the last position
    a = tok.tokenizer.token_to_id("a")
    assert _ids(tok, "a a a a a a") == [a] * 6
    assert tok(["a a a a a a"])[0].tolist() == [2, a, a, a, a, a, a, 3]
    assert tok(["a a a a a a a"])[0].tolist() == [2, a, a, a, a, a, a, 3]  # 7 body tokens: the 7th is cut
    assert tok(["a a a a a"])[0].tolist() == [2, a, a, a, a, a, 3, 0]


def test_lower_cases(tok):
    assert torch.equal(tok(["A Red CAR"]), tok(["a red car"]))
    assert torch.equal(tok(["SUNSET over the SEA"]), tok(["sunset over the sea"]))


def test_training_is_deterministic_and_ids_below_vocab_size():
    corpus = [f"caption {word} number {i % 7} of the {word}s" for i, word in enumerate(["cat", "dog", "bird", "horse", "fish"] * 20)]
    first = TextTokenizer.train(corpus, vocab_size=40, context_length=12)
    second = TextTokenizer.train(corpus, vocab_size=40, context_length=12)
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    a, b = first(corpus), second(corpus)
    assert torch.equal(a, b)
    assert int(a.max()) < 40 and first.vocab_size <= 40


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = TextTokenizer.load(path, context_length=8)
    texts = ["a photo of the number seven", "Mountains covered in SNOW", "unseen zebra words", ""]
    assert torch.equal(loaded(texts), tok(texts))
    assert loaded.vocab_size == tok.vocab_size
    longer = TextTokenizer.load(str(path), context_length=12)
    assert longer(texts).shape == (4, 12)
    torch.testing.assert_close(longer(texts)[:, :8][tok(texts)[:, -1] == 0], tok(texts)[tok(texts)[:, -1] == 0])


def test_load_missing_file(tmp_path):
    path = tmp_path / "nothere" / "tokenizer.json"
    with pytest.raises(LitzooError, match=re.escape(str(path))) as info:
        TextTokenizer.load(path)
    assert "\n" not in str(info.value)


def test_load_non_json_file(tmp_path):
    path = tmp_path / "garbage.json"
    path.write_text("this is { not json\nat all\n")
    with pytest.raises(LitzooError, match=re.escape(str(path))) as info:
        TextTokenizer.load(path)
    assert "\n" not in str(info.value)


def test_load_tokenizer_without_special_tokens(tmp_path):
    plain = Tokenizer(models.BPE(unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    plain.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(vocab_size=50, special_tokens=["[UNK]"], show_progress=False))
    path = tmp_path / "plain_tokenizer.json"
    plain.save(str(path))
    with pytest.raises(LitzooError, match=re.escape(str(path)) + ".*<pad>") as info:
        TextTokenizer.load(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="special tokens"):
        TextTokenizer(plain)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="context_length"):
        TextTokenizer.train(CORPUS, vocab_size=50, context_length=2)
    with pytest.raises(ValueError, match="vocab_size"):
        TextTokenizer.train(CORPUS, vocab_size=4)


def test_end_positions_on_hand_made_rows(tok):
    rows = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 3, 0, 0, 0, 0], [2, 5, 5, 5, 5, 3], [2, 6, 3, 3, 0, 0]])
    assert tok.end_positions(rows).tolist() == [3, 1, 5, 2]
