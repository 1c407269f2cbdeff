"""The training state of one distillation run, typed, with exact snapshots and checkpoints.

Everything that changes while a run trains lives in :class:`TrainingState`: the student and the
knowledge projections, the optimiser, LR schedule and grad scaler of the current segment, the selector,
the global RNG states, the data cursor (segment and step: the batch order is a pure function of them,
:class:`kdray.loop_data.BatchOrder`), the phase in progress and the run's totals. What stays fixed for
the run (data, teacher, cache, reward set) is :class:`kdray.run_setup.RunSetup`.

``state_dict()`` holds only tensors, numbers, strings, None and containers, so a checkpoint is exactly
it and loads with ``torch.load(..., weights_only=True)``. ``snapshot()`` / ``restore()`` use the same
dict, deep-copied both ways, so a state can be forked at a phase boundary, trained along one branch,
put back, and trained along another from the identical point (same weights, optimiser moments, RNG and
therefore dropout masks): what paired rewards compare.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, NewType

import torch
from torch import nn

from kdray import checkpoint
from kdray.knowledge import LossNormalizer
from kdray.selection.base import PhaseState, Selector

Snapshot = NewType("Snapshot", dict)  # a deep, detached copy of TrainingState.state_dict()
# of the state dict (1: the untyped checkpoint dict of kdray before the typed state; 2: before the loss
# normaliser, the paired branches and the holdout change joined it)
FORMAT = 3


@dataclass
class Counters:
    """Run totals over every segment (stage-1 episodes included): what the run record reports."""

    steps: int = 0
    train_seconds: float = 0.0
    selector_seconds: float = 0.0
    step_seconds: float = 0.0
    samples: int = 0
    branch_steps: int = 0  # optimisation steps of stage-1 paired side branches (scored, then dropped)


@dataclass
class Phase:
    """The phase in progress: its weights and per-kind loss sums, and what the next decision starts from.

    Attributes:
        weights: the selector's weights for this phase (None until the phase's decision).
        sums: per-kind unweighted loss summed over the phase's steps (fp64 device tensors: no sync per step).
        count: steps taken in this phase.
        reward: the reward-set loss at the phase's start (NaN until scored).
        losses: the previous phase's mean per-kind losses (part of the next decision's state).
        next_state: the next decision's state, taken from the previous phase's last training forward
            (None at a segment's start, when the decision builds its own).
        reward_delta: the previous phase's reward-set loss change (after - before; NaN before one ended).
        branches: paired side branches run from this phase's fork: ``(weights, reward-set loss after)``
            each, the reference last (empty when the phase is not paired).
    """

    weights: dict[str, float] | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0
    reward: float = math.nan
    losses: dict[str, float] = field(default_factory=dict)
    next_state: PhaseState | None = None
    reward_delta: float = math.nan
    branches: list[tuple[dict[str, float], float]] = field(default_factory=list)

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        """Accumulate one step's per-kind losses."""
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, torch.zeros((), device=v.device, dtype=torch.float64)) + v.detach().double()
        self.count += 1

    def mean_losses(self) -> dict[str, float]:
        return {k: float(v) / self.count for k, v in self.sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count,
                "reward": self.reward, "losses": dict(self.losses),
                "next_state": _phase_state_dict(self.next_state), "reward_delta": self.reward_delta,
                "branches": [[dict(w), float(after)] for w, after in self.branches]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> Phase:
        nxt = state["next_state"]
        if nxt is not None:
            nxt = PhaseState(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in nxt.items()})
        return cls(weights=None if state["weights"] is None else dict(state["weights"]),
                   sums={k: v.to(device) for k, v in state["sums"].items()}, count=int(state["count"]),
                   reward=float(state["reward"]), losses=dict(state["losses"]), next_state=nxt,
                   reward_delta=float(state["reward_delta"]),
                   branches=[(dict(w), float(after)) for w, after in state["branches"]])


def _phase_state_dict(state: PhaseState | None) -> dict[str, Any] | None:
    """A phase state as plain fields with CPU tensors (it came from a training forward a resume cannot repeat)."""
    if state is None:
        return None
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(state).items()}


@dataclass
class EvalWindow:
    """The training loss since the last evaluation (a device tensor: read only when evaluating)."""

    loss_sum: torch.Tensor
    count: int = 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float()
        self.count += 1

    def take(self) -> float:
        """The window's mean loss; the window restarts."""
        mean = float(self.loss_sum) / max(1, self.count)
        self.loss_sum, self.count = torch.zeros((), device=self.loss_sum.device), 0
        return mean


@dataclass
class LastEval:
    """The latest dev evaluation of the final run (what the run record reports); at the run's end also its score
    on the reward-set holdout (None: not scored, i.e. before the end, without a holdout, or a checkpoint written
    before that field; None rather than NaN so that equal states compare equal)."""

    step: int = 0
    dev_score: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    holdout_score: float | None = None


@dataclass
class TrainingState:
    """Everything that changes while a run trains; see the module docstring.

    The optimiser and schedule are built per segment (the schedule spans the segment's steps) by the loop,
    which also decides when a segment starts; this class only holds, saves and restores them.
    """

    student: nn.Module
    knowledge: nn.ModuleDict
    selector: Selector
    scaler: torch.amp.GradScaler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    normalizer: LossNormalizer = field(default_factory=LossNormalizer)  # knowledge.normalize; reset per segment
    segment: int = 0
    step: int = 0  # within the segment: with ``segment``, the data cursor
    phase: Phase = field(default_factory=Phase)
    counters: Counters = field(default_factory=Counters)
    window: EvalWindow = field(default_factory=lambda: EvalWindow(torch.zeros(())))  # reset per segment
    last_eval: LastEval = field(default_factory=LastEval)
    traces: list[dict[str, Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: weights_only-safe, with references to live tensors (copy it to keep it)."""
        return {
            "format": FORMAT, "segment": self.segment, "step": self.step,
            "student": self.student.state_dict(), "knowledge": self.knowledge.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "normalizer": self.normalizer.state_dict(),
            "selector": self.selector.state_dict(), "selector_training": self.selector.training,
            "rng": checkpoint.rng_state(),
            "phase": self.phase.state_dict(), "counters": asdict(self.counters),
            "window": {"loss_sum": self.window.loss_sum.cpu(), "count": self.window.count},
            "last_eval": asdict(self.last_eval), "traces": list(self.traces),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a :meth:`state_dict` back, RNG included (the optimiser must be built for ``state["segment"]``)."""
        if state.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {state.get('format', 1)}, this kdray reads format {FORMAT}: "
                             "it was written by another kdray version; start the run afresh")
        self.segment, self.step = int(state["segment"]), int(state["step"])
        self.student.load_state_dict(state["student"])
        self.knowledge.load_state_dict(state["knowledge"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.selector.load_state_dict(state["selector"])
        self.selector.training = bool(state["selector_training"])
        self.phase = Phase.from_state_dict(state["phase"], self.device)
        self.counters = Counters(**state["counters"])
        self.window = EvalWindow(state["window"]["loss_sum"].to(self.device), int(state["window"]["count"]))
        self.last_eval = LastEval(**{**state["last_eval"], "metrics": dict(state["last_eval"]["metrics"])})
        self.traces = [dict(t) for t in state["traces"]]
        checkpoint.set_rng_state(state["rng"])

    def snapshot(self) -> Snapshot:
        """A deep, detached copy of the whole state (weights, optimiser, selector, RNG, cursor, phase)."""
        return Snapshot(copy.deepcopy(self.state_dict()))

    def restore(self, snapshot: Snapshot) -> None:
        """Return exactly to ``snapshot`` (which stays usable: it is copied again, never aliased)."""
        self.load_state_dict(copy.deepcopy(snapshot))
