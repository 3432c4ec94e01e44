"""MAViL (issue 25, item 2): linear probes of frozen MAViL features on the SYNTHETIC audio-visual clips, 3 seeds.

Data (litzoo.datamodules.audio_video.SyntheticAudioVideoDataModule, ``bit_labels=True``, written per seed under a
temporary folder): a digit sprite moving left→right (visual bit 0) or right→left (1) and a tone in a low (audio bit 0)
or high pitch band (1); labels: the digit (4 classes), the visual bit, the audio bit and their XOR. The pretraining
never sees a label. Models, each pretrained EPOCHS epochs on NUM_TRAIN clips from the same seed:

* ``stage 1``: reconstruction (audio 80 %, video 90 % masked) + inter-modal (0.1) + intra-modal (0.1) InfoNCE, τ 0.1;
* ``stage 1, no inter``: the same with ``inter_weight = 0`` (the ablation the paper's §5 / the notes ask for);
* ``stage 2``: a student from a fresh initialisation regressing, on its removed tokens, the fusion features of the frozen
  ``stage 1`` model on the unmasked clips (contrast weights kept);
* ``random init``: the untrained network (control).

Probes (scikit-learn logistic regression on standardised frozen features, fitted on the training clips, scored on the
NUM_VAL validation clips): audio-only features (``forward_features(spectrogram)``) → audio bit; video-only
(``forward_features(clip)``) → visual bit and digit; AV (``fc_norm_av`` of the fusion encoder) → XOR (needs both bits;
a linear probe on the concatenated pooled features can only read it when the features encode the pair jointly). Also
``av_r1``: audio→video top-1 retrieval among the NUM_VAL validation clips from the contrastive projections (chance 1/NUM_VAL).
Tiny sizes (width 64, 2 blocks per modality, 1 fusion block, decoders 1 block).

What it showed (3 seeds, 1008 s on a shared, loaded 2-core machine): no gain from pretraining on this data. The bit
probes are at ~1.0 already at random initialisation (pitch band and motion direction are linearly readable from any
pooled patch embedding), the digit probe is *lower* after pretraining (0.54–0.57 vs 0.60 at init), the XOR probe stays
at chance for every model, and av_r1 stays at chance: the SYNTHETIC clips share no per-clip content across modalities
(the bits, the digit, the colour and the pitch are drawn independently; the loudness envelope is the same function of
the motion for every clip), so inter-modal contrast has nothing to align and cannot show its benefit here. A data set
with shared cross-modal content (e.g. the pitch tied to the digit) is needed for the paper's claim.
"""

from __future__ import annotations

import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import mean_sd_cell, over_seeds, quiet_lightning, setup_threads  # noqa: E402
from litzoo.datamodules.audio_video import SyntheticAudioVideoDataModule  # noqa: E402
from litzoo.modules.mavil import MAViL, adamw_mae  # noqa: E402

SEEDS = (0, 1, 2)
EPOCHS = 20
NUM_TRAIN, NUM_VAL = 256, 128
DATA = {"num_frames": 8, "fps": 4.0, "target_length": 64, "num_mel_bins": 64}
SIZES = {"video_frames": 8, "video_size": 32, "spec_size": (64, 64)}
NET = {"dim": 64, "depth": 2, "num_heads": 4, "fusion_depth": 1, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4, "mlp_ratio": 2.0,
       "proj_dim": 64, "tubelet": (2, 8, 8), "audio_patch": 16}  # fmt: skip
MODELS = ("random init", "stage 1", "stage 1, no inter", "stage 2")
PROBES = ("audio → audio bit", "video → visual bit", "video → digit", "AV → XOR", "av_r1")


def load_split(dm: SyntheticAudioVideoDataModule, split: str) -> list[dict[str, torch.Tensor]]:
    dataset = dm.dataset(split)
    return [dataset[i] for i in range(len(dataset))]


def pretrain(model: MAViL, train: list[dict[str, torch.Tensor]], seed: int) -> MAViL:
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@torch.no_grad()
def features(model: MAViL, items: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    out: dict[str, list[torch.Tensor]] = {"audio": [], "video": [], "av": [], "z_a": [], "z_v": []}
    net = model.net
    for batch in DataLoader(items, batch_size=64):
        out["audio"].append(model.forward_features(batch["audio"]))
        out["video"].append(model.forward_features(batch["video"]))
        out["av"].append(model.forward_features(batch))
        out["z_a"].append(net.project(out["audio"][-1], "a"))
        out["z_v"].append(net.project(out["video"][-1], "v"))
    arrays = {k: torch.cat(v).double().numpy() for k, v in out.items()}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise RuntimeError("MAViL benchmark: non-finite features")
    return arrays


def probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(x_train, y_train)
    return float((clf.predict(x_val) == y_val).mean())


def score(model: MAViL, train: list[dict], val: list[dict], labels: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    f_train, f_val = features(model, train), features(model, val)
    sims = f_val["z_a"] @ f_val["z_v"].T
    return {
        "audio → audio bit": probe(f_train["audio"], labels["high_pitch"][0], f_val["audio"], labels["high_pitch"][1]),
        "video → visual bit": probe(f_train["video"], labels["leftward"][0], f_val["video"], labels["leftward"][1]),
        "video → digit": probe(f_train["video"], labels["digit"][0], f_val["video"], labels["digit"][1]),
        "AV → XOR": probe(f_train["av"], labels["xor"][0], f_val["av"], labels["xor"][1]),
        "av_r1": float((sims.argmax(axis=1) == np.arange(len(sims))).mean()),
    }


def run_seed(seed: int, root: str) -> dict[str, dict[str, float]]:
    dm = SyntheticAudioVideoDataModule(root=root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=seed, batch_size=32, bit_labels=True, **DATA)
    dm.setup("fit")
    train, val = load_split(dm, "train"), load_split(dm, "val")
    labels = {}
    for name in ("xor", "leftward", "high_pitch"):
        column = dm.classes.index(f"/synthetic/{name}")
        labels[name] = tuple(np.array([int(it["label"][column] > 0.5) for it in split]) for split in (train, val))
    digit_columns = [i for i, c in enumerate(dm.classes) if c.startswith("/synthetic/digit_")]
    labels["digit"] = tuple(np.array([int(it["label"][digit_columns].argmax()) for it in split]) for split in (train, val))
    optimizer = partial(adamw_mae, lr=1e-3, weight_decay=0.05)
    out: dict[str, dict[str, float]] = {}

    def build(**kwargs: Any) -> MAViL:
        L.seed_everything(seed, verbose=False)
        return MAViL(**SIZES, **NET, warmup_epochs=2.0, optimizer=optimizer, **kwargs)

    out["random init"] = score(build().eval(), train, val, labels)
    stage1 = pretrain(build(), train, seed)
    out["stage 1"] = score(stage1, train, val, labels)
    out["stage 1, no inter"] = score(pretrain(build(inter_weight=0.0), train, seed), train, val, labels)
    student = build(stage=2)
    student.load_teacher(stage1.net)
    out["stage 2"] = score(pretrain(student, train, seed), train, val, labels)
    return out


def main() -> dict[str, Any]:
    setup_threads()
    quiet_lightning()
    start = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for seed in SEEDS:
            runs.append(run_seed(seed, root))
            print(f"seed {seed}: {runs[-1]}", file=sys.stderr)
    return {"runs": runs, "summary": over_seeds(runs), "seconds": time.time() - start}


def format_section(results: dict[str, Any]) -> str:
    summary = results["summary"]
    lines = [
        "### MAViL (issue 25, item 2): linear probes of frozen features, SYNTHETIC audio-visual clips",
        "",
        f"{len(SEEDS)} seeds, {NUM_TRAIN} training / {NUM_VAL} validation clips, {EPOCHS} pretraining epochs, mean ± sd; validation accuracy of "
        f"a logistic-regression probe (chance: bits and XOR 0.5, digit 0.25); av_r1: audio→video top-1 retrieval among {NUM_VAL} clips "
        f"(chance {1 / NUM_VAL:.3f}). {results['seconds']:.0f} s.",
        "",
        "| model | " + " | ".join(PROBES) + " |",
        "|---|" + "---|" * len(PROBES),
    ]
    lines += [f"| {model} | " + " | ".join(mean_sd_cell(summary[model][p]) for p in PROBES) + " |" for model in MODELS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_section(main()))
