"""AttributionWriter on a user's tiny text classifier (not a litzoo module) trained on SYNTHETIC planted triggers:
the trigger is the top-attributed token, the JSONL / HTML / TensorBoard outputs hold the attributions and they add up
to the logit differences; the protocol refusal, bad arguments and rank-zero-only behaviour."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from litzoo.callbacks.attribution_writer import AttributionWriter, token_strings
from litzoo.framework.errors import LitzooError

PAD, TRIGGER = 0, 1
VOCABULARY = ["<pad>", "TRIGGER"] + [f"w{i}" for i in range(2, 16)]
LENGTH = 8


class SyntheticTriggerTexts(Dataset):
    """SYNTHETIC: random filler words (ids 2..15), lengths 4..8 padded with 0; label 1 iff the planted trigger
    token (id 1) is at a random position, which half of the samples get. Ground truth: the trigger decides the class."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.zeros(count, LENGTH, dtype=torch.long)
        self.mask = torch.zeros(count, LENGTH, dtype=torch.bool)
        self.labels = torch.randint(0, 2, (count,), generator=generator)
        for i in range(count):
            length = int(torch.randint(4, LENGTH + 1, (), generator=generator))
            self.tokens[i, :length] = torch.randint(2, len(VOCABULARY), (length,), generator=generator)
            self.mask[i, :length] = True
            if self.labels[i] == 1:
                self.tokens[i, int(torch.randint(0, length, (), generator=generator))] = TRIGGER

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens[index], "mask": self.mask[index], "label": self.labels[index]}


class UserTextClassifier(L.LightningModule):
    """A user's bag-of-embeddings classifier exposing the AttributionWriter protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCABULARY), 8)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 2)
        self.id_to_token = VOCABULARY

    def embed(self, tokens):
        return self.embedding(tokens)

    def forward_embeds(self, embeds, mask):
        weights = mask.to(embeds.dtype).unsqueeze(-1)
        pooled = (embeds * weights).sum(1) / weights.sum(1)
        return self.out(torch.tanh(self.hidden(pooled)))

    def forward(self, tokens, mask):
        return self.forward_embeds(self.embed(tokens), mask)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["tokens"], batch["mask"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch["tokens"], batch["mask"]), batch["label"]))

    def test_step(self, batch, batch_idx):
        self.log("test_acc", (self(batch["tokens"], batch["mask"]).argmax(1) == batch["label"]).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class NoProtocol(UserTextClassifier):
    embed = None  # a module without embed(tokens)

    def __init__(self) -> None:
        super().__init__()
        del self.id_to_token


def trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path, name="run"), callbacks=callbacks, accelerator="cpu",
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **kwargs)  # fmt: skip


class Spans(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[str] = []
        self.titles: list[float] = []
        self._inside = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "t":
            self._inside = True
            self.titles.append(float(attrs["title"]))

    def handle_data(self, data):
        if self._inside:
            self.tokens.append(data)
            self._inside = False


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("attribution")
    torch.manual_seed(0)
    model = UserTextClassifier()
    train = DataLoader(SyntheticTriggerTexts(512, seed=1), batch_size=32, shuffle=True)
    test_set = SyntheticTriggerTexts(48, seed=2)
    test = DataLoader(test_set, batch_size=16)
    writer = AttributionWriter(max_samples=20, steps=32, stages=("test", "validate"))
    run = trainer(tmp_path, [writer], max_epochs=4, limit_val_batches=1)
    run.fit(model, train, test)
    validation_files = sorted((tmp_path / "run" / "version_0" / "attributions").glob("validate_step*.jsonl"), key=lambda f: int(f.stem.split("step")[1]))
    accuracy = run.test(model, test, verbose=False)[0]["test_acc"]
    return SimpleNamespace(model=model, writer=writer, test_set=test_set, accuracy=accuracy, folder=tmp_path / "run" / "version_0",
                           validation_files=validation_files)  # fmt: skip


def test_trigger_is_the_top_attributed_token(trained):
    assert trained.accuracy > 0.95  # the classifier learnt the planted rule
    records = [json.loads(line) for line in (trained.folder / "attributions" / "test_step64.jsonl").read_text().splitlines()]
    assert len(records) == 20  # the first max_samples samples, across two batches of 16
    positives = [r for r in records if r["prediction"] == 1 and r["label"] == 1]
    negatives = [r for r in records if r["label"] == 0]
    assert len(positives) >= 5 and negatives
    for record in positives:
        top = max(range(len(record["tokens"])), key=lambda i: record["attributions"][i])
        assert record["tokens"][top] == "TRIGGER", record
    assert all("TRIGGER" not in r["tokens"] for r in negatives)  # negative control: the ground truth is planted


def test_files_hold_the_attributions_which_sum_to_logit_differences(trained):
    model, data = trained.model.eval(), trained.test_set
    jsonl, page = trained.writer.last_files
    assert jsonl == trained.folder / "attributions" / "test_step64.jsonl" and page.suffix == ".html"
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    with torch.no_grad():
        embeds = model.embed(data.tokens[:20])
        logits = model.forward_embeds(embeds, data.mask[:20])
        baseline_logits = model.forward_embeds(torch.zeros_like(embeds), data.mask[:20])
    for i, record in enumerate(records):
        assert set(record) == {"tokens", "attributions", "label", "prediction", "target", "delta", "score", "baseline_score"}
        length = int(data.mask[i].sum())
        assert record["tokens"] == [VOCABULARY[t] for t in data.tokens[i, :length].tolist()]
        assert record["label"] == int(data.labels[i]) and record["prediction"] == int(logits[i].argmax()) == record["target"]
        difference = float(logits[i, record["target"]] - baseline_logits[i, record["target"]])
        assert sum(record["attributions"]) == pytest.approx(difference, abs=1e-4 + 1e-3 * abs(difference))
        assert record["delta"] == pytest.approx(sum(record["attributions"]) - difference, abs=1e-5)
    # the HTML page: one coloured span per token, in order, titled with its attribution
    spans = Spans()
    spans.feed(page.read_text())
    assert spans.tokens == [t for r in records for t in r["tokens"]]
    assert spans.titles == pytest.approx([a for r in records for a in r["attributions"]], rel=1e-5, abs=1e-9)
    assert not list(jsonl.parent.glob(".*partial*"))  # written atomically: no temporary file left
    # validation epochs of fit were written too (stages include "validate"), one file per epoch
    assert [f.name for f in trained.validation_files] == [f"validate_step{16 * e}.jsonl" for e in range(1, 5)]


def test_tensorboard_text(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained.folder), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    assert "attributions/test/0/text_summary" in tags and "attributions/test/19/text_summary" in tags
    text = events.Tensors("attributions/test/0/text_summary")[-1].tensor_proto.string_val[0].decode()
    record = json.loads((trained.folder / "attributions" / "test_step64.jsonl").read_text().splitlines()[0])
    assert "| token | attribution |" in text
    assert f"| {record['tokens'][0]} | {record['attributions'][0]:+.4f} |" in text


def test_refuses_a_module_without_the_protocol(tmp_path):
    data = DataLoader(SyntheticTriggerTexts(8, seed=0), batch_size=4)
    with pytest.raises(ValueError, match=r"NoProtocol lacks embed, id_to_token .* or tokenizer.id_to_token"):
        trainer(tmp_path, [AttributionWriter()]).test(NoProtocol(), data, verbose=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_samples": 0}, "max_samples"), ({"target": "gold"}, "target"), ({"method": "simpson"}, "method"),
     ({"steps": 1, "method": "riemann_trapezoid"}, "steps"), ({"stages": ("train",)}, "stages"), ({"reduction": "max"}, "reduction"),
     ({"baseline_token_id": -1}, "baseline_token_id")],
)  # fmt: skip
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttributionWriter(**kwargs)


def test_token_strings_from_a_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    module = nn.Module()
    module.tokenizer = Tokenizer(WordLevel({"[PAD]": 0, "hate": 1, "you": 2}, unk_token="[PAD]"))
    assert token_strings(module)(1) == "hate"
    module.id_to_token = lambda i: f"<{i}>"
    assert token_strings(module)(2) == "<2>"


def test_other_ranks_compute_and_write_nothing(tmp_path):
    """Under DDP only global rank 0 attributes and writes (the hooks return at once on the other ranks)."""
    model = UserTextClassifier()
    batch = SyntheticTriggerTexts(4, seed=0)[0:4]
    writer = AttributionWriter(max_samples=2, dirpath=str(tmp_path), steps=4)
    for rank_zero in (False, True):
        fake = SimpleNamespace(is_global_zero=rank_zero, sanity_checking=False, current_epoch=0, global_step=0, loggers=[])
        writer.setup(fake, model, "test")
        writer.on_test_epoch_start(fake, model)
        writer.on_test_batch_end(fake, model, None, batch, 0)
        writer.on_test_epoch_end(fake, model)
        assert len(writer._records) == (2 if rank_zero else 0)
        assert (tmp_path / "test_step0.jsonl").exists() == rank_zero


def test_gold_target_and_a_batch_without_labels(tmp_path):
    torch.manual_seed(0)
    model = UserTextClassifier().eval()
    data = SyntheticTriggerTexts(6, seed=3)
    fake = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0, global_step=0, loggers=[])
    writer = AttributionWriter(max_samples=6, target="label", dirpath=str(tmp_path), steps=8, baseline_token_id=PAD)
    writer.setup(fake, model, "test")
    writer.on_test_epoch_start(fake, model)
    writer.on_test_batch_end(fake, model, None, data[0:6], 0)
    assert [r["target"] for r in writer._records] == data.labels.tolist()
    # the pad-token baseline: baseline_score is the target logit of an all-pad input with the same mask
    with torch.no_grad():
        pad_logits = model.forward_embeds(model.embed(torch.zeros_like(data.tokens)), data.mask)
    assert [r["baseline_score"] for r in writer._records] == pytest.approx(pad_logits[torch.arange(6), data.labels].tolist(), abs=1e-6)
    writer.on_test_epoch_start(fake, model)
    with pytest.raises(LitzooError, match="no 'label'"):
        writer.on_test_batch_end(fake, model, None, {"tokens": data.tokens, "mask": data.mask}, 0)
