"""The typed record of one finished run: what the loop returns, Tune carries and ``trials.parquet`` stores.

A leaf module (no kdray imports), so the loop, the sweep's trial body and the Parquet
recorder share one definition: a field added here reaches every place that reads runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The scores every Tune report of a trial carries (NaN where not measured yet), so ``search.metric`` may name
# them: dev_score at each dev evaluation, holdout_score (the task metric on the reward-set holdout, train rows
# the student never trains on) at the final run's end, for searches that must not select on the dev set.
SEARCH_METRICS: tuple[str, ...] = ("dev_score", "holdout_score")


@dataclass
class RunResult:
    """What one run reports (DESIGN.md section 3); ``traces`` has one row per kind per phase."""

    task: str
    metric_name: str
    dev_score: float
    dev_metrics: dict[str, float]
    teacher_score: float
    method: str
    action: str
    knowledge_pool: list[str]
    phase_steps: int
    reward_shaping: dict[str, Any]
    seed: int
    teacher: str
    student: str
    student_params: int
    train_steps: int  # every optimisation step, stage-1 episodes included
    train_seconds: float  # wall time of all training steps (stage 1 included), without dev evaluation
    samples_per_second: float
    selector_seconds: float  # decide/observe, state building and reward-set scoring
    # the task's main score on the reward-set holdout after the final run (NaN: no holdout, or an older record)
    holdout_score: float = math.nan
    final_steps: int = 0  # steps of the final run only
    mean_step_seconds: float = 0.0
    teacher_cache: bool = False
    branch_steps: int = 0  # stage-1 paired side-branch steps (extra compute: branch_steps / train_steps)
    traces: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The JSON run record: everything but the traces."""
        out = asdict(self)
        out.pop("traces")
        return out

    def to_json(self) -> str:
        """The whole result, traces included, as one JSON string (how it crosses a Tune report)."""
        return json.dumps(asdict(self), default=float)

    @classmethod
    def from_json(cls, text: str) -> "RunResult":
        """Inverse of :meth:`to_json`; unknown keys (from a newer kdray) are an error, not silently dropped."""
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"run record has unknown fields {unknown}; known: {', '.join(sorted(known))}")
        return cls(**raw)

    @property
    def finite(self) -> bool:
        """Whether the dev score is a number (a diverged run's is NaN)."""
        return math.isfinite(self.dev_score)
