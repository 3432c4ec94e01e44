"""The NAS wing of the core: what the computation-graph performance predictors (GENNAPE, the transferable
predictor, AIO-P) and predictor-guided search share.

- ``spaces.py``: four families of tiny digit CNNs as JSON specs (sample, mutate, build);
- ``labelling.py``: train and measure a spec on injected train / val tensors, and generate or resume a labelled
  benchmark file of computation graphs;
- ``predictor.py``: the CG-predictor LightningModule base (contrastive pretraining, frozen encoder, an injected
  head, few-shot fine-tuning);
- ``ranking.py``: ranking metrics torchmetrics lacks (top-k precision);
- ``search.py``: regularized evolution and random search under a FLOPs limit, scored by a predictor.

Nothing here reads a dataset: the digits come from ``litzoo.datamodules.architectures.DigitsSplits``, the
commands (``litzoo architectures``, ``litzoo nas-search``) from ``litzoo/cli/nas.py``.
"""

from litzoo.framework.nas.labelling import (
    TARGETS,
    TrainValSplits,
    benchmark_summary,
    fit_adamw,
    format_benchmark_summary,
    generate_architecture_benchmark,
    label_network,
    load_benchmark_specs,
    network_graph,
    record_spec,
    specs_path,
    train_and_evaluate,
)
from litzoo.framework.nas.predictor import CGPredictorModule, adam_cg_predictor
from litzoo.framework.nas.ranking import TopKPrecision, top_k_precision
from litzoo.framework.nas.search import (
    Candidate,
    ScoreFn,
    SearchResult,
    evaluate_candidates,
    evolutionary_search,
    predictor_score_fn,
    random_search,
    spec_flops,
    spec_graph,
    spec_key,
)
from litzoo.framework.nas.spaces import (
    FAMILIES,
    INPUT_SHAPE,
    MAX_PARAMS,
    SPEC_TYPES,
    ArchSpec,
    InceptionBlock,
    InceptionSpec,
    MobileNetSpec,
    RepVGGTrainBlock,
    ResNetSpec,
    VGGSpec,
    build_network,
    check_family,
    count_spec_parameters,
    mutate_spec,
    sample_spec,
    spec_from_dict,
)

__all__ = [
    "FAMILIES", "INPUT_SHAPE", "MAX_PARAMS", "SPEC_TYPES", "TARGETS",
    "ArchSpec", "Candidate", "CGPredictorModule", "InceptionBlock", "InceptionSpec", "MobileNetSpec", "RepVGGTrainBlock",
    "ResNetSpec", "ScoreFn", "SearchResult", "TopKPrecision", "TrainValSplits", "VGGSpec",
    "adam_cg_predictor", "benchmark_summary", "build_network", "check_family", "count_spec_parameters", "evaluate_candidates",
    "evolutionary_search", "fit_adamw", "format_benchmark_summary", "generate_architecture_benchmark", "label_network", "load_benchmark_specs",
    "mutate_spec", "network_graph", "predictor_score_fn", "random_search", "record_spec", "sample_spec", "spec_flops",
    "spec_from_dict", "spec_graph", "spec_key", "specs_path", "top_k_precision", "train_and_evaluate",
]  # fmt: skip
