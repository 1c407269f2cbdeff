"""A contextual-bandit knowledge selector (gamma = 0), sized to the 50-200 transitions stage 1 gives.

Issue #15 measured why the DDPG selector cannot learn: the unpaired per-phase reward has a
signal-to-noise ratio of about 0.3 and the critic sees 12-48 transitions. This selector
learns from the paired reward instead: at a phase boundary the loop forks the training
state and runs K weightings on the same batches and dropout seeds; each branch's reward is
its reward-set loss drop minus the reference branch's, which cancels the shared progress
trend and batch noise. How the loop calls it, per stage-1 phase::

    weights = selector.decide(state)                  # the policy's action; training continues from it
    branches = selector.branch_weights(k)             # [weights, k-2 more Thompson draws, reference]
    drops = [run_phase_from_fork(w) for w in branches]  # same batches, same dropout seeds
    record = selector.observe_branches(state, [(w, d - drops[-1]) for w, d in zip(branches, drops)])

The unpaired form (``observe(PhaseOutcome)``, reward = the executed weighting's loss drop)
also works, and stage 2 (frozen) uses it only to record. Each branch is one transition of a
conjugate Bayesian linear model (:mod:`kdray.selection.bandit_model`) on a small standardised
state; decisions maximise a Thompson draw of it over a grid of weightings (soft) or over all
non-empty subsets (hard). Every decision's prediction of exactly its training target (in raw
loss units) is in the trace: ``PhaseRecord.q_value`` against ``PhaseRecord.reward``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from kdray.config import BanditConfig, SelectorConfig
from kdray.selection.bandit_model import Memory, Posterior, design, prior_mean
from kdray.selection.bandit_prior import FORMAT, learn_memory, own_rows, prior_learners, saved_file_learner
from kdray.selection.base import PhaseOutcome, PhaseRecord, PhaseState, Selector, read_state, register_selector
FEATURE_GROUPS: tuple[str, ...] = ("progress", "lr", "losses", "grad_norms", "cosines", "holdout", "prev_action")
MAX_CANDIDATES = 50_000  # soft grid size limit: levels ** len(pool)

# Keys of BanditState.features (what the loop measures at a phase boundary).
LR = "lr"  # current learning rate / peak learning rate
HOLDOUT_CE = "holdout_ce"  # reward-set loss at the decision
HOLDOUT_DELTA = "holdout_delta"  # its change over the phase that just ended (after - before)


def grad_norm_key(kind: str) -> str:
    """Feature key of a kind's gradient norm on the probe batch."""
    return f"grad_norm.{kind}"


def cosine_key(a: str, b: str) -> str:
    """Feature key of the cosine between two kinds' gradients (``a`` before ``b`` in pool order)."""
    return f"cosine.{a}.{b}"


@dataclass
class BanditState(PhaseState):
    """A :class:`PhaseState` plus the scalar measurements the bandit's state uses (keys above)."""

    features: dict[str, float] = field(default_factory=dict)


def feature_names(pool: list[str], groups: list[str]) -> list[str]:
    """Names of the state vector's entries, in order."""
    names: list[str] = []
    for group in FEATURE_GROUPS:
        if group not in groups:
            continue
        if group in ("progress", "lr"):
            names.append(group)
        elif group == "losses":
            names += [f"loss.{k}" for k in pool]
        elif group == "grad_norms":
            names += [grad_norm_key(k) for k in pool]
        elif group == "cosines":
            names += [cosine_key(a, b) for a, b in itertools.combinations(pool, 2)]
        elif group == "holdout":
            names += [HOLDOUT_CE, HOLDOUT_DELTA]
        else:
            names += [f"prev.{k}" for k in pool]
    return names


def raw_features(state: PhaseState, pool: list[str], groups: list[str], prev: list[float] | None) -> torch.Tensor:
    """The state vector (order of :func:`feature_names`) before standardisation: logs of losses and
    gradient norms, NaN where nothing was measured (the previous action at an episode start, kinds
    not computed in the last phase, features the loop does not supply)."""
    extra = state.features if isinstance(state, BanditState) else {}
    nan = math.nan
    values: list[float] = []
    for group in FEATURE_GROUPS:
        if group not in groups:
            continue
        if group == "progress":
            values.append(min(max(float(state.progress), 0.0), 1.0))
        elif group == "lr":
            values.append(float(extra.get(LR, nan)))
        elif group == "losses":
            losses = [state.losses.get(k) for k in pool]
            values += [nan if v is None else math.log1p(max(float(v), 0.0)) for v in losses]
        elif group == "grad_norms":
            norms = [extra.get(grad_norm_key(k)) for k in pool]
            values += [nan if v is None else math.log(max(float(v), 1e-12)) for v in norms]
        elif group == "cosines":
            values += [float(extra.get(cosine_key(a, b), nan)) for a, b in itertools.combinations(pool, 2)]
        elif group == "holdout":
            values += [float(extra.get(HOLDOUT_CE, nan)), float(extra.get(HOLDOUT_DELTA, nan))]
        else:
            values += [nan] * len(pool) if prev is None else [float(v) for v in prev]
    return torch.tensor([v if math.isfinite(v) else nan for v in values], dtype=torch.float64)


def candidate_actions(kinds: int, hard: bool, levels: int) -> torch.Tensor:
    """Every weighting the bandit may choose [N, K], ``all`` (every weight 1) first; never all-zero."""
    grid = [0.0, 1.0] if hard else torch.linspace(0.0, 1.0, levels, dtype=torch.float64).tolist()
    if len(grid) ** kinds > MAX_CANDIDATES:
        raise ValueError(f"bandit: {levels} levels for {kinds} kinds give {levels ** kinds} candidate weightings "
                         f"(limit {MAX_CANDIDATES}); lower selector.bandit.levels")
    combos = [c for c in itertools.product(reversed(grid), repeat=kinds) if any(v > 0 for v in c)]
    return torch.tensor(combos, dtype=torch.float64)


@register_selector("bandit")
class BanditSelector(Selector):
    """Thompson-sampling contextual bandit over knowledge weightings, learning from paired branch rewards."""

    needs_state = False  # no [CLS] vectors: issue #15 found them nearly constant across batches
    learns = True

    def __init__(self, pool: list[str], config: SelectorConfig, seed: int = 0,
                 bandit: BanditConfig | None = None) -> None:
        super().__init__(pool, config, seed)
        self.options = bandit if bandit is not None else (getattr(config, "bandit", None) or BanditConfig())
        self.hard = config.action == "hard"
        self.groups = list(self.options.features)
        self.names = feature_names(self.pool, self.groups)
        self.candidates = candidate_actions(len(self.pool), self.hard, self.options.levels)
        self.prior_mean = prior_mean(len(self.names), len(self.pool), not self.hard, self.options.pairwise,
                                     self.options.concavity)
        self.posterior = Posterior.prior(self.prior_mean, self.options.prior_precision)
        self.memory = Memory.empty(len(self.names), len(self.pool))
        self.stats = (torch.zeros(len(self.names), dtype=torch.float64), torch.ones(len(self.names), dtype=torch.float64))
        self.scale = self.options.init_reward_scale
        self.observed = 0  # phases learned from
        self.prior_phases = 0  # of them, those learned from other runs' memories (selector.init_from)
        self._prev_action: list[float] | None = None
        self._pending: dict[str, Any] | None = None

    # ------------------------------------------------------------------ model helpers

    def _standardise(self, raw: torch.Tensor) -> torch.Tensor:
        """(raw - mean) / std with the current statistics; missing values become the mean (0)."""
        x = (raw - self.stats[0]) / self.stats[1]
        return torch.nan_to_num(x, nan=0.0)

    def _rows(self, x: torch.Tensor, actions: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """Design rows for one standardised state and [m, K] actions, as differences when paired."""
        xs = x[None].expand(actions.shape[0], -1)
        rows = design(xs, actions, not self.hard, self.options.pairwise)
        if reference is not None:
            rows = rows - design(xs, reference[None].expand_as(actions), not self.hard, self.options.pairwise)
        return rows

    def _coefficients(self, explore: bool) -> torch.Tensor:
        """A Thompson draw while training (unless explore_scale is 0), else the posterior mean."""
        if explore and self.training and self.options.explore_scale > 0:
            return self.posterior.sample(1, self.generator, self.options.explore_scale)[0]
        return self.posterior.mean

    def _vector(self, weights: dict[str, float]) -> torch.Tensor:
        return torch.tensor([float(weights.get(k, 0.0)) for k in self.pool], dtype=torch.float64)

    def _weights(self, index: int) -> dict[str, float]:
        return {k: float(v) for k, v in zip(self.pool, self.candidates[index].tolist())}

    # ------------------------------------------------------------------ deciding

    def decide(self, state: PhaseState) -> dict[str, float]:
        """The weighting that maximises a Thompson draw (training) or the posterior mean (frozen)."""
        raw = raw_features(state, self.pool, self.groups, self._prev_action)
        rows = self._rows(self._standardise(raw), self.candidates, None)
        if self.training and self.options.explore == "variance":
            index = self._most_informative(rows, [], [])
        else:
            index = int(torch.argmax(rows @ self._coefficients(explore=True)))
        self._pending = {"raw": raw, "branches": [index], "reference": None}
        self.last_weights = self._weights(index)
        self._prev_action = self.candidates[index].tolist()
        return dict(self.last_weights)

    def branch_weights(self, k: int) -> list[dict[str, float]]:
        """The K weightings to run from the fork: the decided one, k-2 exploration branches, the reference last.

        Exploration branches are further Thompson draws, or (``explore_branches: variance``) the
        weightings whose advantage the model knows least, one after another as if the previous
        ones were already measured: stage-1 students are discarded, so side branches are spent
        on information. All branches are distinct; if the decided weighting is the configured
        reference, the reference becomes the best other weighting under the posterior mean.
        """
        if self._pending is None:
            raise RuntimeError("bandit: branch_weights() needs a decide() first")
        if not 2 <= k <= len(self.candidates):
            raise ValueError(f"bandit: need 2 <= branches <= {len(self.candidates)} candidate weightings, got {k}")
        rows = self._rows(self._standardise(self._pending["raw"]), self.candidates, None)
        chosen: list[int] = [self._pending["branches"][0]]
        if self.options.reference == "all" and chosen[0] != 0:
            reference = 0  # candidate_actions puts `all` first
        else:
            reference = _best_excluding(rows @ self.posterior.mean, chosen)
        for _ in range(k - 2):
            if self.options.explore_branches == "variance":
                chosen.append(self._most_informative(rows - rows[reference], chosen + [reference], chosen))
            else:
                chosen.append(_best_excluding(rows @ self._coefficients(explore=True), chosen + [reference]))
        self._pending.update(branches=chosen + [reference], reference=reference)
        return [self._weights(i) for i in chosen + [reference]]

    def _most_informative(self, rows: torch.Tensor, excluded: list[int], measured: list[int]) -> int:
        """Candidate with the largest posterior variance of its row, after hypothetically measuring ``measured``."""
        cov = self.posterior.cov_chol @ self.posterior.cov_chol.T
        for i in measured:  # Sherman-Morrison: the precision gains rows[i] rows[i]^T
            v = cov @ rows[i]
            cov = cov - torch.outer(v, v) / (1.0 + rows[i] @ v)
        variance = ((rows @ cov) * rows).sum(dim=1)
        return _best_excluding(variance, excluded)

    def predict(self, state: PhaseState, weights: dict[str, float],
                reference: dict[str, float] | None = None) -> float:
        """Posterior-mean prediction, in raw loss units, of the loss drop (or of its advantage over ``reference``)."""
        raw = raw_features(state, self.pool, self.groups, self._prev_action)
        return self._predict(raw, self._vector(weights)[None], None if reference is None else self._vector(reference))[0]

    def replay_phase(self, raw: torch.Tensor, actions: torch.Tensor, reference: torch.Tensor | None,
                     targets: torch.Tensor) -> list[float]:
        """Predict one recorded phase's rows, then learn from them: the prequential step of a live run.

        ``raw`` is the phase's raw state (:func:`raw_features` order), ``actions`` [m, K] its stored
        branches, ``reference`` their paired reference (None for unpaired rows), ``targets`` [m] the
        realised rewards. Returns the predictions made before learning (raw units), so replaying a
        saved memory in order reproduces the live run's ``branch{i}_predicted`` values exactly.
        """
        predicted = self._predict(raw, actions, reference)
        self._learn(raw, actions, reference, targets)
        return predicted

    def _predict(self, raw: torch.Tensor, actions: torch.Tensor, reference: torch.Tensor | None) -> list[float]:
        rows = self._rows(self._standardise(raw), actions, reference)
        return (self.scale * (rows @ self.posterior.mean)).tolist()

    # ------------------------------------------------------------------ learning

    def observe_branches(self, state: PhaseState, branches: list[tuple[dict[str, float], float]],
                         reference: dict[str, float] | None = None,
                         outcome: PhaseOutcome | None = None) -> PhaseRecord:
        """Learn from one phase's paired branches: each ``(weights, advantage over the reference)`` is a transition.

        The reference is ``reference`` if given, else the one :meth:`branch_weights` proposed. A branch
        equal to the reference carries no information and is not stored. The record's ``q_value`` is the
        prediction for the first branch (the decided one) made before this update, ``reward`` its
        realised advantage; ``extra`` holds the same pair for every branch.
        """
        pending = self._pending  # a pending decision's state is the one it was made on (saved across resumes)
        raw = pending["raw"] if pending is not None else raw_features(state, self.pool, self.groups, self._prev_action)
        if reference is not None:
            ref = self._vector(reference)
        elif pending is not None and pending["reference"] is not None:
            ref = self.candidates[pending["reference"]]
        else:
            raise ValueError("bandit: observe_branches() needs the reference weights (or a branch_weights() call)")
        actions = torch.stack([self._vector(w) for w, _ in branches])
        targets = torch.tensor([float(a) for _, a in branches], dtype=torch.float64)
        if not torch.isfinite(targets).all():
            raise ValueError(f"bandit: branch advantages must be finite, got {targets.tolist()}")
        predicted = self._predict(raw, actions, ref)
        extra: dict[str, float] = {"reward_scale": self.scale, "transitions": float(len(self.memory))}
        for i, (p, t) in enumerate(zip(predicted, targets.tolist())):
            extra.update({f"branch{i}_predicted": p, f"branch{i}_realised": t})
        informative = ~(actions == ref).all(dim=1)
        if self.training and bool(informative.any()):
            self._learn(raw, actions[informative], ref, targets[informative])
        step = outcome.next_state.step if outcome is not None else state.step
        after = outcome.reward_set_loss_after if outcome is not None else math.nan
        return self._record(step, branches[0][0], float(targets[0]), predicted[0], after, extra)

    @property
    def reads_reward_set(self) -> bool:
        """The ``holdout`` feature group is the reward-set loss and its last change."""
        return "holdout" in self.groups

    def observe(self, outcome: PhaseOutcome) -> PhaseRecord:
        """Unpaired path: the executed weighting's reward-set loss drop is the target (stage 2 records only)."""
        if self._pending is None:
            raise RuntimeError("bandit: observe() called without a decide() for this phase")
        raw, action = self._pending["raw"], self._vector(self.last_weights)[None]
        drop = outcome.reward_set_loss_before - outcome.reward_set_loss_after
        predicted = self._predict(raw, action, None)[0]
        if self.training:
            if not math.isfinite(drop):
                raise ValueError("bandit needs the reward-set loss before and after every learning phase, got NaN")
            self._learn(raw, action, None, torch.tensor([drop], dtype=torch.float64))
        extra = {"reward_scale": self.scale, "transitions": float(len(self.memory))}
        return self._record(outcome.next_state.step, self.last_weights, drop, predicted,
                            outcome.reward_set_loss_after, extra)

    def _record(self, step: int, weights: dict[str, float], reward: float, predicted: float, after: float,
                extra: dict[str, float]) -> PhaseRecord:
        record = PhaseRecord(step=step, phase=self.phase, weights=dict(weights), reward=reward, q_value=predicted,
                             reward_set_loss=after, extra=extra)
        self.phase += 1
        self._pending = None
        return record

    def _learn(self, raw: torch.Tensor, actions: torch.Tensor, reference: torch.Tensor | None,
               targets: torch.Tensor) -> None:
        """Store raw rows, then refit; standardisation uses statistics from before this phase, after warm-up."""
        if self.observed >= self.options.warmup and len(self.memory):
            self.stats = self.memory.state_stats()
            rms = self.memory.target_rms()
            self.scale = rms if rms > 0 else self.options.init_reward_scale
        self.memory.append(raw, actions, reference, targets, self.observed, self.options.memory)
        self.observed += 1
        self._refit()

    def _refit(self) -> None:
        """Exact posterior from every stored row, under the current standardisation."""
        m = self.memory
        x = torch.nan_to_num((m.states - self.stats[0]) / self.stats[1], nan=0.0)
        rows = design(x, m.actions, not self.hard, self.options.pairwise)
        ref_rows = design(x, m.references, not self.hard, self.options.pairwise)
        rows = torch.where(m.paired[:, None], rows - ref_rows, rows)
        self.posterior = Posterior.fit(rows, m.targets / self.scale, self.prior_mean, self.options.prior_precision)

    def start_episode(self, episode: int) -> None:
        """Learning carries over; the previous action (a state feature) restarts."""
        self._prev_action = None
        self._pending = None

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly; tensors, numbers, strings and containers only."""
        state = super().state_dict()
        pending = None
        if self._pending is not None:
            pending = {"raw": self._pending["raw"], "branches": list(self._pending["branches"]),
                       "reference": self._pending["reference"]}
        state.update(format=FORMAT, pool=list(self.pool), action=self.config.action, names=list(self.names),
                     options=self.options.model_dump(), memory=self.memory.state_dict(),
                     posterior=self.posterior.state_dict(), stats=list(self.stats), scale=self.scale,
                     observed=self.observed, prior_phases=self.prior_phases, prev_action=self._prev_action,
                     pending=pending)
        return state

    def init_from(self, path: str | Path, task: str | None = None) -> None:
        """``selector.init_from``: learn saved memories before this run's first phase.

        ``path`` is a saved ``selector.pt`` or a sweep folder (or its results/ copy), whose saved learners of
        ``task`` from other seeds, with this run's ``selector.reward.score``, are learned in trial-id order.
        Each memory is replayed phase by phase, so the posterior, standardisation and reward scale are those a
        learner that had lived through those phases would have; this run's stage 1 then adds its own. Only the
        memory carries over (its options are this run's), and the phases learned here are marked so that a
        replay scores only the run's own.
        """
        score = self.config.reward.score
        if Path(path).is_dir():
            sources = prior_learners(path, task, self.seed, score)
        else:
            sources = [saved_file_learner(path, read_state(path, f"selector.init_from={path}"), score)]
        for learner in sources:
            where = f"selector.init_from={path} ({learner.trial_id})"
            learn_memory(self, learner.state, where, own_rows(learner.state))
        self.prior_phases = self.observed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (same pool, action mode and options)."""
        if state.get("format") != FORMAT:
            raise ValueError(f"not a bandit selector state (format {state.get('format')!r})")
        mine = {"pool": self.pool, "action": self.config.action, "names": self.names,
                "options": self.options.model_dump()}
        for key, value in mine.items():
            if state[key] != value:
                raise ValueError(f"bandit checkpoint has {key}={state[key]!r}, this run has {value!r}")
        super().load_state_dict(state)
        self.memory = Memory.from_state_dict(state["memory"])
        self.posterior = Posterior.from_state_dict(state["posterior"])
        self.stats = (state["stats"][0], state["stats"][1])
        self.scale = float(state["scale"])
        self.observed = int(state["observed"])
        self.prior_phases = int(state.get("prior_phases", 0))  # absent before selector.init_from took memories
        self._prev_action = None if state["prev_action"] is None else [float(v) for v in state["prev_action"]]
        self._pending = None if state["pending"] is None else dict(state["pending"])


def _best_excluding(scores: torch.Tensor, excluded: list[int]) -> int:
    """Index of the highest score outside ``excluded``."""
    masked = scores.clone()
    masked[excluded] = -math.inf
    return int(torch.argmax(masked))
