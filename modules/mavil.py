"""MAViL: masked audio-video learners — two MAE branches, a fusion encoder, masked contrast, and stage-2 self-training.

Huang, Sharma, Xu, Ryali, Fan, Li, Li, Ghosh, Malik, Feichtenhofer, "MAViL: Masked Audio-Video Learners", NeurIPS 2023
(arXiv 2212.08071). The authors' pretraining code was not found; the released model code is the copy in AV-SUPERB,
github.com/roger-tseng/av-superb ``upstream_models/mavil/models_vitmm.py`` (``VisionTransformerMM``), ``expert.py``
(hidden states for probing) and ``util/patch_embed.py`` / ``util/pos_embed.py``, read line by line; this is our own code.

Verified against that code and followed here (state-dict names included):

* **Audio branch** (timm names): ``patch_embed`` (``Conv2d`` 16×16 patches of the ``(1, T, F)`` fbank, time-major),
  ``pos_embed`` ``(1, 1 + N_a, D)`` fixed 2-D sin-cos (``requires_grad=False``; a buffer here) whose first row is the
  class token's, ``cls_token``, ``blocks.{i}``. **Video branch**: ``patch_embed_v`` (``PatchEmbed3D_new``: one ``Conv3d``,
  tubelets ``(2, 16, 16)``, tokens in (time, row, column) order — :class:`~litzoo.framework.nn.video.TubeletEmbed`),
  ``pos_embed_v`` fixed 3-D sin-cos (``get_3d_sincos_pos_embed``: a quarter of the channels the 1-D temporal code, then
  three quarters the 2-D spatial code), ``cls_token_v``, ``blocks_v.{i}``.
* **Where masking happens** (``forward_features_av_mask``): patch embedding, plus positions, *then* per-sample random
  masking (MAE's ``random_masking``: argsort of uniform noise, small noise kept; :mod:`litzoo.framework.nn.masking`), then
  the class token (plus its position) is prepended; so every kept token keeps its own position.
* **Fusion encoder** ``blocks_av.{i}`` (2 layers in the pretrained checkpoint) runs on ``cat([cls_a, audio, cls_v, video])``
  — the concatenated (kept) tokens of both branches, class tokens included.
* **Pooling**: the mean of the modality's tokens *without* its class token; the AV feature is
  ``fc_norm_av(cat(mean audio, mean video))`` of the fusion outputs (``forward_features_av``), ``fc_norm_a`` / ``fc_norm_v``
  on the uni-modal means; ``head_av`` a linear layer on the AV feature, ``head_a`` / ``head_v`` on the uni-modal ones
  (fine-tuned checkpoints only: built by :class:`MAViLClassifier`, the fine-tuning stage).
* **Hidden states** (``expert.py``): audio / video states before every block and after the last (class token dropped),
  fusion states pooled as ``cat(mean audio, mean video)`` before every fusion block and after the last.

From the paper (text not re-read here; marked *[recall, unverified]*): high mask ratios (audio 0.8, video 0.9 — the
defaults); reconstruction of raw patches by per-modality decoders; **inter-modal** InfoNCE between pooled audio and video
encodings and **intra-modal** InfoNCE between two differently masked views of one modality; **stage 2**: a student
reconstructs, for its masked tokens, the aligned and contextualised (fusion-encoder) features a frozen stage-1 teacher
computes on the *unmasked* inputs. Loss weights and temperatures are arguments; their defaults (weights 0.1, τ = 0.1)
are our choice, not verified against the paper.

Chosen where the released code is silent (ours):

* **Contrastive features**: the uni-modal encoders' outputs (before fusion, where the other modality cannot leak in)
  of the kept tokens, mean-pooled without the class token, ``fc_norm_a`` / ``fc_norm_v``, a linear projection
  (``proj_a`` / ``proj_v``) and L2 normalisation; symmetric InfoNCE at a fixed temperature through
  :class:`~litzoo.framework.losses.contrastive.ClipLoss` (``local_loss``; under DDP the negatives are gathered from every
  rank with gradient, :func:`~litzoo.framework.losses.contrastive.gather_with_grad`, so the loss and gradient equal the
  full-batch ones). Intra-modal: view 1 is the masked input the decoders reconstruct, view 2 another random mask of the
  same clip through the uni-modal encoder only; the intra loss is the mean of the audio and video terms.
* **Decoders**: per modality an MAE decoder (``decoder_embed_{a,v}`` from the fusion outputs of that modality's kept
  tokens, a learned ``mask_token_{a,v}`` in every removed place, fixed sin-cos positions, ``decoder_blocks_{a,v}``,
  ``decoder_norm_{a,v}``, ``decoder_pred_{a,v}``); the fusion outputs pass a LayerNorm ``norm`` first (MAE's encoder
  norm; the released model deletes timm's ``norm``). Loss: MSE per patch, averaged over the **removed** patches only
  (MAE); ``norm_pix_loss`` standardises each target patch (MAE / Audio-MAE option; default off).
* **Stage 2**: the teacher is a :class:`MAViLNet` of the same architecture, frozen (no gradient, eval mode, outside the
  optimizer) and loaded either from ``teacher_checkpoint`` (a stage-1 Lightning checkpoint of this module, ``net.*``
  keys, or a bare state dict) or — without a path — **copied from this module's own network at the start of fit**
  (load stage-1 weights into ``net`` first, as ``benchmarks/mavil.py`` does; the student then starts from the teacher).
  A persistent flag makes the copy happen once, so a resumed stage-2 run keeps its teacher. Targets: the teacher's
  normed fusion outputs of every audio / video token (class tokens dropped) on the unmasked clip, each token
  standardised without affine parameters (``layer_norm``, as data2vec / MaskFeat-style feature targets; ours); the
  student's heads ``feat_pred_{a,v}`` (on its decoders' last normed states) regress them on its removed tokens only.
  Contrast keeps its weights in stage 2 (set them to 0 for pure self-training).
* Optimisation: MAE's AdamW groups and ``blr`` scaling with warm-up + cosine per step
  (:class:`~litzoo.framework.masked_modelling.BlrWarmupCosine`). Evaluation uses fixed masks (batch ``i``: a CPU generator
  seeded ``val_seed + i``), so validation losses are comparable across epochs.
* Reused from the core: :class:`~litzoo.framework.nn.vit.Block` / ``PatchEmbed``, ``TubeletEmbed``, ``patchify`` /
  ``patchify_video`` / ``normalized_pixel_target``, ``random_token_mask`` / ``gather_tokens`` / ``restore_tokens``,
  ``sincos_pos_embed_{2d,3d}``, ``masked_patch_loss``, ``ClipLoss``. Written here: :func:`info_nce` (a thin
  fixed-temperature wrapper of ``ClipLoss``).

Fine-tuning (:class:`MAViLClassifier`): ``mode="audio" | "video" | "av"``, the released heads above on unmasked inputs,
the encoder weights of a stage-1 or stage-2 checkpoint (or random initialisation); see its docstring.

Diagnostic option (not the paper's setting): ``contrast_mask_ratio_audio`` / ``contrast_mask_ratio_video`` compute the
inter-modal InfoNCE on separately drawn, less masked views (default ``None``: the reconstruction's masked inputs, as above);
``benchmarks/mavil_finetune.py`` uses it to test whether the heavy masking starves the contrast at small scale.

Probing: :meth:`MAViL.forward_features` takes a dict batch (AV feature), a ``(B, T, C, H, W)`` clip (video-only,
``fc_norm_v`` of the video encoder's mean) or a ``(B, 1, T, F)`` spectrogram (audio-only); :meth:`MAViL.forward_hidden_states`
returns ``{"audio": [...], "video": [...], "fusion": [...]}`` for :class:`litzoo.callbacks.layer_probe.LayerProbe`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim import AdamW
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from litzoo.framework.errors import LitzooError
from litzoo.framework.losses.contrastive import ClipLoss
from litzoo.framework.masked_modelling import BlrWarmupCosine
from litzoo.framework.network_args import check_network_kwargs
from litzoo.framework.nn.masking import TokenMask, gather_tokens, num_kept, random_token_mask, restore_tokens
from litzoo.framework.nn.patches import masked_patch_loss, normalized_pixel_target, patchify, patchify_video
from litzoo.framework.nn.pos_embed import sincos_pos_embed_2d, sincos_pos_embed_3d
from litzoo.framework.nn.video import TubeletEmbed
from litzoo.framework.nn.vit import Block, PatchEmbed, init_vit_weights

STAGES = (1, 2)


def info_nce(a: Tensor, b: Tensor, temperature: float, gather_distributed: bool = True) -> Tensor:
    """Symmetric InfoNCE of L2-normalised ``(B, E)`` pairs (row ``i`` of ``a`` with row ``i`` of ``b``) at a fixed temperature:
    ``½ [CE(a·bᵀ/τ, arange) + CE(b·aᵀ/τ, arange)]``; under DDP every rank's rows are contrasted with the global batch."""
    scale = torch.tensor(1.0 / temperature, dtype=a.dtype, device=a.device)
    return ClipLoss(gather_distributed=gather_distributed, local_loss=True)(a, b, scale)


def adamw_mae(params: Any, lr: float = 1e-3, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """MAE's optimizer: AdamW with betas (0.9, 0.95)."""
    return AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)


class Encoded(NamedTuple):
    """One masked (or unmasked) pass: the fusion outputs and what the losses need."""

    audio: Tensor  # (B, 1 + K_a, D) normed fusion outputs of the audio part, class token first
    video: Tensor  # (B, 1 + K_v, D)
    mask_a: TokenMask | None  # None = nothing removed
    mask_v: TokenMask | None
    pooled_a: Tensor  # (B, D) fc_norm_a of the audio encoder's mean (before fusion)
    pooled_v: Tensor  # (B, D)


class MAViLNet(nn.Module):
    """The MAViL network: audio and video ViT encoders, fusion encoder, per-modality MAE decoders, contrastive projections.

    Args:
        num_frames: frames per clip (``T`` of ``(B, T, C, H, W)``).
        video_size: square frame side.
        spec_size: ``(fbank frames, mel bins)`` of the ``(B, 1, T, F)`` spectrogram.
        in_chans: video channels.
        tubelet: ``(t, p, p)`` tubelet of the video patches (MAViL: ``(2, 16, 16)``).
        audio_patch: square audio patch side (16).
        dim, depth, num_heads: encoder width, blocks per modality, heads (ViT-B: 768, 12, 12).
        fusion_depth: fusion blocks ``blocks_av`` (pretrained checkpoint: 2).
        decoder_dim, decoder_depth, decoder_heads: each decoder *(ours: 512, 8, 16, MAE's)*.
        mlp_ratio: MLP width over the token width.
        proj_dim: width of the contrastive projections.
        pretraining: ``False`` builds the encoders, the fusion encoder and the ``fc_norm`` layers only (fine-tuning,
            :class:`MAViLClassifier`): no ``norm``, projections or decoders, whose arguments are then unused; set by the
            owning LightningModule.

    Raises:
        ValueError: bad sizes.
    """

    def __init__(
        self,
        num_frames: int,
        video_size: int,
        spec_size: tuple[int, int] | list[int],
        in_chans: int = 3,
        tubelet: tuple[int, int, int] | list[int] = (2, 16, 16),
        audio_patch: int = 16,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        fusion_depth: int = 2,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        proj_dim: int = 256,
        pretraining: bool = True,
    ) -> None:
        super().__init__()
        if min(depth, decoder_depth, proj_dim) < 1 or fusion_depth < 0:
            raise ValueError(f"depth, decoder_depth, proj_dim must be positive and fusion_depth >= 0, got {depth}, {decoder_depth}, {proj_dim}, "
                             f"{fusion_depth}")  # fmt: skip
        if dim % 16 or decoder_dim % 16:
            raise ValueError(f"dim and decoder_dim must be multiples of 16 (3-D sin-cos positions), got {dim} and {decoder_dim}")
        spec = (int(spec_size[0]), int(spec_size[1]))
        self.tubelet = tuple(int(s) for s in tubelet)
        self.audio_patch, self.dim = audio_patch, dim
        # audio branch (timm names, as the released checkpoint)
        self.patch_embed = PatchEmbed(spec, audio_patch, 1, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, self.patch_embed.grid_hw, cls_token=True)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        # video branch
        self.patch_embed_v = TubeletEmbed(num_frames, video_size, self.tubelet, in_chans, dim)
        self.cls_token_v = nn.Parameter(torch.zeros(1, 1, dim))
        pos_v = torch.cat([torch.zeros(1, dim), sincos_pos_embed_3d(dim, self.patch_embed_v.grid_size)])
        self.register_buffer("pos_embed_v", pos_v[None], persistent=False)
        self.blocks_v = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        # fusion encoder and norms
        self.blocks_av = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(fusion_depth))
        self.pretraining = pretraining
        if pretraining:
            self.norm = nn.LayerNorm(dim, eps=1e-6)  # the decoders' input norm (MAE's encoder norm)
        self.fc_norm_a = nn.LayerNorm(dim, eps=1e-6)
        self.fc_norm_v = nn.LayerNorm(dim, eps=1e-6)
        self.fc_norm_av = nn.LayerNorm(2 * dim, eps=1e-6)
        if not pretraining:
            init_vit_weights(self)
            self._init_tokens()
            return
        self.proj_a = nn.Linear(dim, proj_dim)
        self.proj_v = nn.Linear(dim, proj_dim)
        # decoders
        self.patch_dims = {"a": audio_patch * audio_patch, "v": self.tubelet[0] * self.tubelet[1] * self.tubelet[2] * in_chans}
        grids = {"a": sincos_pos_embed_2d(decoder_dim, self.patch_embed.grid_hw), "v": sincos_pos_embed_3d(decoder_dim, self.patch_embed_v.grid_size)}
        for m in ("a", "v"):
            setattr(self, f"decoder_embed_{m}", nn.Linear(dim, decoder_dim))
            setattr(self, f"mask_token_{m}", nn.Parameter(torch.zeros(1, 1, decoder_dim)))
            self.register_buffer(f"decoder_pos_embed_{m}", grids[m][None], persistent=False)
            setattr(self, f"decoder_blocks_{m}", nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio) for _ in range(decoder_depth)))
            setattr(self, f"decoder_norm_{m}", nn.LayerNorm(decoder_dim, eps=1e-6))
            setattr(self, f"decoder_pred_{m}", nn.Linear(decoder_dim, self.patch_dims[m]))
        self.decoder_dim = decoder_dim
        init_vit_weights(self)
        self._init_tokens()

    def _init_tokens(self) -> None:
        nn.init.xavier_uniform_(self.patch_embed_v.proj.weight.view(self.dim, -1))  # the Conv3d like a linear layer, as the 2-D one
        nn.init.zeros_(self.patch_embed_v.proj.bias)
        for name in ("cls_token", "cls_token_v", "mask_token_a", "mask_token_v"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=0.02)

    @property
    def num_patches(self) -> dict[str, int]:
        return {"a": self.patch_embed.num_patches, "v": self.patch_embed_v.num_patches}

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "cls_token_v", "mask_token_a", "mask_token_v"}

    # ------------------------------------------------------------------ tokens
    def _tokens(self, x: Tensor, m: str, mask: TokenMask | None) -> Tensor:
        """Patch tokens plus positions, the kept ones only, then the class token (plus its position) in front."""
        embed, pos, cls = (self.patch_embed, self.pos_embed, self.cls_token) if m == "a" else (self.patch_embed_v, self.pos_embed_v, self.cls_token_v)
        tokens = embed(x) + pos[:, 1:]
        if mask is not None:
            tokens = gather_tokens(tokens, mask.ids_keep)
        return torch.cat([(cls + pos[:, :1]).expand(len(tokens), -1, -1), tokens], dim=1)

    def encode_modality(self, x: Tensor, m: str, mask: TokenMask | None = None, states: list[Tensor] | None = None) -> Tensor:
        """``(B, 1 + K, D)`` uni-modal encoder outputs (class token first); ``states`` collects the input of every block and
        the last output, class token dropped (``expert.py``)."""
        h = self._tokens(x, m, mask)
        for block in self.blocks if m == "a" else self.blocks_v:
            if states is not None:
                states.append(h[:, 1:])
            h = block(h)
        if states is not None:
            states.append(h[:, 1:])
        return h

    def pooled(self, h: Tensor, m: str) -> Tensor:
        """``(B, D)``: ``fc_norm`` of the mean of the tokens without the class token."""
        return (self.fc_norm_a if m == "a" else self.fc_norm_v)(h[:, 1:].mean(dim=1))

    def project(self, pooled: Tensor, m: str) -> Tensor:
        """L2-normalised contrastive embedding of a pooled feature."""
        return F.normalize((self.proj_a if m == "a" else self.proj_v)(pooled), dim=-1)

    def fuse(self, h_a: Tensor, h_v: Tensor, states: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The fusion encoder on ``cat([h_a, h_v])``, split back; ``states`` collects ``cat(mean audio, mean video)``
        (class tokens dropped) before every fusion block and after the last (``expert.py``'s pooled fusion features)."""
        n_a = h_a.shape[1]
        h = torch.cat([h_a, h_v], dim=1)
        for block in self.blocks_av:
            if states is not None:
                states.append(torch.cat([h[:, 1:n_a].mean(dim=1), h[:, n_a + 1 :].mean(dim=1)], dim=-1))
            h = block(h)
        if states is not None:
            states.append(torch.cat([h[:, 1:n_a].mean(dim=1), h[:, n_a + 1 :].mean(dim=1)], dim=-1))
        return h[:, :n_a], h[:, n_a:]

    def encode(self, audio: Tensor, video: Tensor, mask_a: TokenMask | None = None, mask_v: TokenMask | None = None) -> Encoded:
        """Both encoders (on the kept tokens when masks are given), the pooled uni-modal features, the normed fusion outputs."""
        h_a, h_v = self.encode_modality(audio, "a", mask_a), self.encode_modality(video, "v", mask_v)
        f_a, f_v = self.fuse(h_a, h_v)
        return Encoded(self.norm(f_a), self.norm(f_v), mask_a, mask_v, self.pooled(h_a, "a"), self.pooled(h_v, "v"))

    def decode(self, tokens: Tensor, mask: TokenMask, m: str) -> Tensor:
        """``(B, L, decoder_dim)`` normed decoder states of every patch from the ``(B, 1 + K, D)`` fusion outputs of the kept
        ones (class token dropped before the decoder; a learned mask token in every removed place)."""
        x = restore_tokens(getattr(self, f"decoder_embed_{m}")(tokens[:, 1:]), getattr(self, f"mask_token_{m}"), mask.ids_restore)
        x = x + getattr(self, f"decoder_pos_embed_{m}")
        for block in getattr(self, f"decoder_blocks_{m}"):
            x = block(x)
        return getattr(self, f"decoder_norm_{m}")(x)

    def patches(self, x: Tensor, m: str) -> Tensor:
        """``(B, L, patch_dim)`` raw patches in token order."""
        return patchify(x, self.audio_patch) if m == "a" else patchify_video(x, self.tubelet)  # type: ignore[arg-type]

    def draw_masks(self, batch: int, ratio_a: float, ratio_v: float, generator: torch.Generator | None = None,
                   device: torch.device | None = None) -> tuple[TokenMask, TokenMask]:  # fmt: skip
        noise_a = torch.rand(batch, self.num_patches["a"], generator=generator).to(device)
        noise_v = torch.rand(batch, self.num_patches["v"], generator=generator).to(device)
        return random_token_mask(batch, self.num_patches["a"], ratio_a, noise_a), random_token_mask(batch, self.num_patches["v"], ratio_v, noise_v)


def check_recipe(who: str, blr: float | None, warmup_epochs: float, spec_size: tuple[int, int] | None) -> None:
    """The ``ValueError`` checks that pretraining (:class:`MAViL`) and fine-tuning (:class:`MAViLClassifier`) share."""
    if blr is not None and blr <= 0:
        raise ValueError(f"{who}: blr must be positive or None, got {blr}")
    if warmup_epochs < 0:
        raise ValueError(f"{who}: warmup_epochs must be >= 0, got {warmup_epochs}")
    if spec_size is not None and (len(spec_size) != 2 or min(spec_size) < 1):
        raise ValueError(f"{who}: spec_size must be (frames, mel_bins), got {spec_size!r}")


def sizes_from_data(module: L.LightningModule, stage: str, needed: str) -> dict[str, Any]:
    """Fill ``module``'s missing ``video_frames`` / ``video_size`` / ``spec_size`` hyper-parameters from the first sample of
    its Trainer's audio-video DataModule (the split ``stage`` reads); returns that sample."""
    who = type(module).__name__
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if datamodule is None or not hasattr(datamodule, "dataset"):
        raise LitzooError(f"{who}: give {needed}, or train with an audio-video DataModule")
    item = datamodule.dataset("train" if stage == "fit" else datamodule.stage_splits(stage)[0])[0]
    video, audio = item["video"], item["audio"]
    if video.dim() != 4 or audio.dim() != 3 or video.shape[-1] != video.shape[-2]:
        raise LitzooError(f"{who}: expected square (T, C, H, W) frames and (1, T, F) spectrograms, got {tuple(video.shape)} and {tuple(audio.shape)}")
    hp = module.hparams
    hp["video_frames"] = hp.video_frames or int(video.shape[0])
    hp["video_size"] = hp.video_size or int(video.shape[-1])
    hp["spec_size"] = tuple(hp.spec_size or (int(audio.shape[-2]), int(audio.shape[-1])))
    return item


class MAViL(BlrWarmupCosine, L.LightningModule):
    """MAViL pretraining on audio-visual batches ``{"video": (B, T, C, H, W), "audio": (B, 1, T_a, F), ...}``
    (:mod:`litzoo.datamodules.audio_video`); see the module docstring for what is verified and what is chosen.

    Loss: ``L = rec_a + rec_v + inter_weight · InfoNCE(a, v) + intra_weight · ½ [InfoNCE(a¹, a²) + InfoNCE(v¹, v²)]`` with
    ``rec_m`` the masked-patch MSE of raw (stage 1) or teacher-feature (stage 2) targets. Logged: ``{stage}/loss``,
    ``{stage}/rec_audio``, ``{stage}/rec_video``, ``{stage}/inter``, ``{stage}/intra`` and ``{stage}/av_r1`` (audio→video
    top-1 retrieval within the batch, unmasked pooled features).

    Args:
        stage: 1 (raw reconstruction + contrast) or 2 (self-training against a frozen teacher).
        mask_ratio_audio, mask_ratio_video: fractions of patches removed *(paper: 0.8 / 0.9 [recall])*.
        inter_weight, intra_weight: weights of the inter- and intra-modal InfoNCE (0 switches a term off).
        inter_temperature, intra_temperature: their fixed temperatures.
        norm_pix_loss: stage 1 targets standardised per patch.
        contrast_mask_ratio_audio, contrast_mask_ratio_video: **diagnostic ablation, not the paper's setting** — ``None``
            (default): the inter-modal InfoNCE uses the pooled encodings of the reconstruction's masked inputs (as
            described above); a ratio in ``[0, 1)`` computes it instead on another random mask of that modality removing
            that fraction (0: the whole input), drawn after the reconstruction and intra-modal masks (which stay as they
            are). ``benchmarks/mavil_finetune.py`` uses it to test whether the heavy masking starves the contrast.
        teacher_checkpoint: stage 2: a stage-1 checkpoint of this module (or a state dict of :class:`MAViLNet`); ``None``:
            the teacher is a copy of this module's network at the start of fit.
        video_frames, video_size, spec_size: input sizes (``None``: read from the DataModule's first training item).
        blr, warmup_epochs: MAE's ``lr = blr · batch / 256`` (``None`` keeps the optimizer's lr) and warm-up epochs.
        val_seed: seed of the fixed evaluation masks.
        optimizer, lr_scheduler: factories (default AdamW, MAE's betas (0.9, 0.95) and weight decay 0.05).
        **net_kwargs: :class:`MAViLNet`'s architecture arguments.

    Raises:
        ValueError: bad arguments.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        stage: int = 1,
        mask_ratio_audio: float = 0.8,
        mask_ratio_video: float = 0.9,
        inter_weight: float = 0.1,
        intra_weight: float = 0.1,
        inter_temperature: float = 0.1,
        intra_temperature: float = 0.1,
        norm_pix_loss: bool = False,
        contrast_mask_ratio_audio: float | None = None,
        contrast_mask_ratio_video: float | None = None,
        teacher_checkpoint: str | None = None,
        video_frames: int | None = None,
        video_size: int | None = None,
        spec_size: tuple[int, int] | None = None,
        blr: float | None = None,
        warmup_epochs: float = 1.0,
        val_seed: int = 0,
        optimizer: OptimizerCallable = adamw_mae,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(MAViLNet, net_kwargs, type(self).__name__, set_by_owner=("num_frames", "video_size", "spec_size", "pretraining"))
        if stage not in STAGES:
            raise ValueError(f"MAViL: stage must be 1 or 2, got {stage!r}")
        for name, value in (("mask_ratio_audio", mask_ratio_audio), ("mask_ratio_video", mask_ratio_video)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"MAViL: {name} must be in (0, 1), got {value}")
        for name, value in (("contrast_mask_ratio_audio", contrast_mask_ratio_audio), ("contrast_mask_ratio_video", contrast_mask_ratio_video)):
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"MAViL: {name} must be None or in [0, 1), got {value}")
        if min(inter_weight, intra_weight) < 0 or min(inter_temperature, intra_temperature) <= 0:
            raise ValueError(f"MAViL: contrast weights must be >= 0 and temperatures > 0, got {inter_weight}, {intra_weight}, "
                             f"{inter_temperature}, {intra_temperature}")  # fmt: skip
        if teacher_checkpoint is not None and stage != 2:
            raise ValueError("MAViL: teacher_checkpoint is for stage 2 only")
        check_recipe("MAViL", blr, warmup_epochs, spec_size)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer, self.lr_scheduler, self.blr, self.warmup_epochs = optimizer, lr_scheduler, blr, warmup_epochs
        self.net_kwargs = net_kwargs
        self.net: MAViLNet | None = None
        self.teacher: MAViLNet | None = None
        # set once the teacher holds its weights (persistent: a resumed stage-2 run does not copy again)
        self.register_buffer("teacher_ready", torch.zeros((), dtype=torch.bool))
        if video_frames is not None and video_size is not None and spec_size is not None:
            self.build()

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        hp = self.hparams
        self.net = MAViLNet(hp.video_frames, hp.video_size, tuple(hp.spec_size), pretraining=True, **self.net_kwargs)
        num_kept(self.net.num_patches["a"], hp.mask_ratio_audio)  # a ValueError when a ratio keeps no patch
        num_kept(self.net.num_patches["v"], hp.mask_ratio_video)
        for m, ratio in (("a", hp.contrast_mask_ratio_audio), ("v", hp.contrast_mask_ratio_video)):
            if ratio is not None:
                num_kept(self.net.num_patches[m], ratio)
        if hp.stage == 2:
            dim, dec = self.net.dim, self.net.decoder_dim
            self.feat_pred_a, self.feat_pred_v = nn.Linear(dec, dim), nn.Linear(dec, dim)
            self.teacher = MAViLNet(hp.video_frames, hp.video_size, tuple(hp.spec_size), pretraining=True, **self.net_kwargs)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            if hp.teacher_checkpoint is not None:
                self.load_teacher(hp.teacher_checkpoint)

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        sizes_from_data(self, stage, "video_frames, video_size and spec_size")
        self.build()

    def _net(self) -> MAViLNet:
        if self.net is None:
            raise RuntimeError("MAViL has no network yet: give video_frames, video_size and spec_size, or run setup() with a DataModule")
        return self.net

    def load_teacher(self, source: str | Path | dict[str, Tensor] | MAViLNet) -> None:
        """Fill the stage-2 teacher from a stage-1 checkpoint path, a state dict (``net.*`` keys or bare) or a network."""
        if self.teacher is None:
            raise RuntimeError("MAViL.load_teacher: only a built stage-2 module has a teacher")
        if isinstance(source, MAViLNet):
            state = source.state_dict()
        elif isinstance(source, dict):
            state = source
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise LitzooError(f"MAViL: teacher checkpoint {path} does not exist")
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # a file torch cannot read
                reason = " ".join(str(error).split())[:200]  # one line
                raise LitzooError(f"MAViL: teacher checkpoint {path} is not a torch checkpoint ({type(error).__name__}: {reason})") from error
            state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
            if not isinstance(state, dict):
                raise LitzooError(f"MAViL: teacher checkpoint {path} holds no state dict")
        if any(key.startswith("net.") for key in state):
            state = {key[4:]: value for key, value in state.items() if key.startswith("net.")}
        try:
            self.teacher.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            where = source if isinstance(source, str | Path) else "the given weights"
            raise LitzooError(f"MAViL: teacher weights from {where} do not fit this architecture: {' '.join(first[:2])[:300]}") from error
        self.teacher.requires_grad_(False)
        self.teacher_ready.fill_(True)

    def on_fit_start(self) -> None:
        if self.hparams.stage == 2 and not bool(self.teacher_ready):
            self.load_teacher(copy.deepcopy(self._net()))  # the documented "own weights" teacher

    def train(self, mode: bool = True) -> MAViL:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher is always in eval mode
        return self

    # ------------------------------------------------------------------ targets and losses
    @torch.no_grad()
    def teacher_targets(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 2: ``(B, N_a, D)``, ``(B, N_v, D)`` — the frozen teacher's normed fusion outputs on the **unmasked** clip,
        class tokens dropped, each token standardised (no affine)."""
        if self.teacher is None:
            raise RuntimeError("MAViL.teacher_targets is for stage 2")
        out = self.teacher.encode(audio, video)
        return F.layer_norm(out.audio[:, 1:], (out.audio.shape[-1],)), F.layer_norm(out.video[:, 1:], (out.video.shape[-1],))

    def targets(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        if self.hparams.stage == 2:
            return self.teacher_targets(audio, video)
        net = self._net()
        t_a, t_v = net.patches(audio, "a"), net.patches(video, "v")
        if self.hparams.norm_pix_loss:
            t_a, t_v = normalized_pixel_target(t_a), normalized_pixel_target(t_v)
        return t_a, t_v

    def predict_masked(self, enc: Encoded) -> tuple[Tensor, Tensor]:
        """``(B, N_m, target_dim)`` predictions of every token of each modality from a masked pass."""
        net = self._net()
        d_a, d_v = net.decode(enc.audio, enc.mask_a, "a"), net.decode(enc.video, enc.mask_v, "v")  # type: ignore[arg-type]
        if self.hparams.stage == 2:
            return self.feat_pred_a(d_a), self.feat_pred_v(d_v)
        return net.decoder_pred_a(d_a), net.decoder_pred_v(d_v)

    def contrast_embedding(self, x: Tensor, m: str, ratio: float, generator: torch.Generator | None = None) -> Tensor:
        """The diagnostic contrast view: the projected pooled uni-modal encoding of ``x`` under a fresh random mask removing
        ``ratio`` of the patches (0: unmasked; no noise is drawn then)."""
        net = self._net()
        mask = None
        if ratio > 0:
            length = net.num_patches[m]
            noise = torch.rand(len(x), length, generator=generator).to(x.device)
            mask = random_token_mask(len(x), length, ratio, noise)
        return net.project(net.pooled(net.encode_modality(x, m, mask), m), m)

    def losses(self, audio: Tensor, video: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """All loss terms of one batch (two masks per modality drawn from ``generator`` or the global RNG)."""
        net, hp = self._net(), self.hparams
        batch = len(audio)
        mask_a, mask_v = net.draw_masks(batch, hp.mask_ratio_audio, hp.mask_ratio_video, generator, audio.device)
        enc = net.encode(audio, video, mask_a, mask_v)
        pred_a, pred_v = self.predict_masked(enc)
        target_a, target_v = self.targets(audio, video)
        out = {"rec_audio": masked_patch_loss(pred_a, target_a, mask_a.drop), "rec_video": masked_patch_loss(pred_v, target_v, mask_v.drop)}
        z_a, z_v = net.project(enc.pooled_a, "a"), net.project(enc.pooled_v, "v")
        if hp.intra_weight > 0:
            mask_a2, mask_v2 = net.draw_masks(batch, hp.mask_ratio_audio, hp.mask_ratio_video, generator, audio.device)
            z_a2 = net.project(net.pooled(net.encode_modality(audio, "a", mask_a2), "a"), "a")
            z_v2 = net.project(net.pooled(net.encode_modality(video, "v", mask_v2), "v"), "v")
            out["intra"] = (info_nce(z_a, z_a2, hp.intra_temperature) + info_nce(z_v, z_v2, hp.intra_temperature)) / 2
        else:
            out["intra"] = z_a.new_zeros(())
        if hp.inter_weight > 0:  # the contrast views' masks (diagnostic option) are drawn last: the other masks do not move
            ratio_a, ratio_v = hp.contrast_mask_ratio_audio, hp.contrast_mask_ratio_video
            c_a = z_a if ratio_a is None else self.contrast_embedding(audio, "a", ratio_a, generator)
            c_v = z_v if ratio_v is None else self.contrast_embedding(video, "v", ratio_v, generator)
            out["inter"] = info_nce(c_a, c_v, hp.inter_temperature)
        else:
            out["inter"] = z_a.new_zeros(())
        out["loss"] = out["rec_audio"] + out["rec_video"] + hp.inter_weight * out["inter"] + hp.intra_weight * out["intra"]
        return out

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.losses(batch["audio"], batch["video"])
        if not torch.isfinite(out["loss"]):
            raise LitzooError(f"MAViL: non-finite training loss {out['loss'].item()} at step {self.global_step}")
        for key, value in out.items():
            self.log(f"train/{key}", value, prog_bar=key == "loss", batch_size=len(batch["audio"]))
        return out["loss"]

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        audio, video = batch["audio"], batch["video"]
        out = self.losses(audio, video, torch.Generator().manual_seed(self.hparams.val_seed + batch_idx))
        if not torch.isfinite(out["loss"]):
            raise LitzooError(f"MAViL: non-finite {stage} loss {out['loss'].item()}")
        size = len(audio)
        for key, value in out.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "loss", sync_dist=True, batch_size=size)
        net = self._net()
        z_a = net.project(net.pooled(net.encode_modality(audio, "a"), "a"), "a")
        z_v = net.project(net.pooled(net.encode_modality(video, "v"), "v"), "v")
        hits = ((z_a @ z_v.T).argmax(dim=1) == torch.arange(size, device=audio.device)).float().mean()
        self.log(f"{stage}/av_r1", hits, sync_dist=True, batch_size=size)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    # ------------------------------------------------------------------ features for probes
    def forward(self, audio: Tensor, video: Tensor) -> Tensor:
        """``(B, 2D)`` AV feature of unmasked inputs: ``fc_norm_av(cat(mean audio, mean video))`` of the fusion outputs
        (``forward_features_av``; before the ``norm`` used by the decoders, as the released model)."""
        net = self._net()
        f_a, f_v = net.fuse(net.encode_modality(audio, "a"), net.encode_modality(video, "v"))
        return net.fc_norm_av(torch.cat([f_a[:, 1:].mean(dim=1), f_v[:, 1:].mean(dim=1)], dim=-1))

    def forward_features(self, inputs: dict[str, Tensor] | Tensor) -> Tensor:
        """Pooled features of unmasked inputs: a dict batch → the AV feature (:meth:`forward`); a ``(B, T, C, H, W)``
        clip → ``fc_norm_v`` of the video encoder's mean; a ``(B, 1, T, F)`` spectrogram → ``fc_norm_a`` of the audio
        encoder's mean (uni-modal, no fusion: what the paper's audio-only / video-only evaluations use)."""
        net = self._net()
        if isinstance(inputs, dict):
            return self(inputs["audio"], inputs["video"])
        if inputs.dim() == 5:
            return net.pooled(net.encode_modality(inputs, "v"), "v")
        if inputs.dim() == 4:
            return net.pooled(net.encode_modality(inputs, "a"), "a")
        raise LitzooError(f"MAViL.forward_features: expected a dict batch, (B, T, C, H, W) clips or (B, 1, T, F) spectrograms, got {tuple(inputs.shape)}")

    def forward_hidden_states(self, batch: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """AV-SUPERB's hidden states (``expert.py``): ``audio`` / ``video`` — ``(B, N, D)`` before every encoder block and
        after the last (class token dropped; depth + 1 states); ``fusion`` — ``(B, 2D)`` ``cat(mean audio, mean video)``
        before every fusion block and after the last (fusion_depth + 1 states)."""
        net = self._net()
        states: dict[str, list[Tensor]] = {"audio": [], "video": [], "fusion": []}
        h_a = net.encode_modality(batch["audio"], "a", states=states["audio"])
        h_v = net.encode_modality(batch["video"], "v", states=states["video"])
        net.fuse(h_a, h_v, states=states["fusion"])
        return states

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.forward_features(batch)


# ---------------------------------------------------------------------------------------------------- fine-tuning
MODES = ("audio", "video", "av")
#: the encoder parts (first state-dict name component) each fine-tuning mode trains; the rest stays frozen and unused
MODE_PARTS = {
    "audio": ("patch_embed", "cls_token", "blocks", "fc_norm_a"),
    "video": ("patch_embed_v", "cls_token_v", "blocks_v", "fc_norm_v"),
    "av": ("patch_embed", "cls_token", "blocks", "patch_embed_v", "cls_token_v", "blocks_v", "blocks_av", "fc_norm_av"),
}


class MAViLClassifier(BlrWarmupCosine, L.LightningModule):
    """MAViL fine-tuning: the pretrained encoders with the released model's classification heads, on audio-visual batches
    ``{"video": (B, T, C, H, W), "audio": (B, 1, T_a, F), "label": ...}`` (:mod:`litzoo.datamodules.audio_video`).

    Heads, as ``VisionTransformerMM`` (AV-SUPERB's ``models_vitmm.py``, read line by line) names and feeds them:

    * ``mode="audio"``: ``head_a(fc_norm_a(mean audio))`` — the audio encoder's outputs without its class token
      (``forward_features_a``; no fusion);
    * ``mode="video"``: ``head_v(fc_norm_v(mean video))`` — the video encoder alone (the released uni-modal model
      computes both heads on the two encoders; here one mode, one head);
    * ``mode="av"``: ``head_av(fc_norm_av(cat(mean audio, mean video)))`` of the fusion encoder's outputs on
      ``cat([cls_a, audio, cls_v, video])``, class tokens dropped from the means (``forward_features_av`` with ``av_fusion``).

    No masking at fine-tuning (the released ``forward`` masks only when given mask probabilities; default 0). The network
    is :class:`MAViLNet` with ``pretraining=False`` (no ``norm``, projections or decoders); the encoder parts the mode does
    not use are frozen (``requires_grad=False``, outside the optimizer; DDP needs no unused-parameter search). Head weights
    start from a truncated normal of std 2e-5 and zero bias (MAE's ``main_finetune.py`` *[recall, unverified]*).

    Task: ``multi_label=True`` (default; the audio-video DataModules' multi-hot ``(B, C)`` labels, AudioSet-style):
    sigmoid BCE, ``{stage}/mAP`` macro average precision (torchmetrics ``MultilabelAveragePrecision``, targets binarised
    at 0.5), the checkpoint monitor ``val/mAP``; ``multi_label=False``: cross-entropy on ``(B,)`` class indices or one-hot
    ``(B, C)`` rows, ``{stage}/acc`` top-1, monitor ``val/acc``.

    Args:
        mode: ``"audio"``, ``"video"`` or ``"av"``.
        num_classes: outputs (``None``: the DataModule's ``num_classes``, else its first training item's label width).
        multi_label: BCE + mAP instead of cross-entropy + top-1.
        pretrained: a stage-1 or stage-2 :class:`MAViL` checkpoint (``.ckpt``, ``net.*`` keys; a stage-2 file's teacher and
            feature heads are ignored) or a bare :class:`MAViLNet` state dict, whose encoder weights (every key of this
            network) initialise this one; ``None``: random initialisation.
        video_frames, video_size, spec_size: input sizes (``None``: read from the DataModule's first training item).
        blr, warmup_epochs: MAE's ``lr = blr · batch / 256`` (``None`` keeps the optimizer's lr) and warm-up epochs.
        optimizer, lr_scheduler: factories (default AdamW, MAE's betas (0.9, 0.95) and weight decay 0.05).
        **net_kwargs: :class:`MAViLNet`'s architecture arguments (must match the pretrained encoder; the decoder and
            projection arguments are accepted, so a stage-1 config's network block can be reused, and unused).

    Raises:
        ValueError: bad arguments.
    """

    def __init__(
        self,
        mode: str = "av",
        num_classes: int | None = None,
        multi_label: bool = True,
        pretrained: str | None = None,
        video_frames: int | None = None,
        video_size: int | None = None,
        spec_size: tuple[int, int] | None = None,
        blr: float | None = None,
        warmup_epochs: float = 1.0,
        optimizer: OptimizerCallable = adamw_mae,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(MAViLNet, net_kwargs, type(self).__name__, set_by_owner=("num_frames", "video_size", "spec_size", "pretraining"))
        if mode not in MODES:
            raise ValueError(f"MAViLClassifier: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1 or (not multi_label and num_classes < 2)):
            raise ValueError(f"MAViLClassifier: num_classes must be a positive integer (at least 2 single-label) or None, got {num_classes!r}")
        check_recipe("MAViLClassifier", blr, warmup_epochs, spec_size)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer, self.lr_scheduler, self.blr, self.warmup_epochs = optimizer, lr_scheduler, blr, warmup_epochs
        self.net_kwargs = net_kwargs
        self.monitor, self.monitor_mode = ("val/mAP" if multi_label else "val/acc"), "max"
        self.net: MAViLNet | None = None
        if num_classes is not None and video_frames is not None and video_size is not None and spec_size is not None:
            self.build()

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        hp = self.hparams
        self.net = MAViLNet(hp.video_frames, hp.video_size, tuple(hp.spec_size), pretraining=False, **self.net_kwargs)
        width = 2 * self.net.dim if hp.mode == "av" else self.net.dim
        head = nn.Linear(width, hp.num_classes)
        nn.init.trunc_normal_(head.weight, std=2e-5)
        nn.init.zeros_(head.bias)
        self.head_name = {"audio": "head_a", "video": "head_v", "av": "head_av"}[hp.mode]
        setattr(self, self.head_name, head)
        used = MODE_PARTS[hp.mode]
        for name, parameter in self.net.named_parameters():
            parameter.requires_grad_(name.split(".")[0] in used)
        make = (lambda: MultilabelAveragePrecision(hp.num_classes, average="macro")) if hp.multi_label else (lambda: MulticlassAccuracy(hp.num_classes))
        self.metrics = nn.ModuleDict({stage: make() for stage in ("val", "test")})
        if hp.pretrained is not None:
            self.load_pretrained(hp.pretrained)

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        item = sizes_from_data(self, stage, "num_classes, video_frames, video_size and spec_size")
        datamodule = self.trainer.datamodule
        self.hparams["num_classes"] = self.hparams.num_classes or int(getattr(datamodule, "num_classes", None) or item["label"].shape[-1])
        self.build()

    def _net(self) -> MAViLNet:
        if self.net is None:
            raise RuntimeError("MAViLClassifier has no network yet: give num_classes, video_frames, video_size and spec_size, or run setup() "
                               "with a DataModule")  # fmt: skip
        return self.net

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Copy every encoder weight of this network from a :class:`MAViL` checkpoint (or a bare :class:`MAViLNet` state
        dict) at ``path``; returns the keys copied. One-line :class:`LitzooError` naming the file and the missing or
        mismatched keys."""
        net, path = self._net(), Path(path).expanduser()
        if not path.is_file():
            raise LitzooError(f"MAViLClassifier: pretrained checkpoint {path} does not exist")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a file torch cannot read
            reason = " ".join(str(error).split())[:200]  # one line
            raise LitzooError(f"MAViLClassifier: pretrained checkpoint {path} is not a torch checkpoint ({type(error).__name__}: {reason})") from error
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
        if not isinstance(state, dict):
            raise LitzooError(f"MAViLClassifier: pretrained checkpoint {path} holds no state dict")
        if any(str(key).startswith("net.") for key in state):
            state = {key[4:]: value for key, value in state.items() if key.startswith("net.")}
        own = net.state_dict()
        missing = [key for key in own if key not in state]
        mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}" for key in own
                      if key in state and (not isinstance(state[key], Tensor) or state[key].shape != own[key].shape)]  # fmt: skip
        if missing or mismatched:
            problems = ([f"{len(missing)} missing encoder keys ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"] if missing else []) + (
                [f"{len(mismatched)} mismatched shapes ({'; '.join(mismatched[:3])})"] if mismatched else [])  # fmt: skip
            raise LitzooError(f"MAViLClassifier: {path} is not a MAViL checkpoint of this architecture: {' and '.join(problems)}")
        net.load_state_dict({key: state[key] for key in own}, strict=True)
        return list(own)

    # ------------------------------------------------------------------ forward
    def features(self, audio: Tensor | None, video: Tensor | None) -> Tensor:
        """The head's input on unmasked clips: ``fc_norm_a`` / ``fc_norm_v`` of the encoder's mean, or ``fc_norm_av`` of
        ``cat(mean audio, mean video)`` of the fusion outputs (class tokens dropped)."""
        net, mode = self._net(), self.hparams.mode
        if mode == "audio":
            return net.pooled(net.encode_modality(audio, "a"), "a")  # type: ignore[arg-type]
        if mode == "video":
            return net.pooled(net.encode_modality(video, "v"), "v")  # type: ignore[arg-type]
        f_a, f_v = net.fuse(net.encode_modality(audio, "a"), net.encode_modality(video, "v"))  # type: ignore[arg-type]
        return net.fc_norm_av(torch.cat([f_a[:, 1:].mean(dim=1), f_v[:, 1:].mean(dim=1)], dim=-1))

    def forward(self, audio: Tensor | None, video: Tensor | None) -> Tensor:
        """``(B, num_classes)`` logits (``audio`` or ``video`` may be ``None`` when the mode does not read it)."""
        return getattr(self, self.head_name)(self.features(audio, video))

    def target(self, label: Tensor) -> Tensor:
        if self.hparams.multi_label:
            if label.dim() != 2 or label.shape[-1] != self.hparams.num_classes:
                raise LitzooError(f"MAViLClassifier: multi_label expects (B, {self.hparams.num_classes}) multi-hot labels, got {tuple(label.shape)}")
            return label.float()
        if label.dim() == 1:
            return label.long()
        if label.dim() != 2 or not bool(((label == 0) | (label == 1)).all() and (label.sum(dim=1) == 1).all()):
            raise LitzooError(f"MAViLClassifier: single-label expects (B,) class indices or one-hot (B, C) rows, got {tuple(label.shape)} "
                              "with rows that are not one-hot (use multi_label: true)")  # fmt: skip
        return label.argmax(dim=1)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.hparams.multi_label:
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        target = self.target(batch["label"])
        loss = self.loss(self(batch.get("audio"), batch.get("video")), target)
        if not torch.isfinite(loss):
            raise LitzooError(f"MAViLClassifier: non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(target))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        logits, target = self(batch.get("audio"), batch.get("video")), self.target(batch["label"])
        size = len(target)
        self.log(f"{stage}/loss", self.loss(logits, target), sync_dist=True, batch_size=size)
        metric = self.metrics[stage]
        metric.update(logits, (target > 0.5).long() if self.hparams.multi_label else target)
        self.log(f"{stage}/{'mAP' if self.hparams.multi_label else 'acc'}", metric, prog_bar=stage == "val", batch_size=size)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch.get("audio"), batch.get("video"))


__all__ = ["MODES", "STAGES", "MAViL", "MAViLClassifier", "MAViLNet", "info_nce"]
