"""MBT (issue 25, item 1): the bottleneck tokens are the only cross-modal path after ``fusion_layer`` (and none before), late
fusion has none at all, full fusion equals a joint block pass on the concatenation, the bottleneck update is the mean
of the modalities' copies (a hand-walked reference), attention FLOPs equal their closed form (bottleneck < full), the
class-token head, a tiny fit on the SYNTHETIC audio-visual clips (multi-label mAP against scikit-learn, the XOR column
as a binary task, the checkpoint rebuilding the network), an exact mid-epoch resume, bad arguments."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.metrics import average_precision_score

from litzoo.datamodules.audio_video import SyntheticAudioVideoDataModule
from litzoo.framework.errors import LitzooError
from litzoo.framework.resume import ExactResume
from litzoo.modules.mbt import MBT, MBTNet, attention_flops

DEPTH, FUSION_LAYER, DIM = 4, 2, 16
SIZES = {"num_classes": 3, "num_frames": 4, "image_size": 16, "spec_size": (16, 16)}
MODULE_SIZES = {"num_classes": 3, "video_frames": 4, "video_size": 16, "spec_size": (16, 16)}
SMALL = {"fusion_layer": FUSION_LAYER, "num_bottlenecks": 2, "dim": DIM, "depth": DEPTH, "num_heads": 2, "mlp_ratio": 2.0, "tubelet": (2, 8, 8),
         "spec_patch": 8}  # fmt: skip
N_VIDEO, N_AUDIO = 2 * 2 * 2, 2 * 2


def net(fusion: str, seed: int = 0, **kwargs) -> MBTNet:
    torch.manual_seed(seed)
    model = MBTNet(**SIZES, **{**SMALL, **kwargs}, fusion=fusion).eval()
    torch.nn.init.normal_(model.head.weight)  # scenic's zero head would make every logit 0
    return model


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 3, 16, 16, generator=generator), torch.randn(2, 1, 16, 16, generator=generator)


def layers(model: MBTNet, video: torch.Tensor, audio: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        return model.encode(model.tokenize(video, audio), return_layers=True)[1]


# ------------------------------------------------------------------------------------ the cross-modal paths
def test_audio_reaches_the_video_tokens_only_from_the_fusion_layer_and_only_through_the_bottleneck(monkeypatch):
    model = net("bottleneck")
    video, audio = inputs()
    other_audio = audio + torch.randn_like(audio)
    plain, perturbed = layers(model, video, audio), layers(model, video, other_audio)
    # the first fused layer reads the learned z (the same for every input) and writes the audio into z; the video
    # tokens read it at the next layer
    for layer in range(DEPTH):
        same = torch.equal(plain[layer]["video"], perturbed[layer]["video"])
        assert same == (layer <= FUSION_LAYER), f"layer {layer}: video tokens {'un' if same else ''}changed by the audio"
        assert not torch.equal(plain[layer]["audio"], perturbed[layer]["audio"])
        assert ("bottleneck" in plain[layer]) == (layer >= FUSION_LAYER)
    assert not torch.equal(plain[FUSION_LAYER]["bottleneck"], perturbed[FUSION_LAYER]["bottleneck"])
    # the bottleneck's update cut (each fused layer returns a constant instead of the modalities' mean): no path is left
    monkeypatch.setattr(model, "fuse_bottlenecks", lambda updates: torch.zeros_like(updates[0]))
    cut, cut_perturbed = layers(model, video, audio), layers(model, video, other_audio)
    for layer in range(DEPTH):
        assert torch.equal(cut[layer]["video"], cut_perturbed[layer]["video"])
        assert not torch.equal(cut[layer]["audio"], cut_perturbed[layer]["audio"])
    assert not torch.equal(cut[DEPTH - 1]["video"], plain[DEPTH - 1]["video"])  # the cut did change the network


def test_late_fusion_has_no_cross_modal_path_and_additive_logits():
    model = net("late")
    video, audio = inputs()
    other_video, other_audio = inputs(seed=2)
    for layer_a, layer_b in zip(layers(model, video, audio), layers(model, video, other_audio), strict=True):
        assert torch.equal(layer_a["video"], layer_b["video"])
    with torch.no_grad():
        # logits = f(video) + g(audio): the reason late fusion cannot represent an XOR of the two
        cross = model(video, audio) + model(other_video, other_audio) - model(video, other_audio) - model(other_video, audio)
        assert cross.abs().max() < 1e-5
        fused = net("bottleneck")
        fused_cross = fused(video, audio) + fused(other_video, other_audio) - fused(video, other_audio) - fused(other_video, audio)
        assert fused_cross.abs().max() > 1e-3  # negative control: bottleneck fusion is not additive
        token = net("late", classifier="token")
        cross = token(video, audio) + token(other_video, other_audio) - token(video, other_audio) - token(other_video, audio)
        assert cross.abs().max() < 1e-5


@pytest.mark.parametrize("share_encoder", [False, True])
def test_full_fusion_is_a_block_pass_on_the_concatenated_tokens(share_encoder):
    model = net("full", share_encoder=share_encoder)
    video, audio = inputs()
    walked = layers(model, video, audio)
    other = layers(model, video, audio + 1.0)
    assert torch.equal(walked[FUSION_LAYER - 1]["video"], other[FUSION_LAYER - 1]["video"])
    assert not torch.equal(walked[FUSION_LAYER]["video"], other[FUSION_LAYER]["video"])
    with torch.no_grad():
        for layer in range(FUSION_LAYER, DEPTH):
            joint = torch.cat([walked[layer - 1]["video"], walked[layer - 1]["audio"]], dim=1)
            if share_encoder:  # one joint self-attention block over all tokens
                expected = model.blocks["video"][layer](joint)
                assert torch.allclose(torch.cat([walked[layer]["video"], walked[layer]["audio"]], dim=1), expected, atol=1e-6)
            else:  # each modality's own block on everything, its own tokens kept (scenic's full fusion)
                assert torch.allclose(walked[layer]["video"], model.blocks["video"][layer](joint)[:, :N_VIDEO], atol=1e-6)
                assert torch.allclose(walked[layer]["audio"], model.blocks["audio"][layer](joint)[:, N_VIDEO:], atol=1e-6)
                wrong = model.blocks["video"][layer](walked[layer - 1]["video"])  # negative control: no cross-attention
                assert not torch.allclose(walked[layer]["video"], wrong, atol=1e-3)


def reference_bottleneck(model: MBTNet, video: torch.Tensor, audio: torch.Tensor, combine) -> tuple[dict, torch.Tensor]:
    """MBT's encoder walked by hand for 2 modalities: z appended after each modality's tokens, split, combined."""
    x = model.tokenize(video, audio)
    z = model.bottleneck.expand(len(video), -1, -1)
    for layer in range(DEPTH):
        if layer < FUSION_LAYER:
            x = {"video": model.blocks["video"][layer](x["video"]), "audio": model.blocks["audio"][layer](x["audio"])}
            continue
        out_v = model.blocks["video"][layer](torch.cat([x["video"], z], dim=1))
        out_a = model.blocks["audio"][layer](torch.cat([x["audio"], z], dim=1))
        x = {"video": out_v[:, :N_VIDEO], "audio": out_a[:, :N_AUDIO]}
        z = combine(out_v[:, N_VIDEO:], out_a[:, N_AUDIO:])
    return x, z


def test_bottleneck_update_is_the_mean_of_the_two_modalities_copies():
    model = net("bottleneck")
    video, audio = inputs()
    assert model.bottleneck.shape == (1, 2, DIM)
    with torch.no_grad():
        walked = model.encode(model.tokenize(video, audio), return_layers=True)
        expected, z = reference_bottleneck(model, video, audio, lambda zv, za: (zv + za) / 2)
        for m in ("video", "audio"):
            assert torch.allclose(walked[0][m], expected[m], atol=1e-6)
        assert torch.allclose(walked[1][-1]["bottleneck"], z, atol=1e-6)
        # negative controls: a sum (LayerNorm hides its scale from the tokens, not from z) and the video copy alone
        _, summed = reference_bottleneck(model, video, audio, lambda zv, za: zv + za)
        assert not torch.allclose(walked[1][-1]["bottleneck"], summed, atol=1e-3)
        video_only, _ = reference_bottleneck(model, video, audio, lambda zv, za: zv)
        assert not torch.allclose(walked[0]["video"], video_only["video"], atol=1e-4)
        # the gap head: the mean over all normed modality tokens, one linear layer
        tokens = model.norm(torch.cat([expected["video"], expected["audio"]], dim=1)).mean(1)
        assert torch.allclose(model(video, audio), model.head(tokens), atol=1e-6)


def test_token_classifier_averages_the_modalities_logits_with_one_extra_bottleneck_token():
    model = net("bottleneck", classifier="token")
    assert model.bottleneck.shape == (1, 3, DIM)  # scenic: n_bottlenecks + 1 with class tokens
    assert model.num_tokens == {"video": N_VIDEO + 1, "audio": N_AUDIO + 1}
    video, audio = inputs()
    with torch.no_grad():
        per = model.modality_logits(video, audio)
        assert torch.allclose(model(video, audio), (per["video"] + per["audio"]) / 2, atol=1e-6)


def test_without_bottlenecks_at_test_time_the_modalities_stay_apart():
    model = net("bottleneck", test_with_bottlenecks=False)
    video, audio = inputs()
    for a, b in zip(layers(model, video, audio), layers(model, video, audio - 1.0), strict=True):
        assert torch.equal(a["video"], b["video"])
    model.train()  # in training the bottleneck is used
    with torch.no_grad():
        trained = model.encode(model.tokenize(video, audio), return_layers=True)[1]
        moved = model.encode(model.tokenize(video, audio - 1.0), return_layers=True)[1]
    assert not torch.equal(trained[-1]["video"], moved[-1]["video"])


# ------------------------------------------------------------------------------------ FLOPs
def closed_form(fusion: str, share_encoder: bool) -> int:
    """QKᵀ and AV: 2 products of 2·n²·D FLOPs per attention over n tokens (batch 1)."""
    per = lambda n: 4 * n * n * DIM  # noqa: E731
    before = FUSION_LAYER * (per(N_VIDEO) + per(N_AUDIO))
    after_layers = DEPTH - FUSION_LAYER
    if fusion == "late":
        return DEPTH * (per(N_VIDEO) + per(N_AUDIO))
    if fusion == "bottleneck":
        return before + after_layers * (per(N_VIDEO + 2) + per(N_AUDIO + 2))
    return before + after_layers * (1 if share_encoder else 2) * per(N_VIDEO + N_AUDIO)


def test_attention_flops_equal_the_closed_form_and_bottleneck_is_cheaper_than_full():
    video, audio = inputs()
    video, audio = video[:1], audio[:1]
    counted = {}
    for fusion in ("late", "bottleneck", "full"):
        for share in (False, True):
            flops = attention_flops(net(fusion, share_encoder=share), video, audio)
            assert flops["attention"] == closed_form(fusion, share), (fusion, share)
            assert 0 < flops["attention"] + flops["attention_projections"] < flops["total"]
            counted[fusion, share] = flops["attention"]
    assert counted["late", False] < counted["bottleneck", False] < counted["full", True] < counted["full", False]
    # why the math backend: the default CPU kernel of scaled_dot_product_attention counts as zero
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net("full")(video, audio)
    sdpa = sum(f for name, ops in counter.get_flop_counts().items() if name.endswith(".attn") for op, f in ops.items() if "addmm" not in str(op))
    assert sdpa == 0


# ------------------------------------------------------------------------------------ Lightning
@pytest.fixture(autouse=True)
def lightning_seed_left_as_found(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


def data(tmp_path) -> SyntheticAudioVideoDataModule:
    return SyntheticAudioVideoDataModule(root=str(tmp_path / "data"), num_train=16, num_val=8, num_digits=2, num_frames=4, fps=2.0,
                                         target_length=32, num_mel_bins=32, batch_size=8)  # fmt: skip


def trainer(tmp_path, epochs: int = 2) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))  # fmt: skip


TINY = {"fusion_layer": 1, "num_bottlenecks": 2, "dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "tubelet": (2, 16, 16), "spec_patch": 16}


def test_tiny_fit_multilabel_map_equals_scikit_learn_and_the_checkpoint_rebuilds_the_network(tmp_path):
    L.seed_everything(0, verbose=False)
    dm = data(tmp_path)
    model = MBT(optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), **TINY)
    fit = trainer(tmp_path)
    fit.fit(model, dm)
    assert dict(model.hparams)["num_classes"] == 3 and model.hparams.spec_size == (32, 32) and model.hparams.video_size == 32
    assert set(model.flops) == {"attention", "attention_projections", "total"} and model.flops["attention"] > 0
    metrics = fit.validate(model, dm, verbose=False)[0]
    batches = list(dm.val_dataloader())
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(b["video"], b["audio"]) for b in batches]).numpy()
    labels = torch.cat([b["label"] for b in batches]).numpy()
    expected = np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])])
    assert metrics["val/mAP"] == pytest.approx(expected, abs=1e-5)
    rebuilt = MBT(**{k: v for k, v in model.hparams.items()})
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(batches[0]["video"], batches[0]["audio"]), model(batches[0]["video"], batches[0]["audio"]))


def test_xor_target_is_a_binary_task_with_scenic_label_smoothing(tmp_path):
    L.seed_everything(0, verbose=False)
    dm = data(tmp_path)
    model = MBT(target_class="/synthetic/xor", label_smoothing=0.2, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), **TINY)
    assert model.monitor == "val/acc"
    fit = trainer(tmp_path, epochs=1)
    fit.fit(model, dm)
    assert model.hparams.target_class == 2  # /synthetic/xor after the 2 digit classes, stored as its column
    batch = next(iter(dm.val_dataloader()))
    assert torch.equal(model.target(batch["label"]), batch["label"][:, 2].long())
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    target = torch.tensor([1, 0])
    smoothed = torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # (1 - 0.2) one-hot + 0.2 / 2
    assert model.loss(logits, target) == pytest.approx(float(-(smoothed * logits.log_softmax(1)).sum(1).mean()), abs=1e-6)
    metrics = fit.validate(model, dm, verbose=False)[0]
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(b["video"], b["audio"]).argmax(1) == model.target(b["label"])).sum()) for b in dm.val_dataloader())
    assert metrics["val/acc"] == pytest.approx(correct / 8)
    multilabel = MBT(**MODULE_SIZES, label_smoothing=0.2, **TINY)
    hot = torch.tensor([[1.0, 0.0, 1.0]])
    scores = torch.tensor([[0.5, -0.5, 2.0]])
    soft = hot * 0.8 + 0.2 / 3
    by_hand = -(soft * torch.log(torch.sigmoid(scores)) + (1 - soft) * torch.log(1 - torch.sigmoid(scores))).mean()
    assert multilabel.loss(scores, hot) == pytest.approx(float(by_hand), abs=1e-6)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_token_classifier_trains_on_the_mean_of_the_modality_losses():
    model = MBT(**MODULE_SIZES, classifier="token", **TINY)
    torch.nn.init.normal_(model.net.head.weight)
    video, audio = inputs()
    batch = {"video": video, "audio": audio, "label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])}
    per = model.net.modality_logits(video, audio)
    expected = (model.loss(per["video"], batch["label"]) + model.loss(per["audio"], batch["label"])) / 2
    assert float(model.training_step(batch, 0).detach()) == pytest.approx(float(expected), abs=1e-6)
    assert float(model.loss(model(video, audio), batch["label"])) != pytest.approx(float(expected), abs=1e-6)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="fusion must be one of"):
        MBTNet(**SIZES, fusion="cross")
    with pytest.raises(ValueError, match="fusion_layer"):
        MBTNet(**SIZES, depth=2, fusion_layer=3)
    with pytest.raises(ValueError, match="classifier"):
        MBTNet(**SIZES, classifier="cls")
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        MBTNet(**{**SIZES, "image_size": 20}, tubelet=(2, 16, 16))
    with pytest.raises(ValueError, match="num_bottleneks"):
        MBT(num_bottleneks=4)
    with pytest.raises(ValueError, match="label_smoothing"):
        MBT(label_smoothing=1.0)
    L.seed_everything(0, verbose=False)
    model = MBT(target_class="/synthetic/nothing", **TINY)
    with pytest.raises(LitzooError, match="'/synthetic/nothing' is not a label of the DataModule"):
        trainer(tmp_path).fit(model, data(tmp_path))


class Killed(Exception):
    pass


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Killed


def resumable_fit(tmp_path, folder: str, seed: int, save_at: int = 0, ckpt_path=None) -> tuple[MBT, L.Trainer]:
    """2 epochs of 4 steps (16 clips, batches of 4) with the exact-resume callback; ``save_at``: checkpoint there, die one step later."""
    L.seed_everything(seed, verbose=False)
    dm = SyntheticAudioVideoDataModule(root=str(tmp_path / "data"), num_train=16, num_val=8, num_digits=2, num_frames=4, fps=2.0,
                                       target_length=32, num_mel_bins=32, batch_size=4)  # fmt: skip
    model = MBT(warmup_epochs=0.5, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), **TINY)
    callbacks: list[L.Callback] = [ExactResume()]
    if save_at:
        callbacks += [ModelCheckpoint(dirpath=tmp_path / folder, filename="{step}", every_n_train_steps=save_at, save_top_k=-1), KillAt(save_at + 1)]
    fit = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=bool(save_at), enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
                    default_root_dir=str(tmp_path / folder))  # fmt: skip
    if save_at:
        with pytest.raises(Killed):
            fit.fit(model, datamodule=dm)
    else:
        fit.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, fit


def test_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    straight, fit = resumable_fit(tmp_path, "straight", seed=0)
    assert fit.global_step == 8
    save_at = 6  # mid-epoch 1: the loader's position, the optimizer's moments and the schedule all matter
    resumable_fit(tmp_path, "killed", seed=0, save_at=save_at)
    checkpoint = tmp_path / "killed" / f"step={save_at}.ckpt"
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1
    resumed, resumed_fit = resumable_fit(tmp_path, "resumed", seed=123, ckpt_path=checkpoint)  # another seed: all state from the file
    assert resumed_fit.global_step == fit.global_step
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    other, _ = resumable_fit(tmp_path, "other", seed=1)  # negative control: another start ends elsewhere
    assert (other.net.bottleneck - straight.net.bottleneck).abs().max() > 1e-3
