"""ClipLoss and gather_with_grad: hand-computed values, and exact full-batch gradients under 2-process DDP."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litzoo.framework.losses import ClipLoss, gather_with_grad
from tests.gloo_ranks import run_ranks

WORLD_SIZE = 2
GLOBAL_BATCH = 8
IN_IMAGE, IN_TEXT, EMBED = 6, 7, 5

# every variant the ranks run: name -> ClipLoss arguments
VARIANTS = {
    "local": dict(gather_distributed=True, local_loss=True),
    "global": dict(gather_distributed=True, local_loss=False),
    "no_gather": dict(gather_distributed=False),
    "i2t_local": dict(gather_distributed=True, local_loss=True, image_to_text_only=True),
    "i2t_global": dict(gather_distributed=True, local_loss=False, image_to_text_only=True),
}


# ---------------------------------------------------------------------------------------------
# single process: values against a hand computation


def _hand_clip_loss(image: np.ndarray, text: np.ndarray, scale: float) -> tuple[float, float, float, float]:
    """(symmetric loss, image→text loss, dL_sym/ds, dL_i2t/ds) written out with explicit log-sum-exps."""
    n = image.shape[0]
    similarity = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            similarity[i, j] = sum(image[i, k] * text[j, k] for k in range(image.shape[1]))
    logits = scale * similarity

    def cross_entropy_rows(matrix: np.ndarray, sims: np.ndarray) -> tuple[float, float]:
        loss, dloss_dscale = 0.0, 0.0
        for i in range(n):
            exps = [np.exp(matrix[i, j]) for j in range(n)]
            total = sum(exps)
            loss += -matrix[i, i] + np.log(total)
            # d/ds of (−s·x_ii + log Σ_j exp(s·x_ij)) = −x_ii + Σ_j softmax_ij · x_ij
            dloss_dscale += -sims[i, i] + sum(exps[j] / total * sims[i, j] for j in range(n))
        return loss / n, dloss_dscale / n

    i2t, di2t = cross_entropy_rows(logits, similarity)
    t2i, dt2i = cross_entropy_rows(logits.T, similarity.T)
    return (i2t + t2i) / 2, i2t, (di2t + dt2i) / 2, di2t


def _tiny_features(seed: int = 0, n: int = 3, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1)
    return image, text


@pytest.mark.parametrize("image_to_text_only", [False, True])
def test_loss_and_logit_scale_gradient_match_hand_computation(image_to_text_only: bool):
    image, text = _tiny_features()
    log_scale = torch.tensor(np.log(2.5), dtype=torch.float64, requires_grad=True)
    scale = log_scale.exp()
    loss = ClipLoss(image_to_text_only=image_to_text_only)(image, text, scale)
    loss.backward()

    symmetric, i2t, dsymmetric, di2t = _hand_clip_loss(image.numpy(), text.numpy(), 2.5)
    expected_loss, expected_dscale = (i2t, di2t) if image_to_text_only else (symmetric, dsymmetric)
    assert abs(loss.item() - expected_loss) < 1e-6
    # the gradient flows through s = exp(log_scale): dL/dlog_scale = s · dL/ds
    assert log_scale.grad is not None
    assert abs(log_scale.grad.item() - 2.5 * expected_dscale) < 1e-6
    assert abs(symmetric - i2t) > 1e-3  # the two variants really differ on this example


def test_symmetric_loss_is_not_just_one_direction():
    # a non-symmetric similarity (B=3) makes the text→image term differ from image→text
    image, text = _tiny_features(seed=1)
    scale = torch.tensor(4.0, dtype=torch.float64)
    both = ClipLoss()(image, text, scale)
    i2t = ClipLoss(image_to_text_only=True)(image, text, scale)
    t2i = ClipLoss(image_to_text_only=True)(text, image, scale)
    assert torch.allclose(both, (i2t + t2i) / 2, atol=1e-12)
    assert (i2t - t2i).abs() > 1e-3


def test_gather_with_grad_is_identity_without_process_group():
    assert not torch.distributed.is_initialized()
    tensor = torch.randn(4, 3, requires_grad=True)
    assert gather_with_grad(tensor) is tensor


@pytest.mark.parametrize(
    "image_shape, text_shape, message",
    [
        ((4,), (4,), "2-D"),
        ((2, 4, 3), (2, 4, 3), "2-D"),
        ((4, 3), (5, 3), "same shape"),
        ((4, 3), (4, 2), "same shape"),
        ((0, 3), (0, 3), "non-empty"),
        ((4, 0), (4, 0), "non-empty"),
    ],
)
def test_bad_feature_shapes_raise(image_shape: tuple[int, ...], text_shape: tuple[int, ...], message: str):
    with pytest.raises(ValueError, match=message):
        ClipLoss()(torch.randn(image_shape), torch.randn(text_shape), torch.tensor(1.0))


def test_non_scalar_logit_scale_raises():
    with pytest.raises(ValueError, match="scalar"):
        ClipLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.ones(2))


# ---------------------------------------------------------------------------------------------
# two gloo processes against one process on the full batch

RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from litzoo.framework.losses import ClipLoss, gather_with_grad

rank, world_size, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=world_size)
setup = torch.load(f"{{out}}/setup.pt", weights_only=True)
per_rank = setup["images"].shape[0] // world_size
rows = slice(rank * per_rank, (rank + 1) * per_rank)
images, texts = setup["images"][rows], setup["texts"][rows]
results = {{}}

for name, kwargs in {variants!r}.items():
    # every rank starts from the same weights, as DDP guarantees
    image_tower = nn.Linear(*setup["image_tower.weight"].shape[::-1], dtype=torch.float64)
    text_tower = nn.Linear(*setup["text_tower.weight"].shape[::-1], dtype=torch.float64)
    image_tower.load_state_dict({{"weight": setup["image_tower.weight"], "bias": setup["image_tower.bias"]}})
    text_tower.load_state_dict({{"weight": setup["text_tower.weight"], "bias": setup["text_tower.bias"]}})
    log_scale = nn.Parameter(setup["log_scale"].clone())
    parameters = {{"image_tower.weight": image_tower.weight, "image_tower.bias": image_tower.bias,
                   "text_tower.weight": text_tower.weight, "text_tower.bias": text_tower.bias, "log_scale": log_scale}}
    loss = ClipLoss(**kwargs)(F.normalize(image_tower(images), dim=1), F.normalize(text_tower(texts), dim=1), log_scale.exp())
    loss.backward()
    grads = {{}}
    for key, parameter in parameters.items():
        grad = parameter.grad.detach().clone()
        dist.all_reduce(grad)  # what DDP does: sum over ranks ...
        grads[key] = grad / world_size  # ... then mean
    results[name] = {{"loss": loss.detach(), "grads": grads}}

# the gather's own semantics: rank-dependent upstream gradient, summed over ranks in backward
x = (torch.arange(6, dtype=torch.float64).reshape(2, 3) + 10 * rank).requires_grad_()
gathered = gather_with_grad(x)
weights = torch.arange(12, dtype=torch.float64).reshape(4, 3) * (rank + 1)
(gathered * weights).sum().backward()
results["gather"] = {{"gathered": gathered.detach(), "grad": x.grad}}

# unequal per-rank batch sizes must raise on every rank (not hang or crash in the backend)
try:
    gather_with_grad(torch.zeros(3 + rank, 2))
    results["unequal"] = ""
except ValueError as error:
    results["unequal"] = str(error)

torch.save(results, f"{{out}}/rank{{rank}}.pt")
dist.destroy_process_group()
"""


def _make_setup() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "images": randn(GLOBAL_BATCH, IN_IMAGE),
        "texts": randn(GLOBAL_BATCH, IN_TEXT),
        "image_tower.weight": randn(EMBED, IN_IMAGE) * 0.5,
        "image_tower.bias": randn(EMBED) * 0.1,
        "text_tower.weight": randn(EMBED, IN_TEXT) * 0.5,
        "text_tower.bias": randn(EMBED) * 0.1,
        "log_scale": torch.tensor(np.log(1 / 0.07), dtype=torch.float64),  # CLIP's initial scale
    }


def _full_batch_reference(setup: dict[str, torch.Tensor], **kwargs: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one process on the whole global batch (no process group: no gathering)."""
    image_tower = nn.Linear(IN_IMAGE, EMBED, dtype=torch.float64)
    text_tower = nn.Linear(IN_TEXT, EMBED, dtype=torch.float64)
    image_tower.load_state_dict({"weight": setup["image_tower.weight"], "bias": setup["image_tower.bias"]})
    text_tower.load_state_dict({"weight": setup["text_tower.weight"], "bias": setup["text_tower.bias"]})
    log_scale = nn.Parameter(setup["log_scale"].clone())
    image_features = F.normalize(image_tower(setup["images"]), dim=1)
    text_features = F.normalize(text_tower(setup["texts"]), dim=1)
    loss = ClipLoss(**kwargs)(image_features, text_features, log_scale.exp())
    loss.backward()
    grads = {
        "image_tower.weight": image_tower.weight.grad,
        "image_tower.bias": image_tower.bias.grad,
        "text_tower.weight": text_tower.weight.grad,
        "text_tower.bias": text_tower.bias.grad,
        "log_scale": log_scale.grad,
    }
    return loss.detach(), grads


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs the rank script on 2 gloo processes once per test module (per xdist worker)."""
    out = tmp_path_factory.mktemp("clip_ddp")
    setup = _make_setup()
    torch.save(setup, out / "setup.pt")
    script = out / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT.format(variants=VARIANTS)))
    # separate interpreters (not multiprocessing inside pytest): robust under pytest-xdist workers
    run_ranks(script, WORLD_SIZE, out)
    return {
        "setup": setup,
        "ranks": [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)],
    }


def _max_grad_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant, reference_kwargs",
    [
        ("local", {}),
        # Every rank computes the same global loss L; the gather's backward sums over ranks, so each
        # rank's features get W·dL/dfeatures, and DDP's mean (sum / W) gives exactly dL/dθ again.
        ("global", {}),
        ("i2t_local", {"image_to_text_only": True}),
        ("i2t_global", {"image_to_text_only": True}),
    ],
)
def test_ddp_gradients_equal_full_batch_gradients(ddp_results: dict, variant: str, reference_kwargs: dict):
    reference_loss, reference_grads = _full_batch_reference(ddp_results["setup"], **reference_kwargs)
    ranks = [r[variant] for r in ddp_results["ranks"]]
    # DDP's averaged gradients are identical on the ranks and equal the full-batch gradient (float64)
    assert _max_grad_difference(ranks[0]["grads"], ranks[1]["grads"]) == 0.0
    assert _max_grad_difference(ranks[0]["grads"], reference_grads) < 1e-10
    assert all(grad.abs().max() > 1e-3 for grad in reference_grads.values())  # nothing trivially zero
    if variant.endswith("local"):  # each rank's loss covers its own rows: they average to the full loss
        assert abs(sum(r["loss"].item() for r in ranks) / len(ranks) - reference_loss.item()) < 1e-12
        assert abs(ranks[0]["loss"].item() - ranks[1]["loss"].item()) > 1e-6
    else:  # every rank computes the full global loss
        assert all(abs(r["loss"].item() - reference_loss.item()) < 1e-12 for r in ranks)


@pytest.mark.slow
def test_ddp_without_gathering_is_a_different_objective(ddp_results: dict):
    # negative control: per-rank negatives only, so the averaged gradient is not the full-batch one
    _, reference_grads = _full_batch_reference(ddp_results["setup"])
    assert _max_grad_difference(ddp_results["ranks"][0]["no_gather"]["grads"], reference_grads) > 1e-3


@pytest.mark.slow
def test_ddp_gather_concatenates_in_rank_order_and_sums_gradients(ddp_results: dict):
    inputs = [torch.arange(6, dtype=torch.float64).reshape(2, 3) + 10 * rank for rank in range(WORLD_SIZE)]
    # rank r's upstream gradient is (r+1)·W; summed over ranks: 3·W; rank r keeps its rows of it
    summed_weights = torch.arange(12, dtype=torch.float64).reshape(4, 3) * sum(r + 1 for r in range(WORLD_SIZE))
    for rank, results in enumerate(ddp_results["ranks"]):
        assert torch.equal(results["gather"]["gathered"], torch.cat(inputs))
        assert torch.equal(results["gather"]["grad"], summed_weights[2 * rank : 2 * rank + 2])


@pytest.mark.slow
def test_ddp_unequal_batch_sizes_raise_on_every_rank(ddp_results: dict):
    for results in ddp_results["ranks"]:
        assert "same shape on every rank" in results["unequal"]
        assert "(3, 2)" in results["unequal"] and "(4, 2)" in results["unequal"]
