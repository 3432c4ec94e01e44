"""ToxVis (issue 24, item 3) on the SYNTHETIC planted implicit-hate corpus, 3 seeds (the seed draws the corpus, the split and
the weights). configs/toxvis/planted.yaml's model and data (300 posts per class, 20% test, width 64, 2 blocks, AdamW 1e-3),
EPOCHS epochs. Reported: test macro-F1 and per-class F1; and the attribution precision@k (k = the post's planted tokens)
of Integrated Gradients (litzoo.framework.attribution: zero-embedding baseline, 50 Gauss-Legendre steps, sum over the
embedding dimension, the gold class attributed) on every explicit and every implicit test post, against two controls:
the same attributions of the untrained network (same seed) and the expected precision of a random token ranking (k / n)."""

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
from litzoo.datamodules.implicit_hate import EXPLICIT, IMPLICIT, SyntheticImplicitHateDataModule  # noqa: E402
from litzoo.framework.attribution import integrated_gradients, token_attributions  # noqa: E402
from litzoo.modules.toxvis import ToxVisClassifier, attribution_precision_at_k  # noqa: E402

SEEDS = (0, 1, 2)
EPOCHS = 30
GROUPS = {"explicit": EXPLICIT, "implicit": IMPLICIT}


def planted_mask(dm: SyntheticImplicitHateDataModule, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: the planted tokens of the posts at file ``rows`` (one token per pseudo-word, checked)."""
    planted = torch.zeros_like(mask)
    posts = dm.corpus.posts
    for b, row in enumerate(rows.tolist()):
        if int(mask[b].sum()) != len(posts[row].split()):
            raise AssertionError(f"row {row}: the vocabulary did not keep one token per word")
        planted[b, dm.planted["planted"][row]] = True
    return planted


def attribution_scores(model: ToxVisClassifier, dm: SyntheticImplicitHateDataModule) -> dict[str, float]:
    """Mean precision@k (IG and the random-ranking expectation) on the explicit and implicit test posts."""
    test = dm.dataset("test").tensors
    model.eval()
    out: dict[str, float] = {}
    for group, label in GROUPS.items():
        rows = test["label"] == label
        tokens, mask, index = test["tokens"][rows], test["mask"][rows], test["index"][rows]
        planted = planted_mask(dm, index, mask)
        with torch.no_grad():
            embeds = model.embed(tokens)
        target = torch.full((len(tokens),), label, dtype=torch.long)
        result = integrated_gradients(model.forward_embeds, embeds, None, target, mask, steps=50, method="gausslegendre")
        per_token = token_attributions(result.attributions, mask, "sum")
        out[f"p@k/{group}"] = float(attribution_precision_at_k(per_token, mask, planted).mean())
        out[f"random/{group}"] = float((planted.sum(1).double() / mask.sum(1).double()).mean())  # E[precision] of a random ranking
        out[f"|delta|/{group}"] = float(result.delta.abs().max())
    return out


def run_seed(seed: int, root: str) -> dict[str, dict[str, float]]:
    L.seed_everything(seed, verbose=False)
    dm = SyntheticImplicitHateDataModule(root=root, posts_per_class=300, seed=seed, split_seed=seed, test_fraction=0.2, batch_size=32)
    dm.setup("fit")
    model = ToxVisClassifier(vocab_size=dm.vocab_size, max_positions=dm.max_length)
    model.vocabulary = dm.vocabulary
    untrained = attribution_scores(model, dm)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0)  # fmt: skip
    trainer.fit(model, dm)
    metrics = trainer.test(model, dm, verbose=False)[0]
    trained = attribution_scores(model, dm)
    classifier = {"macro_f1": metrics["test/macro_f1"], **{k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/f1/")}}
    return {
        "classifier": classifier,
        "IG, trained": {f"p@k/{g}": trained[f"p@k/{g}"] for g in GROUPS} | {f"|delta|/{g}": trained[f"|delta|/{g}"] for g in GROUPS},
        "IG, untrained (control)": {f"p@k/{g}": untrained[f"p@k/{g}"] for g in GROUPS} | {f"|delta|/{g}": untrained[f"|delta|/{g}"] for g in GROUPS},
        "random ranking (expected)": {f"p@k/{g}": trained[f"random/{g}"] for g in GROUPS} | {f"|delta|/{g}": 0.0 for g in GROUPS},
    }


def main() -> dict[str, Any]:
    setup_threads()
    torch.set_num_threads(1)  # tiny model, batches of 32: extra threads only add barrier waits
    quiet_lightning()
    start = time.time()
    results: dict[str, Any] = {"seeds": list(SEEDS), "epochs": EPOCHS}
    with tempfile.TemporaryDirectory() as root:
        runs = [run_seed(seed, root) for seed in SEEDS]
    results["per_seed"] = runs
    results["summary"] = over_seeds(runs)
    results["seconds"] = time.time() - start
    return results


def format_section(results: dict[str, Any]) -> str:
    summary = results["summary"]
    classifier = summary["classifier"]
    lines = ["## ToxVis: implicit vs explicit hate classification with Integrated-Gradients explanations (issue 24, item 3)", "",
             f"SYNTHETIC planted corpus (300 posts per class; explicit posts: 1 planted trigger word; implicit posts: a planted 2-3-word "
             f"coded phrase, no trigger; neutral posts: half hold one lone coded word as a decoy; 5-12 shared filler words), 20% stratified "
             f"test split, mean ± std over seeds {results['seeds']}; configs/toxvis/planted.yaml's model, {results['epochs']} epochs.", "",
             "| test macro-F1 | F1 not_hate | F1 implicit_hate | F1 explicit_hate |", "|---|---|---|---|",
             "| " + " | ".join(mean_sd_cell(classifier[k]) for k in ("macro_f1", "f1/not_hate", "f1/implicit_hate", "f1/explicit_hate")) + " |", "",
             "Attribution precision@k (share of the k highest-attributed tokens that are planted, k = the post's planted tokens; gold class "
             "attributed; IG with a zero-embedding baseline, 50 Gauss-Legendre steps, summed over the embedding dimension); |delta|: the "
             "largest IG completeness gap:", "",
             "| attributions | p@k explicit | p@k implicit | max abs delta explicit | max abs delta implicit |", "|---|---|---|---|---|"]  # fmt: skip
    for name in ("IG, trained", "IG, untrained (control)", "random ranking (expected)"):
        row = summary[name]
        lines.append(f"| {name} | {mean_sd_cell(row['p@k/explicit'])} | {mean_sd_cell(row['p@k/implicit'])} | "
                     f"{row['|delta|/explicit'][0]:.2g} | {row['|delta|/implicit'][0]:.2g} |")  # fmt: skip
    trained = summary["IG, trained"]
    verdict = "explicit > implicit, as the ToxVis notes expect" if trained["p@k/explicit"][0] > trained["p@k/implicit"][0] else \
        "explicit ≤ implicit, against the ToxVis notes' expectation"  # fmt: skip
    lines += ["", f"Trained IG precision@k: {verdict}.", "", f"{results['seconds']:.0f} s on CPU."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(format_section(main()))
