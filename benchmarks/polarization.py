"""Semantic polarization (issue 24, item 4) on SYNTHETIC drifting stations, 3 seeds (the seed draws the corpus, the split
and the weights). configs/polarization/synthetic_stations.yaml's model and data (3 keywords, 48 months, 8 turns per
keyword, month and station; width 32, 2 blocks; 30 MLM epochs then 10 classifier epochs). Reported, per seed and keyword:

* Spearman between the recovered normalised polarity series (polarity − permutation baseline) and the planted divergence;
* the recovered drift start (first month of 3 in a row with z ≥ 3 over the permutation null) against the planted one,
  and the planted divergence at the recovered start (what the detector needs to see);
* Granger p-values (ssr F test, AIC-selected lag, ≤ 3; differenced when ADF does not reject a unit root) TV → social
  (planted: the social series is the divergence one month later plus noise) and social → TV (not planted);
* the share of each station's 10 top Integrated-Gradients words (peak month) drawn from its own planted word pools;
* the negative control: the same run with ``max_divergence = 0`` (identical stations, pure-noise social series).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, config_cli, mean_sd_cell, quiet_lightning, setup_threads  # noqa: E402

SEEDS = (0, 1, 2)
CONFIG = ROOT / "configs" / "polarization" / "synthetic_stations.yaml"


def run(seed: int, max_divergence: float, root: str) -> dict[str, Any]:
    """One fit of the config's model and data with ``seed`` and ``max_divergence``; the per-keyword measurements."""
    L.seed_everything(seed, verbose=False)
    cli = config_cli(CONFIG, "--seed_everything", str(seed), "--data.init_args.root", root, "--data.init_args.seed", str(seed),
                     "--data.init_args.split_seed", str(seed), "--data.init_args.max_divergence", str(max_divergence))  # fmt: skip
    cli.trainer.fit(cli.model, cli.datamodule)
    report, planted = cli.model.report, cli.datamodule.planted
    divergence = np.array(planted["divergence"])
    normalised = np.array(report["normalised"], dtype=float)
    keywords = []
    for k, word in enumerate(planted["keywords"]):
        found, start = report["drift_start"][word], planted["drift_starts"][k]
        granger = report["granger"][word]
        keywords.append({
            "spearman": float(spearmanr(normalised[k], divergence[k]).statistic) if max_divergence > 0 else float("nan"),
            "planted_start": start, "found_start": found,
            "divergence_at_found": float(divergence[k, found]) if found is not None else float("nan"),
            "p_tv_to_social": granger["tv_to_social"]["p_value"], "p_social_to_tv": granger["social_to_tv"]["p_value"],
            "lag_tv_to_social": granger["tv_to_social"]["lag"],
            "max_abs_normalised": float(np.nanmax(np.abs(normalised[k]))),
        })  # fmt: skip
    own = planted["own_words"]
    precision = {station: float(np.mean([any(w["word"] in pool for pool in own[station]) for w in words])) if words else float("nan")
                 for station, words in report["attributive_words"].items()}  # fmt: skip
    return {"keywords": keywords, "ig_precision": precision, "peak": report["peak_label"], "classifier_steps": report["classifier_steps"]}


def main() -> dict[str, Any]:
    setup_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only add barrier waits
    quiet_lightning()
    start = time.time()
    results: dict[str, Any] = {"seeds": list(SEEDS), "drift": [], "control": []}
    with tempfile.TemporaryDirectory() as root:
        for seed in SEEDS:
            results["drift"].append(run(seed, 0.8, root))
            results["control"].append(run(seed, 0.0, root))
    drift = [k for r in results["drift"] for k in r["keywords"]]
    control = [k for r in results["control"] for k in r["keywords"]]
    per_seed = [float(np.mean([k["spearman"] for k in r["keywords"]])) for r in results["drift"]]
    errors = [k["found_start"] - k["planted_start"] for k in drift if k["found_start"] is not None]
    results["summary"] = {
        "spearman": (float(np.mean(per_seed)), float(np.std(per_seed))),
        "spearman_min": float(min(k["spearman"] for k in drift)),
        "drift_found": sum(k["found_start"] is not None for k in drift), "keywords": len(drift),
        "start_error": (float(np.mean(errors)), float(np.std(errors))) if errors else (float("nan"), 0.0),
        "start_error_range": (min(errors), max(errors)) if errors else None,
        "divergence_at_found": (float(np.nanmean([k["divergence_at_found"] for k in drift])), float(np.nanstd([k["divergence_at_found"] for k in drift]))),
        "forward_significant": sum(k["p_tv_to_social"] < 0.05 for k in drift), "reverse_significant": sum(k["p_social_to_tv"] < 0.05 for k in drift),
        "forward_p_max": float(max(k["p_tv_to_social"] for k in drift)), "reverse_p_median": float(np.median([k["p_social_to_tv"] for k in drift])),
        "ig_precision": (float(np.mean([v for r in results["drift"] for v in r["ig_precision"].values()])),
                         float(np.std([v for r in results["drift"] for v in r["ig_precision"].values()]))),
        "control_max_abs": float(max(k["max_abs_normalised"] for k in control)),
        "control_drift_found": sum(k["found_start"] is not None for k in control),
        "control_forward_significant": sum(k["p_tv_to_social"] < 0.05 for k in control),
        "control_reverse_significant": sum(k["p_social_to_tv"] < 0.05 for k in control),
        "control_ig_precision": float(np.nanmean([v for r in results["control"] for v in r["ig_precision"].values()])),
        "drift_max_abs": float(max(k["max_abs_normalised"] for k in drift)),
    }  # fmt: skip
    results["seconds"] = time.time() - start
    return results


def format_section(results: dict[str, Any]) -> str:
    s = results["summary"]
    n = s["keywords"]
    low, high = s["start_error_range"] or ("—", "—")
    lines = [
        "## Semantic polarization: keyword polarity between two stations, its drift and its Granger direction (issue 24, item 4)", "",
        f"SYNTHETIC drifting stations (configs/polarization/synthetic_stations.yaml: 3 keywords, 48 months, 8 turns per keyword, month and station; "
        f"a keyword's context words come from the stations' own pools with the planted divergence d, 0 before its drift start, then a ramp to 0.8 "
        f"plus fluctuations; the social series is d one month later plus noise). Width-32 2-block Transformer: 30 MLM epochs (polarity), "
        f"then 10 epochs fine-tuning its copy as the station classifier (Integrated Gradients in the peak month). Seeds {results['seeds']}; "
        f"{n} keyword series in all, and the same runs with d = 0 as the negative control.", "",
        "| measure | drifting stations | control (d = 0) |", "| --- | --- | --- |",
        f"| Spearman(normalised polarity, planted d), mean over keywords (± sd over seeds); min over keywords | {mean_sd_cell(s['spearman'])}; "
        f"min {s['spearman_min']:.3f} | — |",
        f"| max abs normalised polarity (polarity − permutation baseline) | {s['drift_max_abs']:.3f} | {s['control_max_abs']:.3f} |",
        f"| drift start found (z ≥ 3 for 3 months) | {s['drift_found']}/{n}; found − planted: {mean_sd_cell(s['start_error'])} months "
        f"(range {low}…{high}) | {s['control_drift_found']}/{n} (none expected) |",
        f"| planted d at the found start | {mean_sd_cell(s['divergence_at_found'])} | — |",
        f"| Granger TV → social p < 0.05 (planted) | {s['forward_significant']}/{n} (max p {s['forward_p_max']:.2g}) | "
        f"{s['control_forward_significant']}/{n} |",
        f"| Granger social → TV p < 0.05 (not planted) | {s['reverse_significant']}/{n} (median p {s['reverse_p_median']:.2g}) | "
        f"{s['control_reverse_significant']}/{n} |",
        f"| share of a station's top-10 IG words from its own planted pools (peak month) | {mean_sd_cell(s['ig_precision'])} | "
        f"{s['control_ig_precision']:.3f} |", "",
        f"Time: {results['seconds']:.0f} s on one core.",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_section(main()))
