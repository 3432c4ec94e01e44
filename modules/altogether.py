"""Altogether — Image Captioning via Re-aligning Alt-text (Xu, Huang, Tan, Kadian, Mahajan, Wang, Feichtenhofer, Ghosh;
EMNLP 2024, arXiv:2410.17251; the captioner behind MetaCLIP 1.2). Official code: facebookresearch/MetaCLIP
``apps/altogether`` (``src/mini_clip/model_altogether.py``, ``src/training/data_altogether_{pt,ft}.py``,
``src/training/train_altogether.py``, ``infer.py``) and ``configs/altogether.py``.

A ClipCap-style captioner is trained to *rewrite* an image's alt-text into a caption aligned with the image:

1. a frozen CLIP image encoder gives the L2-normalised image embedding (``clip_model.encode_image`` then
   ``F.normalize``; here a litzoo :class:`~litzoo.framework.nn.clip.CLIP`'s vision tower and projection, loaded with
   :func:`~litzoo.framework.nn.clip.load_clip_weights`);
2. the :class:`TransformerMapper` maps it with one linear layer to ``clip_length`` tokens, appends ``prefix_length``
   learned prefix tokens, runs a transformer over the ``clip_length + prefix_length`` tokens (8 layers, 8 heads, MLP
   ratio 2 with ReLU, no bias on the q/k/v projections, pre-norm) and keeps the outputs at the prefix positions: the
   prefix embeddings;
3. a causal LM reads ``[prefix][prompt][caption][eos][padding]``: the prompt is the original alt-text or empty, each
   with probability ½ (``random.choice([alt, ""])``), cut to its first ``rewrite_prompt`` tokens and **left**-padded to
   exactly ``rewrite_prompt`` tokens with the pad id; the caption's tokens and the end token follow; the whole text is
   cut to ``max_seq_len`` tokens and right-padded. The next-token loss is taken on the caption and its end token only
   (not the prefix, the prompt or the padding), averaged over those tokens of the batch (``sum(CE · mask) / sum(mask)``).

Verified against the official code: the mapper's layout (linear → ``clip_length`` tokens, learned ``prefix_const``
after them, output ``[:, clip_length:]``), the prompt's left padding and truncation, ``max_seq_len`` counting the prompt,
the loss positions (``logits[:, -num_new_token:]`` against ``tokens[:, -num_new_token:]`` with
``num_new_token = max_seq_len - rewrite_prompt``, which are the caption positions), the 50/50 prompt dropout, the
defaults (``prefix_length = clip_length = 40``, ``rewrite_prompt = 128``, ``max_seq_len = 320``, lr 2e-4 with a
200-step linear warm-up then cosine to 0 — ``cosine_lr`` is called without ``min_ratio``, so the config's
``min_ratio = 0.1`` is unused —, AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.2 except on 1-D, bias and norm
parameters), and that the whole captioner (mapper and decoder) is trained while the CLIP model stays frozen.

Chosen here, where the paper or the code says otherwise or nothing:

* The decoder is :class:`~litzoo.framework.nn.gpt.GPT` (GPT-2 layout, default GPT-2 small), trained from scratch, not
  a pretrained OPT-1.3B; the tokenizer is the DataModule's BPE (pad id 0, end id 3), not OPT's (pad id 1).
* Labels use the ignore index -100 (PyTorch's / Hugging Face's convention) where the official multiplies by a float mask;
  the mean over labelled tokens is the same. The official mask has an off-by-one for a text that fills ``max_seq_len``
  exactly (``mask[:-0]`` is empty, so such a sample contributes no loss); here its caption is counted.
* No attention mask: the official one hides only the right padding (the left padding of the prompt is attended), and
  with causal attention no labelled position ever sees the right padding, so the loss is the same; the batch is cut
  after its last labelled column for speed (the same loss, as later positions never influence earlier ones).
* The mapper's LayerNorms use eps 1e-6 (the shared ``Block``), the official's 1e-5.
* Decoding: greedy and beam search (length-normalised, Hugging Face's ``length_penalty`` rule); the official samples
  (temperature 0.2, top-p 0.7).

The two stages (official ``data_altogether_pt.py`` / ``data_altogether_ft.py``): the same model, layout, loss and
prompt dropout. **Pretraining** on web images with several alt-texts: target = the longest alt-text (by characters,
after de-duplication), prompt = another of its alt-texts drawn uniformly, or empty for an image with one; verified
line by line, chosen here: ties go to the first in the manifest (the official's order is a ``set``'s, arbitrary) and
blank alt-texts are dropped (:class:`~litzoo.datamodules.recaption.AltTextPoolDataModule`, ``configs/altogether/
digits_pretrain.yaml``). **Fine-tuning** on (alt-text, human caption) pairs (:class:`~litzoo.datamodules.recaption.
RecaptionDataModule`), started from the pretrained captioner with ``init_from`` (official ``resume`` of the
pretraining checkpoint: weights only, a fresh optimizer and schedule). The pretrained captioner's tokenizer is kept
(its ids are what the weights learned; the official's OPT tokenizer is one and the same in both stages).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import AdamW

from litzoo.framework.checkpoints import check_checkpoint_class, load_checkpoint, load_state_dict_checked, state_dict_from
from litzoo.framework.data.tokenization import TextTokenizer
from litzoo.framework.errors import LitzooError
from litzoo.framework.network_args import check_network_kwargs, network_arguments
from litzoo.framework.nn.clip import CLIP, load_clip_weights
from litzoo.framework.nn.gpt import GPT
from litzoo.framework.nn.vit import Block
from litzoo.framework.optim import split_weight_decay, warmup_cosine_per_step

#: label of a position without loss (the prefix, the prompt, the padding): PyTorch's cross-entropy ``ignore_index``
IGNORE_INDEX = -100

# ------------------------------------------------------------------------------------ the data layout


def drop_prompts(alt_texts: Sequence[str], probability: float = 0.5) -> list[str]:
    """The prompts of a batch: each alt-text replaced by the empty prompt with ``probability`` (official: ½,
    ``random.choice([alt, ""])``). Draws from torch's global generator, which ``seed_everything`` seeds and
    litzoo's exact resume saves."""
    empty = torch.rand(len(alt_texts)) < probability
    return ["" if drop else text for text, drop in zip(alt_texts, empty.tolist(), strict=True)]


def left_pad(ids: Sequence[int], length: int, pad_id: int) -> list[int]:
    """The prompt's first ``length`` token ids, left-padded with ``pad_id`` to exactly ``length`` (official)."""
    ids = list(ids)[:length]
    return [pad_id] * (length - len(ids)) + ids


def layout(prompt_ids: Sequence[int], caption_ids: Sequence[int], rewrite_prompt: int, max_seq_len: int, pad_id: int, eos_id: int) -> tuple[list[int], list[int]]:
    """One training text: ``tokens = [prompt left-padded to rewrite_prompt][caption][eos]``, cut to ``max_seq_len`` and
    right-padded to it, and ``labels`` of the same length: the token on the caption and eos positions,
    :data:`IGNORE_INDEX` on the prompt and the padding. The image prefix is not part of it (see :meth:`Altogether.loss`)."""
    tokens = (left_pad(prompt_ids, rewrite_prompt, pad_id) + list(caption_ids) + [eos_id])[:max_seq_len]
    labels = [IGNORE_INDEX] * rewrite_prompt + tokens[rewrite_prompt:]
    padding = max_seq_len - len(tokens)
    return tokens + [pad_id] * padding, labels + [IGNORE_INDEX] * padding


# ------------------------------------------------------------------------------------ the blocks


class ReluMlp(nn.Module):
    """``fc1 → ReLU → fc2``: the mapper's feed-forward layer (official ``MlpTransformer``, ``act=F.relu``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class TransformerMapper(nn.Module):
    """Image embedding ``(B, dim_clip)`` → prefix embeddings ``(B, prefix_length, dim_embedding)`` (official ``TransformerMapper``).

    ``linear`` maps the embedding to ``clip_length`` tokens; ``prefix_const`` (``prefix_length`` learned tokens,
    initialised N(0, 1) as the official) is appended after them; a pre-norm transformer runs over all of them; the
    outputs at the learned tokens' positions are the prefix.

    Args:
        dim_clip: width of the image embedding.
        dim_embedding: width of the language model's token embeddings.
        prefix_length: learned prefix tokens (= prefix embeddings handed to the LM).
        clip_length: tokens the image embedding is mapped to.
        num_layers: transformer layers.
        num_heads: attention heads (official: 8).
        mlp_ratio: MLP hidden width over ``dim_embedding`` (official: 2).
    """

    def __init__(self, dim_clip: int, dim_embedding: int, prefix_length: int = 40, clip_length: int = 40, num_layers: int = 8, num_heads: int = 8,
                 mlp_ratio: float = 2.0) -> None:  # fmt: skip
        super().__init__()
        if min(dim_clip, dim_embedding, prefix_length, clip_length, num_layers) < 1:
            raise ValueError(f"dim_clip, dim_embedding, prefix_length, clip_length and num_layers must be positive, got "
                             f"{dim_clip}, {dim_embedding}, {prefix_length}, {clip_length}, {num_layers}")  # fmt: skip
        self.dim_clip, self.clip_length, self.prefix_length = dim_clip, clip_length, prefix_length
        self.linear = nn.Linear(dim_clip, clip_length * dim_embedding)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim_embedding))
        self.transformer = nn.ModuleList(Block(dim_embedding, num_heads, mlp_ratio, qkv_bias=False, mlp_layer=ReluMlp) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim_clip:
            raise ValueError(f"expected image embeddings of shape (B, {self.dim_clip}), got {tuple(x.shape)}")
        tokens = self.linear(x).view(x.shape[0], self.clip_length, -1)
        prefix = self.prefix_const.unsqueeze(0).expand(x.shape[0], -1, -1)
        out = torch.cat((tokens, prefix), dim=1)
        for block in self.transformer:
            out = block(out)  # bidirectional: every token sees the image tokens and the other prefix tokens
        return out[:, self.clip_length :]


class FrozenImageEncoder(nn.Module):
    """A CLIP without its text tower, frozen: ``(B, C, S, S)`` → L2-normalised ``(B, E)`` embeddings by the CLIP's own
    ``encode_image`` (whatever its pooling). Its parameters never require gradients and it stays in eval mode whatever
    ``train()`` says."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        clip.text = None  # the captioner reads images only; the text tower's weights are dropped
        clip.text_projection = None
        clip.logit_scale = None  # the contrastive temperature is the text tower's partner: unused here
        self.clip = clip
        self.image_size, self.in_chans, self.out_dim = clip.image_size, clip.in_chans, clip.visual_projection.out_features
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        return super().train(False)  # frozen: no dropout / drop-path / statistics updates, ever

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images, normalize=True)


# ---------------------------------------------------------------------------------------- decoding


def beam_search(next_logprobs: Callable[[list[list[int]]], Tensor], beam_size: int, max_new_tokens: int, eos_id: int,
                length_penalty: float = 1.0) -> list[int]:  # fmt: skip
    """The best continuation under a beam of ``beam_size`` (without its end token).

    ``next_logprobs(sequences)`` gives the ``(K, V)`` log-probabilities of the next token after each of the ``K``
    generated sequences. A sequence ends with ``eos_id``; its score is its summed log-probability over
    ``(length with eos) ** length_penalty`` (Hugging Face's rule). Each step keeps the ``beam_size`` best unfinished
    extensions among the ``2 · beam_size`` best; the search stops when ``beam_size`` sequences have ended (Hugging Face's
    ``early_stopping=True``) or after ``max_new_tokens`` (then unfinished ones compete, scored over their length)."""
    if beam_size < 1 or max_new_tokens < 1:
        raise ValueError(f"beam_size and max_new_tokens must be positive, got {beam_size} and {max_new_tokens}")
    beams: list[tuple[float, list[int]]] = [(0.0, [])]
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_new_tokens):
        logprobs = next_logprobs([sequence for _, sequence in beams])
        if not torch.isfinite(logprobs).all():
            raise LitzooError("the captioner produced non-finite logits while decoding")
        totals = torch.tensor([score for score, _ in beams], dtype=logprobs.dtype, device=logprobs.device)[:, None] + logprobs
        values, flat = totals.flatten().topk(min(2 * beam_size, totals.numel()))
        alive: list[tuple[float, list[int]]] = []
        for value, index in zip(values.tolist(), flat.tolist(), strict=True):
            beam, token = divmod(index, logprobs.shape[1])
            sequence = beams[beam][1]
            if token == eos_id:
                finished.append((value / (len(sequence) + 1) ** length_penalty, sequence))
            else:
                alive.append((value, [*sequence, token]))
            if len(alive) == beam_size:
                break
        beams = alive
        if len(finished) >= beam_size or not beams:
            break
    if not finished:
        finished = [(score / len(sequence) ** length_penalty, sequence) for score, sequence in beams]
    return max(finished, key=lambda item: item[0])[1]


# ---------------------------------------------------------------------------------------- the model


class Altogether(nn.Module):
    """The captioner: frozen image encoder → :class:`TransformerMapper` → prefix embeddings → causal LM (:class:`GPT`)
    over ``[prefix][prompt][caption]``.

    Args:
        image_encoder: the frozen encoder, images → ``(B, image_dim)`` normalised embeddings (:class:`FrozenImageEncoder`).
        image_dim: width of its embeddings.
        vocab_size: tokens of the LM's vocabulary (official OPT: 50272).
        prefix_length: prefix embeddings from the mapper (official 40).
        clip_length: tokens the image embedding is mapped to inside the mapper (official 40).
        mapper_depth: the mapper's transformer layers (official 8).
        mapper_heads: the mapper's attention heads (official 8).
        rewrite_prompt: prompt tokens, the alt-text cut and left-padded to it (official 128).
        max_seq_len: text tokens, prompt included (official 320); the caption gets ``max_seq_len - rewrite_prompt``.
        dim: the LM's width (GPT-2 small: 768).
        depth: the LM's blocks.
        num_heads: the LM's attention heads.
        mlp_ratio: the LM's MLP hidden width over ``dim``.
        pad_token_id: id of the padding token (litzoo's BPE: 0).
        eos_token_id: id of the end token that closes a caption (litzoo's BPE ``<end_of_text>``: 3).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        image_dim: int,
        vocab_size: int = 50272,
        prefix_length: int = 40,
        clip_length: int = 40,
        mapper_depth: int = 8,
        mapper_heads: int = 8,
        rewrite_prompt: int = 128,
        max_seq_len: int = 320,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        pad_token_id: int = 0,
        eos_token_id: int = 3,
    ) -> None:
        super().__init__()
        if rewrite_prompt < 0 or max_seq_len <= rewrite_prompt:
            raise ValueError(f"need 0 <= rewrite_prompt < max_seq_len, got rewrite_prompt={rewrite_prompt}, max_seq_len={max_seq_len}")
        for name, value in (("pad_token_id", pad_token_id), ("eos_token_id", eos_token_id)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"{name} must be in 0..{vocab_size - 1}, got {value}")
        self.rewrite_prompt, self.max_seq_len = rewrite_prompt, max_seq_len
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.image_encoder = image_encoder
        self.clip_project = TransformerMapper(image_dim, dim, prefix_length, clip_length, mapper_depth, mapper_heads)
        self.gpt = GPT(vocab_size, context_length=prefix_length + max_seq_len, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)

    @property
    def prefix_length(self) -> int:
        return self.clip_project.prefix_length

    def prefix(self, images: Tensor) -> Tensor:
        """``(B, prefix_length, dim)`` prefix embeddings of the images."""
        return self.clip_project(self.image_encoder(images))

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """``(B, prefix_length + T, vocab)`` next-token logits over ``[prefix][tokens]``."""
        return self.gpt.forward_embeddings(torch.cat((self.prefix(images), self.gpt.embed(tokens)), dim=1))

    def loss(self, images: Tensor, tokens: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the labelled positions (:func:`layout`'s ``labels``): the prefix gets
        :data:`IGNORE_INDEX` labels, the logit at position ``i`` predicts the label at ``i + 1``."""
        logits = self(images, tokens[:, :-1])  # the last token predicts nothing
        full = torch.cat((labels.new_full((labels.shape[0], self.prefix_length), IGNORE_INDEX), labels), dim=1)
        return F.cross_entropy(logits.flatten(0, 1).float(), full[:, 1:].flatten(), ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def generate(self, images: Tensor, prompts: Tensor, max_new_tokens: int | None = None, beam_size: int = 1, length_penalty: float = 1.0) -> list[list[int]]:
        """Caption token ids (without the end token) after ``[prefix][prompt]``; ``prompts`` are ``(B, rewrite_prompt)``
        left-padded ids. ``beam_size`` 1 is greedy decoding; at most ``max_new_tokens`` (default
        ``max_seq_len - rewrite_prompt``, the official ``num_new_token``) tokens each.

        Raises:
            LitzooError: the logits are not finite.
        """
        limit = self.max_seq_len - self.rewrite_prompt
        max_new_tokens = limit if max_new_tokens is None else max_new_tokens
        if not 1 <= max_new_tokens <= limit:
            raise ValueError(f"max_new_tokens must be in 1..{limit} (max_seq_len - rewrite_prompt), got {max_new_tokens}")
        if prompts.shape != (len(images), self.rewrite_prompt):
            raise ValueError(f"prompts must be (B, rewrite_prompt) = ({len(images)}, {self.rewrite_prompt}), got {tuple(prompts.shape)}")
        start = torch.cat((self.prefix(images), self.gpt.embed(prompts)), dim=1)  # (B, P + R, D)
        if beam_size > 1:
            out = []
            for row in start:

                def next_logprobs(sequences: list[list[int]], row: Tensor = row) -> Tensor:
                    ids = torch.tensor(sequences, dtype=torch.long, device=row.device).reshape(len(sequences), -1)
                    x = torch.cat((row.expand(len(sequences), -1, -1), self.gpt.embed(ids)), dim=1)
                    return self.gpt.forward_embeddings(x)[:, -1].float().log_softmax(dim=-1)

                out.append(beam_search(next_logprobs, beam_size, max_new_tokens, self.eos_token_id, length_penalty))
            return out
        generated = [[] for _ in range(len(images))]
        done = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        x = start
        for _ in range(max_new_tokens):
            logits = self.gpt.forward_embeddings(x)[:, -1]
            if not torch.isfinite(logits).all():
                raise LitzooError("the captioner produced non-finite logits while decoding")
            token = logits.argmax(dim=-1)
            for row in (~done).nonzero().flatten().tolist():
                if int(token[row]) != self.eos_token_id:
                    generated[row].append(int(token[row]))
            done |= token == self.eos_token_id
            if bool(done.all()):
                break
            x = torch.cat((x, self.gpt.embed(token)[:, None]), dim=1)
        return generated


# ------------------------------------------------------------------------------ the LightningModule


def adamw_altogether(params, lr: float = 2e-4, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, weight_decay: float = 0.2) -> AdamW:
    """AdamW as ``configs/altogether.py`` + MetaCLIP's ``Config``: lr 2e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.2."""
    return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def frozen_clip(clip_checkpoint: str | None, clip_kwargs: Mapping[str, Any] | None) -> tuple[CLIP, dict[str, Any]]:
    """The CLIP whose image tower the captioner freezes, and its architecture arguments.

    A ``CLIPModule`` checkpoint records its architecture (its hyper-parameters); a bare CLIP state dict needs
    ``clip_kwargs``; without a checkpoint, ``clip_kwargs`` builds a randomly initialised CLIP.

    Raises:
        ValueError: neither is given, or ``clip_kwargs`` names an argument CLIP does not take.
        LitzooError: naming the file: unreadable, no recorded architecture and no ``clip_kwargs``, ``clip_kwargs`` that
            contradict the recorded architecture, weights that do not fit.
    """
    if clip_checkpoint is None and clip_kwargs is None:
        raise ValueError("AltogetherCaptioner needs clip_checkpoint (a CLIPModule .ckpt or CLIP state dict) or, for a RANDOM frozen image "
                         "encoder, clip_kwargs (the CLIP architecture)")  # fmt: skip
    given = dict(clip_kwargs or {})
    check_network_kwargs(CLIP, given, "AltogetherCaptioner.clip_kwargs")
    arch = dict(given)
    if clip_checkpoint is not None:
        recorded = load_checkpoint(clip_checkpoint).get("hyper_parameters")
        names = network_arguments(CLIP)
        recorded = {k: v for k, v in recorded.items() if k in names} if isinstance(recorded, Mapping) else {}
        if not recorded and clip_kwargs is None:
            raise LitzooError(f"checkpoint '{clip_checkpoint}' records no CLIP architecture (a bare state dict?): give clip_kwargs")
        conflicts = sorted(k for k in given if k in recorded and recorded[k] != given[k])
        if conflicts:
            raise LitzooError(f"checkpoint '{clip_checkpoint}' records a CLIP with " + ", ".join(f"{k}={recorded[k]!r}" for k in conflicts)
                              + ", but clip_kwargs says " + ", ".join(f"{k}={given[k]!r}" for k in conflicts))  # fmt: skip
        arch = {**recorded, **given}
    clip = CLIP(**arch)
    if clip_checkpoint is not None:
        load_clip_weights(clip, clip_checkpoint)
    return clip, arch


class AltogetherCaptioner(L.LightningModule):
    """Trains :class:`Altogether` to rewrite alt-texts into aligned captions on ``{"image", "alt_text", "caption"}``
    batches (:class:`litzoo.datamodules.recaption.RecaptionDataModule`), and re-captions images (:meth:`caption`).

    Training: the prompt dropout (:func:`drop_prompts`), the layout (:func:`layout`), the masked loss
    (:meth:`Altogether.loss`). Validation logs the loss with the alt-text prompt (``val/loss_alt_prompt``), with the
    empty prompt (``val/loss_empty_prompt``) and their mean (``val/loss``, the training objective's expectation), and
    a few greedy captions of validation images to TensorBoard. The tokenizer comes from the DataModule and is stored in
    checkpoints (with the image preprocessing), so :func:`load_captioner` rebuilds a working captioner from one file.

    Args:
        clip_checkpoint: the CLIP whose image tower is frozen: a ``CLIPModule`` ``.ckpt`` (its architecture is read
            from it) or a CLIP state dict (give ``clip_kwargs``). ``None``: a RANDOMLY initialised frozen tower built
            from ``clip_kwargs`` (a warning says so when fitting) — random features, never trained.
        clip_kwargs: CLIP's architecture arguments (``image_size``, ``patch_size``, ``vision_width`` ...), for a bare
            state dict or a random tower; with a ``CLIPModule`` checkpoint it may only repeat what it records.
        prompt_dropout: probability that a training prompt is empty instead of the alt-text (official ½).
        warmup_steps: linear warm-up steps of the default schedule (official 200), then cosine to 0.
        num_logged_captions: validation images whose generated captions go to TensorBoard each validation.
        init_from: an ``AltogetherCaptioner`` checkpoint (the pretraining stage) whose weights start this one (the
            fine-tuning stage): mapper, LM and frozen encoder, checked key by key and shape by shape, and its tokenizer,
            which this captioner keeps instead of the DataModule's; the optimizer and schedule start afresh. With a
            ``clip_checkpoint`` too, the two frozen encoders must hold the same weights.
        optimizer: called with parameter groups; default AdamW(2e-4, (0.9, 0.98), 1e-6, wd 0.2), no decay on 1-D,
            bias and norm parameters (official).
        lr_scheduler: called with the optimizer; ``None`` = warm-up then cosine to 0, per step.
        **net_kwargs: :class:`Altogether`'s arguments ``vocab_size`` … ``eos_token_id`` (the image encoder is set here).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        clip_checkpoint: str | None = None,
        clip_kwargs: dict[str, Any] | None = None,
        prompt_dropout: float = 0.5,
        warmup_steps: int = 200,
        num_logged_captions: int = 4,
        init_from: str | None = None,
        optimizer: OptimizerCallable = adamw_altogether,
        lr_scheduler: LRSchedulerCallable | None = None,
        **net_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_kwargs(Altogether, net_kwargs, type(self).__name__, set_by_owner=("image_encoder", "image_dim"))
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {prompt_dropout}")
        if warmup_steps < 0 or num_logged_captions < 0:
            raise ValueError(f"warmup_steps and num_logged_captions must be >= 0, got {warmup_steps} and {num_logged_captions}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        clip, arch = frozen_clip(clip_checkpoint, clip_kwargs)
        self.hparams["clip_kwargs"] = arch  # the architecture, so that a checkpoint of this module rebuilds without the CLIP file
        encoder = FrozenImageEncoder(clip)
        self.net = Altogether(encoder, encoder.out_dim, **net_kwargs)
        # images and a full text, for the model summary's FLOPs (one sample: the FLOPs of one training text)
        self.example_input_array = (torch.zeros(2, encoder.in_chans, encoder.image_size, encoder.image_size), torch.zeros(2, self.net.max_seq_len, dtype=torch.long))
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.tokenizer: TextTokenizer | None = None
        self.preprocess: dict[str, Any] | None = None  # image_size, channels, mean, std of the DataModule it was trained with
        self._examples: dict[str, Any] | None = None
        self._pretrained_tokenizer = False  # True once init_from gave the tokenizer: the DataModule's is then not used
        if init_from is not None:
            self.init_from_captioner(init_from)

    # ------------------------------------------------------------------------------ set-up
    def init_from_captioner(self, path: str) -> None:
        """Start from the weights and tokenizer of the ``AltogetherCaptioner`` checkpoint ``path`` (weights only).

        Raises:
            LitzooError: naming the file: unreadable, not an AltogetherCaptioner checkpoint, weights missing, unexpected
                or of another shape (another architecture), a frozen encoder that differs from ``clip_checkpoint``'s,
                no tokenizer.
        """
        checkpoint = load_checkpoint(path)
        check_checkpoint_class(path, checkpoint, AltogetherCaptioner, "init_from needs")
        state = state_dict_from(checkpoint, path)
        if self.hparams.clip_checkpoint is not None:
            # the mapper learned the features of the encoder it was pretrained with: another CLIP would invalidate it
            ours = {k: v for k, v in self.state_dict().items() if k.startswith("net.image_encoder.")}
            differ = sorted(k for k, v in ours.items() if k in state and (state[k].shape != v.shape or not torch.equal(state[k].to(v.dtype), v)))
            if differ:
                raise LitzooError(f"checkpoint '{path}' was trained with a frozen image encoder other than clip_checkpoint "
                                  f"'{self.hparams.clip_checkpoint}' ({len(differ)} tensors differ, e.g. {differ[0]})")  # fmt: skip
        load_state_dict_checked(self, state, path)
        self.on_load_checkpoint(checkpoint)
        if self.tokenizer is None:
            raise LitzooError(f"checkpoint '{path}' holds no tokenizer: the captioner's token ids mean nothing without it")
        self._pretrained_tokenizer = True

    def set_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Use ``tokenizer`` (checked against the LM's vocabulary, pad and end ids)."""
        net = self.net
        if tokenizer.vocab_size > net.gpt.token_embedding.num_embeddings:
            raise LitzooError(f"the tokenizer has {tokenizer.vocab_size} tokens but the captioner's vocab_size is {net.gpt.token_embedding.num_embeddings}")
        if (tokenizer.pad_id, tokenizer.end_id) != (net.pad_token_id, net.eos_token_id):
            raise LitzooError(f"the tokenizer's pad / end ids ({tokenizer.pad_id}, {tokenizer.end_id}) differ from the captioner's "
                              f"pad_token_id / eos_token_id ({net.pad_token_id}, {net.eos_token_id})")  # fmt: skip
        self.tokenizer = tokenizer

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = None if self._pretrained_tokenizer else getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        elif self.tokenizer is None:
            raise LitzooError("AltogetherCaptioner needs a tokenizer: use a DataModule with a `tokenizer` (litzoo.datamodules.recaption.RecaptionDataModule)")
        encoder = self.net.image_encoder
        shape = getattr(datamodule, "input_shape", None)
        if shape is not None and tuple(shape) != (encoder.in_chans, encoder.image_size, encoder.image_size):
            raise LitzooError(f"the DataModule's images are {tuple(shape)} but the frozen CLIP image encoder takes "
                              f"({encoder.in_chans}, {encoder.image_size}, {encoder.image_size})")  # fmt: skip
        if all(hasattr(datamodule, key) for key in ("image_size", "channels", "mean", "std")):
            preprocess = {key: getattr(datamodule, key) for key in ("image_size", "channels", "mean", "std")}
            if self._pretrained_tokenizer and self.preprocess is not None and _plain(self.preprocess) != _plain(preprocess):
                # the pretrained mapper learned features of images normalised one way: refuse another silently
                raise LitzooError(f"init_from '{self.hparams.init_from}' was trained on images preprocessed as {self.preprocess}, "
                                  f"but the DataModule gives {preprocess}")  # fmt: skip
            self.preprocess = preprocess

    def on_fit_start(self) -> None:
        if self.hparams.clip_checkpoint is None and self.hparams.init_from is None:
            rank_zero_warn("AltogetherCaptioner: no clip_checkpoint, so the frozen image encoder is a RANDOMLY initialised CLIP vision tower "
                           "(random features); pass --model.init_args.clip_checkpoint <CLIPModule .ckpt> for a trained one")  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:
            checkpoint["altogether"] = {"tokenizer": self.tokenizer.tokenizer.to_str(), "preprocess": self.preprocess}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("altogether")
        if isinstance(saved, Mapping) and isinstance(saved.get("tokenizer"), str):
            from tokenizers import Tokenizer

            self.set_tokenizer(TextTokenizer(Tokenizer.from_str(saved["tokenizer"]), context_length=max(3, self.net.max_seq_len)))
            self.preprocess = saved.get("preprocess")

    # ------------------------------------------------------------------------------ text ↔ ids
    def _tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise RuntimeError("AltogetherCaptioner has no tokenizer yet: fit it with a RecaptionDataModule, load a checkpoint, or call set_tokenizer")
        return self.tokenizer

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tokenizer().tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def sequences(self, prompts: Sequence[str], captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(tokens, labels)`` of a batch (:func:`layout`), cut after the last labelled column (no loss changes)."""
        net = self.net
        rows = [layout(p, c, net.rewrite_prompt, net.max_seq_len, net.pad_token_id, net.eos_token_id)
                for p, c in zip(self._ids(prompts), self._ids(captions), strict=True)]  # fmt: skip
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.long, device=self.device)
        labels = torch.tensor([r[1] for r in rows], dtype=torch.long, device=self.device)
        last = int((labels != IGNORE_INDEX).any(dim=0).nonzero().max()) + 1
        return tokens[:, :last], labels[:, :last]

    def prompt_tokens(self, alt_texts: Sequence[str]) -> Tensor:
        """``(B, rewrite_prompt)`` left-padded prompt ids of the alt-texts (``""`` for the empty prompt)."""
        net = self.net
        return torch.tensor([left_pad(ids, net.rewrite_prompt, net.pad_token_id) for ids in self._ids(alt_texts)], dtype=torch.long, device=self.device)

    @torch.no_grad()
    def caption(self, images: Tensor, alt_texts: Sequence[str] | None = None, beam_size: int = 1, max_new_tokens: int | None = None) -> list[str]:
        """Captions of ``images``, each rewriting its alt-text (``None``: the empty prompt, plain captioning)."""
        prompts = self.prompt_tokens([""] * len(images) if alt_texts is None else alt_texts)
        ids = self.net.generate(images.to(self.device), prompts, max_new_tokens=max_new_tokens, beam_size=beam_size)
        return self._tokenizer().tokenizer.decode_batch(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        return self.net(images, tokens)

    def caption_loss(self, batch: dict[str, Any], prompts: Sequence[str]) -> Tensor:
        return self.net.loss(batch["image"], *self.sequences(prompts, batch["caption"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        prompts = drop_prompts(batch["alt_text"], self.hparams.prompt_dropout)
        loss = self.caption_loss(batch, prompts)
        batch_size = len(prompts)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/alt_prompt_share", sum(bool(p) for p in prompts) / batch_size, batch_size=batch_size)
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        batch_size = len(batch["alt_text"])
        with_alt = self.caption_loss(batch, batch["alt_text"])
        without = self.caption_loss(batch, [""] * batch_size)
        self.log(f"{stage}/loss_alt_prompt", with_alt, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/loss_empty_prompt", without, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/loss", (with_alt + without) / 2, prog_bar=True, batch_size=batch_size, sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")
        if batch_idx == 0:
            count = self.hparams.num_logged_captions
            self._examples = {key: batch[key][:count] for key in ("image", "alt_text", "caption")}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        examples, self._examples = self._examples, None
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if examples is None or not len(examples["image"]) or self.trainer.sanity_checking or not loggers or not self.trainer.is_global_zero:
            return
        rewritten = self.caption(examples["image"], examples["alt_text"])
        plain = self.caption(examples["image"])
        lines = [f"{i}: alt-text \"{alt}\" → \"{new}\" (empty prompt: \"{free}\"; target \"{target}\")"
                 for i, (alt, new, free, target) in enumerate(zip(examples["alt_text"], rewritten, plain, examples["caption"], strict=True))]  # fmt: skip
        for logger in loggers:
            logger.experiment.add_text("val/captions", "  \n".join(lines), self.global_step)

    # ------------------------------------------------------------------------- optimizers
    def no_weight_decay(self) -> set[str]:
        """The official exclusions: 1-D parameters and names with ``bias``, ``norm``, ``ln`` or ``bn``."""
        return {name for name, p in self.named_parameters() if p.ndim < 2 or any(part in name for part in ("bias", "norm", "ln", "bn"))}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(split_weight_decay(self, self.no_weight_decay()))  # trainable parameters only: the encoder is frozen
        if self.lr_scheduler is not None:
            return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
        schedule = warmup_cosine_per_step(optimizer, int(self.trainer.estimated_stepping_batches), self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def load_captioner(path: str, map_location: str = "cpu") -> AltogetherCaptioner:
    """An :class:`AltogetherCaptioner` rebuilt from its checkpoint alone (frozen encoder, mapper, LM, tokenizer), in eval mode.

    The CLIP file it was trained from is not needed: the encoder's weights are in the checkpoint.

    Raises:
        LitzooError: naming the file: not a checkpoint of an AltogetherCaptioner, weights that do not fit, no tokenizer.
    """
    checkpoint = load_checkpoint(path, map_location=map_location)
    check_checkpoint_class(path, checkpoint, AltogetherCaptioner, "re-captioning needs")
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("clip_kwargs"), Mapping):
        raise LitzooError(f"checkpoint '{path}' records no AltogetherCaptioner hyper-parameters (clip_kwargs)")
    kwargs = {k: v for k, v in hparams.items() if not (isinstance(k, str) and k.startswith("_"))}
    kwargs["clip_checkpoint"] = None  # the frozen encoder's weights are in this checkpoint's state dict
    kwargs["init_from"] = None  # and so are the weights it started from
    try:
        module = AltogetherCaptioner(**kwargs)
    except (TypeError, ValueError) as error:
        raise LitzooError(f"checkpoint '{path}': cannot rebuild AltogetherCaptioner from its hyper-parameters: {error}") from None
    load_state_dict_checked(module, state_dict_from(checkpoint, path), path)
    module.on_load_checkpoint(checkpoint)
    if module.tokenizer is None:
        raise LitzooError(f"checkpoint '{path}' holds no tokenizer (it was saved before the captioner met its DataModule)")
    module.hparams["clip_checkpoint"] = hparams.get("clip_checkpoint")
    module.hparams["init_from"] = hparams.get("init_from")
    return module.eval()


def _plain(preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """Preprocessing options comparable across a checkpoint round trip (tuples and lists of floats alike)."""
    return {k: [float(x) for x in v] if isinstance(v, (list, tuple)) else v for k, v in preprocess.items()}


__all__ = [
    "IGNORE_INDEX", "Altogether", "AltogetherCaptioner", "FrozenImageEncoder", "TransformerMapper", "adamw_altogether", "beam_search",
    "drop_prompts", "frozen_clip", "layout", "left_pad", "load_captioner",
]  # fmt: skip
