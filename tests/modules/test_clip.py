"""CLIP (modules/clip.py): the two towers, zero-shot weights and retrieval recall by hand, weight loading, the module."""

from __future__ import annotations

import math
import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from network_args_checks import help_lists, rebuilds_from_flat_hparams, refuses_misspelt_argument

from litzoo.datamodules.image_text import DigitsCaptionsDataModule
from litzoo.framework.errors import LitzooError
from litzoo.modules.clip import CLIP, CLIPModule, load_clip_weights, retrieval_recalls, zero_shot_weights

TINY = dict(vocab_size=64, embed_dim=8, image_size=8, patch_size=4, in_chans=1, vision_width=16, vision_depth=1, vision_heads=2,
            context_length=8, text_width=16, text_depth=1, text_heads=2)  # fmt: skip
# configs/clip/digits_captions.yaml
DIGITS = dict(vocab_size=256, embed_dim=64, image_size=8, patch_size=2, in_chans=1, vision_width=64, vision_depth=2, vision_heads=4,
              context_length=16, text_width=64, text_depth=2, text_heads=4)  # fmt: skip
TEMPLATES = ["a photo of the number {}", "handwritten digit {}", "{}"]


def _tokens(*rows: list[int], length: int = 8) -> torch.Tensor:
    return torch.tensor([[2, *row, 3] + [0] * (length - 2 - len(row)) for row in rows])


class FakeTokenizer:
    """Words → ids 4, 5, … in order of first sight, CLIP's layout ``[2, ids…, 3, 0…]``."""

    def __init__(self, context_length: int = 8) -> None:
        self.context_length, self.words = context_length, {}
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        rows = [[self.words.setdefault(w, 4 + len(self.words)) for w in text.split()] for text in texts]
        return _tokens(*rows, length=self.context_length)


@pytest.fixture
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP(**TINY).eval()


# ------------------------------------------------------------------------------------------ CLIP


def test_forward_normalised_features_and_logit_scale(clip):
    images, tokens = torch.randn(3, 1, 8, 8), _tokens([5, 6], [7], [8, 9, 10])
    with torch.no_grad():
        image_features, text_features, scale = clip(images, tokens)
        expected_image = F.normalize(clip.visual_projection(clip.visual(images)[:, 0]), dim=-1)
        expected_text = F.normalize(clip.text_projection(clip.text(tokens)), dim=-1)
    assert image_features.shape == (3, 8) and text_features.shape == (3, 8)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(image_features, expected_image, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(text_features, expected_text, atol=1e-6, rtol=1e-6)
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6) and scale.item() == pytest.approx(14.2857, abs=1e-4)
    with torch.no_grad():
        raw = clip.encode_image(images, normalize=False)
    torch.testing.assert_close(raw, clip.visual_projection(clip.visual(images)[:, 0]), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    assert clip.visual_projection.bias is None and clip.text_projection.bias is None


def test_encode_text_without_projection(clip):
    tokens = _tokens([5, 6], [7])
    with torch.no_grad():
        pre = clip.encode_text(tokens, project=False)
        raw = clip.encode_text(tokens, normalize=False, project=False)
        text = clip.text(tokens)
    assert pre.shape == (2, 16)
    torch.testing.assert_close(pre, F.normalize(text, dim=-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(raw, text, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(clip.encode_text(tokens, normalize=False), clip.text_projection(text), atol=1e-6, rtol=1e-6)


def test_projection_init_std():
    torch.manual_seed(0)
    model = CLIP(**{**TINY, "vision_width": 64, "text_width": 64, "embed_dim": 64, "vision_heads": 4, "text_heads": 4})
    assert model.visual_projection.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)
    assert model.text_projection.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)
    with pytest.raises(ValueError, match="embed_dim"):
        CLIP(**{**TINY, "embed_dim": 0})


# ------------------------------------------------------------------------------ evaluation helpers


def test_zero_shot_weights_by_hand(clip):
    tokenizer = FakeTokenizer()
    classes, templates = ["cat", "dog", "small bird"], ["a {}", "photo of {} here", "{}"]
    with torch.no_grad():
        weights = zero_shot_weights(clip, tokenizer, classes, templates)
    assert weights.shape == (8, 3)
    assert tokenizer.calls[0] == ["a cat", "photo of cat here", "cat"]
    hand = FakeTokenizer()
    for k, name in enumerate(classes):
        embeddings = []
        for template in templates:
            with torch.no_grad():
                feature = clip.text_projection(clip.text(hand([template.format(name)])))[0]
            embeddings.append(feature / feature.norm())
        mean = torch.stack(embeddings).mean(dim=0)
        torch.testing.assert_close(weights[:, k], mean / mean.norm(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.norm(dim=0), torch.ones(3))


def test_retrieval_recalls_on_known_ranks():
    # similarity[i, j] = image i · text j; image i's own text ranks 1, 2, 1, 2 (R@1 = 0.5, R@2 = 1)
    # and text j's own image ranks 1, 1, 1, 2 (R@1 = 0.75, R@2 = 1)
    similarity = torch.tensor([[0.9, 0.1, 0.0, 0.0],
                               [0.0, 0.5, 0.0, 0.8],
                               [0.0, 0.0, 0.9, 0.1],
                               [0.0, 0.0, 0.7, 0.6]])  # fmt: skip
    recalls = retrieval_recalls(torch.eye(4), similarity.T.contiguous(), top_k=[1, 2, 3])
    assert recalls == pytest.approx({
        "image_to_text_R@1": 0.5, "image_to_text_R@2": 1.0, "image_to_text_R@3": 1.0,
        "text_to_image_R@1": 0.75, "text_to_image_R@2": 1.0, "text_to_image_R@3": 1.0,
    })  # fmt: skip


def test_retrieval_recalls_match_ranks_on_random_features():
    torch.manual_seed(3)
    images, texts = F.normalize(torch.randn(9, 5), dim=-1), F.normalize(torch.randn(9, 5), dim=-1)
    similarity = images @ texts.T
    # rank of the true pair (1 = best) per query, by counting who scores higher
    image_ranks = 1 + (similarity > similarity.diag()[:, None]).sum(dim=1)
    text_ranks = 1 + (similarity > similarity.diag()[None, :]).sum(dim=0)
    recalls = retrieval_recalls(images, texts, top_k=[1, 3, 5])
    for k in (1, 3, 5):
        assert recalls[f"image_to_text_R@{k}"] == pytest.approx((image_ranks <= k).float().mean().item())
        assert recalls[f"text_to_image_R@{k}"] == pytest.approx((text_ranks <= k).float().mean().item())
    assert len({recalls[f"image_to_text_R@{k}"] for k in (1, 3, 5)}) > 1  # the example is not degenerate


def test_retrieval_recalls_count_matches_with_negative_scores_and_average_over_tie_orders():
    from litzoo.framework.nn.clip import recall_at_k

    # the match of row 1 scores -0.6 and ranks 2nd: torchmetrics 1.9's RetrievalRecall drops it (it keeps preds > 0 only)
    similarity = torch.tensor([[0.9, 0.1, -0.2],
                               [-0.1, -0.6, -0.9],
                               [0.3, 0.2, -0.5]])  # fmt: skip
    assert recall_at_k(similarity, 1) == pytest.approx(1 / 3)
    assert recall_at_k(similarity, 2) == pytest.approx(2 / 3)
    assert recall_at_k(similarity, 3) == pytest.approx(1.0)
    # duplicate captions: row 0's match ties with one other column (R@1 = 1/2 in expectation); row 1 ties with both
    tied = torch.tensor([[0.5, 0.5, 0.1],
                         [0.2, 0.2, 0.2],
                         [0.0, 0.1, 0.9]])  # fmt: skip
    assert recall_at_k(tied, 1) == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert recall_at_k(tied, 2) == pytest.approx((1 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="square"):
        recall_at_k(torch.zeros(2, 3), 1)


# ---------------------------------------------------------------------------------- load_clip_weights


def test_load_clip_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    module = CLIPModule(**TINY)
    with torch.no_grad():
        module.model.logit_scale.fill_(2.5)
    lightning_style = tmp_path / "module.ckpt"
    torch.save({"state_dict": module.state_dict(), "epoch": 3}, lightning_style)
    assert all(key.startswith("model.") for key in module.state_dict())
    bare = tmp_path / "bare.pt"
    torch.save(module.model.state_dict(), bare)
    for path in (lightning_style, bare):
        torch.manual_seed(2)
        other = CLIP(**TINY)
        assert not torch.equal(other.visual.pos_embed, module.model.visual.pos_embed)
        load_clip_weights(other, str(path))
        for key, value in module.model.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), key


def test_load_clip_weights_rejects_a_mismatched_checkpoint(tmp_path):
    bigger = CLIP(**{**TINY, "vision_width": 32})
    path = tmp_path / "other_width.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in bigger.state_dict().items()}}, path)
    with pytest.raises(LitzooError, match=re.escape(f"checkpoint '{path}'") + ".*other shapes: .*visual") as info:
        load_clip_weights(CLIP(**TINY), str(path))
    assert "\n" not in str(info.value)
    partial = tmp_path / "partial.pt"
    state = CLIP(**TINY).state_dict()
    del state["logit_scale"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, partial)
    with pytest.raises(LitzooError, match=re.escape(str(partial)) + ".*missing: logit_scale.*unexpected: extra.weight"):
        load_clip_weights(CLIP(**TINY), str(partial))
    with pytest.raises(LitzooError, match=re.escape(str(tmp_path / "absent.ckpt"))):
        load_clip_weights(CLIP(**TINY), str(tmp_path / "absent.ckpt"))
    with pytest.raises(LitzooError, match=re.escape(str(path))):
        CLIPModule(**TINY, init_from=str(path))


# --------------------------------------------------------------------------------------- CLIPModule


def test_no_weight_decay_and_parameter_groups():
    module = CLIPModule(**TINY, lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0))
    skip = module.no_weight_decay()
    for name in ("model.logit_scale", "model.visual.cls_token", "model.visual.blocks.0.attn.qkv.bias", "model.visual.blocks.0.norm1.weight",
                 "model.visual.norm.weight", "model.text.ln_final.weight", "model.text.blocks.0.mlp.fc1.bias", "model.visual.patch_embed.proj.bias"):  # fmt: skip
        assert name in skip, name
    for name in ("model.visual.blocks.0.attn.qkv.weight", "model.text.blocks.0.attn.proj.weight", "model.visual_projection.weight",
                 "model.text.token_embedding.weight", "model.visual.patch_embed.proj.weight"):  # fmt: skip
        assert name not in skip, name
    names = dict(module.named_parameters())
    assert skip <= set(names)
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.2 and plain["weight_decay"] == 0.0
    assert {id(p) for p in plain["params"]} == {id(names[n]) for n in skip}
    assert len(decayed["params"]) + len(plain["params"]) == len(names)
    assert optimizer.defaults["lr"] == 5e-4 and optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6


def test_logit_scale_is_clamped_after_a_training_step():
    module = CLIPModule(**TINY, init_logit_scale=6.0, gather_distributed=False)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    batch = {"image": torch.randn(4, 1, 8, 8), "tokens": _tokens([5], [6], [7, 8], [9])}
    module.log = lambda *args, **kwargs: None  # no trainer attached
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert module.model.logit_scale.item() == 6.0
    module.on_train_batch_end(loss, batch, 0)
    assert module.model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        module.model.logit_scale.fill_(-1.0)
    module.on_train_batch_end(loss, batch, 0)
    assert module.model.logit_scale.item() == 0.0
    with pytest.raises(ValueError, match="max_logit_scale"):
        CLIPModule(**TINY, max_logit_scale=0.0)


def test_image_to_text_only_reaches_the_loss():
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * images @ texts.T
    labels = torch.arange(5)
    one_way = CLIPModule(**TINY, image_to_text_only=True).loss
    both = CLIPModule(**TINY).loss
    assert one_way.image_to_text_only and not both.image_to_text_only
    torch.testing.assert_close(one_way(images, texts, scale), F.cross_entropy(logits, labels))
    torch.testing.assert_close(both(images, texts, scale), (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)


def test_module_argument_checks():
    with pytest.raises(ValueError, match="zero_shot_templates"):
        CLIPModule(**TINY, zero_shot_templates=["no placeholder"])
    with pytest.raises(ValueError, match="retrieval_top_k"):
        CLIPModule(**TINY, retrieval_top_k=[0])


# ---------------------------------------------------------------------------- a tiny fit on digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> DigitsCaptionsDataModule:
    return DigitsCaptionsDataModule(root=str(tmp_path_factory.mktemp("digits_captions")), batch_size=64)


def _trainer() -> L.Trainer:
    return L.Trainer(max_steps=3, limit_train_batches=3, limit_val_batches=2, limit_test_batches=2, accelerator="cpu", logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip


def test_fit_logs_zero_shot_accuracy_and_recalls(digits, tmp_path):
    L.seed_everything(0)
    module = CLIPModule(**DIGITS, warmup_steps=2, zero_shot_templates=TEMPLATES, init_logit_scale=6.0)
    trainer = _trainer()
    trainer.fit(module, datamodule=digits)
    metrics = trainer.callback_metrics
    expected = {"train/loss", "train/logit_scale", "val/loss", "val/zero_shot_acc"}
    expected |= {f"val/{direction}_R@{k}" for direction in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert expected <= set(metrics), sorted(metrics)
    assert trainer.global_step == 3
    # clamped after every step: from 6.0 down to at most ln 100
    assert math.log(100) - 0.05 < module.model.logit_scale.item() <= math.log(100) + 1e-6
    for k in (1, 5, 10):
        assert 0.0 <= float(metrics[f"val/image_to_text_R@{k}"]) <= 1.0
    assert float(metrics["val/image_to_text_R@1"]) <= float(metrics["val/image_to_text_R@5"]) <= float(metrics["val/image_to_text_R@10"])

    # the logged recalls and loss are those of the first two validation batches, by hand
    module.eval()
    pairs = [digits.dataset("val")[i] for i in range(128)]
    images = torch.stack([p["image"] for p in pairs])
    tokens = torch.stack([p["tokens"] for p in pairs])
    with torch.no_grad():
        image_features, text_features, scale = module(images, tokens)
    hand = retrieval_recalls(image_features, text_features, [1, 5, 10])
    for name, value in hand.items():
        assert float(metrics[f"val/{name}"]) == pytest.approx(value, abs=1e-6), name
    # (the clean val captions repeat, so equal scores make hand ranks ambiguous here: retrieval_recalls
    # itself is checked against hand ranks above)
    losses = []
    for b in (slice(0, 64), slice(64, 128)):  # val/loss: the mean over the two batches of the symmetric InfoNCE
        logits = scale * image_features[b] @ text_features[b].T
        losses.append((F.cross_entropy(logits, torch.arange(64)) + F.cross_entropy(logits.T, torch.arange(64))) / 2)
    assert float(metrics["val/loss"]) == pytest.approx(torch.stack(losses).mean().item(), abs=1e-5)

    # checkpoint → init_from gives the same weights
    path = tmp_path / "clip.ckpt"
    trainer.save_checkpoint(path)
    again = CLIPModule(**DIGITS, init_from=str(path))
    for key, value in module.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key

    # the test split is evaluated the same way
    results = _trainer().test(module, datamodule=digits, verbose=False)[0]
    assert {"test/loss", "test/zero_shot_acc", "test/image_to_text_R@1", "test/text_to_image_R@10"} <= set(results)


def test_zero_shot_accuracy_is_top1_accuracy(digits):
    """The CLIP paper's zero-shot metric: the share of images whose best class weight is their label."""
    L.seed_everything(0)
    module = CLIPModule(**DIGITS, warmup_steps=2, zero_shot_templates=TEMPLATES)
    trainer = _trainer()
    metrics = trainer.validate(module, datamodule=digits, verbose=False)[0]
    pairs = [digits.dataset("val")[i] for i in range(128)]
    images = torch.stack([p["image"] for p in pairs])
    labels = torch.stack([p["label"] for p in pairs])
    module.eval()
    with torch.no_grad():
        weights = zero_shot_weights(module.model, digits.tokenizer, digits.class_names, TEMPLATES)
        predictions = (module.model.encode_image(images) @ weights).argmax(dim=1)
    assert metrics["val/zero_shot_acc"] == pytest.approx((predictions == labels).float().mean().item(), abs=1e-6)


def test_setup_rejects_a_tokenizer_larger_than_the_vocabulary(digits):
    module = CLIPModule(**{**DIGITS, "vocab_size": 100}, zero_shot_templates=TEMPLATES)
    with pytest.raises(LitzooError, match="vocab_size is 100"):
        _trainer().fit(module, datamodule=digits)
    module = CLIPModule(**{**DIGITS, "end_token_id": 4}, zero_shot_templates=TEMPLATES)
    with pytest.raises(LitzooError, match="end_token_id=4"):
        _trainer().validate(module, datamodule=digits, verbose=False)


def test_network_arguments_are_forwarded_flat_and_rebuild_the_model():
    module = rebuilds_from_flat_hparams(CLIPModule, **TINY, end_token_id=5, gather_distributed=False)
    assert module.model.text.end_token_id == 5 and module.model.visual_projection.out_features == 8
    images, tokens = module.example_input_array
    assert images.shape == (2, 1, 8, 8) and tokens.shape == (2, 8) and (tokens[:, 1] == 5).all()
    refuses_misspelt_argument(CLIPModule, "CLIP", "vision_widht", "vision_width", **{k: v for k, v in TINY.items() if k != "vision_width"})


def test_cli_help_lists_the_clip_arguments_with_types(capsys):
    help_lists("litzoo.modules.clip.CLIPModule", capsys, {
        "vocab_size": "int, default: 49408", "vision_width": "int, default: 768", "context_length": "int, default: 77",
        "end_token_id": "int, default: 3", "init_logit_scale": "float", "warmup_steps": "int, default: 2000",
    })  # fmt: skip
