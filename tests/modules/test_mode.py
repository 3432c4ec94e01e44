"""MoDE (modules/mode.py): the official ensemble weights by hand, balanced k-means' auction against a brute-force reading
of the official rule, the 2% out-of-cluster draw, pair → fine → coarse, the clustering file (round trip, one-line errors),
the ensemble logits by hand, and the SYNTHETIC two-domain pool's planted domains."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from litzoo.datamodules.two_domain_captions import DIGIT_WORDS, TwoDomainCaptionsDataModule, two_domain_caption_pool
from litzoo.framework.errors import LitzooError
from litzoo.framework.nn.clip import CLIP, zero_shot_weights
from litzoo.modules.mode import (
    BalancedKMeans,
    MoDE,
    ModeClustering,
    MoDEClusteringStep,
    TfidfSvdEmbedder,
    auction_assignment,
    cluster_captions,
    ensemble_logits,
    expert_pairs,
    metadata_weights,
    register_embedder,
)  # fmt: skip

TINY = dict(vocab_size=64, embed_dim=8, image_size=8, patch_size=4, in_chans=1, vision_width=16, vision_depth=1, vision_heads=2,
            context_length=8, text_width=16, text_depth=1, text_heads=2)  # fmt: skip


# ----------------------------------------------------------------------------------------- the ensemble weights


def official_weights(dist: list[float], assign_coarse: list[int], num_experts: int) -> np.ndarray:
    """post_report_ensemble.py's loop, transcribed with numpy (smooth_weight = [5.0, 8.0], too_many_class = 200)."""
    n_class = len(dist)
    hrchy_avg = np.array(assign_coarse)
    soft_avg = {key: np.array(dist)[hrchy_avg == key] for key in range(num_experts)}
    weight = np.zeros(num_experts)
    for key, item in soft_avg.items():
        if len(item) > 0:
            sharpen_add = np.exp(0.5 - np.sqrt(n_class)) if n_class < 10 else 0.0
            sharpen_mul = 5.0 * np.log10(max(10, n_class - 200))
            weight[key] = np.exp((sharpen_add - item) * sharpen_mul).sum()
    z = np.exp(weight / 8.0 - (weight / 8.0).max())
    return z / z.sum()


def test_weights_few_classes_by_hand():
    # 3 classes (n < 10: a = exp(0.5 - sqrt 3), m = 5); expert 2 holds no class -> w = 0
    d, k = [0.2, 0.5, 0.3], [0, 1, 0]
    a = math.exp(0.5 - math.sqrt(3))
    w = [math.exp((a - 0.2) * 5) + math.exp((a - 0.3) * 5), math.exp((a - 0.5) * 5), 0.0]
    hand = [math.exp(x / 8) / sum(math.exp(y / 8) for y in w) for x in w]
    got = metadata_weights(torch.tensor(d), torch.tensor(k), 3)
    torch.testing.assert_close(got, torch.tensor(hand), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got, torch.tensor(official_weights(d, k, 3), dtype=torch.float32))
    # negative control: without the small-task offset a the weights differ
    no_offset = [math.exp(-0.2 * 5) + math.exp(-0.3 * 5), math.exp(-0.5 * 5), 0.0]
    wrong = torch.softmax(torch.tensor(no_offset) / 8, 0)
    assert (got - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("n", [9, 10, 12, 250, 1000])
def test_weights_against_the_official_loop(n):
    g = torch.Generator().manual_seed(n)
    d = torch.rand(n, generator=g) * 1.2
    k = torch.randint(0, 4, (n,), generator=g)
    got = metadata_weights(d, k, 4)
    torch.testing.assert_close(got, torch.tensor(official_weights(d.tolist(), k.tolist(), 4), dtype=torch.float32), rtol=1e-5, atol=1e-7)
    if n >= 10:  # a = 0 and m = 5 log10(max(10, n - 200)) by hand
        m = 5 * math.log10(max(10, n - 200))
        w = torch.zeros(4, dtype=torch.float64).index_add_(0, k, torch.exp(-d.double() * m))
        torch.testing.assert_close(got, torch.softmax(w / 8, 0).float())


def test_weights_refuse_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        metadata_weights(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="one distance"):
        metadata_weights(torch.tensor([0.1]), torch.tensor([0, 1]), 2)


# --------------------------------------------------------------------------------------- balanced k-means


def auction_by_loops(scores: torch.Tensor) -> list[int]:
    """A brute-force reading of kmeans_pytorch's auction_lap: Python loops over centres and points, float64."""
    worth = scores.double().T.tolist()  # [centre][point]
    num_centres, num_points = len(worth), len(worth[0])
    per = num_points // num_centres
    eps = max((scores.max() - scores.min()).item() / 50, 1e-4)
    price = [0.0] * num_points
    value = [row[:] for row in worth]
    held: list[tuple[int, int]] = []
    rounds, unclaimed = 0, []
    while True:
        bids = [[0.0] * num_points for _ in range(num_centres)]
        for c in range(num_centres):
            order = sorted(range(num_points), key=lambda p: -value[c][p])[: per + 1]
            for p in order[:-1]:
                bids[c][p] = value[c][p] - value[c][order[-1]] + eps
        if rounds < 100:
            for c, p in held:
                bids[c][p] = eps
        if rounds > 1000:
            for p in unclaimed:
                bids[0][p] = eps
        winners, held, unclaimed = {}, [], []
        for p in range(num_points):
            column = [bids[c][p] for c in range(num_centres)]
            if max(column) > 0:
                c = column.index(max(column))
                winners[p] = c
                price[p] += column[c]
                held.append((c, p))
            else:
                unclaimed.append(p)
        if len(winners) == num_points:
            return [winners[p] for p in range(num_points)]
        value = [[worth[c][p] - price[p] for p in range(num_points)] for c in range(num_centres)]
        for c, p in held:
            value[c][p] = worth[c][p]
        rounds += 1


@pytest.mark.parametrize("n, k, seed", [(12, 3, 0), (13, 4, 1), (20, 2, 2), (30, 5, 3)])
def test_auction_equals_the_brute_force_reading(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    points, centres = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(k, 3, generator=g, dtype=torch.float64)
    scores = -(points[:, None] - centres[None]).pow(2).sum(-1)
    assert auction_assignment(scores).tolist() == auction_by_loops(scores)


@pytest.mark.parametrize("n, k", [(40, 4), (41, 4), (60, 3), (30, 2)])
def test_balanced_kmeans_balances_where_plain_kmeans_does_not(n, k):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(n - n // 5, 2, generator=g) * 0.3, torch.randn(n // 5, 2, generator=g) * 0.3 + 4])  # 80% in one blob
    sizes = torch.bincount(BalancedKMeans(k, balanced=True).fit(x), minlength=k)
    assert sizes.sum() == n and sizes.min() >= n // k and sizes.max() <= n // k + n % k
    plain = torch.bincount(BalancedKMeans(k, balanced=False).fit(x), minlength=k)
    assert plain.max() - plain.min() > n % k + 1  # negative control: argmin assignment is unbalanced here


def test_kmeans_iteration_moves_centres_to_the_means():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, generator=g)
    km = BalancedKMeans(3, balanced=True, iter_limit=1)
    assignment = km.fit(x)
    start = x[torch.randperm(24, generator=torch.Generator().manual_seed(0))[:3]]
    assert assignment.tolist() == auction_assignment(-torch.cdist(x, start).pow(2)).tolist()
    torch.testing.assert_close(km.centres, torch.stack([x[assignment == c].mean(0) for c in range(3)]))
    torch.testing.assert_close(km.predict(x), torch.cdist(x, km.centres).argmin(1))


# ------------------------------------------------------------------------------- an expert's pairs


def test_expert_pairs_add_two_percent_of_the_others():
    coarse = torch.tensor([0] * 300 + [1] * 500 + [2] * 151)[torch.randperm(951, generator=torch.Generator().manual_seed(0))]
    inside = set((coarse == 1).nonzero().squeeze(1).tolist())
    chosen = expert_pairs(coarse, 1, 0.02, torch.Generator().manual_seed(0))
    assert chosen.tolist() == sorted(set(chosen.tolist()))  # ascending, no pair twice
    assert inside <= set(chosen.tolist()) and len(chosen) == 500 + int(451 * 0.02)  # int(9.02) = 9 out-of-cluster pairs
    assert set(expert_pairs(coarse, 1, 0.0).tolist()) == inside
    # uniform over the out-of-cluster pairs: each drawn 9/451 of the time
    counts = torch.zeros(951)
    for seed in range(400):
        counts[expert_pairs(coarse, 1, 0.02, torch.Generator().manual_seed(seed))] += 1
    outside = counts[coarse != 1]
    assert abs(outside.double().mean().item() - 400 * 9 / 451) < 1e-6 and outside.std().item() < 3 * math.sqrt(400 * 9 / 451)


# --------------------------------------------------------------------------------- pair -> fine -> coarse


class TableEmbedder:
    """A fixed word → vector table: a caption is the sum of its words' vectors."""

    name = "test_table"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def fit(self, texts):
        return self

    def __call__(self, texts):
        dim = len(next(iter(self.table.values())))
        return torch.tensor(
            [np.sum([self.table.get(w, [0.0] * dim) for w in t.split()], axis=0).tolist() for t in texts], dtype=torch.float32
        )

    def state(self):
        return {"words": list(self.table), "vectors": torch.tensor(list(self.table.values()))}


register_embedder("test_table", lambda s: TableEmbedder(dict(zip(s["words"], s["vectors"].tolist(), strict=True))))


def test_pairs_go_to_their_nearest_fine_centre_then_its_coarse_cluster():
    g = torch.Generator().manual_seed(0)
    words = {f"w{i}": torch.randn(4, generator=g).tolist() for i in range(6)}
    fine = torch.randn(5, 4, generator=g)
    clustering = ModeClustering(fine, torch.randn(2, 4, generator=g), torch.tensor([1, 0, 0, 1, 1]), TableEmbedder(words))
    texts = ["w0 w1", "w2", "w3 w4 w5", "w5", "w1 w1 w2"]
    fine_ids, coarse_ids = clustering.assign(texts)
    embeddings = F.normalize(TableEmbedder(words)(texts), dim=-1)
    brute = [min(range(5), key=lambda c: float(((e - fine[c]) ** 2).sum())) for e in embeddings]
    assert fine_ids.tolist() == brute and coarse_ids.tolist() == [[1, 0, 0, 1, 1][c] for c in brute]
    # class names: prompts normalised, averaged, normalised, then the Euclidean distance to the nearest centre
    d, f = clustering.class_distances(["w0", "w3"], ["{}", "{} w5"])
    for row, name in enumerate(["w0", "w3"]):
        e = F.normalize(F.normalize(TableEmbedder(words)([name, f"{name} w5"]), dim=-1).mean(0), dim=-1)
        distances = (e - fine).norm(dim=1)
        assert f[row] == distances.argmin() and abs(float(d[row] - distances.min())) < 1e-6


SYNTH_A = ["{} pencil", "worksheet {}", "{} chalk"]
SYNTH_B = ["neon {}", "{} jersey", "buoy {}"]


def _planted_texts(seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, domains = [], []
    for _ in range(240):
        domain = "A" if rng.random() < 0.5 else "B"
        words = DIGIT_WORDS[:5] if domain == "A" else DIGIT_WORDS[5:]
        texts.append(str(rng.choice(SYNTH_A if domain == "A" else SYNTH_B)).format(rng.choice(words)))
        domains.append(domain)
    return texts, domains


def test_two_level_clustering_recovers_planted_domains():
    texts, domains = _planted_texts()
    clustering = cluster_captions(texts, num_fine=8, num_coarse=2, embedder=TfidfSvdEmbedder(dim=8))
    _, coarse = clustering.assign(texts)
    a = {int(c) for c, d in zip(coarse, domains, strict=True) if d == "A"}
    b = {int(c) for c, d in zip(coarse, domains, strict=True) if d == "B"}
    assert len(a) == 1 and len(b) == 1 and a != b
    assert torch.bincount(clustering.fine_to_coarse, minlength=2).min() >= 1
    # class names of a domain land on that domain's expert
    _, fine = clustering.class_distances(DIGIT_WORDS[:5])
    assert set(clustering.fine_to_coarse[fine].tolist()) == a


def test_online_fit_over_chunks_continues_from_the_centres():
    texts, _ = _planted_texts(1)
    one = cluster_captions(texts, num_fine=8, num_coarse=2, embedder=TfidfSvdEmbedder(dim=8), fine_iters=2)
    chunked = cluster_captions(texts, num_fine=8, num_coarse=2, embedder=TfidfSvdEmbedder(dim=8), fine_iters=2, chunk_size=60)
    assert chunked.info["chunk_size"] == 60 and not torch.equal(one.fine_centres, chunked.fine_centres)
    with pytest.raises(ValueError, match="chunk_size"):
        cluster_captions(texts, num_fine=8, num_coarse=2, chunk_size=4)


# ------------------------------------------------------------------------------------------ the file


def test_clustering_file_round_trip_with_weights_only(tmp_path):
    texts, _ = _planted_texts()
    clustering = cluster_captions(texts, num_fine=8, num_coarse=2, embedder=TfidfSvdEmbedder(dim=8))
    path = clustering.save(tmp_path / "c.pt")
    assert not list(tmp_path.glob(".*partial*"))
    torch.load(path, weights_only=True)  # plain tensors, numbers, strings and lists
    loaded = ModeClustering.load(path)
    torch.testing.assert_close(loaded.fine_centres, clustering.fine_centres)
    assert torch.equal(loaded.fine_to_coarse, clustering.fine_to_coarse)
    torch.testing.assert_close(
        loaded.embed(["three pencil", "neon seven", "unknown words"]), clustering.embed(["three pencil", "neon seven", "unknown words"])
    )
    # the loaded TF-IDF equals scikit-learn's fitted vectorizer + SVD
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer().fit(texts)
    svd = TruncatedSVD(8, random_state=0).fit(vectorizer.transform(texts))
    reference = torch.tensor(svd.transform(vectorizer.transform(["three pencil", "neon seven"])), dtype=torch.float32)
    torch.testing.assert_close(loaded.embedder(["three pencil", "neon seven"]), reference, rtol=1e-5, atol=1e-6)


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    "write, expected",
    [
        (None, "does not exist"),
        (lambda p: p.write_text("not torch"), "is not a torch file"),
        (lambda p: torch.save({"format": "other"}, p), "is not a MoDE clustering"),
        (lambda p: torch.save({"format": "litzoo.mode.clustering/1", "fine_centres": torch.zeros(3, 2)}, p), "lacks 'coarse_centres'"),
        ("bad_map", "fine_to_coarse must hold coarse ids in 0..1"),
        ("nan", "non-finite"),
        ("embedder", "caption embedder 'simcse' is not registered"),
    ],
)
def test_bad_clustering_files_fail_in_one_line(tmp_path, write, expected):
    path = tmp_path / "clustering.pt"
    if isinstance(write, str):
        state = ModeClustering(torch.randn(3, 2), torch.randn(2, 2), torch.tensor([0, 1, 1]), TableEmbedder({"x": [1.0, 0.0]})).state()
        if write == "bad_map":
            state["fine_to_coarse"] = torch.tensor([0, 5, 1])
        elif write == "nan":
            state["fine_centres"][0, 0] = float("nan")
        else:
            state["embedder"] = "simcse"
        torch.save(state, path)
    elif write is not None:
        write(path)
    with pytest.raises(LitzooError) as error:
        ModeClustering.load(path)
    assert str(path) in _one_line(error) and expected in str(error.value)


# -------------------------------------------------------------------------------------------- the ensemble


class WordTokenizer:
    def __init__(self) -> None:
        self.words: dict[str, int] = {}

    def __call__(self, texts):
        rows = [[2, *(self.words.setdefault(w, 4 + len(self.words) % 50) for w in t.split())][:7] + [3] for t in texts]
        return torch.tensor([row + [0] * (8 - len(row)) for row in rows])


def test_ensemble_logits_are_the_weighted_sum_by_hand():
    torch.manual_seed(0)
    experts = [CLIP(**TINY).eval() for _ in range(2)]
    clustering = ModeClustering(
        torch.randn(4, 2), torch.randn(2, 2), torch.tensor([0, 1, 1, 0]), TableEmbedder({"cat": [1.0, 0.0], "dog": [0.0, 1.0]})
    )
    mode = MoDE(experts, clustering)
    names, templates, tokenizer = ["cat", "dog", "cow"], ["{}", "a {}"], WordTokenizer()
    images = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        embeddings = mode.class_embeddings(tokenizer, names, templates)
        logits = mode(images, embeddings)
        weights, distances, coarse = mode.task_weights(names, templates)
        for k, expert in enumerate(experts):  # each expert: cosine of normalised image and class embeddings, no logit scale
            torch.testing.assert_close(
                logits[k], F.normalize(expert.encode_image(images), dim=-1) @ zero_shot_weights(expert, tokenizer, names, templates)
            )
        by_hand = weights[0] * logits[0] + weights[1] * logits[1]
    torch.testing.assert_close(ensemble_logits(logits, weights), by_hand)
    torch.testing.assert_close(weights, metadata_weights(distances, coarse, 2))
    assert not torch.allclose(ensemble_logits(logits, weights), logits.mean(0))  # weighted differs from uniform here
    with pytest.raises(ValueError, match="needs 2 experts"):
        MoDE(experts[:1], clustering)


def test_experts_added_later_get_the_official_weights_renormalised_over_those_present():
    torch.manual_seed(0)
    experts = [CLIP(**TINY).eval() for _ in range(3)]
    clustering = ModeClustering(
        torch.randn(6, 2), torch.randn(3, 2), torch.tensor([0, 1, 2, 2, 1, 0]), TableEmbedder({"cat": [1.0, 0.0], "dog": [0.0, 1.0]})
    )
    names, templates = ["cat", "dog", "cow"], ["{}"]
    full, distances, coarse = MoDE(experts, clustering, temperature=0.05).task_weights(names, templates)
    assert len(set(coarse.tolist())) > 1 and not torch.allclose(full, full.flip(0))  # the weights differ per cluster
    # the experts of clusters 2 and 0 trained so far, listed in that order
    partial, _, _ = MoDE([experts[2], experts[0]], clustering, temperature=0.05, expert_clusters=[2, 0]).task_weights(names, templates)
    torch.testing.assert_close(partial, torch.stack([full[2], full[0]]) / (full[2] + full[0]))
    # all three in another order: the same weights, reordered
    shuffled, _, _ = MoDE([experts[1], experts[2], experts[0]], clustering, temperature=0.05, expert_clusters=[1, 2, 0]).task_weights(names, templates)
    torch.testing.assert_close(shuffled, full[[1, 2, 0]])
    for bad in ([0, 0], [0, 3], [1]):
        with pytest.raises(ValueError, match="expert_clusters"):
            MoDE(experts[:2], clustering, expert_clusters=bad)


# ------------------------------------------------------------------------------ the SYNTHETIC two-domain pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_domain")  # where TwoDomainCaptionsDataModule(root, vocab_size=128) looks for it
    return two_domain_caption_pool(root / "seed0-noise0.2-v128", noise_share=0.2, seed=0, vocab_size=128)


def test_pool_plants_two_domains(pool):
    rows = [json.loads(line) for line in pool["train"].read_text().splitlines()]
    assert len(rows) == 1257 and all("label" not in row for row in rows)
    for row in rows:
        assert row["domain"] == ("A" if row["digit"] < 5 else "B")
        if row["kind"] == "class":
            words = set(row["text"].split())
            assert DIGIT_WORDS[row["digit"]] in words and not words & set(DIGIT_WORDS[5:] if row["domain"] == "A" else DIGIT_WORDS[:5])
        else:
            assert not set(row["text"].split()) & set(DIGIT_WORDS)
    noise = sum(row["kind"] == "noise" for row in rows) / len(rows)
    assert 0.15 < noise < 0.25
    test_b = [json.loads(line) for line in pool["test_B"].read_text().splitlines()]
    assert {r["label"] for r in test_b} == set(range(5)) and all(r["label"] == r["digit"] - 5 for r in test_b)
    assert (pool["train"].parent / "tokenizer.json").is_file()


def test_datamodule_runs_the_clustering_once_and_trains_an_expert(pool):
    tmp_path = pool["train"].parent.parent
    step = MoDEClusteringStep(num_fine=16, num_coarse=2, embed_dim=32, fine_iters=3, coarse_iters=10, vocab_size=128, seed=0)
    data = TwoDomainCaptionsDataModule(root=str(tmp_path), expert=1, clustering=step, task="B", vocab_size=128)
    manifest = data.experts_folder / "expert_1.jsonl"
    assert data.manifests["train"] == str(manifest) and data.class_names == list(DIGIT_WORDS[5:])
    stamp = manifest.stat().st_mtime_ns
    TwoDomainCaptionsDataModule(root=str(tmp_path), expert=0, clustering=step, task="B", vocab_size=128)
    assert manifest.stat().st_mtime_ns == stamp  # reused, not clustered again
    assert "clustering" not in data.hparams and data.dataset("train")[0]["image"].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="expert and clustering go together"):
        TwoDomainCaptionsDataModule(root=str(tmp_path), expert=0)
    with pytest.raises(LitzooError, match="data expert 5 has no manifest"):
        TwoDomainCaptionsDataModule(root=str(tmp_path), expert=5, clustering=step, vocab_size=128)
