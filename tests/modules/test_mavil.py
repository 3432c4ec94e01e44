"""MAViL (issue 25, item 2): masking, losses by hand, gathered InfoNCE under 2 gloo ranks, stage-2 teacher, tiny fit,
the diagnostic contrast masks, and the fine-tuning classifier (heads by hand, checkpoint loading, steps, hparams)."""

from __future__ import annotations

import math
import textwrap

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.patches import masked_patch_loss
from litzoo.framework.nn.pos_embed import sincos_pos_embed_3d
from litzoo.modules.mavil import MAViL, MAViLClassifier, info_nce
from tests.gloo_ranks import run_ranks

SIZES = dict(video_frames=4, video_size=32, spec_size=(32, 32), tubelet=(2, 8, 8), audio_patch=8, dim=32, depth=1, num_heads=2,
             fusion_depth=1, decoder_dim=16, decoder_depth=1, decoder_heads=2, mlp_ratio=2.0, proj_dim=8)  # fmt: skip


def _module(**kwargs) -> MAViL:
    torch.manual_seed(0)
    return MAViL(**SIZES, **kwargs)


def _inputs(batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 32, 32, generator=g), torch.randn(batch, 4, 3, 32, 32, generator=g)


def _hand_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE written out row by row."""
    total = a.new_zeros(())
    n = len(a)
    for i in range(n):
        sims_ab = torch.stack([a[i] @ b[j] / tau for j in range(n)])
        sims_ba = torch.stack([b[i] @ a[j] / tau for j in range(n)])
        total = total - (sims_ab[i] - torch.logsumexp(sims_ab, 0)) - (sims_ba[i] - torch.logsumexp(sims_ba, 0))
    return total / (2 * n)


def test_info_nce_by_hand():
    g = torch.Generator().manual_seed(0)
    a, b = F.normalize(torch.randn(5, 3, generator=g), dim=1), F.normalize(torch.randn(5, 3, generator=g), dim=1)
    assert torch.allclose(info_nce(a, b, 0.1), _hand_info_nce(a, b, 0.1), atol=1e-5)
    assert not torch.allclose(info_nce(a, b, 0.1), _hand_info_nce(a, b, 1.0), atol=1e-3)  # the temperature matters


def test_masked_patch_loss_counts_removed_patches_only():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [3.0, 1.0]]])
    target = torch.zeros(1, 3, 2)
    removed = torch.tensor([[True, False, True]])
    # patch 0: (1 + 1)/2 = 1; patch 2: (9 + 1)/2 = 5; mean over the 2 removed patches = 3 (patch 1 not counted)
    assert masked_patch_loss(pred, target, removed).item() == pytest.approx(3.0)
    pred[0, 1] = 100.0  # a kept patch changes nothing
    assert masked_patch_loss(pred, target, removed).item() == pytest.approx(3.0)


def test_3d_positions_match_the_official_formula():
    """get_3d_sincos_pos_embed (av-superb util/pos_embed.py) written out in numpy: [temporal D/4 | spatial 2-D 3D/4]."""
    dim, (n, h, w) = 32, (2, 3, 3)

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(w), np.arange(h))  # w first, as MAE
    spatial = np.concatenate([one_d(dim // 4 * 3 // 2, gw), one_d(dim // 4 * 3 // 2, gh)], axis=1)
    temporal = one_d(dim // 4, np.arange(n))
    reference = np.concatenate([np.repeat(temporal[:, None], h * w, 1), np.repeat(spatial[None], n, 0)], axis=-1).reshape(-1, dim)
    assert np.allclose(sincos_pos_embed_3d(dim, (n, h, w)).numpy(), reference, atol=1e-6)


@pytest.mark.parametrize("m", ["a", "v"])
def test_masking_keeps_exactly_the_kept_patches(m: str):
    module = _module()
    net = module.net.eval()
    audio, video = _inputs()
    mask_a, mask_v = net.draw_masks(4, 0.75, 0.75, torch.Generator().manual_seed(3))
    mask, x = (mask_a, audio) if m == "a" else (mask_v, video)
    tokens = net._tokens(x, m, mask)
    full = net._tokens(x, m, None)
    assert tokens.shape[1] == 1 + mask.ids_keep.shape[1] == 1 + mask.keep.sum(1)[0]
    assert torch.equal(tokens, torch.cat([full[:, :1], torch.gather(full[:, 1:], 1, mask.ids_keep[..., None].expand(-1, -1, full.shape[-1]))], 1))
    # changing a removed patch's pixels leaves the encoder output unchanged; changing a kept one does not
    patches = net.patches(x, m)
    removed_id, kept_id = int(mask.drop[0].nonzero()[0]), int(mask.keep[0].nonzero()[0])
    out = net.encode_modality(x, m, mask)
    for pid, same in ((removed_id, True), (kept_id, False)):
        edited = x.clone()
        if m == "a":
            gw = x.shape[-1] // net.audio_patch
            r, c = divmod(pid, gw)
            p = net.audio_patch
            edited[0, :, r * p : (r + 1) * p, c * p : (c + 1) * p] += 5.0
        else:
            t, p, _ = net.tubelet
            n, h, w = net.patch_embed_v.grid_size
            ti, rest = divmod(pid, h * w)
            r, c = divmod(rest, w)
            edited[0, ti * t : (ti + 1) * t, :, r * p : (r + 1) * p, c * p : (c + 1) * p] += 5.0
        assert (net.patches(edited, m) != patches).any(dim=-1)[0].nonzero().flatten().tolist() == [pid]
        assert torch.allclose(net.encode_modality(edited, m, mask), out) is same


def test_losses_equal_a_hand_recomputation_with_the_same_masks():
    module = _module(inter_weight=0.3, intra_weight=0.7, inter_temperature=0.2, intra_temperature=0.5, norm_pix_loss=True)
    net = module.net.eval()
    audio, video = _inputs()
    got = module.losses(audio, video, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    mask_a, mask_v = net.draw_masks(4, 0.8, 0.9, g)
    mask_a2, mask_v2 = net.draw_masks(4, 0.8, 0.9, g)
    h_a, h_v = net.encode_modality(audio, "a", mask_a), net.encode_modality(video, "v", mask_v)
    f = torch.cat([h_a, h_v], 1)
    for block in net.blocks_av:
        f = block(f)
    f_a = net.norm(f[:, : h_a.shape[1]])
    pred_a = net.decoder_pred_a(net.decode(f_a, mask_a, "a"))
    target_a = net.patches(audio, "a")
    target_a = (target_a - target_a.mean(-1, keepdim=True)) / (target_a.var(-1, keepdim=True) + 1e-6).sqrt()
    rec_a = ((pred_a - target_a) ** 2).mean(-1)[mask_a.drop].mean()
    assert got["rec_audio"].item() == pytest.approx(rec_a.item(), rel=1e-5)
    z = {}
    for name, h, m in (("a", h_a, "a"), ("v", h_v, "v")):
        z[name] = F.normalize((net.proj_a if m == "a" else net.proj_v)((net.fc_norm_a if m == "a" else net.fc_norm_v)(h[:, 1:].mean(1))), dim=1)
    z["a2"] = net.project(net.pooled(net.encode_modality(audio, "a", mask_a2), "a"), "a")
    z["v2"] = net.project(net.pooled(net.encode_modality(video, "v", mask_v2), "v"), "v")
    inter = _hand_info_nce(z["a"], z["v"], 0.2)
    intra = (_hand_info_nce(z["a"], z["a2"], 0.5) + _hand_info_nce(z["v"], z["v2"], 0.5)) / 2
    assert got["inter"].item() == pytest.approx(inter.item(), rel=1e-5)
    assert got["intra"].item() == pytest.approx(intra.item(), rel=1e-5)
    total = got["rec_audio"] + got["rec_video"] + 0.3 * inter + 0.7 * intra
    assert got["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    off = _module(inter_weight=0.0, intra_weight=0.0).losses(audio, video, torch.Generator().manual_seed(5))
    assert off["inter"].item() == off["intra"].item() == 0.0


def test_probe_features_follow_the_released_pooling():
    module = _module()
    module.eval()
    audio, video = _inputs()
    states = module.forward_hidden_states({"audio": audio, "video": video})
    assert [tuple(s.shape) for s in states["audio"]] == [(4, 16, 32)] * 2 and [tuple(s.shape) for s in states["video"]] == [(4, 32, 32)] * 2
    assert [tuple(s.shape) for s in states["fusion"]] == [(4, 64)] * 2
    net = module.net
    # the fusion's first state is the mean of the encoders' last outputs (class tokens dropped)
    assert torch.allclose(states["fusion"][0], torch.cat([states["audio"][-1].mean(1), states["video"][-1].mean(1)], -1), atol=1e-6)
    assert torch.allclose(module.forward_features({"audio": audio, "video": video}), net.fc_norm_av(states["fusion"][-1]), atol=1e-5)
    assert torch.allclose(module.forward_features(audio), net.fc_norm_a(states["audio"][-1].mean(1)), atol=1e-5)
    assert torch.allclose(module.forward_features(video), net.fc_norm_v(states["video"][-1].mean(1)), atol=1e-5)


# --------------------------------------------------------------------------------- stage 2

def test_stage2_targets_come_from_the_frozen_teacher_on_unmasked_inputs():
    stage1 = _module()
    student = MAViL(stage=2, **SIZES)
    student.load_teacher(stage1.state_dict())  # net.* keys of a stage-1 module
    assert all(not p.requires_grad for p in student.teacher.parameters())
    audio, video = _inputs()
    t_a, t_v = student.teacher_targets(audio, video)
    ref = stage1.net.eval().encode(audio, video)  # no masks: every token
    assert t_a.shape == (4, 16, 32) and t_v.shape == (4, 32, 32)
    assert torch.allclose(t_a, F.layer_norm(ref.audio[:, 1:], (32,)), atol=1e-5)
    assert torch.allclose(t_v, F.layer_norm(ref.video[:, 1:], (32,)), atol=1e-5)
    got = student.losses(audio, video, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    mask_a, mask_v = student.net.draw_masks(4, 0.8, 0.9, g)
    pred_a, _ = student.predict_masked(student.net.encode(audio, video, mask_a, mask_v))
    assert got["rec_audio"].item() == pytest.approx(masked_patch_loss(pred_a, t_a, mask_a.drop).item(), rel=1e-5)


def _loader(batches: int = 2) -> DataLoader:
    """Ready-made dict batches (``batch_size=None``: the loader yields them as they are)."""
    return DataLoader([dict(zip(("audio", "video"), _inputs(4, seed), strict=True)) for seed in range(batches)], batch_size=None)


def test_stage2_fit_keeps_the_teacher_frozen_and_copies_own_weights_once(tmp_path):
    student = MAViL(stage=2, **SIZES)
    torch.manual_seed(0)
    own = {k: v.clone() for k, v in student.net.state_dict().items()}
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(student, _loader())
    teacher = student.teacher.state_dict()
    assert all(torch.equal(teacher[k], own[k]) for k in own)  # the copy of the start, unchanged by 4 steps
    assert any(not torch.equal(student.net.state_dict()[k], own[k]) for k in own)  # the student moved
    assert not student.teacher.training and bool(student.teacher_ready)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in student.teacher.parameters()}
    # a second fit (as after a resume) does not overwrite the teacher with the moved student
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(student, _loader(1))  # fmt: skip
    assert all(torch.equal(student.teacher.state_dict()[k], own[k]) for k in own)


def test_teacher_checkpoint_round_trip_and_bad_files(tmp_path):
    stage1 = _module()
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": stage1.state_dict()}, path)
    student = MAViL(stage=2, teacher_checkpoint=str(path), **SIZES)
    assert all(torch.equal(student.teacher.state_dict()[k], v) for k, v in stage1.net.state_dict().items())
    with pytest.raises(LitzooError, match="does not exist"):
        MAViL(stage=2, teacher_checkpoint=str(tmp_path / "missing.ckpt"), **SIZES)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(LitzooError, match="junk.ckpt"):
        MAViL(stage=2, teacher_checkpoint=str(tmp_path / "junk.ckpt"), **SIZES)
    other = MAViL(**{**SIZES, "dim": 48})
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.ckpt")
    with pytest.raises(LitzooError, match="do not fit"):
        MAViL(stage=2, teacher_checkpoint=str(tmp_path / "other.ckpt"), **SIZES)


@pytest.mark.parametrize("kwargs", [dict(stage=3), dict(mask_ratio_audio=1.0), dict(inter_weight=-1.0), dict(intra_temperature=0.0),
                                    dict(teacher_checkpoint="x.ckpt"), dict(depht=2), dict(contrast_mask_ratio_audio=1.0),
                                    dict(contrast_mask_ratio_video=-0.1), dict(pretraining=False)])  # fmt: skip
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        MAViL(**{**SIZES, **kwargs})


def test_tiny_stage1_fit_lowers_the_loss(tmp_path):
    module = _module()
    batches = _loader(2)
    before = sum(module.losses(b["audio"], b["video"], torch.Generator().manual_seed(0))["loss"].item() for b in batches)
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, batches)
    after = sum(module.losses(b["audio"], b["video"], torch.Generator().manual_seed(0))["loss"].item() for b in batches)
    assert math.isfinite(after) and after < 0.9 * before


# --------------------------------------------------------------------------------- DDP: gathered negatives

RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from litzoo.modules.mavil import info_nce

rank, world_size, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
setup = torch.load(f"{out}/setup.pt", weights_only=True)
rows = slice(rank * 3, (rank + 1) * 3)
w = setup["w"].clone().requires_grad_()
a = F.normalize(setup["a"][rows] @ w, dim=1)
b = F.normalize(setup["b"][rows], dim=1)
loss = info_nce(a, b, 0.1)
loss.backward()
grad = w.grad.clone()
dist.all_reduce(grad)
torch.save({"loss": loss.detach(), "grad": grad / world_size}, f"{out}/rank{rank}.pt")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_gathered_info_nce_under_two_ranks_equals_the_full_batch(tmp_path):
    g = torch.Generator().manual_seed(0)
    setup = {"a": torch.randn(6, 4, generator=g, dtype=torch.float64), "b": torch.randn(6, 4, generator=g, dtype=torch.float64),
             "w": torch.randn(4, 4, generator=g, dtype=torch.float64)}  # fmt: skip
    torch.save(setup, tmp_path / "setup.pt")
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    run_ranks(script, 2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    w = setup["w"].clone().requires_grad_()
    full = info_nce(F.normalize(setup["a"] @ w, dim=1), F.normalize(setup["b"], dim=1), 0.1)
    full.backward()
    assert abs((ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 - full.item()) < 1e-12
    assert (ranks[0]["grad"] - w.grad).abs().max() < 1e-10 and w.grad.abs().max() > 1e-3
    # negative control: each rank alone (no gathering) is a different objective
    local = info_nce(F.normalize(setup["a"][:3] @ setup["w"], dim=1), F.normalize(setup["b"][:3], dim=1), 0.1)
    assert abs(local.item() - ranks[0]["loss"].item()) > 1e-6


def test_token_layout_follows_the_released_model():
    """Patch i gets position row 1 + i of the fixed table (row 0, all zeros, is the class token's), as ``forward_features_av``."""
    from litzoo.framework.nn.pos_embed import sincos_pos_embed_2d

    net = _module().net
    audio, video = _inputs()
    tokens = net._tokens(audio, "a", None)
    assert torch.allclose(tokens[:, 1:], net.patch_embed(audio) + sincos_pos_embed_2d(32, (4, 4)), atol=1e-6)
    assert torch.allclose(tokens[:, 0], net.cls_token[0].expand(4, -1))
    tokens_v = net._tokens(video, "v", None)
    assert torch.allclose(tokens_v[:, 1:], net.patch_embed_v(video) + sincos_pos_embed_3d(32, (2, 4, 4)), atol=1e-6)


# --------------------------------------------------------------------------------- diagnostic contrast masks

def test_contrast_masks_change_only_the_inter_term():
    """With contrast_mask_ratio_*: reconstruction and intra terms equal the default's (same generator), the inter term is
    InfoNCE of the projected pooled encodings of the unmasked (ratio 0) / freshly masked (drawn after the others) views."""
    audio, video = _inputs()
    base = _module().eval().losses(audio, video, torch.Generator().manual_seed(5))
    module = _module(contrast_mask_ratio_audio=0.0, contrast_mask_ratio_video=0.5).eval()
    got = module.losses(audio, video, torch.Generator().manual_seed(5))
    for key in ("rec_audio", "rec_video", "intra"):
        assert got[key].item() == pytest.approx(base[key].item(), rel=1e-6)
    net = module.net
    g = torch.Generator().manual_seed(5)
    net.draw_masks(4, 0.8, 0.9, g)  # reconstruction masks
    net.draw_masks(4, 0.8, 0.9, g)  # intra view 2
    noise = torch.rand(4, 32, generator=g)
    keep = noise.argsort(dim=1)[:, :16]  # MAE's random_masking: the 16 smallest noises stay
    h_v = net._tokens(video, "v", None)
    h_v = torch.cat([h_v[:, :1], torch.gather(h_v[:, 1:], 1, keep[..., None].expand(-1, -1, 32))], 1)
    for block in net.blocks_v:
        h_v = block(h_v)
    z_v = F.normalize(net.proj_v(net.fc_norm_v(h_v[:, 1:].mean(1))), dim=1)
    z_a = F.normalize(net.proj_a(net.fc_norm_a(net.encode_modality(audio, "a")[:, 1:].mean(1))), dim=1)
    assert got["inter"].item() == pytest.approx(_hand_info_nce(z_a, z_v, 0.1).item(), rel=1e-5)
    assert abs(got["inter"].item() - base["inter"].item()) > 1e-4  # not the default's masked views
    total = got["rec_audio"] + got["rec_video"] + 0.1 * got["inter"] + 0.1 * got["intra"]
    assert got["loss"].item() == pytest.approx(total.item(), rel=1e-6)


# --------------------------------------------------------------------------------- fine-tuning

def _classifier(mode: str = "av", **kwargs) -> MAViLClassifier:
    torch.manual_seed(3)
    return MAViLClassifier(mode=mode, **{"num_classes": 3, **SIZES, **kwargs})


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (LayerNorm gains and biases included), so a hand computation sees them all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _encoder_by_hand(net, x: torch.Tensor, m: str) -> torch.Tensor:
    """``(B, 1 + N, D)``: patches + fixed positions, class token (+ its position) in front, every block; nothing removed."""
    if m == "a":
        patches = F.conv2d(x, net.patch_embed.proj.weight, net.patch_embed.proj.bias, stride=8).flatten(2).transpose(1, 2)
        pos, cls, blocks = sincos_pos_embed_2d_ref(32, (4, 4)), net.cls_token, net.blocks
    else:
        w = net.patch_embed_v.proj
        patches = F.conv3d(x.transpose(1, 2), w.weight, w.bias, stride=(2, 8, 8)).flatten(2).transpose(1, 2)
        pos, cls, blocks = sincos_pos_embed_3d(32, (2, 4, 4)), net.cls_token_v, net.blocks_v
    h = torch.cat([cls.expand(len(x), -1, -1), patches + pos], 1)  # the class token's position row is all zeros
    for block in blocks:
        h = block(h)
    return h


def sincos_pos_embed_2d_ref(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    from litzoo.framework.nn.pos_embed import sincos_pos_embed_2d

    return sincos_pos_embed_2d(dim, grid)


def test_finetuning_heads_follow_the_released_model():
    audio, video = _inputs()
    for mode in ("audio", "video", "av"):
        module = _classifier(mode).eval()
        _randomize(module, 1)
        net = module.net
        h_a, h_v = _encoder_by_hand(net, audio, "a"), _encoder_by_hand(net, video, "v")
        if mode == "audio":
            feature = F.layer_norm(h_a[:, 1:].mean(1), (32,), net.fc_norm_a.weight, net.fc_norm_a.bias, 1e-6)
            head = module.head_a
        elif mode == "video":
            feature = F.layer_norm(h_v[:, 1:].mean(1), (32,), net.fc_norm_v.weight, net.fc_norm_v.bias, 1e-6)
            head = module.head_v
        else:
            h = torch.cat([h_a, h_v], 1)  # [cls_a, audio, cls_v, video] through the fusion block
            for block in net.blocks_av:
                h = block(h)
            pooled = torch.cat([h[:, 1:17].mean(1), h[:, 18:].mean(1)], -1)
            feature = F.layer_norm(pooled, (64,), net.fc_norm_av.weight, net.fc_norm_av.bias, 1e-6)
            head = module.head_av
            assert not hasattr(module, "head_a") and not hasattr(module, "head_v")
        assert torch.allclose(module.features(audio, video), feature, atol=1e-5), mode
        assert torch.allclose(module(audio, video), feature @ head.weight.T + head.bias, atol=1e-5), mode
        # no masking at fine-tuning: train mode gives the same logits (no dropout, no token removal)
        assert torch.allclose(module.train()(audio, video), module.eval()(audio, video), atol=1e-6)
    # the uni-modal modes read one modality only
    assert _classifier("audio")(audio, None).shape == (4, 3) and _classifier("video")(None, video).shape == (4, 3)


def test_finetuning_loads_every_encoder_weight_of_a_stage1_or_stage2_checkpoint(tmp_path):
    stage1 = _module()
    _randomize(stage1, 7)
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": stage1.state_dict()}, path)
    module = _classifier("av")
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    copied = module.load_pretrained(path)
    after, source = module.net.state_dict(), stage1.net.state_dict()
    assert sorted(copied) == sorted(after) and {k.split(".")[0] for k in after} == {
        "patch_embed", "cls_token", "blocks", "patch_embed_v", "cls_token_v", "blocks_v", "blocks_av", "fc_norm_a", "fc_norm_v", "fc_norm_av"}
    for key in after:
        assert torch.equal(after[key], source[key]) and not torch.equal(after[key], before[key]), key  # every encoder weight moved
    # through the constructor (the config's pretrained path) and from a stage-2 file (net.* read, teacher.* ignored)
    student = MAViL(stage=2, **SIZES)
    student.load_teacher(stage1.net)
    _randomize(student.net, 9)
    torch.save({"state_dict": student.state_dict()}, tmp_path / "stage2.ckpt")
    loaded = _classifier("video", pretrained=str(tmp_path / "stage2.ckpt")).net.state_dict()
    assert all(torch.equal(loaded[k], student.net.state_dict()[k]) for k in loaded)
    assert not torch.equal(loaded["blocks.0.attn.qkv.weight"], source["blocks.0.attn.qkv.weight"])


def test_finetuning_refuses_foreign_files_in_one_line(tmp_path):
    module = _classifier("av")
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(3, 3)}}, tmp_path / "foreign.ckpt")
    other = MAViL(**{**SIZES, "dim": 48})
    torch.save({"state_dict": other.state_dict()}, tmp_path / "wide.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    cases = (("foreign.ckpt", "48 missing encoder keys (cls_token, cls_token_v"), ("wide.ckpt", "48 mismatched shapes (cls_token (1, 1, 48) vs (1, 1, 32)"),
             ("junk.ckpt", "not a torch checkpoint"), ("absent.ckpt", "does not exist"))  # fmt: skip
    for name, words in cases:
        with pytest.raises(LitzooError) as info:
            module.load_pretrained(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and name in message and words in message, message


def test_finetuning_training_step_trains_the_mode_parts_only():
    audio, video = _inputs()
    label = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    for mode, trained in (("audio", {"patch_embed", "cls_token", "blocks", "fc_norm_a"}),
                          ("av", {"patch_embed", "cls_token", "blocks", "patch_embed_v", "cls_token_v", "blocks_v", "blocks_av", "fc_norm_av"})):  # fmt: skip
        module = _classifier(mode)
        _randomize(module, 2)
        loss = module.training_step({"audio": audio, "video": video, "label": label}, 0)
        logits = module(audio, video)
        hand = -(label * F.logsigmoid(logits) + (1 - label) * F.logsigmoid(-logits)).mean()
        assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
        loss.backward()
        with_grad = {n.split(".")[0] for n, p in module.net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad == trained and {n.split(".")[0] for n, p in module.net.named_parameters() if p.requires_grad} == trained
        head = module.head_a if mode == "audio" else module.head_av
        assert head.weight.grad.abs().sum() > 0
    # single-label: cross-entropy on class indices or one-hot rows; multi-hot rows refused in one line
    module = _classifier("video", multi_label=False)
    one_hot = F.one_hot(torch.tensor([2, 0, 1, 2]), 3).float()
    ce = module.training_step({"video": video, "label": one_hot}, 0)
    assert ce.item() == pytest.approx(F.cross_entropy(module(None, video), torch.tensor([2, 0, 1, 2])).item(), rel=1e-6)
    assert ce.item() == pytest.approx(module.training_step({"video": video, "label": torch.tensor([2, 0, 1, 2])}, 0).item(), rel=1e-6)
    with pytest.raises(LitzooError, match="not one-hot"):
        module.training_step({"video": video, "label": label}, 0)


def test_finetuning_fit_and_hparams_round_trip(tmp_path):
    module = _classifier("av", multi_label=False, blr=None)
    items = [{"audio": a, "video": v, "label": torch.tensor([i % 3, (i + 1) % 3, (i + 2) % 3, i % 3])}
             for i, (a, v) in enumerate(_inputs(4, seed) for seed in range(2))]  # fmt: skip
    frozen = {k: v.clone() for k, v in module.net.named_parameters() if not v.requires_grad}
    head = module.head_av.weight.detach().clone()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, DataLoader(items, batch_size=None), DataLoader(items, batch_size=None))
    assert "val/acc" in trainer.callback_metrics and module.monitor == "val/acc"
    assert all(torch.equal(p, frozen[k]) for k, p in module.net.named_parameters() if k in frozen) and frozen  # fc_norm_a/v unused
    assert not torch.equal(module.head_av.weight, head)
    path = tmp_path / "ft.ckpt"
    trainer.save_checkpoint(path)
    restored = MAViLClassifier.load_from_checkpoint(path, weights_only=True)
    assert {k: restored.hparams[k] for k in ("mode", "num_classes", "multi_label", "video_frames", "video_size", "dim")} == {
        "mode": "av", "num_classes": 3, "multi_label": False, "video_frames": 4, "video_size": 32, "dim": 32}
    audio, video = _inputs()
    assert torch.allclose(restored.eval()(audio, video), module.eval()(audio, video), atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(mode="both"), dict(num_classes=0), dict(multi_label=False, num_classes=1), dict(blr=0.0),
                                    dict(pretraining=True), dict(decoder_dpth=1)])  # fmt: skip
def test_finetuning_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        MAViLClassifier(**{"num_classes": 3, **SIZES, **kwargs})
