"""The ``search`` section of a space file: which parameters vary, how they are sampled, how trials are judged.

Kept apart from the run sections in :mod:`kdray.config`: a run never reads them, only the sweep does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kdray.config_paths import StrictModel
from kdray.records import SEARCH_METRICS

DISTRIBUTION_KINDS: tuple[str, ...] = ("choice", "grid", "uniform", "loguniform", "int")


class Distribution(StrictModel):
    """One searched parameter: exactly one of the distribution keys."""

    choice: list[Any] | None = None
    grid: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Distribution":
        given = [k for k in DISTRIBUTION_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, grid, uniform, loguniform, int")
        kind = given[0]
        value = getattr(self, kind)
        if kind in ("choice", "grid") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "int") and not value[0] < value[1]:
            raise ValueError(f"{kind} needs [low, high] with low < high, got {list(value)}")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTION_KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any] | None:
        """The listed values of a ``choice`` or ``grid``; None for a continuous or integer range."""
        listed = self.choice if self.choice is not None else self.grid
        return None if listed is None else list(listed)


def candidate_values(dist: Distribution) -> list[Any]:
    """Representative values of a distribution, used to validate it against the run schema."""
    if dist.values is not None:
        return dist.values
    bounds = dist.uniform or dist.loguniform or dist.int
    return list(bounds)  # type: ignore[arg-type]


class SchedulerConfig(StrictModel):
    type: Literal["none", "asha"] = "none"
    grace_period: int = Field(default=1, ge=1, le=10**6)  # in evaluations
    reduction_factor: float = Field(default=3.0, gt=1)


class SearchConfig(StrictModel):
    """How trials are generated and which metric they are judged by."""

    mode: Literal["grid", "optuna"] = "grid"
    metric: str = "dev_score"
    mode_direction: Literal["max", "min"] = "max"
    num_samples: int = Field(default=1, ge=1, le=10**6)  # optuna: trials; grid: repeats of the whole grid
    seed: int = Field(default=0, ge=0)  # sampler seed
    # optuna: TPE's random proposals before it models the scores (Optuna's n_startup_trials, default 10). A task's
    # study with num_samples at or below it is a random search, the same samples on every task for one seed
    startup_trials: int = Field(default=10, ge=1, le=10**6)
    multi_objective: bool = False  # optuna: also minimise train_seconds
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    space: dict[str, Distribution] = Field(default_factory=dict)
    # Retries of a trial whose process or node died (Tune restarts it from its last checkpoint; Ray Train
    # restarts a DDP trial's workers the same way). A trial that raises (NaN loss, a bad setting) is not
    # retried: it is recorded as ERROR at once.
    max_failures: int = Field(default=2, ge=0, le=100)

    @field_validator("metric")
    @classmethod
    def _reported(cls, metric: str) -> str:
        """Tune stops the sweep at the first report without the study's metric, after teachers and trials ran:
        a metric that trials do not report (a typo) is refused here, before Ray starts."""
        if metric not in SEARCH_METRICS:
            raise ValueError(f"{metric!r} is not a metric trials report; allowed: {', '.join(SEARCH_METRICS)}")
        return metric

    @model_validator(mode="after")
    def _asha_needs_every_eval(self) -> "SearchConfig":
        """ASHA compares trials at intermediate evaluations; holdout_score is scored once, at a run's end (NaN
        before), so ASHA on it would stop trials by NaNs."""
        if self.scheduler.type == "asha" and self.metric == "holdout_score":
            raise ValueError("scheduler.type: asha compares trials at every dev evaluation, but holdout_score is "
                             "scored only at a run's end; use metric: dev_score with asha, or scheduler type none")
        return self


class LoggingConfig(StrictModel):
    """The sweep's ``logging:`` section: where trials' metrics go besides trials.parquet.

    TensorBoard event files (per trial, at every phase) are always written; ``wandb`` and ``mlflow`` add Ray
    Tune's ``WandbLoggerCallback`` / ``MLflowLoggerCallback`` with these keyword arguments (e.g.
    ``{project: kd}`` or ``{tracking_uri: file:./mlruns, experiment_name: kd}``); the package must be installed.
    """

    wandb: dict[str, Any] | None = None
    mlflow: dict[str, Any] | None = None
