"""ToxVis classifier: precision@k against a brute force, padding ignored and IG completeness per post, the logged
macro / per-class F1 against scikit-learn, the AttributionWriter protocol end to end on a tiny fit over the SYNTHETIC
planted corpus (the planted trigger is the top token), the checkpoint round trip, bad arguments."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader

from litzoo.callbacks.attribution_writer import AttributionWriter
from litzoo.datamodules.implicit_hate import EXPLICIT, SyntheticImplicitHateDataModule
from litzoo.framework.attribution import integrated_gradients, token_attributions
from litzoo.framework.errors import LitzooError
from litzoo.modules.toxvis import ToxVisClassifier, attribution_precision_at_k


def brute_precision(attributions, mask, planted):
    """Over every ordering of the real tokens consistent with the attributions (ties by position): the first k."""
    out = []
    for a, m, p in zip(attributions.tolist(), mask.tolist(), planted.tolist(), strict=True):
        real = [i for i in range(len(a)) if m[i]]
        ranked = sorted(real, key=lambda i: (-a[i], i))
        k = sum(p)
        out.append(sum(p[i] for i in ranked[:k]) / k)
    return torch.tensor(out, dtype=torch.float64)


def test_precision_at_k_hand_example_and_brute_force():
    attributions = torch.tensor([[0.5, -1.0, 2.0, 9.0], [0.1, 0.3, 0.2, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    planted = torch.tensor([[True, False, True, False], [False, False, True, True]])
    # row 0: ranking 2, 0, 1 (padding's 9.0 ignored), k = 2 -> {2, 0} both planted -> 1; row 1: ranking 1, 2, 0, 3, k = 2 -> {1, 2} -> 1/2
    assert attribution_precision_at_k(attributions, mask, planted).tolist() == [1.0, 0.5]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randint(-3, 4, (6, 7), generator=generator).float()  # integers: many ties
        lengths = torch.randint(2, 8, (6,), generator=generator)
        m = torch.arange(7)[None] < lengths[:, None]
        p = m & (torch.rand(6, 7, generator=generator) < 0.4)
        p[torch.arange(6), 0] = True
        assert torch.equal(attribution_precision_at_k(a, m, p), brute_precision(a, m, p))
    with pytest.raises(ValueError, match="at least one planted"):
        attribution_precision_at_k(attributions, mask, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="padded position"):
        attribution_precision_at_k(attributions, mask, torch.ones_like(mask))
    with pytest.raises(ValueError, match="not finite"):
        attribution_precision_at_k(torch.full((2, 4), float("nan")), mask, planted)


def test_padding_is_ignored_and_token_attributions_add_up_to_the_logit_difference():
    torch.manual_seed(0)
    model = ToxVisClassifier(vocab_size=30, max_positions=8, dim=16, depth=2, num_heads=2).eval()
    tokens = torch.randint(3, 30, (4, 8))
    mask = torch.arange(8)[None] < torch.tensor([[8], [5], [3], [6]])
    other = torch.where(mask, tokens, torch.randint(3, 30, (4, 8)))  # other ids on the padded positions
    with torch.no_grad():
        assert torch.allclose(model(tokens, mask), model(other, mask), atol=1e-6)
        assert not torch.allclose(model(tokens, mask), model(other, torch.ones_like(mask)), atol=1e-3)  # negative control
        embeds = model.embed(tokens)
    result = integrated_gradients(model.forward_embeds, embeds, None, torch.tensor([0, 1, 2, 1]), mask, steps=64)
    per_token = token_attributions(result.attributions, mask)
    gap = result.scores - result.baseline_scores
    assert torch.allclose(per_token.sum(1).double(), gap.double(), atol=1e-4), (per_token.sum(1), gap)
    assert float(result.attributions[~mask].abs().max()) < 1e-7  # padded embeddings get nothing


def tiny_fit(tmp_path, epochs: int, callbacks=()):
    L.seed_everything(0, verbose=False)
    dm = SyntheticImplicitHateDataModule(root=str(tmp_path / "data"), posts_per_class=80, max_filler=8, batch_size=16)
    model = ToxVisClassifier(dim=32, depth=1, num_heads=2)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(model, dm)
    return trainer, model, dm


def test_logged_macro_and_per_class_f1_equal_scikit_learn(tmp_path):
    trainer, model, dm = tiny_fit(tmp_path, epochs=3)
    assert {"val/macro_f1", "val/acc", "val/loss", "val/f1/not_hate", "val/f1/implicit_hate", "val/f1/explicit_hate"} <= set(trainer.callback_metrics)
    metrics = trainer.test(model, dm, verbose=False)[0]
    test = dm.dataset("test").tensors
    model.eval()
    with torch.no_grad():
        predictions = model(test["tokens"], test["mask"]).argmax(1).numpy()
    labels = test["label"].numpy()
    assert metrics["test/macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro", labels=[0, 1, 2], zero_division=0), abs=1e-6)
    per_class = f1_score(labels, predictions, average=None, labels=[0, 1, 2], zero_division=0)
    for name, value in zip(("not_hate", "implicit_hate", "explicit_hate"), per_class, strict=True):
        assert metrics[f"test/f1/{name}"] == pytest.approx(value, abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(float((predictions == labels).mean()), abs=1e-6)
    assert ToxVisClassifier.monitor == "val/macro_f1" and ToxVisClassifier.monitor_mode == "max"


def test_macro_f1_accumulates_over_batches_on_imbalanced_classes():
    """Imbalanced labels over two batches: macro != weighted != micro, so only the macro average over the epoch matches."""
    torch.manual_seed(3)
    model = ToxVisClassifier(vocab_size=20, max_positions=6, dim=16, depth=1, num_heads=2, dropout=0.0)
    labels = torch.tensor([0] * 12 + [1] * 5 + [2] * 3)
    tokens = torch.randint(3, 20, (20, 6))
    mask = torch.arange(6)[None] < torch.randint(2, 7, (20, 1))
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.05, -0.05]))  # keep predictions spread over the classes
        predictions = model.eval()(tokens, mask).argmax(1).numpy()
    assert len(set(predictions.tolist())) >= 2
    batches = [{"tokens": tokens[i : i + 8], "mask": mask[i : i + 8], "label": labels[i : i + 8]} for i in range(0, 20, 8)]
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    metrics = trainer.test(model, dataloaders=DataLoader(batches, batch_size=None), verbose=False)[0]
    expected = f1_score(labels.numpy(), predictions, average="macro", labels=[0, 1, 2], zero_division=0)
    assert expected != pytest.approx(f1_score(labels.numpy(), predictions, average="weighted", labels=[0, 1, 2], zero_division=0))
    assert metrics["test/macro_f1"] == pytest.approx(expected, abs=1e-6)


def test_attribution_writer_works_unchanged_on_the_module(tmp_path):
    writer = AttributionWriter(max_samples=48, target="label", steps=32, dirpath=str(tmp_path / "attributions"))
    trainer, model, dm = tiny_fit(tmp_path, epochs=25, callbacks=[writer])
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert metrics["test/f1/explicit_hate"] > 0.9
    jsonl = tmp_path / "attributions" / f"test_step{trainer.global_step}.jsonl"
    assert writer.last_files == [jsonl, jsonl.with_suffix(".html")] and jsonl.with_suffix(".html").is_file()
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    test = dm.dataset("test").tensors
    assert len(records) == 48
    triggers = set(dm.planted["trigger_words"])
    top_is_trigger = []
    for record, row in zip(records, test["index"][:48].tolist(), strict=True):
        assert record["tokens"] == dm.corpus.posts[row].split()  # the vocabulary's words, padding removed
        assert sum(record["attributions"]) == pytest.approx(record["score"] - record["baseline_score"], abs=2e-3)  # completeness
        if record["label"] == EXPLICIT:
            best = max(range(len(record["tokens"])), key=lambda i: record["attributions"][i])
            top_is_trigger.append(record["tokens"][best] in triggers)
    assert len(top_is_trigger) >= 8 and sum(top_is_trigger) / len(top_is_trigger) >= 0.9, top_is_trigger


def test_checkpoint_rebuilds_the_network(tmp_path):
    model = ToxVisClassifier(vocab_size=25, max_positions=10, dim=16, depth=1, num_heads=2)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ToxVisClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    tokens, mask = torch.randint(0, 25, (2, 10)), torch.ones(2, 10, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens, mask), loaded.eval()(tokens, mask))
    assert loaded.id_to_token(7) == "#7"  # no vocabulary without a datamodule


@pytest.mark.parametrize(
    "kwargs",
    [{"dim": 30, "num_heads": 4}, {"num_classes": 1}, {"dropout": 1.0}, {"depth": 0}, {"vocab_size": 0}, {"class_names": ["a", "b"]}, {"mlp_ratio": 0}],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        ToxVisClassifier(**kwargs)


def test_setup_without_vocabulary_is_one_line():
    model = ToxVisClassifier()
    with pytest.raises(LitzooError, match="set model.vocab_size"):
        model.setup("fit")

