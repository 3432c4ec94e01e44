"""BEiT-style block masking and DINOv2's iBOT masks of a batch (stratified mask ratios, shuffled images).

Block masking (Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022, algorithm 1) as DINOv2
uses it (facebookresearch/dinov2 ``dinov2/data/masking.py::MaskingGenerator``): a mask of ``num_masking_patches``
patches on an ``h × w`` grid is built block after block. One block: up to ``attempts`` (10) tries of

- an area ``s ~ U(min_num_patches, max_mask_patches)`` with ``max_mask_patches = min(remaining, max_num_patches)``
  and an aspect ratio ``r = exp(U(log min_aspect, log max_aspect))`` (log-uniform);
- ``bh = round(sqrt(s·r))`` rows and ``bw = round(sqrt(s/r))`` columns; only a block strictly smaller than the grid
  (``bw < w and bh < h``) is placed, at ``top ~ U{0 … h − bh}``, ``left ~ U{0 … w − bw}``;
- it is kept when the number of patches it newly masks is in ``(0, max_mask_patches]`` (the *delta*); a kept
  block ends the tries. Blocks are added until the count reaches the target or one block fails all its tries, so
  a mask has at most ``num_masking_patches`` patches and sometimes a few fewer (measured on the official code,
  16 × 16 grid, targets ``int(256·U(0.1, 0.5))``, 20 000 draws: 91.8 % exact, mean shortfall 0.085, at most 5).

DINOv2's collate (``dinov2/data/collate.py::collate_data_and_cast``) then masks ``int(B·mask_probability)`` of the
``B`` global crops with stratified ratios: ``probs = linspace(ratio_min, ratio_max, n + 1)``, image ``i`` gets
``int(N·U(probs[i], probs[i+1]))`` patches, the other images none, and the images' order is shuffled. DINOv2's
training builds the generator with ``max_num_patches = 0.5·N`` and the defaults here (``dinov2/train/train.py``).

Randomness: the official code draws from Python's global ``random``; here every number comes from torch, from
the given ``torch.Generator`` (or torch's global CPU generator, which the checkpoints' RNG state holds), so a draw
is seeded and resumable. :meth:`BlockMaskGenerator.mask_from_uniforms` runs the same loop on a given sequence of
``U[0, 1)`` numbers (an integer ``U{0 … n}`` is ``floor(u·(n + 1))``), which pins the order of the draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

# uniforms drawn from torch per refill: a batch of masks takes a few hundred, one torch call per chunk is cheap
_CHUNK = 256


class _TorchUniforms:
    """``U[0, 1)`` float64 numbers from ``generator`` (torch's global CPU generator when None), drawn in chunks."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator
        self.values: list[float] = []
        self.position = 0

    def __call__(self) -> float:
        if self.position == len(self.values):
            self.values = torch.rand(_CHUNK, dtype=torch.float64, generator=self.generator).tolist()
            self.position = 0
        self.position += 1
        return self.values[self.position - 1]


class BlockMaskGenerator:
    """BEiT / DINOv2 block masks on a ``grid_size`` patch grid; see the module docstring for the algorithm.

    Args:
        grid_size: patches per side ``h`` (square grid) or ``(h, w)``.
        max_num_patches: most patches one block may newly mask (default ``0.5·N``, DINOv2's training setting;
            the official expression ``0.5 * img // patch * img // patch`` equals it for an even grid side).
        min_num_patches: the smallest block area drawn (4).
        min_aspect: the smallest aspect ratio ``rows / columns`` drawn (0.3).
        max_aspect: the largest (default ``1 / min_aspect``).
        attempts: tries per block before the mask is given up as complete (10).
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        max_num_patches: float | None = None,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        attempts: int = 10,
    ) -> None:
        height, width = (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))
        if height < 1 or width < 1:
            raise ValueError(f"grid_size must be positive, got {grid_size}")
        self.height, self.width = height, width
        self.num_patches = height * width
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else max_num_patches
        if self.max_num_patches <= 0:
            raise ValueError(f"max_num_patches must be positive, got {max_num_patches}")
        if min_num_patches < 1:
            raise ValueError(f"min_num_patches must be at least 1, got {min_num_patches}")
        self.min_num_patches = min_num_patches
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be positive, got {min_aspect}")
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if max_aspect < min_aspect:
            raise ValueError(f"max_aspect ({max_aspect}) must be at least min_aspect ({min_aspect})")
        self.min_aspect, self.max_aspect = min_aspect, max_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.attempts = attempts

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid=({self.height}, {self.width}), block patches=[{self.min_num_patches}, {self.max_num_patches}], "
            f"aspect=[{self.min_aspect:.3f}, {self.max_aspect:.3f}], attempts={self.attempts})"
        )

    def place_block(self, mask: np.ndarray, max_mask_patches: float, uniform: Callable[[], float]) -> int:
        """Add one block to ``mask`` (bool ``(h, w)``, in place); the number of patches it newly masked (0: all tries failed).

        ``uniform`` returns the next ``U[0, 1)`` number; each try takes two (area, aspect), and two more (top, left)
        when the block fits in the grid.
        """
        for _ in range(self.attempts):
            # Python's random.uniform(a, b) is a + (b - a)·u, also when b < a (few patches left: area in [left, min])
            area = self.min_num_patches + (max_mask_patches - self.min_num_patches) * uniform()
            aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * uniform())
            rows = int(round(math.sqrt(area * aspect)))  # Python's round: half to even, as the official code
            cols = int(round(math.sqrt(area / aspect)))
            if cols < self.width and rows < self.height:  # strictly smaller than the grid, as the official code
                top = min(int(uniform() * (self.height - rows + 1)), self.height - rows)
                left = min(int(uniform() * (self.width - cols + 1)), self.width - cols)
                block = mask[top : top + rows, left : left + cols]
                new = rows * cols - int(block.sum())
                # the delta accounting: only patches not yet masked count, and they must fit in what is left
                if 0 < new <= max_mask_patches:
                    block[...] = True
                    return new
        return 0

    def mask_from_uniforms(self, num_masking_patches: int, uniforms: Callable[[], float] | Iterable[float]) -> Tensor:
        """The official loop with the ``U[0, 1)`` numbers taken in order from ``uniforms`` (a callable or an iterable)."""
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ValueError(f"num_masking_patches must be in [0, {self.num_patches}], got {num_masking_patches}")
        uniform = uniforms if callable(uniforms) else iter(uniforms).__next__
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            delta = self.place_block(mask, min(num_masking_patches - count, self.max_num_patches), uniform)
            if delta == 0:  # a block failed all its tries: the mask ends short of the target
                break
            count += delta
        return torch.from_numpy(mask)

    def __call__(self, num_masking_patches: int, generator: torch.Generator | None = None) -> Tensor:
        """A bool ``(h, w)`` mask (True = masked) with at most ``num_masking_patches`` patches, drawn from ``generator``."""
        return self.mask_from_uniforms(num_masking_patches, _TorchUniforms(generator))


class IBOTMasks(NamedTuple):
    """The iBOT masks of a batch of global crops, with the bookkeeping of DINOv2's collate.

    Attributes:
        masks: bool ``(B, N)``, True = masked patch (the student sees ``mask_token`` there).
        mask_indices: ``(M,)`` long, the flat indices of the masked patches in ``masks.flatten()`` (``mask_indices_list``).
        masks_weight: ``(M,)`` float, per masked patch ``1 / (number of masked patches of its image)``: the iBOT loss
            is averaged per image, so each masked image's weights sum to 1.
        n_masked_patches: ``(1,)`` long, ``M`` (the official tensor, all-reduced in the loss).
        upperbound: ``Σ_i int(N·probs[i+1])`` over the masked images, a bound on ``M`` known before the masks are drawn;
            the official step sizes its fixed buffers of masked tokens with it.
    """

    masks: Tensor
    mask_indices: Tensor
    masks_weight: Tensor
    n_masked_patches: Tensor
    upperbound: int


def ibot_masks(
    num_images: int,
    generator_fn: BlockMaskGenerator,
    mask_probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    generator: torch.Generator | None = None,
) -> IBOTMasks:
    """DINOv2's iBOT masks for ``num_images`` global crops (all crops of the batch: ``2·B`` for 2 global crops).

    ``int(num_images·mask_probability)`` images get block masks with stratified ratios (see the module
    docstring), the others none; the order of the images is then shuffled (``torch.randperm``, as the official
    ``random.shuffle``). All numbers come from ``generator`` (torch's global CPU generator when None).

    Args:
        num_images: the number of images ``B`` (the rows of ``masks``).
        generator_fn: the block mask generator of the patch grid (``N`` patches).
        mask_probability: the fraction of the images that get a mask (0.5).
        ratio_range: ``(min, max)`` masked fraction, split into one stratum per masked image (0.1, 0.5).
        generator: the torch random generator.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be non-negative, got {num_images}")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    low, high = float(ratio_range[0]), float(ratio_range[1])
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"ratio_range must satisfy 0 <= min <= max <= 1, got {ratio_range}")
    num_patches = generator_fn.num_patches
    num_masked = int(num_images * mask_probability)
    # float32 as the official torch.linspace, so that int(N·p) rounds alike (e.g. the upper bound)
    probs = torch.linspace(low, high, num_masked + 1, dtype=torch.float32)
    u = torch.rand(num_masked, dtype=torch.float32, generator=generator)
    targets = (num_patches * (probs[:-1] + (probs[1:] - probs[:-1]) * u)).long().clamp(max=num_patches).tolist()
    upperbound = int((num_patches * probs[1:]).long().sum())
    uniforms = _TorchUniforms(generator)
    masks = [generator_fn.mask_from_uniforms(target, uniforms).flatten() for target in targets]
    masks += [torch.zeros(num_patches, dtype=torch.bool)] * (num_images - num_masked)
    order = torch.randperm(num_images, generator=generator)
    stacked = torch.stack(masks)[order] if masks else torch.zeros(0, num_patches, dtype=torch.bool)
    mask_indices = stacked.flatten().nonzero().flatten()
    per_image = 1.0 / stacked.sum(-1).clamp(min=1).float()
    masks_weight = per_image.unsqueeze(-1).expand_as(stacked)[stacked]
    n_masked_patches = torch.full((1,), mask_indices.numel(), dtype=torch.long)
    return IBOTMasks(stacked, mask_indices, masks_weight, n_masked_patches, upperbound)
