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

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, state_dict_from
from litzoo.framework.nn.attention_pool import AttentionPool, check_vision_pooling
from litzoo.framework.nn.text import TextTransformer
from litzoo.framework.nn.vit import VisionTransformer

# ---------------------------------------------------------------------------------------- the model


class CLIP(nn.Module):
    """Image tower (ViT) and text tower (causal transformer) with linear projections into ``embed_dim``.

    Defaults are the paper's smallest ViT model, ViT-B/32 (embed 512; vision width 768, 12 layers,
    12 heads, patch 32 at 224 px; text width 512, 12 layers, 8 heads, 77 tokens, 49,408 BPE tokens).

    The Perception Encoder's vision options (Bolya et al. 2025; ``core/vision_encoder/pe.py``), all off by
    default so that every existing CLIP is unchanged: ``use_rope2d`` (RoPE-2D in every vision block),
    ``pool_type="attn"`` (an :class:`~litzoo.framework.nn.attention_pool.AttentionPool` head with
    ``attn_pooler_heads`` heads over all tokens instead of the class token), ``vision_class_token``,
    ``vision_abs_pos_embed``, ``vision_ln_pre`` (PE's ``ln_pre``), ``vision_layer_scale_init``,
    ``vision_norm_eps``, ``vision_patch_bias``, ``vision_mlp_ratio`` and ``dynamic_size`` (images of any
    multiple of the patch size, e.g. progressive-resolution training). The pipeline is PE's:
    patches (+ class token) + positions → ``ln_pre`` → blocks → ``ln_post`` (``visual.norm``) on all tokens →
    pool → projection.

    The Perception Encoder's text options, off by default too: ``text_norm_eps`` (the text blocks' LayerNorms; PE: 1e-5), ``text_pool="argmax"``
    (PE pools at the largest token id) and ``text_mlp_ratio`` (see :class:`~litzoo.framework.nn.text.TextTransformer`).

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
        pool_type: ``"token"`` (the class token, CLIP) or ``"attn"`` (PE's attention pooling).
        attn_pooler_heads: heads of the attention-pooling head (PE: 8).
        use_rope2d: RoPE-2D on the vision queries and keys (PE).
        rope_theta: RoPE frequency base (PE: 10000).
        vision_class_token: prepend a class token (PE-G has none; it then needs ``pool_type="attn"``).
        vision_abs_pos_embed: learned absolute positions in the vision tower (PE keeps them with RoPE).
        vision_ln_pre: LayerNorm before the vision blocks (PE's ``ln_pre``; OpenAI CLIP has one too).
        vision_layer_scale_init: LayerScale init of the vision blocks; ``None`` = none (PE-Core: none).
        vision_norm_eps: epsilon of the vision LayerNorms (litzoo: 1e-6; PE / OpenAI: 1e-5).
        vision_patch_bias: bias on the patch projection (PE / OpenAI ``conv1``: none).
        vision_mlp_ratio: MLP width over the vision width (PE-G: 8960 / 1536).
        dynamic_size: the vision tower takes any multiple of the patch size (positions resampled bilinearly).
        text_norm_eps: epsilon of the text blocks' LayerNorms (litzoo: 1e-6; PE / OpenAI: 1e-5); ``ln_final`` keeps 1e-5.
        text_pool: ``"end_token"`` (the first ``end_token_id``) or ``"argmax"`` (the largest token id, PE / OpenAI).
        text_mlp_ratio: MLP width over the text width (PE-Core and CLIP: 4).
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
        pool_type: str = "token",
        attn_pooler_heads: int = 8,
        use_rope2d: bool = False,
        rope_theta: float = 10000.0,
        vision_class_token: bool = True,
        vision_abs_pos_embed: bool = True,
        vision_ln_pre: bool = False,
        vision_layer_scale_init: float | None = None,
        vision_norm_eps: float = 1e-6,
        vision_patch_bias: bool = True,
        vision_mlp_ratio: float = 4.0,
        dynamic_size: bool = False,
        text_norm_eps: float = 1e-6,
        text_pool: str = "end_token",
        text_mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        check_vision_pooling(embed_dim, pool_type, vision_class_token)
        self.image_size, self.in_chans = image_size, in_chans  # the input the module's example is made of
        self.pool_type = pool_type
        self.visual = VisionTransformer(
            image_size, patch_size, in_chans, vision_width, vision_depth, vision_heads, vision_mlp_ratio,
            class_token=vision_class_token, abs_pos_embed=vision_abs_pos_embed, use_rope2d=use_rope2d, rope_theta=rope_theta,
            norm_pre=vision_ln_pre, layer_scale_init=vision_layer_scale_init, norm_eps=vision_norm_eps, patch_bias=vision_patch_bias,
            dynamic_size=dynamic_size,
        )  # fmt: skip
        self.visual_projection = nn.Linear(vision_width, embed_dim, bias=False)
        self.text = TextTransformer(
            vocab_size, context_length, text_width, text_depth, text_heads, text_mlp_ratio, end_token_id=end_token_id, norm_eps=text_norm_eps,
            pool=text_pool,
        )
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        # OpenAI CLIP initialises the projections with std width^-0.5
        nn.init.normal_(self.visual_projection.weight, std=vision_width**-0.5)
        nn.init.normal_(self.text_projection.weight, std=text_width**-0.5)
        # built last, and only when asked for: a default CLIP draws the same random numbers as before
        self.attn_pool = AttentionPool(vision_width, attn_pooler_heads, norm_eps=vision_norm_eps) if pool_type == "attn" else None

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        tokens = self.visual(images)  # (B, T, width) after ln_post
        pooled = self.visual.pool(tokens, "token") if self.attn_pool is None else self.attn_pool(tokens)
        features = self.visual_projection(pooled)  # (B, E)
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


def recall_at_k(similarity: Tensor, k: int) -> float:
    """The share of queries (rows of an ``(N, N)`` similarity) whose match (column ``i`` for row ``i``) is among the
    ``k`` best-scoring columns.

    Ties are broken uniformly at random *in expectation*: with ``g`` columns scoring higher than the match and ``e``
    others scoring the same, the match lands at each of the ``e + 1`` tied places with equal chance, so the query counts
    ``clamp(k - g, 0, e + 1) / (e + 1)``. Without ties this is the plain rank test; with duplicate captions (identical
    text features) it is the mean over all tie orders, where an arbitrary sort would pick one. Written out rather than
    through torchmetrics' ``RetrievalRecall``: torchmetrics 1.9 counts a relevant item only when its score is ``> 0``
    (``retrieval_recall``'s ``torch.where(preds > 0, ...)``), which under-counts cosine similarities
    (``tests/modules/test_clip.py``).
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got {tuple(similarity.shape)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    match = similarity.diagonal()[:, None]
    greater = (similarity > match).sum(1)
    tied = (similarity == match).sum(1) - 1  # the match equals itself
    hits = (k - greater).clamp(min=0, max=None).minimum(tied + 1).to(torch.float64) / (tied + 1).to(torch.float64)
    return float(hits.mean())


def retrieval_recalls(image_features: Tensor, text_features: Tensor, top_k: Sequence[int]) -> dict[str, float]:
    """Recall@K (:func:`recall_at_k`) of image→text and text→image retrieval where pair ``i`` is image ``i`` with text ``i``."""
    similarity = (image_features @ text_features.T).float()  # (N, N)
    out = {}
    for k in top_k:
        out[f"image_to_text_R@{k}"] = recall_at_k(similarity, k)
        out[f"text_to_image_R@{k}"] = recall_at_k(similarity.T, k)
    return out
