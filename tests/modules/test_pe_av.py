"""PE-AV: every pairing's loss by hand, the heads' inputs, the modality paths, the official key map, captioned data, a tiny fit;
the official towers (tower="official"): release names, release-named weights loading, the DAC-VAE audio path, training."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from network_args_checks import rebuilds_from_flat_hparams

from litzoo.datamodules.audio_video import SyntheticAudioVideoDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.av_heads import PE_AV_PAIRINGS
from litzoo.framework.nn.rope_transformer import RopeTransformer
from litzoo.modules.pe_av import PEAudioVisual, PEAudioVisualNet, load_pe_av_shared_weights, official_pe_av_key_map, recall_at_k

TINY = {"num_frames": 4, "image_size": 16, "frame_patch": 8, "frame_dim": 16, "frame_depth": 1, "num_mel_bins": 8, "audio_frames": 16,
        "audio_patch_frames": 2, "dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "output_dim": 8}  # fmt: skip


def tiny_batch(batch_size: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 12, (batch_size, 6), generator=generator)
    tokens[0, 4:] = 0  # a shorter caption
    return {"audio": torch.randn(batch_size, 1, 16, 8, generator=generator), "video": torch.randn(batch_size, 4, 3, 16, 16, generator=generator),
            "tokens": tokens}  # fmt: skip


def infonce_by_hand(x: torch.Tensor, y: torch.Tensor, log_scale: float) -> float:
    xn, yn = F.normalize(x.double(), dim=-1), F.normalize(y.double(), dim=-1)
    logits = math.exp(log_scale) * xn @ yn.T
    n = len(x)
    row = sum(-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(n)) / n
    col = sum(-(logits[i, i] - torch.logsumexp(logits[:, i], 0)) for i in range(n)) / n
    return float((row + col) / 2)


def test_every_pairing_loss_by_hand_and_the_weighted_sum():
    torch.manual_seed(0)
    weights = {"audio_visual": 0.0, "visual_text": 2.5}
    module = PEAudioVisual(vocab_size=12, max_text_length=6, pair_weights=weights, **TINY)
    with torch.no_grad():
        for i, p in enumerate(module.logit_scale.values()):
            p.fill_(0.5 + 0.25 * i)  # a temperature per pairing
    batch = tiny_batch()
    embeds = module.embed(batch)
    losses = module.pair_losses(embeds)
    assert set(losses) == set(PE_AV_PAIRINGS) - {"audio_visual"}  # weight 0: not computed
    expected_pairs = {"audio_text": ("audio", "audio_text"), "visual_text": ("visual", "visual_text"),
                      "audio_visual_text": ("audio_visual", "audio_visual_text"), "visual_plus_text_audio": ("visual_plus_text", "audio"),
                      "audio_plus_text_visual": ("audio_plus_text", "visual")}  # fmt: skip
    total = 0.0
    for pair, (x, y) in expected_pairs.items():
        by_hand = infonce_by_hand(embeds[x].detach(), embeds[y].detach(), float(module.logit_scale[pair].detach()))
        assert float(losses[pair]) == pytest.approx(by_hand, rel=1e-5), pair
        total += {"visual_text": 2.5}.get(pair, 1.0) * by_hand
    assert float(module.loss(embeds)[0]) == pytest.approx(total, rel=1e-5)


def test_sigmoid_objective_uses_a_scale_and_bias_per_pairing():
    torch.manual_seed(0)
    module = PEAudioVisual(vocab_size=12, max_text_length=6, objective="sigmoid", **TINY)
    assert float(module.logit_bias["audio_text"]) == -10.0 and float(module.logit_scale["audio_text"]) == pytest.approx(math.log(10))
    embeds = module.embed(tiny_batch())
    x, y = F.normalize(embeds["audio"].double(), dim=-1), F.normalize(embeds["audio_text"].double(), dim=-1)
    logits = 10 * x @ y.T - 10
    signs = 2 * torch.eye(4, dtype=torch.float64) - 1
    assert float(module.pair_losses(embeds)["audio_text"]) == pytest.approx(float(-F.logsigmoid(signs * logits).sum() / 4), rel=1e-5)


def test_heads_embed_the_official_inputs():
    torch.manual_seed(0)
    net = PEAudioVisualNet(12, 6, **TINY).eval()
    batch = tiny_batch()
    mask = batch["tokens"] != 0
    out = net(batch["audio"], batch["video"], batch["tokens"], mask)
    model = net.audio_visual_model
    audio_states, audio = model.audio_model(batch["audio"])
    video_states, video = model.visual_model(batch["video"])
    _, av = model.audio_visual_transformer(audio_states, video_states)
    text = net.encode_text(batch["tokens"], mask)
    for name, value in {"audio": net.audio_head(audio), "visual": net.visual_head(video), "audio_visual": net.audio_visual_head(av),
                        "audio_text": net.audio_text_head(text), "visual_text": net.visual_text_head(text),
                        "audio_visual_text": net.audio_visual_text_head(text),
                        "audio_plus_text": net.audio_plus_text_head(torch.cat([audio, text], -1)),
                        "visual_plus_text": net.visual_plus_text_head(torch.cat([video, text], -1))}.items():  # fmt: skip
        torch.testing.assert_close(out[name], value, msg=name)
    # the text pools over real tokens only: padding ids do not matter
    changed = batch["tokens"].clone()
    changed[0, 4:] = 7
    torch.testing.assert_close(net.encode_text(changed, mask), text)


def test_video_reaches_the_audio_embedding_only_through_the_fusion_tower():
    torch.manual_seed(0)
    net = PEAudioVisualNet(12, 6, **TINY).eval()
    batch = tiny_batch()
    mask = batch["tokens"] != 0
    before = net(batch["audio"], batch["video"], batch["tokens"], mask)
    after = net(batch["audio"], batch["video"] + torch.randn_like(batch["video"]), batch["tokens"], mask)
    for name in ("audio", "audio_text", "visual_text", "audio_visual_text", "audio_plus_text"):
        torch.testing.assert_close(after[name], before[name])
    for name in ("visual", "audio_visual", "visual_plus_text"):
        assert not torch.allclose(after[name], before[name]), name


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our shared keys under the release's names, plus keys of the release's other parts (another architecture here)."""
    out = {}
    for key, value in state.items():
        if key.startswith("audio_visual_model.visual_model.pe_encoder."):
            continue
        if key.endswith(".cls_token"):
            out[key.replace(".cls_token", ".embeddings.cls_token")] = value
        elif key.startswith("text_model.") or ".layers." in key or ".pos_embed" in key or key.endswith((".norm.weight", ".norm.bias")):
            continue
        else:
            out[key] = value
    out["text_model.embeddings.tok_embeddings.weight"] = torch.zeros(5, 3)
    out["audio_visual_model.audio_model.audio_transformer.layers.0.self_attn.q_proj.weight"] = torch.zeros(16, 16)
    out["audio_visual_model.audio_model.audio_transformer.norm.weight"] = torch.ones(16)
    out["audio_visual_model.audio_model.dac_vae_encoder.block.0.weight"] = torch.zeros(2)
    return out


def test_official_key_map_round_trip(tmp_path):
    torch.manual_seed(0)
    source = PEAudioVisualNet(12, 6, **TINY)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    official = to_official(source.state_dict())
    assert "audio_text_head.proj.weight" in official and "audio_visual_model.audio_visual_transformer.modality_aligner.conv.weight" in official
    assert "audio_visual_model.audio_visual_transformer.embeddings.cls_token" in official
    path = tmp_path / "pe_av.pt"
    torch.save({"model": official}, path)
    target = PEAudioVisualNet(12, 6, **TINY)
    untouched = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("text_model.")}
    left = load_pe_av_shared_weights(target, str(path))
    assert left == 4  # exactly the four release-only keys added above
    kept = official_pe_av_key_map(official)
    mapped = target.state_dict()
    assert kept and all(torch.equal(mapped[k], v) for k, v in kept.items())
    assert all(torch.equal(mapped[k], v) for k, v in untouched.items())  # the towers of another architecture keep their init
    # the loaded heads and alignment compute what the source's do
    states = torch.randn(2, 8, 16), torch.randn(2, 4, 16)
    torch.testing.assert_close(target.audio_visual_model.audio_visual_transformer.modality_aligner(states[0], None, states[1], None)[0],
                               source.audio_visual_model.audio_visual_transformer.modality_aligner(states[0], None, states[1], None)[0])  # fmt: skip
    text = torch.randn(3, 16)
    torch.testing.assert_close(target.audio_text_head(text), source.audio_text_head(text))
    # a head of another width: one line naming the file
    official["audio_head.proj.weight"] = torch.zeros(3, 16)
    torch.save(official, path)
    with pytest.raises(LitzooError, match="pe_av.pt"):
        load_pe_av_shared_weights(PEAudioVisualNet(12, 6, **TINY), str(path))
    torch.save({"something.else": torch.zeros(1)}, path)
    with pytest.raises(LitzooError, match="holds no PE-AV head"):
        load_pe_av_shared_weights(PEAudioVisualNet(12, 6, **TINY), str(path))


def test_recall_at_k_by_hand_ties_count_against_the_match():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.4, 0.4, 0.4]])  # ranks of the matches: 0, 1, 2 (tied)
    assert [recall_at_k(similarity, k) for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert recall_at_k(torch.ones(4, 4), 1) == 0.0 and recall_at_k(torch.ones(4, 4), 5) == 1.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown pairings"):
        PEAudioVisual(pair_weights={"audio_smell": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        PEAudioVisual(pair_weights=dict.fromkeys(PE_AV_PAIRINGS, 0.0))
    with pytest.raises(ValueError, match="non-negative"):
        PEAudioVisual(pair_weights={"audio_text": -1.0})
    with pytest.raises(ValueError, match="objective"):
        PEAudioVisual(objective="triplet")
    with pytest.raises(ValueError):
        PEAudioVisualNet(12, 6, **{**TINY, "audio_patch_frames": 3})


def test_a_tiny_fit_learns_the_planted_pairing():
    """Random clips whose captions are a function of the clip (planted): the training loss falls and retrieval beats chance."""
    torch.manual_seed(0)
    module = PEAudioVisual(vocab_size=12, max_text_length=6, **TINY)
    batch = tiny_batch(batch_size=8, seed=3)
    optimizer = module.configure_optimizers()
    first = None
    for _ in range(60):
        loss, _ = module.loss(module.embed(batch))
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        recalls = module.retrieval(module.embed(batch))
    assert float(loss) < 0.3 * first
    assert recalls["audio_visual_text/R@1"] > 0.5 and recalls["audio_text/R@1"] > 0.5  # chance: 1/8


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("av")
    return SyntheticAudioVideoDataModule(root=str(root), num_train=8, num_val=4, num_frames=4, target_length=16, num_mel_bins=8,
                                         batch_size=4, captions=True)  # fmt: skip


def test_captioned_clips_carry_the_caption_written_for_their_audio(captioned):
    captioned.setup("fit")
    dataset = captioned.dataset("val")
    lines = [json.loads(line) for line in (captioned.root / "val_captions.jsonl").read_text().splitlines()]
    by_clip = {line["audio"].split("/")[1]: line["text"] for line in lines}
    for i in range(len(dataset)):
        assert dataset[i]["text"] == by_clip[dataset.clips[i][0].name]
    assert captioned.vocabulary.vocab_size > 10 and "chirp" in captioned.vocabulary.tokenizer.get_vocab() | {"chirp": 0}
    batch = next(iter(captioned.train_dataloader()))
    assert isinstance(batch["text"], list) and len(batch["text"]) == 4


def test_a_clip_without_caption_is_one_line_naming_the_file(tmp_path, captioned):
    folder = captioned.root
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(folder, broken)
    lines = (broken / "val_captions.jsonl").read_text().splitlines()
    (broken / "val_captions.jsonl").write_text("\n".join(lines[1:]) + "\n")
    dm = SyntheticAudioVideoDataModule.__new__(SyntheticAudioVideoDataModule)
    from litzoo.datamodules.audio_video import AudioVideoDataModule

    AudioVideoDataModule.__init__(dm, str(broken), "class_labels_indices.csv", 4, 4.0, 8.0, "centre", target_length=16, num_mel_bins=8,
                                  captions=True)  # fmt: skip
    with pytest.raises(LitzooError, match=r"val_captions\.jsonl' has no caption for clip"):
        dm.build_dataset("val")


def test_fit_on_captioned_synthetic_clips_logs_retrieval_per_pairing(captioned, tmp_path):
    torch.manual_seed(0)
    module = PEAudioVisual(**{**TINY, "num_frames": 4, "image_size": 32})
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, captioned)
    metrics = trainer.callback_metrics
    for pair, (x, y) in PE_AV_PAIRINGS.items():
        for k in (1, 5):
            assert 0.0 <= float(metrics[f"val/{pair}/R@{k}"]) <= 1.0
            assert f"val/{pair}/{x}_to_{y}_R@{k}" in metrics
    assert float(metrics["val/audio_text/R@5"]) == 1.0  # 4 validation clips: any ranking finds the match in the top 5
    assert module.net is not None and module.net.text_model.vocab_size == captioned.vocabulary.vocab_size


# ------------------------------------------------------------------------------------------------ the official towers
OFFICIAL = {**TINY, "tower": "official", "intermediate_size": 24}
TINY_DAC = {"dac_encoder_hidden_size": 2, "dac_downsampling_ratios": (2, 2), "dac_codebook_dim": 6}


def official_tower_keys(depth: int) -> set[str]:
    """The key names of core/audio_visual_encoder/transformer.py Transformer, written out from the official modules."""
    keys = {"embeddings.cls_token", "norm.weight", "output.weight"}
    keys |= {f"embeddings.resnet_block.{b}.{m}.{p}" for b in ("block1", "block2") for m in ("groupnorm", "project") for p in ("weight", "bias")}
    for i in range(depth):
        keys |= {f"layers.{i}.self_attn.{n}_proj.weight" for n in "qkvo"} | {f"layers.{i}.self_attn.{n}_norm.weight" for n in "qk"}
        keys |= {f"layers.{i}.mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
        keys |= {f"layers.{i}.input_layernorm.weight", f"layers.{i}.post_attention_layernorm.weight"}
    return keys


def release_like_state(net: PEAudioVisualNet, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values under the release's names for everything the official-tower net maps, plus PE-Core and ModernBERT keys."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=generator) * 0.3 for k, v in net.state_dict().items()
             if not k.startswith(("audio_visual_model.visual_model.pe_encoder.", "text_model."))}  # fmt: skip
    state["audio_visual_model.visual_model.pe_encoder.conv1.weight"] = torch.zeros(4, 3, 8, 8)
    state["audio_visual_model.visual_model.pe_encoder.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(12, 4)
    state["text_model.embeddings.tok_embeddings.weight"] = torch.zeros(5, 3)
    return state


def test_official_towers_carry_the_release_names_and_compute_the_rope_tower():
    torch.manual_seed(0)
    net = PEAudioVisualNet(12, 6, **OFFICIAL).eval()
    own = net.state_dict()
    towers = {"audio_visual_model.audio_model.audio_transformer": set(), "audio_visual_model.visual_model.visual_transformer": set(),
              "audio_visual_model.audio_visual_transformer": {"modality_aligner.conv.weight", "modality_aligner.conv.bias",
                                                               "modality_aligner.layer_norm.weight", "modality_aligner.layer_norm.bias",
                                                               "concat_modality_proj.weight", "concat_modality_proj.bias", "data_proj.weight",
                                                               "data_proj.bias"}}  # fmt: skip
    for name, extra in towers.items():
        keys = {k.removeprefix(name + ".") for k in own if k.startswith(name + ".")}
        assert keys == official_tower_keys(TINY["depth"]) | extra, name
        assert own[f"{name}.layers.0.mlp.gate_proj.weight"].shape == (24, 16)  # intermediate_size as given
    # the audio tower is the framework's RoPE tower on data_proj(strips), checked there against a transcription
    audio = tiny_batch()["audio"]
    standalone = RopeTransformer(16, 1, 2, 24).eval()
    prefix = "audio_visual_model.audio_model.audio_transformer."
    standalone.load_state_dict({k.removeprefix(prefix): v for k, v in own.items() if k.startswith(prefix)})
    model = net.audio_visual_model.audio_model
    expected = standalone(model.data_proj(audio.reshape(4, 8, 16)))
    for got, want in zip(model(audio), expected):
        torch.testing.assert_close(got, want)


def test_release_named_tower_weights_load_with_the_key_map(tmp_path):
    torch.manual_seed(0)
    target = PEAudioVisualNet(12, 6, **OFFICIAL)
    official = release_like_state(target)
    path = tmp_path / "pe_av_release.pt"
    torch.save({"model": official}, path)
    left = load_pe_av_shared_weights(target, str(path))
    assert left == 3  # PE-Core's two keys and ModernBERT's one: everything else maps
    loaded = target.state_dict()
    for key, value in official.items():
        if not key.startswith(("audio_visual_model.visual_model.pe_encoder.", "text_model.")):
            assert torch.equal(loaded[key], value), key
    assert "audio_visual_model.audio_visual_transformer.layers.0.self_attn.q_norm.weight" in official_pe_av_key_map(official, "official")
    # the same release file into the small towers keeps only the class tokens and output Linears of the transformers
    small_kept = official_pe_av_key_map(official)
    assert "audio_visual_model.audio_model.audio_transformer.cls_token" in small_kept
    assert not any(".layers." in k or ".resnet_block." in k for k in small_kept)
    # a tower of another width: one line naming the file
    official["audio_visual_model.audio_model.audio_transformer.layers.0.mlp.up_proj.weight"] = torch.zeros(32, 16)
    torch.save(official, path)
    with pytest.raises(LitzooError, match="pe_av_release.pt"):
        load_pe_av_shared_weights(PEAudioVisualNet(12, 6, **OFFICIAL), str(path))
    with pytest.raises(ValueError, match="tower"):
        official_pe_av_key_map(official, "huge")


def test_dac_vae_audio_loads_the_codec_and_feeds_the_audio_tower(tmp_path):
    torch.manual_seed(0)
    net = PEAudioVisualNet(12, 6, **OFFICIAL, audio_features="dac_vae", **TINY_DAC).eval()
    official = release_like_state(net, seed=1)
    assert "audio_visual_model.audio_model.dac_vae_encoder.encoder.block.1.conv1.weight" in official
    path = tmp_path / "pe_av_codec.pt"
    torch.save(official, path)
    assert load_pe_av_shared_weights(net, str(path)) == 3
    assert torch.equal(net.state_dict()["audio_visual_model.audio_model.dac_vae_encoder.bottleneck.in_proj.weight"],
                       official["audio_visual_model.audio_model.dac_vae_encoder.bottleneck.in_proj.weight"])  # fmt: skip
    model = net.audio_visual_model.audio_model
    wave = torch.randn(4, 1, 30)  # hop 4: reflect-padded to 32 -> 8 frames
    features = model.dac_vae_encoder(wave).transpose(1, 2)
    assert features.shape == (4, 8, 6)
    for got, want in zip(model(wave), model.audio_transformer(model.data_proj(features))):
        torch.testing.assert_close(got, want)
    batch = tiny_batch()
    out = net(wave, batch["video"], batch["tokens"], batch["tokens"] != 0)
    assert out["audio_visual"].shape == (4, 8) and torch.isfinite(out["audio_visual"]).all()
    # without the codec the map leaves its keys out (an fbank network has no place for them)
    codec_keys = [k for k in official if k.startswith("audio_visual_model.audio_model.dac_vae_encoder.")]
    assert len(codec_keys) == 2 + 2 * (3 * 6 + 3) + 3 + 4  # conv1, two blocks, snake + conv2, bottleneck
    assert len(official) - len(official_pe_av_key_map(official, "official")) == 3 + len(codec_keys)


def test_official_towers_train_in_pe_audio_visual(captioned, tmp_path):
    torch.manual_seed(0)
    module = PEAudioVisual(vocab_size=12, max_text_length=6, **OFFICIAL)
    batch = tiny_batch(batch_size=8, seed=3)
    optimizer = module.configure_optimizers()
    tracked = {name: p.detach().clone() for name, p in module.named_parameters() if ".layers.0.mlp.gate_proj" in name or "resnet_block.block1.project.weight" in name}
    assert len(tracked) == 6  # three towers x (first SwiGLU gate, first embedding conv)
    first = None
    for _ in range(40):
        loss, _ = module.loss(module.embed(batch))
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.5 * first
    params = dict(module.named_parameters())
    assert all(not torch.equal(params[name], before) for name, before in tracked.items())
    # and through Lightning on the captioned synthetic clips
    fitted = PEAudioVisual(**{**OFFICIAL, "num_frames": 4, "image_size": 32})
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=1)  # fmt: skip
    trainer.fit(fitted, captioned)
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and fitted.net is not None and fitted.net.tower == "official"


def test_official_options_rebuild_from_flat_hyperparameters():
    module = rebuilds_from_flat_hparams(PEAudioVisual, vocab_size=12, max_text_length=6, **OFFICIAL, audio_features="dac_vae", **TINY_DAC)
    assert module.net is not None and module.net.audio_visual_model.audio_model.dac_vae_encoder.hop_length == 4


def test_tower_options_are_checked():
    with pytest.raises(ValueError, match="tower"):
        PEAudioVisualNet(12, 6, **{**TINY, "tower": "large"})
    with pytest.raises(ValueError, match="needs tower='official'"):
        PEAudioVisualNet(12, 6, **TINY, audio_features="dac_vae")
    with pytest.raises(ValueError, match="tower"):
        PEAudioVisual(tower="large")
    with pytest.raises(ValueError, match="audio_features"):
        PEAudioVisual(audio_features="mfcc")
