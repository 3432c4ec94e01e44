"""DINOv2's losses (framework/losses/dino.py) against hand computations of the official algorithms
(facebookresearch/dinov2 dinov2/loss/*.py), and two gloo processes against one process on the whole batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from litzoo.framework import distributed
from litzoo.framework.losses import DINOLoss, IBOTPatchLoss, koleo_loss, sinkhorn_knopp
from tests.gloo_ranks import run_ranks


def _official_sinkhorn(
    logits: torch.Tensor, temp: float, iterations: int, samples: float | None = None, dtype=torch.float64
) -> torch.Tensor:
    """dino_clstoken_loss.py's sinkhorn_knopp_teacher in one process, written as a plain loop (no max shift)."""
    q = torch.exp(logits.to(dtype) / temp).t()  # (K, B)
    prototypes, rows = q.shape
    samples = rows if samples is None else samples
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / prototypes
        q = q / q.sum(dim=0, keepdim=True) / samples
    return (q * samples).t()


def _logits(rows: int = 8, prototypes: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(rows, prototypes, generator=generator) * 2 - 1  # cosine-like logits in [-1, 1]


# ---------------------------------------------------------------------------------------------
# Sinkhorn-Knopp


def test_sinkhorn_marginals_after_many_iterations():
    logits = _logits(8, 4)
    targets = sinkhorn_knopp(logits, teacher_temp=0.1, iterations=300)
    assert targets.shape == (8, 4) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8), atol=1e-5, rtol=0)  # every sample: an assignment
    torch.testing.assert_close(targets.sum(dim=0), torch.full((4,), 8 / 4), atol=1e-5, rtol=0)  # equipartition B/K


def test_sinkhorn_three_iterations_match_the_official_loop_in_float64():
    logits = _logits(8, 4, seed=1)
    for iterations in (0, 1, 3):
        expected = _official_sinkhorn(logits, 0.1, iterations)
        torch.testing.assert_close(sinkhorn_knopp(logits, 0.1, iterations).double(), expected, atol=1e-6, rtol=1e-5)
    # negative control: 3 iterations are not converged here, so a wrong iteration count would be caught
    three = sinkhorn_knopp(logits, 0.1, 3)
    assert (three.sum(dim=0) - 2).abs().max() > 1e-3
    assert (three - sinkhorn_knopp(logits, 0.1, 4)).abs().max() > 1e-4


def test_sinkhorn_large_logits_stay_finite_where_the_official_float32_overflows():
    logits = _logits(8, 4, seed=2) + 5  # t/τ in [80, 120]: exp overflows float32 above 88.7
    assert torch.isnan(_official_sinkhorn(logits, 0.05, 3, dtype=torch.float32)).any()  # the official's failure
    targets = sinkhorn_knopp(logits, 0.05, 3)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(targets.double(), _official_sinkhorn(logits, 0.05, 3), atol=1e-6, rtol=1e-5)


def test_ibot_sinkhorn_uses_the_masked_patch_count():
    logits = _logits(5, 4, seed=3)
    loss = IBOTPatchLoss(4)
    count = torch.tensor([5])
    targets = loss.sinkhorn_knopp_teacher(logits, 0.1, count)
    torch.testing.assert_close(targets.double(), _official_sinkhorn(logits, 0.1, 3, samples=5), atol=1e-6, rtol=1e-5)
    assert count.tolist() == [5]  # the caller's tensor is not reduced in place
    torch.testing.assert_close(loss.sinkhorn_knopp_teacher(logits, 0.1), targets)  # default: the rows
    # B scales every column alike and the final ×B undoes it: any B common to all ranks gives the same targets
    # (what B must be is that it is the same on every rank: the 2-process test has unequal counts)
    with_ten = loss.sinkhorn_knopp_teacher(logits, 0.1, 10)
    torch.testing.assert_close(with_ten.double(), _official_sinkhorn(logits, 0.1, 3, samples=10), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(with_ten, targets)
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.1, total_rows=torch.tensor([10])), with_ten)


def test_sinkhorn_refuses_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        sinkhorn_knopp(torch.zeros(2, 3, 4), 0.1)
    with pytest.raises(ValueError, match="teacher_temp"):
        sinkhorn_knopp(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="total_rows"):
        sinkhorn_knopp(torch.zeros(2, 3), 0.1, total_rows=0)


# ---------------------------------------------------------------------------------------------
# DINO class-token loss and centering


def _hand_cross_entropy(students: list[list[list[float]]], teachers: list[list[list[float]]], temp: float) -> float:
    """Σ over (student, teacher) pairs of −mean_rows Σ_k t_k log softmax(s/temp)_k, with Python floats."""
    total = 0.0
    for student in students:
        for teacher in teachers:
            pair = 0.0
            for s_row, t_row in zip(student, teacher, strict=True):
                lse = math.log(sum(math.exp(v / temp) for v in s_row))
                pair += sum(t * (s / temp - lse) for s, t in zip(s_row, t_row, strict=True))
            total -= pair / len(student)
    return total


def test_dino_loss_on_a_hand_example():
    crop_a = [[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]]
    crop_b = [[0.0, 2.0, 1.0], [0.3, 0.3, 0.9]]
    teacher_a = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]
    teacher_b = [[0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]]
    loss = DINOLoss(3)
    t = torch.tensor
    # DINOv2's global-crop term: student [A; B] against the teacher swapped by the caller, [B; A]
    value = loss([t(crop_a + crop_b)], [t(teacher_b + teacher_a)])
    assert value.item() == pytest.approx(_hand_cross_entropy([crop_a + crop_b], [teacher_b + teacher_a], 0.1), rel=1e-5)
    # the local-crop form: every student crop against every teacher crop (4 pairs, summed)
    value = loss([t(crop_a), t(crop_b)], torch.stack([t(teacher_a), t(teacher_b)]))
    assert value.item() == pytest.approx(_hand_cross_entropy([crop_a, crop_b], [teacher_a, teacher_b], 0.1), rel=1e-5)
    # uniform student: −Σ t log(1/3) = log 3 per pair, whatever the teacher
    assert loss([torch.zeros(2, 3)], [t(teacher_a)]).item() == pytest.approx(math.log(3), rel=1e-6)
    # gradient flows to the student only
    student = t(crop_a, requires_grad=True)
    loss([student], [t(teacher_a)]).backward()
    expected = (F.softmax(t(crop_a) / 0.1, dim=-1) - t(teacher_a)) / 0.1 / 2  # d/ds of the mean cross-entropy
    torch.testing.assert_close(student.grad, expected)


def test_dino_centering_follows_the_official_order():
    """softmax_center_teacher uses the center of the previous steps, update_center then adds this step."""
    generator = torch.Generator().manual_seed(4)
    steps = [torch.randn(4, 3, generator=generator) for _ in range(3)]
    loss = DINOLoss(3, center_momentum=0.9)
    center = torch.zeros(1, 3, dtype=torch.float64)
    for logits in steps:
        expected = F.softmax((logits.double() - center) / 0.04, dim=-1)
        torch.testing.assert_close(loss.softmax_center_teacher(logits, 0.04).double(), expected, atol=1e-6, rtol=1e-5)
        loss.update_center(logits)
        center = 0.9 * center + 0.1 * logits.double().mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss.center.double(), center, atol=1e-7, rtol=1e-6)
    assert loss.center.shape == (1, 3) and "center" in loss.state_dict()


def test_dino_loss_refuses_bad_arguments():
    with pytest.raises(ValueError, match="shapes differ"):
        DINOLoss(3)([torch.zeros(2, 3)], [torch.zeros(3, 3)])
    with pytest.raises(ValueError, match="at least one"):
        DINOLoss(3)([], [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="student_temp"):
        DINOLoss(3, student_temp=0)
    with pytest.raises(ValueError, match="center_momentum"):
        IBOTPatchLoss(3, center_momentum=1.5)


# ---------------------------------------------------------------------------------------------
# iBOT masked-patch loss


def test_ibot_forward_masked_weights_each_image_by_its_masked_count():
    masks = torch.tensor([[True, True, False, False], [False, False, False, False], [False, False, False, True]])
    student = [[1.0, 0.0, -1.0], [0.5, 0.2, 0.1], [0.0, 2.0, 1.0]]  # patches (0,0), (0,1), (2,3)
    teacher = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]]
    per_patch = [-_hand_cross_entropy([[s]], [[t]], 0.1) for s, t in zip(student, teacher, strict=True)]  # Σ t log p
    expected = -(per_patch[0] / 2 + per_patch[1] / 2 + per_patch[2] / 1) / 3  # 3 images, one without masks
    loss = IBOTPatchLoss(3)
    value = loss.forward_masked(torch.tensor(student), torch.tensor(teacher), masks)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # rows past n_masked_patches (the official's padding up to an upper bound) are ignored
    padded_student = torch.cat([torch.tensor(student), torch.randn(2, 3) * 5])
    padded_teacher = torch.cat([torch.tensor(teacher), F.softmax(torch.randn(2, 3), dim=-1)])
    assert loss.forward_masked(padded_student, padded_teacher, masks, n_masked_patches=3).item() == pytest.approx(expected, rel=1e-5)
    # explicit weights, as DINOv2's collate passes them
    weights = torch.tensor([1.0, 2.0, 3.0])
    explicit = loss.forward_masked(torch.tensor(student), torch.tensor(teacher), masks, masks_weight=weights)
    assert explicit.item() == pytest.approx(-(per_patch[0] + 2 * per_patch[1] + 3 * per_patch[2]) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="mask weights"):
        loss.forward_masked(padded_student, padded_teacher, masks)


def test_ibot_center_and_softmax():
    generator = torch.Generator().manual_seed(5)
    rows = torch.randn(5, 3, generator=generator)
    loss = IBOTPatchLoss(3)
    assert loss.center.shape == (1, 1, 3)
    loss.update_center(rows)  # (n, K): this rank's masked patches
    torch.testing.assert_close(loss.center.reshape(3), 0.1 * rows.mean(dim=0))
    second = torch.randn(5, 3, generator=generator)
    loss.update_center(second)
    torch.testing.assert_close(loss.center.reshape(3), 0.9 * 0.1 * rows.mean(dim=0) + 0.1 * second.mean(dim=0))
    # softmax_center_teacher keeps the input's shape
    probs = loss.softmax_center_teacher(rows, 0.07)
    torch.testing.assert_close(probs, F.softmax((rows - loss.center.reshape(3)) / 0.07, dim=-1))
    assert loss.softmax_center_teacher(rows.unsqueeze(0), 0.07).shape == (1, 5, 3)
    # (B, N, K): the mean over images of the per-image mean patch
    dense = torch.randn(2, 4, 3, generator=generator)
    fresh = IBOTPatchLoss(3)
    fresh.update_center(dense)
    torch.testing.assert_close(fresh.center.reshape(3), 0.1 * dense.mean(dim=1).mean(dim=0))
    with pytest.raises(ValueError, match="non-empty"):
        fresh.update_center(torch.zeros(0, 3))


# ---------------------------------------------------------------------------------------------
# KoLeo


def _brute_force_koleo(features: torch.Tensor, eps: float = 1e-8) -> float:
    x = [row / max(row.norm().item(), eps) for row in features.double()]
    total = 0.0
    for i, xi in enumerate(x):
        best = max((j for j in range(len(x)) if j != i), key=lambda j: float(xi @ x[j]))
        total += math.log((xi - x[best] + eps).norm().item() + eps)
    return -total / len(x)


def test_koleo_against_a_brute_force_loop():
    features = torch.randn(6, 5, generator=torch.Generator().manual_seed(6))
    assert koleo_loss(features).item() == pytest.approx(_brute_force_koleo(features), rel=1e-5)
    # the diagonal is excluded even for an antipodal pair (dot product −1, the official's fill value)
    assert koleo_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item() == pytest.approx(-math.log(2.0), rel=1e-6)
    # float32 with autocast off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = koleo_loss(features.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(_brute_force_koleo(features.bfloat16().float()), rel=1e-5)


def test_koleo_gradient_pushes_nearest_neighbours_apart():
    features = torch.randn(8, 4, generator=torch.Generator().manual_seed(7)).requires_grad_()

    def neighbour_distances(x: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.detach(), dim=-1)
        return (x - x[nearest]).norm(dim=-1)

    x = F.normalize(features.detach(), dim=-1)
    dots = x @ x.t()
    dots.fill_diagonal_(-2)
    nearest = dots.argmax(dim=1)
    before = neighbour_distances(features, nearest)
    loss = koleo_loss(features)
    loss.backward()
    with torch.no_grad():
        descended = features - 0.01 * features.grad
        ascended = features + 0.01 * features.grad
    closest = before.argmin()
    assert neighbour_distances(descended, nearest)[closest] > before[closest]  # the closest pair moves apart
    assert neighbour_distances(descended, nearest).mean() > before.mean()
    assert koleo_loss(descended) < loss
    assert neighbour_distances(ascended, nearest)[closest] < before[closest]  # negative control: ascent pulls it in


def test_koleo_refuses_a_batch_of_one():
    with pytest.raises(ValueError, match="at least 2 samples"):
        koleo_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="2-D"):
        koleo_loss(torch.randn(4))


# ---------------------------------------------------------------------------------------------
# the distributed helpers alone, then two gloo processes against one process on the whole batch


def test_distributed_helpers_without_a_process_group():
    assert distributed.world_size() == 1 and not distributed.is_distributed()
    tensor = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum_(tensor) is tensor and tensor.tolist() == [1.0, 2.0]
    assert distributed.all_reduce_mean_(tensor) is tensor and tensor.tolist() == [1.0, 2.0]
    assert distributed.all_reduce_max_(tensor) is tensor and tensor.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="floating-point"):
        distributed.all_reduce_mean_(torch.tensor([1, 2]))


WORLD_SIZE = 2
PROTOTYPES = 4
IBOT_COUNTS = (3, 5)  # masked patches per rank: unequal, as DINOv2's random mask ratios make them

RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from litzoo.framework import distributed
from litzoo.framework.losses import DINOLoss, IBOTPatchLoss, koleo_loss

rank, world_size, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
setup = torch.load(f"{out}/setup.pt", weights_only=True)
prototypes = setup["dino_steps"].shape[-1]
results = {"world_size": distributed.world_size()}
results["sum"] = distributed.all_reduce_sum_(torch.tensor([rank + 1.0, 10.0 * rank]))
results["mean"] = distributed.all_reduce_mean_(torch.tensor([rank + 1.0, 10.0 * rank]))
results["max"] = distributed.all_reduce_max_(torch.tensor([rank + 1.0, -10.0 * rank]))


def half(x):  # this rank's rows of an equal split
    rows = x.shape[0] // world_size
    return x[rank * rows:(rank + 1) * rows]


# DINO: centering over three steps (softmax with the previous center, then update), and Sinkhorn-Knopp
dino = DINOLoss(prototypes)
probs = []
for logits in setup["dino_steps"]:
    probs.append(dino.softmax_center_teacher(half(logits), 0.04))
    dino.update_center(half(logits))
results["dino_probs"] = torch.stack(probs)
results["dino_center"] = dino.center.clone()
results["dino_sinkhorn"] = dino.sinkhorn_knopp_teacher(half(setup["dino_steps"][0]), 0.04)

# iBOT: unequal masked-patch counts per rank
counts = setup["ibot_counts"].tolist()
start = sum(counts[:rank])
rows = setup["ibot_logits"][start:start + counts[rank]]
ibot = IBOTPatchLoss(prototypes)
count = torch.tensor([counts[rank]])
results["ibot_sinkhorn"] = ibot.sinkhorn_knopp_teacher(rows, 0.04, count)
results["count_after"] = count
ibot.update_center(rows)
results["ibot_center_unequal"] = ibot.center.clone()
ibot_equal = IBOTPatchLoss(prototypes)
ibot_equal.update_center(half(setup["ibot_logits"]))
results["ibot_center_equal"] = ibot_equal.center.clone()

# KoLeo on this rank's batch only (DINOv2 does not gather), through a layer DDP would average
weight = setup["koleo_weight"].clone().requires_grad_()
loss = koleo_loss(half(setup["koleo_inputs"]) @ weight)
loss.backward()
results["koleo_loss"] = loss.detach()
results["koleo_grad"] = distributed.all_reduce_mean_(weight.grad.clone())  # DDP's gradient mean

torch.save(results, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs the rank script once on 2 gloo processes (separate interpreters: robust under pytest-xdist)."""
    out = tmp_path_factory.mktemp("dino_ddp")
    generator = torch.Generator().manual_seed(8)
    setup = {
        "dino_steps": torch.rand(3, 8, PROTOTYPES, generator=generator) * 2 - 1,
        "ibot_counts": torch.tensor(IBOT_COUNTS),
        "ibot_logits": torch.rand(sum(IBOT_COUNTS), PROTOTYPES, generator=generator) * 2 - 1,
        "koleo_inputs": torch.randn(8, 5, generator=generator),
        "koleo_weight": torch.randn(5, 3, generator=generator),
    }
    torch.save(setup, out / "setup.pt")
    script = out / "rank.py"
    script.write_text(RANK_SCRIPT)
    run_ranks(script, WORLD_SIZE, out)
    return {"setup": setup, "ranks": [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]}


@pytest.mark.slow
def test_ddp_reductions_centers_and_sinkhorn_equal_one_process_on_the_whole_batch(ddp_results: dict):
    setup, ranks = ddp_results["setup"], ddp_results["ranks"]
    for result in ranks:
        assert result["world_size"] == 2
        assert result["sum"].tolist() == [3.0, 10.0]
        assert result["mean"].tolist() == [1.5, 5.0]
        assert result["max"].tolist() == [2.0, 0.0]

    # DINO centering: probabilities at every step and the final center
    single = DINOLoss(PROTOTYPES)
    probs = []
    for logits in setup["dino_steps"]:
        probs.append(single.softmax_center_teacher(logits, 0.04))
        single.update_center(logits)
    probs = torch.stack(probs)  # (steps, 8, K)
    torch.testing.assert_close(torch.cat([r["dino_probs"] for r in ranks], dim=1), probs, atol=1e-6, rtol=1e-5)
    for result in ranks:
        torch.testing.assert_close(result["dino_center"], single.center, atol=1e-7, rtol=1e-6)
    local_only = DINOLoss(PROTOTYPES)
    local_only.update_center(setup["dino_steps"][0][:4])
    assert (local_only.center - ranks[0]["dino_center"]).abs().max() > 1e-3  # negative control: a center without all-reduce

    # DINO Sinkhorn-Knopp: the two halves are the rows of the whole-batch targets
    whole = sinkhorn_knopp(setup["dino_steps"][0], 0.04)
    torch.testing.assert_close(torch.cat([r["dino_sinkhorn"] for r in ranks]), whole, atol=1e-6, rtol=1e-5)
    assert (sinkhorn_knopp(setup["dino_steps"][0][:4], 0.04) - ranks[0]["dino_sinkhorn"]).abs().max() > 1e-3

    # iBOT Sinkhorn-Knopp with 3 and 5 masked patches: B = 8, the all-reduced count
    whole = sinkhorn_knopp(setup["ibot_logits"], 0.04)
    torch.testing.assert_close(torch.cat([r["ibot_sinkhorn"] for r in ranks]), whole, atol=1e-6, rtol=1e-5)
    assert [r["count_after"].item() for r in ranks] == list(IBOT_COUNTS)  # the caller's counts are left alone

    # iBOT center, as the official: equal counts give the whole-batch mean, unequal ones the mean of rank means
    equal = IBOTPatchLoss(PROTOTYPES)
    equal.update_center(setup["ibot_logits"])
    for result in ranks:
        torch.testing.assert_close(result["ibot_center_equal"], equal.center, atol=1e-7, rtol=1e-6)
    first, second = setup["ibot_logits"][:3], setup["ibot_logits"][3:]
    rank_means = 0.1 * (first.mean(dim=0) + second.mean(dim=0)) / 2
    for result in ranks:
        torch.testing.assert_close(result["ibot_center_unequal"].reshape(-1), rank_means, atol=1e-7, rtol=1e-6)
    assert (rank_means - 0.1 * setup["ibot_logits"].mean(dim=0)).abs().max() > 1e-3


@pytest.mark.slow
def test_ddp_koleo_is_per_rank_as_in_dinov2(ddp_results: dict):
    """DINOv2 applies KoLeo to each rank's batch (no gather): each rank's value is KoLeo of its half, and the
    DDP-averaged gradient is that of the mean of the two halves' KoLeo in one process, not the whole batch's."""
    setup, ranks = ddp_results["setup"], ddp_results["ranks"]
    weight = setup["koleo_weight"].clone().requires_grad_()
    features = setup["koleo_inputs"] @ weight
    halves = [koleo_loss(features[:4]), koleo_loss(features[4:])]
    for result, expected in zip(ranks, halves, strict=True):
        torch.testing.assert_close(result["koleo_loss"], expected.detach())
    ((halves[0] + halves[1]) / 2).backward()
    for result in ranks:
        torch.testing.assert_close(result["koleo_grad"], weight.grad, atol=1e-6, rtol=1e-5)
    # the whole batch has other nearest neighbours: a gathered KoLeo would be a different objective
    assert abs(koleo_loss(features).item() - (halves[0] + halves[1]).item() / 2) > 1e-2
