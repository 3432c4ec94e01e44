"""FLAP: token dropping keeps exactly the kept indices, seeded views, the reconstruction loss over dropped patches only,
InfoNCE of each view by hand, recall@K by hand, argument checks and a tiny fit with a checkpoint round trip."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from litzoo.datamodules.audio_video import AudioTextDataModule
from litzoo.framework.data.audio import write_wav
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn import patchify
from litzoo.framework.nn.pos_embed import sincos_pos_embed_2d
from litzoo.framework.text.vocabulary import WordVocabulary
from litzoo.modules.flap import FLAP, FLAPNet, audio_text_recalls, drop_tokens, reconstruction_loss

TINY = dict(vocab_size=32, max_text_length=8, input_size=(32, 16), patch_size=8, embed_dim=16, depth=1, num_heads=2, text_dim=16,
            text_depth=1, text_heads=2, proj_dim=8, decoder_dim=8, decoder_depth=1, decoder_heads=2)  # fmt: skip


def tiny_module(**kwargs) -> FLAP:
    torch.manual_seed(0)
    module = FLAP(**{**TINY, **kwargs})
    module.set_vocabulary(WordVocabulary.build(["a low hum", "a mid tone", "a high whistle", "a very high beep"]))
    return module


def test_2d_dropping_feeds_the_encoder_exactly_the_kept_patches_with_their_positions():
    torch.manual_seed(1)
    net = FLAPNet(**TINY)  # grid (4, 2): 8 patches of 8x8
    spec = torch.randn(3, 1, 32, 16)
    mask = drop_tokens(3, net.grid_size, 0.5, "2d", torch.Generator().manual_seed(0))
    assert mask.ids_keep.shape == (3, 4)
    seen = {}
    handle = net.blocks[0].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    net.encode_audio_tokens(spec, mask.ids_keep)
    handle.remove()
    # reference: the conv patch embedding as a matrix product on the patchified input, plus the 2-D sin-cos positions
    weight = net.patch_embed.proj.weight.reshape(16, -1)
    all_tokens = patchify(spec, 8) @ weight.T + net.patch_embed.proj.bias + sincos_pos_embed_2d(16, (4, 2)).float()
    expected = torch.stack([all_tokens[b, mask.ids_keep[b]] for b in range(3)])
    torch.testing.assert_close(seen["x"], expected, rtol=1e-5, atol=1e-5)
    for b in range(3):  # the kept set is exactly the mask's, distinct indices, and nothing else enters
        kept = set(mask.ids_keep[b].tolist())
        assert len(kept) == 4 and kept == set(torch.nonzero(mask.keep[b]).flatten().tolist())
    # the pooled embedding does not depend on the dropped patches: changing them changes nothing
    changed = spec.clone()
    for b in range(3):
        for index in torch.nonzero(mask.drop[b]).flatten().tolist():
            t, f = divmod(index, 2)
            changed[b, 0, t * 8 : (t + 1) * 8, f * 8 : (f + 1) * 8] += 5.0
    torch.testing.assert_close(net.project_audio(net.encode_audio_tokens(changed, mask.ids_keep)),
                               net.project_audio(net.encode_audio_tokens(spec, mask.ids_keep)))  # fmt: skip
    assert not torch.allclose(net.encode_audio(changed), net.encode_audio(spec))  # without dropping they count


def test_time_mode_drops_whole_time_steps():
    mask = drop_tokens(16, (6, 4), 0.5, "time", torch.Generator().manual_seed(3))
    assert mask.ids_keep.shape == (16, 12)  # int(6 * 0.5) = 3 time steps x 4 bands
    kept_steps = []
    for b in range(16):
        keep = mask.keep[b].reshape(6, 4)  # time-major grid: token t * 4 + f
        assert bool((keep.all(dim=1) | ~keep.any(dim=1)).all())  # each time step kept whole or dropped whole
        assert int(keep.all(dim=1).sum()) == 3
        kept_steps.append(tuple(torch.nonzero(keep.all(dim=1)).flatten().tolist()))
    assert len(set(kept_steps)) > 1  # drawn per sample
    # 2-D mode at the same ratio does split time steps (negative control of the check above)
    mask2d = drop_tokens(16, (6, 4), 0.5, "2d", torch.Generator().manual_seed(3))
    keep2d = mask2d.keep.reshape(16, 6, 4)
    assert not bool((keep2d.all(dim=2) | ~keep2d.any(dim=2)).all())


def test_views_differ_and_are_seeded():
    module = tiny_module(num_views=3, drop_ratio=0.5)
    views = module.draw_views(4, torch.Generator().manual_seed(7))
    again = module.draw_views(4, torch.Generator().manual_seed(7))
    other = module.draw_views(4, torch.Generator().manual_seed(8))
    assert len(views) == 3
    assert all(torch.equal(a.ids_keep, b.ids_keep) for a, b in zip(views, again, strict=True))
    assert not torch.equal(views[0].keep, views[1].keep) and not torch.equal(views[1].keep, views[2].keep)
    assert not all(torch.equal(a.keep, b.keep) for a, b in zip(views, other, strict=True))


def test_reconstruction_loss_is_over_dropped_patches_only_by_hand():
    spec = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)  # 2x2 patches: [[0,1,4,5], [2,3,6,7], [8,9,12,13], [10,11,14,15]]
    pred = torch.zeros(1, 4, 4)
    dropped = torch.tensor([[True, False, False, True]])
    # patch 0: mean of 0,1,16,25 = 10.5; patch 3: mean of 100,121,196,225 = 160.5; mean over the 2 dropped = 85.5
    assert float(reconstruction_loss(pred, spec, dropped, 2, norm_pix_loss=False)) == pytest.approx(85.5)
    kept_changed = pred.clone()
    kept_changed[0, 1:3] = 100.0  # predictions of kept patches do not matter
    assert float(reconstruction_loss(kept_changed, spec, dropped, 2, norm_pix_loss=False)) == pytest.approx(85.5)
    # normalised targets: each patch standardised by its own mean / std (a 2x2 patch of a ramp -> the same 4 values)
    normed = reconstruction_loss(pred, spec, dropped, 2, norm_pix_loss=True)
    # zero prediction of a standardised patch: its mean square, (n - 1) / n = 3/4 with MAE's unbiased variance
    assert float(normed) == pytest.approx(0.75, abs=1e-5)
    assert float(reconstruction_loss(pred, spec, torch.zeros(1, 4, dtype=torch.bool), 2)) == 0.0


def test_contrastive_loss_of_each_view_by_hand():
    module = tiny_module(num_views=2, drop_ratio=0.5, recon_weight=0.0)
    texts = ["a low hum", "a mid tone", "a high whistle"]
    spec = torch.randn(3, 1, 32, 16, generator=torch.Generator().manual_seed(2))
    views = module.draw_views(3, torch.Generator().manual_seed(5))
    out = module.training_losses(spec, texts, views)
    net = module.model
    text = net.encode_text(*module.tokenize(texts))
    s = math.exp(float(net.logit_scale.detach()))
    expected = 0.0
    for view in views:
        audio = net.project_audio(net.encode_audio_tokens(spec, view.ids_keep))
        sim = (audio @ text.T).tolist()
        terms = []
        for i in range(3):  # -log softmax of the positive, audio->text (row) and text->audio (column)
            terms.append(-s * sim[i][i] + math.log(sum(math.exp(s * sim[i][j]) for j in range(3))))
            terms.append(-s * sim[i][i] + math.log(sum(math.exp(s * sim[j][i]) for j in range(3))))
        expected += sum(terms) / 6 / len(views)
    assert float(out["contrastive"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["reconstruction"]) == 0.0 and float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    # with λ > 0 the loss adds λ times the reconstruction over each view's own dropped patches
    module.hparams.recon_weight = 0.5
    out = module.training_losses(spec, texts, views)
    recon = []
    for view in views:
        pred = net.reconstruct(net.encode_audio_tokens(spec, view.ids_keep), view)
        recon.append(reconstruction_loss(pred, spec, view.drop, 8))
    assert float(out["reconstruction"]) == pytest.approx(float(torch.stack(recon).mean()), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(expected + 0.5 * float(out["reconstruction"]), rel=1e-5)


def test_recall_at_k_by_hand():
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # similarities (rows audio, columns text): [[1, .8, 0], [0, .6, 1], [.6, .96, .8]]
    # audio->text rank of the pair: audio0 -> text0 first; audio1 -> text1 second; audio2 -> text2 second
    # text->audio (columns): text0 -> audio0 first; text1 -> audio1 third (.96, .8, .6); text2 -> audio2 second
    recalls = audio_text_recalls(audio, text, [1, 2])
    assert recalls["audio_to_text_R@1"] == pytest.approx(1 / 3) and recalls["audio_to_text_R@2"] == pytest.approx(1.0)
    assert recalls["text_to_audio_R@1"] == pytest.approx(1 / 3) and recalls["text_to_audio_R@2"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(drop_ratio=1.0), "drop_ratio"), (dict(drop_mode="freq"), "drop_mode"), (dict(num_views=0), "num_views"),
     (dict(recon_weight=-1.0), "recon_weight"), (dict(retrieval_top_k=[0]), "retrieval_top_k"),
     (dict(drop_mode="time", drop_ratio=0.8), "keeps no token"), (dict(embed_dimension=8), "embed_dimension")],
)  # fmt: skip
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FLAP(**{**TINY, **kwargs})


def write_pairs(folder, names):
    """SYNTHETIC tones: four pitches, each caption naming its own pitch word (the planted truth: pair i is tone i)."""
    folder.mkdir()
    lines = []
    for i, (freq, caption) in enumerate(names):
        t = np.arange(8000) / 16000
        write_wav(folder / f"{i}.wav", 0.5 * np.sin(2 * np.pi * freq * t), 16000)
        lines.append(f'{{"audio": "{i}.wav", "text": "{caption}"}}\n')
    (folder / "pairs.jsonl").write_text("".join(lines))
    return str(folder / "pairs.jsonl")


def test_tiny_fit_learns_retrieval_and_the_checkpoint_keeps_the_vocabulary(tmp_path):
    pairs = write_pairs(tmp_path / "tones", [(300.0, "a low hum"), (900.0, "a mid tone"), (2500.0, "a high whistle"), (6000.0, "a very high beep")])
    dm = AudioTextDataModule(pairs, val_jsonl=pairs, target_length=32, num_mel_bins=16, batch_size=4)
    L.seed_everything(0)
    module = FLAP(**TINY, drop_ratio=0.5, drop_mode="time", warmup_steps=0,
                  optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3))  # fmt: skip
    trainer = L.Trainer(max_epochs=60, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0, check_val_every_n_epoch=60)  # fmt: skip
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert float(metrics["val/audio_to_text_R@1"]) == 1.0 and float(metrics["val/text_to_audio_R@1"]) == 1.0
    assert float(metrics["train/reconstruction"]) > 0
    # the vocabulary travels in the checkpoint: the loaded module embeds captions exactly as the trained one
    path = tmp_path / "flap.ckpt"
    trainer.save_checkpoint(path)
    loaded = FLAP.load_from_checkpoint(path, optimizer=lambda params: torch.optim.AdamW(params))
    assert loaded.vocabulary is not None and loaded.vocabulary.vocab_size == module.vocabulary.vocab_size
    torch.testing.assert_close(loaded.encode_text(["a mid tone"]), module.encode_text(["a mid tone"]))
    # evaluation drops nothing: embeddings are deterministic
    spec = torch.randn(2, 1, 32, 16)
    torch.testing.assert_close(loaded.encode_audio(spec), loaded.encode_audio(spec))


def test_without_captions_setup_fails_in_one_line():
    module = FLAP(**TINY)
    with pytest.raises(LitzooError, match="AudioTextDataModule"):
        module.setup("fit")
