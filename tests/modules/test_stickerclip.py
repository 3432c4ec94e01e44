"""StickerCLIP's metric in CLIPModule (modules/clip.py): text→image mean recall against a hand computation, logged next
to every existing recall; non-finite embeddings refused; fine-tuning a checkpoint on the stickers with its tokenizer."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from litzoo.datamodules.stickers import StickersDataModule
from litzoo.framework.errors import LitzooError
from litzoo.modules.clip import CLIPModule, text_to_image_mean_recall

TINY = dict(vocab_size=64, embed_dim=8, image_size=24, patch_size=8, in_chans=3, vision_width=16, vision_depth=1, vision_heads=2,
            context_length=16, text_width=16, text_depth=1, text_heads=2)  # fmt: skip
#: rank of its own image among the 12 images, for each of the 12 texts
RANKS = [1, 1, 1, 2, 3, 5, 6, 7, 10, 11, 12, 4]


class GivenFeatures(CLIPModule):
    """A CLIPModule whose "towers" return the batch's features as they are, so the evaluation sees known similarities."""

    def forward(self, images, tokens):
        return images, tokens, torch.tensor(10.0)


def _pairs(ranks: list[int]) -> list[dict]:
    """Images = the unit vectors; text i scores image j by a permutation of 12 > 11 > … that puts image i at rank ranks[i]."""
    n = len(ranks)
    items = []
    for i, rank in enumerate(ranks):
        others = [j for j in range(n) if j != i]
        order = others[: rank - 1] + [i] + others[rank - 1 :]  # images from best to worst for text i
        text = torch.zeros(n)
        text[order] = torch.arange(n, 0, -1, dtype=torch.float32)
        items.append({"image": torch.eye(n)[i], "tokens": text, "index": torch.tensor(i)})
    return items


def _evaluate(stage: str, ranks: list[int] = RANKS) -> dict[str, float]:
    module = GivenFeatures(**TINY, num_retrieval_examples=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(_pairs(ranks), batch_size=5)  # three batches, the last one short
    (metrics,) = (trainer.test if stage == "test" else trainer.validate)(module, dataloaders=loader, verbose=False)
    return metrics


def test_mean_recall_function_by_hand():
    recalls = {"text_to_image_R@1": 0.25, "text_to_image_R@5": 7 / 12, "text_to_image_R@10": 10 / 12, "image_to_text_R@1": 1.0}
    assert text_to_image_mean_recall(recalls, [1, 5, 10]) == pytest.approx((3 + 7 + 10) / 36)
    assert text_to_image_mean_recall(recalls, [1]) == 0.25  # the image→text recalls play no part
    with pytest.raises(LitzooError, match="not finite"):
        text_to_image_mean_recall({**recalls, "text_to_image_R@5": float("nan")}, [1, 5, 10])


@pytest.mark.parametrize("stage", ["test", "val"])
def test_evaluation_logs_the_mean_recall_of_a_hand_computation(stage):
    metrics = _evaluate(stage)
    # by hand from RANKS: 3 texts find their image first, 7 within 5, 10 within 10
    assert metrics[f"{stage}/text_to_image_R@1"] == pytest.approx(3 / 12)
    assert metrics[f"{stage}/text_to_image_R@5"] == pytest.approx(7 / 12)
    assert metrics[f"{stage}/text_to_image_R@10"] == pytest.approx(10 / 12)
    assert metrics[f"{stage}/text_to_image_mean_recall"] == pytest.approx(20 / 36, abs=1e-6)
    # every key logged before is still logged
    for key in ("loss", "image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10"):
        assert f"{stage}/{key}" in metrics


def test_mean_recall_moves_with_the_ranks():
    """Negative control: demoting two texts' own image from rank 1 to rank 6 lowers R@1 and R@5 by 2/12 each."""
    worse = _evaluate("test", [6, 6, *RANKS[2:]])
    assert worse["test/text_to_image_mean_recall"] == pytest.approx((1 + 5 + 10) / 36, abs=1e-6)


def test_non_finite_embeddings_fail_the_evaluation():
    module = GivenFeatures(**TINY, num_retrieval_examples=0)
    items = _pairs(RANKS)
    items[3]["tokens"] = torch.full((12,), float("nan"))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(LitzooError, match="CLIPModule test: the image or text embeddings are not finite"):
        trainer.test(module, dataloaders=DataLoader(items, batch_size=5), verbose=False)


def test_fine_tuning_a_checkpoint_on_the_stickers_with_its_tokenizer(tmp_path):
    """init_from a CLIP's weights + the tokenizer it was trained with: the fine-tuned model starts from those weights,
    and the test of the fitted module logs a mean recall equal to the mean of its logged R@1/5/10."""
    stickers = StickersDataModule(root=str(tmp_path / "stickers"), counts=(24, 8, 16), vocab_size=64, context_length=16, batch_size=8)
    tokenizer = tmp_path / "tokenizer.json"
    stickers.tokenizer.save(tokenizer)
    torch.manual_seed(1)
    pretrained = CLIPModule(**TINY)
    torch.save(pretrained.model.state_dict(), tmp_path / "clip.pt")
    data = StickersDataModule(root=str(tmp_path / "stickers"), counts=(24, 8, 16), tokenizer_path=str(tokenizer), vocab_size=64,
                              context_length=16, batch_size=8)  # fmt: skip
    assert data.dataset("test").tokens.equal(stickers.dataset("test").tokens)
    torch.manual_seed(2)
    module = CLIPModule(**TINY, init_from=str(tmp_path / "clip.pt"), warmup_steps=1, num_retrieval_examples=0)
    for name, value in pretrained.model.state_dict().items():
        assert torch.equal(module.model.state_dict()[name], value), name
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=2, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, data)
    assert not torch.equal(module.model.text_projection.weight, pretrained.model.text_projection.weight)
    (metrics,) = trainer.test(module, data, verbose=False)
    recalls = [metrics[f"test/text_to_image_R@{k}"] for k in (1, 5, 10)]
    assert metrics["test/text_to_image_mean_recall"] == pytest.approx(sum(recalls) / 3, abs=1e-6)
    assert 0 <= metrics["test/zero_shot_acc"] <= 1  # the digit words are the stickers' class names
