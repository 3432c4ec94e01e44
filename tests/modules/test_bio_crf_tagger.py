"""The flat BIO-CRF baseline: trained on the BIO tags of the outermost gold (by hand), it never emits overlapping spans,
it is scored against the full nested gold (inner entities are misses), and a short fit beats the all-O baseline."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch

from litzoo.datamodules.nested_ner import SyntheticNestedNERDataModule
from litzoo.framework.text.spans import flatten_for_bio, span_prf
from litzoo.modules.bio_crf_tagger import BIOCRFNet, BIOCRFTagger, adam_tagger

TYPES = ["GPE", "ORG", "PER"]  # tags: O, B-GPE 1, I-GPE 2, B-ORG 3, I-ORG 4, B-PER 5, I-PER 6


def test_the_targets_are_the_bio_tags_of_the_outermost_spans_by_hand():
    module = BIOCRFTagger(vocab_size=12, type_names=TYPES, embed_dim=4, hidden_dim=3)
    tokens = torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9], [2, 3, 4, 0, 0, 0, 0, 0]])
    # sentence 0: ORG 0-4 ⊃ GPE 0-2, PER 5-7; sentence 1: GPE 1-3
    spans = torch.tensor([[[0, 4, 1], [0, 2, 0], [5, 7, 2]], [[1, 3, 0], [-1, -1, -1], [-1, -1, -1]]])
    targets = module.targets({"tokens": tokens, "mask": tokens != 0, "spans": spans})
    assert targets.tolist() == [[3, 4, 4, 4, 0, 5, 6, 0], [0, 1, 2, 0, 0, 0, 0, 0]]
    inner = BIOCRFTagger(vocab_size=12, type_names=TYPES, keep="innermost", embed_dim=4, hidden_dim=3)
    assert inner.targets({"tokens": tokens, "mask": tokens != 0, "spans": spans})[0].tolist() == [1, 2, 0, 0, 0, 5, 6, 0]


def test_decoding_never_overlaps_and_is_scored_against_the_full_nested_gold():
    torch.manual_seed(0)
    net = BIOCRFNet(vocab_size=12, type_names=TYPES, embed_dim=4, hidden_dim=3).eval()
    with torch.no_grad():  # make the emissions spell B-ORG I-ORG I-ORG I-ORG O B-PER I-PER O whatever the encoder says
        net.emissions.weight.zero_()
        net.emissions.bias.zero_()
    tags = torch.tensor([3, 4, 4, 4, 0, 5, 6, 0])
    emissions = torch.full((1, 8, 7), -20.0).scatter(2, tags[None, :, None], 20.0)
    net.forward = lambda tokens, mask=None: emissions  # noqa: E731 - the encoder's output is irrelevant to decoding
    pred = net.decode(torch.ones(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool))
    assert pred == [{(0, 4, "ORG"), (5, 7, "PER")}]
    gold = [{(0, 4, "ORG"), (0, 2, "GPE"), (5, 7, "PER")}]
    counts = span_prf(pred, gold)  # the inner GPE is a miss: P = 1, R = 2/3; nested: 1 of 2 gold found, 0 predicted
    assert (counts.tp, counts.fp, counts.fn) == (2, 0, 1) and counts.nested_recall == 0.5 and counts.nested_f1 == 0.0


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="keep"):
        BIOCRFTagger(keep="middle")
    with pytest.raises(ValueError, match="did you mean 'hidden_dim'"):
        BIOCRFTagger(hiden_dim=3)
    with pytest.raises(ValueError, match="vocab_size"):
        BIOCRFTagger(vocab_size=1, type_names=["A"])
    with pytest.raises(ValueError, match="unique"):
        BIOCRFTagger(type_names=[])
    module = BIOCRFTagger(vocab_size=10, type_names=TYPES, embed_dim=4, hidden_dim=3)
    rebuilt = BIOCRFTagger(**module.hparams)  # what a checkpoint does
    rebuilt.load_state_dict(module.state_dict())
    assert rebuilt.net.scheme.tag_names == module.net.scheme.tag_names and rebuilt.net.crf.num_tags == 7


def test_a_short_fit_beats_the_all_o_baseline_and_cannot_find_inner_entities(tmp_path):
    dm = SyntheticNestedNERDataModule(root=str(tmp_path), num_train=400, num_dev=100, num_test=100, batch_size=16)
    L.seed_everything(0)
    module = BIOCRFTagger(optimizer=partial(adam_tagger, lr=5e-3), embed_dim=32, hidden_dim=32)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    untrained = trainer.test(module, datamodule=dm, verbose=False)[0]
    trainer = L.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    scores = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert untrained["test/f1"] < 0.1, untrained
    # the outermost spans are all a flat tagger can get: its recall is bounded by their share of the gold
    gold = [s.token_spans for s in dm.sentences("test")]
    ceiling = sum(len(flatten_for_bio(spans)) for spans in gold) / sum(len(spans) for spans in gold)
    assert 0.5 < ceiling < 0.9
    assert scores["test/f1"] > 0.6 and ceiling - 0.1 < scores["test/recall"] <= ceiling + 1e-6, scores
    assert scores["test/nested_f1"] == 0.0  # its predictions never nest
