"""Mulco (Yang et al., CIKM 2023, arXiv 2211.10854) against the flat BIO-CRF it is compared with, on the SYNTHETIC
Chinese nested-gazetteer corpus (char level, 2000 / 300 / 300 sentences, ~40% nested entities, nesting up to depth 3),
3 seeds (the seed draws the corpus and the weights). Both taggers share the BiLSTM encoder (64-dim embeddings, 64 per
direction) and Adam 1e-3, 30 epochs, as configs/mulco/synthetic_nested.yaml and configs/bio_crf_tagger/synthetic_nested.yaml;
the final model is scored on the test split with span-level micro P/R/F1 against the full nested gold, overall and on
nested entities. Reference row: the perfect flat tagger (the gold outermost spans, what the flat CRF is trained to
emit), the ceiling of any tagger that cannot emit overlapping spans."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import mean_sd_cell, over_seeds, quiet_lightning, setup_threads  # noqa: E402
from litzoo.datamodules.nested_ner import SyntheticNestedNERDataModule  # noqa: E402
from litzoo.framework.text.spans import flatten_for_bio, span_prf  # noqa: E402
from litzoo.modules.bio_crf_tagger import BIOCRFTagger  # noqa: E402
from litzoo.modules.mulco import MulcoModule  # noqa: E402

SEEDS = (0, 1, 2)
EPOCHS = 30
NET = {"embed_dim": 64, "hidden_dim": 64, "num_layers": 1, "dropout": 0.1}
MODELS = ("perfect flat tagger (gold outermost)", "flat BIO-CRF", "Mulco (3 scopes)")
KEYS = ("precision", "recall", "f1", "nested_precision", "nested_recall", "nested_f1")


def fit_and_test(module: L.LightningModule, dm: SyntheticNestedNERDataModule, name: str, seed: int) -> dict[str, float]:
    trainer = L.Trainer(max_epochs=EPOCHS, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
    start = time.time()
    trainer.fit(module, datamodule=dm)
    scores = trainer.test(module, datamodule=dm, verbose=False)[0]
    print(f"seed {seed} {name}: fit {time.time() - start:.1f} s, test F1 {scores['test/f1']:.3f}, nested F1 {scores['test/nested_f1']:.3f}", file=sys.stderr)
    return {key: float(scores[f"test/{key}"]) for key in KEYS}


def run_seed(root: str, seed: int) -> dict[str, dict[str, float]]:
    dm = SyntheticNestedNERDataModule(root=root, level="char", nested_share=0.4, seed=seed, batch_size=32)
    gold = [s.token_spans for s in dm.sentences("test")]
    out = {MODELS[0]: span_prf([flatten_for_bio(spans) for spans in gold], gold).scores()}
    L.seed_everything(seed)
    out[MODELS[1]] = fit_and_test(BIOCRFTagger(keep="outermost", **NET), dm, "flat BIO-CRF", seed)
    L.seed_everything(seed)
    out[MODELS[2]] = fit_and_test(MulcoModule(num_scopes=3, max_length=16, **NET), dm, "Mulco", seed)
    stats = dm.statistics("test")
    out["data"] = {"entities": float(stats.entities), "nested_share": stats.nested_share, "max_depth": float(stats.max_depth)}
    return out


def main() -> dict[str, Any]:
    setup_threads()
    torch.set_num_threads(1)  # small BiLSTMs: extra threads only add synchronisation
    quiet_lightning()
    start = time.time()
    results: dict[str, Any] = {"seeds": list(SEEDS), "epochs": EPOCHS}
    with tempfile.TemporaryDirectory() as root:
        runs = [run_seed(root, s) for s in SEEDS]
    results.update(over_seeds(runs))
    results["seconds"] = time.time() - start
    return results


def format_section(results: dict[str, Any]) -> str:
    data = results["data"]
    lines = ["## Mulco: nested NER through multiple scopes vs the flat BIO-CRF (issue 24)", "",
             f"Test split, mean ± std over seeds {results['seeds']} (the seed draws the corpus and the weights); SYNTHETIC Chinese "
             f"nested-gazetteer corpus, char level, 2000 / 300 / 300 sentences, {data['entities'][0]:.0f} test entities of which "
             f"{data['nested_share'][0]:.1%} nested, depth up to {data['max_depth'][0]:.0f}. Span-level micro P/R/F1 against the full "
             "nested gold; nested: recall over the gold spans nested in their sentence's gold, precision over the predictions nested "
             f"in their sentence's predictions. Same BiLSTM encoder (64 + 2×64), Adam 1e-3, {results['epochs']} epochs, final model. "
             "Perfect flat tagger: the gold outermost spans, the ceiling of a tagger without overlaps.", "",
             "| model | P | R | F1 | nested P | nested R | nested F1 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for model in MODELS:
        lines.append(f"| {model} | " + " | ".join(mean_sd_cell(results[model][k]) for k in KEYS) + " |")
    mulco, flat = results[MODELS[2]], results[MODELS[1]]
    lines += ["", f"Mulco vs flat BIO-CRF: F1 {mulco['f1'][0]:.3f} vs {flat['f1'][0]:.3f}, nested F1 {mulco['nested_f1'][0]:.3f} vs "
              f"{flat['nested_f1'][0]:.3f} (a flat tagger's predictions never nest, so its nested F1 is 0; its nested recall counts the "
              "outermost nested spans it finds).", "", f"{results['seconds']:.0f} s on CPU."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(format_section(main()))
