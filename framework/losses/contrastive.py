"""CLIP's symmetric InfoNCE loss and the all-gather that makes it exact under DDP.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (ICML 2021).
Reference implementations: open_clip ``src/open_clip/loss.py`` (``ClipLoss`` with ``local_loss`` and
``gather_with_grad``), lightly ``lightly/utils/dist.py`` and solo-learn ``solo/utils/misc.py``
(``GatherLayer``), CiT ``losses.py`` (image→text only loss).

Why the gather needs its own backward: with data parallelism every rank holds only its slice of the
batch, but the contrastive loss of a row depends on the features of *every* rank (its negatives).
The gradient of the total objective with respect to this rank's features is therefore the sum of
what every rank's loss contributes to them. :func:`gather_with_grad` returns the concatenation of
all ranks' features and, in backward, sums the incoming gradient over ranks (all-reduce SUM) before
taking this rank's slice. With that, DDP's gradient mean gives exactly the gradient of the loss on
the full global batch (the 2-process test in ``tests/framework/test_contrastive.py`` checks it to
1e-10 in float64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClipLoss", "gather_with_grad"]


def _distributed_world_size() -> int:
    """World size of the default process group, 1 when torch.distributed is unavailable or not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _check_same_shape_on_every_rank(tensor: Tensor, world_size: int) -> None:
    """Raise ValueError unless every rank passes a tensor of the same shape.

    ``dist.all_gather`` needs equal shapes; with unequal ones it fails deep inside the backend (or, on
    some backends, silently hangs / corrupts), so the shapes are compared first. The number of
    dimensions is gathered before the sizes because the sizes tensor must have one length on all ranks.
    """
    ndim = torch.tensor([tensor.dim()], dtype=torch.long, device=tensor.device)
    ndims = [torch.empty_like(ndim) for _ in range(world_size)]
    dist.all_gather(ndims, ndim)
    ndims_per_rank = [int(n.item()) for n in ndims]
    if len(set(ndims_per_rank)) != 1:
        raise ValueError(f"gather_with_grad needs the same shape on every rank; got tensors with {ndims_per_rank} dimensions per rank")
    shape = torch.tensor(list(tensor.shape), dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape)
    shapes_per_rank = [tuple(int(s) for s in rank_shape.tolist()) for rank_shape in shapes]
    if len(set(shapes_per_rank)) != 1:
        raise ValueError(
            "gather_with_grad needs the same shape on every rank (equal per-rank batch sizes: use "
            f"drop_last=True or a sampler that pads); got shapes per rank {shapes_per_rank}"
        )


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradient over ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        world_size = dist.get_world_size()
        tensor = tensor.contiguous()  # collectives need contiguous memory
        per_rank = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(per_rank, tensor)
        ctx.rank = dist.get_rank()
        ctx.rows = tensor.shape[0]
        return torch.cat(per_rank, dim=0)  # (W·B, ...)

    @staticmethod
    def backward(ctx: Any, grad_gathered: Tensor) -> Tensor:
        # every rank's loss depends on this rank's rows, so their gradient is the sum over ranks
        grad_summed = grad_gathered.contiguous().clone()  # (W·B, ...); all_reduce works in place
        dist.all_reduce(grad_summed, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad_summed[start : start + ctx.rows]  # (B, ...)


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank of the default process group along dim 0, with gradient.

    Forward: ``(B, ...)`` on each rank → ``(W·B, ...)``, rank ``r``'s rows at ``[r·B, (r+1)·B)``.
    Backward: the incoming ``(W·B, ...)`` gradient is summed over ranks (all-reduce SUM) and this
    rank's ``B`` rows are returned (the lightly / solo-learn ``GatherLayer`` semantics). So the gradient
    reaching this rank's inputs is that of the sum of all ranks' losses, whichever rows each rank's
    loss uses (local or global); DDP's mean then divides by ``W``.

    Requires the same shape on every rank (equal per-rank batch sizes); a ValueError says otherwise.
    This costs two tiny all-gathers of the shape per call. Returns ``tensor`` itself when
    torch.distributed is unavailable, not initialised, or the world size is 1.
    """
    world_size = _distributed_world_size()
    if world_size == 1:
        return tensor
    _check_same_shape_on_every_rank(tensor, world_size)
    return _GatherWithGrad.apply(tensor)


class ClipLoss(nn.Module):
    """CLIP's symmetric InfoNCE loss over L2-normalised image and text features.

    ``L = ½ [CE(s·I·Tᵀ, y) + CE(s·T·Iᵀ, y)]`` with ``y = arange`` (the i-th image belongs to the i-th
    text) and ``s`` the logit scale (``exp`` of CLIP's learned log temperature). With
    ``image_to_text_only`` only the image→text term ``CE(s·I·Tᵀ, y)`` is used, as in CiT (Xu et al.,
    "CiT: Curation in Training for Effective Vision-Language Data", ICCV 2023; facebookresearch/CiT
    ``losses.py``), which trains the image→text direction only.

    Papers and reference implementations: Radford et al., "Learning Transferable Visual Models From
    Natural Language Supervision" (ICML 2021); open_clip ``src/open_clip/loss.py`` ``ClipLoss``
    (``local_loss``, ``gather_with_grad``); CiT ``losses.py``.

    Distributed (default process group initialised, world size ``W`` > 1, per-rank batch ``B``), with
    ``gather_distributed=True`` both feature sets are gathered with :func:`gather_with_grad`, so every
    rank's rows see the ``W·B − 1`` negatives of the global batch:

    - ``local_loss=True`` (open_clip ``--local-loss --gather-with-grad``, what large CLIP runs use):
      this rank's ``B`` rows against all ``W·B`` columns, logits ``(B, W·B)``, labels
      ``arange(B) + rank·B``. The rank losses average to the full-batch loss.
    - ``local_loss=False``: every rank computes the full ``(W·B, W·B)`` loss, i.e. the same global
      loss ``L`` on all ranks (``W``× the logits memory and compute of the local loss).

    Gradient scale, precisely. Let ``L`` be the loss of the global batch computed in one process and
    ``g = dL/dθ`` its gradient. Because the gather's backward sums over ranks:

    - ``local_loss=True``: rank ``r`` gets ``d(Σ_r' L_r')/dθ`` through its own features, where ``L_r'``
      is rank ``r'``'s local loss and ``Σ_r' L_r' = W·L``; DDP's sum over ranks then mean gives ``g``.
    - ``local_loss=False``: every rank's copy of ``L`` sends gradient to this rank's features, so rank
      ``r`` gets ``W · dL/dθ`` through its own features; DDP's sum then mean gives ``g`` as well.
    - ``logit_scale`` is not gathered (it is replicated); each rank gets ``dL_r/ds`` (local) or
      ``dL/ds`` (global) and DDP's mean gives ``dL/ds`` in both cases.

    So after DDP's gradient mean both variants equal the single-process full-batch gradient exactly
    (``test_ddp_gradients_equal_full_batch_gradients`` in ``tests/framework/test_contrastive.py``, to
    1e-10 in float64). Not so open_clip's default path (gather without gradient, own slice
    re-inserted): it gives ``g / W``. With ``gather_distributed=False`` each rank uses only its own
    ``B − 1`` negatives: a different objective, not a rescaled one.

    Args:
        gather_distributed: Gather features from all ranks (with gradient) so every sample is
            contrasted against the global batch. No effect without an initialised process group.
        local_loss: Under gathering, compute only this rank's rows against all columns (memory
            ``B × W·B`` instead of ``(W·B)²``); the gradient after DDP's mean is the same.
        image_to_text_only: Use only the image→text cross-entropy (CiT) instead of the symmetric mean.
    """

    def __init__(self, gather_distributed: bool = True, local_loss: bool = True, image_to_text_only: bool = False) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        self.local_loss = local_loss
        self.image_to_text_only = image_to_text_only

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
        """The loss (a scalar) for L2-normalised ``image_features`` and ``text_features`` of shape (B, E).

        ``logit_scale`` is the multiplier ``s`` itself (already exponentiated), a one-element tensor;
        the gradient flows through it.
        """
        if image_features.dim() != 2 or text_features.dim() != 2:
            raise ValueError(
                "ClipLoss expects 2-D features (batch, embed_dim); got image_features of shape "
                f"{tuple(image_features.shape)} and text_features of shape {tuple(text_features.shape)}"
            )
        if image_features.shape != text_features.shape:
            raise ValueError(
                "ClipLoss expects image_features and text_features of the same shape (one text per image); got "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        if image_features.shape[0] == 0 or image_features.shape[1] == 0:
            raise ValueError(f"ClipLoss expects non-empty features; got shape {tuple(image_features.shape)}")
        if logit_scale.numel() != 1:
            raise ValueError(f"ClipLoss expects logit_scale to be a scalar tensor; got shape {tuple(logit_scale.shape)}")

        batch_size = image_features.shape[0]
        world_size = _distributed_world_size() if self.gather_distributed else 1

        if world_size == 1:
            logits_per_image = logit_scale * image_features @ text_features.T  # (B, B)
            logits_per_text = logits_per_image.T  # (B, B)
            labels = torch.arange(batch_size, device=image_features.device)  # (B,)
        elif self.local_loss:
            all_text_features = gather_with_grad(text_features)  # (W·B, E)
            logits_per_image = logit_scale * image_features @ all_text_features.T  # (B, W·B)
            if not self.image_to_text_only:  # the gather is a collective: every rank takes the same branch
                all_image_features = gather_with_grad(image_features)  # (W·B, E)
                logits_per_text = logit_scale * text_features @ all_image_features.T  # (B, W·B)
            # this rank's positives sit in its own block of the gathered columns
            labels = torch.arange(batch_size, device=image_features.device) + dist.get_rank() * batch_size  # (B,)
        else:
            all_image_features = gather_with_grad(image_features)  # (W·B, E)
            all_text_features = gather_with_grad(text_features)  # (W·B, E)
            logits_per_image = logit_scale * all_image_features @ all_text_features.T  # (W·B, W·B)
            logits_per_text = logits_per_image.T  # (W·B, W·B)
            labels = torch.arange(world_size * batch_size, device=image_features.device)  # (W·B,)

        image_to_text = F.cross_entropy(logits_per_image, labels)
        if self.image_to_text_only:
            return image_to_text
        text_to_image = F.cross_entropy(logits_per_text, labels)
        return (image_to_text + text_to_image) / 2
