"""SemanticPolarization (modules/polarization.py): a tiny fit on SYNTHETIC drifting stations and its analysis."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from litzoo.datamodules.transcripts import SyntheticTranscriptsDataModule
from litzoo.framework.text.polarity import granger_causality
from litzoo.modules.polarization import REPORT_NAME, SemanticPolarization

PERIODS = 16


def fit(tmp_path, max_divergence, logger=None, epochs=14, mlm_epochs=12):
    L.seed_everything(0)
    dm = SyntheticTranscriptsDataModule(str(tmp_path / "data"), num_keywords=2, num_periods=PERIODS, turns_per_cell=16, max_divergence=max_divergence,
                                        fluctuation=0.05, seed=0, batch_size=32)  # fmt: skip
    model = SemanticPolarization(dim=32, depth=2, num_heads=4, mlm_epochs=mlm_epochs, baseline_draws=10, ig_steps=16, top_k_words=5, granger_maxlag=2)
    trainer = L.Trainer(max_epochs=epochs, logger=logger or False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(model, dm)
    return model, dm


def test_fit_recovers_the_planted_drift_and_writes_its_report(tmp_path):
    logger = TensorBoardLogger(str(tmp_path / "runs"), name="polarization")
    model, dm = fit(tmp_path, 0.9, logger)
    report = model.report
    planted = dm.planted
    divergence = np.array(planted["divergence"])
    normalised = np.array(report["normalised"], dtype=float)
    assert report["periods"][0] == "2012-01" and len(report["periods"]) == PERIODS and report["keywords"] == planted["keywords"]
    for k, keyword in enumerate(planted["keywords"]):
        start = planted["drift_starts"][k]
        before, late = normalised[k, :start], normalised[k, -4:]
        assert np.abs(before).max() < 0.05 and late.mean() > 0.05 + before.mean()  # flat at the baseline, then rising
        found = report["drift_start"][keyword]
        assert found is not None and start <= found <= start + 6  # never before the planted start
        assert np.corrcoef(normalised[k], divergence[k])[0, 1] > 0.8
    # stage 2 ran: the classifier was fine-tuned on the peak period, which is a late one
    assert report["classifier_steps"] > 0 and report["peak_period"] >= PERIODS - 4
    own = planted["own_words"]
    for station, words in report["attributive_words"].items():
        top = [w["word"] for w in words]
        assert not set(top) & set(planted["keywords"])  # the keyword itself is excluded, as the paper
        hits = sum(any(w in pool for pool in own[station]) for w in top)
        assert len(top) == 5 and hits >= 3, (station, top)
    # every word of the peak period's turns ranked (no count floor, no cut): all but the keywords, per station
    model.hparams.top_k_words, model.hparams.min_word_count = 10_000, 1
    everything = model.attributive_words(dm, report["peak_period"])
    data = dm.analysis_data()
    for source_id, station in enumerate(dm.sources):
        rows = (data["period"] == report["peak_period"]) & (data["label"] == source_id) & (data["keyword_positions"] >= 0).any(1)
        spoken = {w for text in np.array(dm.corpus.texts)[rows.numpy()] for w in text.split()}
        assert {w["word"] for w in everything[station]} == spoken - set(planted["keywords"])
    # Granger (Study 3) on the report's own series, both directions, each social column paired with its keyword
    # (16 periods are too few for power: the planted direction is checked in benchmarks/polarization.py, 48 periods)
    for k, keyword in enumerate(planted["keywords"]):
        social = np.array(report["social"][keyword])
        assert report["granger"][keyword]["tv_to_social"] == granger_causality(normalised[k], social, 2).to_dict()
        assert report["granger"][keyword]["social_to_tv"] == granger_causality(social, normalised[k], 2).to_dict()
    # the JSON report in the log folder, and the TensorBoard scalars with the period as the step
    written = json.loads((tmp_path / "runs" / "polarization" / "version_0" / REPORT_NAME).read_text())
    assert written == json.loads(json.dumps(report))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    scalars = events.Scalars(f"polarity/{planted['keywords'][0]}")
    assert [s.step for s in scalars] == list(range(PERIODS))
    np.testing.assert_allclose([s.value for s in scalars], report["polarity"][0], rtol=1e-5)
    assert f"social/{planted['keywords'][1]}" in events.Tags()["scalars"]


def test_no_drift_gives_flat_polarity_at_the_baseline(tmp_path):
    model, _ = fit(tmp_path, 0.0, epochs=6, mlm_epochs=6)
    report = model.report
    normalised = np.array(report["normalised"], dtype=float)
    assert np.abs(normalised).max() < 0.05
    assert all(v is None for v in report["drift_start"].values())
    assert report["classifier_steps"] == 0  # the fit ended with stage 1
    # ... whose end initialised the classifier with the MLM encoder's weights (BERT fine-tuning)
    for (name, mlm), (_, classifier) in zip(model.encoder.state_dict().items(), model.classifier_encoder.state_dict().items(), strict=True):
        assert torch.equal(mlm, classifier), name


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="divisible"):
        SemanticPolarization(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="mlm_epochs"):
        SemanticPolarization(mlm_epochs=0)
    with pytest.raises(ValueError, match="baseline"):
        SemanticPolarization(baseline="zero")
    with pytest.raises(ValueError, match="peak_period"):
        SemanticPolarization(peak_period=-1)


def test_peak_is_the_period_of_highest_mean_normalised_polarity():
    model = SemanticPolarization(vocab_size=10, max_positions=4)
    assert model.pick_peak(np.array([[0.0, 0.3, np.nan, 0.1], [0.0, 0.0, np.nan, 0.4]])) == 3
    assert SemanticPolarization(vocab_size=10, max_positions=4, peak_period=1).pick_peak(np.zeros((1, 3))) == 1
    logits = model(torch.randint(3, 10, (2, 4)), torch.ones(2, 4, dtype=torch.bool))
    assert logits.shape == (2, 2)
