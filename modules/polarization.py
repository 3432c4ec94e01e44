"""Semantic polarization: how differently two broadcasters use the same keywords, what words carry it, and whether it
forecasts polarization on social media.

Ding, Horning, Rho, "Same Words, Different Meanings: Semantic Polarization in Broadcast Media Language Forecasts
Polarization on Social Media Discourse", ICWSM 2023, arXiv:2301.08832. **No official code exists**; read from the paper
and ``notes/other_methods.md`` §D4. **Verified** in the stored copies of the paper (ar5iv, readkong, the per-study
hackernoon pages, which show each section's opening only): the data (CNN and Fox News closed captions 2010–2020 from
the Internet Archive / Stanford Cable TV News Analyzer SRT files, cut into speaker turns, narrowed to the turns holding
keywords of six topics); Study 1 measures "the semantic distance between how two entities contextually use an identical
word" over time from language-model embeddings; Study 2 trains BERT-based classifiers (six, one per topic) on the 2020
turns to predict CNN vs Fox and takes Integrated Gradients to find the words, **except the topical keyword**, that
contribute most; Study 3 tests with Granger causality whether the TV polarity forecasts the polarity of tweets (by users
following both @CNN and @FoxNews, nine keywords), and the reverse. **Not readable offline, hence chosen** (ours, below and
in :mod:`litzoo.framework.text.polarity`): the embedding layer, the baseline / normalisation, the series granularity
(monthly, per the notes), the lag selection and the stationarity handling. The polarity
mathematics is in :mod:`litzoo.framework.text.polarity`, the data in :mod:`litzoo.datamodules.transcripts`.

What the paper fixes and this module follows:

* **Study 1**: a BERT language model reads the speaker turns containing each keyword; per keyword, year and station
  the keyword's contextual embeddings are averaged; the polarity is the cosine distance between the two stations'
  averages, per keyword and averaged per topic, over the years.
* **Study 2**: for the peak period (2020 in the paper), a BERT-based classifier is fine-tuned to predict the station of
  a speaker turn (one classifier per topic in the paper); Integrated Gradients (Sundararajan et al. 2017) then names the
  words of each turn, **the topical keyword excluded**, that contribute most to the station's prediction.
* **Study 3**: ``statsmodels``' Granger causality tests between the monthly TV polarity series and the Twitter polarity
  series, in both directions.

What replaces what the paper uses, and choices where it is silent (ours):

* the language model is a small :class:`~litzoo.framework.nn.text_encoder.TransformerTextEncoder` trained from scratch
  with BERT's masked-language-model objective (:func:`~litzoo.framework.text.masked_lm.mlm_corrupt`, tied
  :class:`~litzoo.framework.text.masked_lm.MaskedLMHead`) on the corpus' training turns — no BERT weights offline;
  the contextual embedding is the encoder's **last-layer** token state (after its final LayerNorm), pooled per turn
  over the keyword's positions;
* training runs in **two stages**, as the paper's two models: ``mlm_epochs`` epochs of MLM (stage 1); at its end the
  polarity is measured, the **peak period** chosen (``peak_period``, or the period of the highest mean normalised
  polarity over keywords), and the classifier — a copy of the MLM encoder, as BERT is fine-tuned from its pretrained
  weights, with a masked-mean pooling and a linear head — is fine-tuned for the remaining epochs on the peak period's
  training turns (stage 2). The MLM encoder is not updated in stage 2, so the polarity measured at the end is that of
  stage 1. One classifier over all keywords (ours; the paper trains one per topic — pass a datamodule restricted to
  one topic's keywords to do the same);
* baseline, normalised polarity, drift start and Granger lag selection: see :mod:`litzoo.framework.text.polarity`;
* attributions target the turn's **true** station, zero-embedding baseline, ``ig_steps`` Gauss–Legendre points; a
  word's score for a station is the mean token attribution over its occurrences in that station's peak-period turns
  (at least ``min_word_count`` occurrences); the top ``top_k_words`` per station are reported.

At the end of a fit (and of a test) :meth:`SemanticPolarization.analyze` runs on every turn; it logs the series as
TensorBoard scalars with the period as the step (``polarity/<keyword>``, ``polarity_baseline/<keyword>``,
``polarity_normalised/<keyword>``, ``topic_polarity/<topic>``, ``social/<series>``; a matplotlib figure too where
matplotlib is installed — it is not a dependency) and writes ``polarization_report.json`` (atomically) into the run's log
folder. Metrics: ``{train,val,test}/mlm_loss`` and, in stage 2, ``train/source_loss``, ``{val,test}/source_acc`` (peak
period). Defaults (ours): width 64, 2 blocks of 4 heads, AdamW lr 1e-3, weight decay 0.01.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.optim import AdamW

from litzoo.framework.attribution import integrated_gradients, token_attributions
from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.text_encoder import TransformerTextEncoder, masked_mean
from litzoo.framework.text.masked_lm import MaskedLMHead, mlm_corrupt
from litzoo.framework.text.polarity import drift_start, granger_causality, polarity_table, pool_keyword_states, topic_average
from litzoo.framework.text.vocabulary import MASK_ID, SPECIAL_TOKENS

REPORT_NAME = "polarization_report.json"


def adamw_polarization(params: Any, lr: float = 1e-3, weight_decay: float = 0.01) -> AdamW:
    """AdamW for the from-scratch encoder (ours: the paper fine-tunes BERT and gives no settings)."""
    return AdamW(params, lr=lr, weight_decay=weight_decay)


class SemanticPolarization(L.LightningModule):
    """MLM encoder (Study 1) + station classifier (Study 2) + the analysis of Studies 1–3; see the module docstring.

    Args:
        vocab_size: vocabulary size; ``None`` takes the datamodule's in :meth:`setup`.
        max_positions: longest turn; ``None`` takes the datamodule's ``max_length``.
        dim, depth, num_heads, mlp_ratio: the encoder's width, blocks, heads, MLP ratio.
        dropout: on the classifier's embeddings and pooled feature, in ``[0, 1)``.
        mlm_probability: BERT's masking rate.
        mlm_epochs: epochs of stage 1 (MLM); the rest of the fit is stage 2 (the classifier).
        peak_period: the period (0-based index) Study 2 explains; ``None``: the highest mean normalised polarity.
        baseline: ``"permutation"`` or ``"split_half"`` (:func:`~litzoo.framework.text.polarity.polarity_table`).
        baseline_draws: random draws per cell for the baseline.
        min_contexts: contexts needed per station in a cell.
        z_threshold, persistence: the drift-start rule (:func:`~litzoo.framework.text.polarity.drift_start`).
        granger_maxlag: lags tested (1..maxlag).
        granger_difference: ``"auto"``, ``"always"`` or ``"never"``.
        ig_steps: Integrated-Gradients quadrature points.
        ig_max_turns: at most this many peak-period turns are attributed (the first ones of the file).
        top_k_words: attributive words reported per station.
        min_word_count: occurrences a word needs to be ranked.
        analysis_seed: seed of the baseline draws.
        optimizer: builds the optimizer (default :func:`adamw_polarization`).
    """

    monitor = "val/mlm_loss"
    monitor_mode = "min"

    def __init__(
        self,
        vocab_size: int | None = None,
        max_positions: int | None = None,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        mlm_probability: float = 0.15,
        mlm_epochs: int = 10,
        peak_period: int | None = None,
        baseline: Literal["permutation", "split_half"] = "permutation",
        baseline_draws: int = 20,
        min_contexts: int = 2,
        z_threshold: float = 3.0,
        persistence: int = 3,
        granger_maxlag: int = 3,
        granger_difference: Literal["auto", "always", "never"] = "auto",
        ig_steps: int = 32,
        ig_max_turns: int = 256,
        top_k_words: int = 10,
        min_word_count: int = 3,
        analysis_seed: int = 0,
        optimizer: OptimizerCallable = adamw_polarization,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("num_heads", num_heads), ("mlm_epochs", mlm_epochs), ("baseline_draws", baseline_draws),
                            ("persistence", persistence), ("granger_maxlag", granger_maxlag), ("ig_steps", ig_steps), ("ig_max_turns", ig_max_turns),
                            ("top_k_words", top_k_words), ("min_word_count", min_word_count)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SemanticPolarization: {name} must be a positive integer, got {value!r}")
        for name, value in (("vocab_size", vocab_size), ("max_positions", max_positions)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"SemanticPolarization: {name} must be a positive integer or None, got {value!r}")
        if peak_period is not None and (not isinstance(peak_period, int) or peak_period < 0):
            raise ValueError(f"SemanticPolarization: peak_period must be a period index >= 0 or None, got {peak_period!r}")
        if dim % num_heads:
            raise ValueError(f"SemanticPolarization: dim {dim} must be divisible by num_heads {num_heads}")
        if not 0.0 <= dropout < 1.0 or not 0.0 < mlm_probability <= 1.0 or not mlp_ratio > 0:
            raise ValueError(f"SemanticPolarization: need dropout in [0, 1), mlm_probability in (0, 1], mlp_ratio > 0, got {dropout}, {mlm_probability}, {mlp_ratio}")
        if baseline not in ("permutation", "split_half") or granger_difference not in ("auto", "always", "never"):
            raise ValueError(f"SemanticPolarization: unknown baseline {baseline!r} or granger_difference {granger_difference!r}")
        if baseline_draws < 2 or min_contexts < 2:
            raise ValueError(f"SemanticPolarization: baseline_draws and min_contexts must be at least 2, got {baseline_draws} and {min_contexts}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.encoder: TransformerTextEncoder | None = None
        self.mlm_head: MaskedLMHead | None = None
        self.classifier_encoder: TransformerTextEncoder | None = None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, 2)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.chosen_peak: int | None = None  # set at the end of stage 1; saved in checkpoints
        self.classifier_steps = 0  # optimisation steps of stage 2; saved in checkpoints
        self.report: dict | None = None
        if vocab_size is not None and max_positions is not None:
            self.build(vocab_size, max_positions)

    # ------------------------------------------------------------------------------ the networks
    def build(self, vocab_size: int, max_positions: int) -> None:
        hp = self.hparams
        self.encoder = TransformerTextEncoder(vocab_size, max_positions, hp.dim, hp.depth, hp.num_heads, hp.mlp_ratio)
        self.mlm_head = MaskedLMHead(self.encoder.token_embedding)
        self.classifier_encoder = copy.deepcopy(self.encoder)  # overwritten by the MLM weights at the end of stage 1
        self.hparams["vocab_size"], self.hparams["max_positions"] = vocab_size, max_positions

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "analysis_data"):
            raise LitzooError("SemanticPolarization needs a transcripts datamodule (TranscriptsDataModule or SyntheticTranscriptsDataModule)")
        datamodule.analysis_data()  # reads the files (one-line errors) and builds the vocabulary
        if self.encoder is None:
            self.build(self.hparams.vocab_size or datamodule.vocab_size, self.hparams.max_positions or datamodule.max_length)
        if datamodule.vocab_size > self.encoder.vocab_size or datamodule.max_length > self.encoder.max_length:
            raise LitzooError(f"SemanticPolarization: the data's vocabulary {datamodule.vocab_size} / max_length {datamodule.max_length} exceed the "
                              f"model's {self.encoder.vocab_size} / {self.encoder.max_length}")  # fmt: skip

    def _nets(self) -> tuple[TransformerTextEncoder, MaskedLMHead, TransformerTextEncoder]:
        if self.encoder is None or self.mlm_head is None or self.classifier_encoder is None:
            raise RuntimeError("SemanticPolarization has no network yet: pass vocab_size and max_positions, or run setup() with a datamodule")
        return self.encoder, self.mlm_head, self.classifier_encoder

    def embed(self, tokens: Tensor) -> Tensor:
        """The classifier's token embeddings (the input Integrated Gradients attributes)."""
        return self._nets()[2].embed(tokens)

    def forward_embeds(self, embeds: Tensor, mask: Tensor | None) -> Tensor:
        """Classifier logits ``(B, 2)`` (station 0 / 1) from token embeddings ``(B, L, dim)`` and the real-token mask."""
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        states = self._nets()[2].encode_embeds(self.dropout(embeds), mask)
        return self.head(self.dropout(masked_mean(states, mask.bool())))

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        return self.forward_embeds(self.embed(tokens), mask)

    def contextual_states(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The MLM encoder's last-layer token states ``(B, L, dim)`` (Study 1's contextual embeddings)."""
        return self._nets()[0](tokens, mask)

    # ------------------------------------------------------------------------------ training
    @property
    def in_classifier_stage(self) -> bool:
        return self.chosen_peak is not None

    def mlm_loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        encoder, head, _ = self._nets()
        inputs, labels = mlm_corrupt(batch["tokens"], batch["mask"], MASK_ID, len(SPECIAL_TOKENS), encoder.vocab_size, self.hparams.mlm_probability,
                                     generator=generator)  # fmt: skip
        if not bool((labels >= 0).any()):  # no word chosen in the whole batch (tiny batches): nothing to predict
            return head(encoder(inputs, batch["mask"])).sum() * 0.0
        logits = head(encoder(inputs, batch["mask"]))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    def _peak_rows(self, batch: dict[str, Tensor]) -> Tensor:
        return (batch["period"] == self.chosen_peak) & (batch["keyword_positions"] >= 0).any(1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        size = len(batch["label"])
        if not self.in_classifier_stage:
            loss = self.mlm_loss(batch)
            self.log("train/mlm_loss", loss, prog_bar=True, batch_size=size)
            return loss
        rows = self._peak_rows(batch)
        if not bool(rows.any()):
            return None  # no peak-period turn in this batch: Lightning skips the step
        loss = F.cross_entropy(self(batch["tokens"][rows], batch["mask"][rows]), batch["label"][rows])
        self.classifier_steps += 1
        self.log("train/source_loss", loss, prog_bar=True, batch_size=int(rows.sum()))
        return loss

    def _evaluate(self, stage: str, batch: dict[str, Tensor], batch_idx: int) -> None:
        # a fixed corruption per batch: validation losses of two epochs compare the same task
        generator = torch.Generator(device=batch["tokens"].device).manual_seed(batch_idx)
        self.log(f"{stage}/mlm_loss", self.mlm_loss(batch, generator), batch_size=len(batch["label"]), prog_bar=stage == "val")
        if self.in_classifier_stage:
            rows = self._peak_rows(batch)
            if bool(rows.any()):
                accuracy = (self(batch["tokens"][rows], batch["mask"][rows]).argmax(1) == batch["label"][rows]).double().mean()
                self.log(f"{stage}/source_acc", accuracy, batch_size=int(rows.sum()))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self.in_classifier_stage or self.current_epoch + 1 != self.hparams.mlm_epochs:
            return
        # end of stage 1: choose the peak period, initialise the classifier from the MLM encoder (BERT fine-tuning)
        table = self.polarity()["table"]
        self.chosen_peak = self.pick_peak(table.normalised)
        encoder, _, classifier = self._nets()
        classifier.load_state_dict(encoder.state_dict())

    def pick_peak(self, normalised: np.ndarray) -> int:
        if self.hparams.peak_period is not None:
            if self.hparams.peak_period >= normalised.shape[1]:
                raise LitzooError(f"SemanticPolarization: peak_period {self.hparams.peak_period} is outside the data's {normalised.shape[1]} periods")
            return int(self.hparams.peak_period)
        mean = np.nanmean(np.where(np.isnan(normalised).all(0, keepdims=True), -np.inf, normalised), axis=0)
        return int(np.nanargmax(mean))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["polarization_peak"] = self.chosen_peak
        checkpoint["polarization_classifier_steps"] = self.classifier_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.chosen_peak = checkpoint.get("polarization_peak")
        self.classifier_steps = int(checkpoint.get("polarization_classifier_steps", 0))

    def configure_optimizers(self):
        encoder, head, classifier = self._nets()
        named = list(encoder.named_parameters()) + [(f"mlm.{n}", p) for n, p in head.named_parameters() if p is not encoder.token_embedding.weight]
        named += list(classifier.named_parameters()) + list(self.head.named_parameters())
        # decay matrices only (not biases, norms, positions): the usual Transformer practice (ours)
        decay = [p for n, p in named if p.ndim >= 2 and not n.endswith("positional_embedding")]
        no_decay = [p for n, p in named if not (p.ndim >= 2 and not n.endswith("positional_embedding"))]
        return self.optimizer([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])

    # ------------------------------------------------------------------------------ the analysis
    def _datamodule(self) -> Any:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            raise RuntimeError("SemanticPolarization's analysis reads the trainer's transcripts datamodule")
        return datamodule

    @torch.no_grad()
    def polarity(self, datamodule: Any | None = None, batch_size: int = 256) -> dict[str, Any]:
        """Study 1 on every turn: ``{"table": PolarityTable, "vectors", "keyword", "period", "source"}``."""
        datamodule = datamodule or self._datamodule()
        data = datamodule.analysis_data()
        encoder = self._nets()[0]
        was_training = encoder.training
        encoder.eval()  # no dropout in the encoder, but eval all the same: the states are a measurement
        rows = torch.nonzero((data["keyword_positions"] >= 0).any(1)).squeeze(1)  # the paper's sample: turns holding a keyword
        vectors, turns, keywords = [], [], []
        try:
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                tokens, mask = data["tokens"][chunk].to(self.device), data["mask"][chunk].to(self.device)
                states = self.contextual_states(tokens, mask).float().cpu()
                v, turn, kw = pool_keyword_states(states, data["keyword_positions"][chunk], len(datamodule.keywords))
                vectors.append(v)
                turns.append(chunk[turn])
                keywords.append(kw)
        finally:
            encoder.train(was_training)
        vectors_t, turns_t, keywords_t = torch.cat(vectors), torch.cat(turns), torch.cat(keywords)
        hp = self.hparams
        table = polarity_table(vectors_t, keywords_t, data["period"][turns_t], data["label"][turns_t], len(datamodule.keywords), len(datamodule.periods),
                               hp.baseline, hp.baseline_draws, hp.min_contexts, hp.analysis_seed)  # fmt: skip
        return {"table": table, "vectors": vectors_t, "turn": turns_t, "keyword": keywords_t}

    def attributive_words(self, datamodule: Any, peak: int) -> dict[str, list[dict]]:
        """Study 2: per station, the ``top_k_words`` words of highest mean IG attribution in the peak period's turns,
        keywords, padding and special tokens excluded."""
        data = datamodule.analysis_data()
        rows = torch.nonzero((data["period"] == peak) & (data["keyword_positions"] >= 0).any(1)).squeeze(1)[: self.hparams.ig_max_turns]
        if len(rows) == 0:
            return {name: [] for name in datamodule.sources}
        was_training = self.training
        self.eval()
        try:
            tokens, mask, labels = data["tokens"][rows].to(self.device), data["mask"][rows].to(self.device), data["label"][rows].to(self.device)
            result = integrated_gradients(self.forward_embeds, self.embed(tokens).detach(), None, labels, mask, steps=self.hparams.ig_steps)
        finally:
            self.train(was_training)
        scores = token_attributions(result.attributions, mask).cpu()
        counted = mask.cpu() & (data["keyword_positions"][rows] < 0) & (data["tokens"][rows] >= len(SPECIAL_TOKENS))  # the keyword excluded, as the paper
        words: dict[str, list[dict]] = {}
        for source_id, name in enumerate(datamodule.sources):
            selected = counted & (data["label"][rows] == source_id)[:, None]
            ids, values = data["tokens"][rows][selected], scores[selected].double()
            if len(ids) == 0:
                words[name] = []
                continue
            size = int(ids.max()) + 1
            sums = torch.zeros(size, dtype=torch.float64).index_add_(0, ids, values)
            counts = torch.zeros(size, dtype=torch.long).index_add_(0, ids, torch.ones_like(ids))
            means = torch.where(counts >= self.hparams.min_word_count, sums / counts.clamp_min(1), torch.tensor(float("-inf"), dtype=torch.float64))
            order = torch.argsort(means, descending=True, stable=True)[: self.hparams.top_k_words]
            words[name] = [{"word": datamodule.vocabulary.id_to_token(int(i)), "attribution": float(means[i]), "count": int(counts[i])}
                           for i in order if torch.isfinite(means[i])]  # fmt: skip
        return words

    def analyze(self, datamodule: Any | None = None) -> dict[str, Any]:
        """Studies 1–3 on the datamodule's turns: the report (also kept as :attr:`report`)."""
        datamodule = datamodule or self._datamodule()
        hp = self.hparams
        table = self.polarity(datamodule)["table"]
        keywords, labels = datamodule.keywords, datamodule.period_labels
        peak = self.chosen_peak if self.chosen_peak is not None else self.pick_peak(table.normalised)
        topics = {name: [None if np.isnan(v) else float(v) for v in series] for name, series in topic_average(table.normalised, keywords, datamodule.topics).items()}
        report: dict[str, Any] = {
            "sources": list(datamodule.sources), "keywords": list(keywords), "topics": datamodule.topics, "periods": labels,
            "baseline": hp.baseline, **table.to_dict(), "topic_normalised": topics,
            "drift_start": {kw: drift_start(table.z[k], hp.z_threshold, hp.persistence) for k, kw in enumerate(keywords)},
            "peak_period": peak, "peak_label": labels[peak], "classifier_steps": self.classifier_steps,
            "attributive_words": self.attributive_words(datamodule, peak), "granger": {},
        }  # fmt: skip
        social = datamodule.social_aligned()
        if social is not None:
            names, values = social
            mean_tv = np.nanmean(table.normalised, axis=0)
            for s, name in enumerate(names):
                tv = table.normalised[keywords.index(name)] if name in keywords else mean_tv  # a column named by a keyword pairs with it
                try:
                    forward = granger_causality(tv, values[s], hp.granger_maxlag, hp.granger_difference).to_dict()
                    reverse = granger_causality(values[s], tv, hp.granger_maxlag, hp.granger_difference).to_dict()
                    report["granger"][name] = {"tv_to_social": forward, "social_to_tv": reverse}
                except LitzooError as error:  # e.g. a gap in a series: reported, not fatal to the rest of the analysis
                    report["granger"][name] = {"error": str(error)}
            report["social"] = {name: values[s].tolist() for s, name in enumerate(names)}
        self.report = report
        return report

    def _publish(self, report: dict[str, Any]) -> None:
        experiment = getattr(self.logger, "experiment", None) if self._trainer is not None and self.loggers else None
        if hasattr(experiment, "add_scalar"):
            for k, keyword in enumerate(report["keywords"]):
                for t in range(len(report["periods"])):
                    for tag in ("polarity", "baseline", "normalised"):
                        value = report[tag][k][t]
                        if value is not None:
                            experiment.add_scalar(f"polarity_{tag}/{keyword}" if tag != "polarity" else f"polarity/{keyword}", value, t)
            for topic, series in report["topic_normalised"].items():
                for t, value in enumerate(series):
                    if value is not None:
                        experiment.add_scalar(f"topic_polarity/{topic}", value, t)
            for name, series in report.get("social", {}).items():
                for t, value in enumerate(series):
                    if np.isfinite(value):
                        experiment.add_scalar(f"social/{name}", value, t)
            if hasattr(experiment, "add_figure") and importlib.util.find_spec("matplotlib") is not None:
                experiment.add_figure("polarity/series", _figure(report), self.global_step)
            experiment.add_text("polarity/attributive_words", json.dumps(report["attributive_words"]), self.global_step)
        folder = self.trainer.log_dir if self.loggers else None
        if folder is not None:
            with write_files_atomically(Path(folder) / REPORT_NAME) as (staged,):
                staged.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self._publish(self.analyze())

    def on_test_end(self) -> None:
        if self.trainer.is_global_zero:
            self._publish(self.analyze())


def _figure(report: dict[str, Any]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for k, keyword in enumerate(report["keywords"]):
        axis.plot([np.nan if v is None else v for v in report["normalised"][k]], label=f"TV {keyword}")
    for name, series in report.get("social", {}).items():
        axis.plot(series, linestyle="--", label=f"social {name}")
    axis.set_xlabel("period")
    axis.set_ylabel("polarity − baseline")
    axis.legend(fontsize="small")
    return figure
