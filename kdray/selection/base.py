"""The selector interface: every ``phase_steps`` steps, one weight per knowledge kind.

The training loop (``kdray.distill``) talks to selectors only through this
module, so baselines and the actor-critic agent are interchangeable:

1. at a phase start the loop builds a :class:`PhaseState` and calls
   :meth:`Selector.decide`, which returns ``{kind: weight}`` for every kind in
   the pool (weight 0 means the kind is not computed in this phase);
2. the loop minimises ``sum(weight * loss)`` for ``phase_steps`` steps;
3. at the phase end it calls :meth:`Selector.observe` with a
   :class:`PhaseOutcome` (reward-set loss before/after, mean per-kind losses,
   the next state) and gets back a :class:`PhaseRecord` for the trace.

Implementations register under the names :mod:`kdray.registry` declares (with their report labels);
importing the ``kdray.selection`` package imports them all, so this module never imports its
implementations and :func:`build_selector` finds every one of them in :data:`SELECTORS`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kdray.config import SelectorConfig
from kdray.registry import SELECTOR_NAMES, require_declared


@dataclass
class PhaseState:
    """What a selector sees when it decides.

    Attributes:
        teacher_cls: teacher's final-layer [CLS] vectors, ``[B, Ht]`` (None when the selector does not
            need state). At a phase boundary they are the last batch of the phase that just ended, taken
            from that training step's own forward (``kdray.step.distill_step``); a run's first decision,
            with no step behind it, uses a no-grad forward on its first batch.
        student_cls: student's final-layer [CLS] vectors on the same batch, ``[B, Hs]`` (from the training
            forward: train mode, before that step's update).
        losses: mean unweighted loss of each kind over the previous phase (kinds not computed
            in that phase are absent).
        progress: fraction of the run's steps done, in [0, 1].
        step: global optimisation step at the decision.
        student_logits / teacher_logits: both models' logits ``[B, C]`` on the same batch as the [CLS]
            vectors (None when the loop does not give them; ``dynamic_kd`` reads them, and falls back to
            ``selector.dynamic_kd.fallback`` without them). ``teacher_logits`` is None too when no selected
            kind ran the teacher on that step.
    """

    teacher_cls: torch.Tensor | None
    student_cls: torch.Tensor | None
    losses: dict[str, float]
    progress: float
    step: int
    student_logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None


@dataclass
class PhaseOutcome:
    """What happened during a phase, reported by the loop at its end."""

    reward_set_loss_before: float  # NaN when the reward set is not scored
    reward_set_loss_after: float
    losses: dict[str, float]  # mean unweighted loss per computed kind during the phase
    next_state: PhaseState
    done: bool  # last phase of the episode/run
    # optimisation steps the phase ran (an episode's last phase may be shorter than phase_steps); None = a full phase
    steps: int | None = None


@dataclass
class PhaseRecord:
    """One row group of ``traces.parquet``: the decision and its result."""

    step: int
    phase: int
    weights: dict[str, float]
    reward: float = math.nan
    q_value: float = math.nan
    reward_set_loss: float = math.nan
    extra: dict[str, float] = field(default_factory=dict)


class Selector(ABC):
    """Decides the knowledge weights once per phase.

    Class attributes tell the loop what work the selector needs, so that work is
    skipped for selectors that do not use it.
    """

    #: the loop must pass [CLS] vectors in PhaseState
    needs_state: bool = False
    #: the loop should pass both models' logits in PhaseState (student_logits, teacher_logits)
    needs_logits: bool = False
    #: stage 1 (training episodes) is meaningful for this selector
    learns: bool = False

    @property
    def reads_reward_set(self) -> bool:
        """Whether a decision reads the reward-set loss (a state feature), so the loop must score it even
        when nothing learns from it and traces do not ask for it."""
        return False

    def __init__(self, pool: list[str], config: SelectorConfig, seed: int = 0) -> None:
        self.pool = list(pool)
        self.config = config
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.phase = 0
        self.training = True  # stage 2 with stage2=frozen sets this False

    @abstractmethod
    def decide(self, state: PhaseState) -> dict[str, float]:
        """Return a weight for every kind in the pool for the coming phase."""

    def observe(self, outcome: PhaseOutcome) -> PhaseRecord:
        """Learn from the finished phase (if learning) and return its trace record."""
        record = PhaseRecord(
            step=outcome.next_state.step,
            phase=self.phase,
            weights=dict(self.last_weights),
            reward_set_loss=outcome.reward_set_loss_after,
        )
        self.phase += 1
        return record

    def start_episode(self, episode: int) -> None:
        """Called when a (stage-1 or final) run restarts from the student's initial weights."""

    def init_from(self, path: str | Path, task: str | None = None) -> None:
        """Start from a selector saved elsewhere (``selector.init_from``): by default its whole state.

        Selectors with learned networks override this to take only the networks, the bandit to learn saved
        memories (of ``task``, the run's); :func:`build_selector` is the one caller.
        """
        self.load_state_dict(read_state(path, f"selector.init_from={path}"))

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "generator": self.generator.get_state(), "last_weights": self.last_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = int(state["phase"])
        self.generator.set_state(state["generator"])
        self.last_weights = dict(state["last_weights"])

    @property
    def last_weights(self) -> dict[str, float]:
        return getattr(self, "_last_weights", {k: 0.0 for k in self.pool})

    @last_weights.setter
    def last_weights(self, weights: dict[str, float]) -> None:
        self._last_weights = dict(weights)


def fallback_kind(pool: list[str]) -> str:
    """The kind a selector trains on when it would select nothing: ``finetune``, else the pool's first kind."""
    return "finetune" if "finetune" in pool else pool[0]


def read_state(path: str | Path, where: str) -> dict[str, Any]:
    """A saved selector state (``weights_only=True``: no pickled code runs); ``where`` names it in errors."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: no such file")
    return torch.load(path, map_location="cpu", weights_only=True)


SelectorFactory = Callable[[list[str], SelectorConfig, int], Selector]
#: selector name -> implementation; filled when the ``kdray.selection`` package imports its modules
SELECTORS: dict[str, SelectorFactory] = {}


def register_selector(name: str) -> Callable[[SelectorFactory], SelectorFactory]:
    """Class decorator: implement ``selector.name`` ``name``, which :data:`kdray.registry.SELECTOR_NAMES` must
    declare (with the method names and report labels it records as)."""
    require_declared(name, SELECTOR_NAMES, "selector")

    def wrap(cls: SelectorFactory) -> SelectorFactory:
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} registered twice")
        SELECTORS[name] = cls
        return cls

    return wrap


def build_selector(config: SelectorConfig, pool: list[str], seed: int, task: str | None = None) -> Selector:
    """Instantiate the configured selector and apply ``selector.init_from`` (the one place it is loaded;
    ``task``, the run's, picks a sweep folder's bandit learners).

    Unknown names list the registered ones.
    """
    factory = SELECTORS.get(config.name)
    if factory is None:
        raise ValueError(f"unknown selector {config.name!r}; known: {', '.join(sorted(SELECTORS))}")
    selector = factory(pool, config, seed)
    if config.init_from:
        selector.init_from(config.init_from, task=task)
    return selector
