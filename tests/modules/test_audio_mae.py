"""Audio-MAE (modules/audio_mae.py): masking, masked-only loss, local / shifted window attention, fine-tuning."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from modules.audio_mae import (
    AudioMAEClassifier,
    AudioMAEModule,
    AudioMaskedAutoencoderViT,
    SwinWindowBlock,
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
    from framework.nn import Block

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
