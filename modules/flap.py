"""FLAP — Fast Language-Audio Pre-training (Yeh, Huang, Sharma, Li, Ghosh, ICASSP 2024, arXiv 2311.01615).

**No official code is known**, and only the paper's abstract and a summary of its method section could be read offline:
what the method fixes is taken from them; every rule they leave open is marked *(ours)* below, and settings recalled from
the paper but not re-read are marked *[recall, unverified]*.

What the paper fixes and this module follows:

* an audio ViT (Audio-MAE-style, over log-mel fbank patches) and a text encoder, each pooled and projected into one
  space; an **inter-modal contrastive** (InfoNCE) loss aligns paired audio and text;
* **random token dropping before the encoder**: spectrogram patches are removed at random and the encoder runs on the
  remaining tokens only — that is where the speed comes from (attention is quadratic, the MLPs linear, in the tokens).
  Two modes: **1-D** (``drop_mode="time"``: whole time steps of the patch grid, all their frequency patches) and **2-D**
  (``drop_mode="2d"``: any patch, MAE's per-token masking). The kept indices are drawn per sample;
* **several dropped views** of one clip, each contrasted with the clip's text;
* an **audio decoder reconstructing the dropped spectrogram tokens**, ``L = L_contrast + λ·L_recon``;
* evaluation: audio→text and text→audio retrieval recall@K (R@1/5/10) with nothing dropped.

Choices where the paper (as read here) is silent — all *(ours)*:

* the views' losses are **averaged**: ``L_contrast = mean_v InfoNCE(audio_v, text)``, each the symmetric CLIP loss
  (:class:`litzoo.framework.losses.ClipLoss`, gathered under DDP) with one learnable temperature as CLIP
  (``logit_scale`` initialised to ``ln(1/0.07)``, clamped to ``[0, ln 100]`` after every step); the reconstruction
  loss is averaged over the views as well (each view reconstructs its own dropped patches);
* the decoder is MAE's: a linear map to the decoder width, a learned **mask token** in every dropped place, fixed 2-D
  sin-cos positions, ``decoder_depth`` plain pre-norm blocks, a linear prediction of the ``p²`` fbank values of each
  patch; the loss is the MSE over **dropped patches only**, on per-patch normalised targets when ``norm_pix_loss``
  (Audio-MAE's AS-2M setting). The paper describes reconstruction "from per-frame embeddings"; its exact decoder input
  is not reproduced here;
* audio pooling: the mean of the encoder's (normed) kept tokens, no class token (Audio-MAE's fine-tuning pooling);
  text: a **bidirectional** Transformer (:class:`~litzoo.framework.nn.text_encoder.TransformerTextEncoder`, litzoo's
  stand-in for the RoBERTa-type encoder [recall, unverified] whose weights are not available offline; padded keys masked)
  over a word vocabulary built from the training captions, masked-mean pooled; projections are linear, no bias;
* defaults: ``drop_ratio`` 0.4 [recall, unverified], ``drop_mode`` ``"2d"``, ``num_views`` 2, ``recon_weight`` λ = 1,
  decoder 512-d × 4 blocks; the number of dropped tokens is ``int(L·(1 − ratio))`` kept (MAE's rule; in time mode
  ``int(T'·(1 − ratio))`` whole time steps);
* the LLM-based caption augmentation is data-side: rewrites generated beforehand (no LLM runs in litzoo) are stored
  in the JSONL (``"augmented_texts"``) and drawn as the training text by
  :class:`~litzoo.datamodules.audio_video.AudioTextDataModule` (``caption_augmentation``; uniform over the caption and
  its rewrites, LaCLIP's rule, by default when on); the vocabulary is then built from the rewrites too.

Reused: ``PatchEmbed`` / ``Block`` / ``init_vit_weights`` (:mod:`litzoo.framework.nn.vit`), MAE's masking record
:class:`~litzoo.framework.nn.masking.TokenMask` and :func:`~litzoo.framework.nn.masking.gather_tokens` /
:func:`~litzoo.framework.nn.masking.restore_tokens`, ``patchify`` / ``normalized_pixel_target``, the CLIP retrieval
metric :func:`litzoo.framework.nn.clip.retrieval_recalls` (torchmetrics ``RetrievalRecall``, keys renamed to audio/text).
Audio-MAE's encoder lives in ``modules/audio_mae.py`` (a method may not import a method), so the few lines of its
patch + sin-cos front-end are written again here.

Batches: ``{"audio": (B, 1, T, F), "text": list[str]}`` (:class:`litzoo.datamodules.audio_video.AudioTextDataModule`).
Logged: ``train/loss``, ``train/contrastive``, ``train/reconstruction``, ``train/logit_scale``, ``{val,test}/loss``
(InfoNCE of the undropped audio) and ``{val,test}/{audio_to_text,text_to_audio}_R@K`` over the whole split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from tokenizers import Tokenizer
from torch import Tensor, nn

from litzoo.framework.errors import LitzooError
from litzoo.framework.losses import ClipLoss
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn import (
    Block,
    PatchEmbed,
    TokenMask,
    gather_tokens,
    init_vit_weights,
    masked_patch_loss,
    normalized_pixel_target,
    patchify,
    restore_tokens,
)
from litzoo.framework.nn.clip import retrieval_recalls
from litzoo.framework.nn.pos_embed import sincos_pos_embed_2d
from litzoo.framework.nn.text_encoder import TransformerTextEncoder, masked_mean
from litzoo.framework.optim import adamw_clip, split_weight_decay, warmup_cosine_per_step
from litzoo.framework.text.vocabulary import WordVocabulary

DROP_MODES = ("time", "2d")

# ------------------------------------------------------------------------------------------ token dropping


def _mask_from_noise(noise: Tensor, len_keep: int) -> TokenMask:
    """MAE's record of one masking: the ``len_keep`` tokens of smallest ``noise`` are kept (in ascending-noise order)."""
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return TokenMask(ids_shuffle[:, :len_keep], ids_restore, ids_restore < len_keep)


def drop_tokens(batch: int, grid: tuple[int, int], drop_ratio: float, mode: str, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> TokenMask:  # fmt: skip
    """Draw per-sample token dropping over a ``(T', F')`` time-major patch grid (token ``t·F' + f``).

    Args:
        batch: samples ``B``.
        grid: ``(T', F')`` time steps × frequency bands of patches.
        drop_ratio: fraction dropped, in ``[0, 1)``.
        mode: ``"2d"``: ``int(T'F'·(1 − ratio))`` tokens kept, any of them (MAE); ``"time"``: ``int(T'·(1 − ratio))``
            whole time steps kept (all ``F'`` patches of each), the others dropped.
        generator: the random stream (default: torch's global one), so views are reproducible.

    Returns:
        a :class:`~litzoo.framework.nn.masking.TokenMask` (``ids_keep`` ``(B, K)``, ``ids_restore``, ``keep``).
    """
    if mode not in DROP_MODES:
        raise ValueError(f"drop mode must be one of {DROP_MODES}, got {mode!r}")
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
    steps, bands = grid
    if mode == "2d":
        len_keep = int(steps * bands * (1 - drop_ratio))
        noise = torch.rand(batch, steps * bands, generator=generator, device=device)
    else:
        kept_steps = int(steps * (1 - drop_ratio))
        len_keep = kept_steps * bands
        step_noise = torch.rand(batch, steps, generator=generator, device=device)
        # each token's key: the rank of its time step, then its band, so that argsort keeps whole time steps together
        step_rank = torch.argsort(torch.argsort(step_noise, dim=1), dim=1).to(step_noise.dtype)  # (B, T')
        noise = (step_rank[:, :, None] * bands + torch.arange(bands, device=step_noise.device, dtype=step_noise.dtype)).flatten(1)
    if len_keep < 1:
        raise ValueError(f"drop_ratio {drop_ratio} in mode {mode!r} keeps no token of the {steps}x{bands} grid")
    return _mask_from_noise(noise, len_keep)


# ---------------------------------------------------------------------------------------------- the network


class FLAPNet(nn.Module):
    """FLAP's two towers, projections, temperature and reconstruction decoder.

    Args:
        vocab_size: rows of the text embedding (the word vocabulary is capped at this size).
        max_text_length: tokens per caption (longer captions are cut).
        input_size: ``(frames, mel_bins)`` of the fbank input (Audio-MAE / AudioSet: 1024 × 128).
        patch_size: square patch side (16).
        embed_dim: audio encoder width (ViT-B: 768).
        depth: audio encoder blocks (12).
        num_heads: audio encoder heads (12).
        text_dim, text_depth, text_heads: the text encoder's width, blocks and heads.
        proj_dim: joint embedding width *(ours: 512)*.
        decoder_dim, decoder_depth, decoder_heads: the reconstruction decoder *(ours: 512, 4, 16)*.
        mlp_ratio: MLP width over the token width, every tower.
        init_logit_scale: initial ``logit_scale``, ``ln(1/0.07)`` (CLIP).
    """

    def __init__(
        self,
        vocab_size: int = 1000,
        max_text_length: int = 32,
        input_size: tuple[int, int] | list[int] = (1024, 128),
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        text_dim: int = 768,
        text_depth: int = 12,
        text_heads: int = 12,
        proj_dim: int = 512,
        decoder_dim: int = 512,
        decoder_depth: int = 4,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_logit_scale: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        size = (int(input_size[0]), int(input_size[1]))
        if min(depth, decoder_depth, proj_dim) < 1:
            raise ValueError(f"depth, decoder_depth and proj_dim must be positive, got {depth}, {decoder_depth}, {proj_dim}")
        if embed_dim % 4 or decoder_dim % 4:
            raise ValueError(f"embed_dim and decoder_dim must be multiples of 4 (2-D sin-cos positions), got {embed_dim} and {decoder_dim}")
        self.patch_size, self.input_size = patch_size, size
        # audio encoder: conv patches of the (1, T, F) fbank in time-major order + fixed 2-D sin-cos positions (Audio-MAE)
        self.patch_embed = PatchEmbed(size, patch_size, 1, embed_dim)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid_size)[None].float(), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # text encoder: bidirectional, masked-mean pooled (ours, see the module docstring)
        self.text = TransformerTextEncoder(vocab_size, max_text_length, text_dim, text_depth, text_heads, mlp_ratio)
        self.audio_projection = nn.Linear(embed_dim, proj_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, proj_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        # MAE decoder over the full grid: kept tokens + a learned mask token in each dropped place
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(decoder_dim, self.grid_size)[None].float(), persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size)
        for module in (self.patch_embed, self.blocks, self.norm, self.audio_projection, self.text_projection, self.decoder_embed,
                       self.decoder_blocks, self.decoder_norm, self.decoder_pred):  # fmt: skip
            init_vit_weights(module)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(T', F')`` patches along time and frequency."""
        return self.patch_embed.grid_hw

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    # ---------------------------------------------------------------- audio
    def embed_patches(self, spec: Tensor) -> Tensor:
        """``(B, 1, T, F)`` → ``(B, N, D)`` patch embeddings plus their positions, every patch."""
        return self.patch_embed(spec) + self.pos_embed

    def encode_audio_tokens(self, spec: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """``(B, K, D)`` normed encoder tokens of the patches ``ids_keep`` ``(B, K)`` (all when None): the dropped
        patches never enter the blocks."""
        x = self.embed_patches(spec)
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def project_audio(self, tokens: Tensor) -> Tensor:
        """Mean-pooled tokens → L2-normalised ``(B, proj_dim)``."""
        return F.normalize(self.audio_projection(tokens.mean(dim=1)), dim=-1)

    def encode_audio(self, spec: Tensor) -> Tensor:
        """Evaluation: L2-normalised ``(B, proj_dim)`` of the whole spectrogram (nothing dropped)."""
        return self.project_audio(self.encode_audio_tokens(spec))

    # ---------------------------------------------------------------- text
    def encode_text(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Token ids and real-token mask ``(B, L)`` → L2-normalised ``(B, proj_dim)``."""
        return F.normalize(self.text_projection(masked_mean(self.text(tokens, mask), mask.bool())), dim=-1)

    # ---------------------------------------------------------------- reconstruction
    def reconstruct(self, kept_tokens: Tensor, token_mask: TokenMask) -> Tensor:
        """``(B, N, p²)`` predicted patches from the encoder's kept tokens (in ``ids_keep`` order)."""
        x = restore_tokens(self.decoder_embed(kept_tokens), self.mask_token, token_mask.ids_restore) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))


def reconstruction_loss(pred: Tensor, spec: Tensor, dropped: Tensor, patch_size: int, norm_pix_loss: bool = True) -> Tensor:
    """MSE over the **dropped** patches only: per patch the mean squared error over its ``p²`` values, then the mean over
    the dropped patches of the batch (MAE's ``(loss · mask).sum() / mask.sum()``); 0 when nothing was dropped.

    Args:
        pred: ``(B, N, p²)`` predictions.
        spec: ``(B, 1, T, F)`` the spectrograms.
        dropped: ``(B, N)`` bool, True = dropped.
        patch_size: ``p``.
        norm_pix_loss: targets standardised per patch (MAE / Audio-MAE ``norm_pix_loss``).
    """
    target = patchify(spec, patch_size)
    if norm_pix_loss:
        target = normalized_pixel_target(target)
    return masked_patch_loss(pred, target, dropped)


def audio_text_recalls(audio: Tensor, text: Tensor, top_k: Sequence[int]) -> dict[str, float]:
    """Recall@K of audio→text and text→audio retrieval, pair ``i`` = audio ``i`` with text ``i`` (the CLIP metric,
    :func:`litzoo.framework.nn.clip.retrieval_recalls`, renamed)."""
    recalls = retrieval_recalls(audio, text, top_k)
    return {name.replace("image_to_text", "audio_to_text").replace("text_to_image", "text_to_audio"): value for name, value in recalls.items()}


# ------------------------------------------------------------------------------------- the LightningModule


class FLAP(L.LightningModule):
    """FLAP pre-training on ``{"audio": (B, 1, T, F), "text": list[str]}`` batches.

    In :meth:`setup` the word vocabulary is built from the training captions (and their rewrites, when the DataModule
    draws from them: its training dataset's ``vocabulary_texts``; at most ``vocab_size`` entries,
    ``[PAD]`` = 0, ``[UNK]`` = 1); it is saved in the checkpoint (``flap_vocabulary``) and restored with it.

    Args:
        drop_ratio: fraction of audio tokens dropped in each training view, in ``[0, 1)`` (0.4 [recall, unverified]).
        drop_mode: ``"time"`` (1-D: whole time steps) or ``"2d"`` (any patch).
        num_views: dropped views of each clip, each contrasted with the text (2, ours).
        recon_weight: λ of the reconstruction loss (1.0, ours); 0 turns the decoder off (it is then never run).
        norm_pix_loss: reconstruct per-patch normalised fbank values.
        max_logit_scale: ``logit_scale`` is clamped to ``[0, max_logit_scale]`` after every step (ln 100, CLIP).
        gather_distributed: contrast against the global batch under DDP.
        retrieval_top_k: the K of the recall@K metrics.
        warmup_steps: linear warm-up of the default schedule, then cosine to 0 per step (ours).
        optimizer: called with parameter groups; default AdamW(5e-4, (0.9, 0.98), eps 1e-6, wd 0.2) (open_clip's; ours).
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine.
        **net_kwargs: :class:`FLAPNet`'s arguments (``vocab_size`` … ``init_logit_scale``).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        drop_ratio: float = 0.4,
        drop_mode: str = "2d",
        num_views: int = 2,
        recon_weight: float = 1.0,
        norm_pix_loss: bool = True,
        max_logit_scale: float = math.log(100),
        gather_distributed: bool = True,
        retrieval_top_k: list[int] | None = None,
        warmup_steps: int = 100,
        optimizer: OptimizerCallable = adamw_clip,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(FLAPNet, net_kwargs, type(self).__name__)
        if drop_mode not in DROP_MODES:
            raise ValueError(f"drop_mode must be one of {DROP_MODES}, got {drop_mode!r}")
        if not 0.0 <= drop_ratio < 1.0:
            raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio}")
        if num_views < 1:
            raise ValueError(f"num_views must be at least 1, got {num_views}")
        if not (recon_weight >= 0 and math.isfinite(recon_weight)):
            raise ValueError(f"recon_weight must be a finite number >= 0, got {recon_weight}")
        if max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale must be positive, got {max_logit_scale}")
        top_k = [1, 5, 10] if retrieval_top_k is None else [int(k) for k in retrieval_top_k]
        if not top_k or min(top_k) < 1:
            raise ValueError(f"retrieval_top_k must be positive integers, got {top_k}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model = FLAPNet(**net_kwargs)
        drop_tokens(1, self.model.grid_size, drop_ratio, drop_mode)  # refuses a ratio that keeps no token of this grid
        self.top_k = top_k
        self.loss = ClipLoss(gather_distributed=gather_distributed)
        self.eval_loss = ClipLoss(gather_distributed=False)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.vocabulary: WordVocabulary | None = None
        self._eval: list[tuple[Tensor, Tensor]] = []

    # ------------------------------------------------------------------ vocabulary
    def setup(self, stage: str) -> None:
        if self.vocabulary is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        dataset = datamodule.dataset("train") if datamodule is not None and hasattr(datamodule, "dataset") else None
        pairs = getattr(dataset, "pairs", None)
        if not pairs:
            raise LitzooError("FLAP builds its word vocabulary from the training captions: train with an AudioTextDataModule "
                              "(or load a FLAP checkpoint, which holds its vocabulary)")  # fmt: skip
        # with caption augmentation the training texts include the captions' rewrites: their words too
        texts = getattr(dataset, "vocabulary_texts", None)
        texts = [text for _, text in pairs] if texts is None else list(texts)
        self.set_vocabulary(WordVocabulary.build(texts, max_size=self.model.text.vocab_size))

    def set_vocabulary(self, vocabulary: WordVocabulary) -> None:
        if vocabulary.vocab_size > self.model.text.vocab_size:
            raise LitzooError(f"FLAP: the vocabulary has {vocabulary.vocab_size} words, more than the model's vocab_size={self.model.text.vocab_size}")
        self.vocabulary = vocabulary

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.vocabulary is not None:
            checkpoint["flap_vocabulary"] = self.vocabulary.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "flap_vocabulary" in checkpoint:
            self.set_vocabulary(WordVocabulary(Tokenizer.from_str(checkpoint["flap_vocabulary"])))

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions → ``(tokens, mask)`` ``(B, max_text_length)`` on the module's device."""
        if self.vocabulary is None:
            raise RuntimeError("FLAP has no vocabulary yet: run setup() with an AudioTextDataModule, or load a FLAP checkpoint")
        tokens, mask = self.vocabulary.encode(list(texts), self.model.text.max_length)
        return tokens.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ embeddings
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.model.encode_text(*self.tokenize(texts))

    def encode_audio(self, spec: Tensor) -> Tensor:
        return self.model.encode_audio(spec)

    def draw_views(self, batch: int, generator: torch.Generator | None = None) -> list[TokenMask]:
        """``num_views`` independent token droppings of a batch (each sample its own kept indices)."""
        hp = self.hparams
        return [drop_tokens(batch, self.model.grid_size, hp.drop_ratio, hp.drop_mode, generator, self.device) for _ in range(hp.num_views)]

    def training_losses(self, spec: Tensor, texts: Sequence[str], views: list[TokenMask]) -> dict[str, Tensor]:
        """``loss = mean_v InfoNCE(view_v, text) + λ · mean_v L_recon(view_v)`` for the given droppings."""
        batch = len(spec)
        text = self.encode_text(texts)
        scale = self.model.logit_scale.exp()
        # all views in one encoder pass: every view keeps the same number of tokens
        ids = torch.cat([view.ids_keep for view in views])  # (V·B, K)
        tokens = self.model.encode_audio_tokens(spec.repeat(len(views), 1, 1, 1), ids)  # (V·B, K, D)
        audio = self.model.project_audio(tokens)  # (V·B, E)
        contrastive = torch.stack([self.loss(audio[v * batch : (v + 1) * batch], text, scale) for v in range(len(views))]).mean()
        reconstruction = contrastive.new_zeros(())
        if self.hparams.recon_weight > 0 and self.hparams.drop_ratio > 0:
            restore = TokenMask(ids, torch.cat([v.ids_restore for v in views]), torch.cat([v.keep for v in views]))
            pred = self.model.reconstruct(tokens, restore)
            # one mean over all views' dropped patches = the mean over views (every view drops as many)
            reconstruction = reconstruction_loss(pred, spec.repeat(len(views), 1, 1, 1), restore.drop, self.model.patch_size, self.hparams.norm_pix_loss)
        loss = contrastive + self.hparams.recon_weight * reconstruction
        return {"loss": loss, "contrastive": contrastive, "reconstruction": reconstruction, "logit_scale": scale.detach()}

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        spec = batch["audio"]
        out = self.training_losses(spec, batch["text"], self.draw_views(len(spec)))
        if not torch.isfinite(out["loss"]):
            raise LitzooError(f"FLAP: the training loss is not finite ({float(out['loss'])}) at step {self.global_step}")
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(spec))
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # CLIP: the temperature never goes below 1/100
            self.model.logit_scale.clamp_(0, self.hparams.max_logit_scale)

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        audio, text = self.encode_audio(batch["audio"]), self.encode_text(batch["text"])
        self.log(f"{stage}/loss", self.eval_loss(audio, text, self.model.logit_scale.exp()), sync_dist=True, batch_size=len(audio))
        self._eval.append((audio, text))

    def _finish(self, stage: str) -> None:
        if not self._eval:
            return
        audio, text = (torch.cat(parts) for parts in zip(*self._eval, strict=True))
        self._eval = []
        if self.trainer.world_size > 1:
            audio, text = (self.all_gather(t).flatten(0, 1) for t in (audio, text))
        if not (torch.isfinite(audio).all() and torch.isfinite(text).all()):
            raise LitzooError(f"FLAP {stage}: the audio or text embeddings are not finite (NaN or inf), so no recall can be measured")
        for name, value in audio_text_recalls(audio, text, self.top_k).items():
            self.log(f"{stage}/{name}", value, rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self._eval = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_start(self) -> None:
        self._eval = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Normalised audio and caption embeddings (retrieval indexes, probes)."""
        return {"audio_features": self.encode_audio(batch["audio"]), "text_features": self.encode_text(batch["text"])}

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        no_decay = {n for n, p in self.named_parameters() if p.ndim < 2 or n.endswith(("bias", "logit_scale", "mask_token"))}
        optimizer = self.optimizer(split_weight_decay(self, no_decay))
        if self.lr_scheduler is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
        return {"optimizer": optimizer,
                "lr_scheduler": warmup_cosine_per_step(optimizer, int(self.trainer.estimated_stepping_batches), self.hparams.warmup_steps)}  # fmt: skip


__all__ = ["DROP_MODES", "FLAP", "FLAPNet", "audio_text_recalls", "drop_tokens", "reconstruction_loss"]
