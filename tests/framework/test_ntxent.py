"""NT-Xent (SimCLR eq. 1): the loss against a per-query loop by hand, and under 2 gloo processes
with gathered negatives the DDP-averaged gradient equals the single-process full-batch gradient."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from litzoo.framework.losses import NTXentLoss

REPO_ROOT = Path(__file__).resolve().parents[2]


def _hand_ntxent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> float:
    views = [v / v.norm() for v in torch.cat([z0, z1]).double()]
    batch = z0.shape[0]
    total = 0.0
    for i, query in enumerate(views):
        partner = i + batch if i < batch else i - batch
        numerator = math.exp(float(query @ views[partner]) / temperature)
        denominator = sum(math.exp(float(query @ views[k]) / temperature) for k in range(len(views)) if k != i)
        total += -math.log(numerator / denominator)
    return total / len(views)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_loss_matches_the_formula_by_hand(temperature):
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(5, 7, generator=generator, dtype=torch.float64), torch.randn(5, 7, generator=generator, dtype=torch.float64)
    assert NTXentLoss(temperature)(z0, z1).item() == pytest.approx(_hand_ntxent(z0, z1, temperature), abs=1e-12)


def test_aligned_views_give_a_lower_loss_than_shuffled_partners():
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=generator)
    loss = NTXentLoss(0.5)
    aligned = loss(z, z + 0.01 * torch.randn(8, 16, generator=generator))
    shuffled = loss(z, z.roll(1, dims=0))
    assert aligned < shuffled


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(torch.zeros(3, 4), torch.zeros(2, 4))


RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from torch import nn
from litzoo.framework.losses import NTXentLoss

rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
setup = torch.load(f"{out}/setup.pt", weights_only=True)
rows = slice(rank * 3, (rank + 1) * 3)
results = {}
for gather in (True, False):
    net = nn.Linear(4, 5, dtype=torch.float64)
    net.load_state_dict({"weight": setup["weight"], "bias": setup["bias"]})
    NTXentLoss(0.5, gather_distributed=gather)(net(setup["x0"][rows]), net(setup["x1"][rows])).backward()
    grad = net.weight.grad.clone()
    dist.all_reduce(grad)
    results[gather] = grad / 2
torch.save(results, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
"""


def test_ddp_gathered_gradient_equals_full_batch_gradient(tmp_path):
    generator = torch.Generator().manual_seed(0)
    setup = {name: torch.randn(*shape, generator=generator, dtype=torch.float64)
             for name, shape in {"x0": (6, 4), "x1": (6, 4), "weight": (5, 4), "bias": (5,)}.items()}  # fmt: skip
    torch.save(setup, tmp_path / "setup.pt")
    (tmp_path / "rank.py").write_text(textwrap.dedent(RANK_SCRIPT))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    processes = [subprocess.Popen([sys.executable, str(tmp_path / "rank.py"), str(rank), str(port), str(tmp_path)], cwd=REPO_ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]  # fmt: skip
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]

    net = torch.nn.Linear(4, 5, dtype=torch.float64)
    net.load_state_dict({"weight": setup["weight"], "bias": setup["bias"]})
    NTXentLoss(0.5)(net(setup["x0"]), net(setup["x1"])).backward()
    for result in ranks:
        assert (result[True] - net.weight.grad).abs().max() < 1e-12
        assert (result[False] - net.weight.grad).abs().max() > 1e-4  # without gathering: another objective
