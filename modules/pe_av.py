"""PE-AV: the audio-visual Perception Encoder's towers (small, or the release's), modality alignment and per-pairing heads.

The audio-visual Perception Encoder (PE-AV; Meta FAIR, 2025: PE-A / PE-AV with PE-A-Frame; notes
``ssl_multimodal.md`` §14). Official code: facebookresearch/perception_models ``core/audio_visual_encoder/``
(``pe.py`` ``PEAudioVisual`` / ``AudioVisualEncoder`` / ``AudioEncoder`` / ``VisualEncoder`` / ``AVTransformer``,
``aligner.py``, ``config.py``, ``transformer.py``). The release holds inference code only: no training loop, no loss.

Verified against the official code and kept (with the official parameter names, so that :func:`official_pe_av_key_map`
is a selection rather than a renaming):

* the audio branch ``audio_visual_model.audio_model``: frame features → ``data_proj`` (Linear) → ``audio_transformer``
  (a class token first; its final state is the pooled output, the other states the per-frame sequence);
* the video branch ``audio_visual_model.visual_model``: a per-frame image encoder ``pe_encoder`` (PE-Core's vision tower in
  the release) whose frame embeddings are **L2-normalised**, → ``proj`` (Linear without bias) → ``data_proj`` (Linear) →
  ``visual_transformer``;
* the fusion ``audio_visual_model.audio_visual_transformer`` (``AVTransformer``): ``modality_aligner``
  (:class:`~litzoo.framework.nn.av_heads.AlignModalities`: the video sequence through a 1×1 conv, resampled by nearest
  interpolation to the **audio** frame count, LayerNorm), ``[audio; aligned video]`` → ``concat_modality_proj``
  (Linear 2D → D) → ``data_proj`` (Linear D → D) → its transformer, under the audio's mask;
* the text tower ``text_model`` and the eight :class:`~litzoo.framework.nn.av_heads.ContrastiveHead` (LayerNorm eps 1e-6 +
  bias-free Linear) with the official names and inputs (``framework/nn/av_heads.py`` ``PE_AV_HEADS``).

The towers (``tower``): ``"official"`` builds the release's audio, visual and fusion transformers
(:class:`~litzoo.framework.nn.rope_transformer.RopeTransformer`, checked there against a transcription of
``core/audio_visual_encoder/transformer.py`` / ``patcher.py``): class token → ResNet-1d block over time (masked one-group
GroupNorm, SiLU, kernel-3 conv, twice, residual) → pre-norm layers of RMSNorm (eps 1e-5), QK-normed attention with 1-D
interleaved RoPE of base ``max(10000, 2 · max_position_embeddings)`` and a bias-free SwiGLU of ``intermediate_size`` →
RMSNorm → bias-free ``output``; no learned positions. With ``audio_features="dac_vae"`` the audio is a waveform through the
release's frozen DAC-VAE encoder (:mod:`litzoo.framework.nn.dac_vae`: Snake residual units, strides 2·8·10·12 at 48 kHz →
25 Hz, the VAE mean's 128 channels). Under these options every key of the release's three transformers and of its codec
loads (:func:`load_pe_av_shared_weights`). ``"small"`` (the default, the configuration benchmarked) keeps litzoo's pre-norm
ViT blocks with learned positions (:class:`SequenceTransformer`: class token, positions, blocks, final LayerNorm, the
official bias-free ``output`` Linear), into which only a release's class tokens and ``output`` Linears load.

The per-frame encoder (``frame_encoder``): ``"pe_core"`` is the release's, PE-Core's vision tower
(:class:`~litzoo.framework.nn.pe_core.PECoreVision`; ``VisualEncoder`` builds ``CLIP.from_config("PE-Core-L14-336").visual``,
``pe_core_config="PE-Core-L14-336"`` here): every frame of the ``(B · T, C, H, W)`` batch through ``conv1`` → class token →
positions (resampled to the frame grid) → ``ln_pre`` → blocks with RoPE-2D → ``ln_post`` → attention pool → ``@ proj``, the
pooled projection (1024 wide for L14) L2-normalised before ``proj``; the release's ``visual_model.pe_encoder.*`` keys then load
through :func:`~litzoo.framework.nn.pe_core.convert_pe_vision_state`. The release's frames are resized to the layout's image
size (336) and normalised by mean = std = 0.5 (``transforms.py`` ``VideoProcessor``), 16 evenly spaced with
``fixed_len_video``; litzoo takes frames as the datamodule gives them. ``"small"`` (the default) is a small
:class:`~litzoo.framework.nn.vit.VisionTransformer` (class token pooled), into which no release key loads.

Padding masks as the release's (``PEAudioVisual.forward``'s ``padding_mask`` / ``padding_mask_videos``): the audio mask at the
input's rate becomes the audio tower's step mask (every ``hop``-th entry), the video mask goes to the visual tower, the
aligner resamples each row's real frames to its real audio steps, and the fusion tower runs under the audio's mask. Ours where
the release would fail: the aligned video is cut or zero-padded to the audio's padded length when no row fills it (the
release's ``torch.cat`` needs them equal); shorter clips than ``audio_frames`` / ``num_frames`` are accepted unpadded.

The text tower (``text_tower``): ``"modernbert"`` is the release's, ``transformers.ModernBertModel`` (``PEAudioVisual``
builds ``AutoModel.from_config(ModernBertConfig(**DFLT_TEXT_ENCODER_CONFIG))``: ModernBERT-large's layout, 28 layers of width
1024, 16 heads, GeGLU of 2624, global attention every third layer with RoPE base 160000, the others a 128-token window with
base 10000; :data:`PE_AV_TEXT_CONFIG`, the sizes overridable), pooled as the release's ``_get_text_output``: the model runs
with ``output_hidden_states`` and the pooled text is ``hidden_states[nth_text_layer][:, 0]``, the state of the **first token**
after the first ``nth_text_layer`` (22) layers (index 0 is the embeddings' output; no final norm before the last layer;
``nth_text_layer=None`` takes ``last_hidden_state``, after ``final_norm``), which feeds the three text heads and the two
media+text heads; the layers past it run but get no gradient, as in the release. The release's tokenizer
(``AutoTokenizer`` of the checkpoint, not stored offline) writes ``[CLS] words [SEP]``; the data's word vocabulary
(:class:`~litzoo.framework.text.vocabulary.WordVocabulary`: ``[PAD]`` = 0, ``[UNK]`` = 1, ``[MASK]`` = 2, no class or separator
token) is extended by two ids, ``[CLS]`` = ``vocab_size`` (also BOS) and ``[SEP]`` = ``vocab_size + 1`` (also EOS), which
:func:`add_cls_sep` puts around every caption (``[PAD]`` = 0 stays the padding id), so that the pooled state is a class token's.
Every ``text_model.*`` key of a release state dict then loads (``transformers`` is the optional extra ``text``, imported only
with this option; a release's own 50368-id tokenizer is not the word vocabulary, so its embedding table loads only into a
net whose ``vocab_size + 2`` is 50368). ``"small"`` (the default, benchmarked) is a small bidirectional
:class:`~litzoo.framework.nn.text_encoder.TransformerTextEncoder` of the towers' width pooled by the **masked mean**, into
which no release key loads.

Replaced by default (no weights are loadable offline): the DAC-VAE codec features by Kaldi fbank **time strips**
(``audio_patch_frames`` frames × all mel bins, one step each, so the audio stays a time sequence the video can be aligned
to). A release's ``text_model.*`` keys are left out unless ``text_tower="modernbert"``, and its
``visual_model.pe_encoder.*`` keys unless ``frame_encoder="pe_core"``.

PE-A-Frame (the release's ``PEAudioFrame``: a text query against every audio frame, sound-event spans) is
:class:`PEAudioFrameNet`: the same audio branch and text tower, a ``text_head`` and an ``audio_head`` applied to each frame state,
frame logits ``<audio frame, text> · logit_scale + logit_bias`` (no normalisation, no exponential) and the runs of frames whose
sigmoid exceeds 0.3 (:func:`frame_spans`); network and release weights only (the release has no training code, and the
synthetic clips no frame labels).

Chosen where the release is silent: the objectives (``framework/nn/av_heads.py`` ``PE_AV_PAIRINGS``: audio–text,
visual–text, audio_visual–text, audio–visual, visual+text→audio, audio+text→visual), each weighted by ``pair_weights``
(0 turns one off) and each with its **own** learned temperature (``logit_scale.<pair>``, CLIP's ``ln(1/0.07)``; SigLIP's
``ln 10`` and bias ``−10`` with ``objective="sigmoid"``); the loss is their weighted sum. Validation logs, per pairing, the
recall@K of both retrieval directions over the whole validation split (``val/<pair>/<x>_to_<y>_R@K``) and their mean
(``val/<pair>/R@K``); the checkpoint monitor is ``val/audio_visual_text/R@1``. Defaults (ours): width 64, 2-layer towers
of 4 heads, joint space 64, AdamW 1e-3; ``intermediate_size`` of the official towers ``round(mlp_ratio · dim)`` unless given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.optim import AdamW

from litzoo.framework.checkpoints import load_checkpoint, load_state_dict_checked, register_official_key_map, unwrap_state_dict
from litzoo.framework.errors import LitzooError
from litzoo.framework.losses.contrastive import ClipLoss
from litzoo.framework.nn.av_heads import (
    OBJECTIVES,
    PE_AV_HEADS,
    PE_AV_PAIRINGS,
    AlignModalities,
    ContrastiveHead,
    clip_pair_loss,
    sigmoid_pair_loss,
)
from litzoo.framework.nn.dac_vae import DacEncoderVAE
from litzoo.framework.nn.pe_core import PE_CORE_CONFIGS, PE_CORE_VISION, PECoreVision, convert_pe_vision_state, pe_core_vision_kwargs
from litzoo.framework.nn.rope_transformer import RopeTransformer
from litzoo.framework.nn.text_encoder import TransformerTextEncoder, masked_mean
from litzoo.framework.nn.vit import Block, VisionTransformer, init_vit_weights


# ---------------------------------------------------------------------------------------------------------------- towers
class SequenceTransformer(nn.Module):
    """Class token + learned positions → pre-norm blocks (padded steps masked) → ``norm`` → bias-free ``output``.

    ``forward(x (B, T, D), mask (B, T) bool or None)`` returns ``(states (B, T, D), pooled (B, D))``: the class token's final
    state is the pooled output, as the release's ``Transformer`` (``last_hidden_state = h[:, 1:]``, ``pooler_output = h[:, 0]``).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, max_length: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim < 1 or depth < 1 or num_heads < 1 or dim % num_heads or max_length < 1:
            raise ValueError(f"need positive dim, depth, num_heads, max_length with dim divisible by num_heads, got {dim}, {depth}, {num_heads}, "
                             f"{max_length}")  # fmt: skip
        self.max_length = max_length
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + max_length, dim))
        self.layers = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, dim, bias=False)
        init_vit_weights(self)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[1] > self.max_length:
            raise ValueError(f"expected (B, T ≤ {self.max_length}, D) inputs, got {tuple(x.shape)}")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed[:, : 1 + x.shape[1]]
        padding = None if mask is None else F.pad(~mask.bool(), (1, 0), value=False)  # the class token is always real
        for layer in self.layers:
            x = layer(x, key_padding_mask=padding)
        x = self.output(self.norm(x))
        return x[:, 1:], x[:, 0]


TOWER_KINDS = ("small", "official")
AUDIO_FEATURES = ("fbank", "dac_vae")
FRAME_ENCODERS = ("small", "pe_core")
TEXT_TOWERS = ("small", "modernbert")
#: The release's text model (``core/audio_visual_encoder/config.py`` ``DFLT_TEXT_ENCODER_CONFIG``, transcribed: ModernBERT-large's
#: layout), given to ``transformers.ModernBertConfig`` as it is; ``layer_norm_eps`` and ``position_embedding_type`` are not
#: ModernBERT's own keys (its ``norm_eps`` keeps its default, also 1e-5, and it has no position table), ``classifier_pooling``
#: acts only in its classifier. :func:`modernbert_text_config` overrides the four sizes and the vocabulary.
PE_AV_TEXT_CONFIG: dict[str, Any] = {
    "classifier_pooling": "mean",
    "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0,
    "hidden_size": 1024,
    "intermediate_size": 2624,
    "layer_norm_eps": 1e-5,
    "local_rope_theta": 10000.0,
    "model_type": "modernbert",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "position_embedding_type": "absolute",
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}
#: The ``text_*`` arguments (``text_tower="modernbert"`` only) with the release's values (``PEAudioVisualConfig.nth_text_layer`` = 22).
TEXT_DEFAULTS: dict[str, int | None] = {"text_hidden_size": 1024, "text_intermediate_size": 2624, "text_num_hidden_layers": 28,
                                        "text_num_attention_heads": 16, "nth_text_layer": 22}  # fmt: skip


def import_transformers() -> Any:
    """``transformers`` (the optional extra ``text``), or a one-line error naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise LitzooError("text_tower='modernbert' needs transformers, which is not installed: pip install 'litzoo[text]'") from None
    return transformers


def modernbert_text_config(vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int, num_attention_heads: int) -> Any:
    """The ``transformers.ModernBertConfig`` of the ModernBERT text tower over a word vocabulary of ``vocab_size`` ids.

    :data:`PE_AV_TEXT_CONFIG` with the given sizes; ``vocab_size + 2`` ids: the data's (``[PAD]`` = 0, the padding id) and
    ``[CLS]`` = ``vocab_size`` (also BOS), ``[SEP]`` = ``vocab_size + 1`` (also EOS), which the word vocabulary lacks
    (:func:`add_cls_sep` writes them). ``transformers`` is imported here only.

    Raises:
        LitzooError: ``transformers`` is not installed (one line naming the extra).
    """
    sizes = {"hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_hidden_layers": num_hidden_layers,
             "num_attention_heads": num_attention_heads}  # fmt: skip
    ids = {"vocab_size": vocab_size + 2, "pad_token_id": 0, "cls_token_id": vocab_size, "bos_token_id": vocab_size,
           "sep_token_id": vocab_size + 1, "eos_token_id": vocab_size + 1}  # fmt: skip
    return import_transformers().ModernBertConfig(**{**PE_AV_TEXT_CONFIG, **sizes, **ids})


def add_cls_sep(tokens: Tensor, mask: Tensor, cls_id: int, sep_id: int, pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Captions ``(B, L)`` with a left-aligned mask (True = a real token) → ``[CLS] tokens [SEP]`` ``(B, L + 2)`` and its mask.

    As a BERT-style tokenizer writes them (the release's, ``"[CLS] $A [SEP]"``): the class token first, the separator right
    after each caption's last real token, ``pad_id`` after it (whatever ids the padded places held).

    Raises:
        ValueError: shapes differ, or a mask that is not left-aligned (a real token after a padded one).
    """
    if tokens.dim() != 2 or mask.shape != tokens.shape:
        raise ValueError(f"expected tokens and mask of one (B, L) shape, got {tuple(tokens.shape)} and {tuple(mask.shape)}")
    mask = mask.bool()
    lengths = mask.sum(1)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    if not torch.equal(mask, positions[None] < lengths[:, None]):
        raise ValueError("the caption mask must be left-aligned (the real tokens first, then the padding)")
    ids = torch.full((tokens.shape[0], tokens.shape[1] + 2), pad_id, dtype=tokens.dtype, device=tokens.device)
    ids[:, 0] = cls_id
    ids[:, 1:-1] = torch.where(mask, tokens, pad_id)
    ids.scatter_(1, (lengths + 1)[:, None], sep_id)
    return ids, torch.arange(ids.shape[1], device=tokens.device)[None] < (lengths + 2)[:, None]


def build_text_model(vocab_size: int, max_text_length: int, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                     modernbert: tuple[int, int, int, int] | None) -> tuple[nn.Module, int]:  # fmt: skip
    """The text tower and its width: litzoo's small :class:`~litzoo.framework.nn.text_encoder.TransformerTextEncoder`
    (``modernbert=None``) or ``transformers.ModernBertModel`` of the ``(width, GeGLU width, layers, heads)`` given."""
    if modernbert is None:
        return TransformerTextEncoder(vocab_size, max_text_length, dim, depth, num_heads, mlp_ratio), dim
    config = modernbert_text_config(vocab_size, *modernbert)
    return import_transformers().ModernBertModel(config), modernbert[0]


def pool_text(text_model: nn.Module, tokens: Tensor, mask: Tensor, vocab_size: int, nth_text_layer: int | None) -> Tensor:
    """The pooled caption state: the masked mean of the small tower's token states, or ModernBERT's
    ``hidden_states[nth_text_layer][:, 0]`` (``last_hidden_state[:, 0]`` for None) over ``[CLS] tokens [SEP]`` (the release's
    ``_get_text_output``; ``[CLS]`` = ``vocab_size``, ``[SEP]`` = ``vocab_size + 1``)."""
    if isinstance(text_model, TransformerTextEncoder):
        return masked_mean(text_model(tokens, mask), mask.bool())
    ids, attention = add_cls_sep(tokens, mask, vocab_size, vocab_size + 1)
    output = text_model(input_ids=ids, attention_mask=attention.long(), output_hidden_states=nth_text_layer is not None)
    states = output.last_hidden_state if nth_text_layer is None else output.hidden_states[nth_text_layer]
    return states[:, 0]


def check_padding_mask(mask: Tensor | None, batch: int, length: int, what: str) -> Tensor | None:
    """``mask`` as a bool ``(B, T)`` (True = a real step), refused when it has another shape or a row with no real step."""
    if mask is None:
        return None
    if mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        raise ValueError(f"{what} must be (B, T) = {(batch, length)} (True = real), got {tuple(mask.shape)}")
    mask = mask.bool()
    if not bool(mask.any(-1).all()):
        raise ValueError(f"{what}: every row needs at least one real step")
    return mask


class OfficialTowerSpec:
    """The settings of the official towers (:class:`~litzoo.framework.nn.rope_transformer.RopeTransformer`) shared by the three.

    Args:
        dim: width.
        depth: layers.
        num_heads: heads.
        intermediate_size: SwiGLU hidden width.
        max_position_embeddings: longest sequence with its class token; sets RoPE's base ``max(10000, 2 · it)``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, intermediate_size: int, max_position_embeddings: int) -> None:
        self.kwargs = {"dim": dim, "depth": depth, "num_heads": num_heads, "intermediate_size": intermediate_size,
                       "max_position_embeddings": max_position_embeddings}  # fmt: skip

    def build(self) -> RopeTransformer:
        return RopeTransformer(**self.kwargs)


class AudioEncoder(nn.Module):
    """Audio → ``data_proj`` → ``audio_transformer``.

    The audio is either a fbank ``(B, 1, T, F)`` (``T ≤ audio_frames``, a multiple of ``audio_patch_frames``) cut into
    ``T / audio_patch_frames`` time strips (``audio_features="fbank"``) or, as in the release, a waveform ``(B, 1, N)`` through
    the frozen ``dac_vae_encoder`` (``audio_features="dac_vae"``, official towers only: the small tower's learned positions
    need a bounded length). ``official`` (an :class:`OfficialTowerSpec`) selects the official tower, ``None`` litzoo's small
    one. A padding ``mask`` is given at the input's own rate (fbank frames ``(B, T)``, waveform samples ``(B, N)``; True =
    real) and becomes a step mask by the release's rule (``AudioEncoder.forward``: ``padding_mask[:, ::hop_length]``): a step
    is real when its first frame / sample is (:meth:`step_mask`).
    """

    def __init__(self, num_mel_bins: int, audio_frames: int, audio_patch_frames: int, dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, official: OfficialTowerSpec | None = None, dac_vae: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__()
        if audio_patch_frames < 1 or audio_frames % audio_patch_frames:
            raise ValueError(f"audio_frames {audio_frames} must be a positive multiple of audio_patch_frames {audio_patch_frames}")
        self.num_mel_bins, self.audio_frames, self.audio_patch_frames = num_mel_bins, audio_frames, audio_patch_frames
        self.dac_vae_encoder = None if dac_vae is None else DacEncoderVAE(**dac_vae)
        in_dim = audio_patch_frames * num_mel_bins if self.dac_vae_encoder is None else self.dac_vae_encoder.codebook_dim
        self.data_proj = nn.Linear(in_dim, dim)
        if official is None:
            self.audio_transformer: nn.Module = SequenceTransformer(dim, depth, num_heads, audio_frames // audio_patch_frames, mlp_ratio)
        else:
            self.audio_transformer = official.build()

    def features(self, audio: Tensor) -> Tensor:
        """The per-step audio features ``(B, T, ·)`` before ``data_proj``: fbank strips or DAC-VAE means."""
        if self.dac_vae_encoder is not None:
            return self.dac_vae_encoder(audio).transpose(1, 2)
        frames = audio.shape[2] if audio.dim() == 4 else 0
        if audio.dim() != 4 or audio.shape[1] != 1 or audio.shape[3] != self.num_mel_bins or not 0 < frames <= self.audio_frames \
                or frames % self.audio_patch_frames:  # fmt: skip
            raise ValueError(f"expected fbank (B, 1, T, {self.num_mel_bins}) with T ≤ {self.audio_frames} a multiple of {self.audio_patch_frames}, "
                             f"got {tuple(audio.shape)}")  # fmt: skip
        return audio.reshape(audio.shape[0], frames // self.audio_patch_frames, self.audio_patch_frames * self.num_mel_bins)

    def step_mask(self, audio: Tensor, mask: Tensor | None) -> Tensor | None:
        """The ``(B, steps)`` mask of the audio steps from a mask at the input's rate (every ``hop``-th entry), or None."""
        if mask is None:
            return None
        length = audio.shape[-1] if self.dac_vae_encoder is not None else audio.shape[2]
        mask = check_padding_mask(mask, audio.shape[0], length, "audio_mask")
        assert mask is not None
        hop = self.dac_vae_encoder.hop_length if self.dac_vae_encoder is not None else self.audio_patch_frames
        return mask[:, ::hop]

    def forward(self, audio: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Audio (and its padding mask at the input's rate) → ``(states (B, steps, D), pooled (B, D))``."""
        features = self.data_proj(self.features(audio))
        return self.audio_transformer(features, self.step_mask(audio, mask))


class VisualEncoder(nn.Module):
    """Frames ``(B, T ≤ num_frames, C, H, W)`` → per-frame embedding, L2-normalised → ``proj`` → ``data_proj`` → ``visual_transformer``.

    The per-frame encoder ``pe_encoder`` is litzoo's small ViT (class token pooled; ``pe_core=None``) or, as in the release,
    PE-Core's vision tower (:class:`~litzoo.framework.nn.pe_core.PECoreVision` built from the ``pe_core`` arguments: attention
    pool and projection, the official ``VisionTransformer.forward``). As in the release (``VisualEncoder.forward``) every frame
    of the ``(B · T, C, H, W)`` batch goes through it, padded ones included; the padding ``mask`` ``(B, T)`` (True = a real
    frame) acts in ``visual_transformer``.
    """

    def __init__(self, num_frames: int, image_size: int, frame_patch: int, frame_dim: int, frame_depth: int, dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, official: OfficialTowerSpec | None = None, pe_core: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.num_frames = num_frames
        if pe_core is None:
            self.pe_encoder: nn.Module = VisionTransformer(image_size, frame_patch, 3, frame_dim, frame_depth, num_heads, mlp_ratio)
            frame_width = frame_dim
        else:
            self.pe_encoder = PECoreVision(**pe_core)
            frame_width = self.pe_encoder.embed_dim
        self.proj = nn.Linear(frame_width, dim, bias=False)
        self.data_proj = nn.Linear(dim, dim)
        self.visual_transformer: nn.Module = SequenceTransformer(dim, depth, num_heads, num_frames, mlp_ratio) if official is None else official.build()

    def encode_frames(self, frames: Tensor) -> Tensor:
        """``(N, C, H, W)`` images → ``(N, width)`` per-frame embeddings before the L2 normalisation."""
        if isinstance(self.pe_encoder, PECoreVision):
            return self.pe_encoder(frames)
        return self.pe_encoder.pool(self.pe_encoder(frames), "token")

    def forward(self, video: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Clips (and their frame mask) → ``(states (B, T, D), pooled (B, D))``."""
        if video.dim() != 5 or not 0 < video.shape[1] <= self.num_frames:
            raise ValueError(f"expected clips (B, T ≤ {self.num_frames}, C, H, W), got {tuple(video.shape)}")
        b, t = video.shape[:2]
        mask = check_padding_mask(mask, b, t, "video_mask")
        frames = self.encode_frames(video.flatten(0, 1)).view(b, t, -1)
        return self.visual_transformer(self.data_proj(self.proj(F.normalize(frames, dim=-1))), mask)


class _Fusion(nn.Module):
    """The fusion head of a tower: ``modality_aligner`` (video → audio frame rate) → concat → ``concat_modality_proj`` → ``data_proj``."""

    def _add_fusion(self, dim: int) -> None:
        self.modality_aligner = AlignModalities(dim, dim, normalize=True, btc=True)
        self.concat_modality_proj = nn.Linear(2 * dim, dim)
        self.data_proj = nn.Linear(dim, dim)

    def forward(self, audio: Tensor, video: Tensor, audio_mask: Tensor | None = None, video_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Audio states and their step mask, video states and their frame mask → the fused ``(states, pooled)`` under the audio's mask.

        The aligner gives each row its own audio length (``max`` of the real lengths, or the video's own length when every
        row's lengths agree); the aligned video is cut or zero-padded to the audio's padded length (ours: the release's
        ``torch.cat`` fails there; those steps are padding, masked in the transformer).
        """
        video, mask = self.modality_aligner(audio, audio_mask, video, video_mask)
        if video.shape[1] > audio.shape[1]:
            video = video[:, : audio.shape[1]]
        elif video.shape[1] < audio.shape[1]:
            video = F.pad(video, (0, 0, 0, audio.shape[1] - video.shape[1]))
        return super().forward(self.data_proj(self.concat_modality_proj(torch.cat([audio, video], dim=-1))), mask)  # type: ignore[misc]


class AVTransformer(_Fusion, SequenceTransformer):
    """The fusion tower on litzoo's small :class:`SequenceTransformer` (learned positions over the audio steps)."""

    def __init__(self, dim: int, depth: int, num_heads: int, max_length: int, mlp_ratio: float = 4.0) -> None:
        SequenceTransformer.__init__(self, dim, depth, num_heads, max_length, mlp_ratio)
        self._add_fusion(dim)


class RopeAVTransformer(_Fusion, RopeTransformer):
    """The fusion tower on the official :class:`~litzoo.framework.nn.rope_transformer.RopeTransformer` (the release's ``AVTransformer``)."""

    def __init__(self, dim: int, depth: int, num_heads: int, intermediate_size: int, max_position_embeddings: int = 10_000) -> None:
        RopeTransformer.__init__(self, dim, depth, num_heads, intermediate_size, max_position_embeddings)
        self._add_fusion(dim)


class AudioVisualEncoder(nn.Module):
    """The three media towers under the release's names ``audio_model``, ``visual_model``, ``audio_visual_transformer``."""

    def __init__(self, audio_model: AudioEncoder, visual_model: VisualEncoder, audio_visual_transformer: nn.Module) -> None:
        super().__init__()
        self.audio_model, self.visual_model, self.audio_visual_transformer = audio_model, visual_model, audio_visual_transformer


class PEAudioVisualNet(nn.Module):
    """The small PE-AV network: media towers, text tower and the eight contrastive heads (see the module docstring).

    Args:
        vocab_size: text token ids (``[PAD]`` = 0).
        max_text_length: longest caption (tokens).
        num_frames: video frames per clip.
        image_size: frame side.
        frame_patch: patch side of the per-frame ViT.
        frame_dim: width of the per-frame ViT.
        frame_depth: blocks of the per-frame ViT.
        num_mel_bins: fbank mel bins.
        audio_frames: fbank frames per clip.
        audio_patch_frames: fbank frames per audio step.
        dim: width of the audio, video, fusion and text towers.
        depth: blocks of each of those towers.
        num_heads: attention heads (must divide ``dim`` and ``frame_dim``).
        mlp_ratio: MLP hidden width over the width.
        output_dim: width of the joint space (PE-AV: 1024).
        tower: ``"small"`` (litzoo's pre-norm ViT blocks with learned positions, the default) or ``"official"`` (the release's
            RMSNorm / SwiGLU / RoPE towers with the ResNet-1d embedding, :mod:`litzoo.framework.nn.rope_transformer`) for the
            audio, visual and fusion towers.
        intermediate_size: SwiGLU hidden width of the official towers; ``None`` takes ``round(mlp_ratio · dim)`` (ours; the
            release gives it, 2752 by default).
        max_position_embeddings: the official towers' longest sequence, class token included (release: 10000; RoPE base
            ``max(10000, 2 · it)``).
        audio_features: ``"fbank"`` (time strips, the default) or ``"dac_vae"`` (the release's frozen DAC-VAE encoder on
            waveforms ``(B, 1, N)``; official towers only).
        dac_encoder_hidden_size: the DAC-VAE encoder's first width (release: 64).
        dac_downsampling_ratios: its strides (release: 2, 8, 10, 12, a hop of 1920 samples).
        dac_codebook_dim: its feature width, the VAE mean (release: 128).
        frame_encoder: the per-frame image encoder: ``"small"`` (litzoo's ViT, class token pooled, the default) or ``"pe_core"``
            (PE-Core's vision tower as in the release: RoPE-2D, ``ln_pre`` / ``ln_post``, attention pooling, bias-free
            projection, LayerNorm eps 1e-5; :class:`~litzoo.framework.nn.pe_core.PECoreVision`), whose release keys
            ``audio_visual_model.visual_model.pe_encoder.*`` load.
        pe_core_config: with ``frame_encoder="pe_core"``, a PE-Core layout of
            :data:`~litzoo.framework.nn.pe_core.PE_CORE_CONFIGS` (the release: ``"PE-Core-L14-336"``; frames of any multiple of
            its patch, its positions resampled); ``None`` lays PE-Core out at the small sizes ``image_size``, ``frame_patch``,
            ``frame_dim``, ``frame_depth``, ``num_heads`` (blocks and attention pool), ``mlp_ratio`` and ``frame_output_dim``.
        frame_output_dim: the PE-Core projection's width at the small sizes (``None`` = ``frame_dim``; L14: 1024).
        text_tower: ``"small"`` (litzoo's word-level Transformer of width ``dim``, masked-mean pooled, the default) or
            ``"modernbert"`` (the release's ``transformers.ModernBertModel`` over the word vocabulary with ``[CLS]`` / ``[SEP]``
            added, pooled as the release: the first token's state after ``nth_text_layer`` layers), whose release keys
            ``text_model.*`` load.
        text_hidden_size: ModernBERT's width (release: 1024); ``text_tower="modernbert"`` only, as the three below.
        text_intermediate_size: its GeGLU hidden width (release: 2624).
        text_num_hidden_layers: its layers (release: 28).
        text_num_attention_heads: its heads (release: 16).
        nth_text_layer: the hidden state pooled: ``hidden_states[nth_text_layer]`` (0 = the embeddings' output, ``k`` = after
            ``k`` layers; release: 22); ``None`` takes ``last_hidden_state`` (after the final norm), as the release does.

    Padding (the release's ``padding_mask`` / ``padding_mask_videos``): :meth:`forward` takes an optional ``audio_mask`` at the
    input's rate (fbank frames or waveform samples) and ``video_mask`` per frame, True = real; padded steps are left out of
    every tower's attention (and of the official towers' masked GroupNorm), the aligner resamples each row's real frames to its
    real audio steps, and the fused tower runs under the audio's mask. A clip padded by whole audio steps and frames embeds as
    it does unpadded (``tests/modules/test_pe_av.py``), except through the DAC-VAE, whose convolutions see across the cut as in
    the release.
    """

    def __init__(self, vocab_size: int, max_text_length: int = 24, num_frames: int = 8, image_size: int = 32, frame_patch: int = 8,
                 frame_dim: int = 64, frame_depth: int = 2, num_mel_bins: int = 64, audio_frames: int = 64, audio_patch_frames: int = 4,
                 dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0, output_dim: int = 64, tower: str = "small",
                 intermediate_size: int | None = None, max_position_embeddings: int = 10_000, audio_features: str = "fbank",
                 dac_encoder_hidden_size: int = 64, dac_downsampling_ratios: Sequence[int] = (2, 8, 10, 12),
                 dac_codebook_dim: int = 128, frame_encoder: str = "small", pe_core_config: str | None = None,
                 frame_output_dim: int | None = None, text_tower: str = "small", text_hidden_size: int = 1024,
                 text_intermediate_size: int = 2624, text_num_hidden_layers: int = 28, text_num_attention_heads: int = 16,
                 nth_text_layer: int | None = 22) -> None:  # fmt: skip
        super().__init__()
        text_sizes = self.text_tower_sizes(text_tower, text_hidden_size, text_intermediate_size, text_num_hidden_layers,
                                           text_num_attention_heads, nth_text_layer)  # fmt: skip
        if tower not in TOWER_KINDS:
            raise ValueError(f"tower must be one of {TOWER_KINDS}, got {tower!r}")
        if audio_features not in AUDIO_FEATURES:
            raise ValueError(f"audio_features must be one of {AUDIO_FEATURES}, got {audio_features!r}")
        if audio_features == "dac_vae" and tower != "official":
            raise ValueError("audio_features='dac_vae' needs tower='official' (the small tower's learned positions need a fixed length)")
        if intermediate_size is not None and intermediate_size < 1:
            raise ValueError(f"intermediate_size must be positive (or None), got {intermediate_size}")
        pe_core = self.frame_encoder_kwargs(frame_encoder, pe_core_config, image_size, frame_patch, frame_dim, frame_depth, num_heads,
                                            mlp_ratio, frame_output_dim)  # fmt: skip
        self.tower, self.audio_features, self.frame_encoder, self.text_tower = tower, audio_features, frame_encoder, text_tower
        self.vocab_size, self.nth_text_layer = vocab_size, nth_text_layer
        audio_steps = audio_frames // max(audio_patch_frames, 1)
        official = None
        if tower == "official":
            official = OfficialTowerSpec(dim, depth, num_heads, intermediate_size or max(1, round(mlp_ratio * dim)), max_position_embeddings)
        codec = None if audio_features == "fbank" else {"encoder_hidden_size": dac_encoder_hidden_size,
                                                         "downsampling_ratios": tuple(dac_downsampling_ratios), "codebook_dim": dac_codebook_dim}  # fmt: skip
        audio = AudioEncoder(num_mel_bins, audio_frames, audio_patch_frames, dim, depth, num_heads, mlp_ratio, official, codec)
        visual = VisualEncoder(num_frames, image_size, frame_patch, frame_dim, frame_depth, dim, depth, num_heads, mlp_ratio, official, pe_core)
        fusion = AVTransformer(dim, depth, num_heads, audio_steps, mlp_ratio) if official is None else RopeAVTransformer(**official.kwargs)
        self.audio_visual_model = AudioVisualEncoder(audio, visual, fusion)  # built in this order: the small net's init is unchanged
        self.text_model, text_width = build_text_model(vocab_size, max_text_length, dim, depth, num_heads, mlp_ratio, text_sizes)
        widths = {"text": text_width, "audio": dim, "visual": dim, "audio_visual": dim}
        for head, inputs in PE_AV_HEADS.items():
            self.add_module(head, ContrastiveHead(sum(widths[name] for name in inputs), output_dim))

    @staticmethod
    def text_tower_sizes(text_tower: str, text_hidden_size: int, text_intermediate_size: int, text_num_hidden_layers: int,
                         text_num_attention_heads: int, nth_text_layer: int | None) -> tuple[int, int, int, int] | None:  # fmt: skip
        """ModernBERT's ``(width, GeGLU width, layers, heads)``, or None for the small text tower.

        Raises:
            ValueError: an unknown text tower, a ``text_*`` size other than the release's with the small tower, a non-positive
                size, a width the heads do not divide, ``nth_text_layer`` outside ``0 … text_num_hidden_layers``.
        """
        if text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, got {text_tower!r}")
        given = {"text_hidden_size": text_hidden_size, "text_intermediate_size": text_intermediate_size,
                 "text_num_hidden_layers": text_num_hidden_layers, "text_num_attention_heads": text_num_attention_heads,
                 "nth_text_layer": nth_text_layer}  # fmt: skip
        if text_tower == "small":
            changed = sorted(name for name, value in given.items() if value != TEXT_DEFAULTS[name])
            if changed:
                raise ValueError(f"{', '.join(changed)} need text_tower='modernbert'")
            return None
        sizes = (text_hidden_size, text_intermediate_size, text_num_hidden_layers, text_num_attention_heads)
        if min(sizes) < 1 or text_hidden_size % text_num_attention_heads:
            raise ValueError(f"the ModernBERT sizes must be positive with text_hidden_size divisible by text_num_attention_heads, got "
                             f"{given}")  # fmt: skip
        if nth_text_layer is not None and not 0 <= nth_text_layer <= text_num_hidden_layers:
            raise ValueError(f"nth_text_layer must be in 0 … text_num_hidden_layers = {text_num_hidden_layers} (or None), got {nth_text_layer}")
        return sizes

    @staticmethod
    def frame_encoder_kwargs(frame_encoder: str, pe_core_config: str | None, image_size: int, frame_patch: int, frame_dim: int,
                             frame_depth: int, num_heads: int, mlp_ratio: float, frame_output_dim: int | None) -> dict[str, Any] | None:  # fmt: skip
        """The :class:`~litzoo.framework.nn.pe_core.PECoreVision` arguments of the per-frame encoder, or None for the small ViT.

        Raises:
            ValueError: an unknown encoder or PE-Core layout, a layout or output width with the small encoder, a non-positive width.
        """
        if frame_encoder not in FRAME_ENCODERS:
            raise ValueError(f"frame_encoder must be one of {FRAME_ENCODERS}, got {frame_encoder!r}")
        if frame_encoder == "small":
            if pe_core_config is not None or frame_output_dim is not None:
                raise ValueError("pe_core_config and frame_output_dim need frame_encoder='pe_core'")
            return None
        if frame_output_dim is not None and frame_output_dim < 1:
            raise ValueError(f"frame_output_dim must be positive (or None), got {frame_output_dim}")
        if pe_core_config is not None:
            if pe_core_config not in PE_CORE_CONFIGS:
                raise ValueError(f"unknown PE-Core configuration {pe_core_config!r}; known: {', '.join(PE_CORE_CONFIGS)}")
            if frame_output_dim is not None:
                raise ValueError(f"frame_output_dim is set by pe_core_config {pe_core_config!r}; leave it None")
            return pe_core_vision_kwargs(pe_core_config)
        sizes = {"image_size": image_size, "patch_size": frame_patch, "vision_width": frame_dim, "vision_depth": frame_depth,
                 "vision_heads": num_heads, "vision_mlp_ratio": mlp_ratio, "embed_dim": frame_output_dim or frame_dim,
                 "vision_class_token": True, "attn_pooler_heads": num_heads}  # fmt: skip
        return {**PE_CORE_VISION, **sizes}

    def encode_text(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The pooled caption state ``(B, text width)``: the masked mean of the small tower's token states, or ModernBERT's
        ``hidden_states[nth_text_layer][:, 0]`` over ``[CLS] tokens [SEP]`` (the release's ``_get_text_output``)."""
        return pool_text(self.text_model, tokens, mask, self.vocab_size, self.nth_text_layer)

    def forward(self, audio: Tensor, video: Tensor, tokens: Tensor, mask: Tensor, audio_mask: Tensor | None = None,
                video_mask: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        """Fbank (waveform with ``audio_features="dac_vae"``), clips, caption ids and mask → the eight joint embeddings ``{"audio", "visual", …, "audio_plus_text"}`` ``(B, E)``.

        ``audio_mask`` (``(B, T)`` fbank frames or ``(B, N)`` samples) and ``video_mask`` (``(B, T)`` frames), True = real, are
        the optional padding masks (the release's ``padding_mask`` and ``padding_mask_videos``); None = nothing padded.
        """
        model = self.audio_visual_model
        audio_states, audio_pooled = model.audio_model(audio, audio_mask)
        video_states, video_pooled = model.visual_model(video, video_mask)
        audio_steps = model.audio_model.step_mask(audio, audio_mask)
        video_mask = None if video_mask is None else video_mask.bool()
        _, av_pooled = model.audio_visual_transformer(audio_states, video_states, audio_steps, video_mask)
        pooled = {"text": self.encode_text(tokens, mask), "audio": audio_pooled, "visual": video_pooled, "audio_visual": av_pooled}
        return {head.removesuffix("_head"): getattr(self, head)(torch.cat([pooled[name] for name in inputs], dim=-1))
                for head, inputs in PE_AV_HEADS.items()}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------- PE-A-Frame
def frame_spans(logits: Tensor, threshold: float, step_seconds: float) -> list[list[list[float]]]:
    """The sound-event spans of per-frame logits ``(B, T)``: per row, ``[start, end]`` in seconds of every run of frames whose
    sigmoid exceeds ``threshold``, ``start`` its first frame and ``end`` one past its last, times ``step_seconds`` (the rule of
    the release's ``PEAudioFrame.forward``: ``probs > threshold``, the rising and falling edges of the padded run mask)."""
    above = (logits.sigmoid() > threshold).int()
    edges = torch.diff(F.pad(above, (1, 1)), dim=1)  # +1 where a run starts, -1 one past where it ends
    spans = []
    for row in edges:
        starts, ends = (row == 1).nonzero().flatten().tolist(), (row == -1).nonzero().flatten().tolist()
        spans.append([[start * step_seconds, end * step_seconds] for start, end in zip(starts, ends, strict=True)])
    return spans


class PEAudioFrameNet(nn.Module):
    """PE-A-Frame (the release's ``pe.py`` ``PEAudioFrame``): per-frame audio embeddings scored against a text query, and the
    spans where the queried sound is heard.

    As the release: ``text_model`` (the text tower of :class:`PEAudioVisualNet`, ModernBERT with ``text_tower="modernbert"``,
    its class-token state after ``nth_text_layer`` layers), ``audio_model`` (PE-AV's :class:`AudioEncoder`: DAC-VAE features or
    fbank strips → ``data_proj`` → ``audio_transformer``), ``text_head`` and ``audio_head`` (:class:`ContrastiveHead`) and the
    scalars ``logit_scale`` / ``logit_bias`` (shape ``(1,)``, both 0 at init). :meth:`forward` gives the text embedding
    ``text_head(pooled text)`` ``(B, E)`` and the per-frame audio embeddings ``audio_head`` of **every** frame state of the
    audio transformer (its ``last_hidden_state``, the class token dropped) ``(B, T, E)``; :meth:`frame_logits` scores each frame
    by the plain dot product with its row's text embedding (no L2 normalisation), times ``logit_scale`` as it is (no
    exponential) plus ``logit_bias``; :meth:`spans` thresholds their sigmoid (0.3 in the release) into runs
    (:func:`frame_spans`), at :attr:`step_seconds` a frame (``hop_length / sampling_rate``, 0.04 s for the release's DAC-VAE at
    48 kHz; fbank strips: ``audio_patch_frames`` × the 10 ms frame shift). Padded frames are scored as the release does (the
    ``audio_mask`` acts inside the transformer only). Under ``tower="official"``, ``audio_features="dac_vae"`` and
    ``text_tower="modernbert"`` (the release's layout) every key of a release state dict has its name and role here
    (:func:`load_pe_a_frame_weights`). The release has inference code only; no objective is built here.

    Args:
        vocab_size: caption token ids of the word vocabulary (``[PAD]`` = 0).
        max_text_length … nth_text_layer: as :class:`PEAudioVisualNet` (its audio and text arguments).
    """

    def __init__(self, vocab_size: int, max_text_length: int = 24, num_mel_bins: int = 64, audio_frames: int = 64,
                 audio_patch_frames: int = 4, dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
                 output_dim: int = 64, tower: str = "small", intermediate_size: int | None = None, max_position_embeddings: int = 10_000,
                 audio_features: str = "fbank", dac_encoder_hidden_size: int = 64, dac_downsampling_ratios: Sequence[int] = (2, 8, 10, 12),
                 dac_codebook_dim: int = 128, text_tower: str = "small", text_hidden_size: int = 1024, text_intermediate_size: int = 2624,
                 text_num_hidden_layers: int = 28, text_num_attention_heads: int = 16, nth_text_layer: int | None = 22) -> None:  # fmt: skip
        super().__init__()
        text_sizes = PEAudioVisualNet.text_tower_sizes(text_tower, text_hidden_size, text_intermediate_size, text_num_hidden_layers,
                                                       text_num_attention_heads, nth_text_layer)  # fmt: skip
        if tower not in TOWER_KINDS or audio_features not in AUDIO_FEATURES or (audio_features == "dac_vae" and tower != "official"):
            raise ValueError(f"tower must be one of {TOWER_KINDS} and audio_features one of {AUDIO_FEATURES} ('dac_vae' with "
                             f"tower='official'), got {tower!r}, {audio_features!r}")  # fmt: skip
        if intermediate_size is not None and intermediate_size < 1:
            raise ValueError(f"intermediate_size must be positive (or None), got {intermediate_size}")
        self.tower, self.audio_features, self.text_tower = tower, audio_features, text_tower
        self.vocab_size, self.nth_text_layer = vocab_size, nth_text_layer
        official = None
        if tower == "official":
            official = OfficialTowerSpec(dim, depth, num_heads, intermediate_size or max(1, round(mlp_ratio * dim)), max_position_embeddings)
        codec = None if audio_features == "fbank" else {"encoder_hidden_size": dac_encoder_hidden_size,
                                                         "downsampling_ratios": tuple(dac_downsampling_ratios), "codebook_dim": dac_codebook_dim}  # fmt: skip
        self.text_model, text_width = build_text_model(vocab_size, max_text_length, dim, depth, num_heads, mlp_ratio, text_sizes)
        self.audio_model = AudioEncoder(num_mel_bins, audio_frames, audio_patch_frames, dim, depth, num_heads, mlp_ratio, official, codec)
        self.text_head = ContrastiveHead(text_width, output_dim)
        self.audio_head = ContrastiveHead(dim, output_dim)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    @property
    def step_seconds(self) -> float:
        """Seconds per audio frame: the DAC-VAE's ``hop_length / sampling_rate``, or ``audio_patch_frames`` fbank frames of 10 ms."""
        codec = self.audio_model.dac_vae_encoder
        return codec.hop_length / codec.sampling_rate if codec is not None else self.audio_model.audio_patch_frames * 0.01

    def encode_text(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The pooled caption state ``(B, text width)`` (see :func:`pool_text`)."""
        return pool_text(self.text_model, tokens, mask, self.vocab_size, self.nth_text_layer)

    def forward(self, audio: Tensor, tokens: Tensor, mask: Tensor, audio_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Audio (fbank or waveform, its optional mask at the input's rate) and a text query per row → ``(audio_embeds (B, T, E),
        text_embeds (B, E))``."""
        states, _ = self.audio_model(audio, audio_mask)
        return self.audio_head(states), self.text_head(self.encode_text(tokens, mask))

    def frame_logits(self, audio_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """``(B, T)``: ``<audio_embeds[b, t], text_embeds[b]> · logit_scale + logit_bias``."""
        return torch.einsum("bte,be->bt", audio_embeds, text_embeds) * self.logit_scale + self.logit_bias

    def spans(self, audio: Tensor, tokens: Tensor, mask: Tensor, audio_mask: Tensor | None = None,
              threshold: float = 0.3) -> list[list[list[float]]]:  # fmt: skip
        """Per row, the ``[start, end]`` seconds where the row's query is heard (sigmoid of the frame logits above ``threshold``)."""
        return frame_spans(self.frame_logits(*self(audio, tokens, mask, audio_mask)), threshold, self.step_seconds)


def load_pe_a_frame_weights(net: PEAudioFrameNet, path: str) -> None:
    """Load a release ``PEAudioFrame`` state dict as it is (every key and shape must fit: the release's layout is
    ``tower="official"``, ``audio_features="dac_vae"``, ``text_tower="modernbert"``).

    Raises:
        LitzooError: the file is unreadable, or its keys or shapes are not the net's (one line naming it).
    """
    load_state_dict_checked(net, unwrap_state_dict(load_checkpoint(path), path), path, what="PE-A-Frame model")


# ------------------------------------------------------------------------------------------------------- official weights
#: Official key prefixes every PE-AV network here holds with the official architecture: the heads and the towers' projections
#: and alignment.
SHARED_PREFIXES = (
    *(f"{head}." for head in PE_AV_HEADS),
    "audio_visual_model.audio_visual_transformer.modality_aligner.",
    "audio_visual_model.audio_visual_transformer.concat_modality_proj.",
    "audio_visual_model.audio_visual_transformer.data_proj.",
    "audio_visual_model.audio_model.data_proj.",
    "audio_visual_model.visual_model.proj.",
    "audio_visual_model.visual_model.data_proj.",
)
#: The three official transformers (``core/audio_visual_encoder/transformer.py`` ``Transformer``): with ``tower="official"``
#: every key under them maps as it is; with the small tower only the class token (``embeddings.cls_token``) and the bias-free
#: ``output`` Linear have a counterpart of the same role and shape.
TOWERS = ("audio_visual_model.audio_model.audio_transformer", "audio_visual_model.visual_model.visual_transformer",
          "audio_visual_model.audio_visual_transformer")  # fmt: skip
#: The release's frozen audio codec (``audio_codec.py`` ``DacEncoderVAE``), mapped as it is with ``audio_features="dac_vae"``.
DAC_VAE_PREFIX = "audio_visual_model.audio_model.dac_vae_encoder."
#: The release's per-frame PE-Core vision encoder (``pe.py`` ``VisualEncoder.pe_encoder``, ``CLIP.from_config(...).visual``),
#: mapped through :func:`~litzoo.framework.nn.pe_core.convert_pe_vision_state` with ``frame_encoder="pe_core"``.
PE_ENCODER_PREFIX = "audio_visual_model.visual_model.pe_encoder."
#: The release's ModernBERT text model (``PEAudioVisual.text_model``, ``transformers.ModernBertModel``), mapped as it is with
#: ``text_tower="modernbert"``.
TEXT_PREFIX = "text_model."


@register_official_key_map("pe_av")
def official_pe_av_key_map(state: Mapping[str, Tensor], tower: str = "small", dac_vae: bool = False, pe_core: bool = False,
                           modernbert: bool = False) -> dict[str, Tensor]:  # fmt: skip
    """facebookresearch/perception_models ``PEAudioVisual`` weights → the parts of :class:`PEAudioVisualNet` of the same architecture.

    Always kept under the same names: the eight heads (``<pairing>_head.layer_norm`` / ``.proj``), the fusion tower's
    ``modality_aligner.conv`` / ``.layer_norm``, ``concat_modality_proj``, ``data_proj``, the audio branch's ``data_proj`` and
    the video branch's ``proj`` / ``data_proj``. ``tower="official"``: every key of the three transformers as it is
    (``embeddings.cls_token``, ``embeddings.resnet_block.block{1,2}.{groupnorm,project}``, ``layers.{i}.self_attn.{q,k,v,o}_proj``
    / ``.{q,k}_norm``, ``layers.{i}.mlp.{gate,up,down}_proj``, ``layers.{i}.{input,post_attention}_layernorm``, ``norm``,
    ``output``); ``tower="small"``: only ``<tower>.embeddings.cls_token`` → ``<tower>.cls_token`` and ``<tower>.output``.
    ``dac_vae=True``: the codec's ``dac_vae_encoder.*`` as they are. ``pe_core=True`` (``frame_encoder="pe_core"``): the
    per-frame encoder's ``visual_model.pe_encoder.<official vision name>`` → ``visual_model.pe_encoder.<litzoo name>`` by
    :func:`~litzoo.framework.nn.pe_core.convert_pe_vision_state` (``conv1`` → ``visual.patch_embed.proj``, ``proj`` transposed
    into ``visual_projection.weight``, …). ``modernbert=True`` (``text_tower="modernbert"``): the text model's ``text_model.*``
    as they are (``embeddings.tok_embeddings``, ``embeddings.norm``, ``layers.{i}.{attn_norm,attn.Wqkv,attn.Wo,mlp_norm,mlp.Wi,
    mlp.Wo}``, ``final_norm``). Left out: ModernBERT unless ``modernbert``, PE-Core unless ``pe_core``, the DAC-VAE unless
    ``dac_vae``; :func:`load_pe_av_shared_weights` says how many keys it left.

    Raises:
        LitzooError: with ``pe_core``, a ``pe_encoder`` key the PE-Core map does not know (or no ``pe_encoder.conv1.weight``).
    """
    if tower not in TOWER_KINDS:
        raise ValueError(f"tower must be one of {TOWER_KINDS}, got {tower!r}")
    out: dict[str, Tensor] = {}
    frames = {key.removeprefix(PE_ENCODER_PREFIX): value for key, value in state.items() if key.startswith(PE_ENCODER_PREFIX)}
    if pe_core and frames:
        out.update({PE_ENCODER_PREFIX + key: value for key, value in convert_pe_vision_state(frames).items()})
    for key, value in state.items():
        if key.startswith(SHARED_PREFIXES) or (dac_vae and key.startswith(DAC_VAE_PREFIX)) or (modernbert and key.startswith(TEXT_PREFIX)):
            out[key] = value
            continue
        for name in TOWERS:
            if tower == "official" and key.startswith(f"{name}."):
                out[key] = value
            elif key == f"{name}.embeddings.cls_token":
                out[f"{name}.cls_token"] = value
            elif key == f"{name}.output.weight":
                out[key] = value
    return out


def load_pe_av_shared_weights(net: PEAudioVisualNet, path: str) -> int:
    """Load the official weights :func:`official_pe_av_key_map` keeps for ``net``'s tower and audio features (shapes checked:
    the configuration must match).

    Returns:
        the number of official keys left out (the parts of another architecture: ModernBERT unless ``text_tower="modernbert"``,
        PE-Core unless ``frame_encoder="pe_core"``, with the small tower the transformer layers, norms and ResNet-1d embeddings; the DAC-VAE
        unless ``audio_features="dac_vae"``).

    Raises:
        LitzooError: the file is unreadable, holds none of the shared keys, or a kept key is unknown here or has another shape,
            or (``frame_encoder="pe_core"``) its PE-Core keys are not those of the net's per-frame encoder, all of them, or
            (``text_tower="modernbert"``) it has some of ModernBERT's keys but not all (one line naming it).
    """
    state = unwrap_state_dict(load_checkpoint(path), path)
    try:
        kept = official_pe_av_key_map(state, net.tower, net.audio_features == "dac_vae", net.frame_encoder == "pe_core",
                                      net.text_tower == "modernbert")  # fmt: skip
    except LitzooError as error:
        raise LitzooError(f"checkpoint '{path}': {error}") from None
    if not kept:
        raise LitzooError(f"checkpoint '{path}' holds no PE-AV head or alignment key (expected e.g. 'audio_text_head.proj.weight')")
    own = net.state_dict()
    unknown = sorted(set(kept) - set(own))
    if unknown:
        raise LitzooError(f"checkpoint '{path}': keys {unknown[:3]} have no place in this PEAudioVisualNet (tower={net.tower!r}, "
                          f"frame_encoder={net.frame_encoder!r}, text_tower={net.text_tower!r})")  # fmt: skip
    frames_missing = sorted(k for k in own if k.startswith(PE_ENCODER_PREFIX) and k not in kept)
    if net.frame_encoder == "pe_core" and any(k.startswith(PE_ENCODER_PREFIX) for k in kept) and frames_missing:
        raise LitzooError(f"checkpoint '{path}': the PE-Core frame encoder lacks {len(frames_missing)} keys ({', '.join(frames_missing[:3])} ...)")
    text_missing = sorted(k for k in own if k.startswith(TEXT_PREFIX) and k not in kept)
    if net.text_tower == "modernbert" and any(k.startswith(TEXT_PREFIX) for k in kept) and text_missing:
        raise LitzooError(f"checkpoint '{path}': the ModernBERT text model lacks {len(text_missing)} keys ({', '.join(text_missing[:3])} ...)")
    merged = {**own, **kept}
    load_state_dict_checked(net, merged, path, what="PE-AV model")
    return len(state) - len(kept)


# --------------------------------------------------------------------------------------------------- the LightningModule
def recall_at_k(similarity: Tensor, k: int) -> float:
    """The share of rows ``i`` of an ``(N, N)`` similarity whose match ``i`` is among the ``k`` best columns.

    Ties count against the match (its rank is the number of *other* columns scoring at least as high), so collapsed
    embeddings score 0, not 1. Written out rather than through torchmetrics' ``RetrievalRecall`` (1.9), which under-counts when
    scores are negative (cosine similarities can be): on a random 4 × 4 case it gave 0.25 for k = 2..5 where the ranks give
    0.5, 0.75, 1, 1, and the right values once 10 was added to every score.
    """
    diagonal = similarity.diagonal()[:, None]
    ranks = (similarity >= diagonal).sum(1) - 1  # the match itself is >= itself
    return float((ranks < k).float().mean())


def adamw_pe_av(params: Any, lr: float = 1e-3, weight_decay: float = 0.05) -> AdamW:
    """AdamW (ours: the release has no training code)."""
    return AdamW(params, lr=lr, weight_decay=weight_decay)


class PEAudioVisual(L.LightningModule):
    """Trains :class:`PEAudioVisualNet` with PE-AV's per-pairing contrastive objectives on ``{"audio", "video", "text"}`` batches.

    Batch keys: ``"audio"`` (fbank ``(B, 1, T, F)``, or waveform ``(B, 1, N)`` with ``audio_features="dac_vae"``), ``"video"``
    ``(B, T, C, H, W)``, captions as ``"text"`` (strings) or ``"tokens"`` / ``"token_mask"``; optional padding masks (True = real)
    ``"audio_mask"`` (``(B, T)`` fbank frames or ``(B, N)`` samples) and ``"video_mask"`` (``(B, T)`` frames).

    The caption vocabulary is the datamodule's ``vocabulary`` (``SyntheticAudioVideoDataModule(captions=True)``); the network is
    built in :meth:`setup` when ``vocab_size`` is not given.

    Args:
        vocab_size: caption token ids; ``None`` takes the datamodule's vocabulary size in :meth:`setup`.
        max_text_length: longest caption in tokens (longer ones are cut).
        pair_weights: weight of each pairing's loss (keys of ``PE_AV_PAIRINGS``); missing keys weigh 1, 0 turns one off.
        objective: ``"clip"`` (symmetric InfoNCE) or ``"sigmoid"`` (SigLIP) per pairing.
        top_k: the recall@K reported per pairing.
        optimizer: builds the optimizer from the parameters (default :func:`adamw_pe_av`).
        num_frames … dac_codebook_dim: the network's (see :class:`PEAudioVisualNet`); ``tower="official"`` trains the release's
            RMSNorm / SwiGLU / RoPE towers, ``audio_features="dac_vae"`` (with it) takes waveforms through the frozen DAC-VAE.
        frame_encoder, pe_core_config, frame_output_dim: the per-frame encoder (``"pe_core"``: PE-Core's vision tower, see
            :class:`PEAudioVisualNet`).
        text_tower, text_hidden_size, text_intermediate_size, text_num_hidden_layers, text_num_attention_heads, nth_text_layer:
            the text tower (``"modernbert"``: the release's ModernBERT, class-token state after ``nth_text_layer`` layers, needs
            the ``text`` extra; see :class:`PEAudioVisualNet`). ``max_text_length`` counts the caption's words; ModernBERT reads
            two more, ``[CLS]`` and ``[SEP]``.

    Raises:
        ValueError: an unknown pairing, objective, tower, text tower or audio feature, a negative or non-finite weight, all
            weights zero, bad sizes.
    """

    monitor = "val/audio_visual_text/R@1"
    monitor_mode = "max"

    def __init__(self, vocab_size: int | None = None, max_text_length: int = 24, pair_weights: dict[str, float] | None = None,
                 objective: str = "clip", top_k: Sequence[int] = (1, 5), optimizer: OptimizerCallable = adamw_pe_av,
                 num_frames: int = 8, image_size: int = 32, frame_patch: int = 8, frame_dim: int = 64, frame_depth: int = 2,
                 num_mel_bins: int = 64, audio_frames: int = 64, audio_patch_frames: int = 4, dim: int = 64, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 2.0, output_dim: int = 64, tower: str = "small", intermediate_size: int | None = None,
                 max_position_embeddings: int = 10_000, audio_features: str = "fbank", dac_encoder_hidden_size: int = 64,
                 dac_downsampling_ratios: Sequence[int] = (2, 8, 10, 12), dac_codebook_dim: int = 128, frame_encoder: str = "small",
                 pe_core_config: str | None = None, frame_output_dim: int | None = None, text_tower: str = "small",
                 text_hidden_size: int = 1024, text_intermediate_size: int = 2624, text_num_hidden_layers: int = 28,
                 text_num_attention_heads: int = 16, nth_text_layer: int | None = 22) -> None:  # fmt: skip
        super().__init__()
        unknown = sorted(set(pair_weights or {}) - set(PE_AV_PAIRINGS))
        if unknown:
            raise ValueError(f"PEAudioVisual: unknown pairings {unknown}; known: {sorted(PE_AV_PAIRINGS)}")
        weights = {pair: float((pair_weights or {}).get(pair, 1.0)) for pair in PE_AV_PAIRINGS}
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"PEAudioVisual: pair_weights must be finite, non-negative and not all zero, got {weights}")
        if objective not in OBJECTIVES:
            raise ValueError(f"PEAudioVisual: objective must be one of {OBJECTIVES}, got {objective!r}")
        if not top_k or any(k < 1 for k in top_k):
            raise ValueError(f"PEAudioVisual: top_k must be positive integers, got {top_k}")
        if vocab_size is not None and vocab_size < 2:
            raise ValueError(f"PEAudioVisual: vocab_size must be at least 2 (or None), got {vocab_size}")
        if max_text_length < 1:
            raise ValueError(f"PEAudioVisual: max_text_length must be positive, got {max_text_length}")
        if tower not in TOWER_KINDS or audio_features not in AUDIO_FEATURES or (audio_features == "dac_vae" and tower != "official"):
            raise ValueError(f"PEAudioVisual: tower must be one of {TOWER_KINDS} and audio_features one of {AUDIO_FEATURES} "
                             f"('dac_vae' with tower='official'), got {tower!r}, {audio_features!r}")  # fmt: skip
        # a bad per-frame encoder is refused here, not when setup() builds the net
        PEAudioVisualNet.frame_encoder_kwargs(frame_encoder, pe_core_config, image_size, frame_patch, frame_dim, frame_depth, num_heads,
                                              mlp_ratio, frame_output_dim)  # fmt: skip
        text = {"text_tower": text_tower, "text_hidden_size": text_hidden_size, "text_intermediate_size": text_intermediate_size,
                "text_num_hidden_layers": text_num_hidden_layers, "text_num_attention_heads": text_num_attention_heads,
                "nth_text_layer": nth_text_layer}  # fmt: skip
        PEAudioVisualNet.text_tower_sizes(**text)  # likewise a bad text tower
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer, self.pair_weights, self.top_k = optimizer, weights, tuple(top_k)
        self.net_kwargs = {"num_frames": num_frames, "image_size": image_size, "frame_patch": frame_patch, "frame_dim": frame_dim,
                           "frame_depth": frame_depth, "num_mel_bins": num_mel_bins, "audio_frames": audio_frames,
                           "audio_patch_frames": audio_patch_frames, "dim": dim, "depth": depth, "num_heads": num_heads,
                           "mlp_ratio": mlp_ratio, "output_dim": output_dim, "tower": tower, "intermediate_size": intermediate_size,
                           "max_position_embeddings": max_position_embeddings, "audio_features": audio_features,
                           "dac_encoder_hidden_size": dac_encoder_hidden_size, "dac_downsampling_ratios": tuple(dac_downsampling_ratios),
                           "dac_codebook_dim": dac_codebook_dim, "frame_encoder": frame_encoder, "pe_core_config": pe_core_config,
                           "frame_output_dim": frame_output_dim, **text}  # fmt: skip
        init_scale, init_bias = (math.log(1 / 0.07), 0.0) if objective == "clip" else (math.log(10.0), -10.0)
        self.logit_scale = nn.ParameterDict({pair: nn.Parameter(torch.tensor(init_scale)) for pair in PE_AV_PAIRINGS})
        self.logit_bias = nn.ParameterDict({pair: nn.Parameter(torch.tensor(init_bias)) for pair in PE_AV_PAIRINGS}) if objective == "sigmoid" else None
        self.clip_loss = ClipLoss()
        self.vocabulary: Any = None
        self.net: PEAudioVisualNet | None = None
        self._outputs: dict[str, list[dict[str, Tensor]]] = {"val": [], "test": []}
        if vocab_size is not None:
            self.build(vocab_size)

    def build(self, vocab_size: int) -> None:
        """Create the network (it waits for the vocabulary when ``vocab_size`` is not given)."""
        self.net = PEAudioVisualNet(vocab_size, self.hparams.max_text_length, **self.net_kwargs)
        self.hparams["vocab_size"] = vocab_size  # a checkpoint rebuilds the same net

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.vocabulary = getattr(datamodule, "vocabulary", None) or self.vocabulary
        if self.net is None:
            if self.vocabulary is None:
                raise LitzooError("PEAudioVisual: set model.vocab_size and give batches 'tokens', or use a datamodule with a caption "
                                  "vocabulary (SyntheticAudioVideoDataModule with captions: true)")  # fmt: skip
            self.build(self.vocabulary.vocab_size)
        assert self.net is not None
        if self.vocabulary is not None and self.vocabulary.vocab_size > self.net.vocab_size:
            raise LitzooError(f"PEAudioVisual: the datamodule's vocabulary of {self.vocabulary.vocab_size} exceeds the model's "
                              f"{self.net.vocab_size}")  # fmt: skip

    def tokens(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``(tokens, mask)`` of the batch's captions: its own ``"tokens"`` / ``"token_mask"``, else ``"text"`` encoded."""
        if "tokens" in batch:
            tokens = batch["tokens"]
            return tokens, batch.get("token_mask", tokens != 0)
        if "text" not in batch or self.vocabulary is None:
            raise LitzooError("PEAudioVisual: batches need captions ('text' with a datamodule vocabulary, or 'tokens'); "
                              "set captions: true on the datamodule")  # fmt: skip
        tokens, mask = self.vocabulary.encode(list(batch["text"]), self.hparams.max_text_length)
        return tokens.to(self.device), mask.to(self.device)

    def forward(self, audio: Tensor, video: Tensor, tokens: Tensor, mask: Tensor, audio_mask: Tensor | None = None,
                video_mask: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
        if self.net is None:
            raise RuntimeError("PEAudioVisual has no network yet: pass vocab_size, or run setup() with a captioned datamodule")
        return self.net(audio, video, tokens, mask, audio_mask, video_mask)

    def embed(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The eight embeddings of a batch (its optional ``"audio_mask"`` / ``"video_mask"`` passed on)."""
        return self(batch["audio"], batch["video"], *self.tokens(batch), batch.get("audio_mask"), batch.get("video_mask"))

    def pair_losses(self, embeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The loss of each pairing with a non-zero weight (unweighted)."""
        losses = {}
        for pair, (x, y) in PE_AV_PAIRINGS.items():
            if self.pair_weights[pair] == 0:
                continue
            if self.logit_bias is None:
                losses[pair] = clip_pair_loss(embeds[x], embeds[y], self.logit_scale[pair], self.clip_loss)
            else:
                losses[pair] = sigmoid_pair_loss(embeds[x], embeds[y], self.logit_scale[pair], self.logit_bias[pair])
        return losses

    def loss(self, embeds: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        losses = self.pair_losses(embeds)
        total = sum(self.pair_weights[pair] * value for pair, value in losses.items())
        if not torch.isfinite(total):
            raise LitzooError(f"PEAudioVisual: non-finite loss {float(total)} ({ {k: float(v) for k, v in losses.items()} })")
        return total, losses  # type: ignore[return-value]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        total, losses = self.loss(self.embed(batch))
        size = len(batch["audio"])
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        for pair, value in losses.items():
            self.log(f"train/{pair}/loss", value, batch_size=size)
        return total

    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> None:
        embeds = self.embed(batch)
        total, _ = self.loss(embeds)
        self.log(f"{stage}/loss", total, prog_bar=stage == "val", batch_size=len(batch["audio"]))
        self._outputs[stage].append({name: value.detach() for name, value in embeds.items()})

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def retrieval(self, embeds: Mapping[str, Tensor]) -> dict[str, float]:
        """Recall@K of both directions of every pairing over row-aligned embeddings (cosine similarity), and their mean."""
        out = {}
        for pair, (x, y) in PE_AV_PAIRINGS.items():
            similarity = F.normalize(embeds[x].float(), dim=-1) @ F.normalize(embeds[y].float(), dim=-1).T
            for k in self.top_k:
                forward, backward = recall_at_k(similarity, k), recall_at_k(similarity.T, k)
                out[f"{pair}/{x}_to_{y}_R@{k}"], out[f"{pair}/{y}_to_{x}_R@{k}"] = forward, backward
                out[f"{pair}/R@{k}"] = (forward + backward) / 2
        return out

    def _eval_epoch_end(self, stage: str) -> None:
        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs or self.trainer.sanity_checking:
            return
        embeds = {name: torch.cat([o[name] for o in outputs]) for name in outputs[0]}
        for key, value in self.retrieval(embeds).items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "audio_visual_text/R@1")
        self.log(f"{stage}/chance_R@1", 1.0 / len(embeds["audio"]))

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> Any:
        return self.optimizer(self.parameters())


__all__ = [
    "AUDIO_FEATURES",
    "FRAME_ENCODERS",
    "PE_AV_TEXT_CONFIG",
    "TEXT_DEFAULTS",
    "TEXT_TOWERS",
    "TOWER_KINDS",
    "AVTransformer",
    "AudioEncoder",
    "AudioVisualEncoder",
    "PEAudioFrameNet",
    "PEAudioVisual",
    "OfficialTowerSpec",
    "PEAudioVisualNet",
    "RopeAVTransformer",
    "SequenceTransformer",
    "VisualEncoder",
    "add_cls_sep",
    "adamw_pe_av",
    "build_text_model",
    "check_padding_mask",
    "frame_spans",
    "load_pe_a_frame_weights",
    "load_pe_av_shared_weights",
    "import_transformers",
    "modernbert_text_config",
    "recall_at_k",
    "official_pe_av_key_map",
    "pool_text",
]
