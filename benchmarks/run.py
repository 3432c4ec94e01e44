"""Run every benchmark and (re)write BENCHMARKS.md at the repository root.

    make bench          # or: .venv/bin/python benchmarks/run.py

Every number in BENCHMARKS.md comes from this run: speeds are ratios against a baseline measured
in the same process, in alternating rounds.

    .venv/bin/python benchmarks/run.py --reuse                  # keep sections already in runs/benchmarks/
    .venv/bin/python benchmarks/run.py --reuse --rerun curation # ... but run these again

``--reuse`` re-reads the raw results a previous run saved in runs/benchmarks/<module>.json instead of
running that benchmark again (an interrupted ``make bench`` continues where it stopped); BENCHMARKS.md
then says which sections were re-read and when they were measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

# The benchmark modules (and torch) are imported in main(), not here: a benchmark's spawned worker processes (the
# curation engines') import this script again as their __main__, and should not pay for every benchmark's imports.
ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "BENCHMARKS.md"
COMMAND = "make bench  # = .venv/bin/python benchmarks/run.py"


def fusion_verdict(results: dict) -> str:
    rows = results["latency"]
    failed = [f"{r['model']} batch {r['batch']} ({r['ratio']:.3f})" for r in rows if not r["meets_goal"]]
    met = len(rows) - len(failed)
    text = f"Goal: fused/unfused latency ≤ {results['goal_ratio']}. Met in {met} of {len(rows)} cases"
    return text + (f"; not met: {', '.join(failed)}." if failed else ".")


def overhead_verdict(results: dict) -> str:
    parts = []
    for r in results["rows"]:
        if r["meets_goal"] is None:
            continue
        parts.append(f"{r['variant']}: {r['ratio']:.3f} ({'met' if r['meets_goal'] else 'not met'})")
    return f"Goal: litzoo/plain throughput ≥ {results['goal_ratio']}. " + "; ".join(parts) + "."


RESULTS_DIR = ROOT / "runs" / "benchmarks"


REUSED: dict[str, str] = {}


class _SavedDict(dict):
    """A dict read back from JSON, where number keys became strings: ``d[0.5]`` finds ``d["0.5"]``."""

    def __missing__(self, key):
        if isinstance(key, (int, float)) and not isinstance(key, bool) and str(key) in self:
            return self[str(key)]
        raise KeyError(key)


def _section(label: str, run, reuse: bool = False, rerun: tuple[str, ...] = ()) -> dict:
    """Run one benchmark, saying what runs and how long it took on stderr; its raw results are kept in
    runs/benchmarks/<module>.json, so a table can be re-read without running it again (``reuse``)."""
    saved = RESULTS_DIR / f"{run.__module__}.json"
    if reuse and run.__module__ not in rerun and saved.is_file():
        measured = datetime.datetime.fromtimestamp(saved.stat().st_mtime, datetime.timezone.utc)
        REUSED[run.__module__] = measured.strftime("%Y-%m-%d %H:%M UTC")
        print(f"{label}: re-read {saved} (measured {REUSED[run.__module__]})", file=sys.stderr, flush=True)
        return json.loads(saved.read_text(), object_hook=_SavedDict)
    print(f"{label} ...", file=sys.stderr, flush=True)
    results = run()
    print(f"  done in {results['seconds']:.0f} s", file=sys.stderr, flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{run.__module__}.json").write_text(json.dumps(results, indent=1, default=str))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="re-read sections saved in runs/benchmarks/ instead of running them")
    parser.add_argument("--rerun", nargs="*", default=[], help="benchmark modules to run even with --reuse (e.g. curation)")
    args = parser.parse_args(argv)
    options = {"reuse": args.reuse, "rerun": tuple(args.rerun)}
    import active_learning
    import aio_p
    import altogether
    import bpr_mf
    import cat_art
    import ceil
    import common
    import compile as compile_bench
    import compile_node_cap
    import curation
    import curation_pool
    import curation_scale
    import deploy_speed
    import dinov2
    import flap
    import flap_captions
    import framework_overhead
    import fusion_latency
    import gradient_reparam
    import la3
    import layer_probe
    import masked_modelling
    import mavil
    import mavil_finetune
    import mbt
    import mode
    import mulco
    import nas_predictors
    import nas_predictors_transfer
    import nas_search
    import pathcon
    import pe_av
    import perception_encoder
    import polarization
    import prune_residual
    import pruning
    import quantization
    import r5
    import recguru
    import rwr_gae
    import sasrec
    import stickerclip
    import structural_reparam
    import text_quality
    import toxvis
    common.setup_threads()
    machine = common.machine_info()
    start = time.perf_counter()

    fusion = _section("fusion latency", fusion_latency.main, **options)
    deploy = _section("deploy speed at 224x224: RepVGG-A0, ResNet-18, ResNet-50; fused / unfused, float / int8, dense / ResRep / Torch-Pruning; eager / torch.compile / onnxruntime", deploy_speed.main, **options)
    overhead = _section("framework overhead", framework_overhead.main, **options)
    grafted = _section("structural re-parameterization on a plain CNN (12 trainings)", structural_reparam.main, **options)
    pruned = _section("pruning: dense / ResRep / Torch-Pruning / GSM / L1 unstructured on ResNet-18 (15 trainings)", pruning.main, **options)
    residual = _section("pruning residual-tied channels: ResRep with / without prune_residual vs Torch-Pruning on 5 CIFAR networks", prune_residual.main, **options)
    gradient = _section("gradient re-parameterization: RepOpt-VGG, SGS, FastClip (30 trainings)", gradient_reparam.main, **options)
    quantized = _section("quantization: float / PTQ / QAT int8 of plain VGG, RepVGG, RepOpt-VGG (9 trainings + 9 QAT fine-tunes)", quantization.main, **options)
    curated = _section("data curation: CiT vs the raw pool (9 trainings), MetaCLIP balancing statements", curation.main, **options)
    matchers = _section("curation at scale: MetaCLIP matchers, official brute force / Aho-Corasick vs litzoo, 1 and 2 workers", curation_scale.main, **options)
    pooled = _section("curation at scale: a sharded pool end to end, 1 / 2 workers / Dask, kill and resume, memory", curation_pool.main, **options)
    text_pruned = _section("text quality-based pruning: tiny GPT on full vs pruned corpus (6 trainings)", text_quality.main, **options)
    masked = _section("masked modelling: MAE on digits with probes (3 trainings), masked vs all-token step time", masked_modelling.main, **options)
    predictors = _section("NAS predictors: GENNAPE ablations per held-out family (36 predictor trainings)", nas_predictors.main, **options)
    transfer = _section("NAS predictors: the transferable predictor's pretraining (24 predictor trainings)", nas_predictors_transfer.main, **options)
    aio = _section("NAS predictors: AIO-P on an unseen task", aio_p.main, **options)
    search = _section("NAS search: predictor-guided vs random (120 network trainings)", nas_search.main, **options)
    distilled = _section("self-distillation: DINOv2 on digits, 4 ablations and MAE (18 trainings)", dinov2.main, **options)
    experts = _section("MoDE: two CLIP data experts on a two-domain pool, metadata-weighted ensemble (9 trainings)", mode.main, **options)
    realigned = _section("Altogether: captioner with / without the alt-text prompt, CLIP on raw vs re-captioned pool (9 trainings)", altogether.main, **options)
    pe = _section("Perception Encoder: CLIP vs PE-style tower, fixed vs progressive resolution (9 trainings)", perception_encoder.main, **options)
    stickers = _section("StickerCLIP: zero-shot vs fine-tuned vs from-scratch sticker retrieval (9 trainings)", stickerclip.main, **options)
    paths = _section("PathCon: context only / paths only / both on a planted-rule KG (9 trainings)", pathcon.main, **options)
    inductive = _section("CoMPILE: inductive relation prediction on unseen entities (3 trainings)", compile_bench.main, **options)
    capped = _section("CoMPILE: GraIL's per-hop node cap, subgraph sizes and extraction time (3 seeds)", compile_node_cap.main, **options)
    rules = _section("R5: MCTS rule discovery on planted GraphLog worlds (3 trainings)", r5.main, **options)
    walks = _section("RWR-GAE: GAE / VGAE with and without the random-walk regulariser on karate and an SBM (24 trainings)", rwr_gae.main, **options)

    mf = _section("BPR-MF on SYNTHETIC shared-taste domains vs popularity and the planted oracle (3 seeds)", bpr_mf.main, **options)
    sequential = _section("SASRec on the sparse SYNTHETIC shared-taste domain vs popularity and the planted oracle (3 seeds)", sasrec.main, **options)
    gurus = _section("RecGURU vs SASRec of the same size on the sparse SYNTHETIC domain, and without the critic (3 seeds)", recguru.main, **options)
    transfers = _section("CAT-ART vs single-domain BPR-MF on three SYNTHETIC domains, and its ablations (3 seeds)", cat_art.main, **options)
    scopes = _section("Mulco vs the flat BIO-CRF on a SYNTHETIC nested-NER corpus (3 seeds)", mulco.main, **options)
    toxic = _section("ToxVis: macro-F1 and IG attribution precision@k on a SYNTHETIC planted hate corpus (3 seeds)", toxvis.main, **options)
    clusters = _section("CEIL with CDCC: ACC / NMI / ARI over iterations vs CDCC alone and k-means on SYNTHETIC topics (3 seeds)", ceil.main, **options)
    polar = _section("Semantic polarization: drift, Granger direction and attributive words on SYNTHETIC drifting stations (3 seeds)", polarization.main, **options)
    layers = _section("Multi-task layer probing: AV-SUPERB's Featurizer on a SYNTHETIC planted-layer upstream (3 seeds)", layer_probe.main, **options)
    fusions = _section("MBT: bottleneck vs late vs full fusion on the SYNTHETIC audio-visual XOR, attention FLOPs, PGD eps* (3 seeds)", mbt.main, **options)
    pairings = _section("PE-AV: per-pairing contrastive heads on SYNTHETIC captioned audio-visual clips (3 seeds)", pe_av.main, **options)
    dropped = _section("FLAP: encoder step time vs kept tokens, retrieval vs drop ratio, reconstruction in low data (3 seeds)", flap.main, **options)
    captioned = _section("FLAP: caption augmentation with rewrites vs held-out validation phrasings (3 seeds)", flap_captions.main, **options)
    mavil_run = _section("MAViL: reconstruction, audio-video retrieval and probes on SYNTHETIC clips with a shared digit pitch (3 seeds)", mavil.main, **options)
    mavil_ft_run = _section("MAViL: fine-tuning heads and the masked-contrast diagnosis on SYNTHETIC clips (3 seeds)", mavil_finetune.main, **options)
    augment = _section("LA3: label-aware augmentation search on the digits with planted harm (3 seeds)", la3.main, **options)
    active = _section("Deep active learning on digits: learning-curve AUC per query strategy, plain and duplicated pools (3 seeds)", active_learning.main, **options)

    # with --reuse the wall time of this process is not the benchmarks': add up each section's own time
    total = sum(r["seconds"] for r in (fusion, deploy, overhead, grafted, pruned, residual, gradient, quantized, curated, matchers, pooled, text_pruned, masked,
                                       predictors, transfer, aio, search, distilled, experts, realigned, pe, stickers, paths, inductive, capped, rules, walks, mf, sequential, gurus, transfers, scopes, toxic, clusters, polar, layers, fusions, pairings, dropped, captioned, mavil_run, mavil_ft_run, active, augment))
    del start
    try:
        load_end = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load_end = "n/a"
    machine["load average at end (1/5/15 min)"] = load_end

    if REUSED:
        machine["sections re-read from an earlier run (--reuse)"] = ", ".join(f"{name} (measured {when})" for name, when in REUSED.items())
    machine_lines = "\n".join(f"- {key}: {value}" for key, value in machine.items())
    text = f"""# litzoo benchmarks

Speed is reported as ratios against a baseline measured in the same run (alternating rounds,
medians), so that the numbers compare across machines better than absolute times do. This file is
written by `benchmarks/run.py`; do not edit it by hand.

Command: `{COMMAND}` (each benchmark also runs alone: `.venv/bin/python benchmarks/fusion_latency.py`,
`.venv/bin/python benchmarks/deploy_speed.py`,
`.venv/bin/python benchmarks/framework_overhead.py`, `.venv/bin/python benchmarks/structural_reparam.py`,
`.venv/bin/python benchmarks/pruning.py`, `.venv/bin/python benchmarks/prune_residual.py`,
`.venv/bin/python benchmarks/gradient_reparam.py`,
`.venv/bin/python benchmarks/quantization.py`, `.venv/bin/python benchmarks/curation.py`,
`.venv/bin/python benchmarks/curation_scale.py`, `.venv/bin/python benchmarks/curation_pool.py`,
`.venv/bin/python benchmarks/text_quality.py`, `.venv/bin/python benchmarks/masked_modelling.py`,
`.venv/bin/python benchmarks/nas_predictors.py`, `.venv/bin/python benchmarks/nas_predictors_transfer.py`,
`.venv/bin/python benchmarks/aio_p.py`, `.venv/bin/python benchmarks/nas_search.py`, `.venv/bin/python benchmarks/dinov2.py`,
`.venv/bin/python benchmarks/mode.py`, `.venv/bin/python benchmarks/altogether.py`,
`.venv/bin/python benchmarks/perception_encoder.py`, `.venv/bin/python benchmarks/stickerclip.py`,
`.venv/bin/python benchmarks/pathcon.py`, `.venv/bin/python benchmarks/compile.py`,
`.venv/bin/python benchmarks/compile_node_cap.py`, `.venv/bin/python benchmarks/r5.py`,
`.venv/bin/python benchmarks/rwr_gae.py`, `.venv/bin/python benchmarks/bpr_mf.py`, `.venv/bin/python benchmarks/sasrec.py`,
`.venv/bin/python benchmarks/recguru.py`, `.venv/bin/python benchmarks/cat_art.py`,
`.venv/bin/python benchmarks/mulco.py`, `.venv/bin/python benchmarks/toxvis.py`,
`.venv/bin/python benchmarks/ceil.py`, `.venv/bin/python benchmarks/polarization.py`,
`.venv/bin/python benchmarks/layer_probe.py`, `.venv/bin/python benchmarks/mbt.py`, `.venv/bin/python benchmarks/pe_av.py`,
`.venv/bin/python benchmarks/flap.py`, `.venv/bin/python benchmarks/mavil.py`,
`.venv/bin/python benchmarks/flap_captions.py`, `.venv/bin/python benchmarks/mavil_finetune.py`, `.venv/bin/python benchmarks/active_learning.py`, `.venv/bin/python benchmarks/la3.py`). Total wall time: {total:.0f} s.

Machine:

{machine_lines}

A load average above 0 at the start means other processes shared the cores: the absolute times are then
noisy, the alternating-round ratios less so.

## RepVGG structural re-parameterization: fused vs unfused inference (`benchmarks/fusion_latency.py`, {fusion['seconds']:.0f} s)

{fusion_verdict(fusion)}

{fusion_latency.to_markdown(fusion)}

{deploy_speed.format_section(deploy)}

## Framework overhead: litzoo (Lightning) vs a plain PyTorch loop (`benchmarks/framework_overhead.py`, {overhead['seconds']:.0f} s)

{overhead_verdict(overhead)}

{framework_overhead.to_markdown(overhead)}

## ACNet / DBB / RepVGG branches on a plain CNN via `StructuralReparam` (`benchmarks/structural_reparam.py`, {grafted['seconds']:.0f} s)

{structural_reparam.verdict(grafted)}

{structural_reparam.to_markdown(grafted)}

## Pruning: ResRep and GSM against dense training, Torch-Pruning and Lightning's ModelPruning (`benchmarks/pruning.py`, {pruned['seconds']:.0f} s)

{pruning.verdict(pruned)}

{pruning.to_markdown(pruned)}

{pruning.PROTOCOL}

{prune_residual.format_section(residual)}

## Gradient re-parameterization and spectral control: RepOptimizers, SGS, FastClip (`benchmarks/gradient_reparam.py`, {gradient['seconds']:.0f} s)

{gradient_reparam.verdict(gradient)}

{gradient_reparam.to_markdown(gradient)}

## Quantization (int8, torchao PT2E): plain VGG, fused RepVGG and RepOpt-VGG, PTQ and QAT (`benchmarks/quantization.py`, {quantized['seconds']:.0f} s)

{quantization.verdict(quantized)}

{quantization.to_markdown(quantized)}

{curation.format_section(curated)}

{curation_scale.format_section(matchers)}

{curation_pool.format_section(pooled)}

{text_quality.format_section(text_pruned)}

{masked_modelling.format_section(masked)}

{nas_predictors.format_section(predictors)}

{nas_predictors_transfer.format_section(transfer)}

{aio_p.format_section(aio)}

{nas_search.format_section(search)}

{dinov2.format_section(distilled)}

{mode.format_section(experts)}

{altogether.format_section(realigned)}

{perception_encoder.format_section(pe)}

{stickerclip.format_section(stickers)}

{pathcon.format_section(paths)}

{compile_bench.format_section(inductive)}

{compile_node_cap.format_section(capped)}

{r5.format_section(rules)}

{rwr_gae.format_section(walks)}

{bpr_mf.format_section(mf)}

{sasrec.format_section(sequential)}

{recguru.format_section(gurus)}

{cat_art.format_section(transfers)}

{mulco.format_section(scopes)}

{toxvis.format_section(toxic)}

{ceil.format_section(clusters)}

{polarization.format_section(polar)}

{layer_probe.format_section(layers)}

{mbt.format_section(fusions)}

{pe_av.format_section(pairings)}

{flap.format_section(dropped)}

{flap_captions.format_section(captioned)}

{mavil.format_section(mavil_run)}

{mavil_finetune.format_section(mavil_ft_run)}

{active_learning.format_section(active)}

{la3.format_section(augment)}
"""
    partial = OUTPUT.with_name(OUTPUT.name + ".partial")
    partial.write_text(text)
    partial.replace(OUTPUT)
    print(text)
    print(f"wrote {OUTPUT} ({total:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
