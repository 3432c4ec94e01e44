"""CLIP's two-tower model (Radford et al., ICML 2021) and its evaluation helpers, shared by every method that trains,
fine-tunes, ensembles or captions with a CLIP: ``modules/clip.py`` (the LightningModule), MoDE's data experts,
Altogether's frozen image encoder, the Perception Encoder and StickerCLIP.

A ViT over image patches and a causal transformer over caption tokens, each followed by a linear projection and L2
normalisation; the logits are scaled by a learned temperature ``s = exp(logit_scale)``. Reference implementations:
openai/CLIP ``clip/model.py`` and open_clip ``src/open_clip/model.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.retrieval import RetrievalRecall

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, state_dict_from
from litzoo.framework.nn.text import TextTransformer
from litzoo.framework.nn.vit import VisionTransformer

# ---------------------------------------------------------------------------------------- the model


class CLIP(nn.Module):
    """Image tower (ViT) and text tower (causal transformer) with linear projections into ``embed_dim``.

    Defaults are the paper's smallest ViT model, ViT-B/32 (embed 512; vision width 768, 12 layers,
    12 heads, patch 32 at 224 px; text width 512, 12 layers, 8 heads, 77 tokens, 49,408 BPE tokens).

    Args:
        vocab_size: text vocabulary size.
        embed_dim: dimension of the joint embedding space.
        image_size: side of the square input images.
        patch_size: side of an image patch.
        in_chans: image channels.
        vision_width: ViT token width.
        vision_depth: ViT blocks.
        vision_heads: ViT attention heads.
        context_length: tokens per caption.
        text_width: text transformer width.
        text_depth: text transformer blocks.
        text_heads: text transformer heads.
        end_token_id: id of ``<end_of_text>`` where the text tower pools.
        init_logit_scale: initial ``logit_scale`` (log of the inverse temperature), ``ln(1/0.07)``.
    """

    def __init__(
        self,
        vocab_size: int = 49408,
        embed_dim: int = 512,
        image_size: int = 224,
        patch_size: int = 32,
        in_chans: int = 3,
        vision_width: int = 768,
        vision_depth: int = 12,
        vision_heads: int = 12,
        context_length: int = 77,
        text_width: int = 512,
        text_depth: int = 12,
        text_heads: int = 8,
        end_token_id: int = 3,
        init_logit_scale: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        if embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        self.image_size, self.in_chans = image_size, in_chans  # the input the module's example is made of
        self.visual = VisionTransformer(image_size, patch_size, in_chans, vision_width, vision_depth, vision_heads)
        self.visual_projection = nn.Linear(vision_width, embed_dim, bias=False)
        self.text = TextTransformer(vocab_size, context_length, text_width, text_depth, text_heads, end_token_id=end_token_id)
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        # OpenAI CLIP initialises the projections with std width^-0.5
        nn.init.normal_(self.visual_projection.weight, std=vision_width**-0.5)
        nn.init.normal_(self.text_projection.weight, std=text_width**-0.5)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        features = self.visual_projection(self.visual.pool(self.visual(images), "token"))  # (B, E)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: Tensor, normalize: bool = True, project: bool = True) -> Tensor:
        """``(B, L)`` token ids → ``(B, E)`` features; ``project=False`` gives the pre-projection
        ``(B, text_width)`` features that CiT compares with its metadata."""
        features = self.text(tokens)  # (B, text_width)
        if project:
            features = self.text_projection(features)  # (B, E)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised image and text features and the logit scale ``s = exp(logit_scale)``."""
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()


def load_clip_weights(model: CLIP, path: str) -> None:
    """Loads a :class:`CLIP` state dict, bare or inside a ``CLIPModule`` checkpoint (``model.`` keys), checked."""
    state = state_dict_from(load_checkpoint(path), path)
    if any(key.startswith("model.") for key in state):
        state = {key[len("model.") :]: value for key, value in state.items() if key.startswith("model.")}
    load_state_dict_checked(model, state, path, what="CLIP model")


# ------------------------------------------------------------------------------- evaluation helpers


def zero_shot_weights(model: CLIP, tokenizer: Any, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """``(E, K)`` class weights: per class, the normalised mean of the normalised embeddings of its prompts."""
    weights = []
    for name in class_names:
        tokens = tokenizer([template.format(name) for template in templates]).to(model.logit_scale.device)
        weights.append(F.normalize(model.encode_text(tokens).mean(dim=0), dim=-1))
    return torch.stack(weights, dim=1)


def retrieval_recalls(image_features: Tensor, text_features: Tensor, top_k: Sequence[int]) -> dict[str, float]:
    """Recall@K of image→text and text→image retrieval where pair ``i`` is image ``i`` with text ``i``."""
    similarity = image_features @ text_features.T  # (N, N)
    n = similarity.shape[0]
    target = torch.eye(n, dtype=torch.bool, device=similarity.device)
    indexes = torch.arange(n, device=similarity.device)[:, None].expand(n, n)
    out = {}
    for k in top_k:
        metric = RetrievalRecall(top_k=k, sync_on_compute=False).to(similarity.device)
        out[f"image_to_text_R@{k}"] = float(metric(similarity.flatten(), target.flatten(), indexes=indexes.flatten()))
        metric = RetrievalRecall(top_k=k, sync_on_compute=False).to(similarity.device)
        out[f"text_to_image_R@{k}"] = float(metric(similarity.T.flatten(), target.flatten(), indexes=indexes.flatten()))
    return out
