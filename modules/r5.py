"""R5: rule discovery by Monte-Carlo tree search over relation-path merges (Lu, Liu, Mills, Jui, Niu, "R5: Rule Discovery
with Reinforced and Recurrent Relational Reasoning", ICLR 2022; official code sluxsr/r5_graph_reasoning).

A query ``(source, ?, target)`` of a story graph is reduced to the relation sequences of its simple paths
(:class:`litzoo.framework.graphs.query_paths.PathQuery`). R5 predicts the query relation by repeatedly *merging* one
adjacent relation pair ``(l, r)`` into a single relation, the pair's head in a learned **rule memory** ``(l, r) -> head``,
until a path has one relation left: that relation is the prediction. Which pair to merge next is chosen by PUCT
Monte-Carlo tree search guided by a convolutional policy-value network over 8 feature planes of the pair grid; unknown
pairs get *invented* predicates (ids ``n_rel .. n_rel + n_unkn - 1``) which **backtrack rewriting** later resolves into
real relations; every rule carries a score that grows when it helps and decays otherwise, and bad rules are pruned.

Read line by line and followed: ``graphlog/{train,dedution,mcts,policy_value_net}.py`` (the GraphLog variant is the
reference). Verified there, in this file's order:

* :class:`RelationPathState` is ``dedution.Allpair``: an action is ``l * width + r`` for an adjacent pair of any current path
  (``width = n_rel + n_unkn``); :meth:`RelationPathState.do_move` *drops* every path without the pair and replaces one
  occurrence, drawn uniformly, in each other path by the head; the episode ends when some path has one relation
  (``rule_len`` = number of moves). The 8 planes of :meth:`RelationPathState.features` are ``current_state``'s.
* :class:`R5PolicyValueNet` is ``policy_value_net.Net`` (conv 8-16-32-128, policy conv 1x1 to 4 + FC + log-softmax, value
  conv 1x1 to 2 + FC 32 + FC 1 + tanh) and :func:`policy_update` is ``Trainer.policy_update`` with ``train_step``'s loss
  (value MSE + policy cross-entropy), Adam with weight decay 1e-4, KL early stop and the adaptive lr multiplier.
* :class:`MCTS` is ``mcts.py`` (AlphaZero-Gomoku's PUCT tree): ``u = c_puct P sqrt(N_parent) / (1 + N)``, the walk that
  stops at the parent of an action no longer available, the expansion restricted to available moves, the terminal value
  ``1 / rule_len``, ``update_recursive(-leaf_value)`` flipping the sign at every level, ``pi = softmax(log(N + 1e-10) /
  temp)``, the 0.9 pi + 0.1 Dirichlet(0.3) training move with tree reuse and the eval move with a fresh tree each step,
  and ``get_pred``'s predicate choice with its eviction logic.
* :class:`RuleMemory` holds ``Deduction``'s rules and scores: ``update_rules`` / ``update_investigate`` (backtrack
  rewriting), ``rm_rule`` / ``del_inves`` (removal, recursive through invented predicates) and the episode scoring of
  ``start_deduction`` (v0..v4, v_T_pos / v_T_neg, simple_true_score / wrong_allowance, decay, pruning).
* :func:`train_episode` is ``Deduction.start_deduction`` (the MCTS works on a deep copy of the memory taken at the
  episode's start; the memory bookkeeping after each real move), :func:`eval_episode` is ``start_eval_deduction``.

Kept from the official code although odd, on purpose (each is a documented flag or a comment where it happens):

* the sign flip of ``update_recursive`` is AlphaZero-Gomoku's two-player convention; R5 is one-player, so the root's
  children that *end* the episode get ``Q = -1 / rule_len`` while those two moves from the end get ``+1 / rule_len``:
  the search prefers even depths. The terminal value ignores whether the prediction is right (only the network's value,
  trained on ``z``, knows that);
* the 8-fold rot90 / flip augmentation of (state, pi) (``get_equi_data``, meaningful for Gomoku boards, not for pair
  grids; the official also flips pi vertically, as Gomoku stored its planes flipped): ``symmetry_augmentation=True``;
* the score decay ``x (1 - decay)`` / ``x (1 + decay)`` with rounding to 4 places is applied **twice** per episode (two
  identical loops in ``start_deduction``);
* the terminal "prediction" of a training episode is the MCTS copy's head for the last pair, read before backtrack
  rewriting changed the memory.

Chosen where the code is silent or differs: the hard-coded real-relation bound 21 (``< 21``, ``> 20``, ``range(21, width)``)
is ``n_rel`` from the data; ``epochs`` served as both the number of passes and the gradient steps per update: here the
passes are the Trainer's ``max_epochs`` and the steps ``updates_per_step`` (default 10 = the official default epochs);
evaluation searches over a copy of the rule memory (the CLUTRR variant; the GraphLog one reads the training MCTS's copy,
which holds the last episode's transient invented predicates); all randomness comes from generators seeded by ``search_seed``
(numpy for the occurrence choice, new predicates and moves, ``random.Random`` for the replay sampling and eviction, and a
per-epoch generator for evaluation so validation does not shift training); the plane-2 index of ``torch.topk`` on ties is
the first position; the available moves are kept sorted (the official iterates a Python set). Not implemented: the
CLUTRR run's natural-language proof export and the ``graphlog_augment`` GNN variant. The replay buffer (cleared every
epoch, as the official) is not in checkpoints: a run resumed mid-epoch starts its buffer empty.

The CLUTRR variant differs from GraphLog's only in: real-relation bound 23 (its n_rel), ``update_rules`` adding
``wrong_allowance`` when a wrong real head with negative score is replaced (and the one-move ``wrong_allowance`` bonus
dropped), and its evaluation reading the memory (taken here for both).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litzoo.framework.data.staging import write_files_atomically
from litzoo.framework.graphs.query_paths import PathQuery

NUM_PLANES = 8


# ---------------------------------------------------------------------------------------------------- the environment
class RelationPathState:
    """The relation sequences of one query while pairs are merged (official ``Allpair``).

    Args:
        paths: the relation ids along each path source -> target (a :class:`PathQuery`'s ``paths``).
        width: ``n_rel + n_unkn``, the side of the pair grid; an action is ``left * width + right``.
        rng: draws which occurrence of a pair is merged when a path holds it several times.
    """

    def __init__(self, paths: Sequence[Sequence[int]], width: int, rng: np.random.Generator) -> None:
        if not paths or any(len(p) < 1 for p in paths):
            raise ValueError("a query needs at least one non-empty relation path")
        if any(not 0 <= r < width for p in paths for r in p):
            raise ValueError(f"relation ids must lie in [0, {width}), got paths {paths}")
        self.width, self.rng = width, rng
        self.paths: dict[int, tuple[int, ...]] = {i: tuple(int(r) for r in p) for i, p in enumerate(paths)}
        self.rule_len, self.last_move = 0, -1
        self._index()

    def _index(self) -> None:
        """``action_dict`` (pair -> ids of the paths holding it) and the sorted ``availables``."""
        self.action_dict: dict[int, set[int]] = {}
        for i, path in self.paths.items():
            for left, right in zip(path[:-1], path[1:], strict=False):
                self.action_dict.setdefault(left * self.width + right, set()).add(i)
        self.availables: list[int] = sorted(self.action_dict)

    def copy(self) -> RelationPathState:
        """A copy for one playout: its own paths, the same generator (copying the generator would replay its draws)."""
        new = object.__new__(RelationPathState)
        new.width, new.rng, new.paths = self.width, self.rng, dict(self.paths)
        new.rule_len, new.last_move = self.rule_len, self.last_move
        new.action_dict = {k: set(v) for k, v in self.action_dict.items()}
        new.availables = list(self.availables)
        return new

    def do_move(self, move: int, pred: int) -> None:
        """Merge the pair ``move`` into ``pred``: paths without the pair are dropped, in every other path one occurrence
        (drawn uniformly) becomes ``pred``. A move that no path holds changes no path but still counts as a move."""
        if move in self.action_dict:
            holders = self.action_dict[move]
            for i in list(self.paths):
                if i not in holders:
                    del self.paths[i]
                    continue
                path = self.paths[i]
                hits = [j for j in range(len(path) - 1) if path[j] * self.width + path[j + 1] == move]
                j = int(self.rng.choice(hits))
                self.paths[i] = path[:j] + (int(pred),) + path[j + 2 :]
        self._index()
        self.last_move = move
        self.rule_len += 1

    def is_end(self) -> tuple[bool, int]:
        """``(True, rule_len)`` once some path has a single relation, else ``(False, -1)``."""
        if min(len(p) for p in self.paths.values()) == 1:
            return True, self.rule_len
        return False, -1

    def features(self, rules: dict[int, int], rules_score: dict[int, float], n_rel: int) -> np.ndarray:
        """The ``(8, width, width)`` planes at each present pair ``(l, r)`` (official ``current_state``): 0 its number of
        occurrences over all paths; 1 the most paths holding it at one position and 2 that position (the first on ties);
        3 whether the memory has a rule for it; 4 whether that rule's head is real (``< n_rel``); 5 the rule's score;
        6 ``l``; 7 ``r`` (raw ids, as the official)."""
        planes = np.zeros((NUM_PLANES, self.width, self.width), dtype=np.float32)
        per_position: dict[int, dict[int, int]] = {}
        for path in self.paths.values():
            for j, (left, right) in enumerate(zip(path[:-1], path[1:], strict=False)):
                counts = per_position.setdefault(left * self.width + right, {})
                counts[j] = counts.get(j, 0) + 1
        for key, counts in per_position.items():
            left, right = divmod(key, self.width)
            best = max(counts.values())
            planes[0, left, right] = sum(counts.values())
            planes[1, left, right] = best
            planes[2, left, right] = min(j for j, c in counts.items() if c == best)
            if key in rules:
                planes[3, left, right] = 1
                planes[4, left, right] = float(rules[key] < n_rel)
            planes[5, left, right] = rules_score.get(key, 0.0)
            planes[6, left, right], planes[7, left, right] = left, right
        return planes


# ---------------------------------------------------------------------------------------------- the policy-value network
class R5PolicyValueNet(nn.Module):
    """The policy-value network over the pair grid (official ``policy_value_net.Net``).

    ``forward(state (B, 8, W, W)) -> (log_probs (B, W*W), value (B, 1))``: log-probabilities of merging each pair and the
    value in [-1, 1]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        if width < 2:
            raise ValueError(f"width must be >= 2, got {width}")
        self.width = width
        self.conv1 = nn.Conv2d(NUM_PLANES, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(32, 128, kernel_size=3, padding=1)
        self.act_conv1 = nn.Conv2d(128, 4, kernel_size=1)
        self.act_fc1 = nn.Linear(4 * width * width, width * width)
        self.val_conv1 = nn.Conv2d(128, 2, kernel_size=1)
        self.val_fc1 = nn.Linear(2 * width * width, 32)
        self.val_fc2 = nn.Linear(32, 1)

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(state))))))
        act = F.relu(self.act_conv1(x)).flatten(1)
        log_probs = F.log_softmax(self.act_fc1(act), dim=1)
        val = F.relu(self.val_conv1(x)).flatten(1)
        value = torch.tanh(self.val_fc2(F.relu(self.val_fc1(val))))
        return log_probs, value


PolicyFn = Callable[[RelationPathState, dict[int, int], dict[int, float]], tuple[Iterable[tuple[int, float]], float]]


def network_policy(net: R5PolicyValueNet, n_rel: int) -> PolicyFn:
    """The MCTS's ``policy_value_fn``: the net's prior of each available move (not renormalised, as the official) and its
    value, for the state's planes under the MCTS's rule copy."""

    def policy(state: RelationPathState, rules: dict[int, int], rules_score: dict[int, float]) -> tuple[list[tuple[int, float]], float]:
        planes = torch.from_numpy(state.features(rules, rules_score, n_rel)).unsqueeze(0)
        device = next(net.parameters()).device
        with torch.no_grad():
            log_probs, value = net(planes.to(device))
        probs = log_probs[0].exp().cpu().numpy()
        return [(a, float(probs[a])) for a in state.availables], float(value[0, 0])

    return policy


# ----------------------------------------------------------------------------------------------------- the rule memory
@dataclass(frozen=True)
class RuleScoring:
    """The scores of ``start_deduction`` (defaults: official ``graphlog/train.py``)."""

    v0: float = 0.6  # the pair and its head are all real relations, and the rule was known
    v1: float = 0.3  # a known rule with a real head
    v2: float = -0.05  # an unseen pair of two real relations
    v3: float = -0.1  # a known rule (invented head)
    v4: float = -0.3  # anything else
    v_T_pos: float = 0.1  # added to every move of an episode whose prediction is right
    v_T_neg: float = -1.0  # every move of an episode that predicted a wrong real relation
    simple_true_score: float = 1.0  # extra for a right one-move episode
    wrong_allowance: float = 0.5  # added back for a wrong one-move episode
    episode_decay: float = 0.003
    bad_rule_thres: float = -1.2


class RuleMemory:
    """Rules ``(l, r) -> head`` keyed ``l * width + r``, with scores (official ``Deduction.rules`` / ``rules_score``).

    Relation ids below ``n_rel`` are real (0 is UNK_REL), ``n_rel .. width - 1`` invented."""

    def __init__(self, width: int, n_rel: int, scoring: RuleScoring | None = None) -> None:
        if not 1 <= n_rel < width:
            raise ValueError(f"need 1 <= n_rel < width, got n_rel={n_rel}, width={width}")
        self.width, self.n_rel = width, n_rel
        self.scoring = scoring or RuleScoring()
        self.rules: dict[int, int] = {}
        self.scores: dict[int, float] = {}

    def copy(self) -> RuleMemory:
        """A deep copy of the rules and scores (what the MCTS searches with during one episode)."""
        new = RuleMemory(self.width, self.n_rel, self.scoring)
        new.rules, new.scores = dict(self.rules), dict(self.scores)
        return new

    def pair(self, key: int) -> tuple[int, int]:
        return divmod(key, self.width)

    def is_invented(self, relation: int) -> bool:
        return relation >= self.n_rel

    # -- removal
    def rm_rule(self, move: int) -> None:
        """Remove a rule; if its head was invented, recursively remove every rule using that predicate in its body."""
        if move not in self.rules:
            return
        head = self.rules.pop(move)
        if self.is_invented(head):
            for key in list(self.rules):
                if key in self.rules and head in self.pair(key):
                    self.rm_rule(key)

    def del_inves(self, inves: int) -> None:
        """Free the invented predicate ``inves``: remove every rule whose head it is."""
        for key in list(self.rules):
            if self.rules.get(key) == inves:
                self.rm_rule(key)

    # -- backtrack rewriting
    def update_investigate(self, investigate: int, target: int) -> None:
        """Rewrite the rules whose body uses ``investigate``: the predicate becomes ``target`` in the body; the rewritten
        rule replaces one already there only when that one's head is invented, else the old rule is just dropped."""
        before = set(self.rules)  # the official tests `key not in actions` against the keys before this loop
        for action in list(self.rules):
            left, right = self.pair(action)
            if left == investigate and right == investigate:
                key = target * self.width + target
            elif left == investigate:
                key = target * self.width + right
            elif right == investigate:
                key = left * self.width + target
            else:
                continue
            head = self.rules.pop(action)
            if key not in before or self.is_invented(self.rules[key]):
                self.rules[key] = head

    def update_rules(self, move: int, target: int) -> None:
        """Backtrack rewriting of the rule ``move`` towards the relation ``target`` (official ``update_rules``): an invented
        head is rewritten to ``target`` everywhere (rules with that head get ``target`` and score 0; bodies using it are
        rewritten by :meth:`update_investigate`); a wrong *real* head is replaced (score reset to 0) only when its score
        is negative."""
        if move not in self.rules:  # the official raises KeyError here; it cannot happen in an episode's own moves
            return
        investigate = int(self.rules[move])
        if not self.is_invented(investigate):
            if move in self.scores and self.rules[move] != target and self.scores[move] < 0:
                self.rules[move] = target
                self.scores[move] = 0.0
            return
        self.rules[move] = target
        for key in list(self.rules):
            if self.rules.get(key) == investigate:
                self.rules[key] = target
                self.scores[key] = 0.0
        self.update_investigate(investigate, target)

    # -- scoring
    def score_episode(
        self,
        moves: Sequence[int],
        known: Sequence[bool],
        real_head: Sequence[bool],
        ground: Sequence[bool],
        potential: Sequence[bool],
        prediction: int,
        target: int,
    ) -> np.ndarray:
        """Score an episode's moves and return its value targets ``z`` (official end of ``start_deduction``).

        Per move: ``v4``; ``v3`` if the pair was in the memory; ``v1`` if its head was real; ``v0`` if body and head were
        all real; ``v2`` if it was unseen with two real body relations (later rules win). Then, if ``prediction ==
        target``: ``+ v_T_pos`` (``+ simple_true_score`` for one move), ``z = 1``; elif the prediction is a wrong real
        relation: ``= v_T_neg`` (``+ wrong_allowance`` for one move), ``z = -1``; else ``z = -0.02``. Scores accumulate
        per rule; the decay and rounding run twice (as the official); rules below ``bad_rule_thres`` are removed."""
        s = self.scoring
        n = len(moves)
        z = np.full(n, -0.02)
        scores = np.full(n, s.v4)
        scores[np.asarray(known, dtype=bool)] = s.v3
        scores[np.asarray(real_head, dtype=bool)] = s.v1
        scores[np.asarray(ground, dtype=bool)] = s.v0
        scores[np.asarray(potential, dtype=bool)] = s.v2
        if prediction == target:
            scores += s.v_T_pos + (s.simple_true_score if n == 1 else 0.0)
            z[:] = 1
        elif not self.is_invented(prediction):
            scores[:] = s.v_T_neg + (s.wrong_allowance if n == 1 else 0.0)
            z[:] = -1
        for move, value in zip(moves, scores, strict=True):
            self.scores[move] = self.scores.get(move, 0.0) + float(value)
        for _ in range(2):  # the official start_deduction has this loop twice
            self.decay()
        for key in list(self.scores):
            if self.scores[key] < s.bad_rule_thres:
                self.rm_rule(key)
                del self.scores[key]
        return z

    def decay(self) -> None:
        """Scores of rules no longer in the memory are dropped; positive ones shrink by ``(1 - decay)``, negative ones
        grow by ``(1 + decay)``; all are rounded to 4 places."""
        d = self.scoring.episode_decay
        for key in list(self.scores):
            if key not in self.rules:
                del self.scores[key]
                continue
            value = self.scores[key]
            if value > 0:
                value *= 1 - d
            elif value < 0:
                value *= 1 + d
            self.scores[key] = round(value, 4)

    # -- reading
    def confident_rules(self) -> set[tuple[int, int, int]]:
        """``(left, right, head)`` of the rules with a positive score whose body and head are all real relations."""
        found = set()
        for key, head in self.rules.items():
            left, right = self.pair(key)
            if self.scores.get(key, 0.0) > 0 and max(left, right, head) < self.n_rel and min(left, right, head) >= 1:
                found.add((left, right, head))
        return found

    def name(self, relation: int, relation_names: Sequence[str] | None) -> str:
        if self.is_invented(relation):
            return f"inv_{relation - self.n_rel}"
        return relation_names[relation] if relation_names is not None else str(relation)

    def to_text(self, relation_names: Sequence[str] | None = None) -> str:
        """One rule per line, ``left, right -> head  score``, by descending score then key; invented predicates are
        ``inv_<k>`` (id ``n_rel + k``); a rule without a score (a body rewritten this episode) shows 0."""
        lines = []
        for key in sorted(self.rules, key=lambda k: (-self.scores.get(k, 0.0), k)):
            left, right = self.pair(key)
            names = [self.name(r, relation_names) for r in (left, right, self.rules[key])]
            lines.append(f"{names[0]}, {names[1]} -> {names[2]}  {self.scores.get(key, 0.0):.4f}")
        return "\n".join(lines) + ("\n" if lines else "")

    def state_dict(self) -> dict[str, list]:
        """Plain lists (loadable with ``torch.load(weights_only=True)``)."""
        return {"rules": [[k, v] for k, v in self.rules.items()], "scores": [[k, v] for k, v in self.scores.items()]}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.rules = {int(k): int(v) for k, v in state["rules"]}
        self.scores = {int(k): float(v) for k, v in state["scores"]}


# ----------------------------------------------------------------------------------------------------------- the search
class TreeNode:
    """A node of the search tree: visit count ``N``, mean value ``Q``, prior ``P`` (AlphaZero-Gomoku's ``TreeNode``)."""

    def __init__(self, parent: TreeNode | None, prior: float) -> None:
        self.parent = parent
        self.children: dict[int, TreeNode] = {}
        self.n_visits, self.Q, self.P = 0, 0.0, prior

    def expand(self, action_priors: Iterable[tuple[int, float]]) -> None:
        for action, prior in action_priors:
            if action not in self.children:
                self.children[action] = TreeNode(self, prior)

    def value(self, c_puct: float) -> float:
        """``Q + c_puct P sqrt(N_parent) / (1 + N)``."""
        return self.Q + c_puct * self.P * math.sqrt(self.parent.n_visits) / (1 + self.n_visits)

    def select(self, c_puct: float) -> tuple[int, TreeNode]:
        """The child with the largest ``Q + u`` (the first one on ties, as ``max``)."""
        return max(self.children.items(), key=lambda item: item[1].value(c_puct))

    def update(self, leaf_value: float) -> None:
        self.n_visits += 1
        self.Q += (leaf_value - self.Q) / self.n_visits

    def update_recursive(self, leaf_value: float) -> None:
        """Update this node with ``leaf_value`` and its ancestors with alternating signs (the two-player convention)."""
        if self.parent is not None:
            self.parent.update_recursive(-leaf_value)
        self.update(leaf_value)

    def is_leaf(self) -> bool:
        return not self.children


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


class MCTS:
    """PUCT search over merge moves with its own copy of the rule memory (official ``mcts.MCTS`` + ``MCTSAgent``).

    Args:
        policy: ``(state, rules, rules_score) -> (iterable of (move, prior), value)``.
        memory: the rule copy the search reads and, in training, records invented predicates into.
        c_puct: exploration weight.
        n_playout: playouts per move.
        rng: numpy generator for new predicates and the move draws.
        py_rng: ``random.Random`` for the eviction's random predicate.
    """

    def __init__(
        self, policy: PolicyFn, memory: RuleMemory, c_puct: float, n_playout: int, rng: np.random.Generator, py_rng: random.Random
    ) -> None:
        self.policy, self.memory, self.c_puct, self.n_playout = policy, memory, c_puct, n_playout
        self.rng, self.py_rng = rng, py_rng
        self.root = TreeNode(None, 1.0)

    def get_pred(self, move: int, in_eval: bool = False) -> int:
        """The head the search uses for ``move``: the copy's rule; else 0 in evaluation (the playout stops); else a free
        invented predicate drawn at random and recorded in the copy. With none free: if there are no scores or the two
        worst are not negative, a random invented predicate is freed; else every rule scoring at most the second worst
        is removed (with its score); then try again."""
        rules = self.memory.rules
        if move in rules:
            return rules[move]
        if in_eval:
            return 0
        free = sorted(set(range(self.memory.n_rel, self.memory.width)) - set(rules.values()))
        if free:
            pred = int(self.rng.choice(free))
            rules[move] = pred
            return pred
        scores = self.memory.scores
        worst = sorted(scores.values())[:2]
        if len(scores) < 1 or max(worst) >= 0:
            self.memory.del_inves(self.py_rng.choice(range(self.memory.n_rel, self.memory.width)))
            return self.get_pred(move)
        for key in list(scores):
            if scores[key] <= max(worst):
                self.memory.rm_rule(key)
                scores.pop(key, None)
        return self.get_pred(move)

    def playout(self, state: RelationPathState, in_eval: bool = False) -> None:
        """Walk down by ``Q + u``, expand the leaf with the policy (or value a finished episode ``1 / rule_len``) and back
        the value up with ``update_recursive(-value)``. An action no longer available ends the walk at its parent; in
        evaluation an unknown pair ends the playout with no update."""
        node = self.root
        while not node.is_leaf():
            action, child = node.select(self.c_puct)
            if action not in state.action_dict:
                break  # `node` (the parent) is the leaf
            pred = self.get_pred(action, in_eval)
            if pred == 0:
                return
            state.do_move(action, pred)
            node = child
        end, rule_len = state.is_end()
        if not end:
            priors, leaf_value = self.policy(state, self.memory.rules, self.memory.scores)
            node.expand(priors)
            for action in set(node.children) - set(state.availables):
                del node.children[action]
        else:
            leaf_value = 1.0 / rule_len
        node.update_recursive(-leaf_value)

    def move_probs(self, state: RelationPathState, temp: float, in_eval: bool = False) -> tuple[list[int], np.ndarray]:
        """``n_playout`` playouts on copies of ``state``; the root's moves and ``softmax(log(N + 1e-10) / temp)``."""
        for _ in range(self.n_playout):
            self.playout(state.copy(), in_eval)
        acts = list(self.root.children)
        visits = np.array([self.root.children[a].n_visits for a in acts], dtype=np.float64)
        return acts, softmax(np.log(visits + 1e-10) / temp)

    def update_with_move(self, move: int) -> None:
        """Reuse the subtree of ``move`` as the new root (a fresh root for -1 or an unexplored move)."""
        if move in self.root.children:
            self.root = self.root.children[move]
            self.root.parent = None
        else:
            self.root = TreeNode(None, 1.0)

    def get_action(self, state: RelationPathState, temp: float = 1e-3, in_eval: bool = False) -> tuple[int, np.ndarray]:
        """The move and the full ``width**2`` pi vector. Training: drawn from ``0.9 pi + 0.1 Dirichlet(0.3)``, tree reused;
        evaluation: drawn from pi, tree reset."""
        pi = np.zeros(state.width * state.width)
        acts, probs = self.move_probs(state, temp, in_eval)
        pi[acts] = probs
        if not in_eval:
            noisy = 0.9 * probs + 0.1 * self.rng.dirichlet(0.3 * np.ones(len(probs)))
            move = int(self.rng.choice(acts, p=noisy / noisy.sum()))
            self.update_with_move(move)
        else:
            move = int(self.rng.choice(acts, p=probs))
            self.update_with_move(-1)
        return move, pi


# ---------------------------------------------------------------------------------------------------------- the episode
@dataclass
class Episode:
    """What a training episode leaves: (planes, pi, z) per move, the moves, and the final prediction."""

    data: list[tuple[np.ndarray, np.ndarray, float]]
    moves: list[int]
    prediction: int


def train_episode(query: PathQuery, memory: RuleMemory, mcts: MCTS, rng: np.random.Generator, temp: float = 1.0) -> Episode:
    """One training deduction (official ``Deduction.start_deduction``): MCTS moves until a path has one relation, the
    memory bookkeeping after each move, backtrack rewriting towards the target at the end, and the episode's scoring."""
    state = RelationPathState(query.paths, memory.width, rng)
    if state.is_end()[0]:
        raise ValueError(f"query {query} has a one-relation path: nothing to merge")
    mcts.memory = memory.copy()  # the search's own rule copy for this episode
    mcts.update_with_move(-1)
    n_rel = memory.n_rel
    planes, pis, moves, known, real_head, ground, potential = [], [], [], [], [], [], []
    while True:
        move, pi = mcts.get_action(state.copy(), temp=temp)
        rules = memory.rules
        left, right = memory.pair(move)
        planes.append(state.features(mcts.memory.rules, memory.scores, n_rel))
        pis.append(pi)
        known.append(move in rules)
        real_head.append(move in rules and rules[move] < n_rel)
        ground.append(move in rules and rules[move] < n_rel and left < n_rel and right < n_rel)
        potential.append(move not in rules and left < n_rel and right < n_rel)
        moves.append(move)
        if move in mcts.memory.rules:
            predicate = mcts.memory.rules[move]
        elif move in rules:
            predicate = rules[move]
        else:
            predicate = mcts.get_pred(move)
        state.do_move(move, predicate)
        if move not in rules:
            inves = mcts.memory.rules[move]
            if memory.is_invented(inves) and inves in rules.values():
                memory.del_inves(inves)  # the predicate is taken for this new pair: its previous uses go
            rules[move] = inves
        elif rules[move] != predicate and memory.is_invented(rules[move]):
            memory.update_rules(move, predicate)
        end, _ = state.is_end()
        if end:
            prediction = mcts.memory.rules[move]  # the search copy's head, read before the rewriting below (official)
            memory.update_rules(move, query.target)
            z = memory.score_episode(moves, known, real_head, ground, potential, prediction, query.target)
            mcts.update_with_move(-1)
            return Episode([(p, q, float(v)) for p, q, v in zip(planes, pis, z, strict=True)], moves, prediction)


def eval_episode(query: PathQuery, memory: RuleMemory, mcts: MCTS) -> int:
    """One evaluation deduction (official ``start_eval_deduction``) over ``mcts.memory``: moves drawn from pi at
    temperature 1e-3 with a fresh tree each; a pair without a rule ends it with prediction 0. Returns the last rule's head,
    or 0; the caller counts 0 and invented heads as wrong."""
    state = RelationPathState(query.paths, memory.width, mcts.rng)
    if state.is_end()[0]:
        return 0
    while True:
        move, _ = mcts.get_action(state, temp=1e-3, in_eval=True)
        if move not in mcts.memory.rules:
            return 0
        state.do_move(move, mcts.memory.rules[move])
        if state.is_end()[0]:
            return mcts.memory.rules[move]


def symmetry_augment(data: Sequence[tuple[np.ndarray, np.ndarray, float]], width: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The official 8-fold ``get_equi_data`` (rot90 by 1..4 quarter turns, each also flipped left-right; pi flipped
    vertically as AlphaZero-Gomoku stored its planes): kept for fidelity, see the module docstring."""
    out = []
    for planes, pi, z in data:
        grid = pi.reshape(width, width)
        for i in (1, 2, 3, 4):
            s = np.rot90(planes, i, axes=(1, 2))
            p = np.rot90(np.flipud(grid), i)
            out.append((np.ascontiguousarray(s), np.flipud(p).flatten(), z))
            s = s[:, :, ::-1]
            p = np.fliplr(p)
            out.append((np.ascontiguousarray(s), np.flipud(p).flatten(), z))
    return out


def policy_loss(net: R5PolicyValueNet, states: Tensor, pis: Tensor, zs: Tensor) -> tuple[Tensor, Tensor]:
    """``MSE(v, z) - mean sum pi log p`` and the policy entropy (official ``train_step``)."""
    log_probs, value = net(states)
    loss = F.mse_loss(value.view(-1), zs) - (pis * log_probs).sum(1).mean()
    entropy = -(log_probs.exp() * log_probs).sum(1).mean()
    return loss, entropy


def policy_update(
    net: R5PolicyValueNet,
    optimizer: Any,
    states: Tensor,
    pis: Tensor,
    zs: Tensor,
    learning_rate: float,
    lr_multiplier: float,
    kl_targ: float,
    steps: int,
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> tuple[float, float, float, float, int]:
    """Official ``Trainer.policy_update``: up to ``steps`` optimiser steps at ``learning_rate * lr_multiplier`` on one
    replay batch, stopped early once ``KL(old || new) > 4 kl_targ``; then the multiplier is divided by 1.5 if ``KL > 2
    kl_targ`` (and it is > 0.1), multiplied by 1.5 if ``KL < kl_targ / 2`` (and it is < 10). Returns the last step's loss
    (computed before that step) and entropy, the KL, the new multiplier and the number of steps taken."""
    net.train()
    with torch.no_grad():
        old_probs = net(states)[0].exp()
    kl, taken = 0.0, 0
    for _ in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * lr_multiplier
        optimizer.zero_grad()
        loss, entropy = policy_loss(net, states, pis, zs)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"R5 policy update: non-finite loss {loss.item()}")
        backward(loss)
        optimizer.step()
        taken += 1
        with torch.no_grad():
            new_probs = net(states)[0].exp()
        kl = float((old_probs * (torch.log(old_probs + 1e-10) - torch.log(new_probs + 1e-10))).sum(1).mean())
        if kl > kl_targ * 4:
            break
    if kl > kl_targ * 2 and lr_multiplier > 0.1:
        lr_multiplier /= 1.5
    elif kl < kl_targ / 2 and lr_multiplier < 10:
        lr_multiplier *= 1.5
    net.eval()
    return float(loss.detach()), float(entropy.detach()), kl, lr_multiplier, taken


# ------------------------------------------------------------------------------------------------------ the Lightning module
class R5Module(L.LightningModule):
    """R5 on a relation-path DataModule (``litzoo.datamodules.relation_paths``): batches are lists of :class:`PathQuery`.

    ``training_step`` runs one MCTS episode per query and, when due, the policy update (manual optimisation); validation and
    test run evaluation deductions and log ``acc`` (test also ``acc_len_<k>`` per path length and, when the DataModule
    has ``planted_rules``, ``rule_recall`` / ``rule_precision`` of the confident rules). The rule memory, the generators,
    the lr multiplier and the episode counter are in checkpoints; the mined rules are written to ``r5_rules.txt`` next to
    the checkpoints at the end of fit and logged to TensorBoard as text.

    Args:
        n_unkn: number of invented-predicate slots (official 50).
        n_rel: number of real relation ids including UNK 0; ``None`` reads the DataModule's ``num_relations``.
        n_playout: playouts per move (official 200).
        c_puct: PUCT exploration weight (official 10).
        temp: temperature of the training move distribution (official 1.0).
        learning_rate: Adam's base learning rate (official 0.01), times the adaptive ``lr_multiplier``.
        lr_multiplier: its initial value (official 1.0).
        kl_targ: KL target of the update's early stop and multiplier adaptation (official 0.02).
        buffer_size: replay buffer length (official 5000).
        replay_batch_size: replay samples per update (official ``batch_size`` 64; renamed, the DataModule's ``batch_size``
            is the number of queries per training step).
        update_freq: an update runs on episodes ``j`` of an epoch with ``j % update_freq == 0`` (official 16).
        updates_per_step: gradient steps per update (the official reuses ``epochs``, 10).
        weight_decay: Adam's weight decay (official 1e-4).
        episode_decay, simple_true_score, wrong_allowance, v0, v1, v2, v3, v4, v_T_pos, v_T_neg, bad_rule_thres: rule
            scoring (:class:`RuleScoring`, official defaults).
        symmetry_augmentation: the official 8-fold rot90/flip augmentation of the replay data.
        search_seed: seeds every generator of the module and the network's initialisation (not ``seed``: the
            DataModule's ``seed`` is a hyper-parameter of the same run, and Lightning refuses two different values).
    """

    def __init__(
        self,
        n_unkn: int = 50,
        n_rel: int | None = None,
        n_playout: int = 200,
        c_puct: float = 10.0,
        temp: float = 1.0,
        learning_rate: float = 0.01,
        lr_multiplier: float = 1.0,
        kl_targ: float = 0.02,
        buffer_size: int = 5000,
        replay_batch_size: int = 64,
        update_freq: int = 16,
        updates_per_step: int = 10,
        weight_decay: float = 1e-4,
        episode_decay: float = 0.003,
        simple_true_score: float = 1.0,
        wrong_allowance: float = 0.5,
        v0: float = 0.6,
        v1: float = 0.3,
        v2: float = -0.05,
        v3: float = -0.1,
        v4: float = -0.3,
        v_T_pos: float = 0.1,
        v_T_neg: float = -1.0,
        bad_rule_thres: float = -1.2,
        symmetry_augmentation: bool = True,
        search_seed: int = 0,
    ) -> None:
        super().__init__()
        if n_unkn < 1:
            raise ValueError(f"n_unkn must be >= 1 (new pairs need invented predicates), got {n_unkn}")
        if n_rel is not None and n_rel < 2:
            raise ValueError(f"n_rel must be >= 2 (UNK_REL and one real relation), got {n_rel}")
        if min(n_playout, buffer_size, replay_batch_size, update_freq, updates_per_step) < 1:
            raise ValueError("n_playout, buffer_size, replay_batch_size, update_freq and updates_per_step must be >= 1")
        if c_puct <= 0 or temp <= 0 or learning_rate <= 0 or lr_multiplier <= 0 or kl_targ <= 0 or weight_decay < 0:
            raise ValueError("c_puct, temp, learning_rate, lr_multiplier and kl_targ must be > 0 and weight_decay >= 0")
        if not 0 <= episode_decay < 1:
            raise ValueError(f"episode_decay must lie in [0, 1), got {episode_decay}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.scoring = RuleScoring(v0, v1, v2, v3, v4, v_T_pos, v_T_neg, simple_true_score, wrong_allowance, episode_decay, bad_rule_thres)
        self.rng = np.random.default_rng(search_seed)
        self.py_rng = random.Random(search_seed)
        self.lr_multiplier = lr_multiplier
        self.episode_in_epoch = 0
        self.episodes = 0
        self.buffer: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=buffer_size)
        self.net: R5PolicyValueNet | None = None
        self.memory: RuleMemory | None = None
        self.mcts: MCTS | None = None
        self._eval: dict[int, list[int]] = {}
        if n_rel is not None:
            self.build(n_rel)

    # ------------------------------------------------------------------ building
    def build(self, num_relations: int) -> None:
        """The network, the rule memory and the search for ``n_rel = num_relations``."""
        self.hparams["n_rel"] = num_relations  # so that a checkpoint rebuilds the network in __init__
        width = num_relations + self.hparams.n_unkn
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hparams.search_seed)
            self.net = R5PolicyValueNet(width)
        self.memory = RuleMemory(width, num_relations, self.scoring)
        self.mcts = MCTS(
            network_policy(self.net, num_relations), self.memory.copy(), self.hparams.c_puct, self.hparams.n_playout, self.rng, self.py_rng
        )
        self.example_input_array = torch.zeros(1, NUM_PLANES, width, width)

    def setup(self, stage: str | None = None) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            # each rank would grow its own rule memory from its own episodes, and nothing merges memories
            raise ValueError(f"R5Module runs on one process (its rule memory is not shared across ranks); got world_size={self.trainer.world_size}")
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        found = getattr(datamodule, "num_relations", None)
        if self.net is None:
            if found is None:
                raise ValueError("R5Module needs n_rel, or a DataModule with a num_relations attribute")
            self.build(int(found))
        elif found is not None and int(found) != self.memory.n_rel:
            raise ValueError(f"R5Module was built for {self.memory.n_rel} relations, the DataModule has {found}")

    @property
    def width(self) -> int:
        return self.memory.width

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """``(log_probs (B, W*W), value (B, 1))`` of ``(B, 8, W, W)`` planes."""
        return self.net(state)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Adam with L2 weight decay (official PolicyValueNet); the learning rate is set at every update
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        self.buffer.clear()  # official Trainer.run clears the buffer at every epoch
        self.episode_in_epoch = 0

    def training_step(self, batch: list[PathQuery], batch_idx: int) -> None:
        correct = skipped = 0
        for query in batch:
            if min(len(p) for p in query.paths) < 2:  # the relation is on an edge: nothing to merge (the official divides by 0)
                skipped += 1
                continue
            self.net.eval()  # the search reads the net; it has no dropout or normalisation, so this only documents intent
            episode = train_episode(query, self.memory, self.mcts, self.rng, self.hparams.temp)
            correct += int(episode.prediction == query.target)
            data = episode.data
            self.buffer.extend(symmetry_augment(data, self.width) if self.hparams.symmetry_augmentation else data)
            if len(self.buffer) > self.hparams.replay_batch_size and self.episode_in_epoch % self.hparams.update_freq == 0:
                loss, entropy, kl = self.policy_update()
                self.log_dict({"train/loss": loss, "train/entropy": entropy, "train/kl": kl, "train/lr_multiplier": self.lr_multiplier})
            self.episode_in_epoch += 1
            self.episodes += 1
        n = len(batch)
        self.log("train/episode_acc", correct / n, batch_size=n, prog_bar=True)
        self.log("train/buffer_size", float(len(self.buffer)), batch_size=n)
        self.log("train/num_rules", float(len(self.memory.rules)), batch_size=n)
        if skipped:
            self.log("train/skipped_one_relation_queries", float(skipped), batch_size=n, reduce_fx="sum")

    def policy_update(self) -> tuple[float, float, float]:
        """One official ``policy_update`` on a replay sample of ``replay_batch_size`` (:func:`policy_update`)."""
        hp = self.hparams
        sample = self.py_rng.sample(list(self.buffer), hp.replay_batch_size)
        states = torch.from_numpy(np.stack([s for s, _, _ in sample])).float().to(self.device)
        pis = torch.from_numpy(np.stack([p for _, p, _ in sample])).float().to(self.device)
        zs = torch.tensor([z for _, _, z in sample], dtype=torch.float32, device=self.device)
        loss, entropy, kl, self.lr_multiplier, _ = policy_update(
            self.net, self.optimizers(), states, pis, zs, hp.learning_rate, self.lr_multiplier, hp.kl_targ, hp.updates_per_step,
            backward=self.manual_backward,
        )  # fmt: skip
        return loss, entropy, kl

    # ------------------------------------------------------------------ evaluation
    def _start_eval(self) -> None:
        # a generator of its own per epoch, so that evaluating does not change the training draws
        rng = np.random.default_rng([self.hparams.search_seed, 1, self.current_epoch])
        self._eval_mcts = MCTS(
            network_policy(self.net, self.memory.n_rel),
            self.memory.copy(),
            self.hparams.c_puct,
            self.hparams.n_playout,
            rng,
            random.Random(0),
        )
        self._eval = {}

    def predict_query(self, query: PathQuery) -> int:
        """The evaluation prediction of one query (0 when R5 cannot reason to a real relation)."""
        self.net.eval()
        prediction = eval_episode(query, self.memory, self._eval_mcts)
        return prediction if 0 < prediction < self.memory.n_rel else 0

    def _eval_step(self, batch: list[PathQuery]) -> None:
        for query in batch:
            self._eval.setdefault(query.length, []).append(int(self.predict_query(query) == query.target))

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: list[PathQuery], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: list[PathQuery], batch_idx: int) -> None:
        self._eval_step(batch)

    def rule_metrics(self) -> dict[str, float] | None:
        """``rule_recall`` / ``rule_precision`` of the confident rules against the DataModule's ``planted_rules``."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        planted = getattr(datamodule, "planted_rules", None)
        if planted is None:
            return None
        return rule_recall_precision(self.memory.confident_rules(), planted)

    def _end_eval(self, split: str) -> None:
        results = [c for values in self._eval.values() for c in values]
        if not results:
            return
        metrics = {f"{split}/acc": sum(results) / len(results), f"{split}/num_rules": float(len(self.memory.rules))}
        if split == "test":
            metrics.update({f"test/acc_len_{k}": sum(v) / len(v) for k, v in sorted(self._eval.items())})
        rules = self.rule_metrics()
        if rules is not None:
            metrics.update({f"{split}/{k}": v for k, v in rules.items()})
        self.log_dict(metrics, prog_bar=split == "val")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    # ------------------------------------------------------------------ state and outputs
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["r5"] = {
            "memory": self.memory.state_dict(),
            "lr_multiplier": float(self.lr_multiplier),
            "episode_in_epoch": int(self.episode_in_epoch),
            "episodes": int(self.episodes),
            "rng": self.rng.bit_generator.state,
            "py_rng": self.py_rng.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["r5"]
        if self.memory is None:
            self.build(int(checkpoint["hyper_parameters"]["n_rel"]))
        self.memory.load_state_dict(state["memory"])
        self.lr_multiplier = float(state["lr_multiplier"])
        self.episode_in_epoch, self.episodes = int(state["episode_in_epoch"]), int(state["episodes"])
        self.rng.bit_generator.state = state["rng"]
        version, internal, gauss = state["py_rng"]
        self.py_rng.setstate((version, tuple(internal), gauss))

    def rules_text(self) -> str:
        names = getattr(self.trainer.datamodule, "relation_names", None) if self._trainer is not None else None
        return self.memory.to_text(names)

    def on_fit_end(self) -> None:
        if self.trainer.fast_dev_run or not self.trainer.is_global_zero:
            return
        text = self.rules_text()
        callback = self.trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) if callback is not None else None
        if folder is None and self.trainer.loggers:
            folder = self.trainer.log_dir
        if folder is None:  # no checkpoints and no logger: nothing is written (a benchmark, a Python caller)
            return
        path = Path(folder) / "r5_rules.txt"
        with write_files_atomically(path) as (staged,):
            staged.write_text(text, encoding="utf-8")
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("r5/rules", "  \n".join(text.splitlines()) or "(no rules)", self.global_step)


def rule_recall_precision(found: Iterable[tuple[int, int, int]], planted: Iterable[Sequence[int]]) -> dict[str, float]:
    """Recall = share of the planted ``(left, right, head)`` rules found; precision = share of the found rules planted
    (0 when nothing was found)."""
    found_set = {tuple(int(x) for x in r) for r in found}
    planted_set = {tuple(int(x) for x in r) for r in planted}
    hits = len(found_set & planted_set)
    return {
        "rule_recall": hits / len(planted_set) if planted_set else 0.0,
        "rule_precision": hits / len(found_set) if found_set else 0.0,
    }
