"""Run a rank script in separate interpreters, one per rank of a gloo process group (DDP tests on CPU).

Separate interpreters rather than multiprocessing inside pytest: robust under pytest-xdist workers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on localhost now (for the group's MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(script: Path, world_size: int, out: Path, timeout: float = 120) -> None:
    """Run ``python script RANK WORLD_SIZE PORT OUT`` for every rank at once and wait for all of them.

    Fails with the stderr tail of the first rank that exits non-zero; kills every rank after ``timeout`` seconds.
    """
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(world_size), str(port), str(out)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for rank in range(world_size)
    ]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    for rank, (process, (_, stderr)) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank}: {stderr[-3000:]}"
