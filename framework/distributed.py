"""The torch.distributed helpers new code uses: the world size and in-place all-reduces that are no-ops alone.

Losses and teachers that keep statistics over the *global* batch (DINOv2's centers and Sinkhorn-Knopp,
``framework/losses/dino.py``) all-reduce small tensors inside the training step. These helpers make that code
read the same with and without a process group: without an initialised default group (one process, a CPU
test, ``fast_dev_run``) the world size is 1 and every reduction returns its argument untouched.

(``framework/losses/contrastive.py`` keeps its own private ``_distributed_world_size``.)
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_objects", "all_reduce_max_", "all_reduce_mean_", "all_reduce_sum_", "barrier", "broadcast_object", "is_distributed", "rank", "world_size"]


def is_distributed() -> bool:
    """True when torch.distributed is available and its default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes of the default process group, 1 without an initialised one."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default process group, 0 without an initialised one."""
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every rank of the default group; a no-op in one process."""
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``: a picklable object (CPU tensors inside) from every rank; ``[obj]`` alone.

    A collective (``torch.distributed.all_gather_object``): every rank must call it. For what is gathered once per
    round, not per step (pickling costs far more than a tensor all-gather).
    """
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a collective); ``obj`` itself in one process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks of the default group, in place; returns it. A no-op in one process.

    A collective: every rank must call it with a tensor of the same shape and dtype.
    """
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over the ranks of the default group, in place; returns it. A no-op in one process.

    Floating-point tensors only (an integer mean would be truncated): a ValueError otherwise, also in one
    process, so the mistake shows up in single-process tests.
    """
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise ValueError(f"all_reduce_mean_ needs a floating-point tensor (an integer mean would be truncated); got {tensor.dtype}")
    size = world_size()
    if size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(size)
    return tensor


def all_reduce_max_(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over the ranks of the default group, in place; returns it. A no-op alone."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
