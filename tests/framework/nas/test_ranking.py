"""Top-k precision of a predictor's ranking, by hand."""

from __future__ import annotations

import pytest
import torch

from litzoo.framework.nas import TopKPrecision, top_k_precision


def test_top_k_precision_by_hand():
    target = torch.tensor([0.9, 0.8, 0.1, 0.5, 0.3, 0.7, 0.2, 0.4, 0.6, 0.0])
    # k = ceil(0.3 * 10) = 3: true top-3 = {0, 1, 5}; predicted top-3 = {0, 5, 9}
    preds = torch.tensor([1.0, 0.0, 0.1, 0.2, 0.3, 0.9, 0.2, 0.1, 0.0, 0.8])
    assert top_k_precision(preds, target, 0.3).item() == pytest.approx(2 / 3)
    assert top_k_precision(target, target, 0.3).item() == 1.0
    assert top_k_precision(-target, target, 0.3).item() == 0.0
    # k rounds up: 5% of 10 is one architecture
    assert top_k_precision(preds, target, 0.05).item() == 1.0


def test_metric_accumulates_batches_like_the_function():
    generator = torch.Generator().manual_seed(0)
    preds, target = torch.randn(50, generator=generator), torch.randn(50, generator=generator)
    metric = TopKPrecision(0.2)
    for chunk in range(5):
        metric.update(preds[chunk * 10 : (chunk + 1) * 10], target[chunk * 10 : (chunk + 1) * 10])
    assert metric.compute().item() == top_k_precision(preds, target, 0.2).item()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="fraction"):
        TopKPrecision(0.0)
    with pytest.raises(ValueError, match="1-D"):
        top_k_precision(torch.zeros(3), torch.zeros(4), 0.5)


def test_benchmark_summary_table_by_hand_and_a_dash_where_spearman_is_undefined(tmp_path):
    import json

    from litzoo.framework.nas.labelling import format_benchmark_summary

    def record(family, accuracy, flops):
        return {"family": family, "label": {"accuracy": accuracy, "flops": flops, "params": 100}}

    path = tmp_path / "bench.jsonl"
    rows = [record("vgg", 0.5, 1000), record("vgg", 0.7, 3000), record("vgg", 0.6, 2000), record("resnet", 0.8, 5000)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = format_benchmark_summary(path).splitlines()
    vgg = next(line for line in table if line.startswith("vgg"))
    resnet = next(line for line in table if line.startswith("resnet"))
    assert "0.500 0.600 0.700" in vgg and vgg.endswith("+1.000")  # FLOPs and accuracy rank alike
    assert resnet.endswith("—") and "nan" not in resnet  # one network: no correlation, not "+nan"
