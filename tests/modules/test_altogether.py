"""Altogether (modules/altogether.py, datamodules/recaption.py, litzoo recaption): the prompt / label layout, the 50/50
prompt dropout, the pretraining stage (longest alt-text as target, init of the fine-tuning from it), the mapper, the frozen encoder, the masked loss against a hand computation, decoding, the SYNTHETIC
triples and the re-captioning command."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from litzoo.cli import main
from litzoo.datamodules.recaption import (
    AltTextPoolDataset,
    RecaptionDataModule,
    caption_attributes,
    digits_alt_text_pool_splits,
    digits_recaption_splits,
    longest_and_other,
    read_alt_text_pool,
    read_triples,
    train_caption_tokenizer,
)
from litzoo.framework.errors import LitzooError
from litzoo.framework.optim import split_weight_decay
from litzoo.modules.altogether import (
    IGNORE_INDEX,
    Altogether,
    AltogetherCaptioner,
    FrozenImageEncoder,
    TransformerMapper,
    adamw_altogether,
    beam_search,
    drop_prompts,
    frozen_clip,
    layout,
    left_pad,
    load_captioner,
)
from litzoo.modules.clip import CLIP, CLIPModule

CLIP_KWARGS = {"vocab_size": 64, "embed_dim": 16, "image_size": 8, "patch_size": 4, "in_chans": 1, "vision_width": 16, "vision_depth": 1,
               "vision_heads": 2, "context_length": 8, "text_width": 16, "text_depth": 1, "text_heads": 2}  # fmt: skip
NET_KWARGS = {"vocab_size": 64, "prefix_length": 3, "clip_length": 2, "mapper_depth": 1, "mapper_heads": 2, "rewrite_prompt": 6, "max_seq_len": 14,
              "dim": 16, "depth": 1, "num_heads": 2}  # fmt: skip


def tiny_captioner(**overrides) -> AltogetherCaptioner:
    torch.manual_seed(0)
    return AltogetherCaptioner(**{"clip_kwargs": CLIP_KWARGS, **NET_KWARGS, **overrides})


# ------------------------------------------------------------------------------------ layout and masking


def test_layout_of_a_hand_built_example():
    tokens, labels = layout([7, 8], [10, 11, 12], rewrite_prompt=4, max_seq_len=9, pad_id=0, eos_id=3)
    assert tokens == [0, 0, 7, 8, 10, 11, 12, 3, 0]  # [left-padded prompt][caption][eos][right padding]
    assert labels == [IGNORE_INDEX] * 4 + [10, 11, 12, 3] + [IGNORE_INDEX]
    # the empty prompt is all padding, the caption still starts at rewrite_prompt
    tokens, labels = layout([], [10], rewrite_prompt=3, max_seq_len=6, pad_id=0, eos_id=3)
    assert tokens == [0, 0, 0, 10, 3, 0] and labels == [IGNORE_INDEX] * 3 + [10, 3, IGNORE_INDEX]


def test_left_padding_truncation_and_a_text_that_fills_max_seq_len():
    assert left_pad([5], 3, pad_id=0) == [0, 0, 5]
    assert left_pad([1, 2, 3, 4, 5, 6], 4, pad_id=0) == [1, 2, 3, 4]  # the official keeps the first rewrite_prompt tokens
    assert left_pad([], 2, pad_id=9) == [9, 9]
    # a caption longer than max_seq_len - rewrite_prompt is cut, and its eos with it (official)
    tokens, labels = layout([7], [10, 11, 12, 13], rewrite_prompt=2, max_seq_len=5, pad_id=0, eos_id=3)
    assert tokens == [0, 7, 10, 11, 12] and labels == [IGNORE_INDEX, IGNORE_INDEX, 10, 11, 12]
    # exactly full: the official's mask[:-0] would drop this caption's loss; here every caption token is labelled
    tokens, labels = layout([7], [10, 11], rewrite_prompt=2, max_seq_len=5, pad_id=0, eos_id=3)
    assert tokens == [0, 7, 10, 11, 3] and labels[2:] == [10, 11, 3]


def test_module_labels_ignore_exactly_prefix_prompt_and_padding():
    module = tiny_captioner()
    module.set_tokenizer(train_caption_tokenizer(["a thick seven", "my kid wrote a seven today", "a thin one"], vocab_size=64))
    prompt, caption = "my kid wrote a seven today", "a thick seven"
    tokens, labels = module.sequences([prompt, ""], [caption, "a thin one"])
    ids = lambda text: module.tokenizer.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    rewrite, prefix = module.net.rewrite_prompt, module.net.prefix_length
    cap = ids(caption)
    assert tokens[0, :rewrite].tolist() == left_pad(ids(prompt), rewrite, 0)
    assert tokens[1, :rewrite].tolist() == [0] * rewrite  # the empty prompt
    full = torch.cat((torch.full((2, prefix), IGNORE_INDEX), labels), dim=1)
    labelled = (full[0] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert labelled == list(range(prefix + rewrite, prefix + rewrite + len(cap) + 1))  # caption + eos, nothing else
    assert full[0, labelled].tolist() == [*cap, 3]
    # the batch is cut after its last labelled column: the longer caption's eos is the last column
    longest = max(len(cap), len(ids("a thin one"))) + 1
    assert tokens.shape[1] == rewrite + longest


def test_prompt_dropout_is_one_half_and_draws_from_the_global_generator():
    alts = [f"alt {i}" for i in range(20000)]
    torch.manual_seed(123)
    prompts = drop_prompts(alts)
    empty = np.array([p == "" for p in prompts])
    assert abs(empty.mean() - 0.5) < 3 * math.sqrt(0.25 / len(alts))  # within 3 sigma of 1/2
    assert all(p in ("", a) for p, a in zip(prompts, alts, strict=True))
    torch.manual_seed(123)
    assert (empty == (torch.rand(len(alts)) < 0.5).numpy()).all()  # reproducible from the seed (exact resume)
    assert drop_prompts(alts[:50], probability=0.0) == alts[:50]
    assert drop_prompts(alts[:50], probability=1.0) == [""] * 50


# ------------------------------------------------------------------------------------ the model


def test_mapper_shapes_and_layout_against_a_manual_pass():
    torch.manual_seed(0)
    mapper = TransformerMapper(dim_clip=12, dim_embedding=16, prefix_length=5, clip_length=3, num_layers=2, num_heads=4).eval()
    x = torch.randn(4, 12)
    out = mapper(x)
    assert out.shape == (4, 5, 16)
    tokens = torch.cat((mapper.linear(x).view(4, 3, 16), mapper.prefix_const.expand(4, -1, -1)), dim=1)  # image tokens first
    for block in mapper.transformer:
        tokens = block(tokens)
    torch.testing.assert_close(out, tokens[:, 3:])  # the outputs at the learned prefix positions
    assert mapper.transformer[0].attn.qkv.bias is None and isinstance(mapper.transformer[0].mlp.fc1, torch.nn.Linear)
    assert not torch.allclose(mapper(x[:1]), mapper(x[1:2]))  # the prefix depends on the image
    with pytest.raises(ValueError, match=r"\(B, 12\)"):
        mapper(torch.randn(2, 13))


def test_frozen_encoder_gets_no_gradient_and_stays_bit_identical(tmp_path):
    torch.manual_seed(1)
    clip_module = CLIPModule(**CLIP_KWARGS)
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(clip_module)
    path = tmp_path / "clip.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    module = AltogetherCaptioner(clip_checkpoint=str(path), **NET_KWARGS)  # the architecture is read from the checkpoint
    assert module.hparams.clip_kwargs["vision_width"] == 16
    images = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(module.net.image_encoder(images), clip_module.model.encode_image(images))  # the checkpoint's weights
    before = {k: v.clone() for k, v in module.net.image_encoder.state_dict().items()}
    trained_before = module.net.clip_project.linear.weight.clone()
    optimizer = adamw_altogether(split_weight_decay(module, module.no_weight_decay()), lr=1e-2)
    assert all(not p.requires_grad for p in module.net.image_encoder.parameters())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]}.isdisjoint(id(p) for p in module.net.image_encoder.parameters())
    module.train()
    tokens = torch.randint(4, 64, (3, 10))
    labels = tokens.clone()
    labels[:, :6] = IGNORE_INDEX
    for _ in range(3):
        loss = module.net.loss(images, tokens, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not module.net.image_encoder.training  # eval mode whatever train() says
    assert all(p.grad is None for p in module.net.image_encoder.parameters())
    after = module.net.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(trained_before, module.net.clip_project.linear.weight)  # negative control: the mapper trains


def test_loss_equals_a_hand_computed_masked_cross_entropy():
    torch.manual_seed(0)
    encoder = FrozenImageEncoder(CLIP(**CLIP_KWARGS))
    net = Altogether(encoder, encoder.out_dim, **NET_KWARGS).eval()
    rows = [layout([9, 10, 11], [20, 21, 22, 23], 6, 14, 0, 3), layout([], [30, 31], 6, 14, 0, 3)]
    tokens = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        loss = net.loss(images, tokens, labels)
        logits = net(images, tokens)  # (2, P + 14, V)
    prefix, terms, prompt_terms = net.prefix_length, [], []
    for b in range(2):
        for j in range(tokens.shape[1]):
            nll = -logits[b, prefix + j - 1].log_softmax(-1)[tokens[b, j]]  # the logit before a token predicts it
            (terms if labels[b, j] != IGNORE_INDEX else prompt_terms).append(nll)
    assert len(terms) == 5 + 3  # caption + eos of each text
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert not torch.allclose(loss, torch.stack(terms + prompt_terms).mean())  # a loss on the prompt too would differ


def _planted_lm(net: Altogether, stop_after: int) -> None:
    """The LM's logits replaced by a function of the length: tokens 10, 11, ..., eos after ``stop_after`` tokens, then
    more tokens (which a decoder that does not stop at eos would return)."""
    start = net.prefix_length + net.rewrite_prompt

    def forward_embeddings(x: torch.Tensor) -> torch.Tensor:
        step = x.shape[1] - start
        logits = torch.zeros(x.shape[0], x.shape[1], net.gpt.token_embedding.num_embeddings)
        logits[:, -1, net.eos_token_id if step == stop_after else 10 + step] = 5.0
        return logits

    net.gpt.forward_embeddings = forward_embeddings


def test_decoding_stops_at_eos():
    module = tiny_captioner()
    net = module.net.eval()
    prompts = torch.zeros(2, net.rewrite_prompt, dtype=torch.long)
    images = torch.randn(2, 1, 8, 8)
    _planted_lm(net, stop_after=3)
    assert net.generate(images, prompts) == [[10, 11, 12], [10, 11, 12]]  # greedy: stops at eos, which is not returned
    assert net.generate(images, prompts, beam_size=3) == [[10, 11, 12], [10, 11, 12]]
    assert net.generate(images, prompts, max_new_tokens=2) == [[10, 11], [10, 11]]  # no eos within the budget
    _planted_lm(net, stop_after=0)
    assert net.generate(images, prompts) == [[], []]


def test_beam_search_against_brute_force_and_greedy():
    # a planted 2-token LM over {eos=0, 1, 2}: greedy takes 1 (p 0.5) but the best sentence starts with 2
    table = {(): [0.05, 0.5, 0.45], (1,): [0.4, 0.3, 0.3], (2,): [0.9, 0.05, 0.05]}

    def next_logprobs(sequences):
        return torch.tensor([table.get(tuple(s), [1.0, 0.0, 0.0]) for s in sequences]).clamp_min(1e-12).log()

    def score(sequence):  # with its eos, normalised by its length (length_penalty 1)
        probs = [table.get(tuple(sequence[:i]), [1.0, 0, 0])[t] for i, t in enumerate([*sequence, 0])]
        return sum(math.log(max(p, 1e-12)) for p in probs) / (len(sequence) + 1)

    candidates = [[], [1], [2], [1, 1], [1, 2], [2, 1], [2, 2]]
    best = max(candidates, key=score)
    assert best == [2]
    assert beam_search(next_logprobs, beam_size=6, max_new_tokens=3, eos_id=0) == best
    assert beam_search(next_logprobs, beam_size=1, max_new_tokens=3, eos_id=0)[0] == 1  # greedy's first choice


def test_captioner_rebuilds_from_its_checkpoint_alone(tmp_path):
    module = tiny_captioner()
    module.set_tokenizer(train_caption_tokenizer(["a thick seven", "a thin one"], vocab_size=64))
    module.preprocess = {"image_size": 8, "channels": 1, "mean": [0.5], "std": [0.5]}
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    path = tmp_path / "captioner.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    again = load_captioner(str(path))
    images = torch.randn(2, 1, 8, 8)
    assert again.caption(images, ["a thick seven", ""]) == module.eval().caption(images, ["a thick seven", ""])
    assert again.preprocess == module.preprocess and again.tokenizer.vocab_size == module.tokenizer.vocab_size
    with pytest.raises(LitzooError, match="clip.ckpt"):
        torch.save({"weight": torch.zeros(1)}, tmp_path / "clip.ckpt")
        load_captioner(str(tmp_path / "clip.ckpt"))


def test_clip_architecture_must_be_known_and_consistent(tmp_path):
    with pytest.raises(ValueError, match="clip_checkpoint"):
        frozen_clip(None, None)
    with pytest.raises(ValueError, match="did you mean 'vision_width'"):
        frozen_clip(None, {"vision_widht": 8})
    path = tmp_path / "clip.pt"
    torch.save(CLIP(**CLIP_KWARGS).state_dict(), path)
    with pytest.raises(LitzooError, match="records no CLIP architecture"):
        frozen_clip(str(path), None)
    clip, arch = frozen_clip(str(path), CLIP_KWARGS)  # a bare state dict with its architecture
    assert arch == CLIP_KWARGS and torch.equal(clip.visual_projection.weight, torch.load(path)["visual_projection.weight"])


# ------------------------------------------------------------------------------------ data and command


def _write_pngs(folder: Path, count: int) -> list[str]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        names.append(f"images/{i}.png")
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(folder / names[-1])
    return names


def test_synthetic_triples_plant_attributes_read_off_the_image(tmp_path):
    paths = digits_recaption_splits(tmp_path, seed=0)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    pool = [json.loads(line) for line in paths["pool"].read_text().splitlines()]
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    val = read_triples(paths["val"])
    assert (len(train), len(val), len(pool), len(test)) == (539, 180, 718, 360)
    images = {row["image"] for row in train} | {row["image"].name for row in val} | {row["image"] for row in pool}
    assert not images & {row["image"] for row in test}  # the zero-shot test digits are held out
    pixels = np.stack([np.asarray(Image.open(tmp_path / row["image"]), dtype=np.float64) * 16 / 255 for row in train])
    labels = np.array([row["label"] for row in train])
    from sklearn.datasets import load_digits

    digits = load_digits()
    thick, wide = caption_attributes(digits.images, digits.target)
    index = [int(Path(row["image"]).stem) for row in train]
    assert np.allclose(pixels, digits.images[index], atol=0.04) and (labels == digits.target[index]).all()
    from litzoo.datamodules.synthetic import DIGIT_WORDS

    for row, i in zip(train, index, strict=True):  # the caption is a function of the image alone
        expected = f"a {'thick' if thick[i] else 'thin'} and {'wide' if wide[i] else 'narrow'} handwritten {DIGIT_WORDS[row['label']]}"
        assert row["caption"] == expected
    assert 0.35 < np.mean([row["kind"] == "class" for row in pool + train]) < 0.45  # 40% of alt-texts name the digit
    assert 0.45 < thick.mean() < 0.55 and 0.45 < wide.mean() < 0.55  # each attribute splits the digits in half


def test_triples_manifest_errors_name_file_and_line(tmp_path):
    names = _write_pngs(tmp_path, 2)
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"image": names[0], "alt_text": "x", "caption": "a one"}) + "\n" + json.dumps({"image": names[1], "alt_text": "y"}) + "\n")
    with pytest.raises(LitzooError, match=rf"manifest '{path}' line 2 has no string field 'caption'"):
        read_triples(path)
    path.write_text(json.dumps({"image": "images/missing.png", "alt_text": "x", "caption": "a one"}) + "\n")
    with pytest.raises(LitzooError, match=r"line 1: image '.*missing.png' does not exist"):
        read_triples(path)


def test_tokenizer_decodes_words_back():
    tokenizer = train_caption_tokenizer(["a thick and wide handwritten seven", "a thin one"], vocab_size=60)
    ids = tokenizer.tokenizer.encode("a thin and wide handwritten one", add_special_tokens=False).ids
    assert tokenizer.tokenizer.decode(ids) == "a thin and wide handwritten one"
    assert (tokenizer.pad_id, tokenizer.end_id) == (0, 3)


def _trained_captioner(tmp_path: Path) -> Path:
    names = _write_pngs(tmp_path / "triples", 8)
    rows = [{"image": n, "alt_text": f"digit {i % 3}", "caption": f"a thick {['zero', 'one', 'two'][i % 3]}"} for i, n in enumerate(names)]
    manifest = tmp_path / "triples" / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datamodule = RecaptionDataModule(train_manifest=str(manifest), image_size=8, channels=1, vocab_size=64, batch_size=4)
    module = tiny_captioner()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule)
    path = tmp_path / "captioner.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    return path


def test_recaption_command_writes_the_manifest(tmp_path, capsys):
    ckpt = _trained_captioner(tmp_path)
    names = _write_pngs(tmp_path / "pool", 5)
    pool = tmp_path / "pool" / "pool.jsonl"
    pool.write_text("".join(json.dumps({"image": n, "text": f"web text {i}", "label": i}) + "\n" for i, n in enumerate(names)))
    out = tmp_path / "out" / "recaptioned.jsonl"
    main(["recaption", "--ckpt", str(ckpt), "--manifest", str(pool), "--output", str(out), "--batch_size", "2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    captioner = load_captioner(str(ckpt))
    from litzoo.datamodules.image_folder import ImageFileDataset
    from litzoo.framework.data.transforms import Normalize

    reader = ImageFileDataset([], mode="L", image_size=8, normalize=Normalize([0.5], [0.5]))
    images = torch.stack([reader.load(tmp_path / "pool" / n) for n in names])
    expected = captioner.caption(images, [f"web text {i}" for i in range(5)])
    assert [r["altogether"] for r in rows] == expected
    assert [r["alt_text"] for r in rows] == [f"web text {i}" for i in range(5)] and [r["label"] for r in rows] == list(range(5))
    assert [r["text"] for r in rows] == [c if c.strip() else f"web text {i}" for i, c in enumerate(expected)]  # syn_ratio 1
    assert all((out.parent / r["image"]).resolve() == (tmp_path / "pool" / n).resolve() for r, n in zip(rows, names, strict=True))
    assert sorted(p.name for p in out.parent.iterdir()) == ["recaptioned.jsonl"]  # no temporary file left
    main(["recaption", "--ckpt", str(ckpt), "--manifest", str(pool), "--output", str(out), "--syn_ratio", "0"])
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == [f"web text {i}" for i in range(5)]
    assert "re-captioned 5 images" in capsys.readouterr().out


def test_recaption_bad_manifest_line_is_one_line_naming_it(tmp_path, capsys):
    ckpt = _trained_captioner(tmp_path)
    names = _write_pngs(tmp_path / "pool", 2)
    pool = tmp_path / "pool" / "pool.jsonl"
    pool.write_text(json.dumps({"image": names[0], "text": "ok"}) + "\n{not json\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as excinfo:
        main(["recaption", "--ckpt", str(ckpt), "--manifest", str(pool), "--output", str(out)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"litzoo: error: manifest '{pool}' line 2 is not JSON") and "Traceback" not in "\n".join(err)
    pool.write_text(json.dumps({"image": names[0], "text": "ok"}) + "\n" + json.dumps({"image": "images/gone.png", "text": "x"}) + "\n")
    with pytest.raises(SystemExit):
        main(["recaption", "--ckpt", str(ckpt), "--manifest", str(pool), "--output", str(out)])
    assert "line 2: image" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------------ the pretraining stage


def official_pretraining_pair(alt_texts: list[str], pick: int) -> tuple[str, str]:
    """The official ``Altogether_PT`` selection, transcribed (its ``set`` order replaced by first occurrence)."""
    alt_list = list(dict.fromkeys(alt_texts))
    max_len, max_len_idx = 0, -1
    for alt_idx, alt in enumerate(alt_list):
        if len(alt) > max_len:
            max_len, max_len_idx = len(alt), alt_idx
    if len(alt_list) == 1:
        return alt_list[max_len_idx], ""
    return alt_list[max_len_idx], [alt_list[i] for i in range(len(alt_list)) if i != max_len_idx][pick]


def test_pretraining_target_is_the_longest_alt_text_and_the_prompt_another_one():
    asked = []

    def draw(n: int, pick: int = 1) -> int:
        asked.append(n)
        return pick

    # hand-built: the duplicate "7" counts once, so the prompt is drawn among the 2 others
    assert longest_and_other(["7", "my kid wrote a seven!", "IMG_0042", "7"], draw) == ("my kid wrote a seven!", "IMG_0042")
    assert asked == [2]
    assert longest_and_other(["7", "my kid wrote a seven!", "IMG_0042"], lambda n: 0) == ("my kid wrote a seven!", "7")
    # characters, not words: 11 characters in one word beat 9 in three
    assert longest_and_other(["a b c d e", "abcdefghijk"], lambda n: 0) == ("abcdefghijk", "a b c d e")
    # a tie goes to the first (the official's strict >); the other tied one is a prompt like any other
    assert longest_and_other(["abc", "xyz", "ab"], lambda n: 0) == ("abc", "xyz")
    assert longest_and_other(["xyz", "abc", "ab"], lambda n: 0) == ("xyz", "abc")
    # one distinct alt-text: target it, empty prompt, nothing drawn
    asked.clear()
    assert longest_and_other(["only"], draw) == ("only", "") and longest_and_other(["same", "same"], draw) == ("same", "") and not asked
    # against the transcription of the official loop on random lists
    rng = np.random.default_rng(0)
    for _ in range(300):
        texts = ["".join(rng.choice(list("ab "), size=int(rng.integers(1, 6)))) for _ in range(int(rng.integers(1, 6)))]
        others = len(dict.fromkeys(texts)) - 1
        pick = int(rng.integers(max(others, 1)))
        assert longest_and_other(texts, lambda n, pick=pick: pick) == official_pretraining_pair(texts, pick)


def _pool_manifest(folder: Path, lines: list[dict]) -> Path:
    path = folder / "pool.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_pretraining_prompts_uniform_over_the_others_then_dropped_half_the_time(tmp_path):
    names = _write_pngs(tmp_path, 2)
    path = _pool_manifest(tmp_path, [{"image": names[0], "alt_texts": ["a seven", "my kid wrote a seven today", "IMG_7", "7"], "label": 7},
                                     {"image": names[1], "alt_texts": ["one"], "label": 1}])  # fmt: skip
    rows = read_alt_text_pool(path)
    from litzoo.datamodules.image_folder import ImageFileDataset

    dataset = AltTextPoolDataset([r["image"] for r in rows], [r["alt_texts"] for r in rows], ImageFileDataset([], mode="L", image_size=8))

    def draws(count: int) -> list[str]:
        prompts = []
        for _ in range(count):
            target, prompt = dataset.pair(0)
            assert target == "my kid wrote a seven today"
            prompts.append(prompt)
        return drop_prompts(prompts)  # the LightningModule's 50/50 dropout, after the draw

    torch.manual_seed(0)
    prompts = draws(6000)
    torch.manual_seed(0)
    assert draws(6000) == prompts  # the same seed, the same prompts
    assert set(prompts) == {"", "a seven", "IMG_7", "7"}  # never the target itself
    share = {text: prompts.count(text) / len(prompts) for text in set(prompts)}
    assert abs(share[""] - 0.5) < 3 * math.sqrt(0.25 / 6000)
    for text in ("a seven", "IMG_7", "7"):  # each other alt-text: 1/2 x 1/3
        assert abs(share[text] - 1 / 6) < 3 * math.sqrt(1 / 6 * 5 / 6 / 6000)
    item = dataset[1]
    assert (item["caption"], item["alt_text"], item["image"].shape) == ("one", "", (1, 8, 8))  # a single alt-text: empty prompt
    fixed = AltTextPoolDataset(dataset.images, dataset.alt_texts, dataset.reader, fixed=True)
    assert len({fixed.pair(0) for _ in range(20)}) == 1  # validation: the same prompt at every read


def test_alt_text_pool_manifest_errors_name_file_and_line(tmp_path):
    names = _write_pngs(tmp_path, 1)
    good = {"image": names[0], "alt_texts": ["a seven", "  ", "7"]}
    assert read_alt_text_pool(_pool_manifest(tmp_path, [good]))[0]["alt_texts"] == ["a seven", "7"]  # the blank one is dropped
    for bad, message in (
        ({"image": names[0], "alt_texts": "a seven"}, "'alt_texts' must be a list of alt-text strings"),
        ({"image": names[0], "alt_texts": ["a seven", 7]}, "'alt_texts' must be a list of alt-text strings"),
        ({"image": names[0]}, "'alt_texts' must be a list of alt-text strings"),
        ({"image": names[0], "alt_texts": ["", " "]}, "'alt_texts' holds no non-blank alt-text"),
        ({"image": names[0], "alt_texts": ["x"], "label": True}, '"label" must be an integer'),
        ({"image": "images/missing.png", "alt_texts": ["x"]}, "image '.*missing.png' does not exist"),
    ):
        path = _pool_manifest(tmp_path, [good, bad])
        with pytest.raises(LitzooError, match=rf"manifest '{path}' line 2.*{message}") as error:
            read_alt_text_pool(path)
        assert "\n" not in str(error.value)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(LitzooError, match="line 2"):
        read_alt_text_pool(path)


def test_synthetic_pretraining_pool_keeps_the_fine_tuning_files(tmp_path):
    paths = digits_alt_text_pool_splits(tmp_path / "pool", seed=0, max_alt_texts=3)
    alone = digits_recaption_splits(tmp_path / "alone", seed=0)
    for split in ("train", "val", "pool", "test"):  # the fine-tuning data is unchanged by the pretraining pool
        assert paths[split].read_bytes() == alone[split].read_bytes()
    pool = [json.loads(line) for line in alone["pool"].read_text().splitlines()]
    rows = [json.loads(line) for line in paths["pretrain_train"].read_text().splitlines()]
    assert [r["image"] for r in rows] == [r["image"] for r in pool] and [r["label"] for r in rows] == [r["label"] for r in pool]
    assert all(r["alt_texts"][0] == p["text"] and 1 <= len(r["alt_texts"]) == len(r["kinds"]) <= 3 for r, p in zip(rows, pool, strict=True))
    assert {len(r["alt_texts"]) for r in rows} == {1, 2, 3}
    for r in rows:  # the planted target: the longest by characters, the first of a tie
        assert r["longest"] == official_pretraining_pair(r["alt_texts"], 0)[0]
    from litzoo.datamodules.synthetic import DIGIT_WORDS

    extra = [(kind, text, r["label"]) for r in rows for kind, text in zip(r["kinds"][1:], r["alt_texts"][1:], strict=True)]
    named = [{w for w in DIGIT_WORDS if re.search(rf"\b{w}\b", text)} for _, text, _ in extra]
    assert all(words == {DIGIT_WORDS[label]} for words, (kind, _, label) in zip(named, extra, strict=True) if kind == "class")
    assert all(words and DIGIT_WORDS[label] not in words for words, (kind, _, label) in zip(named, extra, strict=True) if kind == "wrong")
    assert 0.3 < np.mean([kind == "class" for kind, _, _ in extra]) < 0.5
    assert len(read_alt_text_pool(paths["pretrain_val"])) == 180


def _saved_captioner(module: AltogetherCaptioner, path: Path) -> Path:
    trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path, weights_only=True)
    return path


def test_fine_tuning_starts_from_the_pretrained_captioner(tmp_path):
    pretrained = tiny_captioner()
    pretrained.set_tokenizer(train_caption_tokenizer(["my kid wrote a seven today", "IMG_7"], vocab_size=64))
    pretrained.preprocess = {"image_size": 8, "channels": 1, "mean": [0.5], "std": [0.5]}
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(torch.randn_like(p))  # "pretrained": away from any fresh initialisation, frozen encoder included
    path = _saved_captioner(pretrained, tmp_path / "pretrained.ckpt")
    torch.manual_seed(1)
    tuned = AltogetherCaptioner(clip_kwargs=CLIP_KWARGS, **NET_KWARGS, init_from=str(path))
    torch.manual_seed(1)
    scratch = AltogetherCaptioner(clip_kwargs=CLIP_KWARGS, **NET_KWARGS)
    expected, got, fresh = pretrained.state_dict(), tuned.state_dict(), scratch.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert not any(torch.equal(fresh[k], expected[k]) for k in expected if expected[k].numel() > 1)  # negative control
    assert tuned.tokenizer.tokenizer.to_str() == pretrained.tokenizer.tokenizer.to_str()
    # the fine-tuning DataModule's own tokenizer is not taken: the pretrained ids are kept
    other = train_caption_tokenizer(["a thick and wide handwritten seven"], vocab_size=40)
    from types import SimpleNamespace

    tuned.trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=other, input_shape=(1, 8, 8), image_size=8, channels=1, mean=[0.5], std=[0.5]))
    tuned.setup("fit")
    assert tuned.tokenizer.tokenizer.to_str() == pretrained.tokenizer.tokenizer.to_str()
    tuned.trainer = SimpleNamespace(datamodule=SimpleNamespace(tokenizer=other, input_shape=(1, 8, 8), image_size=8, channels=1, mean=[0.3], std=[0.5]))
    with pytest.raises(LitzooError, match="preprocessed as"):
        tuned.setup("fit")
    # the rebuilt captioner does not need the file it started from
    tuned.trainer = None
    path.rename(tmp_path / "moved.ckpt")
    again = load_captioner(str(_saved_captioner(tuned, tmp_path / "tuned.ckpt")))
    assert all(torch.equal(again.state_dict()[k], expected[k]) for k in expected)


def test_init_from_refuses_what_does_not_fit(tmp_path):
    pretrained = tiny_captioner()
    pretrained.set_tokenizer(train_caption_tokenizer(["a seven"], vocab_size=64))
    path = _saved_captioner(pretrained, tmp_path / "pretrained.ckpt")
    with pytest.raises(LitzooError, match="pretrained.ckpt"):
        tiny_captioner(init_from=str(path), dim=32)  # another architecture
    clip = tmp_path / "clip.pt"
    torch.save(CLIP(**CLIP_KWARGS).state_dict(), clip)  # another CLIP than the pretrained captioner's random one
    with pytest.raises(LitzooError, match="frozen image encoder other than clip_checkpoint"):
        tiny_captioner(init_from=str(path), clip_checkpoint=str(clip))
    clip_module = _saved_captioner(CLIPModule(**CLIP_KWARGS), tmp_path / "clip.ckpt")
    with pytest.raises(LitzooError, match="clip.ckpt"):
        tiny_captioner(init_from=str(clip_module))
    untokenized = _saved_captioner(tiny_captioner(), tmp_path / "untokenized.ckpt")
    with pytest.raises(LitzooError, match="holds no tokenizer"):
        tiny_captioner(init_from=str(untokenized))
