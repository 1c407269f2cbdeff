"""``schedule``: each kind's weight is a fixed function of training progress (no learning).

The headroom baseline of issue #15: if no progress schedule beats ``all`` on a task, no per-phase learner
can win there. Each kind follows ``selector.schedule.<kind>`` (:class:`kdray.config.KindSchedule`):
a sigmoid from ``start`` (progress 0) to ``end`` (progress 1) around ``mid`` with ``sharpness``, or a
piecewise-linear curve through ``knots``; kinds not written keep weight 1 (the ``all`` baseline). Every
parameter is a scalar under a dotted key, so Optuna searches it (``selector.schedule.response.end:
{uniform: [0, 1]}``).

Documented choices: the weight of a phase is the schedule's value at the phase's first step (the
progress in its PhaseState); when a schedule gives every kind weight 0 at some progress, ``finetune``
(else the pool's first kind) gets weight 1 for that phase, as the random baselines do.
"""

from __future__ import annotations

import math

from kdray.config import KindSchedule, SelectorConfig
from kdray.selection.base import PhaseState, Selector, fallback_kind, register_selector


def _sigmoid(x: float) -> float:
    """Logistic function without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def schedule_weight(spec: KindSchedule, progress: float) -> float:
    """The weight ``spec`` gives at ``progress`` (clamped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    if spec.knots:
        knots = [(float(x), float(w)) for x, w in spec.knots]
        if p <= knots[0][0]:
            return knots[0][1]
        for (x0, w0), (x1, w1) in zip(knots, knots[1:]):
            if p <= x1:
                return w0 + (w1 - w0) * (p - x0) / (x1 - x0)
        return knots[-1][1]
    k, m = spec.sharpness, spec.mid
    lo, hi = _sigmoid(-k * m), _sigmoid(k * (1.0 - m))
    frac = (_sigmoid(k * (p - m)) - lo) / (hi - lo) if hi > lo else p
    return spec.start + (spec.end - spec.start) * min(max(frac, 0.0), 1.0)


@register_selector("schedule")
class ScheduleSelector(Selector):
    """Weights from ``selector.schedule`` at the phase's training progress."""

    def __init__(self, pool: list[str], config: SelectorConfig, seed: int = 0) -> None:
        super().__init__(pool, config, seed)
        default = KindSchedule()
        outside = [k for k in type(config.schedule).model_fields
                   if k not in self.pool and getattr(config.schedule, k) != default]
        if outside:
            raise ValueError(f"selector.schedule sets {outside}, which are not in the knowledge pool {self.pool}")

    def weights_at(self, progress: float) -> dict[str, float]:
        """Every pool kind's weight at ``progress`` (with the all-zero fallback)."""
        weights = {k: schedule_weight(getattr(self.config.schedule, k), progress) for k in self.pool}
        if not any(w > 0 for w in weights.values()):
            weights[fallback_kind(self.pool)] = 1.0
        return weights

    def decide(self, state: PhaseState) -> dict[str, float]:
        self.last_weights = self.weights_at(state.progress)
        return dict(self.last_weights)
