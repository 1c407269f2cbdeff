"""Optimisation steps from the training state, and stage-1 paired branches run from a fork of it.

Issue #15 measured that the unpaired per-phase reward cannot see the action (signal-to-noise about 0.3),
while one phase run from the same student, optimiser and RNG state under several weightings separates
them by 4-40x the dropout noise. :func:`side_branches` runs that measurement: at a phase start it forks
the :class:`~kdray.state.TrainingState`, trains each side weighting for the phase's batches from the
fork, scores the reward set, and puts the fork back, so the loop then runs the decided weighting, from
the identical point (same weights, moments, schedule, RNG and therefore dropout masks), as the phase
itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kdray.run_setup import RunSetup
from kdray.state import Phase, TrainingState
from kdray.step import StepResult, distill_step, kind_gradients


def optimise(setup: RunSetup, state: TrainingState, weights: dict[str, float], batch: dict[str, torch.Tensor],
             rows: Sequence[int], step: int, with_state: bool = False, with_logits: bool = False) -> StepResult:
    """One optimisation step of ``weights`` on one batch (segment step ``step``); ``with_state`` /
    ``with_logits`` also return the selector's next state. A ``gradient-norm`` loss normaliser gets its
    per-kind gradient norms probed on this batch first, when it asks for them."""
    m = setup.models
    kinds = [k for k in state.selector.pool if weights.get(k, 0.0) > 0]
    if state.normalizer.needs_grad_norms(step, kinds):
        norms, _ = kind_gradients(m.student, state.knowledge, kinds, batch, rows, setup.teacher_fn, setup.autocast)
        state.normalizer.observe_grad_norms(norms)
    return distill_step(m.forward, state.student, state.knowledge, state.selector.pool, weights, batch, rows,
                        setup.teacher_fn, state.optimizer, state.scheduler, state.scaler,
                        setup.config.train.max_grad_norm, setup.world, setup.autocast,
                        state_layers=m.layers if with_state else None, with_logits=with_logits,
                        normalizer=state.normalizer)


@dataclass
class BranchResult:
    """What :func:`train_steps` gives back: mean unweighted loss per computed kind, and the mean weighted loss."""

    losses: dict[str, float]
    loss: float


def train_steps(setup: RunSetup, state: TrainingState, weights: dict[str, float],
                batches: Sequence[Sequence[int]]) -> BranchResult:
    """Train ``state`` in place with ``weights`` on ``batches`` (row indices), one step each.

    Weights, optimiser, schedule, scaler, loss normaliser and the global RNG move on; the cursor, the
    phase, the counters and the selector do not: a candidate branch, to be scored, then dropped with
    ``state.restore(snapshot)``.
    """
    acc, total = Phase(), torch.zeros((), device=setup.device, dtype=torch.float64)
    state.student.train()
    for i, rows in enumerate(batches):
        result = optimise(setup, state, weights, setup.batch(list(rows)), rows, state.step + i)
        acc.add(result.losses)
        total += result.loss.detach().double()
    return BranchResult(acc.mean_losses(), float(total) / max(1, len(batches)))


def check_finite(losses: dict[str, float], where: str, first: int, last: int) -> None:
    """Raise FloatingPointError naming the steps and the first kind whose mean loss is NaN or infinite."""
    for kind, value in losses.items():
        if not math.isfinite(value):
            raise FloatingPointError(f"{where}: the {kind} loss went non-finite ({value}) in steps {first}-{last}; "
                                     "the run diverged (try a lower train.lr)")


def reward_set_loss(setup: RunSetup, state: TrainingState) -> float:
    """The student's loss on the run's reward set (NaN when the run has none)."""
    rs = setup.reward_set
    return math.nan if rs is None else rs.loss(state.student, setup.spec.is_regression,
                                               setup.config.selector.reward.score)


def phase_batches(setup: RunSetup, state: TrainingState, steps: int) -> list[list[int]]:
    """Row indices of the batches of the phase starting at the state's cursor (shorter at a segment's end)."""
    end = min(state.step + setup.config.selector.phase_steps, steps)
    return [setup.order.rows(state.segment, s) for s in range(state.step, end)]


def side_branches(setup: RunSetup, state: TrainingState, weightings: Sequence[dict[str, float]], steps: int,
                  where: str) -> list[tuple[dict[str, float], float]]:
    """Train each weighting for the coming phase from a fork of ``state``; ``(weights, reward-set loss after)`` each.

    The state is back at the fork afterwards (bit for bit: RNG, optimiser, normaliser, counters), except
    ``counters.branch_steps``, which counts the steps run here (their time falls in the caller's clock).
    """
    batches = phase_batches(setup, state, steps)
    fork = state.snapshot()
    out: list[tuple[dict[str, float], float]] = []
    for weights in weightings:
        branch = train_steps(setup, state, weights, batches)
        check_finite(branch.losses, f"{where}, paired branch {weights}", state.step + 1, state.step + len(batches))
        out.append((dict(weights), reward_set_loss(setup, state)))
        state.restore(fork)
    state.counters.branch_steps += len(weightings) * len(batches)
    return out
