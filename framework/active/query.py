"""Scoring an active-learning pool with a model and choosing the next acquisition, identically on every DDP rank.

:func:`score_pool` runs a classifier (any ``nn.Module`` or LightningModule mapping a batch's input to logits ``(B, C)``)
over pool samples in batches and keeps only what the strategy needs, per sample: the softmax probabilities (``C``
numbers), the BALD score (one number, reduced from the ``T`` MC-dropout passes inside the batch), or the penultimate
feature (the input of the model's last ``nn.Linear``, ``D`` numbers). Nothing of size ``N x N`` or ``N x C x D`` is
ever built: core-set distances and BADGE's gradient embeddings are computed in chunks by the strategies
(``framework/active/strategies.py``).

:func:`query` is one round's acquisition for an :class:`~litzoo.framework.active.pool.ActiveLearningDataModule`. Under
DDP every rank scores its shard of the unlabelled pool (``unlabelled[rank::world]``), the shards are all-gathered
into the pool's order, every rank runs the same selection from the same generator (seeded from ``(seed, round)``), and
rank 0's choice is broadcast, so the ranks label the same samples even where floating-point results could differ.

MC dropout (BALD): the model is put in eval mode with only its dropout layers in training mode (batch norm keeps its
running statistics, as in baal's ``MCDropoutModule`` and Gal et al.'s Keras code, which sample dropout at test time),
and the passes of a batch are drawn from an isolated generator seeded from ``(seed, round, first sample index)``, so a
query does not consume or depend on the global random state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from litzoo.framework.active.strategies import (
    badge_query,
    bald,
    entropy,
    kcenter_greedy,
    least_confidence,
    margin,
    random_query,
    top_k_query,
)
from litzoo.framework.data.batches import batch_inputs
from litzoo.framework.distributed import all_gather_objects, broadcast_object, rank, world_size
from litzoo.framework.random_state import derive_seed, isolated_rng

if TYPE_CHECKING:
    from litzoo.framework.active.pool import ActiveLearningDataModule

#: what each strategy reads from the model: ``probs`` (softmax), ``bald`` (MC-dropout mutual information),
#: ``features`` (penultimate); ``coreset`` also needs the labelled set's features
NEEDS: dict[str, tuple[str, ...]] = {
    "random": (),
    "least_confidence": ("probs",),
    "margin": ("probs",),
    "entropy": ("probs",),
    "bald": ("bald",),
    "coreset": ("features",),
    "badge": ("probs", "features"),
}


def find_head(model: nn.Module, head: str | None = None) -> nn.Linear:
    """The model's classifier layer: the module named ``head``, else the last ``nn.Linear`` in module order."""
    if head is not None:
        modules = dict(model.named_modules())
        if head not in modules:
            raise ValueError(f"head {head!r} is not a module of {type(model).__name__}")
        layer = modules[head]
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear: coreset and badge read the input of the last linear layer (set head)")
        layer = linears[-1]
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"head {head!r} is a {type(layer).__name__}, not an nn.Linear")
    return layer


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The model's dropout modules (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` ...)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def _logits(model: nn.Module, batch: Any, input_key: str | None, device: torch.device) -> Tensor:
    inputs = batch[input_key] if input_key is not None else batch_inputs(batch)
    logits = model(inputs.to(device))
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"active learning needs a model that maps a batch's input to logits (B, C); {type(model).__name__} returned {shape}")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{type(model).__name__} returned non-finite logits on the pool")
    return logits.float()


@torch.no_grad()
def score_pool(
    model: nn.Module,
    loader: Iterable[Any],
    needs: Iterable[str],
    input_key: str | None = None,
    head: str | None = None,
    mc_samples: int = 20,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Per-sample model outputs over ``loader``'s batches (in its order), on the CPU.

    Args:
        model: a classifier, ``model(inputs) -> logits (B, C)``.
        loader: batches of pool samples (dicts with ``input_key``, tuples, or tensors).
        needs: any of ``probs`` (``(N, C)`` softmax), ``bald`` (``(N,)`` mutual information over ``mc_samples``
            dropout passes), ``features`` (``(N, D)``, the input of :func:`find_head`'s layer).
        input_key: the batch entry the model reads (``None``: :func:`~litzoo.framework.data.batches.batch_inputs`).
        head: the classifier layer's module name (``features``).
        mc_samples: MC-dropout passes for ``bald``.
        seed: seed of the dropout masks.
    """
    needs = set(needs)
    unknown = needs - {"probs", "bald", "features"}
    if unknown:
        raise ValueError(f"unknown pool outputs {sorted(unknown)}: use probs, bald or features")
    if "bald" in needs and not dropout_layers(model):
        raise ValueError(f"bald needs MC dropout, and {type(model).__name__} has no dropout layer with p > 0")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    captured: list[Tensor] = []
    hook = find_head(model, head).register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach())) if "features" in needs else None
    collected: dict[str, list[Tensor]] = {name: [] for name in needs}
    seen = 0
    try:
        model.eval()
        for batch in loader:
            if "probs" in needs or "features" in needs:
                captured.clear()
                logits = _logits(model, batch, input_key, device)
                if "probs" in needs:
                    collected["probs"].append(logits.softmax(dim=1).cpu())
                if "features" in needs:
                    collected["features"].append(captured[-1].flatten(1).float().cpu())
            if "bald" in needs:
                for layer in dropout_layers(model):
                    layer.train()
                with isolated_rng():
                    torch.manual_seed(derive_seed(seed, seen) % 2**63)
                    passes = torch.stack([_logits(model, batch, input_key, device).softmax(dim=1).cpu() for _ in range(mc_samples)])
                for layer in dropout_layers(model):
                    layer.eval()
                collected["bald"].append(bald(passes))
                seen += passes.shape[1]
            else:
                seen += len(collected["probs"][-1] if "probs" in needs else collected["features"][-1])
    finally:
        if hook is not None:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    return {name: torch.cat(parts) if parts else torch.zeros(0) for name, parts in collected.items()}


def select(strategy: str, outputs: Mapping[str, Tensor], num_pool: int, k: int, generator: torch.Generator,
           labelled_features: Tensor | None = None, chunk_size: int = 1024) -> Tensor:  # fmt: skip
    """Positions (into the scored pool's order) of the ``k`` samples ``strategy`` picks from ``outputs``."""
    if strategy == "random":
        return random_query(num_pool, k, generator)
    if strategy == "least_confidence":
        return top_k_query(least_confidence(outputs["probs"]), k)
    if strategy == "margin":
        return top_k_query(margin(outputs["probs"]), k, largest=False)
    if strategy == "entropy":
        return top_k_query(entropy(outputs["probs"]), k)
    if strategy == "bald":
        return top_k_query(outputs["bald"], k)
    if strategy == "coreset":
        return kcenter_greedy(outputs["features"], labelled_features, k, chunk_size)
    if strategy == "badge":
        return badge_query(outputs["features"], outputs["probs"], k, generator, chunk_size)
    raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(NEEDS)}")


def _score_sharded(model: nn.Module, datamodule: ActiveLearningDataModule, indices: Tensor, needs: tuple[str, ...], seed: int) -> dict[str, Tensor]:
    """:func:`score_pool` over ``indices``: each rank scores ``indices[rank::world]``, gathered back into their order."""
    world, me = world_size(), rank()
    hp = datamodule.hparams
    local = score_pool(model, datamodule.pool_loader(indices[me::world]), needs, hp.input_key, hp.head, hp.mc_samples, derive_seed(seed, me)) if needs else {}
    shards = all_gather_objects(local)
    merged: dict[str, Tensor] = {}
    for name in needs:
        parts = [shard[name] for shard in shards]
        full = torch.empty((len(indices), *parts[0].shape[1:]), dtype=parts[0].dtype)
        for source, part in enumerate(parts):
            full[source::world] = part
        merged[name] = full
    return merged


def query(model: nn.Module, datamodule: ActiveLearningDataModule, round: int) -> Tensor:
    """Round ``round``'s acquisition: the pool indices (in pick order) that ``datamodule``'s strategy chooses, the same
    on every rank. A collective under DDP: every rank must call it. Does not change the pool."""
    hp = datamodule.hparams
    pool = datamodule.pool
    if pool is None:
        datamodule.setup("fit")
        pool = datamodule.pool
    assert pool is not None
    unlabelled = pool.unlabelled
    k = min(hp.query_size, len(unlabelled))
    seed = derive_seed(hp.seed, 2, round)
    needs = NEEDS[hp.strategy]
    outputs = _score_sharded(model, datamodule, unlabelled, needs, seed)
    labelled_features = None
    if hp.strategy == "coreset":
        labelled_features = _score_sharded(model, datamodule, pool.labelled, ("features",), seed)["features"]
    generator = torch.Generator().manual_seed(seed % 2**63)
    positions = select(hp.strategy, outputs, len(unlabelled), k, generator, labelled_features)
    return broadcast_object(unlabelled[positions].clone())
