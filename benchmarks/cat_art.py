"""CAT-ART (issue 23, item 3) on the SYNTHETIC shared-taste domains: 3 domains (1000 users, 300 items each; d0 and d1
dense, 10-30 interactions per user; d2 sparse, 5-8; 20% of the users in every domain), 3 seeds (the seed draws the data,
the evaluation negatives, the weights, the training negatives and CAT's masks). Test split (leave-one-out), HR@10 /
NDCG@10 per target domain among 100 sampled negatives and in full ranking, overall and for sparse users (<= 3 training
interactions in the target).

Compared, all with CAT-ART's settings (latent 64, Adam 1e-3, L2 1e-4 on the batch's embeddings for MF, 1 negative),
init N(0, 0.1^2) for the MF tables (as configs/bpr_mf/shared_taste.yaml):

* single-domain BPR-MF (``BPRMFModule``) per domain, ``MF_EPOCHS + ART_EPOCHS`` epochs: as many passes over the target's
  interactions as CAT-ART's MF pretraining and ART together;
* CAT-ART: one ``CATART`` run serving every domain: ``MF_EPOCHS`` of per-domain BPR-MF, ``CAT_EPOCHS`` of CAT,
  ``ART_EPOCHS`` of ART; the variants share the seed's MF pretraining (each starts from a copy of its tables):
  CAT-ART (``knowledge="both"``, masking), CAT-ART without masking (``mask=False``: the auto-encoder's reconstruction
  only, the paper's ablation), ART only (``knowledge="d_sp"``: no global embedding) and CAT only (``knowledge="d_in"``).
"""

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
from litzoo.datamodules.interactions import SharedTasteDataModule  # noqa: E402
from litzoo.modules.bpr_mf import BPRMFModule  # noqa: E402
from litzoo.modules.cat_art import CATART  # noqa: E402

SEEDS = (0, 1, 2)
DOMAINS = ("d0", "d1", "d2")
SPARSE_DOMAIN = "d2"
MF_EPOCHS, CAT_EPOCHS, ART_EPOCHS = 150, 30, 30
INIT_STD = 0.1
VARIANTS = {  # name -> CATART arguments
    "CAT-ART": {},
    "CAT-ART without masking": {"mask": False},
    "ART only (d_sp)": {"knowledge": "d_sp"},
    "CAT only (d_in)": {"knowledge": "d_in"},
}
MODELS = ("BPR-MF", "CAT-ART pretrained MF", *VARIANTS)
KEYS = tuple(f"{kind}/{group}{m}" for kind in ("sampled", "full") for group in ("", "sparse/") for m in ("hr@10", "ndcg@10"))
QUIET = {"limit_val_batches": 0, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
         "accelerator": "cpu", "devices": 1}  # fmt: skip


def datamodule(root: str, seed: int) -> SharedTasteDataModule:
    return SharedTasteDataModule(root=root, num_domains=3, sparse_domain=2, seed=seed, eval_domains=list(DOMAINS))


def per_domain(logged: dict[str, float], domain: str) -> dict[str, float]:
    prefix = f"test/{domain}/"
    return {k: logged.get(prefix + k, float("nan")) for k in KEYS}


def fit_bpr(dm: SharedTasteDataModule, domain: str, seed: int) -> dict[str, float]:
    L.seed_everything(seed)
    module = BPRMFModule(domain=domain, init_std=INIT_STD, negative_seed=seed)
    trainer = L.Trainer(max_epochs=MF_EPOCHS + ART_EPOCHS, **QUIET)
    trainer.fit(module, datamodule=dm)
    logged = trainer.test(module, datamodule=dm, verbose=False)[0]
    return {k: logged.get(f"test/{k}", float("nan")) for k in KEYS}  # BPR-MF evaluates its own domain's rows only


def run_seed(root: str, seed: int) -> dict[str, dict[str, float]]:
    dm = datamodule(root, seed)
    out: dict[str, dict[str, float]] = {}
    start = time.time()
    for domain in DOMAINS:
        out[f"{domain}/BPR-MF"] = fit_bpr(dm, domain, seed)
    print(f"seed {seed}: BPR-MF {time.time() - start:.0f} s", file=sys.stderr)
    # CAT-ART's phase 1, once per seed: per-domain BPR-MF of every domain
    start = time.time()
    L.seed_everything(seed)
    pretrained = CATART(mf_epochs=MF_EPOCHS, cat_epochs=0, init_std=INIT_STD, seed=seed)
    trainer = L.Trainer(max_epochs=MF_EPOCHS, **QUIET)
    trainer.fit(pretrained, datamodule=dm)
    logged = trainer.test(pretrained, datamodule=dm, verbose=False)[0]  # before the transfer: the MF tables' scores
    for domain in DOMAINS:
        out[f"{domain}/CAT-ART pretrained MF"] = per_domain(logged, domain)
    print(f"seed {seed}: MF pretraining {time.time() - start:.0f} s", file=sys.stderr)
    tables = {k: v for k, v in pretrained.net.state_dict().items() if k.startswith(("mf_users", "mf_items"))}
    for name, options in VARIANTS.items():
        start = time.time()
        L.seed_everything(seed)
        module = CATART(mf_epochs=0, cat_epochs=CAT_EPOCHS, init_std=INIT_STD, seed=seed, **options)
        module.build(dm.domain_names, dm.num_users, [dm.num_items(d) for d in dm.domain_names])
        module.net.load_state_dict(tables, strict=False)  # phase 2 starts from the shared phase-1 tables
        trainer = L.Trainer(max_epochs=CAT_EPOCHS + ART_EPOCHS, **QUIET)
        trainer.fit(module, datamodule=dm)
        logged = trainer.test(module, datamodule=dm, verbose=False)[0]
        for domain in DOMAINS:
            out[f"{domain}/{name}"] = per_domain(logged, domain)
        print(f"seed {seed}: {name} {time.time() - start:.0f} s", file=sys.stderr)
    return out


def main(seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    setup_threads()
    torch.set_num_threads(1)  # 64-wide tables, small batches: extra threads only add OpenMP barrier waits
    quiet_lightning()
    start = time.time()
    results: dict[str, Any] = {"seeds": list(seeds), "epochs": [MF_EPOCHS, CAT_EPOCHS, ART_EPOCHS]}
    with tempfile.TemporaryDirectory() as root:
        runs = [run_seed(root, s) for s in seeds]
    results.update(over_seeds(runs))
    results["seconds"] = time.time() - start
    return results


def format_section(results: dict[str, Any]) -> str:
    mf, cat, art = results["epochs"]
    lines = ["## CAT-ART: multi-target cross-domain recommendation (issue 23)", "",
             f"Test split (leave-one-out), mean ± std over seeds {results['seeds']}; SYNTHETIC shared-taste domains, 1000 users, 300 items each, "
             "d0 and d1 dense (10-30 interactions per user), d2 sparse (5-8), 20% of the users in every domain. Sampled: among the 100 negatives "
             "of the DataModule; full: all items minus the user's other known items. Sparse: users with <= 3 training interactions in the "
             f"target (none in d0, d1). One CAT-ART run serves all three domains: {mf} epochs of per-domain BPR-MF, {cat} of CAT, {art} of ART "
             f"(the variants share the seed's BPR-MF pretraining); single-domain BPR-MF trains {mf + art} epochs. CAT-ART's settings everywhere "
             "(latent 64, Adam 1e-3, L2 1e-4, 1 negative), init N(0, 0.1²). 'pretrained MF': CAT-ART's tables before the transfer.", "",
             "| target | model | sampled HR@10 | sampled NDCG@10 | sampled sparse HR@10 | sampled sparse NDCG@10 | full HR@10 | full NDCG@10 "
             "| full sparse HR@10 | full sparse NDCG@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for domain in DOMAINS:
        for model in MODELS:
            r = results.get(f"{domain}/{model}")
            if r is not None:
                lines.append(f"| {domain} | {model} | " + " | ".join(mean_sd_cell(r[k]) for k in KEYS) + " |")
    verdicts = []
    for domain in DOMAINS:
        cells = {m: results[f"{domain}/{m}"]["full/ndcg@10"][0] for m in ("BPR-MF", "CAT-ART", "CAT-ART without masking")}
        verdicts.append(f"{domain}: full NDCG@10 CAT-ART {cells['CAT-ART']:.3f}, without masking {cells['CAT-ART without masking']:.3f}, "
                        f"BPR-MF {cells['BPR-MF']:.3f}")  # fmt: skip
    sparse = results[f"{SPARSE_DOMAIN}/CAT-ART"]["full/sparse/ndcg@10"][0], results[f"{SPARSE_DOMAIN}/BPR-MF"]["full/sparse/ndcg@10"][0]
    lines += ["", "; ".join(verdicts) + f". Sparse users of {SPARSE_DOMAIN}: full NDCG@10 CAT-ART {sparse[0]:.3f}, BPR-MF {sparse[1]:.3f}.", "",
              f"{results['seconds']:.0f} s on CPU."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(format_section(main()))
