"""R5 (modules/r5.py): the merge move and the 8 planes by hand, PUCT selection and the sign convention on a traced toy,
backtrack rewriting and episode scoring by hand, the policy update's loss, a planted rule recovered through a Lightning fit,
and the checkpoint round trip with weights_only=True."""

from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from litzoo.framework.graphs.query_paths import PathQuery
from litzoo.modules.r5 import (
    MCTS,
    R5Module,
    R5PolicyValueNet,
    RelationPathState,
    RuleMemory,
    RuleScoring,
    TreeNode,
    eval_episode,
    policy_update,
    rule_recall_precision,
    symmetry_augment,
)


def key(left: int, right: int, width: int) -> int:
    return left * width + right


# ---------------------------------------------------------------------------------------------------------- the move
def test_do_move_drops_paths_without_the_pair_and_replaces_one_occurrence():
    width = 10
    seen = set()
    for seed in range(20):
        state = RelationPathState([(1, 2, 1, 2), (3, 1, 2), (2, 3)], width, np.random.default_rng(seed))
        assert state.availables == sorted({12, 21, 31, 23})
        assert state.action_dict[12] == {0, 1} and state.action_dict[23] == {2}
        state.do_move(12, 9)
        assert set(state.paths) == {0, 1}  # (2, 3) has no (1, 2): dropped
        assert state.paths[1] == (3, 9)
        assert state.paths[0] in {(9, 1, 2), (1, 2, 9)}  # exactly one of the two occurrences merged
        seen.add(state.paths[0])
        assert state.rule_len == 1 and state.last_move == 12 and state.is_end() == (False, -1)
        assert state.availables == sorted(key(a, b, width) for p in state.paths.values() for a, b in zip(p[:-1], p[1:], strict=False))
    assert seen == {(9, 1, 2), (1, 2, 9)}  # the occurrence is drawn, not always the first
    state = RelationPathState([(1, 2, 3), (4, 5)], width, np.random.default_rng(0))
    state.do_move(45, 7)
    assert state.paths == {1: (7,)} and state.is_end() == (True, 1)


def test_features_planes_on_a_hand_example():
    width, n_rel = 6, 4
    state = RelationPathState([(1, 2, 1, 2), (1, 2, 3)], width, np.random.default_rng(0))
    rules = {key(1, 2, width): 5, key(2, 3, width): 3}
    scores = {key(1, 2, width): -0.5}
    planes = state.features(rules, scores, n_rel)
    assert planes.shape == (8, width, width)
    # (1, 2): 3 occurrences; position 0 holds it in 2 paths, position 2 in 1 -> (2, 0); invented head 5
    assert planes[:, 1, 2].tolist() == [3, 2, 0, 1, 0, -0.5, 1, 2]
    # (2, 1): once, at position 1; no rule
    assert planes[:, 2, 1].tolist() == [1, 1, 1, 0, 0, 0, 2, 1]
    # (2, 3): once at position 1; a rule with a real head, no score
    assert planes[:, 2, 3].tolist() == [1, 1, 1, 1, 1, 0, 2, 3]
    mask = np.zeros((width, width), dtype=bool)
    mask[1, 2] = mask[2, 1] = mask[2, 3] = True
    assert not planes[:, ~mask].any()  # nothing elsewhere
    tie = RelationPathState([(1, 2, 5), (5, 1, 2)], width, np.random.default_rng(0)).features({}, {}, n_rel)
    assert tie[1, 1, 2] == 1 and tie[2, 1, 2] == 0  # one path at position 0 and one at 1: the first position


# -------------------------------------------------------------------------------------------------------- the search
def uniform_policy(state, rules, rules_score):
    return [(a, 1.0 / len(state.availables)) for a in state.availables], 0.0


def known_memory(width: int, n_rel: int, rules: dict[tuple[int, int], int]) -> RuleMemory:
    memory = RuleMemory(width, n_rel)
    memory.rules = {key(a, b, width): h for (a, b), h in rules.items()}
    return memory


def test_puct_value_formula():
    parent = TreeNode(None, 1.0)
    parent.n_visits = 4
    child = TreeNode(parent, 0.5)
    child.n_visits, child.Q = 1, 0.2
    assert child.value(2.0) == pytest.approx(0.2 + 2.0 * 0.5 * math.sqrt(4) / 2)


def test_puct_playouts_traced_by_hand():
    """Paths (1, 2) and (3, 4, 5), every pair known: merging (1, 2) ends at once (value 1 / 1), (3, 4) or (4, 5) after two
    moves (1 / 2). Six playouts traced by hand with c_puct 5 and a uniform policy of value 0: the root expands; A = (1, 2)
    ends the episode and gets Q = -1 (the sign flips at its own level); then B, C, B (-> its child ends: B gets +1/2), C."""
    width, n_rel = 10, 8
    memory = known_memory(width, n_rel, {(1, 2): 6, (3, 4): 6, (4, 5): 7, (6, 5): 1, (3, 7): 2})
    mcts = MCTS(uniform_policy, memory, c_puct=5.0, n_playout=6, rng=np.random.default_rng(0), py_rng=random.Random(0))
    state = RelationPathState([(1, 2), (3, 4, 5)], width, np.random.default_rng(0))
    acts, probs = mcts.move_probs(state, temp=1.0)
    children = mcts.root.children
    assert acts == [12, 34, 45]
    assert [children[a].n_visits for a in acts] == [1, 2, 2] and mcts.root.n_visits == 6
    assert [children[a].Q for a in acts] == pytest.approx([-1.0, 0.25, 0.25])
    assert children[34].children[65].Q == pytest.approx(-0.5)  # the level below flips back
    assert probs == pytest.approx([0.2, 0.4, 0.4])  # softmax(log N / temp) = N / sum N at temp 1
    # long run: the immediately-ending merge keeps Q = -1 and the fewest visits (the two-player artifact, kept)
    mcts = MCTS(uniform_policy, memory, c_puct=5.0, n_playout=200, rng=np.random.default_rng(0), py_rng=random.Random(0))
    mcts.move_probs(RelationPathState([(1, 2), (3, 4, 5)], width, np.random.default_rng(0)), temp=1.0)
    visits = {a: n.n_visits for a, n in mcts.root.children.items()}
    assert visits[12] < visits[34] and visits[12] < visits[45]


def test_eval_search_never_backs_up_through_an_unknown_pair():
    """Path (a, b, c) with (a, b) -> d and (d, c) -> target known and no rule for (b, c): in evaluation the (b, c) playouts
    stop with no update, so all the root's visits and the move go to (a, b), and the deduction reaches the target."""
    width, n_rel = 8, 6
    memory = known_memory(width, n_rel, {(1, 2): 4, (4, 3): 5})
    mcts = MCTS(uniform_policy, memory, c_puct=10.0, n_playout=30, rng=np.random.default_rng(0), py_rng=random.Random(0))
    acts, probs = mcts.move_probs(RelationPathState([(1, 2, 3)], width, np.random.default_rng(0)), temp=1e-3, in_eval=True)
    visits = {a: mcts.root.children[a].n_visits for a in acts}
    assert visits[key(2, 3, width)] == 0 and visits[key(1, 2, width)] >= 1
    assert dict(zip(acts, probs, strict=True))[key(1, 2, width)] == pytest.approx(1.0)
    assert memory.rules == {key(1, 2, width): 4, key(4, 3, width): 5}  # evaluation records nothing
    mcts.update_with_move(-1)
    assert eval_episode(PathQuery(((1, 2, 3),), 5, 3), memory, mcts) == 5
    memory.rules.pop(key(4, 3, width))  # negative control: without the second rule the deduction fails
    mcts.update_with_move(-1)
    assert eval_episode(PathQuery(((1, 2, 3),), 5, 3), memory, mcts) == 0


def test_training_search_records_invented_predicates_in_its_copy_and_evicts_when_full():
    width, n_rel = 6, 4  # invented ids 4 and 5
    memory = RuleMemory(width, n_rel)
    mcts = MCTS(uniform_policy, memory.copy(), 1.0, 1, np.random.default_rng(0), random.Random(0))
    first = mcts.get_pred(key(1, 2, width))
    second = mcts.get_pred(key(2, 3, width))
    assert {first, second} == {4, 5} and memory.rules == {}  # recorded in the search's copy only
    assert mcts.get_pred(key(1, 2, width)) == first  # known now
    mcts.memory.scores = {key(1, 2, width): -0.5, key(2, 3, width): -0.1}
    third = mcts.get_pred(key(3, 1, width))  # none free, two negative scores: both removed (score <= second worst)
    assert key(1, 2, width) not in mcts.memory.rules and key(2, 3, width) not in mcts.memory.rules
    assert mcts.memory.rules == {key(3, 1, width): third} and third in (4, 5)
    mcts.get_pred(key(1, 1, width))
    assert mcts.get_pred(key(2, 2, width)) in (4, 5)  # none free, no scores: a random predicate is freed
    assert len(mcts.memory.rules) == 2


# --------------------------------------------------------------------------------------------------- the rule memory
def test_backtrack_rewriting_by_hand():
    width, n_rel = 8, 5  # 5, 6, 7 invented
    memory = RuleMemory(width, n_rel)
    k = lambda a, b: key(a, b, width)  # noqa: E731
    memory.rules = {k(1, 2): 5, k(5, 3): 6, k(2, 2): 6, k(6, 1): 7, k(1, 6): 2, k(6, 6): 1, k(1, 4): 3, k(4, 4): 5}
    memory.scores = {k(2, 2): 0.7, k(5, 3): -0.2}
    memory.update_rules(k(5, 3), 4)  # the episode's last pair (5, 3) had invented head 6; the target is 4
    assert memory.rules == {
        k(1, 2): 5,  # untouched
        k(5, 3): 4,  # the last rule's head becomes the target
        k(2, 2): 4,  # every other rule with head 6 too, its score reset
        k(4, 1): 7,  # body (6, 1) rewritten to (4, 1)
        k(1, 4): 3,  # (1, 6) -> 2 rewritten to (1, 4), which exists with a real head: the old rule is dropped
        k(4, 4): 1,  # (6, 6) -> 1 rewritten to (4, 4), which existed with an invented head: replaced
    }
    assert memory.scores == {k(2, 2): 0.0, k(5, 3): -0.2}
    # a wrong *real* head is replaced only when its score is negative
    memory.scores[k(1, 4)] = 0.3
    memory.update_rules(k(1, 4), 2)
    assert memory.rules[k(1, 4)] == 3
    memory.scores[k(1, 4)] = -0.3
    memory.update_rules(k(1, 4), 2)
    assert memory.rules[k(1, 4)] == 2 and memory.scores[k(1, 4)] == 0.0


def test_scoring_decays_twice_rounds_and_prunes():
    width, n_rel = 8, 5
    k = lambda a, b: key(a, b, width)  # noqa: E731
    memory = RuleMemory(width, n_rel, RuleScoring())
    memory.rules = {k(1, 2): 3, k(3, 4): 6, k(2, 2): 1, k(2, 3): 5, k(5, 1): 2, k(4, 4): 2}
    memory.scores = {k(1, 2): 0.5, k(2, 2): -1.195, k(2, 3): -1.25, k(7, 7): 0.4, k(4, 4): 0.2}
    z = memory.score_episode(
        moves=[k(1, 2), k(3, 4)], known=[True, False], real_head=[True, False], ground=[True, False], potential=[False, True],
        prediction=4, target=4,
    )  # fmt: skip
    d = 0.003
    twice = lambda x: round(round(x * (1 - d), 4) * (1 - d), 4)  # noqa: E731
    assert z.tolist() == [1.0, 1.0]
    assert memory.scores[k(1, 2)] == twice(0.5 + 0.6 + 0.1)  # v0 + v_T_pos, then decayed twice
    assert memory.scores[k(3, 4)] == twice(-0.05 + 0.1)  # v2 + v_T_pos
    assert memory.scores[k(4, 4)] == twice(0.2) == 0.1988
    assert round(round(-1.195 * 1.003, 4), 4) > -1.2  # one decay would keep (2, 2) ...
    assert k(2, 2) not in memory.rules and k(2, 2) not in memory.scores  # ... two push it below -1.2: pruned
    # (2, 3) -> inv 5 pruned, and with it (5, 1) which uses the invented predicate in its body
    assert k(2, 3) not in memory.rules and k(5, 1) not in memory.rules
    assert k(7, 7) not in memory.scores  # a score without a rule is dropped
    # a wrong real prediction: every move scores v_T_neg, z = -1; one move gets the wrong allowance back
    memory = RuleMemory(width, n_rel)
    memory.rules = {k(1, 2): 3}
    assert memory.score_episode([k(1, 2)], [True], [True], [True], [False], prediction=3, target=4).tolist() == [-1.0]
    assert memory.scores[k(1, 2)] == round(round((-1.0 + 0.5) * 1.003, 4) * 1.003, 4)
    # an invented prediction: per-move scores only, z = -0.02
    memory = RuleMemory(width, n_rel)
    memory.rules = {k(1, 2): 6}
    assert memory.score_episode([k(1, 2)], [True], [False], [False], [False], prediction=6, target=4).tolist() == [-0.02]
    assert memory.scores[k(1, 2)] == round(round(-0.1 * 1.003, 4) * 1.003, 4) == -0.1006  # v3: known with an invented head


def test_rules_text_and_recall_precision():
    width, n_rel = 8, 5
    memory = RuleMemory(width, n_rel)
    memory.rules = {key(1, 2, width): 3, key(3, 5, width): 6, key(4, 4, width): 1}
    memory.scores = {key(1, 2, width): 1.5, key(3, 5, width): -0.25}
    text = memory.to_text(["UNK", "a", "b", "c", "d"])
    assert text == "a, b -> c  1.5000\nd, d -> a  0.0000\nc, inv_0 -> inv_1  -0.2500\n"
    assert memory.confident_rules() == {(1, 2, 3)}  # score > 0 and all real
    assert rule_recall_precision({(1, 2, 3)}, [(1, 2, 3), (2, 3, 1)]) == {"rule_recall": 0.5, "rule_precision": 1.0}
    assert rule_recall_precision(set(), [(1, 2, 3)]) == {"rule_recall": 0.0, "rule_precision": 0.0}


# -------------------------------------------------------------------------------------------------------- the update
def test_policy_update_loss_by_hand_and_lr_multiplier():
    torch.manual_seed(0)
    width = 5
    net = R5PolicyValueNet(width)
    states = torch.randn(3, 8, width, width)
    pis = torch.softmax(torch.randn(3, width * width), 1)
    zs = torch.tensor([1.0, -1.0, -0.02])
    with torch.no_grad():
        x = F.relu(net.conv3(F.relu(net.conv2(F.relu(net.conv1(states))))))
        logits = net.act_fc1(F.relu(net.act_conv1(x)).flatten(1))
        log_p = logits - logits.logsumexp(1, keepdim=True)
        v = torch.tanh(net.val_fc2(F.relu(net.val_fc1(F.relu(net.val_conv1(x)).flatten(1))))).view(-1)
        expected = ((v - zs) ** 2).mean() - (pis * log_p).sum(1).mean()
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.Adam(net.parameters(), weight_decay=1e-4)
    loss, entropy, kl, multiplier, steps = policy_update(net, optimizer, states, pis, zs, 1e-6, 1.0, 0.02, 1)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert entropy == pytest.approx(float(-(log_p.exp() * log_p).sum(1).mean()), rel=1e-5)
    # Adam's first step moves each weight by about lr = learning_rate * multiplier (1e-6)
    largest = max((p - b).abs().max().item() for p, b in zip(net.parameters(), before, strict=True))
    assert 0.5e-6 < largest < 1.5e-6
    assert steps == 1 and kl < 0.01 and multiplier == 1.5  # tiny KL: the multiplier grows
    _, _, kl, multiplier, steps = policy_update(net, torch.optim.Adam(net.parameters()), states, pis, zs, 1.0, 1.0, 0.02, 5)
    assert kl > 0.08 and steps == 1 and multiplier == pytest.approx(1 / 1.5)  # a huge step: early stop, multiplier shrinks


def test_symmetry_augmentation_is_eightfold_and_keeps_the_identity():
    width = 4
    planes = np.arange(8 * width * width, dtype=np.float32).reshape(8, width, width)
    pi = np.arange(width * width, dtype=np.float64) / 120
    out = symmetry_augment([(planes, pi, 0.5)], width)
    assert len(out) == 8 and all(z == 0.5 for _, _, z in out)
    assert np.array_equal(out[6][0], planes) and np.array_equal(out[6][1], pi)  # four quarter turns, not flipped
    assert np.array_equal(out[0][0][0], np.rot90(planes[0]))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="n_unkn"):
        R5Module(n_unkn=0)
    with pytest.raises(ValueError, match="n_rel"):
        R5Module(n_rel=1)
    with pytest.raises(ValueError, match="n_playout"):
        R5Module(n_playout=0)
    with pytest.raises(ValueError, match="episode_decay"):
        R5Module(episode_decay=1.0)


# ------------------------------------------------------------------------------------------------ a planted rule, end to end
class TinyWorld(L.LightningDataModule):
    """A tiny SYNTHETIC world: relations 1, 2, 3 (0 = UNK), planted rules (1, 2) -> 3 and (3, 3) -> 2; train on the
    two-relation stories, test on a three-relation one that needs both rules."""

    num_relations = 4
    relation_names = ["UNK_REL", "a", "b", "c"]
    planted_rules = [(1, 2, 3), (3, 3, 2)]

    def train_dataloader(self):
        queries = [PathQuery(((1, 2),), 3, 2), PathQuery(((3, 3),), 2, 2)] * 3 + [PathQuery(((3,), (1, 2)), 3, 1)]  # the last: skipped
        return DataLoader(queries, batch_size=1, collate_fn=list)

    def val_dataloader(self):
        return DataLoader([PathQuery(((1, 2),), 3, 2)], batch_size=1, collate_fn=list)

    def test_dataloader(self):
        return DataLoader(
            [PathQuery(((1, 2),), 3, 2), PathQuery(((1, 2, 3),), 2, 3), PathQuery(((3, 3),), 2, 2)], batch_size=1, collate_fn=list
        )


def test_planted_rules_recovered_and_checkpoint_round_trip(tmp_path):
    model = R5Module(n_unkn=3, n_playout=10, replay_batch_size=8, update_freq=1, updates_per_step=2, search_seed=0)
    trainer = L.Trainer(max_epochs=2, default_root_dir=tmp_path, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, logger=True)  # fmt: skip
    trainer.fit(model, TinyWorld())
    assert model.memory.confident_rules() == {(1, 2, 3), (3, 3, 2)}
    assert trainer.callback_metrics["val/rule_recall"] == 1.0 and trainer.callback_metrics["val/rule_precision"] == 1.0
    assert float(trainer.callback_metrics["train/num_rules"]) >= 2 and "train/loss" in trainer.callback_metrics
    assert float(trainer.callback_metrics["train/skipped_one_relation_queries"]) == 1
    (results,) = trainer.test(model, TinyWorld(), verbose=False)
    assert results["test/acc_len_2"] == 1.0 and results["test/acc_len_3"] == 1.0 and results["test/acc"] == 1.0
    # the mined rules next to the checkpoints, in the text format
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    text = (folder / "r5_rules.txt").read_text()
    assert "a, b -> c  " in text and "c, c -> b  " in text and text == model.rules_text()
    # the checkpoint holds the memory and the generators in plain containers
    (ckpt,) = folder.glob("*.ckpt")
    state = torch.load(ckpt, weights_only=True)
    assert state["r5"]["memory"] == model.memory.state_dict() and state["hyper_parameters"]["n_rel"] == 4
    restored = R5Module.load_from_checkpoint(ckpt, weights_only=True)
    assert restored.memory.rules == model.memory.rules and restored.memory.scores == model.memory.scores
    assert restored.lr_multiplier == model.lr_multiplier and restored.episodes == model.episodes == 12
    assert restored.rng.random() == model.rng.random() and restored.py_rng.random() == model.py_rng.random()
    for a, b in zip(restored.net.parameters(), model.net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_more_than_one_process_is_refused():
    from types import SimpleNamespace

    module = R5Module(n_rel=3, n_unkn=2, n_playout=2)
    module._trainer = SimpleNamespace(world_size=2, datamodule=None)
    with pytest.raises(ValueError, match="one process"):
        module.setup("fit")
