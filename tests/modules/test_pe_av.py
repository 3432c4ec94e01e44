"""PE-AV: every pairing's loss by hand, the heads' inputs, the modality paths, the official key map, captioned data, a tiny fit;
the official towers (tower="official"): release names, release-named weights loading, the DAC-VAE audio path, training; the
ModernBERT text tower (text_tower="modernbert"): [CLS]/[SEP] by hand, release text keys loading strict, the pooled state by hand,
training, hyper-parameters, the CLI; PE-A-Frame against a transcription of the release's forward."""

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


# ----------------------------------------------------------------------------- PE-Core per frame (frame_encoder="pe_core")
PE_CORE = {**TINY, "frame_encoder": "pe_core", "frame_output_dim": 12}
FRAME_PREFIX = "audio_visual_model.visual_model.pe_encoder."


def release_pe_core_frames(seed: int = 0) -> dict[str, torch.Tensor]:
    """The release's per-frame PE-Core keys (``pe.py`` ``VisualEncoder.pe_encoder`` = PE-Core's ``VisionTransformer``) at the
    tiny sizes: width 16, 1 block, patch 8 on 16-px frames (a 2 x 2 grid and a class token), output_dim 12."""
    generator = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.3

    w = 16
    names = {"conv1.weight": (w, 3, 8, 8), "class_embedding": (w,), "positional_embedding": (5, w), "ln_pre.weight": (w,), "ln_pre.bias": (w,),
             "ln_post.weight": (w,), "ln_post.bias": (w,), "proj": (w, 12), "attn_pool.probe": (1, 1, w), "attn_pool.attn.in_proj_weight": (3 * w, w),
             "attn_pool.attn.in_proj_bias": (3 * w,), "attn_pool.attn.out_proj.weight": (w, w), "attn_pool.attn.out_proj.bias": (w,),
             "attn_pool.layernorm.weight": (w,), "attn_pool.layernorm.bias": (w,), "attn_pool.mlp.c_fc.weight": (4 * w, w),
             "attn_pool.mlp.c_fc.bias": (4 * w,), "attn_pool.mlp.c_proj.weight": (w, 4 * w), "attn_pool.mlp.c_proj.bias": (w,),
             "transformer.resblocks.0.ln_1.weight": (w,), "transformer.resblocks.0.ln_1.bias": (w,),
             "transformer.resblocks.0.attn.in_proj_weight": (3 * w, w), "transformer.resblocks.0.attn.in_proj_bias": (3 * w,),
             "transformer.resblocks.0.attn.out_proj.weight": (w, w), "transformer.resblocks.0.attn.out_proj.bias": (w,),
             "transformer.resblocks.0.ln_2.weight": (w,), "transformer.resblocks.0.ln_2.bias": (w,),
             "transformer.resblocks.0.mlp.c_fc.weight": (2 * w, w), "transformer.resblocks.0.mlp.c_fc.bias": (2 * w,),
             "transformer.resblocks.0.mlp.c_proj.weight": (w, 2 * w), "transformer.resblocks.0.mlp.c_proj.bias": (w,)}  # fmt: skip
    return {FRAME_PREFIX + name: r(*shape) for name, shape in names.items()}


def test_pe_core_frame_encoder_loads_every_release_key_and_feeds_the_video_tower(tmp_path):
    from litzoo.framework.nn.pe_core import PECoreVision, convert_pe_vision_state

    torch.manual_seed(0)
    net = PEAudioVisualNet(12, 6, **PE_CORE, tower="official", intermediate_size=24).eval()
    frames = release_pe_core_frames()
    official = {**release_like_state(net, seed=2), **frames}  # the frames' keys replace release_like_state's two stand-ins
    assert {k for k in official if k.startswith(FRAME_PREFIX)} == set(frames)
    path = tmp_path / "pe_av_pe_core.pt"
    torch.save(official, path)
    assert load_pe_av_shared_weights(net, str(path)) == 1  # only ModernBERT's key is left
    own = net.state_dict()
    converted = convert_pe_vision_state({k.removeprefix(FRAME_PREFIX): v for k, v in frames.items()})
    assert {FRAME_PREFIX + k for k in converted} == {k for k in own if k.startswith(FRAME_PREFIX)}  # every pe_encoder key, no other
    assert torch.equal(own[FRAME_PREFIX + "visual_projection.weight"], frames[FRAME_PREFIX + "proj"].T)
    assert torch.equal(own[FRAME_PREFIX + "visual.patch_embed.proj.weight"], frames[FRAME_PREFIX + "conv1.weight"])
    # the video branch: each frame through PE-Core's tower (pooled projection), L2-normalised, proj, data_proj, visual_transformer
    standalone = PECoreVision(image_size=16, patch_size=8, vision_width=16, vision_depth=1, vision_heads=2, vision_mlp_ratio=2.0,
                              embed_dim=12, attn_pooler_heads=2).eval()  # fmt: skip
    standalone.load_state_dict(converted, strict=True)
    video = tiny_batch()["video"]
    model = net.audio_visual_model.visual_model
    with torch.no_grad():
        per_frame = standalone(video.flatten(0, 1)).view(4, 4, 12)
        expected = model.visual_transformer(model.data_proj(model.proj(F.normalize(per_frame, dim=-1))))
        for got, want in zip(model(video), expected, strict=True):
            torch.testing.assert_close(got, want)
    assert model.proj.weight.shape == (16, 12)  # proj takes PE-Core's output_dim, not its width
    # the small per-frame encoder leaves the same PE-Core keys out
    assert len(official) - len(official_pe_av_key_map(official, "official")) == 1 + len(frames)
    # a release PE-Core that lacks a key, or has one PE-Core does not know: one line naming the file
    torch.save({k: v for k, v in official.items() if not k.endswith("attn_pool.probe")}, path)
    with pytest.raises(LitzooError, match=r"pe_av_pe_core.pt.*lacks 1 keys \(audio_visual_model.visual_model.pe_encoder.attn_pool.probe"):
        load_pe_av_shared_weights(PEAudioVisualNet(12, 6, **PE_CORE, tower="official", intermediate_size=24), str(path))
    torch.save({**official, FRAME_PREFIX + "rope.freqs": torch.zeros(2)}, path)
    with pytest.raises(LitzooError, match=r"pe_av_pe_core.pt.*unknown key 'rope.freqs'"):
        load_pe_av_shared_weights(PEAudioVisualNet(12, 6, **PE_CORE, tower="official", intermediate_size=24), str(path))


def test_the_release_per_frame_layout_is_pe_core_l14():
    with torch.device("meta"):  # shapes only
        net = PEAudioVisualNet(12, 6, **{**TINY, "image_size": 336}, frame_encoder="pe_core", pe_core_config="PE-Core-L14-336")
    state = net.state_dict()
    assert state[FRAME_PREFIX + "visual.pos_embed"].shape == (1, 1 + 24 * 24, 1024)
    assert state[FRAME_PREFIX + "visual_projection.weight"].shape == (1024, 1024) and FRAME_PREFIX + "visual.blocks.23.mlp.fc1.weight" in state
    assert state["audio_visual_model.visual_model.proj.weight"].shape == (16, 1024)  # Linear(pe_encoder.output_dim, hidden, bias=False)


def test_frame_encoder_options_are_checked():
    with pytest.raises(ValueError, match="frame_encoder"):
        PEAudioVisualNet(12, 6, **TINY, frame_encoder="resnet")
    with pytest.raises(ValueError, match="need frame_encoder='pe_core'"):
        PEAudioVisualNet(12, 6, **TINY, pe_core_config="PE-Core-L14-336")
    with pytest.raises(ValueError, match="PE-Core-L14-336"):
        PEAudioVisualNet(12, 6, **TINY, frame_encoder="pe_core", pe_core_config="PE-Core-L16")
    with pytest.raises(ValueError, match="frame_encoder"):
        PEAudioVisual(frame_encoder="resnet")
    module = rebuilds_from_flat_hparams(PEAudioVisual, vocab_size=12, max_text_length=6, **PE_CORE)
    assert module.net is not None and module.net.frame_encoder == "pe_core"
    loss, _ = module.loss(module.embed(tiny_batch()))
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------------- padding masks
def padded_clips(seed: int = 0) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Three clips of their own lengths (fbank frames 12, 8, 4 of at most 16: 6, 4, 2 steps; video frames 4, 2, 3) alone, and the
    batch of them padded with noise to 14 fbank frames (7 steps: no row fills it) and 4 frames, with the padding masks."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [(12, 4), (8, 2), (4, 3)]
    clips = [{"audio": torch.randn(1, 1, a, 8, generator=generator), "video": torch.randn(1, v, 3, 16, 16, generator=generator),
              "tokens": torch.randint(3, 12, (1, 6), generator=generator)} for a, v in lengths]  # fmt: skip
    audio, video = torch.randn(3, 1, 14, 8, generator=generator), torch.randn(3, 4, 3, 16, 16, generator=generator)  # the padding: noise
    audio_mask, video_mask = torch.zeros(3, 14, dtype=torch.bool), torch.zeros(3, 4, dtype=torch.bool)
    for row, ((a, v), clip) in enumerate(zip(lengths, clips, strict=True)):
        audio[row, :, :a], video[row, :v] = clip["audio"][0], clip["video"][0]
        audio_mask[row, :a], video_mask[row, :v] = True, True
    batch = {"audio": audio, "video": video, "tokens": torch.cat([c["tokens"] for c in clips]), "audio_mask": audio_mask, "video_mask": video_mask}
    return clips, batch


@pytest.mark.parametrize("options", [{}, {"tower": "official", "intermediate_size": 24}, {"frame_encoder": "pe_core"}], ids=["small", "official", "pe_core"])
def test_padded_clips_embed_as_unpadded(options):
    torch.manual_seed(0)
    module = PEAudioVisual(vocab_size=12, max_text_length=6, **TINY, **options).eval()
    clips, batch = padded_clips()
    with torch.no_grad():
        padded = module.embed(batch)  # the batch keys "audio_mask" / "video_mask"
        alone = [module.embed(clip) for clip in clips]
        unmasked = module.embed({k: v for k, v in batch.items() if not k.endswith("_mask")})
    for name in padded:
        torch.testing.assert_close(padded[name], torch.cat([a[name] for a in alone]), rtol=1e-5, atol=1e-5, msg=name)
    # without the masks the padding leaks into every media embedding (so the check above can fail)
    for name in ("audio", "visual", "audio_visual"):
        assert not torch.allclose(unmasked[name], padded[name], atol=1e-3), name


def test_step_masks_follow_the_release_rule():
    # fbank: a step of audio_patch_frames frames is real when its first frame is (padding_mask[:, ::hop])
    model = PEAudioVisualNet(12, 6, **TINY).audio_visual_model.audio_model
    frames = torch.arange(16)[None] < torch.tensor([[7], [16]])
    steps = model.step_mask(torch.zeros(2, 1, 16, 8), frames)
    assert steps.tolist() == [[True] * 4 + [False] * 4, [True] * 8]  # ceil(7 / 2) = 4 steps
    # DAC-VAE: a waveform mask at 4 samples per frame (hop 2 x 2), 30 samples -> reflect-padded to 32 -> 8 frames
    codec = PEAudioVisualNet(12, 6, **OFFICIAL, audio_features="dac_vae", **TINY_DAC).audio_visual_model.audio_model
    samples = torch.arange(30)[None] < torch.tensor([[13]])
    assert codec.step_mask(torch.zeros(1, 1, 30), samples).tolist() == [[True] * 4 + [False] * 4]  # ceil(13 / 4) = 4 frames
    assert codec.features(torch.zeros(1, 1, 30)).shape[1] == 8
    net = PEAudioVisualNet(12, 6, **TINY)
    batch = tiny_batch()
    with pytest.raises(ValueError, match="audio_mask must be"):
        net(batch["audio"], batch["video"], batch["tokens"], batch["tokens"] != 0, audio_mask=torch.ones(4, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="video_mask: every row needs at least one real step"):
        net(batch["audio"], batch["video"], batch["tokens"], batch["tokens"] != 0, video_mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="T ≤ 4"):
        net(batch["audio"], torch.zeros(4, 5, 3, 16, 16), batch["tokens"], batch["tokens"] != 0)


# ------------------------------------------------------------------------------------- the ModernBERT text tower (text_tower="modernbert")
MODERNBERT = {"text_tower": "modernbert", "text_hidden_size": 12, "text_intermediate_size": 20, "text_num_hidden_layers": 4,
              "text_num_attention_heads": 2, "nth_text_layer": 2}  # fmt: skip


def release_modernbert_keys(vocab: int, width: int, intermediate: int, layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The release's ``text_model.*`` keys (``AutoModel.from_config(ModernBertConfig(...))`` = transformers' ``ModernBertModel``,
    norms without bias) written out by name and shape: the first layer has no ``attn_norm`` (an Identity), ``Wqkv`` stacks
    q, k, v, ``Wi`` the GeGLU's input and gate halves."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"embeddings.tok_embeddings.weight": (vocab, width), "embeddings.norm.weight": (width,), "final_norm.weight": (width,)}
    for i in range(layers):
        if i:
            shapes[f"layers.{i}.attn_norm.weight"] = (width,)
        shapes |= {f"layers.{i}.attn.Wqkv.weight": (3 * width, width), f"layers.{i}.attn.Wo.weight": (width, width),
                   f"layers.{i}.mlp_norm.weight": (width,), f"layers.{i}.mlp.Wi.weight": (2 * intermediate, width),
                   f"layers.{i}.mlp.Wo.weight": (width, intermediate)}  # fmt: skip
    return {f"text_model.{name}": torch.randn(*shape, generator=generator) * 0.3 for name, shape in shapes.items()}


def test_add_cls_sep_writes_bert_special_tokens_by_hand():
    from litzoo.modules.pe_av import add_cls_sep

    tokens = torch.tensor([[5, 6, 7, 9], [8, 4, 4, 4], [3, 3, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ids, attention = add_cls_sep(tokens, mask, cls_id=12, sep_id=13)
    assert ids.tolist() == [[12, 5, 6, 7, 13, 0], [12, 8, 13, 0, 0, 0], [12, 3, 3, 3, 3, 13]]  # padded ids (9, 4) become [PAD]
    assert attention.tolist() == [[True] * 5 + [False], [True] * 3 + [False] * 3, [True] * 6]
    with pytest.raises(ValueError, match="left-aligned"):
        add_cls_sep(tokens, torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.bool), 12, 13)


def test_release_named_modernbert_keys_load_strict(tmp_path):
    pytest.importorskip("transformers")  # the optional extra `text`
    torch.manual_seed(0)
    net = PEAudioVisualNet(12, 6, **OFFICIAL, **MODERNBERT)
    text = release_modernbert_keys(12 + 2, 12, 20, 4)  # the word vocabulary of 12 ids, [CLS] and [SEP]
    assert {k for k in net.state_dict() if k.startswith("text_model.")} == set(text)  # every key, no other (buffers: not persistent)
    official = {**release_like_state(net), **text}  # the text keys replace release_like_state's stand-in
    path = tmp_path / "pe_av_text.pt"
    torch.save({"model": official}, path)
    assert load_pe_av_shared_weights(net, str(path)) == 2  # only PE-Core's two stand-ins are left
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in text.items())
    assert net.audio_text_head.layer_norm.weight.shape == (12,) and net.audio_plus_text_head.layer_norm.weight.shape == (16 + 12,)
    # the small text tower leaves every text key out
    assert len(official) - len(official_pe_av_key_map(official, "official")) == 2 + len(text)
    # a release text model that lacks a key, or has another vocabulary: one line naming the file
    torch.save({k: v for k, v in official.items() if k != "text_model.layers.3.mlp.Wo.weight"}, path)
    with pytest.raises(LitzooError, match=r"pe_av_text.pt.*ModernBERT text model lacks 1 keys \(text_model.layers.3.mlp.Wo.weight"):
        load_pe_av_shared_weights(PEAudioVisualNet(12, 6, **OFFICIAL, **MODERNBERT), str(path))
    torch.save({**official, "text_model.embeddings.tok_embeddings.weight": torch.zeros(50368, 12)}, path)
    with pytest.raises(LitzooError, match=r"pe_av_text.pt.*tok_embeddings"):
        load_pe_av_shared_weights(PEAudioVisualNet(12, 6, **OFFICIAL, **MODERNBERT), str(path))


def test_modernbert_pools_the_class_token_state_after_nth_layers():
    ModernBertModel = pytest.importorskip("transformers").ModernBertModel

    from litzoo.modules.pe_av import modernbert_text_config

    torch.manual_seed(0)
    net = PEAudioVisualNet(12, 6, **TINY, **MODERNBERT).eval()
    tokens = torch.tensor([[5, 6, 7, 0], [8, 3, 0, 0], [4, 9, 10, 11]])
    mask = tokens != 0
    ids = torch.tensor([[12, 5, 6, 7, 13, 0], [12, 8, 3, 13, 0, 0], [12, 4, 9, 10, 11, 13]])  # [CLS] words [SEP] by hand
    with torch.no_grad():
        pooled = net.encode_text(tokens, mask)
        # ModernBertModel run directly, the release's state taken by hand: hidden_states[2][:, 0]
        direct = ModernBertModel(modernbert_text_config(12, 12, 20, 4, 2)).eval()
        direct.load_state_dict(net.text_model.state_dict())
        torch.testing.assert_close(pooled, direct(input_ids=ids, attention_mask=ids != 0, output_hidden_states=True).hidden_states[2][:, 0])
        # = the first token after the first two layers, before any final norm: a two-layer copy without its final norm
        truncated = ModernBertModel(modernbert_text_config(12, 12, 20, 2, 2)).eval()
        truncated.load_state_dict({k: v for k, v in net.text_model.state_dict().items() if not k.startswith(("layers.2.", "layers.3."))})
        truncated.final_norm = torch.nn.Identity()
        torch.testing.assert_close(pooled, truncated(input_ids=ids, attention_mask=ids != 0).last_hidden_state[:, 0])
        # nth_text_layer=None: last_hidden_state, after all four layers and the final norm
        last = PEAudioVisualNet(12, 6, **TINY, **{**MODERNBERT, "nth_text_layer": None}).eval()
        last.text_model.load_state_dict(net.text_model.state_dict())
        torch.testing.assert_close(last.encode_text(tokens, mask), direct(input_ids=ids, attention_mask=ids != 0).last_hidden_state[:, 0])
        assert not torch.allclose(last.encode_text(tokens, mask), pooled, atol=1e-3)
        # the class token reads the caption (a changed word changes it), not the padding's ids
        changed = tokens.clone()
        changed[0, 3], changed[1, 2:] = 9, 7
        torch.testing.assert_close(net.encode_text(changed, mask), pooled)
        changed[2, 1] = 3
        assert not torch.allclose(net.encode_text(changed, mask)[2], pooled[2], atol=1e-4)
        # the pooled state feeds the three text heads and the two media+text heads
        batch = tiny_batch(batch_size=3)
        out = net(batch["audio"], batch["video"], tokens, mask)
        _, audio = net.audio_visual_model.audio_model(batch["audio"])
        _, video = net.audio_visual_model.visual_model(batch["video"])
    for name, value in {"audio_text": net.audio_text_head(pooled), "visual_text": net.visual_text_head(pooled),
                        "audio_visual_text": net.audio_visual_text_head(pooled),
                        "audio_plus_text": net.audio_plus_text_head(torch.cat([audio, pooled], -1)),
                        "visual_plus_text": net.visual_plus_text_head(torch.cat([video, pooled], -1))}.items():  # fmt: skip
        torch.testing.assert_close(out[name], value, msg=name)


def test_modernbert_text_tower_trains(captioned, tmp_path):
    pytest.importorskip("transformers")  # the optional extra `text`
    torch.manual_seed(0)
    module = PEAudioVisual(vocab_size=12, max_text_length=6, **TINY, **MODERNBERT)
    batch = tiny_batch(batch_size=8, seed=3)
    optimizer = module.configure_optimizers()
    before = {name: p.detach().clone() for name, p in module.named_parameters() if name.startswith("net.text_model.")}
    first = None
    for _ in range(40):
        loss, _ = module.loss(module.embed(batch))
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.5 * first
    params = dict(module.named_parameters())
    for name, value in before.items():
        unused = name.startswith(("net.text_model.layers.2.", "net.text_model.layers.3.", "net.text_model.final_norm."))
        assert (params[name].grad is None) == unused, name  # past the pooled layer: no gradient, as in the release
        assert torch.equal(params[name], value) == unused, name
    # and through Lightning on the captioned synthetic clips: the word vocabulary plus [CLS] and [SEP]
    fitted = PEAudioVisual(**{**TINY, "num_frames": 4, "image_size": 32}, **MODERNBERT)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=1)  # fmt: skip
    trainer.fit(fitted, captioned)
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and fitted.net is not None
    assert fitted.net.text_model.embeddings.tok_embeddings.num_embeddings == captioned.vocabulary.vocab_size + 2


def test_modernbert_options_round_trip_and_are_checked():
    pytest.importorskip("transformers")  # the optional extra `text`
    module = rebuilds_from_flat_hparams(PEAudioVisual, vocab_size=12, max_text_length=6, **TINY, **MODERNBERT)
    assert module.net is not None and module.net.text_tower == "modernbert" and module.net.nth_text_layer == 2
    with pytest.raises(ValueError, match="text_tower must be one of"):
        PEAudioVisual(text_tower="bert")
    with pytest.raises(ValueError, match="nth_text_layer, text_hidden_size need text_tower='modernbert'"):
        PEAudioVisualNet(12, 6, **TINY, text_hidden_size=64, nth_text_layer=3)
    with pytest.raises(ValueError, match="nth_text_layer must be in 0 … text_num_hidden_layers = 4"):
        PEAudioVisual(**{**MODERNBERT, "nth_text_layer": 5})
    with pytest.raises(ValueError, match="divisible"):
        PEAudioVisualNet(12, 6, **TINY, **{**MODERNBERT, "text_num_attention_heads": 5})


def test_cli_fits_the_synthetic_config_with_the_modernbert_text_tower(tmp_path):
    pytest.importorskip("transformers")  # the optional extra `text`
    from litzoo.cli import main

    sizes = [f"--model.{name}={value}" for name, value in MODERNBERT.items()]
    main(["fit", "-c", "configs/pe_av/synthetic_av.yaml", *sizes, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir",
          str(tmp_path), "--trainer.enable_progress_bar", "false", "--data.root", str(tmp_path / "data"), "--data.num_train", "8",
          "--data.num_val", "4", "--data.batch_size", "4"])  # fmt: skip


def test_the_release_text_layout_is_modernbert_large():
    pytest.importorskip("transformers")  # the optional extra `text`
    with torch.device("meta"):  # shapes only
        net = PEAudioVisualNet(50368 - 2, 6, **TINY, text_tower="modernbert")  # the release's defaults; its tokenizer's 50368 ids
    state = net.state_dict()
    width, glu, layers = 1024, 2624, 28
    per_layer = 3 * width * width + width * width + width + 2 * glu * width + glu * width  # Wqkv, Wo, mlp_norm, Wi, Wo
    expected = 50368 * width + width + layers * per_layer + (layers - 1) * width + width  # + attn_norm from layer 1, final_norm
    assert sum(v.numel() for k, v in state.items() if k.startswith("text_model.")) == expected == 394_781_696  # ModernBERT-large
    config = net.text_model.config
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == list(range(0, 28, 3))  # global every third
    assert config.rope_parameters["full_attention"]["rope_theta"] == 160000.0 and config.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
    assert config.local_attention == 128 and config.norm_eps == 1e-5 and net.nth_text_layer == 22
    assert state["audio_visual_text_head.proj.weight"].shape == (8, 1024) and state["visual_plus_text_head.layer_norm.weight"].shape == (16 + 1024,)


def test_modernbert_without_transformers_is_one_line_naming_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(LitzooError, match=r"text_tower='modernbert' needs transformers, which is not installed: pip install 'litzoo\[text\]'"):
        PEAudioVisualNet(12, 6, **TINY, **MODERNBERT)
    assert PEAudioVisualNet(12, 6, **TINY).text_tower == "small"  # the default needs no transformers


# --------------------------------------------------------------------------------------------------------------- PE-A-Frame
TINY_FRAME = {"num_mel_bins": 8, "audio_frames": 16, "audio_patch_frames": 2, "dim": 16, "depth": 1, "num_heads": 2, "output_dim": 8}
FRAME_RELEASE = {"num_mel_bins": 8, "audio_frames": 16, "audio_patch_frames": 2, "dim": 16, "depth": 1, "num_heads": 2, "output_dim": 8,
                 "tower": "official", "intermediate_size": 24, "audio_features": "dac_vae", **TINY_DAC, **MODERNBERT}  # fmt: skip


def release_frame_forward(net, input_values, input_ids, attention_mask, threshold):
    """A transcription of the release's ``PEAudioFrame.forward`` (``pe.py``) on the net's modules, with its
    ``_get_text_output`` (``hidden_states[nth_text_layer]``, first token) and its span rule."""
    audio_last_hidden_state, _ = net.audio_model(input_values)
    output = net.text_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    pooler_output = output.hidden_states[net.nth_text_layer][:, 0]
    text_embeds = net.text_head(pooler_output)
    audio_embeds = net.audio_head(audio_last_hidden_state)
    bsz = input_ids.size(0)
    unscaled_logits = audio_embeds @ text_embeds.unsqueeze(1).transpose(-1, -2)
    logits = unscaled_logits.squeeze(-1) * net.logit_scale + net.logit_bias
    probs = logits.sigmoid()
    preds = probs > threshold
    changes = torch.diff(F.pad(preds, (1, 1), value=False), dim=1).nonzero()
    span_tensor = torch.cat([changes[::2], changes[1::2, [1]]], dim=1)
    hop, rate = net.audio_model.dac_vae_encoder.hop_length, net.audio_model.dac_vae_encoder.sampling_rate
    spans = [(span_tensor[span_tensor[:, 0] == i, 1:] * hop / rate).tolist() for i in range(bsz)]
    return audio_embeds, text_embeds, logits, spans


def test_pe_a_frame_equals_a_transcription_of_the_release_forward():
    pytest.importorskip("transformers")  # the optional extra `text`
    from litzoo.modules.pe_av import PEAudioFrameNet

    torch.manual_seed(0)
    net = PEAudioFrameNet(12, 6, **FRAME_RELEASE).eval()
    with torch.no_grad():
        net.logit_scale.fill_(4.0)
        net.logit_bias.fill_(-0.3)
    wave = torch.randn(3, 1, 64, generator=torch.Generator().manual_seed(1))  # hop 4: 16 frames
    tokens = torch.tensor([[5, 6, 7, 0], [8, 3, 0, 0], [4, 9, 10, 11]])
    ids = torch.tensor([[12, 5, 6, 7, 13, 0], [12, 8, 3, 13, 0, 0], [12, 4, 9, 10, 11, 13]])
    with torch.no_grad():
        audio_embeds, text_embeds = net(wave, tokens, tokens != 0)
        logits = net.frame_logits(audio_embeds, text_embeds)
        threshold = float(logits.sigmoid().median())  # some frames above, some below
        spans = net.spans(wave, tokens, tokens != 0, threshold=threshold)
        expected = release_frame_forward(net, wave, ids, (ids != 0).long(), threshold)
    assert audio_embeds.shape == (3, 16, 8) and text_embeds.shape == (3, 8)
    for got, want in zip((audio_embeds, text_embeds, logits), expected[:3], strict=True):
        torch.testing.assert_close(got, want)
    assert sum(len(row) for row in spans) >= 3
    assert len(spans) == 3 and all(torch.allclose(torch.tensor(g), torch.tensor(w)) for g, w in zip(spans, expected[3], strict=True))
    assert net.step_seconds == 4 / 48000


def test_frame_spans_by_hand():
    from litzoo.modules.pe_av import frame_spans

    big = 10.0  # sigmoid(±10): clearly above / below 0.3
    logits = torch.tensor([[big, big, -big, -big, big], [-big] * 5, [big] * 5, [-big, big, -big, big, -big]])
    assert frame_spans(logits, 0.3, 0.5) == [[[0.0, 1.0], [2.0, 2.5]], [], [[0.0, 2.5]], [[0.5, 1.0], [1.5, 2.0]]]
    edge = torch.tensor([[0.0, 1e-3]])  # sigmoid(0) = 0.5 exactly: strictly above the threshold counts
    assert frame_spans(edge, 0.5, 1.0) == [[[1.0, 2.0]]]


def test_release_named_pe_a_frame_state_loads_strict(tmp_path):
    pytest.importorskip("transformers")  # the optional extra `text`
    from litzoo.modules.pe_av import PEAudioFrameNet, load_pe_a_frame_weights

    torch.manual_seed(0)
    net = PEAudioFrameNet(12, 6, **FRAME_RELEASE)
    generator = torch.Generator().manual_seed(5)
    # the release's names: audio_model.* as PE-AV's audio branch (whose names are checked above), text_model.*, the two heads, scalars
    av = PEAudioVisualNet(12, 6, **{k: v for k, v in FRAME_RELEASE.items() if k not in MODERNBERT}).state_dict()
    state = {k.removeprefix("audio_visual_model."): torch.randn(v.shape, generator=generator) for k, v in av.items()
             if k.startswith("audio_visual_model.audio_model.")}  # fmt: skip
    state |= release_modernbert_keys(12 + 2, 12, 20, 4, seed=6)
    state |= {"text_head.layer_norm.weight": torch.rand(12), "text_head.layer_norm.bias": torch.rand(12), "text_head.proj.weight": torch.rand(8, 12),
              "audio_head.layer_norm.weight": torch.rand(16), "audio_head.layer_norm.bias": torch.rand(16), "audio_head.proj.weight": torch.rand(8, 16),
              "logit_scale": torch.tensor([7.5]), "logit_bias": torch.tensor([-2.0])}  # fmt: skip
    path = tmp_path / "pe_a_frame.pt"
    torch.save({"model": state}, path)
    load_pe_a_frame_weights(net, str(path))
    loaded = net.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    torch.save({k: v for k, v in state.items() if k != "logit_bias"}, path)
    with pytest.raises(LitzooError, match=r"pe_a_frame.pt.*PE-A-Frame model.*logit_bias"):
        load_pe_a_frame_weights(PEAudioFrameNet(12, 6, **FRAME_RELEASE), str(path))
    # the small default layout (fbank strips, small towers and text) embeds per frame too
    small = PEAudioFrameNet(12, 6, **TINY_FRAME)
    audio_embeds, text_embeds = small(torch.randn(2, 1, 16, 8), torch.tensor([[3, 4], [5, 0]]), torch.tensor([[True, True], [True, False]]))
    assert audio_embeds.shape == (2, 8, 8) and text_embeds.shape == (2, 8) and small.step_seconds == pytest.approx(0.02)
    with pytest.raises(ValueError, match="tower='official'"):
        PEAudioFrameNet(12, 6, **TINY_FRAME, audio_features="dac_vae")

