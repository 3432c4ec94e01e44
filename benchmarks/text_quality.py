"""Text quality-based pruning (Sharma et al., arXiv:2405.01582): a tiny GPT trained on the full vs the pruned corpus.

The synthetic corpus of ``litzoo.datamodules.synthetic.text_quality_corpus`` (SYNTHETIC: clean grammar
sentences; 40% of the documents carry 1-4 web-junk lines) is scored with ``litzoo.framework.curation.text_quality``
(12 line filters, weights from a bigram LM fitted on the training lines) and the top 60% of the
training documents are kept, as the paper does on OpenWebText. The GPT of ``configs/text_quality``
is trained on each training set for the *same number of tokens* (``token_budget`` per epoch: the
pruned stream is repeated, the full one cut), with one BPE tokenizer shared by both runs (trained on
the full training documents) so that perplexities are per the same tokens. Seeds 0, 1, 2 vary the
model initialisation and batch order; the corpus, split and pruning are fixed.

Reported: validation perplexity on held-out *clean* documents (the text we want the LM to model;
never pruned), on held-out *raw* documents (the corpus distribution, junk included), the scorer's
AUROC at telling clean from junky training documents, and the share of the data the pruned run uses.

    .venv/bin/python benchmarks/text_quality.py [--seeds 0 1 2] [--epochs 6]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from common import ROOT, markdown_table, quiet_lightning, setup_threads
from torchmetrics.functional.classification import binary_auroc

from litzoo.datamodules.synthetic import text_quality_corpus
from litzoo.datamodules.text_corpus import TextCorpusDataModule, read_jsonl_texts
from litzoo.framework.curation import prune
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.modules.gpt import GPTLanguageModel

CONFIG = ROOT / "configs" / "text_quality" / "corpus_pruned.yaml"
KEEP_FRACTION = 0.6
NUM_DOCUMENTS, JUNK_SHARE = 600, 0.4


def _config() -> tuple[dict, dict, dict]:
    config = yaml.safe_load(CONFIG.read_text())
    model = dict(config["model"]["init_args"])
    optimizer = model.pop("optimizer")["init_args"]
    return model, dict(optimizer), dict(config["data"]["init_args"])


@torch.no_grad()
def perplexity(model: GPTLanguageModel, dm: TextCorpusDataModule, documents: list[str]) -> float:
    """``exp`` of the mean next-token NLL over the blocks of ``documents`` (tokenized like training)."""
    blocks = dm._blocks(dm._stream(documents), "evaluation")
    model.eval()
    total, count = 0.0, 0
    for batch in blocks.split(64):
        logits = model(batch[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


def train_once(corpus: Path, tokenizer: Path, clean_val: Path, keep_fraction: float, seed: int, epochs: int) -> dict:
    model_args, optimizer_args, data_args = _config()
    data_args.update(path=str(corpus), tokenizer_path=str(tokenizer), val_path=str(clean_val), keep_fraction=keep_fraction)
    data_args.pop("bpe_vocab_size", None)
    L.seed_everything(seed, verbose=False)
    dm = TextCorpusDataModule(**data_args)
    model = GPTLanguageModel(**model_args, optimizer=lambda params: torch.optim.AdamW(params, **optimizer_args))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0, num_sanity_val_steps=0,
                        limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(model, dm)
    return {"model": model, "dm": dm, "train_seconds": time.perf_counter() - start}


def main(seeds: tuple[int, ...] = (0, 1, 2), epochs: int = 6) -> dict:
    quiet_lightning()
    setup_threads()
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = text_quality_corpus(tmp / "train", NUM_DOCUMENTS, JUNK_SHARE, seed=0)
        clean_val = text_quality_corpus(tmp / "clean_val", 60, 0.0, seed=1000)
        raw_val = read_jsonl_texts(text_quality_corpus(tmp / "raw_val", 60, JUNK_SHARE, seed=1001))
        clean_docs = read_jsonl_texts(clean_val)
        records = [json.loads(line) for line in corpus.read_text().splitlines()]
        documents = [r["text"] for r in records]
        kept, scores, weights = prune(documents, KEEP_FRACTION)
        is_clean = torch.tensor([r["junk_lines"] == 0 for r in records])
        auroc = binary_auroc(torch.tensor(scores), is_clean.long()).item()
        kept_clean = is_clean[torch.as_tensor(kept)].float().mean().item()
        _, _, data_args = _config()
        tokenizer = tmp / "tokenizer.json"
        TextTokenizer.train(documents, vocab_size=data_args["bpe_vocab_size"]).save(tokenizer)
        for seed in seeds:
            for name, keep in (("full", 1.0), ("pruned", KEEP_FRACTION)):
                run = train_once(corpus, tokenizer, clean_val, keep, seed, epochs)
                rows.append({
                    "seed": seed, "data": name, "keep_fraction": keep,
                    "data_fraction": run["dm"].stats["kept_fraction"],
                    "train_tokens": run["dm"].stats["train_tokens"],
                    "clean_val_ppl": perplexity(run["model"], run["dm"], clean_docs),
                    "raw_val_ppl": perplexity(run["model"], run["dm"], raw_val),
                    "train_seconds": run["train_seconds"],
                })  # fmt: skip
    results = {
        "seeds": list(seeds), "epochs": epochs, "keep_fraction": KEEP_FRACTION, "num_documents": NUM_DOCUMENTS,
        "junk_share": JUNK_SHARE, "weights": weights, "auroc": auroc, "kept_clean_share": kept_clean,
        "corpus_clean_share": is_clean.float().mean().item(), "rows": rows, "threads": torch.get_num_threads(),
    }  # fmt: skip
    results["seconds"] = time.perf_counter() - start
    return results


def _mean_std(values: list[float], digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def format_section(results: dict) -> str:
    """The markdown section for BENCHMARKS.md."""
    def values(data: str, key: str) -> list[float]:
        return [r[key] for r in results["rows"] if r["data"] == data]

    table = markdown_table(
        ["training data", "data used", "train tokens / epoch", "val PPL, clean held-out", "val PPL, raw held-out", "train s"],
        [[data, f"{values(data, 'data_fraction')[0]:.0%}", f"{values(data, 'train_tokens')[0]:.0f}",
          _mean_std(values(data, "clean_val_ppl")), _mean_std(values(data, "raw_val_ppl")), _mean_std(values(data, "train_seconds"), 1)]
         for data in ("full", "pruned")],
    )  # fmt: skip
    ratio = statistics.mean(values("pruned", "clean_val_ppl")) / statistics.mean(values("full", "clean_val_ppl"))
    weights = ", ".join(f"{k} {v:.3f}" for k, v in results["weights"].items())
    return "\n".join([
        "## Text quality-based pruning (Sharma et al., 2024): tiny GPT, full vs pruned synthetic corpus",
        "",
        f"`.venv/bin/python benchmarks/text_quality.py` — {results['num_documents']} SYNTHETIC documents "
        f"({results['junk_share']:.0%} with web-junk lines), top {results['keep_fraction']:.0%} kept by quality score; "
        f"GPT of `configs/text_quality/corpus_pruned.yaml`, {results['epochs']} epochs at the same token budget, "
        f"one shared BPE tokenizer; seeds {results['seeds']} (mean ± std); {results['threads']} threads; {results['seconds']:.0f} s in all.",
        "",
        table,
        "",
        f"Clean held-out perplexity, pruned / full: **{ratio:.3f}**. Document score vs clean/junky label: AUROC "
        f"{results['auroc']:.4f}; clean share {results['corpus_clean_share']:.0%} of the corpus, {results['kept_clean_share']:.0%} of the kept documents.",
        "",
        f"Filter weights (bigram LM, add-k 0.1): {weights}.",
    ])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    print(format_section(main(tuple(args.seeds), args.epochs)), file=sys.stdout)
