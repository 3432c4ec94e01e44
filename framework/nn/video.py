"""Video tokens: the 3-D tubelet embedding of ViViT / MBT / MAViL and its initialisation from a 2-D patch embedding.

:class:`TubeletEmbed` is one ``Conv3d`` with kernel = stride = the tubelet ``(t, p, p)`` (MAViL's ``PatchEmbed3D_new``
in AV-SUPERB ``upstream_models/mavil/util/patch_embed.py``: ``(2, 16, 16)``, 8 frames of 224² → 4·14·14 = 784 tokens;
MBT's RGB tubelets 2×16×16, ``scenic/projects/mbt``). It takes the DataModules' ``(B, T, C, H, W)`` clips and returns
``(B, (T/t)·(H/p)·(W/p), D)`` tokens in (time, row, column) order, the order of
:func:`litzoo.framework.nn.patches.patchify_video`, so that token ``i`` is the linear map of that function's patch ``i``.

:func:`inflate_patch_embedding` turns an image ViT's ``(D, C, p, p)`` patch kernel into a ``(D, C, t, p, p)`` tubelet
kernel (ViViT, Arnab et al., ICCV 2021, §3.4 "Initialisation": *central frame* — zeros at every temporal position
but the centre ``⌊t/2⌋``, which holds the 2-D kernel, so that the video model starts as the image model applied to
the central frame of each tubelet; *filter inflation* as in I3D — the 2-D kernel repeated over time and divided by
``t``, which starts as the image model applied to the tubelet's mean frame). MBT initialises its RGB tubelets with the
central-frame rule (notes §13); the name of the option in Scenic is ``kernel_init_method: central_frame_initializer``
[recall: Scenic was not fetched].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INFLATIONS = ("central_frame", "average")


def _triple(tubelet: int | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(tubelet, int):
        return (tubelet, tubelet, tubelet)
    if len(tubelet) != 3:
        raise ValueError(f"tubelet must be (frames, height, width), got {tubelet}")
    return tuple(int(s) for s in tubelet)  # type: ignore[return-value]


def inflate_patch_embedding(weight: Tensor, frames: int, method: str = "central_frame") -> Tensor:
    """A ``(D, C, p, p)`` 2-D patch kernel as a ``(D, C, frames, p, p)`` tubelet kernel (see the module docstring).

    Raises:
        ValueError: a kernel that is not 4-D, ``frames < 1`` or an unknown ``method``.
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a (dim, channels, p, p) 2-D patch kernel, got shape {tuple(weight.shape)}")
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if method == "central_frame":
        kernel = weight.new_zeros(weight.shape[0], weight.shape[1], frames, *weight.shape[2:])
        kernel[:, :, frames // 2] = weight
        return kernel
    if method == "average":
        return weight[:, :, None].expand(-1, -1, frames, -1, -1) / frames
    raise ValueError(f"method must be one of {INFLATIONS}, got {method!r}")


class TubeletEmbed(nn.Module):
    """Non-overlapping ``t × p × p`` tubelets → tokens: ``(B, T, C, H, W)`` → ``(B, (T/t)·(H/p)·(W/p), D)``.

    Args:
        num_frames: frames per clip (the positions are stored for this many; T must equal it).
        image_size: frame side (int) or ``(H, W)``.
        tubelet: ``(t, p, p)`` or an int for a cube.
        in_chans: channels per frame.
        dim: token width.

    Raises:
        ValueError: clip sizes that are not multiples of the tubelet.
    """

    def __init__(self, num_frames: int, image_size: int | tuple[int, int], tubelet: int | tuple[int, int, int], in_chans: int,
                 dim: int) -> None:  # fmt: skip
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.tubelet = _triple(tubelet)
        t, ph, pw = self.tubelet
        if min(self.tubelet) <= 0 or num_frames % t or size[0] % ph or size[1] % pw:
            raise ValueError(f"clip size {num_frames}x{size[0]}x{size[1]} must be a positive multiple of the tubelet {self.tubelet}")
        self.num_frames, self.image_size, self.in_chans, self.dim = num_frames, size, in_chans, dim
        self.grid_size = (num_frames // t, size[0] // ph, size[1] // pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=self.tubelet, stride=self.tubelet)

    def forward(self, video: Tensor) -> Tensor:
        if video.dim() != 5 or tuple(video.shape[1:]) != (self.num_frames, self.in_chans, *self.image_size):
            raise ValueError(f"expected clips of shape (B, {self.num_frames}, {self.in_chans}, {self.image_size[0]}, {self.image_size[1]}), "
                             f"got {tuple(video.shape)}")  # fmt: skip
        x = self.proj(video.transpose(1, 2))  # (B, D, n, h, w): Conv3d wants channels before time
        return x.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def load_patch_embedding(self, weight: Tensor, bias: Tensor | None = None, method: str = "central_frame") -> None:
        """Initialise from an image ViT's 2-D patch embedding ``(D, C, p, p)`` (and bias) by :func:`inflate_patch_embedding`."""
        kernel = inflate_patch_embedding(weight, self.tubelet[0], method)
        if kernel.shape != self.proj.weight.shape:
            raise ValueError(f"a 2-D kernel of shape {tuple(weight.shape)} does not inflate to this embedding's {tuple(self.proj.weight.shape)}")
        self.proj.weight.copy_(kernel)
        if bias is not None:
            self.proj.bias.copy_(bias)


__all__ = ["INFLATIONS", "TubeletEmbed", "inflate_patch_embedding"]
