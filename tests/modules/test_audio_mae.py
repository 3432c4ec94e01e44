"""Audio-MAE (modules/audio_mae.py): masking, masked-only loss, local / shifted window attention, fine-tuning."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from litzoo.framework.checkpoints import convert_official_state_dict
from litzoo.framework.errors import LitzooError
from litzoo.modules.audio_mae import (
    AudioMAEClassifier,
    AudioMAEModule,
    AudioMaskedAutoencoderViT,
    AudioViTClassifier,
    SwinWindowBlock,
    convert_official_audio_mae_state_dict,
    shifted_window_mask,
    time_frequency_keep,
    window_partition,
    window_reverse,
)

TINY = dict(input_size=(32, 16), patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
            decoder_depth=2, decoder_num_heads=2, decoder_window_size=(4, 2), decoder_shift_size=(2, 0))  # fmt: skip


def test_masking_keeps_20_percent_and_loss_only_on_masked_patches():
    torch.manual_seed(0)
    model = AudioMaskedAutoencoderViT(**TINY)  # grid 8 x 4 = 32 patches
    spec = torch.randn(3, 1, 32, 16)
    noise = torch.rand(3, 32)
    latent, mask, _ = model.forward_encoder(spec, 0.8, noise)
    assert latent.shape == (3, 1 + int(32 * 0.2), 32) and (mask.sum(dim=1) == 32 - int(32 * 0.2)).all()
    loss, pred, mask = model(spec, 0.8, noise)
    assert pred.shape == (3, 32, 16)
    # changing the spectrogram inside kept patches only (encoder input aside) cannot change the loss target
    # of removed patches; recompute the loss with predictions perfect on removed patches: it is 0
    target = model.target(spec)
    perfect_removed = torch.where(mask.bool()[..., None], target, torch.randn_like(target))
    assert model.forward_loss(spec, perfect_removed, mask).item() == pytest.approx(0.0, abs=1e-10)
    perfect_kept = torch.where(mask.bool()[..., None], torch.randn_like(target), target)
    assert model.forward_loss(spec, perfect_kept, mask).item() > 0.1


def test_window_partition_roundtrip_and_mask():
    x = torch.randn(2, 8, 4, 3)
    assert torch.equal(window_reverse(window_partition(x, (4, 2)), (4, 2), (8, 4)), x)
    mask = shifted_window_mask((8, 4), (4, 2), (2, 0))  # 4 windows of 8 tokens
    assert mask.shape == (4, 8, 8)
    assert mask[0].all() and mask[1].all()  # first window row: no wrapped tokens
    assert not mask[2].all() and mask[2].sum() == 2 * 4 * 4  # last row holds two regions of 4 tokens each


def _grid_out(block, x):
    return block(x).reshape(1, 8, 4, -1)


def test_unshifted_windows_do_not_interact_and_shifted_windows_connect_neighbours():
    torch.manual_seed(0)
    plain = SwinWindowBlock(16, 2, (8, 4), (4, 2), (0, 0)).eval()
    shifted = SwinWindowBlock(16, 2, (8, 4), (4, 2), (2, 0)).eval()
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(1, 32, 16)
    y = x.clone().reshape(1, 8, 4, 16)
    y[0, 1, 0] += 5.0  # a token of window (rows 0-3, cols 0-1)
    y = y.reshape(1, 32, 16)
    with torch.no_grad():
        delta = (_grid_out(plain, x) - _grid_out(plain, y)).abs().sum(-1)[0]  # (8, 4)
        assert delta[:4, :2].min() > 0  # its own window changes
        assert delta[4:].max() == 0 and delta[:, 2:].max() == 0  # every other window is untouched
        delta_s = (_grid_out(shifted, x) - _grid_out(shifted, y)).abs().sum(-1)[0]
        # shifted: row 1 shares the wrapped window with rows 6-7 but not their region, so only rows 0-1 change
        assert delta_s[2:].max() == 0 and delta_s[1, :2].min() > 0 and delta_s[:, 2:].max() == 0
        # a perturbation in row 3 reaches rows 4-5 (the next unshifted window) through the shifted block
        z = x.clone().reshape(1, 8, 4, 16)
        z[0, 3, 0] += 5.0
        z = z.reshape(1, 32, 16)
        d_plain = (_grid_out(plain, x) - _grid_out(plain, z)).abs().sum(-1)[0]
        d_shift = (_grid_out(shifted, x) - _grid_out(shifted, z)).abs().sum(-1)[0]
        assert d_plain[4:6].max() == 0 and d_shift[4:6, :2].min() > 0
        # but the wrap-around is masked: row 0 (same rolled window as rows 6-7) is not reached from row 7
        w = x.clone().reshape(1, 8, 4, 16)
        w[0, 7, 0] += 5.0
        w = w.reshape(1, 32, 16)
        d_wrap = (_grid_out(shifted, x) - _grid_out(shifted, w)).abs().sum(-1)[0]
        assert d_wrap[:2].max() == 0 and d_wrap[6:8, :2].min() > 0


def test_window_covering_the_grid_equals_global_attention():
    torch.manual_seed(0)
    window = SwinWindowBlock(16, 2, (8, 4), (8, 4), (0, 0)).eval()
    from litzoo.framework.nn import Block

    block = Block(16, 2).eval()
    block.load_state_dict(window.state_dict())
    x = torch.randn(2, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(window(x), block(x), atol=1e-5, rtol=1e-5)


def test_global_decoder_mode_and_bad_values():
    model = AudioMaskedAutoencoderViT(**{**TINY, "decoder_mode": "global"})
    loss, pred, _ = model(torch.randn(2, 1, 32, 16), 0.8)
    assert pred.shape == (2, 32, 16) and loss.ndim == 0
    with pytest.raises(ValueError, match="multiple of the window"):
        AudioMaskedAutoencoderViT(**{**TINY, "decoder_window_size": (3, 2)})
    with pytest.raises(ValueError, match="mask_ratio"):
        AudioMAEModule(**TINY, mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        AudioMAEModule(**{**TINY, "input_size": (30, 16)})


def test_time_frequency_keep_counts():
    ids = time_frequency_keep(3, (8, 4), 0.25, 0.5)
    assert ids.shape == (3, int(8 * 0.75) * int(4 * 0.5))
    rows, cols = ids // 4, ids % 4
    for b in range(3):
        assert len(set(rows[b].tolist())) == 6 and len(set(cols[b].tolist())) == 2


def _batches(n=4):
    g = torch.Generator().manual_seed(0)
    batches = [{"audio": torch.randn(4, 1, 32, 16, generator=g), "label": torch.randint(0, 3, (4,), generator=g)} for _ in range(n)]
    return DataLoader(batches, batch_size=None)


class _DM(L.LightningDataModule):
    batch_size = 4

    def train_dataloader(self):
        return _batches()

    def val_dataloader(self):
        return _batches(1)


def test_pretrain_step_features_and_finetune_from_checkpoint(tmp_path):
    module = AudioMAEModule(**TINY, warmup_epochs=0.5, num_images=2)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, _DM())
    assert module.forward_features(torch.randn(5, 1, 32, 16)).shape == (5, 32)
    path = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(path)
    enc = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
    clf = AudioMAEClassifier(num_classes=3, **enc, pretrained=str(path))
    torch.testing.assert_close(clf.model.blocks[0].attn.qkv.weight, module.model.blocks[0].attn.qkv.weight)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(clf, _DM())
    assert "val/acc" in trainer.callback_metrics


# ----------------------------------------------------------------------------- multi-label fine-tuning


class _MultiLabelDM(L.LightningDataModule):
    batch_size = 4

    def _batches(self, n):
        g = torch.Generator().manual_seed(1)
        return DataLoader([{"audio": torch.randn(4, 1, 32, 16, generator=g), "label": (torch.rand(4, 5, generator=g) > 0.5).float()}
                           for _ in range(n)], batch_size=None)  # fmt: skip

    def train_dataloader(self):
        return self._batches(3)

    def val_dataloader(self):
        return self._batches(2)


def test_multilabel_bce_loss_map_metric_and_monitor():
    enc = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
    clf = AudioMAEClassifier(num_classes=5, **enc, multilabel=True)
    assert clf.monitor == "val/mAP" and AudioMAEClassifier(num_classes=5, **enc).monitor == "val/acc"
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.5, -3.0]])
    label = torch.tensor([[1.0, 0.0, 0.3, 1.0, 0.0]])  # soft (mixup) targets are allowed in training
    by_hand = -(label * torch.log(torch.sigmoid(logits)) + (1 - label) * torch.log(1 - torch.sigmoid(logits))).mean()
    torch.testing.assert_close(clf.loss(logits, label), by_hand)
    with pytest.raises(ValueError, match="multi-hot"):
        clf.loss(logits, torch.tensor([1]))
    # macro AP by hand: class 0 ranks its positive first (AP 1), class 1 second of two (AP 1/2)
    clf.val_map.update(torch.tensor([[0.9, 0.2, 0.5, 0.5, 0.5], [0.1, 0.8, 0.5, 0.5, 0.5]]),
                       torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]))  # fmt: skip
    assert float(clf.val_map.compute()) == pytest.approx((1 + 0.5 + 1 + 1 + 1) / 5)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)  # fmt: skip
    clf = AudioMAEClassifier(num_classes=5, **enc, multilabel=True, warmup_epochs=0.5)
    trainer.fit(clf, _MultiLabelDM())
    assert 0.0 <= float(trainer.callback_metrics["val/mAP"]) <= 1.0 and "val/acc" not in trainer.callback_metrics
    # the logged value is the epoch metric over all validation batches, recomputed here by hand
    from torchmetrics.functional.classification import binary_average_precision

    batches = list(_MultiLabelDM().val_dataloader())
    clf.eval()
    with torch.no_grad():
        scores = torch.cat([clf(b["audio"]) for b in batches])
    targets = torch.cat([b["label"] for b in batches]).long()
    ap = [binary_average_precision(scores[:, c], targets[:, c]) for c in range(5)]  # one class at a time
    torch.testing.assert_close(trainer.callback_metrics["val/mAP"], torch.stack(ap).mean(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ official checkpoints


def _official_reference(state: dict, spec: torch.Tensor, heads: int, finetuned: bool) -> torch.Tensor:
    """AudioMAE's forward written from its files: timm 0.3.2 ViT blocks; models_mae.forward_encoder without
    masking (→ norm) or models_vit.forward_features with global_pool (mean patch token → fc_norm → head)."""

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    def lin(x, name):
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    w = state["patch_embed.proj.weight"]
    x = F.conv2d(spec, w, state["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = x + state["pos_embed"][:, 1:]
    x = torch.cat([(state["cls_token"] + state["pos_embed"][:, :1]).expand(len(x), -1, -1), x], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    b, n, d = x.shape
    for i in range(depth):
        q, k, v = lin(ln(x, f"blocks.{i}.norm1"), f"blocks.{i}.attn.qkv").reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(dim=-1)
        x = x + lin((attn @ v).transpose(1, 2).reshape(b, n, d), f"blocks.{i}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"blocks.{i}.norm2"), f"blocks.{i}.mlp.fc1")), f"blocks.{i}.mlp.fc2")
    if finetuned:
        return lin(ln(x[:, 1:].mean(dim=1), "fc_norm"), "head")
    return ln(x, "norm")


def _official_state(depth: int, finetuned: bool, decoder_depth: int = 2, num_classes: int = 527) -> dict:
    """Random weights with the official names and ViT-B/16 shapes on 1024 x 128 spectrograms (512 patches + cls)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    d = 768
    state = {"patch_embed.proj.weight": r(d, 1, 16, 16), "patch_embed.proj.bias": r(d), "cls_token": r(1, 1, d), "pos_embed": r(1, 513, d)}
    for i in range(depth):
        for name, shape in (("norm1", (d,)), ("norm2", (d,))):
            state[f"blocks.{i}.{name}.weight"], state[f"blocks.{i}.{name}.bias"] = 1 + r(*shape, scale=0.1), r(*shape)
        state[f"blocks.{i}.attn.qkv.weight"], state[f"blocks.{i}.attn.qkv.bias"] = r(3 * d, d), r(3 * d)
        state[f"blocks.{i}.attn.proj.weight"], state[f"blocks.{i}.attn.proj.bias"] = r(d, d), r(d)
        state[f"blocks.{i}.mlp.fc1.weight"], state[f"blocks.{i}.mlp.fc1.bias"] = r(4 * d, d), r(4 * d)
        state[f"blocks.{i}.mlp.fc2.weight"], state[f"blocks.{i}.mlp.fc2.bias"] = r(d, 4 * d), r(d)
    if finetuned:  # models_vit.py, global_pool: no final norm
        state.update({"fc_norm.weight": 1 + r(d), "fc_norm.bias": r(d), "head.weight": r(num_classes, d), "head.bias": r(num_classes)})
        return state
    e = 512
    state.update({"norm.weight": 1 + r(d), "norm.bias": r(d), "decoder_embed.weight": r(e, d), "decoder_embed.bias": r(e),
                  "mask_token": r(1, 1, e), "decoder_pos_embed": r(1, 513, e), "decoder_norm.weight": 1 + r(e),
                  "decoder_norm.bias": r(e), "decoder_pred.weight": r(256, e), "decoder_pred.bias": r(256)})  # fmt: skip
    for i in range(decoder_depth):  # timm_patch Swin-V2-CR blocks (decoder_mode=1)
        p = f"decoder_blocks.{i}"
        state.update({f"{p}.attn.qkv.weight": r(3 * e, e), f"{p}.attn.qkv.bias": r(3 * e), f"{p}.attn.proj.weight": r(e, e),
                      f"{p}.attn.proj.bias": r(e), f"{p}.attn.tau": torch.ones(16), f"{p}.attn.meta_mlp.fc1.weight": r(384, 2),
                      f"{p}.attn.meta_mlp.fc1.bias": r(384), f"{p}.attn.meta_mlp.fc2.weight": r(16, 384),
                      f"{p}.attn.meta_mlp.fc2.bias": r(16), f"{p}.norm1.weight": 1 + r(e), f"{p}.norm1.bias": r(e),
                      f"{p}.mlp.fc1.weight": r(4 * e, e), f"{p}.mlp.fc1.bias": r(4 * e), f"{p}.mlp.fc2.weight": r(e, 4 * e),
                      f"{p}.mlp.fc2.bias": r(e), f"{p}.norm2.weight": 1 + r(e), f"{p}.norm2.bias": r(e)})  # fmt: skip
    return state


VIT_B = dict(input_size=(1024, 128), patch_size=16, embed_dim=768, num_heads=12)


def test_official_pretrained_checkpoint_loads_encoder_exactly_and_reports_the_decoder(tmp_path):
    state = _official_state(depth=2, finetuned=False)
    path = tmp_path / "pretrained.pth"
    torch.save({"model": state, "epoch": 32}, path)  # the released files wrap the weights under "model"
    converted, dropped = convert_official_audio_mae_state_dict(state)
    assert sorted(dropped) == sorted(k for k in state if k.startswith("decoder_blocks."))
    # the generic converter drops the same keys, with a warning, and unwraps {"model": ...}
    with pytest.warns(UserWarning, match=r"local-window decoder weights dropped"):
        generic = convert_official_state_dict("audio_mae", {"model": state})
    assert sorted(generic) == sorted(converted)
    with pytest.warns(UserWarning, match=r"decoder weights were not loaded .*decoder_blocks\.0\.attn\.meta_mlp\.fc1\.weight"):
        module = AudioMAEModule.from_official_checkpoint(str(path), **VIT_B, depth=2, decoder_depth=2)
    ours = module.model.state_dict()
    encoder = [k for k in ours if not k.startswith(("decoder", "mask_token"))]
    assert sorted(encoder) == sorted(k for k in state if not k.startswith(("decoder", "mask_token")))  # no missing / unexpected
    assert all(torch.equal(ours[k], state[k]) for k in encoder)
    for k in ("decoder_embed.weight", "mask_token", "decoder_norm.bias", "decoder_pred.weight"):
        assert torch.equal(ours[k], state[k])
    assert not torch.equal(ours["decoder_blocks.0.attn.qkv.weight"], state["decoder_blocks.0.attn.qkv.weight"])
    spec = torch.randn(1, 1, 1024, 128)
    with torch.no_grad():
        torch.testing.assert_close(module.model.encode(spec), _official_reference(state, spec, 12, finetuned=False), atol=1e-4, rtol=1e-4)
    # the pretrained release initialises a fine-tuning classifier's encoder (its norm and decoder unused)
    enc = {k: v for k, v in VIT_B.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: norm / decoder are expected to be unused
        clf = AudioMAEClassifier(num_classes=3, **enc, depth=2, pretrained=str(path), multilabel=True)
    assert torch.equal(clf.model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])


def test_official_finetuned_checkpoint_gives_the_official_outputs(tmp_path):
    state = _official_state(depth=2, finetuned=True, num_classes=527)
    path = tmp_path / "finetuned.pth"
    torch.save({"model": state}, path)
    clf = AudioMAEClassifier(num_classes=527, **VIT_B, depth=2, pretrained=str(path), multilabel=True).eval()
    assert sorted(clf.model.state_dict()) == sorted(state)  # same names: fc_norm + head, no final norm
    spec = torch.randn(2, 1, 1024, 128)
    with torch.no_grad():
        torch.testing.assert_close(clf(spec), _official_reference(state, spec, 12, finetuned=True), atol=1e-4, rtol=1e-4)
    # a wrong encoder is refused with one line naming the file
    torch.save({"model": {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.weight"}}, tmp_path / "broken.pth")
    with pytest.raises(LitzooError, match=r"'.*broken.pth' does not fit this Audio-MAE encoder: missing or mis-shaped blocks.1.attn.qkv.weight"):
        AudioMAEClassifier(num_classes=527, **VIT_B, depth=2, pretrained=str(tmp_path / "broken.pth"))
    with pytest.raises(LitzooError, match="does not exist"):
        AudioMAEClassifier(num_classes=3, **VIT_B, depth=1, pretrained=str(tmp_path / "none.pth"))


def test_classifier_has_no_final_norm_as_the_official_global_pool_model():
    torch.manual_seed(0)
    enc = {k: v for k, v in TINY.items() if not k.startswith("decoder")}
    model = AudioViTClassifier(4, **enc).eval()
    assert not any(k.startswith("norm.") for k in model.state_dict()) and abs(float(model.head.weight.detach().std()) - 2e-5) < 1e-5
    spec = torch.randn(2, 1, 32, 16)
    with torch.no_grad():  # no final norm: the encoder's tokens are the blocks' output
        assert torch.equal(model.encode(spec), model.transform(spec))
    with torch.no_grad():
        torch.testing.assert_close(model(spec), _official_reference(model.state_dict(), spec, 2, finetuned=True), atol=1e-5, rtol=1e-5)
