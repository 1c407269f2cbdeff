"""Saved bandit learners, and feeding their stage-1 memories to another learner.

One run's stage 1 gives the bandit 24-72 paired transitions; on real MRPC and STS-B that is too few to
predict the paired advantage on phases it has not seen (results/bandit_full_state). Runs of the same task
with other seeds measured the same kind of transitions, so a learner can start from theirs: replaying a
saved memory phase by phase (predict, then learn) reproduces what its own learner knew, bit for bit.
``selector.init_from`` uses this to start a bandit from a sweep folder's learners of the run's task
(:meth:`kdray.selection.bandit.BanditSelector.init_from`), and ``kdray learner-replay`` to replay them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from kdray.config import BanditConfig, SelectorConfig
from kdray.selection.bandit_model import Memory


class MemoryLearner(Protocol):
    """What feeding a memory needs of a learner (:class:`kdray.selection.bandit.BanditSelector`, which imports
    this module)."""

    pool: list[str]
    config: SelectorConfig
    options: BanditConfig
    names: list[str]

    def replay_phase(self, raw: torch.Tensor, actions: torch.Tensor, reference: torch.Tensor | None,
                     targets: torch.Tensor) -> list[float]: ...

FORMAT = "kdray.bandit/1"


@dataclass(frozen=True)
class SavedLearner:
    """One bandit trial's saved learner and what it was run on."""

    trial_id: str
    task: str
    seed: int
    state: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)  # the trial's run_record.json


@dataclass(frozen=True)
class ReplayedRow:
    """One stored transition: its phase, its place among the phase's branches (0 = the decided one)."""

    phase: int
    branch: int
    predicted: float
    realised: float


def load_learners(folder: str | Path) -> list[SavedLearner]:
    """Every bandit learner under ``folder/trials``, in trial-id order; other selectors are skipped."""
    trials = Path(folder) / "trials"
    learners = []
    for path in sorted(trials.glob("*/selector.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            continue
        record = json.loads((path.parent / "run_record.json").read_text())
        learners.append(SavedLearner(path.parent.name, str(record["task"]), int(record["seed"]), state, record))
    if not learners:
        raise ValueError(f"{trials}: no bandit selector.pt (with its run_record.json) in any trial folder")
    return learners


def check_compatible(selector: MemoryLearner, state: dict[str, Any], where: str) -> list[int]:
    """The recorded feature columns ``selector`` reads from a saved learner's memory; a ValueError naming
    ``where`` when the memory cannot be read by it (other pool, action mode, grid, or missing features)."""
    if state.get("format") != FORMAT:
        raise ValueError(f"{where}: not a bandit selector state (format {state.get('format')!r})")
    mine = {"pool": selector.pool, "action": selector.config.action, "levels": selector.options.levels}
    theirs = {"pool": list(state["pool"]), "action": state["action"], "levels": state["options"]["levels"]}
    for key, value in mine.items():
        if theirs[key] != value:
            raise ValueError(f"{where}: the saved learner has {key}={theirs[key]!r}, this one {value!r}; "
                             "only learners of one pool, action mode and selector.bandit.levels share memories")
    recorded = list(state["names"])
    missing = [name for name in selector.names if name not in recorded]
    if missing:
        raise ValueError(f"{where}: feature(s) {missing} were not recorded by the saved learner (it saved "
                         f"{recorded}); it can only be read with a subset of them")
    return [recorded.index(name) for name in selector.names]


def learn_memory(selector: MemoryLearner, state: dict[str, Any], where: str,
                 keep: Sequence[bool] | None = None, score_from: int = 0,
                 scored: Sequence[bool] | None = None) -> list[ReplayedRow]:
    """Feed a saved memory to ``selector`` phase by phase: each phase is predicted, then learned.

    ``keep`` masks the memory's rows (None: all); of those, the rows of phases before ``score_from`` (a
    learner's own memory starts with what ``selector.init_from`` gave it) and rows ``scored`` masks out are
    learned but not returned.
    """
    columns = check_compatible(selector, state, where)
    memory = Memory.from_state_dict(state["memory"])
    rows: list[ReplayedRow] = []
    for phase in torch.unique(memory.phases).tolist():
        at = (memory.phases == phase).nonzero()[:, 0]
        branches = [i for i, index in enumerate(at.tolist()) if keep is None or keep[index]]
        if not branches:
            continue
        index = at[branches]
        targets = memory.targets[index]
        paired = bool(memory.paired[index[0]])
        predicted = selector.replay_phase(memory.states[index[0], columns], memory.actions[index],
                                          memory.references[index[0]] if paired else None, targets)
        if phase >= score_from:
            rows += [ReplayedRow(phase, b, p, t) for b, i, p, t in zip(branches, index.tolist(), predicted,
                                                                        targets.tolist())
                     if scored is None or scored[i]]
    return rows


def own_rows(state: dict[str, Any]) -> list[bool]:
    """Per row of a saved memory: whether it is the learner's own (not one it took from ``selector.init_from``),
    so a learner started from it does not inherit, through it, runs of its own seed."""
    phases = Memory.from_state_dict(state["memory"]).phases
    return (phases >= int(state.get("prior_phases", 0))).tolist()


def reward_score(record: dict[str, Any]) -> str:
    """The ``selector.reward.score`` a saved learner's targets are in (``ce`` for records from before the key)."""
    return str(record.get("reward_shaping", {}).get("score", "ce"))


def prior_learners(folder: str | Path, task: str | None, seed: int, score: str) -> list[SavedLearner]:
    """``selector.init_from`` as a folder: its saved learners of ``task`` from seeds other than ``seed`` (a run's
    own seed shares its batch order, so its phases would not be unseen ones) whose targets are in the run's
    reward score (an advantage in squared error is not one in 1 - r)."""
    found = load_learners(folder)
    chosen = [x for x in found
              if (task is None or x.task == task) and x.seed != seed and reward_score(x.record) == score]
    if not chosen:
        seen = ", ".join(f"{x.task} seed {x.seed} score {reward_score(x.record)}" for x in found)
        raise ValueError(f"selector.init_from={folder}: no saved bandit learner of task {task} with "
                         f"selector.reward.score {score} from a seed other than {seed} (found: {seen})")
    return chosen


def saved_file_learner(path: str | Path, state: dict[str, Any], score: str) -> SavedLearner:
    """``selector.init_from`` as one ``selector.pt``; its run_record.json, when beside it, must match ``score``."""
    beside = Path(path).parent / "run_record.json"
    record = json.loads(beside.read_text()) if beside.is_file() else {}
    if record and reward_score(record) != score:
        raise ValueError(f"selector.init_from={path}: its targets are in selector.reward.score "
                         f"{reward_score(record)}, this run's are in {score}")
    return SavedLearner(Path(path).parent.name, str(record.get("task", "")), int(record.get("seed", -1)), state, record)
