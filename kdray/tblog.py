"""TensorBoard event files for one run: what the selector chose and how training went, at every phase.

Tune sees a trial only at its evaluations (two results per smoke trial); the loop calls :class:`PhaseLog` at every
phase end, so the curves show each phase's weights, reward, the learner's prediction and per-kind losses.
Event files are written with ``tensorboardX`` (a Ray Tune dependency, so no extra install); a sweep puts them
under ``<storage>/<sweep>/tensorboard/<trial>`` (:func:`trial_logdir`) and prints the ``tensorboard`` line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TB_DIR = "tensorboard"  # under the sweep folder; one sub-folder per trial


def trial_logdir(sweep_dir: str | Path, trial_key: str) -> Path:
    """Where one trial's event files go: ``<sweep>/tensorboard/<trial key>``."""
    return Path(sweep_dir) / TB_DIR / trial_key


def tensorboard_command(sweep_dir: str | Path) -> str:
    """The line a user runs to watch a sweep."""
    return f"tensorboard --logdir {Path(sweep_dir) / TB_DIR}"


class PhaseLog:
    """Scalars of one run: per-phase selection and losses (``phase/*``, ``weight/*``, ``loss/*``) and dev metrics
    (``dev/*``). Only rank 0 should build one; ``close`` flushes the file."""

    def __init__(self, logdir: str | Path) -> None:
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(logdir=str(self.logdir), flush_secs=30)

    def log_phase(self, step: int, weights: dict[str, float], reward: float | None, q_value: float | None,
                  reward_set_loss: float | None, losses: dict[str, float], steps_per_second: float) -> None:
        """One phase end: the weights the selector used, its reward and prediction, the mean loss per kind."""
        for kind, w in weights.items():
            self._scalar(f"weight/{kind}", w, step)
        for kind, loss in losses.items():
            self._scalar(f"loss/{kind}", loss, step)
        self._scalar("phase/reward", reward, step)
        self._scalar("phase/q_value", q_value, step)
        self._scalar("phase/reward_set_loss", reward_set_loss, step)
        self._scalar("phase/steps_per_second", steps_per_second, step)

    def log_eval(self, step: int, metrics: dict[str, Any]) -> None:
        """One evaluation: every numeric metric (dev_score, accuracy/f1/..., train_loss) under ``dev/``."""
        for name, value in metrics.items():
            if name not in ("step", "epoch"):
                self._scalar(f"dev/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        # a selector without a learner has no reward or prediction: nothing is written rather than a fake 0
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            self.writer.add_scalar(tag, float(value), int(step))
